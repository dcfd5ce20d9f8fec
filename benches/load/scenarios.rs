//! The scenarios that drive Baton: latency and throughput against the direct
//! baseline, RSS per live idle session, many persisted sessions, and the
//! child process the memory phases run in.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use baton_runtime::{Durability, ListQuery, Runtime, RuntimeConfig, RuntimeHandle, StartSession};
use futures::StreamExt;
use serde_json::Value;

use crate::args::Args;
use crate::baton::{Baton, data_dir, durability_name};
use crate::report::{IdleRss, Persisted, Report, RunResult, compare, progress, writer_delta};
use crate::sys::{dir_size, rss_kib};
use crate::traffic::{RunSpec, Target, closed_loop, open_loop};

// ---------------------------------------------------------------------------
// 2 + 3. Latency (direct vs Baton) and throughput

/// One measured run of `target`: an open loop at `rate`, or a closed loop.
async fn run(
    args: &Args,
    label: String,
    target: &Target,
    durability: Option<&'static str>,
    sessions: usize,
    runtime: Option<&RuntimeHandle>,
    rate: Option<f64>,
) -> Result<RunResult> {
    progress(&label);
    let spec = RunSpec {
        label,
        target,
        durability,
        sessions,
        warmup: args.warmup,
        duration: args.duration,
        turns_per_session: args.turns_per_session,
        runtime,
    };
    match rate {
        Some(rate) => open_loop(spec, rate).await,
        None => closed_loop(spec).await,
    }
}

