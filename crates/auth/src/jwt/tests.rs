//! The verifier end to end: keys made here, JWKS in a temp file or served
//! over real HTTP on loopback, tokens signed with jsonwebtoken.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_types::{AccessRole, AuthMethod, DEFAULT_TENANT, Principal};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{JwtSettings, JwtVerifier};
use crate::error::AuthError;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "baton";

/// A signing key and its public JWK.
struct TestKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl TestKey {
    fn new(kid: &str, algorithm: Algorithm) -> Self {
        let encoding = match algorithm {
            Algorithm::ES256 => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                EncodingKey::from_ec_der(&key.serialize_der())
            }
            Algorithm::EdDSA => {
                // PKCS#8 v1 (RFC 8410) around a random seed: ring's v2
                // documents (rcgen's) are not read by the RustCrypto backend.
                let mut pkcs8 = vec![
                    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04,
                    0x22, 0x04, 0x20,
                ];
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).unwrap();
                pkcs8.extend_from_slice(&seed);
                EncodingKey::from_ed_der(&pkcs8)
            }
            other => panic!("no test keys for {other:?}"),
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            algorithm,
            encoding,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
    .unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims of a valid token for `alice` in `acme`, expiring in 10 minutes.
fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "tenant": "acme",
        "roles": ["client", "reviewer"],
        "groups": ["finance"],
        "iat": now(),
        "exp": now() + 600,
    })
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

/// A verifier reading `keys` from a JWKS file.
async fn file_verifier(
    keys: &[&TestKey],
    adjust: impl FnOnce(&mut JwtSettings),
) -> (JwtVerifier, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(keys)).unwrap();
    let mut settings = JwtSettings::new(ISSUER, AUDIENCE);
    settings.jwks_file = Some(path);
    adjust(&mut settings);
    (JwtVerifier::new(settings).await.unwrap(), dir)
}

