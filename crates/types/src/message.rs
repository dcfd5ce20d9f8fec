use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The lowercase wire name (`system`, `user`, `assistant`, `tool`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A tool call requested by a model, in the one shape Baton uses whatever the provider.
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's call id, used to match the result to the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as JSON text, exactly as the model produced them.
    pub arguments: String,
}

/// A normalised chat message.
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    /// Text content; empty when an assistant message carries only tool calls.
    pub content: String,
    /// Tool calls requested by an assistant message.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: the id of the call this message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// Images a user message shows the model (after its text). A call whose
    /// messages carry images needs an endpoint with the `vision` capability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
}

/// An image in a user message: an `https://` (or `http://`) URL the
/// provider fetches, or a `data:image/...;base64,` URL carrying the bytes.
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub url: String,
    /// OpenAI's `detail` (`low`, `high`, `auto`); `None` for the provider's
    /// default. Providers without it ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Media types an image may have (what OpenAI and Anthropic both accept).
pub const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

impl Image {
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            detail: None,
        }
    }

    /// For a `data:` URL: its media type and base64 data.
    pub fn data(&self) -> Option<(&str, &str)> {
        let rest = self.url.strip_prefix("data:")?;
        let (media_type, data) = rest.split_once(";base64,")?;
        Some((media_type, data))
    }

    /// Check the URL, naming the problem: `http(s)://` with a host, or a
    /// base64 `data:` URL of a supported media type.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(rest) = self.url.strip_prefix("data:") {
            let Some((media_type, data)) = self.data() else {
                let head: String = rest.chars().take(40).collect();
                return Err(format!(
                    "data URL \"data:{head}…\" is not \"data:<media type>;base64,<data>\""
                ));
            };
            if !IMAGE_MEDIA_TYPES.contains(&media_type) {
                return Err(format!(
                    "media type {media_type:?} is not one of {}",
                    IMAGE_MEDIA_TYPES.join(", ")
                ));
            }
            if data.is_empty()
                || !data
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            {
                return Err("the data URL's data is not base64".into());
            }
        } else {
            let host = self
                .url
                .strip_prefix("https://")
                .or_else(|| self.url.strip_prefix("http://"));
            if !host.is_some_and(|h| !h.is_empty() && !h.starts_with('/')) {
                let head: String = self.url.chars().take(60).collect();
                return Err(format!(
                    "{head:?} is neither an http(s) URL nor a base64 data URL"
                ));
            }
        }
        match self.detail.as_deref() {
            None | Some("low" | "high" | "auto") => Ok(()),
            Some(d) => Err(format!("detail {d:?} is not one of low, high, auto")),
        }
    }
}

impl Message {
    fn text_message(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            images: Vec::new(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::text_message(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::text_message(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::text_message(Role::Assistant, content)
    }

    /// The text content.
    pub fn text(&self) -> &str {
        &self.content
    }
}

/// Token usage of one model call (or a sum of calls).
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Add another usage to this one, saturating.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

/// Why a model stopped producing output, normalised across providers.
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A natural end of the answer.
    Stop,
    /// The output-token limit was reached.
    Length,
    /// The model asked for tool calls.
    ToolCalls,
    /// The provider's content filter stopped the output.
    ContentFilter,
    /// Anything else, with the provider's word for it.
    Other(String),
}

impl FinishReason {
    /// Map a provider's finish-reason string onto the normalised enum.
    pub fn from_provider(s: &str) -> Self {
        match s {
            "stop" | "end_turn" | "stop_sequence" => FinishReason::Stop,
            "length" | "max_tokens" => FinishReason::Length,
            "tool_calls" | "tool_use" | "function_call" => FinishReason::ToolCalls,
            "content_filter" | "refusal" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_urls_are_checked() {
        let ok = [
            "https://example.com/cat.png",
            "http://10.0.0.1:8080/x.jpg",
            "data:image/png;base64,iVBORw0KGgo=",
        ];
        for url in ok {
            assert_eq!(Image::url(url).validate(), Ok(()), "{url}");
        }
        let png = Image::url("data:image/png;base64,iVBORw0KGgo=");
        assert_eq!(png.data(), Some(("image/png", "iVBORw0KGgo=")));
        let bad = [
            ("ftp://example.com/a.png", "neither"),
            ("https://", "neither"),
            ("cat.png", "neither"),
            ("data:image/png,raw", "not \"data:"),
            ("data:image/tiff;base64,AAAA", "image/tiff"),
            ("data:image/png;base64,not base64!", "not base64"),
            ("data:image/png;base64,", "not base64"),
        ];
        for (url, problem) in bad {
            let e = Image::url(url).validate().unwrap_err();
            assert!(e.contains(problem), "{url}: {e}");
        }
        let mut d = Image::url("https://example.com/a.png");
        d.detail = Some("ultra".into());
        assert!(d.validate().unwrap_err().contains("ultra"));
    }

    #[test]
    fn finish_reasons_from_different_providers_normalise() {
        assert_eq!(FinishReason::from_provider("end_turn"), FinishReason::Stop);
        assert_eq!(
            FinishReason::from_provider("tool_use"),
            FinishReason::ToolCalls
        );
        assert_eq!(
            FinishReason::from_provider("max_tokens"),
            FinishReason::Length
        );
        assert_eq!(
            FinishReason::from_provider("weird"),
            FinishReason::Other("weird".into())
        );
    }

    #[test]
    fn usage_adds_and_saturates() {
        let mut u = Usage {
            input_tokens: 3,
            output_tokens: 4,
        };
        u.add(Usage {
            input_tokens: 1,
            output_tokens: u64::MAX,
        });
        assert_eq!(u.input_tokens, 4);
        assert_eq!(u.output_tokens, u64::MAX);
    }
}

/// A tool as offered to a model: name, description and the JSON Schema of
/// its arguments (as JSON text, so this crate needs no JSON library).
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object, as JSON text.
    pub parameters: String,
}
