//! The web console at `/ui`: the reviewers' gate queue and the operators'
//! session timelines, server-rendered HTML with one small script for live
//! updates, all embedded in the binary (docs/console.md).
//!
//! Every page goes through [`crate::auth::http_auth`] like any other route
//! (roles from [`crate::auth::HTTP_ACCESS`]); its credential is the
//! sign-in cookie ([`crate::console_session`]) made by `POST /ui/login`
//! from an API key or an identity provider's token. A state-changing form
//! carries the sign-in's CSRF token and must come from this origin. Text
//! reaches a page only through [`html::esc`], and the content policy runs
//! no script but the console's own.

mod audit;
mod gates;
mod html;
mod oidc;
mod routes;
mod runs;
mod sessions;

pub use audit::ConsoleAudit;
pub use oidc::ConsoleOidc;

use axum::extract::{Extension, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use baton_runtime::RuntimeHandle;
use baton_types::{AccessRole, Principal, now_unix_ms};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::auth::Authenticator;
use crate::console_session::{COOKIE, ConsoleSignIn, TTL_MS, same_origin};
use html::{esc, respond, see_other};

/// Whether the console's cookie is marked `Secure` (HTTP served over TLS).
#[derive(Debug, Clone, Copy)]
pub struct ConsoleTls(pub bool);

/// The console's routes (mounted by [`crate::http::router`], under its
/// authentication layer).
pub fn routes() -> Router<RuntimeHandle> {
    Router::new()
        .route("/ui", get(home))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/oidc/start", get(oidc::start))
        .route("/ui/oidc/callback", get(oidc::callback))
        .route("/ui/gates", get(gates::queue))
        .route("/ui/gates/events", get(gates::events))
        .route("/ui/gates/{id}", get(gates::show).post(gates::decide))
        .route("/ui/sessions", get(sessions::list))
        .route("/ui/sessions/{id}", get(sessions::show))
        .route("/ui/sessions/{id}/fork", post(sessions::fork))
        .route("/ui/sessions/{id}/replay", post(sessions::replay))
        .route("/ui/runs", get(runs::list))
        .route("/ui/runs/{id}", get(runs::show))
        .route("/ui/runs/{id}/replay", post(runs::replay))
        .route("/ui/routes", get(routes::page))
        .route("/ui/audit", get(audit::page))
        .route("/ui/audit/verify", post(audit::verify))
        .route("/ui/audit/export", get(audit::export))
}

/// Whether a posted form's CSRF token is the sign-in's.
pub(crate) fn csrf_ok(sign_in: &ConsoleSignIn, sent: &str) -> bool {
    sign_in.csrf.as_bytes().ct_eq(sent.as_bytes()).into()
}

/// The page for a refused form post (403).
pub(crate) fn bad_csrf() -> Response {
    respond(
        StatusCode::FORBIDDEN,
        html::page(
            "Refused",
            None,
            &html::alert(
                "this form is stale or did not come from the console (CSRF token mismatch): reload the page and try again",
            ),
        ),
    )
}

/// A runtime error as a page status and message.
pub(crate) fn error_status(e: &baton_runtime::Error) -> StatusCode {
    crate::status::http_status(e.code())
}

async fn home() -> Response {
    see_other("/ui/gates")
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.css" => (include_str!("app.css"), "text/css; charset=utf-8"),
        "app.js" => (include_str!("app.js"), "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    html::secure_headers(r.headers_mut());
    r
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct NextQuery {
    next: String,
}

/// Where to go after signing in: a console page, never another site.
pub(crate) fn next_page(next: &str) -> &str {
    if next.starts_with("/ui/") && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/ui/gates"
    }
}

pub(crate) fn login_page(auth: &Authenticator, next: &str, error: Option<&str>) -> String {
    let provider = match auth.oidc() {
        Some(o) => format!(
            r#"<p><a class="button" id="oidc" href="/ui/oidc/start?next={}">Sign in with {}</a></p><p>Or with a key or token:</p>"#,
            esc(&crate::console_session::query_escape(next_page(next))),
            esc(&o.name)
        ),
        None => String::new(),
    };
    let note = if auth.enabled() {
        "Sign in with a Baton API key (<code>bk_…</code>) holding the reviewer, operator or admin role, or with a token from the configured identity provider."
    } else {
        "Authentication is off on this server (loopback only): you sign in as the local admin, no credential needed."
    };
    html::page(
        "Sign in",
        None,
        &format!(
            r#"<h1>Sign in</h1>{}{provider}<p>{note}</p><form method="post" action="/ui/login" class="stack"><input type="hidden" name="next" value="{}"><label for="credential">API key or token</label><input id="credential" name="credential" type="password" autocomplete="off" {}><button type="submit">Sign in</button></form>"#,
            error.map(html::alert).unwrap_or_default(),
            esc(next_page(next)),
            if auth.enabled() { "required" } else { "" },
        ),
    )
}

async fn login_form(
    Extension(auth): Extension<Authenticator>,
    Query(q): Query<NextQuery>,
    headers: HeaderMap,
) -> Response {
    if auth.console().get(&headers).await.is_some() {
        return see_other(next_page(&q.next));
    }
    respond(StatusCode::OK, login_page(&auth, &q.next, None))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LoginForm {
    credential: String,
    next: String,
}

/// The claims of a JWT (its signature checked elsewhere).
pub(crate) fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `exp` of a JWT (already verified), in Unix milliseconds.
pub(crate) fn jwt_expiry_ms(token: &str) -> Option<u64> {
    jwt_claims(token)?
        .get("exp")?
        .as_u64()
        .map(|s| s.saturating_mul(1000))
}

/// Roles that have a page in the console.
fn has_console_role(who: &Principal) -> bool {
    [AccessRole::Reviewer, AccessRole::Operator]
        .iter()
        .any(|r| who.has(*r))
}

async fn login(
    Extension(auth): Extension<Authenticator>,
    Extension(tls): Extension<ConsoleTls>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let fail =
        |status: StatusCode, m: &str| respond(status, login_page(&auth, &form.next, Some(m)));
    if !same_origin(&headers) {
        return fail(
            StatusCode::FORBIDDEN,
            "cross-origin sign-in refused: the Origin header is not this server",
        );
    }
    let credential = form.credential.trim();
    let mut expires = now_unix_ms() + TTL_MS;
    let who = if auth.enabled() {
        if credential.is_empty() {
            return fail(StatusCode::UNAUTHORIZED, "enter an API key or token");
        }
        let mut h = HeaderMap::new();
        let Ok(v) = HeaderValue::from_str(&format!("Bearer {credential}")) else {
            return fail(
                StatusCode::UNAUTHORIZED,
                "the credential holds characters no key or token has",
            );
        };
        h.insert(header::AUTHORIZATION, v);
        match auth.authenticate(&h, None).await {
            Ok(who) => {
                if who.via == baton_types::AuthMethod::Jwt
                    && let Some(exp) = jwt_expiry_ms(credential)
                {
                    expires = expires.min(exp);
                }
                who
            }
            Err(d) => return fail(StatusCode::UNAUTHORIZED, d.status().message()),
        }
    } else {
        Principal::local()
    };
    let cookie = match open_sign_in(&auth, tls, who, expires).await {
        Ok(c) => c,
        Err((status, m)) => return fail(status, &m),
    };
    let mut r = see_other(next_page(&form.next));
    r.headers_mut().insert(header::SET_COOKIE, cookie);
    r
}

/// Sign `who` in until `expires` (when it holds a console role): the
/// `Set-Cookie` value of the sign-in.
pub(crate) async fn open_sign_in(
    auth: &Authenticator,
    tls: ConsoleTls,
    who: Principal,
    expires: u64,
) -> Result<HeaderValue, (StatusCode, String)> {
    if !has_console_role(&who) {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "{} holds no console role: the console is for reviewers, operators and admins",
                who.label()
            ),
        ));
    }
    let token = auth
        .console()
        .open(who, expires)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))?;
    let max_age = expires.saturating_sub(now_unix_ms()) / 1000;
    let cookie = format!(
        "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if tls.0 { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CsrfForm {
    pub(crate) csrf: String,
}

async fn logout(
    Extension(auth): Extension<Authenticator>,
    Extension(tls): Extension<ConsoleTls>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(sign_in) = auth.console().get(&headers).await else {
        return see_other("/ui/login");
    };
    if !same_origin(&headers) || !csrf_ok(&sign_in, &form.csrf) {
        return bad_csrf();
    }
    auth.console().close(&headers).await;
    let mut r = see_other("/ui/login");
    let cookie = format!(
        "{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if tls.0 { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_returns_only_to_console_pages() {
        assert_eq!(next_page("/ui/gates/g_1"), "/ui/gates/g_1");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/ui\\..",
            "",
            "/metrics",
        ] {
            assert_eq!(next_page(bad), "/ui/gates", "{bad}");
        }
    }

    #[test]
    fn a_jwt_expiry_is_read_from_its_claims() {
        use base64::Engine as _;
        let claims =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":1700000000}"#);
        assert_eq!(
            jwt_expiry_ms(&format!("h.{claims}.s")),
            Some(1_700_000_000_000)
        );
        assert_eq!(jwt_expiry_ms("not a jwt"), None);
    }
}
