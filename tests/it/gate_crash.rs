//! Gates across SIGKILL of the real binary, and 10,000 pending gates.

use std::time::Duration;

use baton::proto::v1::{self, gates_client::GatesClient};
use baton::types::{EventKind, SessionEvent};
use baton_testkit::fake_openai::ScriptedReply;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};
use tonic::transport::Channel;

use crate::common::*;

const POLICIES: &str = r#"
[[gates.policies]]
name = "replies"
kind = "final_answer"
reviewers = "support"
"#;

async fn gates_client(server: &BatonProcess) -> GatesClient<Channel> {
    GatesClient::new(
        Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

fn opened(events: &[SessionEvent]) -> String {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::GateOpened { gate_id, .. } => Some(gate_id.to_string()),
            _ => None,
        })
        .unwrap()
}

/// `baton_gates_pending` as `/metrics` shows it.
async fn gates_pending_metric(server: &BatonProcess) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.http_url().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("baton_gates_pending "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no baton_gates_pending in {text}"))
}

async fn pending(gates: &mut GatesClient<Channel>) -> Vec<v1::Gate> {
    gates
        .list_gates(v1::ListGatesRequest {
            status: v1::GateStatus::Pending as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .gates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_gates_survive_sigkill_and_decisions_after_the_restart_resume_the_sessions() {
    let fake = FakeOpenAi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("{}\n{POLICIES}", fake_model_toml(&fake.base_url(), false));
    let config = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    for text in ["draft A", "draft B", "draft C", "revised C"] {
        fake.push_reply(ScriptedReply::Text(text.into()));
    }
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut sessions = Vec::new();
    for text in ["a", "b", "c"] {
        let id = start(&mut client, "").await;
        let mut s = send(&mut client, &id, text).await;
        let ev = read_until(&mut s, |e| e.kind.name() == "gate_opened").await;
        sessions.push((id, opened(&ev), ev.last().unwrap().seq));
    }
    let mut gates = gates_client(&server).await;
    assert_eq!(pending(&mut gates).await.len(), 3);
    server.kill9().await.unwrap();

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut gates = gates_client(&server).await;
    let after = pending(&mut gates).await;
    assert_eq!(after.len(), 3, "pending gates survive the crash");
    assert_eq!(
        gates_pending_metric(&server).await,
        3.0,
        "the gauge counts gates pending from before the restart"
    );
    assert!(
        after
            .iter()
            .all(|g| g.reviewers == "support" && g.subject.contains("draft"))
    );
    let s = get(&mut client, &sessions[0].0).await;
    assert_eq!(s.status, v1::SessionStatus::NeedsAttention as i32);
    assert_eq!(fake.requests(), 3, "nothing re-run while waiting");

    let decide = |gate_id: &str, decision: v1::GateDecision, payload: &str, reason: &str| {
        v1::DecideGateRequest {
            gate_id: gate_id.into(),
            decision: decision as i32,
            reviewer: "alice".into(),
            reason: reason.into(),
            edited_payload: payload.into(),
        }
    };
    gates
        .decide_gate(decide(&sessions[0].1, v1::GateDecision::Approve, "", ""))
        .await
        .unwrap();
    gates
        .decide_gate(decide(
            &sessions[1].1,
            v1::GateDecision::Edit,
            "edited B",
            "tone",
        ))
        .await
        .unwrap();
    gates
        .decide_gate(decide(
            &sessions[2].1,
            v1::GateDecision::Reject,
            "",
            "cite the policy",
        ))
        .await
        .unwrap();

    for (i, (id, _, seen)) in sessions.iter().enumerate() {
        let mut s = client
            .resume_session(v1::ResumeSessionRequest {
                session_id: id.clone(),
                after_seq: *seen,
            })
            .await
            .unwrap()
            .into_inner();
        let rest = read_until(&mut s, |e| {
            e.kind.name() == "turn_completed" || (i == 2 && e.kind.name() == "gate_opened")
        })
        .await;
        assert_eq!(rest[0].kind.name(), "gate_decided", "{:?}", kinds(&rest));
        if i == 2 {
            // Rejected: the model revised with the reason, and the revision is held again.
            let body = fake.received().last().cloned().unwrap();
            assert!(body.to_string().contains("cite the policy"));
            let gid = opened(&rest);
            gates
                .decide_gate(decide(&gid, v1::GateDecision::Approve, "", ""))
                .await
                .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = |s: &v1::Session| s.messages.last().unwrap().content.clone();
    assert_eq!(last(&get(&mut client, &sessions[0].0).await), "draft A");
    assert_eq!(last(&get(&mut client, &sessions[1].0).await), "edited B");
    assert_eq!(last(&get(&mut client, &sessions[2].0).await), "revised C");
    assert!(pending(&mut gates).await.is_empty());
    assert_eq!(gates_pending_metric(&server).await, 0.0);
    // A decided gate stays decided across another crash.
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut gates = gates_client(&server).await;
    let g = gates
        .get_gate(v1::GetGateRequest {
            gate_id: sessions[1].1.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (g.decision, g.reviewer.as_str(), g.edited.as_str()),
        (v1::GateDecision::Edit as i32, "local:alice", "edited B")
    );
    let e = gates
        .decide_gate(decide(&sessions[1].1, v1::GateDecision::Approve, "", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_needs_attention_call_becomes_a_gate_that_a_reviewer_can_approve_after_a_crash() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A local endpoint the non-idempotent http_post calls: hangs on the first hit.
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let h = h.clone();
            async move {
                if h.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::ToolCalls(vec![baton::types::ToolCall {
        id: "w1".into(),
        name: "http_post".into(),
        arguments: serde_json::json!({"url": format!("http://{addr}/hook"), "body": "{}"})
            .to_string(),
    }]));
    fake.push_reply(ScriptedReply::Text("webhook sent".into()));
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}\n[tools.builtin.http_post]\nallowed_hosts = [{:?}]\ntimeout_ms = 120000\n[gates.needs_attention]\nreviewers = \"operators\"\n",
        fake_model_toml(&fake.base_url(), false),
        addr.to_string()
    );
    let config = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let mut s = send(&mut client, &id, "fire the hook").await;
    read_until(&mut s, |e| e.kind.name() == "tool_call_started").await;
    for _ in 0..500 {
        if hits.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9().await.unwrap();

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut gates = gates_client(&server).await;
    let mut open = Vec::new();
    for _ in 0..300 {
        open = pending(&mut gates).await;
        if !open.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open.len(), 1);
    let g = &open[0];
    assert_eq!(
        (g.kind.as_str(), g.call_id.as_str(), g.reviewers.as_str()),
        ("needs_attention", "w1", "operators")
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "not re-run without a decision"
    );
    // The operator checked the target and decides to run it again.
    gates
        .decide_gate(v1::DecideGateRequest {
            gate_id: g.gate_id.clone(),
            decision: v1::GateDecision::Approve as i32,
            reviewer: "ops-oncall".into(),
            reason: "the first attempt never reached the hook".into(),
            edited_payload: String::new(),
        })
        .await
        .unwrap();
    let mut s = client
        .resume_session(v1::ResumeSessionRequest {
            session_id: id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let all = read_until(&mut s, |e| e.kind.name() == "turn_completed").await;
    assert!(
        all.iter()
            .any(|e| matches!(&e.kind, EventKind::ToolCallStarted { attempt: 2, .. }))
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "run again exactly once, after approval"
    );
    assert_eq!(
        get(&mut client, &id).await.messages.last().unwrap().content,
        "webhook sent"
    );
}
