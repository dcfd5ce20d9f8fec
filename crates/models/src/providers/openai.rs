//! `openai`: any OpenAI-compatible Chat Completions API, over reqwest.
//!
//! Sends `POST {base_url}/chat/completions`, with `Authorization: Bearer`
//! when a key is configured, and reads either the JSON answer or, when the
//! endpoint streams, the SSE stream (`stream_options.include_usage` asks for
//! usage in the final chunk). A user message with images is sent as content
//! parts: its text, then one `image_url` part per image (with `detail` when
//! set). The request's tool definitions go out as `tools: [{"type":
//! "function", "function": {...}}]`, and its tool choice, when not auto, as
//! `tool_choice` (`"none"`, `"required"` or `{"type": "function", "function":
//! {"name"}}`, only with tools); `max_tokens`, `temperature`, `top_p` and
//! `stop` are sent when set. Tool calls arriving in fragments are reassembled
//! by their index. A request with a `json_schema`
//! asks for `response_format: {"type": "json_schema", "json_schema": {"name":
//! "output", "schema": ..., "strict": true}}`.
//!
//! Timeouts are those of [`super::http`]: the first token is the first SSE
//! data event (the response headers when not streaming). A stream is only a
//! complete answer when it says so: `[DONE]`, or a chunk with a
//! `finish_reason`. After the `finish_reason` the provider waits for the usage
//! chunk (or `[DONE]`) at most `min(idle_timeout, 1 s)`, and returns as soon as
//! both are in, so a server that never sends `[DONE]` costs no idle timeout.
//! A stream that ends, breaks or stalls before any of that is an error, never
//! a truncated answer.
//!
//! Errors: 429 → `RateLimited` (with `Retry-After`, seconds or HTTP-date);
//! 401/403 → `Auth`; 5xx → `Server`; other 4xx → `ContextLength` when the
//! error's `code`/`type` is `context_length_exceeded` or its message mentions
//! the maximum context length, `ContentPolicy` when it is `content_filter` or
//! `content_policy_violation` (the provider's message kept verbatim), else
//! `Client`. A 200 answer whose `finish_reason` is `content_filter` is a
//! `ContentPolicy` error too: the answer was cut by the provider's filter.
//!
//! With `logprobs = true` the request asks for token log-probabilities and
//! the response's `confidence` is `exp(mean logprob)` over the entries of
//! `choices[0].logprobs.content` (all chunks' when streaming). Entries whose
//! `logprob` is missing or not a finite number are skipped; with none left
//! the confidence is `None`. The bare `NaN`, `Infinity` and `-Infinity` that
//! some servers write for such values (not JSON) are read as `null`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use baton_types::{FinishReason, Message, Role, ToolCall, ToolChoice, ToolDefinition, Usage};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::http::{
    self, ByteStream, SseError, SseReader, Timeouts, Wait, error_text, malformed, read_api_key,
};
use super::openai_wire::{SentBody, SentMessage};
use crate::{
    Continuation, Delta, DeltaSink, EndpointConfig, ModelRequest, ModelResponse, Provider,
    ProviderError, ProviderErrorKind, Result,
};

