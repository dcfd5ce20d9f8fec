//! What the fake model servers ([`crate::fake_openai::FakeOpenAi`],
//! [`crate::fake_anthropic::FakeAnthropic`]) share: the knobs a test turns
//! ([`Behavior`], [`ScriptedReply`], [`Fault`], [`FakeServer::set_down`]), the
//! server core that records requests, and connections a handler can kill.
//!
//! Both fakes answer the same way, each in its provider's wire format: the
//! reply follows the current [`Behavior`], unless a [`ScriptedReply`] is
//! queued (consumed in FIFO order, one per answered request). One-shot
//! [`Fault`]s, also FIFO, take precedence over both; a request that meets a
//! fault does not consume a scripted reply (a fault that sends part of an
//! answer sends part of the next scripted reply), so the retry gets it. While
//! the server is down ([`FakeServer::set_down`]) every request has its
//! connection dropped without a response. Every request is recorded and
//! counted, faulted or not. "Tokens" are whitespace-separated words: input
//! over all message contents, output over the reply text; a request's output
//! limit (`max_tokens`) is honoured in words, finishing with the provider's
//! "length" reason. A request that asks to continue a partial answer (a
//! final assistant message: Anthropic's prefill, OpenAI-compatible
//! `"prefix": true` or `"continue_final_message": true`) gets the reply's
//! text after that partial answer.

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
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use baton_types::ToolCall;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// What the reply text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `{prefix}{text of the last user message}`.
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
    /// Tool calls to return with the reply (finish reason `tool_calls` /
    /// `tool_use`).
    pub tool_calls: Vec<ToolCall>,
    /// OpenAI only: the log-probability of every content token, sent when
    /// the request has `"logprobs": true`; none when `None`. A non-finite
    /// value is sent as `null`.
    pub logprob: Option<f64>,
    /// The model named in answers; the request's `model` when `None`.
    pub model: Option<String>,
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
            model: None,
        }
    }
}

/// A one-shot reply for the next answered request, replacing the
/// [`Behavior`]'s reply text and tool calls (its delays and chunking still apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptedReply {
    /// This text, no tool calls (a natural stop).
    Text(String),
    /// These tool calls, no text.
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
    /// Send `chunks` SSE events of a normal answer, then a chunk that is not
    /// valid JSON, then the rest (JSON answers: a malformed body).
    MalformedChunkAfter { chunks: usize },
    /// Streams: send the headers at once and the first event after this
    /// delay. JSON answers: send the whole answer after the delay.
    SlowFirstToken(Duration),
    /// Send the headers and `chunks` SSE events, then go silent without
    /// closing the connection (JSON answers: half the body, then silence).
    StallAfter { chunks: usize },
    /// Streams: a complete answer, finish reason and usage included, but no
    /// terminator (`[DONE]` / `message_stop`), the connection kept open.
    /// JSON answers: a normal answer.
    NoTerminator,
    /// The provider's real "context length exceeded" error (HTTP 400).
    ContextLength,
    /// The provider's real content-policy error (HTTP 400).
    ContentPolicy,
    /// A 200 answer cut by the provider's filter: finish reason
    /// `content_filter` (OpenAI), stop reason `refusal` (Anthropic).
    Refusal,
}

