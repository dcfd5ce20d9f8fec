//! The OpenAI-compatible front door: `POST /v1/chat/completions` and
//! `GET /v1/models`, so existing OpenAI SDK clients talk to Baton unchanged
//! (point their base URL at `http://HOST:PORT/v1`).
//!
//! Each chat completion is one *one-shot* Baton session, journaled like any
//! other: the request's `model` names a Baton route, system and developer
//! messages become the system prompt, every other message but the last
//! becomes the session's starting history, and the last (user) message is
//! sent as its one turn. The turn ends with the model's answer; tool calls the
//! model asks for are returned to the caller (finish reason `tool_calls`), as
//! OpenAI does, not run by Baton. The session id is returned in the
//! `x-baton-session-id` header (and in the response id, `chatcmpl-<id>`), so
//! the journal of any call can be inspected over gRPC or with `baton session`.
//!
//! Streaming (`"stream": true`) sends `chat.completion.chunk` events: a first
//! chunk with the role, the text as Baton streams it, the tool calls (one
//! chunk, an index per call), a chunk with the finish reason, a usage chunk
//! when `stream_options.include_usage` is set, then `data: [DONE]`.
//!
//! **Retraction.** Baton retries a model call whose stream broke, and its
//! gRPC API tells clients to discard what the failed attempt streamed
//! (`OutputRetracted`). The OpenAI stream format has no way to take text
//! back, so when output was already sent to the client, the stream ends with
//! an error event (`"code": "stream_retracted"`, "re-issue the request") and
//! no `[DONE]`. When nothing was sent yet the retry is invisible. The same
//! applies when the recorded answer does not extend the text already sent
//! (for example, a reviewer edited it at a gate). The session's turn still
//! completes in Baton; its answer is in the journal.
//!
//! Errors have OpenAI's shape (`{"error": {"message", "type", "param",
//! "code"}}`); [`turn_failed_error`] maps the runtime's failure codes onto
//! HTTP statuses. A failure before any output is an HTTP error even when
//! streaming; one after output was sent ends the stream with an error event.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_runtime::{EventStream, RuntimeHandle, StartSession};
use baton_types::{
    EventKind, FinishReason, Generation, Image, Message, Role, SessionId, ToolCall, ToolChoice,
    ToolDefinition, Usage,
};
use futures::StreamExt;
use serde_json::{Map, Value, json};

/// Header: the Baton session that served the call.
pub const SESSION_HEADER: &str = "x-baton-session-id";
/// Header: the endpoint that answered.
pub const ENDPOINT_HEADER: &str = "x-baton-endpoint";
/// Header: the call's cost in USD, when the endpoint is priced.
pub const COST_HEADER: &str = "x-baton-cost-usd";
/// Header: attempts the routed model call took.
pub const ATTEMPTS_HEADER: &str = "x-baton-attempts";
/// Request header: the session's budget in USD.
pub const BUDGET_HEADER: &str = "x-baton-budget-usd";
/// Request header: data classes the content carries, comma-separated.
pub const DATA_CLASSES_HEADER: &str = "x-baton-data-classes";

/// The message of the error event that ends a stream whose output was retracted.
pub const RETRACTED_MESSAGE: &str = "the upstream stream failed after output was sent; the answer was retried — re-issue the request";

/// An error in OpenAI's shape, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, ...
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    /// The session the call created, when it got that far.
    pub session: Option<SessionId>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            session: None,
        }
    }

    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let message = message.into();
        Self {
            param: Some(param.clone()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("{param}: {message}"),
            )
        }
    }

    pub(crate) fn code(mut self, code: &str) -> Self {
        self.code = Some(code.into());
        self
    }

    fn param(mut self, param: &str) -> Self {
        self.param = Some(param.into());
        self
    }

    fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    fn in_session(mut self, id: SessionId) -> Self {
        self.session = Some(id);
        self
    }

    /// A 404 for a `model` that is no Baton route.
    pub fn model_not_found(model: &str, routes: &[String]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model {model:?} does not exist: it is not a Baton route (have: {})",
                routes.join(", ")
            ),
        )
        .param("model")
        .code("model_not_found")
    }

    /// `{"error": {...}}`.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(id) = self.session
            && let Ok(v) = HeaderValue::from_str(&id.to_string())
        {
            resp.headers_mut().insert(SESSION_HEADER, v);
        }
        resp
    }
}

/// A runtime error as an OpenAI-style error (status from [`crate::http_status`]).
pub fn runtime_error(err: &baton_runtime::Error) -> ApiError {
    let code = err.code();
    let status = crate::http_status(code);
    let kind = match status.as_u16() {
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    ApiError::new(status, kind, err.to_string()).code(code.as_str())
}

/// A failed turn (`TurnFailed { code, reason }`) as an OpenAI-style error.
pub fn turn_failed_error(code: &str, reason: &str) -> ApiError {
    let e = |status, kind| ApiError::new(status, kind, reason).code(code);
    match code {
        "unknown_route" => e(StatusCode::NOT_FOUND, "invalid_request_error")
            .param("model")
            .code("model_not_found"),
        "budget_exhausted" => {
            e(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota").code("insufficient_quota")
        }
        "content_policy" => {
            e(StatusCode::BAD_REQUEST, "invalid_request_error").code("content_policy_violation")
        }
        "context_length" => e(StatusCode::BAD_REQUEST, "invalid_request_error")
            .param("messages")
            .code("context_length_exceeded"),
        "invalid_request" => e(StatusCode::BAD_REQUEST, "invalid_request_error"),
        "deadline_exceeded" => e(StatusCode::GATEWAY_TIMEOUT, "server_error"),
        "no_eligible_endpoint" => e(StatusCode::SERVICE_UNAVAILABLE, "server_error"),
        "model_error" => e(StatusCode::BAD_GATEWAY, "server_error"),
        "" => e(StatusCode::INTERNAL_SERVER_ERROR, "server_error").code("turn_failed"),
        _ => e(StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

fn cancelled_error() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the turn was cancelled",
    )
    .code("cancelled")
}

fn ended_early_error(id: SessionId) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        format!("the event stream of session {id} ended before its turn did"),
    )
    .code("unavailable")
}

fn retracted_error() -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "server_error", RETRACTED_MESSAGE)
        .code("stream_retracted")
}

