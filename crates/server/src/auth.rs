//! Who may call, checked in one place.
//!
//! [`GRPC_ACCESS`] and [`HTTP_ACCESS`] declare what every RPC and every
//! HTTP route requires; [`GrpcAuthLayer`] (around every gRPC service) and
//! [`http_auth`] (around every HTTP route) authenticate the caller, check
//! that requirement, and hand the handler the [`Principal`], which acts
//! through a [`baton_runtime::Caller`] (tenant isolation, ceilings, and the
//! principal recorded in the journal and the audit trail). A method or
//! route without an entry is refused, so a new RPC cannot be reached
//! before its requirement is declared (and a test fails until it is).
//!
//! Credentials: `authorization: Bearer <token>`, where the token is a Baton
//! API key (`bk_...`) or a JWT from the configured identity provider; or a
//! client certificate (mutual TLS on gRPC). With `[auth] enabled = false`
//! (the default), which `baton serve` allows only on loopback addresses,
//! every caller is the local admin ([`Principal::local`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use baton_runtime::RuntimeHandle;
use baton_types::{AccessRole, AuthMethod, Principal};
use http::{HeaderMap, Method, StatusCode, header};
use serde::Deserialize;

/// `[auth]`: who may call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Require credentials on every call but the public ones (health,
    /// reflection). Off by default: a server on loopback stays zero-config.
    pub enabled: bool,
    /// Serve without authentication on a non-loopback address. Refused
    /// unless set (or `baton serve --allow-unauthenticated`): anyone who
    /// reaches the port would control everything.
    pub allow_unauthenticated_remote: bool,
    /// JWT bearer tokens from an external identity provider (`[auth.jwt]`).
    pub jwt: Option<baton_auth::jwt::JwtSettings>,
    /// Console sign-in through the identity provider's login page
    /// (`[auth.oidc]`; needs `[auth.jwt]`).
    pub oidc: Option<crate::console_session::OidcSettings>,
    /// Principals of client certificates (mutual TLS on gRPC, with
    /// `server.tls.client_ca_file`), by subject common name
    /// (`[[auth.mtls_clients]]`: `subject`, `tenant`, `roles`, `groups`).
    pub mtls_clients: Vec<baton_auth::tls::CertClient>,
    /// Most calls (streams included) one principal may hold open at once,
    /// over every connection and both servers (0: no cap).
    pub max_calls_per_principal: usize,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            enabled: false,
            allow_unauthenticated_remote: false,
            jwt: None,
            oidc: None,
            mtls_clients: Vec::new(),
            max_calls_per_principal: 256,
        }
    }
}

/// What a call requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health checks, reflection.
    Anyone,
    /// An authenticated principal holding one of these roles (admins hold
    /// every role).
    AnyOf(&'static [AccessRole]),
}

use AccessRole::{Admin, Client, Operator, Reviewer};

const CLIENT: Need = Need::AnyOf(&[Client]);
const CLIENT_OR_OPERATOR: Need = Need::AnyOf(&[Client, Operator]);
const REVIEWER: Need = Need::AnyOf(&[Reviewer]);
const REVIEWER_OR_OPERATOR: Need = Need::AnyOf(&[Reviewer, Operator]);
const OPERATOR: Need = Need::AnyOf(&[Operator]);
const ADMIN: Need = Need::AnyOf(&[Admin]);

