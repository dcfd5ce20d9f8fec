//! State shared by the supervisor, the session actors and the handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use baton_store::Store;
use baton_tools::{ToolExecutor, ToolRegistry};
use baton_types::{GateRecord, SessionId};

use crate::audit::{AuditCursor, AuditHealth, AuditSink};
use crate::config::RuntimeConfig;
use crate::gates::Policies;
use crate::source::StepSource;

/// The tools side of the runtime.
pub(crate) struct ToolsRuntime {
    pub registry: ToolRegistry,
    pub executor: ToolExecutor,
    pub mcp: Option<baton_mcp::McpManager>,
}

/// State shared by the supervisor, the session actors and the handle.
pub(crate) struct Shared {
    pub store: Store,
    /// Routes every model call (and holds the endpoints' executors):
    /// strategies, retries, failover, breakers, budgets.
    pub router: baton_routing::Router,
    pub tools: ToolsRuntime,
    pub gate_policies: Policies,
    /// Gate records as they are opened, escalated and decided (durable).
    pub gate_events: tokio::sync::broadcast::Sender<GateRecord>,
    pub config: RuntimeConfig,
    /// The audit trail, when one is plugged in.
    pub audit: Option<Arc<dyn AuditSink>>,
    /// Records handed to the audit trail, not yet confirmed in the store.
    pub audit_cursor: AuditCursor,
    /// Whether the audit trail keeps up, and what to do when it does not.
    pub audit_health: AuditHealth,
    /// Where live sessions' model answers and tool results come from.
    pub live: Arc<dyn StepSource>,
    /// Recordings that replay sessions are answered from, by session.
    replays: Mutex<HashMap<SessionId, Arc<dyn StepSource>>>,
    epoch: Instant,
    /// API key records (see [`crate::apikeys`]).
    pub keys: crate::apikeys::KeyRing,
    /// Tenants' spend per day and month (see [`crate::spend`]).
    pub tenant_spend: crate::spend::TenantSpend,
    /// Where several nodes serve at once: the other nodes' route spend
    /// when this one started (see [`crate::spend::exchange_route_spend`]).
    pub route_base: Option<crate::spend::RouteBase>,
    /// Tenants' tokens in the last minute.
    pub tenant_tokens: crate::spend::TokenMeter,
    /// Principals' tokens in the last minute (by principal label).
    pub principal_tokens: crate::spend::TokenMeter,
    /// Tenants' own provider keys, by tenant name.
    pub own_keys: HashMap<String, Arc<baton_routing::OwnKeys>>,
    /// Governance policies (`[[policies]]`), compiled.
    pub policies: Arc<baton_governance::Policies>,
    /// Classifiers the embedder registered for policies, by name.
    pub policy_classifiers: HashMap<String, Arc<dyn baton_governance::Classifier>>,
    /// Answers of policies' classifiers and evaluators, by content hash.
    pub check_cache: crate::checks::CheckCache,
    /// Quality scoring and drift watches (`[quality]`).
    pub quality: Arc<crate::quality::Quality>,
    /// The data directory's free space (see [`crate::disk`]).
    pub disk: crate::disk::DiskGuard,
    /// A graceful stop (see [`crate::drain`]).
    pub drain: crate::drain::Drain,
    /// Sessions just created, for their first actor (see [`crate::fresh`]).
    pub fresh: crate::fresh::FreshSessions,
}

/// What the runtime reads back at start about principals and tenants.
pub(crate) struct Ledgers {
    pub keys: crate::apikeys::KeyRing,
    pub tenant_spend: crate::spend::TenantSpend,
    pub route_base: Option<crate::spend::RouteBase>,
    pub own_keys: HashMap<String, Arc<baton_routing::OwnKeys>>,
    pub policies: Arc<baton_governance::Policies>,
    pub policy_classifiers: HashMap<String, Arc<dyn baton_governance::Classifier>>,
}