/// A chat completion request, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The Baton route.
    pub model: String,
    /// System and developer messages, joined by blank lines.
    pub system_prompt: String,
    /// Every message but the last, system and developer messages excluded.
    pub history: Vec<Message>,
    /// The message the turn is sent with (role user or tool).
    pub last: Message,
    pub stream: bool,
    pub include_usage: bool,
    pub tools: Vec<ToolDefinition>,
    /// `metadata`, plus `user` under the key `user`.
    pub metadata: BTreeMap<String, String>,
    pub budget_usd: Option<f64>,
    pub data_classes: Vec<String>,
    /// `temperature`, `top_p`, `max_completion_tokens`/`max_tokens`,
    /// `stop`, `tool_choice` and `response_format`.
    pub generation: Generation,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A field that must be absent, null or of the type `get` accepts.
fn optional<'a, T>(
    obj: &'a Map<String, Value>,
    field: &str,
    param: &str,
    expected: &str,
    get: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => get(v).map(Some).ok_or_else(|| {
            ApiError::invalid(param, format!("must be {expected}, not {}", type_name(v)))
        }),
    }
}

/// A message's text: a string, or an array of `{"type": "text", "text"}` parts.
fn content_text(content: Option<&Value>, param: &str, required: bool) -> Result<String, ApiError> {
    content_parts(content, param, required, false).map(|(text, _)| text)
}

/// A message's text and images: a string, or an array of parts — `text`
/// parts (joined by newlines) and, when `images` allows them, `image_url`
/// parts (`{"url", "detail"}`: an http(s) or base64 data URL).
fn content_parts(
    content: Option<&Value>,
    param: &str,
    required: bool,
    images: bool,
) -> Result<(String, Vec<Image>), ApiError> {
    match content {
        None | Some(Value::Null) if !required => Ok((String::new(), Vec::new())),
        None | Some(Value::Null) => Err(ApiError::invalid(param, "is required")),
        Some(Value::String(s)) => Ok((s.clone(), Vec::new())),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            let mut found = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let p = format!("{param}[{j}]");
                let Some(obj) = part.as_object() else {
                    return Err(ApiError::invalid(p, "a content part must be an object"));
                };
                match obj.get("type").and_then(Value::as_str) {
                    Some("text") => match obj.get("text") {
                        Some(Value::String(t)) => texts.push(t.as_str()),
                        _ => {
                            return Err(ApiError::invalid(format!("{p}.text"), "must be a string"));
                        }
                    },
                    Some("image_url") if images => {
                        let image = match obj.get("image_url") {
                            Some(Value::String(url)) => Image::url(url.clone()),
                            Some(Value::Object(o)) => {
                                let url = non_empty_str(o, "url", &format!("{p}.image_url.url"))?;
                                let detail = optional(
                                    o,
                                    "detail",
                                    &format!("{p}.image_url.detail"),
                                    "a string",
                                    |v| v.as_str().map(str::to_string),
                                )?;
                                Image { url, detail }
                            }
                            _ => {
                                return Err(ApiError::invalid(
                                    format!("{p}.image_url"),
                                    "must be an object with a url",
                                ));
                            }
                        };
                        image
                            .validate()
                            .map_err(|e| ApiError::invalid(format!("{p}.image_url.url"), e))?;
                        found.push(image);
                    }
                    Some(other) => {
                        let supported = if images {
                            "only \"text\" and \"image_url\" parts are"
                        } else {
                            "only \"text\" parts are, here"
                        };
                        return Err(ApiError::invalid(
                            format!("{p}.type"),
                            format!("content part type {other:?} is not supported; {supported}"),
                        ));
                    }
                    None => return Err(ApiError::invalid(format!("{p}.type"), "is required")),
                }
            }
            Ok((texts.join("\n"), found))
        }
        Some(v) => Err(ApiError::invalid(
            param,
            format!(
                "must be a string or an array of content parts, not {}",
                type_name(v)
            ),
        )),
    }
}

fn tool_calls(v: Option<&Value>, param: &str) -> Result<Vec<ToolCall>, ApiError> {
    let calls = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::invalid(
                param,
                format!("must be an array, not {}", type_name(v)),
            ));
        }
    };
    let mut out = Vec::with_capacity(calls.len());
    for (k, call) in calls.iter().enumerate() {
        let p = format!("{param}[{k}]");
        let Some(obj) = call.as_object() else {
            return Err(ApiError::invalid(p, "must be an object"));
        };
        match obj.get("type").and_then(Value::as_str) {
            None | Some("function") => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("{p}.type"),
                    format!("tool call type {other:?} is not supported; only \"function\" is"),
                ));
            }
        }
        let id = match obj.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(ApiError::invalid(
                    format!("{p}.id"),
                    "must be a non-empty string",
                ));
            }
        };
        let function = object(obj, "function", &format!("{p}.function"))?;
        let name = non_empty_str(function, "name", &format!("{p}.function.name"))?;
        let arguments = optional(
            function,
            "arguments",
            &format!("{p}.function.arguments"),
            "a string",
            |v| v.as_str().map(str::to_string),
        )?
        .unwrap_or_default();
        out.push(ToolCall {
            id,
            name,
            arguments,
        });
    }
    Ok(out)
}

