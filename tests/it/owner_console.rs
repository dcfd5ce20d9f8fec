//! The web console where nodes own sessions one by one (`[cluster]
//! ownership = "sessions"`, docs/scaling.md): sign-ins are kept in the
//! database, so a browser signed in through one node is signed in on all;
//! a gate decision sent to a node that does not own the gate's live
//! session is forwarded to the owner with the sign-in's cookie and form.
//! The real binary twice on loopback, a private PostgreSQL server, plain
//! HTTP as a browser sends it (the browser suite drives the console's
//! pages themselves).

use std::time::Duration;

use baton::proto::v1::{self, admin_client::AdminClient};
use baton::types::EventKind;

use crate::access::{offline_key, with_key};
use crate::cluster::skip;
use crate::common::*;
use crate::owners::{owner_of, owning_cluster};

const TOML: &str = r#"
[auth]
enabled = true

[[models]]
name = "echo"
provider = "echo"

[[gates.policies]]
name = "replies"
kind = "final_answer"
reviewers = "support"
"#;

/// A client that keeps no cookies and follows no redirects: what each
/// answer says is checked as it comes.
fn web() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The console cookie of a sign-in through `http` with `key`, once the
/// node knows the key.
async fn sign_in(http: &str, key: &str) -> String {
    for _ in 0..100 {
        let r = web()
            .post(format!("{http}/ui/login"))
            .header("origin", http)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("credential", key), ("next", "/ui/gates")]))
            .send()
            .await
            .unwrap();
        if r.status() == 303
            && let Some(c) = r.headers().get("set-cookie")
        {
            let c = c.to_str().unwrap();
            return c.split(';').next().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no sign-in through {http}");
}

/// An HTML form's body.
fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The CSRF token in a console page.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field: {page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// A reviewer signed in through n1 decides, on n1, a gate whose session n0
/// owns and holds live: the form is forwarded to n0, which decides it
/// (the session stays n0's). Signing out through n0 signs the browser out
/// on n1 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_decided_in_the_console_of_another_node_goes_to_the_owner() {
    if skip() {
        return;
    }
    let cluster = owning_cluster(TOML);
    let (_, admin) = offline_key(&cluster.config("n0", 2_000), "default", &["admin"]);
    let n0 = cluster.start("n0", 2_000).await;
    let n1 = cluster.start("n1", 2_000).await;
    let created = AdminClient::new(
        tonic::transport::Channel::from_shared(n0.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .create_key(with_key(
        &admin,
        v1::CreateKeyRequest {
            name: "reviewer".into(),
            tenant: "default".into(),
            roles: vec!["client".into(), "reviewer".into()],
            groups: vec!["support".into()],
            expires_at_unix_ms: 0,
        },
    ))
    .await
    .unwrap()
    .into_inner();
    let key = created.secret;
    // A turn on n0 whose answer waits for a reviewer: the session is n0's.
    let mut c = n0.client().await.unwrap();
    let id = c
        .start_session(with_key(&key, v1::StartSessionRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let mut s = c
        .send_message(with_key(
            &key,
            v1::SendMessageRequest {
                session_id: id.clone(),
                content: "hold me".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let events = read_until(&mut s, |e| matches!(e.kind, EventKind::GateOpened { .. })).await;
    let Some(EventKind::GateOpened { gate_id, .. }) = events.last().map(|e| e.kind.clone()) else {
        panic!("no gate: {events:?}");
    };
    let gate = gate_id.to_string();
    assert_eq!(owner_of(&cluster, &id), "n0");

    // Signed in through n1; the gate's page there, and the decision.
    let h1 = n1.http_url().unwrap();
    let cookie = sign_in(&h1, &key).await;
    let page = web()
        .get(format!("{h1}/ui/gates/{gate}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let token = csrf(&page.text().await.unwrap());
    let r = web()
        .post(format!("{h1}/ui/gates/{gate}"))
        .header("cookie", &cookie)
        .header("origin", &h1)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", token.as_str()), ("decision", "approve")]))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    let body = r.text().await.unwrap();
    assert_eq!(status, 303, "{body}");
    assert_eq!(
        location.as_deref(),
        Some(format!("/ui/gates/{gate}").as_str())
    );
    // Decided on n0, by the reviewer; the turn went on there.
    let rest = read_until(&mut s, |e| e.ends_turn()).await;
    assert!(
        rest.iter()
            .any(|e| matches!(&e.kind, EventKind::GateDecided { .. })),
        "{rest:?}"
    );
    assert_eq!(owner_of(&cluster, &id), "n0", "forwarded, not moved");

    // Signed out through n0: the cookie no longer works on n1.
    let h0 = n0.http_url().unwrap();
    let page = web()
        .get(format!("{h0}/ui/gates/{gate}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the sign-in is known on n0 too");
    let token = csrf(&page.text().await.unwrap());
    let out = web()
        .post(format!("{h0}/ui/logout"))
        .header("cookie", &cookie)
        .header("origin", &h0)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", token.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let after = web()
        .get(format!("{h1}/ui/gates"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303, "asked to sign in again");
    n0.terminate().await.unwrap();
    n1.terminate().await.unwrap();
}
