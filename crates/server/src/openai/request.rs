//! The request: the body of `POST /v1/chat/completions` (a
//! [`ChatCompletionRequest`]) and Baton's headers, checked into a
//! [`ChatRequest`]. Each check names the parameter at fault as OpenAI
//! does (`messages[2].content[0].image_url.url`), and the problem.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use baton_runtime::SessionsConfig;
use baton_types::{Generation, Image, Message, Role, ToolCall, ToolChoice, ToolDefinition};
use serde_json::Value;

use super::error::ApiError;
use super::headers::{BUDGET_HEADER, DATA_CLASSES_HEADER};
use super::types::{
    ChatCompletionRequest, ChatMessage, ContentPart, ImageUrl, JsonKind, Lenient, MessageContent,
    ResponseFormat, Stop, Tool, ToolCallParam, ToolChoiceMode, ToolChoiceOption, ToolType,
};

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

/// Parse and check a request body and its Baton headers.
pub fn parse_request(body: &[u8], headers: &HeaderMap) -> Result<ChatRequest, ApiError> {
    let req: Lenient<ChatCompletionRequest> = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the request body is not valid JSON: {e}"),
        )
        .code("invalid_json")
    })?;
    let req = match req {
        Lenient::Valid(req) => req,
        not_an_object => {
            let kind = not_an_object.kind().unwrap_or(JsonKind::Null);
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("the request body must be a JSON object, not {kind}"),
            ));
        }
    };
    check(&req, headers)
}

/// The checks, in the order they report: model, messages (in order), stream
/// options, `n`, tools, generation parameters, user and metadata, headers.
fn check(req: &ChatCompletionRequest, headers: &HeaderMap) -> Result<ChatRequest, ApiError> {
    let model = match &req.model {
        Lenient::Valid(s) if !s.is_empty() => s.clone(),
        Lenient::Absent => return Err(ApiError::invalid("model", "is required")),
        _ => return Err(ApiError::invalid("model", "must be a non-empty string")),
    };
    let messages = match &req.messages {
        Lenient::Valid(m) if !m.is_empty() => m,
        Lenient::Valid(_) => {
            return Err(ApiError::invalid(
                "messages",
                "must hold at least one message",
            ));
        }
        Lenient::Absent => return Err(ApiError::invalid("messages", "is required")),
        Lenient::Invalid(kind) => {
            return Err(ApiError::invalid(
                "messages",
                format!("must be an array, not {kind}"),
            ));
        }
    };
    let (system, mut conversation) = conversation(messages)?;
    let Some(last) = conversation.pop() else {
        return Err(ApiError::invalid("messages", "must hold a user message"));
    };
    let stream = optional(&req.stream, "stream", "a boolean")?
        .copied()
        .unwrap_or(false);
    let include_usage = match optional(&req.stream_options, "stream_options", "an object")? {
        Some(o) => optional(
            &o.include_usage,
            "stream_options.include_usage",
            "a boolean",
        )?
        .copied()
        .unwrap_or(false),
        None => false,
    };
    if let Some(&n) = optional(&req.n, "n", "an integer")?
        && n != 1
    {
        return Err(ApiError::invalid(
            "n",
            "only 1 choice per request is supported",
        ));
    }
    let tools = tools(&req.tools)?;
    let generation = generation(req, &tools)?;
    let mut metadata = BTreeMap::new();
    if let Some(user) = optional(&req.user, "user", "a string")?
        && !user.is_empty()
    {
        metadata.insert("user".to_string(), user.clone());
    }
    if let Some(m) = optional(&req.metadata, "metadata", "an object")? {
        for (k, v) in m {
            let Lenient::Valid(v) = v else {
                let kind = v.kind().unwrap_or(JsonKind::Null);
                return Err(ApiError::invalid(
                    format!("metadata.{k}"),
                    format!("values must be strings, not {kind}"),
                ));
            };
            metadata.insert(k.clone(), v.clone());
        }
    }
    let (budget_usd, data_classes) = baton_headers(headers)?;
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

/// The system and developer messages' texts, and the conversation (every
/// other message, in order, ending with a user or tool message).
fn conversation(
    messages: &[Lenient<ChatMessage>],
) -> Result<(Vec<String>, Vec<Message>), ApiError> {
    let mut system = Vec::new();
    let mut conversation = Vec::with_capacity(messages.len());
    let last_index = messages.len().saturating_sub(1);
    for (i, m) in messages.iter().enumerate() {
        let p = format!("messages[{i}]");
        let Lenient::Valid(m) = m else {
            return Err(ApiError::invalid(p, "must be an object"));
        };
        let Some(role) = m.role() else {
            return Err(ApiError::invalid(format!("{p}.role"), "must be a string"));
        };
        if i == last_index && !matches!(role, "user" | "tool") {
            return Err(ApiError::invalid(
                format!("{p}.role"),
                format!("the last message must be a user or tool message, not {role:?}"),
            ));
        }
        let content_param = format!("{p}.content");
        match m {
            ChatMessage::System(m) | ChatMessage::Developer(m) => {
                system.push(content_text(&m.content, &content_param, true)?);
            }
            ChatMessage::User(m) => {
                let (text, images) = content_parts(&m.content, &content_param, true, true)?;
                if i == last_index && text.trim().is_empty() && images.is_empty() {
                    return Err(ApiError::invalid(content_param, "must not be empty"));
                }
                conversation.push(Message {
                    images,
                    ..Message::user(text)
                });
            }
            ChatMessage::Assistant(m) => {
                let calls = tool_calls(&m.tool_calls, &format!("{p}.tool_calls"))?;
                let text = content_text(&m.content, &content_param, false)?;
                conversation.push(Message {
                    tool_calls: calls,
                    ..Message::assistant(text)
                });
            }
            ChatMessage::Tool(m) => {
                let call_id = non_empty(&m.tool_call_id, &format!("{p}.tool_call_id"))?;
                conversation.push(Message {
                    role: Role::Tool,
                    content: content_text(&m.content, &content_param, true)?,
                    tool_calls: Vec::new(),
                    tool_call_id: Some(call_id),
                    images: Vec::new(),
                });
            }
            ChatMessage::Unsupported(_) => {
                return Err(ApiError::invalid(
                    format!("{p}.role"),
                    format!(
                        "role {role:?} is not supported; use system, developer, user, assistant or tool"
                    ),
                ));
            }
        }
    }
    Ok((system, conversation))
}

/// A field's value, `None` when absent (missing or `null`); a value of
/// another kind is an error naming `param`: "must be EXPECTED, not A KIND".
fn optional<'a, T>(
    field: &'a Lenient<T>,
    param: &str,
    expected: &str,
) -> Result<Option<&'a T>, ApiError> {
    field
        .get()
        .map_err(|kind| ApiError::invalid(param, format!("must be {expected}, not {kind}")))
}

