//! Errors in OpenAI's shape, with their HTTP status, and the one place a
//! failed turn's code becomes a status and an OpenAI error type
//! ([`turn_failed_error`]).

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use baton_types::{EventKind, SessionId, TurnFailureCode};

use super::headers::SESSION_HEADER;
use super::types::{ErrorBody, ErrorObject};

/// The message of the error event that ends a stream whose output was retracted.
pub const RETRACTED_MESSAGE: &str = "the upstream stream failed after output was sent, and the answer that replaced it does not continue the text sent — re-issue the request";

/// An error in OpenAI's shape, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, ...
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    /// The session the call created, when it got that far.
    pub session: Option<SessionId>,
    /// Seconds to wait before retrying (sent as `Retry-After`); a
    /// `NonZeroU32` keeps the error small (clippy's `result_large_err`).
    pub retry_after_secs: Option<std::num::NonZeroU32>,
    /// The HTTP address of the node owning the session the call is for,
    /// where nodes own sessions one by one: the request is forwarded there
    /// ([`crate::owner::forward_http`]). Boxed: the error stays small
    /// (clippy's `result_large_err`).
    pub owner_http: Option<Box<String>>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            session: None,
            retry_after_secs: None,
            owner_http: None,
        }
    }

    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let message = message.into();
        Self {
            param: Some(param.clone()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("{param}: {message}"),
            )
        }
    }

    /// Retry after `secs` seconds (at least 1, at most `u32::MAX`).
    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        let secs = u32::try_from(secs).unwrap_or(u32::MAX);
        self.retry_after_secs = std::num::NonZeroU32::new(secs.max(1));
        self
    }

    pub(crate) fn code(mut self, code: &str) -> Self {
        self.code = Some(code.into());
        self
    }

    pub(super) fn param(mut self, param: &str) -> Self {
        self.param = Some(param.into());
        self
    }

    pub(super) fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub(super) fn in_session(mut self, id: SessionId) -> Self {
        self.session = Some(id);
        self
    }

    /// A 404 for a `model` that is no Baton route.
    /// A request body as a JSON object, or the error saying what it is not.
    pub fn json_object(
        body: &[u8],
    ) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("the request body is not valid JSON: {e}"),
            )
            .code("invalid_json")
        })?;
        match v {
            serde_json::Value::Object(o) => Ok(o),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the request body must be a JSON object",
            )),
        }
    }

    pub fn model_not_found(model: &str, routes: &[String]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model {model:?} does not exist: it is not a Baton route (have: {})",
                routes.join(", ")
            ),
        )
        .param("model")
        .code("model_not_found")
    }

    /// `{"error": {...}}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                message: self.message.clone(),
                kind: self.kind.into(),
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(id) = self.session
            && let Ok(v) = HeaderValue::from_str(&id.to_string())
        {
            resp.headers_mut().insert(SESSION_HEADER, v);
        }
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(secs.get()),
            );
        }
        if let Some(addr) = self.owner_http {
            resp.extensions_mut().insert(crate::owner::ForwardTo(*addr));
        }
        resp
    }
}

