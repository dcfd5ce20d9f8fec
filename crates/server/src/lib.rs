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

mod admin;
pub mod audit;
pub mod auth;
mod config;
mod config_origin;
mod console;
pub mod console_session;
mod flows;
pub mod forward;
mod gates;
mod http;
mod inflight;
mod inspect;
pub mod openai;
pub mod owner;
mod ratelimit;
mod serve;
mod sessions;
mod status;
mod tls_listener;

pub use admin::{AdminService, key_to_proto, new_key, parse_roles};
pub use auth::{AuthSection, Authenticator};
pub use config::{BatonConfig, ConfigError, HttpSection, ServerSection};
pub use gates::{GatesService, gate_to_proto};
pub use http::{router as http_router, serve_http};
pub use inspect::{InspectService, actor_to_proto};
pub use serve::{Error, serve, serve_with};
pub use sessions::SessionsService;
pub use status::{grpc_code, http_status, status};

/// The front door's former module name, kept for existing users.
pub use openai as openai_compat;
