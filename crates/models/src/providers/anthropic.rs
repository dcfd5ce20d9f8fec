//! `anthropic`: the Anthropic Messages API, over reqwest.
//!
//! Sends `POST {base_url}/messages` (`base_url` defaults to
//! `https://api.anthropic.com/v1`) with `x-api-key` (when a key is
//! configured) and `anthropic-version: 2023-06-01`. The conversation is
//! mapped onto Anthropic's shape: system messages become the top-level
//! `system` (joined by blank lines); an assistant message's tool calls become
//! `tool_use` blocks (arguments parsed into `input`); tool results become
//! `tool_result` blocks of a user message, consecutive results sharing one
//! message; call ids are kept; empty assistant turns (no text, no calls) are
//! left out, as Anthropic refuses them. A user message's images follow its
//! text as `image` blocks: a `url` source, or `base64` with the media type for
//! a data URL. Tools go out as `{name, description, input_schema}`, with the
//! request's tool choice as `tool_choice` (`none`, `any` for required, `tool`
//! with a name; nothing for auto). `max_tokens`, which Anthropic requires, is
//! the request's, else the endpoint's `max_output_tokens`, else 4096;
//! `temperature`, `top_p` and `stop_sequences` are the request's when set. A
//! request with a `json_schema` gets a forced tool `output` whose
//! `input_schema` is the schema (`tool_choice: {"type": "tool", "name":
//! "output"}`, overriding the request's tool choice); the tool's input, as
//! JSON text, is the answer (and what is streamed).
//!
//! Answers: text blocks make the text, `tool_use` blocks the tool calls
//! (arguments = the JSON text of `input`); `stop_reason` `end_turn` and
//! `stop_sequence` → `Stop`, `max_tokens` → `Length`, `tool_use` →
//! `ToolCalls`, `refusal` → a `ContentPolicy` error. Usage: input tokens
//! (cache reads and writes included) and output tokens.
//!
//! Streams (`stream: true`) follow the same rules as `openai`'s (see
//! [`super::http`]): the first token is the first event after
//! `message_start` and `ping`; the answer is complete at `message_stop`, or
//! at once when a `message_delta` brings the `stop_reason` (and usage) —
//! `message_stop` is then only waited for briefly. A stream that ends or
//! breaks before a `stop_reason` is a `Connection` error, silence is
//! `FirstTokenTimeout` or `StreamStalled`, a garbled event `Malformed`.
//!
//! Errors: 429 → `RateLimited` (with `retry-after`); 401/403 → `Auth`; 529
//! (overloaded) and 5xx → `Server`; a 4xx whose message says the prompt is
//! too long (or exceeds the context) → `ContextLength`, one blocked by the
//! content filtering policy → `ContentPolicy`, else `Client`. An `error`
//! event mid-stream is mapped by its type: `overloaded_error` → `Server
//! {529}`, `api_error` → `Server {500}`, `rate_limit_error` → `RateLimited`,
//! and so on.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use baton_types::{FinishReason, Message, Role, ToolCall, ToolChoice, ToolDefinition, Usage};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::http::{
    self, ByteStream, SseError, SseReader, Timeouts, Wait, error_text, malformed, read_api_key,
};
use crate::{
    Delta, DeltaSink, EndpointConfig, ModelRequest, ModelResponse, Provider, ProviderError,
    ProviderErrorKind, Result,
};

/// The API used when `base_url` is not set.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";
/// The `anthropic-version` header sent.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the request nor the endpoint sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The forced tool that carries a structured (`json_schema`) answer.
const OUTPUT_TOOL: &str = "output";

/// A client of the Anthropic Messages API. Its `Debug` output never shows
/// the api key.
#[derive(Clone)]
pub struct AnthropicProvider {
    client: reqwest::Client,
    url: reqwest::Url,
    model: String,
    api_key: Option<SecretString>,
    stream: bool,
    max_output_tokens: Option<u32>,
    timeouts: Timeouts,
}