fn invalid(result: Result<Principal, AuthError>) -> String {
    match result {
        Err(AuthError::Invalid(m)) => m,
        other => panic!("expected an invalid-credentials error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_valid_token_maps_to_its_principal() {
    for algorithm in [Algorithm::ES256, Algorithm::EdDSA] {
        let key = TestKey::new("k1", algorithm);
        let (verifier, _dir) = file_verifier(&[&key], |_| {}).await;
        let principal = verifier.verify(&key.sign(&claims())).await.unwrap();
        assert_eq!(
            principal,
            Principal {
                via: AuthMethod::Jwt,
                id: "alice".into(),
                tenant: "acme".into(),
                roles: vec![AccessRole::Client, AccessRole::Reviewer],
                groups: vec!["finance".into()],
            },
            "{algorithm:?}"
        );
    }
}

#[tokio::test]
async fn time_claims_are_checked_with_leeway() {
    let key = TestKey::new("k1", Algorithm::ES256);
    let (verifier, _dir) = file_verifier(&[&key], |s| s.leeway_secs = 30).await;
    let expired = key.sign(&with(claims(), json!({"exp": now() - 120})));
    assert_eq!(invalid(verifier.verify(&expired).await), "token expired");
    let within_leeway = key.sign(&with(claims(), json!({"exp": now() - 10})));
    verifier.verify(&within_leeway).await.unwrap();
    let early = key.sign(&with(claims(), json!({"nbf": now() + 600})));
    assert_eq!(
        invalid(verifier.verify(&early).await),
        "token not valid yet (nbf)"
    );
    let no_exp = key.sign(&with(claims(), json!({"exp": null})));
    assert_eq!(
        invalid(verifier.verify(&no_exp).await),
        "missing claim `exp`"
    );
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let key = TestKey::new("k1", Algorithm::ES256);
    let (verifier, _dir) = file_verifier(&[&key], |_| {}).await;
    let token = key.sign(&with(claims(), json!({"iss": "https://evil.test"})));
    assert_eq!(
        invalid(verifier.verify(&token).await),
        "wrong issuer: expected \"https://idp.test\""
    );
    let token = key.sign(&with(claims(), json!({"aud": "other"})));
    assert_eq!(
        invalid(verifier.verify(&token).await),
        "wrong audience: expected \"baton\""
    );
    let token = key.sign(&with(claims(), json!({"aud": ["other", "baton"]})));
    assert_eq!(verifier.verify(&token).await.unwrap().id, "alice");
    let token = key.sign(&with(claims(), json!({"aud": null})));
    assert_eq!(
        invalid(verifier.verify(&token).await),
        "missing claim `aud`"
    );
}

#[tokio::test]
async fn signatures_by_other_keys_and_tampered_tokens_are_refused() {
    let key = TestKey::new("k1", Algorithm::ES256);
    let impostor = TestKey::new("k1", Algorithm::ES256);
    let (verifier, _dir) = file_verifier(&[&key], |_| {}).await;
    assert_eq!(
        invalid(verifier.verify(&impostor.sign(&claims())).await),
        "bad signature"
    );
    // A payload swapped under a genuine signature.
    let genuine = key.sign(&claims());
    let forged = impostor.sign(&with(claims(), json!({"roles": ["admin"]})));
    let mut parts: Vec<&str> = genuine.split('.').collect();
    parts[1] = forged.split('.').nth(1).unwrap();
    assert_eq!(
        invalid(verifier.verify(&parts.join(".")).await),
        "bad signature"
    );
    let garbage = verifier.verify("a.b.c").await;
    assert!(
        matches!(&garbage, Err(AuthError::Malformed(m)) if m.starts_with("not a valid JWT")),
        "{garbage:?}"
    );
}

#[tokio::test]
async fn algorithms_outside_the_allow_list_and_unknown_keys_are_refused() {
    let es = TestKey::new("es", Algorithm::ES256);
    let ed = TestKey::new("ed", Algorithm::EdDSA);
    let (verifier, _dir) =
        file_verifier(&[&es, &ed], |s| s.algorithms = vec!["ES256".into()]).await;
    verifier.verify(&es.sign(&claims())).await.unwrap();
    assert_eq!(
        invalid(verifier.verify(&ed.sign(&claims())).await),
        "unsupported algorithm EdDSA: accepted ES256"
    );
    assert_eq!(
        invalid(verifier.verify(&es.sign_as("nope", &claims())).await),
        "unknown key id \"nope\""
    );
}

#[tokio::test]
async fn the_tenant_claim_falls_back_to_the_default_tenant_only_when_configured() {
    let key = TestKey::new("k1", Algorithm::EdDSA);
    let token = key.sign(&with(claims(), json!({"tenant": null, "roles": null})));
    let (strict, _dir) = file_verifier(&[&key], |_| {}).await;
    assert_eq!(
        invalid(strict.verify(&token).await),
        "missing claim `tenant` and no default_tenant is configured"
    );
    let (lenient, _dir) = file_verifier(&[&key], |s| {
        s.default_tenant = Some(DEFAULT_TENANT.into());
        s.default_roles = vec![AccessRole::Client];
    })
    .await;
    let principal = lenient.verify(&token).await.unwrap();
    assert_eq!(principal.tenant, DEFAULT_TENANT);
    assert_eq!(principal.roles, [AccessRole::Client]);
}

#[tokio::test]
async fn roles_come_as_a_string_or_an_array_and_unknown_ones_are_named() {
    let key = TestKey::new("k1", Algorithm::ES256);
    let (verifier, _dir) = file_verifier(&[&key], |s| {
        s.roles_claim = "scope".into();
        s.subject_claim = "email".into();
    })
    .await;
    let as_string = key.sign(&with(
        claims(),
        json!({"scope": "operator client", "email": "a@acme"}),
    ));
    let p = verifier.verify(&as_string).await.unwrap();
    assert_eq!(p.roles, [AccessRole::Operator, AccessRole::Client]);
    assert_eq!(p.id, "a@acme");
    let as_array = key.sign(&with(
        claims(),
        json!({"scope": ["admin"], "email": "b@acme"}),
    ));
    assert_eq!(
        verifier.verify(&as_array).await.unwrap().roles,
        [AccessRole::Admin]
    );
    let unknown = key.sign(&with(
        claims(),
        json!({"scope": "client root", "email": "c"}),
    ));
    let m = invalid(verifier.verify(&unknown).await);
    assert!(m.starts_with("claim `scope`: unknown role \"root\""), "{m}");
    let no_subject = key.sign(&claims());
    assert_eq!(
        invalid(verifier.verify(&no_subject).await),
        "missing claim `email`"
    );
}

#[tokio::test]
async fn verified_tokens_are_cached_until_they_expire() {
    let key = TestKey::new("k1", Algorithm::ES256);
    let (verifier, _dir) = file_verifier(&[&key], |s| s.leeway_secs = 5).await;
    let token = key.sign(&with(claims(), json!({"exp": now() + 100})));
    let first = verifier.verify(&token).await.unwrap();
    assert_eq!(verifier.cached(), 1);
    let second = verifier.verify(&token).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(
        verifier.cached(),
        1,
        "the second call is a hit, not a new entry"
    );
    // Refused tokens are not cached.
    let _ = verifier
        .verify(&key.sign(&with(claims(), json!({"aud": "x"}))))
        .await;
    assert_eq!(verifier.cached(), 1);
    // Past exp + leeway, the cached entry is refused (and dropped), though
    // the signature would still verify against jsonwebtoken's clock.
    verifier.skew_clock(106);
    assert_eq!(invalid(verifier.verify(&token).await), "token expired");
    assert_eq!(verifier.cached(), 0);
}

#[tokio::test]
async fn missing_and_broken_jwks_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.json");
    let mut settings = JwtSettings::new(ISSUER, AUDIENCE);
    settings.jwks_file = Some(missing.clone());
    let e = JwtVerifier::new(settings.clone()).await.unwrap_err();
    assert!(
        matches!(&e, AuthError::Config(m)
            if *m == format!("auth.jwt.jwks_file {}: file not found", missing.display())),
        "{e}"
    );
    std::fs::write(&missing, "{\"keys\": []}").unwrap();
    let e = JwtVerifier::new(settings.clone()).await.unwrap_err();
    assert!(
        e.to_string().ends_with("absent.json: the key set is empty"),
        "{e}"
    );
    settings.jwks_file = None;
    let e = JwtVerifier::new(settings).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("auth.jwt.jwks_file: set exactly one of"),
        "{e}"
    );
}

