//! Gates at the runtime level, with the scripted model.

use std::time::Duration;

use baton_models::EndpointConfig;
use baton_types::{ErrorCode, EventKind, SessionEvent};
use futures::StreamExt;
use serde_json::json;

use super::*;
use crate::gates::{GateDecision, GatePolicy, GateQuery};
use baton_types::{Decision, ModelCallReason, SessionStatus, TurnFailureCode};

struct Setup {
    rt: RuntimeHandle,
    _dir: tempfile::TempDir,
}

async fn setup(
    script: serde_json::Value,
    policies: &str,
    tweak: impl FnOnce(&mut RuntimeConfig),
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("script.json");
    std::fs::write(&script_path, script.to_string()).unwrap();
    let mut cfg = RuntimeConfig::for_test(dir.path().join("data"));
    let mut model = EndpointConfig::scripted("agent", &script_path);
    model.stream = false;
    model.price_input_per_mtok = Some(10.0);
    model.price_output_per_mtok = Some(30.0);
    cfg.models = vec![model];
    cfg.sessions.default_route = "agent".into();
    cfg.tools.builtin.calculator = true;
    cfg.gates.timeout_scan_ms = 50;
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(default)]
        policies: Vec<GatePolicy>,
    }
    cfg.gates.policies = toml::from_str::<P>(policies).unwrap().policies;
    tweak(&mut cfg);
    let rt = Runtime::builder(cfg).start().await.unwrap();
    Setup { rt, _dir: dir }
}

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

fn names(events: &[SessionEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

fn gate_id(events: &[SessionEvent]) -> String {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::GateOpened { gate_id, .. } => Some(gate_id.to_string()),
            _ => None,
        })
        .expect("a gate opened")
}

fn calc(expr: &str) -> serde_json::Value {
    json!({"tool_calls": [{"id": "c1", "name": "calculator", "arguments": {"expression": expr}}]})
}

