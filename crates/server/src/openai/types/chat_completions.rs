//! `POST /v1/chat/completions`: the request, with its messages and
//! content parts, and the non-streamed response (`chat.completion`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lenient::{JsonKind, JsonShape, Lenient};
use super::tool::{Tool, ToolCall, ToolCallParam, ToolChoiceOption};
use super::usage::Usage;

/// The request body. Every field Baton reads is [`Lenient`], checked by the
/// front door, which names the parameter at fault; the fields OpenAI defines
/// that Baton ignores (`frequency_penalty`, `presence_penalty`, `seed`,
/// `logit_bias`, `logprobs`, `parallel_tool_calls`, ...) and any unknown
/// field are accepted and kept in `other`: SDKs send many.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatCompletionRequest {
    /// The Baton route.
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub model: Lenient<String>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub messages: Lenient<Vec<Lenient<ChatMessage>>>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub stream: Lenient<bool>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub stream_options: Lenient<StreamOptions>,
    /// Choices to generate: only 1.
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub n: Lenient<u64>,
    /// 0–2.
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub temperature: Lenient<f64>,
    /// 0–1.
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub top_p: Lenient<f64>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub max_completion_tokens: Lenient<u64>,
    /// The older name of `max_completion_tokens`, which wins when both are
    /// given.
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub max_tokens: Lenient<u64>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub stop: Lenient<Stop>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub tools: Lenient<Vec<Lenient<Tool>>>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub tool_choice: Lenient<ToolChoiceOption>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub response_format: Lenient<ResponseFormat>,
    /// The end user, kept as session metadata.
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub user: Lenient<String>,
    /// String values, kept as session metadata.
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub metadata: Lenient<BTreeMap<String, Lenient<String>>>,
    /// Every other field: accepted, ignored.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    /// Send a usage chunk before `[DONE]`.
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub include_usage: Lenient<bool>,
}

/// A message, tagged by its `role` (only a string: serde's derived tag
/// would also take a variant's index, `"role": 0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "role",
    rename_all = "snake_case",
    try_from = "Map<String, Value>"
)]
pub enum ChatMessage {
    System(InstructionMessage),
    Developer(InstructionMessage),
    User(UserMessage),
    Assistant(AssistantMessage),
    Tool(ToolMessage),
    /// A role Baton does not know, or no role (or not a string): refused,
    /// naming it.
    #[serde(untagged)]
    Unsupported(UnsupportedMessage),
}

/// A `system` or `developer` message: text only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstructionMessage {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub content: Lenient<MessageContent>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub name: Lenient<String>,
}

/// A `user` message: text and images.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserMessage {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub content: Lenient<MessageContent>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub name: Lenient<String>,
}

/// An `assistant` message of the history: text, tool calls or both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssistantMessage {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub content: Lenient<MessageContent>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub tool_calls: Lenient<Vec<Lenient<ToolCallParam>>>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub refusal: Lenient<String>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub name: Lenient<String>,
}

/// A `tool` message: the result of the call `tool_call_id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolMessage {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub content: Lenient<MessageContent>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub tool_call_id: Lenient<String>,
}

/// A message whose role Baton does not take.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnsupportedMessage {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub role: Lenient<String>,
}

impl ChatMessage {
    /// The role as given; `None` when missing or not a string.
    pub fn role(&self) -> Option<&str> {
        match self {
            Self::System(_) => Some("system"),
            Self::Developer(_) => Some("developer"),
            Self::User(_) => Some("user"),
            Self::Assistant(_) => Some("assistant"),
            Self::Tool(_) => Some("tool"),
            Self::Unsupported(m) => match &m.role {
                Lenient::Valid(role) => Some(role),
                _ => None,
            },
        }
    }
}

/// A message's `content`: a string, or an array of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<Lenient<ContentPart>>),
}

/// One part of a message's content, tagged by its `type` (a string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    try_from = "Map<String, Value>"
)]
pub enum ContentPart {
    Text(TextPart),
    /// In `user` messages only.
    ImageUrl(ImageUrlPart),
    /// Another type (`input_audio`, `file`, ...), or none: refused, naming it.
    #[serde(untagged)]
    Unsupported(UnsupportedPart),
}

