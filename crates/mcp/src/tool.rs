//! One MCP tool as a Baton [`Tool`].

use std::{fmt, sync::Arc, time::Duration};

use baton_tools::{Tool, ToolError, ToolSpec};
use rmcp::{
    RoleClient, ServiceError,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
        ResourceContents,
    },
    service::Peer,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::config::McpServerConfig;

/// How long a call that lost its connection waits for the supervisor to say
/// why (for example the child's exit status) before answering anyway.
const LOST_REASON_WAIT: Duration = Duration::from_secs(2);

/// The state of one server's connection, shared by its supervisor and tools.
#[derive(Clone)]
pub(crate) enum Link {
    /// No usable connection; calls fail with this reason.
    Down { reason: String },
    /// Connected; `generation` counts connections so a call can tell whether
    /// the connection it used is the one that went away.
    Up {
        peer: Peer<RoleClient>,
        generation: u64,
    },
}

/// What a server's tools share with its supervisor.
pub(crate) struct ServerLink {
    pub(crate) name: String,
    pub(crate) link: watch::Sender<Link>,
}

impl fmt::Debug for ServerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connected = matches!(&*self.link.borrow(), Link::Up { .. });
        f.debug_struct("ServerLink")
            .field("name", &self.name)
            .field("connected", &connected)
            .finish()
    }
}

/// A tool of an MCP server, registered as `<server>.<tool>`.
///
/// Calls go to whichever connection the server's supervisor currently holds,
/// so the same `McpTool` works again after the server is restarted.
#[derive(Debug)]
pub struct McpTool {
    spec: ToolSpec,
    remote_name: String,
    server: Arc<ServerLink>,
}

impl McpTool {
    /// Builds the Baton tool for `tool`, or `None` when the server sent a
    /// tool without a name.
    pub(crate) fn new(
        config: &McpServerConfig,
        server: Arc<ServerLink>,
        tool: rmcp::model::Tool,
    ) -> Option<McpTool> {
        let remote_name = tool.name.to_string();
        if remote_name.is_empty() {
            return None;
        }
        let annotations = tool.annotations.as_ref();
        // A read-only tool has no side effects, so running it again is as safe
        // as running an idempotent one.
        let idempotent = annotations
            .is_some_and(|a| a.idempotent_hint == Some(true) || a.read_only_hint == Some(true))
            || config.idempotent_tools.contains(&remote_name);
        let description = tool
            .description
            .as_deref()
            .map(str::to_owned)
            .or(tool.title.clone())
            .unwrap_or_default();
        let spec = ToolSpec {
            name: format!("{}.{}", config.name, remote_name),
            description,
            parameters: Value::Object(tool.input_schema.as_ref().clone()),
            output_schema: tool
                .output_schema
                .as_ref()
                .map(|schema| Value::Object(schema.as_ref().clone())),
            idempotent,
            timeout: config.timeout(),
        };
        Some(McpTool {
            spec,
            remote_name,
            server,
        })
    }

    /// The tool's name on the MCP server (without the namespace).
    pub fn remote_name(&self) -> &str {
        &self.remote_name
    }

    fn unavailable(&self, reason: String) -> ToolError {
        ToolError::Unavailable {
            tool: self.spec.name.clone(),
            reason,
        }
    }

    /// Maps a failed request. A lost connection waits briefly for the
    /// supervisor to record why it was lost, so the caller sees e.g.
    /// "mcp server notes exited with status 1" rather than "transport closed".
    async fn request_failed(&self, error: ServiceError, generation: u64) -> ToolError {
        match error {
            ServiceError::McpError(error) if error.code == ErrorCode::INVALID_PARAMS => {
                ToolError::InvalidArguments {
                    tool: self.spec.name.clone(),
                    reason: error.message.into_owned(),
                }
            }
            ServiceError::McpError(error) => ToolError::Failed(format!(
                "mcp server {} answered with error {}: {}",
                self.server.name, error.code.0, error.message
            )),
            ServiceError::Timeout { timeout } => ToolError::Timeout {
                tool: self.spec.name.clone(),
                after: timeout,
            },
            ServiceError::TransportClosed
            | ServiceError::TransportSend(_)
            | ServiceError::Cancelled { .. } => {
                let fallback = format!(
                    "connection to mcp server {} was lost: {error}",
                    self.server.name
                );
                let mut link = self.server.link.subscribe();
                let changed = tokio::time::timeout(
                    LOST_REASON_WAIT,
                    link.wait_for(
                        |l| !matches!(l, Link::Up { generation: g, .. } if *g == generation),
                    ),
                )
                .await;
                let reason = match changed {
                    Ok(Ok(state)) => match &*state {
                        Link::Down { reason } => reason.clone(),
                        Link::Up { .. } => fallback,
                    },
                    Ok(Err(_)) | Err(_) => fallback,
                };
                self.unavailable(reason)
            }
            other => ToolError::Failed(format!("mcp server {}: {other}", self.server.name)),
        }
    }
}

