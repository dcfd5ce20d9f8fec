//! Snapshots across a crash: a session loaded after SIGKILL starts from its
//! stored snapshot and applies only the journal records after it, and the
//! state it arrives at is exactly the fold of its whole journal.

use baton::proto::v1::{self, inspect_client::InspectClient};
use baton_testkit::{BatonProcess, process::write_config};
use tonic::transport::Channel;

use crate::common::*;

async fn state(ins: &mut InspectClient<Channel>, id: &str) -> v1::SessionStateView {
    ins.get_session_state(v1::GetSessionStateRequest {
        session_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

fn json(v: &v1::SessionStateView) -> serde_json::Value {
    serde_json::from_str(&v.state_json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_loaded_after_sigkill_applies_only_the_records_after_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // The echo model; a snapshot whenever 8 records were written since the last.
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        "[sessions]\nsnapshot_every = 8\n",
    )
    .unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    for i in 0..7 {
        let t = turn(&mut client, &id, &format!("question {i}")).await;
        assert_eq!(t.last().unwrap().kind.name(), "turn_completed");
    }
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let before = state(&mut InspectClient::new(channel), &id).await;
    assert!(before.live);
    server.kill9().await.unwrap();

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ins = InspectClient::new(channel);
    // Read from disk without loading the session: the full fold.
    let disk = state(&mut ins, &id).await;
    assert!(!disk.live);
    assert_eq!(disk.at_seq, before.at_seq, "nothing lost or added");
    let snapshot = disk.snapshot_seq.expect("a snapshot was stored");
    assert!(
        snapshot > 0 && snapshot < disk.at_seq,
        "the snapshot ({snapshot}) is before the last record ({})",
        disk.at_seq
    );
    let replayed = "baton_session_records_replayed_total";
    let from_snapshot = "baton_session_rehydrations_total{from=\"snapshot\"}";
    let from_journal = "baton_session_rehydrations_total{from=\"journal\"}";
    let (r0, s0, j0) = (
        metric(&server, replayed).await,
        metric(&server, from_snapshot).await,
        metric(&server, from_journal).await,
    );

    // Loading the session: from the snapshot, plus the records after it.
    let mut client = server.client().await.unwrap();
    let s = get(&mut client, &id).await;
    assert_eq!(s.messages.len(), 14, "7 questions and 7 answers");
    assert_eq!(metric(&server, from_snapshot).await - s0, 1.0);
    assert_eq!(metric(&server, from_journal).await - j0, 0.0);
    assert_eq!(
        metric(&server, replayed).await - r0,
        (disk.at_seq - snapshot) as f64,
        "only the records after the snapshot are applied"
    );
    let live = state(&mut ins, &id).await;
    assert!(live.live);
    assert_eq!(json(&live), json(&disk), "snapshot + tail = the whole fold");
    assert_eq!(
        json(&live),
        json(&before),
        "the state from before the crash"
    );

    // And the session goes on.
    let t = turn(&mut client, &id, "one more").await;
    assert_eq!(t.last().unwrap().kind.name(), "turn_completed");
    assert_eq!(get(&mut client, &id).await.messages.len(), 16);
}