/// A field that must be a non-empty string.
fn non_empty(field: &Lenient<String>, param: &str) -> Result<String, ApiError> {
    match field {
        Lenient::Valid(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::invalid(param, "must be a non-empty string")),
    }
}

/// A field that must be an object.
fn object<'a, T>(field: &'a Lenient<T>, param: &str) -> Result<&'a T, ApiError> {
    match field {
        Lenient::Valid(v) => Ok(v),
        _ => Err(ApiError::invalid(param, "must be an object")),
    }
}

/// A message's text: a string, or an array of `{"type": "text", "text"}` parts.
fn content_text(
    content: &Lenient<MessageContent>,
    param: &str,
    required: bool,
) -> Result<String, ApiError> {
    content_parts(content, param, required, false).map(|(text, _)| text)
}

/// A message's text and images: a string, or an array of parts — `text`
/// parts (joined by newlines) and, when `images` allows them, `image_url`
/// parts (`{"url", "detail"}`: an http(s) or base64 data URL).
fn content_parts(
    content: &Lenient<MessageContent>,
    param: &str,
    required: bool,
    images: bool,
) -> Result<(String, Vec<Image>), ApiError> {
    let parts = match content {
        Lenient::Absent if !required => return Ok((String::new(), Vec::new())),
        Lenient::Absent => return Err(ApiError::invalid(param, "is required")),
        Lenient::Valid(MessageContent::Text(s)) => return Ok((s.clone(), Vec::new())),
        Lenient::Valid(MessageContent::Parts(parts)) => parts,
        Lenient::Invalid(kind) => {
            return Err(ApiError::invalid(
                param,
                format!("must be a string or an array of content parts, not {kind}"),
            ));
        }
    };
    let mut texts = Vec::with_capacity(parts.len());
    let mut found = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let p = format!("{param}[{j}]");
        let Lenient::Valid(part) = part else {
            return Err(ApiError::invalid(p, "a content part must be an object"));
        };
        match part {
            ContentPart::Text(t) => match &t.text {
                Lenient::Valid(text) => texts.push(text.as_str()),
                _ => return Err(ApiError::invalid(format!("{p}.text"), "must be a string")),
            },
            ContentPart::ImageUrl(part) if images => {
                let url_param = format!("{p}.image_url.url");
                let image = match &part.image_url {
                    Lenient::Valid(ImageUrl::Url(url)) => Image::url(url.clone()),
                    Lenient::Valid(ImageUrl::Object(o)) => Image {
                        url: non_empty(&o.url, &url_param)?,
                        detail: optional(&o.detail, &format!("{p}.image_url.detail"), "a string")?
                            .cloned(),
                    },
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{p}.image_url"),
                            "must be an object with a url",
                        ));
                    }
                };
                image
                    .validate()
                    .map_err(|e| ApiError::invalid(url_param, e))?;
                found.push(image);
            }
            ContentPart::ImageUrl(_) => return Err(unsupported_part(&p, "image_url", images)),
            ContentPart::Unsupported(part) => match &part.kind {
                Lenient::Valid(kind) => return Err(unsupported_part(&p, kind, images)),
                _ => return Err(ApiError::invalid(format!("{p}.type"), "is required")),
            },
        }
    }
    Ok((texts.join("\n"), found))
}

