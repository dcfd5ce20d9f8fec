//! Baton: an actor-based, durable runtime for stateful AI agents.
//!
//! This umbrella crate re-exports what an embedding service needs. Each
//! session is a supervised actor whose state is journaled in RocksDB; model
//! calls go through per-endpoint executor pools with retries; a crash loses
//! nothing and re-runs nothing that was recorded.
//!
//! ```no_run
//! use baton::{Runtime, RuntimeConfig, StartSession};
//! use futures::StreamExt;
//!
//! # async fn demo() -> baton::Result<()> {
//! let runtime = Runtime::builder(RuntimeConfig::with_data_dir("./baton-data")).start().await?;
//! let session = runtime.start_session(StartSession::default()).await?;
//! let mut events = runtime.send(session.id, "hello".into()).await?;
//! while let Some(event) = events.next().await {
//!     println!("{}", event?.kind.name());
//! }
//! # Ok(()) }
//! ```

pub use baton_runtime::*;
pub use baton_types as types;
pub use baton_types::{EventKind, Message, SessionEvent, SessionId, SessionStatus};

/// Flows: durable multi-step pipelines and their triggers.
pub use baton_flows as flows;
/// The model layer: endpoints, providers, executors.
pub use baton_models as models;
/// The gRPC API's generated code.
pub use baton_proto as proto;
/// The gRPC server.
pub use baton_server as server;