impl fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("url", &self.url.as_str())
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("stream", &self.stream)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// Build from config, reading the api key from `api_key_env` or `api_key_file`.
    pub fn from_config(cfg: &EndpointConfig) -> Result<Self> {
        let key = read_api_key(cfg)?;
        Self::new(cfg, key)
    }

    /// Build from config with the given key (the config's key fields are ignored).
    pub fn new(cfg: &EndpointConfig, api_key: Option<SecretString>) -> Result<Self> {
        let base = cfg.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        if cfg.model.trim().is_empty() {
            return Err(cfg.invalid("model", "required for provider anthropic"));
        }
        let timeouts = Timeouts::from_config(cfg);
        // Parsed once here, not on every request.
        let url = reqwest::Url::parse(&format!("{}/messages", base.trim_end_matches('/')))
            .map_err(|e| cfg.invalid("base_url", format!("{base:?} is not a URL: {e}")))?;
        Ok(Self {
            client: http::client(cfg, timeouts)?,
            url,
            model: cfg.model.clone(),
            api_key,
            stream: cfg.stream,
            max_output_tokens: cfg.max_output_tokens,
            timeouts,
        })
    }

    /// The request body; an error when something cannot be sent.
    fn body(&self, req: &ModelRequest) -> Result<Value, ProviderError> {
        let max_tokens = req
            .max_output_tokens
            .or(self.max_output_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        let mut messages = wire_messages(&req.messages)?;
        if let Some(start) = &req.continue_from {
            // A prefill: the model continues the final assistant message,
            // which must not end in whitespace.
            let start = start.trim_end();
            if start.is_empty() {
                return Err(invalid(
                    "a continuation needs a non-blank answer to continue",
                ));
            }
            messages.push(json!({"role": "assistant", "content": start}));
        }
        let mut body = json!({
            "model": self.model,
            "max_tokens": max_tokens,
            "messages": messages,
            "stream": self.stream,
        });
        let system: Vec<&str> = req
            .messages
            .iter()
            .filter(|m| m.role == Role::System && !m.content.is_empty())
            .map(|m| m.content.as_str())
            .collect();
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(http::wire_f32(t));
        }
        if let Some(p) = req.top_p {
            body["top_p"] = json!(http::wire_f32(p));
        }
        if !req.stop.is_empty() {
            body["stop_sequences"] = json!(req.stop);
        }
        let mut tools = req
            .tools
            .iter()
            .map(wire_tool)
            .collect::<Result<Vec<Value>, ProviderError>>()?;
        if let Some(schema) = &req.json_schema {
            if !schema.is_object() {
                return Err(ProviderError::new(
                    ProviderErrorKind::InvalidRequest,
                    "json_schema must be a JSON Schema object",
                ));
            }
            tools.push(json!({
                "name": OUTPUT_TOOL,
                "description": "Give the answer as JSON matching this schema.",
                "input_schema": schema,
            }));
            // Structured output is a forced tool, which overrides the
            // request's tool choice.
            body["tool_choice"] = json!({"type": "tool", "name": OUTPUT_TOOL});
        } else if !tools.is_empty() {
            match &req.tool_choice {
                ToolChoice::Auto => {}
                ToolChoice::None => body["tool_choice"] = json!({"type": "none"}),
                ToolChoice::Required => body["tool_choice"] = json!({"type": "any"}),
                ToolChoice::Tool(name) => {
                    body["tool_choice"] = json!({"type": "tool", "name": name});
                }
            }
        }
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools);
        }
        Ok(body)
    }

    /// A whole (non-streamed) JSON answer.
    fn parse_json(&self, bytes: &[u8], json_mode: bool) -> Result<ModelResponse, ProviderError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("malformed response body: {e}")))?;
        if v["type"] == "error" {
            return Err(event_error(&v["error"]));
        }
        let Some(content) = v["content"].as_array() else {
            return Err(malformed("response has no content array"));
        };
        let mut answer = Answer::new(json_mode);
        for (i, block) in content.iter().enumerate() {
            match block["type"].as_str() {
                Some("text") => {
                    let text = block["text"].as_str().ok_or_else(|| {
                        malformed(format!("content block {i}: text is not a string"))
                    })?;
                    answer.text.push_str(text);
                }
                Some("tool_use") => {
                    let (id, name) = tool_use_ids(block, i)?;
                    answer.tool_use(id, name, block["input"].to_string());
                }
                Some(_) => {} // thinking and other blocks carry no answer
                None => return Err(malformed(format!("content block {i} has no type"))),
            }
        }
        let stop_reason = v["stop_reason"]
            .as_str()
            .ok_or_else(|| malformed("response has no stop_reason"))?;
        let usage = usage_of(&v["usage"]);
        answer.finish(
            stop_reason,
            Usage {
                input_tokens: usage.input.unwrap_or(0),
                output_tokens: usage.output.unwrap_or(0),
            },
            v["model"]
                .as_str()
                .filter(|m| !m.is_empty())
                .unwrap_or(&self.model),
        )
    }

    /// An SSE answer; see the module docs for when it is complete.
    async fn read_stream(
        &self,
        body: ByteStream,
        deltas: Option<&DeltaSink>,
        first_token_deadline: Instant,
        json_mode: bool,
    ) -> Result<ModelResponse, ProviderError> {
        let t = self.timeouts;
        let mut reader = SseReader::new(body);
        let mut acc = StreamAccumulator::new(json_mode);
        loop {
            let wait = if acc.started {
                Wait::Idle(t.idle)
            } else {
                Wait::Until(first_token_deadline)
            };
            let finished = acc.stop_reason.is_some();
            match reader.next(wait).await {
                Ok(Some(event)) => {
                    let stopped =
                        acc.event(&event.event, &event.data, reader.events - 1, deltas)?;
                    if stopped || acc.stop_reason.is_some() {
                        reader.drain(t.drain_budget()).await;
                        return acc.finish(&self.model);
                    }
                }
                Ok(None) | Err(SseError::TimedOut | SseError::Broken(_)) if finished => {
                    return acc.finish(&self.model);
                }
                Ok(None) => {
                    return Err(ProviderError::new(
                        ProviderErrorKind::Connection,
                        format!(
                            "stream ended before the answer was complete: no stop_reason \
                             and no message_stop after {} chunks",
                            reader.events
                        ),
                    ));
                }
                Err(e) => {
                    return Err(e.into_provider_error(&t, !acc.started, reader.events));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Provider for AnthropicProvider {
    fn kind(&self) -> &'static str {
        "anthropic"
    }

    async fn complete(
        &self,
        req: &ModelRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<ModelResponse, ProviderError> {
        let mut rb = self
            .client
            .post(self.url.clone())
            .json(&self.body(req)?)
            .header("anthropic-version", API_VERSION);
        // A tenant's own key, when the call carries one, replaces the endpoint's.
        let key = match (&req.api_key, &self.api_key) {
            (Some(own), _) => Some(own.expose()),
            (None, Some(k)) => Some(k.expose_secret()),
            (None, None) => None,
        };
        if let Some(key) = key {
            let mut value = HeaderValue::from_str(key).map_err(|_| {
                ProviderError::new(
                    ProviderErrorKind::Auth,
                    "the api key is not a valid http header value",
                )
            })?;
            value.set_sensitive(true);
            rb = rb.header("x-api-key", value);
        }
        if self.stream {
            rb = rb.header(ACCEPT, "text/event-stream");
        }
        let json_mode = req.json_schema.is_some();
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
            self.read_stream(body, deltas, first_token_deadline, json_mode)
                .await
        } else {
            let bytes = http::read_body(body, self.timeouts.idle).await?;
            self.parse_json(&bytes, json_mode)
        }
    }
}

fn invalid(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

/// The conversation in Anthropic's shape (system messages left out).
fn wire_messages(messages: &[Message]) -> Result<Vec<Value>, ProviderError> {
    let mut out: Vec<Value> = Vec::new();
    // True while the last message sent holds tool results only.
    let mut in_results = false;
    for m in messages {
        match m.role {
            Role::System => continue,
            Role::User if m.images.is_empty() => {
                out.push(json!({"role": "user", "content": m.content}));
            }
            Role::User => {
                // Text block, then one image block per image: a URL source,
                // or base64 with its media type for a data URL.
                let mut blocks = Vec::with_capacity(m.images.len() + 1);
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                for image in &m.images {
                    let source = match image.data() {
                        Some((media_type, data)) => {
                            json!({"type": "base64", "media_type": media_type, "data": data})
                        }
                        None => json!({"type": "url", "url": image.url}),
                    };
                    blocks.push(json!({"type": "image", "source": source}));
                }
                out.push(json!({"role": "user", "content": blocks}));
            }
            // Anthropic refuses empty turns; an empty answer adds nothing.
            Role::Assistant if m.tool_calls.is_empty() && m.content.is_empty() => {}
            Role::Assistant if m.tool_calls.is_empty() => {
                out.push(json!({"role": "assistant", "content": m.content}));
            }
            Role::Assistant => {
                let mut blocks = Vec::new();
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                for call in &m.tool_calls {
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": tool_input(call)?,
                    }));
                }
                out.push(json!({"role": "assistant", "content": blocks}));
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| {
                    invalid("a tool result has no tool_call_id, which anthropic requires")
                })?;
                let block = json!({"type": "tool_result", "tool_use_id": id, "content": m.content});
                match out.last_mut() {
                    Some(last) if in_results => {
                        if let Some(blocks) = last["content"].as_array_mut() {
                            blocks.push(block);
                        }
                    }
                    _ => out.push(json!({"role": "user", "content": [block]})),
                }
            }
        }
        in_results = m.role == Role::Tool;
    }
    Ok(out)
}