fn unsupported_part(p: &str, kind: &str, images: bool) -> ApiError {
    let supported = if images {
        "only \"text\" and \"image_url\" parts are"
    } else {
        "only \"text\" parts are, here"
    };
    ApiError::invalid(
        format!("{p}.type"),
        format!("content part type {kind:?} is not supported; {supported}"),
    )
}

/// Whether a tool's or tool call's `type` is `function`; absent counts as
/// `function`, and so (as before this was typed) does a type that is not a
/// string.
fn is_function(kind: &Lenient<ToolType>) -> Result<(), &str> {
    match kind {
        Lenient::Valid(ToolType::Other(other)) => Err(other),
        _ => Ok(()),
    }
}

fn tool_calls(
    calls: &Lenient<Vec<Lenient<ToolCallParam>>>,
    param: &str,
) -> Result<Vec<ToolCall>, ApiError> {
    let Some(calls) = optional(calls, param, "an array")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(calls.len());
    for (k, call) in calls.iter().enumerate() {
        let p = format!("{param}[{k}]");
        let call = object(call, &p)?;
        is_function(&call.kind).map_err(|other| {
            ApiError::invalid(
                format!("{p}.type"),
                format!("tool call type {other:?} is not supported; only \"function\" is"),
            )
        })?;
        let id = non_empty(&call.id, &format!("{p}.id"))?;
        let function = object(&call.function, &format!("{p}.function"))?;
        let name = non_empty(&function.name, &format!("{p}.function.name"))?;
        let arguments = optional(
            &function.arguments,
            &format!("{p}.function.arguments"),
            "a string",
        )?
        .cloned()
        .unwrap_or_default();
        out.push(ToolCall {
            id,
            name,
            arguments,
        });
    }
    Ok(out)
}

fn tools(list: &Lenient<Vec<Lenient<Tool>>>) -> Result<Vec<ToolDefinition>, ApiError> {
    let Some(list) = optional(list, "tools", "an array")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let p = format!("tools[{i}]");
        let tool = object(tool, &p)?;
        is_function(&tool.kind).map_err(|other| {
            ApiError::invalid(
                format!("{p}.type"),
                format!("tool type {other:?} is not supported; only \"function\" tools are"),
            )
        })?;
        let function = object(&tool.function, &format!("{p}.function"))?;
        let name = non_empty(&function.name, &format!("{p}.function.name"))?;
        let description = optional(
            &function.description,
            &format!("{p}.function.description"),
            "a string",
        )?
        .cloned()
        .unwrap_or_default();
        let parameters = optional(
            &function.parameters,
            &format!("{p}.function.parameters"),
            "a JSON Schema object",
        )?
        .map(|schema| Value::Object(schema.clone()).to_string())
        .unwrap_or_else(|| r#"{"type":"object","properties":{}}"#.into());
        out.push(ToolDefinition {
            name,
            description,
            parameters,
        });
    }
    Ok(out)
}