/// A client of one OpenAI-compatible endpoint. Its `Debug` output never
/// shows the api key.
#[derive(Clone)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    url: reqwest::Url,
    /// `{base_url}/embeddings`.
    embeddings_url: reqwest::Url,
    model: String,
    api_key: Option<SecretString>,
    stream: bool,
    max_output_tokens: Option<u32>,
    logprobs: bool,
    continuation: Continuation,
    timeouts: Timeouts,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.url.as_str())
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("stream", &self.stream)
            .field("logprobs", &self.logprobs)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// Build from config, reading the api key from `api_key_env` or `api_key_file`.
    pub fn from_config(cfg: &EndpointConfig) -> Result<Self> {
        let key = read_api_key(cfg)?;
        Self::new(cfg, key)
    }

    /// Build from config with the given key (the config's key fields are ignored).
    pub fn new(cfg: &EndpointConfig, api_key: Option<SecretString>) -> Result<Self> {
        let base = cfg
            .base_url
            .as_deref()
            .ok_or_else(|| cfg.invalid("base_url", "required for provider openai"))?;
        let timeouts = Timeouts::from_config(cfg);
        // Parsed once here, not on every request.
        let url = |path: &str| {
            reqwest::Url::parse(&format!("{}/{path}", base.trim_end_matches('/')))
                .map_err(|e| cfg.invalid("base_url", format!("{base:?} is not a URL: {e}")))
        };
        Ok(Self {
            client: http::client(cfg, timeouts)?,
            url: url("chat/completions")?,
            embeddings_url: url("embeddings")?,
            model: cfg.model.clone(),
            api_key,
            stream: cfg.stream,
            max_output_tokens: cfg.max_output_tokens,
            logprobs: cfg.logprobs,
            continuation: cfg.continuation(),
            timeouts,
        })
    }

    /// The request body; an error when a tool definition cannot be sent.
    fn wire_body<'a>(&'a self, req: &'a ModelRequest) -> Result<SentBody<'a>, ProviderError> {
        let mut messages: Vec<SentMessage<'_>> = req.messages.iter().map(SentMessage::of).collect();
        let mut body = serde_json::Map::new();
        if let Some(start) = &req.continue_from {
            // The answer so far as the final assistant message, for the
            // server to continue in the way the endpoint declares.
            match self.continuation {
                Continuation::Prefix => messages.push(SentMessage::partial_answer(start, true)),
                Continuation::ContinueFinalMessage => {
                    messages.push(SentMessage::partial_answer(start, false));
                    body.insert("continue_final_message".into(), json!(true));
                    body.insert("add_generation_prompt".into(), json!(false));
                }
                Continuation::None | Continuation::Prefill => {
                    return Err(ProviderError::new(
                        ProviderErrorKind::InvalidRequest,
                        "this endpoint cannot continue a partial answer (continuation = none)",
                    ));
                }
            }
        }
        if self.stream {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        if let Some(max) = req.max_output_tokens.or(self.max_output_tokens) {
            body.insert("max_tokens".into(), json!(max));
        }
        if let Some(t) = req.temperature {
            body.insert("temperature".into(), json!(http::wire_f32(t)));
        }
        if let Some(p) = req.top_p {
            body.insert("top_p".into(), json!(http::wire_f32(p)));
        }
        if !req.stop.is_empty() {
            body.insert("stop".into(), json!(req.stop));
        }
        if self.logprobs {
            body.insert("logprobs".into(), json!(true));
        }
        if !req.tools.is_empty() {
            let tools = req
                .tools
                .iter()
                .map(wire_tool)
                .collect::<Result<Vec<Value>, ProviderError>>()?;
            body.insert("tools".into(), Value::Array(tools));
            let choice = match &req.tool_choice {
                ToolChoice::Auto => None,
                ToolChoice::None => Some(json!("none")),
                ToolChoice::Required => Some(json!("required")),
                ToolChoice::Tool(name) => {
                    Some(json!({"type": "function", "function": {"name": name}}))
                }
            };
            if let Some(c) = choice {
                body.insert("tool_choice".into(), c);
            }
        }
        if let Some(schema) = &req.json_schema {
            body.insert(
                "response_format".into(),
                json!({
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": schema, "strict": true},
                }),
            );
        }
        Ok(SentBody {
            model: &self.model,
            messages,
            stream: self.stream,
            rest: body,
        })
    }

    /// A whole (non-streamed) JSON answer.
    fn parse_json(&self, bytes: &[u8]) -> Result<ModelResponse, ProviderError> {
        let parsed: ChatResponse =
            parse_lenient(bytes).map_err(|e| malformed(format!("malformed response body: {e}")))?;
        if let Some(err) = parsed.error.filter(|e| !e.is_null()) {
            return Err(in_band_error(&err, "provider answered with an error"));
        }
        let choice = parsed
            .choices
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| malformed("response has no choices"))?;
        let mut logprobs = LogprobMean::default();
        if let Some(lp) = &choice.logprobs {
            logprobs.add(lp);
        }
        let message = choice.message.unwrap_or_default();
        let tool_calls = message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let f = c.function.unwrap_or_default();
                ToolCall {
                    id: c.id.unwrap_or_else(|| format!("call_{i}")),
                    name: f.name.unwrap_or_default(),
                    arguments: f.arguments.unwrap_or_default(),
                }
            })
            .collect();
        let finish_reason = choice
            .finish_reason
            .ok_or_else(|| malformed("response has no finish_reason"))?;
        let finish_reason = checked_finish_reason(&finish_reason)?;
        Ok(ModelResponse {
            message: assistant(message.content.unwrap_or_default(), tool_calls),
            usage: parsed.usage.map(WireUsage::into_usage).unwrap_or_default(),
            finish_reason,
            model: parsed
                .model
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| self.model.clone()),
            attempts: 1,
            confidence: logprobs.confidence(),
            embeddings: None,
        })
    }

    /// An SSE answer. See the module docs for when it is complete.
    async fn read_stream(
        &self,
        body: ByteStream,
        deltas: Option<&DeltaSink>,
        first_token_deadline: Instant,
    ) -> Result<ModelResponse, ProviderError> {
        let t = self.timeouts;
        let mut reader = SseReader::new(body);
        let mut acc = StreamAccumulator::default();
        // Set once the finish_reason is in: how long to wait for the rest.
        let mut grace: Option<Instant> = None;
        loop {
            let wait = match grace {
                Some(at) => Wait::Until(at),
                None if reader.events == 0 => Wait::Until(first_token_deadline),
                None => Wait::Idle(t.idle),
            };
            let finished = acc.finish_reason.is_some();
            match reader.next(wait).await {
                Ok(Some(event)) => {
                    let done = acc.event(&event.data, reader.events - 1, deltas)?;
                    if done || (acc.finish_reason.is_some() && acc.usage.is_some()) {
                        reader.drain(t.drain_budget()).await;
                        return acc.finish(&self.model);
                    }
                    if acc.finish_reason.is_some() && grace.is_none() {
                        grace = Some(Instant::now() + t.usage_grace());
                    }
                }
                // The answer is whole; only the usage or [DONE] is missing.
                Ok(None) | Err(SseError::TimedOut | SseError::Broken(_)) if finished => {
                    return acc.finish(&self.model);
                }
                Ok(None) => {
                    return Err(ProviderError::new(
                        ProviderErrorKind::Connection,
                        format!(
                            "stream ended before the answer was complete: no finish_reason \
                             and no [DONE] after {} chunks",
                            reader.events
                        ),
                    ));
                }
                Err(e) => {
                    return Err(e.into_provider_error(&t, reader.events == 0, reader.events));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Provider for OpenAiProvider {
    fn kind(&self) -> &'static str {
        "openai"
    }

    async fn embed(&self, req: &ModelRequest) -> Result<ModelResponse, ProviderError> {
        let key = req
            .api_key
            .as_ref()
            .map(|k| k.expose())
            .or(self.api_key.as_ref().map(|k| k.expose_secret()));
        super::embeddings::call(
            super::embeddings::Target {
                client: &self.client,
                url: &self.embeddings_url,
                model: &self.model,
                api_key: key,
                timeouts: self.timeouts,
                status_error,
            },
            req,
        )
        .await
    }

    async fn complete(
        &self,
        req: &ModelRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<ModelResponse, ProviderError> {
        let mut rb = self
            .client
            .post(self.url.clone())
            .json(&self.wire_body(req)?);
        // A tenant's own key, when the call carries one, replaces the endpoint's.
        if let Some(key) = &req.api_key {
            rb = rb.bearer_auth(key.expose());
        } else if let Some(key) = &self.api_key {
            rb = rb.bearer_auth(key.expose_secret());
        }
        if self.stream {
            rb = rb.header(ACCEPT, "text/event-stream");
        }
        let first_token_deadline = Instant::now() + self.timeouts.first_token;
        let resp = http::send(rb, self.timeouts, first_token_deadline).await?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = http::retry_after(resp.headers());
            let body = http::read_error_body(resp, self.timeouts.idle).await;
            return Err(status_error(status.as_u16(), &body, retry_after));
        }
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = http::byte_stream(resp);
        if is_sse {
            self.read_stream(body, deltas, first_token_deadline).await
        } else {
            // Also covers servers that ignore `stream: true` and answer in JSON.
            let bytes = http::read_body(body, self.timeouts.idle).await?;
            self.parse_json(&bytes)
        }
    }
}

/// A tool definition in the Chat Completions shape. Its parameters must be
/// a JSON Schema object given as JSON text.
fn wire_tool(tool: &ToolDefinition) -> Result<Value, ProviderError> {
    let invalid = |reason: String| {
        ProviderError::new(
            ProviderErrorKind::InvalidRequest,
            format!("tool {:?}: {reason}", tool.name),
        )
    };
    let parameters: Value = serde_json::from_str(&tool.parameters)
        .map_err(|e| invalid(format!("parameters are not valid JSON: {e}")))?;
    if !parameters.is_object() {
        return Err(invalid(
            "parameters must be a JSON Schema object".to_string(),
        ));
    }
    Ok(json!({
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": parameters,
        },
    }))
}

fn assistant(content: String, tool_calls: Vec<ToolCall>) -> Message {
    Message {
        role: Role::Assistant,
        content,
        tool_calls,
        tool_call_id: None,
        images: Vec::new(),
    }
}

/// A finish reason as the normalised enum; `content_filter` is an error: the
/// provider's filter cut the answer.
fn checked_finish_reason(reason: &str) -> Result<FinishReason, ProviderError> {
    match FinishReason::from_provider(reason) {
        FinishReason::ContentFilter => Err(ProviderError::new(
            ProviderErrorKind::ContentPolicy,
            format!("the provider's content filter stopped the answer (finish_reason {reason})"),
        )),
        other => Ok(other),
    }
}

/// The strings labelling an OpenAI error object: its `code`, `type` and
/// Azure's `innererror.code`.
fn error_labels(err: &Value) -> Vec<&str> {
    [&err["code"], &err["type"], &err["innererror"]["code"]]
        .into_iter()
        .filter_map(Value::as_str)
        .collect()
}

/// `ContextLength` or `ContentPolicy` when an OpenAI error object (`{"code",
/// "type", "message"}`) says so.
fn refusal_kind(err: &Value, message: &str) -> Option<ProviderErrorKind> {
    let labels = error_labels(err);
    let lower = message.to_lowercase();
    if labels.contains(&"context_length_exceeded")
        || lower.contains("maximum context length")
        || lower.contains("context_length_exceeded")
    {
        return Some(ProviderErrorKind::ContextLength);
    }
    if labels.iter().any(|l| {
        matches!(
            *l,
            "content_filter" | "content_policy_violation" | "ResponsibleAIPolicyViolation"
        )
    }) {
        return Some(ProviderErrorKind::ContentPolicy);
    }
    None
}

/// The provider error of a non-2xx answer.
fn status_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> ProviderError {
    let detail = error_text(body).unwrap_or_else(|| {
        StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no details")
            .to_string()
    });
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = if parsed["error"].is_object() {
        &parsed["error"]
    } else {
        &parsed
    };
    let kind = match status {
        429 => ProviderErrorKind::RateLimited { retry_after },
        401 | 403 => ProviderErrorKind::Auth,
        400..=499 => refusal_kind(err, &detail).unwrap_or(ProviderErrorKind::Client { status }),
        500..=599 => ProviderErrorKind::Server { status },
        _ => ProviderErrorKind::Malformed,
    };
    ProviderError::new(kind.clone(), described(&kind, status, &detail))
}

/// The message of an http error of `kind`.
fn described(kind: &ProviderErrorKind, status: u16, detail: &str) -> String {
    match kind {
        ProviderErrorKind::ContentPolicy => {
            format!("provider refused the content (http {status}): {detail}")
        }
        ProviderErrorKind::ContextLength => {
            format!(
                "conversation too long for the model's context window (http {status}): {detail}"
            )
        }
        _ => format!("provider returned http {status}: {detail}"),
    }
}

/// An `{"error": ...}` inside a 200 answer or a stream.
fn in_band_error(err: &Value, context: &str) -> ProviderError {
    let detail = err["message"]
        .as_str()
        .map(|s| http::truncate(s.to_string(), http::MAX_ERROR_TEXT))
        .or_else(|| error_text(err.to_string().as_bytes()))
        .unwrap_or_default();
    let kind = refusal_kind(err, &detail).unwrap_or_else(|| {
        let labels = error_labels(err);
        if labels
            .iter()
            .any(|l| matches!(*l, "rate_limit_exceeded" | "rate_limit_error"))
        {
            ProviderErrorKind::RateLimited { retry_after: None }
        } else {
            ProviderErrorKind::Server { status: 502 }
        }
    });
    let message = match kind {
        ProviderErrorKind::ContentPolicy => format!("provider refused the content: {detail}"),
        _ => format!("{context}: {detail}"),
    };
    ProviderError::new(kind, message)
}

#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// The answer being assembled from stream chunks.
#[derive(Debug, Default)]
struct StreamAccumulator {
    text: String,
    calls: BTreeMap<usize, PartialCall>,
    last_call: Option<usize>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    logprobs: LogprobMean,
}

impl StreamAccumulator {
    /// Take the data of SSE event number `index` (0-based); true when it was
    /// `[DONE]`. A chunk that is not JSON, or not a chunk (an object with
    /// `choices`, `usage` or `error`), is `Malformed`.
    fn event(
        &mut self,
        data: &str,
        index: usize,
        deltas: Option<&DeltaSink>,
    ) -> Result<bool, ProviderError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        let chunk: ChatChunk = parse_lenient(data.as_bytes())
            .map_err(|e| malformed(format!("malformed stream chunk {index}: {e}")))?;
        if let Some(err) = chunk.error.filter(|e| !e.is_null()) {
            return Err(in_band_error(&err, "provider reported an error mid-stream"));
        }
        if chunk.choices.is_none() && chunk.usage.is_none() {
            return Err(malformed(format!(
                "malformed stream chunk {index}: neither choices nor usage: {}",
                http::truncate(data.to_string(), 200)
            )));
        }
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            self.model = Some(model);
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into_usage());
        }
        for choice in chunk.choices.unwrap_or_default() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    if let Some(sink) = deltas {
                        let _ = sink.send(Delta::Text(text.clone()));
                    }
                    self.text.push_str(&text);
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    self.tool_call(call);
                }
            }
            if let Some(lp) = &choice.logprobs {
                self.logprobs.add(lp);
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        Ok(false)
    }

    fn tool_call(&mut self, call: ToolCallDelta) {
        let new_id = call.id.as_deref().filter(|id| !id.is_empty());
        let index = match (call.index, self.last_call) {
            (Some(i), _) => i,
            // No index: a new id starts a new call, anything else continues the last.
            (None, Some(last)) if new_id.is_none_or(|id| self.calls[&last].id == id) => last,
            (None, _) => self.calls.len(),
        };
        self.last_call = Some(index);
        let entry = self.calls.entry(index).or_default();
        if let Some(id) = new_id {
            entry.id = id.to_string();
        }
        if let Some(f) = call.function {
            if let Some(name) = f.name {
                entry.name.push_str(&name);
            }
            if let Some(args) = f.arguments {
                entry.arguments.push_str(&args);
            }
        }
    }

    /// The answer; a `content_filter` finish is a `ContentPolicy` error.
    fn finish(self, configured_model: &str) -> Result<ModelResponse, ProviderError> {
        let tool_calls = self
            .calls
            .into_iter()
            .map(|(i, c)| ToolCall {
                id: if c.id.is_empty() {
                    format!("call_{i}")
                } else {
                    c.id
                },
                name: c.name,
                arguments: c.arguments,
            })
            .collect();
        let finish_reason = match self.finish_reason {
            Some(r) => checked_finish_reason(&r)?,
            None => FinishReason::Stop, // [DONE] without a finish_reason
        };
        Ok(ModelResponse {
            message: assistant(self.text, tool_calls),
            usage: self.usage.unwrap_or_default(),
            finish_reason,
            model: self.model.unwrap_or_else(|| configured_model.to_string()),
            attempts: 1,
            confidence: self.logprobs.confidence(),
            embeddings: None,
        })
    }
}

