use baton_types::{ErrorCode, SessionId};

/// Errors of the runtime, each with the [`ErrorCode`] a client sees.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("session {0} not found")]
    SessionNotFound(SessionId),
    /// Something other than the session is missing (e.g. a tool call id).
    #[error("{0}")]
    NotFoundDetail(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// Over a limit that frees with time (tokens per minute, a daily or
    /// monthly budget): RESOURCE_EXHAUSTED with the seconds to wait, which
    /// the servers send as `retry-after`.
    #[error("{message}; retry after {retry_after_secs} s")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    /// The session (or run) is owned by another live node of the cluster
    /// (`[cluster] ownership = "sessions"`): the servers forward the call
    /// there; an embedding caller may retry on that node.
    #[error("session {session} is owned by node {} ({}); call it there", owner.node_id, if owner.grpc_addr.is_empty() { "no advertised address" } else { owner.grpc_addr.as_str() })]
    OwnedElsewhere {
        session: SessionId,
        owner: baton_store::owners::Owner,
    },
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] baton_store::Error),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::SessionNotFound(_) | Error::NotFoundDetail(_) => ErrorCode::NotFound,
            Error::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::ResourceExhausted(_) | Error::RateLimited { .. } => ErrorCode::ResourceExhausted,
            Error::Unavailable(_) | Error::OwnedElsewhere { .. } => ErrorCode::Unavailable,
            Error::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            Error::Config(_) => ErrorCode::InvalidArgument,
            Error::Store(e) => e.code(),
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Seconds until retrying may succeed, for a limit that frees with time.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An invalid configuration value, found before anything starts: `field`
/// names the key as in the file, arrays by index (`models[1].base_url`,
/// `gates.policies[0].reviewers`, `sessions.max_steps`), and `problem` says
/// what is wrong, naming the entry where it helps (`required for provider
/// openai (endpoint "gpt")`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
    /// When `field` itself is not set, the key whose value made it invalid
    /// (e.g. `models` for an unset `sessions.default_route` with several
    /// endpoints to choose from), so that a loader can say where that came from.
    pub related: Option<String>,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
            related: None,
        }
    }

    /// An error of another crate whose message reads `field: problem`.
    pub(crate) fn from_message(field: String, err: impl std::fmt::Display) -> Self {
        let text = err.to_string();
        let problem = match text.strip_prefix(&format!("{field}: ")) {
            Some(problem) => problem.to_owned(),
            None => text,
        };
        Self::new(field, problem)
    }

    /// The same error, caused by the value of `key`.
    #[must_use]
    pub(crate) fn related(mut self, key: impl Into<String>) -> Self {
        self.related = Some(key.into());
        self
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e.to_string())
    }
}
