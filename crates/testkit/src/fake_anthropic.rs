//! A fake Anthropic Messages API server for tests.
//!
//! It listens on `127.0.0.1:0` and serves `POST /v1/messages` in the real
//! wire format: a JSON message (`stream: false`) or the SSE event stream
//! (`message_start`, `content_block_start`, `ping`, `content_block_delta` with
//! `text_delta` / `input_json_delta`, `content_block_stop`, `message_delta`
//! with the stop reason and usage, `message_stop`). It records every request
//! body and its headers, and refuses requests like the real API does: no
//! `x-api-key` → 401 `authentication_error`; no `anthropic-version`, no
//! `max_tokens`, a `system` role inside `messages`, or a `tool_use` not
//! answered by a `tool_result` in the next message (or a result answering no
//! call) → 400 `invalid_request_error`. A request forcing a tool
//! (`tool_choice: {"type": "tool", "name"}`) is answered with a call of that
//! tool whose input is the reply text when it is a JSON object (else
//! `{"text": reply}`). Replies, scripted replies, faults and the down switch
//! are those of [`crate::fake_model`], re-exported here, so one test suite
//! drives this fake and [`crate::fake_openai::FakeOpenAi`] alike.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use baton_testkit::fake_anthropic::{Behavior, FakeAnthropic, Fault, Reply};
//!
//! let server = FakeAnthropic::start().await?;
//! server.set_behavior(Behavior { reply: Reply::Fixed("hi there".into()), ..Behavior::default() });
//! server.push_fault(Fault::Status { status: 529, retry_after: None, body: "overloaded".into() });
//! // Point an `anthropic` endpoint at server.base_url() (with an api key).
//! assert_eq!(server.api_keys(), Vec::<Option<String>>::new());
//! # Ok(()) }
//! ```

use std::collections::HashSet;
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
use serde_json::{Map, Value, json};

use crate::fake_model::{
    Answer, ConnCtl, FakeServer, Finish, Shared, StreamEnd, argument_pieces, broken_json, chunks,
    sse_response, stalled_json, words,
};
pub use crate::fake_model::{Behavior, Fault, Reply, ScriptedReply};

/// The message of [`Fault::ContextLength`], as Anthropic words it.
pub const CONTEXT_LENGTH_MESSAGE: &str = "prompt is too long: 212345 tokens > 200000 maximum";

/// The message of [`Fault::ContentPolicy`], as Anthropic words it.
pub const CONTENT_POLICY_MESSAGE: &str = "Output blocked by content filtering policy";

/// The fake server. Dropping it shuts it down. The knobs are those of
/// [`FakeServer`], which it derefs to.
pub struct FakeAnthropic {
    server: FakeServer,
}

impl std::fmt::Debug for FakeAnthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAnthropic")
            .field("addr", &self.addr())
            .field("requests", &self.requests())
            .finish()
    }
}

impl Deref for FakeAnthropic {
    type Target = FakeServer;

    fn deref(&self) -> &FakeServer {
        &self.server
    }
}

impl FakeAnthropic {
    /// Start on `127.0.0.1:0` with the default [`Behavior`].
    pub async fn start() -> io::Result<FakeAnthropic> {
        let router = Router::new().route("/v1/messages", post(messages));
        Ok(FakeAnthropic {
            server: FakeServer::start(router).await?,
        })
    }

    /// The `x-api-key` header of each request received, in order.
    pub fn api_keys(&self) -> Vec<Option<String>> {
        self.header_values("x-api-key")
    }

    /// The `anthropic-version` header of each request received, in order.
    pub fn versions(&self) -> Vec<Option<String>> {
        self.header_values("anthropic-version")
    }
}

fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn invalid_request(status: StatusCode, message: &str) -> Response {
    anthropic_error(status, "invalid_request_error", message)
}

/// The text of a `content` (a string, or blocks: text blocks and the
/// content of tool results), for token counts.
fn all_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b["type"].as_str() {
                Some("text") => b["text"].as_str().unwrap_or("").to_string(),
                Some("tool_result") => all_text(&b["content"]),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The text a user wrote in `content`: a string or its text blocks.
fn user_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) => {
            let texts: Vec<&str> = blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect();
            (!texts.is_empty()).then(|| texts.join(" "))
        }
        _ => None,
    }
}

