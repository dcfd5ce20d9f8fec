use std::time::Duration;

use baton_types::ErrorCode;

/// Why one attempt against a provider failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// HTTP 429; `retry_after` is the provider's `Retry-After`, when it sent one.
    RateLimited { retry_after: Option<Duration> },
    /// HTTP 5xx (or an error reported inside an otherwise successful stream).
    Server { status: u16 },
    /// The connection could not be made or broke before the answer was complete.
    Connection,
    /// The attempt took longer than the endpoint's `timeout_ms`.
    Timeout,
    /// HTTP 4xx other than 401, 403 and 429: the request itself was refused.
    Client { status: u16 },
    /// The provider answered with something that is not a valid response.
    Malformed,
    /// HTTP 401 or 403: the api key is missing, wrong or not allowed.
    Auth,
    /// The request cannot be made as it stands, found before anything was
    /// sent: e.g. a tool definition whose parameters are not valid JSON, or a
    /// conversation past the end of a `scripted` endpoint's script.
    InvalidRequest,
    /// The conversation does not fit the model's context window. Not retried
    /// on the same endpoint; a router moves it to a larger-context endpoint.
    ContextLength,
    /// The provider refused the content (a content-policy / safety filter).
    /// Never retried; the provider's reason is propagated.
    ContentPolicy,
    /// No first token arrived within the endpoint's `first_token_timeout_ms`.
    FirstTokenTimeout,
    /// A stream went silent for longer than `idle_timeout_ms` between chunks.
    StreamStalled,
}

/// One failed attempt against a provider. Its message is meant for operators
/// and clients and never contains the api key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub kind: ProviderErrorKind,
    pub message: String,
}

impl ProviderError {
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// True when the same request may succeed if tried again: rate limits,
    /// server errors, broken connections, timeouts of any phase, stalled
    /// streams and malformed responses (a garbled stream is a transport
    /// failure, not an answer).
    pub fn is_transient(&self) -> bool {
        match self.kind {
            ProviderErrorKind::RateLimited { .. }
            | ProviderErrorKind::Connection
            | ProviderErrorKind::Timeout
            | ProviderErrorKind::FirstTokenTimeout
            | ProviderErrorKind::StreamStalled
            | ProviderErrorKind::Malformed => true,
            ProviderErrorKind::Server { status } => status >= 500,
            ProviderErrorKind::Client { .. }
            | ProviderErrorKind::Auth
            | ProviderErrorKind::InvalidRequest
            | ProviderErrorKind::ContextLength
            | ProviderErrorKind::ContentPolicy => false,
        }
    }

    /// A short, stable label of the kind, for metrics and journal records:
    /// `rate_limited`, `server`, `connection`, `timeout`, `first_token_timeout`,
    /// `stream_stalled`, `client`, `malformed`, `auth`, `invalid_request`,
    /// `context_length`, `content_policy`.
    pub fn class(&self) -> &'static str {
        match self.kind {
            ProviderErrorKind::RateLimited { .. } => "rate_limited",
            ProviderErrorKind::Server { .. } => "server",
            ProviderErrorKind::Connection => "connection",
            ProviderErrorKind::Timeout => "timeout",
            ProviderErrorKind::FirstTokenTimeout => "first_token_timeout",
            ProviderErrorKind::StreamStalled => "stream_stalled",
            ProviderErrorKind::Client { .. } => "client",
            ProviderErrorKind::Malformed => "malformed",
            ProviderErrorKind::Auth => "auth",
            ProviderErrorKind::InvalidRequest => "invalid_request",
            ProviderErrorKind::ContextLength => "context_length",
            ProviderErrorKind::ContentPolicy => "content_policy",
        }
    }

    /// The `Retry-After` the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            ProviderErrorKind::RateLimited { retry_after } => retry_after,
            _ => None,
        }
    }
}

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `[[models]]` entry is invalid. `field` is the key inside the entry
    /// (e.g. `base_url`), `endpoint` the entry's name, and `index` its place
    /// in the `[[models]]` array when known: the message then names the key
    /// as in the file, `models[1].base_url: required for provider openai
    /// (endpoint "gpt")`.
    #[error("{}: {reason}{}", config_path(.index, .field), entry_name(.endpoint))]
    Config {
        index: Option<usize>,
        endpoint: String,
        field: String,
        reason: String,
    },
    /// An attempt failed at the provider.
    #[error("endpoint {endpoint}: {source}")]
    Provider {
        endpoint: String,
        #[source]
        source: ProviderError,
    },
    /// The endpoint's queue is full.
    #[error("endpoint {endpoint} is overloaded: too many calls queued")]
    Overloaded { endpoint: String },
    /// The caller cancelled the call.
    #[error("model call cancelled")]
    Cancelled,
    /// The endpoint's executor was stopped before the call finished.
    #[error("endpoint {endpoint} is stopped")]
    Stopped { endpoint: String },
    /// The worker running the call panicked; the pool replaced it.
    #[error("endpoint {endpoint}: model worker failed: {reason}")]
    WorkerFailed { endpoint: String, reason: String },
    /// An executor's actors could not be started.
    #[error("endpoint {endpoint}: cannot start executor: {reason}")]
    Spawn { endpoint: String, reason: String },
}

