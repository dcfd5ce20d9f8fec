//! A fake OpenAI-compatible Chat Completions server for tests.
//!
//! It listens on `127.0.0.1:0`, serves `POST /v1/chat/completions` both as
//! JSON (`stream: false`) and as SSE (`stream: true`, usage in the final
//! chunk when `stream_options.include_usage` is set, then `data: [DONE]`),
//! and records every request body. Replies follow the current [`Behavior`],
//! unless a [`ScriptedReply`] is queued: those are consumed in FIFO order, one
//! per answered request, so a test can script "first request → tool calls,
//! second → final text". One-shot [`Fault`]s, also consumed in FIFO order,
//! take precedence over both; a request that meets a fault does not consume a
//! scripted reply (a fault that sends part of an answer sends part of the next
//! scripted reply), so the retry gets it. "Tokens" are
//! whitespace-separated words: input over all message contents, output over
//! the reply text. When the request asks for `logprobs` and the
//! [`Behavior`] sets a `logprob`, every content token (JSON: one per word of
//! the reply; SSE: one per content chunk) carries that log-probability in
//! `choices[0].logprobs.content`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use baton_testkit::fake_openai::{Behavior, Fault, FakeOpenAi, Reply};
//!
//! let server = FakeOpenAi::start().await?;
//! server.set_behavior(Behavior { reply: Reply::Fixed("hi there".into()), chunk_chars: 3, ..Behavior::default() });
//! server.push_fault(Fault::Status { status: 503, retry_after: None, body: "busy".into() });
//! // Point a client at server.base_url(): the first request gets 503, the next "hi there".
//!
//! use baton_testkit::fake_openai::ScriptedReply;
//! use baton_types::ToolCall;
//! server.push_reply(ScriptedReply::ToolCalls(vec![ToolCall {
//!     id: "call_1".into(),
//!     name: "calculator".into(),
//!     arguments: r#"{"expression":"2+2"}"#.into(),
//! }]));
//! server.push_reply(ScriptedReply::Text("2 + 2 = 4".into()));
//! // The next two answered requests get the tool call, then the text; later ones "hi there".
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::{IncomingStream, Listener};
use baton_types::ToolCall;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// What the reply text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `{prefix}{content of the last user message}`.
    Echo { prefix: String },
    /// Always this text.
    Fixed(String),
}

/// How the server answers requests that meet no fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub reply: Reply,
    /// Wait before sending the response headers.
    pub delay: Duration,
    /// Characters per streamed content chunk; 0 streams the text as one chunk.
    /// Tool-call arguments are streamed in pieces of the same size (halves when 0).
    pub chunk_chars: usize,
    /// Wait before each streamed chunk.
    pub chunk_delay: Duration,
    /// Tool calls to return with the reply (finish reason `tool_calls`).
    pub tool_calls: Vec<ToolCall>,
    /// The log-probability of every content token, sent when the request
    /// has `"logprobs": true`; none when `None`. A non-finite value is sent
    /// as `null`.
    pub logprob: Option<f64>,
}

impl Default for Behavior {
    /// Reply `echo: <last user message>` at once, streamed as one chunk.
    fn default() -> Self {
        Self {
            reply: Reply::Echo {
                prefix: "echo: ".into(),
            },
            delay: Duration::ZERO,
            chunk_chars: 0,
            chunk_delay: Duration::ZERO,
            tool_calls: Vec::new(),
            logprob: None,
        }
    }
}

/// A one-shot reply for the next answered request, replacing the
/// [`Behavior`]'s reply text and tool calls (its delays and chunking still apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptedReply {
    /// This text, no tool calls (finish reason `stop`).
    Text(String),
    /// These tool calls, no text (finish reason `tool_calls`).
    ToolCalls(Vec<ToolCall>),
}

