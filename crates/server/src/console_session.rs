//! Sign-ins of the web console ([`crate::console`]): a random token in an
//! `HttpOnly`, `SameSite=Strict` cookie names a server-side entry holding
//! the principal that signed in and the sign-in's CSRF token.
//!
//! Entries live in memory: a restart signs everyone out (the console asks
//! for the credential again). Where several nodes serve at once they live
//! in the database instead, shared by the nodes; it never holds a token,
//! only its SHA-256.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, header};
use baton_types::{Principal, now_unix_ms};
use sha2::{Digest, Sha256};

/// The cookie's name.
pub const COOKIE: &str = "baton_console";

/// How long a sign-in lasts.
pub const TTL_MS: u64 = 8 * 3600 * 1000;

/// Most sign-ins held at once; the oldest go first beyond it.
const MAX_ENTRIES: usize = 10_000;

/// One signed-in browser.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConsoleSignIn {
    pub who: Principal,
    /// Sent back with every state-changing form.
    pub csrf: String,
    pub expires_unix_ms: u64,
}

/// The console's sign-ins, by the SHA-256 of their cookie token: in
/// memory, or, where several nodes serve at once (`[cluster] ownership =
/// "sessions"`), in the database, so that every node knows every sign-in
/// (and a sign-out through one node holds on all).
#[derive(Debug, Default)]
pub struct ConsoleSessions {
    entries: Mutex<HashMap<[u8; 32], ConsoleSignIn>>,
    shared: Option<baton_store::Store>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 32 random bytes from the OS, hex.
pub fn random_token() -> Result<String, String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl ConsoleSessions {
    /// Sign-ins kept in `store`'s database, shared by the nodes.
    pub fn shared(store: baton_store::Store) -> Self {
        ConsoleSessions {
            entries: Mutex::default(),
            shared: Some(store),
        }
    }

    /// Sign `who` in until `expires_unix_ms`; the cookie token.
    pub async fn open(&self, who: Principal, expires_unix_ms: u64) -> Result<String, String> {
        let token = random_token()?;
        let entry = ConsoleSignIn {
            who,
            csrf: random_token()?,
            expires_unix_ms,
        };
        if let Some(store) = &self.shared {
            let now = now_unix_ms();
            let mut batch = baton_store::Batch::new();
            // Expired sign-ins go as new ones come.
            let all = store
                .console_sign_ins()
                .await
                .map_err(|e| format!("cannot read the console's sign-ins: {e}"))?;
            for (d, record) in &all {
                let expired = serde_json::from_slice::<ConsoleSignIn>(record)
                    .map_or(true, |e| e.expires_unix_ms <= now);
                if expired {
                    batch.delete_console_sign_in(d);
                }
            }
            let record = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
            batch.put_console_sign_in(&digest(&token), record);
            store
                .write(batch)
                .await
                .map_err(|e| format!("cannot record the sign-in: {e}"))?;
            return Ok(token);
        }
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_unix_ms();
        map.retain(|_, e| e.expires_unix_ms > now);
        if map.len() >= MAX_ENTRIES
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.expires_unix_ms)
                .map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(digest(&token), entry);
        Ok(token)
    }

    /// The live sign-in a request's cookie names.
    pub async fn get(&self, headers: &HeaderMap) -> Option<ConsoleSignIn> {
        let token = cookie_token(headers)?;
        let key = digest(token);
        if let Some(store) = &self.shared {
            // Read each time: a sign-out through another node holds here.
            let record = match store.console_sign_in(key).await {
                Ok(r) => r?,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a console sign-in");
                    return None;
                }
            };
            return serde_json::from_slice::<ConsoleSignIn>(&record)
                .ok()
                .filter(|e| e.expires_unix_ms > now_unix_ms());
        }
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(e) if e.expires_unix_ms > now_unix_ms() => Some(e.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Sign the request's browser out.
    pub async fn close(&self, headers: &HeaderMap) {
        let Some(token) = cookie_token(headers) else {
            return;
        };
        let key = digest(token);
        if let Some(store) = &self.shared {
            let mut batch = baton_store::Batch::new();
            batch.delete_console_sign_in(&key);
            if let Err(e) = store.write(batch).await {
                tracing::warn!(error = %e, "cannot drop a console sign-in");
            }
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&key);
    }
}

/// The console cookie's value, from any `cookie` header.
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE)
}