/// The state a fake server's handler works on.
pub(crate) struct Shared {
    behavior: Mutex<Behavior>,
    faults: Mutex<VecDeque<Fault>>,
    replies: Mutex<VecDeque<ScriptedReply>>,
    received: Mutex<Vec<Value>>,
    headers: Mutex<Vec<HeaderMap>>,
    down: AtomicBool,
    pub(crate) shutdown: CancellationToken,
    ids: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request that got past the faults that need no answer.
pub(crate) struct Incoming {
    pub body: Value,
    pub fault: Option<Fault>,
}

impl Shared {
    /// Record a request; drop it when the server is down; take its fault and
    /// apply the faults that do not depend on the provider (`Status`,
    /// `CloseConnection`, `Hang`). `invalid` renders the provider's error
    /// for a body that is not JSON.
    pub(crate) async fn intake(
        &self,
        conn: &ConnCtl,
        headers: &HeaderMap,
        body: &Bytes,
        invalid: impl Fn(StatusCode, &str) -> Response,
    ) -> Result<Incoming, Response> {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        lock(&self.received).push(
            parsed
                .clone()
                .unwrap_or_else(|| Value::String(String::from_utf8_lossy(body).into_owned())),
        );
        lock(&self.headers).push(headers.clone());
        if self.down.load(Ordering::SeqCst) {
            conn.kill();
            return Err(StatusCode::SERVICE_UNAVAILABLE.into_response());
        }
        let fault = lock(&self.faults).pop_front();
        let Some(body) = parsed else {
            return Err(invalid(
                StatusCode::BAD_REQUEST,
                "request body is not valid json",
            ));
        };
        match &fault {
            Some(Fault::Status {
                status,
                retry_after,
                body,
            }) => {
                let status =
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
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
                Err(resp)
            }
            Some(Fault::CloseConnection) => {
                conn.kill();
                Err(StatusCode::INTERNAL_SERVER_ERROR.into_response())
            }
            Some(Fault::Hang) => {
                self.shutdown.cancelled().await;
                conn.kill();
                Err(StatusCode::SERVICE_UNAVAILABLE.into_response())
            }
            _ => Ok(Incoming { body, fault }),
        }
    }

    /// The behaviour for this request, with the next scripted reply in
    /// place of its reply. The reply is consumed only by a request answered
    /// in full; one that meets a fault sends (part of) it but leaves it for
    /// the retry.
    pub(crate) fn behavior_for(&self, fault: &Option<Fault>) -> Behavior {
        let mut behavior = lock(&self.behavior).clone();
        let reply = {
            let mut replies = lock(&self.replies);
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
        behavior
    }

    /// Wait `delay` before answering; `Err` (the connection killed) when the
    /// server shuts down meanwhile.
    pub(crate) async fn wait(&self, delay: Duration, conn: &ConnCtl) -> Result<(), Response> {
        if delay.is_zero() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.shutdown.cancelled() => {
                conn.kill();
                Err(StatusCode::SERVICE_UNAVAILABLE.into_response())
            }
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::SeqCst)
    }
}

/// A fake model server on `127.0.0.1:0`; the provider fakes deref to it.
/// Dropping it shuts it down.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("addr", &self.addr)
            .field("requests", &self.requests())
            .finish()
    }
}

impl FakeServer {
    /// Serve `router` (its handlers get the shared state) on `127.0.0.1:0`.
    pub(crate) async fn start(router: Router<Arc<Shared>>) -> io::Result<FakeServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            behavior: Mutex::new(Behavior::default()),
            faults: Mutex::new(VecDeque::new()),
            replies: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            ids: AtomicU64::new(0),
        });
        let app = router.with_state(shared.clone());
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(
                KillableListener(listener),
                app.into_make_service_with_connect_info::<ConnCtl>(),
            )
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
            if let Err(e) = served {
                tracing::warn!("fake model server stopped: {e}");
            }
        });
        Ok(FakeServer { addr, shared })
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

    /// Take the server down (`true`: every request has its connection
    /// dropped without a response, and consumes no fault) or bring it back.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Requests received so far, faulted and dropped ones included.
    pub fn requests(&self) -> usize {
        lock(&self.shared.received).len()
    }

    /// The request bodies received so far, in order (a body that is not
    /// JSON is recorded as a JSON string).
    pub fn received(&self) -> Vec<Value> {
        lock(&self.shared.received).clone()
    }

    /// The value of header `name` of each request received, in order.
    pub fn header_values(&self, name: &str) -> Vec<Option<String>> {
        lock(&self.shared.headers)
            .iter()
            .map(|h| {
                h.get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            })
            .collect()
    }
}

