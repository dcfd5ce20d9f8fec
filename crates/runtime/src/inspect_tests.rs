//! Inspection: time travel, forks, replay (with an injected divergence) and
//! the actor tree, on the scripted model and the calculator tool.

use std::time::Duration;

use baton_models::EndpointConfig;
use baton_types::{EventKind, SessionEvent};
use futures::StreamExt;
use serde_json::json;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use baton_types::{ModelCallReason, SessionId, SessionStatus};

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
    let mut cfg = RuntimeConfig::for_test(dir.join("data"));
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
    assert_eq!(report.stopped, None);
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
async fn replay_compares_a_journal_longer_than_a_page() {
    let dir = tempfile::tempdir().unwrap();
    // The built-in echo endpoint; 150 turns make about 600 compared records,
    // more than one page (512) of the replay's journal.
    let rt = Runtime::builder(RuntimeConfig::for_test(dir.path()))
        .start()
        .await
        .unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    for i in 0..150 {
        let t = run_turn(&rt, s.id, &format!("message {i}")).await;
        assert!(matches!(
            t.last().unwrap().kind,
            EventKind::TurnCompleted { .. }
        ));
    }
    let journal = rt.journal_page(s.id, 0, 10_000).await.unwrap().events;
    let comparable = journal
        .iter()
        .filter(|e| super::replay::normalized(&e.kind).is_some())
        .count() as u64;
    assert!(comparable > 512, "{comparable} records to compare");
    let report = rt.replay(s.id).await.unwrap();
    assert!(report.divergence.is_none(), "{report:?}");
    assert_eq!(report.turns, 150);
    assert_eq!(report.compared, comparable, "{report:?}");
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
        matches!(&expected.kind, EventKind::ModelCallStarted { reason, .. } if *reason == ModelCallReason::ToolResults),
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
async fn time_travel_from_a_snapshot_equals_the_whole_fold_at_every_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 16);
    cfg.sessions.snapshot_every = 4;
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let id = recorded_session(&rt).await;
    let journal = rt.journal_page(id, 0, 1000).await.unwrap();
    let latest = rt.state_at(id, u64::MAX).await.unwrap();
    let snapshot = latest.snapshot_seq.expect("a snapshot was written");
    assert!(snapshot > 1 && snapshot <= journal.last_seq, "{snapshot}");
    let mut fold = crate::state::SessionState::new(id);
    for e in &journal.events {
        fold.apply(e.seq, e.at_unix_ms, &e.kind);
        let at = rt.state_at(id, e.seq).await.unwrap();
        assert_eq!(at.at_seq, e.seq);
        assert_eq!(
            serde_json::to_value(&at.state).unwrap(),
            serde_json::to_value(&fold).unwrap(),
            "seq {} (snapshot at {snapshot})",
            e.seq
        );
    }
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
    /// Drops what it gets and fails every flush while set, as a full disk
    /// would.
    failing: std::sync::atomic::AtomicBool,
    records: std::sync::Mutex<Vec<(String, Option<SessionId>, serde_json::Value)>>,
    /// What it says it holds back.
    queued: std::sync::atomic::AtomicU64,
}

