//! The body of `POST /v1/responses` (OpenAI's Responses API), checked.
//!
//! The request is translated into the Chat Completions shape and checked by
//! [`parse_request`] — one set of rules for messages, content parts, tools,
//! tool choice, structured output and generation settings on both APIs —
//! and an error is then renamed to the Responses field it came from
//! (`messages[2].content` → `input[1].content`, `tools[0].function.name` →
//! `tools[0].name`, `response_format` → `text.format`).

use axum::http::{HeaderMap, StatusCode};
use baton_types::SessionId;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::request::{ChatRequest, parse_request};

/// The session metadata key holding the fingerprint of the settings a
/// Responses session was started with (instructions, tools, generation):
/// a request that continues it in place must have the same.
pub const SETTINGS_KEY: &str = "baton.responses.settings";

/// A Responses request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesRequest {
    /// The request as a chat completion: route, system prompt
    /// (`instructions`), the input's messages (`history` and `last`),
    /// tools, generation, metadata, Baton's headers.
    pub chat: ChatRequest,
    /// `previous_response_id`, as sent and as (session, turn).
    pub previous: Option<(String, SessionId, u64)>,
    /// `store` (default true): false keeps nothing of the call but its
    /// audit records.
    pub store: bool,
    /// A fingerprint of instructions, tools and generation settings.
    pub settings: String,
    /// The request's fields a response object repeats.
    pub echo: Echo,
}

/// What a response object repeats from its request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Echo {
    pub instructions: Value,
    pub tools: Value,
    pub tool_choice: Value,
    pub temperature: Value,
    pub top_p: Value,
    pub max_output_tokens: Value,
    pub metadata: Value,
    pub text: Value,
    pub parallel_tool_calls: Value,
    pub user: Value,
}

/// `resp_<session>_<turn>`: one turn of one session.
pub fn response_id(session: SessionId, turn: u64) -> String {
    format!("resp_{session}_{turn}")
}

/// The session and turn of a response id, `None` for anything else.
pub fn parse_response_id(id: &str) -> Option<(SessionId, u64)> {
    let (session, turn) = id.strip_prefix("resp_")?.rsplit_once('_')?;
    Some((session.parse().ok()?, turn.parse().ok()?))
}

/// Where each translated chat message came from, to rename errors.
struct Origins {
    /// Per chat message: the Responses field (`instructions`, `input`,
    /// `input[3]`).
    messages: Vec<String>,
    /// Per chat message, per tool call: the `function_call` item.
    calls: Vec<Vec<String>>,
}

impl Origins {
    fn push(&mut self, at: String) {
        self.messages.push(at);
        self.calls.push(Vec::new());
    }
}

/// Parse and check a Responses body and Baton's headers.
pub fn parse_responses(body: &[u8], headers: &HeaderMap) -> Result<ResponsesRequest, ApiError> {
    let o = &ApiError::json_object(body)?;
    let given = |k: &str| o.get(k).filter(|v| !v.is_null());
    if given("conversation").is_some() {
        return Err(ApiError::invalid(
            "conversation",
            "is not supported: continue a conversation with previous_response_id",
        ));
    }
    let mut origins = Origins {
        messages: Vec::new(),
        calls: Vec::new(),
    };
    let mut messages: Vec<Value> = Vec::new();
    if let Some(ins) = given("instructions") {
        let Some(text) = ins.as_str() else {
            return Err(ApiError::invalid("instructions", "must be a string"));
        };
        messages.push(json!({"role": "system", "content": text}));
        origins.push("instructions".into());
    }
    match given("input") {
        None => return Err(ApiError::invalid("input", "is required")),
        Some(Value::String(s)) => {
            messages.push(json!({"role": "user", "content": s}));
            origins.push("input".into());
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, i, &mut messages, &mut origins)?;
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "input",
                "must be a string or an array of input items",
            ));
        }
    }
    let mut chat = Map::new();
    if let Some(m) = o.get("model") {
        chat.insert("model".into(), m.clone());
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = given("tools") {
        chat.insert("tools".into(), chat_tools(tools)?);
    }
    if let Some(choice) = given("tool_choice") {
        chat.insert("tool_choice".into(), chat_tool_choice(choice));
    }
    if let Some(text) = given("text") {
        if let Some(format) = text.get("format").filter(|f| !f.is_null()) {
            chat.insert("response_format".into(), chat_format(format));
        } else if !text.is_object() {
            return Err(ApiError::invalid("text", "must be an object"));
        }
    }
    for (from, to) in [
        ("max_output_tokens", "max_completion_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
        ("metadata", "metadata"),
        ("user", "user"),
    ] {
        if let Some(v) = given(from) {
            chat.insert(to.into(), v.clone());
        }
    }
    let chat_body = Value::Object(chat);
    let checked = parse_request(chat_body.to_string().as_bytes(), headers)
        .map_err(|e| renamed(e, &origins))?;
    let previous = match given("previous_response_id") {
        None => None,
        Some(Value::String(raw)) => match parse_response_id(raw) {
            Some((s, t)) => Some((raw.clone(), s, t)),
            None => return Err(previous_not_found(raw)),
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "previous_response_id",
                "must be a string",
            ));
        }
    };
    let store = match given("store") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("store", "must be a boolean")),
    };
    let echo = Echo {
        instructions: o.get("instructions").cloned().unwrap_or(Value::Null),
        tools: given("tools").cloned().unwrap_or_else(|| json!([])),
        tool_choice: given("tool_choice")
            .cloned()
            .unwrap_or_else(|| json!("auto")),
        temperature: o.get("temperature").cloned().unwrap_or(Value::Null),
        top_p: o.get("top_p").cloned().unwrap_or(Value::Null),
        max_output_tokens: o.get("max_output_tokens").cloned().unwrap_or(Value::Null),
        metadata: given("metadata").cloned().unwrap_or_else(|| json!({})),
        text: given("text")
            .cloned()
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
        parallel_tool_calls: given("parallel_tool_calls")
            .cloned()
            .unwrap_or(Value::Bool(true)),
        user: o.get("user").cloned().unwrap_or(Value::Null),
    };
    let settings = fingerprint(&chat_body, &checked);
    Ok(ResponsesRequest {
        chat: checked,
        previous,
        store,
        settings,
        echo,
    })
}

