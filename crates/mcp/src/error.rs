//! The crate's error type.

/// Errors from configuring or starting MCP servers.
///
/// Failures of a running server (it exits, its connection drops, it sends
/// garbage) are not errors of this type: they show in
/// [`McpServerStatus::last_error`](crate::McpServerStatus::last_error) and
/// as [`ToolError::Unavailable`](baton_tools::ToolError::Unavailable) from
/// its tools while the supervisor reconnects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server's configuration is invalid; `field` names the offending key.
    #[error("mcp[{server}].{field}: {reason}")]
    InvalidConfig {
        server: String,
        field: &'static str,
        reason: String,
    },
    /// Two servers share a name, so their tools would share a namespace.
    #[error("mcp[{0}].name: more than one server has this name")]
    DuplicateServer(String),
    /// The tool registry refused the server's tools.
    #[error("mcp server {server}: registering tools failed: {reason}")]
    Registry { server: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