/// The ids of a message's blocks of type `kind` (`tool_use`: `id`,
/// `tool_result`: `tool_use_id`).
fn block_ids(message: &Value, kind: &str) -> Vec<String> {
    let key = if kind == "tool_use" {
        "id"
    } else {
        "tool_use_id"
    };
    message["content"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b["type"] == kind)
                .filter_map(|b| b[key].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What the real API refuses, as its error message.
fn validate(body: &Value) -> Result<(), String> {
    if !body["model"].is_string() {
        return Err("model: Field required".into());
    }
    if !body["max_tokens"].is_u64() {
        return Err("max_tokens: Field required".into());
    }
    let Some(messages) = body["messages"].as_array() else {
        return Err("messages: Field required".into());
    };
    for (i, m) in messages.iter().enumerate() {
        match m["role"].as_str() {
            Some("user" | "assistant") => {}
            Some(other) => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant', got {other:?}"
                ));
            }
            None => return Err(format!("messages.{i}.role: Field required")),
        }
        if !(m["content"].is_string() || m["content"].is_array()) {
            return Err(format!("messages.{i}.content: Field required"));
        }
        let uses = block_ids(m, "tool_use");
        if !uses.is_empty() {
            if m["role"] != "assistant" {
                return Err(format!(
                    "messages.{i}: `tool_use` blocks are only allowed in assistant messages"
                ));
            }
            let answered: HashSet<String> = messages
                .get(i + 1)
                .filter(|next| next["role"] == "user")
                .map(|next| block_ids(next, "tool_result").into_iter().collect())
                .unwrap_or_default();
            let missing: Vec<&str> = uses
                .iter()
                .filter(|id| !answered.contains(*id))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{i}: `tool_use` ids were found without `tool_result` blocks \
                     immediately after: {}. Each `tool_use` block must have a corresponding \
                     `tool_result` block in the next message.",
                    missing.join(", ")
                ));
            }
        }
        let results = block_ids(m, "tool_result");
        if !results.is_empty() {
            let called: HashSet<String> = i
                .checked_sub(1)
                .and_then(|p| messages.get(p))
                .map(|prev| block_ids(prev, "tool_use").into_iter().collect())
                .unwrap_or_default();
            if let Some(id) = results.iter().find(|id| !called.contains(*id)) {
                return Err(format!(
                    "messages.{i}.content: unexpected `tool_use_id` found in `tool_result` \
                     blocks: {id}. Each `tool_result` block must have a corresponding \
                     `tool_use` block in the previous message."
                ));
            }
        }
    }
    Ok(())
}

/// One content block of the answer.
enum OutBlock {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        arguments: String,
    },
}

/// The answer to one request in Anthropic's shapes.
struct AnthropicAnswer {
    id: String,
    model: String,
    blocks: Vec<OutBlock>,
    stop_reason: &'static str,
    input_tokens: u64,
    output_tokens: u64,
}

impl AnthropicAnswer {
    fn new(body: &Value, behavior: &Behavior, id: u64, refusal: bool) -> Self {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let input_tokens = words(&all_text(&body["system"]))
            + messages
                .iter()
                .map(|m| words(&all_text(&m["content"])))
                .sum::<u64>();
        let last_user = messages
            .iter()
            .rev()
            .filter(|m| m["role"] == "user")
            .find_map(|m| user_text(&m["content"]))
            .unwrap_or_default();
        // A prefill: the final message is the assistant's.
        let start = messages
            .last()
            .filter(|m| m["role"] == "assistant")
            .map(|m| all_text(&m["content"]));
        let answer = Answer::new(behavior, &last_user, body["max_tokens"].as_u64())
            .continuing(start.as_deref());
        let mut stop_reason = match answer.finish {
            Finish::Stop => "end_turn",
            Finish::Length => "max_tokens",
            Finish::ToolCalls => "tool_use",
        };
        let mut blocks = Vec::new();
        let forced = (body["tool_choice"]["type"] == "tool")
            .then(|| body["tool_choice"]["name"].as_str())
            .flatten();
        if let Some(name) = forced {
            let input = match serde_json::from_str::<Value>(&answer.text) {
                Ok(v) if v.is_object() => v,
                _ => json!({"text": answer.text}),
            };
            blocks.push(OutBlock::ToolUse {
                id: format!("toolu_fake_{id}"),
                name: name.to_string(),
                arguments: input.to_string(),
            });
            stop_reason = "tool_use";
        } else {
            if !answer.text.is_empty() || answer.tool_calls.is_empty() {
                blocks.push(OutBlock::Text(answer.text.clone()));
            }
            for call in &answer.tool_calls {
                blocks.push(OutBlock::ToolUse {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                });
            }
        }
        if refusal {
            stop_reason = "refusal";
        }
        Self {
            id: format!("msg_fake_{id}"),
            model: behavior
                .model
                .clone()
                .or_else(|| body["model"].as_str().map(str::to_string))
                .unwrap_or_else(|| "fake-model".to_string()),
            blocks,
            stop_reason,
            input_tokens,
            output_tokens: answer.output_tokens,
        }
    }

