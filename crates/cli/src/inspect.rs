//! `baton inspect …`: a client of the Inspect API — the actor tree, a
//! session's state and journal, time travel, forks and replays.

use std::io::Write;

use anyhow::Context;
use baton_proto::v1::{self, inspect_client::InspectClient};
use baton_types::SessionEvent;

use crate::client::{Conn, rpc_error};
use crate::print::{describe, one_line, status_name};

#[derive(Debug, clap::Subcommand)]
pub enum InspectCommand {
    /// The live actor tree: supervisor, live sessions, executors, writer.
    Actors,
    /// A session's whole state (live, or rebuilt from its journal without
    /// waking it).
    Session { session_id: String },
    /// A session's journal, one record per line.
    Journal {
        session_id: String,
        /// Records after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Records per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Every record after --after, page by page.
        #[arg(long)]
        all: bool,
    },
    /// The state as it was right after record SEQ (time travel).
    At { session_id: String, seq: u64 },
    /// A new session continuing from record SEQ of this one.
    Fork {
        session_id: String,
        seq: u64,
        /// Print only the new session's id (for `ID=$(baton inspect fork …)`).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Re-run the session's turns against its recorded model answers, tool
    /// results and gate decisions and compare the journals; a replay stops
    /// at a gate or client tool call the recording has no answer for.
    Replay { session_id: String },
}

/// A channel to the server `conn` names.
pub(crate) async fn channel(conn: &Conn) -> anyhow::Result<crate::client::Authed> {
    crate::client::connect(conn).await
}

pub async fn run(conn: Conn, cmd: InspectCommand) -> anyhow::Result<()> {
    match print(conn, cmd, &mut std::io::stdout()).await {
        // `baton inspect … | head`: the reader has what it wanted.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        r => r,
    }
}

async fn print(conn: Conn, cmd: InspectCommand, out: &mut impl Write) -> anyhow::Result<()> {
    let mut client = InspectClient::new(channel(&conn).await?);
    let json = conn.json;
    match cmd {
        InspectCommand::Actors => {
            let r = client
                .list_actors(v1::ListActorsRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            let root = r.root.context("the server sent no actor tree")?;
            if json {
                writeln!(out, "{}", actor_json(&root))?;
            } else {
                print_tree(out, &root, 0)?;
            }
        }
        InspectCommand::Session { session_id } => {
            let v = client
                .get_session_state(v1::GetSessionStateRequest {
                    session_id: session_id.clone(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_state(out, &session_id, &v, json)?;
        }
        InspectCommand::At { session_id, seq } => {
            let v = client
                .get_state_at(v1::GetStateAtRequest {
                    session_id: session_id.clone(),
                    seq,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_state(out, &session_id, &v, json)?;
        }
        InspectCommand::Journal {
            session_id,
            after,
            limit,
            all,
        } => {
            let mut after = after;
            loop {
                let page = client
                    .get_journal(v1::GetJournalRequest {
                        session_id: session_id.clone(),
                        after_seq: after,
                        page_size: limit,
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                for r in &page.records {
                    if json {
                        writeln!(out, "{}", r.json)?;
                    } else {
                        writeln!(out, "{}", record_line(r))?;
                    }
                }
                if page.next_after_seq == 0 {
                    break;
                }
                if !all {
                    if json {
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({"next_after_seq": page.next_after_seq, "last_seq": page.last_seq})
                        )?;
                    } else {
                        writeln!(
                            out,
                            "more: --after {} (last seq {}), or --all",
                            page.next_after_seq, page.last_seq
                        )?;
                    }
                    break;
                }
                after = page.next_after_seq;
            }
        }
        InspectCommand::Fork {
            session_id,
            seq,
            quiet,
        } => {
            let r = client
                .fork_session(v1::ForkSessionRequest {
                    session_id: session_id.clone(),
                    at_seq: seq,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"session_id": r.session_id, "status": status_name(r.status),
                        "forked_from": format!("{session_id}@{seq}")})
                )?;
            } else if quiet {
                writeln!(out, "{}", r.session_id)?;
            } else {
                writeln!(
                    out,
                    "forked {session_id} at seq {seq} as {} ({})",
                    r.session_id,
                    status_name(r.status)
                )?;
            }
        }
        InspectCommand::Replay { session_id } => {
            let r = client
                .replay_session(v1::ReplaySessionRequest { session_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_replay(out, &r, json)?;
        }
    }
    Ok(())
}

/// An actor subtree as one JSON object.
fn actor_json(n: &v1::ActorNode) -> serde_json::Value {
    serde_json::json!({
        "kind": n.kind,
        "id": n.id,
        "name": n.name,
        "status": n.status,
        "uptime_ms": n.uptime_ms,
        "restarts": n.restarts,
        "queue_len": n.queue_len,
        "detail": n.detail.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "children": n.children.iter().map(actor_json).collect::<Vec<_>>(),
    })
}

/// One line per actor, children indented under their parent.
fn print_tree(out: &mut impl Write, n: &v1::ActorNode, depth: usize) -> std::io::Result<()> {
    writeln!(out, "{}{}", "  ".repeat(depth), actor_line(n))?;
    for c in &n.children {
        print_tree(out, c, depth + 1)?;
    }
    Ok(())
}

/// `kind name [status] uptime 12.3s restarts 0 queue 0 key=value…`
fn actor_line(n: &v1::ActorNode) -> String {
    let mut line = format!(
        "{} {} [{}] uptime {:.1}s restarts {}",
        n.kind,
        n.name,
        n.status,
        n.uptime_ms as f64 / 1000.0,
        n.restarts
    );
    if let Some(q) = n.queue_len {
        line.push_str(&format!(" queue {q}"));
    }
    let mut detail: Vec<_> = n.detail.iter().collect();
    detail.sort();
    for (k, v) in detail {
        line.push_str(&format!(" {k}={v}"));
    }
    line
}

/// `seq  time  kind  summary` for one journal record.
fn record_line(r: &v1::JournalRecord) -> String {
    let summary = match serde_json::from_str::<SessionEvent>(&r.json) {
        // describe() starts with "#seq"; the line has its own seq column.
        Ok(e) => {
            let d = describe(&e);
            d.split_once(' ')
                .map(|(_, rest)| rest.trim_start().to_string())
                .unwrap_or(d)
        }
        // A kind this client does not know: show its fields as they are.
        Err(_) => one_line(&r.json),
    };
    format!(
        "{:>5}  {}  {:<20} {summary}",
        r.seq,
        utc_time(r.at_unix_ms),
        r.kind
    )
}

fn print_state(
    out: &mut impl Write,
    session_id: &str,
    v: &v1::SessionStateView,
    json: bool,
) -> anyhow::Result<()> {
    let state: serde_json::Value =
        serde_json::from_str(&v.state_json).context("the server sent a state that is not JSON")?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"session_id": session_id, "status": status_name(v.status),
                "live": v.live, "at_seq": v.at_seq, "snapshot_seq": v.snapshot_seq, "state": state})
        )?;
        return Ok(());
    }
    let len = |k: &str| state[k].as_array().map_or(0, Vec::len);
    let current = match state["current"]["turn"].as_u64() {
        Some(t) => format!("turn {t} running"),
        None => "no turn running".into(),
    };
    writeln!(out, "session   {session_id}")?;
    writeln!(
        out,
        "status    {} ({}), at seq {}",
        status_name(v.status),
        if v.live {
            "live actor"
        } else {
            "rebuilt from the journal"
        },
        v.at_seq
    )?;
    writeln!(
        out,
        "turns     {} completed, {} failed, {} cancelled; {current}, {} queued",
        state["turns_completed"].as_u64().unwrap_or(0),
        state["turns_failed"].as_u64().unwrap_or(0),
        state["turns_cancelled"].as_u64().unwrap_or(0),
        len("queued"),
    )?;
    writeln!(out, "messages  {}", len("messages"))?;
    match v.snapshot_seq {
        Some(seq) => writeln!(
            out,
            "snapshot  stored at seq {seq} (the session loads from it and the records after it)"
        )?,
        None => writeln!(
            out,
            "snapshot  none stored (the session loads from its whole journal)"
        )?,
    }
    writeln!(out, "state:")?;
    let pretty = serde_json::to_string_pretty(&state).unwrap_or_else(|_| v.state_json.clone());
    for l in pretty.lines() {
        writeln!(out, "  {l}")?;
    }
    Ok(())
}

fn print_replay(
    out: &mut impl Write,
    r: &v1::ReplaySessionResponse,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let divergence = r.divergence.as_ref().map(|d| {
            serde_json::json!({"index": d.index, "source_seq": d.source_seq, "replay_seq": d.replay_seq,
                "expected": d.expected, "actual": d.actual})
        });
        writeln!(
            out,
            "{}",
            serde_json::json!({"source": r.source, "replay_session_id": r.replay_session_id,
                "turns": r.turns, "compared": r.compared, "diverged": r.diverged, "divergence": divergence,
                "stopped": (!r.stopped.is_empty()).then_some(&r.stopped)})
        )?;
        return Ok(());
    }
    let verdict = if r.diverged { "DIVERGED" } else { "identical" };
    writeln!(
        out,
        "replayed {} turns, compared {} records: {verdict}",
        r.turns, r.compared
    )?;
    writeln!(out, "replay session {}", r.replay_session_id)?;
    if !r.stopped.is_empty() {
        writeln!(out, "stopped early: {}", r.stopped)?;
    }
    if let Some(d) = &r.divergence {
        let seq = |s: u64| {
            if s == 0 {
                "none".to_string()
            } else {
                s.to_string()
            }
        };
        writeln!(
            out,
            "first difference at record {} (source seq {}, replay seq {})",
            d.index,
            seq(d.source_seq),
            seq(d.replay_seq)
        )?;
        writeln!(out, "  expected: {}", one_line(&d.expected))?;
        writeln!(out, "  actual:   {}", one_line(&d.actual))?;
    }
    Ok(())
}

/// `2024-05-01 12:34:56.789` (UTC) for milliseconds since the Unix epoch.
fn utc_time(unix_ms: u64) -> String {
    let ms_of_day = unix_ms % 86_400_000;
    let (year, month, day) = baton_types::utc_date(unix_ms);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00.000");
        // 2000-02-29T23:59:59.999Z, a leap day.
        assert_eq!(utc_time(951_868_799_999), "2000-02-29 23:59:59.999");
        // 2024-12-31T12:00:00.5Z
        assert_eq!(utc_time(1_735_646_400_500), "2024-12-31 12:00:00.500");
    }

    #[test]
    fn actor_lines_show_status_uptime_queue_and_detail() {
        let mut n = v1::ActorNode {
            kind: "session".into(),
            name: "abc".into(),
            status: "running".into(),
            uptime_ms: 12_345,
            restarts: 2,
            queue_len: Some(3),
            ..Default::default()
        };
        n.detail.insert("idle_ms".into(), "40".into());
        n.detail.insert("a".into(), "b".into());
        assert_eq!(
            actor_line(&n),
            "session abc [running] uptime 12.3s restarts 2 queue 3 a=b idle_ms=40"
        );
        n.queue_len = None;
        n.detail.clear();
        assert_eq!(
            actor_line(&n),
            "session abc [running] uptime 12.3s restarts 2"
        );
    }
}