/// Every gRPC method and what it requires. What a role may see within
/// its tenant is the [`baton_runtime::Caller`]'s business.
pub const GRPC_ACCESS: &[(&str, Need)] = &[
    ("/baton.v1.Sessions/StartSession", CLIENT),
    ("/baton.v1.Sessions/SendMessage", CLIENT),
    ("/baton.v1.Sessions/ResumeSession", CLIENT_OR_OPERATOR),
    ("/baton.v1.Sessions/GetSession", CLIENT_OR_OPERATOR),
    ("/baton.v1.Sessions/ListSessions", CLIENT_OR_OPERATOR),
    ("/baton.v1.Sessions/CancelTurn", CLIENT_OR_OPERATOR),
    ("/baton.v1.Sessions/DeleteSession", CLIENT_OR_OPERATOR),
    ("/baton.v1.Sessions/SubmitToolResult", CLIENT),
    ("/baton.v1.Gates/ListGates", REVIEWER_OR_OPERATOR),
    ("/baton.v1.Gates/GetGate", REVIEWER_OR_OPERATOR),
    ("/baton.v1.Gates/DecideGate", REVIEWER),
    ("/baton.v1.Gates/WatchGates", REVIEWER_OR_OPERATOR),
    // The actor tree spans every tenant.
    ("/baton.v1.Inspect/ListActors", ADMIN),
    ("/baton.v1.Inspect/GetSessionState", OPERATOR),
    ("/baton.v1.Inspect/GetJournal", OPERATOR),
    ("/baton.v1.Inspect/GetStateAt", OPERATOR),
    ("/baton.v1.Inspect/ForkSession", OPERATOR),
    ("/baton.v1.Inspect/ReplaySession", OPERATOR),
    ("/baton.v1.Inspect/Backup", ADMIN),
    ("/baton.v1.Inspect/EraseSubject", ADMIN),
    ("/baton.v1.Flows/ListFlows", CLIENT_OR_OPERATOR),
    ("/baton.v1.Flows/StartRun", CLIENT),
    ("/baton.v1.Flows/GetRun", CLIENT_OR_OPERATOR),
    ("/baton.v1.Flows/ListRuns", CLIENT_OR_OPERATOR),
    ("/baton.v1.Flows/WatchRun", CLIENT_OR_OPERATOR),
    ("/baton.v1.Flows/CancelRun", CLIENT_OR_OPERATOR),
    ("/baton.v1.Flows/SignalRun", CLIENT_OR_OPERATOR),
    ("/baton.v1.Flows/ResolveRun", OPERATOR),
    ("/baton.v1.Flows/ReloadFlows", ADMIN),
    ("/baton.v1.Flows/ReplayRun", CLIENT_OR_OPERATOR),
    ("/baton.v1.Admin/CreateKey", ADMIN),
    ("/baton.v1.Admin/ListKeys", ADMIN),
    ("/baton.v1.Admin/RevokeKey", ADMIN),
    ("/baton.v1.Admin/RotateKey", ADMIN),
    ("/grpc.health.v1.Health/Check", Need::Anyone),
    ("/grpc.health.v1.Health/Watch", Need::Anyone),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Need::Anyone,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Need::Anyone,
    ),
];

/// Every HTTP route (method, path as routed) and what it requires.
pub const HTTP_ACCESS: &[(&str, &str, Need)] = &[
    ("GET", "/healthz", Need::Anyone),
    // Usage and cost of every tenant.
    ("GET", "/metrics", OPERATOR),
    ("POST", "/v1/chat/completions", CLIENT),
    ("POST", "/v1/embeddings", CLIENT),
    ("POST", "/v1/responses", CLIENT),
    ("GET", "/v1/models", CLIENT),
    ("GET", "/v1/models/{model}", CLIENT),
    // Checked by the delivery's HMAC signature instead (docs/flows.md).
    ("POST", "/hooks/{name}", Need::Anyone),
    // The web console: its pages take the sign-in cookie as credential
    // (docs/console.md); signing in and out, the redirect to the first
    // page and the static assets need none.
    ("GET", "/ui", Need::Anyone),
    ("GET", "/ui/assets/{file}", Need::Anyone),
    ("GET", "/ui/login", Need::Anyone),
    ("POST", "/ui/login", Need::Anyone),
    ("POST", "/ui/logout", Need::Anyone),
    ("GET", "/ui/oidc/start", Need::Anyone),
    ("GET", "/ui/oidc/callback", Need::Anyone),
    ("GET", "/ui/gates", REVIEWER_OR_OPERATOR),
    ("GET", "/ui/gates/events", REVIEWER_OR_OPERATOR),
    ("GET", "/ui/gates/{id}", REVIEWER_OR_OPERATOR),
    ("POST", "/ui/gates/{id}", REVIEWER),
    ("GET", "/ui/sessions", OPERATOR),
    ("GET", "/ui/sessions/{id}", OPERATOR),
    ("POST", "/ui/sessions/{id}/fork", OPERATOR),
    ("POST", "/ui/sessions/{id}/replay", OPERATOR),
    ("GET", "/ui/runs", OPERATOR),
    ("GET", "/ui/runs/{id}", OPERATOR),
    ("POST", "/ui/runs/{id}/replay", OPERATOR),
    ("GET", "/ui/routes", OPERATOR),
    ("GET", "/ui/audit", OPERATOR),
    ("POST", "/ui/audit/verify", OPERATOR),
    ("GET", "/ui/audit/export", OPERATOR),
];

