//! Tenants' budgets where nodes own sessions one by one (`[cluster]
//! ownership = "sessions"`, docs/scaling.md): each node publishes its part
//! of every tenant's spend every heartbeat and reads the others', so a
//! budget spent through one node holds on the others. The real binary
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

[[models]]
name = "echo"
provider = "echo"
price_input_per_mtok = 1000000.0

[[tenants]]
name = "spender"
daily_budget_usd = 5.0
"#;

async fn start(
    node: &baton_testkit::BatonProcess,
    key: &str,
) -> Result<String, tonic::Status> {
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
/// The spend survives n0's SIGKILL: n1 still refuses after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_budget_spent_through_one_node_holds_on_the_others() {
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
    let mut early = None;
    for _ in 0..100 {
        match start(&n1, &key).await {
            Ok(id) => {
                early = Some(id);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    early.expect("n1 knows the key");
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
    // The parts are in the database: after n0's SIGKILL, n1 still refuses.
    n0.kill9().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let e = start(&n1, &key).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    n1.terminate().await.unwrap();
}
