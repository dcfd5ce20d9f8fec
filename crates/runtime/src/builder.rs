//! Starting a runtime: [`Runtime::builder`] → [`RuntimeBuilder::start`].

use std::sync::Arc;

use baton_models::{Endpoint, EndpointConfig, ExecutorHandle, ModelRegistry};
use baton_store::{Batch, Store, StoreOptions};
use baton_tools::{Tool, ToolExecutor, ToolRegistry};
use baton_types::SessionStatus;
use ractor::Actor;
use tokio::sync::Mutex;

use crate::audit::{self, AuditOnFailure, AuditSink};
use crate::config::RuntimeConfig;
use crate::error::{Error, Result};
use crate::gates::{self, DataClassifier};
use crate::handle::{HandleInner, RuntimeHandle};
use crate::shared::{Shared, ToolsRuntime};
use crate::supervisor::SessionSupervisor;

/// Builds a [`RuntimeHandle`].
pub struct Runtime;

impl Runtime {
    pub fn builder(config: RuntimeConfig) -> RuntimeBuilder {
        RuntimeBuilder {
            config,
            endpoints: Vec::new(),
            tools: Vec::new(),
            classifiers: Vec::new(),
            policy_classifiers: Vec::new(),
            audit: None,
            audit_on_failure: AuditOnFailure::default(),
        }
    }
}

/// Options of a runtime before it starts.
pub struct RuntimeBuilder {
    config: RuntimeConfig,
    endpoints: Vec<Endpoint>,
    tools: Vec<Arc<dyn Tool>>,
    classifiers: Vec<(String, Arc<dyn DataClassifier>)>,
    policy_classifiers: Vec<(String, Arc<dyn baton_governance::Classifier>)>,
    audit: Option<Arc<dyn AuditSink>>,
    audit_on_failure: AuditOnFailure,
}

impl RuntimeBuilder {
    /// Report every durable decision and action to `sink` (the audit trail).
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// What to do while the audit trail cannot be written (default:
    /// [`AuditOnFailure::Continue`]); see [`RuntimeHandle::audit_failing`].
    pub fn audit_on_failure(mut self, on_failure: AuditOnFailure) -> Self {
        self.audit_on_failure = on_failure;
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
        classifier: Arc<dyn DataClassifier>,
    ) -> Self {
        self.classifiers.push((name.into(), classifier));
        self
    }

    /// Register a classifier that `[[policies.rules]]` can name
    /// (`classifier = "NAME"`): it labels a message or an answer, and the
    /// rule matches on the labels it names (`match_labels`) or on any other
    /// (`allowed_labels`, an intent check).
    pub fn with_policy_classifier(
        mut self,
        name: impl Into<String>,
        classifier: Arc<dyn baton_governance::Classifier>,
    ) -> Self {
        self.policy_classifiers.push((name.into(), classifier));
        self
    }

    /// Add a server-side tool implemented in code.
    pub fn with_tool(mut self, tool: Arc<dyn Tool>) -> Self {
        self.tools.push(tool);
        self
    }

