//! Baton's routing benchmark: what the router costs per decision and per
//! call, and what a cascade saves.
//!
//! 1. **Decision overhead.** `Router::decide` (the candidate filtering and
//!    strategy choice of a call's first attempt, sync, nothing reserved) is
//!    timed in batches over echo endpoints (no network) for every strategy,
//!    a `by_complexity` route scoring a 2 KB conversation with regex
//!    signals (and a fallback route on the same conversation to compare
//!    with), a fallback route on a 64 KB conversation, a cascade's first
//!    step, and a route where half the endpoints lack a capability the
//!    request needs. Each case's decision is checked before it is timed.
//! 2. **Call overhead.** A whole `Router::call` against an echo endpoint vs
//!    that endpoint's `ExecutorHandle::call`, one call at a time, in
//!    alternating blocks.
//! 3. **Cascade.** A cascade `[cheap, strong]` with `min_confidence = 0.7`
//!    over two fake OpenAI servers on loopback, on a seeded workload with a
//!    known share of hard requests (the cheap model answers those with low
//!    token log-probabilities), against the same requests sent straight to
//!    the strong model and straight to the cheap one. Every answer's
//!    endpoint, text, escalation count and cost is checked; the bench fails
//!    on the first mismatch.
//!
//! Run with: cargo bench --bench routing -- [options]
//!
//! See `--help` for the options and docs/performance.md ("Routing") for the
//! method and the figures measured on the project's machine.

mod args;
mod cascade;
mod fixtures;
mod overhead;
mod report;

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::args::Args;
use crate::cascade::cascade_phase;
use crate::fixtures::{conversation_2kb, conversation_64kb, conversation_chars};
use crate::overhead::{call_phase, cases, decide_phase, echo_router};
use crate::report::{Machine, Report, loadavg, mem_total_kib, render};

async fn run(args: &Args) -> Result<Report> {
    let started = Instant::now();
    let loadavg_start = loadavg();
    let mut decide = Vec::new();
    let mut call = None;
    if args.has("decide") || args.has("call") {
        let router = echo_router().await?;
        if args.has("decide") {
            eprintln!("[routing] decide: {} cases", cases().len());
            decide = decide_phase(&router, args).await?;
        }
        if args.has("call") {
            eprintln!("[routing] call: Router::call vs ExecutorHandle::call");
            call = Some(call_phase(&router, args).await?);
        }
        router.models().stop().await;
    }
    let cascade = if args.has("cascade") {
        eprintln!("[routing] cascade: {} requests", args.requests);
        Some(cascade_phase(args).await?)
    } else {
        None
    };
    Ok(Report {
        machine: Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            mem_total_kib: mem_total_kib(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            loadavg_start,
            loadavg_end: loadavg(),
        },
        args: args.clone(),
        conversation_chars: conversation_chars(&conversation_2kb()),
        long_conversation_chars: conversation_chars(&conversation_64kb()),
        decide,
        call,
        cascade,
        total_secs: started.elapsed().as_secs_f64(),
    })
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    if args.quick {
        eprintln!("[routing] --quick: a smoke run; its figures are not meaningful");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&args))?;
    let text = render(&report);
    if args.json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
