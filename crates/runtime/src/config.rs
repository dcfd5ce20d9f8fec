//! Runtime configuration: serde structs with `deny_unknown_fields`, defaults
//! for everything, and [`RuntimeConfig::validate`] whose errors name the field.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_mcp::McpServerConfig;
use baton_models::EndpointConfig;
use baton_store::Durability;
use baton_tools::BuiltinToolsConfig;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::gates::DataClassifier;

/// What a `SendMessage` does while another turn of the same session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BusyPolicy {
    /// Accept the message durably and run it after the running turn.
    #[default]
    Enqueue,
    /// Refuse it with FAILED_PRECONDITION.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Where the node keeps what it keeps itself: the RocksDB store (with
    /// the default backend), the audit trail, subject keys, the ballast.
    pub data_dir: PathBuf,
    /// `rocksdb` (embedded in `data_dir`, the default) or `postgres` (the
    /// database `[store.postgres]` names).
    pub backend: StoreBackend,
    /// The database, when `backend = "postgres"`.
    pub postgres: PostgresConfig,
    /// `sync` (fsync before acknowledging, group commit) or `buffered`
    /// (WAL written, not fsynced: survives a process crash, not a power loss).
    pub durability: Durability,
    /// Where backups taken over the API are written: a backup's
    /// destination must be inside it (a relative destination is taken
    /// relative to it). Unset: backups over the API are refused.
    pub backup_dir: Option<PathBuf>,
    /// The audit trail's directory, copied into backups (set by the server
    /// from `[audit]`; default `<data_dir>/audit`).
    #[serde(skip)]
    pub audit_dir: Option<PathBuf>,
    /// The audit signing key, never copied into a backup (set by the
    /// server from `[audit]`).
    #[serde(skip)]
    pub audit_key_file: Option<PathBuf>,
    /// Past this many bytes of writes queued for the journal writer, new
    /// sessions and messages are refused (`UNAVAILABLE`) until it catches
    /// up; work already running goes on.
    pub max_backlog_bytes: u64,
    /// The same for records queued for the audit trail.
    pub max_audit_backlog: u64,
    /// Below this many free bytes on the data directory's filesystem, new
    /// sessions and messages are refused (`UNAVAILABLE`, health not
    /// serving) and the ballast is released, so that RocksDB never runs
    /// out of room under Baton's own load; 0 = no floor.
    pub min_free_bytes: u64,
    /// Space allocated in the data directory at start (`BATON_BALLAST`)
    /// and released when free space falls below `min_free_bytes`, so that
    /// running work can finish; taken again once space returns. 0 = none.
    pub ballast_bytes: u64,
    /// How often the free space is read, in milliseconds.
    pub disk_check_ms: u64,
    /// The store's block cache, shared by all its column families and
    /// holding their index blocks too, in bytes.
    pub cache_bytes: u64,
    /// Most bytes the store's memtables hold together; past it the
    /// largest is flushed.
    pub memtable_bytes: u64,
}

/// The database under the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    #[default]
    Rocksdb,
    Postgres,
}

/// `[store.postgres]`: how to reach the database. The URL holds the
/// password, so it comes from the environment or a file; `url` itself is
/// for URLs without one (a local socket with peer authentication, a
/// password in `PGPASSWORD`'s stead is not read).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// The URL (`postgresql://user@host:5432/db`), when it holds no secret.
    pub url: Option<String>,
    /// The environment variable holding the URL.
    pub url_env: Option<String>,
    /// A file holding the URL (a mounted secret).
    pub url_file: Option<PathBuf>,
    /// Most connections the node's reads use at once (its writer has one
    /// more of its own).
    pub pool_size: usize,
    /// How long opening a connection may take, in milliseconds.
    pub connect_timeout_ms: u64,
    /// A PEM file of certificate authorities for the database's TLS
    /// certificate, besides the system's. TLS is asked for in the URL
    /// (`sslmode=require`); the certificate and host name are verified.
    pub ca_file: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_env: None,
            url_file: None,
            pool_size: 8,
            connect_timeout_ms: 5000,
            ca_file: None,
        }
    }
}