/// A one-shot failure for the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (and `Retry-After: <seconds>` when given).
    /// A body that parses as JSON is sent as `application/json`.
    Status {
        status: u16,
        retry_after: Option<u64>,
        body: String,
    },
    /// Drop the connection without sending a response.
    CloseConnection,
    /// Never answer (until the server is dropped).
    Hang,
    /// Send the headers and `chunks` SSE events of a normal answer, then
    /// break the connection (JSON answers: a truncated body).
    BreakStreamAfter { chunks: usize },
    /// Send a chunk that is not valid JSON (JSON answers: a malformed body).
    MalformedChunk,
}

/// The fake server. Dropping it shuts it down.
pub struct FakeOpenAi {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("addr", &self.addr)
            .field("requests", &self.requests())
            .finish()
    }
}

struct Shared {
    behavior: Mutex<Behavior>,
    faults: Mutex<VecDeque<Fault>>,
    replies: Mutex<VecDeque<ScriptedReply>>,
    received: Mutex<Vec<Value>>,
    authorizations: Mutex<Vec<Option<String>>>,
    shutdown: CancellationToken,
    ids: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeOpenAi {
    /// Start on `127.0.0.1:0` with the default [`Behavior`].
    pub async fn start() -> io::Result<FakeOpenAi> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            behavior: Mutex::new(Behavior::default()),
            faults: Mutex::new(VecDeque::new()),
            replies: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            authorizations: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            ids: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(shared.clone());
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(
                KillableListener(listener),
                app.into_make_service_with_connect_info::<ConnCtl>(),
            )
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
            if let Err(e) = served {
                tracing::warn!("fake openai server stopped: {e}");
            }
        });
        Ok(FakeOpenAi { addr, shared })
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replace the behaviour for the following requests.
    pub fn set_behavior(&self, b: Behavior) {
        *lock(&self.shared.behavior) = b;
    }

    /// Queue a one-shot fault; faults are consumed in FIFO order, one per request.
    pub fn push_fault(&self, f: Fault) {
        lock(&self.shared.faults).push_back(f);
    }

    /// Queue a one-shot reply; replies are consumed in FIFO order, one per
    /// request answered without a fault, before the [`Behavior`] applies.
    pub fn push_reply(&self, r: ScriptedReply) {
        lock(&self.shared.replies).push_back(r);
    }

    /// Scripted replies not yet consumed.
    pub fn replies_left(&self) -> usize {
        lock(&self.shared.replies).len()
    }

    /// Chat completion requests received so far.
    pub fn requests(&self) -> usize {
        lock(&self.shared.received).len()
    }

    /// The request bodies received so far, in order (a body that is not
    /// JSON is recorded as a JSON string).
    pub fn received(&self) -> Vec<Value> {
        lock(&self.shared.received).clone()
    }

    /// The `Authorization` header of each request received, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        lock(&self.shared.authorizations).clone()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

// Connections that a handler can kill: once killed, every read and write
// fails, so hyper drops the socket without writing anything more.

