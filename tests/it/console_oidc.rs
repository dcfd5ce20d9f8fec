//! Signing in to the web console through the identity provider's login
//! page (OpenID Connect, authorization code with PKCE), in headless
//! chromium against the real binary and a fake provider that speaks real
//! HTTP on loopback: it checks the PKCE verifier, the client secret and the
//! redirect URI, and issues ID tokens signed with a key in the JWKS Baton
//! is given. The provider is reached as `localhost` and Baton as
//! `127.0.0.1`: two sites, as in production.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use baton_testkit::{BatonProcess, process::write_config};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;

use crate::common::bin;
use crate::webdriver::Browser;

const CLIENT: &str = "baton-console";
const SECRET: &str = "s3cret-of-the-client";

#[derive(Default)]
struct Idp {
    /// code -> (PKCE challenge, nonce, redirect_uri)
    codes: HashMap<String, (String, String, String)>,
    /// Where Baton's HTTP listener is (the provider's redirect goes there).
    baton: String,
    /// Refuse the next sign-in (the user said no).
    deny: bool,
    /// Put another nonce in the next ID token.
    wrong_nonce: bool,
    /// Token requests refused, and why.
    refused: Vec<String>,
    encoding: Option<EncodingKey>,
    next_code: u64,
}

type Shared = Arc<Mutex<Idp>>;

async fn authorize(
    State(idp): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = idp.lock().unwrap();
    let p = |k: &str| q.get(k).cloned().unwrap_or_default();
    if p("response_type") != "code"
        || p("client_id") != CLIENT
        || p("code_challenge_method") != "S256"
        || p("scope") != "openid profile"
    {
        return (
            StatusCode::BAD_REQUEST,
            format!("bad authorize request {q:?}"),
        )
            .into_response();
    }
    let back = p("redirect_uri");
    let location = if std::mem::take(&mut s.deny) {
        format!(
            "{back}?error=access_denied&error_description=the%20user%20said%20no&state={}",
            p("state")
        )
    } else {
        s.next_code += 1;
        let code = format!("code-{}", s.next_code);
        s.codes.insert(
            code.clone(),
            (p("code_challenge"), p("nonce"), back.clone()),
        );
        format!("{back}?code={code}&state={}", p("state"))
    };
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// The registered redirect URI lives here and forwards to Baton, whose
/// port is chosen at its start (after the config naming the URI is written).
async fn back(State(idp): State<Shared>, uri: axum::http::Uri) -> Response {
    let to = format!(
        "{}/ui/oidc/callback?{}",
        idp.lock().unwrap().baton,
        uri.query().unwrap_or_default()
    );
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

async fn token(State(idp): State<Shared>, Form(f): Form<HashMap<String, String>>) -> Response {
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut s = idp.lock().unwrap();
    let p = |k: &str| f.get(k).cloned().unwrap_or_default();
    let refuse = |s: &mut Idp, why: String| {
        s.refused.push(why.clone());
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response()
    };
    let Some((challenge, nonce, redirect)) = s.codes.remove(&p("code")) else {
        return refuse(&mut s, format!("unknown or used code {:?}", p("code")));
    };
    let verified = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(p("code_verifier").as_bytes()));
    if p("grant_type") != "authorization_code"
        || p("client_id") != CLIENT
        || p("client_secret") != SECRET
        || p("redirect_uri") != redirect
        || verified != challenge
    {
        return refuse(&mut s, format!("bad token request {f:?}"));
    }
    let nonce = if std::mem::take(&mut s.wrong_nonce) {
        "someone-elses-nonce".to_string()
    } else {
        nonce
    };
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": "https://idp.test", "aud": CLIENT, "sub": "alice", "tenant": "acme",
        "roles": ["reviewer"], "groups": ["finance"], "nonce": nonce,
        "iat": now, "exp": now + 600,
    });
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    let id_token = jsonwebtoken::encode(&h, &claims, s.encoding.as_ref().unwrap()).unwrap();
    Json(serde_json::json!({
        "id_token": id_token, "access_token": "opaque", "token_type": "Bearer", "expires_in": 600,
    }))
    .into_response()
}