/// A tool call's arguments as the `input` object Anthropic wants.
fn tool_input(call: &ToolCall) -> Result<Value, ProviderError> {
    if call.arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(&call.arguments) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(invalid(format!(
            "tool call {:?}: arguments are not a JSON object, which anthropic requires",
            call.id
        ))),
    }
}

/// A tool definition as `{name, description, input_schema}`; the schema gets
/// `"type": "object"` when it has no type.
fn wire_tool(tool: &ToolDefinition) -> Result<Value, ProviderError> {
    let bad = |reason: String| invalid(format!("tool {:?}: {reason}", tool.name));
    let mut schema: Value = serde_json::from_str(&tool.parameters)
        .map_err(|e| bad(format!("parameters are not valid JSON: {e}")))?;
    let Some(obj) = schema.as_object_mut() else {
        return Err(bad("parameters must be a JSON Schema object".to_string()));
    };
    obj.entry("type").or_insert_with(|| json!("object"));
    Ok(json!({
        "name": tool.name,
        "description": tool.description,
        "input_schema": schema,
    }))
}

fn tool_use_ids(block: &Value, index: usize) -> Result<(String, String), ProviderError> {
    let id = block["id"].as_str();
    let name = block["name"].as_str();
    match (id, name) {
        (Some(id), Some(name)) => Ok((id.to_string(), name.to_string())),
        _ => Err(malformed(format!(
            "content block {index}: tool_use without id or name"
        ))),
    }
}

/// Token counts from a `usage` object; input includes cache reads and writes.
#[derive(Debug, Default, Clone, Copy)]
struct WireUsage {
    input: Option<u64>,
    output: Option<u64>,
}

fn usage_of(v: &Value) -> WireUsage {
    let input = [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|k| v[*k].as_u64())
    .reduce(|a, b| a + b);
    WireUsage {
        input,
        output: v["output_tokens"].as_u64(),
    }
}

/// The answer being assembled, from blocks in order.
#[derive(Debug)]
struct Answer {
    json_mode: bool,
    text: String,
    calls: Vec<ToolCall>,
    /// The `output` tool's input, in json mode.
    output: Option<String>,
}

impl Answer {
    fn new(json_mode: bool) -> Self {
        Self {
            json_mode,
            text: String::new(),
            calls: Vec::new(),
            output: None,
        }
    }

    fn tool_use(&mut self, id: String, name: String, arguments: String) {
        if self.json_mode && name == OUTPUT_TOOL && self.output.is_none() {
            self.output = Some(arguments);
        } else {
            self.calls.push(ToolCall {
                id,
                name,
                arguments,
            });
        }
    }