#[async_trait::async_trait]
impl Tool for McpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value) -> Result<String, ToolError> {
        let arguments = match arguments {
            Value::Object(map) => Some(map),
            Value::Null => None,
            other => {
                return Err(ToolError::InvalidArguments {
                    tool: self.spec.name.clone(),
                    reason: format!("arguments must be a json object, not {}", kind(&other)),
                });
            }
        };
        let (peer, generation) = match &*self.server.link.borrow() {
            Link::Up { peer, generation } => (peer.clone(), *generation),
            Link::Down { reason } => return Err(self.unavailable(reason.clone())),
        };
        let mut params = CallToolRequestParams::new(self.remote_name.clone());
        if let Some(arguments) = arguments {
            params = params.with_arguments(arguments);
        }
        // Dropping the request on timeout sends notifications/cancelled.
        match tokio::time::timeout(self.spec.timeout, peer.call_tool_once(params)).await {
            Err(_elapsed) => Err(ToolError::Timeout {
                tool: self.spec.name.clone(),
                after: self.spec.timeout,
            }),
            Ok(Ok(CallToolResponse::Complete(result))) => result_text(result),
            Ok(Ok(_)) => Err(ToolError::Failed(format!(
                "mcp server {} asked for client input or started a task, which baton does not support",
                self.server.name
            ))),
            Ok(Err(error)) => Err(self.request_failed(error, generation).await),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The text the model sees for a tool result. Structured content (which the
/// tool's output schema describes) wins over the content blocks; `isError`
/// results become [`ToolError::Failed`] with the content text.
pub(crate) fn result_text(result: CallToolResult) -> Result<String, ToolError> {
    let text = content_text(&result.content);
    if result.is_error == Some(true) {
        let message = match (text.is_empty(), result.structured_content) {
            (false, _) => text,
            (true, Some(structured)) => structured.to_string(),
            (true, None) => "the tool reported an error without details".to_owned(),
        };
        return Err(ToolError::Failed(message));
    }
    match result.structured_content {
        Some(structured) => Ok(structured.to_string()),
        None => Ok(text),
    }
}

/// Text parts verbatim; every other part as a one-line JSON description.
pub(crate) fn content_text(content: &[ContentBlock]) -> String {
    let parts: Vec<String> = content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(text) => text.text.clone(),
            ContentBlock::Image(image) => json!({
                "type": "image",
                "mimeType": image.mime_type,
                "bytes": base64_len(&image.data),
            })
            .to_string(),
            ContentBlock::Audio(audio) => json!({
                "type": "audio",
                "mimeType": audio.mime_type,
                "bytes": base64_len(&audio.data),
            })
            .to_string(),
            ContentBlock::Resource(embedded) => match &embedded.resource {
                ResourceContents::TextResourceContents {
                    uri,
                    mime_type,
                    text,
                    ..
                } => json!({"type": "resource", "uri": uri, "mimeType": mime_type, "text": text})
                    .to_string(),
                ResourceContents::BlobResourceContents {
                    uri,
                    mime_type,
                    blob,
                    ..
                } => json!({
                    "type": "resource",
                    "uri": uri,
                    "mimeType": mime_type,
                    "bytes": base64_len(blob),
                })
                .to_string(),
                _ => json!({"type": "resource"}).to_string(),
            },
            ContentBlock::ResourceLink(link) => json!({
                "type": "resource_link",
                "uri": link.uri,
                "name": link.name,
                "mimeType": link.mime_type,
            })
            .to_string(),
            _ => json!({"type": "unknown"}).to_string(),
        })
        .collect();
    parts.join("\n")
}

/// Decoded size of base64 `data`, without decoding it.
fn base64_len(data: &str) -> usize {
    let trimmed = data.trim_end_matches('=');
    trimmed.len() * 3 / 4
}

#[cfg(test)]
mod tests {
    use rmcp::model::{ContentBlock, Resource};

    use super::*;

    #[test]
    fn text_parts_are_joined() {
        let result =
            CallToolResult::success(vec![ContentBlock::text("a"), ContentBlock::text("b")]);
        assert_eq!(result_text(result).unwrap(), "a\nb");
    }

    #[test]
    fn non_text_parts_are_described() {
        let content = vec![
            ContentBlock::text("see:"),
            ContentBlock::image("aGVsbG8=", "image/png"),
            ContentBlock::embedded_text("file:///n.txt", "note"),
        ];
        let text = content_text(&content);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "see:");
        let image: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(
            image,
            json!({"type": "image", "mimeType": "image/png", "bytes": 5})
        );
        let resource: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(resource["uri"], "file:///n.txt");
        assert_eq!(resource["text"], "note");
    }

    #[test]
    fn structured_content_wins() {
        let mut result = CallToolResult::success(vec![ContentBlock::text("{\"sum\":3}")]);
        result.structured_content = Some(json!({"sum": 3}));
        assert_eq!(result_text(result).unwrap(), "{\"sum\":3}");
    }

    #[test]
    fn is_error_becomes_failed() {
        let result = CallToolResult::error(vec![ContentBlock::text("disk full")]);
        assert_eq!(
            result_text(result).unwrap_err(),
            ToolError::Failed("disk full".into())
        );
        let result = CallToolResult::error(vec![]);
        assert!(matches!(result_text(result), Err(ToolError::Failed(m)) if !m.is_empty()));
    }

    #[test]
    fn server_results_never_panic() {
        // Odd but well-formed results decode and convert without panicking.
        for raw in [
            json!({"content": []}),
            json!({"content": [{"type": "text", "text": ""}], "isError": false}),
            json!({"structuredContent": null}),
            json!({"content": [{"type": "image", "data": "", "mimeType": ""}], "isError": true}),
        ] {
            let result: CallToolResult = serde_json::from_value(raw.clone()).unwrap();
            let _ = result_text(result);
        }
        let link = ContentBlock::resource_link(Resource::new("file:///x", "x"));
        assert!(content_text(&[link]).contains("resource_link"));
    }
}