    fn input_of(arguments: &str) -> Value {
        serde_json::from_str::<Value>(arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::Object(Map::new()))
    }

    fn json(&self) -> Value {
        let content: Vec<Value> = self
            .blocks
            .iter()
            .map(|b| match b {
                OutBlock::Text(t) => json!({"type": "text", "text": t}),
                OutBlock::ToolUse {
                    id,
                    name,
                    arguments,
                } => json!({
                    "type": "tool_use", "id": id, "name": name,
                    "input": Self::input_of(arguments),
                }),
            })
            .collect();
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
        })
    }

    /// The SSE events as (event name, data), `message_stop` included.
    fn events(&self, chunk_chars: usize) -> Vec<(&'static str, Value)> {
        let mut events = vec![(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "content": [],
                "model": self.model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": 1},
            }}),
        )];
        for (index, block) in self.blocks.iter().enumerate() {
            match block {
                OutBlock::Text(text) => {
                    events.push((
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index,
                               "content_block": {"type": "text", "text": ""}}),
                    ));
                    if index == 0 {
                        events.push(("ping", json!({"type": "ping"})));
                    }
                    for piece in chunks(text, chunk_chars) {
                        events.push((
                            "content_block_delta",
                            json!({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "text_delta", "text": piece}}),
                        ));
                    }
                }
                OutBlock::ToolUse {
                    id,
                    name,
                    arguments,
                } => {
                    events.push((
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index,
                               "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                    ));
                    for piece in argument_pieces(arguments, chunk_chars) {
                        events.push((
                            "content_block_delta",
                            json!({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "input_json_delta", "partial_json": piece}}),
                        ));
                    }
                }
            }
            events.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        events.push((
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                   "usage": {"output_tokens": self.output_tokens}}),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
        events
    }
}

fn sse_frame(event: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnCtl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = match shared.intake(&conn, &headers, &body, invalid_request).await {
        Ok(incoming) => incoming,
        Err(resp) => return resp,
    };
    let (body, fault) = (incoming.body, incoming.fault);
    if !headers.contains_key("x-api-key") {
        return anthropic_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        );
    }
    if !headers.contains_key("anthropic-version") {
        return invalid_request(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        );
    }
    if let Err(message) = validate(&body) {
        return invalid_request(StatusCode::BAD_REQUEST, &message);
    }
    match fault {
        Some(Fault::ContextLength) => {
            return invalid_request(StatusCode::BAD_REQUEST, CONTEXT_LENGTH_MESSAGE);
        }
        Some(Fault::ContentPolicy) => {
            return invalid_request(StatusCode::BAD_REQUEST, CONTENT_POLICY_MESSAGE);
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
    let answer = AnthropicAnswer::new(&body, &behavior, shared.next_id(), refusal);
    if !stream {
        return match fault {
            Some(Fault::MalformedChunk | Fault::MalformedChunkAfter { .. }) => (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"id\": \"broken\", \"content\": [",
            )
                .into_response(),
            Some(Fault::BreakStreamAfter { .. }) => broken_json(answer.json().to_string()),
            Some(Fault::StallAfter { .. }) => {
                stalled_json(&shared, conn, answer.json().to_string())
            }
            _ => axum::Json(answer.json()).into_response(),
        };
    }

    let mut events = answer.events(behavior.chunk_chars);
    let mut first_delay = Duration::ZERO;
    let mut end = StreamEnd::Close;
    match fault {
        Some(Fault::BreakStreamAfter { chunks }) => end = StreamEnd::Break { after: chunks },
        Some(Fault::StallAfter { chunks }) => end = StreamEnd::Stall { after: chunks },
        Some(Fault::NoTerminator) => {
            events.pop(); // message_stop
            end = StreamEnd::KeepOpen;
        }
        Some(Fault::SlowFirstToken(d)) => first_delay = d,
        _ => {}
    }
    let mut frames: Vec<Bytes> = events
        .iter()
        .map(|(name, data)| sse_frame(name, &data.to_string()))
        .collect();
    let malformed_at = match fault {
        Some(Fault::MalformedChunk) => Some(2),
        Some(Fault::MalformedChunkAfter { chunks }) => Some(chunks),
        _ => None,
    };
    if let Some(at) = malformed_at {
        frames.insert(
            at.min(frames.len()),
            sse_frame(
                "content_block_delta",
                "{\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": ",
            ),
        );
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