/// A JWKS endpoint speaking real HTTP/1.1 on loopback, counting requests.
struct JwksServer {
    url: String,
    body: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(status: u16, body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let body = Arc::new(Mutex::new((status, body)));
        let requests = Arc::new(AtomicUsize::new(0));
        let (served, count) = (body.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (served, count) = (served.clone(), count.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = served.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            url,
            body,
            requests,
        }
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = (200, body);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn settings(&self) -> JwtSettings {
        let mut settings = JwtSettings::new(ISSUER, AUDIENCE);
        settings.jwks_url = Some(self.url.clone());
        settings
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_a_rotated_key_is_picked_up_by_one_refetch() {
    let old = TestKey::new("2024", Algorithm::ES256);
    let new = TestKey::new("2025", Algorithm::EdDSA);
    let server = JwksServer::start(200, jwks(&[&old])).await;
    let verifier = JwtVerifier::new(server.settings()).await.unwrap();
    assert_eq!(server.requests(), 1);
    let old_token = old.sign(&claims());
    verifier.verify(&old_token).await.unwrap();
    assert_eq!(server.requests(), 1, "known keys need no fetch");

    // The provider rotates: the new key replaces the old one.
    server.serve(jwks(&[&new]));
    let principal = verifier.verify(&new.sign(&claims())).await.unwrap();
    assert_eq!(principal.id, "alice");
    assert_eq!(server.requests(), 2, "one refetch for the unknown key id");

    // The withdrawn key no longer authenticates, cached token or not.
    assert_eq!(
        invalid(verifier.verify(&old_token).await),
        "unknown key id \"2024\""
    );
    // Within 30 s of the refetch, unknown ids do not fetch again.
    assert_eq!(
        invalid(verifier.verify(&new.sign_as("2026", &claims())).await),
        "unknown key id \"2026\""
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_jwks_url_is_refreshed_every_refresh_secs() {
    let old = TestKey::new("a", Algorithm::ES256);
    let new = TestKey::new("b", Algorithm::ES256);
    let server = JwksServer::start(200, jwks(&[&old])).await;
    let mut settings = server.settings();
    settings.refresh_secs = 1;
    let verifier = JwtVerifier::new(settings).await.unwrap();
    // Spend the unknown-kid refetch: for the next 30 s only the periodic
    // refresh can bring new keys in.
    let unknown = verifier.verify(&new.sign(&claims())).await;
    assert_eq!(invalid(unknown), "unknown key id \"b\"");
    assert_eq!(server.requests(), 2);
    server.serve(jwks(&[&old, &new]));
    // Real time, bounded: the refresh runs on the runtime's timer and does
    // real I/O, which paused time would race.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let token = new.sign(&claims());
    let principal = loop {
        match verifier.verify(&token).await {
            Ok(principal) => break principal,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no refresh in 10 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(principal.id, "alice");
    assert!(server.requests() >= 3);
}

/// The verifier can be shared across tasks and its futures sent between
/// threads (tonic interceptors and axum middleware need both).
#[test]
fn the_verifier_and_its_futures_are_send_and_sync() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    fn sendable<T: Send>(_: &T) {}
    shareable::<JwtVerifier>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = TestKey::new("k1", Algorithm::ES256);
    let (verifier, _dir) = runtime.block_on(file_verifier(&[&key], |_| {}));
    let token = key.sign(&claims());
    let verifying = verifier.verify(&token);
    sendable(&verifying);
    assert_eq!(runtime.block_on(verifying).unwrap().id, "alice");
}

#[tokio::test]
async fn jwks_url_failures_name_the_url_and_the_problem() {
    let server = JwksServer::start(404, "nope".into()).await;
    let e = JwtVerifier::new(server.settings()).await.unwrap_err();
    assert!(
        matches!(&e, AuthError::Config(m)
            if *m == format!("auth.jwt.jwks_url {}: HTTP status 404 Not Found", server.url)),
        "{e}"
    );
    server.serve("<html>".into());
    let e = JwtVerifier::new(server.settings()).await.unwrap_err();
    assert!(e.to_string().contains("not a JWKS document"), "{e}");

    // Nothing listens on a port we just closed.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", closed.local_addr().unwrap());
    drop(closed);
    let mut settings = JwtSettings::new(ISSUER, AUDIENCE);
    settings.jwks_url = Some(url.clone());
    let e = JwtVerifier::new(settings).await.unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "auth configuration: auth.jwt.jwks_url {url}: request failed"
        )),
        "{e}"
    );
}