/// `{"type": "text", "text"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextPart {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub text: Lenient<String>,
}

/// `{"type": "image_url", "image_url": {"url", "detail"}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageUrlPart {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub image_url: Lenient<ImageUrl>,
}

/// An image part's `image_url`: OpenAI's object, or (Baton also takes it)
/// the URL alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageUrl {
    Url(String),
    Object(ImageUrlObject),
}

/// `{"url", "detail"}`: an http(s) or base64 data URL, and `low`, `high`
/// or `auto`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageUrlObject {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub url: Lenient<String>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub detail: Lenient<String>,
}

/// A content part of a type Baton does not take.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnsupportedPart {
    #[serde(rename = "type", skip_serializing_if = "Lenient::is_absent")]
    pub kind: Lenient<String>,
}

/// `stop`: one sequence, or an array of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<Lenient<String>>),
}

/// `response_format`, tagged by its `type` (a string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    try_from = "Map<String, Value>"
)]
pub enum ResponseFormat {
    Text,
    /// JSON without a schema: refused (give a schema).
    JsonObject,
    JsonSchema(JsonSchemaFormat),
    /// Another type, or none.
    #[serde(untagged)]
    Unsupported(Map<String, Value>),
}

/// `{"type": "json_schema", "json_schema": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JsonSchemaFormat {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub json_schema: Lenient<JsonSchema>,
}

/// `{"name", "description", "schema", "strict"}`: Baton reads the schema
/// (and always constrains the answer to it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JsonSchema {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub name: Lenient<String>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub description: Lenient<String>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub schema: Lenient<Map<String, Value>>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub strict: Lenient<bool>,
}

/// The string under `key`, the tag of an object of a tagged enum.
fn tag<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// A variant's fields, from the whole object (the tag is ignored).
fn fields<T: serde::de::DeserializeOwned>(map: Map<String, Value>) -> Result<T, serde_json::Error> {
    serde_json::from_value(Value::Object(map))
}

impl TryFrom<Map<String, Value>> for ChatMessage {
    type Error = serde_json::Error;

    fn try_from(map: Map<String, Value>) -> Result<Self, Self::Error> {
        Ok(match tag(&map, "role") {
            Some("system") => Self::System(fields(map)?),
            Some("developer") => Self::Developer(fields(map)?),
            Some("user") => Self::User(fields(map)?),
            Some("assistant") => Self::Assistant(fields(map)?),
            Some("tool") => Self::Tool(fields(map)?),
            _ => Self::Unsupported(fields(map)?),
        })
    }
}

impl TryFrom<Map<String, Value>> for ContentPart {
    type Error = serde_json::Error;

    fn try_from(map: Map<String, Value>) -> Result<Self, Self::Error> {
        Ok(match tag(&map, "type") {
            Some("text") => Self::Text(fields(map)?),
            Some("image_url") => Self::ImageUrl(fields(map)?),
            _ => Self::Unsupported(fields(map)?),
        })
    }
}

impl TryFrom<Map<String, Value>> for ResponseFormat {
    type Error = serde_json::Error;

    fn try_from(map: Map<String, Value>) -> Result<Self, Self::Error> {
        Ok(match tag(&map, "type") {
            Some("text") => Self::Text,
            Some("json_object") => Self::JsonObject,
            Some("json_schema") => Self::JsonSchema(fields(map)?),
            _ => Self::Unsupported(map),
        })
    }
}

