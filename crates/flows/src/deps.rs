//! What runs share: the runtime, the store, the HTTP client, config and
//! secrets, and a way to start other runs (for `call` and `emit`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use baton_runtime::RuntimeHandle;
use baton_store::Store;
use baton_types::Principal;
use futures::future::BoxFuture;
use secrecy::SecretString;
use serde_json::Value;

use crate::config::FlowsConfig;
use crate::def::Flow;
use crate::error::Result;
use crate::log::Watchers;
use crate::record::RunId;

/// A request to start a run.
#[derive(Debug, Clone, Default)]
pub struct StartRun {
    pub flow: String,
    pub input: Value,
    /// The same key (in the same tenant) always yields the same run.
    pub idempotency_key: Option<String>,
    /// How it was started (see [`crate::RunMeta::trigger`]); empty: `embedded`.
    pub trigger: String,
    /// Set by `call` steps.
    pub parent: Option<(RunId, String)>,
    /// A trigger's delivery id (`source`, `id`): at most one run each.
    pub delivery: Option<(String, String)>,
}

/// The outcome of starting a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub id: RunId,
    /// False when an earlier request with the same key (or delivery) started it.
    pub created: bool,
}

/// Starting runs from inside a run.
pub trait Starter: Send + Sync {
    fn start(&self, req: StartRun, by: Principal) -> BoxFuture<'_, Result<Started>>;
    /// Wake a passivated run (a child finished).
    fn wake(&self, run: RunId);
    /// A run of `flow` is ending (it no longer counts against the flow's
    /// limit). Called before its last record is written, so that whoever
    /// reads the run as ended finds its slot free.
    fn ended(&self, flow: &str);
    /// The last record of a run of `flow` could not be written: it counts
    /// against the limit again.
    fn not_ended(&self, flow: &str);
}

/// Shared by every run.
pub struct Deps {
    pub rt: RuntimeHandle,
    pub store: Store,
    pub http: reqwest::Client,
    pub config: FlowsConfig,
    pub secrets: HashMap<String, SecretString>,
    pub watchers: Arc<Watchers>,
    pub starter: OnceLock<Weak<dyn Starter>>,
    /// `[flows.vars]`, as the object expressions see as `.vars`.
    pub vars: Value,
    /// Queues `emit` steps publish to, by name.
    pub queues: HashMap<String, Arc<dyn crate::broker::QueueSink>>,
    /// Compiled definitions by (name, version): runs of older versions
    /// compile theirs once.
    pub compiled: Mutex<HashMap<(String, String), Arc<Flow>>>,
    /// The flows are stopping: new runs are refused.
    pub stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps").finish_non_exhaustive()
    }
}

impl Deps {
    pub fn starter(&self) -> Option<Arc<dyn Starter>> {
        self.starter.get().and_then(Weak::upgrade)
    }

    /// The compiled flow of a run's recorded definition.
    pub fn flow_of(&self, name: &str, version: &str, definition: &Value) -> Result<Arc<Flow>> {
        let key = (name.to_string(), version.to_string());
        if let Some(f) = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        let spec: crate::spec::FlowSpec =
            serde_json::from_value(definition.clone()).map_err(|e| {
                crate::error::Error::Internal(format!(
                    "the recorded definition of {name} {version}: {e}"
                ))
            })?;
        let flow = Arc::new(Flow::compile(spec)?);
        self.remember(flow.clone());
        Ok(flow)
    }

    /// Keep a compiled flow for runs of its version.
    pub fn remember(&self, flow: Arc<Flow>) {
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((flow.name.clone(), flow.version.clone()), flow);
    }
}

/// One run as its steps see it.
#[derive(Debug, Clone)]
pub struct RunCtx {
    pub run: RunId,
    pub principal: Principal,
    pub flow: Arc<Flow>,
}
