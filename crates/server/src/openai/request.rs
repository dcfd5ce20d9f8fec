//! The request: the body of `POST /v1/chat/completions` and Baton's headers,
//! parsed and checked into a [`ChatRequest`].

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use baton_runtime::SessionsConfig;
use baton_types::{Generation, Image, Message, Role, ToolCall, ToolChoice, ToolDefinition};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::headers::{BUDGET_HEADER, DATA_CLASSES_HEADER};

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

impl ChatRequest {
    /// 413 `request_too_large` when the last message or the system prompt
    /// exceeds the session limits.
    pub fn check_limits(&self, limits: &SessionsConfig) -> Result<(), ApiError> {
        let too_large = |message: String| {
            ApiError::invalid("messages", message)
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .code("request_too_large")
        };
        if self.last.content.len() > limits.max_message_bytes {
            return Err(too_large(format!(
                "the last message is {} bytes; the limit is {} (sessions.max_message_bytes)",
                self.last.content.len(),
                limits.max_message_bytes
            )));
        }
        if self.system_prompt.len() > limits.max_system_prompt_bytes {
            return Err(too_large(format!(
                "the system and developer messages are {} bytes; the limit is {} (sessions.max_system_prompt_bytes)",
                self.system_prompt.len(),
                limits.max_system_prompt_bytes
            )));
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

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
}