const BEFORE_CALC: &str = r#"
[[policies]]
name = "maths"
kind = "before_tool"
tools = ["calc*"]
reviewers = "finance"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_before_tool_gate_holds_the_call_until_approved_rejected_or_edited() {
    let s = setup(json!([calc("2+2"), {"text": "done"}]), BEFORE_CALC, |_| {}).await;
    let rt = &s.rt;
    for decision in ["approve", "reject", "edit"] {
        let id = rt.start_session(StartSession::default()).await.unwrap().id;
        let mut stream = rt.send(id, "add".into()).await.unwrap();
        let before = until(&mut stream, "gate_opened").await;
        assert!(
            !names(&before).contains(&"tool_call_started"),
            "held before running: {:?}",
            names(&before)
        );
        let gid = gate_id(&before);
        let view = rt.get(id).await.unwrap();
        assert_eq!(view.status, SessionStatus::NeedsAttention);
        let (gate, context) = rt.get_gate(&gid).await.unwrap();
        assert_eq!(
            (
                gate.kind.as_str(),
                gate.point.as_str(),
                gate.policy.as_str()
            ),
            ("before_tool", "tool_call", "maths")
        );
        assert_eq!(gate.reviewers, "finance");
        assert!(gate.subject.contains("2+2"), "{}", gate.subject);
        assert_eq!(context[0].content, "add");
        let d = match decision {
            "approve" => GateDecision::Approve,
            "reject" => GateDecision::Reject,
            _ => GateDecision::Edit(json!({"expression": "10*10"}).to_string()),
        };
        let decided = rt
            .decide_gate(&gid, d, "alice".into(), "checked".into())
            .await
            .unwrap();
        assert_eq!(decided.status(), GateStatus::Decided);
        assert_eq!(decided.outcome.as_ref().unwrap().reviewer, "alice");
        let rest = until(&mut stream, "turn_completed").await;
        assert_eq!(
            rest.last().unwrap().kind.name(),
            "turn_completed",
            "{:?}",
            names(&rest)
        );
        let result = rest
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::ToolResult {
                    output, is_error, ..
                } => Some((output.clone(), *is_error)),
                _ => None,
            })
            .unwrap();
        match decision {
            "approve" => assert_eq!(result, ("4".to_string(), false)),
            "reject" => assert!(
                result.1 && result.0.contains("alice") && result.0.contains("checked"),
                "{result:?}"
            ),
            _ => assert_eq!(result, ("100".to_string(), false)),
        }
    }
    let pending = rt
        .list_gates(GateQuery {
            status: Some(GateStatus::Pending),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(pending.gates.is_empty());
    let decided = rt
        .list_gates(GateQuery {
            status: Some(GateStatus::Decided),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(decided.gates.len(), 3);
    rt.shutdown().await;
}

const FINAL: &str = r#"
[[policies]]
name = "replies"
kind = "final_answer"
reviewers = "ops"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_answer_gate_approves_edits_or_sends_the_draft_back() {
    let s = setup(
        json!([{"text": "draft one"}, {"text": "draft two"}]),
        FINAL,
        |_| {},
    )
    .await;
    let rt = &s.rt;
    // approve
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let mut st = rt.send(id, "reply please".into()).await.unwrap();
    let ev = until(&mut st, "gate_opened").await;
    assert!(!names(&ev).contains(&"turn_completed"));
    rt.decide_gate(
        &gate_id(&ev),
        GateDecision::Approve,
        "bob".into(),
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        until(&mut st, "turn_completed")
            .await
            .last()
            .unwrap()
            .kind
            .name(),
        "turn_completed"
    );
    assert_eq!(
        rt.get(id).await.unwrap().messages.last().unwrap().content,
        "draft one"
    );
    // edit
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let mut st = rt.send(id, "reply please".into()).await.unwrap();
    let ev = until(&mut st, "gate_opened").await;
    rt.decide_gate(
        &gate_id(&ev),
        GateDecision::Edit("a better reply".into()),
        "bob".into(),
        "tone".into(),
    )
    .await
    .unwrap();
    until(&mut st, "turn_completed").await;
    assert_eq!(
        rt.get(id).await.unwrap().messages.last().unwrap().content,
        "a better reply"
    );
    // reject: the model revises, and its second draft is gated again
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let mut st = rt.send(id, "reply please".into()).await.unwrap();
    let ev = until(&mut st, "gate_opened").await;
    rt.decide_gate(
        &gate_id(&ev),
        GateDecision::Reject,
        "bob".into(),
        "too curt".into(),
    )
    .await
    .unwrap();
    let ev2 = until(&mut st, "gate_opened").await;
    assert!(ev2.iter().any(
        |e| matches!(&e.kind, EventKind::ModelCallStarted { reason, .. } if *reason == ModelCallReason::Review)
    ));
    let view = rt.get(id).await.unwrap();
    assert!(
        view.messages.iter().any(|m| m.content.contains("too curt")),
        "the model received the reason"
    );
    rt.decide_gate(
        &gate_id(&ev2),
        GateDecision::Approve,
        "bob".into(),
        String::new(),
    )
    .await
    .unwrap();
    until(&mut st, "turn_completed").await;
    assert_eq!(
        rt.get(id).await.unwrap().messages.last().unwrap().content,
        "draft two"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_confidence_data_rule_and_explicit_gates_fire_where_configured() {
    let policies = r#"
        [[policies]]
        name = "budget"
        kind = "cost"
        reviewers = "ops"
        max_cost_usd = 0.05
        [[policies]]
        name = "pii"
        kind = "data_rule"
        reviewers = "ops"
        pattern = "(?i)iban"
        applies_to = "input"
        [[policies]]
        name = "unsure"
        kind = "confidence"
        reviewers = "ops"
        min_confidence = 0.7
    "#;
    let script = json!([{"text": "maybe", "confidence": 0.3}]);
    let s = setup(script, policies, |c| {
        c.models[0].max_output_tokens = Some(100);
    })
    .await;
    let rt = &s.rt;
    // data rule on input: edited, the model sees the edit
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let mut st = rt.send(id, "my IBAN is DE00 1234".into()).await.unwrap();
    let ev = until(&mut st, "gate_opened").await;
    assert!(
        !names(&ev).contains(&"model_call_started"),
        "held before the model call"
    );
    let (g, _) = rt.get_gate(&gate_id(&ev)).await.unwrap();
    assert_eq!(
        (g.kind.as_str(), g.point.as_str()),
        ("data_rule", "model_call")
    );
    rt.decide_gate(
        &gate_id(&ev),
        GateDecision::Edit("my IBAN is [redacted]".into()),
        "dpo".into(),
        String::new(),
    )
    .await
    .unwrap();
    // confidence 0.3 < 0.7 holds the answer
    let ev = until(&mut st, "gate_opened").await;
    let (g, _) = rt.get_gate(&gate_id(&ev)).await.unwrap();
    assert_eq!(g.kind, baton_types::GateKind::Confidence);
    assert!(g.reason.contains("0.30"), "{}", g.reason);
    rt.decide_gate(
        &gate_id(&ev),
        GateDecision::Approve,
        "dpo".into(),
        String::new(),
    )
    .await
    .unwrap();
    until(&mut st, "turn_completed").await;
    let view = rt.get(id).await.unwrap();
    assert_eq!(view.messages[0].content, "my IBAN is [redacted]");

    // cost: a long input estimated above $0.05 is held, and rejecting fails the turn
    let id = rt.start_session(StartSession::default()).await.unwrap().id;
    let mut st = rt.send(id, "word ".repeat(30_000)).await.unwrap();
    let ev = until(&mut st, "gate_opened").await;
    let (g, _) = rt.get_gate(&gate_id(&ev)).await.unwrap();
    assert_eq!(g.kind, baton_types::GateKind::Cost);
    assert!(g.subject.contains("estimated_cost_usd"));
    let err = rt
        .decide_gate(
            &gate_id(&ev),
            GateDecision::Edit("x".into()),
            "cfo".into(),
            String::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    rt.decide_gate(
        &gate_id(&ev),
        GateDecision::Reject,
        "cfo".into(),
        "too expensive".into(),
    )
    .await
    .unwrap();
    let end = until(&mut st, "turn_failed").await;
    match &end.last().unwrap().kind {
        EventKind::TurnFailed { code, reason, .. } => {
            assert_eq!(*code, TurnFailureCode::GateRejected);
            assert!(reason.contains("too expensive"));
        }
        other => panic!("{other:?}"),
    }
    rt.shutdown().await;

    // explicit: the client asks for review of one turn
    let s = setup(json!([{"text": "ok"}, {"text": "ok again"}]), "", |_| {}).await;
    let id =
        s.rt.start_session(StartSession::default())
            .await
            .unwrap()
            .id;
    let mut st =
        s.rt.send_with(id, "check this one".into(), true)
            .await
            .unwrap();
    let ev = until(&mut st, "gate_opened").await;
    let (g, _) = s.rt.get_gate(&gate_id(&ev)).await.unwrap();
    assert_eq!(
        (g.kind.as_str(), g.policy.as_str()),
        ("explicit", "explicit")
    );
    s.rt.decide_gate(
        &gate_id(&ev),
        GateDecision::Approve,
        "me".into(),
        String::new(),
    )
    .await
    .unwrap();
    until(&mut st, "turn_completed").await;
    let st = s.rt.send(id, "no review".into()).await.unwrap();
    let ev: Vec<_> = st.collect().await;
    assert!(
        !ev.iter()
            .any(|e| e.as_ref().unwrap().kind.name() == "gate_opened")
    );
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_decisions_have_exactly_one_winner() {
    let s = setup(json!([{"text": "draft"}]), FINAL, |_| {}).await;
    let id =
        s.rt.start_session(StartSession::default())
            .await
            .unwrap()
            .id;
    let mut st = s.rt.send(id, "go".into()).await.unwrap();
    let gid = gate_id(&until(&mut st, "gate_opened").await);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let rt = s.rt.clone();
        let gid = gid.clone();
        tasks.push(tokio::spawn(async move {
            let d = if i % 2 == 0 {
                GateDecision::Approve
            } else {
                GateDecision::Reject
            };
            rt.decide_gate(&gid, d, format!("reviewer-{i}"), format!("reason-{i}"))
                .await
        }));
    }
    let mut wins = Vec::new();
    let mut losses = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(g) => wins.push(g),
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::FailedPrecondition, "{e}");
                assert!(e.to_string().contains("already decided"), "{e}");
                losses.push(e.to_string());
            }
        }
    }
    assert_eq!(wins.len(), 1, "exactly one decision wins");
    let first = wins[0].outcome.as_ref().unwrap();
    let (winner, why) = (&first.reviewer, &first.reason);
    for e in &losses {
        assert!(
            e.contains(winner.as_str()) && e.contains(why.as_str()),
            "a losing decision names the first, with its reason: {e}"
        );
    }
    let err =
        s.rt.decide_gate(&gid, GateDecision::Approve, "late".into(), String::new())
            .await
            .unwrap_err();
    assert!(
        err.to_string().contains(winner.as_str()) && err.to_string().contains(why.as_str()),
        "names the first decision and its reason: {err}"
    );
    let decided: Vec<_> =
        s.rt.resume(id, 0)
            .await
            .unwrap()
            .take_while(|e| futures::future::ready(e.as_ref().is_ok_and(|e| !e.ends_turn())))
            .collect()
            .await;
    let n = decided
        .iter()
        .filter(|e| e.as_ref().unwrap().kind.name() == "gate_decided")
        .count();
    assert_eq!(n, 1, "one GateDecided in the journal");
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_apply_the_default_action_and_escalate() {
    let policies = r#"
        [[policies]]
        name = "auto"
        kind = "final_answer"
        reviewers = "ops"
        routes = ["agent"]
        timeout_ms = 150
        on_timeout = "approve"
    "#;
    let s = setup(json!([{"text": "fine"}]), policies, |_| {}).await;
    let id =
        s.rt.start_session(StartSession::default())
            .await
            .unwrap()
            .id;
    let mut st = s.rt.send(id, "go".into()).await.unwrap();
    let gid = gate_id(&until(&mut st, "gate_opened").await);
    let rest = until(&mut st, "turn_completed").await;
    assert_eq!(rest.last().unwrap().kind.name(), "turn_completed");
    let (g, _) = s.rt.get_gate(&gid).await.unwrap();
    let o = g.outcome.unwrap();
    assert_eq!(
        (o.decision, o.reviewer.as_str(), o.by_timeout),
        (Decision::Approve, "timeout", true)
    );
    s.rt.shutdown().await;

    let policies = r#"
        [[policies]]
        name = "tiered"
        kind = "final_answer"
        reviewers = "agents"
        timeout_ms = 150
        on_timeout = "escalate"
        escalate_to = "supervisors"
        escalate_timeout_ms = 150
    "#;
    let s = setup(
        json!([{"text": "first"}, {"text": "second"}]),
        policies,
        |_| {},
    )
    .await;
    let id =
        s.rt.start_session(StartSession::default())
            .await
            .unwrap()
            .id;
    let mut st = s.rt.send(id, "go".into()).await.unwrap();
    let gid = gate_id(&until(&mut st, "gate_opened").await);
    let esc = until(&mut st, "gate_escalated").await;
    match &esc.last().unwrap().kind {
        EventKind::GateEscalated {
            reviewers,
            on_timeout,
            ..
        } => {
            assert_eq!(
                (reviewers.as_str(), on_timeout.as_str()),
                ("supervisors", "reject")
            );
        }
        other => panic!("{other:?}"),
    }
    let pending =
        s.rt.list_gates(GateQuery {
            status: Some(GateStatus::Pending),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.gates[0].reviewers, "supervisors");
    assert_eq!(pending.gates[0].escalations, 1);
    // No decision from the supervisors either: rejected, the model revises.
    let after = until(&mut st, "gate_opened").await;
    assert!(names(&after).contains(&"gate_decided"));
    let (g, _) = s.rt.get_gate(&gid).await.unwrap();
    let o = g.outcome.unwrap();
    assert_eq!((o.decision, o.by_timeout), (Decision::Reject, true));
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_waiting_on_gates_passivate_and_wake_for_the_decision() {
    let s = setup(json!([{"text": "draft"}]), FINAL, |c| {
        c.sessions.passivate_after_ms = 100
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id =
            s.rt.start_session(StartSession::default())
                .await
                .unwrap()
                .id;
        let mut st = s.rt.send(id, "go".into()).await.unwrap();
        until(&mut st, "gate_opened").await;
        ids.push(id);
    }
    for _ in 0..300 {
        if s.rt.stats().await.unwrap().live_sessions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        s.rt.stats().await.unwrap().live_sessions,
        0,
        "waiting sessions hold no actor"
    );
    let pending =
        s.rt.list_gates(GateQuery {
            status: Some(GateStatus::Pending),
            page_size: 7,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.gates.len(), 7);
    assert!(pending.next_page_token.is_some());
    assert_eq!(
        s.rt.stats().await.unwrap().live_sessions,
        0,
        "listing wakes nobody"
    );
    let g = &pending.gates[0];
    s.rt.decide_gate(
        &g.gate_id.to_string(),
        GateDecision::Approve,
        "ops".into(),
        String::new(),
    )
    .await
    .unwrap();
    for _ in 0..300 {
        if s.rt.get(g.session).await.unwrap().turns_completed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.rt.get(g.session).await.unwrap().turns_completed, 1);
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pending_gates_list_in_pages_while_their_sessions_sleep() {
    const N: usize = 10_000;
    let s = setup(json!([{"text": "draft"}]), FINAL, |c| {
        c.store.durability = Durability::Buffered;
        c.sessions.passivate_after_ms = 200;
    })
    .await;
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..64 {
        let rt = s.rt.clone();
        let next = next.clone();
        tasks.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < N {
                let id = rt.start_session(StartSession::default()).await.unwrap().id;
                let mut st = rt.send(id, "go".into()).await.unwrap();
                until(&mut st, "gate_opened").await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    eprintln!("opened {N} gates in {:?}", started.elapsed());
    // Every session waits on disk, not in memory.
    for _ in 0..600 {
        if s.rt.stats().await.unwrap().live_sessions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.rt.stats().await.unwrap().live_sessions, 0);
    let listed = std::time::Instant::now();
    let mut seen = std::collections::HashSet::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page =
            s.rt.list_gates(GateQuery {
                status: Some(GateStatus::Pending),
                policy: Some("replies".into()),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.gates.len() <= 1000);
        for g in &page.gates {
            assert_eq!(g.status(), GateStatus::Pending);
            assert!(seen.insert(g.gate_id), "no gate twice");
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    eprintln!(
        "listed {} gates in {pages} pages in {:?}",
        seen.len(),
        listed.elapsed()
    );
    assert_eq!(seen.len(), N);
    assert_eq!(
        s.rt.stats().await.unwrap().live_sessions,
        0,
        "listing wakes no session"
    );
    // Deciding one wakes only its session.
    let first =
        s.rt.list_gates(GateQuery {
            status: Some(GateStatus::Pending),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let g = &first.gates[0];
    s.rt.decide_gate(
        &g.gate_id.to_string(),
        GateDecision::Approve,
        "ops".into(),
        String::new(),
    )
    .await
    .unwrap();
    assert!(s.rt.stats().await.unwrap().live_sessions <= 1);
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_session_turn_is_a_gate_and_never_calls_the_model() {
    // The script would answer "never"; a hold turn must not ask it.
    let s = setup(json!([{"text": "never"}]), "", |_| {}).await;
    let rt = &s.rt;
    let hold = |n: u32| StartSession {
        idempotency_key: Some(format!("hold-{n}")),
        one_shot: true,
        hold: Some(crate::HoldTerms {
            policy: format!("flow:test:{n}"),
            reason: "a decision is needed".into(),
            reviewers: "finance".into(),
            timeout_ms: 0,
            on_timeout: baton_types::TimeoutAction::Reject,
        }),
        ..Default::default()
    };
    for (n, decision) in [(1, "approve"), (2, "reject"), (3, "edit")] {
        let id = rt.start_session(hold(n)).await.unwrap().id;
        let mut stream = rt.send(id, "{\"amount\": 5}".into()).await.unwrap();
        let before = until(&mut stream, "gate_opened").await;
        assert_eq!(names(&before), vec!["turn_accepted", "gate_opened"]);
        let gid = gate_id(&before);
        let (gate, _) = rt.get_gate(&gid).await.unwrap();
        assert_eq!(
            (
                gate.kind.as_str(),
                gate.point.as_str(),
                gate.policy.as_str()
            ),
            ("flow", "model_call", format!("flow:test:{n}").as_str())
        );
        assert_eq!(gate.subject, "{\"amount\": 5}");
        let d = match decision {
            "approve" => GateDecision::Approve,
            "reject" => GateDecision::Reject,
            _ => GateDecision::Edit("{\"amount\": 4}".into()),
        };
        rt.decide_gate(&gid, d, "alice".into(), "checked".into())
            .await
            .unwrap();
        let rest = until(&mut stream, "turn_completed").await;
        let end = rest.last().unwrap();
        match decision {
            "reject" => assert!(matches!(
                end.kind,
                EventKind::TurnFailed {
                    code: TurnFailureCode::GateRejected,
                    ..
                }
            )),
            _ => assert_eq!(end.kind.name(), "turn_completed"),
        }
        assert!(
            !names(&rest).contains(&"model_call_started"),
            "{:?}",
            names(&rest)
        );
    }
    // Clients cannot mark a session as a hold session themselves.
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert(crate::HOLD_METADATA_KEY.to_string(), "{}".to_string());
    let err = rt
        .start_session(StartSession {
            metadata,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("reserved"), "{err}");
}
