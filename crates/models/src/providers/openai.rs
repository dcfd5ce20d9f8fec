//! `openai`: any OpenAI-compatible Chat Completions API, over reqwest.
//!
//! Sends `POST {base_url}/chat/completions`, with `Authorization: Bearer`
//! when a key is configured, and reads either the JSON answer or, when the
//! endpoint streams, the SSE stream (`stream_options.include_usage` asks for
//! usage in the final chunk). The request's tool definitions go out as
//! `tools: [{"type": "function", "function": {...}}]`; tool calls arriving in
//! fragments are reassembled by their index.
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

use baton_types::{FinishReason, Message, Role, ToolCall, ToolDefinition, Usage};
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    Delta, DeltaSink, EndpointConfig, Error, ModelRequest, ModelResponse, Provider, ProviderError,
    ProviderErrorKind, Result,
};

/// Longest provider error text kept in an error message.
const MAX_ERROR_TEXT: usize = 500;

/// A client of one OpenAI-compatible endpoint. Its `Debug` output never
/// shows the api key.
#[derive(Clone)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<SecretString>,
    stream: bool,
    max_output_tokens: Option<u32>,
    logprobs: bool,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("stream", &self.stream)
            .field("logprobs", &self.logprobs)
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
        let field = |f: &str| format!("models[{}].{f}", cfg.name);
        let base = cfg
            .base_url
            .as_deref()
            .ok_or_else(|| Error::config(field("base_url"), "required for provider openai"))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .build()
            .map_err(|e| {
                Error::config(field("base_url"), format!("cannot build http client: {e}"))
            })?;
        Ok(Self {
            client,
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            model: cfg.model.clone(),
            api_key,
            stream: cfg.stream,
            max_output_tokens: cfg.max_output_tokens,
            logprobs: cfg.logprobs,
        })
    }

    /// The request body; an error when a tool definition cannot be sent.
    fn body(&self, req: &ModelRequest) -> Result<Value, ProviderError> {
        let messages: Vec<Value> = req.messages.iter().map(wire_message).collect();
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": self.stream,
        });
        if self.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if let Some(max) = req.max_output_tokens.or(self.max_output_tokens) {
            body["max_tokens"] = json!(max);
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if self.logprobs {
            body["logprobs"] = json!(true);
        }
        if !req.tools.is_empty() {
            let tools = req
                .tools
                .iter()
                .map(wire_tool)
                .collect::<Result<Vec<Value>, ProviderError>>()?;
            body["tools"] = Value::Array(tools);
        }
        Ok(body)
    }

    async fn read_json(&self, resp: reqwest::Response) -> Result<ModelResponse, ProviderError> {
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&e, "reading response"))?;
        self.parse_json(&bytes)
    }

    /// A whole (non-streamed) JSON answer.
    fn parse_json(&self, bytes: &[u8]) -> Result<ModelResponse, ProviderError> {
        let parsed: ChatResponse =
            parse_lenient(bytes).map_err(|e| malformed(format!("malformed response body: {e}")))?;
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
        Ok(ModelResponse {
            message: assistant(message.content.unwrap_or_default(), tool_calls),
            usage: parsed.usage.map(WireUsage::into_usage).unwrap_or_default(),
            finish_reason: FinishReason::from_provider(&finish_reason),
            model: parsed.model.unwrap_or_else(|| self.model.clone()),
            attempts: 1,
            confidence: logprobs.confidence(),
        })
    }

    async fn read_stream(
        &self,
        resp: reqwest::Response,
        deltas: Option<&DeltaSink>,
    ) -> Result<ModelResponse, ProviderError> {
        let mut stream = resp.bytes_stream();
        let mut acc = StreamAccumulator::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut data = String::new();
        loop {
            match stream.next().await {
                Some(Ok(bytes)) => {
                    buf.extend_from_slice(&bytes);
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let line = std::str::from_utf8(&line)
                            .map_err(|_| malformed("stream is not valid utf-8"))?
                            .trim_end_matches(['\n', '\r']);
                        if line.is_empty() {
                            // A blank line ends an event.
                            if !data.is_empty() {
                                let event = std::mem::take(&mut data);
                                if acc.event(&event, deltas)? {
                                    return Ok(acc.finish(&self.model));
                                }
                            }
                        } else if let Some(value) = line.strip_prefix("data:") {
                            if !data.is_empty() {
                                data.push('\n');
                            }
                            data.push_str(value.strip_prefix(' ').unwrap_or(value));
                        }
                        // Comments (":") and other fields are ignored.
                    }
                }
                Some(Err(e)) => {
                    if acc.finish_reason.is_some() {
                        // Only the usage chunk or [DONE] was lost: the answer is whole.
                        return Ok(acc.finish(&self.model));
                    }
                    return Err(transport_error(
                        &e,
                        "stream broke before the model finished",
                    ));
                }
                None => {
                    if !data.is_empty() && acc.event(&data, deltas)? {
                        return Ok(acc.finish(&self.model));
                    }
                    if acc.finish_reason.is_some() {
                        return Ok(acc.finish(&self.model));
                    }
                    return Err(ProviderError::new(
                        ProviderErrorKind::Connection,
                        "stream ended before the model finished",
                    ));
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

    async fn complete(
        &self,
        req: &ModelRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<ModelResponse, ProviderError> {
        let mut rb = self.client.post(&self.url).json(&self.body(req)?);
        if let Some(key) = &self.api_key {
            rb = rb.bearer_auth(key.expose_secret());
        }
        if self.stream {
            rb = rb.header(ACCEPT, "text/event-stream");
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| transport_error(&e, "sending request"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error(resp).await);
        }
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            self.read_stream(resp, deltas).await
        } else {
            // Also covers servers that ignore `stream: true` and answer in JSON.
            self.read_json(resp).await
        }
    }
}

fn read_api_key(cfg: &EndpointConfig) -> Result<Option<SecretString>> {
    if let Some(var) = &cfg.api_key_env {
        let field = format!("models[{}].api_key_env", cfg.name);
        let key = std::env::var(var)
            .map_err(|_| Error::config(&field, format!("environment variable {var} is not set")))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(Error::config(
                field,
                format!("environment variable {var} is empty"),
            ));
        }
        return Ok(Some(SecretString::from(key.to_string())));
    }
    if let Some(path) = &cfg.api_key_file {
        let field = format!("models[{}].api_key_file", cfg.name);
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(&field, format!("cannot read {}: {e}", path.display())))?;
        let key = text.trim();
        if key.is_empty() {
            return Err(Error::config(field, format!("{} is empty", path.display())));
        }
        return Ok(Some(SecretString::from(key.to_string())));
    }
    Ok(None)
}