/// The requirement of a gRPC method path (`/package.Service/Method`).
pub fn grpc_need(path: &str) -> Option<Need> {
    GRPC_ACCESS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, n)| *n)
}

/// The requirement of an HTTP route.
pub fn http_need(method: &Method, route: &str) -> Option<Need> {
    HTTP_ACCESS
        .iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == route)
        .map(|(_, _, n)| *n)
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No valid credentials (UNAUTHENTICATED / 401).
    Unauthenticated(String),
    /// Valid credentials, not enough (PERMISSION_DENIED / 403).
    Forbidden(String),
    /// Credentials that cannot be checked right now (UNAVAILABLE / 503).
    Unavailable(String),
    /// Over a rate limit (RESOURCE_EXHAUSTED / 429), with the seconds to
    /// wait (`retry-after`).
    Limited(String, u64),
}

impl Denied {
    pub fn status(&self) -> tonic::Status {
        match self {
            Denied::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
            Denied::Forbidden(m) => tonic::Status::permission_denied(m.clone()),
            Denied::Unavailable(m) => tonic::Status::unavailable(m.clone()),
            Denied::Limited(m, secs) => {
                let mut s = tonic::Status::resource_exhausted(format!("{m}; retry after {secs} s"));
                if let Ok(v) = secs.to_string().parse() {
                    s.metadata_mut().insert("retry-after", v);
                }
                s
            }
        }
    }

    fn http(&self) -> Response {
        let (status, kind, code, message) = match self {
            Denied::Unauthenticated(m) => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                m,
            ),
            Denied::Forbidden(m) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "permission_denied",
                m,
            ),
            Denied::Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "unavailable",
                m,
            ),
            Denied::Limited(m, secs) => {
                return crate::openai::ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!("{m}; retry after {secs} s"),
                )
                .code("rate_limit_exceeded")
                .retry_after(*secs)
                .into_response();
            }
        };
        let mut r = crate::openai::ApiError::new(status, kind, message.clone())
            .code(code)
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// Authenticates callers: API keys (from the runtime's key records), JWTs
/// (the configured identity provider), client certificates.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: RuntimeHandle,
    inflight: Arc<crate::inflight::InFlight>,
    /// Most calls one principal may hold open (0: no cap).
    max_calls: usize,
    limiter: crate::ratelimit::Limiter,
    enabled: bool,
    jwt: Option<baton_auth::jwt::JwtVerifier>,
    certs: Vec<baton_auth::tls::CertClient>,
    /// The web console's sign-ins (its routes' credential).
    console: crate::console_session::ConsoleSessions,
    /// `[auth.oidc]`, when the console signs in through the provider.
    oidc: Option<crate::console_session::OidcSettings>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("enabled", &self.inner.enabled)
            .finish()
    }
}

