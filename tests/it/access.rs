//! Identity, tenants and limits against the real binary: API keys that
//! survive SIGKILL, revocation on the next call, every RPC and HTTP route's
//! requirement (the matrix), tenant isolation, reviewers from the principal,
//! and ceilings a request cannot widen.

use std::path::Path;
use std::time::Duration;

use baton::proto::v1::{self, admin_client::AdminClient, gates_client::GatesClient};
use baton_testkit::{BatonProcess, process::write_config};
use tonic::Code;
use tonic::transport::Channel;

use crate::common::*;

const TENANTS: &str = r#"
[auth]
enabled = true

[gates.explicit]
reviewers = "finance"

[[tenants]]
name = "acme"
max_session_budget_usd = 5.0
allowed_tools = ["http_get"]

[[tenants]]
name = "globex"
max_sessions = 2

[[tenants]]
name = "throttled"
key_requests_per_second = 0.2
key_burst = 2
"#;

/// `baton keys create --offline` on a stopped server's data dir.
pub(crate) fn offline_key(config: &Path, tenant: &str, roles: &[&str]) -> (String, String) {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["keys", "create", "--offline", "--json", "--tenant", tenant])
        .arg("--config")
        .arg(config);
    for r in roles {
        cmd.args(["--role", r]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

pub(crate) fn with_key<T>(key: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

async fn channel(server: &BatonProcess) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn create_key(
    admin: &mut AdminClient<Channel>,
    admin_key: &str,
    tenant: &str,
    roles: &[&str],
    groups: &[&str],
    expires_at_unix_ms: u64,
) -> (String, String) {
    let c = admin
        .create_key(with_key(
            admin_key,
            v1::CreateKeyRequest {
                name: format!("{tenant} {roles:?}"),
                tenant: tenant.into(),
                roles: roles.iter().map(|s| s.to_string()).collect(),
                groups: groups.iter().map(|s| s.to_string()).collect(),
                expires_at_unix_ms,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (c.key.unwrap().id, c.secret)
}

/// A key made over the Admin API of `server` with `admin_key`; its secret.
pub(crate) async fn create_key_for(
    server: &BatonProcess,
    admin_key: &str,
    tenant: &str,
    roles: &[&str],
) -> String {
    let mut admin = AdminClient::new(channel(server).await);
    create_key(&mut admin, admin_key, tenant, roles, &[], 0)
        .await
        .1
}

async fn start_as(
    client: &mut Client,
    key: &str,
    req: v1::StartSessionRequest,
) -> Result<String, tonic::Status> {
    client
        .start_session(with_key(key, req))
        .await
        .map(|r| r.into_inner().session_id)
}

/// Every gRPC method the server offers (from its descriptor set) must have
/// a declared requirement; one without fails here.
#[test]
fn every_rpc_has_a_declared_access_requirement() {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(baton::proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut n = 0;
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                assert!(
                    baton_server::auth::grpc_need(&path).is_some(),
                    "{path} has no entry in baton_server::auth::GRPC_ACCESS"
                );
                n += 1;
            }
        }
    }
    assert!(n >= 23, "only {n} methods found");
}

/// A raw call of any method with an empty message: the access layer
/// answers before the message is read.
async fn raw_call(channel: &Channel, path: &'static str, auth: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    if let Some(a) = auth {
        req.metadata_mut()
            .insert("authorization", a.parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    match grpc.unary(req, path, codec).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_roles_and_tenants_hold_on_every_rpc_and_route_and_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &data, TENANTS).unwrap();
    // The first admin key, offline, before the server starts.
    let (_, admin_key) = offline_key(&config, "default", &["admin"]);
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let ch = channel(&server).await;
    let mut admin = AdminClient::new(ch.clone());
    let (_, acme_client) = create_key(&mut admin, &admin_key, "acme", &["client"], &[], 0).await;
    let (_, acme_reviewer) = create_key(
        &mut admin,
        &admin_key,
        "acme",
        &["reviewer"],
        &["finance"],
        0,
    )
    .await;
    let (_, acme_outsider) =
        create_key(&mut admin, &admin_key, "acme", &["reviewer"], &["legal"], 0).await;
    let (_, acme_operator) =
        create_key(&mut admin, &admin_key, "acme", &["operator"], &[], 0).await;
    let (_, globex_client) =
        create_key(&mut admin, &admin_key, "globex", &["client"], &[], 0).await;
    let (revoked_id, revoked) =
        create_key(&mut admin, &admin_key, "acme", &["client"], &[], 0).await;
    let soon = baton::types::now_unix_ms() + 1500;
    let (_, expiring) = create_key(&mut admin, &admin_key, "acme", &["client"], &[], soon).await;

    // Keys survive a SIGKILL.
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let ch = channel(&server).await;
    let mut admin = AdminClient::new(ch.clone());
    let mut sessions = v1::sessions_client::SessionsClient::new(ch.clone());
    let acme_session = start_as(&mut sessions, &acme_client, Default::default())
        .await
        .unwrap();
    let globex_session = start_as(&mut sessions, &globex_client, Default::default())
        .await
        .unwrap();
    assert!(
        start_as(&mut sessions, &revoked, Default::default())
            .await
            .is_ok()
    );
    admin
        .revoke_key(with_key(
            &admin_key,
            v1::RevokeKeyRequest {
                id: revoked_id.clone(),
            },
        ))
        .await
        .unwrap();
    // Revocation holds on the next call, and across another SIGKILL.
    let e = start_as(&mut sessions, &revoked, Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("revoked"), "{}", e.message());
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let ch = channel(&server).await;
    let mut admin = AdminClient::new(ch.clone());
    let mut sessions = v1::sessions_client::SessionsClient::new(ch.clone());
    let e = start_as(&mut sessions, &revoked, Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    tokio::time::sleep_until(
        tokio::time::Instant::now()
            + Duration::from_millis(soon.saturating_sub(baton::types::now_unix_ms()) + 50),
    )
    .await;

    // The matrix: every method, every kind of bad credential.
    let client_bearer = format!("Bearer {acme_client}");
    // Public: a health check answers without credentials.
    assert_eq!(
        raw_call(&ch, "/grpc.health.v1.Health/Check", None).await,
        Code::Ok
    );
    for (path, need) in baton_server::auth::GRPC_ACCESS {
        if *need == baton_server::auth::Need::Anyone {
            // Health and reflection (their streams would not end here).
            continue;
        }
        let anyone = false;
        let cases: [(Option<String>, Code, &str); 5] = [
            (None, Code::Unauthenticated, "no credentials"),
            (Some("Bearer".into()), Code::Unauthenticated, "malformed"),
            (
                Some("Basic YTpi".into()),
                Code::Unauthenticated,
                "other scheme",
            ),
            (
                Some(format!("Bearer {revoked}")),
                Code::Unauthenticated,
                "revoked",
            ),
            (
                Some(format!("Bearer {expiring}")),
                Code::Unauthenticated,
                "expired",
            ),
        ];
        for (auth, want, what) in cases {
            let got = raw_call(&ch, path, auth.as_deref()).await;
            if anyone {
                assert_ne!(got, Code::Unauthenticated, "{path} ({what}) is public");
            } else {
                assert_eq!(got, want, "{path} with {what}");
            }
        }
        // Too weak a role: an acme client may only start, drive and read.
        let client_ok = match need {
            baton_server::auth::Need::Anyone => true,
            baton_server::auth::Need::AnyOf(roles) => {
                roles.contains(&baton::types::AccessRole::Client)
            }
        };
        let got = raw_call(&ch, path, Some(&client_bearer)).await;
        if client_ok {
            assert_ne!(got, Code::PermissionDenied, "{path} for a client");
            assert_ne!(got, Code::Unauthenticated, "{path} for a client");
        } else {
            assert_eq!(got, Code::PermissionDenied, "{path} for a client");
        }
    }
    // An unknown method is refused, not served.
    assert_eq!(
        raw_call(&ch, "/baton.v1.Sessions/Nope", Some(&client_bearer)).await,
        Code::PermissionDenied
    );

    // Another tenant's session is NOT_FOUND, like an id that does not exist,
    // and nothing of it changes.
    let before = sessions
        .get_session(with_key(
            &globex_client,
            v1::GetSessionRequest {
                session_id: globex_session.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.tenant, "globex");
    let missing = baton::types::SessionId::new().to_string();
    for id in [&globex_session, &missing] {
        let e = sessions
            .get_session(with_key(
                &acme_client,
                v1::GetSessionRequest {
                    session_id: id.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.message(), format!("session {id} not found"));
        let e = sessions
            .delete_session(with_key(
                &acme_client,
                v1::DeleteSessionRequest {
                    session_id: id.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = sessions
            .send_message(with_key(
                &acme_client,
                v1::SendMessageRequest {
                    session_id: id.clone(),
                    content: "hi".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let mut inspect = v1::inspect_client::InspectClient::new(ch.clone());
        let e = inspect
            .get_journal(with_key(
                &acme_operator,
                v1::GetJournalRequest {
                    session_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }
    let after = sessions
        .get_session(with_key(
            &globex_client,
            v1::GetSessionRequest {
                session_id: globex_session.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.last_seq, before.last_seq);
    // Lists show only the caller's tenant.
    let listed: Vec<String> = sessions
        .list_sessions(with_key(&acme_client, v1::ListSessionsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    assert!(listed.contains(&acme_session));
    assert!(!listed.contains(&globex_session));

    // The journal names the principal that started the session.
    let mut inspect = v1::inspect_client::InspectClient::new(ch.clone());
    let journal = inspect
        .get_journal(with_key(
            &acme_operator,
            v1::GetJournalRequest {
                session_id: acme_session.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first: baton::types::SessionEvent = serde_json::from_str(&journal.records[0].json).unwrap();
    match first.kind {
        baton::types::EventKind::SessionStarted { tenant, by, .. } => {
            assert_eq!(tenant, "acme");
            assert!(by.starts_with("api_key:bk_"), "{by}");
        }
        other => panic!("{other:?}"),
    }

    // Gates: the reviewer is the principal; outside the gate's group, refused.
    let mut turn = sessions
        .send_message(with_key(
            &acme_client,
            v1::SendMessageRequest {
                session_id: acme_session.clone(),
                content: "check this".into(),
                review: true,
                images: Vec::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let events = read_until(&mut turn, |e| e.kind.name() == "gate_opened").await;
    let gate_id = match &events.last().unwrap().kind {
        baton::types::EventKind::GateOpened { gate_id, .. } => gate_id.to_string(),
        other => panic!("{other:?}"),
    };
    let mut gates = GatesClient::new(ch.clone());
    let decide = |key: &str, reviewer: &str| {
        with_key(
            key,
            v1::DecideGateRequest {
                gate_id: gate_id.clone(),
                decision: v1::GateDecision::Approve as i32,
                reviewer: reviewer.into(),
                ..Default::default()
            },
        )
    };
    let e = gates
        .decide_gate(decide(&acme_outsider, "finance-boss"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = gates
        .decide_gate(decide(&globex_client, "x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let g = gates
        .decide_gate(decide(&acme_reviewer, "someone-else"))
        .await
        .unwrap()
        .into_inner();
    assert!(g.reviewer.starts_with("api_key:bk_"), "{}", g.reviewer);

    // Ceilings: budget, tools, sessions.
    let e = start_as(
        &mut sessions,
        &acme_client,
        v1::StartSessionRequest {
            budget_usd: Some(50.0),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("ceiling"), "{}", e.message());
    let capped = start_as(&mut sessions, &acme_client, Default::default())
        .await
        .unwrap();
    let s = sessions
        .get_session(with_key(
            &acme_client,
            v1::GetSessionRequest { session_id: capped },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !s.allowed_tools.iter().any(|t| t == "*"),
        "{:?}",
        s.allowed_tools
    );
    let e = start_as(
        &mut sessions,
        &acme_client,
        v1::StartSessionRequest {
            allowed_tools: vec!["http_post".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    start_as(&mut sessions, &globex_client, Default::default())
        .await
        .unwrap();
    let e = start_as(&mut sessions, &globex_client, Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    // HTTP: every route's requirement.
    let http = server.http_url().unwrap();
    let web = reqwest::Client::new();
    for (method, route, need) in baton_server::auth::HTTP_ACCESS {
        if route.starts_with("/ui") {
            console_route(&http, method, route, *need, &acme_reviewer).await;
            continue;
        }
        let url = format!(
            "{http}{}",
            route.replace("{model}", "echo").replace("{name}", "nope")
        );
        let call = |auth: Option<String>| {
            let mut r = web.request(method.parse().unwrap(), &url);
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            if *method == "POST" {
                r = r.json(&serde_json::json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}));
            }
            r.send()
        };
        let anyone = *need == baton_server::auth::Need::Anyone;
        for auth in [
            None,
            Some("Bearer nope".to_string()),
            Some(format!("Bearer {revoked}")),
        ] {
            let status = call(auth.clone()).await.unwrap().status().as_u16();
            if anyone && route.starts_with("/hooks/") {
                // Reached without credentials: the hook is unknown (its
                // deliveries are checked by their signature).
                assert_eq!(status, 404, "{method} {route}");
            } else if anyone {
                assert_eq!(status, 200, "{method} {route}");
            } else {
                assert_eq!(status, 401, "{method} {route} with {auth:?}");
            }
        }
        let status = call(Some(format!("Bearer {acme_reviewer}")))
            .await
            .unwrap()
            .status()
            .as_u16();
        if !anyone {
            assert_eq!(status, 403, "{method} {route} as a reviewer");
        }
    }
    let r = web
        .post(format!("{http}/v1/chat/completions"))
        .bearer_auth(&acme_client)
        .json(
            &serde_json::json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // Rate limits: a burst of 2, then RESOURCE_EXHAUSTED / 429 with
    // retry-after, on gRPC and HTTP alike (one bucket per key).
    let (_, slow) = create_key(&mut admin, &admin_key, "throttled", &["client"], &[], 0).await;
    for _ in 0..2 {
        start_as(&mut sessions, &slow, Default::default())
            .await
            .unwrap();
    }
    let e = start_as(&mut sessions, &slow, Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("rate limit"), "{}", e.message());
    let retry: u64 = e
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    let r = web
        .get(format!("{http}/v1/models"))
        .bearer_auth(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    server.terminate().await.unwrap();
}

/// A console route: its credential is the sign-in cookie, never a bearer
/// token. Without a sign-in a page redirects to the sign-in form and a
/// post is refused (401), whatever `authorization` says; the public ones
/// answer.
async fn console_route(
    http: &str,
    method: &str,
    route: &str,
    need: baton_server::auth::Need,
    bearer: &str,
) {
    let web = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!(
        "{http}{}",
        route.replace("{id}", "x").replace("{file}", "app.css")
    );
    for auth in [None, Some(bearer)] {
        let mut r = web.request(method.parse().unwrap(), &url);
        if let Some(k) = auth {
            r = r.bearer_auth(k);
        }
        if method == "POST" {
            r = r
                .header("content-type", "application/x-www-form-urlencoded")
                .body("credential=nope&csrf=x");
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string())
            .unwrap_or_default();
        let what = format!("{method} {route} with {auth:?}: {status} {location}");
        match (need == baton_server::auth::Need::Anyone, method, route) {
            (true, "GET", "/ui") => {
                assert_eq!((status, location.as_str()), (303, "/ui/gates"), "{what}")
            }
            (true, "POST", "/ui/login") => assert_eq!(status, 401, "{what}"),
            // No [auth.oidc] on this server: the sign-in page says so.
            (true, "GET", "/ui/oidc/start" | "/ui/oidc/callback") => {
                assert_eq!(status, 404, "{what}")
            }
            (true, "POST", "/ui/logout") => {
                assert_eq!((status, location.as_str()), (303, "/ui/login"), "{what}")
            }
            (true, _, _) => assert_eq!(status, 200, "{what}"),
            (false, "GET", _) => {
                assert_eq!(status, 303, "{what}");
                assert!(location.starts_with("/ui/login?next="), "{what}");
            }
            (false, _, _) => assert_eq!(status, 401, "{what}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_without_authentication_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        "[server]\nlisten = \"0.0.0.0:0\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-unauthenticated"), "{err}");
    assert!(err.contains("server.listen"), "{err}");
}

/// docs/security.md's role table says what the code requires, for every
/// RPC and route.
#[test]
fn the_security_doc_lists_every_requirement() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md")).unwrap();
    let row_roles = |name: &str| -> Option<String> {
        doc.lines().find_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() >= 3 && cells[1].split(", ").any(|c| c == format!("`{name}`")))
                .then(|| cells[2].to_string())
        })
    };
    let wanted = |need: &baton_server::auth::Need| match need {
        baton_server::auth::Need::Anyone => "anyone".to_string(),
        baton_server::auth::Need::AnyOf(roles) => roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    };
    for (path, need) in baton_server::auth::GRPC_ACCESS {
        let Some(short) = path.strip_prefix("/baton.v1.") else {
            assert_eq!(wanted(need), "anyone", "{path}");
            continue;
        };
        assert_eq!(
            row_roles(short).as_deref(),
            Some(wanted(need).as_str()),
            "{short}"
        );
    }
    for (method, route, need) in baton_server::auth::HTTP_ACCESS {
        let name = format!("{method} {route}");
        assert_eq!(
            row_roles(&name).as_deref(),
            Some(wanted(need).as_str()),
            "{name}"
        );
    }
}

/// A tenant's daily budget holds across SIGKILL: its spend is written with
/// the priced records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_daily_budget_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[auth]
enabled = true

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
name = "metered"
key_tokens_per_minute = 1
"#;
    let config = write_config(dir.path(), &dir.path().join("data"), toml).unwrap();
    let (_, admin_key) = offline_key(&config, "default", &["admin"]);
    let (_, other) = offline_key(&config, "thrifty", &["client"]);
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let ch = channel(&server).await;
    let mut admin = AdminClient::new(ch.clone());
    let (_, key) = create_key(&mut admin, &admin_key, "spender", &["client"], &[], 0).await;
    let mut sessions = v1::sessions_client::SessionsClient::new(ch.clone());
    let id = start_as(&mut sessions, &key, Default::default())
        .await
        .unwrap();
    // Each turn costs a dollar per input token: a few turns spend it all.
    let mut refused = None;
    for n in 1..=10 {
        match sessions
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
                refused = Some((n, e));
                break;
            }
        }
    }
    let (n, e) = refused.expect("the daily budget refuses a turn");
    assert!(n > 1, "the first turn runs");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("daily_budget_usd"), "{}", e.message());
    let secs: u64 = e
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=86_400).contains(&secs),
        "until the UTC day turns: {secs}"
    );

    // Tokens per minute: the first turn uses the minute's allowance.
    let (_, chatty) = create_key(&mut admin, &admin_key, "chatty", &["client"], &[], 0).await;
    let cid = start_as(&mut sessions, &chatty, Default::default())
        .await
        .unwrap();
    let send = |text: &str| {
        with_key(
            &chatty,
            v1::SendMessageRequest {
                session_id: cid.clone(),
                content: text.into(),
                ..Default::default()
            },
        )
    };
    let mut s = sessions
        .send_message(send("one"))
        .await
        .unwrap()
        .into_inner();
    read_until(&mut s, |e| e.ends_turn()).await;
    let e = sessions.send_message(send("two")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("tokens_per_minute"), "{}", e.message());
    assert!(e.metadata().get("retry-after").is_some(), "{e:?}");

    // Tokens per minute per key: one key's turn uses its allowance; another
    // key of the same tenant is not held by it.
    let (_, k1) = create_key(&mut admin, &admin_key, "metered", &["client"], &[], 0).await;
    let (_, k2) = create_key(&mut admin, &admin_key, "metered", &["client"], &[], 0).await;
    let m1 = start_as(&mut sessions, &k1, Default::default())
        .await
        .unwrap();
    let msg = |id: &str, key: &str| {
        with_key(
            key,
            v1::SendMessageRequest {
                session_id: id.into(),
                content: "hello".into(),
                ..Default::default()
            },
        )
    };
    let mut s = sessions
        .send_message(msg(&m1, &k1))
        .await
        .unwrap()
        .into_inner();
    read_until(&mut s, |e| e.ends_turn()).await;
    let e = sessions.send_message(msg(&m1, &k1)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("key_tokens_per_minute"),
        "{}",
        e.message()
    );
    let secs: u64 = e
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/chat/completions",
            server.http_url().unwrap()
        ))
        .bearer_auth(&k1)
        .json(
            &serde_json::json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after), "{after}");
    let m2 = start_as(&mut sessions, &k2, Default::default())
        .await
        .unwrap();
    let mut s = sessions
        .send_message(msg(&m2, &k2))
        .await
        .unwrap()
        .into_inner();
    assert!(
        read_until(&mut s, |e| e.ends_turn())
            .await
            .last()
            .unwrap()
            .kind
            .name()
            == "turn_completed"
    );

    // Per-tenant series on /metrics (an operator's view: a bearer needed).
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", server.http_url().unwrap()))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    assert!(
        value("baton_tenant_cost_usd_total{tenant=\"spender\"}") >= 5.0,
        "{text}"
    );
    assert!(value("baton_tenant_turns_total{tenant=\"spender\",outcome=\"completed\"}") >= 1.0);
    assert!(value("baton_tenant_tokens_total{tenant=\"chatty\",direction=\"input\"}") >= 1.0);

    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut sessions = v1::sessions_client::SessionsClient::new(channel(&server).await);
    let e = start_as(&mut sessions, &key, Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Another tenant is not held by it.
    start_as(&mut sessions, &other, Default::default())
        .await
        .unwrap();
    server.terminate().await.unwrap();
}

/// One principal cannot hold more calls open than its cap; a closed stream
/// frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_holds_at_most_its_cap_of_open_calls() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[auth]\nenabled = true\nmax_calls_per_principal = 2\n";
    let config = write_config(dir.path(), &dir.path().join("data"), toml).unwrap();
    let (_, key) = offline_key(&config, "default", &["client"]);
    let (_, other) = offline_key(&config, "default", &["client"]);
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let ch = channel(&server).await;
    let mut sessions = v1::sessions_client::SessionsClient::new(ch.clone());
    let id = start_as(&mut sessions, &key, Default::default())
        .await
        .unwrap();
    let resume = || {
        with_key(
            &key,
            v1::ResumeSessionRequest {
                session_id: id.clone(),
                after_seq: 0,
            },
        )
    };
    let first = sessions
        .resume_session(resume())
        .await
        .unwrap()
        .into_inner();
    let _second = sessions
        .resume_session(resume())
        .await
        .unwrap()
        .into_inner();
    let e = start_as(&mut sessions, &key, Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("max_calls_per_principal"),
        "{}",
        e.message()
    );
    // Another principal is not held by it.
    start_as(&mut sessions, &other, Default::default())
        .await
        .unwrap();
    drop(first);
    let mut freed = false;
    for _ in 0..100 {
        if start_as(&mut sessions, &key, Default::default())
            .await
            .is_ok()
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "a closed stream frees its slot");
    server.terminate().await.unwrap();
    // The keys made offline are in the audit trail, with who made them.
    let log = std::fs::read_to_string(dir.path().join("data/audit/audit.log")).unwrap();
    let made: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"create_api_key\""))
        .collect();
    assert_eq!(made.len(), 2, "{log}");
    assert!(
        made.iter().all(|l| l.contains("\"actor\":\"cli:")),
        "{made:?}"
    );
}

/// A client that sends its request headers too slowly loses the
/// connection: it cannot hold it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http_client_cannot_hold_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        "[http]\nheader_read_timeout_ms = 300\nbody_read_timeout_ms = 300\n",
    )
    .unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let addr = server.http_addr().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was held open");
    assert!(started.elapsed() < Duration::from_secs(5));
    // One whose body stalls gets an answer (not a held connection).
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("an answer while the body stalls")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.is_empty() || head.starts_with("HTTP/1.1 4"), "{head}");
    // A whole request on a fresh connection is served.
    let ok = reqwest::get(format!("{}/healthz", server.http_url().unwrap()))
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    server.terminate().await.unwrap();
}