/// Click "Sign in with …" on the sign-in page and wait for `want`.
async fn through_the_provider(b: &Browser, http: &str, want: &str) -> String {
    b.goto(&format!("{http}/ui/gates")).await.unwrap();
    b.click(&b.find("#oidc").await.unwrap()).await.unwrap();
    b.wait_text(want, |t| t.contains(want)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_sign_in_through_the_identity_providers_login_page() {
    let signer = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let encoding = EncodingKey::from_ec_der(&signer.serialize_der());
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let idp: Shared = Arc::new(Mutex::new(Idp {
        encoding: Some(encoding),
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // The provider's OpenID configuration: Baton takes the token endpoint
    // from it; its authorization endpoint is overridden by the config.
    let discovery = serde_json::json!({
        "issuer": "https://idp.test",
        "authorization_endpoint": format!("http://localhost:{port}/not-this-one"),
        "token_endpoint": format!("http://127.0.0.1:{port}/token"),
        "jwks_uri": format!("http://127.0.0.1:{port}/jwks"),
    });
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(discovery) }),
        )
        .route("/authorize", get(authorize))
        .route("/back/ui/oidc/callback", get(back))
        .route("/token", post(token))
        .with_state(idp.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap(),
    )
    .unwrap();
    let toml = format!(
        r#"
[auth]
enabled = true

[auth.jwt]
issuer = "https://idp.test"
audience = "{CLIENT}"
jwks_file = {jwks:?}

[auth.oidc]
name = "Test IdP"
discovery_url = "http://127.0.0.1:{port}/.well-known/openid-configuration"
authorization_endpoint = "http://localhost:{port}/authorize"
client_id = "{CLIENT}"
client_secret_env = "TEST_OIDC_SECRET"
redirect_uri = "http://localhost:{port}/back/ui/oidc/callback"
scopes = "openid profile"

[[tenants]]
name = "acme"
"#,
        jwks = jwks.display().to_string()
    );
    let config = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start_with_env(bin(), &config, &[("TEST_OIDC_SECRET", SECRET)])
        .await
        .unwrap();
    let http = server.http_url().unwrap();
    idp.lock().unwrap().baton = http.clone();
    let b = Browser::start().await.unwrap();

    // Off to the provider and back: signed in as the token's subject, with
    // its tenant and groups; the pending sign-in's cookie is gone.
    let t = through_the_provider(&b, &http, "Gates waiting for a decision").await;
    assert!(t.contains("jwt:alice") && t.contains("tenant acme"), "{t}");
    assert!(idp.lock().unwrap().refused.is_empty());
    let cookies = b.cookies().await.unwrap();
    let c = cookies
        .iter()
        .find(|c| c["name"] == "baton_console")
        .unwrap();
    assert_eq!(
        (c["httpOnly"].clone(), c["sameSite"].clone()),
        (true.into(), "Strict".into())
    );
    assert!(
        !cookies.iter().any(|c| c["name"] == "baton_oidc"),
        "{cookies:?}"
    );

    // A callback that did not start in this browser, or started and was
    // used already, signs nobody in.
    let web = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = web
        .get(format!("{http}/ui/oidc/callback?code=code-1&state=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("not started from this browser")
    );
    let r = web
        .get(format!("{http}/ui/oidc/callback?code=code-1&state=abc"))
        .header("cookie", "baton_oidc=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("used already"));

    // The user says no at the provider: the reason on the sign-in page.
    b.click(&b.find("header form button").await.unwrap())
        .await
        .unwrap();
    b.wait_text("signed out", |t| t.contains("API key or token"))
        .await
        .unwrap();
    idp.lock().unwrap().deny = true;
    let t = through_the_provider(&b, &http, "refused the sign-in").await;
    assert!(
        t.contains("Test IdP refused the sign-in: access_denied the user said no"),
        "{t}"
    );

    // An ID token carrying another sign-in's nonce is refused.
    idp.lock().unwrap().wrong_nonce = true;
    let t = through_the_provider(&b, &http, "nonce").await;
    assert!(t.contains("not the one this sign-in sent"), "{t}");
    assert!(
        b.cookies()
            .await
            .unwrap()
            .iter()
            .all(|c| c["name"] != "baton_console"),
        "not signed in"
    );

    // And once more, all the way.
    let t = through_the_provider(&b, &http, "Gates waiting for a decision").await;
    assert!(t.contains("jwt:alice"), "{t}");
    server.terminate().await.unwrap();
}
