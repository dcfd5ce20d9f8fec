//! The running runtime, reached through a cheap-to-clone [`RuntimeHandle`].
//! Its API is spread over files by concern: sessions (`sessions`), event
//! streams (`stream`), gates (`gate_api`), inspection (`inspect`), replay
//! (`replay`); this file holds the handle and what they share.

use std::sync::Arc;

use baton_types::SessionId;
use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::Mutex;

use crate::audit;
use crate::config::RuntimeConfig;
use crate::error::{Error, Result};
use crate::session::SessionMsg;
use crate::shared::Shared;
use crate::supervisor::{SupervisorMsg, SupervisorStats};

pub(crate) struct HandleInner {
    pub shared: Arc<Shared>,
    /// Stops background tasks at shutdown.
    pub stop: tokio_util::sync::CancellationToken,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Creations that share an idempotency key are serialised on a stripe.
    pub idempotency_locks: Vec<Mutex<()>>,
}

/// The running runtime. Cheap to clone; every clone drives the same runtime.
#[derive(Clone)]
pub struct RuntimeHandle {
    pub(crate) inner: Arc<HandleInner>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle")
            .field("store", &self.inner.shared.store)
            .finish()
    }
}

impl RuntimeHandle {
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The configuration in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.shared.config
    }

    /// Names of the configured model endpoints (routes).
    pub fn routes(&self) -> Vec<String> {
        self.inner
            .shared
            .router
            .routes()
            .into_iter()
            .map(|r| r.name)
            .collect()
    }

    /// The router: routes, breakers and endpoint statistics (inspection,
    /// the HTTP front door).
    pub fn router(&self) -> &baton_routing::Router {
        &self.inner.shared.router
    }

    /// Counters of the store's group-commit writer.
    pub fn writer_stats(&self) -> baton_store::WriterStatsSnapshot {
        self.inner.shared.store.writer_stats()
    }

    /// What the store holds in memory: its shared block cache and its
    /// memtables, each bounded by `[store]` settings.
    pub fn store_memory(&self) -> baton_store::StoreMemory {
        self.inner.shared.store.memory()
    }

    /// The registered server-side tools.
    pub fn tools(&self) -> Vec<baton_tools::ToolSpec> {
        self.inner.shared.tools.registry.specs()
    }

    /// The store the runtime writes (flows keep their runs in it too).
    pub fn store(&self) -> &baton_store::Store {
        &self.inner.shared.store
    }

    /// The spec of server-side tool `name`.
    pub fn tool_spec(&self, name: &str) -> Option<baton_tools::ToolSpec> {
        self.inner
            .shared
            .tools
            .registry
            .get(name)
            .map(|t| t.spec().clone())
    }

    /// Run server-side tool `name` once, outside any session (a flow's
    /// `tool` step): the arguments are validated against its schema, the
    /// call runs under the tool actors' supervision and timeout. The error
    /// is the tool's error text.
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: &serde_json::Value,
    ) -> std::result::Result<String, String> {
        let tools = &self.inner.shared.tools;
        let args = tools
            .registry
            .validate(name, &arguments.to_string())
            .map_err(|e| e.to_string())?;
        match tools.executor.execute(name.to_string(), args).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the tool executor stopped".into()),
        }
    }

    /// Hand `msg` to the session's actor (through the supervisor).
    pub(crate) fn route(&self, id: SessionId, msg: SessionMsg) -> Result<()> {
        self.inner
            .supervisor
            .cast(SupervisorMsg::Route(id, msg))
            .map_err(|_| Error::Unavailable("the runtime is shutting down".into()))
    }

    /// Ask the session's actor and wait for its answer (bounded by the
    /// request timeout).
    pub(crate) async fn ask<T: Send + 'static>(
        &self,
        id: SessionId,
        make: impl FnOnce(RpcReplyPort<Result<T>>) -> SessionMsg,
    ) -> Result<T> {
        let (tx, rx) = ractor::concurrency::oneshot();
        self.route(id, make(tx.into()))?;
        let timeout = self.inner.shared.config.request_timeout();
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(Error::DeadlineExceeded(format!(
                "session {id} did not answer within {} ms",
                timeout.as_millis()
            ))),
            Ok(Err(_)) => Err(Error::Unavailable(
                match self.inner.shared.write_failing() {
                    Some(why) => format!(
                        "session {id} restarted before answering, because {why}; the request may or may not have been applied: check with GetSession or ResumeSession"
                    ),
                    None => format!(
                        "session {id} restarted before answering; the request may or may not have been applied: check with GetSession or ResumeSession"
                    ),
                },
            )),
            Ok(Ok(r)) => r,
        }
    }

    /// `ask` for requests that change nothing: retried when the session's
    /// actor restarted before answering (its mailbox is lost with it).
    pub(crate) async fn ask_read<T: Send + 'static>(
        &self,
        id: SessionId,
        make: impl Fn(RpcReplyPort<Result<T>>) -> SessionMsg,
    ) -> Result<T> {
        let mut tries = 0;
        loop {
            match self.ask(id, &make).await {
                Err(Error::Unavailable(_)) if tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20 << tries)).await;
                }
                other => return other,
            }
        }
    }

    /// Record `kind` (for example `flow_run`) by `actor` in the audit
    /// trail, when one is configured: for the parts of Baton built on the
    /// runtime (flows) that act outside any session.
    pub fn audit_record(&self, kind: &str, actor: &str, data: serde_json::Value) {
        if let Some(audit) = &self.inner.shared.audit {
            audit.record(kind, None, Some(actor), data);
        }
    }

    /// Record an administrative action in the audit trail.
    pub(crate) fn audit_admin(
        &self,
        action: &str,
        session: Option<SessionId>,
        mut data: serde_json::Value,
        by: &str,
    ) {
        if let Some(audit) = &self.inner.shared.audit {
            if let Some(o) = data.as_object_mut() {
                o.insert("action".into(), action.into());
            }
            audit.record("admin_action", session, Some(by), data);
        }
    }

    /// Why the audit trail cannot be written, while it cannot (its last
    /// failed write); `None` when it keeps up or there is none. Health
    /// checks report it; with [`crate::AuditOnFailure::Block`] new sessions
    /// and messages are refused meanwhile.
    pub fn audit_failing(&self) -> Option<String> {
        self.inner.shared.audit_health.failing()
    }

    /// Why new work is refused because the data directory is low on
    /// space, while it is (see [`crate::disk`]).
    pub fn disk_low(&self) -> Option<String> {
        self.inner.shared.disk.low()
    }

    /// This node's standing among the nodes on its PostgreSQL database:
    /// its id, the epoch of the writer lease it holds, when it last renewed
    /// it, whether the database answers, and whether the lease was lost to
    /// another node. `None` on RocksDB.
    pub fn node_status(&self) -> Option<baton_store::member::NodeStatus> {
        self.inner.shared.store.node_status()
    }

    /// Why new sessions and messages are refused now, if they are: a
    /// drain for a stop ([`Self::drain`]), the store's writes failing, the data directory low on space, or the audit trail failing under
    /// `audit.on_failure = block`. Health checks report it.
    pub fn refusing_work(&self) -> Option<String> {
        if let Some(why) = self.inner.shared.drain.refusing() {
            return Some(why);
        }
        if let Some(why) = self.inner.shared.write_failing() {
            return Some(why);
        }
        if let Some(why) = self.disk_low() {
            return Some(why);
        }
        if self.audit_on_failure() == crate::AuditOnFailure::Block {
            return self
                .audit_failing()
                .map(|r| format!("audit trail failing: {r}"));
        }
        None
    }

    /// Resolves once [`RuntimeHandle::shutdown`] has stopped the runtime:
    /// long-lived streams outside the actors (watches) end on it.
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.stop.clone().cancelled_owned()
    }

    /// What the runtime does while the audit trail cannot be written.
    pub fn audit_on_failure(&self) -> crate::AuditOnFailure {
        self.inner.shared.audit_health.on_failure
    }

    /// Supervisor counters (live sessions, restarts, passivations).
    pub async fn stats(&self) -> Result<SupervisorStats> {
        let (tx, rx) = ractor::concurrency::oneshot();
        self.inner
            .supervisor
            .cast(SupervisorMsg::Stats(tx.into()))
            .map_err(|_| Error::Unavailable("the runtime is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the supervisor did not answer".into()))
    }

    /// Make a session's actor fail, as a bug would (supervision tests, drills).
    #[doc(hidden)]
    pub fn inject_actor_fault(&self, id: SessionId) -> Result<()> {
        self.route(id, SessionMsg::InjectFault)
    }

    /// The first half of a graceful stop: from now on new sessions and
    /// messages are refused with `UNAVAILABLE` (and health checks say not
    /// serving), while the turns clients are waiting on go on; returns once
    /// none is left or after `grace`, with the number still open. Gate
    /// decisions and tool results are still taken, so that those turns can
    /// end. [`Self::shutdown`] then stops the rest; a turn still running
    /// resumes at the next start.
    pub async fn drain(&self, grace: std::time::Duration) -> usize {
        let shared = &self.inner.shared;
        let open = shared.drain.open();
        tracing::info!(
            answers_in_progress = open,
            grace_ms = grace.as_millis() as u64,
            "draining: refusing new work, finishing the answers in progress"
        );
        let left = shared.drain.run(grace).await;
        if left > 0 {
            tracing::warn!(
                answers_in_progress = left,
                "drain: the grace period ended with answers in progress; their turns resume at the next start"
            );
        } else {
            tracing::info!("drained: no answer in progress");
        }
        left
    }

    /// Stop every actor and the executors, and flush the store. Unfinished
    /// turns resume at the next start.
    pub async fn shutdown(&self) {
        self.inner.supervisor.stop(Some("shutdown".into()));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while self.inner.supervisor.get_status() != ractor::ActorStatus::Stopped {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        let shared = &self.inner.shared;
        shared.router.models().stop().await;
        shared.tools.executor.stop().await;
        if let Some(mcp) = &shared.tools.mcp {
            mcp.stop().await;
        }
        self.inner.stop.cancel();
        if let Some(sink) = &shared.audit {
            let confirmed = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                audit::confirm(
                    sink.as_ref(),
                    &shared.audit_cursor,
                    &shared.store,
                    &shared.audit_health,
                    &shared.config.privacy,
                ),
            )
            .await;
            if !matches!(confirmed, Ok(Ok(()))) || shared.audit_health.failing().is_some() {
                tracing::warn!(
                    "audit trail not confirmed at shutdown; the next start re-appends its last records"
                );
            }
            let _ = shared.store.barrier().await;
        }
        shared.store.close();
    }
}
