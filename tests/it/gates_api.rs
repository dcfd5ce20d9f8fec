//! The Gates API over real gRPC (in-process server, fake model server), and
//! the `baton gates …` commands against a real server process.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use baton::RuntimeConfig;
use baton::gates::GatePolicy;
use baton::proto::v1::{self, gates_client::GatesClient};
use baton::types::{EventKind, SessionEvent};
use baton_testkit::fake_openai::ScriptedReply;
use baton_testkit::server::openai_endpoint;
use baton_testkit::{BatonProcess, FakeOpenAi, TestServer, process::write_config};
use futures::StreamExt;
use tonic::transport::Channel;

use crate::common::*;

type Gates = GatesClient<Channel>;

const POLICY: &str = "review_answers";

fn policy(name: &str, routes: &[&str]) -> GatePolicy {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "kind": "final_answer",
        "reviewers": "support-leads",
        "routes": routes,
    }))
    .unwrap()
}

/// Two routes on the fake model server; every final answer is held by the
/// `review_answers` policy.
fn config(fake: &FakeOpenAi) -> RuntimeConfig {
    let mut c = RuntimeConfig {
        models: vec![
            openai_endpoint("fake", &fake.base_url(), false),
            openai_endpoint("other", &fake.base_url(), false),
        ],
        ..Default::default()
    };
    c.sessions.default_route = "fake".into();
    c.gates.policies = vec![policy(POLICY, &[])];
    c
}

async fn gates(server: &TestServer) -> Gates {
    GatesClient::new(server.channel().await.unwrap())
}

