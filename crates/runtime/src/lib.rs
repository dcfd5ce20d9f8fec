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

mod audit;
mod config;
mod error;
pub mod gates;
mod inspect;
mod session;
mod state;
mod supervisor;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use baton_models::{Endpoint, ExecutorHandle, ModelRegistry};
use baton_store::{Batch, SessionMeta, Store, StoreOptions};
use baton_tools::{Tool, ToolExecutor, ToolFilter, ToolRegistry};
use baton_types::{EventKind, SessionEvent, SessionId, SessionStatus, now_unix_ms};
use futures::Stream;
use ractor::{Actor, ActorRef, RpcReplyPort};
use tokio::sync::Mutex;

pub use audit::AuditSink;
pub use baton_store::{Durability, WriterStatsSnapshot};
pub use config::{
    BusyPolicy, RuntimeConfig, SessionsConfig, StoreConfig, SupervisionConfig, ToolsConfig,
};
pub use error::{Error, Result};
pub use gates::{GateDecision, GateList, GateQuery, GateRecord, GateStatus};
pub use inspect::{ActorNode, BackupInfo, Divergence, JournalPage, ReplayReport, StateView};
pub use session::SessionView;
pub use state::{CurrentTurn, PendingGate, PendingTool, SessionState};
pub use supervisor::SupervisorStats;

use session::{SessionMsg, Subscription};
use supervisor::{SessionSupervisor, SupervisorMsg};

/// Largest `max_steps` a session may ask for.
pub const MAX_STEPS_LIMIT: u32 = 1000;
/// Longest accepted idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Most metadata entries on a session.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key or value, in bytes.
pub const MAX_METADATA_BYTES: usize = 1024;

/// The tools side of the runtime.
pub(crate) struct ToolsRuntime {
    pub registry: ToolRegistry,
    pub executor: ToolExecutor,
    pub mcp: Option<baton_mcp::McpManager>,
}

/// State shared by the supervisor, the session actors and the handle.
pub(crate) struct Shared {
    pub store: Store,
    /// Routes every model call (and holds the endpoints' executors): strategies, retries, failover, breakers, budgets.
    pub router: baton_routing::Router,
    pub tools: ToolsRuntime,
    pub gate_policies: gates::Policies,
    /// Gate records as they are opened, escalated and decided (durable).
    pub gate_events: tokio::sync::broadcast::Sender<GateRecord>,
    pub config: RuntimeConfig,
    /// The audit trail, when one is plugged in.
    pub audit: Option<Arc<dyn AuditSink>>,
    /// Records handed to the audit trail, not yet confirmed in the store.
    pub audit_cursor: audit::AuditCursor,
    /// Recordings that replay sessions are answered from.
    replays: std::sync::Mutex<std::collections::HashMap<SessionId, Arc<inspect::ReplaySource>>>,
    epoch: Instant,
}

impl Shared {
    pub(crate) fn replay_source(&self, id: SessionId) -> Option<Arc<inspect::ReplaySource>> {
        self.replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    pub(crate) fn replays_insert(&self, id: SessionId, source: Arc<inspect::ReplaySource>) {
        self.replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, source);
    }

    pub(crate) fn replays_remove(&self, id: SessionId) {
        self.replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A stream of session events. It ends after the turn's last event (for
/// [`RuntimeHandle::send`]) or when the client drops it (for
/// [`RuntimeHandle::resume`]); an `Err` item ends it early (for example when a
/// slow client fell too far behind: resume from the last seq it saw).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<SessionEvent>> + Send>>;

/// Images are for user messages, valid, and within the limits; errors name
/// `field[i]`.
fn check_images(m: &baton_types::Message, field: &str, limits: &SessionsConfig) -> Result<()> {
    if m.images.is_empty() {
        return Ok(());
    }
    if m.role != baton_types::Role::User {
        return Err(Error::InvalidArgument(format!(
            "{field}: only user messages carry images, not {} messages",
            m.role.as_str()
        )));
    }
    if m.images.len() > limits.max_images {
        return Err(Error::InvalidArgument(format!(
            "{field}: {} images; at most {} are allowed (sessions.max_images)",
            m.images.len(),
            limits.max_images
        )));
    }
    for (i, image) in m.images.iter().enumerate() {
        image
            .validate()
            .map_err(|problem| Error::InvalidArgument(format!("{field}[{i}]: {problem}")))?;
    }
    let bytes: usize = m.images.iter().map(|i| i.url.len()).sum();
    if bytes > limits.max_image_bytes {
        return Err(Error::ResourceExhausted(format!(
            "{field}: {bytes} bytes of image URLs; the limit is {} (sessions.max_image_bytes)",
            limits.max_image_bytes
        )));
    }
    Ok(())
}

/// A turn's event stream, ended the moment its last event is yielded rather
/// than when the forwarding task has gone: an HTTP/2 server then sends the
/// last message and the end of the stream in one flush, so a client that
/// stops reading at the turn's end has seen the whole stream. (One that
/// drops it before the trailers arrive makes its h2 count a reset for them;
/// after 1,024 of those hyper closes the connection with GOAWAY
/// `too_many_internal_resets`, failing every call multiplexed on it.)
struct UntilTurnEnd {
    inner: tokio_stream::wrappers::ReceiverStream<Result<SessionEvent>>,
    ended: bool,
}

impl Stream for UntilTurnEnd {
    type Item = Result<SessionEvent>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        let item = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_next(cx));
        self.ended = matches!(&item, Some(Ok(e)) if e.ends_turn());
        std::task::Poll::Ready(item)
    }
}

