//! How a session's model calls generate: sampling, limits, tool choice and
//! structured output. Set when a session starts (the OpenAI-compatible front
//! door maps a request's `temperature`, `max_tokens`, `tool_choice`,
//! `response_format` … onto it), journaled with `SessionStarted`, and
//! applied to every model call of the session, on whichever endpoint the
//! router picks.

use serde::{Deserialize, Serialize};

/// Generation settings of a session. The default leaves everything to the
/// endpoint and the provider.
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// Sampling temperature, 0–2.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling, 0–1.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Output-token limit per model call; the endpoint's `max_output_tokens`
    /// when `None`.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Stop sequences (at most 4).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Whether and which tool the model must call.
    #[serde(default)]
    pub tool_choice: ToolChoice,
    /// Constrain every answer to this JSON Schema (JSON text): structured
    /// output. Routing then needs the `json_schema` capability.
    #[serde(default)]
    pub json_schema: Option<String>,
}

/// Whether and which tool the model must call.
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// No tool calls: the model answers in text.
    None,
    /// The model must call at least one tool.
    Required,
    /// The model must call this tool.
    Tool(String),
}

impl ToolChoice {
    /// The stored and API form: (`""`/`"none"`/`"required"`/`"tool"`, the
    /// tool's name or `""`).
    pub fn to_wire(&self) -> (&'static str, &str) {
        match self {
            ToolChoice::Auto => ("", ""),
            ToolChoice::None => ("none", ""),
            ToolChoice::Required => ("required", ""),
            ToolChoice::Tool(name) => ("tool", name.as_str()),
        }
    }

    /// From the stored and API form; `Err((field, problem))` names
    /// `tool_choice` or `tool_name`.
    pub fn from_wire(choice: &str, name: String) -> Result<ToolChoice, (&'static str, String)> {
        match choice {
            "" | "auto" | "none" | "required" if !name.is_empty() => Err((
                "tool_name",
                format!("is only allowed with tool_choice \"tool\", not {choice:?}"),
            )),
            "" | "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            "tool" if name.is_empty() => Err((
                "tool_name",
                "must name the tool tool_choice \"tool\" requires".into(),
            )),
            "tool" => Ok(ToolChoice::Tool(name)),
            other => Err((
                "tool_choice",
                format!("{other:?} is not one of \"auto\", \"none\", \"required\", \"tool\""),
            )),
        }
    }
}

/// Most stop sequences a session may set (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;

impl Generation {
    /// True when nothing is set.
    pub fn is_default(&self) -> bool {
        *self == Generation::default()
    }

    /// Check the ranges and shapes, naming the field at fault (as
    /// `generation.FIELD`): `Err((field, problem))`. The runtime also checks
    /// that the schema is a JSON object and that a [`ToolChoice::Tool`]
    /// names one of the session's tools (this crate parses no JSON).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(t) = self.temperature
            && !(t.is_finite() && (0.0..=2.0).contains(&t))
        {
            return Err(("temperature", format!("{t} is not between 0 and 2")));
        }
        if let Some(p) = self.top_p
            && !(p.is_finite() && (0.0..=1.0).contains(&p))
        {
            return Err(("top_p", format!("{p} is not between 0 and 1")));
        }
        if self.max_output_tokens == Some(0) {
            return Err(("max_output_tokens", "must be at least 1".into()));
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return Err((
                "stop",
                format!(
                    "{} stop sequences given, at most {MAX_STOP_SEQUENCES} are allowed",
                    self.stop.len()
                ),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(("stop", "stop sequences must not be empty".into()));
        }
        if let ToolChoice::Tool(name) = &self.tool_choice
            && name.is_empty()
        {
            return Err(("tool_choice", "names no tool".into()));
        }
        if self
            .json_schema
            .as_ref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(("json_schema", "is empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_settings_are_named() {
        let cases = [
            (
                Generation {
                    temperature: Some(2.5),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                Generation {
                    temperature: Some(f32::NAN),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                Generation {
                    top_p: Some(-0.1),
                    ..Default::default()
                },
                "top_p",
            ),
            (
                Generation {
                    max_output_tokens: Some(0),
                    ..Default::default()
                },
                "max_output_tokens",
            ),
            (
                Generation {
                    stop: vec!["a".into(); 5],
                    ..Default::default()
                },
                "stop",
            ),
            (
                Generation {
                    stop: vec![String::new()],
                    ..Default::default()
                },
                "stop",
            ),
            (
                Generation {
                    tool_choice: ToolChoice::Tool(String::new()),
                    ..Default::default()
                },
                "tool_choice",
            ),
            (
                Generation {
                    json_schema: Some(" ".into()),
                    ..Default::default()
                },
                "json_schema",
            ),
        ];
        for (g, field) in cases {
            assert_eq!(g.validate().map_err(|e| e.0), Err(field), "{g:?}");
        }
        let ok = Generation {
            temperature: Some(0.0),
            top_p: Some(1.0),
            max_output_tokens: Some(1),
            stop: vec!["END".into()],
            tool_choice: ToolChoice::Tool("search".into()),
            json_schema: Some(r#"{"type":"object"}"#.into()),
        };
        assert_eq!(ok.validate(), Ok(()));
        for choice in [
            ToolChoice::Auto,
            ToolChoice::None,
            ToolChoice::Required,
            ToolChoice::Tool("t".into()),
        ] {
            let (c, n) = choice.to_wire();
            assert_eq!(ToolChoice::from_wire(c, n.to_string()), Ok(choice.clone()));
        }
        assert_eq!(
            ToolChoice::from_wire("auto", String::new()),
            Ok(ToolChoice::Auto)
        );
        assert_eq!(
            ToolChoice::from_wire("tool", String::new()).map_err(|e| e.0),
            Err("tool_name")
        );
        assert_eq!(
            ToolChoice::from_wire("none", "t".into()).map_err(|e| e.0),
            Err("tool_name")
        );
        assert_eq!(
            ToolChoice::from_wire("any", String::new()).map_err(|e| e.0),
            Err("tool_choice")
        );
        assert!(!ok.is_default());
        assert!(Generation::default().is_default());
    }
}
