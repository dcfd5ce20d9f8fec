//! Exactly-once tool results across SIGKILL of the real binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing;
use baton::proto::v1;
use baton::types::{EventKind, SessionEvent, ToolCall};
use baton_testkit::fake_openai::{Fault, ScriptedReply};
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};
use serde_json::json;

use crate::common::*;

/// A local HTTP service the built-in http tools call: counts hits, and
/// hangs while `slow` is set.
struct Service {
    hits: Arc<AtomicUsize>,
    slow: Arc<AtomicBool>,
    url: String,
    host: String,
}

async fn service() -> Service {
    #[derive(Clone)]
    struct S {
        hits: Arc<AtomicUsize>,
        slow: Arc<AtomicBool>,
    }
    async fn handle(State(s): State<S>) -> &'static str {
        s.hits.fetch_add(1, Ordering::SeqCst);
        if s.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        "{\"ok\":true}"
    }
    let s = S {
        hits: Arc::new(AtomicUsize::new(0)),
        slow: Arc::new(AtomicBool::new(true)),
    };
    let app = Router::new()
        .route("/thing", routing::get(handle).post(handle))
        .with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Service {
        hits: s.hits,
        slow: s.slow,
        url: format!("http://{addr}/thing"),
        host: addr.to_string(),
    }
}

fn config_toml(fake: &FakeOpenAi, svc: &Service) -> String {
    format!(
        "{}\n[tools.builtin.http_get]\nallowed_hosts = [{host:?}]\ntimeout_ms = 120000\n[tools.builtin.http_post]\nallowed_hosts = [{host:?}]\ntimeout_ms = 120000\n",
        fake_model_toml(&fake.base_url(), false),
        host = svc.host
    )
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn tool_call(id: &str, name: &str, args: serde_json::Value) -> ScriptedReply {
    ScriptedReply::ToolCalls(vec![ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.to_string(),
    }])
}

