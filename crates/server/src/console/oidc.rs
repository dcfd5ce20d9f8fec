//! Signing in through the identity provider's login page: the OpenID
//! Connect authorization code flow with PKCE (`[auth.oidc]`).
//!
//! `GET /ui/oidc/start` sends the browser to the provider with a fresh
//! `state` (also set in a short-lived cookie on this browser), a `nonce`
//! and a PKCE challenge; `GET /ui/oidc/callback` takes the provider's
//! answer back: the state must match the cookie and a pending sign-in (once
//! only, within 10 minutes), the code is exchanged at the token endpoint
//! with the PKCE verifier, and the token returned is checked by
//! `[auth.jwt]` like any bearer token (an ID token's `nonce` must be the
//! one sent). Then the console's own sign-in cookie is set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Extension, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use baton_types::now_unix_ms;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::html::{self, esc, respond, see_other};
use super::{ConsoleTls, login_page, next_page, open_sign_in};
use crate::auth::Authenticator;
use crate::console_session::{
    MAX_PROVIDER_ANSWER, OidcSettings, TTL_MS, cookie, query_escape, random_token, read_capped,
};

/// The cookie binding a pending sign-in to the browser that started it.
const STATE_COOKIE: &str = "baton_oidc";
/// How long a browser may take at the provider.
const PENDING_MS: u64 = 10 * 60 * 1000;
/// Most sign-ins pending at once.
const MAX_PENDING: usize = 10_000;

#[derive(Debug, Clone)]
struct Pending {
    verifier: String,
    nonce: String,
    next: String,
    started_unix_ms: u64,
}

/// Sign-ins on their way through the provider.
#[derive(Debug, Clone)]
pub struct ConsoleOidc {
    pending: Arc<Mutex<HashMap<String, Pending>>>,
    http: reqwest::Client,
}

impl ConsoleOidc {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        ConsoleOidc {
            pending: Default::default(),
            http,
        }
    }
}

impl Default for ConsoleOidc {
    fn default() -> Self {
        Self::new()
    }
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE S256 challenge of `verifier`.
fn challenge(verifier: &str) -> String {
    b64url(&Sha256::digest(verifier.as_bytes()))
}

fn refused(auth: &Authenticator, status: StatusCode, why: &str) -> Response {
    respond(status, login_page(auth, "", Some(why)))
}

fn state_cookie(value: &str, max_age: u64, tls: ConsoleTls) -> Option<HeaderValue> {
    // Lax, not Strict: the provider's redirect back is a cross-site
    // navigation, and the cookie must come with it.
    HeaderValue::from_str(&format!(
        "{STATE_COOKIE}={value}; Path=/ui/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{}",
        if tls.0 { "; Secure" } else { "" }
    ))
    .ok()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StartQuery {
    next: String,
}

/// `GET /ui/oidc/start`: off to the provider.
pub(crate) async fn start(
    Extension(auth): Extension<Authenticator>,
    Extension(flow): Extension<ConsoleOidc>,
    Extension(tls): Extension<ConsoleTls>,
    Query(q): Query<StartQuery>,
) -> Response {
    let Some(o) = auth.oidc() else {
        return refused(
            &auth,
            StatusCode::NOT_FOUND,
            "signing in through an identity provider is not configured ([auth.oidc])",
        );
    };
    let (state, nonce, verifier) = match (random_token(), random_token(), random_token()) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => {
            return refused(
                &auth,
                StatusCode::SERVICE_UNAVAILABLE,
                "no randomness from the OS",
            );
        }
    };
    {
        let mut map = flow.pending.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_unix_ms();
        map.retain(|_, p| now.saturating_sub(p.started_unix_ms) < PENDING_MS);
        if map.len() >= MAX_PENDING {
            return refused(
                &auth,
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sign-ins are under way: try again in a few minutes",
            );
        }
        map.insert(
            state.clone(),
            Pending {
                verifier: verifier.clone(),
                nonce: nonce.clone(),
                next: next_page(&q.next).to_string(),
                started_unix_ms: now,
            },
        );
    }
    let sep = if o.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let to = format!(
        "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&nonce={nonce}&code_challenge={}&code_challenge_method=S256",
        o.authorization_endpoint,
        query_escape(&o.client_id),
        query_escape(&o.redirect_uri),
        query_escape(&o.scopes),
        challenge(&verifier),
    );
    let mut r = see_other(&to);
    if let Some(c) = state_cookie(&state, PENDING_MS / 1000, tls) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CallbackQuery {
    code: String,
    state: String,
    error: String,
    error_description: String,
}

/// The token endpoint's answer (the fields used).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TokenAnswer {
    id_token: String,
    access_token: String,
    error: String,
    error_description: String,
}

/// Exchange `code` at the token endpoint.
async fn exchange(
    http: &reqwest::Client,
    o: &OidcSettings,
    code: &str,
    verifier: &str,
) -> Result<TokenAnswer, String> {
    let mut form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_string()),
        ("redirect_uri", o.redirect_uri.clone()),
        ("client_id", o.client_id.clone()),
        ("code_verifier", verifier.to_string()),
    ];
    if let Some(var) = &o.client_secret_env {
        let secret = std::env::var(var).map_err(|_| {
            format!("the environment variable {var} (auth.oidc.client_secret_env) is not set")
        })?;
        form.push(("client_secret", secret));
    }
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", query_escape(v)))
        .collect::<Vec<_>>()
        .join("&");
    let resp = http
        .post(&o.token_endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("the token endpoint cannot be reached: {}", e.without_url()))?;
    let status = resp.status();
    let bytes = read_capped(resp, MAX_PROVIDER_ANSWER)
        .await
        .map_err(|why| format!("the token endpoint's answer {why}"))?;
    let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|e| {
        format!("the token endpoint answered {status} with something that is not JSON: {e}")
    })?;
    if !status.is_success() || !answer.error.is_empty() {
        return Err(format!(
            "the token endpoint refused the code ({status}): {} {}",
            answer.error, answer.error_description
        ));
    }
    Ok(answer)
}

