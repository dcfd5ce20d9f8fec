//! A fake OpenAI-compatible Chat Completions server for tests.
//!
//! It listens on `127.0.0.1:0`, serves `POST /v1/chat/completions` both as
//! JSON (`stream: false`) and as SSE (`stream: true`, usage in the final
//! chunk when `stream_options.include_usage` is set, then `data: [DONE]`),
//! and `POST /v1/embeddings` (see [`fake_embedding`]),
//! and records every request body and its headers. Replies, scripted
//! replies, faults and the down switch work as described in
//! [`crate::fake_model`], whose types are re-exported here. When the request
//! asks for `logprobs` and the [`Behavior`] sets a `logprob`, every content
//! token (JSON: one per word of the reply; SSE: one per content chunk)
//! carries that log-probability in `choices[0].logprobs.content`.
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

use std::io;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use baton_types::ToolCall;
use serde_json::{Value, json};

use crate::fake_model::{
    Answer, ConnCtl, FakeServer, Finish, Shared, StreamEnd, argument_pieces, broken_json, chunks,
    sse_response, stalled_json, words,
};
pub use crate::fake_model::{Behavior, Fault, Reply, ScriptedReply};

/// The message of [`Fault::ContextLength`], as OpenAI words it.
pub const CONTEXT_LENGTH_MESSAGE: &str = "This model's maximum context length is 128000 tokens. \
     However, your messages resulted in 131072 tokens. Please reduce the length of the messages.";

/// The message of [`Fault::ContentPolicy`], as Azure OpenAI words it.
pub const CONTENT_POLICY_MESSAGE: &str = "The response was filtered due to the prompt triggering \
     Azure OpenAI's content management policy. Please modify your prompt and retry.";

/// The fake server. Dropping it shuts it down. The knobs are those of
/// [`FakeServer`], which it derefs to.
pub struct FakeOpenAi {
    server: FakeServer,
}

impl std::fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("addr", &self.addr())
            .field("requests", &self.requests())
            .finish()
    }
}

impl Deref for FakeOpenAi {
    type Target = FakeServer;

    fn deref(&self) -> &FakeServer {
        &self.server
    }
}

impl FakeOpenAi {
    /// Start on `127.0.0.1:0` with the default [`Behavior`].
    pub async fn start() -> io::Result<FakeOpenAi> {
        let router = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/embeddings", post(embeddings));
        Ok(FakeOpenAi {
            server: FakeServer::start(router).await?,
        })
    }

    /// The `Authorization` header of each request received, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.header_values(header::AUTHORIZATION.as_str())
    }
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

/// The answer to one request in OpenAI's shapes.
struct OpenAiAnswer {
    id: String,
    model: String,
    answer: Answer,
    finish_reason: &'static str,
    input_tokens: u64,
    /// The logprob of each content token, when the request asked for them.
    logprob: Option<f64>,
}

