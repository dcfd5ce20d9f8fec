//! A run's journal in memory and on disk: [`RunLog`] appends records (with
//! the run's record and indexes when its status changes) and keeps
//! [`Memo`], the fold of the journal that lets a pass skip what is done.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use baton_store::{Batch, Store};
use baton_types::now_unix_ms;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::Result;
use crate::index;
use crate::record::{self, RECORD_VERSION, RunEvent, RunId, RunMeta, RunRecord};

/// What a run's journal says, folded.
#[derive(Debug, Default, Clone)]
pub struct Memo {
    pub started: Option<RunEvent>,
    pub completed: HashMap<String, Value>,
    /// Paths with a `StepStarted` and no outcome yet, with the attempt.
    pub in_flight: HashMap<String, u32>,
    /// Failed attempts per path.
    pub failures: HashMap<String, u32>,
    pub skipped: HashSet<String>,
    pub timers: HashMap<String, u64>,
    /// Signals in arrival order: (seq, name, payload).
    pub signals: Vec<(u64, String, Value)>,
    pub consumed: HashSet<u64>,
    pub children: HashMap<String, RunId>,
    /// Operators' answers to `needs_attention`, by path.
    pub resolved: HashMap<String, String>,
    pub attention: Option<String>,
    pub terminal: Option<RunEvent>,
    pub last_seq: u64,
}

impl Memo {
    pub fn apply(&mut self, seq: u64, e: &RunEvent) {
        self.last_seq = seq;
        match e {
            RunEvent::RunStarted { .. } => self.started = Some(e.clone()),
            RunEvent::StepStarted { path, attempt, .. } => {
                // An operator's `retry` covers one new attempt.
                self.resolved.remove(path);
                self.in_flight.insert(path.clone(), *attempt);
            }
            RunEvent::StepCompleted {
                path,
                output,
                signal_seq,
                ..
            } => {
                self.in_flight.remove(path);
                self.completed.insert(path.clone(), output.clone());
                if let Some(s) = signal_seq {
                    self.consumed.insert(*s);
                }
                if self.attention.as_deref() == Some(path) {
                    self.attention = None;
                }
            }
            RunEvent::StepFailed { path, .. } => {
                self.in_flight.remove(path);
                *self.failures.entry(path.clone()).or_default() += 1;
            }
            RunEvent::StepSkipped { path } => {
                self.skipped.insert(path.clone());
            }
            RunEvent::TimerSet {
                path,
                fire_at_unix_ms,
            } => {
                self.timers.insert(path.clone(), *fire_at_unix_ms);
            }
            RunEvent::SignalReceived { name, payload, .. } => {
                self.signals.push((seq, name.clone(), payload.clone()))
            }
            RunEvent::ChildStarted { path, child } => {
                self.children.insert(path.clone(), *child);
            }
            RunEvent::NeedsAttention { path, .. } => self.attention = Some(path.clone()),
            RunEvent::AttentionResolved { path, action, .. } => {
                self.resolved.insert(path.clone(), action.clone());
                self.attention = None;
            }
            RunEvent::RunCompleted { .. }
            | RunEvent::RunFailed { .. }
            | RunEvent::RunCancelled { .. } => self.terminal = Some(e.clone()),
        }
    }

    /// The first signal named `name` no step has consumed.
    pub fn next_signal(&self, name: &str) -> Option<(u64, Value)> {
        self.signals
            .iter()
            .find(|(seq, n, _)| n == name && !self.consumed.contains(seq))
            .map(|(seq, _, p)| (*seq, p.clone()))
    }
}

/// Live watchers of runs, by run.
#[derive(Debug, Default)]
pub struct Watchers {
    map: Mutex<HashMap<RunId, broadcast::Sender<RunRecord>>>,
}

impl Watchers {
    pub fn subscribe(&self, run: RunId) -> broadcast::Receiver<RunRecord> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(run)
            .or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }

    fn publish(&self, run: RunId, rec: &RunRecord) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = m.get(&run) {
            if tx.send(rec.clone()).is_err() {
                // Nobody listens any more.
                m.remove(&run);
            } else if rec.event.is_terminal() {
                m.remove(&run);
            }
        }
    }
}

struct Inner {
    memo: Memo,
    meta: RunMeta,
}

/// One run's journal writer. Appends are serialized per run (seq order)
/// and share group commits with every other writer of the store.
pub struct RunLog {
    pub run: RunId,
    /// None: a scratch log (a replay), held in memory only.
    store: Option<Store>,
    /// Where run records are audited (`flow_run`).
    audit: Option<baton_runtime::RuntimeHandle>,
    watchers: Arc<Watchers>,
    inner: tokio::sync::Mutex<Inner>,
}

impl std::fmt::Debug for RunLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLog").field("run", &self.run).finish()
    }
}

impl RunLog {
    /// The log of a run whose journal folds into `memo` and whose record is `meta`.
    pub fn new(
        store: Store,
        watchers: Arc<Watchers>,
        audit: Option<baton_runtime::RuntimeHandle>,
        meta: RunMeta,
        memo: Memo,
    ) -> RunLog {
        RunLog {
            run: meta.id,
            store: Some(store),
            audit,
            watchers,
            inner: tokio::sync::Mutex::new(Inner { memo, meta }),
        }
    }

    /// A log in memory only, written nowhere, audited to no one: a replay's.
    pub fn scratch(meta: RunMeta, memo: Memo) -> RunLog {
        RunLog {
            run: meta.id,
            store: None,
            audit: None,
            watchers: Arc::new(Watchers::default()),
            inner: tokio::sync::Mutex::new(Inner { memo, meta }),
        }
    }

