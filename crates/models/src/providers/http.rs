//! What the HTTP providers (`openai`, `anthropic`) share: api keys, the
//! client, the phase timeouts, error classification helpers and an SSE
//! reader that enforces the first-token and idle timeouts.
//!
//! Timeouts of one attempt, in the order they can fire:
//! - connect (`connect_timeout_ms`, inside reqwest) → `Connection`, "connect
//!   timed out after N ms";
//! - first token (`first_token_timeout_ms`), from sending the request until
//!   the response headers and, when streaming, the first event that carries
//!   the answer → `FirstTokenTimeout`;
//! - idle (`idle_timeout_ms`), the longest silence between two reads of the
//!   body once the first token is in → `StreamStalled`;
//! - total (`timeout_ms`), applied around the attempt by the endpoint →
//!   `Timeout`.
//!
//! All waits use `tokio::time`, so they follow paused test time.

use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use secrecy::SecretString;
use serde_json::Value;
use tokio::time::Instant;

use crate::{EndpointConfig, ProviderError, ProviderErrorKind, Result};

/// Longest provider error text kept in an error message.
pub(crate) const MAX_ERROR_TEXT: usize = 1000;

/// The largest whole (non-streamed) response body read: a provider that
/// sends more is malformed, not a reason to run out of memory.
pub(crate) const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// The longest line of an event stream, and the most data one event may
/// carry: a chunk is a few hundred bytes; past these the stream is malformed.
pub(crate) const MAX_SSE_LINE: usize = 4 << 20;
pub(crate) const MAX_SSE_EVENT: usize = 16 << 20;
/// Most bytes of one streamed response: far above what any model writes in
/// one answer (~200 bytes of SSE per token: 300,000 tokens), and a bound on
/// what an answer's text and its deltas on their way to the session hold.
pub(crate) const MAX_STREAM_BYTES: usize = 64 << 20;

/// Of an error response's body only the start is read: its message is
/// shown cut to [`MAX_ERROR_TEXT`] anyway.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Longest wait for a stream's terminator once the answer is complete but
/// for its usage.
const USAGE_GRACE: Duration = Duration::from_secs(1);

/// Longest wait to read the rest of a finished body (so that the connection
/// can be reused) before dropping it.
const DRAIN_BUDGET: Duration = Duration::from_millis(50);

/// The phase timeouts of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub first_token: Duration,
    pub idle: Duration,
}

impl Timeouts {
    pub(crate) fn from_config(cfg: &EndpointConfig) -> Self {
        Self {
            connect: Duration::from_millis(cfg.connect_timeout_ms),
            first_token: Duration::from_millis(cfg.first_token_timeout_ms),
            idle: Duration::from_millis(cfg.idle_timeout_ms),
        }
    }

    /// How long to wait for the usage (or the terminator) once the answer
    /// is complete: `min(idle, 1 s)`.
    pub(crate) fn usage_grace(&self) -> Duration {
        self.idle.min(USAGE_GRACE)
    }

    /// How long to read the rest of a finished body: `min(idle, 50 ms)`.
    pub(crate) fn drain_budget(&self) -> Duration {
        self.idle.min(DRAIN_BUDGET)
    }
}

/// An http client with the endpoint's connect timeout. It follows no
/// redirect: a redirected request would carry the endpoint's key to
/// whatever host the answer names; a 3xx is a provider error instead.
pub(crate) fn client(cfg: &EndpointConfig, timeouts: Timeouts) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| cfg.invalid("base_url", format!("cannot build http client: {e}")))
}

/// The api key from `api_key_env` or `api_key_file`, if either is set.
pub(crate) fn read_api_key(cfg: &EndpointConfig) -> Result<Option<SecretString>> {
    crate::read_key(cfg.api_key_env.as_deref(), cfg.api_key_file.as_deref())
        .map_err(|(field, reason)| cfg.invalid(field, reason))
}