/// `obj[key]` as a non-empty string; else an error naming `path`.
fn non_empty_str(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<String, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::invalid(path, "must be a non-empty string")),
    }
}

/// `obj[key]` as an object; else an error naming `path`.
fn object<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a serde_json::Map<String, Value>, ApiError> {
    obj.get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid(path, "must be an object"))
}

/// The sampling, limit, tool-choice and output-format parameters, checked
/// and named as OpenAI names them.
fn generation(obj: &Map<String, Value>, tools: &[ToolDefinition]) -> Result<Generation, ApiError> {
    let number = |field: &str, max: f64| -> Result<Option<f32>, ApiError> {
        match optional(obj, field, field, "a number", Value::as_f64)? {
            Some(x) if !(0.0..=max).contains(&x) => Err(ApiError::invalid(
                field,
                format!("{x} is not between 0 and {max}"),
            )),
            x => Ok(x.map(|x| x as f32)),
        }
    };
    let temperature = number("temperature", 2.0)?;
    let top_p = number("top_p", 1.0)?;
    let mut max_output_tokens = None;
    // The newer name wins when both are given.
    for field in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = optional(obj, field, field, "a positive integer", Value::as_u64)? {
            if n == 0 {
                return Err(ApiError::invalid(field, "must be at least 1"));
            }
            max_output_tokens = Some(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }
    let stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(
                        format!("stop[{i}]"),
                        format!("must be a string, not {}", type_name(v)),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "must be a string or an array of strings, not {}",
                    type_name(v)
                ),
            ));
        }
    };
    let tool_choice = match obj.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!(
                        "{other:?} is not one of \"auto\", \"none\", \"required\" or a function"
                    ),
                ));
            }
        },
        Some(Value::Object(o)) => {
            match o.get("type").and_then(Value::as_str) {
                Some("function") => {}
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice.type",
                        "must be \"function\"",
                    ));
                }
            }
            let function = object(o, "function", "tool_choice.function")?;
            let name = non_empty_str(function, "name", "tool_choice.function.name")?;
            ToolChoice::Tool(name)
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("must be a string or an object, not {}", type_name(v)),
            ));
        }
    };
    match &tool_choice {
        ToolChoice::Tool(name) if !tools.iter().any(|t| &t.name == name) => {
            return Err(ApiError::invalid(
                "tool_choice.function.name",
                format!("{name:?} is not one of the request's tools"),
            ));
        }
        ToolChoice::Required if tools.is_empty() => {
            return Err(ApiError::invalid(
                "tool_choice",
                "\"required\" needs tools, and the request has none",
            ));
        }
        _ => {}
    }
    let json_schema = match optional(
        obj,
        "response_format",
        "response_format",
        "an object",
        Value::as_object,
    )? {
        None => None,
        Some(rf) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_schema") => {
                let js = object(rf, "json_schema", "response_format.json_schema")?;
                let schema = object(js, "schema", "response_format.json_schema.schema")?;
                Some(Value::Object(schema.clone()).to_string())
            }
            Some("json_object") => {
                return Err(ApiError::invalid(
                    "response_format.type",
                    "\"json_object\" is not supported; give a schema with \"json_schema\" (every endpoint then constrains its answer to it)",
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    "response_format.type",
                    "must be \"text\" or \"json_schema\"",
                ));
            }
        },
    };
    let g = Generation {
        temperature,
        top_p,
        max_output_tokens,
        stop,
        tool_choice,
        json_schema,
    };
    g.validate()
        .map_err(|(field, problem)| ApiError::invalid(field, problem))?;
    Ok(g)
}

fn tools(v: Option<&Value>) -> Result<Vec<ToolDefinition>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::invalid(
                "tools",
                format!("must be an array, not {}", type_name(v)),
            ));
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let p = format!("tools[{i}]");
        let Some(obj) = tool.as_object() else {
            return Err(ApiError::invalid(p, "must be an object"));
        };
        match obj.get("type").and_then(Value::as_str) {
            None | Some("function") => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("{p}.type"),
                    format!("tool type {other:?} is not supported; only \"function\" tools are"),
                ));
            }
        }
        let function = object(obj, "function", &format!("{p}.function"))?;
        let name = non_empty_str(function, "name", &format!("{p}.function.name"))?;
        let description = optional(
            function,
            "description",
            &format!("{p}.function.description"),
            "a string",
            |v| v.as_str().map(str::to_string),
        )?
        .unwrap_or_default();
        let parameters = optional(
            function,
            "parameters",
            &format!("{p}.function.parameters"),
            "a JSON Schema object",
            |v| v.is_object().then(|| v.to_string()),
        )?
        .unwrap_or_else(|| r#"{"type":"object","properties":{}}"#.into());
        out.push(ToolDefinition {
            name,
            description,
            parameters,
        });
    }
    Ok(out)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::invalid(name, "must be visible ASCII")),
    }
}