/// 404 for a `previous_response_id` this server does not hold.
pub fn previous_not_found(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("previous_response_id: no response {raw:?} (it was never made here, was made with store: false, was deleted, or belongs to another tenant)"),
    )
    .param("previous_response_id")
    .code("previous_response_not_found")
}

/// What a session must share with a request to be continued in place:
/// route, instructions, tools, tool choice and generation settings.
fn fingerprint(chat_body: &Value, checked: &ChatRequest) -> String {
    let mut h = Sha256::new();
    for key in [
        "model",
        "tools",
        "tool_choice",
        "response_format",
        "max_completion_tokens",
        "temperature",
        "top_p",
    ] {
        h.update(key.as_bytes());
        h.update([0]);
        h.update(
            chat_body
                .get(key)
                .unwrap_or(&Value::Null)
                .to_string()
                .as_bytes(),
        );
        h.update([0]);
    }
    h.update(checked.system_prompt.as_bytes());
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// One input item as chat messages.
fn input_item(
    item: &Value,
    i: usize,
    messages: &mut Vec<Value>,
    origins: &mut Origins,
) -> Result<(), ApiError> {
    let at = format!("input[{i}]");
    let Some(o) = item.as_object() else {
        return Err(ApiError::invalid(at, "an input item must be an object"));
    };
    let kind = match o.get("type") {
        Some(Value::String(t)) => t.as_str(),
        None if o.contains_key("role") => "message",
        _ => return Err(ApiError::invalid(format!("{at}.type"), "is required")),
    };
    match kind {
        "message" => {
            let role = o.get("role").and_then(Value::as_str).unwrap_or("");
            if !matches!(role, "user" | "assistant" | "system" | "developer") {
                return Err(ApiError::invalid(
                    format!("{at}.role"),
                    format!(
                        "role {role:?} is not supported; use user, assistant, system or developer"
                    ),
                ));
            }
            let content = match o.get("content") {
                Some(Value::Array(parts)) => Value::Array(
                    parts
                        .iter()
                        .enumerate()
                        .map(|(j, p)| content_part(p, &format!("{at}.content[{j}]")))
                        .collect::<Result<_, _>>()?,
                ),
                Some(c) => c.clone(),
                None => Value::Null,
            };
            messages.push(json!({"role": role, "content": content}));
            origins.push(at);
        }
        "function_call" => {
            let call = json!({
                "id": o.get("call_id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": o.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": o.get("arguments").cloned().unwrap_or(Value::Null),
                },
            });
            // Calls right after an assistant message (or another call) are
            // that assistant message's.
            let follows_call = messages.last().is_some_and(|m| {
                m["role"] == "assistant"
                    && origins
                        .messages
                        .last()
                        .is_some_and(|o| o.starts_with("input["))
            });
            if follows_call
                && let Some(last) = messages.last_mut()
                && let Some(m) = last.as_object_mut()
            {
                let calls = m.entry("tool_calls").or_insert_with(|| json!([]));
                if let Some(c) = calls.as_array_mut() {
                    c.push(call);
                }
                if let Some(c) = origins.calls.last_mut() {
                    c.push(at);
                }
            } else {
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
                origins.push(at.clone());
                if let Some(c) = origins.calls.last_mut() {
                    c.push(at);
                }
            }
        }
        "function_call_output" => {
            let output = match o.get("output") {
                Some(Value::Array(parts)) => Value::Array(
                    parts
                        .iter()
                        .enumerate()
                        .map(|(j, p)| content_part(p, &format!("{at}.output[{j}]")))
                        .collect::<Result<_, _>>()?,
                ),
                Some(v) => v.clone(),
                None => Value::Null,
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": o.get("call_id").cloned().unwrap_or(Value::Null),
                "content": output,
            }));
            origins.push(at);
        }
        // A reasoning model's reasoning, sent back by clients: not portable
        // across providers, and not needed to continue.
        "reasoning" => {}
        other => {
            return Err(ApiError::invalid(
                format!("{at}.type"),
                format!(
                    "item type {other:?} is not supported; use message, function_call or function_call_output"
                ),
            ));
        }
    }
    Ok(())
}