impl Shared {
    /// Why new work is refused because the store's writes fail, while
    /// they do (see [`baton_store::Store::write_failing`]).
    pub(crate) fn write_failing(&self) -> Option<String> {
        if let Some(lost) = self.store.node_status().and_then(|s| s.lost) {
            return Some(format!(
                "{lost}: this node may no longer write, and refuses all new work"
            ));
        }
        self.store.write_failing().map(|e| {
            let what = if self.store.backend() == "postgres" {
                "the store's database".to_string()
            } else {
                format!("the data directory {}", self.config.store.data_dir.display())
            };
            format!(
                "{what} cannot be written ({e}): new sessions and messages are refused until a write succeeds again"
            )
        })
    }

    /// The check every start of new work (a session, a message) makes:
    /// refused with `UNAVAILABLE` naming the cause while the server drains
    /// for a stop, while the store's writes
    /// fail or its disk is below the floor, while the audit trail
    /// fails under `audit.on_failure = block`, or while the journal writer
    /// or the audit trail is further behind than `store.max_backlog_bytes`
    /// / `store.max_audit_backlog` (work already running goes on; what it
    /// writes is bounded by it).
    pub(crate) fn admit(&self) -> crate::Result<()> {
        if let Some(why) = self.drain.refusing() {
            return Err(crate::Error::Unavailable(why));
        }
        if let Some(why) = self.write_failing() {
            return Err(crate::Error::Unavailable(why));
        }
        if let Some(why) = self.disk.low() {
            return Err(crate::Error::Unavailable(why));
        }
        self.audit_health.admit()?;
        let cfg = &self.config.store;
        let (writes, bytes) = self.store.backlog();
        if bytes > cfg.max_backlog_bytes {
            return Err(crate::Error::Unavailable(format!(
                "the journal writer is behind: {writes} writes of {bytes} bytes queued \
                 (store.max_backlog_bytes = {}); new work is refused until it catches up",
                cfg.max_backlog_bytes
            )));
        }
        if let Some(audit) = &self.audit {
            let queued = audit.queued();
            if queued > cfg.max_audit_backlog {
                return Err(crate::Error::Unavailable(format!(
                    "the audit trail is behind: {queued} records queued \
                     (store.max_audit_backlog = {}); new work is refused until it catches up",
                    cfg.max_audit_backlog
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn new(
        store: Store,
        router: baton_routing::Router,
        tools: ToolsRuntime,
        gate_policies: Policies,
        config: RuntimeConfig,
        audit: (Option<Arc<dyn AuditSink>>, crate::audit::AuditOnFailure),
        ledgers: Ledgers,
    ) -> Self {
        let (audit, on_failure) = audit;
        let (gate_events, _) = tokio::sync::broadcast::channel(1024);
        let quality = Arc::new(crate::quality::Quality::new(config.quality.clone()));
        if quality.watches() {
            let q = quality.clone();
            router.observe_attempts(Arc::new(move |a| q.observe_attempt(a)));
        }
        let live = Arc::new(crate::source::Live {
            router: router.clone(),
            tools: tools.executor.clone(),
        });
        let disk = crate::disk::DiskGuard::new(
            &config.store.data_dir,
            config.store.min_free_bytes,
            config.store.ballast_bytes,
        );
        Shared {
            disk,
            drain: Default::default(),
            fresh: Default::default(),
            store,
            router,
            tools,
            gate_policies,
            gate_events,
            config,
            audit,
            audit_cursor: AuditCursor::default(),
            audit_health: AuditHealth::new(on_failure),
            live,
            replays: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            keys: ledgers.keys,
            tenant_spend: ledgers.tenant_spend,
            route_base: ledgers.route_base,
            tenant_tokens: Default::default(),
            principal_tokens: Default::default(),
            own_keys: ledgers.own_keys,
            policies: ledgers.policies,
            policy_classifiers: ledgers.policy_classifiers,
            check_cache: Default::default(),
            quality,
        }
    }

    /// The recording a replay session is answered from, if it is registered.
    pub(crate) fn replay_source(&self, id: SessionId) -> Option<Arc<dyn StepSource>> {
        self.replays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    pub(crate) fn replays_insert(&self, id: SessionId, source: Arc<dyn StepSource>) {
        self.replays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, source);
    }

    pub(crate) fn replays_remove(&self, id: SessionId) {
        self.replays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Milliseconds since the runtime started (activity clocks).
    pub fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}