/// Parse and check a request body and its Baton headers.
pub fn parse_request(body: &[u8], headers: &HeaderMap) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the request body is not valid JSON: {e}"),
        )
        .code("invalid_json")
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!(
                "the request body must be a JSON object, not {}",
                type_name(&value)
            ),
        ));
    };
    let model = match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => return Err(ApiError::invalid("model", "is required")),
        Some(_) => return Err(ApiError::invalid("model", "must be a non-empty string")),
    };
    let messages = match obj.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "must hold at least one message",
            ));
        }
        None | Some(Value::Null) => return Err(ApiError::invalid("messages", "is required")),
        Some(v) => {
            return Err(ApiError::invalid(
                "messages",
                format!("must be an array, not {}", type_name(v)),
            ));
        }
    };
    let mut system = Vec::new();
    let mut conversation = Vec::with_capacity(messages.len());
    let last_index = messages.len() - 1;
    for (i, m) in messages.iter().enumerate() {
        let p = format!("messages[{i}]");
        let Some(m) = m.as_object() else {
            return Err(ApiError::invalid(p, "must be an object"));
        };
        let role = match m.get("role") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(ApiError::invalid(format!("{p}.role"), "must be a string")),
        };
        let content_param = format!("{p}.content");
        if i == last_index && !matches!(role, "user" | "tool") {
            return Err(ApiError::invalid(
                format!("{p}.role"),
                format!("the last message must be a user or tool message, not {role:?}"),
            ));
        }
        match role {
            "system" | "developer" => {
                system.push(content_text(m.get("content"), &content_param, true)?);
            }
            "user" => {
                let (text, images) = content_parts(m.get("content"), &content_param, true, true)?;
                if i == last_index && text.trim().is_empty() && images.is_empty() {
                    return Err(ApiError::invalid(content_param, "must not be empty"));
                }
                conversation.push(Message {
                    images,
                    ..Message::user(text)
                });
            }
            "assistant" => {
                let calls = tool_calls(m.get("tool_calls"), &format!("{p}.tool_calls"))?;
                let text = content_text(m.get("content"), &content_param, false)?;
                conversation.push(Message {
                    tool_calls: calls,
                    ..Message::assistant(text)
                });
            }
            "tool" => {
                let call_id = match m.get("tool_call_id") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{p}.tool_call_id"),
                            "must be a non-empty string",
                        ));
                    }
                };
                conversation.push(Message {
                    role: Role::Tool,
                    content: content_text(m.get("content"), &content_param, true)?,
                    tool_calls: Vec::new(),
                    tool_call_id: Some(call_id),
                    images: Vec::new(),
                });
            }
            other => {
                return Err(ApiError::invalid(
                    format!("{p}.role"),
                    format!(
                        "role {other:?} is not supported; use system, developer, user, assistant or tool"
                    ),
                ));
            }
        }
    }
    let Some(last) = conversation.pop() else {
        return Err(ApiError::invalid("messages", "must hold a user message"));
    };
    let stream = optional(obj, "stream", "stream", "a boolean", Value::as_bool)?.unwrap_or(false);
    let include_usage = match optional(
        obj,
        "stream_options",
        "stream_options",
        "an object",
        Value::as_object,
    )? {
        Some(o) => optional(
            o,
            "include_usage",
            "stream_options.include_usage",
            "a boolean",
            Value::as_bool,
        )?
        .unwrap_or(false),
        None => false,
    };
    if let Some(n) = optional(obj, "n", "n", "an integer", Value::as_u64)?
        && n != 1
    {
        return Err(ApiError::invalid(
            "n",
            "only 1 choice per request is supported",
        ));
    }
    let tools = tools(obj.get("tools"))?;
    let generation = generation(obj, &tools)?;
    let mut metadata = BTreeMap::new();
    if let Some(user) = optional(obj, "user", "user", "a string", Value::as_str)?
        && !user.is_empty()
    {
        metadata.insert("user".to_string(), user.to_string());
    }
    if let Some(m) = optional(obj, "metadata", "metadata", "an object", Value::as_object)? {
        for (k, v) in m {
            let Some(v) = v.as_str() else {
                return Err(ApiError::invalid(
                    format!("metadata.{k}"),
                    format!("values must be strings, not {}", type_name(v)),
                ));
            };
            metadata.insert(k.clone(), v.to_string());
        }
    }
    let budget_usd = match header_str(headers, BUDGET_HEADER)? {
        None => None,
        Some(s) => match s.parse::<f64>() {
            Ok(b) if b.is_finite() && b >= 0.0 => Some(b),
            _ => {
                return Err(ApiError::invalid(
                    BUDGET_HEADER,
                    format!("{s:?} is not a non-negative number of USD"),
                ));
            }
        },
    };
    let data_classes = header_str(headers, DATA_CLASSES_HEADER)?
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(ChatRequest {
        model,
        system_prompt: system.join("\n\n"),
        history: conversation,
        last,
        stream,
        include_usage,
        tools,
        metadata,
        budget_usd,
        data_classes,
        generation,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total(),
    })
}