struct KillableListener(TcpListener);

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (KillableStream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    let ctl = ConnCtl(Arc::new(AtomicBool::new(false)));
                    return (KillableStream { inner, ctl }, addr);
                }
                Err(e) => {
                    tracing::debug!("fake openai accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[derive(Clone, Debug)]
struct ConnCtl(Arc<AtomicBool>);

impl ConnCtl {
    fn kill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn killed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnCtl {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.io().ctl.clone()
    }
}

struct KillableStream {
    inner: TcpStream,
    ctl: ConnCtl,
}

fn killed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection killed by fake server",
    )
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.ctl.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.ctl.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ctl.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ctl.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// The handler.

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Text of a message's `content`: a string, or an array of `{text}` parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn chunks(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let n = if n == 0 { chars.len() } else { n };
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

/// The answer to one request, independent of how it is sent.
struct Answer {
    id: String,
    model: String,
    text: String,
    tool_calls: Vec<ToolCall>,
    finish_reason: &'static str,
    input_tokens: u64,
    output_tokens: u64,
    /// The logprob of each content token, when the request asked for them.
    logprob: Option<f64>,
}

impl Answer {
    fn new(body: &Value, behavior: &Behavior, id: u64) -> Self {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let input_tokens = messages
            .iter()
            .map(|m| words(&content_text(&m["content"])))
            .sum();
        let mut text = match &behavior.reply {
            Reply::Fixed(t) => t.clone(),
            Reply::Echo { prefix } => {
                let last_user = messages
                    .iter()
                    .rev()
                    .find(|m| m["role"] == "user")
                    .map(|m| content_text(&m["content"]))
                    .unwrap_or_default();
                format!("{prefix}{last_user}")
            }
        };
        let mut finish_reason = if behavior.tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        // Honour max_tokens (in words) like a real model would.
        let limit = body["max_tokens"]
            .as_u64()
            .or_else(|| body["max_completion_tokens"].as_u64());
        if let Some(limit) = limit
            && words(&text) > limit
        {
            text = text
                .split_whitespace()
                .take(limit as usize)
                .collect::<Vec<_>>()
                .join(" ");
            finish_reason = "length";
        }
        Self {
            id: format!("chatcmpl-fake-{id}"),
            model: body["model"].as_str().unwrap_or("fake-model").to_string(),
            output_tokens: words(&text),
            text,
            tool_calls: behavior.tool_calls.clone(),
            finish_reason,
            input_tokens,
            logprob: behavior
                .logprob
                .filter(|_| body["logprobs"].as_bool() == Some(true)),
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        })
    }

    /// A choice's `logprobs` for these content tokens.
    fn logprobs<'a>(lp: f64, tokens: impl Iterator<Item = &'a str>) -> Value {
        let content: Vec<Value> = tokens
            .map(|t| json!({"token": t, "logprob": lp, "bytes": t.as_bytes(), "top_logprobs": []}))
            .collect();
        if content.is_empty() {
            json!({"content": null})
        } else {
            json!({"content": content})
        }
    }

    fn json(&self) -> Value {
        let mut message = json!({"role": "assistant", "content": self.text});
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    })
                })
                .collect();
            message["tool_calls"] = Value::Array(calls);
            if self.text.is_empty() {
                message["content"] = Value::Null;
            }
        }
        let mut choice =
            json!({"index": 0, "message": message, "finish_reason": self.finish_reason});
        if let Some(lp) = self.logprob {
            choice["logprobs"] = Self::logprobs(lp, self.text.split_whitespace());
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": 0,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        self.chunk_with_logprobs(delta, finish_reason, None)
    }

    fn chunk_with_logprobs(
        &self,
        delta: Value,
        finish_reason: Option<&str>,
        logprobs: Option<Value>,
    ) -> Value {
        let mut choice = json!({"index": 0, "delta": delta, "finish_reason": finish_reason});
        if let Some(lp) = logprobs {
            choice["logprobs"] = lp;
        }
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// The SSE events (their JSON data), `[DONE]` excluded.
    fn events(&self, chunk_chars: usize, include_usage: bool) -> Vec<String> {
        let mut events = Vec::new();
        let pieces = chunks(&self.text, chunk_chars);
        if pieces.is_empty() {
            events.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
        for (i, piece) in pieces.into_iter().enumerate() {
            let logprobs = self
                .logprob
                .map(|lp| Self::logprobs(lp, std::iter::once(piece.as_str())));
            let delta = if i == 0 {
                json!({"role": "assistant", "content": piece})
            } else {
                json!({"content": piece})
            };
            events.push(self.chunk_with_logprobs(delta, None, logprobs));
        }
        for (index, call) in self.tool_calls.iter().enumerate() {
            events.push(self.chunk(
                json!({"tool_calls": [{
                    "index": index, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }]}),
                None,
            ));
            let size = if chunk_chars == 0 {
                call.arguments.chars().count().div_ceil(2).max(1)
            } else {
                chunk_chars
            };
            for fragment in chunks(&call.arguments, size) {
                events.push(self.chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                    None,
                ));
            }
        }
        events.push(self.chunk(json!({}), Some(self.finish_reason)));
        if include_usage {
            events.push(json!({
                "id": self.id, "object": "chat.completion.chunk", "created": 0,
                "model": self.model, "choices": [], "usage": self.usage(),
            }));
        }
        events.into_iter().map(|e| e.to_string()).collect()
    }
}

