//! Baton's HTTP server, beside the gRPC one: Prometheus metrics, a health
//! check, and the OpenAI-compatible front door ([`crate::openai`]).
//!
//! | route | what |
//! |---|---|
//! | `GET /metrics` | every metric, OpenMetrics text ([`baton_metrics::CONTENT_TYPE`]) |
//! | `GET /healthz` | `ok` while the server runs; 503 with the reason while new work is refused (data directory below `store.min_free_bytes`, audit trail failing with `audit.on_failure = block`); `audit trail failing: …` with 200 under `continue` |
//! | `POST /v1/chat/completions` | OpenAI Chat Completions, one one-shot session per call |
//! | `POST /v1/responses` | OpenAI Responses; a response is a turn of a durable session, `previous_response_id` continues it |
//! | `POST /v1/embeddings` | OpenAI Embeddings, routed to endpoints with the `embeddings` capability |
//! | `GET /v1/models`, `GET /v1/models/{model}` | the routes, as OpenAI models |
//! | `POST /hooks/{name}` | a webhook trigger of a flow (HMAC-signed; 202 with the run id) |
//! | `/ui/…` | the web console ([`crate::console`], docs/console.md) |

use std::future::Future;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use baton_runtime::RuntimeHandle;
use baton_types::Principal;
use tokio::net::TcpListener;

use crate::auth::{Authenticator, http_auth};
use crate::config::HttpSection;
use crate::openai::{self, ApiError};

/// The HTTP routes over a runtime, each checked by `auth` against
/// [`crate::auth::HTTP_ACCESS`]; bodies larger than
/// `section.max_request_bytes` get 413.
pub fn router(
    runtime: RuntimeHandle,
    flows: impl Into<baton_flows::Lead>,
    section: &HttpSection,
    auth: Authenticator,
    audit: Option<baton_audit::AuditLog>,
) -> Router {
    let console_tls = crate::console::ConsoleTls(section.tls.is_some());
    let console_audit = crate::console::ConsoleAudit::new(audit);
    let owning = runtime.config().cluster.enabled
        && runtime.config().cluster.ownership == baton_runtime::ClusterOwnership::Sessions;
    let app = Router::new()
        .route("/hooks/{name}", post(hook))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .merge(crate::console::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            http_auth,
        ))
        .fallback(not_found)
        .layer(Extension(flows.into()))
        .layer(Extension(console_tls))
        .layer(Extension(console_audit))
        .layer(Extension(crate::console::ConsoleOidc::new()))
        .layer(Extension(auth));
    // Where nodes own sessions one by one, a front-door call for a session
    // another node owns goes there (crate::owner).
    let app = if owning {
        app.layer(axum::middleware::from_fn_with_state(
            section.max_request_bytes,
            crate::owner::forward_http,
        ))
    } else {
        app
    };
    app.layer(DefaultBodyLimit::max(section.max_request_bytes))
        // A request body that stalls longer than this between two pieces
        // fails (400) instead of holding the connection.
        .layer(tower_http::map_request_body::MapRequestBodyLayer::new(
            axum::body::Body::new,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            std::time::Duration::from_millis(section.body_read_timeout_ms),
        ))
        .with_state(runtime)
}