/// Parse JSON; if that fails, try again with the non-JSON literals `NaN`,
/// `Infinity` and `-Infinity` (outside strings) read as `null`, and report
/// the first error if that fails too.
fn parse_lenient<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(first) => match non_finite_as_null(bytes) {
            Some(fixed) => serde_json::from_slice(&fixed).map_err(|_| first),
            None => Err(first),
        },
    }
}

/// `bytes` with `NaN`, `Infinity` and `-Infinity` outside strings replaced by
/// `null`; `None` when there are none.
fn non_finite_as_null(bytes: &[u8]) -> Option<Vec<u8>> {
    const LITERALS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];
    let mut out = Vec::with_capacity(bytes.len());
    let mut replaced = false;
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if let Some(lit) = LITERALS.iter().find(|l| bytes[i..].starts_with(l)) {
            out.extend_from_slice(b"null");
            replaced = true;
            i += lit.len();
            continue;
        }
        out.push(b);
        i += 1;
    }
    replaced.then_some(out)
}

/// The running mean of token log-probabilities, for `confidence`.
#[derive(Debug, Default, Clone, Copy)]
struct LogprobMean {
    sum: f64,
    count: u64,
}

impl LogprobMean {
    /// Take the `logprob` of each entry of a choice's `logprobs.content`;
    /// anything else (null content, missing or non-numeric or non-finite
    /// logprobs) is skipped.
    fn add(&mut self, logprobs: &Value) {
        let Some(entries) = logprobs.get("content").and_then(Value::as_array) else {
            return;
        };
        for entry in entries {
            if let Some(lp) = entry.get("logprob").and_then(Value::as_f64)
                && lp.is_finite()
            {
                self.sum += lp;
                self.count += 1;
            }
        }
    }

