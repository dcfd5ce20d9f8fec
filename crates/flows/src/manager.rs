//! [`Flows`]: the flows service — the catalog, the runs' supervisor, the
//! timer and reload loops, and the API (start, get, list, watch, signal,
//! cancel) that gRPC, the CLI, triggers and embedders use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use baton_runtime::RuntimeHandle;
use baton_store::Batch;
use baton_types::{Principal, now_unix_ms};
use futures::Stream;
use futures::future::BoxFuture;
use ractor::{Actor, ActorRef, RpcReplyPort};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::actor::{LiveRun, RunMsg, RunSupervisor, SupMsg};
use crate::catalog::{Catalog, ReloadReport};
use crate::config::FlowsConfig;
use crate::def::{Flow, check_name};
use crate::deps::{Deps, StartRun, Started, Starter};
use crate::error::{Error, Result};
use crate::index;
use crate::log::{Memo, Watchers};
use crate::record::{self, RECORD_VERSION, RunEvent, RunId, RunMeta, RunRecord, RunStatus};
use crate::replay::ReplayReport;
use crate::views::{FlowInfo, RunPage, RunQuery, RunView};

/// Longest idempotency key or delivery id, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest run input or signal payload, as JSON text.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// How long an API call waits for a run's actor.
const ACTOR_TIMEOUT: Duration = Duration::from_secs(30);
/// Lock stripes for starts with an idempotency key or delivery id.
const STRIPES: usize = 64;

struct Inner {
    deps: Arc<Deps>,
    catalog: Catalog,
    hooks: HashMap<String, crate::webhook::Hook>,
    sup: ActorRef<SupMsg>,
    /// Unfinished runs per flow.
    active: Mutex<HashMap<String, u32>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The flows service. Cheap to clone.
#[derive(Clone)]
pub struct Flows {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows").finish_non_exhaustive()
    }
}

fn fnv1a(b: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as usize
}

fn visible(by: &Principal, meta: &RunMeta) -> bool {
    by.is_admin() || meta.tenant == by.tenant
}

fn not_found(id: RunId) -> Error {
    Error::NotFound(format!("run {id} not found"))
}

impl Flows {
    /// Start the service over `rt`'s store: load the definitions (refusing
    /// to start on one that does not check), recover the runs that were
    /// running, and start the timer and reload loops.
    ///
    /// Where nodes own sessions one by one (`[cluster] ownership =
    /// "sessions"`), one node at a time runs the flows: start them with
    /// [`crate::Lead::contend`] there, which calls this on the node that
    /// holds the flows lease; this refuses.
    pub async fn start(rt: RuntimeHandle, config: FlowsConfig, code: Vec<Flow>) -> Result<Flows> {
        if rt.store().claims() {
            return Err(Error::FailedPrecondition(
                "nodes own sessions one by one here (cluster.ownership = \"sessions\"): one \
                 node at a time runs the flows, under the flows lease; start them with \
                 baton_flows::Lead::contend"
                    .into(),
            ));
        }
        Self::start_held(rt, config, code).await
    }

