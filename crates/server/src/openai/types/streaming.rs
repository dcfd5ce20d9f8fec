//! `POST /v1/chat/completions` with `"stream": true`: the chunks
//! (`chat.completion.chunk`), each sent as one server-sent event.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat_completions::{AssistantRole, FinishReason};
use super::tool::ToolCallDelta;
use super::usage::Usage;

/// One chunk of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// The same in every chunk of a stream: `chatcmpl-<session id>`.
    pub id: String,
    pub object: ChunkObject,
    pub created: u64,
    /// The requested route until the answer names the model that gave it.
    pub model: String,
    /// Always `null`.
    pub system_fingerprint: Option<String>,
    /// One choice; none in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only in the usage chunk, the last before `[DONE]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `"chat.completion.chunk"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkObject {
    #[default]
    #[serde(rename = "chat.completion.chunk")]
    ChatCompletionChunk,
}

/// What a chunk adds to the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    /// Always `null`.
    pub logprobs: Option<Value>,
    /// Set in the one chunk that ends the answer.
    pub finish_reason: Option<FinishReason>,
}

/// A piece of the assistant's message. Baton sends four kinds: the role
/// first ([`Delta::role`]), then text ([`Delta::content`]), tool calls
/// ([`Delta::tool_calls`]), and an empty one beside the finish reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<AssistantRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `Some(None)` sends `"refusal": null`, as OpenAI's first chunk does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

impl Delta {
    /// The first delta: `{"role": "assistant", "content": "", "refusal": null}`.
    pub fn role() -> Self {
        Self {
            role: Some(AssistantRole::Assistant),
            content: Some(String::new()),
            refusal: Some(None),
            tool_calls: Vec::new(),
        }
    }

    /// More text: `{"content": text}`.
    pub fn content(text: impl Into<String>) -> Self {
        Self {
            content: Some(text.into()),
            ..Self::default()
        }
    }

    /// The answer's tool calls, all in one delta.
    pub fn tool_calls(calls: &[baton_types::ToolCall]) -> Self {
        Self {
            tool_calls: ToolCallDelta::all(calls),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn baton_s_four_deltas() {
        let v = |d: &Delta| serde_json::to_value(d).unwrap();
        assert_eq!(
            v(&Delta::role()),
            json!({"role": "assistant", "content": "", "refusal": null})
        );
        assert_eq!(v(&Delta::content("hel")), json!({"content": "hel"}));
        assert_eq!(v(&Delta::default()), json!({}));
        let calls = [
            baton_types::ToolCall {
                id: "a".into(),
                name: "f".into(),
                arguments: "{}".into(),
            },
            baton_types::ToolCall {
                id: "b".into(),
                name: "g".into(),
                arguments: "{\"x\":1}".into(),
            },
        ];
        assert_eq!(
            v(&Delta::tool_calls(&calls)),
            json!({"tool_calls": [
                {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": "{\"x\":1}"}},
            ]})
        );
    }

    #[test]
    fn the_usage_chunk_has_no_choices() {
        let chunk = ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: ChunkObject::ChatCompletionChunk,
            created: 7,
            model: "m".into(),
            system_fingerprint: None,
            choices: Vec::new(),
            usage: Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
            }),
        };
        let v = serde_json::to_value(&chunk).unwrap();
        assert_eq!(
            v,
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
                   "model": "m", "system_fingerprint": null, "choices": [],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
        );
        assert_eq!(
            serde_json::from_value::<ChatCompletionChunk>(v).unwrap(),
            chunk
        );
        let text = ChatCompletionChunk {
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta::content("x"),
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
            ..chunk
        };
        let v = serde_json::to_value(&text).unwrap();
        assert!(v.get("usage").is_none(), "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], Value::Null);
    }
}