/// The value of the request's cookie `name`, when it has one.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name && !v.is_empty()).then_some(v)
        })
}

/// `[auth.oidc]`: signing in to the console through the identity
/// provider's own login page (OpenID Connect authorization code flow with
/// PKCE). The token it returns is checked by `[auth.jwt]` like any bearer
/// token, so that section is required too.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// Shown on the sign-in button ("Sign in with …").
    #[serde(default = "default_oidc_name")]
    pub name: String,
    /// The provider's OpenID configuration document
    /// (`<issuer>/.well-known/openid-configuration`), read at start: the
    /// endpoints below that are not set come from it, and its `issuer`
    /// must be `[auth.jwt] issuer`.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// The provider's authorization endpoint (the browser is sent there).
    #[serde(default)]
    pub authorization_endpoint: String,
    /// The provider's token endpoint (Baton exchanges the code there).
    #[serde(default)]
    pub token_endpoint: String,
    pub client_id: String,
    /// The environment variable holding the client secret, for a
    /// confidential client; none for a public client (PKCE alone).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// This server's `/ui/oidc/callback` as browsers reach it, registered
    /// with the provider (e.g. `https://baton.example.com/ui/oidc/callback`).
    pub redirect_uri: String,
    /// Scopes asked for (default `openid`).
    #[serde(default = "default_oidc_scopes")]
    pub scopes: String,
    /// Which token of the provider's answer signs in: `id_token` (default;
    /// its `nonce` must be the one sent) or `access_token`.
    #[serde(default = "default_oidc_token")]
    pub token: String,
}

fn default_oidc_name() -> String {
    "the identity provider".into()
}
fn default_oidc_scopes() -> String {
    "openid".into()
}
fn default_oidc_token() -> String {
    "id_token".into()
}

/// Largest answer read from the identity provider (its OpenID
/// configuration, its token endpoint).
pub(crate) const MAX_PROVIDER_ANSWER: usize = 1 << 20;

/// `resp`'s body, refused past `max` bytes; the error says what happened to
/// "the answer" (`broke off: …`, `is larger than … MiB`).
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("broke off: {}", e.without_url()))?
    {
        if bytes.len() + chunk.len() > max {
            return Err(format!("is larger than {} MiB", max >> 20));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

impl OidcSettings {
    /// Fill the endpoints not configured from `discovery_url`'s document,
    /// whose `issuer` must be `issuer` (`[auth.jwt] issuer`). Nothing to do
    /// without a `discovery_url`.
    pub async fn discover(&mut self, issuer: &str) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Document {
            issuer: String,
            authorization_endpoint: String,
            token_endpoint: String,
        }
        let Some(url) = self.discovery_url.clone() else {
            return Ok(());
        };
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!(
                "auth.oidc.discovery_url: {url:?} is not an http(s) URL"
            ));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| format!("auth.oidc.discovery_url: no HTTP client: {e}"))?;
        let shown = baton_types::redact_url(&url);
        let fail = |why: String| format!("auth.oidc.discovery_url: {shown}: {why}");
        let resp = http
            .get(&url)
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(format!("cannot be read: {}", e.without_url())))?;
        if !resp.status().is_success() {
            return Err(fail(format!("answered {}", resp.status())));
        }
        let bytes = read_capped(resp, MAX_PROVIDER_ANSWER)
            .await
            .map_err(|why| fail(format!("the answer {why}")))?;
        let doc: Document = serde_json::from_slice(&bytes).map_err(|e| {
            fail(format!(
                "not an OpenID configuration (issuer, authorization_endpoint, token_endpoint): {e}"
            ))
        })?;
        if doc.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(fail(format!(
                "its issuer {:?} is not [auth.jwt] issuer {issuer:?}",
                doc.issuer
            )));
        }
        if self.authorization_endpoint.is_empty() {
            self.authorization_endpoint = doc.authorization_endpoint;
        }
        if self.token_endpoint.is_empty() {
            self.token_endpoint = doc.token_endpoint;
        }
        Ok(())
    }

    /// The settings' errors, naming the field (`auth.oidc.<field>`).
    pub fn check(&self, has_jwt: bool) -> Result<(), String> {
        if !has_jwt {
            return Err(
                "auth.oidc: needs [auth.jwt] (issuer, audience, keys), which checks the token the provider returns"
                    .into(),
            );
        }
        for (field, url) in [
            ("authorization_endpoint", &self.authorization_endpoint),
            ("token_endpoint", &self.token_endpoint),
            ("redirect_uri", &self.redirect_uri),
        ] {
            if url.is_empty() {
                return Err(if field == "redirect_uri" {
                    format!("auth.oidc.{field}: required")
                } else {
                    format!("auth.oidc.{field}: required (or set auth.oidc.discovery_url)")
                });
            }
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("auth.oidc.{field}: {url:?} is not an http(s) URL"));
            }
        }
        if !self.redirect_uri.ends_with("/ui/oidc/callback") {
            return Err(format!(
                "auth.oidc.redirect_uri: {:?} must be this server's /ui/oidc/callback",
                self.redirect_uri
            ));
        }
        if self.client_id.is_empty() {
            return Err("auth.oidc.client_id: required".into());
        }
        if self.token != "id_token" && self.token != "access_token" {
            return Err(format!(
                "auth.oidc.token: {:?} is not id_token or access_token",
                self.token
            ));
        }
        if let Some(var) = &self.client_secret_env
            && std::env::var(var).is_err()
        {
            return Err(format!(
                "auth.oidc.client_secret_env: the environment variable {var} is not set"
            ));
        }
        Ok(())
    }
}