impl OpenAiAnswer {
    fn new(body: &Value, behavior: &Behavior, id: u64, refusal: bool) -> Self {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let input_tokens = messages
            .iter()
            .map(|m| words(&content_text(&m["content"])))
            .sum();
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| content_text(&m["content"]))
            .unwrap_or_default();
        let limit = body["max_tokens"]
            .as_u64()
            .or_else(|| body["max_completion_tokens"].as_u64());
        // A partial answer to continue: the final assistant message, with
        // `prefix` (DeepSeek, Mistral) or `continue_final_message` (vLLM).
        let start = messages
            .last()
            .filter(|m| {
                m["role"] == "assistant"
                    && (m["prefix"] == true || body["continue_final_message"] == true)
            })
            .map(|m| content_text(&m["content"]));
        let answer = Answer::new(behavior, &last_user, limit).continuing(start.as_deref());
        let finish_reason = match answer.finish {
            _ if refusal => "content_filter",
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
        };
        Self {
            id: format!("chatcmpl-fake-{id}"),
            model: behavior
                .model
                .clone()
                .or_else(|| body["model"].as_str().map(str::to_string))
                .unwrap_or_else(|| "fake-model".to_string()),
            answer,
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
            "completion_tokens": self.answer.output_tokens,
            "total_tokens": self.input_tokens + self.answer.output_tokens,
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

    fn tool_calls(&self) -> &[ToolCall] {
        &self.answer.tool_calls
    }

    fn json(&self) -> Value {
        let text = &self.answer.text;
        let mut message = json!({"role": "assistant", "content": text});
        if !self.tool_calls().is_empty() {
            let calls: Vec<Value> = self
                .tool_calls()
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    })
                })
                .collect();
            message["tool_calls"] = Value::Array(calls);
            if text.is_empty() {
                message["content"] = Value::Null;
            }
        }
        let mut choice =
            json!({"index": 0, "message": message, "finish_reason": self.finish_reason});
        if let Some(lp) = self.logprob {
            choice["logprobs"] = Self::logprobs(lp, text.split_whitespace());
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

    fn chunk(&self, delta: Value, finish_reason: Option<&str>, logprobs: Option<Value>) -> Value {
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
        let pieces = chunks(&self.answer.text, chunk_chars);
        if pieces.is_empty() {
            events.push(self.chunk(json!({"role": "assistant", "content": ""}), None, None));
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
            events.push(self.chunk(delta, None, logprobs));
        }
        for (index, call) in self.tool_calls().iter().enumerate() {
            events.push(self.chunk(
                json!({"tool_calls": [{
                    "index": index, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }]}),
                None,
                None,
            ));
            for fragment in argument_pieces(&call.arguments, chunk_chars) {
                events.push(self.chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                    None,
                    None,
                ));
            }
        }
        events.push(self.chunk(json!({}), Some(self.finish_reason), None));
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

/// The vector the fake server gives `text`: `dimensions` (default 4)
/// numbers, the first the text's length in bytes, then its word count, then
/// zeros — so a test can tell which vector belongs to which input.
pub fn fake_embedding(text: &str, dimensions: Option<u64>) -> Vec<f32> {
    let n = dimensions.unwrap_or(4).max(1) as usize;
    let mut v = vec![0f32; n];
    v[0] = text.len() as f32;
    if n > 1 {
        v[1] = words(text) as f32;
    }
    v
}

/// `POST /v1/embeddings`: a [`fake_embedding`] per input, in reverse
/// order of `index` (clients must sort by it), usage one token per word.
/// Faults, delays and the down switch apply as for chat completions.
async fn embeddings(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnCtl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = match shared.intake(&conn, &headers, &body, openai_error).await {
        Ok(incoming) => incoming,
        Err(resp) => return resp,
    };
    let (body, fault) = (incoming.body, incoming.fault);
    let texts: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        _ => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "'input' must be a string or strings",
            );
        }
    };
    let behavior = shared.behavior_for(&fault);
    if let Err(resp) = shared.wait(behavior.delay, &conn).await {
        return resp;
    }
    let dims = body["dimensions"].as_u64();
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": fake_embedding(t, dims)}))
        .collect();
    let tokens: u64 = texts.iter().map(|t| words(t)).sum();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnCtl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = match shared.intake(&conn, &headers, &body, openai_error).await {
        Ok(incoming) => incoming,
        Err(resp) => return resp,
    };
    let (body, fault) = (incoming.body, incoming.fault);
    if !body["messages"].is_array() {
        return openai_error(StatusCode::BAD_REQUEST, "'messages' is a required property");
    }
    match fault {
        Some(Fault::ContextLength) => {
            let body = json!({"error": {
                "message": CONTEXT_LENGTH_MESSAGE,
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
        Some(Fault::ContentPolicy) => {
            let body = json!({"error": {
                "message": CONTENT_POLICY_MESSAGE,
                "type": null,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation"},
            }});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
        _ => {}
    }

    let behavior = shared.behavior_for(&fault);
    let stream = body["stream"].as_bool().unwrap_or(false);
    let mut delay = behavior.delay;
    if let (Some(Fault::SlowFirstToken(d)), false) = (&fault, stream) {
        delay += *d;
    }
    if let Err(resp) = shared.wait(delay, &conn).await {
        return resp;
    }

    let refusal = fault == Some(Fault::Refusal);
    let answer = OpenAiAnswer::new(&body, &behavior, shared.next_id(), refusal);
    if !stream {
        return match fault {
            Some(Fault::MalformedChunk | Fault::MalformedChunkAfter { .. }) => (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"id\": \"broken\", \"choices\": [",
            )
                .into_response(),
            Some(Fault::BreakStreamAfter { .. }) => broken_json(answer.json().to_string()),
            Some(Fault::StallAfter { .. }) => {
                stalled_json(&shared, conn, answer.json().to_string())
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
    let mut first_delay = Duration::ZERO;
    let mut end = StreamEnd::Close;
    match fault {
        Some(Fault::BreakStreamAfter { chunks }) => end = StreamEnd::Break { after: chunks },
        Some(Fault::StallAfter { chunks }) => end = StreamEnd::Stall { after: chunks },
        Some(Fault::NoTerminator) => end = StreamEnd::KeepOpen,
        Some(Fault::SlowFirstToken(d)) => first_delay = d,
        Some(Fault::MalformedChunk) => {
            frames.insert(
                1.min(frames.len()),
                sse_frame("{\"choices\": [{\"delta\": {\"content\": "),
            );
        }
        Some(Fault::MalformedChunkAfter { chunks }) => {
            frames.insert(
                chunks.min(frames.len()),
                sse_frame("{\"choices\": [{\"delta\": {\"content\": "),
            );
        }
        _ => {}
    }
    if matches!(end, StreamEnd::Close | StreamEnd::Stall { .. }) {
        frames.push(sse_frame("[DONE]"));
    }
    sse_response(
        &shared,
        conn,
        frames,
        first_delay,
        behavior.chunk_delay,
        end,
    )
}
