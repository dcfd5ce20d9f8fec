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
    /// A server's configuration is invalid: `field` is the offending key
    /// inside its `[[mcp]]` entry, `server` the entry's name and `index` its
    /// place in `[[mcp]]` when known, which the message then names as in the
    /// file: `mcp[0].command: must not be empty (server "notes")`.
    #[error("{}: {reason}{}", config_path(.index, .field), server_name(.server))]
    InvalidConfig {
        index: Option<usize>,
        server: String,
        field: &'static str,
        reason: String,
    },
    /// Two servers share a name, so their tools would share a namespace.
    #[error("mcp[{index}].name: more than one server has this name (server {server:?})")]
    DuplicateServer { index: usize, server: String },
    /// The tool registry refused the server's tools.
    #[error("mcp server {server}: registering tools failed: {reason}")]
    Registry { server: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `mcp[i].field`, or the bare field when the entry's place is unknown.
fn config_path(index: &Option<usize>, field: &str) -> String {
    match index {
        Some(i) => format!("mcp[{i}].{field}"),
        None => field.to_owned(),
    }
}

/// ` (server "name")`, or nothing for a server without a name.
fn server_name(server: &str) -> String {
    if server.is_empty() {
        String::new()
    } else {
        format!(" (server {server:?})")
    }
}

impl Error {
    /// The same error, placed at `mcp[index]` when it is a config error.
    #[must_use]
    pub fn at_index(self, index: usize) -> Self {
        match self {
            Error::InvalidConfig {
                server,
                field,
                reason,
                ..
            } => Error::InvalidConfig {
                index: Some(index),
                server,
                field,
                reason,
            },
            other => other,
        }
    }
}