    /// [`Flows::start`] where this node may run the flows (it holds the
    /// flows lease, or one node owns everything).
    pub(crate) async fn start_held(
        rt: RuntimeHandle,
        config: FlowsConfig,
        code: Vec<Flow>,
    ) -> Result<Flows> {
        let crate::prepare::Prepared {
            catalog,
            secrets,
            hooks,
            schedules,
            sinks,
            consumers,
        } = crate::prepare::prepare(&config, code)?;
        let vars =
            serde_json::to_value(&config.vars).map_err(|e| Error::Internal(e.to_string()))?;
        let deps = Arc::new(Deps {
            store: rt.store().clone(),
            rt,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| Error::Internal(format!("http client: {e}")))?,
            config,
            secrets,
            watchers: Arc::new(Watchers::default()),
            starter: OnceLock::new(),
            vars,
            queues: sinks,
            compiled: Mutex::new(HashMap::new()),
            stopping: Default::default(),
        });
        for f in catalog.list() {
            deps.remember(f);
        }
        let (sup, _) = Actor::spawn(None, RunSupervisor, deps.clone())
            .await
            .map_err(|e| Error::Internal(format!("cannot start the runs' supervisor: {e}")))?;
        let inner = Arc::new(Inner {
            deps: deps.clone(),
            catalog,
            hooks,
            sup,
            active: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            tasks: Mutex::new(Vec::new()),
        });
        let weak: std::sync::Weak<dyn Starter> =
            Arc::downgrade(&inner) as std::sync::Weak<dyn Starter>;
        let _ = deps.starter.set(weak);
        let flows = Flows { inner };
        if let Err(e) = flows.recover().await {
            flows.inner.sup.stop(None);
            return Err(e);
        }
        flows.spawn_loops();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(wake_on_gate_decisions(
            deps.rt.watch_gates(),
            flows.inner.sup.clone(),
        )));
        tasks.push(tokio::spawn(crate::schedule::run(deps.clone(), schedules)));
        for (q, input) in consumers {
            tasks.push(tokio::spawn(crate::queue::consume_redis(
                deps.clone(),
                q,
                input,
            )));
        }
        flows
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tasks);
        Ok(flows)
    }

    /// A webhook delivery to `POST /hooks/<name>`: checked (signature,
    /// time, delivery id) and turned into a run — the same run for a
    /// delivery id seen before. Nothing starts when it does not check.
    pub async fn webhook(
        &self,
        name: &str,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<Started> {
        let hook = self
            .inner
            .hooks
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no webhook {name:?}")))?;
        let now = now_unix_ms() / 1000;
        let d = hook.verify(headers, body, now)?;
        let by = crate::schedule::trigger_principal("webhook", name, &hook.config.tenant);
        self.inner
            .start_run(
                StartRun {
                    flow: hook.config.flow.clone(),
                    input: d.input,
                    idempotency_key: None,
                    trigger: format!("webhook:{name}"),
                    parent: None,
                    delivery: Some((format!("webhook:{name}"), d.id)),
                },
                &by,
            )
            .await
    }

    /// Count unfinished runs and activate those that were running.
    async fn recover(&self) -> Result<()> {
        let store = &self.inner.deps.store;
        let mut active: HashMap<String, u32> = HashMap::new();
        let mut running = Vec::new();
        for status in [
            RunStatus::Running,
            RunStatus::Waiting,
            RunStatus::NeedsAttention,
        ] {
            let prefix = index::status_prefix(status);
            let mut after = None;
            loop {
                let page = store
                    .scan_run_index(prefix.clone(), after.clone(), 4096)
                    .await?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (k, v) in page {
                    *active
                        .entry(String::from_utf8_lossy(&v).into_owned())
                        .or_default() += 1;
                    if status == RunStatus::Running
                        && let Some(id) = RunId::from_bytes(&k[prefix.len()..])
                    {
                        running.push(id);
                    }
                }
            }
        }
        *self.inner.active.lock().unwrap_or_else(|p| p.into_inner()) = active;
        if !running.is_empty() {
            tracing::info!(runs = running.len(), "recovering flow runs");
        }
        for id in running {
            let _ = self.inner.sup.cast(SupMsg::Activate(id));
        }
        Ok(())
    }

    fn spawn_loops(&self) {
        let mut tasks = Vec::new();
        let weak = Arc::downgrade(&self.inner);
        let poll = Duration::from_millis(self.inner.deps.config.timer_poll_ms.max(10));
        tasks.push(tokio::spawn(async move {
            let mut recent: HashMap<RunId, u64> = HashMap::new();
            loop {
                tokio::time::sleep(poll).await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = fire_timers(&inner, &mut recent).await {
                    tracing::warn!(error = %e, "cannot read the flow timers");
                }
            }
        }));
        let interval = self.inner.deps.config.reload_interval_ms;
        if self.inner.deps.config.dir.is_some() && interval > 0 {
            let weak = Arc::downgrade(&self.inner);
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(interval)).await;
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.catalog.changed() {
                        match reload(&inner) {
                            Ok(r) => tracing::info!(changed = ?r.changed, removed = ?r.removed, errors = ?r.errors, "flow definitions reloaded"),
                            Err(e) => tracing::warn!(error = %e, "cannot reload the flow definitions"),
                        }
                    }
                }
            }));
        }
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tasks);
    }

    /// Stop the loops and every run's actor (runs resume at the next start).
    pub async fn shutdown(&self) {
        // New runs are refused from here on (their actors would not start).
        self.inner
            .deps
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        let _ = self
            .inner
            .sup
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
    }

    /// Activate run `id` (one a gone node left claimed).
    pub(crate) fn activate(&self, id: RunId) {
        let _ = self.inner.sup.cast(SupMsg::Activate(id));
    }

    /// Read the definitions directory again now.
    pub fn reload(&self) -> Result<ReloadReport> {
        reload(&self.inner)
    }

    /// The current flows.
    pub fn list_flows(&self) -> Vec<FlowInfo> {
        let active = self
            .inner
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.inner
            .catalog
            .list()
            .into_iter()
            .map(|f| FlowInfo {
                active_runs: active.get(&f.name).copied().unwrap_or(0),
                name: f.name.clone(),
                version: f.version.clone(),
                description: f.description.clone(),
                steps: f.steps.len(),
                max_active_runs: f.max_active_runs,
            })
            .collect()
    }

    /// The current version of flow `name`.
    pub fn flow(&self, name: &str) -> Option<Arc<Flow>> {
        self.inner.catalog.get(name)
    }

    /// Errors of the last reload of the definitions directory.
    pub fn definition_errors(&self) -> Vec<String> {
        self.inner.catalog.errors()
    }

    /// Start a run of `req.flow` as `by` (durable when this returns).
    pub async fn start_run(&self, req: StartRun, by: &Principal) -> Result<Started> {
        self.inner.start_run(req, by).await
    }

    /// A run's record.
    pub async fn meta(&self, id: RunId, by: &Principal) -> Result<RunMeta> {
        let bytes = self
            .inner
            .deps
            .store
            .load_run(id.bytes())
            .await?
            .ok_or_else(|| not_found(id))?;
        let meta: RunMeta = record::decode("run record", &bytes)?;
        if !visible(by, &meta) {
            return Err(not_found(id));
        }
        Ok(meta)
    }

    /// A run's state, at the end or (time travel) as it was at `at_seq`.
    pub async fn get_run(&self, id: RunId, at_seq: Option<u64>, by: &Principal) -> Result<RunView> {
        let meta = self.meta(id, by).await?;
        let store = &self.inner.deps.store;
        let mut memo = Memo::default();
        let mut after = 0;
        let upto = at_seq.unwrap_or(u64::MAX);
        'read: loop {
            let page = store.read_run_journal(id.bytes(), after, 1024).await?;
            if page.is_empty() {
                break;
            }
            for (seq, bytes) in page {
                if seq > upto {
                    break 'read;
                }
                let rec: RunRecord = record::decode("run journal record", &bytes)?;
                memo.apply(seq, &rec.event);
                after = seq;
            }
        }
        if let Some(s) = at_seq
            && s > memo.last_seq
        {
            return Err(Error::InvalidArgument(format!(
                "at_seq {s}: run {id} has {} records",
                memo.last_seq
            )));
        }
        let status_at_seq = match (&memo.terminal, at_seq) {
            (_, None) => meta.status,
            (Some(RunEvent::RunCompleted { .. }), _) => RunStatus::Completed,
            (Some(RunEvent::RunFailed { .. }), _) => RunStatus::Failed,
            (Some(_), _) => RunStatus::Cancelled,
            (None, _) if memo.attention.is_some() => RunStatus::NeedsAttention,
            (None, _) => RunStatus::Running,
        };
        let input = match &memo.started {
            Some(RunEvent::RunStarted { input, .. }) => input.clone(),
            _ => Value::Null,
        };
        Ok(RunView {
            seq: memo.last_seq,
            input,
            steps: memo.completed.into_iter().collect(),
            in_flight: memo.in_flight.into_iter().collect(),
            timers: memo
                .timers
                .into_iter()
                .filter(|(p, _)| !memo.skipped.contains(p))
                .collect(),
            pending_signals: memo
                .signals
                .iter()
                .filter(|(seq, _, _)| !memo.consumed.contains(seq))
                .map(|(seq, n, _)| (*seq, n.clone()))
                .collect(),
            status_at_seq,
            meta,
        })
    }

    /// Journal records of a run after `after_seq` (at most `limit`).
    pub async fn journal(
        &self,
        id: RunId,
        after_seq: u64,
        limit: usize,
        by: &Principal,
    ) -> Result<Vec<RunRecord>> {
        self.meta(id, by).await?;
        self.read_journal(id, after_seq, limit).await
    }

    /// Journal records of a run after `after_seq`, unchecked: the caller
    /// has checked the run is the principal's.
    async fn read_journal(
        &self,
        id: RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunRecord>> {
        self.inner
            .deps
            .store
            .read_run_journal(id.bytes(), after_seq, limit)
            .await?
            .into_iter()
            .map(|(_, b)| record::decode("run journal record", &b))
            .collect()
    }

    /// Replay a run (see [`crate::replay`]): over the version it ran, or
    /// with `current` over the flow's current version.
    pub async fn replay(&self, id: RunId, current: bool, by: &Principal) -> Result<ReplayReport> {
        let meta = self.meta(id, by).await?;
        let mut journal: Vec<RunRecord> = Vec::new();
        loop {
            let after = journal.last().map_or(0, |r| r.seq);
            let page = self.read_journal(id, after, 1024).await?;
            if page.is_empty() {
                break;
            }
            journal.extend(page);
        }
        let Some(RunEvent::RunStarted {
            flow,
            version,
            definition,
            principal,
            ..
        }) = journal.first().map(|r| &r.event)
        else {
            return Err(Error::Internal(format!(
                "run {id} has no run_started record"
            )));
        };
        let flow = if current {
            self.inner.catalog.get(&meta.flow).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "flow {:?} is not loaded now: replay run {id} over the version it ran",
                    meta.flow
                ))
            })?
        } else {
            self.inner.deps.flow_of(flow, version, definition)?
        };
        let principal = principal.clone();
        Ok(crate::replay::replay(self.inner.deps.clone(), flow, meta, principal, &journal).await)
    }

    /// A page of the caller's tenant's runs, oldest first.
    pub async fn list_runs(&self, q: RunQuery, by: &Principal) -> Result<RunPage> {
        let size = match q.page_size {
            0 => 50,
            n if n > 1000 => {
                return Err(Error::InvalidArgument(format!(
                    "page_size {n}: at most 1000"
                )));
            }
            n => n as usize,
        };
        let prefix = index::tenant_prefix(&by.tenant);
        let mut after = match q.page_token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => {
                let id: RunId = t.parse().map_err(|_| {
                    Error::InvalidArgument(format!("page_token {t:?} is not valid"))
                })?;
                Some(index::tenant_key(&by.tenant, id))
            }
            None => None,
        };
        let store = &self.inner.deps.store;
        let mut runs = Vec::new();
        // Bounded work per page: a filter that matches little returns a
        // short page with a token to go on.
        let mut budget = size * 20;
        loop {
            let page = store
                .scan_run_index(prefix.clone(), after.clone(), size.min(budget).max(1))
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(RunPage {
                    runs,
                    next_page_token: None,
                });
            };
            after = Some(last.clone());
            budget = budget.saturating_sub(page.len());
            for (k, _) in page {
                let Some(id) = RunId::from_bytes(&k[prefix.len()..]) else {
                    continue;
                };
                let Some(bytes) = store.load_run(id.bytes()).await? else {
                    continue;
                };
                let meta: RunMeta = record::decode("run record", &bytes)?;
                if q.flow.as_ref().is_some_and(|f| *f != meta.flow)
                    || q.status.is_some_and(|s| s != meta.status)
                {
                    continue;
                }
                runs.push(meta);
                if runs.len() >= size {
                    return Ok(RunPage {
                        next_page_token: Some(id.to_string()),
                        runs,
                    });
                }
            }
            if budget == 0 {
                let token = after
                    .as_ref()
                    .and_then(|k| RunId::from_bytes(&k[prefix.len()..]))
                    .map(|id| id.to_string());
                return Ok(RunPage {
                    runs,
                    next_page_token: token,
                });
            }
        }
    }

    /// The run's records after `after_seq`, then live ones, ending after
    /// the run's last record. An `Err` item ends it (resume from the last seq seen).
    pub async fn watch(
        &self,
        id: RunId,
        after_seq: u64,
        by: &Principal,
    ) -> Result<impl Stream<Item = Result<RunRecord>> + Send + 'static> {
        self.meta(id, by).await?;
        let mut live = self.inner.deps.watchers.subscribe(id);
        let store = self.inner.deps.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RunRecord>>(64);
        tokio::spawn(async move {
            let mut last = after_seq;
            loop {
                let page = match store.read_run_journal(id.bytes(), last, 256).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if page.is_empty() {
                    break;
                }
                for (seq, bytes) in page {
                    let rec = record::decode::<RunRecord>("run journal record", &bytes);
                    let end = rec.as_ref().map(|r| r.event.is_terminal()).unwrap_or(true);
                    if tx.send(rec).await.is_err() || end {
                        return;
                    }
                    last = seq;
                }
            }
            loop {
                match live.recv().await {
                    Ok(rec) if rec.seq <= last => {}
                    Ok(rec) => {
                        last = rec.seq;
                        let end = rec.event.is_terminal();
                        if tx.send(Ok(rec)).await.is_err() || end {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Err(Error::ResourceExhausted {
                                message: format!(
                                    "the watcher fell behind; resume after seq {last}"
                                ),
                                retry_after_secs: 0,
                            }))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    async fn ask<T: Send + 'static>(
        &self,
        id: RunId,
        msg: impl FnOnce(RpcReplyPort<Result<T>>) -> RunMsg,
    ) -> Result<T> {
        let (tx, rx) = ractor::concurrency::oneshot();
        self.inner
            .sup
            .cast(SupMsg::Route(id, msg(tx.into())))
            .map_err(|_| Error::Internal("the flows service is stopping".into()))?;
        match tokio::time::timeout(ACTOR_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Internal(format!(
                "run {id}'s actor stopped before answering"
            ))),
            Err(_) => Err(Error::Internal(format!(
                "run {id}'s actor did not answer in time"
            ))),
        }
    }

    /// Deliver signal `name` to a run; a `wait` step on it takes it (now,
    /// or when it reaches one). Returns the signal's seq.
    pub async fn signal(
        &self,
        id: RunId,
        name: &str,
        payload: Value,
        by: &Principal,
    ) -> Result<u64> {
        check_name(name).map_err(|p| Error::InvalidArgument(format!("name: {p}")))?;
        let size = payload.to_string().len();
        if size > MAX_PAYLOAD_BYTES {
            return Err(Error::InvalidArgument(format!(
                "payload: {size} bytes; the limit is {MAX_PAYLOAD_BYTES}"
            )));
        }
        self.meta(id, by).await?;
        let name = name.to_string();
        let label = by.label();
        self.ask(id, |reply| RunMsg::Signal {
            name,
            payload,
            by: label,
            reply,
        })
        .await
    }

    /// Answer a run that needs attention: `retry` the step or `skip` it.
    pub async fn resolve(&self, id: RunId, action: &str, by: &Principal) -> Result<()> {
        self.meta(id, by).await?;
        let action = action.to_string();
        let label = by.label();
        self.ask(id, |reply| RunMsg::Resolve {
            action,
            by: label,
            reply,
        })
        .await
    }

    /// Cancel a run: its pass stops where it is; it ends `cancelled`.
    pub async fn cancel(&self, id: RunId, reason: &str, by: &Principal) -> Result<()> {
        self.meta(id, by).await?;
        let reason = reason.to_string();
        let label = by.label();
        self.ask(id, |reply| RunMsg::Cancel {
            by: label,
            reason,
            reply,
        })
        .await
    }

    /// The runs whose actors are in memory (`baton inspect actors`).
    pub async fn live_runs(&self) -> Result<Vec<LiveRun>> {
        let (tx, rx) = ractor::concurrency::oneshot();
        self.inner
            .sup
            .cast(SupMsg::Live(tx.into()))
            .map_err(|_| Error::Internal("the flows service is stopping".into()))?;
        rx.await
            .map_err(|_| Error::Internal("the runs' supervisor stopped".into()))
    }
}

fn reload(inner: &Inner) -> Result<ReloadReport> {
    let r = inner.catalog.reload()?;
    for f in inner.catalog.list() {
        inner.deps.remember(f);
    }
    Ok(r)
}

/// Wake the run of every flow gate decided (its `gate` step then takes
/// the decision). A wake-up missed (a lagging subscriber) is covered by the
/// step's own recheck.
async fn wake_on_gate_decisions(
    mut gates: tokio::sync::broadcast::Receiver<baton_types::GateRecord>,
    sup: ActorRef<SupMsg>,
) {
    loop {
        match gates.recv().await {
            Ok(g) if g.outcome.is_some() && g.kind == baton_types::GateKind::Flow => {
                if let Some(run) = crate::effects::gate_run(&g.policy)
                    && sup.cast(SupMsg::Activate(run)).is_err()
                {
                    return;
                }
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// Activate the runs whose timers are due.
async fn fire_timers(inner: &Inner, recent: &mut HashMap<RunId, u64>) -> Result<()> {
    let now = now_unix_ms();
    recent.retain(|_, at| now.saturating_sub(*at) < 5_000);
    let page = inner
        .deps
        .store
        .scan_run_index(
            index::TIMER_PREFIX.to_vec(),
            None,
            inner.deps.config.max_activations.max(1),
        )
        .await?;
    for (k, _) in page {
        let Some((at, run)) = index::parse_timer_key(&k) else {
            continue;
        };
        if at > now {
            break;
        }
        if recent.contains_key(&run) {
            continue;
        }
        recent.insert(run, now);
        let _ = inner.sup.cast(SupMsg::Activate(run));
    }
    // Wake-ups other nodes asked for (a flow gate decided there), where
    // nodes own sessions one by one: elsewhere no other node runs.
    let store = &inner.deps.store;
    if !store.claims() {
        return Ok(());
    }
    let wakes = store
        .scan_run_index(index::WAKE_PREFIX.to_vec(), None, 256)
        .await?;
    if !wakes.is_empty() {
        let mut batch = Batch::new();
        for (k, _) in &wakes {
            batch.delete_run_index(k.clone());
        }
        store.write(batch).await?;
        for (k, _) in wakes {
            if let Some(run) = RunId::from_bytes(&k[index::WAKE_PREFIX.len()..]) {
                let _ = inner.sup.cast(SupMsg::Activate(run));
            }
        }
    }
    Ok(())
}

impl Inner {
    async fn start_run(&self, req: StartRun, by: &Principal) -> Result<Started> {
        if self.deps.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Unavailable(
                "the flows are stopping on this node; retry".into(),
            ));
        }
        let flow = self
            .catalog
            .get(&req.flow)
            .ok_or_else(|| Error::NotFound(format!("flow {:?} not found", req.flow)))?;
        let size = req.input.to_string().len();
        if size > MAX_PAYLOAD_BYTES {
            return Err(Error::InvalidArgument(format!(
                "input: {size} bytes; the limit is {MAX_PAYLOAD_BYTES}"
            )));
        }
        for (what, v) in [
            ("idempotency_key", req.idempotency_key.as_deref()),
            ("delivery id", req.delivery.as_ref().map(|d| d.1.as_str())),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > MAX_KEY_BYTES)
            {
                return Err(Error::InvalidArgument(format!(
                    "{what}: 1 to {MAX_KEY_BYTES} bytes"
                )));
            }
        }
        flow.check_input(&req.input)?;
        let store = &self.deps.store;
        let key_index = req
            .idempotency_key
            .as_ref()
            .map(|k| index::idempotency_key(&by.tenant, k));
        let delivery_index = req
            .delivery
            .as_ref()
            .map(|(src, id)| index::delivery_key(src, id));
        let _guard = match key_index.as_ref().or(delivery_index.as_ref()) {
            Some(k) => Some(self.stripes[fnv1a(k) % STRIPES].lock().await),
            None => None,
        };
        for k in [&key_index, &delivery_index].into_iter().flatten() {
            if let Some(existing) = store.get_run_index(k.clone()).await?
                && let Some(id) = RunId::from_bytes(&existing)
            {
                if let Some(bytes) = store.load_run(id.bytes()).await? {
                    let meta: RunMeta = record::decode("run record", &bytes)?;
                    if meta.flow != req.flow {
                        return Err(Error::FailedPrecondition(format!(
                            "idempotency key already started run {id} of flow {:?}, not {:?}",
                            meta.flow, req.flow
                        )));
                    }
                }
                return Ok(Started { id, created: false });
            }
        }
        {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let n = active.entry(flow.name.clone()).or_default();
            if let Some(limit) = flow.max_active_runs
                && *n >= limit
            {
                return Err(Error::ResourceExhausted {
                    message: format!(
                        "flow {:?} has {n} unfinished runs; its limit is {limit} (max_active_runs)",
                        flow.name
                    ),
                    retry_after_secs: 1,
                });
            }
            *n += 1;
        }
        let id = RunId::new();
        let now = now_unix_ms();
        let trigger = if req.trigger.is_empty() {
            "embedded".to_string()
        } else {
            req.trigger.clone()
        };
        let meta = RunMeta {
            v: RECORD_VERSION,
            id,
            flow: flow.name.clone(),
            version: flow.version.clone(),
            tenant: by.tenant.clone(),
            by: by.label(),
            status: RunStatus::Running,
            reason: String::new(),
            created_at_unix_ms: now,
            updated_at_unix_ms: now,
            wake_at_unix_ms: 0,
            idempotency_key: req.idempotency_key.clone(),
            parent: req.parent.clone(),
            trigger: trigger.clone(),
            last_seq: 1,
            output: Value::Null,
        };
        let started = RunRecord {
            v: RECORD_VERSION,
            seq: 1,
            at_unix_ms: now,
            event: RunEvent::RunStarted {
                flow: flow.name.clone(),
                version: flow.version.clone(),
                definition: serde_json::to_value(&*flow.spec)
                    .map_err(|e| Error::Internal(e.to_string()))?,
                input: req.input,
                principal: by.clone(),
                trigger,
            },
        };
        let mut batch = Batch::new();
        batch.append_run(&id.bytes(), 1, record::encode(&started));
        batch.put_run(&id.bytes(), record::encode(&meta));
        index::update(&mut batch, None, &meta);
        if let Some(k) = delivery_index {
            batch.put_run_index(k, id.bytes().to_vec());
        }
        // Where nodes own sessions one by one, the new run is this node's
        // before its first record is written (its actor claims it again).
        let claimed = match store.claim_run(id.bytes()).await {
            Ok(baton_store::owners::Claim::Ours) => Ok(()),
            Ok(baton_store::owners::Claim::Owned(o)) => Err(Error::Internal(format!(
                "new run {id} is claimed by node {} already",
                o.node_id
            ))),
            Err(e) => Err(e.into()),
        };
        let written = match claimed {
            Ok(()) => store.write(batch).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            self.ended(&flow.name);
            let _ = store.release_run(id.bytes()).await;
            return Err(e);
        }
        crate::log::audit(&self.deps.rt, &meta, &started);
        let _ = self.sup.cast(SupMsg::Activate(id));
        Ok(Started { id, created: true })
    }
}

impl Starter for Inner {
    fn start(&self, req: StartRun, by: Principal) -> BoxFuture<'_, Result<Started>> {
        Box::pin(async move { self.start_run(req, &by).await })
    }

    fn wake(&self, run: RunId) {
        let _ = self.sup.cast(SupMsg::Activate(run));
    }

    fn ended(&self, flow: &str) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = active.get_mut(flow) {
            *n = n.saturating_sub(1);
        }
    }

    fn not_ended(&self, flow: &str) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        // As `ended`: a flow without an entry is not counted.
        if let Some(n) = active.get_mut(flow) {
            *n += 1;
        }
    }
}
