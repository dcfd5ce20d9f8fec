//! Tools and tool calls: those a request offers and replays (lenient, see
//! [`Lenient`]), the choice among them, and those an answer makes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lenient::{JsonKind, JsonShape, Lenient};

/// A tool's or a tool call's `type` in a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolType {
    Function,
    /// `custom`, `web_search`, ...: refused, naming it.
    #[serde(untagged)]
    Other(String),
}

/// A tool the caller offers:
/// `{"type": "function", "function": {"name", "description", "parameters"}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tool {
    /// `function` when absent.
    #[serde(rename = "type", skip_serializing_if = "Lenient::is_absent")]
    pub kind: Lenient<ToolType>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub function: Lenient<FunctionDefinition>,
}

/// A function tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FunctionDefinition {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub name: Lenient<String>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub description: Lenient<String>,
    /// A JSON Schema object; an empty object schema when absent.
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub parameters: Lenient<Map<String, Value>>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub strict: Lenient<bool>,
}

/// A tool call in an `assistant` message of the history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolCallParam {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub id: Lenient<String>,
    /// `function` when absent.
    #[serde(rename = "type", skip_serializing_if = "Lenient::is_absent")]
    pub kind: Lenient<ToolType>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub function: Lenient<FunctionCallParam>,
}

/// The function a tool call of the history named, and its arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FunctionCallParam {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub name: Lenient<String>,
    /// JSON text; empty when absent.
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub arguments: Lenient<String>,
}

/// `tool_choice`: `"auto"`, `"none"`, `"required"`, or one function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoiceOption {
    Mode(ToolChoiceMode),
    Function(NamedToolChoice),
}

/// `tool_choice` as a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoiceMode {
    Auto,
    None,
    Required,
    /// Refused, naming it.
    #[serde(untagged)]
    Other(String),
}

/// `{"type": "function", "function": {"name"}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedToolChoice {
    #[serde(rename = "type", skip_serializing_if = "Lenient::is_absent")]
    pub kind: Lenient<ToolType>,
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub function: Lenient<FunctionName>,
}

/// `{"name"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FunctionName {
    #[serde(skip_serializing_if = "Lenient::is_absent")]
    pub name: Lenient<String>,
}

impl JsonShape for ToolType {
    const KINDS: &'static [JsonKind] = &[JsonKind::String];
}

impl JsonShape for Tool {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl JsonShape for FunctionDefinition {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl JsonShape for ToolCallParam {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl JsonShape for FunctionCallParam {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl JsonShape for ToolChoiceOption {
    const KINDS: &'static [JsonKind] = &[JsonKind::String, JsonKind::Object];
}

impl JsonShape for FunctionName {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tool_choice_in_all_its_forms() {
        let choice = |v: Value| serde_json::from_value::<Lenient<ToolChoiceOption>>(v).unwrap();
        for (v, mode) in [
            (json!("auto"), ToolChoiceMode::Auto),
            (json!("none"), ToolChoiceMode::None),
            (json!("required"), ToolChoiceMode::Required),
            (json!("always"), ToolChoiceMode::Other("always".into())),
        ] {
            assert_eq!(choice(v), Lenient::Valid(ToolChoiceOption::Mode(mode)));
        }
        let named = json!({"type": "function", "function": {"name": "f"}});
        assert_eq!(
            choice(named.clone()),
            Lenient::Valid(ToolChoiceOption::Function(NamedToolChoice {
                kind: Lenient::Valid(ToolType::Function),
                function: Lenient::Valid(FunctionName {
                    name: Lenient::Valid("f".into())
                }),
            }))
        );
        assert_eq!(serde_json::to_value(choice(named.clone())).unwrap(), named);
        assert_eq!(
            serde_json::to_value(choice(json!("none"))).unwrap(),
            json!("none")
        );
        let other = choice(json!({"type": "allowed_tools", "allowed_tools": {}}));
        let Lenient::Valid(ToolChoiceOption::Function(other)) = other else {
            panic!("{other:?}")
        };
        assert_eq!(
            other.kind,
            Lenient::Valid(ToolType::Other("allowed_tools".into()))
        );
        assert_eq!(choice(json!(5)), Lenient::Invalid(JsonKind::Number));
        assert_eq!(choice(json!(null)), Lenient::Absent);
    }

    #[test]
    fn tools_and_calls_take_what_sdks_send() {
        let tool: Tool = serde_json::from_value(json!({"type": "function", "function": {
            "name": "f", "parameters": {"type": "object"}, "strict": true}}))
        .unwrap();
        assert_eq!(tool.kind, Lenient::Valid(ToolType::Function));
        let Lenient::Valid(function) = &tool.function else {
            panic!("{tool:?}")
        };
        assert_eq!(function.description, Lenient::Absent);
        assert_eq!(function.strict, Lenient::Valid(true));
        let tool: Tool = serde_json::from_value(json!({"type": "web_search"})).unwrap();
        assert_eq!(
            tool.kind,
            Lenient::Valid(ToolType::Other("web_search".into()))
        );
        assert_eq!(tool.function, Lenient::Absent);
        let call: ToolCallParam =
            serde_json::from_value(json!({"id": "c", "function": {"name": "f", "arguments": 1}}))
                .unwrap();
        let Lenient::Valid(function) = &call.function else {
            panic!("{call:?}")
        };
        assert_eq!(function.arguments, Lenient::Invalid(JsonKind::Number));
    }
}
