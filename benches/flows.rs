//! Flows, measured: the durable overhead per step and runs started per
//! second, embedded (runtime, flows and a RocksDB store in one process, as
//! an embedder runs them), with `store.durability = "sync"`.
//!
//! * `steps`: one run at a time of a flow of N steps against the same flow
//!   of 1 step; a step's overhead is the difference divided by N−1, per run
//!   (percentiles over the runs). Two kinds of step:
//!   - `tool`: a non-idempotent in-process tool that answers at once, so
//!     each step's start and outcome records are synced (fsync, group
//!     commit) before the run goes on: the cost of a durable step with an
//!     effect, without the effect's own time (the tool call's own cost,
//!     measured directly, is reported and subtracted);
//!   - `transform`: a pure step (one jq expression), journaled without
//!     waiting for an fsync.
//!
//!   A run's time is from `start_run` to its `run_completed` record on
//!   `watch`.
//! * `starts`: `--starts` runs of a flow that waits an hour (each is
//!   journaled, synced, indexed and passivated) started by `--concurrency`
//!   callers; runs started per second is starts / wall time.
//!
//! Run with: cargo bench --bench flows -- [--runs N] [--steps N] [--starts N] [--concurrency N]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_flows::{Flow, FlowBuilder, Flows, FlowsConfig, RunStatus, StartRun, StepBuilder};
use baton_runtime::{Runtime, RuntimeConfig, RuntimeHandle};
use baton_tools::{Tool, ToolError, ToolSpec};
use baton_types::Principal;
use futures::StreamExt;
use serde_json::json;

struct Opts {
    runs: usize,
    steps: usize,
    starts: usize,
    concurrency: usize,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        runs: 200,
        steps: 20,
        starts: 5000,
        concurrency: 64,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name}: not a number"))
        };
        match a.as_str() {
            "--runs" => o.runs = num("--runs")?,
            "--steps" => o.steps = num("--steps")?,
            "--starts" => o.starts = num("--starts")?,
            "--concurrency" => o.concurrency = num("--concurrency")?,
            "--bench" => {}
            "--help" | "-h" => {
                println!(
                    "cargo bench --bench flows -- [--runs N (200)] [--steps N (20)] [--starts N (5000)] [--concurrency N (64)]"
                );
                std::process::exit(0);
            }
            other => bail!(
                "unknown option {other:?}; options: --runs N --steps N --starts N --concurrency N"
            ),
        }
    }
    if o.steps < 2 || o.runs == 0 || o.concurrency == 0 {
        bail!("--steps must be at least 2, --runs and --concurrency at least 1");
    }
    Ok(o)
}

/// A non-idempotent tool that answers at once.
#[derive(Debug)]
struct Stamp(ToolSpec);

#[async_trait::async_trait]
impl Tool for Stamp {
    fn spec(&self) -> &ToolSpec {
        &self.0
    }
    async fn call(&self, arguments: serde_json::Value) -> Result<String, ToolError> {
        Ok(json!({ "stamped": arguments.get("n") }).to_string())
    }
}

fn stamp() -> Arc<dyn Tool> {
    Arc::new(Stamp(ToolSpec {
        name: "stamp".into(),
        description: "stamps a number".into(),
        parameters: json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
        output_schema: None,
        idempotent: false,
        timeout: Duration::from_secs(10),
    }))
}

fn flow(name: &str, steps: usize, tool: bool) -> Result<Flow> {
    let mut b = FlowBuilder::new(name);
    for i in 0..steps {
        let id = format!("s{i}");
        b = b.step(if tool {
            StepBuilder::tool(id, "stamp").arguments(format!("{{n: {i}}}"))
        } else {
            StepBuilder::transform(id, format!(".input.n + {i}"))
        });
    }
    Ok(b.build()?)
}

async fn run_once(flows: &Flows, name: &str, by: &Principal) -> Result<Duration> {
    let t0 = Instant::now();
    let started = flows
        .start_run(
            StartRun {
                flow: name.into(),
                input: json!({"n": 1}),
                ..StartRun::default()
            },
            by,
        )
        .await?;
    let mut events = flows.watch(started.id, 0, by).await?;
    while let Some(r) = events.next().await {
        let r = r?;
        match r.event.type_name() {
            "run_completed" => return Ok(t0.elapsed()),
            "run_failed" | "run_cancelled" | "needs_attention" => {
                bail!("run {} ended as {}", started.id, r.event.type_name())
            }
            _ => {}
        }
    }
    let meta = flows.meta(started.id, by).await?;
    if meta.status == RunStatus::Completed {
        return Ok(t0.elapsed());
    }
    bail!("run {} is {:?}: {}", started.id, meta.status, meta.reason)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (pct(&v, 0.5), pct(&v, 0.95), pct(&v, 0.99))
}

