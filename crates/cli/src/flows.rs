//! `baton flows …`: a client of the Flows API.

use anyhow::Context;
use baton_proto::v1::{self, flows_client::FlowsClient};
use futures::StreamExt;
use serde_json::json;

use crate::client::{Conn, rpc_error};

#[derive(Debug, clap::Subcommand)]
pub enum FlowCommand {
    /// The flows loaded now, with their versions and unfinished runs.
    List,
    /// Start a run; prints its id.
    Start {
        flow: String,
        /// The input, JSON text.
        #[arg(long, default_value = "null", conflicts_with = "input_file")]
        input: String,
        /// Read the input from a file.
        #[arg(long)]
        input_file: Option<std::path::PathBuf>,
        /// The same key always yields the same run.
        #[arg(long, default_value = "")]
        idempotency_key: String,
    },
    /// A run: status, step outputs, timers, pending signals.
    Get {
        run_id: String,
        /// Show it as it was at this seq of its journal (time travel).
        #[arg(long, default_value_t = 0)]
        at_seq: u64,
    },
    /// The runs of your tenant, oldest first.
    Runs {
        #[arg(long, default_value = "")]
        flow: String,
        /// running, waiting, needs_attention, completed, failed or cancelled.
        #[arg(long, default_value = "")]
        status: String,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Print a run's journal from after_seq, then follow it until it ends.
    Watch {
        run_id: String,
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
    },
    /// Cancel a run.
    Cancel {
        run_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deliver a signal to a run (a `wait` step on it takes it).
    Signal {
        run_id: String,
        name: String,
        /// The payload, JSON text.
        #[arg(long, default_value = "null")]
        payload: String,
    },
    /// Answer a run that needs attention: retry or skip the step.
    Resolve { run_id: String, action: String },
    /// Read the definitions directory again now (admin).
    Reload,
    /// Replay a run over its recorded outcomes and compare (nothing is sent).
    Replay {
        run_id: String,
        /// Over the flow's current version instead of the one it ran.
        #[arg(long)]
        current: bool,
    },
}

fn run_json(r: &v1::Run) -> serde_json::Value {
    let parse = |s: &str| {
        if s.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
        }
    };
    json!({
        "run_id": r.run_id,
        "flow": r.flow,
        "version": r.version,
        "tenant": r.tenant,
        "started_by": r.started_by,
        "status": r.status,
        "reason": r.reason,
        "trigger": r.trigger,
        "created_at_unix_ms": r.created_at_unix_ms,
        "wake_at_unix_ms": r.wake_at_unix_ms,
        "output": parse(&r.output_json),
        "seq": r.seq,
        "input": parse(&r.input_json),
        "steps": r.steps.iter().map(|s| (s.path.clone(), parse(&s.output_json))).collect::<serde_json::Map<_, _>>(),
        "in_flight": r.in_flight,
        "timers": r.timers,
        "pending_signals": r.pending_signals,
        "status_at_seq": r.status_at_seq,
    })
}

fn print_run(r: &v1::Run) {
    println!(
        "run {} — flow {}@{} — {}",
        r.run_id, r.flow, r.version, r.status
    );
    if !r.reason.is_empty() {
        println!("  reason: {}", r.reason);
    }
    if r.wake_at_unix_ms > 0 {
        println!("  wakes at {} (unix ms)", r.wake_at_unix_ms);
    }
    if !r.status_at_seq.is_empty() && r.seq > 0 {
        println!("  at seq {}: {}", r.seq, r.status_at_seq);
    }
    for s in &r.steps {
        println!("  {} = {}", s.path, s.output_json);
    }
    for p in &r.in_flight {
        println!("  {p}: started, not finished");
    }
    for (p, at) in &r.timers {
        println!("  {p}: timer at {at}");
    }
    if !r.pending_signals.is_empty() {
        println!("  pending signals: {}", r.pending_signals.join(", "));
    }
    if !r.output_json.is_empty() {
        println!("  output: {}", r.output_json);
    }
}

pub async fn run(conn: Conn, cmd: FlowCommand) -> anyhow::Result<()> {
    let mut client = FlowsClient::new(crate::client::connect(&conn).await?);
    let json = conn.json;
    match cmd {
        FlowCommand::List => {
            let r = client
                .list_flows(v1::ListFlowsRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            for f in &r.flows {
                if json {
                    println!(
                        "{}",
                        json!({"name": f.name, "version": f.version, "description": f.description,
                               "steps": f.steps, "max_active_runs": f.max_active_runs, "active_runs": f.active_runs})
                    );
                } else {
                    println!(
                        "{}@{}  {} steps  {} active{}  {}",
                        f.name,
                        f.version,
                        f.steps,
                        f.active_runs,
                        if f.max_active_runs > 0 {
                            format!(" (of {})", f.max_active_runs)
                        } else {
                            String::new()
                        },
                        f.description
                    );
                }
            }
            for e in &r.errors {
                eprintln!("definition error: {e}");
            }
        }
        FlowCommand::Start {
            flow,
            input,
            input_file,
            idempotency_key,
        } => {
            let input_json = match input_file {
                Some(p) => std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
                None => input,
            };
            let r = client
                .start_run(v1::StartRunRequest {
                    flow,
                    input_json,
                    idempotency_key,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!("{}", json!({"run_id": r.run_id, "created": r.created}));
            } else if r.created {
                println!("{}", r.run_id);
            } else {
                println!("{} (already started with this key)", r.run_id);
            }
        }
        FlowCommand::Get { run_id, at_seq } => {
            let r = client
                .get_run(v1::GetRunRequest { run_id, at_seq })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!("{}", run_json(&r));
            } else {
                print_run(&r);
            }
        }
        FlowCommand::Runs {
            flow,
            status,
            page_size,
            page_token,
        } => {
            let r = client
                .list_runs(v1::ListRunsRequest {
                    flow,
                    status,
                    page_size,
                    page_token,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for run in &r.runs {
                if json {
                    println!("{}", run_json(run));
                } else {
                    println!(
                        "{}  {}@{}  {}  {}",
                        run.run_id, run.flow, run.version, run.status, run.reason
                    );
                }
            }
            if !r.next_page_token.is_empty() && !json {
                println!("next page: --page-token {}", r.next_page_token);
            }
        }
        FlowCommand::Watch { run_id, after_seq } => {
            let mut s = client
                .watch_run(v1::WatchRunRequest { run_id, after_seq })
                .await
                .map_err(rpc_error)?
                .into_inner();
            while let Some(rec) = s.next().await {
                let rec = rec.map_err(rpc_error)?;
                if json {
                    println!("{}", rec.record_json);
                } else {
                    println!("{:>5} {}  {}", rec.seq, rec.r#type, rec.record_json);
                }
            }
        }
        FlowCommand::Cancel { run_id, reason } => {
            let r = client
                .cancel_run(v1::CancelRunRequest { run_id, reason })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!("{}", run_json(&r));
            } else {
                println!("cancelled run {}", r.run_id);
            }
        }
        FlowCommand::Signal {
            run_id,
            name,
            payload,
        } => {
            let r = client
                .signal_run(v1::SignalRunRequest {
                    run_id,
                    name,
                    payload_json: payload,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!("{}", json!({"seq": r.seq}));
            } else {
                println!("signal delivered (seq {})", r.seq);
            }
        }
        FlowCommand::Resolve { run_id, action } => {
            let r = client
                .resolve_run(v1::ResolveRunRequest { run_id, action })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!("{}", run_json(&r));
            } else {
                println!("run {} is {}", r.run_id, r.status);
            }
        }
        FlowCommand::Reload => {
            let r = client
                .reload_flows(v1::ReloadFlowsRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    json!({"changed": r.changed, "removed": r.removed, "errors": r.errors})
                );
            } else {
                for c in &r.changed {
                    println!("changed {c}");
                }
                for c in &r.removed {
                    println!("removed {c}");
                }
                for e in &r.errors {
                    println!("error {e}");
                }
            }
        }
        FlowCommand::Replay { run_id, current } => {
            let r = client
                .replay_run(v1::ReplayRunRequest {
                    run_id,
                    current_version: current,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    json!({"version": r.version, "compared": r.compared, "diverged": r.diverged,
                           "divergence": r.divergence, "status": r.status,
                           "output": serde_json::from_str::<serde_json::Value>(&r.output_json).ok()})
                );
            } else {
                println!(
                    "replayed over {}: {} step outputs compared, {}",
                    r.version, r.compared, r.status
                );
                if r.diverged {
                    println!("diverged: {}", r.divergence);
                } else {
                    println!("no divergence");
                }
            }
        }
    }
    Ok(())
}
