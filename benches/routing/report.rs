//! What the phases measure, the machine they ran on, and the report as text.

use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::Args;

/// A latency distribution, in nanoseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub(crate) struct Lat {
    pub(crate) count: u64,
    pub(crate) mean_ns: f64,
    pub(crate) p50_ns: u64,
    pub(crate) p99_ns: u64,
    pub(crate) max_ns: u64,
}

pub(crate) fn hist() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000_000, 3)?)
}

pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_nanos() as u64).max(1));
}

pub(crate) fn lat(h: &Histogram<u64>) -> Lat {
    Lat {
        count: h.len(),
        mean_ns: h.mean(),
        p50_ns: h.value_at_quantile(0.50),
        p99_ns: h.value_at_quantile(0.99),
        max_ns: h.max(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DecideResult {
    pub(crate) case: String,
    pub(crate) route: String,
    pub(crate) strategy: String,
    pub(crate) endpoints: usize,
    pub(crate) eligible: usize,
    /// The decision as made before timing (every timed one is alike but for
    /// the random picks).
    pub(crate) rule: String,
    pub(crate) chosen: String,
    pub(crate) reason: String,
    pub(crate) decisions: u64,
    pub(crate) batch: usize,
    /// Total time / decisions.
    pub(crate) mean_ns: f64,
    /// Distribution of the per-batch mean (batch time / batch size).
    pub(crate) per_batch: Lat,
    /// p50 of this case / p50 of `fallback, 2 endpoints`.
    pub(crate) p50_vs_baseline: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CallResult {
    pub(crate) calls_per_side: u64,
    pub(crate) blocks: usize,
    pub(crate) direct: Lat,
    pub(crate) routed: Lat,
    pub(crate) added_mean_ns: f64,
    pub(crate) added_p50_ns: i64,
    pub(crate) added_p99_ns: i64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CascadeResult {
    pub(crate) requests: usize,
    pub(crate) hard: usize,
    pub(crate) seed: u64,
    pub(crate) min_confidence: f64,
    pub(crate) cheap_price_per_mtok: (f64, f64),
    pub(crate) strong_price_per_mtok: (f64, f64),
    pub(crate) cheap_delay_ms: u64,
    pub(crate) strong_delay_ms: u64,
    /// Sum of `Routed.escalations` over the cascade's calls.
    pub(crate) escalated: u64,
    pub(crate) share_escalated: f64,
    pub(crate) answered_by_cheap: usize,
    pub(crate) answered_by_strong: usize,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cascade_cost_usd: f64,
    pub(crate) always_strong_cost_usd: f64,
    /// Every request to cheap alone, whatever its answer is worth: the
    /// floor of any routing between the two.
    pub(crate) always_cheap_cost_usd: f64,
    /// Easy requests to cheap only, hard ones to strong only: what a perfect
    /// classifier in front of the two models would pay.
    pub(crate) oracle_cost_usd: f64,
    pub(crate) saved_pct: f64,
    pub(crate) cascade_latency: Lat,
    pub(crate) cascade_easy_latency: Lat,
    pub(crate) cascade_hard_latency: Lat,
    pub(crate) always_strong_latency: Lat,
    pub(crate) always_cheap_latency: Lat,
    pub(crate) cheap_requests: usize,
    pub(crate) strong_requests: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) mem_total_kib: u64,
    pub(crate) kernel: String,
    pub(crate) loadavg_start: String,
    pub(crate) loadavg_end: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) args: Args,
    pub(crate) conversation_chars: usize,
    pub(crate) long_conversation_chars: usize,
    pub(crate) decide: Vec<DecideResult>,
    pub(crate) call: Option<CallResult>,
    pub(crate) cascade: Option<CascadeResult>,
    pub(crate) total_secs: f64,
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn mem_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn us(ns: f64) -> String {
    format!("{:.1}", ns / 1000.0)
}

pub(crate) fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "\n=== Baton routing report ===");
    let _ = writeln!(
        s,
        "machine: {} CPUs, {:.1} GiB RAM, Linux {}; load average {} at start, {} at end",
        m.nproc,
        m.mem_total_kib as f64 / 1048576.0,
        m.kernel,
        m.loadavg_start,
        m.loadavg_end
    );
    let a = &r.args;
    let _ = writeln!(
        s,
        "args: decisions {} (warm-up {}, batches of {}, {} rounds), calls {}, requests {}, \
         hard share {}, seed {}, model delays {}/{} ms, phases {}",
        a.decisions,
        a.warmup,
        a.batch,
        a.rounds,
        a.calls,
        a.requests,
        a.hard_share,
        a.seed,
        a.cheap_delay_ms,
        a.strong_delay_ms,
        a.phases.join(",")
    );
    if !r.decide.is_empty() {
        let first = &r.decide[0];
        let _ = writeln!(
            s,
            "\n-- 1. Router::decide: the first decision of a call ({} per case, timed in batches \
             of {}; ns per decision; conversations of {} and {} chars) --",
            first.decisions, first.batch, r.conversation_chars, r.long_conversation_chars
        );
        let _ = writeln!(
            s,
            "{:<54} {:>4} {:>4} {:>7} {:>7} {:>7} {:>6}  rule -> chosen",
            "case", "eps", "elig", "mean", "p50", "p99", "x base"
        );
        for d in &r.decide {
            let _ = writeln!(
                s,
                "{:<54} {:>4} {:>4} {:>7.0} {:>7} {:>7} {:>6.2}  {} -> {}",
                d.case,
                d.endpoints,
                d.eligible,
                d.mean_ns,
                d.per_batch.p50_ns,
                d.per_batch.p99_ns,
                d.p50_vs_baseline,
                d.rule,
                d.chosen
            );
        }
        for d in &r.decide {
            if d.strategy == "by_complexity" {
                let _ = writeln!(s, "  {}: {}", d.case, d.reason);
            }
        }
    }
    if let Some(c) = &r.call {
        let _ = writeln!(
            s,
            "\n-- 2. one call at a time to an echo endpoint, in-process ({} calls per side, {} \
             alternating blocks; µs per call) --",
            c.calls_per_side, c.blocks
        );
        let _ = writeln!(s, "{:<46} {:>8} {:>8} {:>8}", "", "mean", "p50", "p99");
        for (name, l) in [
            ("ExecutorHandle::call (direct)", c.direct),
            ("Router::call (fallback route, 1 endpoint)", c.routed),
        ] {
            let _ = writeln!(
                s,
                "{name:<46} {:>8} {:>8} {:>8}",
                us(l.mean_ns),
                us(l.p50_ns as f64),
                us(l.p99_ns as f64)
            );
        }
        let _ = writeln!(
            s,
            "{:<46} {:>+8.1} {:>+8.1} {:>+8.1}",
            "added by routing",
            c.added_mean_ns / 1000.0,
            c.added_p50_ns as f64 / 1000.0,
            c.added_p99_ns as f64 / 1000.0
        );
    }
    if let Some(c) = &r.cascade {
        let _ = writeln!(
            s,
            "\n-- 3. cascade [cheap ${}/${}, strong ${}/${} per Mtok], min_confidence {}, two fake \
             OpenAI servers over HTTP, sequential --",
            c.cheap_price_per_mtok.0,
            c.cheap_price_per_mtok.1,
            c.strong_price_per_mtok.0,
            c.strong_price_per_mtok.1,
            c.min_confidence
        );
        let _ = writeln!(
            s,
            "workload: {} requests, {} hard ({:.1}%), seed {}; {} input and {} output tokens; \
             model delays cheap {} ms, strong {} ms",
            c.requests,
            c.hard,
            100.0 * c.hard as f64 / c.requests as f64,
            c.seed,
            c.input_tokens,
            c.output_tokens,
            c.cheap_delay_ms,
            c.strong_delay_ms
        );
        let _ = writeln!(
            s,
            "escalated: {} of {} ({:.1}%); answered by cheap {}, by strong {}; every answer from \
             the expected endpoint (checked)",
            c.escalated,
            c.requests,
            100.0 * c.share_escalated,
            c.answered_by_cheap,
            c.answered_by_strong
        );
        let _ = writeln!(
            s,
            "{:<34} {:>12} {:>10} {:>10} {:>10}",
            "", "cost USD", "mean µs", "p50 µs", "p99 µs"
        );
        for (name, cost, l) in [
            ("cascade", Some(c.cascade_cost_usd), c.cascade_latency),
            ("  easy (answered by cheap)", None, c.cascade_easy_latency),
            ("  hard (escalated to strong)", None, c.cascade_hard_latency),
            (
                "always strong",
                Some(c.always_strong_cost_usd),
                c.always_strong_latency,
            ),
            (
                "always cheap (the cost floor)",
                Some(c.always_cheap_cost_usd),
                c.always_cheap_latency,
            ),
            (
                "oracle (no wasted cheap calls)",
                Some(c.oracle_cost_usd),
                Lat::default(),
            ),
        ] {
            let cost = cost.map(|x| format!("{x:.6}")).unwrap_or_default();
            if l.count == 0 && cost.is_empty() {
                let _ = writeln!(s, "{name:<34} {:>12} {:>10}", "", "-");
            } else if l.count == 0 {
                let _ = writeln!(s, "{name:<34} {cost:>12}");
            } else {
                let _ = writeln!(
                    s,
                    "{name:<34} {cost:>12} {:>10} {:>10} {:>10}",
                    us(l.mean_ns),
                    us(l.p50_ns as f64),
                    us(l.p99_ns as f64)
                );
            }
        }
        let _ = writeln!(
            s,
            "cost saved by the cascade vs always strong: {:.1}% (oracle: {:.1}%)",
            c.saved_pct,
            100.0 * (1.0 - c.oracle_cost_usd / c.always_strong_cost_usd)
        );
    }
    let _ = writeln!(s, "\ntotal {:.1} s", r.total_secs);
    s
}