async fn send(client: &mut Client, id: &str, text: &str) -> tonic::Streaming<v1::SessionEvent> {
    client
        .send_message(v1::SendMessageRequest {
            session_id: id.into(),
            content: text.into(),
            review: false,
            images: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn opened_gate(events: &[SessionEvent]) -> String {
    match events.last().map(|e| &e.kind) {
        Some(EventKind::GateOpened { gate_id, .. }) => gate_id.to_string(),
        other => panic!("expected gate_opened, got {other:?}"),
    }
}

/// Read the turn until its gate opens; returns the gate id.
async fn until_gate(stream: &mut tonic::Streaming<v1::SessionEvent>) -> String {
    let events = read_until(stream, |e| e.kind.name() == "gate_opened" || e.ends_turn()).await;
    opened_gate(&events)
}

fn decide(
    gate_id: &str,
    decision: v1::GateDecision,
    reviewer: &str,
    reason: &str,
) -> v1::DecideGateRequest {
    v1::DecideGateRequest {
        gate_id: gate_id.into(),
        decision: decision as i32,
        reviewer: reviewer.into(),
        reason: reason.into(),
        edited_payload: String::new(),
    }
}

async fn pending(g: &mut Gates) -> Vec<v1::Gate> {
    g.list_gates(v1::ListGatesRequest {
        status: v1::GateStatus::Pending as i32,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .gates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_answer_is_listed_shown_and_released_once_approved() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::Text("the answer is 42".into()));
    let server = TestServer::start(config(&fake)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut g = gates(&server).await;
    let id = start(&mut client, "").await;
    let mut stream = send(&mut client, &id, "what is the answer").await;
    let gate_id = until_gate(&mut stream).await;

    let listed = pending(&mut g).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let l = &listed[0];
    assert_eq!(l.gate_id, gate_id);
    assert_eq!(l.session_id, id);
    assert_eq!(l.status, v1::GateStatus::Pending as i32);
    assert_eq!(
        (
            l.kind.as_str(),
            l.point.as_str(),
            l.policy.as_str(),
            l.reviewers.as_str()
        ),
        ("final_answer", "final_answer", POLICY, "support-leads")
    );
    assert_eq!(l.turn, 1);
    assert!(l.opened_at_unix_ms > 0);
    assert!(l.context.is_empty(), "ListGates carries no context");

    let shown = g
        .get_gate(v1::GetGateRequest {
            gate_id: gate_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let subject: serde_json::Value = serde_json::from_str(&shown.subject).unwrap();
    assert_eq!(subject["draft"], "the answer is 42");
    let context: Vec<&str> = shown.context.iter().map(|m| m.content.as_str()).collect();
    assert!(context.contains(&"what is the answer"), "{context:?}");

    let decided = g
        .decide_gate(decide(
            &gate_id,
            v1::GateDecision::Approve,
            "alice",
            "looks right",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decided.status, v1::GateStatus::Decided as i32);
    assert_eq!(decided.decision, v1::GateDecision::Approve as i32);
    assert_eq!(decided.reviewer, "local:alice");
    assert_eq!(decided.decision_reason, "looks right");

    // The same stream goes on to release the answer.
    let rest = read_until(&mut stream, |e| e.ends_turn()).await;
    let names = kinds(&rest);
    assert!(names.contains(&"gate_decided"), "{names:?}");
    assert_eq!(names.last(), Some(&"turn_completed"), "{names:?}");
    let s = get(&mut client, &id).await;
    assert_eq!(
        texts(&s).last().map(String::as_str),
        Some("the answer is 42")
    );

    // A second decision is refused and names the first.
    let e = g
        .decide_gate(decide(&gate_id, v1::GateDecision::Reject, "bob", "no"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("approve") && e.message().contains("alice"),
        "{}",
        e.message()
    );
    assert!(pending(&mut g).await.is_empty());
    let decided = g
        .list_gates(v1::ListGatesRequest {
            status: v1::GateStatus::Decided as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .gates;
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].reviewer, "local:alice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_gates_page_and_filter() {
    let fake = FakeOpenAi::start().await.unwrap();
    let server = TestServer::start(config(&fake)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut g = gates(&server).await;
    let mut opened = BTreeSet::new();
    let mut sessions = Vec::new();
    let mut streams = Vec::new();
    for i in 0..3 {
        fake.push_reply(ScriptedReply::Text(format!("draft {i}")));
        let id = start(&mut client, "").await;
        let mut stream = send(&mut client, &id, &format!("question {i}")).await;
        opened.insert(until_gate(&mut stream).await);
        sessions.push(id);
        streams.push(stream);
    }
    assert_eq!(opened.len(), 3);

    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..4 {
        let page = g
            .list_gates(v1::ListGatesRequest {
                status: v1::GateStatus::Pending as i32,
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.gates.len() <= 1);
        seen.extend(page.gates.into_iter().map(|g| g.gate_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(token.is_empty(), "paging ends");
    assert_eq!(seen.len(), 3, "each gate once: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), opened);

    let of_session = g
        .list_gates(v1::ListGatesRequest {
            session_id: sessions[1].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .gates;
    assert_eq!(of_session.len(), 1);
    assert_eq!(of_session[0].session_id, sessions[1]);
    let by_policy = |policy: &str| v1::ListGatesRequest {
        policy: policy.into(),
        status: v1::GateStatus::Pending as i32,
        ..Default::default()
    };
    let n = g
        .list_gates(by_policy(POLICY))
        .await
        .unwrap()
        .into_inner()
        .gates
        .len();
    assert_eq!(n, 3);
    let n = g
        .list_gates(by_policy("nope"))
        .await
        .unwrap()
        .into_inner()
        .gates
        .len();
    assert_eq!(n, 0);

    // Bad filters name the field.
    let e = g
        .list_gates(v1::ListGatesRequest {
            session_id: "not-a-session".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("session_id"), "{}", e.message());
    let e = g
        .list_gates(v1::ListGatesRequest {
            status: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("status"), "{}", e.message());
    server.stop().await;
}

/// The reviewers' queue order: gates with a deadline first, nearest first,
/// then the others newest first, paged without repeats or gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_lists_nearest_deadline_then_newest() {
    let fake = FakeOpenAi::start().await.unwrap();
    let mut c = config(&fake);
    c.gates.policies = vec![
        policy(POLICY, &["fake"]),
        serde_json::from_value(serde_json::json!({
            "name": "due", "kind": "final_answer", "reviewers": "support-leads",
            "routes": ["other"], "timeout_ms": 3_600_000,
        }))
        .unwrap(),
    ];
    let server = TestServer::start(c).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut g = gates(&server).await;
    // Opened in this order: open, due (sooner), open, due (later).
    let mut ids = Vec::new();
    let mut streams = Vec::new();
    for (i, route) in ["fake", "other", "fake", "other"].iter().enumerate() {
        fake.push_reply(ScriptedReply::Text(format!("draft {i}")));
        let id = start(&mut client, route).await;
        let mut stream = send(&mut client, &id, &format!("question {i}")).await;
        ids.push(until_gate(&mut stream).await);
        streams.push(stream);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let want = vec![
        ids[1].clone(),
        ids[3].clone(),
        ids[2].clone(),
        ids[0].clone(),
    ];
    let queue = |size: u32, token: String| v1::ListGatesRequest {
        status: v1::GateStatus::Pending as i32,
        page_size: size,
        page_token: token,
        order: v1::GateOrder::Queue as i32,
        ..Default::default()
    };
    for size in [1, 3, 4, 10] {
        let mut seen = Vec::new();
        let mut token = String::new();
        for _ in 0..6 {
            let page = g
                .list_gates(queue(size, token.clone()))
                .await
                .unwrap()
                .into_inner();
            seen.extend(page.gates.into_iter().map(|g| g.gate_id));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, want, "page size {size}");
    }
    // A decided gate leaves the queue; its neighbours keep their places.
    g.decide_gate(decide(&ids[3], v1::GateDecision::Approve, "alice", ""))
        .await
        .unwrap();
    let page = g
        .list_gates(queue(10, String::new()))
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<_> = page.gates.into_iter().map(|g| g.gate_id).collect();
    assert_eq!(seen, vec![ids[1].clone(), ids[2].clone(), ids[0].clone()]);
    // The queue takes no policy filter, and only its own tokens.
    let mut bad = queue(10, String::new());
    bad.policy = POLICY.into();
    let e = g.list_gates(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("queue"), "{}", e.message());
    let e = g.list_gates(queue(10, ids[0].clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("page_token"), "{}", e.message());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_answer_goes_back_to_the_model_with_the_reason() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::Text("it is probably 41".into()));
    fake.push_reply(ScriptedReply::Text("it is 42, per the manual".into()));
    let server = TestServer::start(config(&fake)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut g = gates(&server).await;
    let id = start(&mut client, "").await;
    let mut stream = send(&mut client, &id, "what is the answer").await;
    let first = until_gate(&mut stream).await;
    assert_eq!(fake.requests(), 1);
    g.decide_gate(decide(
        &first,
        v1::GateDecision::Reject,
        "alice",
        "cite the manual",
    ))
    .await
    .unwrap();

    // The model revises the draft; the revision is held again.
    let second = until_gate(&mut stream).await;
    assert_ne!(first, second);
    let received = fake.received();
    assert_eq!(received.len(), 2);
    let messages = received[1]["messages"].as_array().unwrap();
    assert!(
        messages.iter().any(|m| m["content"]
            .as_str()
            .is_some_and(|c| c.contains("cite the manual"))),
        "the rejection reason reaches the model: {messages:?}"
    );
    g.decide_gate(decide(&second, v1::GateDecision::Approve, "alice", ""))
        .await
        .unwrap();
    let rest = read_until(&mut stream, |e| e.ends_turn()).await;
    assert_eq!(kinds(&rest).last(), Some(&"turn_completed"));
    let s = get(&mut client, &id).await;
    assert_eq!(
        texts(&s).last().map(String::as_str),
        Some("it is 42, per the manual")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_answer_replaces_the_draft_and_bad_decisions_touch_nothing() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::Text("a rough draft".into()));
    let server = TestServer::start(config(&fake)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut g = gates(&server).await;
    let id = start(&mut client, "").await;
    let mut stream = send(&mut client, &id, "write me something").await;
    let gate_id = until_gate(&mut stream).await;

    let expect = |e: tonic::Status, code: tonic::Code, needle: &str| {
        assert_eq!(e.code(), code, "{e:?}");
        assert!(
            e.message().contains(needle),
            "{} should name {needle}",
            e.message()
        );
    };
    let unknown = baton::SessionId::new().to_string();
    let e = g
        .decide_gate(decide(&unknown, v1::GateDecision::Approve, "alice", ""))
        .await
        .unwrap_err();
    expect(e, tonic::Code::NotFound, &unknown);
    let e = g
        .get_gate(v1::GetGateRequest {
            gate_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    expect(e, tonic::Code::NotFound, &unknown);
    let e = g
        .decide_gate(decide("gate-7", v1::GateDecision::Approve, "alice", ""))
        .await
        .unwrap_err();
    expect(e, tonic::Code::InvalidArgument, "gate_id");
    let e = g
        .decide_gate(decide(&gate_id, v1::GateDecision::Unspecified, "alice", ""))
        .await
        .unwrap_err();
    expect(e, tonic::Code::InvalidArgument, "decision");
    let e = g
        .decide_gate(decide(&gate_id, v1::GateDecision::Edit, "alice", ""))
        .await
        .unwrap_err();
    expect(e, tonic::Code::InvalidArgument, "edited_payload");
    let still = pending(&mut g).await;
    assert_eq!(still.len(), 1, "bad decisions leave the gate pending");
    assert_eq!(still[0].gate_id, gate_id);

    let mut edit = decide(&gate_id, v1::GateDecision::Edit, "alice", "tone");
    edit.edited_payload = "a polished answer".into();
    let decided = g.decide_gate(edit).await.unwrap().into_inner();
    assert_eq!(decided.decision, v1::GateDecision::Edit as i32);
    assert_eq!(decided.edited, "a polished answer");
    let rest = read_until(&mut stream, |e| e.ends_turn()).await;
    assert_eq!(kinds(&rest).last(), Some(&"turn_completed"));
    let s = get(&mut client, &id).await;
    let last_assistant = s
        .messages
        .iter()
        .rev()
        .find(|m| m.role == v1::Role::Assistant as i32)
        .unwrap();
    assert_eq!(last_assistant.content, "a polished answer");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_gates_opened_after_they_started_filtered_by_policy() {
    let fake = FakeOpenAi::start().await.unwrap();
    let mut cfg = config(&fake);
    // Sessions on route "other" are held by a second policy.
    cfg.gates.policies = vec![
        policy(POLICY, &["fake"]),
        policy("other_answers", &["other"]),
    ];
    let server = TestServer::start(cfg).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut g = gates(&server).await;
    let mut all = g
        .watch_gates(v1::WatchGatesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut other_only = g
        .watch_gates(v1::WatchGatesRequest {
            policy: "other_answers".into(),
            reviewers: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    fake.push_reply(ScriptedReply::Text("first".into()));
    let a = start(&mut client, "fake").await;
    let mut sa = send(&mut client, &a, "one").await;
    let gate_a = until_gate(&mut sa).await;
    fake.push_reply(ScriptedReply::Text("second".into()));
    let b = start(&mut client, "other").await;
    let mut sb = send(&mut client, &b, "two").await;
    let gate_b = until_gate(&mut sb).await;

    let (w1, w2) = (next_gate(&mut all).await, next_gate(&mut all).await);
    let watched: BTreeSet<_> = [&w1, &w2]
        .iter()
        .map(|w| (w.gate_id.clone(), w.session_id.clone(), w.status))
        .collect();
    let pending = v1::GateStatus::Pending as i32;
    let expected: BTreeSet<_> = [(gate_a, a, pending), (gate_b.clone(), b, pending)].into();
    assert_eq!(watched, expected);
    let w = next_gate(&mut other_only).await;
    assert_eq!(w.gate_id, gate_b, "the policy filter skips {POLICY}'s gate");
    assert_eq!(w.policy, "other_answers");

    // Decisions are watched too.
    g.decide_gate(decide(&gate_b, v1::GateDecision::Approve, "carol", ""))
        .await
        .unwrap();
    let w = next_gate(&mut other_only).await;
    assert_eq!(w.gate_id, gate_b);
    assert_eq!(w.status, v1::GateStatus::Decided as i32);
    assert_eq!(w.reviewer, "local:carol");
    server.stop().await;
}

async fn next_gate(s: &mut tonic::Streaming<v1::Gate>) -> v1::Gate {
    tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .expect("a gate within 30 s")
        .expect("the watch goes on")
        .unwrap()
}

async fn baton(server: &BatonProcess, args: &[&str]) -> Output {
    tokio::process::Command::new(bin())
        .args(args)
        .arg("--server")
        .arg(server.url())
        .output()
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_commands_list_show_and_decide() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::Text("the draft answer".into()));
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}\n[[gates.policies]]\nname = \"answers\"\nkind = \"final_answer\"\nreviewers = \"leads\"\n",
        fake_model_toml(&fake.base_url(), false)
    );
    let config = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let mut stream = send(&mut client, &id, "a question").await;
    let gate_id = until_gate(&mut stream).await;

    let out = baton(&server, &["gates", "list", "--status", "pending"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("REVIEWERS"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.contains(&gate_id))
        .unwrap_or_else(|| panic!("{text}"));
    for cell in ["pending", "final_answer", "answers", "leads", id.as_str()] {
        assert!(row.contains(cell), "{cell} in {row}");
    }
    let out = baton(&server, &["gates", "list", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["gate_id"], gate_id.as_str());
    assert_eq!(v["subject"]["draft"], "the draft answer");
    let out = baton(&server, &["gates", "list", "--status", "open"]).await;
    assert!(!out.status.success());

    let out = baton(&server, &["gates", "show", &gate_id]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("\"draft\": \"the draft answer\""),
        "pretty subject: {text}"
    );
    assert!(text.contains("user: a question"), "context: {text}");

    let out = baton(
        &server,
        &["gates", "approve", &gate_id, "--reviewer", "alice"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains(&format!("approved gate {gate_id}")),
        "{out:?}"
    );
    let rest = read_until(&mut stream, |e| e.ends_turn()).await;
    assert_eq!(kinds(&rest).last(), Some(&"turn_completed"));

    let out = baton(
        &server,
        &[
            "gates",
            "reject",
            &gate_id,
            "--reviewer",
            "bob",
            "--reason",
            "late",
        ],
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FailedPrecondition") && err.contains("alice"),
        "{err}"
    );

    // `session send --review` holds the answer; the events print readably.
    let mut watch = GatesClient::new(
        Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .watch_gates(v1::WatchGatesRequest::default())
    .await
    .unwrap()
    .into_inner();
    fake.push_reply(ScriptedReply::Text("held on request".into()));
    let send = tokio::process::Command::new(bin())
        .args(["session", "send", &id, "--review", "again"])
        .arg("--server")
        .arg(server.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let held = next_gate(&mut watch).await;
    assert_eq!(held.kind, "explicit");
    assert_eq!(held.session_id, id);
    let out = baton(
        &server,
        &[
            "gates",
            "edit",
            &held.gate_id,
            "--reviewer",
            "alice",
            "--payload",
            "edited on review",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (v["decision"].as_str(), v["edited"].as_str()),
        (Some("edit"), Some("edited on review"))
    );
    let out = tokio::time::timeout(Duration::from_secs(30), send.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("[answer held for review]"), "{text}");
    assert!(
        text.contains(&format!("GATE OPENED {}", held.gate_id)),
        "{text}"
    );
    assert!(text.contains("decided: edit by local:alice"), "{text}");
    assert!(text.contains("turn 2 completed"), "{text}");
    server.terminate().await.unwrap();
}