impl StoreConfig {
    /// The PostgreSQL database to open, with `backend = "postgres"`; a
    /// wrong or missing URL source is named.
    pub fn postgres_options(
        &self,
    ) -> std::result::Result<Option<baton_store::postgres::PgOptions>, crate::ConfigError> {
        if self.backend != StoreBackend::Postgres {
            return Ok(None);
        }
        let pg = &self.postgres;
        let field = |f: &str| format!("store.postgres.{f}");
        let sources = [
            pg.url.is_some(),
            pg.url_env.is_some(),
            pg.url_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(crate::ConfigError::new(
                "store.postgres",
                "backend = \"postgres\" needs exactly one of url, url_env, url_file",
            ));
        }
        let url = if let Some(url) = &pg.url {
            url.trim().to_string()
        } else if let Some(var) = &pg.url_env {
            std::env::var(var)
                .map_err(|_| {
                    crate::ConfigError::new(
                        field("url_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?
                .trim()
                .to_string()
        } else if let Some(path) = &pg.url_file {
            std::fs::read_to_string(path)
                .map_err(|e| {
                    crate::ConfigError::new(
                        field("url_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_string()
        } else {
            String::new()
        };
        if url.is_empty() {
            return Err(crate::ConfigError::new(
                "store.postgres",
                "the database URL is empty",
            ));
        }
        if pg.pool_size == 0 {
            return Err(crate::ConfigError::new(
                field("pool_size"),
                "must be at least 1",
            ));
        }
        let mut o = baton_store::postgres::PgOptions::new(url);
        o.pool_size = pg.pool_size;
        o.connect_timeout = std::time::Duration::from_millis(pg.connect_timeout_ms.max(1));
        o.ca_file = pg.ca_file.clone();
        Ok(Some(o))
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./baton-data"),
            backend: StoreBackend::Rocksdb,
            postgres: PostgresConfig::default(),
            durability: Durability::Sync,
            backup_dir: None,
            audit_dir: None,
            audit_key_file: None,
            max_backlog_bytes: 256 * 1024 * 1024,
            max_audit_backlog: 100_000,
            min_free_bytes: 128 * 1024 * 1024,
            ballast_bytes: 64 * 1024 * 1024,
            disk_check_ms: 1000,
            cache_bytes: baton_store::DEFAULT_CACHE_BYTES as u64,
            memtable_bytes: baton_store::DEFAULT_MEMTABLE_BYTES as u64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Route (or model endpoint) used when a session names none. Empty (the
    /// default) means the only route or endpoint there is; see
    /// [`RuntimeConfig::resolve_default_route`].
    pub default_route: String,
    pub busy_policy: BusyPolicy,
    /// Largest accepted user message, in bytes.
    pub max_message_bytes: usize,
    /// Most bytes of image URLs one message may carry (a base64 data URL
    /// counts in full). Images are journaled inline with their message, so
    /// the journal holds exactly what the model was shown.
    pub max_image_bytes: usize,
    /// Most images one message may carry.
    pub max_images: usize,
    /// Largest accepted system prompt, in bytes.
    pub max_system_prompt_bytes: usize,
    /// Most turns waiting behind a running one (enqueue policy).
    pub max_queued_turns: usize,
    /// A session with no activity for this long is passivated (its actor
    /// stops; its state stays on disk until the next message).
    pub passivate_after_ms: u64,
    /// Most live session actors (0: no cap). Past it, the least recently
    /// active idle sessions are passivated (down to 90% of the cap); busy
    /// ones stay live.
    pub max_live_sessions: usize,
    /// Write a snapshot after this many journal records.
    pub snapshot_every: u64,
    /// Events a slow stream may fall behind before it is cut (the client
    /// then resumes from its last seq).
    pub subscriber_buffer: usize,
    /// ... or this many bytes of events (as journaled; one larger event
    /// still goes to a stream that has caught up).
    pub subscriber_buffer_bytes: usize,
    /// Sessions with unfinished turns loading at once while they are
    /// resumed after a restart (in the background: the runtime serves
    /// meanwhile).
    pub recovery_concurrency: usize,
    /// Model output streams to clients as it comes, and is journaled as one
    /// `OutputDelta` record per this many milliseconds of output (0: one
    /// record per delta, as the provider sent them).
    pub output_record_ms: u64,
    /// ... or per this many bytes of it, whichever comes first.
    pub output_record_bytes: usize,
    /// How long an API call waits for a session actor's reply.
    pub request_timeout_ms: u64,
    /// Most model calls per turn (the agentic loop's steps) when a session
    /// sets none; a turn that needs more fails with `max_steps_exceeded`.
    pub max_steps: u32,
    /// Deadline of one turn's model calls (every call, retry and failover of
    /// the turn together), from the turn's first model call; none if unset.
    /// A turn past it fails with `deadline_exceeded`.
    pub turn_deadline_ms: Option<u64>,
    /// Budget (USD) of sessions that set none; none if unset.
    pub default_budget_usd: Option<f64>,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            default_route: String::new(),
            busy_policy: BusyPolicy::Enqueue,
            max_message_bytes: 256 * 1024,
            max_image_bytes: 3 * 1024 * 1024,
            max_images: 16,
            max_system_prompt_bytes: 64 * 1024,
            max_queued_turns: 32,
            passivate_after_ms: 300_000,
            max_live_sessions: 100_000,
            snapshot_every: 256,
            subscriber_buffer: 1024,
            subscriber_buffer_bytes: 8 * 1024 * 1024,
            recovery_concurrency: 64,
            output_record_ms: 50,
            output_record_bytes: 4096,
            request_timeout_ms: 30_000,
            max_steps: 16,
            turn_deadline_ms: None,
            default_budget_usd: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// Restarts allowed within `restart_window_ms` before the session is
    /// marked `failed`.
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    /// First restart delay; doubles per restart up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            restart_window_ms: 60_000,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
        }
    }
}

/// Tools: built-ins, limits, defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// Built-in tools; each is off unless enabled here.
    pub builtin: BuiltinToolsConfig,
    /// Tool calls of one model response that run at the same time.
    pub max_parallel_calls: usize,
    /// How long a client-side tool call waits for SubmitToolResult before it
    /// becomes an error result the model sees.
    pub client_tool_timeout_ms: u64,
    /// Server-side tools a session may use when it names none (patterns).
    pub default_allowed: Vec<String>,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            builtin: BuiltinToolsConfig::default(),
            max_parallel_calls: 4,
            client_tool_timeout_ms: 600_000,
            default_allowed: vec!["*".into()],
        }
    }
}

/// Everything the runtime needs.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub store: StoreConfig,
    pub sessions: SessionsConfig,
    pub supervision: SupervisionConfig,
    /// Model endpoints. Empty means the built-in `echo` endpoint only.
    pub models: Vec<EndpointConfig>,
    /// Routes over the endpoints (`[[routes]]`); every endpoint is also a
    /// route of its own name.
    pub routes: Vec<baton_routing::RouteConfig>,
    pub tools: ToolsConfig,
    /// MCP servers whose tools are exposed as `<server>.<tool>`.
    pub mcp: Vec<McpServerConfig>,
    /// Human-in-the-loop gates: placement policies and defaults.
    pub gates: crate::gates::GatesConfig,
    /// Tenants (`[[tenants]]`) and their limits.
    pub tenants: Vec<crate::access::TenantConfig>,
    /// Ceilings on what any request may ask (`[limits]`).
    pub limits: crate::access::LimitsConfig,
    /// Governance policies (`[[policies]]`): rules on what reaches a model.
    pub policies: Vec<baton_governance::PolicyConfig>,
    /// Detector settings (`[governance]`).
    pub governance: baton_governance::GovernanceConfig,
    /// How long sessions are kept (`[retention]`).
    pub retention: crate::retention::RetentionConfig,
    /// Quality scoring and drift alerts (`[quality]`).
    pub quality: crate::quality::QualityConfig,
    /// Encryption at rest by data subject and erasure (`[privacy]`).
    pub privacy: crate::privacy::PrivacyConfig,
    /// This node among several on one PostgreSQL database (`[cluster]`).
    pub cluster: crate::cluster::ClusterConfig,
}

impl RuntimeConfig {
    /// The PostgreSQL database to open, with `store.backend = "postgres"`,
    /// and this node as `[cluster]` describes it.
    pub fn postgres_options(
        &self,
    ) -> std::result::Result<Option<baton_store::postgres::PgOptions>, crate::ConfigError> {
        let Some(mut o) = self.store.postgres_options()? else {
            return Ok(None);
        };
        o.node = self.cluster.node_options()?;
        Ok(Some(o))
    }

    /// A config with a data dir and defaults for everything else.
    pub fn with_data_dir(dir: impl Into<PathBuf>) -> Self {
        let mut c = Self::default();
        c.store.data_dir = dir.into();
        c
    }

    /// The model endpoints, with the built-in echo endpoint when none are configured.
    pub fn effective_models(&self) -> Vec<EndpointConfig> {
        if self.models.is_empty() {
            vec![baton_models::echo_default()]
        } else {
            self.models.clone()
        }
    }

    /// The endpoints a runtime over this config has: the configured ones
    /// (the built-in echo endpoint when none are), with `in_code` (endpoints
    /// built in code, see `RuntimeBuilder::with_endpoint`) replacing those of
    /// the same name, or alone when no endpoint is configured.
    fn endpoints_with(&self, in_code: &[EndpointConfig]) -> Vec<EndpointConfig> {
        if self.models.is_empty() && !in_code.is_empty() {
            return in_code.to_vec();
        }
        let mut all: Vec<EndpointConfig> = self
            .effective_models()
            .into_iter()
            .filter(|m| !in_code.iter().any(|c| c.name == m.name))
            .collect();
        all.extend(in_code.iter().cloned());
        all
    }

    /// The route of sessions that name none: `sessions.default_route` when
    /// set (it must be a route or an endpoint), else the only route or
    /// endpoint there is: the single `[[models]]` entry, or the built-in
    /// `echo` endpoint when there are no models and no routes. With several
    /// to choose from, the error lists them.
    pub fn resolve_default_route(&self) -> Result<String, ConfigError> {
        self.resolve_default_route_with(&[])
    }

    /// [`Self::resolve_default_route`] with endpoints built in code as well.
    pub(crate) fn resolve_default_route_with(
        &self,
        in_code: &[EndpointConfig],
    ) -> Result<String, ConfigError> {
        let field = "sessions.default_route";
        let mut candidates: Vec<String> = self
            .endpoints_with(in_code)
            .into_iter()
            .map(|m| m.name)
            .collect();
        candidates.extend(self.routes.iter().map(|r| r.name.clone()));
        let set = self.sessions.default_route.as_str();
        if !set.is_empty() {
            if candidates.iter().any(|c| c == set) {
                return Ok(set.to_string());
            }
            return Err(ConfigError::new(
                field,
                format!(
                    "{set:?} is not a configured route or model endpoint (have: {})",
                    candidates.join(", ")
                ),
            ));
        }
        match candidates.as_slice() {
            [only] => Ok(only.clone()),
            _ => {
                let cause = if self.models.is_empty() {
                    "routes"
                } else {
                    "models"
                };
                Err(ConfigError::new(
                    field,
                    format!(
                        "not set, and there are {} routes and endpoints ({}): set it to the one sessions that name none should use",
                        candidates.len(),
                        candidates.join(", ")
                    ),
                )
                .related(cause))
            }
        }
    }

    /// Check the config as a runtime with nothing registered in code (no
    /// endpoints built in code, no data classifiers) will, `baton serve`'s
    /// case: every section, the `[[models]]`, `[[routes]]` and
    /// `[[gates.policies]]` entries and the default route. Errors name the
    /// key as in the file, e.g. `models[1].base_url: required for provider
    /// openai (endpoint "gpt")`. `RuntimeBuilder::start` runs the same checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(&[], &[], &[])
    }

    /// [`Self::validate`] with the endpoints and data classifiers registered
    /// in code.
    pub(crate) fn validate_with(
        &self,
        in_code: &[EndpointConfig],
        classifiers: &[(String, Arc<dyn DataClassifier>)],
        policy_classifiers: &[&str],
    ) -> Result<(), ConfigError> {
        if self.cluster.enabled
            && self.privacy.encryption
            && self.privacy.keystore == crate::privacy::Keystore::Dir
        {
            // A keystore on the node's own disk: a node taking over could
            // not open what another sealed.
            return Err(ConfigError::new(
                "privacy.keystore",
                "a cluster with [privacy] encryption keeps subject keys in the database: set \
                 keystore = \"database\" (a keys_dir is each node's own, so a node taking \
                 over could not open what another sealed)",
            ));
        }
        if self.privacy.encryption
            && self.privacy.keystore == crate::privacy::Keystore::Database
            && self.store.backend != crate::StoreBackend::Postgres
        {
            return Err(ConfigError::new(
                "privacy.keystore",
                "\"database\" needs store.backend = \"postgres\"; a RocksDB store keeps subject \
                 keys in keys_dir",
            ));
        }
        let s = &self.sessions;
        let positive = [
            ("sessions.max_message_bytes", s.max_message_bytes as u64),
            ("sessions.max_image_bytes", s.max_image_bytes as u64),
            ("sessions.max_images", s.max_images as u64),
            (
                "sessions.max_system_prompt_bytes",
                s.max_system_prompt_bytes as u64,
            ),
            ("sessions.passivate_after_ms", s.passivate_after_ms),
            ("sessions.snapshot_every", s.snapshot_every),
            ("sessions.subscriber_buffer", s.subscriber_buffer as u64),
            ("store.max_backlog_bytes", self.store.max_backlog_bytes),
            ("store.max_audit_backlog", self.store.max_audit_backlog),
            (
                "sessions.subscriber_buffer_bytes",
                s.subscriber_buffer_bytes as u64,
            ),
            ("sessions.output_record_bytes", s.output_record_bytes as u64),
            (
                "sessions.recovery_concurrency",
                s.recovery_concurrency as u64,
            ),
            ("sessions.request_timeout_ms", s.request_timeout_ms),
            ("sessions.max_steps", s.max_steps as u64),
            (
                "tools.max_parallel_calls",
                self.tools.max_parallel_calls as u64,
            ),
            (
                "tools.client_tool_timeout_ms",
                self.tools.client_tool_timeout_ms,
            ),
            (
                "supervision.restart_window_ms",
                self.supervision.restart_window_ms,
            ),
            (
                "supervision.max_backoff_ms",
                self.supervision.max_backoff_ms,
            ),
            ("gates.timeout_scan_ms", self.gates.timeout_scan_ms),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ConfigError::new(field, "must be greater than 0"));
            }
        }
        if self.supervision.initial_backoff_ms > self.supervision.max_backoff_ms {
            return Err(ConfigError::new(
                "supervision.initial_backoff_ms",
                "must not exceed supervision.max_backoff_ms",
            ));
        }
        if self.store.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("store.data_dir", "must not be empty"));
        }
        if let Some(b) = s.default_budget_usd
            && !(b.is_finite() && b >= 0.0)
        {
            return Err(ConfigError::new(
                "sessions.default_budget_usd",
                "must be a non-negative number",
            ));
        }
        if s.turn_deadline_ms == Some(0) {
            return Err(ConfigError::new(
                "sessions.turn_deadline_ms",
                "must be at least 1",
            ));
        }
        self.tools.builtin.validate().map_err(|e| match &e {
            baton_tools::Error::Config { field, .. } => {
                ConfigError::from_message(field.clone(), &e)
            }
            _ => ConfigError::new("tools.builtin", e.to_string()),
        })?;
        baton_tools::ToolFilter::new(&self.tools.default_allowed)
            .map_err(|e| ConfigError::new("tools.default_allowed", e.to_string()))?;
        let mut servers = HashSet::new();
        for (i, m) in self.mcp.iter().enumerate() {
            m.validate().map_err(|e| {
                let field = match &e {
                    baton_mcp::Error::InvalidConfig { field, .. } => format!("mcp[{i}].{field}"),
                    _ => format!("mcp[{i}]"),
                };
                ConfigError::from_message(field, e.at_index(i))
            })?;
            if !servers.insert(m.name.as_str()) {
                return Err(ConfigError::new(
                    format!("mcp[{i}].name"),
                    format!("duplicate server name {:?}", m.name),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            m.validate().map_err(|e| {
                let field = match &e {
                    baton_models::Error::Config { field, .. } => format!("models[{i}].{field}"),
                    _ => format!("models[{i}]"),
                };
                ConfigError::from_message(field, e.at_index(i))
            })?;
            if !names.insert(m.name.as_str()) {
                return Err(ConfigError::new(
                    format!("models[{i}].name"),
                    format!("duplicate endpoint name {:?}", m.name),
                ));
            }
        }
        let endpoints = self.endpoints_with(in_code);
        baton_routing::validate_routes(&self.routes, &endpoints)
            .map_err(|e| ConfigError::from_message(e.field.clone(), &e))?;
        crate::gates::Policies::compile_all(&self.gates, &self.tenant_policies(), classifiers)?;
        self.resolve_default_route_with(in_code)?;
        let route_names = self.route_names_with(in_code);
        crate::access::validate_tenants(&self.tenants, &route_names, &endpoints)?;
        crate::access::validate_limits(&self.limits)?;
        self.compile_policies(&route_names, policy_classifiers)?;
        crate::retention::validate(&self.retention, &route_names)?;
        crate::quality::validate(&self.quality, &route_names)?;
        crate::privacy::validate(&self.privacy, &self.store.data_dir)?;
        Ok(())
    }

    /// Every route name: the endpoints' implicit routes, then `[[routes]]`.
    pub(crate) fn route_names_with(&self, in_code: &[EndpointConfig]) -> Vec<String> {
        let mut names: Vec<String> = self
            .endpoints_with(in_code)
            .iter()
            .map(|e| e.name.clone())
            .collect();
        names.extend(self.routes.iter().map(|r| r.name.clone()));
        names
    }

    /// `[[policies]]` compiled; the routes they apply to and call must
    /// exist, and the classifiers they name be registered.
    pub(crate) fn compile_policies(
        &self,
        route_names: &[String],
        classifiers: &[&str],
    ) -> Result<baton_governance::Policies, ConfigError> {
        for (field, route) in baton_governance::Policies::routes_called(&self.policies) {
            if !route_names.contains(&route) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{route:?} is not a route or model endpoint (have: {})",
                        route_names.join(", ")
                    ),
                ));
            }
        }
        for (i, p) in self.policies.iter().enumerate() {
            for (j, r) in p.routes.iter().enumerate() {
                if !route_names.contains(r) {
                    return Err(ConfigError::new(
                        format!("policies[{i}].routes[{j}]"),
                        format!(
                            "{r:?} is not a route or model endpoint (have: {})",
                            route_names.join(", ")
                        ),
                    ));
                }
            }
        }
        baton_governance::Policies::compile_with(&self.policies, &self.governance, classifiers)
            .map_err(|e| match e {
                baton_governance::Error::Config { field, problem } => {
                    ConfigError::new(field, problem)
                }
                other => ConfigError::new("policies", other.to_string()),
            })
    }

    /// Each tenant's name and own gate policies.
    pub(crate) fn tenant_policies(&self) -> Vec<(&str, &[crate::gates::GatePolicy])> {
        self.tenants
            .iter()
            .map(|t| (t.name.as_str(), t.gate_policies.as_slice()))
            .collect()
    }

    pub(crate) fn passivate_after(&self) -> Duration {
        Duration::from_millis(self.sessions.passivate_after_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.sessions.request_timeout_ms)
    }
}