/// Parameters of a new session.
#[derive(Debug, Clone, Default)]
pub struct StartSession {
    /// The same key always yields the same session.
    pub idempotency_key: Option<String>,
    pub system_prompt: String,
    /// Model endpoint (route) name; `None` or empty for the configured default.
    pub route: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Server-side tools this session may use (names or patterns such as
    /// `"*"` or `"notes.*"`); empty for `tools.default_allowed`.
    pub allowed_tools: Vec<String>,
    /// Tools the client runs itself; answered with
    /// [`RuntimeHandle::submit_tool_result`].
    pub client_tools: Vec<baton_types::ToolDefinition>,
    /// Most model calls per turn; 0 for `sessions.max_steps`.
    pub max_steps: u32,
    /// Session budget in USD; `None` for `sessions.default_budget_usd`.
    pub budget_usd: Option<f64>,
    /// Data classes the session's content carries (e.g. `pii`): its model
    /// calls only go to endpoints certified for all of them.
    pub data_classes: Vec<String>,
    /// A one-turn session: the turn ends with the model's answer, tool
    /// calls included (the OpenAI-compatible front door).
    pub one_shot: bool,
    /// Messages the conversation starts with (before the first turn).
    pub history: Vec<baton_types::Message>,
    /// How every model call of the session generates: sampling, output
    /// limit, stop sequences, tool choice, structured output.
    pub generation: baton_types::Generation,
}

/// The outcome of [`RuntimeHandle::start_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: SessionId,
    pub status: SessionStatus,
    /// False when an earlier call with the same idempotency key created it.
    pub created: bool,
}

/// A filter and page of [`RuntimeHandle::list`].
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<SessionStatus>,
    /// Default 50, at most 1000.
    pub page_size: u32,
    /// The `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

/// One session in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub id: SessionId,
    pub status: SessionStatus,
    pub status_reason: String,
    pub route: String,
    pub created_at_unix_ms: u64,
}

/// A page of sessions.
#[derive(Debug, Clone)]
pub struct SessionList {
    pub sessions: Vec<SessionSummary>,
    /// `None` on the last page.
    pub next_page_token: Option<String>,
}

/// Builds a [`RuntimeHandle`].
pub struct Runtime;

impl Runtime {
    pub fn builder(config: RuntimeConfig) -> RuntimeBuilder {
        RuntimeBuilder {
            config,
            endpoints: Vec::new(),
            tools: Vec::new(),
            classifiers: Vec::new(),
            audit: None,
        }
    }
}

/// Options of a runtime before it starts.
pub struct RuntimeBuilder {
    config: RuntimeConfig,
    endpoints: Vec<Endpoint>,
    tools: Vec<Arc<dyn Tool>>,
    classifiers: Vec<(String, Arc<dyn gates::DataClassifier>)>,
    audit: Option<Arc<dyn AuditSink>>,
}

impl RuntimeBuilder {
    /// Report every durable decision and action to `sink` (the audit trail).
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Add an endpoint built in code (for example with a custom provider).
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Register a data classifier that `data_rule` gate policies can name.
    pub fn with_classifier(
        mut self,
        name: impl Into<String>,
        classifier: Arc<dyn gates::DataClassifier>,
    ) -> Self {
        self.classifiers.push((name.into(), classifier));
        self
    }

    /// Add a server-side tool implemented in code.
    pub fn with_tool(mut self, tool: Arc<dyn Tool>) -> Self {
        self.tools.push(tool);
        self
    }