/// A Responses content part as a chat content part.
fn content_part(part: &Value, at: &str) -> Result<Value, ApiError> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "input_text" | "output_text" | "text" | "refusal" => Ok(json!({
            "type": "text",
            "text": part.get("text").or_else(|| part.get("refusal")).cloned().unwrap_or(Value::Null),
        })),
        "input_image" => match part.get("image_url") {
            Some(url) if !url.is_null() => Ok(json!({
                "type": "image_url",
                "image_url": {"url": url, "detail": part.get("detail").cloned().unwrap_or(Value::Null)},
            })),
            _ => Err(ApiError::invalid(
                format!("{at}.image_url"),
                "is required (images by file_id are not supported)",
            )),
        },
        other => Err(ApiError::invalid(
            format!("{at}.type"),
            format!(
                "content part type {other:?} is not supported; use input_text, output_text or input_image"
            ),
        )),
    }
}

/// Responses function tools as chat tools; other tool types are refused.
fn chat_tools(tools: &Value) -> Result<Value, ApiError> {
    let Some(items) = tools.as_array() else {
        return Err(ApiError::invalid("tools", "must be an array"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
            if kind != "function" {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    format!(
                        "tool type {kind:?} is not supported: only function tools (built-in tools are OpenAI's own, and Baton routes to many providers)"
                    ),
                ));
            }
            let mut f = Map::new();
            for k in ["name", "description", "parameters", "strict"] {
                if let Some(v) = t.get(k) {
                    f.insert(k.into(), v.clone());
                }
            }
            Ok(json!({"type": "function", "function": f}))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// `{"type": "function", "name"}` as chat's `{"type": "function",
/// "function": {"name"}}`; the rest as it is.
fn chat_tool_choice(choice: &Value) -> Value {
    match (
        choice.get("type").and_then(Value::as_str),
        choice.get("name"),
    ) {
        (Some("function"), Some(name)) => json!({"type": "function", "function": {"name": name}}),
        _ => choice.clone(),
    }
}

/// `text.format` as chat's `response_format`.
fn chat_format(format: &Value) -> Value {
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let mut s = Map::new();
            for k in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(k) {
                    s.insert(k.into(), v.clone());
                }
            }
            json!({"type": "json_schema", "json_schema": s})
        }
        _ => format.clone(),
    }
}

/// A chat-shaped error renamed to the Responses field it came from.
fn renamed(mut e: ApiError, origins: &Origins) -> ApiError {
    let Some(param) = e.param.clone() else {
        return e;
    };
    let new = rename_param(&param, origins);
    if new != param {
        if let Some(rest) = e.message.strip_prefix(param.as_str()) {
            e.message = format!("{new}{rest}");
        }
        e.param = Some(new);
    }
    e
}