/// The sampling, limit, tool-choice and output-format parameters, checked
/// and named as OpenAI names them.
fn generation(
    req: &ChatCompletionRequest,
    tools: &[ToolDefinition],
) -> Result<Generation, ApiError> {
    let number = |field: &Lenient<f64>, name: &str, max: f64| -> Result<Option<f32>, ApiError> {
        match optional(field, name, "a number")? {
            Some(&x) if !(0.0..=max).contains(&x) => Err(ApiError::invalid(
                name,
                format!("{x} is not between 0 and {max}"),
            )),
            x => Ok(x.map(|&x| x as f32)),
        }
    };
    let temperature = number(&req.temperature, "temperature", 2.0)?;
    let top_p = number(&req.top_p, "top_p", 1.0)?;
    let mut max_output_tokens = None;
    // The newer name wins when both are given.
    for (field, name) in [
        (&req.max_tokens, "max_tokens"),
        (&req.max_completion_tokens, "max_completion_tokens"),
    ] {
        if let Some(&n) = optional(field, name, "a positive integer")? {
            if n == 0 {
                return Err(ApiError::invalid(name, "must be at least 1"));
            }
            max_output_tokens = Some(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }
    let stop = match optional(&req.stop, "stop", "a string or an array of strings")? {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(list)) => list
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Lenient::Valid(s) => Ok(s.clone()),
                not_a_string => Err(ApiError::invalid(
                    format!("stop[{i}]"),
                    format!(
                        "must be a string, not {}",
                        not_a_string.kind().unwrap_or(JsonKind::Null)
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    let tool_choice = match optional(&req.tool_choice, "tool_choice", "a string or an object")? {
        None | Some(ToolChoiceOption::Mode(ToolChoiceMode::Auto)) => ToolChoice::Auto,
        Some(ToolChoiceOption::Mode(ToolChoiceMode::None)) => ToolChoice::None,
        Some(ToolChoiceOption::Mode(ToolChoiceMode::Required)) => ToolChoice::Required,
        Some(ToolChoiceOption::Mode(ToolChoiceMode::Other(other))) => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("{other:?} is not one of \"auto\", \"none\", \"required\" or a function"),
            ));
        }
        Some(ToolChoiceOption::Function(named)) => {
            if !matches!(named.kind, Lenient::Valid(ToolType::Function)) {
                return Err(ApiError::invalid(
                    "tool_choice.type",
                    "must be \"function\"",
                ));
            }
            let function = object(&named.function, "tool_choice.function")?;
            ToolChoice::Tool(non_empty(&function.name, "tool_choice.function.name")?)
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
    let json_schema = match optional(&req.response_format, "response_format", "an object")? {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonSchema(format)) => {
            let js = object(&format.json_schema, "response_format.json_schema")?;
            let schema = object(&js.schema, "response_format.json_schema.schema")?;
            Some(Value::Object(schema.clone()).to_string())
        }
        Some(ResponseFormat::JsonObject) => {
            return Err(ApiError::invalid(
                "response_format.type",
                "\"json_object\" is not supported; give a schema with \"json_schema\" (every endpoint then constrains its answer to it)",
            ));
        }
        Some(ResponseFormat::Unsupported(_)) => {
            return Err(ApiError::invalid(
                "response_format.type",
                "must be \"text\" or \"json_schema\"",
            ));
        }
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

/// Baton's request headers: the budget in USD and the data classes the
/// content carries.
pub(super) fn baton_headers(headers: &HeaderMap) -> Result<(Option<f64>, Vec<String>), ApiError> {
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
    Ok((budget_usd, data_classes))
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

    /// Where serde's own message would be vague (or, inside tagged enums,
    /// placeless), the exact message names the parameter and the problem.
    #[test]
    fn fields_of_the_wrong_kind_are_named_precisely() {
        let user = |content: Value| json!({"model": "m", "messages": [{"role": "user", "content": content}]});
        let with = |field: &str, v: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            body[field] = v;
            body
        };
        let cases = [
            (
                json!({"model": 5, "messages": []}),
                "model: must be a non-empty string",
            ),
            (
                json!({"model": "m", "messages": {}}),
                "messages: must be an array, not an object",
            ),
            (
                json!({"model": "m", "messages": [["user", "hi"]]}),
                "messages[0]: must be an object",
            ),
            (
                json!({"model": "m", "messages": [null]}),
                "messages[0]: must be an object",
            ),
            (
                json!({"model": "m", "messages": [{"role": 0, "content": "hi"}]}),
                "messages[0].role: must be a string",
            ),
            (
                json!({"model": "m", "messages": [{"content": "hi"}]}),
                "messages[0].role: must be a string",
            ),
            (
                user(json!(5)),
                "messages[0].content: must be a string or an array of content parts, not a number",
            ),
            (
                user(json!([1])),
                "messages[0].content[0]: a content part must be an object",
            ),
            (
                user(json!([{"type": 0, "text": "x"}])),
                "messages[0].content[0].type: is required",
            ),
            (
                user(json!([{"type": "text", "text": 1}])),
                "messages[0].content[0].text: must be a string",
            ),
            (
                user(json!([{"type": "image_url", "image_url": ["https://a.b/c.png"]}])),
                "messages[0].content[0].image_url: must be an object with a url",
            ),
            (
                user(json!([{"type": "image_url", "image_url": {"url": 5}}])),
                "messages[0].content[0].image_url.url: must be a non-empty string",
            ),
            (
                user(
                    json!([{"type": "image_url", "image_url": {"url": "https://a.b/c.png", "detail": 3}}]),
                ),
                "messages[0].content[0].image_url.detail: must be a string, not a number",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "", "function": {"name": "f"}}]}, {"role": "user", "content": "x"}]}),
                "messages[0].tool_calls[0].id: must be a non-empty string",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}, {"role": "user", "content": "x"}]}),
                "messages[0].tool_calls[0].function.arguments: must be a string, not an object",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": {}}, {"role": "user", "content": "x"}]}),
                "messages[0].tool_calls: must be an array, not an object",
            ),
            (
                with("stream_options", json!({"include_usage": "yes"})),
                "stream_options.include_usage: must be a boolean, not a string",
            ),
            (
                with("stream_options", json!([])),
                "stream_options: must be an object, not an array",
            ),
            (with("n", json!("1")), "n: must be an integer, not a string"),
            (
                with("max_tokens", json!(-5)),
                "max_tokens: must be a positive integer, not a number",
            ),
            (
                with("stop", json!([null])),
                "stop[0]: must be a string, not null",
            ),
            (
                with("stop", json!({})),
                "stop: must be a string or an array of strings, not an object",
            ),
            (
                with("tools", json!({})),
                "tools: must be an array, not an object",
            ),
            (
                with(
                    "tools",
                    json!([{"function": {"name": "f", "parameters": "x"}}]),
                ),
                "tools[0].function.parameters: must be a JSON Schema object, not a string",
            ),
            (
                with("tools", json!([{"type": "function"}])),
                "tools[0].function: must be an object",
            ),
            (
                with("tool_choice", json!(5)),
                "tool_choice: must be a string or an object, not a number",
            ),
            (
                with("tool_choice", json!({"type": "function", "function": "f"})),
                "tool_choice.function: must be an object",
            ),
            (
                with("response_format", json!({"type": 0})),
                "response_format.type: must be \"text\" or \"json_schema\"",
            ),
            (
                with("response_format", json!("json_object")),
                "response_format: must be an object, not a string",
            ),
            (
                with("user", json!(7)),
                "user: must be a string, not a number",
            ),
            (
                with("metadata", json!({"k": null})),
                "metadata.k: values must be strings, not null",
            ),
        ];
        for (body, message) in cases {
            let e = err(body.clone());
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.message, message, "{body}");
            let param = message.split(": ").next().unwrap();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        for (body, message) in [
            (
                &b"null"[..],
                "the request body must be a JSON object, not null",
            ),
            (
                b"[1]",
                "the request body must be a JSON object, not an array",
            ),
            (
                b"\"hi\"",
                "the request body must be a JSON object, not a string",
            ),
        ] {
            let e = parse_request(body, &HeaderMap::new()).unwrap_err();
            assert_eq!(
                (e.status, e.message.as_str()),
                (StatusCode::BAD_REQUEST, message)
            );
        }
    }

    /// Every value of an SDK-shaped request, replaced by values of every
    /// kind (or removed): the request parses, or is refused with a 400
    /// naming a parameter. Nothing panics.
    #[test]
    fn any_change_to_a_request_is_parsed_or_refused_naming_a_parameter() {
        let base = json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is"},
                {"type": "image_url", "image_url": {"url": "https://a.b/c.png", "detail": "low"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
            {"role": "user", "content": "so?", "name": "ann"},
        ],
        "stream": true, "stream_options": {"include_usage": true}, "n": 1,
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "temperature": 0.2, "top_p": 0.5, "max_tokens": 10, "stop": ["a", "b"],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "user": "u", "metadata": {"team": "s"}, "seed": 1});
        let replacements = [
            Value::Null,
            json!(true),
            json!(0),
            json!(-1),
            json!(2.5),
            json!(""),
            json!("x"),
            json!("function"),
            json!("user"),
            json!("image_url"),
            json!("json_object"),
            json!([]),
            json!([null]),
            json!(["a"]),
            json!([{}]),
            json!({}),
            json!({"type": 0}),
            json!({"role": 0}),
            json!({"url": "https://a.b/c.png"}),
        ];
        fn paths(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
            out.push(at.clone());
            let children: Vec<(Value, &Value)> = match v {
                Value::Array(a) => a.iter().enumerate().map(|(i, x)| (json!(i), x)).collect(),
                Value::Object(o) => o.iter().map(|(k, x)| (json!(k), x)).collect(),
                _ => Vec::new(),
            };
            for (key, child) in children {
                at.push(key);
                paths(child, at, out);
                at.pop();
            }
        }
        fn at<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
            path.iter().fold(v, |v, key| match key {
                Value::String(k) => &mut v[k.as_str()],
                i => &mut v[i.as_u64().unwrap() as usize],
            })
        }
        let mut all = Vec::new();
        paths(&base, &mut Vec::new(), &mut all);
        let (mut parsed, mut refused) = (0, 0);
        for path in all.iter().filter(|p| !p.is_empty()) {
            let mut bodies: Vec<Value> = replacements
                .iter()
                .map(|r| {
                    let mut body = base.clone();
                    *at(&mut body, path) = r.clone();
                    body
                })
                .collect();
            if let Some((Value::String(key), parent)) = path.split_last() {
                let mut body = base.clone();
                at(&mut body, parent).as_object_mut().unwrap().remove(key);
                bodies.push(body);
            }
            for body in bodies {
                match parse(body.clone()) {
                    Ok(_) => parsed += 1,
                    Err(e) => {
                        refused += 1;
                        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
                        assert_eq!(e.kind, "invalid_request_error", "{body}");
                        let param = e.param.unwrap_or_else(|| panic!("no param: {body}"));
                        assert!(e.message.starts_with(&format!("{param}: ")), "{body}");
                    }
                }
            }
        }
        assert!(
            parsed > 100 && refused > 500,
            "{parsed} parsed, {refused} refused"
        );
    }

    /// Any JSON value, a few levels deep.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "\\PC{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("user"),
                Just("assistant"),
                Just("system"),
                Just("tool"),
                Just("developer"),
                Just("function"),
                Just("text"),
                Just("image_url"),
                Just("json_schema"),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("role".to_owned()),
                        Just("content".to_owned()),
                        Just("type".to_owned()),
                        Just("text".to_owned()),
                        Just("tool_calls".to_owned()),
                        Just("function".to_owned()),
                        Just("name".to_owned()),
                        Just("arguments".to_owned()),
                        Just("url".to_owned()),
                        Just("schema".to_owned()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..4,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any body: parsed, or a 400 naming the parameter; never a panic.
        #[test]
        fn arbitrary_bodies_are_parsed_or_refused_by_name(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            if let Err(e) = parse_request(&bytes, &HeaderMap::new()) {
                proptest::prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
            }
        }

        /// Requests of the right outline with anything in their fields.
        #[test]
        fn generated_requests_are_parsed_or_refused_by_name(
            messages in proptest::collection::vec(any_json(), 0..4),
            tools in any_json(),
            response_format in any_json(),
            tool_choice in any_json(),
            extra in any_json(),
        ) {
            let body = json!({
                "model": "fast",
                "messages": messages,
                "tools": tools,
                "response_format": response_format,
                "tool_choice": tool_choice,
                "temperature": extra,
            });
            if let Err(e) = parse(body.clone()) {
                proptest::prop_assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", body);
                proptest::prop_assert_eq!(e.kind, "invalid_request_error");
            }
        }
    }
}
