//! Baton's gRPC and HTTP servers.
//!
//! Serves the `baton.v1.Sessions`, `baton.v1.Gates` and `baton.v1.Inspect`
//! services over a [`RuntimeHandle`], plus
//! `grpc.health.v1.Health` and server reflection (`v1` and `v1alpha`, since
//! common clients such as Python's grpcio-reflection still speak only
//! v1alpha), so grpcurl and generic clients work with no proto files.
//! [`serve_http`] serves `/metrics`, `/healthz` and an OpenAI-compatible
//! front door ([`openai`]) over the same runtime.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use baton_runtime::{Runtime, RuntimeConfig};
//! let runtime = Runtime::builder(RuntimeConfig::default()).start().await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! baton_server::serve(runtime, listener, Default::default(), std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod audit;
mod config;
mod gates;
mod http;
mod inspect;
pub mod openai;
mod sessions;

use std::future::Future;

use baton_proto::v1::gates_server::GatesServer;
use baton_proto::v1::inspect_server::InspectServer;
use baton_proto::v1::sessions_server::SessionsServer;
use baton_runtime::RuntimeHandle;
use baton_types::ErrorCode;
use tokio::net::TcpListener;

pub use config::{BatonConfig, ConfigError, HttpSection, ServerSection};
pub use gates::{GatesService, gate_to_proto};
pub use http::{router as http_router, serve_http};
pub use inspect::{InspectService, actor_to_proto};
pub use sessions::SessionsService;

/// The front door's former module name, kept for existing users.
pub use openai as openai_compat;

/// The one place error kinds become gRPC status codes.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    match code {
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
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
        ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Cancelled | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A runtime error as a gRPC status, message included.
pub fn status(err: &baton_runtime::Error) -> tonic::Status {
    tonic::Status::new(grpc_code(err.code()), err.to_string())
}

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("http server: {0}")]
    Http(std::io::Error),
}

/// Serve until `shutdown` resolves; in-flight streams are cut, the runtime is
/// left running (the caller shuts it down).
pub async fn serve(
    runtime: RuntimeHandle,
    listener: TcpListener,
    section: ServerSection,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SessionsServer<SessionsService>>()
        .await;
    health.set_serving::<GatesServer<GatesService>>().await;
    health.set_serving::<InspectServer<InspectService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let sessions = SessionsServer::new(SessionsService::new(runtime.clone()))
        .max_decoding_message_size(section.max_request_bytes);
    // Open gate watches would hold a graceful shutdown forever: end them
    // when it starts.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let inspect = InspectServer::new(InspectService::new(runtime.clone()))
        .max_decoding_message_size(section.max_request_bytes);
    let gates = GatesServer::new(GatesService::with_shutdown(runtime, stopping))
        .max_decoding_message_size(section.max_request_bytes);
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(sessions)
        .add_service(gates)
        .add_service(inspect)
        .serve_with_incoming_shutdown(
            // TCP_NODELAY: a turn's events are small writes; Nagle's algorithm
            // would hold each for milliseconds (measured in benches/load.rs).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
