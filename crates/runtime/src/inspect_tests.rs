//! Inspection: time travel, forks, replay (with an injected divergence) and
//! the actor tree, on the scripted model and the calculator tool.

use std::time::Duration;

use baton_models::EndpointConfig;
use baton_types::{EventKind, SessionEvent};
use futures::StreamExt;
use serde_json::json;

use super::*;

fn script() -> serde_json::Value {
    json!([
        {"tool_calls": [{"id": "c1", "name": "calculator", "arguments": {"expression": "2 + 3"}}]},
        {"text": "It is 5."},
        {"tool_calls": [{"id": "c2", "name": "calculator", "arguments": {"expression": "5 * 4"}}]},
        {"text": "Now 20."}
    ])
}

fn config(dir: &std::path::Path, max_steps: u32) -> RuntimeConfig {
    let script_path = dir.join("script.json");
    std::fs::write(&script_path, script().to_string()).unwrap();
    let mut cfg = RuntimeConfig::with_data_dir(dir.join("data"));
    let mut model = EndpointConfig::scripted("agent", &script_path);
    model.stream = false;
    cfg.models = vec![model];
    cfg.sessions.default_route = "agent".into();
    cfg.sessions.max_steps = max_steps;
    cfg.tools.builtin.calculator = true;
    cfg
}

async fn run_turn(rt: &RuntimeHandle, id: SessionId, text: &str) -> Vec<SessionEvent> {
    let mut s = rt.send(id, text.into()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = s.next().await {
            out.push(e.unwrap());
        }
    })
    .await
    .expect("turn in time");
    out
}

async fn recorded_session(rt: &RuntimeHandle) -> SessionId {
    let s = rt.start_session(StartSession::default()).await.unwrap();
    let t1 = run_turn(rt, s.id, "what is 2 + 3?").await;
    assert!(matches!(
        t1.last().unwrap().kind,
        EventKind::TurnCompleted { .. }
    ));
    let t2 = run_turn(rt, s.id, "and times 4?").await;
    assert!(matches!(
        t2.last().unwrap().kind,
        EventKind::TurnCompleted { .. }
    ));
    s.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_an_unchanged_session_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder(config(dir.path(), 16))
        .start()
        .await
        .unwrap();
    let id = recorded_session(&rt).await;
    let report = rt.replay(id).await.unwrap();
    assert_eq!(report.turns, 2);
    assert!(report.divergence.is_none(), "{report:?}");
    // 2 turns x (accepted, 2 model calls, 2 answers, tool requested/started/result, completed)
    assert!(report.compared >= 18, "{report:?}");
    // The replay session holds the same conversation and says what it replays.
    let replayed = rt.session_state(report.replay).await.unwrap();
    let source = rt.session_state(id).await.unwrap();
    assert_eq!(replayed.state.messages, source.state.messages);
    assert_eq!(replayed.state.replay_of, Some(id.to_string()));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reports_the_first_divergence_after_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder(config(dir.path(), 16))
        .start()
        .await
        .unwrap();
    let id = recorded_session(&rt).await;
    rt.shutdown().await;
    drop(rt);
    // The "code change": turns may now make only one model call, so the
    // recorded second call (after the tool result) is not made.
    let rt = Runtime::builder(config(dir.path(), 1))
        .start()
        .await
        .unwrap();
    let report = rt.replay(id).await.unwrap();
    let d = report.divergence.expect("a divergence");
    let journal = rt.journal_page(id, 0, 1000).await.unwrap().events;
    let seq = d.source_seq.expect("the recording has a record there");
    let expected = journal.iter().find(|e| e.seq == seq).unwrap();
    assert!(
        matches!(&expected.kind, EventKind::ModelCallStarted { reason, .. } if reason == "tool_results"),
        "{expected:?}"
    );
    assert!(d.expected.contains("model_call_started"), "{d:?}");
    assert!(
        d.actual.contains("turn_failed") && d.actual.contains("max_steps_exceeded"),
        "{d:?}"
    );
    // Everything before it matched.
    assert_eq!(report.compared, d.index);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_and_fork_from_a_known_journal() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder(config(dir.path(), 16))
        .start()
        .await
        .unwrap();
    let id = recorded_session(&rt).await;
    let journal = rt.journal_page(id, 0, 1000).await.unwrap();
    assert_eq!(journal.next_after_seq, None);
    let first_done = journal
        .events
        .iter()
        .find(|e| matches!(e.kind, EventKind::TurnCompleted { turn: 1, .. }))
        .unwrap()
        .seq;
    // At seq 1: nothing but the session.
    let at1 = rt.state_at(id, 1).await.unwrap();
    assert!(at1.state.messages.is_empty());
    assert_eq!(at1.at_seq, 1);
    // After turn 1: user, assistant (tool call), tool result, assistant.
    let at = rt.state_at(id, first_done).await.unwrap();
    assert_eq!(at.state.messages.len(), 4, "{:?}", at.state.messages);
    assert_eq!(at.state.messages[3].content, "It is 5.");
    assert_eq!(at.state.turns_completed, 1);
    assert_eq!(at.status, SessionStatus::Idle);
    // The latest state equals the live one.
    let now = rt.state_at(id, u64::MAX).await.unwrap();
    assert_eq!(now.state.messages.len(), 8);
    assert_eq!(now.at_seq, journal.last_seq);
    // Past the end: refused, naming the last seq.
    let err = rt.state_at(id, journal.last_seq + 1).await.unwrap_err();
    assert!(
        err.to_string().contains(&journal.last_seq.to_string()),
        "{err}"
    );
    // Fork after turn 1 and take the fork elsewhere.
    let fork = rt.fork(id, first_done).await.unwrap();
    let forked = rt.session_state(fork.id).await.unwrap();
    assert_eq!(forked.state.messages, at.state.messages);
    let t = run_turn(&rt, fork.id, "something else").await;
    assert!(matches!(
        t.last().unwrap().kind,
        EventKind::TurnCompleted { .. }
    ));
    let forked = rt.session_state(fork.id).await.unwrap();
    // The scripted model goes on from the fork's conversation: a tool call
    // and an answer.
    assert_eq!(forked.state.messages.len(), 8);
    assert_eq!(forked.state.messages[4].content, "something else");
    assert_eq!(forked.state.messages[7].content, "Now 20.");
    // The source is untouched.
    assert_eq!(
        rt.state_at(id, u64::MAX)
            .await
            .unwrap()
            .state
            .messages
            .len(),
        8
    );
    let meta = rt
        .inner
        .shared
        .store
        .load_meta(fork.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        meta.metadata.get("forked_from"),
        Some(&format!("{id}@{first_done}"))
    );
    rt.shutdown().await;
}

