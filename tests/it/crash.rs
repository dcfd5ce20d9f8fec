//! Crash tests: the real binary is SIGKILLed mid-turn and restarted on the
//! same data dir. Nothing may be lost, duplicated or re-run.

use std::time::Duration;

use baton::proto::v1;
use baton::types::EventKind;
use baton_testkit::fake_openai::Behavior;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_slow_model_call_loses_and_duplicates_nothing() {
    let fake = FakeOpenAi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &fake_model_toml(&fake.base_url(), true),
    )
    .unwrap();

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let bystander = start(&mut client, "").await;

    // Turn 1 completes normally.
    let t1 = turn(&mut client, &id, "first question").await;
    assert_eq!(t1.last().unwrap().kind.name(), "turn_completed");
    assert_eq!(fake.requests(), 1);

    // Turn 2 hangs at the model; turn 3 is queued behind it.
    fake.set_behavior(Behavior {
        delay: Duration::from_secs(600),
        ..Behavior::default()
    });
    let mut s2 = send(&mut client, &id, "second question").await;
    let seen2 = read_until(&mut s2, |e| e.kind.name() == "model_call_started").await;
    let mut s3 = send(&mut client, &id, "third question").await;
    let seen3 = read_until(&mut s3, |e| e.kind.name() == "turn_accepted").await;
    for _ in 0..500 {
        if fake.requests() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fake.requests(),
        2,
        "turn 2's model call must be in flight at the crash"
    );
    let last_seen = seen2.iter().chain(&seen3).map(|e| e.seq).max().unwrap();

    server.kill9().await.unwrap();
    fake.set_behavior(Behavior::default());

    // Restart on the same data dir: turn 2's call is re-issued, turn 3 follows.
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut resumed = resume(&mut client, &id, last_seen).await;
    let mut completed = 0;
    let rest = read_until(&mut resumed, |e| {
        if e.kind.name() == "turn_completed" {
            completed += 1;
        }
        completed == 2
    })
    .await;
    // No gap, no duplicate: seqs continue exactly after what the client saw.
    let seqs: Vec<u64> = rest.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (last_seen + 1..=last_seen + rest.len() as u64).collect();
    assert_eq!(seqs, expected, "events after the crash: {:?}", kinds(&rest));
    assert_eq!(
        rest[0].kind,
        EventKind::ModelCallStarted {
            turn: 2,
            attempt: 2,
            endpoint: "fake".into(),
            reason: baton_types::ModelCallReason::Recovery
        }
    );
    let turns_completed: Vec<u64> = rest
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::TurnCompleted { turn, .. } => Some(turn),
            _ => None,
        })
        .collect();
    assert_eq!(turns_completed, vec![2, 3], "turns complete in order");

    // Every message exists exactly once, in order.
    let session = get(&mut client, &id).await;
    assert_eq!(
        texts(&session),
        vec![
            "first question",
            "echo: first question",
            "second question",
            "echo: second question",
            "third question",
            "echo: third question"
        ]
    );
    assert_eq!(session.turns_completed, 3);
    assert_eq!(session.status, v1::SessionStatus::Idle as i32);
    // Turn 1's recorded answer was never requested again: turn 2 twice, turn 3 once.
    assert_eq!(fake.requests(), 4);
    // The bystander session is intact.
    assert_eq!(get(&mut client, &bystander).await.last_seq, 1);

    // A second crash and restart changes nothing and re-runs nothing.
    let full_before = session.last_seq;
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = get(&mut client, &id).await;
    assert_eq!(again.last_seq, full_before);
    assert_eq!(texts(&again), texts(&session));
    assert_eq!(
        fake.requests(),
        4,
        "a recorded answer is never requested again"
    );
    // And a full replay from seq 0 is gap-free.
    let mut replay = client
        .resume_session(v1::ResumeSessionRequest {
            session_id: id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let all = read_until(&mut replay, |e| e.seq == full_before).await;
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=full_before).collect::<Vec<_>>()
    );
    assert_eq!(
        server.terminate().await.unwrap().code(),
        Some(0),
        "SIGTERM shuts down gracefully"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_record_fails_only_its_session_with_a_clear_reason() {
    let fake = FakeOpenAi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config =
        write_config(dir.path(), &data, &fake_model_toml(&fake.base_url(), false)).unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let victim = start(&mut client, "").await;
    let healthy = start(&mut client, "").await;
    turn(&mut client, &victim, "hello").await;
    turn(&mut client, &healthy, "hello").await;
    server.kill9().await.unwrap();

    // Overwrite the victim's record seq 3 with bytes that do not decode
    // (through the store's own write path: on either backend).
    {
        let store = open_store_offline(&data).await;
        let id: baton::SessionId = victim.parse().unwrap();
        let mut b = baton_store::Batch::new();
        b.push(baton_store::Op::Put {
            cf: baton_store::CF_JOURNAL,
            key: baton_store::keys::journal_key(&id, 3).to_vec(),
            value: vec![0xff, 0x01, 0x02],
        });
        store.write(b).await.unwrap();
        store.close();
    }

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let s = get(&mut client, &victim).await;
    assert_eq!(s.status, v1::SessionStatus::Failed as i32);
    assert!(
        s.status_reason
            .contains(&format!("journal record 3 of session {victim}")),
        "reason names session and seq: {}",
        s.status_reason
    );
    let err = client
        .send_message(v1::SendMessageRequest {
            session_id: victim.clone(),
            content: "more".into(),
            review: false,
            images: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // Listing shows it as failed; the other session is untouched and usable.
    let failed = client
        .list_sessions(v1::ListSessionsRequest {
            status: v1::SessionStatus::Failed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.sessions.len(), 1);
    assert_eq!(failed.sessions[0].session_id, victim);
    let t = turn(&mut client, &healthy, "still fine").await;
    assert_eq!(t.last().unwrap().kind.name(), "turn_completed");
    assert!(
        !server.log().contains("panicked"),
        "no panic on corrupt data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_holds_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("data"), "").unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let req = v1::StartSessionRequest {
        idempotency_key: "order-99".into(),
        system_prompt: "be brief".into(),
        ..Default::default()
    };
    let a = client
        .start_session(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(a.created);
    server.kill9().await.unwrap();

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let b = client
        .start_session(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (b.session_id.as_str(), b.created),
        (a.session_id.as_str(), false)
    );
    let e = client
        .start_session(v1::StartSessionRequest {
            system_prompt: "be long".into(),
            ..req
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("order-99"), "{}", e.message());
    let listed = client
        .list_sessions(v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 1, "exactly one session was created");
}