pub(crate) async fn latency_and_throughput(
    args: &Args,
    upstream: std::net::SocketAddr,
    report: &mut Report,
) -> Result<()> {
    let direct = Target::Direct {
        client: reqwest::Client::builder().tcp_nodelay(true).build()?,
        url: format!("http://{upstream}/v1/chat/completions").into(),
    };
    let mut configs = vec![(Durability::Sync, false), (Durability::Buffered, false)];
    if args.has("nodelay") {
        configs.extend([(Durability::Sync, true), (Durability::Buffered, true)]);
    }
    for (durability, nodelay) in configs {
        let dname = if nodelay {
            match durability {
                Durability::Sync => "sync+nodelay",
                Durability::Buffered => "buffered+nodelay",
            }
        } else {
            durability_name(durability)
        };
        let baton = Baton::start(&args.data_dir, durability, upstream, nodelay, args.audit).await?;
        let grpc = baton.grpc(4).await?;
        let h = Some(&baton.handle);
        // The direct client and Baton (`target`) under the same traffic.
        let versus = |label: String, target: &Target, n: usize, rate: Option<f64>| {
            let target = target.clone();
            let direct = direct.clone();
            async move {
                let d = run(
                    args,
                    format!("direct {label}"),
                    &direct,
                    None,
                    n,
                    None,
                    rate,
                )
                .await?;
                let b = run(
                    args,
                    format!("baton {dname} {label}"),
                    &target,
                    Some(dname),
                    n,
                    h,
                    rate,
                )
                .await?;
                Ok::<_, anyhow::Error>((label, d, b))
            }
        };
        if args.has("latency") {
            let n = args.sessions;
            // Open loop at the target rate: the added-latency comparison.
            let label = format!("open {:.0}/s, {n} sessions", args.rate);
            let (label, d, b) = versus(label, &grpc, n, Some(args.rate)).await?;
            report.comparisons.push(compare(&label, d, b));
            // Closed loop at the same session count.
            let (label, d, b) = versus(format!("closed, {n} sessions"), &grpc, n, None).await?;
            report.comparisons.push(compare(&label, d, b));
        }
        if args.has("throughput") && durability == Durability::Sync {
            let n = args.concurrency;
            let (label, d, b) = versus(format!("closed, {n} sessions"), &grpc, n, None).await?;
            let embedded = Target::Embedded {
                handle: baton.handle.clone(),
            };
            let e = run(
                args,
                format!("baton-embedded {dname} {label}"),
                &embedded,
                Some(dname),
                n,
                h,
                None,
            )
            .await?;
            report.comparisons.push(compare(&label, d.clone(), b));
            report
                .comparisons
                .push(compare(&format!("{label}, embedded API"), d, e));
        }
        if args.has("frontdoor") && durability == Durability::Sync && !nodelay {
            // The OpenAI front door: the direct client's very requests, at
            // 400 requests/s (open loop), then 32 clients as fast as they go.
            let front = baton.front_door()?;
            let (n, rate) = (args.sessions, 400.0);
            let label = format!("front door, open {rate:.0}/s, {n} clients");
            let (label, d, b) = versus(label, &front, n, Some(rate)).await?;
            report.comparisons.push(compare(&label, d, b));
            let label = "front door, closed, 32 clients".to_string();
            let (label, d, b) = versus(label, &front, 32, None).await?;
            report.comparisons.push(compare(&label, d, b));
        }
        baton.stop().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. RSS per live idle session

async fn create_and_touch(h: &RuntimeHandle, n: usize, in_flight: usize, one_shot: bool) -> u64 {
    futures::stream::iter(0..n)
        .map(|i| {
            let h = h.clone();
            async move {
                let s = h
                    .start_session(StartSession {
                        one_shot,
                        ..StartSession::default()
                    })
                    .await?;
                let mut events = h.send(s.id, format!("hello {i}")).await?;
                while let Some(ev) = events.next().await {
                    if ev?.ends_turn() {
                        break;
                    }
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(in_flight)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await as u64
}

/// RSS per session after `--idle-sessions` sessions with one turn each:
/// ordinary ones stay live (the idle timeout is an hour), one-shot ones
/// (`one_shot`, what the front door makes) leave memory when their turn ends.
pub(crate) async fn idle_rss(args: &Args, one_shot: bool) -> Result<IdleRss> {
    let dir = data_dir(&args.data_dir, "rss")?;
    // The built-in echo endpoint: no HTTP client buffers in the figure.
    let mut cfg = RuntimeConfig::with_data_dir(dir.path());
    cfg.sessions.passivate_after_ms = 3_600_000;
    let h = Runtime::builder(cfg).start().await?;
    let m = args.idle_sessions;
    let warm = (m / 10).clamp(1, 1000);
    let in_flight = 256;
    // Warm the allocator, the writer and the memtable first.
    let mut errors = create_and_touch(&h, warm, in_flight, one_shot).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live_before = h.stats().await?.live_sessions;
    let rss_before_kib = rss_kib()?;
    let t = Instant::now();
    errors += create_and_touch(&h, m, in_flight, one_shot).await;
    let create_and_turn_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after_kib = rss_kib()?;
    let live_after = h.stats().await?.live_sessions;
    h.shutdown().await;
    Ok(IdleRss {
        sessions: m,
        warmup_sessions: warm,
        create_and_turn_secs,
        rss_before_kib,
        rss_after_kib,
        kib_per_session: (rss_after_kib as f64 - rss_before_kib as f64) / m as f64,
        live_before,
        live_after,
        live_added_ok: live_after == live_before + m,
        errors,
    })
}

// ---------------------------------------------------------------------------
// 5. Many persisted sessions

pub(crate) async fn persisted(args: &Args) -> Result<Persisted> {
    let dir = data_dir(&args.data_dir, "persisted")?;
    let mut cfg = RuntimeConfig::with_data_dir(dir.path());
    cfg.store.durability = Durability::Sync;
    let h = Runtime::builder(cfg).start().await?;
    let n = args.persisted;
    let in_flight = 256;
    let rss_before_kib = rss_kib()?;
    let w0 = h.writer_stats();
    let t = Instant::now();
    let errors = futures::stream::iter(0..n)
        .map(|_| {
            let h = h.clone();
            async move { h.start_session(StartSession::default()).await }
        })
        .buffer_unordered(in_flight)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await as u64;
    let secs = t.elapsed().as_secs_f64();
    let writer = writer_delta(w0, h.writer_stats(), n as u64);
    let rss_after_kib = rss_kib()?;
    let live_sessions_after = h.stats().await?.live_sessions;
    let t = Instant::now();
    let mut listed = 0u64;
    let mut list_pages = 0u64;
    let mut token = None;
    loop {
        let page = h
            .list(ListQuery {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await?;
        listed += page.sessions.len() as u64;
        list_pages += 1;
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    let list_secs = t.elapsed().as_secs_f64();
    let size = dir_size(dir.path())?;
    h.shutdown().await;
    Ok(Persisted {
        sessions: n,
        durability: "sync".into(),
        in_flight,
        errors,
        secs,
        sessions_per_sec: n as f64 / secs,
        writer,
        rss_before_kib,
        rss_after_kib,
        rss_kib_per_1000_sessions: (rss_after_kib as f64 - rss_before_kib as f64) * 1000.0
            / n as f64,
        live_sessions_after,
        listed,
        list_pages,
        list_secs,
        data_dir_bytes: size.bytes,
        data_dir_allocated_bytes: size.allocated,
        wal_bytes: size.wal,
        sst_bytes: size.sst,
    })
}

/// Run a memory phase in a fresh process of this bench, so that what the
/// other phases allocated (and the allocator kept for reuse) neither hides
/// nor inflates its RSS delta.
pub(crate) async fn in_child(args: &Args, phase: &str) -> Result<Value> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--child", "--json", "--phases", phase])
        .args(["--idle-sessions", &args.idle_sessions.to_string()])
        .args(["--persisted", &args.persisted.to_string()])
        .args(["--calls", &args.calls.to_string()])
        .args(args.audit.then_some("--audit"))
        .arg("--data-dir")
        .arg(&args.data_dir)
        // `output()` would capture stderr whatever is set here: spawn, so
        // the child's progress and errors reach the terminal.
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?
        .wait_with_output()
        .await?;
    if !out.status.success() {
        bail!("the {phase} child process failed: {}", out.status);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