fn find<'a>(node: &'a ActorNode, name: &str) -> Option<&'a ActorNode> {
    if node.name == name {
        return Some(node);
    }
    node.children.iter().find_map(|c| find(c, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actor_tree_follows_passivation_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 16);
    cfg.sessions.passivate_after_ms = 300;
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    let name = s.id.to_string();
    // Not live before its first message.
    assert!(find(&rt.actor_tree().await.unwrap(), &name).is_none());
    run_turn(&rt, s.id, "what is 2 + 3?").await;
    let tree = rt.actor_tree().await.unwrap();
    let node = find(&tree, &name).expect("a live session actor");
    assert_eq!(node.kind, "session");
    assert_eq!(node.restarts, 0);
    let exec = find(&tree, "agent").expect("the model executor");
    assert_eq!(exec.kind, "model_executor");
    assert!(
        exec.detail
            .get("breaker")
            .is_some_and(|b| b.starts_with("closed")),
        "{exec:?}"
    );
    // A crash: the supervisor restarts it and the tree says so.
    rt.inject_actor_fault(s.id).unwrap();
    let mut restarted = None;
    for _ in 0..100 {
        let tree = rt.actor_tree().await.unwrap();
        if let Some(n) = find(&tree, &name).filter(|n| n.restarts >= 1 && n.status == "running") {
            restarted = Some(n.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(restarted.is_some(), "no restart seen in the tree");
    // Passivated: gone from the tree, its state still readable from disk.
    let mut gone = false;
    for _ in 0..200 {
        if find(&rt.actor_tree().await.unwrap(), &name).is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the session was not passivated");
    let view = rt.session_state(s.id).await.unwrap();
    assert!(!view.live);
    assert_eq!(view.state.messages.len(), 4);
    // Reading it did not wake it.
    assert!(find(&rt.actor_tree().await.unwrap(), &name).is_none());
    rt.shutdown().await;
}

/// An audit sink that keeps what it gets, or (`lose`) drops it and never
/// confirms a flush — as a crash between the journal and the audit log would.
#[derive(Debug, Default)]
struct Sink {
    lose: bool,
    records: std::sync::Mutex<Vec<(String, Option<SessionId>, serde_json::Value)>>,
}

impl AuditSink for Sink {
    fn record(
        &self,
        kind: &str,
        session: Option<SessionId>,
        _actor: Option<&str>,
        data: serde_json::Value,
    ) {
        if !self.lose {
            self.records
                .lock()
                .unwrap()
                .push((kind.to_string(), session, data));
        }
    }

    fn flush(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let lose = self.lose;
        Box::pin(async move {
            if lose {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_lost_before_a_crash_are_appended_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let lossy = Arc::new(Sink {
        lose: true,
        ..Default::default()
    });
    let rt = Runtime::builder(config(dir.path(), 16))
        .with_audit(lossy.clone())
        .start()
        .await
        .unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    run_turn(&rt, s.id, "what is 2 + 3?").await;
    let last_seq = rt.session_state(s.id).await.unwrap().at_seq;
    rt.shutdown().await;
    drop(rt);

    let sink = Arc::new(Sink::default());
    let rt = Runtime::builder(config(dir.path(), 16))
        .with_audit(sink.clone())
        .start()
        .await
        .unwrap();
    let records = sink.records.lock().unwrap().clone();
    let mine: Vec<_> = records.iter().filter(|r| r.1 == Some(s.id)).collect();
    let kinds: Vec<&str> = mine.iter().map(|r| r.0.as_str()).collect();
    assert!(mine.iter().all(|r| r.2["recovered"] == true), "{mine:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "model_call").count(),
        2,
        "{kinds:?}"
    );
    for k in [
        "session_started",
        "model_input",
        "routing_decision",
        "tool_call",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let answers: Vec<&str> = mine
        .iter()
        .filter(|r| r.0 == "model_call")
        .filter_map(|r| r.2["response"]["content"].as_str())
        .collect();
    assert!(answers.contains(&"It is 5."), "{answers:?}");
    // Every record names its journal seq, all within the session's journal.
    assert!(
        mine.iter()
            .all(|r| r.2["seq"].as_u64().is_some_and(|q| q >= 1 && q <= last_seq)),
        "{mine:?}"
    );
    rt.shutdown().await;
    drop(rt);

    // Confirmed now: a third start appends nothing again.
    let again = Arc::new(Sink::default());
    let rt = Runtime::builder(config(dir.path(), 16))
        .with_audit(again.clone())
        .start()
        .await
        .unwrap();
    assert!(
        again
            .records
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.1 != Some(s.id)),
        "records appended twice"
    );
    rt.shutdown().await;
}