    /// Check the config (as [`RuntimeConfig::validate`] does, with the
    /// endpoints and classifiers registered here), open the store, start the
    /// model executors and the supervisor, and resume every session that has
    /// an unfinished turn.
    pub async fn start(self) -> Result<RuntimeHandle> {
        let mut config = self.config;
        let in_code: Vec<EndpointConfig> =
            self.endpoints.iter().map(|e| e.config().clone()).collect();
        if config.models.is_empty() && !in_code.is_empty() {
            config.models = in_code.clone();
        }
        let policy_classifiers: Vec<&str> = self
            .policy_classifiers
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        config.validate_with(&in_code, &self.classifiers, &policy_classifiers)?;
        // Sessions that name no route read this: the resolved name, never "".
        config.sessions.default_route = config.resolve_default_route_with(&in_code)?;
        let own_keys = crate::access::read_provider_keys(&config.tenants)?;
        let policies = Arc::new(
            config.compile_policies(&config.route_names_with(&in_code), &policy_classifiers)?,
        );
        let mut opts = StoreOptions::new(config.store.data_dir.clone(), config.store.durability);
        opts.cache_bytes = usize::try_from(config.store.cache_bytes).unwrap_or(usize::MAX);
        opts.memtable_bytes = usize::try_from(config.store.memtable_bytes).unwrap_or(usize::MAX);
        opts.postgres = config.postgres_options()?;
        opts.keyring = {
            let (privacy, data_dir) = (config.privacy.clone(), config.store.data_dir.clone());
            tokio::task::spawn_blocking(move || crate::privacy::open_keyring(&privacy, &data_dir))
                .await
                .map_err(|e| Error::Internal(format!("keystore open task failed: {e}")))??
        };
        let store = tokio::task::spawn_blocking(move || Store::open(opts))
            .await
            .map_err(|e| Error::Internal(format!("store open task failed: {e}")))??;
        let models = start_models(&config, self.endpoints).await?;
        let (router, route_base) = match start_router(&config, &store, models.clone()).await {
            Ok(r) => r,
            Err(e) => {
                models.stop().await;
                return Err(e);
            }
        };
        let tools = start_tools(&config, self.tools).await?;
        let gate_policies = gates::Policies::compile_all(
            &config.gates,
            &config.tenant_policies(),
            &self.classifiers,
        )?;
        let keys = crate::apikeys::KeyRing::load(&store).await?;
        let tenant_spend = crate::spend::TenantSpend::load(&store).await?;
        let shared = Arc::new(Shared::new(
            store.clone(),
            router,
            tools,
            gate_policies,
            config,
            (self.audit, self.audit_on_failure),
            crate::shared::Ledgers {
                keys,
                tenant_spend,
                route_base,
                own_keys,
                policies,
                policy_classifiers: self.policy_classifiers.into_iter().collect(),
            },
        ));
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
            let shared = &handle.inner.shared;
            match audit::recover(sink.as_ref(), &store, &shared.config.privacy).await {
                Ok(_) => {}
                Err(audit::RecoverError::Store(e)) => return Err(e.into()),
                // Retried by the confirmer; serving (or refusing, with
                // on_failure = block) in the meantime.
                Err(audit::RecoverError::Audit(e)) => shared.audit_health.fail(e),
            }
            spawn_audit_confirmer(shared, handle.inner.stop.clone());
        }
        crate::copy::drop_unfinished(&store).await?;
        let unfinished = store.sessions_with_status(SessionStatus::Running).await?;
        if !unfinished.is_empty() {
            crate::recovery::spawn_recovery(&handle, unfinished);
        }
        if store.claims() {
            crate::recovery::spawn_takeover(&handle);
        }
        spawn_disk_watch(&handle);
        handle.spawn_gate_timeouts();
        handle.spawn_retention();
        handle.spawn_quality();
        Ok(handle)
    }
}

/// The executor pools of the configured endpoints and those built in code.
async fn start_models(config: &RuntimeConfig, endpoints: Vec<Endpoint>) -> Result<ModelRegistry> {
    let custom: Vec<String> = endpoints.iter().map(|e| e.name().to_string()).collect();
    // Each configured endpoint with its index in `[[models]]`, for errors.
    let (indices, configured): (Vec<usize>, Vec<EndpointConfig>) = config
        .effective_models()
        .into_iter()
        .enumerate()
        .filter(|(_, m)| !custom.contains(&m.name))
        .unzip();
    let mut models = ModelRegistry::start(configured).await.map_err(|e| {
        let e = match &e {
            baton_models::Error::Config { index: Some(i), .. } => match indices.get(*i) {
                Some(&index) => e.at_index(index),
                None => e,
            },
            _ => e,
        };
        Error::Config(e.to_string())
    })?;
    for endpoint in endpoints {
        let h = ExecutorHandle::spawn(endpoint)
            .await
            .map_err(|e| Error::Config(e.to_string()))?;
        models.insert(h);
    }
    Ok(models)
}