fn rename_param(param: &str, origins: &Origins) -> String {
    if let Some(rest) = param.strip_prefix("messages[")
        && let Some((k, rest)) = rest.split_once(']')
        && let Ok(k) = k.parse::<usize>()
        && let Some(at) = origins.messages.get(k)
    {
        if let Some(r) = rest.strip_prefix(".tool_calls[")
            && let Some((m, r)) = r.split_once(']')
            && let Some(call) = m
                .parse::<usize>()
                .ok()
                .and_then(|m| origins.calls[k].get(m))
        {
            let r = r.strip_prefix(".function").unwrap_or(r);
            let r = r.replace(".id", ".call_id");
            return format!("{call}{r}");
        }
        if !at.starts_with("input[") {
            // `instructions`, or `input` given as a string.
            return at.clone();
        }
        let rest = rest.replacen(".tool_call_id", ".call_id", 1);
        return format!("{at}{rest}");
    }
    if param == "messages" {
        return "input".into();
    }
    if let Some(rest) = param.strip_prefix("tools[")
        && let Some((i, rest)) = rest.split_once(']')
    {
        let rest = rest.strip_prefix(".function").unwrap_or(rest);
        return format!("tools[{i}]{rest}");
    }
    if let Some(rest) = param.strip_prefix("tool_choice") {
        return format!("tool_choice{}", rest.replace(".function", ""));
    }
    if let Some(rest) = param.strip_prefix("response_format") {
        return format!("text.format{}", rest.replace(".json_schema", ""));
    }
    if param == "max_completion_tokens" {
        return "max_output_tokens".into();
    }
    param.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use baton_types::Role;

    use super::*;

    fn parse(body: Value) -> Result<ResponsesRequest, ApiError> {
        parse_responses(body.to_string().as_bytes(), &HeaderMap::new())
    }

    #[test]
    fn items_become_the_conversation_and_its_last_message() {
        let r = parse(json!({
            "model": "m",
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": "add 2 and 2"},
                {"type": "function_call", "call_id": "c1", "name": "add", "arguments": "{\"a\":2}"},
                {"type": "function_call", "call_id": "c2", "name": "add", "arguments": "{}"},
                {"type": "reasoning", "summary": []},
                {"type": "function_call_output", "call_id": "c1", "output": "4"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "0"}]},
            ],
            "tools": [{"type": "function", "name": "add", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "add"},
            "max_output_tokens": 50,
            "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}},
        }))
        .unwrap();
        let c = &r.chat;
        assert_eq!(c.system_prompt, "be brief");
        assert_eq!(c.history.len(), 3, "{:?}", c.history);
        assert_eq!(
            c.history[1].tool_calls.len(),
            2,
            "consecutive calls, one message"
        );
        assert_eq!(c.history[1].tool_calls[1].id, "c2");
        assert_eq!(c.last.role, Role::Tool);
        assert_eq!(c.last.tool_call_id.as_deref(), Some("c2"));
        assert_eq!(c.last.content, "0");
        assert_eq!(c.tools[0].name, "add");
        assert_eq!(c.generation.max_output_tokens, Some(50));
        assert!(c.generation.json_schema.is_some());
        assert!(r.store && r.previous.is_none());
    }

    #[test]
    fn errors_name_the_responses_field() {
        for (body, param) in [
            (json!({"model": "m"}), "input"),
            (json!({"input": "x"}), "model"),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
                "input[0].content[0].text",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "web_search_call"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
                "input[0].role",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}),
                "input[0].call_id",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "function"}]}),
                "tools[0].name",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}),
                "text.format.type",
            ),
            (json!({"model": "m", "input": "x", "store": "no"}), "store"),
            (
                json!({"model": "m", "input": "x", "conversation": "c"}),
                "conversation",
            ),
            (
                json!({"model": "m", "input": "x", "instructions": 5}),
                "instructions",
            ),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(e.message.starts_with(param), "{body}: {}", e.message);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        }
        let e = parse(json!({"model": "m", "input": "x", "previous_response_id": "resp_nope"}))
            .unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.code.as_deref(), Some("previous_response_not_found"));
    }

    #[test]
    fn response_ids_round_trip_and_settings_tell_requests_apart() {
        let s = SessionId::new();
        assert_eq!(parse_response_id(&response_id(s, 7)), Some((s, 7)));
        assert_eq!(parse_response_id("resp_x_1"), None);
        assert_eq!(parse_response_id("chatcmpl-1"), None);
        let a = parse(json!({"model": "m", "input": "x", "instructions": "a"})).unwrap();
        let b = parse(json!({"model": "m", "input": "other", "instructions": "a"})).unwrap();
        let c = parse(json!({"model": "m", "input": "x", "instructions": "b"})).unwrap();
        let d = parse(json!({"model": "m", "input": "x", "instructions": "a", "temperature": 0.5}))
            .unwrap();
        assert_eq!(a.settings, b.settings, "the input is not a setting");
        assert_ne!(a.settings, c.settings);
        assert_ne!(a.settings, d.settings);
    }
}
