//! Errors of the registry, the filters, the executor and the built-in tools' config.

/// What can go wrong setting tools up (as opposed to running them, which is
/// [`crate::ToolError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A tool with this name is already registered.
    #[error("tool {0:?} is already registered")]
    DuplicateTool(String),
    /// The tool's `parameters` is not a JSON Schema we can compile.
    #[error("tool {tool:?} has an invalid parameters schema: {reason}")]
    InvalidSchema { tool: String, reason: String },
    /// A tool passed to `replace_prefix` is outside the prefix being replaced.
    #[error("tool {tool:?} does not start with the prefix {prefix:?} being replaced")]
    OutsidePrefix { tool: String, prefix: String },
    /// A tool allow-list pattern is empty or not a valid glob.
    #[error("invalid tool pattern {pattern:?}: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    /// A config field has a bad value; `field` is its dotted path.
    #[error("{field}: {reason}")]
    Config { field: String, reason: String },
    /// The tool executor could not start.
    #[error("tool executor: {0}")]
    Executor(String),
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