/// Send the request; the response headers must arrive before
/// `first_token_deadline`.
pub(crate) async fn send(
    rb: reqwest::RequestBuilder,
    timeouts: Timeouts,
    first_token_deadline: Instant,
) -> Result<reqwest::Response, ProviderError> {
    match tokio::time::timeout_at(first_token_deadline, rb.send()).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(transport_error(&e, timeouts, "sending request")),
        Err(_) => Err(ProviderError::new(
            ProviderErrorKind::FirstTokenTimeout,
            format!(
                "no response within the first-token timeout of {} ms",
                timeouts.first_token.as_millis()
            ),
        )),
    }
}

/// A reqwest error and its causes, as one line (reqwest's own message alone
/// is often just "error sending request").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !message.ends_with(&s_text) {
            message.push_str(": ");
            message.push_str(&s_text);
        }
        source = s.source();
    }
    message
}

/// A reqwest failure as a provider error: connect failures (timed out or
/// refused) and broken connections are `Connection`.
pub(crate) fn transport_error(
    e: &reqwest::Error,
    timeouts: Timeouts,
    context: &str,
) -> ProviderError {
    let mut chain = error_chain(e);
    if let Some(url) = e.url() {
        // Errors are logged, journaled and shown to clients: never with
        // the URL's credentials or query (some providers take keys there).
        chain = baton_types::redact_url_in(&chain, url.as_str());
    }
    if e.is_connect() {
        let message = if e.is_timeout() {
            format!(
                "{context}: connect timed out after {} ms: {chain}",
                timeouts.connect.as_millis()
            )
        } else {
            format!("{context}: cannot connect: {chain}")
        };
        return ProviderError::new(ProviderErrorKind::Connection, message);
    }
    let kind = if e.is_timeout() {
        ProviderErrorKind::Timeout
    } else {
        ProviderErrorKind::Connection
    };
    ProviderError::new(kind, format!("{context}: {chain}"))
}

/// A sampling parameter as the JSON number a person would write: an `f32`
/// widened to `f64` as-is would send 0.2 as 0.20000000298023224.
pub(crate) fn wire_f32(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

pub(crate) fn malformed(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Malformed, message)
}

/// `Retry-After` as a wait: delay-seconds (fractions accepted) or an
/// HTTP-date (a date in the past is no wait).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Some(d) = v
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
    {
        return Some(d);
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the HTTP-date format
/// servers send.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let rest = s.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u32 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u32
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // Four-digit years only: the date arithmetic below stays far from
    // overflow whatever the header says.
    if !(1..=31).contains(&day) || !(1970..=9999).contains(&year) || *h > 23 || *m > 59 || *sec > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + (*h * 3600 + *m * 60 + *sec) as i64;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The provider's error message from an error body: `{"error": {"message"}}`
/// (OpenAI, Anthropic), `{"error": "..."}`, `{"message"}`, `{"detail"}`, or
/// the text itself.
pub(crate) fn error_text(body: &[u8]) -> Option<String> {
    let text = if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let found = [
            &v["error"]["message"],
            &v["error"],
            &v["message"],
            &v["detail"],
        ]
        .into_iter()
        .find_map(|x| x.as_str().map(str::to_string));
        found.unwrap_or_else(|| v.to_string())
    } else {
        String::from_utf8_lossy(body).trim().to_string()
    };
    if text.is_empty() {
        return None;
    }
    Some(truncate(text, MAX_ERROR_TEXT))
}

pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// A response body as a stream of byte chunks; errors are their message.
pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

pub(crate) fn byte_stream(resp: reqwest::Response) -> ByteStream {
    Box::pin(resp.bytes_stream().map(|r| r.map_err(|e| error_chain(&e))))
}