async fn steps_phase(rt: &RuntimeHandle, flows: &Flows, o: &Opts, tool: bool) -> Result<()> {
    let by = Principal::embedded();
    let kind = if tool { "tool" } else { "transform" };
    let (one, many) = (format!("{kind}_1"), format!("{kind}_n"));
    // Warm up.
    for _ in 0..10 {
        run_once(flows, &one, &by).await?;
        run_once(flows, &many, &by).await?;
    }
    let mut base = Vec::with_capacity(o.runs);
    let mut full = Vec::with_capacity(o.runs);
    for _ in 0..o.runs {
        base.push(run_once(flows, &one, &by).await?.as_secs_f64() * 1e3);
        full.push(run_once(flows, &many, &by).await?.as_secs_f64() * 1e3);
    }
    let (base_p50, _, _) = summary(base.clone());
    // The tool call's own cost, outside any flow.
    let mut direct = Vec::new();
    if tool {
        for i in 0..o.runs {
            let t0 = Instant::now();
            rt.call_tool("stamp", &json!({"n": i}))
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            direct.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (direct_p50, _, _) = summary(direct.clone());
    let direct_p50 = if tool { direct_p50 } else { 0.0 };
    let n = (o.steps - 1) as f64;
    let per_step: Vec<f64> = full
        .iter()
        .map(|t| ((t - base_p50) / n - direct_p50).max(0.0))
        .collect();
    let (p50, p95, p99) = summary(per_step);
    let (run_p50, _, _) = summary(full);
    eprintln!(
        "steps/{kind}: {} runs of {} steps; run p50 {run_p50:.2} ms (1-step run p50 {base_p50:.2} ms){}",
        o.runs,
        o.steps,
        if tool {
            format!("; direct tool call p50 {direct_p50:.3} ms (subtracted)")
        } else {
            String::new()
        }
    );
    println!(
        "steps/{kind}: durable overhead per step p50 {p50:.3} ms, p95 {p95:.3} ms, p99 {p99:.3} ms"
    );
    Ok(())
}

async fn starts_phase(flows: &Flows, o: &Opts) -> Result<()> {
    let by = Principal::embedded();
    let t0 = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(0..o.starts)
        .map(|n| {
            let flows = flows.clone();
            let by = by.clone();
            async move {
                flows
                    .start_run(
                        StartRun {
                            flow: "later".into(),
                            input: json!({"n": n}),
                            ..StartRun::default()
                        },
                        &by,
                    )
                    .await
                    .map(|_| ())
                    .map_err(Into::into)
            }
        })
        .buffer_unordered(o.concurrency)
        .collect()
        .await;
    let took = t0.elapsed();
    for r in results {
        r?;
    }
    println!(
        "starts: {} runs started by {} callers in {:.2} s: {:.0} runs/s",
        o.starts,
        o.concurrency,
        took.as_secs_f64(),
        o.starts as f64 / took.as_secs_f64()
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = opts()?;
    let dir = tempfile::tempdir()?;
    let mut c = RuntimeConfig::with_data_dir(dir.path());
    c.store.durability = baton_store::Durability::Sync;
    let rt = Runtime::builder(c).with_tool(stamp()).start().await?;
    let defs = vec![
        flow("tool_1", 1, true)?,
        flow("tool_n", o.steps, true)?,
        flow("transform_1", 1, false)?,
        flow("transform_n", o.steps, false)?,
        FlowBuilder::new("later")
            .step(StepBuilder::wait_for("pause", "1h"))
            .build()?,
    ];
    let config = FlowsConfig {
        inline_wait_ms: 0,
        ..FlowsConfig::default()
    };
    let flows = Flows::start(rt.clone(), config, defs).await?;
    eprintln!(
        "flows bench: store.durability = sync, data dir {}",
        dir.path().display()
    );
    steps_phase(&rt, &flows, &o, true).await?;
    steps_phase(&rt, &flows, &o, false).await?;
    starts_phase(&flows, &o).await?;
    flows.shutdown().await;
    rt.shutdown().await;
    Ok(())
}