fn wire_message(m: &Message) -> Value {
    let mut o = json!({"role": m.role.as_str(), "content": m.content});
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect();
        o["tool_calls"] = Value::Array(calls);
        if m.content.is_empty() {
            o["content"] = Value::Null;
        }
    }
    if let Some(id) = &m.tool_call_id {
        o["tool_call_id"] = json!(id);
    }
    o
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
    }
}

fn malformed(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Malformed, message)
}

/// A reqwest failure as a provider error, with its cause chain (reqwest's own
/// message alone is often just "error sending request").
fn transport_error(e: &reqwest::Error, context: &str) -> ProviderError {
    let mut message = format!("{context}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    let kind = if e.is_timeout() {
        ProviderErrorKind::Timeout
    } else {
        ProviderErrorKind::Connection
    };
    ProviderError::new(kind, message)
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // HTTP-dates are not supported; fractional seconds are.
    v.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

async fn status_error(resp: reqwest::Response) -> ProviderError {
    let status = resp.status();
    let code = status.as_u16();
    let retry_after = retry_after(resp.headers());
    let body = resp.bytes().await.unwrap_or_default();
    let detail = error_text(&body).unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("no details")
            .to_string()
    });
    let kind = match code {
        429 => ProviderErrorKind::RateLimited { retry_after },
        401 | 403 => ProviderErrorKind::Auth,
        400..=499 => ProviderErrorKind::Client { status: code },
        500..=599 => ProviderErrorKind::Server { status: code },
        _ => ProviderErrorKind::Malformed,
    };
    ProviderError::new(kind, format!("provider returned http {code}: {detail}"))
}

