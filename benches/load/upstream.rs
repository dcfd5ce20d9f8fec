//! The instant OpenAI-compatible upstream, and Baton's endpoint for it.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use baton_models::EndpointConfig;

/// The model name sent upstream.
pub(crate) const MODEL: &str = "load-model";

/// The instant upstream's only answer.
const UPSTREAM_RESPONSE: &str = r#"{"id":"chatcmpl-load","object":"chat.completion","created":0,"model":"load-model","choices":[{"index":0,"message":{"role":"assistant","content":"Noted."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#;

/// Requests the upstream answered, to check one model call per turn.
pub(crate) static UPSTREAM_CALLS: AtomicU64 = AtomicU64::new(0);

async fn chat(body: axum::body::Bytes) -> impl axum::response::IntoResponse {
    drop(body);
    UPSTREAM_CALLS.fetch_add(1, Ordering::Relaxed);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        UPSTREAM_RESPONSE,
    )
}

/// Serve the upstream on its own single-threaded tokio runtime, standing in
/// for a separate process.
pub(crate) fn start_upstream(rt: &tokio::runtime::Runtime) -> Result<std::net::SocketAddr> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("upstream stopped: {e}");
        }
    });
    Ok(addr)
}

pub(crate) fn upstream_endpoint(upstream: std::net::SocketAddr) -> EndpointConfig {
    let mut ep = EndpointConfig::openai("upstream", format!("http://{upstream}/v1"), MODEL);
    ep.stream = false;
    ep.max_concurrency = 512;
    ep.max_queue = 8192;
    ep
}
