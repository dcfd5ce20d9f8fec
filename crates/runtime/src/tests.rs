use std::time::Duration;

use baton_models::{EndpointConfig, ProviderKind};
use baton_types::{ErrorCode, Message};
use futures::StreamExt;

use super::*;
use baton_store::{Batch, Store, StoreOptions};
use baton_types::{EventKind, SessionEvent, SessionId, SessionStatus};

fn echo(name: &str, delay_ms: u64) -> EndpointConfig {
    let mut c = EndpointConfig::new(name, ProviderKind::Echo);
    c.echo.delay_ms = delay_ms;
    c.stream = false;
    c
}

fn config(dir: &std::path::Path) -> RuntimeConfig {
    let mut c = RuntimeConfig::for_test(dir);
    c.models = vec![echo("echo", 0), echo("slow", 60_000)];
    c.sessions.default_route = "echo".into();
    c
}

async fn collect(mut s: EventStream) -> Vec<SessionEvent> {
    let mut out = Vec::new();
    while let Some(e) = s.next().await {
        out.push(e.unwrap());
    }
    out
}

fn names(events: &[SessionEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

async fn wait_for<F: Fn() -> Fut, Fut: std::future::Future<Output = bool>>(f: F) {
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_streams_durable_events_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder(config(dir.path())).start().await.unwrap();
    let s = rt
        .start_session(StartSession {
            system_prompt: "be brief".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(s.created);
    let events = collect(rt.send(s.id, "hello world".into()).await.unwrap()).await;
    assert_eq!(
        names(&events),
        vec![
            "turn_accepted",
            "model_call_started",
            "routing_decided",
            "assistant_message",
            "turn_completed"
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        vec![2, 3, 4, 5, 6],
        "seq 1 is SessionStarted; no gaps"
    );
    match &events[2].kind {
        EventKind::RoutingDecided { decision, .. } => {
            assert_eq!(decision.chosen, "echo");
            assert_eq!(decision.rule, "only_candidate");
        }
        other => panic!("expected a routing decision, got {other:?}"),
    }
    match &events[3].kind {
        EventKind::AssistantMessage {
            message, endpoint, ..
        } => {
            assert_eq!(message.content, "hello world");
            assert_eq!(endpoint, "echo");
        }
        other => panic!("unexpected {other:?}"),
    }
    let view = rt.get(s.id).await.unwrap();
    assert_eq!(
        view.messages,
        vec![
            Message::user("hello world"),
            Message::assistant("hello world")
        ]
    );
    assert_eq!(view.status, SessionStatus::Idle);
    assert_eq!(view.last_seq, 6);
    // Resume from 0 replays the whole journal, SessionStarted included.
    let mut r = rt.resume(s.id, 0).await.unwrap();
    let mut replay = Vec::new();
    for _ in 0..6 {
        replay.push(r.next().await.unwrap().unwrap());
    }
    assert_eq!(
        replay.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(&replay[1..], &events[..]);
    // A warm session's turn is two write requests.
    let after = rt.writer_stats();
    let warm = collect(rt.send(s.id, "again".into()).await.unwrap()).await;
    let after2 = rt.writer_stats();
    assert_eq!(names(&warm).len(), 5);
    assert_eq!(
        after2.requests - after.requests,
        2,
        "one batch for the input (TurnAccepted + ModelCallStarted), one for the routing decision and the answer"
    );
    assert!(after2.synced_groups - after.synced_groups <= 2);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_of_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let rt = Runtime::builder(config(dir.path())).start().await.unwrap();
        let s = rt.start_session(StartSession::default()).await.unwrap();
        collect(rt.send(s.id, "one".into()).await.unwrap()).await;
        collect(rt.send(s.id, "two".into()).await.unwrap()).await;
        rt.shutdown().await;
        s.id
    };
    let rt = Runtime::builder(config(dir.path())).start().await.unwrap();
    let view = rt.get(id).await.unwrap();
    assert_eq!(view.messages.len(), 4);
    assert_eq!(view.turns_completed, 2);
    let events = collect(rt.send(id, "three".into()).await.unwrap()).await;
    assert_eq!(
        events[0].kind,
        EventKind::TurnAccepted {
            by: "embedded:embedded".into(),
            turn: 3,
            message: Message::user("three"),
            review: false,
        }
    );
    rt.shutdown().await;
}

/// Recovery, from exactly what a crash leaves behind: a turn accepted and its
/// model call started, with no recorded answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_turn_is_resumed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let rt = Runtime::builder(config(dir.path())).start().await.unwrap();
        let s = rt.start_session(StartSession::default()).await.unwrap();
        rt.shutdown().await;
        s.id
    };
    {
        let store_cfg = config(dir.path()).store;
        let mut opts = StoreOptions::new(dir.path(), Durability::Sync);
        opts.postgres = store_cfg.postgres_options().unwrap();
        let store = tokio::task::spawn_blocking(move || Store::open(opts))
            .await
            .unwrap()
            .unwrap();
        let mut meta = store.load_meta(id).await.unwrap().unwrap();
        let mut b = Batch::new();
        b.append(
            &id,
            2,
            1,
            &EventKind::TurnAccepted {
                by: String::new(),
                turn: 1,
                message: Message::user("lost?"),
                review: false,
            },
        );
        b.append(
            &id,
            3,
            1,
            &EventKind::ModelCallStarted {
                turn: 1,
                attempt: 1,
                endpoint: "echo".into(),
                reason: baton_types::ModelCallReason::Turn,
            },
        );
        meta.status = SessionStatus::Running;
        b.put_meta(&id, &meta, Some(SessionStatus::Idle));
        store.write(b).await.unwrap();
        store.close();
    }
    let rt = Runtime::builder(config(dir.path())).start().await.unwrap();
    let mut r = rt.resume(id, 3).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = r.next().await.unwrap().unwrap();
        if !matches!(e.kind, EventKind::RoutingDecided { .. }) {
            got.push(e);
        }
    }
    assert_eq!(
        got[0].kind,
        EventKind::ModelCallStarted {
            turn: 1,
            attempt: 2,
            endpoint: "echo".into(),
            reason: baton_types::ModelCallReason::Recovery
        }
    );
    assert!(
        matches!(&got[1].kind, EventKind::AssistantMessage { message, .. } if message.content == "lost?")
    );
    assert_eq!(got[2].kind.name(), "turn_completed");
    let view = rt.get(id).await.unwrap();
    assert_eq!(
        view.messages.len(),
        2,
        "the user message exists exactly once"
    );
    assert_eq!(view.status, SessionStatus::Idle);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_turns_run_one_after_another_and_reject_policy_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.models = vec![echo("echo", 100)];
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    let a = rt.send(s.id, "first".into()).await.unwrap();
    let b = rt.send(s.id, "second".into()).await.unwrap();
    let (a, b) = tokio::join!(collect(a), collect(b));
    let a_done = a.last().unwrap().seq;
    assert!(
        b.iter()
            .filter(|e| e.kind.name() != "turn_accepted")
            .all(|e| e.seq > a_done),
        "turns interleaved"
    );
    assert_eq!(b.last().unwrap().kind.name(), "turn_completed");
    rt.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.sessions.busy_policy = BusyPolicy::Reject;
    cfg.sessions.default_route = "slow".into();
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    let _running = rt.send(s.id, "first".into()).await.unwrap();
    let err = rt.send(s.id, "second".into()).await.err().unwrap();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    assert!(err.to_string().contains("busy"), "{err}");
    // Cancel frees the session; the cancelled call's answer is never recorded.
    assert_eq!(rt.cancel(s.id).await.unwrap(), Some(1));
    let view = rt.get(s.id).await.unwrap();
    assert_eq!(view.status, SessionStatus::Idle);
    assert_eq!(view.messages.len(), 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_create_exactly_once_under_races() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder(config(dir.path())).start().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            rt.start_session(StartSession {
                idempotency_key: Some("order-42".into()),
                ..Default::default()
            })
            .await
            .unwrap()
        }));
    }
    let mut infos = Vec::new();
    for t in tasks {
        infos.push(t.await.unwrap());
    }
    assert_eq!(infos.iter().filter(|i| i.created).count(), 1);
    assert!(infos.iter().all(|i| i.id == infos[0].id));
    let all = rt.list(ListQuery::default()).await.unwrap();
    assert_eq!(all.sessions.len(), 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_right_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.sessions.max_message_bytes = 10;
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    let code = |r: Result<EventStream>| r.err().map(|e| e.code());
    assert_eq!(
        code(rt.send(s.id, "  ".into()).await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        code(rt.send(s.id, "x".repeat(11)).await),
        Some(ErrorCode::ResourceExhausted)
    );
    assert_eq!(
        code(rt.send(SessionId::new(), "hi".into()).await),
        Some(ErrorCode::NotFound)
    );
    let err = rt
        .start_session(StartSession {
            route: Some("gpt-9".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("gpt-9"));
    assert_eq!(
        rt.resume(s.id, 99).await.err().map(|e| e.code()),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        rt.get(s.id).await.unwrap().last_seq,
        1,
        "nothing was persisted by refused calls"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_live_cap_the_least_recently_active_sessions_are_passivated() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.sessions.max_live_sessions = 3;
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..8 {
        let s = rt.start_session(StartSession::default()).await.unwrap();
        collect(rt.send(s.id, format!("turn of {i}")).await.unwrap()).await;
        ids.push(s.id);
    }
    wait_for(|| async { rt.stats().await.unwrap().live_sessions <= 3 }).await;
    let stats = rt.stats().await.unwrap();
    assert!(stats.passivations_total >= 5, "{stats:?}");
    // The newest stayed live; the oldest were passivated and come back
    // whole from storage.
    let tree = rt.actor_tree().await.unwrap();
    let live: Vec<String> = tree
        .children
        .iter()
        .flat_map(|c| c.children.iter())
        .filter(|n| n.kind == "session")
        .map(|n| n.name.clone())
        .collect();
    assert!(live.contains(&ids[7].to_string()), "{live:?}");
    assert!(!live.contains(&ids[0].to_string()), "{live:?}");
    for (i, id) in ids.iter().enumerate() {
        let view = rt.get(*id).await.unwrap();
        assert_eq!(view.messages[0], Message::user(format!("turn of {i}")));
        assert_eq!(view.turns_completed, 1);
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_passivated_and_rehydrated() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.sessions.passivate_after_ms = 100;
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    collect(rt.send(s.id, "remember me".into()).await.unwrap()).await;
    assert_eq!(rt.stats().await.unwrap().live_sessions, 1);
    wait_for(|| async { rt.stats().await.unwrap().live_sessions == 0 }).await;
    assert!(rt.stats().await.unwrap().passivations_total >= 1);
    // Rehydrated from its snapshot on the next message.
    let view = rt.get(s.id).await.unwrap();
    assert_eq!(view.messages[0], Message::user("remember me"));
    let events = collect(rt.send(s.id, "again".into()).await.unwrap()).await;
    assert_eq!(events[0].seq, 7);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_sessions_leave_memory_when_their_turn_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.sessions.passivate_after_ms = 3_600_000;
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let kept = rt.start_session(StartSession::default()).await.unwrap();
    collect(rt.send(kept.id, "stay".into()).await.unwrap()).await;
    let mut ids = Vec::new();
    let before = rt.writer_stats();
    for i in 0..50 {
        let s = rt
            .start_session(StartSession {
                one_shot: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let events = collect(rt.send(s.id, format!("call {i}")).await.unwrap()).await;
        assert_eq!(events.last().unwrap().kind.name(), "turn_completed");
        ids.push(s.id);
    }
    // One fsync a call: the session's creation and its turn are written
    // unsynced and made durable by the answer's synced write.
    let synced = rt.writer_stats().synced_groups - before.synced_groups;
    assert!(synced <= 50, "{synced} synced writes for 50 one-shot calls");
    // Each actor started from what its creation wrote, taken once.
    assert_eq!(rt.inner.shared.fresh.len(), 0);
    // Only the ordinary session stays live (the idle timeout is an hour).
    wait_for(|| async { rt.stats().await.unwrap().live_sessions == 1 }).await;
    assert!(rt.stats().await.unwrap().passivations_total >= 50);
    // Nothing was lost: a passivated one-shot session reads back whole.
    let view = rt.get(ids[7]).await.unwrap();
    assert_eq!(view.messages[0], Message::user("call 7"));
    assert_eq!(view.messages.len(), 2);
    rt.shutdown().await;
}

/// An embedder tool that answers after a while.
#[derive(Debug)]
struct SlowTool(baton_tools::ToolSpec);

#[async_trait::async_trait]
impl baton_tools::Tool for SlowTool {
    fn spec(&self) -> &baton_tools::ToolSpec {
        &self.0
    }
    async fn call(&self, _: serde_json::Value) -> Result<String, baton_tools::ToolError> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Ok("done late".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_finishes_after_delete_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        serde_json::json!([
            {"tool_calls": [{"id": "s1", "name": "slow", "arguments": {}}]},
            {"text": "after the tool"}
        ])
        .to_string(),
    )
    .unwrap();
    let mut cfg = RuntimeConfig::for_test(dir.path().join("data"));
    let mut model = EndpointConfig::scripted("agent", &script);
    model.stream = false;
    cfg.models = vec![model];
    cfg.sessions.default_route = "agent".into();
    let tool = std::sync::Arc::new(SlowTool(baton_tools::ToolSpec {
        name: "slow".into(),
        description: "answers after a while".into(),
        parameters: serde_json::json!({"type": "object"}),
        output_schema: None,
        idempotent: true,
        timeout: Duration::from_secs(10),
    }));
    let rt = Runtime::builder(cfg).with_tool(tool).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    let mut events = rt.send(s.id, "go".into()).await.unwrap();
    while let Some(e) = events.next().await {
        if e.unwrap().kind.name() == "tool_call_started" {
            break;
        }
    }
    rt.delete(s.id).await.unwrap();
    // The tool finishes after the delete: nothing of the session comes back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let store = rt.shared().store.clone();
    assert!(store.read_journal(s.id, 0, 100).await.unwrap().is_empty());
    assert!(store.load_meta(s.id).await.unwrap().is_none());
    assert_eq!(rt.get(s.id).await.unwrap_err().code(), ErrorCode::NotFound);
    // Its actor left memory: the abandoned call holds nothing.
    wait_for(|| async { rt.stats().await.unwrap().live_sessions == 0 }).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_actor_is_restarted_then_marked_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.supervision.max_restarts = 2;
    cfg.supervision.initial_backoff_ms = 10;
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    let other = rt.start_session(StartSession::default()).await.unwrap();
    collect(rt.send(s.id, "before".into()).await.unwrap()).await;

    rt.inject_actor_fault(s.id).unwrap();
    // Restarted from disk: state intact, still usable.
    let view = rt.get(s.id).await.unwrap();
    assert_eq!(view.messages.len(), 2);
    assert_eq!(view.status, SessionStatus::Idle);
    assert_eq!(rt.stats().await.unwrap().restarts_total, 1);

    rt.inject_actor_fault(s.id).unwrap();
    rt.get(s.id).await.unwrap();
    rt.inject_actor_fault(s.id).unwrap();
    let view = rt.get(s.id).await.unwrap();
    assert_eq!(view.status, SessionStatus::Failed);
    assert!(
        view.status_reason.contains("failed 3 times"),
        "{}",
        view.status_reason
    );
    let err = rt.send(s.id, "after".into()).await.err().unwrap();
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    let failed = rt
        .list(ListQuery {
            status: Some(SessionStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.sessions.len(), 1);
    // The other session never noticed.
    let events = collect(rt.send(other.id, "fine".into()).await.unwrap()).await;
    assert_eq!(events.last().unwrap().kind.name(), "turn_completed");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_sessions_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder(config(dir.path())).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    collect(rt.send(s.id, "x".into()).await.unwrap()).await;
    rt.delete(s.id).await.unwrap();
    assert_eq!(rt.get(s.id).await.unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(
        rt.delete(s.id).await.unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert!(
        rt.list(ListQuery::default())
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
    rt.shutdown().await;
}

/// A turn's stream ends the instant its last event is read: no wait for
/// the forwarding task. (An HTTP/2 server then flushes the last message and
/// the stream's end together; a client that stops reading at TurnCompleted
/// otherwise gets late trailers, which its h2 counts as resets and closes
/// the connection after 1,024 of them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_stream_ends_right_after_its_last_event() {
    use futures::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder(config(dir.path())).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    let mut late = 0;
    for i in 0..200 {
        let mut stream = rt.send(s.id, format!("turn {i}")).await.unwrap();
        loop {
            let e = stream.next().await.unwrap().unwrap();
            if e.ends_turn() {
                break;
            }
        }
        match stream.next().now_or_never() {
            Some(None) => {}
            Some(Some(e)) => panic!("an event after the turn's end: {e:?}"),
            None => late += 1,
        }
    }
    assert_eq!(
        late, 0,
        "{late} of 200 streams were not over at their last event"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_name_no_route_use_the_resolved_default_route() {
    // One endpoint and no sessions.default_route: that endpoint.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RuntimeConfig::for_test(dir.path());
    cfg.models = vec![echo("solo", 0)];
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    let events = collect(rt.send(s.id, "hi".into()).await.unwrap()).await;
    assert_eq!(events.last().unwrap().kind.name(), "turn_completed");
    let listed = rt.list(ListQuery::default()).await.unwrap();
    assert_eq!(listed.sessions[0].route, "solo");
    rt.shutdown().await;

    // Several and none chosen: the runtime does not start, and says why.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RuntimeConfig::for_test(dir.path());
    cfg.models = vec![echo("a", 0), echo("b", 0)];
    let err = Runtime::builder(cfg).start().await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "invalid configuration: sessions.default_route: not set, and there are 2 routes and endpoints (a, b): set it to the one sessions that name none should use"
    );
}

/// A classifier registered in code, for policies: "medical" when the text
/// talks of a diagnosis, an error when it says "unclassifiable".
#[derive(Debug)]
struct Topics;

impl baton_governance::Classifier for Topics {
    fn label<'a>(
        &'a self,
        text: &'a str,
        _labels: &'a [String],
    ) -> baton_governance::BoxFuture<'a, std::result::Result<String, String>> {
        Box::pin(async move {
            if text.contains("unclassifiable") {
                Err("cannot tell".to_string())
            } else if text.contains("diagnosis") {
                Ok("medical".to_string())
            } else {
                Ok("general".to_string())
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_classifier_tags_the_call_and_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let mut certified = echo("certified", 0);
    certified.data_classes = vec!["health".into()];
    cfg.models = vec![echo("general", 0), certified];
    cfg.routes = vec![
        serde_json::from_value(serde_json::json!({
            "name": "main", "strategy": "fallback", "endpoints": ["general", "certified"],
        }))
        .unwrap(),
    ];
    cfg.sessions.default_route = "main".into();
    cfg.policies =
        toml::from_str::<std::collections::HashMap<String, Vec<baton_governance::PolicyConfig>>>(
            r#"
[[policies]]
name = "health"
stage = "input"
[[policies.rules]]
name = "topic"
classifier = "topics"
labels = ["medical", "general"]
match_labels = ["medical"]
outcome = "tag"
data_class = "health"
"#,
        )
        .unwrap()
        .remove("policies")
        .unwrap();
    // Not registered: refused at start, naming the rule.
    let err = Runtime::builder(cfg.clone()).start().await.unwrap_err();
    assert!(
        err.to_string().contains("policies[0].rules[0].classifier")
            && err.to_string().contains("\"topics\""),
        "{err}"
    );
    let rt = Runtime::builder(cfg)
        .with_policy_classifier("topics", std::sync::Arc::new(Topics))
        .start()
        .await
        .unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    let endpoint = |events: &[SessionEvent]| {
        events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::AssistantMessage { endpoint, .. } => Some(endpoint.clone()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let general = collect(rt.send(s.id, "what are your hours?".into()).await.unwrap()).await;
    assert_eq!(endpoint(&general), "general");
    // Tagged health: only the certified endpoint may answer — this turn
    // and the next (the earlier message still carries the class).
    let medical = collect(rt.send(s.id, "about my diagnosis".into()).await.unwrap()).await;
    assert_eq!(endpoint(&medical), "certified", "{:?}", names(&medical));
    let next = collect(rt.send(s.id, "and then?".into()).await.unwrap()).await;
    assert_eq!(endpoint(&next), "certified");
    // A classifier that cannot answer fails closed: the rule applies.
    let t = rt.start_session(StartSession::default()).await.unwrap();
    let failed = collect(rt.send(t.id, "unclassifiable".into()).await.unwrap()).await;
    assert_eq!(endpoint(&failed), "certified");
    let hit = failed
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::PolicyEvaluated { hits, .. } => hits.first().cloned(),
            _ => None,
        })
        .unwrap();
    assert!(
        hit.message.contains("the check failed") && hit.message.contains("cannot tell"),
        "{}",
        hit.message
    );
    assert_eq!(hit.matches[0].kind, "classifier:topics");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_its_byte_limit_is_cut_and_resumes_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Above one turn's events (its own stream must not be cut), below three.
    cfg.sessions.subscriber_buffer_bytes = 100 * 1024;
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    // A watcher that reads nothing while three turns of 40 KB messages and
    // their 40 KB answers pass: far fewer events than its count limit, far
    // more bytes than its byte limit.
    let mut watch = rt.resume(s.id, 0).await.unwrap();
    let big = "x".repeat(40_000);
    for i in 0..3 {
        collect(rt.send(s.id, format!("{i}{big}")).await.unwrap()).await;
    }
    let last_seq = rt.get(s.id).await.unwrap().last_seq;
    let mut seen = Vec::new();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
        {
            Some(Ok(e)) => seen.push(e),
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error after {seen:?}"),
        }
    };
    let after = seen.last().map_or(0, |e| e.seq);
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("resume with after_seq = {after}")),
        "{err}"
    );
    assert!(after < last_seq, "cut at {after} of {last_seq}");
    // Resumed from where it was cut: the rest, nothing missing or repeated.
    let mut rest = rt.resume(s.id, after).await.unwrap();
    while seen.last().map_or(0, |e| e.seq) < last_seq {
        seen.push(rest.next().await.unwrap().unwrap());
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=last_seq).collect::<Vec<_>>());
    rt.shutdown().await;
}

/// A journal writer further behind than `store.max_backlog_bytes`: new
/// sessions and messages are refused with UNAVAILABLE naming the limit
/// until it catches up; nothing already accepted is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_work_waits_for_a_journal_writer_that_fell_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.store.max_backlog_bytes = 1 << 20;
    let rt = Runtime::builder(cfg).start().await.unwrap();
    let s = rt.start_session(StartSession::default()).await.unwrap();
    // Four synced 16 MiB writes queued ahead (snapshots of a session that
    // does not exist): the writer is behind.
    let store = rt.inner.shared.store.clone();
    let writes: Vec<_> = (0..4)
        .map(|_| {
            let mut b = Batch::new();
            b.put_snapshot(&SessionId::new(), vec![7; 16 << 20]);
            store.write(b)
        })
        .collect();
    assert!(store.backlog().1 > 1 << 20);
    let behind = |e: Error| {
        assert!(matches!(e, Error::Unavailable(_)), "{e}");
        assert!(
            e.to_string().contains("store.max_backlog_bytes = 1048576"),
            "{e}"
        );
    };
    behind(rt.start_session(StartSession::default()).await.unwrap_err());
    behind(rt.send(s.id, "hello".into()).await.err().unwrap());
    for w in writes {
        w.await.unwrap();
    }
    assert_eq!(store.backlog(), (0, 0));
    let events = collect(rt.send(s.id, "hello".into()).await.unwrap()).await;
    assert_eq!(events.last().unwrap().kind.name(), "turn_completed");
    rt.start_session(StartSession::default()).await.unwrap();
    rt.shutdown().await;
}

/// The suite runs on the backend asked for: `BATON_TEST_STORE=postgres`
/// really puts the store on PostgreSQL (so the suite's second run is not
/// RocksDB again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_runs_on_the_backend_it_was_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder(config(dir.path())).start().await.unwrap();
    let want = if baton_pgtest::on_postgres() {
        "postgres"
    } else {
        "rocksdb"
    };
    assert_eq!(rt.store().backend(), want);
    rt.shutdown().await;
}
