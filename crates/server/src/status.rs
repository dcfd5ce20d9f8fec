//! The one place error kinds become gRPC status codes and HTTP statuses.

use baton_types::ErrorCode;

/// The one place error kinds become gRPC status codes.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    match code {
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorCode::Cancelled => tonic::Code::Cancelled,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::Internal => tonic::Code::Internal,
    }
}

/// The one place error kinds become HTTP statuses.
pub fn http_status(code: ErrorCode) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match code {
        ErrorCode::InvalidArgument | ErrorCode::FailedPrecondition => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyExists => StatusCode::CONFLICT,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Cancelled | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A runtime error as a gRPC status, message included.
/// A limit that frees with time carries `retry-after` (seconds) metadata.
pub fn status(err: &baton_runtime::Error) -> tonic::Status {
    let mut s = tonic::Status::new(grpc_code(err.code()), err.to_string());
    if let Some(secs) = err.retry_after_secs()
        && let Ok(v) = secs.to_string().parse()
    {
        s.metadata_mut().insert("retry-after", v);
    }
    s
}
