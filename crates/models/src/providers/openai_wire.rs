//! The Chat Completions request body as sent: the conversation serialised
//! from its messages as they are (no tree of `serde_json` values built and
//! copied for each message of a long history), the few optional
//! parameters as values.

use baton_types::Message;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

#[derive(Serialize)]
pub(crate) struct SentBody<'a> {
    pub model: &'a str,
    pub messages: Vec<SentMessage<'a>>,
    pub stream: bool,
    /// `max_tokens`, `tools`, `response_format`, …: only those given.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One message in the Chat Completions shape.
#[derive(Serialize)]
pub(crate) struct SentMessage<'a> {
    role: &'a str,
    content: Content<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Call<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    /// The partial answer to continue (`continuation = "prefix"`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    prefix: bool,
}

enum Content<'a> {
    Text(&'a str),
    /// An assistant message that only calls tools.
    Null,
    /// The text (when any), then each image.
    Parts(Vec<Part<'a>>),
}

impl Serialize for Content<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Text(t) => s.serialize_str(t),
            Content::Null => s.serialize_none(),
            Content::Parts(parts) => parts.serialize(s),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: ImageUrl<'a> },
}

#[derive(Serialize)]
struct ImageUrl<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

#[derive(Serialize)]
struct Call<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    name: &'a str,
    arguments: &'a str,
}

impl<'a> SentMessage<'a> {
    /// `m` as OpenAI-compatible servers read it.
    pub(crate) fn of(m: &'a Message) -> Self {
        let content = if !m.images.is_empty() {
            let text = (!m.content.is_empty()).then_some(Part::Text { text: &m.content });
            let images = m.images.iter().map(|image| Part::ImageUrl {
                image_url: ImageUrl {
                    url: &image.url,
                    detail: image.detail.as_deref(),
                },
            });
            Content::Parts(text.into_iter().chain(images).collect())
        } else if !m.tool_calls.is_empty() && m.content.is_empty() {
            Content::Null
        } else {
            Content::Text(&m.content)
        };
        Self {
            role: m.role.as_str(),
            content,
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| Call {
                    id: &c.id,
                    kind: "function",
                    function: Function {
                        name: &c.name,
                        arguments: &c.arguments,
                    },
                })
                .collect(),
            tool_call_id: m.tool_call_id.as_deref(),
            prefix: false,
        }
    }

    /// The answer so far, as the final assistant message for the server
    /// to continue; `prefix` marks it so (`continuation = "prefix"`).
    pub(crate) fn partial_answer(text: &'a str, prefix: bool) -> Self {
        Self {
            role: "assistant",
            content: Content::Text(text),
            tool_calls: Vec::new(),
            tool_call_id: None,
            prefix,
        }
    }
}
