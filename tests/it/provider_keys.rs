//! Tenants' own provider keys (bring your own key) against the real binary
//! and fake OpenAI and Anthropic servers that record the key each request
//! carried: a tenant's calls send its key on every path (gRPC sessions, the
//! OpenAI front door, a turn resumed after SIGKILL), other tenants' calls
//! send the server's, `own_keys_only` keeps a tenant off the server's keys,
//! and a tenant's refused key does not open the endpoint's breaker for
//! everybody.

use std::time::Duration;

use baton::proto::v1;
use baton::types::{EventKind, SessionEvent};
use baton_testkit::fake_anthropic::FakeAnthropic;
use baton_testkit::fake_openai::{FakeOpenAi, Fault};
use baton_testkit::{BatonProcess, process::write_config};
use tonic::transport::Channel;

use crate::access::{create_key_for, offline_key};
use crate::common::*;

fn with_key<T>(key: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

async fn client(server: &BatonProcess) -> Client {
    Client::new(
        Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

async fn start_on(c: &mut Client, key: &str, route: &str) -> String {
    c.start_session(with_key(
        key,
        v1::StartSessionRequest {
            route: route.into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .session_id
}

async fn turn_as(c: &mut Client, key: &str, id: &str, text: &str) -> Vec<SessionEvent> {
    let mut s = c
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

fn completed(events: &[SessionEvent]) -> bool {
    events
        .last()
        .is_some_and(|e| matches!(e.kind, EventKind::TurnCompleted { .. }))
}

fn failure(events: &[SessionEvent]) -> String {
    match events.last().map(|e| &e.kind) {
        Some(EventKind::TurnFailed { reason, .. }) => reason.clone(),
        other => panic!("expected a failed turn, got {other:?}"),
    }
}

fn last(v: Vec<Option<String>>) -> Option<String> {
    v.last().cloned().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_calls_carry_their_own_provider_keys_on_every_path_and_through_sigkill() {
    let oa = FakeOpenAi::start().await.unwrap();
    let an = FakeAnthropic::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p.display().to_string()
    };
    let toml = format!(
        r#"
[auth]
enabled = true

[sessions]
default_route = "gpt"

[[models]]
name = "gpt"
provider = "openai"
base_url = {oa_url:?}
model = "gpt-test"
api_key_file = {server_oa:?}
timeout_ms = 120000
[models.retry]
max_attempts = 1
[models.breaker]
consecutive_failures = 1
open_ms = 600000

[[models]]
name = "claude"
provider = "anthropic"
base_url = {an_url:?}
model = "claude-test"
api_key_file = {server_an:?}

[[routes]]
name = "both"
endpoints = ["gpt", "claude"]

[[tenants]]
name = "acme"
[[tenants.provider_keys]]
endpoint = "gpt"
api_key_file = {acme_oa:?}
[[tenants.provider_keys]]
endpoint = "claude"
api_key_file = {acme_an:?}

[[tenants]]
name = "globex"

[[tenants]]
name = "strict"
own_keys_only = true
[[tenants.provider_keys]]
endpoint = "claude"
api_key_file = {strict_an:?}
"#,
        oa_url = oa.base_url(),
        an_url = an.base_url(),
        server_oa = secret("server-oa.key", "sk-server-openai"),
        server_an = secret("server-an.key", "sk-server-anthropic"),
        acme_oa = secret("acme-oa.key", "sk-acme-openai"),
        acme_an = secret("acme-an.key", "sk-acme-anthropic"),
        strict_an = secret("strict-an.key", "sk-strict-anthropic"),
    );
    let config = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let (_, admin) = offline_key(&config, "default", &["admin"]);
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let acme = create_key_for(&server, &admin, "acme", &["client"]).await;
    let globex = create_key_for(&server, &admin, "globex", &["client"]).await;
    let strict = create_key_for(&server, &admin, "strict", &["client"]).await;
    let mut c = client(&server).await;

    // gRPC sessions: each tenant's calls carry its key, or the server's.
    let a = start_on(&mut c, &acme, "gpt").await;
    assert!(completed(&turn_as(&mut c, &acme, &a, "hello").await));
    assert_eq!(
        last(oa.authorizations()).as_deref(),
        Some("Bearer sk-acme-openai")
    );
    let g = start_on(&mut c, &globex, "gpt").await;
    assert!(completed(&turn_as(&mut c, &globex, &g, "hello").await));
    assert_eq!(
        last(oa.authorizations()).as_deref(),
        Some("Bearer sk-server-openai")
    );
    let a2 = start_on(&mut c, &acme, "claude").await;
    assert!(completed(&turn_as(&mut c, &acme, &a2, "hello").await));
    assert_eq!(last(an.api_keys()).as_deref(), Some("sk-acme-anthropic"));

    // The OpenAI front door takes the same path.
    let http = server.http_url().unwrap();
    let front = |key: &str, model: &str| {
        reqwest::Client::new()
            .post(format!("{http}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&serde_json::json!({
                "model": model,
                "messages": [{"role": "user", "content": "front door"}],
            }))
            .send()
    };
    let r = front(&acme, "claude").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(last(an.api_keys()).as_deref(), Some("sk-acme-anthropic"));
    let r = front(&globex, "claude").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(last(an.api_keys()).as_deref(), Some("sk-server-anthropic"));

    // own_keys_only: a route over both endpoints goes where the tenant has
    // a key; an endpoint it has none for is refused, naming why.
    let before = oa.requests();
    let s = start_on(&mut c, &strict, "both").await;
    assert!(completed(&turn_as(&mut c, &strict, &s, "hello").await));
    assert_eq!(last(an.api_keys()).as_deref(), Some("sk-strict-anthropic"));
    let s2 = start_on(&mut c, &strict, "gpt").await;
    let reason = failure(&turn_as(&mut c, &strict, &s2, "hello").await);
    assert!(reason.contains("own provider keys"), "{reason}");
    assert_eq!(
        oa.requests(),
        before,
        "the server's openai key was never used"
    );

    // A tenant's key refused upstream fails that tenant's call, and leaves
    // the endpoint's breaker (one failure opens it) closed for the others.
    oa.push_fault(Fault::Status {
        status: 401,
        retry_after: None,
        body: r#"{"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}}"#.into(),
    });
    let reason = failure(&turn_as(&mut c, &acme, &a, "again").await);
    assert!(reason.contains("auth"), "{reason}");
    assert!(completed(&turn_as(&mut c, &globex, &g, "still fine").await));
    assert_eq!(
        last(oa.authorizations()).as_deref(),
        Some("Bearer sk-server-openai")
    );

    // SIGKILL mid-call: the resumed turn asks again with the tenant's key,
    // once.
    oa.push_fault(Fault::Hang);
    let hung = oa.requests() + 1;
    let mut stream = c
        .send_message(with_key(
            &acme,
            v1::SendMessageRequest {
                session_id: a.clone(),
                content: "across a crash".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while oa.requests() < hung {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call reached the fake"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // On RocksDB the records that started the model call are written
    // while the call runs (the write overlaps it, see
    // docs/architecture.md): let them land before the kill. On PostgreSQL
    // the call waits for their commit, so the kill comes the moment the
    // model sees it: the turn must be in the journal then.
    if !baton_pgtest::on_postgres() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    server.kill9().await.unwrap();
    drop(stream.message().await);
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = client(&server).await;
    let mut resumed = c
        .resume_session(with_key(
            &acme,
            v1::ResumeSessionRequest {
                session_id: a.clone(),
                after_seq: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let events = read_until(&mut resumed, |e| {
        matches!(e.kind, EventKind::TurnCompleted { turn: 3, .. })
    })
    .await;
    assert!(completed(&events), "{:?}", kinds(&events));
    assert_eq!(
        oa.requests(),
        hung + 1,
        "exactly one request after the restart"
    );
    assert_eq!(
        last(oa.authorizations()).as_deref(),
        Some("Bearer sk-acme-openai")
    );
    // Nothing of a key reached the journal or the log.
    let journal = format!("{events:?}");
    let log = server.log();
    for k in ["sk-acme-openai", "sk-acme-anthropic", "sk-strict-anthropic"] {
        assert!(!journal.contains(k) && !log.contains(k), "{k} leaked");
    }
    server.terminate().await.unwrap();
}
