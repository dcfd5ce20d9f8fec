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
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
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
            Error::ResourceExhausted(_) => ErrorCode::ResourceExhausted,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            Error::Config(_) => ErrorCode::InvalidArgument,
            Error::Store(e) => e.code(),
            Error::Internal(_) => ErrorCode::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
