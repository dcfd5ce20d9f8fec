//! The audit trail of the real binary: every model call, routing decision
//! and admin action is signed into the hash chain, across a SIGKILL; `baton
//! audit verify` accepts it and rejects a tampered copy; `export` filters by
//! session.

use std::time::Duration;

use baton_testkit::fake_openai::Behavior;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};
use serde_json::Value;

use crate::common::*;

fn baton(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("run baton")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_every_call_across_a_crash_and_detects_tampering() {
    let fake = FakeOpenAi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &data, &fake_model_toml(&fake.base_url(), true)).unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let other = start(&mut client, "").await;
    turn(&mut client, &id, "first").await;
    turn(&mut client, &other, "unrelated").await;

    // Turn 2 is in flight at the model when the process is killed.
    fake.set_behavior(Behavior {
        delay: Duration::from_secs(600),
        ..Behavior::default()
    });
    let mut s = send(&mut client, &id, "second").await;
    read_until(&mut s, |e| e.kind.name() == "model_call_started").await;
    for _ in 0..500 {
        if fake.requests() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9().await.unwrap();
    fake.set_behavior(Behavior::default());
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut r = client
        .resume_session(baton::proto::v1::ResumeSessionRequest {
            session_id: id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    read_until(&mut r, |e| {
        matches!(
            e.kind,
            baton::types::EventKind::TurnCompleted { turn: 2, .. }
        )
    })
    .await;
    server.terminate().await.unwrap();

    let audit_dir = data.join("audit");
    let audit_dir = audit_dir.to_str().unwrap();
    let out = baton(&["audit", "verify", "--dir", audit_dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok:"), "{stdout}");

    // The session's records: each model call exactly once (the crash did not
    // duplicate the answer), with the routing decisions and the admin action
    // that created it.
    let out = baton(&["audit", "export", "--dir", audit_dir, "--session", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.iter().all(|r| r["session_id"] == id.as_str()));
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    // At least once: a record the crash may have kept from the log is
    // appended again at the restart, marked `recovered` (same seq); the
    // first copy of each seq counts.
    let mut seen = std::collections::HashSet::new();
    let mut calls: Vec<&Value> = Vec::new();
    for r in records.iter().filter(|r| r["kind"] == "model_call") {
        if seen.insert(r["data"]["seq"].as_u64().unwrap()) {
            calls.push(r);
        } else {
            assert_eq!(r["data"]["recovered"], true, "an unmarked duplicate: {r}");
        }
    }
    assert_eq!(calls.len(), 2, "{kinds:?}");
    assert_eq!(calls[0]["data"]["response"]["content"], "echo: first");
    assert_eq!(calls[1]["data"]["response"]["content"], "echo: second");
    assert_eq!(calls[0]["data"]["endpoint"], "fake");
    assert!(kinds.contains(&"routing_decision"), "{kinds:?}");
    assert!(kinds.contains(&"model_input"), "{kinds:?}");
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "admin_action" && r["data"]["action"] == "start_session"),
        "{kinds:?}"
    );
    for r in &records {
        assert_eq!(r["hash"].as_str().unwrap().len(), 64);
        assert_eq!(r["sig"].as_str().unwrap().len(), 128);
    }
    // Both server starts and the clean stop are on record (the SIGKILLed run
    // never logged a stop).
    let out = baton(&["audit", "export", "--dir", audit_dir]);
    let all = String::from_utf8(out.stdout).unwrap();
    assert_eq!(all.matches("\"server_started\"").count(), 2);
    assert_eq!(all.matches("\"server_stopped\"").count(), 1);

    // A single changed byte in a copy is found and named.
    let copy = dir.path().join("tampered");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(audit_dir).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    let log = copy.join("audit.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes
        .windows(11)
        .position(|w| w == b"echo: first")
        .expect("the answer is in the log");
    bytes[at] = b'E';
    std::fs::write(&log, bytes).unwrap();
    let pubkey = format!("{audit_dir}/audit.key.pub");
    let out = baton(&[
        "audit",
        "verify",
        "--dir",
        copy.to_str().unwrap(),
        "--public-key-file",
        &pubkey,
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("TAMPERED") && text.contains("record"),
        "{text}"
    );
}