fn tool_calls_json(calls: &[ToolCall], indexed: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if indexed {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

/// The finish reason as OpenAI names it (SDKs with typed enums reject others).
fn finish_reason(reason: &FinishReason, has_tool_calls: bool) -> &'static str {
    if has_tool_calls {
        return "tool_calls";
    }
    match reason {
        FinishReason::Stop | FinishReason::Other(_) => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// Cancels the session's turn when dropped armed: the client went away
/// before the turn ended (as OpenAI stops generating).
struct CancelOnDrop {
    runtime: Option<RuntimeHandle>,
    id: SessionId,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.runtime = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let id = self.id;
            handle.spawn(async move {
                if let Err(e) = runtime.cancel(id).await {
                    tracing::debug!(session = %id, error = %e, "cannot cancel an abandoned front-door turn");
                }
            });
        }
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    runtime: RuntimeHandle,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match complete(runtime, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn complete(
    runtime: RuntimeHandle,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| {
        let status = r.status();
        let e = ApiError::new(status, "invalid_request_error", r.body_text());
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            e.code("request_too_large")
        } else {
            e
        }
    })?;
    let req = parse_request(&body, &headers)?;
    let routes = runtime.routes();
    if !routes.contains(&req.model) {
        return Err(ApiError::model_not_found(&req.model, &routes));
    }
    let limits = &runtime.config().sessions;
    if req.last.content.len() > limits.max_message_bytes {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the last message is {} bytes; the limit is {} (sessions.max_message_bytes)",
                req.last.content.len(),
                limits.max_message_bytes
            ),
        )
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .code("request_too_large"));
    }
    if req.system_prompt.len() > limits.max_system_prompt_bytes {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the system and developer messages are {} bytes; the limit is {} (sessions.max_system_prompt_bytes)",
                req.system_prompt.len(),
                limits.max_system_prompt_bytes
            ),
        )
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .code("request_too_large"));
    }
    let info = runtime
        .start_session(StartSession {
            idempotency_key: None,
            system_prompt: req.system_prompt,
            route: Some(req.model.clone()),
            metadata: req.metadata,
            allowed_tools: Vec::new(),
            client_tools: req.tools,
            max_steps: 0,
            budget_usd: req.budget_usd,
            data_classes: req.data_classes,
            one_shot: true,
            history: req.history,
            generation: req.generation,
        })
        .await
        .map_err(|e| runtime_error(&e))?;
    let id = info.id;
    let events = runtime
        .send_message(id, req.last, false)
        .await
        .map_err(|e| runtime_error(&e).in_session(id))?;
    let guard = CancelOnDrop {
        runtime: Some(runtime),
        id,
    };
    let chunks = Chunks {
        id: format!("chatcmpl-{id}"),
        created: unix_now(),
        model: req.model,
        include_usage: req.include_usage,
        sent_role: false,
        sent: String::new(),
        sent_attempt: None,
        finish: "stop",
    };
    if req.stream {
        stream_response(id, events, guard, chunks).await
    } else {
        json_response(id, events, guard, chunks).await
    }
    .map_err(|e| e.in_session(id))
}

/// The recorded answer of a one-shot turn.
struct Answer {
    message: Message,
    usage: Usage,
    endpoint: String,
    model: String,
    finish_reason: FinishReason,
    cost_usd: Option<f64>,
    attempts: u32,
}

fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

async fn json_response(
    id: SessionId,
    mut events: EventStream,
    mut guard: CancelOnDrop,
    chunks: Chunks,
) -> Result<Response, ApiError> {
    let mut answer = None;
    let turn_usage = loop {
        let event = match events.next().await {
            None => {
                guard.disarm();
                return Err(ended_early_error(id));
            }
            Some(Err(e)) => {
                guard.disarm();
                return Err(runtime_error(&e));
            }
            Some(Ok(e)) => e,
        };
        match event.kind {
            EventKind::AssistantMessage {
                message,
                usage,
                endpoint,
                model,
                finish_reason,
                cost_usd,
                attempts,
                ..
            } => {
                answer = Some(Answer {
                    message,
                    usage,
                    endpoint,
                    model,
                    finish_reason,
                    cost_usd,
                    attempts,
                });
            }
            EventKind::TurnCompleted { usage, .. } => break usage,
            EventKind::TurnFailed { reason, code, .. } => {
                guard.disarm();
                return Err(turn_failed_error(code.as_str(), &reason));
            }
            EventKind::TurnCancelled { .. } => {
                guard.disarm();
                return Err(cancelled_error());
            }
            _ => {}
        }
    };
    guard.disarm();
    let Some(a) = answer else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("the turn of session {id} completed without an answer"),
        ));
    };
    let usage = if turn_usage == Usage::default() {
        a.usage
    } else {
        turn_usage
    };
    let has_calls = !a.message.tool_calls.is_empty();
    let mut message = json!({
        "role": "assistant",
        "content": if a.message.content.is_empty() && has_calls {
            Value::Null
        } else {
            Value::String(a.message.content.clone())
        },
        "refusal": null,
    });
    if has_calls {
        message["tool_calls"] = tool_calls_json(&a.message.tool_calls, false);
    }
    let model = if a.model.is_empty() {
        chunks.model
    } else {
        a.model
    };
    let body = json!({
        "id": chunks.id,
        "object": "chat.completion",
        "created": chunks.created,
        "model": model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(&a.finish_reason, has_calls),
        }],
        "usage": usage_json(usage),
    });
    let mut resp = Json(body).into_response();
    let h = resp.headers_mut();
    if let Some(v) = header_value(&id.to_string()) {
        h.insert(SESSION_HEADER, v);
    }
    if let Some(v) = header_value(&a.endpoint) {
        h.insert(ENDPOINT_HEADER, v);
    }
    if let Some(cost) = a.cost_usd
        && let Some(v) = header_value(&cost.to_string())
    {
        h.insert(COST_HEADER, v);
    }
    h.insert(ATTEMPTS_HEADER, HeaderValue::from(a.attempts.max(1)));
    Ok(resp)
}