/// Whether a request's `Origin` (when sent) is the server it reached
/// (its `Host`): browsers send `Origin` with every form post, so a page of
/// another site cannot post to the console even with the cookie.
pub fn same_origin(headers: &HeaderMap) -> bool {
    // A browser says where a request comes from (Fetch Metadata) even
    // where it sends no Origin: only this origin, or the user typing.
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.to_str().ok().and_then(|o| o.split_once("://")), host) {
        (Some((_, o)), Some(h)) => o.eq_ignore_ascii_case(h),
        _ => false,
    }
}

/// `s` escaped for a URL query value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn found_until_expired_or_closed(s: &ConsoleSessions) {
        let who = Principal::local();
        let token = s.open(who.clone(), now_unix_ms() + 60_000).await.unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={token}; c=d").parse().unwrap(),
        );
        let got = s.get(&h).await.unwrap();
        assert_eq!(got.who, who);
        assert_eq!(got.csrf.len(), 64);
        let mut wrong = HeaderMap::new();
        wrong.insert(
            header::COOKIE,
            format!("{COOKIE}=00{token}").parse().unwrap(),
        );
        assert!(s.get(&wrong).await.is_none());
        s.close(&h).await;
        assert!(s.get(&h).await.is_none());
        let old = s.open(who, now_unix_ms().saturating_sub(1)).await.unwrap();
        h.insert(header::COOKIE, format!("{COOKIE}={old}").parse().unwrap());
        assert!(s.get(&h).await.is_none(), "expired");
    }

    #[tokio::test]
    async fn a_sign_in_is_found_by_its_cookie_only_until_it_expires_or_closes() {
        found_until_expired_or_closed(&ConsoleSessions::default()).await;
    }

    /// Kept in a store (as nodes owning sessions keep them): the same,
    /// seen through a second handle on that store; the store holds the
    /// token's digest only, and an expired sign-in goes with the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_sign_in_is_found_through_any_handle_of_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let opts = baton_store::StoreOptions::new(dir.path(), baton_store::Durability::Sync);
        let store = tokio::task::spawn_blocking(move || baton_store::Store::open(opts))
            .await
            .unwrap()
            .unwrap();
        let (a, b) = (
            ConsoleSessions::shared(store.clone()),
            ConsoleSessions::shared(store.clone()),
        );
        found_until_expired_or_closed(&a).await;
        let token = a
            .open(Principal::local(), now_unix_ms() + 60_000)
            .await
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("{COOKIE}={token}").parse().unwrap());
        assert!(b.get(&h).await.is_some(), "seen by the other handle");
        let all = store.console_sign_ins().await.unwrap();
        assert_eq!(all.len(), 1, "the expired one went");
        assert_eq!(all[0].0, digest(&token));
        assert!(!String::from_utf8_lossy(&all[0].1).contains(&token));
        b.close(&h).await;
        assert!(a.get(&h).await.is_none(), "signed out through the other");
    }

    #[test]
    fn only_this_servers_origin_may_post() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&h), "no Origin: not a cross-site browser post");
        h.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&h));
        for o in ["http://evil.example", "null", "http://127.0.0.1:8081"] {
            h.insert(header::ORIGIN, o.parse().unwrap());
            assert!(!same_origin(&h), "{o}");
        }
        // No Origin, but the browser says it came from another site.
        h.remove(header::ORIGIN);
        for (site, ok) in [
            ("cross-site", false),
            ("same-site", false),
            ("same-origin", true),
            ("none", true),
        ] {
            h.insert("sec-fetch-site", site.parse().unwrap());
            assert_eq!(same_origin(&h), ok, "{site}");
        }
        assert_eq!(query_escape("/ui/gates?a=b&c"), "/ui/gates%3Fa%3Db%26c");
    }

    #[test]
    fn oidc_settings_are_checked_by_field() {
        let ok: OidcSettings = serde_json::from_value(serde_json::json!({
            "authorization_endpoint": "https://idp/authorize",
            "token_endpoint": "https://idp/token",
            "client_id": "c",
            "redirect_uri": "https://baton/ui/oidc/callback",
        }))
        .unwrap();
        assert_eq!(ok.check(true), Ok(()));
        assert!(ok.check(false).unwrap_err().contains("[auth.jwt]"));
        let mut bad = ok.clone();
        bad.redirect_uri = "https://baton/elsewhere".into();
        assert!(
            bad.check(true)
                .unwrap_err()
                .starts_with("auth.oidc.redirect_uri")
        );
        let mut bad = ok.clone();
        bad.token_endpoint = "ftp://idp".into();
        assert!(
            bad.check(true)
                .unwrap_err()
                .starts_with("auth.oidc.token_endpoint")
        );
        let mut bad = ok.clone();
        bad.token = "refresh_token".into();
        assert!(bad.check(true).unwrap_err().starts_with("auth.oidc.token"));
        let mut bad = ok;
        bad.client_secret_env = Some("BATON_TEST_SURELY_UNSET_VARIABLE".into());
        assert!(bad.check(true).unwrap_err().contains("is not set"));
    }

    #[tokio::test]
    async fn discovery_fills_the_endpoints_not_configured_and_checks_the_issuer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let doc = serde_json::json!({
            "issuer": "https://idp.example/",
            "authorization_endpoint": "https://idp.example/authorize",
            "token_endpoint": "https://idp.example/token",
        });
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(doc) }),
            )
            .route(
                "/not-json",
                axum::routing::get(|| async { "<html>login</html>" }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut o: OidcSettings = serde_json::from_value(serde_json::json!({
            "discovery_url": format!("{base}/.well-known/openid-configuration"),
            "authorization_endpoint": "https://idp.example/custom-authorize",
            "client_id": "c",
            "redirect_uri": "https://baton/ui/oidc/callback",
        }))
        .unwrap();
        assert!(
            o.check(true)
                .unwrap_err()
                .contains("token_endpoint: required")
        );
        let configured = o.clone();
        o.discover("https://idp.example").await.unwrap();
        assert_eq!(o.token_endpoint, "https://idp.example/token");
        assert_eq!(
            o.authorization_endpoint,
            "https://idp.example/custom-authorize"
        );
        assert_eq!(o.check(true), Ok(()));
        // Another provider's document is refused, naming both issuers.
        let mut other = configured.clone();
        let e = other
            .discover("https://elsewhere.example")
            .await
            .unwrap_err();
        assert!(e.contains("is not [auth.jwt] issuer"), "{e}");
        // So is what is not a configuration document, or nothing at all.
        let mut page = configured.clone();
        page.discovery_url = Some(format!("{base}/not-json"));
        let e = page.discover("https://idp.example").await.unwrap_err();
        assert!(e.contains("not an OpenID configuration"), "{e}");
        let mut missing = configured;
        missing.discovery_url = Some(format!("{base}/nothing-here"));
        let e = missing.discover("https://idp.example").await.unwrap_err();
        assert!(e.contains("answered 404"), "{e}");
    }
}