/// Serve HTTP until `shutdown` resolves, then drain open requests (stop the
/// runtime first: that ends open streams). `auth` checks every route;
/// `audit` is the trail the console verifies and exports (none: off).
pub async fn serve_http(
    runtime: RuntimeHandle,
    flows: impl Into<baton_flows::Lead>,
    listener: TcpListener,
    section: HttpSection,
    auth: Authenticator,
    audit: Option<baton_audit::AuditLog>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::serve::Error> {
    let app = router(runtime, flows.into(), &section, auth, audit);
    if let Some(tls) = &section.tls {
        let config = baton_auth::tls::rustls_server_config(tls, &[b"http/1.1"])
            .map_err(|e| crate::serve::Error::Tls(format!("http.{e}")))?;
        let listener = crate::tls_listener::TlsListener::new(
            listener,
            config,
            std::time::Duration::from_millis(section.handshake_timeout_ms),
        )
        .map_err(crate::serve::Error::Http)?;
        serve_connections(listener, app, &section, shutdown).await;
        return Ok(());
    }
    // TCP_NODELAY: streamed chunks are small writes (as for gRPC).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    serve_connections(listener, app, &section, shutdown).await;
    Ok(())
}

/// Serve each accepted connection with hyper, with a deadline for a
/// request's headers (`http.header_read_timeout_ms`: a client that sends
/// them slowly, or not at all, cannot hold a connection) — which
/// `axum::serve` does not offer. On `shutdown`: stop accepting, then let
/// open requests finish.
async fn serve_connections<L>(
    mut listener: L,
    app: Router,
    section: &HttpSection,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_millis(
            section.header_read_timeout_ms,
        ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            (io, _addr) = listener.accept() => {
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn metrics(State(runtime): State<RuntimeHandle>) -> Response {
    // Read when scraped: RocksDB's own figures, not Baton's counters.
    let store = runtime.store_memory();
    baton_metrics::metrics().store_memory(store.cache_bytes, store.memtable_bytes);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(baton_metrics::CONTENT_TYPE),
        )],
        baton_metrics::metrics().render(),
    )
        .into_response()
}

/// `ok`; 503 with the reason while new work is refused (the data
/// directory low on space, or the audit trail failing under
/// `audit.on_failure = block`); 200 naming the failure while the audit
/// trail fails under `continue`.
async fn healthz(State(runtime): State<RuntimeHandle>) -> Response {
    if let Some(why) = runtime.refusing_work() {
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    }
    let mut body = match runtime.audit_failing() {
        None => "ok".to_string(),
        Some(reason) => format!("audit trail failing: {reason}"),
    };
    // A node of a cluster says which it is and how its lease stands.
    if runtime.config().cluster.enabled
        && let Some(n) = runtime.node_status()
    {
        let holds =
            if runtime.config().cluster.ownership == baton_runtime::ClusterOwnership::Sessions {
                "owns the sessions it loaded under its lease"
            } else {
                "holds the writer lease"
            };
        body.push_str(&format!(
            "\nnode {} {holds} (epoch {}), renewed {} ms ago (lease {} ms); \
                 the database {}",
            n.node_id,
            n.epoch,
            n.renewed_ms_ago,
            n.lease_ms,
            if n.database_ok {
                "answers"
            } else {
                "does not answer"
            }
        ));
    }
    body.into_response()
}

async fn chat_completions(
    State(runtime): State<RuntimeHandle>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    openai::chat_completions(runtime.as_caller(who), headers, body).await
}

async fn responses(
    State(runtime): State<RuntimeHandle>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    openai::responses(runtime.as_caller(who), headers, body).await
}

async fn embeddings(
    State(runtime): State<RuntimeHandle>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    openai::embeddings(runtime.as_caller(who), headers, body).await
}

async fn models(
    State(runtime): State<RuntimeHandle>,
    Extension(who): Extension<Principal>,
) -> Response {
    axum::Json(openai::models(&runtime.as_caller(who))).into_response()
}

async fn model(
    State(runtime): State<RuntimeHandle>,
    Extension(who): Extension<Principal>,
    Path(model): Path<String>,
) -> Response {
    let routes = runtime.as_caller(who).routes();
    if routes.contains(&model) {
        axum::Json(openai::model_json(&model)).into_response()
    } else {
        ApiError::model_not_found(&model, &routes).into_response()
    }
}

/// `POST /hooks/{name}`: a webhook delivery; checked by its HMAC
/// signature (not by an API key), 202 with the run it started.
async fn hook(
    Extension(lead): Extension<baton_flows::Lead>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let error = |code: baton_types::ErrorCode, message: String, retry: Option<u64>| {
        let mut r = (
            crate::status::http_status(code),
            axum::Json(
                serde_json::json!({ "error": { "message": message, "code": code.as_str() } }),
            ),
        )
            .into_response();
        if let Some(secs) = retry {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    };
    let flows = match lead.holder() {
        None => {
            return error(
                baton_types::ErrorCode::NotFound,
                format!("no webhook {name:?}: flows are not served here"),
                None,
            );
        }
        Some(baton_flows::Holder::Here(flows)) => flows,
        // Another node runs the flows (nodes owning sessions one by one):
        // `crate::owner::forward_http` sends the delivery there.
        Some(baton_flows::Holder::Node { http_addr, .. }) => {
            // (The caller is not authenticated here: no node is named.)
            let mut r = error(
                baton_types::ErrorCode::Unavailable,
                "the flows run on another node, which cannot be reached at this moment; retry"
                    .into(),
                Some(1),
            );
            if !http_addr.is_empty() {
                r.extensions_mut()
                    .insert(crate::owner::ForwardTo(http_addr));
            }
            return r;
        }
        Some(baton_flows::Holder::Nobody(why)) => {
            return error(
                baton_types::ErrorCode::Unavailable,
                format!("{why}; retry"),
                Some(1),
            );
        }
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    match flows.webhook(&name, &headers, &body).await {
        Ok(s) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "run_id": s.id.to_string(), "created": s.created })),
        )
            .into_response(),
        Err(e) => error(e.code(), e.to_string(), e.retry_after_secs()),
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("no route for {method} {}", uri.path()),
    )
    .code("not_found")
    .into_response()
}
