//! Retention against the real binary: sessions past their route's TTL are
//! deleted by the background job, exactly those — not a session of another
//! route, not one still running — and across a SIGKILL the running one
//! resumes, finishes, and expires in its turn.

use std::time::Duration;

use baton::proto::v1;
use baton_testkit::fake_openai::{FakeOpenAi, Fault};
use baton_testkit::{BatonProcess, process::write_config};
use tonic::Code;

use crate::common::*;

async fn exists(c: &mut Client, id: &str) -> bool {
    match c
        .get_session(v1::GetSessionRequest {
            session_id: id.into(),
        })
        .await
    {
        Ok(_) => true,
        Err(e) if e.code() == Code::NotFound => false,
        Err(e) => panic!("{e:?}"),
    }
}

async fn until_gone(c: &mut Client, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while exists(c, id).await {
        assert!(tokio::time::Instant::now() < deadline, "{id} never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_deleted_and_only_they_through_sigkill() {
    let fake = FakeOpenAi::start().await.unwrap();
    let toml = format!(
        r#"
[sessions]
default_route = "echo"

[[models]]
name = "echo"
provider = "echo"

[[models]]
name = "short"
provider = "openai"
base_url = {url:?}
model = "fake-model"
timeout_ms = 120000

[retention]
scan_interval_ms = 100
[retention.routes]
short = 2
"#,
        url = fake.base_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();

    let a = start(&mut c, "short").await;
    turn(&mut c, &a, "hello").await;
    let kept = start(&mut c, "echo").await;
    turn(&mut c, &kept, "keep me").await;
    // B's turn hangs at the model: a running session is never expired.
    let b = start(&mut c, "short").await;
    fake.push_fault(Fault::Hang);
    let before = fake.requests();
    let mut s = send(&mut c, &b, "still working").await;
    while fake.requests() == before {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    until_gone(&mut c, &a).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        exists(&mut c, &kept).await,
        "another route's session is kept"
    );
    assert!(exists(&mut c, &b).await, "a running session is kept");

    server.kill9().await.unwrap();
    drop(s.message().await);
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    assert!(!exists(&mut c, &a).await, "a deleted session stays deleted");
    // B resumes and finishes, then expires in its turn.
    let mut r = c
        .resume_session(v1::ResumeSessionRequest {
            session_id: b.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let events = read_until(&mut r, |e| e.ends_turn()).await;
    assert_eq!(events.last().unwrap().kind.name(), "turn_completed");
    until_gone(&mut c, &b).await;
    assert!(exists(&mut c, &kept).await);
    let listed: Vec<String> = c
        .list_sessions(v1::ListSessionsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    assert_eq!(listed, [kept.as_str()]);
    assert!(metric(&server, "baton_sessions_expired_total").await >= 1.0);
    server.terminate().await.unwrap();
}

/// Subject access: `baton export --subject` writes everything held about a
/// subject — sessions found by a metadata value, each with its journal,
/// gates and audit records — and nothing of anyone else, read offline from
/// the data dir a SIGKILLed server left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subjects_data_exports_whole_and_alone_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &dir.path().join("data"), "").unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    let start_for = |customer: &'static str| {
        let mut c = c.clone();
        async move {
            c.start_session(v1::StartSessionRequest {
                metadata: [("customer_id".to_string(), customer.to_string())].into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .session_id
        }
    };
    let a1 = start_for("c-1").await;
    let a2 = start_for("c-1").await;
    let b = start_for("c-2").await;
    turn(&mut c, &a1, "my address is 1 Main St").await;
    turn(&mut c, &a2, "and my phone is 555-0100").await;
    turn(&mut c, &b, "someone else entirely").await;
    server.kill9().await.unwrap();

    let export = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("export")
            .args(args)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let doc = export(&["--subject", "c-1", "--field", "customer_id"]);
    let sessions = doc["sessions"].as_array().unwrap();
    let mut ids: Vec<&str> = sessions
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![a1.as_str(), a2.as_str()];
    want.sort();
    assert_eq!(ids, want);
    let text = doc.to_string();
    assert!(
        text.contains("1 Main St") && text.contains("555-0100"),
        "{text}"
    );
    assert!(!text.contains("someone else"), "another subject's data");
    for s in sessions {
        let journal = s["journal"].as_array().unwrap();
        assert_eq!(
            journal.first().unwrap()["kind"]["type"],
            "session_started",
            "{s}"
        );
        assert_eq!(journal.last().unwrap()["kind"]["type"], "turn_completed");
        assert!(
            !s["audit"].as_array().unwrap().is_empty(),
            "audit records: {s}"
        );
        assert_eq!(s["metadata"]["customer_id"], "c-1");
    }
    // A session id works as the subject too.
    let doc = export(&["--subject", &b]);
    assert_eq!(doc["sessions"].as_array().unwrap().len(), 1);
    assert!(doc.to_string().contains("someone else"));
}