impl JsonShape for ChatCompletionRequest {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl JsonShape for StreamOptions {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl JsonShape for ChatMessage {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl JsonShape for MessageContent {
    const KINDS: &'static [JsonKind] = &[JsonKind::String, JsonKind::Array];
}

impl JsonShape for ContentPart {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl JsonShape for ImageUrl {
    const KINDS: &'static [JsonKind] = &[JsonKind::String, JsonKind::Object];
}

impl JsonShape for Stop {
    const KINDS: &'static [JsonKind] = &[JsonKind::String, JsonKind::Array];
}

impl JsonShape for ResponseFormat {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl JsonShape for JsonSchema {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

/// A non-streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// `chatcmpl-<session id>`.
    pub id: String,
    pub object: ChatCompletionObject,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered, as its provider named it.
    pub model: String,
    /// Always `null`.
    pub system_fingerprint: Option<String>,
    /// Exactly one (`n` is 1).
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

/// `"chat.completion"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatCompletionObject {
    #[default]
    #[serde(rename = "chat.completion")]
    ChatCompletion,
}

/// One answer of a completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub message: ResponseMessage,
    /// Always `null`: Baton returns no log probabilities.
    pub logprobs: Option<Value>,
    pub finish_reason: FinishReason,
}

/// The assistant's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseMessage {
    pub role: AssistantRole,
    /// `null` when the answer is only tool calls.
    pub content: Option<String>,
    /// Always `null`.
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// `"assistant"`: the role of every answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssistantRole {
    #[default]
    Assistant,
}

/// Why the answer ended, as OpenAI names it (SDKs with typed enums reject
/// other names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    #[default]
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    /// A Baton finish reason; an answer with tool calls always ends with
    /// `tool_calls`, and a provider's own reason becomes `stop`.
    pub fn of(reason: &baton_types::FinishReason, has_tool_calls: bool) -> Self {
        use baton_types::FinishReason as Baton;
        if has_tool_calls {
            return Self::ToolCalls;
        }
        match reason {
            Baton::Stop | Baton::Other(_) => Self::Stop,
            Baton::Length => Self::Length,
            Baton::ToolCalls => Self::ToolCalls,
            Baton::ContentFilter => Self::ContentFilter,
        }
    }
}

impl ResponseMessage {
    /// A Baton answer; its content is `null` when it is only tool calls.
    pub fn answer(message: &baton_types::Message) -> Self {
        let only_calls = message.content.is_empty() && !message.tool_calls.is_empty();
        Self {
            role: AssistantRole::Assistant,
            content: (!only_calls).then(|| message.content.clone()),
            refusal: None,
            tool_calls: message.tool_calls.iter().map(ToolCall::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A request as the OpenAI SDKs send it, with fields Baton ignores and
    /// one it does not know.
    fn sdk_request() -> Value {
        json!({
            "model": "fast",
            "messages": [
                {"role": "developer", "content": "be brief", "name": "ops"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://a.b/c.png", "detail": "low"}},
                ], "name": "ann"},
                {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "a cat"}]},
                {"role": "user", "content": "so?"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "n": 1,
            "temperature": 0.5,
            "top_p": 1.0,
            "max_completion_tokens": 100,
            "stop": ["END"],
            "tools": [{"type": "function", "function": {
                "name": "lookup", "description": "look up", "strict": true,
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            }}],
            "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "answer", "strict": true, "schema": {"type": "object"},
            }},
            "user": "u-1",
            "metadata": {"team": "support"},
            "frequency_penalty": 0,
            "presence_penalty": 0,
            "seed": 42,
            "logit_bias": {"50256": -100},
            "logprobs": false,
            "parallel_tool_calls": true,
            "service_tier": "auto",
            "some_future_field": {"x": [1, 2]},
        })
    }

    /// `v` without its `null` fields: to Baton, `null` is absent.
    fn without_nulls(v: Value) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, without_nulls(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
            v => v,
        }
    }

