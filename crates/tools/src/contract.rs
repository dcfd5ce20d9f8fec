//! The tool contract: what every tool — built-in, MCP, or client-side — is.

use std::time::Duration;

use baton_types::ErrorCode;
use serde::{Deserialize, Serialize};

/// A tool's public description, as the model and the registry see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Unique name. MCP tools are namespaced `server.tool`.
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
    /// JSON Schema of the output, when the tool declares one.
    #[serde(default)]
    pub output_schema: Option<serde_json::Value>,
    /// Safe to run again after a crash when a call started but its result was
    /// not recorded. Non-idempotent calls are never re-run automatically.
    pub idempotent: bool,
    /// Longest a call may run before it is abandoned with a timeout error.
    pub timeout: Duration,
}

/// Why a tool call produced no result. Every variant becomes a tool error
/// result the model sees (and can correct); none stops the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// No such tool, or the session is not allowed to use it.
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    /// The arguments are not valid JSON or do not match the tool's schema.
    #[error("invalid arguments for {tool}: {reason}")]
    InvalidArguments { tool: String, reason: String },
    /// The tool ran and reported a failure.
    #[error("{0}")]
    Failed(String),
    /// The call ran past the tool's timeout.
    #[error("tool {tool} timed out after {} ms", .after.as_millis())]
    Timeout { tool: String, after: Duration },
    /// The tool panicked; its actor was replaced.
    #[error("tool {tool} crashed: {reason}")]
    Panicked { tool: String, reason: String },
    /// The tool's backend (e.g. an MCP server) is down.
    #[error("tool {tool} is unavailable: {reason}")]
    Unavailable { tool: String, reason: String },
}

impl ToolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ToolError::UnknownTool(_) => ErrorCode::NotFound,
            ToolError::InvalidArguments { .. } => ErrorCode::InvalidArgument,
            ToolError::Failed(_) | ToolError::Panicked { .. } => ErrorCode::Internal,
            ToolError::Timeout { .. } => ErrorCode::DeadlineExceeded,
            ToolError::Unavailable { .. } => ErrorCode::Unavailable,
        }
    }
}

/// A tool Baton can run on the server side.
#[async_trait::async_trait]
pub trait Tool: Send + Sync + std::fmt::Debug {
    fn spec(&self) -> &ToolSpec;

    /// Run once with arguments that already passed schema validation.
    /// Returns the result text the model will see (JSON text or plain text).
    async fn call(&self, arguments: serde_json::Value) -> Result<String, ToolError>;
}
