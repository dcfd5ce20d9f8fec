//! Errors of the flows crate.

/// What went wrong in a flows operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A definition that does not check; names where.
    #[error("{}", definition_message(flow, step, field, problem))]
    Definition {
        flow: String,
        step: String,
        field: String,
        problem: String,
    },
    /// A definition file that does not parse.
    #[error("{0}")]
    Parse(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// A trigger's credentials (a webhook signature) do not check.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Not here, or not now (another node holds the flows lease, or owns
    /// the run for a moment): retry.
    #[error("{0}")]
    Unavailable(String),
    /// A limit was reached; try again after the hint.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after_secs: u64,
    },
    #[error("store: {0}")]
    Store(#[from] baton_store::Error),
    #[error("{0}")]
    Runtime(#[from] baton_runtime::Error),
    #[error("{0}")]
    Internal(String),
}

fn definition_message(flow: &str, step: &str, field: &str, problem: &str) -> String {
    let mut s = format!("flow {flow:?}");
    if !step.is_empty() {
        s.push_str(&format!(", step {step:?}"));
    }
    if !field.is_empty() {
        s.push_str(&format!(", field {field:?}"));
    }
    format!("{s}: {problem}")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The kind of error, for the API's status codes.
    pub fn code(&self) -> baton_types::ErrorCode {
        use baton_types::ErrorCode;
        match self {
            Error::Definition { .. } | Error::Parse(_) | Error::InvalidArgument(_) => {
                ErrorCode::InvalidArgument
            }
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::ResourceExhausted { .. } => ErrorCode::ResourceExhausted,
            Error::Store(e) => e.code(),
            Error::Runtime(e) => e.code(),
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Seconds until retrying may succeed, for a limit that frees with time.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::ResourceExhausted {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Error::Runtime(e) => e.retry_after_secs(),
            _ => None,
        }
    }
}
