//! Tools and tool calls.

use serde::{Deserialize, Serialize};

/// `"function"`: the only tool type Baton speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionType {
    #[default]
    Function,
}

/// A tool call the model asked for, in a `chat.completion`:
/// `{"id", "type": "function", "function": {"name", "arguments"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: FunctionType,
    pub function: FunctionCall,
}

/// The function a tool call names, and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// A tool call in a `chat.completion.chunk`: a [`ToolCall`] with its
/// position among the answer's calls. Baton sends each call whole, in one
/// chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: usize,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: FunctionType,
    pub function: FunctionCall,
}

impl From<&baton_types::ToolCall> for ToolCall {
    fn from(call: &baton_types::ToolCall) -> Self {
        Self {
            id: call.id.clone(),
            kind: FunctionType::Function,
            function: FunctionCall {
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            },
        }
    }
}

impl ToolCallDelta {
    /// The calls of an answer, indexed in order.
    pub fn all(calls: &[baton_types::ToolCall]) -> Vec<Self> {
        calls
            .iter()
            .enumerate()
            .map(|(index, call)| {
                let ToolCall { id, kind, function } = call.into();
                Self {
                    index,
                    id,
                    kind,
                    function,
                }
            })
            .collect()
    }
}