    /// Open the store, start the model executors and the supervisor, and
    /// resume every session that has an unfinished turn.
    pub async fn start(self) -> Result<RuntimeHandle> {
        let mut config = self.config;
        if config.models.is_empty() && !self.endpoints.is_empty() {
            config.models = self.endpoints.iter().map(|e| e.config().clone()).collect();
        }
        config.validate()?;
        let opts = StoreOptions::new(config.store.data_dir.clone(), config.store.durability);
        let store = tokio::task::spawn_blocking(move || Store::open(opts))
            .await
            .map_err(|e| Error::Internal(format!("store open task failed: {e}")))??;
        let custom: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| e.name().to_string())
            .collect();
        let configured = config
            .effective_models()
            .into_iter()
            .filter(|m| !custom.contains(&m.name))
            .collect();
        let mut models = ModelRegistry::start(configured)
            .await
            .map_err(|e| Error::Config(e.to_string()))?;
        for endpoint in self.endpoints {
            let h = ExecutorHandle::spawn(endpoint)
                .await
                .map_err(|e| Error::Config(e.to_string()))?;
            models.insert(h);
        }
        // Route spend is recorded with every settlement (an unsynced write;
        // the journal's AssistantMessage records hold the exact costs) and
        // read back here, so route budgets hold across restarts.
        let spent = store.route_spends().await?;
        // Gates pending from before this start count too: sessions open
        // and decide gates from here on by +1/-1.
        let pending = store.count_pending_gates().await?;
        baton_metrics::metrics().gates_pending_set(i64::try_from(pending).unwrap_or(i64::MAX));
        let persist = store.clone();
        let on_spend: baton_routing::OnSpend = Arc::new(move |route: &str, total: f64| {
            let mut b = Batch::unsynced();
            b.put_route_spend(route, total);
            let write = persist.write(b);
            tokio::spawn(async move {
                if let Err(e) = write.await {
                    tracing::warn!(error = %e, "cannot record route spend");
                }
            });
        });
        let budgets = baton_routing::BudgetLedger::new(spent, Some(on_spend));
        let router =
            match baton_routing::Router::new(config.routes.clone(), models.clone(), budgets) {
                Ok(r) => r,
                Err(e) => {
                    models.stop().await;
                    return Err(Error::Config(e.to_string()));
                }
            };
        if !router.has_route(&config.sessions.default_route) {
            models.stop().await;
            return Err(Error::Config(format!(
                "sessions.default_route: {:?} is not a configured route or endpoint",
                config.sessions.default_route
            )));
        }
        let registry = ToolRegistry::default();
        let builtins = config
            .tools
            .builtin
            .tools()
            .map_err(|e| Error::Config(format!("tools.builtin: {e}")))?;
        for tool in builtins.into_iter().chain(self.tools) {
            let name = tool.spec().name.clone();
            registry
                .register(tool)
                .map_err(|e| Error::Config(format!("tool {name}: {e}")))?;
        }
        let mcp = if config.mcp.is_empty() {
            None
        } else {
            Some(
                baton_mcp::McpManager::start(config.mcp.clone(), registry.clone())
                    .await
                    .map_err(|e| Error::Config(e.to_string()))?,
            )
        };
        let executor = ToolExecutor::spawn(registry.clone())
            .await
            .map_err(|e| Error::Internal(format!("cannot start the tool executor: {e}")))?;
        let gate_policies = gates::Policies::compile(&config.gates, &self.classifiers)?;
        let (gate_events, _) = tokio::sync::broadcast::channel(1024);
        let shared = Arc::new(Shared {
            store: store.clone(),
            router,
            gate_policies,
            gate_events,
            tools: ToolsRuntime {
                registry,
                executor,
                mcp,
            },
            config: config.clone(),
            audit: self.audit,
            audit_cursor: Default::default(),
            replays: Default::default(),
            epoch: Instant::now(),
        });
        let (supervisor, _) = Actor::spawn(None, SessionSupervisor, shared.clone())
            .await
            .map_err(|e| Error::Internal(format!("cannot start the session supervisor: {e}")))?;
        let handle = RuntimeHandle {
            inner: Arc::new(HandleInner {
                shared,
                supervisor,
                stop: tokio_util::sync::CancellationToken::new(),
                idempotency_locks: (0..64).map(|_| Mutex::new(())).collect(),
            }),
        };
        if let Some(sink) = &handle.inner.shared.audit {
            audit::recover(sink.as_ref(), &store).await?;
            let shared = Arc::downgrade(&handle.inner.shared);
            let stop = handle.inner.stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                    }
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    if let Some(sink) = &shared.audit
                        && let Err(e) =
                            audit::confirm(sink.as_ref(), &shared.audit_cursor, &shared.store).await
                    {
                        tracing::warn!(error = %e, "cannot record the audit cursor");
                    }
                }
            });
        }
        let unfinished = store.sessions_with_status(SessionStatus::Running).await?;
        if !unfinished.is_empty() {
            tracing::info!(
                sessions = unfinished.len(),
                "resuming sessions with unfinished turns"
            );
        }
        for id in unfinished {
            handle.route(id, SessionMsg::Wake)?;
        }
        handle.spawn_gate_timeouts();
        Ok(handle)
    }
}