/// `GET /ui/oidc/callback`: back from the provider.
pub(crate) async fn callback(
    Extension(auth): Extension<Authenticator>,
    Extension(flow): Extension<ConsoleOidc>,
    Extension(tls): Extension<ConsoleTls>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(o) = auth.oidc().cloned() else {
        return refused(
            &auth,
            StatusCode::NOT_FOUND,
            "signing in through an identity provider is not configured ([auth.oidc])",
        );
    };
    let bound = cookie(&headers, STATE_COOKIE).unwrap_or_default();
    if q.state.is_empty() || !bool::from(bound.as_bytes().ct_eq(q.state.as_bytes())) {
        return refused(
            &auth,
            StatusCode::FORBIDDEN,
            "this sign-in was not started from this browser (its state does not match): start again",
        );
    }
    let pending = flow
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&q.state);
    let Some(p) = pending.filter(|p| now_unix_ms().saturating_sub(p.started_unix_ms) < PENDING_MS)
    else {
        return refused(
            &auth,
            StatusCode::FORBIDDEN,
            "this sign-in is unknown, used already or older than 10 minutes: start again",
        );
    };
    if !q.error.is_empty() {
        return refused(
            &auth,
            StatusCode::UNAUTHORIZED,
            &format!(
                "{} refused the sign-in: {} {}",
                o.name, q.error, q.error_description
            ),
        );
    }
    if q.code.is_empty() {
        return refused(
            &auth,
            StatusCode::BAD_REQUEST,
            "the provider sent no code back",
        );
    }
    let answer = match exchange(&flow.http, &o, &q.code, &p.verifier).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in through the identity provider failed");
            return refused(&auth, StatusCode::BAD_GATEWAY, &e);
        }
    };
    let token = if o.token == "access_token" {
        answer.access_token
    } else {
        answer.id_token
    };
    if token.is_empty() {
        return refused(
            &auth,
            StatusCode::BAD_GATEWAY,
            &format!("the token endpoint's answer has no {}", o.token),
        );
    }
    let mut h = HeaderMap::new();
    let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return refused(
            &auth,
            StatusCode::BAD_GATEWAY,
            "the provider's token holds characters no token has",
        );
    };
    h.insert(header::AUTHORIZATION, v);
    let who = match auth.authenticate(&h, None).await {
        Ok(who) => who,
        Err(d) => return refused(&auth, StatusCode::UNAUTHORIZED, d.status().message()),
    };
    if o.token == "id_token" {
        let nonce = super::jwt_claims(&token)
            .and_then(|c| c.get("nonce").and_then(|n| n.as_str().map(String::from)));
        if nonce.as_deref() != Some(p.nonce.as_str()) {
            return refused(
                &auth,
                StatusCode::UNAUTHORIZED,
                "the ID token's nonce is not the one this sign-in sent (a replayed token?)",
            );
        }
    }
    let expires = super::jwt_expiry_ms(&token)
        .unwrap_or(u64::MAX)
        .min(now_unix_ms() + TTL_MS);
    let signed_in = match open_sign_in(&auth, tls, who, expires).await {
        Ok(c) => c,
        Err((status, m)) => return refused(&auth, status, &m),
    };
    // A page, not a redirect: the console's cookie is SameSite=Strict, and
    // browsers leave it off the rest of a navigation that began at another
    // site; this page's own navigation starts here.
    let mut r = respond(
        StatusCode::OK,
        html::page(
            "Signed in",
            None,
            &format!(
                r#"<meta http-equiv="refresh" content="0;url={next}"><h1>Signed in</h1><p><a id="continue" href="{next}">Continue</a></p>"#,
                next = esc(&p.next)
            ),
        ),
    );
    r.headers_mut().append(header::SET_COOKIE, signed_in);
    if let Some(c) = state_cookie("", 0, tls) {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_the_unpadded_base64url_sha256_of_the_verifier() {
        // Computed independently (Python's hashlib and base64).
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWjNbmx0"),
            "6TeH-e6RDW8d1gSuXKKTj7KoEqiqcQGOMutAwO-YK34"
        );
    }
}
