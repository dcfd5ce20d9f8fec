//! Baton's load generator: one run measures the disk's fsync floor, a direct
//! baseline against an instant OpenAI-compatible upstream, the same traffic
//! through Baton over gRPC (sync and buffered durability, closed and open
//! loop, with the group-commit counters), resident memory per live idle
//! session, and the creation of many persisted sessions.
//!
//! Run with: cargo bench --bench load -- [options]
//!
//! See `--help` for the options and docs/performance.md for the method and
//! the figures measured on the project's machine.

/// The allocator the `baton` binary uses (see src/main.rs), so the figures
/// are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod args;
mod baton;
mod delay;
mod flat;
mod report;
mod scenarios;
mod sys;
mod traffic;
mod upstream;

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::args::Args;
use crate::report::{Report, progress, render};
use crate::scenarios::{idle_rss, in_child, latency_and_throughput, persisted};
use crate::sys::{fsync_floor, machine};
use crate::upstream::start_upstream;

async fn run(args: Args, upstream: std::net::SocketAddr) -> Result<Report> {
    let t = Instant::now();
    let mut report = Report {
        machine: Some(machine(&args.data_dir)),
        args: format!("{args:?}"),
        ..Default::default()
    };
    if args.has("fsync") {
        progress("fsync floor");
        let (dir, n) = (args.data_dir.clone(), args.fsync_iters);
        report.fsync = Some(tokio::task::spawn_blocking(move || fsync_floor(&dir, n)).await??);
    }
    if args.has("latency") || args.has("throughput") || args.has("frontdoor") {
        latency_and_throughput(&args, upstream, &mut report).await?;
    }
    if args.has("rss") {
        progress(&format!("RSS of {} live idle sessions", args.idle_sessions));
        report.idle_rss = Some(if args.child {
            idle_rss(&args, false).await?
        } else {
            serde_json::from_value(in_child(&args, "rss").await?["idle_rss"].take())?
        });
    }
    if args.has("oneshot") {
        progress(&format!(
            "RSS after {} one-shot sessions",
            args.idle_sessions
        ));
        report.one_shot_rss = Some(if args.child {
            idle_rss(&args, true).await?
        } else {
            serde_json::from_value(in_child(&args, "oneshot").await?["one_shot_rss"].take())?
        });
    }
    if args.has("flat") {
        progress(&format!("memory over {} front-door calls", args.calls));
        report.flat = Some(if args.child {
            flat::flat(&args, upstream).await?
        } else {
            serde_json::from_value(in_child(&args, "flat").await?["flat"].take())?
        });
    }
    if args.has("persisted") {
        progress(&format!("{} persisted sessions", args.persisted));
        report.persisted = Some(if args.child {
            persisted(&args).await?
        } else {
            serde_json::from_value(in_child(&args, "persisted").await?["persisted"].take())?
        });
    }
    report.total_secs = t.elapsed().as_secs_f64();
    Ok(report)
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    if args.owning {
        if !args.postgres {
            anyhow::bail!("--owning needs --postgres");
        }
        baton::OWNING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if args.postgres {
        let server = baton_pgtest::PgServer::start().map_err(anyhow::Error::msg)?;
        eprintln!("store: PostgreSQL on 127.0.0.1:{}", server.port());
        if args.pg_delay_us > 0 {
            let via = delay::start(
                ([127, 0, 0, 1], server.port()).into(),
                Duration::from_micros(args.pg_delay_us),
            )?;
            eprintln!(
                "store: reached through a delay line on {via}, {} µs each way",
                args.pg_delay_us
            );
            let _ = baton::PG_VIA.set(via.port());
        }
        let _ = baton::POSTGRES.set(server);
    }
    if let Ok(f) = std::env::var("LOAD_TRACE_FILE") {
        let file = std::fs::File::create(f)?;
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init();
    }
    if args.quick {
        eprintln!("[load] --quick: a smoke run; its figures are not meaningful");
    }
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("upstream")
        .enable_all()
        .build()?;
    let upstream = start_upstream(&upstream_rt)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(args.clone(), upstream))?;
    let text = render(&report, &args);
    if args.child {
        println!("{}", serde_json::to_string(&report)?);
    } else if args.json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    upstream_rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