impl Authenticator {
    /// From `[auth]` (loads the JWKS when JWTs are configured).
    pub async fn new(runtime: RuntimeHandle, section: &AuthSection) -> Result<Self, String> {
        let oidc = match &section.oidc {
            Some(o) if section.enabled => {
                let mut o = o.clone();
                if let Some(jwt) = &section.jwt {
                    o.discover(&jwt.issuer).await?;
                }
                o.check(section.jwt.is_some())?;
                Some(o)
            }
            _ => None,
        };
        let jwt = match &section.jwt {
            Some(s) if section.enabled => Some(
                baton_auth::jwt::JwtVerifier::new(s.clone())
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        // Nodes owning sessions one by one forward console requests to
        // each other: every node knows every sign-in.
        let console = if runtime.store().claims() {
            crate::console_session::ConsoleSessions::shared(runtime.store().clone())
        } else {
            Default::default()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                limiter: Default::default(),
                inflight: Default::default(),
                // Without authentication every caller is one principal.
                max_calls: if section.enabled {
                    section.max_calls_per_principal
                } else {
                    0
                },
                runtime,
                enabled: section.enabled,
                jwt,
                certs: section.mtls_clients.clone(),
                // Nodes owning sessions one by one forward console
                // requests to each other: every node knows every sign-in.
                console,
                oidc,
            }),
        })
    }

    /// No authentication: every caller is the local admin (loopback only).
    pub fn disabled(runtime: RuntimeHandle) -> Self {
        Self {
            inner: Arc::new(Inner {
                limiter: Default::default(),
                inflight: Default::default(),
                max_calls: 0,
                runtime,
                enabled: false,
                jwt: None,
                certs: Vec::new(),
                console: Default::default(),
                oidc: None,
            }),
        }
    }

    /// Whether credentials are required.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// The web console's sign-ins.
    pub fn console(&self) -> &crate::console_session::ConsoleSessions {
        &self.inner.console
    }

    /// `[auth.oidc]`, when the console signs in through the provider.
    pub fn oidc(&self) -> Option<&crate::console_session::OidcSettings> {
        self.inner.oidc.as_ref()
    }

    /// Whether a principal authenticated earlier (a console sign-in) may
    /// still act: its API key not revoked or expired since.
    pub fn still_valid(&self, who: &Principal) -> Result<(), Denied> {
        if who.via != AuthMethod::ApiKey {
            return Ok(());
        }
        let record =
            self.inner.runtime.api_key(&who.id).ok_or_else(|| {
                Denied::Unauthenticated(format!("API key {} was revoked", who.id))
            })?;
        record
            .usable_at(baton_types::now_unix_ms())
            .map_err(Denied::Unauthenticated)
    }

    /// Who calls, from the `authorization` header or the client certificate.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer_cert: Option<&[u8]>,
    ) -> Result<Principal, Denied> {
        if !self.inner.enabled {
            return Ok(Principal::local());
        }
        // A call another node forwarded (nodes owning sessions one by
        // one, mutual TLS): its caller's certificate, checked by that
        // node's TLS, taken only from a node (its own certificate).
        if let Some(v) = headers.get(crate::owner::CLIENT_CERT) {
            if !peer_cert.is_some_and(crate::owner::is_peer) {
                return Err(Denied::Unauthenticated(format!(
                    "{} is taken only from another Baton node (cluster.peer_cert_file)",
                    crate::owner::CLIENT_CERT
                )));
            }
            use base64::Engine as _;
            // Binary metadata travels as base64, padded or not.
            let text = v.as_bytes().trim_ascii();
            let unpadded = text
                .strip_suffix(b"==")
                .or(text.strip_suffix(b"="))
                .unwrap_or(text);
            let der = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(unpadded)
                .map_err(|_| {
                    Denied::Unauthenticated(format!("{}: not base64", crate::owner::CLIENT_CERT))
                })?;
            return baton_auth::tls::principal_from_cert(&der, &self.inner.certs).map_err(denied);
        }
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| {
                Denied::Unauthenticated("the authorization header is not valid text".into())
            })?;
            let token = baton_auth::keys::bearer(value)
                .map_err(|e| Denied::Unauthenticated(e.to_string()))?;
            return match baton_auth::keys::classify(token)
                .map_err(|e| Denied::Unauthenticated(e.to_string()))?
            {
                baton_auth::keys::Credential::ApiKey(key) => self.api_key(&key),
                baton_auth::keys::Credential::Jwt(jwt) => match &self.inner.jwt {
                    Some(v) => v.verify(jwt).await.map_err(denied),
                    None => Err(Denied::Unauthenticated(
                        "a JWT was sent, but this server accepts none (no [auth.jwt] configured)"
                            .into(),
                    )),
                },
            };
        }
        if let Some(der) = peer_cert
            && !self.inner.certs.is_empty()
        {
            return baton_auth::tls::principal_from_cert(der, &self.inner.certs).map_err(denied);
        }
        Err(Denied::Unauthenticated(
            "no credentials: send `authorization: Bearer <API key or JWT>`".into(),
        ))
    }

    fn api_key(&self, key: &baton_auth::keys::PresentedKey) -> Result<Principal, Denied> {
        let unknown = || Denied::Unauthenticated(format!("API key {} is not valid", key.id));
        let record = self.inner.runtime.api_key(&key.id).ok_or_else(unknown)?;
        let stored = hex_decode(&record.hash).ok_or_else(unknown)?;
        if !baton_auth::keys::hash_matches(&stored, &key.hash) {
            return Err(unknown());
        }
        record
            .usable_at(baton_types::now_unix_ms())
            .map_err(Denied::Unauthenticated)?;
        Ok(Principal {
            via: AuthMethod::ApiKey,
            id: record.id,
            tenant: record.tenant,
            roles: record.roles,
            groups: record.groups,
        })
    }

    /// Everything a call that needs `need` goes through, in order: who
    /// calls, whether its roles suffice, its rate limits, and its count of
    /// open calls (held until the returned guard drops). The one sequence
    /// both servers run.
    pub async fn authorize(
        &self,
        need: Need,
        headers: &HeaderMap,
        peer_cert: Option<&[u8]>,
    ) -> Result<(Principal, crate::inflight::CallGuard), Denied> {
        let who = self.authenticate(headers, peer_cert).await?;
        Self::check(need, &who)?;
        self.admit(&who)?;
        let guard = self.open_call(&who)?;
        Ok((who, guard))
    }

    /// Admit one call of `who` under its tenant's rate limits.
    pub fn admit(&self, who: &Principal) -> Result<(), Denied> {
        self.inner
            .limiter
            .admit(&self.inner.runtime, who)
            .map_err(|(msg, wait)| Denied::Limited(msg, crate::ratelimit::retry_after_secs(wait)))
    }

    /// Count one open call of `who` (until the guard drops).
    pub fn open_call(&self, who: &Principal) -> Result<crate::inflight::CallGuard, Denied> {
        let label = who.label();
        self.inner
            .inflight
            .admit(&label, self.inner.max_calls)
            .map_err(|n| {
                Denied::Limited(
                    format!(
                        "{label} already has {n} calls open (auth.max_calls_per_principal); \
                         finish or cancel one"
                    ),
                    1,
                )
            })
    }

    /// Whether `who` meets `need`.
    pub fn check(need: Need, who: &Principal) -> Result<(), Denied> {
        match need {
            Need::Anyone => Ok(()),
            Need::AnyOf(roles) if roles.iter().any(|r| who.has(*r)) => Ok(()),
            Need::AnyOf(roles) => {
                let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                let have: Vec<&str> = who.roles.iter().map(|r| r.as_str()).collect();
                Err(Denied::Forbidden(format!(
                    "{} has roles [{}]; this needs one of [{}]",
                    who.label(),
                    have.join(", "),
                    names.join(", ")
                )))
            }
        }
    }
}