/// A runtime error as an OpenAI-style error (status from [`crate::status::http_status`]).
pub fn runtime_error(err: &baton_runtime::Error) -> ApiError {
    let code = err.code();
    let status = crate::status::http_status(code);
    let kind = match status.as_u16() {
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let mut e = ApiError::new(status, kind, err.to_string()).code(code.as_str());
    e.owner_http = crate::owner::http_owner(err).map(|f| Box::new(f.0));
    match err.retry_after_secs() {
        Some(secs) => e.retry_after(secs),
        None => e,
    }
}

/// A failed turn (`TurnFailed { code, reason }`) as an OpenAI-style error:
/// the one mapping of turn failure codes to HTTP statuses and error types.
pub fn turn_failed_error(code: TurnFailureCode, reason: &str) -> ApiError {
    use TurnFailureCode as C;
    let e = |status, kind| ApiError::new(status, kind, reason).code(code.as_str());
    match code {
        C::UnknownRoute => e(StatusCode::NOT_FOUND, "invalid_request_error")
            .param("model")
            .code("model_not_found"),
        C::BudgetExhausted => {
            e(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota").code("insufficient_quota")
        }
        C::ContentPolicy => {
            e(StatusCode::BAD_REQUEST, "invalid_request_error").code("content_policy_violation")
        }
        // The reason names the policy, the rule and what matched where.
        C::PolicyBlocked => e(StatusCode::BAD_REQUEST, "invalid_request_error").param("messages"),
        C::ContextLength => e(StatusCode::BAD_REQUEST, "invalid_request_error")
            .param("messages")
            .code("context_length_exceeded"),
        C::InvalidRequest => e(StatusCode::BAD_REQUEST, "invalid_request_error"),
        C::DeadlineExceeded => e(StatusCode::GATEWAY_TIMEOUT, "server_error"),
        C::NoEligibleEndpoint => e(StatusCode::SERVICE_UNAVAILABLE, "server_error"),
        C::ModelError | C::SchemaViolation => e(StatusCode::BAD_GATEWAY, "server_error"),
        C::Unspecified => e(StatusCode::INTERNAL_SERVER_ERROR, "server_error").code("turn_failed"),
        C::MaxStepsExceeded | C::GateRejected | C::Cancelled => {
            e(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
        }
    }
}

/// The error for an event that ends a turn without an answer
/// (`TurnFailed`, `TurnCancelled`); `None` for any other event.
pub(super) fn turn_ended_error(kind: &EventKind) -> Option<ApiError> {
    match kind {
        EventKind::TurnFailed { code, reason, .. } => Some(turn_failed_error(*code, reason)),
        EventKind::TurnCancelled { .. } => Some(cancelled_error()),
        _ => None,
    }
}

/// A body axum could not read: 413 `request_too_large` past
/// `http.max_request_bytes`.
pub(super) fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    let e = ApiError::new(status, "invalid_request_error", rejection.body_text());
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        e.code("request_too_large")
    } else {
        e
    }
}

fn cancelled_error() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the turn was cancelled",
    )
    .code("cancelled")
}

pub(super) fn ended_early_error(id: SessionId) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        format!("the event stream of session {id} ended before its turn did"),
    )
    .code("unavailable")
}

pub(super) fn retracted_error() -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "server_error", RETRACTED_MESSAGE)
        .code("stream_retracted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_failures_map_to_openai_statuses() {
        let e = turn_failed_error(
            TurnFailureCode::BudgetExhausted,
            "budget of session x exhausted",
        );
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.kind, "insufficient_quota");
        let e = turn_failed_error(TurnFailureCode::ContentPolicy, "flagged: violence");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code.as_deref(), Some("content_policy_violation"));
        assert_eq!(e.message, "flagged: violence");
        let e = turn_failed_error(TurnFailureCode::ContextLength, "too long");
        assert_eq!(e.code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(
            turn_failed_error(TurnFailureCode::DeadlineExceeded, "").status,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            turn_failed_error(TurnFailureCode::NoEligibleEndpoint, "").status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            turn_failed_error(TurnFailureCode::ModelError, "").status,
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            turn_failed_error(TurnFailureCode::MaxStepsExceeded, "").status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn the_body_has_openai_s_shape_with_null_for_unknowns() {
        let v = serde_json::to_value(ApiError::invalid("n", "only 1").body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "n: only 1", "type": "invalid_request_error",
                                         "param": "n", "code": null}})
        );
        let v = serde_json::to_value(retracted_error().body()).unwrap();
        assert_eq!(v["error"]["param"], serde_json::Value::Null);
        assert_eq!(v["error"]["code"], "stream_retracted");
    }

    #[test]
    fn only_turn_ending_events_are_errors() {
        let failed = EventKind::TurnFailed {
            turn: 1,
            reason: "no route".into(),
            code: TurnFailureCode::UnknownRoute,
        };
        let e = turn_ended_error(&failed).unwrap();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = turn_ended_error(&EventKind::TurnCancelled {
            by: String::new(),
            turn: 1,
        })
        .unwrap();
        assert_eq!(e.code.as_deref(), Some("cancelled"));
        let completed = EventKind::TurnCompleted {
            turn: 1,
            usage: Default::default(),
        };
        assert_eq!(turn_ended_error(&completed), None);
    }
}
