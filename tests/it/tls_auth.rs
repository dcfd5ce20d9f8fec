//! TLS on gRPC and HTTP, mutual TLS with the principal from the client
//! certificate, and JWTs from an identity provider, against the real
//! binary, with a CA and a signing key generated here.

use std::path::Path;

use baton::proto::v1::{self, inspect_client::InspectClient, sessions_client::SessionsClient};
use baton_testkit::{BatonProcess, process::write_config};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::bin;

pub(crate) struct Ca {
    pub(crate) cert: rcgen::Certificate,
    key: KeyPair,
}

pub(crate) fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A certificate signed by `ca`: (cert PEM, key PEM).
pub(crate) fn leaf(ca: &Ca, cn: &str, sans: &[&str]) -> (String, String) {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

pub(crate) async fn tls_channel(
    url: &str,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(url.replace("http://", "https://"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

fn bearer<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_principals_and_jwts_from_an_identity_provider() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let authority = ca("Baton Test CA");
    let stranger = ca("Someone Else's CA");
    let (server_cert, server_key) = leaf(&authority, "baton", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = leaf(&authority, "billing-svc", &[]);
    let (unmapped_cert, unmapped_key) = leaf(&authority, "nobody", &[]);
    let (foreign_cert, foreign_key) = leaf(&stranger, "billing-svc", &[]);
    let ca_pem = authority.cert.pem();

    // The identity provider's signing key and its JWKS.
    let signer = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let encoding = EncodingKey::from_ec_der(&signer.serialize_der());
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap();
    let token = |claims: serde_json::Value| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &claims, &encoding).unwrap()
    };
    let now = jsonwebtoken::get_current_timestamp();

    let toml = format!(
        r#"
[server.tls]
cert_file = {sc:?}
key_file = {sk:?}
client_ca_file = {ca:?}

[http.tls]
cert_file = {sc:?}
key_file = {sk:?}

[auth]
enabled = true

[auth.jwt]
issuer = "https://idp.test"
audience = "baton"
jwks_file = {jwks:?}

[[auth.mtls_clients]]
subject = "billing-svc"
tenant = "acme"
roles = ["client"]
"#,
        sc = write(d, "server.pem", &server_cert),
        sk = write(d, "server.key", &server_key),
        ca = write(d, "ca.pem", &ca_pem),
        jwks = write(d, "jwks.json", &jwks),
    );
    let config = write_config(d, &d.join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let url = server.url();

    // A client certificate the config maps: its principal starts a session.
    let ch = tls_channel(&url, &ca_pem, Some((&client_cert, &client_key)))
        .await
        .unwrap();
    let mut sessions = SessionsClient::new(ch.clone());
    let id = sessions
        .start_session(v1::StartSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;

    // A JWT operator of the same tenant reads the journal: it names the
    // certificate's principal.
    let operator = token(serde_json::json!({
        "iss": "https://idp.test", "aud": "baton", "sub": "ops-alice",
        "tenant": "acme", "roles": ["operator"], "exp": now + 600,
    }));
    let mut inspect = InspectClient::new(ch.clone());
    let journal = inspect
        .get_journal(bearer(
            &operator,
            v1::GetJournalRequest {
                session_id: id.clone(),
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
            assert_eq!(by, "certificate:CN=billing-svc");
        }
        other => panic!("{other:?}"),
    }
    // A JWT of another tenant gets NOT_FOUND; an expired one, a wrong
    // audience and a forged signature are UNAUTHENTICATED.
    let other_tenant = token(serde_json::json!({
        "iss": "https://idp.test", "aud": "baton", "sub": "x",
        "tenant": "globex", "roles": ["operator"], "exp": now + 600,
    }));
    let e = inspect
        .get_journal(bearer(
            &other_tenant,
            v1::GetJournalRequest {
                session_id: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let expired = token(serde_json::json!({
        "iss": "https://idp.test", "aud": "baton", "sub": "x",
        "tenant": "acme", "roles": ["operator"], "exp": now - 3600,
    }));
    let wrong_aud = token(serde_json::json!({
        "iss": "https://idp.test", "aud": "elsewhere", "sub": "x",
        "tenant": "acme", "roles": ["operator"], "exp": now + 600,
    }));
    let mut forged = operator.clone();
    forged.pop();
    forged.push(if operator.ends_with('A') { 'B' } else { 'A' });
    for bad in [&expired, &wrong_aud, &forged] {
        let e = inspect
            .get_journal(bearer(
                bad,
                v1::GetJournalRequest {
                    session_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }

    // An unmapped certificate is refused by name; no certificate or one
    // from another CA cannot even connect.
    let ch = tls_channel(&url, &ca_pem, Some((&unmapped_cert, &unmapped_key)))
        .await
        .unwrap();
    let e = SessionsClient::new(ch)
        .start_session(v1::StartSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("nobody"), "{}", e.message());
    for client in [None, Some((foreign_cert.as_str(), foreign_key.as_str()))] {
        let refused = match tls_channel(&url, &ca_pem, client).await {
            Err(_) => true,
            Ok(ch) => SessionsClient::new(ch)
                .start_session(v1::StartSessionRequest::default())
                .await
                .is_err(),
        };
        assert!(
            refused,
            "a connection without an accepted client certificate"
        );
    }

    // HTTP over TLS: the front door with a JWT client.
    let client_jwt = token(serde_json::json!({
        "iss": "https://idp.test", "aud": "baton", "sub": "app",
        "tenant": "acme", "roles": "client", "exp": now + 600,
    }));
    let web = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let https = server
        .http_url()
        .unwrap()
        .replace("http://127.0.0.1", "https://localhost");
    let r = web.get(format!("{https}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = web
        .post(format!("{https}/v1/chat/completions"))
        .bearer_auth(&client_jwt)
        .json(
            &serde_json::json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    // The console over TLS: its sign-in cookie is Secure as well as
    // HttpOnly and SameSite=Strict.
    let reviewer_jwt = token(serde_json::json!({
        "iss": "https://idp.test", "aud": "baton", "sub": "rev",
        "tenant": "acme", "roles": "reviewer", "exp": now + 600,
    }));
    let r = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{https}/ui/login"))
        .header("origin", &https)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("credential={reviewer_jwt}&next=%2Fui%2Fgates"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/ui"] {
        assert!(
            cookie.split("; ").any(|a| a == attribute),
            "{attribute} in {cookie}"
        );
    }
    // The baton CLI over mutual TLS.
    let out = tokio::process::Command::new(bin())
        .args(["session", "start", "--server"])
        .arg(url.replace("http://127.0.0.1", "https://localhost"))
        .arg("--ca-cert")
        .arg(d.join("ca.pem"))
        .arg("--client-cert")
        .arg(write(d, "client.pem", &client_cert))
        .arg("--client-key")
        .arg(write(d, "client.key", &client_key))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        started.parse::<baton::types::SessionId>().is_ok(),
        "{started}"
    );
    let plain = reqwest::get(format!("{}/healthz", server.http_url().unwrap())).await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP on a TLS port"
    );
    server.terminate().await.unwrap();
}