    /// Load a run's record and fold its journal.
    pub async fn load(store: &Store, run: RunId) -> Result<Option<(RunMeta, Memo)>> {
        let Some(bytes) = store.load_run(run.bytes()).await? else {
            return Ok(None);
        };
        let meta: RunMeta = record::decode("run record", &bytes)?;
        let mut memo = Memo::default();
        let mut after = 0;
        loop {
            let page = store.read_run_journal(run.bytes(), after, 1024).await?;
            if page.is_empty() {
                break;
            }
            for (seq, bytes) in page {
                let rec: RunRecord = record::decode("run journal record", &bytes)?;
                memo.apply(seq, &rec.event);
                after = seq;
            }
        }
        Ok(Some((meta, memo)))
    }

    /// A copy of the fold.
    pub async fn memo(&self) -> Memo {
        self.inner.lock().await.memo.clone()
    }

    pub async fn meta(&self) -> RunMeta {
        self.inner.lock().await.meta.clone()
    }

    /// Read the fold under the lock.
    pub async fn with_memo<T>(&self, f: impl FnOnce(&Memo) -> T) -> T {
        f(&self.inner.lock().await.memo)
    }

    /// Change the run's record (and its indexes) without a journal record:
    /// a wake-up or a passivation.
    pub async fn update_meta(&self, update: impl FnOnce(&mut RunMeta)) -> Result<()> {
        let mut g = self.inner.lock().await;
        let before = g.meta.clone();
        let mut meta = g.meta.clone();
        update(&mut meta);
        if meta == before {
            return Ok(());
        }
        meta.updated_at_unix_ms = now_unix_ms();
        meta.last_seq = g.memo.last_seq;
        if let Some(store) = &self.store {
            let mut batch = Batch::new();
            index::update(&mut batch, Some(&before), &meta);
            batch.put_run(&self.run.bytes(), record::encode(&meta));
            store.write(batch).await?;
        }
        g.meta = meta;
        Ok(())
    }

    /// Append `event`; `sync`: durable before this returns.
    pub async fn append(&self, event: RunEvent, sync: bool) -> Result<u64> {
        self.append_with(event, sync, |_| {}).await
    }

    /// Append `event` and change the run's record with `update` in the same
    /// atomic write (its indexes follow).
    pub async fn append_with(
        &self,
        event: RunEvent,
        sync: bool,
        update: impl FnOnce(&mut RunMeta),
    ) -> Result<u64> {
        let mut g = self.inner.lock().await;
        let seq = g.memo.last_seq + 1;
        let now = now_unix_ms();
        let rec = RunRecord {
            v: RECORD_VERSION,
            seq,
            at_unix_ms: now,
            event,
        };
        let mut batch = if sync {
            Batch::new()
        } else {
            Batch::unsynced()
        };
        batch.append_run(&self.run.bytes(), seq, record::encode(&rec));
        let before = g.meta.clone();
        let mut meta = g.meta.clone();
        update(&mut meta);
        let changed = meta != before;
        if changed {
            meta.updated_at_unix_ms = now;
            meta.last_seq = seq;
            index::update(&mut batch, Some(&before), &meta);
            batch.put_run(&self.run.bytes(), record::encode(&meta));
        }
        if let Some(store) = &self.store {
            store.write(batch).await?;
        }
        g.memo.apply(seq, &rec.event);
        if let Some(rt) = &self.audit {
            audit(rt, &meta, &rec);
        }
        if changed {
            g.meta = meta;
        }
        self.watchers.publish(self.run, &rec);
        Ok(seq)
    }
}

/// Report a run journal record to the audit trail as `flow_run`: which
/// run, flow, seq and record, the step's path and who acted — not the
/// step's data, which stays in the run's journal.
pub fn audit(rt: &baton_runtime::RuntimeHandle, meta: &RunMeta, rec: &RunRecord) {
    let mut data = serde_json::json!({
        "run_id": meta.id.to_string(),
        "flow": meta.flow,
        "version": meta.version,
        "tenant": meta.tenant,
        "seq": rec.seq,
        "event": rec.event.type_name(),
    });
    let (path, actor) = match &rec.event {
        RunEvent::RunStarted {
            principal, trigger, ..
        } => {
            data["trigger"] = trigger.clone().into();
            (None, principal.label())
        }
        RunEvent::StepStarted { path, attempt, .. } => {
            data["attempt"] = (*attempt).into();
            (Some(path), "runtime".to_string())
        }
        RunEvent::StepCompleted { path, .. }
        | RunEvent::StepSkipped { path }
        | RunEvent::TimerSet { path, .. }
        | RunEvent::ChildStarted { path, .. } => (Some(path), "runtime".to_string()),
        RunEvent::StepFailed { path, error, .. } | RunEvent::RunFailed { path, error } => {
            data["error"] = error.clone().into();
            (Some(path), "runtime".to_string())
        }
        RunEvent::NeedsAttention { path, reason } => {
            data["reason"] = reason.clone().into();
            (Some(path), "runtime".to_string())
        }
        RunEvent::SignalReceived { name, by, .. } => {
            data["signal"] = name.clone().into();
            (None, by.clone())
        }
        RunEvent::AttentionResolved { path, action, by } => {
            data["action"] = action.clone().into();
            (Some(path), by.clone())
        }
        RunEvent::RunCancelled { by, reason } => {
            data["reason"] = reason.clone().into();
            (None, by.clone())
        }
        RunEvent::RunCompleted { .. } => (None, "runtime".to_string()),
    };
    if let Some(p) = path {
        data["path"] = p.clone().into();
    }
    rt.audit_record("flow_run", &actor, data);
}
