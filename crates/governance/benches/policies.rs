//! Policy evaluation cost: every built-in detector over a 4 KiB message,
//! with nothing to find and with a realistic sprinkling of hits, plus
//! pseudonymising the hits.
//!
//! `cargo bench -p baton-governance --bench policies`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use baton_governance::{Builtin, DetectorSet, Pseudonyms};

fn message(with_hits: bool) -> String {
    let prose = "Thanks for getting back to me about the renewal. We reviewed the proposal with \
                 the team on Tuesday and would like to go ahead with the annual plan, provided the \
                 onboarding can start before the end of the quarter. ";
    let hits = "Reach me at jane.doe@example.com or +44 20 7946 0958; refunds to \
                GB82WEST12345698765432, card 4111 1111 1111 1111. ";
    let mut s = String::new();
    while s.len() < 4096 {
        s.push_str(prose);
        if with_hits && s.len() < 1500 {
            s.push_str(hits);
        }
    }
    s.truncate(4096);
    s
}

fn time(label: &str, iters: u32, mut f: impl FnMut()) {
    for _ in 0..iters / 10 {
        f();
    }
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(iters));
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "{label:<58} median {:>8.2} µs  (min {:.2}, max {:.2}; 5 runs of {iters})",
        samples[2], samples[0], samples[4]
    );
}

fn main() {
    let set = DetectorSet::new(&Builtin::ALL, &[], "US").unwrap();
    let clean = message(false);
    let dirty = message(true);
    println!("hits in the dirty message: {}", set.detect(&dirty).len());
    time("detect, all built-ins, 4 KiB, nothing found", 2_000, || {
        black_box(set.detect(black_box(&clean)));
    });
    time("detect, all built-ins, 4 KiB, with hits", 2_000, || {
        black_box(set.detect(black_box(&dirty)));
    });
    for b in Builtin::ALL {
        let one = DetectorSet::new(&[b], &[], "US").unwrap();
        time(
            &format!("detect, only {}, 4 KiB, with hits", b.as_str()),
            500,
            || {
                black_box(one.detect(black_box(&dirty)));
            },
        );
    }
    let ssn = regex::Regex::new(r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)").unwrap();
    time("one plain Regex (ssn) find_iter over 4 KiB", 500, || {
        black_box(ssn.find_iter(black_box(&dirty)).count());
    });
    let ssnset = regex::RegexSet::new([ssn.as_str()]).unwrap();
    time("one-pattern RegexSet (ssn) matches over 4 KiB", 500, || {
        black_box(ssnset.matches(black_box(&dirty)).matched_any());
    });
    let phone_only = DetectorSet::new(&[Builtin::Phone], &[], "US").unwrap();
    time("detect phone in \"+44 20 7946 0958\" alone", 500, || {
        black_box(phone_only.detect(black_box("+44 20 7946 0958")));
    });
    let findings = set.detect(&dirty);
    time("pseudonymise the hits of 4 KiB", 2_000, || {
        let mut p = Pseudonyms::default();
        black_box(p.redact(black_box(&dirty), &findings));
    });
}