    fn finish(
        self,
        stop_reason: &str,
        usage: Usage,
        model: &str,
    ) -> Result<ModelResponse, ProviderError> {
        let mut finish_reason = match stop_reason {
            "refusal" => {
                return Err(ProviderError::new(
                    ProviderErrorKind::ContentPolicy,
                    format!("the model refused to answer (stop_reason refusal){}", {
                        let said = self.text.trim();
                        if said.is_empty() {
                            String::new()
                        } else {
                            format!(
                                ": {}",
                                http::truncate(said.to_string(), http::MAX_ERROR_TEXT)
                            )
                        }
                    }),
                ));
            }
            other => FinishReason::from_provider(other),
        };
        let content = match self.output {
            Some(json) => {
                // The forced tool call is the answer, not a call to make.
                if finish_reason == FinishReason::ToolCalls && self.calls.is_empty() {
                    finish_reason = FinishReason::Stop;
                }
                json
            }
            None => self.text,
        };
        Ok(ModelResponse {
            message: Message {
                role: Role::Assistant,
                content,
                tool_calls: self.calls,
                tool_call_id: None,
                images: Vec::new(),
            },
            usage,
            finish_reason,
            model: model.to_string(),
            attempts: 1,
            confidence: None,
            embeddings: None,
        })
    }
}

#[derive(Debug)]
enum Block {
    Text(String),
    Tool {
        id: String,
        name: String,
        /// `input` of `content_block_start`, used when no deltas come.
        start_input: Value,
        partial_json: String,
    },
    /// Thinking and other blocks: no part of the answer.
    Other,
}

/// The answer being assembled from stream events.
#[derive(Debug)]
struct StreamAccumulator {
    json_mode: bool,
    model: Option<String>,
    usage: WireUsage,
    blocks: BTreeMap<usize, Block>,
    stop_reason: Option<String>,
    /// An event past `message_start` and `ping` came: the first token.
    started: bool,
}

impl StreamAccumulator {
    fn new(json_mode: bool) -> Self {
        Self {
            json_mode,
            model: None,
            usage: WireUsage::default(),
            blocks: BTreeMap::new(),
            stop_reason: None,
            started: false,
        }
    }

    /// Whether text of block `index` goes out as deltas: answer text, or in
    /// json mode the `output` tool's input.
    fn streams(&self, block: &Block) -> bool {
        match block {
            Block::Text(_) => !self.json_mode,
            Block::Tool { name, .. } => self.json_mode && name == OUTPUT_TOOL,
            Block::Other => false,
        }
    }

    /// Take stream event number `index`; true at `message_stop`.
    fn event(
        &mut self,
        name: &str,
        data: &str,
        index: usize,
        deltas: Option<&DeltaSink>,
    ) -> Result<bool, ProviderError> {
        let bad = |why: String| malformed(format!("malformed stream chunk {index}: {why}"));
        let v: Value = serde_json::from_str(data).map_err(|e| bad(e.to_string()))?;
        if !v.is_object() {
            return Err(bad("not a JSON object".into()));
        }
        let kind = v["type"]
            .as_str()
            .or((!name.is_empty()).then_some(name))
            .ok_or_else(|| bad("event without a type".into()))?;
        if !matches!(kind, "message_start" | "ping") {
            self.started = true;
        }
        let send = |text: &str| {
            if let Some(sink) = deltas
                && !text.is_empty()
            {
                let _ = sink.send(Delta::Text(text.to_string()));
            }
        };
        match kind {
            "message_start" => {
                let message = &v["message"];
                if !message.is_object() {
                    return Err(bad("message_start without a message".into()));
                }
                if let Some(model) = message["model"].as_str().filter(|m| !m.is_empty()) {
                    self.model = Some(model.to_string());
                }
                self.add_usage(&message["usage"]);
            }
            "content_block_start" => {
                let at = block_index(&v).ok_or_else(|| bad("no block index".into()))?;
                let cb = &v["content_block"];
                let block = match cb["type"].as_str() {
                    Some("text") => Block::Text(cb["text"].as_str().unwrap_or("").to_string()),
                    Some("tool_use") => {
                        let (id, name) = tool_use_ids(cb, at).map_err(|e| bad(e.message))?;
                        Block::Tool {
                            id,
                            name,
                            start_input: cb["input"].clone(),
                            partial_json: String::new(),
                        }
                    }
                    Some(_) => Block::Other,
                    None => return Err(bad("content block without a type".into())),
                };
                if let Block::Text(t) = &block
                    && self.streams(&block)
                {
                    send(t);
                }
                self.blocks.insert(at, block);
            }
            "content_block_delta" => {
                let at = block_index(&v).ok_or_else(|| bad("no block index".into()))?;
                let delta = &v["delta"];
                let streams = match self.blocks.get(&at) {
                    Some(b) => self.streams(b),
                    None => return Err(bad(format!("delta for block {at}, which never started"))),
                };
                match (delta["type"].as_str(), self.blocks.get_mut(&at)) {
                    (Some("text_delta"), Some(Block::Text(text))) => {
                        let piece = delta["text"]
                            .as_str()
                            .ok_or_else(|| bad("text_delta without text".into()))?;
                        text.push_str(piece);
                        if streams {
                            send(piece);
                        }
                    }
                    (Some("input_json_delta"), Some(Block::Tool { partial_json, .. })) => {
                        let piece = delta["partial_json"]
                            .as_str()
                            .ok_or_else(|| bad("input_json_delta without partial_json".into()))?;
                        partial_json.push_str(piece);
                        if streams {
                            send(piece);
                        }
                    }
                    (Some("text_delta" | "input_json_delta"), _) => {
                        return Err(bad(format!("delta does not fit block {at}")));
                    }
                    (Some(_), _) => {} // thinking, signatures, citations
                    (None, _) => return Err(bad("delta without a type".into())),
                }
            }
            "content_block_stop" => {
                // A tool whose input came whole with its start streams it now.
                if let Some(at) = block_index(&v)
                    && let Some(block) = self.blocks.get(&at)
                    && self.streams(block)
                    && let Block::Tool {
                        start_input,
                        partial_json,
                        ..
                    } = block
                    && partial_json.is_empty()
                    && !start_input.is_null()
                {
                    send(&start_input.to_string());
                }
            }
            "message_delta" => {
                if let Some(reason) = v["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(reason.to_string());
                }
                self.add_usage(&v["usage"]);
            }
            "message_stop" => return Ok(true),
            "error" => return Err(event_error(&v["error"])),
            _ => {} // ping, and event types added later
        }
        Ok(false)
    }