    #[test]
    fn sdk_requests_round_trip_with_the_fields_baton_ignores() {
        let v = sdk_request();
        let req: ChatCompletionRequest = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&req).unwrap(), without_nulls(v));
        assert_eq!(req.model, Lenient::Valid("fast".into()));
        let Lenient::Valid(messages) = &req.messages else {
            panic!("{:?}", req.messages)
        };
        let roles: Vec<_> = messages
            .iter()
            .map(|m| match m {
                Lenient::Valid(m) => m.role(),
                _ => None,
            })
            .collect();
        assert_eq!(
            roles,
            [
                Some("developer"),
                Some("user"),
                Some("assistant"),
                Some("tool"),
                Some("user")
            ]
        );
        let Lenient::Valid(ChatMessage::User(user)) = &messages[1] else {
            panic!("{:?}", messages[1])
        };
        let Lenient::Valid(MessageContent::Parts(parts)) = &user.content else {
            panic!("{:?}", user.content)
        };
        assert!(matches!(
            &parts[1],
            Lenient::Valid(ContentPart::ImageUrl(_))
        ));
        assert!(matches!(
            req.response_format,
            Lenient::Valid(ResponseFormat::JsonSchema(_))
        ));
        for ignored in [
            "frequency_penalty",
            "seed",
            "logit_bias",
            "some_future_field",
        ] {
            assert!(req.other.contains_key(ignored), "{ignored}");
        }
        assert!(
            !req.other.contains_key("model"),
            "read fields are not in other"
        );
    }

    #[test]
    fn tags_are_strings_and_unknown_ones_are_kept_for_the_error() {
        let message = |v: Value| serde_json::from_value::<Lenient<ChatMessage>>(v).unwrap();
        // serde's derived tag would take a variant index: 0 is not "system".
        assert_eq!(
            message(json!({"role": 0, "content": "x"})),
            Lenient::Valid(ChatMessage::Unsupported(UnsupportedMessage {
                role: Lenient::Invalid(JsonKind::Number)
            }))
        );
        assert_eq!(
            message(json!({"role": "wizard"}))
                .get()
                .unwrap()
                .unwrap()
                .role(),
            Some("wizard")
        );
        // Nor a struct from an array, by position.
        assert_eq!(
            message(json!(["user", "hi"])),
            Lenient::Invalid(JsonKind::Array)
        );
        let part = |v: Value| serde_json::from_value::<ContentPart>(v).unwrap();
        assert_eq!(
            part(json!({"type": 1, "text": "x"})),
            ContentPart::Unsupported(UnsupportedPart {
                kind: Lenient::Invalid(JsonKind::Number)
            })
        );
        assert_eq!(
            part(json!({"type": "input_audio", "input_audio": {}})),
            ContentPart::Unsupported(UnsupportedPart {
                kind: Lenient::Valid("input_audio".into())
            })
        );
        let format = |v: Value| serde_json::from_value::<ResponseFormat>(v).unwrap();
        assert_eq!(
            format(json!({"type": "text", "x": 1})),
            ResponseFormat::Text
        );
        assert_eq!(
            format(json!({"type": "json_object"})),
            ResponseFormat::JsonObject
        );
        assert!(matches!(
            format(json!({"type": 2})),
            ResponseFormat::Unsupported(_)
        ));
    }

    fn completion(message: &baton_types::Message, reason: baton_types::FinishReason) -> Value {
        let body = ChatCompletion {
            id: "chatcmpl-1".into(),
            object: ChatCompletionObject::ChatCompletion,
            created: 7,
            model: "m".into(),
            system_fingerprint: None,
            choices: vec![Choice {
                index: 0,
                message: ResponseMessage::answer(message),
                logprobs: None,
                finish_reason: FinishReason::of(&reason, !message.tool_calls.is_empty()),
            }],
            usage: baton_types::Usage {
                input_tokens: 2,
                output_tokens: 3,
            }
            .into(),
        };
        serde_json::to_value(&body).unwrap()
    }

    #[test]
    fn a_completion_has_openai_s_shape() {
        let text = baton_types::Message::assistant("hi");
        assert_eq!(
            completion(&text, baton_types::FinishReason::Length),
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
                "system_fingerprint": null,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi", "refusal": null},
                    "logprobs": null,
                    "finish_reason": "length",
                }],
                "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
            })
        );
        let calls = baton_types::Message {
            tool_calls: vec![baton_types::ToolCall {
                id: "c".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
            ..baton_types::Message::assistant("")
        };
        let v = completion(&calls, baton_types::FinishReason::Stop);
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ]})
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let back: ChatCompletion = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(back).unwrap(), v);
    }

    #[test]
    fn finish_reasons_are_openai_s() {
        use baton_types::FinishReason as B;
        for (reason, want) in [
            (B::Stop, "stop"),
            (B::Other("end_turn".into()), "stop"),
            (B::Length, "length"),
            (B::ToolCalls, "tool_calls"),
            (B::ContentFilter, "content_filter"),
        ] {
            assert_eq!(json!(FinishReason::of(&reason, false)), want);
        }
        assert_eq!(json!(FinishReason::of(&B::Length, true)), "tool_calls");
    }
}