/// The SHA-256 of a key as stored (64 hex digits).
pub fn hex_decode(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex.
pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The principal a handler runs as (put there by the auth layer).
pub fn principal<T>(req: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    req.extensions().get::<Principal>().cloned().ok_or_else(|| {
        tonic::Status::unauthenticated(
            "no authenticated principal: the service must be served with baton_server::serve (its auth layer)",
        )
    })
}

/// Authenticates and authorizes every gRPC call (see the module docs).
#[derive(Clone, Debug)]
pub struct GrpcAuthLayer {
    auth: Authenticator,
}

impl GrpcAuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`GrpcAuthLayer`] makes.
#[derive(Clone, Debug)]
pub struct GrpcAuth<S> {
    inner: S,
    auth: Authenticator,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was made ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let Some(need) = grpc_need(&path) else {
                return Ok(tonic::Status::permission_denied(format!(
                    "{path} has no declared access requirement; refusing it"
                ))
                .into_http());
            };
            let cert = peer_cert(&req);
            if need != Need::Anyone {
                let (who, guard) = match auth.authorize(need, req.headers(), cert.as_deref()).await
                {
                    Ok(admitted) => admitted,
                    Err(d) => return Ok(d.status().into_http()),
                };
                req.extensions_mut().insert(who);
                let resp = inner.call(req).await?;
                return Ok(
                    resp.map(|b| tonic::body::Body::new(crate::inflight::Guarded::new(b, guard)))
                );
            }
            inner.call(req).await
        })
    }
}