/// `models[i].field`, or the bare field when the entry's place is unknown.
fn config_path(index: &Option<usize>, field: &str) -> String {
    match index {
        Some(i) => format!("models[{i}].{field}"),
        None => field.to_string(),
    }
}

/// ` (endpoint "name")`, or nothing for an entry without a name.
fn entry_name(endpoint: &str) -> String {
    if endpoint.is_empty() {
        String::new()
    } else {
        format!(" (endpoint {endpoint:?})")
    }
}

impl Error {
    /// A config error on `field` of the endpoint named `endpoint`.
    pub(crate) fn config(
        endpoint: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config {
            index: None,
            endpoint: endpoint.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error, placed at `models[index]` when it is a config error.
    #[must_use]
    pub fn at_index(self, index: usize) -> Self {
        match self {
            Error::Config {
                endpoint,
                field,
                reason,
                ..
            } => Error::Config {
                index: Some(index),
                endpoint,
                field,
                reason,
            },
            other => other,
        }
    }

    /// The client-facing kind of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Config { .. } => ErrorCode::InvalidArgument,
            Error::Provider { source, .. } => match source.kind {
                ProviderErrorKind::Timeout
                | ProviderErrorKind::FirstTokenTimeout
                | ProviderErrorKind::StreamStalled => ErrorCode::DeadlineExceeded,
                ProviderErrorKind::ContextLength => ErrorCode::InvalidArgument,
                ProviderErrorKind::ContentPolicy => ErrorCode::FailedPrecondition,
                ProviderErrorKind::RateLimited { .. } => ErrorCode::ResourceExhausted,
                ProviderErrorKind::Client {
                    status: 400 | 413 | 422,
                }
                | ProviderErrorKind::InvalidRequest => ErrorCode::InvalidArgument,
                ProviderErrorKind::Client { .. } | ProviderErrorKind::Auth => {
                    ErrorCode::FailedPrecondition
                }
                ProviderErrorKind::Server { .. }
                | ProviderErrorKind::Connection
                | ProviderErrorKind::Malformed => ErrorCode::Unavailable,
            },
            Error::Overloaded { .. } => ErrorCode::ResourceExhausted,
            Error::Cancelled => ErrorCode::Cancelled,
            Error::Stopped { .. } => ErrorCode::Unavailable,
            Error::WorkerFailed { .. } | Error::Spawn { .. } => ErrorCode::Internal,
        }
    }

    /// The provider error behind this error, if it is one.
    pub fn provider_error(&self) -> Option<&ProviderError> {
        match self {
            Error::Provider { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn provider(kind: ProviderErrorKind) -> Error {
        Error::Provider {
            endpoint: "e".into(),
            source: ProviderError::new(kind, "boom"),
        }
    }

    #[test]
    fn transient_errors_are_exactly_the_retryable_kinds() {
        let t = |k| ProviderError::new(k, "x").is_transient();
        assert!(t(ProviderErrorKind::RateLimited { retry_after: None }));
        assert!(t(ProviderErrorKind::Server { status: 503 }));
        assert!(t(ProviderErrorKind::Connection));
        assert!(t(ProviderErrorKind::Timeout));
        assert!(!t(ProviderErrorKind::Client { status: 400 }));
        assert!(!t(ProviderErrorKind::Auth));
        assert!(t(ProviderErrorKind::Malformed));
        assert!(t(ProviderErrorKind::FirstTokenTimeout));
        assert!(t(ProviderErrorKind::StreamStalled));
        assert!(!t(ProviderErrorKind::ContextLength));
        assert!(!t(ProviderErrorKind::ContentPolicy));
        assert!(!t(ProviderErrorKind::InvalidRequest));
    }

    #[test]
    fn codes_map_as_clients_expect() {
        assert_eq!(
            provider(ProviderErrorKind::Timeout).code(),
            ErrorCode::DeadlineExceeded
        );
        assert_eq!(
            provider(ProviderErrorKind::Client { status: 400 }).code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            provider(ProviderErrorKind::Client { status: 404 }).code(),
            ErrorCode::FailedPrecondition
        );
        assert_eq!(
            provider(ProviderErrorKind::Server { status: 502 }).code(),
            ErrorCode::Unavailable
        );
        assert_eq!(
            Error::Overloaded {
                endpoint: "e".into()
            }
            .code(),
            ErrorCode::ResourceExhausted
        );
        assert_eq!(
            provider(ProviderErrorKind::InvalidRequest).code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(Error::Cancelled.code(), ErrorCode::Cancelled);
        let msg = provider(ProviderErrorKind::Connection).to_string();
        assert!(msg.contains("boom") && msg.contains("endpoint e"), "{msg}");
    }
}
