//! `POST /v1/chat/completions`: the response (`chat.completion`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tool::ToolCall;
use super::usage::Usage;

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