async fn resume_from(
    client: &mut Client,
    id: &str,
    after: u64,
    stop: impl FnMut(&SessionEvent) -> bool,
) -> Vec<SessionEvent> {
    let mut s = resume(client, id, after).await;
    read_until(&mut s, stop).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_tool_is_rerun_after_a_crash_and_a_recorded_result_never_is() {
    let fake = FakeOpenAi::start().await.unwrap();
    let svc = service().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &config_toml(&fake, &svc),
    )
    .unwrap();
    fake.push_reply(tool_call("g1", "http_get", json!({"url": svc.url})));
    fake.push_reply(ScriptedReply::Text("fetched it".into()));

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let mut s = send(&mut client, &id, "fetch the thing").await;
    let seen = read_until(&mut s, |e| e.kind.name() == "tool_call_started").await;
    wait_until("the tool to reach the service", || {
        svc.hits.load(Ordering::SeqCst) == 1
    })
    .await;
    // Crash 1: while the (idempotent) tool call is in flight.
    server.kill9().await.unwrap();
    svc.slow.store(false, Ordering::SeqCst);
    // The model call after the tool result will hang: crash 2 lands there.
    fake.push_fault(Fault::Hang);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let last = seen.last().unwrap().seq;
    let after1 = resume_from(&mut client, &id, last, |e| {
        e.kind.name() == "model_call_started"
    })
    .await;
    assert_eq!(
        kinds(&after1),
        vec!["tool_call_started", "tool_result", "model_call_started"],
        "re-run once, result recorded, next model call issued"
    );
    assert!(matches!(
        &after1[0].kind,
        EventKind::ToolCallStarted { attempt: 2, .. }
    ));
    assert_eq!(
        svc.hits.load(Ordering::SeqCst),
        2,
        "the idempotent call ran again after the crash"
    );
    wait_until("the hanging model call", || fake.requests() == 2).await;
    // On RocksDB the records that started the model call are written
    // while the call runs (the write overlaps it, see
    // docs/architecture.md): let them land before the kill. On PostgreSQL
    // the call waits for their commit, so the kill comes the moment the
    // model sees it: the turn must be in the journal then.
    if !baton_pgtest::on_postgres() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Crash 2: the tool result is recorded; the model call is in flight.
    server.kill9().await.unwrap();

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let after2 = resume_from(&mut client, &id, after1.last().unwrap().seq, |e| {
        e.ends_turn()
    })
    .await;
    assert_eq!(
        kinds(&after2),
        vec![
            "model_call_started",
            "routing_decided",
            "assistant_message",
            "turn_completed"
        ]
    );
    assert!(
        matches!(&after2[0].kind, EventKind::ModelCallStarted { reason, .. } if reason.as_str() == "recovery")
    );
    assert_eq!(
        svc.hits.load(Ordering::SeqCst),
        2,
        "a recorded tool result is never executed again"
    );
    let session = get(&mut client, &id).await;
    let tool_msgs = session
        .messages
        .iter()
        .filter(|m| m.role == v1::Role::Tool as i32)
        .count();
    assert_eq!(tool_msgs, 1, "exactly one tool result in the conversation");
    assert_eq!(session.messages.last().unwrap().content, "fetched it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_idempotent_tool_is_never_rerun_and_the_session_needs_attention() {
    let fake = FakeOpenAi::start().await.unwrap();
    let svc = service().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &config_toml(&fake, &svc),
    )
    .unwrap();
    fake.push_reply(tool_call(
        "p1",
        "http_post",
        json!({"url": svc.url, "body": "{\"refund\": 10}"}),
    ));
    fake.push_reply(ScriptedReply::Text("refund handled".into()));

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let mut s = send(&mut client, &id, "refund order 7").await;
    let seen = read_until(&mut s, |e| e.kind.name() == "tool_call_started").await;
    wait_until("the post to reach the service", || {
        svc.hits.load(Ordering::SeqCst) == 1
    })
    .await;
    server.kill9().await.unwrap();
    svc.slow.store(false, Ordering::SeqCst);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let after = resume_from(&mut client, &id, seen.last().unwrap().seq, |e| {
        e.kind.name() == "needs_attention"
    })
    .await;
    match &after.last().unwrap().kind {
        EventKind::NeedsAttention {
            call_id, reason, ..
        } => {
            assert_eq!(call_id, "p1");
            assert!(reason.contains("not idempotent"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let session = get(&mut client, &id).await;
    assert_eq!(session.status, v1::SessionStatus::NeedsAttention as i32);
    assert!(session.pending_tool_calls[0].needs_attention);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        svc.hits.load(Ordering::SeqCst),
        1,
        "a non-idempotent call is never re-run"
    );
    assert_eq!(fake.requests(), 1);

    // It stays paused across another restart, then a human answers it.
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    assert_eq!(
        get(&mut client, &id).await.status,
        v1::SessionStatus::NeedsAttention as i32
    );
    client
        .submit_tool_result(v1::SubmitToolResultRequest {
            session_id: id.clone(),
            call_id: "p1".into(),
            outcome: Some(v1::submit_tool_result_request::Outcome::Output(
                "checked by hand: the refund went through".into(),
            )),
        })
        .await
        .unwrap();
    let rest = resume_from(&mut client, &id, after.last().unwrap().seq, |e| {
        e.ends_turn()
    })
    .await;
    assert_eq!(kinds(&rest).last(), Some(&"turn_completed"));
    assert_eq!(svc.hits.load(Ordering::SeqCst), 1);
    let session = get(&mut client, &id).await;
    assert_eq!(session.status, v1::SessionStatus::Idle as i32);
    assert_eq!(session.messages.last().unwrap().content, "refund handled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_side_tool_call_waits_across_a_restart() {
    let fake = FakeOpenAi::start().await.unwrap();
    let svc = service().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &config_toml(&fake, &svc),
    )
    .unwrap();
    fake.push_reply(tool_call("c1", "lookup_order", json!({"order": 7})));
    fake.push_reply(ScriptedReply::Text("order 7 shipped".into()));
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = client
        .start_session(v1::StartSessionRequest {
            client_tools: vec![v1::ToolDefinition {
                name: "lookup_order".into(),
                description: String::new(),
                parameters_json: "{}".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let mut s = send(&mut client, &id, "where is 7?").await;
    let seen = read_until(&mut s, |e| e.kind.name() == "tool_call_requested").await;
    server.kill9().await.unwrap();

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let session = get(&mut client, &id).await;
    assert_eq!(
        session.pending_tool_calls.len(),
        1,
        "still waiting for the client"
    );
    assert_eq!(fake.requests(), 1, "nothing re-issued while waiting");
    client
        .submit_tool_result(v1::SubmitToolResultRequest {
            session_id: id.clone(),
            call_id: "c1".into(),
            outcome: Some(v1::submit_tool_result_request::Outcome::Output(
                "shipped".into(),
            )),
        })
        .await
        .unwrap();
    let rest = resume_from(&mut client, &id, seen.last().unwrap().seq, |e| {
        e.ends_turn()
    })
    .await;
    assert_eq!(
        kinds(&rest),
        vec![
            "tool_result",
            "model_call_started",
            "routing_decided",
            "assistant_message",
            "turn_completed"
        ]
    );
    assert_eq!(fake.requests(), 2);
}