/// The client certificate of a mutual-TLS connection (its leaf, DER).
fn peer_cert<B>(req: &http::Request<B>) -> Option<Vec<u8>> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let info = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    certs.first().map(|c| c.as_ref().to_vec())
}

/// An authentication failure as a refusal: the server's own trouble
/// (no randomness, an identity provider out of reach) is not the caller's.
fn denied(e: baton_auth::AuthError) -> Denied {
    match e {
        baton_auth::AuthError::Unavailable(m) => Denied::Unavailable(m),
        other => Denied::Unauthenticated(other.to_string()),
    }
}

/// Authenticates and authorizes every HTTP route (see the module docs);
/// the handler finds the [`Principal`] in the request's extensions.
pub async fn http_auth(
    State(auth): State<Authenticator>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let Some(need) = http_need(req.method(), &route) else {
        let allowed: Vec<&str> = HTTP_ACCESS
            .iter()
            .filter(|(_, p, _)| *p == route)
            .map(|(m, _, _)| *m)
            .collect();
        if !allowed.is_empty() {
            let mut resp = crate::openai::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                format!("{} {route}: use {}", req.method(), allowed.join(" or ")),
            )
            .code("method_not_allowed")
            .into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&allowed.join(", ")) {
                resp.headers_mut().insert(axum::http::header::ALLOW, v);
            }
            return resp;
        }
        return Denied::Forbidden(format!(
            "{} {route} has no declared access requirement; refusing it",
            req.method()
        ))
        .http();
    };
    if need != Need::Anyone && route.starts_with("/ui") {
        return console_auth(&auth, need, req, next).await;
    }
    if need != Need::Anyone {
        let (who, guard) = match auth.authorize(need, req.headers(), None).await {
            Ok(admitted) => admitted,
            Err(d) => return d.http(),
        };
        req.extensions_mut().insert(who);
        let resp = next.run(req).await;
        return resp.map(|b| axum::body::Body::new(crate::inflight::Guarded::new(b, guard)));
    }
    next.run(req).await
}

/// The web console's routes: the credential is the sign-in cookie (see
/// [`crate::console_session`]); without one a page asks to sign in. A
/// state-changing request must come from the console's own pages: its
/// `Origin`, when the browser sends one, is this server. Then the same
/// role check, rate limits and open-call count as every other route; the
/// handler finds the [`Principal`] and the sign-in (its CSRF token) in the
/// request's extensions.
async fn console_auth(auth: &Authenticator, need: Need, mut req: Request, next: Next) -> Response {
    let refuse = |status: StatusCode, message: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            message,
        )
            .into_response()
    };
    let Some(sign_in) = auth.console().get(req.headers()).await else {
        if req.method() == Method::GET {
            let back = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let to = format!(
                "/ui/login?next={}",
                crate::console_session::query_escape(&back)
            );
            return (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
        }
        return refuse(
            StatusCode::UNAUTHORIZED,
            "not signed in to the console (or the sign-in expired): sign in at /ui/login".into(),
        );
    };
    if req.method() != Method::GET && !crate::console_session::same_origin(req.headers()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "cross-origin request refused: the Origin header is not this server".into(),
        );
    }
    let checked = auth
        .still_valid(&sign_in.who)
        .and_then(|()| Authenticator::check(need, &sign_in.who))
        .and_then(|()| auth.admit(&sign_in.who))
        .and_then(|()| auth.open_call(&sign_in.who));
    let guard = match checked {
        Ok(g) => g,
        Err(Denied::Unauthenticated(m)) => {
            auth.console().close(req.headers()).await;
            return refuse(
                StatusCode::UNAUTHORIZED,
                format!("{m}: sign in again at /ui/login"),
            );
        }
        Err(d) => return d.http(),
    };
    req.extensions_mut().insert(sign_in.who.clone());
    req.extensions_mut().insert(sign_in);
    let resp = next.run(req).await;
    resp.map(|b| axum::body::Body::new(crate::inflight::Guarded::new(b, guard)))
}