    /// Later counts replace earlier ones (`message_delta` counts are cumulative).
    fn add_usage(&mut self, v: &Value) {
        let u = usage_of(v);
        if u.input.is_some() {
            self.usage.input = u.input;
        }
        if u.output.is_some() {
            self.usage.output = u.output;
        }
    }

    fn finish(self, configured_model: &str) -> Result<ModelResponse, ProviderError> {
        let mut answer = Answer::new(self.json_mode);
        for block in self.blocks.into_values() {
            match block {
                Block::Text(t) => answer.text.push_str(&t),
                Block::Tool {
                    id,
                    name,
                    start_input,
                    partial_json,
                } => {
                    let arguments = if partial_json.is_empty() {
                        if start_input.is_null() {
                            "{}".to_string()
                        } else {
                            start_input.to_string()
                        }
                    } else {
                        partial_json
                    };
                    answer.tool_use(id, name, arguments);
                }
                Block::Other => {}
            }
        }
        // message_stop without a stop_reason: a natural end.
        let stop_reason = self.stop_reason.as_deref().unwrap_or("end_turn");
        let model = self.model.as_deref().unwrap_or(configured_model);
        answer.finish(
            stop_reason,
            Usage {
                input_tokens: self.usage.input.unwrap_or(0),
                output_tokens: self.usage.output.unwrap_or(0),
            },
            model,
        )
    }
}

fn block_index(v: &Value) -> Option<usize> {
    v["index"].as_u64().and_then(|i| usize::try_from(i).ok())
}

