//! What the phases measure, the machine they ran on, and the report as text.

use std::time::Duration;

use anyhow::Result;
use baton_runtime::WriterStatsSnapshot;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::args::Args;

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub(crate) struct Lat {
    pub(crate) count: u64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: u64,
    pub(crate) p95_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
}

pub(crate) fn hist() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

pub(crate) fn lat(h: &Histogram<u64>) -> Lat {
    Lat {
        count: h.len(),
        mean_us: h.mean(),
        p50_us: h.value_at_quantile(0.50),
        p95_us: h.value_at_quantile(0.95),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FsyncFloor {
    pub(crate) path: String,
    pub(crate) iterations: usize,
    pub(crate) overwrite_4k_fdatasync: Lat,
    pub(crate) append_4k_fdatasync: Lat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct WriterDelta {
    pub(crate) groups: u64,
    pub(crate) requests: u64,
    pub(crate) synced_groups: u64,
    pub(crate) synced_write_micros: u64,
    /// Synced groups (fsyncs) per measured turn.
    pub(crate) fsyncs_per_turn: f64,
    /// Write requests per group: the group-commit factor.
    pub(crate) requests_per_group: f64,
    /// Mean duration of a synced group write (WAL append + fdatasync), µs.
    pub(crate) mean_synced_write_us: f64,
}

pub(crate) fn writer_delta(
    a: WriterStatsSnapshot,
    b: WriterStatsSnapshot,
    turns: u64,
) -> WriterDelta {
    let groups = b.groups - a.groups;
    let requests = b.requests - a.requests;
    let synced_groups = b.synced_groups - a.synced_groups;
    let synced_write_micros = b.synced_write_micros - a.synced_write_micros;
    WriterDelta {
        groups,
        requests,
        synced_groups,
        synced_write_micros,
        fsyncs_per_turn: ratio(synced_groups, turns),
        requests_per_group: ratio(requests, groups),
        mean_synced_write_us: ratio(synced_write_micros, synced_groups),
    }
}

pub(crate) fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunResult {
    pub(crate) label: String,
    /// `direct`, `baton-grpc` or `baton-embedded`.
    pub(crate) target: &'static str,
    pub(crate) durability: Option<&'static str>,
    /// `closed` (each session sends its next turn when the last one ends) or
    /// `open` (turns are sent at a fixed rate whatever the latency).
    pub(crate) mode: &'static str,
    pub(crate) sessions: usize,
    pub(crate) offered_rate: Option<f64>,
    pub(crate) measured_secs: f64,
    pub(crate) turns: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) turns_per_sec: f64,
    pub(crate) latency: Lat,
    /// Open loop: turns whose session was still busy with the previous one.
    pub(crate) queued_behind_busy: u64,
    /// Upstream model calls per measured turn (expect 1.0).
    pub(crate) upstream_calls_per_turn: f64,
    /// CPU time of the whole process per measured turn, µs (2 cores = at
    /// most 2,000,000 µs per second).
    pub(crate) cpu_us_per_turn: f64,
    pub(crate) writer: Option<WriterDelta>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Comparison {
    pub(crate) label: String,
    pub(crate) durability: &'static str,
    pub(crate) mode: &'static str,
    pub(crate) sessions: usize,
    pub(crate) offered_rate: Option<f64>,
    pub(crate) direct: RunResult,
    pub(crate) baton: RunResult,
    pub(crate) added_p50_us: i64,
    pub(crate) added_p95_us: i64,
    pub(crate) added_p99_us: i64,
}

pub(crate) fn compare(label: &str, direct: RunResult, baton: RunResult) -> Comparison {
    let d = direct.latency;
    let b = baton.latency;
    Comparison {
        label: label.to_string(),
        durability: baton.durability.unwrap_or("-"),
        mode: baton.mode,
        sessions: baton.sessions,
        offered_rate: baton.offered_rate,
        added_p50_us: b.p50_us as i64 - d.p50_us as i64,
        added_p95_us: b.p95_us as i64 - d.p95_us as i64,
        added_p99_us: b.p99_us as i64 - d.p99_us as i64,
        direct,
        baton,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IdleRss {
    pub(crate) sessions: usize,
    pub(crate) warmup_sessions: usize,
    pub(crate) create_and_turn_secs: f64,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    pub(crate) kib_per_session: f64,
    pub(crate) live_before: usize,
    pub(crate) live_after: usize,
    pub(crate) live_added_ok: bool,
    pub(crate) errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Persisted {
    pub(crate) sessions: usize,
    pub(crate) durability: String,
    pub(crate) in_flight: usize,
    pub(crate) errors: u64,
    pub(crate) secs: f64,
    pub(crate) sessions_per_sec: f64,
    pub(crate) writer: WriterDelta,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    pub(crate) rss_kib_per_1000_sessions: f64,
    pub(crate) live_sessions_after: usize,
    pub(crate) listed: u64,
    pub(crate) list_pages: u64,
    pub(crate) list_secs: f64,
    pub(crate) data_dir_bytes: u64,
    pub(crate) data_dir_allocated_bytes: u64,
    pub(crate) wal_bytes: u64,
    pub(crate) sst_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) mem_total_kib: u64,
    pub(crate) kernel: String,
    pub(crate) data_dir: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Report {
    pub(crate) machine: Option<Machine>,
    pub(crate) args: String,
    pub(crate) fsync: Option<FsyncFloor>,
    pub(crate) comparisons: Vec<Comparison>,
    pub(crate) runs: Vec<RunResult>,
    pub(crate) idle_rss: Option<IdleRss>,
    /// The same with one-shot sessions (front-door calls).
    pub(crate) one_shot_rss: Option<IdleRss>,
    pub(crate) persisted: Option<Persisted>,
    /// Memory over many stateless front-door calls.
    pub(crate) flat: Option<crate::flat::Flat>,
    pub(crate) total_secs: f64,
}

pub(crate) fn progress(what: &str) {
    eprintln!("[load] {what} ...");
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn signed_ms(us: i64) -> String {
    format!("{:+.3}", us as f64 / 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

pub(crate) fn render(r: &Report, args: &Args) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "\n=== Baton load report ===");
    if let Some(m) = &r.machine {
        let _ = writeln!(
            s,
            "machine: {} CPUs, {:.1} GiB RAM, Linux {}; data dir parent {}",
            m.nproc,
            m.mem_total_kib as f64 / 1048576.0,
            m.kernel,
            m.data_dir
        );
    }
    let _ = writeln!(s, "args: {}", r.args);
    if let Some(f) = &r.fsync {
        let _ = writeln!(
            s,
            "\n-- 1. fsync floor ({} samples each, in {}) --",
            f.iterations, f.path
        );
        for (name, l) in [
            (
                "overwrite 4 KiB @0 + fdatasync (preallocated 64 MiB)",
                f.overwrite_4k_fdatasync,
            ),
            (
                "append 4 KiB + fdatasync (growing file)",
                f.append_4k_fdatasync,
            ),
        ] {
            let _ = writeln!(
                s,
                "{name:<55} median {} ms  p99 {} ms  max {} ms",
                ms(l.p50_us),
                ms(l.p99_us),
                ms(l.max_us)
            );
        }
    }
    if !r.comparisons.is_empty() {
        let _ = writeln!(
            s,
            "\n-- 2+3. turns: direct baseline vs Baton over gRPC (latency in ms) --"
        );
        let _ = writeln!(
            s,
            "{:<44} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>9} {:>9} {:>8}",
            "run",
            "turns/s",
            "p50",
            "p95",
            "p99",
            "max",
            "errors",
            "fsync/t",
            "reqs/grp",
            "fsync ms",
            "cpu us/t"
        );
        for c in &r.comparisons {
            for run in [&c.direct, &c.baton] {
                let (fpt, rpg, fms) = match &run.writer {
                    Some(w) => (
                        format!("{:.3}", w.fsyncs_per_turn),
                        format!("{:.1}", w.requests_per_group),
                        format!("{:.3}", w.mean_synced_write_us / 1000.0),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                let _ = writeln!(
                    s,
                    "{:<44} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>9} {:>9} {:>8.0}",
                    run.label,
                    run.turns_per_sec,
                    ms(run.latency.p50_us),
                    ms(run.latency.p95_us),
                    ms(run.latency.p99_us),
                    ms(run.latency.max_us),
                    run.errors,
                    fpt,
                    rpg,
                    fms,
                    run.cpu_us_per_turn
                );
            }
            let _ = writeln!(
                s,
                "{:<44} {:>9} {:>8} {:>8} {:>8}   (queued behind a busy session: {}; upstream calls/turn {:.3})",
                format!("  added by Baton ({})", c.durability),
                "",
                signed_ms(c.added_p50_us),
                signed_ms(c.added_p95_us),
                signed_ms(c.added_p99_us),
                c.baton.queued_behind_busy,
                c.baton.upstream_calls_per_turn,
            );
            for run in [&c.direct, &c.baton] {
                if let Some(e) = &run.first_error {
                    let _ = writeln!(s, "  first error of {}: {e}", run.label);
                }
            }
        }
    }
    if let Some(i) = &r.one_shot_rss {
        let _ = writeln!(
            s,
            "\n-- 4b. RSS after one-shot sessions (front-door calls) --"
        );
        let _ = writeln!(
            s,
            "{} one-shot sessions, one echo turn each, in {:.1} s ({} errors); RSS {} -> {} KiB: {:.2} KiB/session; live sessions {} -> {} (one-shot sessions leave memory when their turn ends)",
            i.sessions,
            i.create_and_turn_secs,
            i.errors,
            i.rss_before_kib,
            i.rss_after_kib,
            i.kib_per_session,
            i.live_before,
            i.live_after,
        );
    }
    if let Some(f) = &r.flat {
        let _ = writeln!(
            s,
            "\n-- 4c. Memory over {} stateless front-door calls ({} clients, audit trail {}) --",
            f.calls,
            f.clients,
            if f.audit { "on" } else { "off" }
        );
        let _ = writeln!(
            s,
            "{:.0} s, {:.0} calls/s, {} errors{}; RSS at start {} KiB",
            f.secs,
            f.calls_per_sec,
            f.errors,
            f.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            f.rss_start_kib
        );
        let _ = writeln!(
            s,
            "{:>10} {:>8} {:>10} {:>6} {:>10} {:>10} {:>10}",
            "calls", "secs", "RSS KiB", "live", "cache KiB", "memt KiB", "readers"
        );
        for x in &f.samples {
            let _ = writeln!(
                s,
                "{:>10} {:>8.1} {:>10} {:>6} {:>10} {:>10} {:>10}",
                x.calls,
                x.secs,
                x.rss_kib,
                x.live_sessions,
                x.store.cache_bytes >> 10,
                x.store.memtable_bytes >> 10,
                x.store.table_readers_bytes >> 10
            );
        }
        let _ = writeln!(
            s,
            "RSS growth from a tenth of the way to the end: {} KiB; data dir {} MB (audit {} MB)",
            f.growth_after_tenth_kib,
            f.data_dir_bytes / 1_000_000,
            f.audit_dir_bytes / 1_000_000
        );
    }
    if let Some(i) = &r.idle_rss {
        let _ = writeln!(s, "\n-- 4. RSS per live idle session --");
        let _ = writeln!(
            s,
            "{} sessions created + one echo turn each in {:.1} s ({} errors); RSS {} -> {} KiB: {:.2} KiB/session; live sessions {} -> {} ({})",
            i.sessions,
            i.create_and_turn_secs,
            i.errors,
            i.rss_before_kib,
            i.rss_after_kib,
            i.kib_per_session,
            i.live_before,
            i.live_after,
            if i.live_added_ok {
                "all live"
            } else {
                "NOT all live"
            }
        );
    }
    if let Some(p) = &r.persisted {
        let _ = writeln!(s, "\n-- 5. persisted sessions --");
        let _ = writeln!(
            s,
            "{} sessions ({} durability, {} in flight) in {:.2} s = {:.0} sessions/s, {} errors; {} fsyncs, {:.1} requests/group",
            p.sessions,
            p.durability,
            p.in_flight,
            p.secs,
            p.sessions_per_sec,
            p.errors,
            p.writer.synced_groups,
            p.writer.requests_per_group
        );
        let _ = writeln!(
            s,
            "listed {} in {} pages in {:.2} s; live actors after: {}; RSS {} -> {} KiB ({:.1} KiB per 1000 sessions)",
            p.listed,
            p.list_pages,
            p.list_secs,
            p.live_sessions_after,
            p.rss_before_kib,
            p.rss_after_kib,
            p.rss_kib_per_1000_sessions
        );
        let _ = writeln!(
            s,
            "data dir: {:.1} MiB apparent, {:.1} MiB allocated (WAL {:.1} MiB, SST {:.1} MiB)",
            p.data_dir_bytes as f64 / 1048576.0,
            p.data_dir_allocated_bytes as f64 / 1048576.0,
            p.wal_bytes as f64 / 1048576.0,
            p.sst_bytes as f64 / 1048576.0
        );
    }

    let _ = writeln!(s, "\n-- targets --");
    // The gRPC targets (the front door's are its own, below).
    let open = |d: &str| {
        r.comparisons
            .iter()
            .find(|c| c.mode == "open" && c.durability == d && !c.label.starts_with("front door"))
    };
    for d in ["sync", "sync+nodelay"] {
        let Some(c) = open(d) else { continue };
        let _ = writeln!(
            s,
            "{d}: added latency at {:.0}/s: p50 {} ms (<= 0.5: {}), p99 {} ms (<= 2: {})",
            args.rate,
            signed_ms(c.added_p50_us),
            verdict(c.added_p50_us <= 500),
            signed_ms(c.added_p99_us),
            verdict(c.added_p99_us <= 2000)
        );
        if let Some(w) = &c.baton.writer {
            let _ = writeln!(
                s,
                "{d}: group commit at {:.0}/s: {:.3} fsyncs per turn (2 synced batches per turn), {:.1} requests per group",
                args.rate, w.fsyncs_per_turn, w.requests_per_group
            );
        }
    }
    for d in ["buffered", "buffered+nodelay"] {
        let Some(c) = open(d) else { continue };
        let _ = writeln!(
            s,
            "{d}: added latency at {:.0}/s: p99 {} ms (<= 1: {})",
            args.rate,
            signed_ms(c.added_p99_us),
            verdict(c.added_p99_us <= 1000)
        );
    }
    for c in r
        .comparisons
        .iter()
        .filter(|c| c.label.starts_with("front door"))
    {
        let _ = if c.mode == "open" {
            writeln!(
                s,
                "{}: added latency p50 {} ms (<= 0.5: {}), p99 {} ms (<= 1: {})",
                c.label,
                signed_ms(c.added_p50_us),
                verdict(c.added_p50_us <= 500),
                signed_ms(c.added_p99_us),
                verdict(c.added_p99_us <= 1000)
            )
        } else {
            writeln!(
                s,
                "{}: {:.0} requests/s (>= 5000: {})",
                c.label,
                c.baton.turns_per_sec,
                verdict(c.baton.turns_per_sec >= 5000.0)
            )
        };
    }
    for c in r
        .comparisons
        .iter()
        .filter(|c| c.mode == "closed" && c.sessions == args.concurrency)
    {
        let _ = writeln!(
            s,
            "{} throughput, {}: {:.0} turns/s (>= 3000: {})",
            c.durability,
            c.label,
            c.baton.turns_per_sec,
            verdict(c.baton.turns_per_sec >= 3000.0)
        );
    }
    if let Some(i) = &r.idle_rss {
        let _ = writeln!(
            s,
            "RSS per live idle session: {:.2} KiB (<= 20: {})",
            i.kib_per_session,
            verdict(i.kib_per_session <= 20.0 && i.live_added_ok)
        );
    }
    if let Some(p) = &r.persisted {
        let _ = writeln!(
            s,
            "persisted sessions: {} created, {} listed (>= 100000: {})",
            p.sessions - p.errors as usize,
            p.listed,
            verdict(p.listed >= 100_000 && p.errors == 0)
        );
    }
    let _ = writeln!(s, "\ntotal {:.1} s", r.total_secs);
    s
}