    /// `exp(mean logprob)` clamped to `[0, 1]`; `None` without any logprob
    /// (or if the sum stopped being a number).
    fn confidence(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let c = (self.sum / self.count as f64).exp();
        if c.is_nan() {
            return None;
        }
        Some(c.clamp(0.0, 1.0))
    }
}

// Wire types: lenient (unknown fields ignored, nulls accepted).

#[derive(Debug, Deserialize)]
struct ChatResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
    /// Kept as JSON: odd values must not make the answer malformed.
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Debug, Default, Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl WireUsage {
    fn into_usage(self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens.unwrap_or(0),
            output_tokens: self.completion_tokens.unwrap_or(0),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<ChunkChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The request body as a value, as it is sent.
    trait Body {
        fn body(&self, req: &ModelRequest) -> Result<Value, ProviderError>;
    }

    impl Body for OpenAiProvider {
        fn body(&self, req: &ModelRequest) -> Result<Value, ProviderError> {
            serde_json::to_value(self.wire_body(req)?)
                .map_err(|e| malformed(format!("cannot serialise the request: {e}")))
        }
    }

    #[test]
    fn tool_call_fragments_are_reassembled_by_index() {
        let mut acc = StreamAccumulator::default();
        let chunks = [
            r#"{"model":"m1","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#,
        ];
        for (i, c) in chunks.into_iter().enumerate() {
            assert!(!acc.event(c, i, None).unwrap());
        }
        assert!(acc.event("[DONE]", 6, None).unwrap());
        let resp = acc.finish("configured").unwrap();
        assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
        assert_eq!(resp.model, "m1");
        assert_eq!(
            resp.usage,
            Usage {
                input_tokens: 7,
                output_tokens: 3
            }
        );
        assert_eq!(
            resp.message.tool_calls,
            vec![
                ToolCall {
                    id: "call_a".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                ToolCall {
                    id: "call_b".into(),
                    name: "get_time".into(),
                    arguments: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn malformed_chunks_and_mid_stream_errors_are_errors() {
        let mut acc = StreamAccumulator::default();
        let err = acc.event("{\"choices\": [", 3, None).unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Malformed);
        let err = acc
            .event(r#"{"error":{"message":"overloaded"}}"#, 4, None)
            .unwrap_err();
        assert!(err.is_transient());
        assert!(err.message.contains("overloaded"), "{}", err.message);
    }

    #[test]
    fn request_body_carries_messages_tools_and_limits() {
        let mut cfg = EndpointConfig::openai("e", "http://127.0.0.1:1/v1/", "gpt-x");
        cfg.max_output_tokens = Some(100);
        let p = OpenAiProvider::new(&cfg, None).unwrap();
        assert_eq!(p.url.as_str(), "http://127.0.0.1:1/v1/chat/completions");
        let mut call = assistant(
            String::new(),
            vec![ToolCall {
                id: "c1".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
        );
        call.tool_call_id = None;
        let result = Message {
            role: Role::Tool,
            content: "42".into(),
            tool_calls: vec![],
            tool_call_id: Some("c1".into()),
            images: Vec::new(),
        };
        let mut req = ModelRequest::new(vec![Message::user("hi"), call, result]);
        req.temperature = Some(0.5);
        let body = p.body(&req).unwrap();
        assert_eq!(body["model"], "gpt-x");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["messages"][1]["content"], Value::Null);
        assert_eq!(
            body["messages"][1]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(body["messages"][2]["tool_call_id"], "c1");
        assert!(body.get("tools").is_none(), "{body}");
        req.max_output_tokens = Some(5);
        assert_eq!(p.body(&req).unwrap()["max_tokens"], 5);
    }

    #[test]
    fn images_become_content_parts_after_the_text() {
        let p = provider(false);
        let mut m = Message::user("what is this?");
        m.images = vec![
            baton_types::Image::url("https://example.com/cat.png"),
            baton_types::Image {
                url: "data:image/png;base64,iVBORw0KGgo=".into(),
                detail: Some("low".into()),
            },
        ];
        let body = p.body(&ModelRequest::new(vec![m])).unwrap();
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            ])
        );
        let plain = p
            .body(&ModelRequest::new(vec![Message::user("hi")]))
            .unwrap();
        assert_eq!(plain["messages"][0]["content"], "hi");
    }

    #[test]
    fn sampling_stop_and_tool_choice_are_sent() {
        let p = provider(false);
        let mut req = ModelRequest::new(vec![Message::user("hi")]);
        req.top_p = Some(0.75);
        req.temperature = Some(0.2);
        req.stop = vec!["END".into(), "\n\n".into()];
        req.tool_choice = ToolChoice::Required;
        let body = p.body(&req).unwrap();
        assert_eq!(body["top_p"], 0.75);
        assert_eq!(
            body["temperature"].to_string(),
            "0.2",
            "not 0.20000000298023224"
        );
        assert_eq!(body["stop"], json!(["END", "\n\n"]));
        // No tools: no tool_choice (OpenAI refuses one without tools).
        assert!(body.get("tool_choice").is_none(), "{body}");
        req.tools = vec![tool("search", "{}")];
        for (choice, wire) in [
            (ToolChoice::Auto, Value::Null),
            (ToolChoice::None, json!("none")),
            (ToolChoice::Required, json!("required")),
            (
                ToolChoice::Tool("search".into()),
                json!({"type": "function", "function": {"name": "search"}}),
            ),
        ] {
            req.tool_choice = choice.clone();
            let body = p.body(&req).unwrap();
            assert_eq!(body["tool_choice"], wire, "{choice:?}");
        }
    }

    fn tool(name: &str, parameters: &str) -> ToolDefinition {
        ToolDefinition {
            name: name.into(),
            description: format!("the {name} tool"),
            parameters: parameters.into(),
        }
    }

    #[test]
    fn tools_are_sent_as_functions_with_parsed_parameters() {
        let cfg = EndpointConfig::openai("e", "http://127.0.0.1:1/v1", "m");
        let p = OpenAiProvider::new(&cfg, None).unwrap();
        let schema = r#"{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}"#;
        let req = ModelRequest::new(vec![Message::user("2+2?")])
            .with_tools(vec![tool("calculator", schema), tool("clock", "{}")]);
        let body = p.body(&req).unwrap();
        assert_eq!(
            body["tools"],
            json!([
                {"type": "function", "function": {
                    "name": "calculator",
                    "description": "the calculator tool",
                    "parameters": serde_json::from_str::<Value>(schema).unwrap(),
                }},
                {"type": "function", "function": {
                    "name": "clock", "description": "the clock tool", "parameters": {},
                }},
            ])
        );
    }

    #[tokio::test]
    async fn a_tool_with_invalid_parameters_fails_before_sending() {
        // Port 1 on loopback: were anything sent, this would be a connection error.
        let cfg = EndpointConfig::openai("e", "http://127.0.0.1:1/v1", "m");
        let p = OpenAiProvider::new(&cfg, None).unwrap();
        for (params, why) in [
            ("{\"type\": ", "not valid JSON"),
            ("", "not valid JSON"),
            ("[1, 2]", "JSON Schema object"),
        ] {
            let req = ModelRequest::new(vec![Message::user("x")])
                .with_tools(vec![tool("ok", "{}"), tool("broken_tool", params)]);
            let err = p.complete(&req, None).await.unwrap_err();
            assert_eq!(err.kind, ProviderErrorKind::InvalidRequest, "{err}");
            assert!(!err.is_transient());
            assert!(
                err.message.contains("\"broken_tool\"") && err.message.contains(why),
                "{err}"
            );
        }
    }

    #[test]
    fn api_keys_come_from_env_or_file_and_stay_secret() {
        let mut cfg = EndpointConfig::openai("e", "http://127.0.0.1:1/v1", "m");
        cfg.api_key_env = Some("BATON_MODELS_TEST_SURELY_UNSET_VAR".into());
        let err = read_api_key(&cfg).unwrap_err().to_string();
        assert!(
            err.starts_with("api_key_env: environment variable")
                && err.ends_with("(endpoint \"e\")"),
            "{err}"
        );

        let dir = std::env::temp_dir().join(format!("baton-models-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "sk-file-secret-123\n").unwrap();
        cfg.api_key_env = None;
        cfg.api_key_file = Some(path.clone());
        let p = OpenAiProvider::from_config(&cfg).unwrap();
        assert_eq!(
            p.api_key.as_ref().map(|k| k.expose_secret()),
            Some("sk-file-secret-123")
        );
        let dbg = format!("{p:?}");
        assert!(
            !dbg.contains("sk-file-secret-123") && dbg.contains("redacted"),
            "{dbg}"
        );
        std::fs::write(&path, "  \n").unwrap();
        assert!(OpenAiProvider::from_config(&cfg).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn provider(logprobs: bool) -> OpenAiProvider {
        let mut cfg = EndpointConfig::openai("e", "http://127.0.0.1:1/v1", "m");
        cfg.logprobs = logprobs;
        cfg.stream = false;
        OpenAiProvider::new(&cfg, None).unwrap()
    }

    fn assert_close(got: Option<f64>, want: f64) {
        let got = got.unwrap_or_else(|| panic!("no confidence, want {want}"));
        assert!((got - want).abs() < 1e-9, "confidence {got}, want {want}");
    }

    #[test]
    fn logprobs_are_asked_for_only_when_configured() {
        let req = ModelRequest::new(vec![Message::user("hi")]);
        assert_eq!(provider(true).body(&req).unwrap()["logprobs"], true);
        assert!(
            provider(false)
                .body(&req)
                .unwrap()
                .get("logprobs")
                .is_none()
        );
    }

    #[test]
    fn json_confidence_is_exp_of_the_mean_logprob() {
        let p = provider(true);
        let answer = |logprobs: Value| {
            json!({
                "model": "m",
                "choices": [{"index": 0, "message": {"content": "a b c"},
                             "finish_reason": "stop", "logprobs": logprobs}],
            })
            .to_string()
        };
        let entry =
            |lp: Value| json!({"token": "t", "logprob": lp, "bytes": [116], "top_logprobs": []});
        let body = answer(
            json!({"content": [entry(json!(-0.1)), entry(json!(-0.5)), entry(json!(-0.3))]}),
        );
        let resp = p.parse_json(body.as_bytes()).unwrap();
        assert_close(resp.confidence, (-0.3f64).exp());
        assert_eq!(resp.message.content, "a b c");

        // Odd entries are skipped, not fatal.
        let body = answer(json!({"content": [
            entry(json!(-1.0)), entry(Value::Null), entry(json!("-0.2")),
            {"token": "x"}, 7, entry(json!(-3.0)),
        ]}));
        assert_close(
            p.parse_json(body.as_bytes()).unwrap().confidence,
            (-2.0f64).exp(),
        );

        // Nothing to go on: None.
        for lp in [
            Value::Null,
            json!({"content": null}),
            json!({"content": []}),
            json!({"content": [entry(Value::Null)]}),
            json!("garbage"),
            json!([1, 2]),
        ] {
            let body = answer(lp.clone());
            assert_eq!(
                p.parse_json(body.as_bytes()).unwrap().confidence,
                None,
                "{lp}"
            );
        }
        let bare = r#"{"choices":[{"message":{"content":"x"},"finish_reason":"stop"}]}"#;
        assert_eq!(p.parse_json(bare.as_bytes()).unwrap().confidence, None);

        // Out-of-range values stay within [0, 1].
        let body = answer(json!({"content": [entry(json!(2.0))]}));
        assert_close(p.parse_json(body.as_bytes()).unwrap().confidence, 1.0);
        let body = answer(json!({"content": [entry(json!(-1e308)), entry(json!(-1e308))]}));
        assert_close(p.parse_json(body.as_bytes()).unwrap().confidence, 0.0);
        let body = answer(
            json!({"content": [entry(json!(1e308)), entry(json!(1e308)), entry(json!(-1e308)), entry(json!(-1e308)), entry(json!(-1e308))]}),
        );
        let c = p.parse_json(body.as_bytes()).unwrap().confidence;
        assert!(c.is_none_or(|c| (0.0..=1.0).contains(&c)), "{c:?}");
    }

    #[test]
    fn streamed_confidence_spans_every_chunk_of_the_first_choice() {
        let mut acc = StreamAccumulator::default();
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"a"},"logprobs":{"content":[{"token":"a","logprob":-0.2}]}}]}"#,
            r#"{"choices":[{"index":1,"delta":{"content":"z"},"logprobs":{"content":[{"token":"z","logprob":-9.0}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":" b"},"logprobs":{"content":[{"token":" b","logprob":-0.4},{"token":"?","logprob":null}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"!"},"logprobs":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop","logprobs":{"content":[]}}]}"#,
        ];
        for (i, c) in chunks.into_iter().enumerate() {
            assert!(!acc.event(c, i, None).unwrap());
        }
        let resp = acc.finish("m").unwrap();
        assert_eq!(resp.message.content, "a b!");
        assert_close(resp.confidence, (-0.3f64).exp());

        let mut acc = StreamAccumulator::default();
        acc.event(
            r#"{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}"#,
            0,
            None,
        )
        .unwrap();
        assert_eq!(acc.finish("m").unwrap().confidence, None);
    }

    #[test]
    fn non_json_non_finite_logprobs_are_read_as_null() {
        let p = provider(true);
        let body = r#"{"choices":[{"message":{"content":"NaN Infinity \"x\\"},"finish_reason":"stop",
            "logprobs":{"content":[{"token":"NaN","logprob":NaN},{"token":"a","logprob":-Infinity},
            {"token":"b","logprob":Infinity},{"token":"c","logprob":-0.5}]}}]}"#;
        let resp = p.parse_json(body.as_bytes()).unwrap();
        assert_eq!(resp.message.content, "NaN Infinity \"x\\");
        assert_close(resp.confidence, (-0.5f64).exp());

        let mut acc = StreamAccumulator::default();
        acc.event(
            r#"{"choices":[{"index":0,"delta":{"content":"Infinity"},"logprobs":{"content":[{"token":"Infinity","logprob":-Infinity}]}}]}"#,
            0,
            None,
        )
        .unwrap();
        let resp = acc.finish("m").unwrap();
        assert_eq!(resp.message.content, "Infinity");
        assert_eq!(resp.confidence, None);

        // Still malformed: the original error is reported.
        let err = p.parse_json(b"{\"choices\": [NaN").unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Malformed);
        assert_eq!(non_finite_as_null(br#"{"a":"NaN"}"#), None);
    }

    fn streaming_provider(first_token_ms: u64, idle_ms: u64) -> OpenAiProvider {
        let mut cfg = EndpointConfig::openai("e", "http://127.0.0.1:1/v1", "configured");
        cfg.first_token_timeout_ms = first_token_ms;
        cfg.idle_timeout_ms = idle_ms;
        OpenAiProvider::new(&cfg, None).unwrap()
    }

    const TEXT_CHUNK: &str = r#"data: {"model":"m-reported","choices":[{"index":0,"delta":{"content":"hi"}}]}

"#;
    const FINISH_CHUNK: &str = r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

"#;
    const USAGE_CHUNK: &str = r#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}

"#;

    /// Run `read_stream` over a hand-fed body; `feed` gets the sender.
    async fn read_fed(
        p: &OpenAiProvider,
        feed: impl FnOnce(futures::channel::mpsc::UnboundedSender<Result<bytes::Bytes, String>>),
    ) -> (Result<ModelResponse, ProviderError>, Duration) {
        let (tx, body) = http::tests::channel_body();
        feed(tx);
        let start = Instant::now();
        let deadline = start + p.timeouts.first_token;
        let r = p.read_stream(body, None, deadline).await;
        (r, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn no_first_token_is_a_first_token_timeout() {
        let p = streaming_provider(200, 1_000);
        let mut keep = None;
        let (r, took) = read_fed(&p, |tx| {
            // A comment is not a token.
            http::tests::send(&tx, ": keep-alive\n\n");
            keep = Some(tx);
        })
        .await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::FirstTokenTimeout, "{err}");
        assert!(err.message.contains("200 ms"), "{err}");
        assert_eq!(took, Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_some_chunks_is_a_stalled_stream() {
        let p = streaming_provider(5_000, 300);
        let mut keep = None;
        let (r, took) = read_fed(&p, |tx| {
            http::tests::send(&tx, TEXT_CHUNK);
            http::tests::send(&tx, TEXT_CHUNK);
            keep = Some(tx);
        })
        .await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::StreamStalled, "{err}");
        assert_eq!(
            err.message,
            "stream stalled: no data for 300 ms after 2 chunks"
        );
        assert_eq!(took, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn finish_and_usage_without_done_return_at_once() {
        let p = streaming_provider(5_000, 30_000);
        let mut keep = None;
        let (r, took) = read_fed(&p, |tx| {
            for c in [TEXT_CHUNK, FINISH_CHUNK, USAGE_CHUNK] {
                http::tests::send(&tx, c);
            }
            keep = Some(tx); // the connection stays open
        })
        .await;
        let resp = r.unwrap();
        assert_eq!(resp.message.content, "hi");
        assert_eq!(resp.model, "m-reported");
        assert_eq!(resp.usage.input_tokens, 3);
        // Only the short drain of the rest of the body.
        assert!(took <= Duration::from_millis(50), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn finish_without_usage_waits_a_short_grace_only() {
        let p = streaming_provider(5_000, 30_000);
        let mut keep = None;
        let (r, took) = read_fed(&p, |tx| {
            http::tests::send(&tx, TEXT_CHUNK);
            http::tests::send(&tx, FINISH_CHUNK);
            keep = Some(tx);
        })
        .await;
        let resp = r.unwrap();
        assert_eq!(resp.message.content, "hi");
        assert_eq!(resp.usage, Usage::default());
        assert_eq!(took, Duration::from_secs(1));

        // With a short idle timeout the grace is shorter still.
        let p = streaming_provider(5_000, 200);
        let mut keep = None;
        let (r, took) = read_fed(&p, |tx| {
            http::tests::send(&tx, FINISH_CHUNK);
            keep = Some(tx);
        })
        .await;
        assert!(r.is_ok());
        assert_eq!(took, Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn incomplete_streams_are_errors_never_answers() {
        let p = streaming_provider(5_000, 1_000);
        // EOF without finish_reason or [DONE].
        let (r, _) = read_fed(&p, |tx| {
            http::tests::send(&tx, TEXT_CHUNK);
        })
        .await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Connection);
        assert!(
            err.message
                .starts_with("stream ended before the answer was complete"),
            "{err}"
        );
        // A read error mid-stream.
        let (r, _) = read_fed(&p, |tx| {
            http::tests::send(&tx, TEXT_CHUNK);
            http::tests::send(&tx, TEXT_CHUNK);
            tx.unbounded_send(Err("connection reset by peer".into()))
                .unwrap();
        })
        .await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Connection);
        assert_eq!(
            err.message,
            "stream broken after 2 chunks: connection reset by peer"
        );
        // ... but after the finish_reason the answer is whole.
        let (r, _) = read_fed(&p, |tx| {
            http::tests::send(&tx, TEXT_CHUNK);
            http::tests::send(&tx, FINISH_CHUNK);
            tx.unbounded_send(Err("connection reset by peer".into()))
                .unwrap();
        })
        .await;
        assert_eq!(r.unwrap().message.content, "hi");
        // [DONE] alone completes it too.
        let (r, _) = read_fed(&p, |tx| {
            http::tests::send(&tx, TEXT_CHUNK);
            http::tests::send(&tx, "data: [DONE]\n\n");
        })
        .await;
        assert_eq!(r.unwrap().finish_reason, FinishReason::Stop);
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_chunks_name_their_index() {
        let p = streaming_provider(5_000, 1_000);
        for (bad, why) in [
            (
                "data: {\"choices\": [{\"delta\"\n\n",
                "malformed stream chunk 1: ",
            ),
            (
                "data: {\"object\": \"x\"}\n\n",
                "chunk 1: neither choices nor usage",
            ),
            ("data: [1, 2]\n\n", "malformed stream chunk 1: "),
            (
                "data: {\"choices\": [{\"delta\": {\"content\": 5}}]}\n\n",
                "malformed stream chunk 1: ",
            ),
        ] {
            let (r, _) = read_fed(&p, |tx| {
                http::tests::send(&tx, TEXT_CHUNK);
                http::tests::send(&tx, bad);
            })
            .await;
            let err = r.unwrap_err();
            assert_eq!(err.kind, ProviderErrorKind::Malformed, "{bad}: {err}");
            assert!(err.message.contains(why), "{bad}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_content_filter_finish_is_a_content_policy_error() {
        let p = streaming_provider(5_000, 1_000);
        let (r, _) = read_fed(&p, |tx| {
            http::tests::send(&tx, TEXT_CHUNK);
            http::tests::send(
                &tx,
                "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\n",
            );
            http::tests::send(&tx, "data: [DONE]\n\n");
        })
        .await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::ContentPolicy, "{err}");
        let body = r#"{"choices":[{"message":{"content":""},"finish_reason":"content_filter"}]}"#;
        let err = provider(false).parse_json(body.as_bytes()).unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::ContentPolicy, "{err}");
        assert!(!err.is_transient());
    }

    #[test]
    fn http_errors_are_classified_from_status_and_body() {
        let secs = Some(Duration::from_secs(7));
        let e = status_error(429, br#"{"error":{"message":"slow down"}}"#, secs);
        assert_eq!(e.kind, ProviderErrorKind::RateLimited { retry_after: secs });
        assert!(e.message.contains("slow down"), "{e}");
        assert_eq!(status_error(401, b"", None).kind, ProviderErrorKind::Auth);
        assert_eq!(status_error(403, b"no", None).kind, ProviderErrorKind::Auth);
        assert_eq!(
            status_error(503, b"", None).kind,
            ProviderErrorKind::Server { status: 503 }
        );
        assert_eq!(
            status_error(
                404,
                br#"{"error":{"message":"no such model","code":"model_not_found"}}"#,
                None
            )
            .kind,
            ProviderErrorKind::Client { status: 404 }
        );
        let ctx = br#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let e = status_error(400, ctx, None);
        assert_eq!(e.kind, ProviderErrorKind::ContextLength);
        assert!(e.message.contains("maximum context length is 8192"), "{e}");
        // By message alone (servers that send no code).
        let e = status_error(
            400,
            br#"{"message":"This model's maximum context length is 4096 tokens"}"#,
            None,
        );
        assert_eq!(e.kind, ProviderErrorKind::ContextLength);
        let azure = br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400}}"#;
        let e = status_error(400, azure, None);
        assert_eq!(e.kind, ProviderErrorKind::ContentPolicy);
        assert!(
            e.message.ends_with(
                "The response was filtered due to the prompt triggering Azure OpenAI's content management policy."
            ),
            "{e}"
        );
        let e = status_error(
            400,
            br#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","code":"content_policy_violation"}}"#,
            None,
        );
        assert_eq!(e.kind, ProviderErrorKind::ContentPolicy);
        assert_eq!(
            status_error(422, b"{}", None).kind,
            ProviderErrorKind::Client { status: 422 }
        );
    }

    #[test]
    fn json_schema_asks_for_a_strict_response_format() {
        let p = provider(false);
        let mut req = ModelRequest::new(vec![Message::user("hi")]);
        assert!(p.body(&req).unwrap().get("response_format").is_none());
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        req.json_schema = Some(schema.clone());
        assert_eq!(
            p.body(&req).unwrap()["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}})
        );
    }
}
