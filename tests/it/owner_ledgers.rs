//! Tenants' budgets and token rates where nodes own sessions one by one
//! (`[cluster] ownership = "sessions"`, docs/scaling.md): each node
//! publishes its part of every tenant's spend and its last minute's token
//! use every heartbeat and reads the others', so a budget or rate used up
//! through one node holds on the others. The real binary
//! twice on loopback, a private PostgreSQL server, API keys in the
//! database.

use std::time::Duration;

use baton::proto::v1;
use tonic::Code;

use crate::access::{create_key_for, offline_key, with_key};
use crate::cluster::skip;
use crate::common::*;
use crate::owners::{owner_of, owning_cluster};

const TOML: &str = r#"
[auth]
enabled = true

[sessions]
default_route = "echo"

[[models]]
name = "echo"
provider = "echo"
price_input_per_mtok = 1000000.0

[[tenants]]
name = "spender"
daily_budget_usd = 5.0

[[tenants]]
name = "chatty"
tokens_per_minute = 1

[[tenants]]
name = "wide"

[[routes]]
name = "capped"
strategy = "fallback"
endpoints = ["echo"]
budget_usd = 5.0
"#;

/// A session started through `node` as `key` with `req`, once the node
/// knows the key (a key made through another node is read within a
/// heartbeat).
async fn start_when_known(
    node: &baton_testkit::BatonProcess,
    key: &str,
    req: v1::StartSessionRequest,
) -> String {
    for _ in 0..100 {
        match node
            .client()
            .await
            .unwrap()
            .start_session(with_key(key, req.clone()))
            .await
        {
            Ok(r) => return r.into_inner().session_id,
            Err(e) if e.code() == Code::Unauthenticated => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    panic!("the node never knew the key");
}

/// One turn of session `id` through `node` as `key`: its events.
async fn turn_as(
    node: &baton_testkit::BatonProcess,
    key: &str,
    id: &str,
    text: &str,
) -> Vec<baton::types::SessionEvent> {
    let mut s = node
        .client()
        .await
        .unwrap()
        .send_message(with_key(
            key,
            v1::SendMessageRequest {
                session_id: id.into(),
                content: text.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    read_until(&mut s, |e| e.ends_turn()).await
}

/// Whether a turn's events end in a refusal by a budget.
fn refused_by_budget(events: &[baton::types::SessionEvent]) -> Option<String> {
    match &events.last()?.kind {
        baton::types::EventKind::TurnFailed { code, reason, .. }
            if code.as_str() == "budget_exhausted" =>
        {
            Some(reason.clone())
        }
        _ => None,
    }
}

async fn start(node: &baton_testkit::BatonProcess, key: &str) -> Result<String, tonic::Status> {
    node.client()
        .await
        .unwrap()
        .start_session(with_key(key, v1::StartSessionRequest::default()))
        .await
        .map(|r| r.into_inner().session_id)
}

/// A tenant spends its daily budget through sessions n0 owns; n1, which
/// never loaded them, refuses the tenant's next session within a
/// heartbeat or two (with the exchange of spend disabled, it started it).
/// The same for a tenant's tokens per minute, and for a route's budget.
/// The spend survives n0's SIGKILL: n1 still refuses after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_budget_and_rate_used_through_one_node_hold_on_the_others() {
    if skip() {
        return;
    }
    let cluster = owning_cluster(TOML);
    let config = cluster.config("n0", 2_000);
    let (_, admin) = offline_key(&config, "default", &["admin"]);
    let n0 = cluster.start("n0", 2_000).await;
    let n1 = cluster.start("n1", 2_000).await;
    let key = create_key_for(&n0, &admin, "spender", &["client"]).await;
    // n1 reads the new key within a heartbeat.
    start_when_known(&n1, &key, v1::StartSessionRequest::default()).await;
    let id = start(&n0, &key).await.unwrap();
    // Each turn costs a dollar per input token: a few turns spend it all,
    // on n0.
    let mut c = n0.client().await.unwrap();
    let mut refused = None;
    for n in 1..=10 {
        match c
            .send_message(with_key(
                &key,
                v1::SendMessageRequest {
                    session_id: id.clone(),
                    content: format!("turn {n}"),
                    ..Default::default()
                },
            ))
            .await
        {
            Ok(s) => {
                let mut s = s.into_inner();
                read_until(&mut s, |e| e.ends_turn()).await;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("n0 refuses once the budget is spent");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(owner_of(&cluster, &id), "n0", "spent on n0");
    // n1 learns the spend from n0's part within a couple of heartbeats.
    let mut last = None;
    for _ in 0..50 {
        match start(&n1, &key).await {
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("daily_budget_usd"), "{}", e.message());
                last = None;
                break;
            }
            other => last = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_none(), "n1 still starts sessions: {last:?}");
    // Tokens per minute: one turn on n0 uses the tenant's minute; n1
    // refuses its next session within a couple of heartbeats.
    let chatty = create_key_for(&n0, &admin, "chatty", &["client"]).await;
    let cid = start_when_known(&n0, &chatty, v1::StartSessionRequest::default()).await;
    let mut s = c
        .send_message(with_key(
            &chatty,
            v1::SendMessageRequest {
                session_id: cid,
                content: "a few tokens".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    read_until(&mut s, |e| e.ends_turn()).await;
    let mut last = None;
    for _ in 0..50 {
        match start(&n1, &chatty).await {
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("tokens_per_minute"), "{}", e.message());
                last = None;
                break;
            }
            other => last = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.is_none(),
        "n1 still starts chatty's sessions: {last:?}"
    );
    // A route's budget: spent through n0, it holds on n1 within a couple
    // of heartbeats (each node writes its own part of the route's spend).
    let wide = create_key_for(&n0, &admin, "wide", &["client"]).await;
    let route = v1::StartSessionRequest {
        route: "capped".into(),
        ..Default::default()
    };
    let on_n0 = start_when_known(&n0, &wide, route.clone()).await;
    let mut spent = None;
    for _ in 1..=10 {
        // One token in, one out, a dollar a turn (plus the history).
        let t = turn_as(&n0, &wide, &on_n0, "x").await;
        if let Some(reason) = refused_by_budget(&t) {
            spent = Some(reason);
            break;
        }
    }
    let reason = spent.expect("the route's budget runs out on n0");
    assert!(reason.contains("route capped"), "{reason}");
    let on_n1 = start_when_known(&n1, &wide, route.clone()).await;
    // A few heartbeats on, n1's ledger counts n0's spend: its refusal of
    // a turn whose estimate is over the limit anyway names the spend (on
    // its own, n1 would say "spent $0").
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let first = turn_as(&n1, &wide, &on_n1, "n1's first turn").await;
    let reason =
        refused_by_budget(&first).unwrap_or_else(|| panic!("n1 still calls the route: {first:?}"));
    assert!(reason.contains("route capped"), "{reason}");
    let spent: f64 = reason
        .split("spent $")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{reason}"));
    assert!(spent > 0.0, "n0's spend counts on n1: {reason}");
    assert_eq!(owner_of(&cluster, &on_n1), "n1");
    // The parts are in the database: after n0's SIGKILL, n1 still refuses.
    n0.kill9().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let e = start(&n1, &key).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    n1.terminate().await.unwrap();
}