/// Read a whole (non-streamed) body, allowing at most `idle` between two
/// reads: a body that goes silent is `StreamStalled`, one that breaks is
/// `Connection`.
pub(crate) async fn read_body(
    mut stream: ByteStream,
    idle: Duration,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(bytes))) => {
                if body.len() + bytes.len() > MAX_RESPONSE_BYTES {
                    return Err(malformed(format!(
                        "response body larger than {} MiB",
                        MAX_RESPONSE_BYTES >> 20
                    )));
                }
                body.extend_from_slice(&bytes);
            }
            Ok(None) => return Ok(body),
            Ok(Some(Err(e))) => {
                return Err(ProviderError::new(
                    ProviderErrorKind::Connection,
                    format!("response body broken after {} bytes: {e}", body.len()),
                ));
            }
            Err(_) => {
                return Err(ProviderError::new(
                    ProviderErrorKind::StreamStalled,
                    format!(
                        "response body stalled: no data for {} ms after {} bytes",
                        idle.as_millis(),
                        body.len()
                    ),
                ));
            }
        }
    }
}

/// The start of an error response's body (at most [`MAX_ERROR_BODY`]),
/// read for at most `idle` (an error body that never ends must not hold the
/// attempt, nor a huge one its memory).
pub(crate) async fn read_error_body(resp: reqwest::Response, idle: Duration) -> Bytes {
    let mut stream = resp.bytes_stream();
    let mut body = Vec::new();
    let read = async {
        while let Some(Ok(bytes)) = stream.next().await {
            let room = MAX_ERROR_BODY - body.len();
            body.extend_from_slice(&bytes[..bytes.len().min(room)]);
            if body.len() >= MAX_ERROR_BODY {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(idle, read).await;
    Bytes::from(body)
}

/// How long [`SseReader::next`] may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Until this instant, however much arrives meanwhile.
    Until(Instant),
    /// At most this long between two reads of the body.
    Idle(Duration),
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field; empty when there was none.
    pub event: String,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SseError {
    /// Nothing (more) arrived in time.
    TimedOut,
    /// The body broke: reset, read error.
    Broken(String),
    /// The stream is not text.
    NotUtf8,
    /// A line or an event past [`MAX_SSE_LINE`] / [`MAX_SSE_EVENT`].
    TooLarge(&'static str),
}

impl SseError {
    /// What a stream failure before the answer was complete means, for
    /// both providers: a timeout before the first token is
    /// `FirstTokenTimeout`, after it `StreamStalled`; a broken body is a
    /// transient connection error; non-text is malformed.
    pub(crate) fn into_provider_error(
        self,
        t: &Timeouts,
        before_first_token: bool,
        chunks: usize,
    ) -> ProviderError {
        match self {
            SseError::TimedOut if before_first_token => ProviderError::new(
                ProviderErrorKind::FirstTokenTimeout,
                format!(
                    "no first token within the first-token timeout of {} ms",
                    t.first_token.as_millis()
                ),
            ),
            SseError::TimedOut => ProviderError::new(
                ProviderErrorKind::StreamStalled,
                format!(
                    "stream stalled: no data for {} ms after {chunks} chunks",
                    t.idle.as_millis()
                ),
            ),
            SseError::Broken(e) => ProviderError::new(
                ProviderErrorKind::Connection,
                format!("stream broken after {chunks} chunks: {e}"),
            ),
            SseError::NotUtf8 => {
                malformed(format!("stream is not valid utf-8 after {chunks} chunks"))
            }
            SseError::TooLarge(what) => {
                malformed(format!("stream malformed after {chunks} chunks: {what}"))
            }
        }
    }
}

/// Reads server-sent events off a body. Comments (`: ...`) and fields other
/// than `event` and `data` are skipped; events without data are dropped.
/// Linear in the body's size however it is split into chunks (each byte is
/// scanned for a line end once), and bounded: a line past [`MAX_SSE_LINE`]
/// or an event past [`MAX_SSE_EVENT`] is an error, not a growing buffer.
pub(crate) struct SseReader {
    stream: ByteStream,
    buf: Vec<u8>,
    /// `buf[..start]` is consumed (dropped when it is half the buffer).
    start: usize,
    /// `buf[start..scanned]` holds no line end.
    scanned: usize,
    event: String,
    data: Option<String>,
    eof: bool,
    /// Bytes read off the body so far.
    read: usize,
    /// Events returned so far.
    pub events: usize,
}

impl SseReader {
    pub(crate) fn new(stream: ByteStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            event: String::new(),
            data: None,
            eof: false,
            read: 0,
            events: 0,
        }
    }

    /// The next event; `None` at the end of the body. Cancel-safe: dropping
    /// the future loses nothing.
    pub(crate) async fn next(&mut self, wait: Wait) -> Result<Option<SseEvent>, SseError> {
        loop {
            if let Some(event) = self.parse_buffered()? {
                return Ok(Some(event));
            }
            if self.eof {
                // A last event without its blank line still counts.
                return Ok(self.dispatch());
            }
            let deadline = match wait {
                Wait::Until(at) => at,
                Wait::Idle(idle) => Instant::now() + idle,
            };
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Err(SseError::TimedOut),
                Ok(None) => self.eof = true,
                Ok(Some(Ok(bytes))) => {
                    self.read += bytes.len();
                    if self.read > MAX_STREAM_BYTES {
                        return Err(SseError::TooLarge("the stream is over 64 MiB"));
                    }
                    self.buf.extend_from_slice(&bytes)
                }
                Ok(Some(Err(e))) => return Err(SseError::Broken(e)),
            }
        }
    }

    /// Read on until the end of the body, for at most `budget`, ignoring
    /// what comes: a body read to its end lets the connection be reused.
    pub(crate) async fn drain(&mut self, budget: Duration) {
        if self.eof {
            return;
        }
        let deadline = Instant::now() + budget;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.stream.next()).await {}
        self.eof = true;
    }

    /// The next complete line (without its line end), if one is buffered.
    fn next_line(&mut self) -> Result<Option<std::ops::Range<usize>>, SseError> {
        match self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            Some(at) => {
                let end = self.scanned + at;
                let line = self.start..end;
                self.start = end + 1;
                self.scanned = self.start;
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() - self.start > MAX_SSE_LINE {
                    return Err(SseError::TooLarge("a line longer than 4 MiB"));
                }
                Ok(None)
            }
        }
    }

    /// Drop the consumed start of the buffer once it is half of it: each
    /// byte is moved at most once more.
    fn compact(&mut self) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
    }

    fn parse_buffered(&mut self) -> Result<Option<SseEvent>, SseError> {
        let result = self.parse_lines();
        self.compact();
        result
    }

    fn parse_lines(&mut self) -> Result<Option<SseEvent>, SseError> {
        while let Some(range) = self.next_line()? {
            let line = std::str::from_utf8(&self.buf[range]).map_err(|_| SseError::NotUtf8)?;
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                if let Some(event) = self.dispatch() {
                    return Ok(Some(event));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => {
                    let held = self.data.as_ref().map_or(0, String::len);
                    if held + value.len() > MAX_SSE_EVENT {
                        return Err(SseError::TooLarge("an event with more than 16 MiB of data"));
                    }
                    match &mut self.data {
                        Some(data) => {
                            data.push('\n');
                            data.push_str(value);
                        }
                        None => self.data = Some(value.to_string()),
                    }
                }
                "event" => self.event = value.to_string(),
                _ => {}
            }
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        let data = self.data.take()?;
        self.events += 1;
        Some(SseEvent { event, data })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;

    fn endpoint() -> EndpointConfig {
        EndpointConfig::new("e", crate::ProviderKind::Openai)
    }

    #[tokio::test]
    async fn transport_errors_name_no_credentials_or_query() {
        let cfg = endpoint();
        let t = Timeouts::from_config(&cfg);
        // A closed port on loopback: the connect is refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("http://user:pa55@127.0.0.1:{port}/v1/chat?key=s3cret#frag");
        let e = client(&cfg, t).unwrap().get(&url).send().await.unwrap_err();
        let err = transport_error(&e, t, "sending request");
        let text = err.to_string();
        assert!(!text.contains("pa55") && !text.contains("s3cret"), "{text}");
        assert!(
            text.contains(&format!("127.0.0.1:{port}/v1/chat")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_client_follows_no_redirect() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Where a redirect would send the request (and its key): counts
        // the connections it gets.
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = elsewhere.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((_s, _)) = elsewhere.accept().await {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{target}/v1/chat/completions\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let cfg = endpoint();
        let resp = client(&cfg, Timeouts::from_config(&cfg))
            .unwrap()
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("authorization", "Bearer sk-secret")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 307);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// A body fed by hand: send chunks (or errors) through the sender;
    /// dropping it ends the body.
    pub(crate) fn channel_body() -> (
        futures::channel::mpsc::UnboundedSender<Result<Bytes, String>>,
        ByteStream,
    ) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        (tx, Box::pin(rx))
    }

    pub(crate) fn send(
        tx: &futures::channel::mpsc::UnboundedSender<Result<Bytes, String>>,
        s: &str,
    ) {
        tx.unbounded_send(Ok(Bytes::from(s.to_string()))).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_split_on_blank_lines_across_chunks() {
        let (tx, body) = channel_body();
        let mut r = SseReader::new(body);
        send(&tx, ": comment\r\nevent: a\r\ndata: {\"x\"");
        send(&tx, ":1}\r\n\r\ndata: one\ndata:two\n\nid: 7\n\n");
        send(&tx, "data: last");
        drop(tx);
        let wait = Wait::Idle(Duration::from_secs(1));
        assert_eq!(
            r.next(wait).await.unwrap(),
            Some(SseEvent {
                event: "a".into(),
                data: "{\"x\":1}".into()
            })
        );
        assert_eq!(r.next(wait).await.unwrap().unwrap().data, "one\ntwo");
        // "data: last" has no newline: an incomplete line is dropped at EOF.
        assert_eq!(r.next(wait).await.unwrap(), None);
        assert_eq!(r.events, 2);
    }

    /// Every event of `body` read when it arrives split at `cuts`.
    fn events_of(body: &[u8], cuts: &[usize]) -> Result<Vec<SseEvent>, SseError> {
        let (tx, stream) = channel_body();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain([body.len()]) {
            if cut > at {
                tx.unbounded_send(Ok(Bytes::copy_from_slice(&body[at..cut])))
                    .unwrap();
                at = cut;
            }
        }
        drop(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = SseReader::new(stream);
            let mut out = Vec::new();
            while let Some(e) = r.next(Wait::Idle(Duration::from_secs(5))).await? {
                out.push(e);
            }
            Ok(out)
        })
    }

    proptest::proptest! {
        /// However a stream is cut into chunks, the same events come out,
        /// and no input makes the reader panic.
        #[test]
        fn events_do_not_depend_on_chunking(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "data: [a-z{}\":, ]{0,20}",
                    "event: [a-z_]{0,10}",
                    ": [ -~]{0,10}",
                    "(id|retry): [0-9]{0,4}",
                    proptest::strategy::Just(String::new()),
                    "[ -~]{0,12}",
                ],
                0..24,
            ),
            crlf in proptest::bool::ANY,
            cuts in proptest::collection::vec(0usize..4096, 0..12),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let body: String = lines.iter().map(|l| format!("{l}{end}")).collect();
            let whole = events_of(body.as_bytes(), &[]);
            let split = events_of(body.as_bytes(), &cuts);
            proptest::prop_assert_eq!(whole, split);
        }

        /// Arbitrary bytes: an error or events, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            cuts in proptest::collection::vec(0usize..512, 0..8),
        ) {
            let _ = events_of(&body, &cuts);
        }
    }

    /// A line that never ends, or an event that never does, is an error
    /// once past its cap, not a buffer growing without bound; reading is
    /// linear however finely the body is cut.
    #[test]
    fn lines_and_events_are_capped() {
        let long_line = vec![b'x'; MAX_SSE_LINE + 2];
        let cuts: Vec<usize> = (1..64).map(|i| i * (MAX_SSE_LINE / 64)).collect();
        assert!(matches!(
            events_of(&long_line, &cuts),
            Err(SseError::TooLarge(_))
        ));
        let line = format!("data: {}\n", "y".repeat(1 << 20));
        let big_event = line.repeat(MAX_SSE_EVENT / (1 << 20) + 1);
        assert!(matches!(
            events_of(big_event.as_bytes(), &[]),
            Err(SseError::TooLarge(_))
        ));
        // 64 Ki events of one byte each, delivered a byte at a time.
        let many = "data: z\n\n".repeat(1 << 16);
        let cuts: Vec<usize> = (0..many.len()).collect();
        assert_eq!(events_of(many.as_bytes(), &cuts).unwrap().len(), 1 << 16);
        // A whole stream of well-formed events is capped too: what its
        // answer and deltas hold stays bounded.
        let event = format!("data: {}\n\n", "w".repeat((1 << 20) - 8));
        let endless = event.repeat(MAX_STREAM_BYTES / (1 << 20) + 1);
        let cut: Vec<usize> = (1..80).map(|i| i << 20).collect();
        match events_of(endless.as_bytes(), &cut) {
            Err(SseError::TooLarge(what)) => assert!(what.contains("64 MiB"), "{what}"),
            other => panic!("{:?}", other.map(|e| e.len())),
        }
        let under = event.repeat(MAX_STREAM_BYTES / (1 << 20) - 1);
        assert_eq!(
            events_of(under.as_bytes(), &cut).unwrap().len(),
            MAX_STREAM_BYTES / (1 << 20) - 1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_and_breaks_are_reported() {
        let (tx, body) = channel_body();
        let mut r = SseReader::new(body);
        let start = Instant::now();
        let err = r.next(Wait::Idle(Duration::from_millis(300))).await;
        assert_eq!(err, Err(SseError::TimedOut));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        tx.unbounded_send(Err("reset".into())).unwrap();
        assert_eq!(
            r.next(Wait::Until(Instant::now() + Duration::from_secs(1)))
                .await,
            Err(SseError::Broken("reset".into()))
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 2015-10-21 07:27:50 UTC
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_at(&h, now), None);
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, "0.5".parse().unwrap());
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_millis(500)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(10)));
        // In the past: no wait.
        let later = now + Duration::from_secs(3600);
        assert_eq!(retry_after_at(&h, later), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after_at(&h, now), None);
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(951_825_600))
        );
        assert_eq!(parse_http_date("Tue, 29 Feb 2000 12:00:00 PST"), None);
        assert_eq!(parse_http_date("Tue, 29 Foo 2000 12:00:00 GMT"), None);
        // Dates far off cannot overflow: years beyond four digits are not
        // dates, and the latest one is a long (capped later) wait.
        for year in ["99999999999999999", "-9223372036854775808", "1969", "10000"] {
            let v = format!("Fri, 31 Dec {year} 23:59:59 GMT");
            assert_eq!(parse_http_date(&v), None, "{v}");
            h.insert(RETRY_AFTER, v.parse().unwrap());
            assert_eq!(retry_after_at(&h, now), None, "{v}");
        }
        h.insert(
            RETRY_AFTER,
            "Fri, 31 Dec 9999 23:59:59 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after_at(&h, now),
            Some(Duration::from_secs(253_402_300_799 - 1_445_412_470))
        );
        h.insert(RETRY_AFTER, u64::MAX.to_string().parse().unwrap());
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(u64::MAX)));
        h.insert(RETRY_AFTER, "1e300".parse().unwrap());
        assert_eq!(retry_after_at(&h, now), None);
    }

    #[test]
    fn error_text_finds_the_provider_message() {
        assert_eq!(
            error_text(br#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#),
            Some("bad model".into())
        );
        assert_eq!(
            error_text(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            Some("Overloaded".into())
        );
        assert_eq!(error_text(br#"{"error":"nope"}"#), Some("nope".into()));
        assert_eq!(error_text(b"plain text\n"), Some("plain text".into()));
        assert_eq!(error_text(b""), None);
        let long = "é".repeat(MAX_ERROR_TEXT);
        assert!(error_text(long.as_bytes()).unwrap().len() <= MAX_ERROR_TEXT + 3);
    }
}
