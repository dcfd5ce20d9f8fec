//! Routing through the real binary: a fallback chain whose primary is down,
//! every decision journaled, a SIGKILL while the fallback answers, session
//! budgets, and route spend that survives a restart.

use std::time::Duration;

use baton::proto::v1;
use baton::types::EventKind;
use baton_testkit::fake_openai::Behavior;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};

use crate::common::*;

fn endpoints_toml(primary: &str, backup: &str) -> String {
    format!(
        r#"[sessions]
default_route = "chain"

[[models]]
name = "primary"
provider = "openai"
base_url = {primary:?}
model = "primary-model"
stream = false
max_output_tokens = 16
price_input_per_mtok = 1000.0
price_output_per_mtok = 1000.0
[models.retry]
max_attempts = 2
initial_backoff_ms = 5
max_backoff_ms = 20
[models.breaker]
consecutive_failures = 2
open_ms = 60000

[[models]]
name = "backup"
provider = "openai"
base_url = {backup:?}
model = "backup-model"
stream = false
max_output_tokens = 16
timeout_ms = 120000
price_input_per_mtok = 1000.0
price_output_per_mtok = 1000.0

[[routes]]
name = "chain"
strategy = "fallback"
endpoints = ["primary", "backup"]
budget_usd = 1.0
"#
    )
}

fn decisions(events: &[baton::types::SessionEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::RoutingDecided { decision, .. } => {
                Some((decision.chosen.clone(), decision.rule.clone()))
            }
            _ => None,
        })
        .collect()
}

async fn journal(client: &mut Client, id: &str) -> Vec<baton::types::SessionEvent> {
    let last = get(client, id).await.last_seq;
    let mut s = client
        .resume_session(v1::ResumeSessionRequest {
            session_id: id.into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    read_until(&mut s, |e| e.seq >= last).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_survives_sigkill_and_every_decision_is_journaled_once() {
    let primary = FakeOpenAi::start().await.unwrap();
    let backup = FakeOpenAi::start().await.unwrap();
    primary.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &endpoints_toml(&primary.base_url(), &backup.base_url()),
    )
    .unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;

    // Turn 1: the primary is down; two attempts on it, then the backup answers.
    let t1 = turn(&mut client, &id, "first").await;
    assert_eq!(t1.last().unwrap().kind.name(), "turn_completed", "{t1:?}");
    let d = decisions(&t1);
    assert_eq!(d.first().map(|x| x.0.as_str()), Some("primary"), "{d:?}");
    assert!(
        d.iter().any(|(e, r)| e == "backup" && r == "failover"),
        "{d:?}"
    );
    let answer = t1
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::AssistantMessage {
                endpoint,
                model,
                cost_usd,
                attempts,
                ..
            } => Some((endpoint.clone(), model.clone(), *cost_usd, *attempts)),
            _ => None,
        })
        .unwrap();
    assert_eq!(answer.0, "backup");
    assert_eq!(answer.1, "backup-model");
    assert!(answer.2.unwrap() > 0.0, "{answer:?}");
    assert_eq!(
        answer.3, 3,
        "two failed attempts on the primary, one on the backup"
    );
    let failed: Vec<_> = t1
        .iter()
        .filter(|e| matches!(e.kind, EventKind::AttemptFailed { .. }))
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(primary.requests(), 2);
    assert_eq!(backup.requests(), 1);

    // Turn 2: the primary's breaker is open, so it goes straight to the
    // backup, which hangs; SIGKILL while it does.
    backup.set_behavior(Behavior {
        delay: Duration::from_secs(600),
        ..Behavior::default()
    });
    let mut s2 = send(&mut client, &id, "second").await;
    let seen = read_until(&mut s2, |e| e.kind.name() == "model_call_started").await;
    for _ in 0..500 {
        if backup.requests() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(backup.requests(), 2, "turn 2's call must be in flight");
    assert_eq!(
        primary.requests(),
        2,
        "the open breaker kept traffic off the primary"
    );
    let last_seen = seen.last().unwrap().seq;
    server.kill9().await.unwrap();

    // The primary is back; after the restart breakers start closed, so the
    // re-issued call goes to the primary and answers from there.
    primary.set_down(false);
    backup.set_behavior(Behavior::default());
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut r = resume(&mut client, &id, last_seen).await;
    let rest = read_until(&mut r, |e| e.ends_turn()).await;
    assert_eq!(
        rest.last().unwrap().kind.name(),
        "turn_completed",
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|e| matches!(&e.kind,
            EventKind::ModelCallStarted { reason, .. } if reason.as_str() == "recovery")),
        "{rest:?}"
    );

    // The whole journal: gap-free, each turn answered exactly once, and each
    // answer preceded by the decision that chose its endpoint.
    let all = journal(&mut client, &id).await;
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let answers: Vec<(u64, String)> = all
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AssistantMessage { turn, endpoint, .. } => Some((*turn, endpoint.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        vec![(1, "backup".to_string()), (2, "primary".to_string())]
    );
    let s = get(&mut client, &id).await;
    assert_eq!(s.turns_completed, 2);
    assert_eq!(
        texts(&s),
        vec!["first", "echo: first", "second", "echo: second"]
    );
    server.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_refuse_calls_and_route_spend_survives_a_restart() {
    let primary = FakeOpenAi::start().await.unwrap();
    let backup = FakeOpenAi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &endpoints_toml(&primary.base_url(), &backup.base_url()),
    )
    .unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();

    // A session whose budget is below one call's worst-case estimate.
    let poor = client
        .start_session(v1::StartSessionRequest {
            budget_usd: Some(0.0001),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let t = turn(&mut client, &poor, "hello").await;
    match &t.last().unwrap().kind {
        EventKind::TurnFailed { code, reason, .. } => {
            assert_eq!(code.as_str(), "budget_exhausted", "{reason}");
            assert!(reason.contains("session"), "{reason}");
        }
        other => panic!("expected a budget failure, got {other:?}"),
    }
    assert_eq!(
        primary.requests() + backup.requests(),
        0,
        "no model was called"
    );

    // Bad budgets are refused up front.
    let err = client
        .start_session(v1::StartSessionRequest {
            budget_usd: Some(-1.0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("budget_usd"), "{}", err.message());

    // Spend on the route ($1 budget at $1000/Mtok) until it is refused.
    let id = start(&mut client, "").await;
    let mut completed = 0;
    let mut refused = None;
    for i in 0..200 {
        let t = turn(&mut client, &id, &format!("question number {i}")).await;
        match &t.last().unwrap().kind {
            EventKind::TurnCompleted { .. } => completed += 1,
            EventKind::TurnFailed { code, reason, .. } => {
                assert_eq!(code.as_str(), "budget_exhausted", "{reason}");
                refused = Some(reason.clone());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let refused = refused.expect("the route budget ran out");
    assert!(refused.contains("route chain"), "{refused}");
    assert!(completed > 0);
    let calls = primary.requests();
    server.kill9().await.unwrap();

    // After a crash and restart the route's spend is still there: refused
    // again, without a model call.
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let t = turn(&mut client, &id, "one more").await;
    assert!(
        matches!(&t.last().unwrap().kind, EventKind::TurnFailed { code, .. } if code.as_str() == "budget_exhausted"),
        "{t:?}"
    );
    assert_eq!(primary.requests(), calls, "no call past the budget");
    server.terminate().await.unwrap();
}