/// Turns session events into `chat.completion.chunk` SSE frames.
struct Chunks {
    id: String,
    created: u64,
    /// The requested route until the answer names the model that gave it.
    model: String,
    include_usage: bool,
    sent_role: bool,
    /// Content sent to the client so far.
    sent: String,
    /// The attempt whose output was sent.
    sent_attempt: Option<u32>,
    finish: &'static str,
}

/// What one event adds to the stream.
struct Step {
    frames: Vec<Bytes>,
    /// The stream ends after these frames.
    done: bool,
}

impl Step {
    fn more(frames: Vec<Bytes>) -> Self {
        Self {
            frames,
            done: false,
        }
    }

    fn end(frames: Vec<Bytes>) -> Self {
        Self { frames, done: true }
    }
}

fn frame(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// The error event that ends a stream.
fn error_frame(e: &ApiError) -> Bytes {
    frame(&e.body())
}

impl Chunks {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        frame(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        }))
    }

    fn role(&mut self, frames: &mut Vec<Bytes>) {
        if !self.sent_role {
            self.sent_role = true;
            frames.push(self.chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ));
        }
    }

    fn text(&mut self, text: &str, frames: &mut Vec<Bytes>) {
        self.role(frames);
        self.sent.push_str(text);
        frames.push(self.chunk(json!({"content": text}), None));
    }

    fn retracted(&self) -> Step {
        Step::end(vec![error_frame(&retracted_error())])
    }

    fn on_event(&mut self, kind: EventKind) -> Step {
        let mut frames = Vec::new();
        match kind {
            EventKind::OutputDelta { text, attempt, .. } => {
                if text.is_empty() {
                    return Step::more(frames);
                }
                if !self.sent.is_empty() && self.sent_attempt != Some(attempt) {
                    // A new attempt's output: what was sent is void.
                    return self.retracted();
                }
                self.sent_attempt = Some(attempt);
                self.text(&text, &mut frames);
            }
            EventKind::OutputRetracted { .. } => {
                if !self.sent.is_empty() {
                    return self.retracted();
                }
                self.sent_attempt = None;
            }
            EventKind::AssistantMessage {
                message,
                model,
                finish_reason: reason,
                ..
            } => {
                if !model.is_empty() {
                    self.model = model;
                }
                let Some(rest) = message.content.strip_prefix(self.sent.as_str()) else {
                    // The recorded answer is not what was streamed.
                    return self.retracted();
                };
                if !rest.is_empty() {
                    let rest = rest.to_string();
                    self.text(&rest, &mut frames);
                }
                if !message.tool_calls.is_empty() {
                    self.role(&mut frames);
                    frames.push(self.chunk(
                        json!({"tool_calls": tool_calls_json(&message.tool_calls, true)}),
                        None,
                    ));
                }
                self.finish = finish_reason(&reason, !message.tool_calls.is_empty());
            }
            EventKind::TurnCompleted { usage, .. } => {
                self.role(&mut frames);
                frames.push(self.chunk(json!({}), Some(self.finish)));
                if self.include_usage {
                    frames.push(frame(&json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": null,
                        "choices": [],
                        "usage": usage_json(usage),
                    })));
                }
                frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
                return Step::end(frames);
            }
            EventKind::TurnFailed { reason, code, .. } => {
                return Step::end(vec![error_frame(&turn_failed_error(
                    code.as_str(),
                    &reason,
                ))]);
            }
            EventKind::TurnCancelled { .. } => {
                return Step::end(vec![error_frame(&cancelled_error())]);
            }
            _ => {}
        }
        Step::more(frames)
    }
}