impl AuditSink for Sink {
    fn record(
        &self,
        kind: &str,
        session: Option<SessionId>,
        _actor: Option<&str>,
        data: serde_json::Value,
    ) {
        if !self.lose && !self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            self.records
                .lock()
                .unwrap()
                .push((kind.to_string(), session, data));
        }
    }

    fn flush(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        let lose = self.lose;
        let failing = self.failing.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if lose {
                std::future::pending::<()>().await;
            }
            if failing {
                return Err("No space left on device (os error 28)".into());
            }
            Ok(())
        })
    }

    fn queued(&self) -> u64 {
        self.queued.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An audit sink further behind than `store.max_audit_backlog`: new
/// sessions and messages are refused with UNAVAILABLE naming the limit,
/// and admitted again once it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_work_waits_for_an_audit_trail_that_fell_behind() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Sink::default());
    let mut cfg = config(dir.path(), 16);
    cfg.store.max_audit_backlog = 1000;
    let rt = Runtime::builder(cfg)
        .with_audit(sink.clone())
        .start()
        .await
        .unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    sink.queued.store(1001, std::sync::atomic::Ordering::SeqCst);
    let behind = |e: Error| {
        assert!(matches!(e, Error::Unavailable(_)), "{e}");
        assert!(
            e.to_string().contains("store.max_audit_backlog = 1000"),
            "{e}"
        );
    };
    behind(rt.start_session(StartSession::default()).await.unwrap_err());
    behind(rt.send(s.id, "what is 2 + 3?".into()).await.err().unwrap());
    sink.queued.store(1000, std::sync::atomic::Ordering::SeqCst);
    let t = run_turn(&rt, s.id, "what is 2 + 3?").await;
    assert!(matches!(
        t.last().unwrap().kind,
        EventKind::TurnCompleted { .. }
    ));
    rt.shutdown().await;
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

/// An audit record no journal holds (an embeddings call's) is kept in the
/// store with its write until the trail confirms it: after a crash first,
/// the next start appends it (recovered) and drops it; once confirmed it is
/// never appended again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_audit_records_are_appended_after_a_crash_and_dropped_once_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder(config(dir.path(), 16))
        .start()
        .await
        .unwrap();
    let kept = SessionId::new();
    let record = crate::audit::KeptRecord {
        kind: "embedding_call".into(),
        actor: Some("api_key:bk_1".into()),
        data: json!({"call": kept.to_string(), "outcome": "ok"}),
    };
    let mut b = baton_store::Batch::new();
    b.put_audit_record(&kept, serde_json::to_vec(&record).unwrap());
    rt.shared().store.write(b).await.unwrap();
    rt.shutdown().await;
    drop(rt);

    let sink = Arc::new(Sink::default());
    let rt = Runtime::builder(config(dir.path(), 16))
        .with_audit(sink.clone())
        .start()
        .await
        .unwrap();
    let records = sink.records.lock().unwrap().clone();
    let mine: Vec<_> = records
        .iter()
        .filter(|r| r.2["call"] == kept.to_string())
        .collect();
    assert_eq!(mine.len(), 1, "{records:?}");
    assert_eq!(mine[0].0, "embedding_call");
    assert_eq!(mine[0].2["recovered"], true);
    assert!(
        rt.shared()
            .store
            .pending_audit_records()
            .await
            .unwrap()
            .is_empty()
    );

    // A record confirmed by a good flush is dropped from the store.
    let confirmed = SessionId::new();
    let mut b = baton_store::Batch::new();
    b.put_audit_record(&confirmed, serde_json::to_vec(&record).unwrap());
    rt.shared().store.write(b).await.unwrap();
    rt.shared().audit_cursor.note_record(confirmed);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !rt
        .shared()
        .store
        .pending_audit_records()
        .await
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "never confirmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.shutdown().await;
    drop(rt);

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
            .all(|r| r.0 != "embedding_call"),
        "appended twice"
    );
    rt.shutdown().await;
}

/// A failed audit write confirms nothing: the trail is marked failing,
/// `on_failure = block` refuses new sessions and messages with UNAVAILABLE
/// naming the cause, and once it can be written every record it missed
/// (journaled meanwhile) is appended again before anything is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_write_failures_lose_nothing_and_block_refuses_new_work() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Sink::default());
    let rt = Runtime::builder(config(dir.path(), 16))
        .with_audit(sink.clone())
        .audit_on_failure(AuditOnFailure::Block)
        .start()
        .await
        .unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    run_turn(&rt, s.id, "what is 2 + 3?").await;
    let calls = |sink: &Sink| -> Vec<serde_json::Value> {
        sink.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.1 == Some(s.id) && r.0 == "model_call")
            .map(|r| r.2.clone())
            .collect()
    };
    let eventually = |what: &'static str, check: Box<dyn Fn() -> bool + Send>| async move {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what} within 10 s");
    };
    eventually("the first turn confirmed", {
        let (sink, rt) = (sink.clone(), rt.clone());
        Box::new(move || sink.records.lock().unwrap().len() > 3 && rt.audit_failing().is_none())
    })
    .await;
    assert_eq!(calls(&sink).len(), 2);

    // The disk fills: the second turn's records never reach the trail.
    sink.failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    run_turn(&rt, s.id, "and times 4?").await;
    eventually("the failure noticed", {
        let rt = rt.clone();
        Box::new(move || rt.audit_failing().is_some())
    })
    .await;
    assert!(rt.audit_failing().unwrap().contains("No space left"));
    assert_eq!(calls(&sink).len(), 2, "nothing written while failing");
    match rt.start_session(StartSession::default()).await {
        Err(Error::Unavailable(m)) => assert!(m.contains("audit trail"), "{m}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    match rt.send(s.id, "more".into()).await {
        Err(Error::Unavailable(m)) => assert!(m.contains("No space left"), "{m}"),
        Err(e) => panic!("expected UNAVAILABLE, got {e:?}"),
        Ok(_) => panic!("expected UNAVAILABLE, got a turn"),
    }

    // Space returns: what was missed is appended again, marked recovered.
    sink.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("the trail recovered", {
        let rt = rt.clone();
        Box::new(move || rt.audit_failing().is_none())
    })
    .await;
    let recovered: Vec<_> = calls(&sink)
        .into_iter()
        .filter(|d| d["recovered"] == true)
        .collect();
    assert!(
        recovered.iter().any(|d| d["turn"] == 2),
        "the second turn's answers were appended again: {recovered:?}"
    );
    run_turn(&rt, s.id, "thanks").await;
    rt.shutdown().await;
}