struct HandleInner {
    shared: Arc<Shared>,
    /// Stops background tasks at shutdown.
    stop: tokio_util::sync::CancellationToken,
    supervisor: ActorRef<SupervisorMsg>,
    idempotency_locks: Vec<Mutex<()>>,
}

/// The running runtime. Cheap to clone; every clone drives the same runtime.
#[derive(Clone)]
pub struct RuntimeHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle")
            .field("store", &self.inner.shared.store)
            .finish()
    }
}

impl RuntimeHandle {
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
    pub fn writer_stats(&self) -> WriterStatsSnapshot {
        self.inner.shared.store.writer_stats()
    }

    fn route(&self, id: SessionId, msg: SessionMsg) -> Result<()> {
        self.inner
            .supervisor
            .cast(SupervisorMsg::Route(id, msg))
            .map_err(|_| Error::Unavailable("the runtime is shutting down".into()))
    }

    async fn ask<T: Send + 'static>(
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
            Ok(Err(_)) => Err(Error::Unavailable(format!(
                "session {id} restarted before answering; the request may or may not have been applied: check with GetSession or ResumeSession"
            ))),
            Ok(Ok(r)) => r,
        }
    }

    /// `ask` for requests that change nothing: retried when the session's
    /// actor restarted before answering (its mailbox is lost with it).
    async fn ask_read<T: Send + 'static>(
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

    /// Create a session (or, with an idempotency key seen before, return the
    /// session that key created). The session is durable when this returns.
    pub async fn start_session(&self, req: StartSession) -> Result<SessionInfo> {
        let shared = &self.inner.shared;
        let route = match req.route.as_deref() {
            None | Some("") => shared.config.sessions.default_route.clone(),
            Some(r) => r.to_string(),
        };
        if !shared.router.has_route(&route) {
            return Err(Error::InvalidArgument(format!(
                "route {route:?} is not a configured route or model endpoint (have: {})",
                self.routes().join(", ")
            )));
        }
        if let Some(b) = req.budget_usd
            && !(b.is_finite() && b >= 0.0)
        {
            return Err(Error::InvalidArgument(format!(
                "budget_usd must be a non-negative number, got {b}"
            )));
        }
        if let Some((i, _)) = req
            .data_classes
            .iter()
            .enumerate()
            .find(|(_, c)| c.is_empty() || c.len() > 64)
        {
            return Err(Error::InvalidArgument(format!(
                "data_classes[{i}]: must be 1 to 64 bytes"
            )));
        }
        if req.system_prompt.len() > shared.config.sessions.max_system_prompt_bytes {
            return Err(Error::ResourceExhausted(format!(
                "system_prompt is {} bytes; the limit is {} (sessions.max_system_prompt_bytes)",
                req.system_prompt.len(),
                shared.config.sessions.max_system_prompt_bytes
            )));
        }
        if req.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(Error::InvalidArgument(format!(
                "metadata has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
                req.metadata.len()
            )));
        }
        if let Some((k, _)) = req.metadata.iter().find(|(k, v)| {
            k.is_empty() || k.len() > MAX_METADATA_BYTES || v.len() > MAX_METADATA_BYTES
        }) {
            return Err(Error::InvalidArgument(format!(
                "metadata key {k:?} is empty, or it or its value exceeds {MAX_METADATA_BYTES} bytes"
            )));
        }
        self.validate_tools(&req)?;
        for (i, m) in req.history.iter().enumerate() {
            if !m.images.is_empty() {
                check_images(m, &format!("history[{i}].images"), &shared.config.sessions)?;
            }
        }
        let key = req.idempotency_key.filter(|k| !k.is_empty());
        if let Some(k) = &key
            && k.len() > MAX_IDEMPOTENCY_KEY_BYTES
        {
            return Err(Error::InvalidArgument(format!(
                "idempotency_key is {} bytes; at most {MAX_IDEMPOTENCY_KEY_BYTES} are allowed",
                k.len()
            )));
        }
        // Serialise creations that share a key, so that exactly one creates.
        let _guard = match &key {
            Some(k) => {
                let slot = fxhash(k.as_bytes()) % self.inner.idempotency_locks.len();
                let guard = self.inner.idempotency_locks[slot].lock().await;
                if let Some(id) = shared.store.find_idempotency(k.clone()).await? {
                    let status = shared
                        .store
                        .load_meta(id)
                        .await?
                        .map(|m| m.status)
                        .unwrap_or(SessionStatus::Idle);
                    return Ok(SessionInfo {
                        id,
                        status,
                        created: false,
                    });
                }
                Some(guard)
            }
            None => None,
        };
        let id = SessionId::new();
        let now = now_unix_ms();
        let meta = SessionMeta {
            created_at_unix_ms: now,
            route: route.clone(),
            system_prompt: req.system_prompt.clone(),
            metadata: req.metadata,
            idempotency_key: key.clone(),
            status: SessionStatus::Idle,
            status_reason: String::new(),
            updated_at_unix_ms: now,
        };
        let route_for_audit = route.clone();
        let mut batch = Batch::new();
        batch.put_meta(&id, &meta, None);
        batch.append(
            &id,
            1,
            now,
            &EventKind::SessionStarted {
                route,
                system_prompt: req.system_prompt,
                allowed_tools: req.allowed_tools,
                client_tools: req.client_tools,
                max_steps: req.max_steps,
                budget_usd: req.budget_usd.or(shared.config.sessions.default_budget_usd),
                data_classes: req.data_classes,
                one_shot: req.one_shot,
                history: req.history,
                generation: req.generation,
                replay_of: None,
            },
        );
        if let Some(k) = &key {
            batch.put_idempotency(k, &id);
        }
        shared.store.write(batch).await?;
        self.audit_admin(
            "start_session",
            Some(id),
            serde_json::json!({ "route": route_for_audit }),
        );
        Ok(SessionInfo {
            id,
            status: SessionStatus::Idle,
            created: true,
        })
    }

    fn validate_tools(&self, req: &StartSession) -> Result<()> {
        let registry = &self.inner.shared.tools.registry;
        if !req.allowed_tools.is_empty() {
            ToolFilter::new(&req.allowed_tools)
                .map_err(|e| Error::InvalidArgument(format!("allowed_tools: {e}")))?;
        }
        if req.max_steps > MAX_STEPS_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "max_steps {} exceeds the limit of {MAX_STEPS_LIMIT}",
                req.max_steps
            )));
        }
        self.validate_generation(req)?;
        let mut names = std::collections::HashSet::new();
        for (i, t) in req.client_tools.iter().enumerate() {
            if t.name.is_empty() || t.name.len() > 64 {
                return Err(Error::InvalidArgument(format!(
                    "client_tools[{i}].name: must be 1 to 64 bytes"
                )));
            }
            if !names.insert(t.name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "client_tools[{i}].name: {:?} is declared twice",
                    t.name
                )));
            }
            if registry.get(&t.name).is_some() {
                return Err(Error::InvalidArgument(format!(
                    "client_tools[{i}].name: {:?} is already a server-side tool",
                    t.name
                )));
            }
            match serde_json::from_str::<serde_json::Value>(&t.parameters) {
                Ok(v) if v.is_object() => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "client_tools[{i}].parameters: must be a JSON Schema object (JSON text)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Ranges and shapes of the generation settings, and that a tool choice
    /// names a tool the session has.
    fn validate_generation(&self, req: &StartSession) -> Result<()> {
        let g = &req.generation;
        g.validate().map_err(|(field, problem)| {
            Error::InvalidArgument(format!("generation.{field}: {problem}"))
        })?;
        if let Some(schema) = &g.json_schema {
            match serde_json::from_str::<serde_json::Value>(schema) {
                Ok(v) if v.is_object() => {}
                Ok(_) => {
                    return Err(Error::InvalidArgument(
                        "generation.json_schema: must be a JSON Schema object".into(),
                    ));
                }
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "generation.json_schema: is not valid JSON: {e}"
                    )));
                }
            }
        }
        let needs_tools = matches!(
            g.tool_choice,
            baton_types::ToolChoice::Required | baton_types::ToolChoice::Tool(_)
        );
        if !needs_tools {
            return Ok(());
        }
        let shared = &self.inner.shared;
        let patterns = if req.allowed_tools.is_empty() {
            &shared.config.tools.default_allowed
        } else {
            &req.allowed_tools
        };
        let filter = ToolFilter::new(patterns)
            .map_err(|e| Error::InvalidArgument(format!("allowed_tools: {e}")))?;
        let mut names: Vec<String> = shared
            .tools
            .registry
            .definitions(&filter)
            .into_iter()
            .map(|d| d.name)
            .collect();
        names.extend(req.client_tools.iter().map(|t| t.name.clone()));
        match &g.tool_choice {
            baton_types::ToolChoice::Tool(name) if !names.contains(name) => {
                Err(Error::InvalidArgument(format!(
                    "generation.tool_choice: names {name:?}, which is not one of the session's tools ({})",
                    if names.is_empty() {
                        "it has none".to_string()
                    } else {
                        names.join(", ")
                    }
                )))
            }
            _ if names.is_empty() => Err(Error::InvalidArgument(
                "generation.tool_choice: requires a tool call, but the session has no tools".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Answer a client-side tool call (or a call that needs attention). The
    /// returned seq is that of the recorded `ToolResult`, durable on return.
    pub async fn submit_tool_result(
        &self,
        id: SessionId,
        call_id: String,
        outcome: std::result::Result<String, String>,
    ) -> Result<u64> {
        if call_id.is_empty() {
            return Err(Error::InvalidArgument("call_id is required".into()));
        }
        let (output, is_error) = match outcome {
            Ok(o) => (o, false),
            Err(e) => (e, true),
        };
        let limit = self.inner.shared.config.sessions.max_message_bytes;
        if output.len() > limit {
            return Err(Error::ResourceExhausted(format!(
                "tool result is {} bytes; the limit is {limit} (sessions.max_message_bytes)",
                output.len()
            )));
        }
        self.ask(id, |reply| SessionMsg::SubmitToolResult {
            call_id,
            output,
            is_error,
            reply,
        })
        .await
    }

    /// The registered server-side tools.
    pub fn tools(&self) -> Vec<baton_tools::ToolSpec> {
        self.inner.shared.tools.registry.specs()
    }

    /// Look for gates whose deadline passed and hand each to its session
    /// (which applies the timeout action). Gates wait on disk, not in
    /// memory: a passivated session is woken only when it has to act.
    fn spawn_gate_timeouts(&self) {
        let weak = Arc::downgrade(&self.inner);
        let period =
            std::time::Duration::from_millis(self.inner.shared.config.gates.timeout_scan_ms);
        tokio::spawn(async move {
            // (gate, deadline) pairs handed over lately: a session takes a
            // moment to act; an escalated gate has a new deadline.
            let mut recently: std::collections::HashMap<([u8; 16], u64), Instant> =
                Default::default();
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { return };
                let handle = RuntimeHandle { inner };
                if handle.inner.supervisor.get_status() != ractor::ActorStatus::Running {
                    return;
                }
                let due = match handle
                    .inner
                    .shared
                    .store
                    .due_gates(now_unix_ms(), 512)
                    .await
                {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot scan gate deadlines");
                        continue;
                    }
                };
                recently.retain(|_, at| at.elapsed() < std::time::Duration::from_secs(5));
                for g in due {
                    if recently
                        .insert((g.gate_id, g.deadline_unix_ms), Instant::now())
                        .is_none()
                    {
                        let _ = handle.route(
                            g.session,
                            SessionMsg::GateTimeout {
                                gate_id: gates::gate_id_text(&g.gate_id),
                            },
                        );
                    }
                }
            }
        });
    }

    /// A page of gates (by status, session, policy), from the gate indexes.
    pub async fn list_gates(&self, q: GateQuery) -> Result<GateList> {
        let size = page_size(q.page_size)?;
        let after = page_token(q.page_token.as_deref(), |t| gates::parse_gate_id(t).ok())?;
        let filter = baton_store::gates::GateFilter {
            status: q.status,
            session: q.session,
            policy: q.policy.filter(|p| !p.is_empty()),
        };
        let page = self
            .inner
            .shared
            .store
            .list_gates(filter, after, size)
            .await?;
        Ok(GateList {
            gates: page.gates,
            next_page_token: page.next_after.map(|a| gates::gate_id_text(&a)),
        })
    }

    /// One gate, and the session's recent conversation for the reviewer.
    pub async fn get_gate(&self, gate_id: &str) -> Result<(GateRecord, Vec<baton_types::Message>)> {
        let id = gates::parse_gate_id(gate_id)?;
        let gate = self
            .inner
            .shared
            .store
            .get_gate(id)
            .await?
            .ok_or_else(|| Error::NotFoundDetail(format!("gate {gate_id} not found")))?;
        let context = match self.inner.shared.store.load_meta(gate.session).await? {
            Some(_) => {
                let view = self.get(gate.session).await?;
                let skip = view.messages.len().saturating_sub(20);
                view.messages.into_iter().skip(skip).collect()
            }
            None => Vec::new(),
        };
        Ok((gate, context))
    }

    /// Decide a gate, once. The decision is durable on return; a second
    /// decision gets FAILED_PRECONDITION naming the first.
    pub async fn decide_gate(
        &self,
        gate_id: &str,
        decision: GateDecision,
        reviewer: String,
        reason: String,
    ) -> Result<GateRecord> {
        let id = gates::parse_gate_id(gate_id)?;
        if reviewer.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "reviewer is required: decisions are recorded with who made them".into(),
            ));
        }
        let gate = self
            .inner
            .shared
            .store
            .get_gate(id)
            .await?
            .ok_or_else(|| Error::NotFoundDetail(format!("gate {gate_id} not found")))?;
        if gate.status == GateStatus::Decided {
            return Err(Error::FailedPrecondition(format!(
                "gate {gate_id} was already decided: {} by {}",
                gate.decision, gate.reviewer
            )));
        }
        let gate_id = gate_id.to_string();
        self.ask(gate.session, |reply| SessionMsg::DecideGate {
            gate_id,
            decision,
            reviewer,
            reason,
            reply,
        })
        .await
    }

    /// Gates as they open, escalate and are decided (after they are durable).
    pub fn watch_gates(&self) -> tokio::sync::broadcast::Receiver<GateRecord> {
        self.inner.shared.gate_events.subscribe()
    }

    /// Send a user message. The stream carries the turn's events, from
    /// `TurnAccepted` (durable) to its completion, failure or cancellation.
    pub async fn send(&self, id: SessionId, content: String) -> Result<EventStream> {
        self.send_with(id, content, false).await
    }

    /// Send a user message; with `review`, the turn's final answer is held
    /// for a human decision (an explicit gate) before it is released.
    pub async fn send_with(
        &self,
        id: SessionId,
        content: String,
        review: bool,
    ) -> Result<EventStream> {
        if content.trim().is_empty() {
            return Err(Error::InvalidArgument("content is empty".into()));
        }
        self.send_message(id, baton_types::Message::user(content), review)
            .await
    }

    /// Start a turn with `message`: a user message, or a tool result
    /// (`Role::Tool` with the `tool_call_id` of a call in the conversation;
    /// its content may be empty) — how the OpenAI-compatible front door
    /// continues a conversation whose client ran the tools.
    pub async fn send_message(
        &self,
        id: SessionId,
        message: baton_types::Message,
        review: bool,
    ) -> Result<EventStream> {
        let limits = &self.inner.shared.config.sessions;
        match message.role {
            baton_types::Role::User => {
                if message.content.trim().is_empty() && message.images.is_empty() {
                    return Err(Error::InvalidArgument("content is empty".into()));
                }
            }
            baton_types::Role::Tool => {
                if message.tool_call_id.as_deref().is_none_or(str::is_empty) {
                    return Err(Error::InvalidArgument(
                        "a tool message needs the tool_call_id of the call it answers".into(),
                    ));
                }
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "a turn starts with a user or tool message, not {other:?}"
                )));
            }
        }
        if !message.tool_calls.is_empty() {
            return Err(Error::InvalidArgument(
                "a user or tool message carries no tool calls".into(),
            ));
        }
        check_images(&message, "images", limits)?;
        if message.content.len() > limits.max_message_bytes {
            return Err(Error::ResourceExhausted(format!(
                "content is {} bytes; the limit is {} (sessions.max_message_bytes)",
                message.content.len(),
                limits.max_message_bytes
            )));
        }
        let sub = self
            .ask(id, |reply| SessionMsg::Send {
                message,
                review,
                reply,
            })
            .await?;
        Ok(self.stream(id, sub))
    }

    /// Every event after `after_seq`, then live events until the stream is dropped.
    pub async fn resume(&self, id: SessionId, after_seq: u64) -> Result<EventStream> {
        let sub = self
            .ask_read(id, |reply| SessionMsg::Subscribe { after_seq, reply })
            .await?;
        Ok(self.stream(id, sub))
    }

    fn stream(&self, id: SessionId, sub: Subscription) -> EventStream {
        let store = self.inner.shared.store.clone();
        let ends_with_turn = sub.turn.is_some();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<SessionEvent>>(64);
        tokio::spawn(async move {
            let Subscription {
                history_after,
                history_upto,
                mut rx,
                lagged,
                turn,
            } = sub;
            let mut last = history_after;
            // History first, from the journal, in pages.
            while last < history_upto {
                let page = match store.read_journal(id, last, 512).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if page.is_empty() {
                    break;
                }
                for e in page {
                    if e.seq > history_upto {
                        break;
                    }
                    last = e.seq;
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            }
            // Then live events, which start right after `history_upto`. When
            // the client goes away, drop the receiver at once so the session
            // sees it (an idle session with no listener can passivate).
            loop {
                let e = tokio::select! {
                    _ = tx.closed() => return,
                    e = rx.recv() => match e {
                        Some(e) => e,
                        None => break,
                    },
                };
                if e.seq <= last {
                    continue;
                }
                last = e.seq;
                let end = turn.is_some() && e.ends_turn();
                if tx.send(Ok(e)).await.is_err() || end {
                    return;
                }
            }
            let err = if lagged.load(Ordering::Relaxed) {
                Error::ResourceExhausted(format!(
                    "the client fell too far behind session {id}; resume with after_seq = {last}"
                ))
            } else {
                Error::Unavailable(format!(
                    "session {id} stopped streaming (restart or shutdown); resume with after_seq = {last}"
                ))
            };
            let _ = tx.send(Err(err)).await;
        });
        let events = tokio_stream::wrappers::ReceiverStream::new(rx);
        if !ends_with_turn {
            return Box::pin(events);
        }
        Box::pin(UntilTurnEnd {
            inner: events,
            ended: false,
        })
    }

    /// The session as its actor holds it (rehydrating it if passivated).
    pub async fn get(&self, id: SessionId) -> Result<SessionView> {
        self.ask_read(id, |reply| SessionMsg::Get { reply }).await
    }

    /// A page of sessions, from storage (passivated sessions stay passivated).
    pub async fn list(&self, q: ListQuery) -> Result<SessionList> {
        let size = page_size(q.page_size)?;
        let after = page_token(q.page_token.as_deref(), |t| t.parse::<SessionId>().ok())?;
        let page = self
            .inner
            .shared
            .store
            .list_sessions(q.status, after, size)
            .await?;
        Ok(SessionList {
            sessions: page
                .sessions
                .into_iter()
                .map(|(id, m)| SessionSummary {
                    id,
                    status: m.status,
                    status_reason: m.status_reason,
                    route: m.route,
                    created_at_unix_ms: m.created_at_unix_ms,
                })
                .collect(),
            next_page_token: page.next_after.map(|a| a.to_string()),
        })
    }

    /// Cancel the running turn; returns its number, or `None` if none ran.
    pub async fn cancel(&self, id: SessionId) -> Result<Option<u64>> {
        let r = self.ask(id, |reply| SessionMsg::Cancel { reply }).await;
        if let Ok(turn) = &r {
            self.audit_admin("cancel_turn", Some(id), serde_json::json!({ "turn": turn }));
        }
        r
    }

    /// Delete a session and everything stored for it.
    pub async fn delete(&self, id: SessionId) -> Result<()> {
        let r = self.ask(id, |reply| SessionMsg::Delete { reply }).await;
        if r.is_ok() {
            self.audit_admin("delete_session", Some(id), serde_json::json!({}));
        }
        r
    }

    /// Record an administrative action in the audit trail.
    pub(crate) fn audit_admin(
        &self,
        action: &str,
        session: Option<SessionId>,
        mut data: serde_json::Value,
    ) {
        if let Some(audit) = &self.inner.shared.audit {
            if let Some(o) = data.as_object_mut() {
                o.insert("action".into(), action.into());
            }
            audit.record("admin_action", session, Some("api"), data);
        }
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
        self.inner.shared.router.models().stop().await;
        self.inner.shared.tools.executor.stop().await;
        if let Some(mcp) = &self.inner.shared.tools.mcp {
            mcp.stop().await;
        }
        self.inner.stop.cancel();
        if let Some(sink) = &self.inner.shared.audit {
            let shared = &self.inner.shared;
            let confirmed = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                audit::confirm(sink.as_ref(), &shared.audit_cursor, &shared.store),
            )
            .await;
            if !matches!(confirmed, Ok(Ok(()))) {
                tracing::warn!(
                    "audit trail not confirmed at shutdown; the next start re-appends its last records"
                );
            }
            let _ = shared.store.barrier().await;
        }
        self.inner.shared.store.close();
    }
}

/// A page size: 0 means 50; more than 1,000 is refused.
fn page_size(n: u32) -> Result<usize> {
    match n {
        0 => Ok(50),
        n if n > 1000 => Err(Error::InvalidArgument(format!(
            "page_size {n} exceeds the maximum of 1000"
        ))),
        n => Ok(n as usize),
    }
}

/// A page token this server issued (empty: the first page).
fn page_token<T>(token: Option<&str>, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>> {
    match token {
        None | Some("") => Ok(None),
        Some(t) => parse(t).map(Some).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "page_token {t:?} is not a token this server issued"
            ))
        }),
    }
}

/// FNV-1a: a stable, dependency-free hash to pick a lock stripe.
fn fxhash(b: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as usize
}

#[cfg(test)]
mod gate_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod inspect_tests;
#[cfg(test)]
mod tests;