async fn stream_response(
    id: SessionId,
    mut events: EventStream,
    mut guard: CancelOnDrop,
    mut chunks: Chunks,
) -> Result<Response, ApiError> {
    // Wait for the first output: a failure before it is an HTTP error.
    let first = loop {
        let event = match events.next().await {
            None => {
                guard.disarm();
                return Err(ended_early_error(id));
            }
            Some(Err(e)) => {
                guard.disarm();
                return Err(runtime_error(&e));
            }
            Some(Ok(e)) => e,
        };
        match event.kind {
            EventKind::TurnFailed { reason, code, .. } => {
                guard.disarm();
                return Err(turn_failed_error(code.as_str(), &reason));
            }
            EventKind::TurnCancelled { .. } => {
                guard.disarm();
                return Err(cancelled_error());
            }
            kind => {
                let step = chunks.on_event(kind);
                if !step.frames.is_empty() {
                    break step;
                }
            }
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(32);
    tokio::spawn(async move {
        let mut step = first;
        loop {
            for f in step.frames {
                if tx.send(Ok(f)).await.is_err() {
                    return; // the client went away: the guard cancels the turn
                }
            }
            if step.done {
                guard.disarm();
                return;
            }
            step = match events.next().await {
                Some(Ok(e)) => chunks.on_event(e.kind),
                Some(Err(e)) => Step::end(vec![error_frame(&runtime_error(&e))]),
                None => Step::end(vec![error_frame(&ended_early_error(id))]),
            };
        }
    });
    let mut resp = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(v) = header_value(&id.to_string()) {
        h.insert(SESSION_HEADER, v);
    }
    Ok(resp)
}

/// `GET /v1/models`: every route, as a model.
pub fn models(runtime: &RuntimeHandle) -> Value {
    let data: Vec<Value> = runtime.routes().iter().map(|r| model_json(r)).collect();
    json!({"object": "list", "data": data})
}

/// One model (route) object.
pub fn model_json(route: &str) -> Value {
    json!({"id": route, "object": "model", "created": 0, "owned_by": "baton"})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        parse_request(v.to_string().as_bytes(), &HeaderMap::new())
    }

    fn err(v: Value) -> ApiError {
        parse(v).unwrap_err()
    }

    #[test]
    fn messages_map_onto_system_prompt_history_and_the_turn() {
        let r = parse(json!({
            "model": "fast",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is"}, {"type": "text", "text": "2+2?"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{\"e\":\"2+2\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "4"},
                {"role": "developer", "content": "answer in words"},
                {"role": "user", "content": "so?", "name": "ann"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}],
            "temperature": 0.2,
            "max_tokens": 10,
            "user": "u-1",
            "metadata": {"team": "support"},
            "some_future_field": {"x": 1},
        }))
        .unwrap();
        assert_eq!(r.model, "fast");
        assert_eq!(r.system_prompt, "be brief\n\nanswer in words");
        assert_eq!(r.history.len(), 3);
        assert_eq!(r.history[0], Message::user("what is\n2+2?"));
        assert_eq!(r.history[1].role, Role::Assistant);
        assert_eq!(r.history[1].tool_calls[0].name, "calc");
        assert_eq!(r.history[2].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(r.last, Message::user("so?"));
        assert!(r.stream && r.include_usage);
        assert_eq!(r.tools[0].name, "calc");
        assert_eq!(r.tools[0].parameters, r#"{"type":"object"}"#);
        assert_eq!(r.metadata.get("user").map(String::as_str), Some("u-1"));
        assert_eq!(r.metadata.get("team").map(String::as_str), Some("support"));
        assert_eq!(r.generation.temperature, Some(0.2));
        assert_eq!(r.generation.max_output_tokens, Some(10));
        assert_eq!(r.generation.tool_choice, ToolChoice::Auto);
    }

    #[test]
    fn user_messages_carry_image_parts() {
        let r = parse(json!({"model": "m", "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
            ]},
            {"role": "assistant", "content": "a cat"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
            ]},
        ]}))
        .unwrap();
        assert_eq!(
            r.history[0].images,
            [Image {
                url: "https://example.com/a.png".into(),
                detail: Some("low".into())
            }]
        );
        assert_eq!(r.history[0].content, "what is this?");
        assert_eq!(r.last.content, "", "an image alone is a message");
        assert_eq!(
            r.last.images,
            [Image::url("data:image/jpeg;base64,/9j/4AAQ")]
        );
    }

    #[test]
    fn generation_parameters_are_parsed_and_checked() {
        let tools = json!([{"type": "function", "function": {"name": "lookup"}}]);
        let user = json!([{"role": "user", "content": "hi"}]);
        let r = parse(json!({
            "model": "m", "messages": user, "tools": tools,
            "temperature": 0, "top_p": 0.5,
            "max_tokens": 10, "max_completion_tokens": 20,
            "stop": "END",
            "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "answer", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}},
        }))
        .unwrap();
        assert_eq!(
            r.generation,
            Generation {
                temperature: Some(0.0),
                top_p: Some(0.5),
                max_output_tokens: Some(20),
                stop: vec!["END".into()],
                tool_choice: ToolChoice::Tool("lookup".into()),
                json_schema: Some(
                    r#"{"properties":{"a":{"type":"string"}},"type":"object"}"#.into()
                ),
            }
        );
        for (choice, want) in [
            (json!("none"), ToolChoice::None),
            (json!("required"), ToolChoice::Required),
            (json!("auto"), ToolChoice::Auto),
            (Value::Null, ToolChoice::Auto),
        ] {
            let r = parse(
                json!({"model": "m", "messages": user, "tools": tools, "tool_choice": choice}),
            )
            .unwrap();
            assert_eq!(r.generation.tool_choice, want);
        }
        let r = parse(json!({"model": "m", "messages": user, "stop": ["a", "b"],
                             "response_format": {"type": "text"}}))
        .unwrap();
        assert_eq!(r.generation.stop, ["a", "b"]);
        assert_eq!(r.generation.json_schema, None);

        let cases = [
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"top_p": -1}), "top_p"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (
                json!({"max_completion_tokens": -5}),
                "max_completion_tokens",
            ),
            (json!({"stop": 5}), "stop"),
            (json!({"stop": ["a", 1]}), "stop[1]"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"tool_choice": "always"}), "tool_choice"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (
                json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "other"}}}),
                "tool_choice.function.name",
            ),
            (
                json!({"tools": tools, "tool_choice": {"type": "x"}}),
                "tool_choice.type",
            ),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format.type",
            ),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
                "response_format.json_schema.schema",
            ),
        ];
        for (extra, param) in cases {
            let mut body = json!({"model": "m", "messages": user});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let e = err(body.clone());
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn baton_headers_set_budget_and_data_classes() {
        let mut h = HeaderMap::new();
        h.insert(BUDGET_HEADER, HeaderValue::from_static("0.25"));
        h.insert(DATA_CLASSES_HEADER, HeaderValue::from_static("pii, phi,"));
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let r = parse_request(body.to_string().as_bytes(), &h).unwrap();
        assert_eq!(r.budget_usd, Some(0.25));
        assert_eq!(r.data_classes, vec!["pii", "phi"]);
        h.insert(BUDGET_HEADER, HeaderValue::from_static("-1"));
        let e = parse_request(body.to_string().as_bytes(), &h).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains(BUDGET_HEADER), "{}", e.message);
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let e = parse_request(b"{not json", &HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let cases = [
            (json!([1]), "JSON object"),
            (
                json!({"messages": [{"role": "user", "content": "x"}]}),
                "model",
            ),
            (json!({"model": "m"}), "messages: is required"),
            (json!({"model": "m", "messages": []}), "at least one"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"model": "m", "messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://a.b/c.png"}}]}, {"role": "user", "content": "x"}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
                "last message must be a user or tool message",
            ),
            (
                json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}, {"role": "user", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "  "}]}),
                "must not be empty",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
                "stream: must be a boolean",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "metadata": {"k": 1}}),
                "metadata.k",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}),
                "n: only 1",
            ),
        ];
        for (body, needle) in cases {
            let e = err(body.clone());
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.kind, "invalid_request_error");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn turn_failures_map_to_openai_statuses() {
        let e = turn_failed_error("budget_exhausted", "budget of session x exhausted");
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.kind, "insufficient_quota");
        let e = turn_failed_error("content_policy", "flagged: violence");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code.as_deref(), Some("content_policy_violation"));
        assert_eq!(e.message, "flagged: violence");
        let e = turn_failed_error("context_length", "too long");
        assert_eq!(e.code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(
            turn_failed_error("deadline_exceeded", "").status,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            turn_failed_error("no_eligible_endpoint", "").status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            turn_failed_error("model_error", "").status,
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            turn_failed_error("max_steps_exceeded", "").status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    fn chunks() -> Chunks {
        Chunks {
            id: "chatcmpl-x".into(),
            created: 1,
            model: "route".into(),
            include_usage: true,
            sent_role: false,
            sent: String::new(),
            sent_attempt: None,
            finish: "stop",
        }
    }

    fn data(frames: &[Bytes]) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                String::from_utf8_lossy(f)
                    .strip_prefix("data: ")
                    .unwrap()
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    fn answer(text: &str, calls: Vec<ToolCall>) -> EventKind {
        EventKind::AssistantMessage {
            turn: 1,
            message: Message {
                tool_calls: calls,
                ..Message::assistant(text)
            },
            usage: Usage::default(),
            endpoint: "e".into(),
            model: "real-model".into(),
            finish_reason: FinishReason::Stop,
            latency_ms: 0,
            cost_usd: None,
            attempts: 1,
        }
    }

    #[test]
    fn a_retraction_before_output_is_invisible_and_after_output_ends_the_stream() {
        let delta = |text: &str, attempt| EventKind::OutputDelta {
            turn: 1,
            attempt,
            text: text.into(),
        };
        let retract = EventKind::OutputRetracted {
            turn: 1,
            attempt: 2,
            reason: "broken".into(),
        };
        // Nothing sent: the retry is invisible.
        let mut c = chunks();
        assert!(c.on_event(retract.clone()).frames.is_empty());
        let s = c.on_event(delta("hel", 2));
        assert_eq!(s.frames.len(), 2, "role, then content");
        let s = c.on_event(answer("hello", vec![]));
        let d = data(&s.frames);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].contains(r#""content":"lo""#),
            "the rest of the answer: {d:?}"
        );
        let s = c.on_event(EventKind::TurnCompleted {
            turn: 1,
            usage: Usage {
                input_tokens: 2,
                output_tokens: 3,
            },
        });
        assert!(s.done);
        let d = data(&s.frames);
        assert!(d[0].contains(r#""finish_reason":"stop""#) && d[0].contains("real-model"));
        assert!(d[1].contains(r#""total_tokens":5"#));
        assert_eq!(d[2], "[DONE]");

        // Output sent, then retracted: an error event, no [DONE].
        let mut c = chunks();
        c.on_event(delta("hel", 1));
        let s = c.on_event(retract);
        assert!(s.done);
        let d = data(&s.frames);
        assert_eq!(d.len(), 1);
        let v: Value = serde_json::from_str(&d[0]).unwrap();
        assert_eq!(v["error"]["code"], "stream_retracted");
        assert_eq!(v["error"]["message"], RETRACTED_MESSAGE);

        // An answer that does not extend what was sent.
        let mut c = chunks();
        c.on_event(delta("hel", 1));
        let s = c.on_event(answer("goodbye", vec![]));
        assert!(s.done && data(&s.frames)[0].contains("stream_retracted"));
    }

    #[test]
    fn tool_calls_are_streamed_in_one_indexed_chunk() {
        let mut c = chunks();
        let calls = vec![
            ToolCall {
                id: "a".into(),
                name: "f".into(),
                arguments: "{}".into(),
            },
            ToolCall {
                id: "b".into(),
                name: "g".into(),
                arguments: "{\"x\":1}".into(),
            },
        ];
        let s = c.on_event(answer("", calls));
        let d = data(&s.frames);
        assert_eq!(d.len(), 2, "role, tool calls: {d:?}");
        let v: Value = serde_json::from_str(&d[1]).unwrap();
        let tc = &v["choices"][0]["delta"]["tool_calls"];
        assert_eq!(tc[1]["index"], 1);
        assert_eq!(tc[1]["function"]["arguments"], "{\"x\":1}");
        let s = c.on_event(EventKind::TurnCompleted {
            turn: 1,
            usage: Usage::default(),
        });
        assert!(data(&s.frames)[0].contains(r#""finish_reason":"tool_calls""#));
    }
}