// Replays through gates and client-side tools, on a fake OpenAI-compatible
// model and a fake HTTP service that the `http_post` tool posts to: their
// request counts say whether a replay called the model or ran the tool.

use baton_testkit::fake_openai::{FakeOpenAi, ScriptedReply};
use baton_testkit::server::openai_endpoint;
use baton_types::ToolCall;

use crate::gates::{GateDecision, GatePolicy, GateQuery};

const PAYMENTS: &str = r#"
[[policies]]
name = "payments"
kind = "before_tool"
tools = ["http_post"]
reviewers = "finance"
"#;

/// The model, the service the tool posts to and a data dir, so runtimes
/// with different gate policies can be started on the same sessions.
struct Rig {
    model: FakeOpenAi,
    service: FakeOpenAi,
    dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Rig {
        Rig {
            model: FakeOpenAi::start().await.unwrap(),
            service: FakeOpenAi::start().await.unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn runtime(
        &self,
        policies: &str,
        tweak: impl FnOnce(&mut RuntimeConfig),
    ) -> RuntimeHandle {
        let mut cfg = RuntimeConfig::for_test(self.dir.path().join("data"));
        cfg.models = vec![openai_endpoint("agent", &self.model.base_url(), false)];
        cfg.sessions.default_route = "agent".into();
        cfg.tools.builtin.current_time = true;
        cfg.tools.builtin.http_post = Some(baton_tools::HttpToolConfig {
            allowed_hosts: vec![self.service.addr().to_string()],
            max_response_bytes: 64 * 1024,
            timeout_ms: 5_000,
        });
        cfg.gates.timeout_scan_ms = 20;
        #[derive(serde::Deserialize)]
        struct P {
            #[serde(default)]
            policies: Vec<GatePolicy>,
        }
        cfg.gates.policies = toml::from_str::<P>(policies).unwrap().policies;
        tweak(&mut cfg);
        Runtime::builder(cfg).start().await.unwrap()
    }

    /// The `http_post` arguments that post `text` to the service.
    fn post_args(&self, text: &str) -> String {
        let body = json!({"messages": [{"role": "user", "content": text}]}).to_string();
        json!({"url": format!("{}/chat/completions", self.service.base_url()), "body": body})
            .to_string()
    }

    /// A model answer calling `http_post` with [`Rig::post_args`].
    fn post(&self, call_id: &str, text: &str) -> ScriptedReply {
        ScriptedReply::ToolCalls(vec![ToolCall {
            id: call_id.into(),
            name: "http_post".into(),
            arguments: self.post_args(text),
        }])
    }

    /// Model and service requests so far.
    fn calls(&self) -> (usize, usize) {
        (self.model.requests(), self.service.requests())
    }
}

fn text(t: &str) -> ScriptedReply {
    ScriptedReply::Text(t.into())
}

/// Events until one named `what` or the turn's end.
async fn until(stream: &mut EventStream, what: &str) -> Vec<SessionEvent> {
    let mut out = Vec::new();
    let read = async {
        while let Some(e) = stream.next().await {
            let e = e.unwrap();
            let done = e.kind.name() == what || e.ends_turn();
            out.push(e);
            if done {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("events in time");
    out
}

fn opened_gate(events: &[SessionEvent]) -> String {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::GateOpened { gate_id, .. } => Some(gate_id.to_string()),
            _ => None,
        })
        .expect("a gate opened")
}

async fn journal(rt: &RuntimeHandle, id: SessionId) -> Vec<SessionEvent> {
    rt.journal_page(id, 0, 1000).await.unwrap().events
}

/// (decision, reviewer, reason, edited, by_timeout) of every GateDecided.
fn decisions(events: &[SessionEvent]) -> Vec<(String, String, String, String, bool)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::GateDecided {
                decision,
                reviewer,
                reason,
                edited,
                by_timeout,
                ..
            } => Some((
                decision.to_string(),
                reviewer.clone(),
                reason.clone(),
                edited.clone(),
                *by_timeout,
            )),
            _ => None,
        })
        .collect()
}