impl Drop for FakeServer {
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
                    tracing::debug!("fake model server accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Kills the connection a request came on.
#[derive(Clone, Debug)]
pub(crate) struct ConnCtl(Arc<AtomicBool>);

impl ConnCtl {
    pub(crate) fn kill(&self) {
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

// Answers.

pub(crate) fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// `text` in pieces of `n` characters (one piece when 0; none when empty).
pub(crate) fn chunks(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let n = if n == 0 { chars.len() } else { n };
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

/// Tool-call arguments in streamed pieces: `chunk_chars` each, halves when 0.
pub(crate) fn argument_pieces(arguments: &str, chunk_chars: usize) -> Vec<String> {
    let size = if chunk_chars == 0 {
        arguments.chars().count().div_ceil(2).max(1)
    } else {
        chunk_chars
    };
    chunks(arguments, size)
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
    ToolCalls,
}

/// What to answer, before it is put in a provider's format.
pub(crate) struct Answer {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish: Finish,
    pub output_tokens: u64,
}

impl Answer {
    /// The reply to a conversation whose last user message says
    /// `last_user`, limited to `max_tokens` words.
    pub(crate) fn new(behavior: &Behavior, last_user: &str, max_tokens: Option<u64>) -> Self {
        let mut text = match &behavior.reply {
            Reply::Fixed(t) => t.clone(),
            Reply::Echo { prefix } => format!("{prefix}{last_user}"),
        };
        let mut finish = if behavior.tool_calls.is_empty() {
            Finish::Stop
        } else {
            Finish::ToolCalls
        };
        if let Some(limit) = max_tokens
            && words(&text) > limit
        {
            text = text
                .split_whitespace()
                .take(limit as usize)
                .collect::<Vec<_>>()
                .join(" ");
            finish = Finish::Length;
        }
        Self {
            output_tokens: words(&text),
            text,
            tool_calls: behavior.tool_calls.clone(),
            finish,
        }
    }

    /// The answer to a request that asks to continue `start` (a partial
    /// answer): the reply's text after `start` when it begins with it (as a
    /// model continuing its own words would write), else the whole reply.
    pub(crate) fn continuing(mut self, start: Option<&str>) -> Self {
        if let Some(rest) = start.and_then(|s| self.text.strip_prefix(s)) {
            self.text = rest.to_string();
            self.output_tokens = words(&self.text);
        }
        self
    }
}

// Sending.

/// How a streamed answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// Send every frame, then close.
    Close,
    /// Send this many frames, then break the connection.
    Break { after: usize },
    /// Send this many frames, then go silent with the connection open.
    Stall { after: usize },
    /// Send every frame, then keep the connection open.
    KeepOpen,
}

/// An SSE response sending `frames` as planned.
pub(crate) fn sse_response(
    shared: &Arc<Shared>,
    conn: ConnCtl,
    frames: Vec<Bytes>,
    first_delay: Duration,
    chunk_delay: Duration,
    end: StreamEnd,
) -> Response {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let pause = |d: Duration| {
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(d) => true,
                    _ = shutdown.cancelled() => false,
                }
            }
        };
        if !first_delay.is_zero() && !pause(first_delay).await {
            return;
        }
        let stop_at = match end {
            StreamEnd::Break { after } | StreamEnd::Stall { after } => Some(after),
            StreamEnd::Close | StreamEnd::KeepOpen => None,
        };
        for (sent, frame) in frames.into_iter().enumerate() {
            if stop_at == Some(sent) {
                break;
            }
            if !chunk_delay.is_zero() && !pause(chunk_delay).await {
                return;
            }
            if tx.send(Ok(frame)).await.is_err() {
                return; // the client went away
            }
        }
        match end {
            StreamEnd::Close => {}
            StreamEnd::Break { .. } => {
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
            StreamEnd::Stall { .. } | StreamEnd::KeepOpen => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tx.closed() => {}
                }
            }
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

/// A JSON answer that breaks halfway through its body.
pub(crate) fn broken_json(full: String) -> Response {
    let half = full.len() / 2;
    let prefix = Bytes::from(full.into_bytes()).slice(..half);
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

/// A JSON answer that sends half its body, then goes silent.
pub(crate) fn stalled_json(shared: &Arc<Shared>, conn: ConnCtl, full: String) -> Response {
    let half = full.len() / 2;
    let prefix = Bytes::from(full.into_bytes()).slice(..half);
    let mut resp = sse_response(
        shared,
        conn,
        vec![prefix],
        Duration::ZERO,
        Duration::ZERO,
        StreamEnd::KeepOpen,
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().remove(header::CACHE_CONTROL);
    resp
}
