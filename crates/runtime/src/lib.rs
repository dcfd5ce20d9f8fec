//! Baton's actor runtime — the embedding API.
//!
//! Each session is a supervised `SessionActor` (ractor on tokio) whose state is
//! journaled in RocksDB through [`baton_store`]; model calls go to per-endpoint
//! executor pools from [`baton_models`]. The gRPC server is a thin layer over
//! this same API, so a backend service can embed Baton directly:
//!
//! ```no_run
//! use baton_runtime::{Runtime, RuntimeConfig, StartSession};
//! use futures::StreamExt;
//!
//! # async fn demo() -> baton_runtime::Result<()> {
//! let runtime = Runtime::builder(RuntimeConfig::with_data_dir("./baton-data")).start().await?;
//! let session = runtime.start_session(StartSession::default()).await?;
//! let mut events = runtime.send(session.id, "hello".into()).await?;
//! while let Some(event) = events.next().await {
//!     println!("{:?}", event?);
//! }
//! runtime.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Guarantees, as built (see docs/architecture.md):
//! * a step is journaled before it is acknowledged or relied on; events reach
//!   clients only once their record is durable;
//! * every event has a per-session, strictly increasing, gap-free `seq`, and
//!   [`RuntimeHandle::resume`] replays exactly what a client missed;
//! * after a crash, unfinished turns resume: a model call with no recorded
//!   answer is issued again, a recorded answer is never requested again;
//! * idle sessions are passivated and rehydrated on their next message;
//! * a failing session actor is restarted with backoff, then marked `failed`.

mod access;
mod apikeys;
mod audit;
mod audit_data;
mod builder;
mod checks;
mod cluster;
mod config;
mod conversation;
mod copy;
pub mod disk;
mod drain;
mod embed;
mod error;
mod failed;
mod fresh;
mod gate_api;
pub mod gates;
mod handle;
mod inspect;
mod paging;
mod privacy;
mod quality;
mod recovery;
mod replay;
mod retention;
mod session;
mod sessions;
mod shared;
mod source;
mod spend;
mod state;
mod stream;
mod supervisor;

pub use access::{Caller, LimitsConfig, TenantConfig};
pub use apikeys::ApiKeyRecord;
pub use audit::{AuditOnFailure, AuditSink};
pub use baton_governance::{BoxFuture, Classifier as PolicyClassifier};
pub use baton_store::{Durability, WriterStatsSnapshot};
pub use builder::{Runtime, RuntimeBuilder};
pub use cluster::{ClusterConfig, Ownership as ClusterOwnership};
pub use config::{
    BusyPolicy, PostgresConfig, RuntimeConfig, SessionsConfig, StoreBackend, StoreConfig,
    SupervisionConfig, ToolsConfig,
};
pub use conversation::TurnConversation;
pub use embed::{EmbedCall, Embedded};
pub use error::{ConfigError, Error, Result};
pub use gates::{GateDecision, GateList, GateOrder, GateQuery, GateRecord, GateStatus};
pub use handle::RuntimeHandle;
pub use inspect::{ActorNode, BackupInfo, JournalPage, StateView};
pub use privacy::{Erasure, ErasurePass, Keystore, PrivacyConfig, audit_aad, open_keyring};
pub use quality::QualityConfig;
pub use replay::{Divergence, ReplayReport};
pub use retention::RetentionConfig;
pub use session::SessionView;
pub use sessions::{
    HOLD_METADATA_KEY, HoldTerms, LIST_SCAN_CAP, ListQuery, MAX_IDEMPOTENCY_KEY_BYTES,
    MAX_METADATA_BYTES, MAX_METADATA_ENTRIES, MAX_STEPS_LIMIT, SessionInfo, SessionList,
    SessionSummary, StartSession,
};
pub use state::{CurrentTurn, PendingGate, PendingTool, QueuedTurn, SessionState};
pub use stream::EventStream;
pub use supervisor::SupervisorStats;

/// A test hook: abort the process (as a SIGKILL would end it) when the
/// environment variable `BATON_FAILPOINT` names this point. Used by the
/// crash tests of multi-step operations (erasure); unset, it costs one
/// environment lookup.
pub(crate) fn failpoint(name: &str) {
    if std::env::var("BATON_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod gate_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod inspect_tests;
#[cfg(test)]
mod tests;