/// The router over `models`, with route spend read back from the store.
async fn start_router(
    config: &RuntimeConfig,
    store: &Store,
    models: ModelRegistry,
) -> Result<(baton_routing::Router, Option<crate::spend::RouteBase>)> {
    // Route spend is recorded with every settlement (an unsynced write;
    // the journal's AssistantMessage records hold the exact costs) and
    // read back here, so route budgets hold across restarts.
    if !store.claims() {
        // A database that nodes owning sessions wrote before: their parts
        // become the one total this node keeps.
        store.fold_route_spends().await?;
    }
    let spent = store.route_spends().await?;
    // Gates pending from before this start count too: sessions open
    // and decide gates from here on by +1/-1.
    let pending = store.count_pending_gates().await?;
    baton_metrics::metrics().gates_pending_set(i64::try_from(pending).unwrap_or(i64::MAX));
    let persist = store.clone();
    // Where several nodes serve at once (`cluster.ownership = "sessions"`),
    // each writes its own part of a route's spend: its ledger's total less
    // what the others had spent when it started.
    let others: Option<(String, std::collections::HashMap<String, f64>)> = match store
        .node_status()
        .filter(|_| store.claims())
    {
        Some(node) => {
            let own = store.route_spends_of(&node.node_id).await?;
            let others = spent
                .iter()
                .map(|(route, all)| (route.clone(), all - own.get(route).copied().unwrap_or(0.0)))
                .collect();
            Some((node.node_id, others))
        }
        None => None,
    };
    let route_base = others
        .as_ref()
        .map(|(node, at_start)| crate::spend::RouteBase {
            node: node.clone(),
            at_start: at_start.clone(),
        });
    let on_spend: baton_routing::OnSpend = Arc::new(move |route: &str, total: f64| {
        let mut b = Batch::unsynced();
        match &others {
            Some((node, others)) => b.put_node_route_spend(
                route,
                node,
                total - others.get(route).copied().unwrap_or(0.0),
            ),
            None => b.put_route_spend(route, total),
        }
        let write = persist.write(b);
        tokio::spawn(async move {
            if let Err(e) = write.await {
                tracing::warn!(error = %e, "cannot record route spend");
            }
        });
    });
    let budgets = baton_routing::BudgetLedger::new(spent, Some(on_spend));
    // The routes and the default route were checked with the config.
    let router = baton_routing::Router::new(config.routes.clone(), models, budgets)
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok((router, route_base))
}

/// The tool registry (built-ins, tools built in code, MCP servers) and the
/// tool executor.
async fn start_tools(config: &RuntimeConfig, tools: Vec<Arc<dyn Tool>>) -> Result<ToolsRuntime> {
    let registry = ToolRegistry::default();
    let builtins = config
        .tools
        .builtin
        .tools()
        .map_err(|e| Error::Config(format!("tools.builtin: {e}")))?;
    for tool in builtins.into_iter().chain(tools) {
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
    Ok(ToolsRuntime {
        registry,
        executor,
        mcp,
    })
}

/// Every 200 ms: flush the audit sink, then record in the store which
/// journal records are confirmed in the audit trail.
fn spawn_audit_confirmer(shared: &Arc<Shared>, stop: tokio_util::sync::CancellationToken) {
    let shared = Arc::downgrade(shared);
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
                && let Err(e) = audit::confirm(
                    sink.as_ref(),
                    &shared.audit_cursor,
                    &shared.store,
                    &shared.audit_health,
                    &shared.config.privacy,
                )
                .await
            {
                tracing::warn!(error = %e, "cannot record the audit cursor");
            }
        }
    });
}

/// Resume the sessions with unfinished turns in the background, serving
/// meanwhile: at most `sessions.recovery_concurrency` of them load at once
/// (each is woken, and the next waits until it has loaded and re-issued
/// its work), so requests arriving during recovery queue behind a bounded
/// number of loads instead of behind all of them.
/// Read the data directory's free space every `store.disk_check_ms`, and
/// probe the store while its writes fail (holding the runtime only while
/// it reads: a dropped runtime closes its store at once).
fn spawn_disk_watch(handle: &RuntimeHandle) {
    let every =
        std::time::Duration::from_millis(handle.inner.shared.config.store.disk_check_ms.max(10));
    let shared = Arc::downgrade(&handle.inner.shared);
    let stop = handle.inner.stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let Some(s) = shared.upgrade() else {
                return;
            };
            // While the store's writes fail (the disk filled between two
            // checks, a failing fsync, the database gone), try one: its
            // success ends it. A store in a database is tried each time, so
            // that health says the database is gone before work finds out.
            if (s.store.write_failing().is_some() || s.store.backend() == "postgres")
                && let Err(e) = s.store.probe().await
            {
                tracing::debug!(error = %e, "the store still cannot be written");
            }
            let checked = tokio::task::spawn_blocking(move || s.disk.check()).await;
            if checked.is_err() {
                return;
            }
        }
    });
}
