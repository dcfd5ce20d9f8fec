//! Sealing cost: AES-256-GCM (`ring`) under a subject key, per journal
//! record, sealing and opening, at typical record sizes.
//!
//! `cargo bench -p baton-store --bench seal`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use baton_store::seal::{Keyring, MasterKey};

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
        "{label:<44} median {:>7.2} µs  (min {:.2}, max {:.2}; 5 runs of {iters})",
        samples[2], samples[0], samples[4]
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let master =
        MasterKey::from_hex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
            .unwrap();
    let ring = Keyring::open(dir.path(), master, None).unwrap();
    let key = ring.for_subject("cust-1").unwrap();
    let aad = b"journal\0session-and-seq";
    for size in [256usize, 1024, 4096, 16 * 1024] {
        let record = vec![b'a'; size];
        time(&format!("seal a {size} B record"), 20_000, || {
            black_box(key.seal(aad, black_box(&record)));
        });
        let sealed = key.seal(aad, &record);
        time(
            &format!("open a {size} B record (keyring lookup)"),
            20_000,
            || {
                black_box(ring.unseal(aad, black_box(&sealed)).unwrap());
            },
        );
    }
    time("first key of a new subject (synced write)", 200, {
        let mut n = 0u64;
        move || {
            n += 1;
            black_box(ring.for_subject(&format!("subject-{n}")).unwrap());
        }
    });
}