/// The provider's error message from an error body: `{"error": {"message"}}`,
/// `{"error": "..."}`, `{"message"}`, or the text itself.
fn error_text(body: &[u8]) -> Option<String> {
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

fn truncate(mut s: String, max: usize) -> String {
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
    /// Take one SSE event's data; true when it was `[DONE]`.
    fn event(&mut self, data: &str, deltas: Option<&DeltaSink>) -> Result<bool, ProviderError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        let chunk: ChatChunk = parse_lenient(data.as_bytes())
            .map_err(|e| malformed(format!("malformed stream chunk: {e}")))?;
        if let Some(err) = chunk.error {
            let detail = error_text(err.to_string().as_bytes()).unwrap_or_default();
            let detail = err["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or(detail);
            return Err(ProviderError::new(
                ProviderErrorKind::Server { status: 502 },
                format!("provider reported an error mid-stream: {detail}"),
            ));
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

    fn finish(self, configured_model: &str) -> ModelResponse {
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
            Some(r) => FinishReason::from_provider(&r),
            None => FinishReason::Stop, // [DONE] without a finish_reason
        };
        ModelResponse {
            message: assistant(self.text, tool_calls),
            usage: self.usage.unwrap_or_default(),
            finish_reason,
            model: self.model.unwrap_or_else(|| configured_model.to_string()),
            attempts: 1,
            confidence: self.logprobs.confidence(),
        }
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
        for c in chunks {
            assert!(!acc.event(c, None).unwrap());
        }
        assert!(acc.event("[DONE]", None).unwrap());
        let resp = acc.finish("configured");
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
        let err = acc.event("{\"choices\": [", None).unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Malformed);
        let err = acc
            .event(r#"{"error":{"message":"overloaded"}}"#, None)
            .unwrap_err();
        assert!(err.is_transient());
        assert!(err.message.contains("overloaded"), "{}", err.message);
    }

    #[test]
    fn error_text_finds_the_provider_message() {
        assert_eq!(
            error_text(br#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#),
            Some("bad model".into())
        );
        assert_eq!(error_text(br#"{"error":"nope"}"#), Some("nope".into()));
        assert_eq!(error_text(b"plain text\n"), Some("plain text".into()));
        assert_eq!(error_text(b""), None);
        let long = "é".repeat(400);
        assert!(error_text(long.as_bytes()).unwrap().len() <= MAX_ERROR_TEXT + 3);
    }

    #[test]
    fn request_body_carries_messages_tools_and_limits() {
        let mut cfg = EndpointConfig::openai("e", "http://127.0.0.1:1/v1/", "gpt-x");
        cfg.max_output_tokens = Some(100);
        let p = OpenAiProvider::new(&cfg, None).unwrap();
        assert_eq!(p.url, "http://127.0.0.1:1/v1/chat/completions");
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
        assert!(err.starts_with("models[e].api_key_env"), "{err}");

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

    #[test]
    fn retry_after_seconds_are_parsed() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, "0.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
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
        for c in chunks {
            assert!(!acc.event(c, None).unwrap());
        }
        let resp = acc.finish("m");
        assert_eq!(resp.message.content, "a b!");
        assert_close(resp.confidence, (-0.3f64).exp());

        let mut acc = StreamAccumulator::default();
        acc.event(
            r#"{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(acc.finish("m").confidence, None);
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
            None,
        )
        .unwrap();
        let resp = acc.finish("m");
        assert_eq!(resp.message.content, "Infinity");
        assert_eq!(resp.confidence, None);

        // Still malformed: the original error is reported.
        let err = p.parse_json(b"{\"choices\": [NaN").unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Malformed);
        assert_eq!(non_finite_as_null(br#"{"a":"NaN"}"#), None);
    }
}