#[cfg(test)]
impl RuntimeConfig {
    /// [`Self::with_data_dir`] for this crate's tests: with
    /// `BATON_TEST_STORE=postgres` the store is a PostgreSQL database that
    /// stands for `dir` (the same one each time `dir` is named).
    pub(crate) fn for_test(dir: impl Into<PathBuf>) -> Self {
        let mut c = Self::with_data_dir(dir);
        if let Some(url) = baton_pgtest::database_for(&c.store.data_dir) {
            c.store.backend = StoreBackend::Postgres;
            c.store.postgres.url = Some(url.unwrap());
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterConfig;

    #[test]
    fn defaults_validate_and_use_echo() {
        let c = RuntimeConfig::default();
        c.validate().unwrap();
        assert_eq!(c.effective_models()[0].name, "echo");
        assert_eq!(c.sessions.default_route, "");
        assert_eq!(c.resolve_default_route().unwrap(), "echo");
    }

    fn with_models(toml_text: &str) -> RuntimeConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn an_unset_default_route_is_the_only_route_or_endpoint() {
        // One [[models]] entry: it is the default, echo is not there.
        let c = with_models("[[models]]\nname = \"gpt\"\nprovider = \"echo\"\n");
        c.validate().unwrap();
        assert_eq!(c.resolve_default_route().unwrap(), "gpt");

        // Several: the error says which key to set and lists the candidates,
        // endpoints then routes, in file order.
        let c = with_models(
            "[[models]]\nname = \"fast\"\nprovider = \"echo\"\n\
             [[models]]\nname = \"smart\"\nprovider = \"echo\"\n\
             [[routes]]\nname = \"chain\"\nendpoints = [\"fast\", \"smart\"]\n",
        );
        let err = c.resolve_default_route().unwrap_err();
        assert_eq!(
            err.to_string(),
            "sessions.default_route: not set, and there are 3 routes and endpoints (fast, smart, chain): set it to the one sessions that name none should use"
        );
        assert_eq!(err.related.as_deref(), Some("models"));
        assert_eq!(c.validate().unwrap_err(), err);

        // Set: it must exist.
        let mut c = c;
        c.sessions.default_route = "chain".into();
        c.validate().unwrap();
        assert_eq!(c.resolve_default_route().unwrap(), "chain");
        c.sessions.default_route = "chian".into();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "sessions.default_route: \"chian\" is not a configured route or model endpoint (have: fast, smart, chain)"
        );
    }

    #[test]
    fn entries_are_named_by_index_and_checked_like_at_start() {
        let c = with_models(
            "[[models]]\nname = \"echo\"\nprovider = \"echo\"\n\
             [[models]]\nname = \"gpt\"\nprovider = \"openai\"\n",
        );
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "models[1].base_url: required for provider openai (endpoint \"gpt\")"
        );
        // Routes and gate policies are checked too, not only when the
        // runtime starts.
        let c = with_models(
            "[sessions]\ndefault_route = \"echo\"\n\
             [[routes]]\nname = \"main\"\nendpoints = [\"echo\"]\n\
             [[routes]]\nname = \"fast\"\nendpoints = [\"gtp\"]\n",
        );
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "routes[1].endpoints");
        assert_eq!(
            err.problem,
            "unknown endpoint \"gtp\" (known: echo) (route \"fast\")"
        );
        let c = with_models(
            "[[gates.policies]]\nname = \"pay\"\nkind = \"before_tool\"\nreviewers = \"finance\"\n",
        );
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "gates.policies[0].tools: required for kind before_tool (policy \"pay\")"
        );
        let c = with_models(
            "[[mcp]]\nname = \"ok\"\ntransport = \"stdio\"\ncommand = \"x\"\n\
             [[mcp]]\nname = \"ok\"\ntransport = \"stdio\"\ncommand = \"y\"\n",
        );
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "mcp[1].name: duplicate server name \"ok\""
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = RuntimeConfig::default();
        c.sessions.max_message_bytes = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sessions.max_message_bytes")
        );
        let mut c = RuntimeConfig::default();
        c.sessions.default_route = "nope".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sessions.default_route")
        );
    }

    #[test]
    fn tenants_provider_keys_are_checked_at_load_and_read_at_start() {
        let base = "[[models]]\nname = \"gpt\"\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
                    [[models]]\nname = \"local\"\nprovider = \"echo\"\n\
                    [sessions]\ndefault_route = \"gpt\"\n[[tenants]]\nname = \"acme\"\n";
        let err = |extra: &str| {
            with_models(&format!("{base}{extra}"))
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("[[tenants.provider_keys]]\nendpoint = \"gtp\"\napi_key_env = \"K\"\n"),
            "tenants[0].provider_keys[0].endpoint: \"gtp\" is not a model endpoint (have: gpt, local)"
        );
        assert_eq!(
            err("[[tenants.provider_keys]]\nendpoint = \"local\"\napi_key_env = \"K\"\n"),
            "tenants[0].provider_keys[0].endpoint: endpoint \"local\" is of provider echo, which sends no key"
        );
        assert_eq!(
            err("[[tenants.provider_keys]]\nendpoint = \"gpt\"\n"),
            "tenants[0].provider_keys[0].api_key_env: set api_key_env or api_key_file"
        );
        assert!(
            err(
                "[[tenants.provider_keys]]\nendpoint = \"gpt\"\napi_key_env = \"K\"\n\
                 [[tenants.provider_keys]]\nendpoint = \"gpt\"\napi_key_env = \"L\"\n"
            )
            .starts_with("tenants[0].provider_keys[1].endpoint: \"gpt\" also has provider_keys[0]")
        );
        assert!(err("own_keys_only = true\n").starts_with("tenants[0].own_keys_only:"));

        // Read at start: a missing file is named by its field, never echoed as a key.
        let c = with_models(&format!(
            "{base}[[tenants.provider_keys]]\nendpoint = \"gpt\"\napi_key_file = \"/nonexistent/acme.key\"\n"
        ));
        c.validate().unwrap();
        let e = crate::access::read_provider_keys(&c.tenants).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "tenants[0].provider_keys[0].api_key_file: cannot read /nonexistent/acme.key"
            ),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme.key");
        std::fs::write(&path, "sk-acme\n").unwrap();
        let c = with_models(&format!(
            "{base}own_keys_only = true\n[[tenants.provider_keys]]\nendpoint = \"gpt\"\napi_key_file = {:?}\n",
            path.display().to_string()
        ));
        let keys = crate::access::read_provider_keys(&c.tenants).unwrap();
        let acme = &keys["acme"];
        assert_eq!(acme.get("gpt").unwrap().expose(), "sk-acme");
        assert!(acme.only && acme.get("local").is_none());
        assert!(!format!("{acme:?}").contains("sk-acme"), "{acme:?}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            toml::from_str::<RuntimeConfig>("[sessions]\nbusy_polcy = \"reject\"\n").unwrap_err();
        assert!(err.to_string().contains("busy_polcy"), "{err}");
        let ok: RuntimeConfig = toml::from_str("[sessions]\nbusy_policy = \"reject\"\n").unwrap();
        assert_eq!(ok.sessions.busy_policy, BusyPolicy::Reject);
    }

    #[test]
    fn the_postgres_store_names_a_missing_or_unreadable_url() {
        let mut c = StoreConfig {
            backend: StoreBackend::Postgres,
            ..StoreConfig::default()
        };
        let err = |c: &StoreConfig| c.postgres_options().unwrap_err().to_string();
        assert!(
            err(&c).contains(
                "store.postgres: backend = \"postgres\" needs exactly one of url, url_env, url_file"
            ),
            "{}",
            err(&c)
        );
        c.postgres.url_env = Some("BATON_UNSET_IN_TESTS_PG_URL".into());
        assert!(
            err(&c).contains(
                "store.postgres.url_env: environment variable BATON_UNSET_IN_TESTS_PG_URL is not set"
            ),
            "{}",
            err(&c)
        );
        c.postgres.url = Some("postgresql://x@h/db".into());
        assert!(err(&c).contains("exactly one"), "{}", err(&c));
        c.postgres.url_env = None;
        c.postgres.url = None;
        c.postgres.url_file = Some("/nonexistent/pg-url".into());
        assert!(
            err(&c).contains("store.postgres.url_file: cannot read /nonexistent/pg-url"),
            "{}",
            err(&c)
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "postgresql://baton:s3cret@db:5432/baton\n").unwrap();
        c.postgres.url_file = Some(file);
        c.postgres.pool_size = 3;
        let o = c.postgres_options().unwrap().unwrap();
        assert_eq!(o.url, "postgresql://baton:s3cret@db:5432/baton");
        assert_eq!(o.pool_size, 3);
        // The URL's password stays out of debug output.
        assert!(!format!("{o:?}").contains("s3cret"));
        c.postgres.pool_size = 0;
        assert!(err(&c).contains("store.postgres.pool_size"), "{}", err(&c));
        c.backend = StoreBackend::Rocksdb;
        assert!(c.postgres_options().unwrap().is_none());
    }

    #[test]
    fn cluster_settings_are_checked_and_reach_the_store() {
        let text = "[store]\nbackend = \"postgres\"\npostgres = { url = \"postgresql://x@h/db\" }\n\
                    [cluster]\nenabled = true\nnode_id = \"node-a\"\nadvertise = \"10.0.0.1:50051\"\n\
                    lease_ms = 6000\nheartbeat_ms = 500\n";
        let c: RuntimeConfig = toml::from_str(text).unwrap();
        let o = c.postgres_options().unwrap().unwrap();
        assert_eq!(o.node.id, "node-a");
        assert_eq!(o.node.grpc_addr, "10.0.0.1:50051");
        assert_eq!(o.node.lease, std::time::Duration::from_millis(6000));
        assert!(o.node.wait_for_lease);
        let err = |t: &str| {
            let c: RuntimeConfig = toml::from_str(t).unwrap();
            c.postgres_options().unwrap_err().to_string()
        };
        let bad_id = text.replace("node-a", "node a");
        assert!(
            err(&bad_id).starts_with("cluster.node_id: node id \"node a\" may hold only"),
            "{}",
            err(&bad_id)
        );
        let short = text.replace("lease_ms = 6000", "lease_ms = 1000");
        assert!(
            err(&short).starts_with("cluster.lease_ms: must be at least three heartbeats"),
            "{}",
            err(&short)
        );
        // Without [cluster] the node id is the host's and a second node is
        // refused rather than kept waiting.
        let single: RuntimeConfig =
            toml::from_str(&text[..text.find("[cluster]").unwrap()]).unwrap();
        let o = single.postgres_options().unwrap().unwrap();
        assert!(!o.node.wait_for_lease);
        assert!(!o.node.id.is_empty());
        // Subject keys in each node's keys_dir: refused, naming the fix;
        // in the database: accepted.
        let mut with_privacy = c.clone();
        with_privacy.privacy.encryption = true;
        with_privacy.privacy.master_key_env = Some("BATON_MASTER_KEY".into());
        let e = with_privacy
            .validate_with(&[], &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("privacy.keystore: a cluster with [privacy] encryption keeps"),
            "{e}"
        );
        with_privacy.privacy.keystore = crate::privacy::Keystore::Database;
        with_privacy.validate_with(&[], &[], &[]).unwrap();
        // Keys in the database need the store there.
        let mut on_rocks = with_privacy.clone();
        on_rocks.cluster.enabled = false;
        on_rocks.store.backend = crate::StoreBackend::Rocksdb;
        let e = on_rocks
            .validate_with(&[], &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("privacy.keystore: \"database\" needs store.backend"),
            "{e}"
        );
        assert!(
            ClusterConfig::advertised(None, "0.0.0.0:1".parse().unwrap(), "cluster.advertise")
                .unwrap_err()
                .to_string()
                .starts_with("cluster.advertise: needed when the listener binds the wildcard")
        );
    }
}