/// `ContextLength` or `ContentPolicy` when an error message says so.
fn refusal_kind(message: &str) -> Option<ProviderErrorKind> {
    let lower = message.to_lowercase();
    if [
        "prompt is too long",
        "context window",
        "context limit",
        "context length",
    ]
    .iter()
    .any(|p| lower.contains(p))
    {
        return Some(ProviderErrorKind::ContextLength);
    }
    if [
        "content filtering policy",
        "content policy",
        "usage policy",
        "usage policies",
    ]
    .iter()
    .any(|p| lower.contains(p))
    {
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
    let kind = match status {
        429 => ProviderErrorKind::RateLimited { retry_after },
        401 | 403 => ProviderErrorKind::Auth,
        400..=499 => refusal_kind(&detail).unwrap_or(ProviderErrorKind::Client { status }),
        500..=599 => ProviderErrorKind::Server { status },
        _ => ProviderErrorKind::Malformed,
    };
    let message = match kind {
        ProviderErrorKind::ContentPolicy => {
            format!("provider refused the content (http {status}): {detail}")
        }
        ProviderErrorKind::ContextLength => {
            format!(
                "conversation too long for the model's context window (http {status}): {detail}"
            )
        }
        _ => format!("provider returned http {status}: {detail}"),
    };
    ProviderError::new(kind, message)
}

/// An `error` event (or error body inside a 200): `{"type", "message"}`.
fn event_error(err: &Value) -> ProviderError {
    let kind_name = err["type"].as_str().unwrap_or("unknown_error");
    let detail = err["message"]
        .as_str()
        .map(|s| http::truncate(s.to_string(), http::MAX_ERROR_TEXT))
        .unwrap_or_else(|| kind_name.to_string());
    let kind = refusal_kind(&detail).unwrap_or(match kind_name {
        "overloaded_error" => ProviderErrorKind::Server { status: 529 },
        "api_error" => ProviderErrorKind::Server { status: 500 },
        "rate_limit_error" => ProviderErrorKind::RateLimited { retry_after: None },
        "authentication_error" | "permission_error" => ProviderErrorKind::Auth,
        "invalid_request_error" => ProviderErrorKind::Client { status: 400 },
        "not_found_error" => ProviderErrorKind::Client { status: 404 },
        "request_too_large" => ProviderErrorKind::Client { status: 413 },
        _ => ProviderErrorKind::Server { status: 502 },
    });
    let message = match kind {
        ProviderErrorKind::ContentPolicy => format!("provider refused the content: {detail}"),
        _ => format!("provider reported an error mid-stream ({kind_name}): {detail}"),
    };
    ProviderError::new(kind, message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::providers::http::tests::{channel_body, send};

    fn provider(stream: bool) -> AnthropicProvider {
        let mut cfg = EndpointConfig::new("claude", crate::ProviderKind::Anthropic);
        cfg.model = "claude-test".into();
        cfg.stream = stream;
        cfg.first_token_timeout_ms = 500;
        cfg.idle_timeout_ms = 300;
        AnthropicProvider::new(&cfg, None).unwrap()
    }

    fn call(id: &str, name: &str, args: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    fn tool_result(id: &str, content: &str) -> Message {
        Message {
            role: Role::Tool,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: Some(id.into()),
            images: Vec::new(),
        }
    }

    #[test]
    fn the_default_url_and_a_required_model() {
        let p = provider(true);
        assert_eq!(p.url.as_str(), "https://api.anthropic.com/v1/messages");
        let mut cfg = EndpointConfig::new("c", crate::ProviderKind::Anthropic);
        assert!(AnthropicProvider::new(&cfg, None).is_err());
        cfg.model = "m".into();
        cfg.base_url = Some("http://127.0.0.1:9/v1/".into());
        assert_eq!(
            AnthropicProvider::new(&cfg, None).unwrap().url.as_str(),
            "http://127.0.0.1:9/v1/messages"
        );
    }

    #[test]
    fn the_conversation_is_mapped_onto_messages_and_blocks() {
        let p = provider(false);
        let mut assistant = Message::assistant("checking");
        assistant.tool_calls = vec![
            call("toolu_1", "weather", r#"{"city":"Paris"}"#),
            call("toolu_2", "clock", ""),
        ];
        let mut req = ModelRequest::new(vec![
            Message::system("be brief"),
            Message::system("be kind"),
            Message::user("weather and time?"),
            assistant,
            tool_result("toolu_1", "sunny"),
            tool_result("toolu_2", "noon"),
            Message::assistant(""),
            Message::user("thanks"),
        ]);
        req.temperature = Some(0.25);
        req.tools = vec![ToolDefinition {
            name: "clock".into(),
            description: "the time".into(),
            parameters: "{}".into(),
        }];
        let body = p.body(&req).unwrap();
        assert_eq!(body["system"], "be brief\n\nbe kind");
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["temperature"], 0.25);
        assert_eq!(body["stream"], false);
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": "weather and time?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "noon"},
                ]},
                {"role": "user", "content": "thanks"},
            ])
        );
        assert_eq!(
            body["tools"],
            json!([{"name": "clock", "description": "the time", "input_schema": {"type": "object"}}])
        );
        assert!(body.get("tool_choice").is_none());
        assert!(body.get("top_p").is_none() && body.get("stop_sequences").is_none());
        req.top_p = Some(0.5);
        req.stop = vec!["END".into()];
        let body = p.body(&req).unwrap();
        assert_eq!(body["top_p"], 0.5);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        for (choice, wire) in [
            (ToolChoice::Auto, Value::Null),
            (ToolChoice::None, json!({"type": "none"})),
            (ToolChoice::Required, json!({"type": "any"})),
            (
                ToolChoice::Tool("clock".into()),
                json!({"type": "tool", "name": "clock"}),
            ),
        ] {
            req.tool_choice = choice.clone();
            assert_eq!(p.body(&req).unwrap()["tool_choice"], wire, "{choice:?}");
        }
        // Structured output forces its own tool whatever the choice.
        req.json_schema = Some(json!({"type": "object"}));
        assert_eq!(
            p.body(&req).unwrap()["tool_choice"],
            json!({"type": "tool", "name": OUTPUT_TOOL})
        );
        req.json_schema = None;
        req.tool_choice = ToolChoice::Auto;
        req.max_output_tokens = Some(9);
        assert_eq!(p.body(&req).unwrap()["max_tokens"], 9);
    }

    #[test]
    fn images_become_url_or_base64_blocks_after_the_text() {
        let p = provider(false);
        let mut m = Message::user("compare");
        m.images = vec![
            baton_types::Image::url("https://example.com/a.jpg"),
            baton_types::Image {
                url: "data:image/webp;base64,UklGRg==".into(),
                detail: Some("high".into()),
            },
        ];
        let body = p.body(&ModelRequest::new(vec![m])).unwrap();
        assert_eq!(
            body["messages"][0],
            json!({"role": "user", "content": [
                {"type": "text", "text": "compare"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="}},
            ]})
        );
    }

    #[test]
    fn unsendable_conversations_fail_before_sending() {
        let p = provider(false);
        let mut bad = Message::assistant("");
        bad.tool_calls = vec![call("toolu_x", "f", "[1]")];
        let err = p
            .body(&ModelRequest::new(vec![Message::user("x"), bad]))
            .unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::InvalidRequest);
        assert!(err.message.contains("toolu_x"), "{err}");
        let mut orphan = tool_result("t", "r");
        orphan.tool_call_id = None;
        let err = p.body(&ModelRequest::new(vec![orphan])).unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::InvalidRequest);
    }

    #[test]
    fn json_schema_is_a_forced_output_tool_whose_input_is_the_answer() {
        let p = provider(false);
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let mut req = ModelRequest::new(vec![Message::user("count")]);
        req.json_schema = Some(schema.clone());
        let body = p.body(&req).unwrap();
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "output"})
        );
        assert_eq!(body["tools"][0]["name"], "output");
        assert_eq!(body["tools"][0]["input_schema"], schema);

        let answer = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "tool_use", "id": "toolu_o", "name": "output", "input": {"n": 3}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 2},
        });
        let resp = p.parse_json(answer.to_string().as_bytes(), true).unwrap();
        assert_eq!(resp.message.content, r#"{"n":3}"#);
        assert!(resp.message.tool_calls.is_empty());
        assert_eq!(resp.finish_reason, FinishReason::Stop);
        assert_eq!(resp.model, "claude-x");
    }

    #[test]
    fn json_answers_map_blocks_stop_reasons_and_usage() {
        let p = provider(false);
        let answer = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "let me check"},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7},
        });
        let resp = p.parse_json(answer.to_string().as_bytes(), false).unwrap();
        assert_eq!(resp.message.content, "let me check");
        assert_eq!(
            resp.message.tool_calls,
            vec![call("toolu_1", "weather", r#"{"city":"Paris"}"#)]
        );
        assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            resp.usage,
            Usage {
                input_tokens: 15,
                output_tokens: 7
            }
        );
        for (reason, want) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("pause_turn", FinishReason::Other("pause_turn".into())),
        ] {
            let a = json!({"content": [{"type": "text", "text": "x"}], "stop_reason": reason});
            let resp = p.parse_json(a.to_string().as_bytes(), false).unwrap();
            assert_eq!(resp.finish_reason, want, "{reason}");
            assert_eq!(resp.model, "claude-test");
        }
        let a = json!({"content": [{"type": "text", "text": "I can't help with that."}], "stop_reason": "refusal"});
        let err = p.parse_json(a.to_string().as_bytes(), false).unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::ContentPolicy);
        assert!(err.message.contains("I can't help with that."), "{err}");
        for bad in [
            r#"{"content": "x", "stop_reason": "end_turn"}"#,
            r#"{"content": [{"type": "text", "text": "x"}]}"#,
            r#"{"content": [{"text": "x"}], "stop_reason": "end_turn"}"#,
            "{\"content\": [",
        ] {
            let err = p.parse_json(bad.as_bytes(), false).unwrap_err();
            assert_eq!(err.kind, ProviderErrorKind::Malformed, "{bad}");
        }
    }

    #[test]
    fn http_errors_are_classified() {
        let e = |status, body: &str| status_error(status, body.as_bytes(), None);
        let body = |t: &str, m: &str| {
            json!({"type": "error", "error": {"type": t, "message": m}}).to_string()
        };
        assert_eq!(
            status_error(
                429,
                body("rate_limit_error", "slow").as_bytes(),
                Some(Duration::from_secs(3))
            )
            .kind,
            ProviderErrorKind::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            e(529, &body("overloaded_error", "Overloaded")).kind,
            ProviderErrorKind::Server { status: 529 }
        );
        assert_eq!(
            e(500, &body("api_error", "x")).kind,
            ProviderErrorKind::Server { status: 500 }
        );
        assert_eq!(
            e(401, &body("authentication_error", "invalid x-api-key")).kind,
            ProviderErrorKind::Auth
        );
        assert_eq!(
            e(403, &body("permission_error", "no")).kind,
            ProviderErrorKind::Auth
        );
        let ctx = e(
            400,
            &body(
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
            ),
        );
        assert_eq!(ctx.kind, ProviderErrorKind::ContextLength);
        assert!(
            ctx.message.contains("210000 tokens > 200000 maximum"),
            "{ctx}"
        );
        assert_eq!(
            e(
                400,
                &body(
                    "invalid_request_error",
                    "input length and `max_tokens` exceed context limit: 197000 + 8192 > 200000"
                )
            )
            .kind,
            ProviderErrorKind::ContextLength
        );
        let policy = e(
            400,
            &body(
                "invalid_request_error",
                "Output blocked by content filtering policy",
            ),
        );
        assert_eq!(policy.kind, ProviderErrorKind::ContentPolicy);
        assert!(
            policy
                .message
                .ends_with("Output blocked by content filtering policy"),
            "{policy}"
        );
        assert_eq!(
            e(
                400,
                &body("invalid_request_error", "max_tokens: Field required")
            )
            .kind,
            ProviderErrorKind::Client { status: 400 }
        );
        assert_eq!(
            e(404, &body("not_found_error", "model: x")).kind,
            ProviderErrorKind::Client { status: 404 }
        );
    }

    const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-reported\",\"stop_reason\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n";
    const PING: &str = "event: ping\ndata: {\"type\": \"ping\"}\n\n";
    const TEXT_START: &str = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
    const TEXT_DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
    const TOOL_START: &str = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"weather\",\"input\":{}}}\n\n";
    const TOOL_DELTA_1: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n";
    const TOOL_DELTA_2: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n";
    const STOP_0: &str =
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
    const STOP_1: &str =
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n";
    const DELTA_TOOL_USE: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\n";
    const DELTA_END: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n";
    const MESSAGE_STOP: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    async fn read_fed(
        p: &AnthropicProvider,
        json_mode: bool,
        chunks: &[&str],
        then: Option<Result<bytes::Bytes, String>>,
        keep_open: bool,
    ) -> (Result<ModelResponse, ProviderError>, Vec<Delta>, Duration) {
        let (tx, body) = channel_body();
        for c in chunks {
            send(&tx, c);
        }
        if let Some(item) = then {
            tx.unbounded_send(item).unwrap();
        }
        let keep = keep_open.then_some(tx);
        let (dtx, mut drx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let r = p
            .read_stream(body, Some(&dtx), start + p.timeouts.first_token, json_mode)
            .await;
        let took = start.elapsed();
        drop((keep, dtx));
        let mut deltas = Vec::new();
        while let Some(d) = drx.recv().await {
            deltas.push(d);
        }
        (r, deltas, took)
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_answer_with_text_and_a_tool_call() {
        let p = provider(true);
        let all = [
            START,
            TEXT_START,
            PING,
            TEXT_DELTA,
            STOP_0,
            TOOL_START,
            TOOL_DELTA_1,
            TOOL_DELTA_2,
            STOP_1,
            DELTA_TOOL_USE,
            MESSAGE_STOP,
        ];
        let (r, deltas, _) = read_fed(&p, false, &all, None, false).await;
        let resp = r.unwrap();
        assert_eq!(resp.message.content, "Hi");
        assert_eq!(deltas, vec![Delta::Text("Hi".into())]);
        assert_eq!(
            resp.message.tool_calls,
            vec![call("toolu_1", "weather", r#"{"city": "Paris"}"#)]
        );
        assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
        assert_eq!(resp.model, "claude-reported");
        assert_eq!(
            resp.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 9
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn json_mode_streams_the_output_tool_input_as_text() {
        let p = provider(true);
        let start = TOOL_START.replace("weather", "output");
        let chunks = [
            START,
            &start,
            TOOL_DELTA_1,
            TOOL_DELTA_2,
            STOP_1,
            DELTA_TOOL_USE,
            MESSAGE_STOP,
        ];
        let (r, deltas, _) = read_fed(&p, true, &chunks, None, false).await;
        let resp = r.unwrap();
        assert_eq!(resp.message.content, r#"{"city": "Paris"}"#);
        assert!(resp.message.tool_calls.is_empty());
        assert_eq!(resp.finish_reason, FinishReason::Stop);
        let streamed: String = deltas
            .iter()
            .map(|d| match d {
                Delta::Text(t) => t.as_str(),
                Delta::Restart => "",
            })
            .collect();
        assert_eq!(streamed, resp.message.content);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_reason_without_message_stop_finishes_promptly() {
        let p = provider(true);
        let chunks = [START, TEXT_START, TEXT_DELTA, STOP_0, DELTA_END];
        let (r, _, took) = read_fed(&p, false, &chunks, None, true).await;
        let resp = r.unwrap();
        assert_eq!(resp.message.content, "Hi");
        assert_eq!(resp.usage.output_tokens, 2);
        assert!(took <= Duration::from_millis(50), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn incomplete_silent_or_garbled_streams_are_errors() {
        let p = provider(true);
        // message_start and pings are no token.
        let (r, _, took) = read_fed(&p, false, &[START, PING], None, true).await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::FirstTokenTimeout, "{err}");
        assert_eq!(took, Duration::from_millis(500));
        // Silence after the first token.
        let (r, _, took) = read_fed(&p, false, &[START, TEXT_START, TEXT_DELTA], None, true).await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::StreamStalled, "{err}");
        assert_eq!(
            err.message,
            "stream stalled: no data for 300 ms after 3 chunks"
        );
        assert_eq!(took, Duration::from_millis(300));
        // EOF before a stop_reason.
        let (r, _, _) = read_fed(
            &p,
            false,
            &[START, TEXT_START, TEXT_DELTA, STOP_0],
            None,
            false,
        )
        .await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Connection, "{err}");
        assert!(
            err.message
                .starts_with("stream ended before the answer was complete")
        );
        // A reset.
        let (r, _, _) = read_fed(
            &p,
            false,
            &[START, TEXT_START],
            Some(Err("reset".into())),
            false,
        )
        .await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Connection);
        assert_eq!(err.message, "stream broken after 2 chunks: reset");
        // Garbage.
        let garbled = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\n\n";
        let (r, _, _) = read_fed(&p, false, &[START, TEXT_START, garbled], None, false).await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Malformed);
        assert!(err.message.contains("chunk 2"), "{err}");
        let (r, _, _) = read_fed(&p, false, &[START, TEXT_DELTA], None, false).await;
        assert_eq!(r.unwrap_err().kind, ProviderErrorKind::Malformed);
        // Error events.
        let overloaded = "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
        let (r, _, _) = read_fed(&p, false, &[START, TEXT_START, overloaded], None, false).await;
        let err = r.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Server { status: 529 });
        assert!(err.message.contains("Overloaded"), "{err}");
        // A refusal.
        let refusal = DELTA_END.replace("end_turn", "refusal");
        let (r, _, _) = read_fed(
            &p,
            false,
            &[START, TEXT_START, TEXT_DELTA, &refusal],
            None,
            false,
        )
        .await;
        assert_eq!(r.unwrap_err().kind, ProviderErrorKind::ContentPolicy);
    }

    #[test]
    fn the_key_stays_out_of_debug() {
        let mut cfg = EndpointConfig::new("c", crate::ProviderKind::Anthropic);
        cfg.model = "m".into();
        let p = AnthropicProvider::new(&cfg, Some(SecretString::from("sk-ant-secret-77"))).unwrap();
        let dbg = format!("{p:?}");
        assert!(
            !dbg.contains("sk-ant-secret-77") && dbg.contains("redacted"),
            "{dbg}"
        );
    }
}
