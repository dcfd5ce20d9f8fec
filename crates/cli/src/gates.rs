//! `baton gates …`: a reviewer's client of the Gates API.

use anyhow::{Context, bail};
use baton_proto::convert;
use baton_proto::v1::{self, gates_client::GatesClient};
use baton_types::GateStatus;

use crate::client::{Conn, rpc_error};
use crate::print::{duration, one_line, until};

#[derive(Debug, clap::Subcommand)]
pub enum GateCommand {
    /// List gates, oldest first (or with --queue, as reviewers see them).
    List {
        /// pending or decided (default: both).
        #[arg(long)]
        status: Option<String>,
        /// Only this session's gates.
        #[arg(long, default_value = "")]
        session: String,
        /// Only gates of this policy.
        #[arg(long, default_value = "")]
        policy: String,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
        /// Pending gates in the reviewers' queue order: nearest deadline
        /// first, then newest (no --session or --policy).
        #[arg(long)]
        queue: bool,
    },
    /// Show a gate: what it holds (the subject) and the session's recent
    /// conversation.
    Show { gate_id: String },
    /// Let the held action go ahead.
    Approve {
        gate_id: String,
        /// Who decides, on a server without authentication (recorded as
        /// `local:<name>`); with authentication the caller's key (or
        /// token, or certificate) is the reviewer and this is ignored.
        #[arg(long, default_value = "")]
        reviewer: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Stop the held action; the reason is what the model (or flow) receives.
    Reject {
        gate_id: String,
        /// As for `approve`.
        #[arg(long, default_value = "")]
        reviewer: String,
        #[arg(long)]
        reason: String,
    },
    /// Replace the held payload (tool arguments as JSON, the answer text, …)
    /// and go ahead.
    Edit {
        gate_id: String,
        /// As for `approve`.
        #[arg(long, default_value = "")]
        reviewer: String,
        /// The replacement payload.
        #[arg(
            long,
            conflicts_with = "payload_file",
            required_unless_present = "payload_file"
        )]
        payload: Option<String>,
        /// Read the replacement payload from a file.
        #[arg(long)]
        payload_file: Option<std::path::PathBuf>,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn run(conn: Conn, cmd: GateCommand) -> anyhow::Result<()> {
    let mut client = GatesClient::new(crate::client::connect(&conn).await?);
    let json = conn.json;
    let (gate_id, decision, reviewer, reason, edited_payload) = match cmd {
        GateCommand::List {
            status,
            session,
            policy,
            page_size,
            page_token,
            queue,
        } => {
            let status = match status.as_deref() {
                None => v1::GateStatus::Unspecified,
                Some(s) => match GateStatus::parse(s) {
                    Ok(st) => convert::gate_status_to_proto(st),
                    Err(e) => bail!("{e}"),
                },
            };
            let r = client
                .list_gates(v1::ListGatesRequest {
                    status: status as i32,
                    session_id: session,
                    policy,
                    page_size,
                    page_token,
                    order: if queue {
                        v1::GateOrder::Queue
                    } else {
                        v1::GateOrder::Opened
                    } as i32,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_list(&r, json);
            return Ok(());
        }
        GateCommand::Show { gate_id } => {
            let g = client
                .get_gate(v1::GetGateRequest { gate_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!("{}", gate_json(&g));
            } else {
                print_gate(&g);
            }
            return Ok(());
        }
        GateCommand::Approve {
            gate_id,
            reviewer,
            reason,
        } => (
            gate_id,
            v1::GateDecision::Approve,
            reviewer,
            reason,
            String::new(),
        ),
        GateCommand::Reject {
            gate_id,
            reviewer,
            reason,
        } => (
            gate_id,
            v1::GateDecision::Reject,
            reviewer,
            reason,
            String::new(),
        ),
        GateCommand::Edit {
            gate_id,
            reviewer,
            payload,
            payload_file,
            reason,
        } => {
            let payload = match (payload, payload_file) {
                (Some(p), _) => p,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                (None, None) => bail!("give --payload or --payload-file"),
            };
            (gate_id, v1::GateDecision::Edit, reviewer, reason, payload)
        }
    };
    let g = client
        .decide_gate(v1::DecideGateRequest {
            gate_id,
            decision: decision as i32,
            reviewer,
            reason,
            edited_payload,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json {
        println!("{}", gate_json(&g));
    } else {
        let verb = match decision {
            v1::GateDecision::Approve => "approved",
            v1::GateDecision::Reject => "rejected",
            _ => "edited",
        };
        println!(
            "{verb} gate {} (session {}, turn {}) as {}",
            g.gate_id, g.session_id, g.turn, g.reviewer
        );
    }
    Ok(())
}

fn status_name(status: i32) -> &'static str {
    match convert::gate_status_from_proto(status) {
        Ok(Some(s)) => s.as_str(),
        _ => "unknown",
    }
}

/// The decision of a decided gate, by its wire name.
fn decision_name(decision: i32) -> Option<&'static str> {
    convert::decision_from_proto(decision).map(|d| d.as_str())
}

/// A gate as one JSON object; the subject is embedded as JSON when it is.
fn gate_json(g: &v1::Gate) -> serde_json::Value {
    let subject = serde_json::from_str::<serde_json::Value>(&g.subject)
        .unwrap_or_else(|_| serde_json::Value::String(g.subject.clone()));
    let context: Vec<_> = g
        .context
        .iter()
        .cloned()
        .filter_map(convert::message_from_proto)
        .collect();
    serde_json::json!({
        "gate_id": g.gate_id,
        "session_id": g.session_id,
        "turn": g.turn,
        "status": status_name(g.status),
        "kind": g.kind,
        "point": g.point,
        "policy": g.policy,
        "reason": g.reason,
        "reviewers": g.reviewers,
        "subject": subject,
        "call_id": g.call_id,
        "opened_at_unix_ms": g.opened_at_unix_ms,
        "deadline_unix_ms": g.deadline_unix_ms,
        "on_timeout": g.on_timeout,
        "decision": decision_name(g.decision).unwrap_or_default(),
        "reviewer": g.reviewer,
        "decision_reason": g.decision_reason,
        "edited": g.edited,
        "decided_at_unix_ms": g.decided_at_unix_ms,
        "by_timeout": g.by_timeout,
        "escalations": g.escalations,
        "context": context,
    })
}

fn age(opened_at_unix_ms: u64, now: u64) -> String {
    duration(now.saturating_sub(opened_at_unix_ms))
}

fn print_list(r: &v1::ListGatesResponse, json: bool) {
    if json {
        for g in &r.gates {
            println!("{}", gate_json(g));
        }
        if !r.next_page_token.is_empty() {
            println!(
                "{}",
                serde_json::json!({"next_page_token": r.next_page_token})
            );
        }
        return;
    }
    let now = baton_types::now_unix_ms();
    let header = [
        "ID",
        "STATUS",
        "KIND",
        "POLICY",
        "REVIEWERS",
        "SESSION",
        "TURN",
        "AGE",
        "REASON",
    ];
    let rows: Vec<[String; 9]> = r
        .gates
        .iter()
        .map(|g| {
            let status = match decision_name(g.decision) {
                Some(d) => format!("{}:{d}", status_name(g.status)),
                None => status_name(g.status).to_string(),
            };
            [
                g.gate_id.clone(),
                status,
                g.kind.clone(),
                g.policy.clone(),
                g.reviewers.clone(),
                g.session_id.clone(),
                g.turn.to_string(),
                age(g.opened_at_unix_ms, now),
                one_line(&g.reason),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no gates");
    } else {
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let n = cells.len();
            cells
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    if i + 1 == n {
                        c.to_string()
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        println!("{}", line(header.to_vec()));
        for row in &rows {
            println!("{}", line(row.iter().map(String::as_str).collect()));
        }
    }
    if !r.next_page_token.is_empty() {
        println!("more: --page-token {}", r.next_page_token);
    }
}

fn print_gate(g: &v1::Gate) {
    let now = baton_types::now_unix_ms();
    println!("gate        {}", g.gate_id);
    match decision_name(g.decision) {
        Some(d) => {
            let who = if g.by_timeout {
                "by timeout".to_string()
            } else {
                format!("by {}", g.reviewer)
            };
            let reason = if g.decision_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", one_line(&g.decision_reason))
            };
            println!(
                "status      {}: {d} {who}, {} ago{reason}",
                status_name(g.status),
                age(g.decided_at_unix_ms, now)
            );
        }
        None => println!("status      {}", status_name(g.status)),
    }
    println!("session     {}  turn {}", g.session_id, g.turn);
    println!(
        "kind        {} at {} (policy {})",
        g.kind, g.point, g.policy
    );
    println!("reason      {}", one_line(&g.reason));
    println!("reviewers   {}", g.reviewers);
    println!("opened      {} ago", age(g.opened_at_unix_ms, now));
    if g.deadline_unix_ms > 0 && decision_name(g.decision).is_none() {
        println!(
            "timeout     {} {}",
            g.on_timeout,
            until(g.deadline_unix_ms, now)
        );
    }
    if g.escalations > 0 {
        println!("escalated   {} time(s)", g.escalations);
    }
    if !g.call_id.is_empty() {
        println!("tool call   {}", g.call_id);
    }
    println!("subject:");
    let subject = match serde_json::from_str::<serde_json::Value>(&g.subject) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| g.subject.clone()),
        Err(_) => g.subject.clone(),
    };
    for l in subject.lines() {
        println!("  {l}");
    }
    if !g.edited.is_empty() {
        println!("edited:");
        for l in g.edited.lines() {
            println!("  {l}");
        }
    }
    let context: Vec<_> = g
        .context
        .iter()
        .cloned()
        .filter_map(convert::message_from_proto)
        .collect();
    if !context.is_empty() {
        println!("context:");
        for m in context {
            let mut line = one_line(&m.content);
            for c in &m.tool_calls {
                line.push_str(&format!(
                    " [calls {} {}({})]",
                    c.id,
                    c.name,
                    one_line(&c.arguments)
                ));
            }
            println!("  {:>9}: {line}", m.role.as_str());
        }
    }
}