/// (call_id, output, is_error) of every ToolResult.
fn tool_results(events: &[SessionEvent]) -> Vec<(String, String, bool)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ToolResult {
                call_id,
                output,
                is_error,
                ..
            } => Some((call_id.clone(), output.clone(), *is_error)),
            _ => None,
        })
        .collect()
}

fn count(events: &[SessionEvent], name: &str) -> usize {
    events.iter().filter(|e| e.kind.name() == name).count()
}

/// Records a replay compares: all but the session start, deltas, routing,
/// failed attempts, retractions and escalations.
fn comparable(events: &[SessionEvent]) -> u64 {
    let skipped = [
        "session_started",
        "output_delta",
        "routing_decided",
        "attempt_failed",
        "output_retracted",
        "gate_escalated",
    ];
    events
        .iter()
        .filter(|e| !skipped.contains(&e.kind.name()))
        .count() as u64
}

async fn pending_gates(rt: &RuntimeHandle, session: SessionId) -> usize {
    rt.list_gates(GateQuery {
        status: Some(GateStatus::Pending),
        session: Some(session),
        ..Default::default()
    })
    .await
    .unwrap()
    .gates
    .len()
}

fn d(
    decision: &str,
    reviewer: &str,
    reason: &str,
    edited: &str,
) -> (String, String, String, String, bool) {
    (
        decision.into(),
        reviewer.into(),
        reason.into(),
        edited.into(),
        false,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_goes_through_an_approved_gate_without_calling_model_or_tool() {
    let rig = Rig::new().await;
    let rt = rig.runtime(PAYMENTS, |_| {}).await;
    rig.model.push_reply(rig.post("c1", "invoice 7"));
    rig.model.push_reply(text("Paid invoice 7."));
    rig.model.push_reply(text("You are welcome."));
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let mut s = rt.send(id, "pay invoice 7".into()).await.unwrap();
    let gate = opened_gate(&until(&mut s, "gate_opened").await);
    rt.decide_gate(
        &gate,
        GateDecision::Approve,
        "alice".into(),
        "invoice checked".into(),
    )
    .await
    .unwrap();
    let rest = until(&mut s, "turn_completed").await;
    assert_eq!(rest.last().unwrap().kind.name(), "turn_completed");
    // More work after the gate: a second turn.
    let t2 = run_turn(&rt, id, "thanks").await;
    assert_eq!(t2.last().unwrap().kind.name(), "turn_completed");
    assert_eq!(rig.calls(), (3, 1));

    let report = rt.replay(id).await.unwrap();
    assert!(report.divergence.is_none(), "{report:?}");
    assert_eq!(report.turns, 2);
    let source = journal(&rt, id).await;
    let replayed = journal(&rt, report.replay).await;
    assert_eq!(report.compared, comparable(&source));
    assert_eq!(
        rig.calls(),
        (3, 1),
        "the replay called the model or the tool"
    );
    // The replay's own gate, decided as the recording's was.
    assert_eq!(
        decisions(&replayed),
        vec![d("approve", "alice", "invoice checked", "")]
    );
    assert_ne!(opened_gate(&replayed), gate);
    assert_eq!(tool_results(&replayed), tool_results(&source));
    assert_eq!(count(&replayed, "turn_completed"), 2);
    let state = rt.session_state(report.replay).await.unwrap().state;
    assert_eq!(state.messages.last().unwrap().content, "You are welcome.");
    assert_eq!(pending_gates(&rt, report.replay).await, 0);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reproduces_rejected_and_edited_gates() {
    let rig = Rig::new().await;
    let rt = rig.runtime(PAYMENTS, |_| {}).await;
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    // Turn 1: the payment is rejected; the model hears why.
    rig.model.push_reply(rig.post("c1", "invoice 7"));
    rig.model.push_reply(text("Not paid."));
    let mut s = rt.send(id, "pay invoice 7".into()).await.unwrap();
    let gate = opened_gate(&until(&mut s, "gate_opened").await);
    rt.decide_gate(
        &gate,
        GateDecision::Reject,
        "bob".into(),
        "not today".into(),
    )
    .await
    .unwrap();
    until(&mut s, "turn_completed").await;
    // Turn 2: its arguments are edited, then it runs.
    rig.model.push_reply(rig.post("c2", "invoice 8"));
    rig.model.push_reply(text("Paid the corrected invoice."));
    let edited = rig.post_args("invoice 8, corrected");
    let mut s = rt.send(id, "pay invoice 8".into()).await.unwrap();
    let gate = opened_gate(&until(&mut s, "gate_opened").await);
    rt.decide_gate(
        &gate,
        GateDecision::Edit(edited.clone()),
        "carol".into(),
        "wrong amount".into(),
    )
    .await
    .unwrap();
    until(&mut s, "turn_completed").await;
    // Turn 3: the client asks for review; the answer is edited.
    rig.model.push_reply(text("draft"));
    let mut s = rt.send_with(id, "summarise".into(), true).await.unwrap();
    let gate = opened_gate(&until(&mut s, "gate_opened").await);
    rt.decide_gate(
        &gate,
        GateDecision::Edit("Final: invoice 8 paid.".into()),
        "dave".into(),
        "tone".into(),
    )
    .await
    .unwrap();
    let rest = until(&mut s, "turn_completed").await;
    assert_eq!(rest.last().unwrap().kind.name(), "turn_completed");
    // Only the edited call reached the service.
    assert_eq!(rig.calls(), (5, 1));
    let sent = rig.service.received();
    assert_eq!(
        sent[0]["messages"][0]["content"], "invoice 8, corrected",
        "{sent:?}"
    );

    let report = rt.replay(id).await.unwrap();
    assert!(report.divergence.is_none(), "{report:?}");
    assert_eq!(report.turns, 3);
    assert_eq!(
        rig.calls(),
        (5, 1),
        "the replay called the model or the tool"
    );
    let source = journal(&rt, id).await;
    let replayed = journal(&rt, report.replay).await;
    assert_eq!(report.compared, comparable(&source));
    let expected = vec![
        d("reject", "bob", "not today", ""),
        d("edit", "carol", "wrong amount", &edited),
        d("edit", "dave", "tone", "Final: invoice 8 paid."),
    ];
    assert_eq!(decisions(&source), expected);
    assert_eq!(decisions(&replayed), expected);
    // The rejection's effect: the same error result, naming the reviewer.
    let results = tool_results(&replayed);
    assert_eq!(results, tool_results(&source));
    assert!(
        results[0].2 && results[0].1.contains("bob") && results[0].1.contains("not today"),
        "{results:?}"
    );
    let state = rt.session_state(report.replay).await.unwrap().state;
    assert_eq!(
        state.messages.last().unwrap().content,
        "Final: invoice 8 paid."
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reproduces_a_gate_decided_by_its_timeout() {
    const CLOCK: &str = r#"
[[policies]]
name = "clock"
kind = "before_tool"
reviewers = "ops"
tools = ["current_time"]
timeout_ms = 1
on_timeout = "reject"
"#;
    let rig = Rig::new().await;
    let rt = rig.runtime(CLOCK, |_| {}).await;
    rig.model
        .push_reply(ScriptedReply::ToolCalls(vec![ToolCall {
            id: "c1".into(),
            name: "current_time".into(),
            arguments: "{}".into(),
        }]));
    rig.model.push_reply(text("No clock for me."));
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    // Nobody decides: the timeout rejects.
    let t = run_turn(&rt, id, "what time is it?").await;
    assert_eq!(t.last().unwrap().kind.name(), "turn_completed");
    let source = journal(&rt, id).await;
    let recorded = decisions(&source);
    assert_eq!(recorded.len(), 1);
    let (decision, reviewer, reason, _, by_timeout) = recorded[0].clone();
    assert_eq!(
        (decision.as_str(), reviewer.as_str(), by_timeout),
        ("reject", "timeout", true)
    );
    rt.shutdown().await;
    drop(rt);

    // The gate no longer times out: the replay must decide it itself.
    let rt = rig
        .runtime(&CLOCK.replace("timeout_ms = 1", "timeout_ms = 0"), |_| {})
        .await;
    let report = tokio::time::timeout(Duration::from_secs(30), rt.replay(id))
        .await
        .expect("the replay ends")
        .unwrap();
    assert!(report.divergence.is_none(), "{report:?}");
    assert_eq!(report.compared, comparable(&source));
    assert_eq!(rig.calls(), (2, 0));
    let replayed = journal(&rt, report.replay).await;
    assert_eq!(
        decisions(&replayed),
        vec![d("reject", "timeout", &reason, "")]
    );
    assert_eq!(tool_results(&replayed), tool_results(&source));
    assert_eq!(count(&replayed, "turn_completed"), 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_stops_at_a_gate_the_recording_does_not_have() {
    let rig = Rig::new().await;
    let rt = rig.runtime("", |_| {}).await;
    rig.model.push_reply(rig.post("c1", "invoice 7"));
    rig.model.push_reply(text("Paid."));
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let t = run_turn(&rt, id, "pay invoice 7").await;
    assert_eq!(t.last().unwrap().kind.name(), "turn_completed");
    rt.shutdown().await;
    drop(rt);

    // The change: payments now need approval.
    let rt = rig.runtime(PAYMENTS, |_| {}).await;
    let started = std::time::Instant::now();
    let report = rt.replay(id).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let why = report
        .stopped
        .clone()
        .expect("the replay says why it stopped");
    assert!(why.contains("does not have"), "{why}");
    let div = report.divergence.expect("a divergence");
    assert!(div.expected.contains("tool_call_started"), "{div:?}");
    assert!(
        div.actual.contains("gate_opened") && div.actual.contains("before_tool"),
        "{div:?}"
    );
    assert_eq!(report.compared, div.index);
    let replayed = journal(&rt, report.replay).await;
    let at = replayed
        .iter()
        .find(|e| Some(e.seq) == div.replay_seq)
        .unwrap();
    assert!(matches!(at.kind, EventKind::GateOpened { .. }), "{at:?}");
    // Nothing ran, and nobody is left to decide the replay's gate.
    assert_eq!(rig.calls(), (2, 1));
    assert_eq!(pending_gates(&rt, report.replay).await, 0);
    let view = rt.session_state(report.replay).await.unwrap();
    assert_eq!(view.status, SessionStatus::Idle);
    assert_eq!(view.state.turns_cancelled, 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_without_the_gate_diverges_at_the_recorded_gate() {
    let rig = Rig::new().await;
    let rt = rig.runtime(PAYMENTS, |_| {}).await;
    rig.model.push_reply(rig.post("c1", "invoice 7"));
    rig.model.push_reply(text("Paid."));
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let mut s = rt.send(id, "pay invoice 7".into()).await.unwrap();
    let gate = opened_gate(&until(&mut s, "gate_opened").await);
    rt.decide_gate(&gate, GateDecision::Approve, "alice".into(), String::new())
        .await
        .unwrap();
    until(&mut s, "turn_completed").await;
    rt.shutdown().await;
    drop(rt);

    // The change: the policy is gone.
    let rt = rig.runtime("", |_| {}).await;
    let report = tokio::time::timeout(Duration::from_secs(20), rt.replay(id))
        .await
        .expect("the replay ends")
        .unwrap();
    let div = report.divergence.expect("a divergence");
    assert!(div.expected.contains("gate_opened"), "{div:?}");
    assert!(div.actual.contains("tool_call_started"), "{div:?}");
    let replayed = journal(&rt, report.replay).await;
    assert!(decisions(&replayed).is_empty());
    assert_eq!(count(&replayed, "turn_completed"), 1);
    assert_eq!(rig.calls(), (2, 1));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_stops_at_a_gate_the_recording_left_pending() {
    let rig = Rig::new().await;
    let rt = rig.runtime(PAYMENTS, |_| {}).await;
    rig.model.push_reply(rig.post("c1", "invoice 7"));
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let mut s = rt.send(id, "pay invoice 7".into()).await.unwrap();
    let gate = opened_gate(&until(&mut s, "gate_opened").await);
    drop(s);

    let report = tokio::time::timeout(Duration::from_secs(20), rt.replay(id))
        .await
        .expect("the replay ends")
        .unwrap();
    // Up to its end, the recording is reproduced: same gate, still open.
    let why = report
        .stopped
        .clone()
        .expect("the replay says why it stopped");
    assert!(why.contains("still pending"), "{why}");
    assert!(report.divergence.is_none(), "{report:?}");
    let source = journal(&rt, id).await;
    assert_eq!(report.compared, comparable(&source));
    assert_eq!(source.last().unwrap().kind.name(), "gate_opened");
    // The replay's turn was cancelled after the comparison; the recording's
    // gate still waits for its reviewer.
    assert_eq!(pending_gates(&rt, report.replay).await, 0);
    let replayed = journal(&rt, report.replay).await;
    assert_eq!(replayed.last().unwrap().kind.name(), "turn_cancelled");
    let (g, _) = rt.get_gate(&gate).await.unwrap();
    assert_eq!(g.status(), GateStatus::Pending);
    assert_eq!(rig.calls(), (1, 0));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_cancels_where_the_recording_cancelled_at_a_gate() {
    let rig = Rig::new().await;
    let rt = rig.runtime(PAYMENTS, |_| {}).await;
    rig.model.push_reply(rig.post("c1", "invoice 7"));
    rig.model.push_reply(text("Hello again."));
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let mut s = rt.send(id, "pay invoice 7".into()).await.unwrap();
    until(&mut s, "gate_opened").await;
    assert_eq!(rt.cancel(id).await.unwrap(), Some(1));
    let rest = until(&mut s, "turn_cancelled").await;
    assert_eq!(rest.last().unwrap().kind.name(), "turn_cancelled");
    let t = run_turn(&rt, id, "hello").await;
    assert_eq!(t.last().unwrap().kind.name(), "turn_completed");

    let report = rt.replay(id).await.unwrap();
    assert!(report.divergence.is_none(), "{report:?}");
    assert_eq!(report.turns, 2);
    let source = journal(&rt, id).await;
    let replayed = journal(&rt, report.replay).await;
    assert_eq!(report.compared, comparable(&source));
    assert_eq!(decisions(&replayed), decisions(&source));
    assert_eq!(decisions(&replayed).len(), 1);
    assert!(tool_results(&replayed).is_empty());
    assert_eq!(count(&replayed, "turn_cancelled"), 1);
    assert_eq!(count(&replayed, "turn_completed"), 1);
    assert_eq!(rig.calls(), (2, 0));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_answers_client_tool_calls_with_the_recorded_results() {
    let rig = Rig::new().await;
    // Unanswered, a client call would fail after 5 s instead of the default
    // ten minutes.
    let rt = rig
        .runtime("", |c| c.tools.client_tool_timeout_ms = 5_000)
        .await;
    let lookup = |id: &str, who: &str| {
        ScriptedReply::ToolCalls(vec![ToolCall {
            id: id.into(),
            name: "lookup".into(),
            arguments: json!({"customer": who}).to_string(),
        }])
    };
    let id = rt
        .start_session(StartSession {
            client_tools: vec![baton_types::ToolDefinition {
                name: "lookup".into(),
                description: "look a customer up".into(),
                parameters:
                    json!({"type": "object", "properties": {"customer": {"type": "string"}}})
                        .to_string(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    // Turn 1 gets a result, turn 2 an error.
    for (call, who, outcome, answer) in [
        (
            "c1",
            "ada",
            Ok("customer ada: since 2019".to_string()),
            "Ada is a customer.",
        ),
        (
            "c2",
            "bob",
            Err("no such customer".to_string()),
            "Bob is not a customer.",
        ),
    ] {
        rig.model.push_reply(lookup(call, who));
        rig.model.push_reply(text(answer));
        let mut s = rt.send(id, format!("who is {who}?")).await.unwrap();
        let ev = until(&mut s, "tool_call_requested").await;
        assert!(
            matches!(
                &ev.last().unwrap().kind,
                EventKind::ToolCallRequested {
                    client_side: true,
                    ..
                }
            ),
            "{ev:?}"
        );
        rt.submit_tool_result(id, call.into(), outcome)
            .await
            .unwrap();
        let rest = until(&mut s, "turn_completed").await;
        assert_eq!(rest.last().unwrap().kind.name(), "turn_completed");
    }
    assert_eq!(rig.calls(), (4, 0));

    let report = tokio::time::timeout(Duration::from_secs(30), rt.replay(id))
        .await
        .expect("the replay ends")
        .unwrap();
    assert!(report.divergence.is_none(), "{report:?}");
    assert_eq!(report.turns, 2);
    let source = journal(&rt, id).await;
    let replayed = journal(&rt, report.replay).await;
    assert_eq!(report.compared, comparable(&source));
    assert_eq!(
        tool_results(&replayed),
        vec![
            (
                "c1".to_string(),
                "customer ada: since 2019".to_string(),
                false
            ),
            ("c2".to_string(), "no such customer".to_string(), true),
        ]
    );
    assert_eq!(rig.calls(), (4, 0));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_decides_gates_in_the_recorded_order() {
    let rig = Rig::new().await;
    let rt = rig.runtime(PAYMENTS, |_| {}).await;
    // One step, two gated calls: the second is approved (and runs) before
    // the first is rejected.
    let post = |call: &str, what: &str| ToolCall {
        id: call.into(),
        name: "http_post".into(),
        arguments: rig.post_args(what),
    };
    rig.model.push_reply(ScriptedReply::ToolCalls(vec![
        post("c1", "invoice 7"),
        post("c2", "invoice 8"),
    ]));
    rig.model.push_reply(text("Paid invoice 8 only."));
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let mut s = rt.send(id, "pay both".into()).await.unwrap();
    let mut gates = BTreeMap::new();
    while gates.len() < 2 {
        for e in until(&mut s, "gate_opened").await {
            if let EventKind::GateOpened {
                gate_id, call_id, ..
            } = e.kind
            {
                gates.insert(call_id, gate_id.to_string());
            }
        }
    }
    rt.decide_gate(
        &gates["c2"],
        GateDecision::Approve,
        "alice".into(),
        "ok".into(),
    )
    .await
    .unwrap();
    until(&mut s, "tool_result").await;
    rt.decide_gate(
        &gates["c1"],
        GateDecision::Reject,
        "alice".into(),
        "paid already".into(),
    )
    .await
    .unwrap();
    let rest = until(&mut s, "turn_completed").await;
    assert_eq!(rest.last().unwrap().kind.name(), "turn_completed");
    assert_eq!(rig.calls(), (2, 1));

    let report = rt.replay(id).await.unwrap();
    assert!(report.divergence.is_none(), "{report:?}");
    let source = journal(&rt, id).await;
    let replayed = journal(&rt, report.replay).await;
    assert_eq!(report.compared, comparable(&source));
    let names = |events: &[SessionEvent]| -> Vec<&'static str> {
        events
            .iter()
            .map(|e| e.kind.name())
            .filter(|n| n.starts_with("gate_") || n.starts_with("tool_"))
            .collect()
    };
    assert_eq!(
        names(&replayed),
        [
            "tool_call_requested",
            "tool_call_requested",
            "gate_opened",
            "gate_opened",
            "gate_decided",
            "tool_call_started",
            "tool_result",
            "gate_decided",
            "tool_result",
        ]
    );
    assert_eq!(
        decisions(&replayed),
        vec![
            d("approve", "alice", "ok", ""),
            d("reject", "alice", "paid already", "")
        ]
    );
    assert_eq!(rig.calls(), (2, 1));
    rt.shutdown().await;
}