fn sse_frame(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn openai_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    (status, axum::Json(body)).into_response()
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnCtl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    lock(&shared.authorizations).push(authorization);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    lock(&shared.received).push(
        parsed
            .clone()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&body).into_owned())),
    );
    let fault = lock(&shared.faults).pop_front();
    let mut behavior = lock(&shared.behavior).clone();
    let Some(body) = parsed else {
        return openai_error(StatusCode::BAD_REQUEST, "request body is not valid json");
    };
    if !body["messages"].is_array() {
        return openai_error(StatusCode::BAD_REQUEST, "'messages' is a required property");
    }

    match &fault {
        Some(Fault::Status {
            status,
            retry_after,
            body,
        }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let content_type = if serde_json::from_str::<Value>(body).is_ok() {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            let mut resp =
                (status, [(header::CONTENT_TYPE, content_type)], body.clone()).into_response();
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            return resp;
        }
        Some(Fault::CloseConnection) => {
            conn.kill();
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Some(Fault::Hang) => {
            shared.shutdown.cancelled().await;
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        _ => {}
    }

    // A scripted reply is consumed only by a request answered in full; one
    // that meets a fault sends (part of) it but leaves it for the retry.
    let reply = {
        let mut replies = lock(&shared.replies);
        if fault.is_none() {
            replies.pop_front()
        } else {
            replies.front().cloned()
        }
    };
    match reply {
        Some(ScriptedReply::Text(text)) => {
            behavior.reply = Reply::Fixed(text);
            behavior.tool_calls = Vec::new();
        }
        Some(ScriptedReply::ToolCalls(calls)) => {
            behavior.reply = Reply::Fixed(String::new());
            behavior.tool_calls = calls;
        }
        None => {}
    }

    if !behavior.delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(behavior.delay) => {}
            _ = shared.shutdown.cancelled() => {
                conn.kill();
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        }
    }

    let answer = Answer::new(&body, &behavior, shared.ids.fetch_add(1, Ordering::SeqCst));
    let stream = body["stream"].as_bool().unwrap_or(false);
    if !stream {
        return match fault {
            Some(Fault::MalformedChunk) => (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"id\": \"broken\", \"choices\": [",
            )
                .into_response(),
            Some(Fault::BreakStreamAfter { .. }) => {
                let text = answer.json().to_string();
                let half = text.len() / 2;
                let prefix = Bytes::from(text.into_bytes()).slice(..half);
                let body = futures::stream::iter(vec![
                    Ok(prefix),
                    Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "broken by fake server",
                    )),
                ]);
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    Body::from_stream(body),
                )
                    .into_response()
            }
            _ => axum::Json(answer.json()).into_response(),
        };
    }

    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let mut frames: Vec<Bytes> = answer
        .events(behavior.chunk_chars, include_usage)
        .iter()
        .map(|e| sse_frame(e))
        .collect();
    let mut break_after = None;
    match fault {
        Some(Fault::BreakStreamAfter { chunks }) => break_after = Some(chunks),
        Some(Fault::MalformedChunk) => {
            frames.insert(
                1.min(frames.len()),
                sse_frame("{\"choices\": [{\"delta\": {\"content\": "),
            );
        }
        _ => {}
    }
    if break_after.is_none() {
        frames.push(sse_frame("[DONE]"));
    }

    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let shutdown = shared.shutdown.clone();
    let chunk_delay = behavior.chunk_delay;
    tokio::spawn(async move {
        for (sent, frame) in frames.into_iter().enumerate() {
            if break_after == Some(sent) {
                break;
            }
            if !chunk_delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(chunk_delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            if tx.send(Ok(frame)).await.is_err() {
                return; // the client went away
            }
        }
        if break_after.is_some() {
            // Let the frames sent so far reach the client, then break.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx
                .send(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "broken by fake server",
                )))
                .await;
            conn.kill();
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}
