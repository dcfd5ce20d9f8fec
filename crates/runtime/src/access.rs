//! The runtime as one principal sees it: [`Caller`].
//!
//! Every server path (gRPC, the OpenAI-compatible front door) acts through
//! a `Caller`, so tenant isolation, the tenant's and the server's ceilings
//! and the recording of who did what are enforced in this one place:
//!
//! - another tenant's session or gate answers NOT_FOUND, exactly as an id
//!   that does not exist (never its data, never its existence); lists and
//!   watches show only the caller's tenant (admins: every tenant);
//! - a start request can narrow but never widen what its tenant and the
//!   server allow: routes, tools, budget, steps, output tokens, sessions;
//! - every change a principal makes carries its label into the journal and
//!   the audit trail, and a gate's reviewer is the principal, never a name
//!   from the request.
//!
//! Which *roles* may call which operation is the server's table (checked
//! before a `Caller` is made); a `Caller` checks the roles it needs for
//! itself too, so an embedder using it gets the same answers.

use std::collections::HashMap;

use baton_tools::ToolFilter;
use baton_types::{AccessRole, GateRecord, Message, Principal, SessionId};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gates::{GateDecision, GateList, GateQuery};
use crate::handle::RuntimeHandle;
use crate::inspect::{BackupInfo, JournalPage, StateView};
use crate::replay::ReplayReport;
use crate::session::SessionView;
use crate::sessions::{ListQuery, SessionInfo, SessionList, StartSession};
use crate::stream::EventStream;

/// A tenant (`[[tenants]]`): an isolated environment with its own limits.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Its name, as API keys, JWT claims and certificates name it.
    pub name: String,
    /// Routes (or endpoints) its sessions may use; empty: every route.
    pub allowed_routes: Vec<String>,
    /// Server-side tools its sessions may use (names or patterns such as
    /// `notes.*`); empty: as the server allows.
    pub allowed_tools: Vec<String>,
    /// Data classes every session of the tenant carries (its model calls go
    /// only to endpoints certified for them).
    pub data_classes: Vec<String>,
    /// The route of its sessions that name none (default: the server's).
    pub default_route: Option<String>,
    /// Most a session's budget may be, in USD; a session that names none
    /// gets this (or the server default when lower).
    pub max_session_budget_usd: Option<f64>,
    /// Most sessions it may have stored at once.
    pub max_sessions: Option<u64>,
    /// Most it may spend per UTC day and per UTC month, in USD (kept across
    /// restarts). Past either, new sessions and turns are refused
    /// (RESOURCE_EXHAUSTED) until the period turns; a turn that started
    /// before may finish.
    pub daily_budget_usd: Option<f64>,
    pub monthly_budget_usd: Option<f64>,
    /// Its own gate policies (as `[[gates.policies]]`), for its sessions
    /// only, on top of the server's.
    pub gate_policies: Vec<crate::gates::GatePolicy>,
    /// Most tokens (input and output) its model calls may use per minute;
    /// past it, new sessions and turns are refused until the window frees.
    pub tokens_per_minute: Option<u64>,
    /// Requests per second of the whole tenant (every RPC and HTTP route),
    /// with up to `burst` saved up (default 1).
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    /// Requests per second of each of its principals (keys, JWT subjects,
    /// certificates), with up to `key_burst` saved up (default 1).
    pub key_requests_per_second: Option<f64>,
    pub key_burst: Option<u32>,
    /// Most tokens (input and output) each of its principals' turns may use
    /// per minute; past it, that principal's new sessions and turns are
    /// refused until the window frees.
    pub key_tokens_per_minute: Option<u64>,
    /// Its own provider keys (bring your own key): its model calls on these
    /// endpoints send its key instead of the server's; no other tenant's
    /// calls ever do.
    pub provider_keys: Vec<ProviderKeyConfig>,
    /// Its model calls go only to endpoints it has a key for in
    /// `provider_keys`, never on the server's keys.
    pub own_keys_only: bool,
    /// Time-to-live of its sessions, counted from their last change (see
    /// `[retention]`; the shortest TTL that applies wins).
    pub session_ttl_secs: Option<u64>,
}

/// One of a tenant's own provider keys (`[[tenants.provider_keys]]`): the
/// endpoint it is for and where to read it, as an endpoint's own key is
/// read (exactly one of `api_key_env` and `api_key_file`), at start.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProviderKeyConfig {
    /// A `[[models]]` endpoint name of provider `openai` or `anthropic`.
    pub endpoint: String,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<std::path::PathBuf>,
}

/// Server-wide ceilings on what a request may ask (`[limits]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Whether a session may name a model endpoint directly as its route.
    /// Endpoints used this way bypass the budgets of the `[[routes]]` over
    /// them; set false to allow only configured routes.
    pub expose_endpoints: bool,
    /// Most any session's budget may be, in USD.
    pub max_session_budget_usd: Option<f64>,
    /// Most model calls per turn a session may ask for.
    pub max_steps: u32,
    /// Most output tokens per model call a session may ask for.
    pub max_output_tokens: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            expose_endpoints: true,
            max_session_budget_usd: None,
            max_steps: crate::sessions::MAX_STEPS_LIMIT,
            max_output_tokens: None,
        }
    }
}

/// The runtime as `principal` sees it (see the module docs).
#[derive(Clone)]
pub struct Caller {
    rt: RuntimeHandle,
    who: Principal,
    label: String,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").field("who", &self.label).finish()
    }
}

impl RuntimeHandle {
    /// The runtime as `principal` sees it.
    pub fn as_caller(&self, principal: Principal) -> Caller {
        Caller {
            rt: self.clone(),
            label: principal.label(),
            who: principal,
        }
    }
}

impl Caller {
    /// Who calls.
    pub fn principal(&self) -> &Principal {
        &self.who
    }

    /// The runtime underneath (for what is not tenant data: routes, tools).
    pub fn runtime(&self) -> &RuntimeHandle {
        &self.rt
    }

    /// The routes the caller may start sessions on: its tenant's allowed
    /// routes, and model endpoints only when `limits.expose_endpoints`.
    pub fn routes(&self) -> Vec<String> {
        let config = &self.rt.shared().config;
        let tenant = self.tenant();
        self.rt
            .routes()
            .into_iter()
            .filter(|r| {
                tenant.is_none_or(|t| t.allowed_routes.is_empty() || t.allowed_routes.contains(r))
            })
            .filter(|r| {
                config.limits.expose_endpoints || config.routes.iter().any(|c| &c.name == r)
            })
            .collect()
    }

    pub(crate) fn require(&self, role: AccessRole) -> Result<()> {
        if self.who.has(role) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{} (roles: {}) may not do this: it needs the {role} role",
                self.label,
                roles(&self.who)
            )))
        }
    }

    /// The session, when the caller's tenant may see it; otherwise the same
    /// NOT_FOUND an unknown id gets.
    async fn own(&self, id: SessionId) -> Result<()> {
        if self.who.is_admin() {
            return Ok(());
        }
        match self.rt.shared().store.load_meta(id).await? {
            Some(meta) if meta.tenant == self.who.tenant => Ok(()),
            _ => Err(Error::SessionNotFound(id)),
        }
    }

    /// The tenant's configuration (a tenant not in `[[tenants]]` has no
    /// limits of its own; the server's still apply).
    pub(crate) fn tenant(&self) -> Option<&TenantConfig> {
        self.rt
            .shared()
            .config
            .tenants
            .iter()
            .find(|t| t.name == self.who.tenant)
    }

    /// Refused when the tenant has spent its day's or month's budget.
    pub(crate) fn within_budget(&self) -> Result<()> {
        let Some(t) = self.tenant() else {
            return Ok(());
        };
        let shared = self.rt.shared();
        // Token windows: the key strings are built only for a limit that is set.
        let now = std::time::Instant::now();
        let over = |who: &str, used: u64, limit: u64, field: &str, wait: std::time::Duration| {
            Error::RateLimited {
                message: format!(
                    "{who} used {used} tokens in the last minute, its limit of {limit} (tenants {:?}: {field})",
                    t.name
                ),
                retry_after_secs: wait.as_secs().max(1),
            }
        };
        if let Some(limit) = t.tokens_per_minute {
            let (used, wait) = shared.tenant_tokens.used(&t.name, now);
            if used >= limit {
                let who = format!("tenant {:?}", t.name);
                return Err(over(&who, used, limit, "tokens_per_minute", wait));
            }
        }
        if let Some(limit) = t.key_tokens_per_minute {
            let key = crate::spend::principal_meter_key(&t.name, &self.label);
            let (used, wait) = shared.principal_tokens.used(&key, now);
            if used >= limit {
                return Err(over(
                    &self.label,
                    used,
                    limit,
                    "key_tokens_per_minute",
                    wait,
                ));
            }
        }
        let now_ms = baton_types::now_unix_ms();
        let [day, month] = crate::spend::periods(now_ms);
        for (limit, period, what) in [
            (t.daily_budget_usd, &day, "daily_budget_usd"),
            (t.monthly_budget_usd, &month, "monthly_budget_usd"),
        ] {
            if let Some(limit) = limit {
                let spent = shared.tenant_spend.spent(&t.name, period);
                if spent >= limit {
                    return Err(Error::RateLimited {
                        message: format!(
                            "tenant {:?} has spent ${spent:.4} of its {what} of ${limit} ({}, UTC); new turns resume when it turns",
                            t.name,
                            &period[1..]
                        ),
                        retry_after_secs: crate::spend::secs_until_next(period, now_ms),
                    });
                }
            }
        }
        Ok(())
    }

    /// Start a session in the caller's tenant, within its ceilings.
    pub async fn start_session(&self, mut req: StartSession) -> Result<SessionInfo> {
        self.require(AccessRole::Client)?;
        self.within_budget()?;
        self.narrow(&mut req).await?;
        self.rt
            .start_session_in(req, &self.who.tenant, &self.label)
            .await
    }

    /// Apply the tenant's and the server's ceilings to a start request:
    /// defaults filled in, anything wider refused with the limit named.
    async fn narrow(&self, req: &mut StartSession) -> Result<()> {
        let shared = self.rt.shared();
        let limits = &shared.config.limits;
        let tenant = self.tenant();
        if req.route.as_deref().is_none_or(str::is_empty)
            && let Some(r) = tenant.and_then(|t| t.default_route.clone())
        {
            req.route = Some(r);
        }
        let route = match req.route.as_deref() {
            None | Some("") => shared.config.sessions.default_route.clone(),
            Some(r) => r.to_string(),
        };
        if let Some(t) = tenant
            && !t.allowed_routes.is_empty()
            && !t.allowed_routes.contains(&route)
        {
            return Err(Error::PermissionDenied(format!(
                "route {route:?} is not allowed for tenant {:?} (allowed: {})",
                t.name,
                t.allowed_routes.join(", ")
            )));
        }
        if !limits.expose_endpoints && !shared.config.routes.iter().any(|r| r.name == route) {
            return Err(Error::PermissionDenied(format!(
                "route {route:?} is a model endpoint, not a configured route, and limits.expose_endpoints is false"
            )));
        }
        let ceiling = [
            tenant.and_then(|t| t.max_session_budget_usd),
            limits.max_session_budget_usd,
        ]
        .into_iter()
        .flatten()
        .reduce(f64::min);
        if let Some(ceiling) = ceiling {
            match req.budget_usd {
                Some(b) if b > ceiling => {
                    return Err(Error::PermissionDenied(format!(
                        "budget_usd {b} is above the ceiling of {ceiling} for tenant {:?}",
                        self.who.tenant
                    )));
                }
                Some(_) => {}
                None => {
                    let default = shared.config.sessions.default_budget_usd;
                    req.budget_usd = Some(default.map_or(ceiling, |d| d.min(ceiling)));
                }
            }
        }
        if req.max_steps > limits.max_steps {
            return Err(Error::PermissionDenied(format!(
                "max_steps {} is above the server's limit of {} (limits.max_steps)",
                req.max_steps, limits.max_steps
            )));
        }
        if let (Some(cap), Some(asked)) =
            (limits.max_output_tokens, req.generation.max_output_tokens)
            && asked > cap
        {
            return Err(Error::PermissionDenied(format!(
                "generation.max_output_tokens {asked} is above the server's limit of {cap} (limits.max_output_tokens)"
            )));
        }
        if let Some(t) = tenant {
            self.narrow_tools(t, req)?;
            for class in &t.data_classes {
                if !req.data_classes.contains(class) {
                    req.data_classes.push(class.clone());
                }
            }
            if let Some(max) = t.max_sessions {
                let have = shared.store.count_tenant_sessions(t.name.clone()).await?;
                if have >= max {
                    return Err(Error::ResourceExhausted(format!(
                        "tenant {:?} has {have} sessions, its limit (max_sessions); delete some first",
                        t.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The session's tools: what it asks for (or the server default) ∩ what
    /// the tenant allows, as tool names. A tool named exactly that the
    /// tenant does not allow is refused.
    fn narrow_tools(&self, t: &TenantConfig, req: &mut StartSession) -> Result<()> {
        if t.allowed_tools.is_empty() {
            return Ok(());
        }
        let shared = self.rt.shared();
        let tenant_filter = ToolFilter::new(&t.allowed_tools)
            .map_err(|e| Error::Config(format!("tenants {:?}: allowed_tools: {e}", t.name)))?;
        let asked = if req.allowed_tools.is_empty() {
            shared.config.tools.default_allowed.clone()
        } else {
            req.allowed_tools.clone()
        };
        let asked_filter = ToolFilter::new(&asked)
            .map_err(|e| Error::InvalidArgument(format!("allowed_tools: {e}")))?;
        for name in &req.allowed_tools {
            let exact = !name.contains(['*', '?', '[']);
            if exact && !tenant_filter.allows(name) {
                return Err(Error::PermissionDenied(format!(
                    "tool {name:?} is not allowed for tenant {:?} (allowed: {})",
                    t.name,
                    t.allowed_tools.join(", ")
                )));
            }
        }
        let names: Vec<String> = shared
            .tools
            .registry
            .definitions(&asked_filter)
            .into_iter()
            .map(|d| d.name)
            .filter(|n| tenant_filter.allows(n))
            .collect();
        // No tool left: a pattern no registered tool matches keeps the
        // session tool-less (an empty list would mean the default).
        req.allowed_tools = if names.is_empty() {
            vec![NO_TOOLS.into()]
        } else {
            names
        };
        Ok(())
    }

    /// Send a message (see [`RuntimeHandle::send_message`]).
    pub async fn send_message(
        &self,
        id: SessionId,
        message: Message,
        review: bool,
    ) -> Result<EventStream> {
        self.require(AccessRole::Client)?;
        self.own(id).await?;
        self.within_budget()?;
        self.rt
            .send_message_by(id, message, review, self.label.clone())
            .await
    }

    /// Send a user message (see [`RuntimeHandle::send_with`]).
    pub async fn send_with(
        &self,
        id: SessionId,
        content: String,
        review: bool,
    ) -> Result<EventStream> {
        // send_message refuses an empty user message.
        self.send_message(id, Message::user(content), review).await
    }

    /// Resume a session's stream after `after_seq`.
    pub async fn resume(&self, id: SessionId, after_seq: u64) -> Result<EventStream> {
        self.require_any(&[AccessRole::Client, AccessRole::Operator])?;
        self.own(id).await?;
        self.rt.resume(id, after_seq).await
    }

    /// The session as its actor holds it.
    pub async fn get(&self, id: SessionId) -> Result<SessionView> {
        self.require_any(&[AccessRole::Client, AccessRole::Operator])?;
        self.own(id).await?;
        self.rt.get(id).await
    }

    /// A page of the caller's tenant's sessions (an admin's: every
    /// tenant's, or one tenant's when the query names it).
    pub async fn list(&self, mut q: ListQuery) -> Result<SessionList> {
        self.require_any(&[AccessRole::Client, AccessRole::Operator])?;
        if !self.who.is_admin() {
            q.tenant = Some(self.who.tenant.clone());
        }
        self.rt.list(q).await
    }

    /// Cancel the running turn.
    pub async fn cancel(&self, id: SessionId) -> Result<Option<u64>> {
        self.require_any(&[AccessRole::Client, AccessRole::Operator])?;
        self.own(id).await?;
        self.rt.cancel_by(id, self.label.clone()).await
    }

    /// Delete a session.
    pub async fn delete(&self, id: SessionId) -> Result<()> {
        self.require_any(&[AccessRole::Client, AccessRole::Operator])?;
        self.own(id).await?;
        self.rt.delete_by(id, &self.label).await
    }

    /// Answer a client-side tool call.
    pub async fn submit_tool_result(
        &self,
        id: SessionId,
        call_id: String,
        outcome: std::result::Result<String, String>,
    ) -> Result<u64> {
        self.require(AccessRole::Client)?;
        self.own(id).await?;
        self.rt
            .submit_tool_result_by(id, call_id, outcome, self.label.clone())
            .await
    }

    /// Whether the caller may see and decide `gate` (its tenant, its groups).
    async fn may_review(&self, gate: &GateRecord) -> Result<bool> {
        if self.who.is_admin() {
            return Ok(true);
        }
        let tenant_ok = match self.rt.shared().store.load_meta(gate.session).await? {
            Some(meta) => meta.tenant == self.who.tenant,
            None => false,
        };
        Ok(tenant_ok)
    }

    /// A page of the tenant's gates; a reviewer sees those of its groups.
    pub async fn list_gates(&self, mut q: GateQuery) -> Result<GateList> {
        self.require_any(&[AccessRole::Reviewer, AccessRole::Operator])?;
        if !self.who.is_admin() {
            q.tenant = Some(self.who.tenant.clone());
            if !self.who.has(AccessRole::Operator) {
                q.groups = Some(self.who.groups.clone());
            }
        }
        self.rt.list_gates(q).await
    }

    /// One gate and its context: a reviewer sees those of its groups (as
    /// in [`Caller::list_gates`]); any other answers NOT_FOUND.
    pub async fn get_gate(&self, gate_id: &str) -> Result<(GateRecord, Vec<Message>)> {
        self.require_any(&[AccessRole::Reviewer, AccessRole::Operator])?;
        let (gate, context) = self.rt.get_gate(gate_id).await?;
        if !self.sees_gate(&gate).await {
            return Err(gate_not_found(gate_id));
        }
        Ok((gate, context))
    }

    /// Decide a gate as the caller: the recorded reviewer is the principal.
    /// A reviewer outside the gate's group is refused.
    pub async fn decide_gate(
        &self,
        gate_id: &str,
        decision: GateDecision,
        reason: String,
    ) -> Result<GateRecord> {
        self.require(AccessRole::Reviewer)?;
        let (gate, _) = self.rt.get_gate(gate_id).await?;
        if !self.may_review(&gate).await? {
            return Err(gate_not_found(gate_id));
        }
        if !gate.reviewers.is_empty() && !self.who.in_group(&gate.reviewers) {
            return Err(Error::PermissionDenied(format!(
                "gate {gate_id} is for reviewer group {:?}; {} is in {}",
                gate.reviewers,
                self.label,
                if self.who.groups.is_empty() {
                    "no reviewer group".to_string()
                } else {
                    format!("groups {}", self.who.groups.join(", "))
                }
            )));
        }
        self.rt
            .decide_gate(gate_id, decision, self.label.clone(), reason)
            .await
    }

    /// Whether a watched gate event is for the caller (tenant and groups).
    pub async fn sees_gate(&self, gate: &GateRecord) -> bool {
        if self.who.is_admin() {
            return true;
        }
        let groups_ok = self.who.has(AccessRole::Operator)
            || gate.reviewers.is_empty()
            || self.who.in_group(&gate.reviewers);
        groups_ok && self.may_review(gate).await.unwrap_or(false)
    }

    /// Whether the caller may inspect session `id` (an operator of its
    /// tenant, or an admin): for reads served outside the runtime, such as
    /// a session's records in the audit trail.
    pub async fn check_inspect(&self, id: SessionId) -> Result<()> {
        self.require(AccessRole::Operator)?;
        self.own(id).await
    }

    /// A session's full state (inspection).
    pub async fn session_state(&self, id: SessionId) -> Result<StateView> {
        self.require(AccessRole::Operator)?;
        self.own(id).await?;
        self.rt.session_state(id).await
    }

    /// A page of a session's journal.
    pub async fn journal_page(
        &self,
        id: SessionId,
        after_seq: u64,
        limit: usize,
    ) -> Result<JournalPage> {
        self.require(AccessRole::Operator)?;
        self.own(id).await?;
        self.rt.journal_page(id, after_seq, limit).await
    }

    /// A session's state as of `seq`.
    pub async fn state_at(&self, id: SessionId, seq: u64) -> Result<StateView> {
        self.require(AccessRole::Operator)?;
        self.own(id).await?;
        self.rt.state_at(id, seq).await
    }

    /// Fork a session (in its tenant).
    pub async fn fork(&self, id: SessionId, at_seq: u64) -> Result<SessionInfo> {
        self.require(AccessRole::Operator)?;
        self.own(id).await?;
        self.rt.fork_by(id, at_seq, self.label.clone()).await
    }

    /// Replay a session (in its tenant).
    pub async fn replay(&self, id: SessionId) -> Result<ReplayReport> {
        self.require(AccessRole::Operator)?;
        self.own(id).await?;
        self.rt.replay_by(id, self.label.clone()).await
    }

    /// A backup (admins only; see [`RuntimeHandle::backup`]).
    ///
    /// The destination must be inside `store.backup_dir` (a relative one is
    /// taken relative to it); without a backup dir configured, refused.
    /// Erase a data subject (admins only): see `RuntimeHandle::erase_subject`.
    pub async fn erase_subject(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<crate::privacy::Erasure> {
        self.require(AccessRole::Admin)?;
        self.rt.erase_subject_by(tenant, subject, &self.label).await
    }

    /// One pass of [`Self::erase_subject`]: what it deleted here, the
    /// sessions live on other nodes it left, and the erasure once none is.
    pub async fn erase_subject_pass(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<crate::privacy::ErasurePass> {
        self.require(AccessRole::Admin)?;
        self.rt
            .erase_subject_pass(tenant, subject, &self.label)
            .await
    }

    pub async fn backup(&self, dest: std::path::PathBuf) -> Result<BackupInfo> {
        self.require(AccessRole::Admin)?;
        let Some(root) = self.rt.shared().config.store.backup_dir.clone() else {
            return Err(Error::FailedPrecondition(
                "backups over the API are off: set store.backup_dir to the directory they may be written in".into(),
            ));
        };
        if dest
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::InvalidArgument(format!(
                "backup destination {}: `..` is not allowed",
                dest.display()
            )));
        }
        let dest = if dest.is_absolute() {
            dest
        } else {
            root.join(dest)
        };
        if !dest.starts_with(&root) || dest == root {
            return Err(Error::PermissionDenied(format!(
                "backup destination {} is not inside store.backup_dir ({})",
                dest.display(),
                root.display()
            )));
        }
        self.rt.backup_by(dest, &self.label).await
    }

    fn require_any(&self, any: &[AccessRole]) -> Result<()> {
        if any.iter().any(|r| self.who.has(*r)) {
            return Ok(());
        }
        let names: Vec<&str> = any.iter().map(|r| r.as_str()).collect();
        Err(Error::PermissionDenied(format!(
            "{} (roles: {}) may not do this: it needs one of the roles {}",
            self.label,
            roles(&self.who),
            names.join(", ")
        )))
    }
}

/// The tool pattern of a session the tenant leaves no tool (an empty list
/// would mean the server default): it matches only a tool named `(none)`.
const NO_TOOLS: &str = "(none)";

fn roles(p: &Principal) -> String {
    if p.roles.is_empty() {
        return "none".into();
    }
    p.roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn gate_not_found(gate_id: &str) -> Error {
    Error::NotFoundDetail(format!("gate {gate_id} not found"))
}

/// Checks the `[[tenants]]` table: names unique and non-empty, routes known,
/// budgets non-negative. `routes` are every route and endpoint name.
pub(crate) fn validate_tenants(
    tenants: &[TenantConfig],
    routes: &[String],
    endpoints: &[baton_models::EndpointConfig],
) -> std::result::Result<(), crate::ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, t) in tenants.iter().enumerate() {
        let field = |f: &str| format!("tenants[{i}].{f}");
        if t.name.is_empty() || t.name.len() > 64 || t.name.contains('\0') {
            return Err(crate::ConfigError::new(
                field("name"),
                "must be 1 to 64 bytes",
            ));
        }
        if let Some(j) = seen.insert(&t.name, i) {
            return Err(crate::ConfigError::new(
                field("name"),
                format!("{:?} is also tenants[{j}]", t.name),
            ));
        }
        for (k, r) in t
            .allowed_routes
            .iter()
            .chain(t.default_route.iter())
            .enumerate()
        {
            if !routes.contains(r) {
                let f = if k < t.allowed_routes.len() {
                    field(&format!("allowed_routes[{k}]"))
                } else {
                    field("default_route")
                };
                return Err(crate::ConfigError::new(
                    f,
                    format!(
                        "{r:?} is not a route or model endpoint (have: {})",
                        routes.join(", ")
                    ),
                ));
            }
        }
        if let Some(b) = t.max_session_budget_usd
            && !(b.is_finite() && b >= 0.0)
        {
            return Err(crate::ConfigError::new(
                field("max_session_budget_usd"),
                "must be a non-negative number",
            ));
        }
        ToolFilter::new(&t.allowed_tools)
            .map_err(|e| crate::ConfigError::new(field("allowed_tools"), e.to_string()))?;
        for (name, usd) in [
            ("daily_budget_usd", t.daily_budget_usd),
            ("monthly_budget_usd", t.monthly_budget_usd),
        ] {
            if let Some(b) = usd
                && !(b.is_finite() && b >= 0.0)
            {
                return Err(crate::ConfigError::new(
                    field(name),
                    "must be a non-negative number",
                ));
            }
        }
        for (name, rate) in [
            ("requests_per_second", t.requests_per_second),
            ("key_requests_per_second", t.key_requests_per_second),
        ] {
            if let Some(r) = rate
                && !(r.is_finite() && r > 0.0)
            {
                return Err(crate::ConfigError::new(
                    field(name),
                    "must be a positive number",
                ));
            }
        }
        validate_provider_keys(t, i, endpoints)?;
    }
    Ok(())
}

/// A tenant's `provider_keys`: each names a keyed endpoint once, with
/// exactly one source; `own_keys_only` needs at least one key.
fn validate_provider_keys(
    t: &TenantConfig,
    i: usize,
    endpoints: &[baton_models::EndpointConfig],
) -> std::result::Result<(), crate::ConfigError> {
    use baton_models::ProviderKind;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (k, pk) in t.provider_keys.iter().enumerate() {
        let field = |f: &str| format!("tenants[{i}].provider_keys[{k}].{f}");
        let Some(e) = endpoints.iter().find(|e| e.name == pk.endpoint) else {
            let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
            return Err(crate::ConfigError::new(
                field("endpoint"),
                format!(
                    "{:?} is not a model endpoint (have: {})",
                    pk.endpoint,
                    names.join(", ")
                ),
            ));
        };
        if !matches!(e.provider, ProviderKind::Openai | ProviderKind::Anthropic) {
            return Err(crate::ConfigError::new(
                field("endpoint"),
                format!(
                    "endpoint {:?} is of provider {}, which sends no key",
                    pk.endpoint,
                    e.provider.as_str()
                ),
            ));
        }
        if let Some(j) = seen.insert(&pk.endpoint, k) {
            return Err(crate::ConfigError::new(
                field("endpoint"),
                format!("{:?} also has provider_keys[{j}]", pk.endpoint),
            ));
        }
        match (&pk.api_key_env, &pk.api_key_file) {
            (Some(_), Some(_)) => {
                return Err(crate::ConfigError::new(
                    field("api_key_env"),
                    "set either api_key_env or api_key_file, not both",
                ));
            }
            (None, None) => {
                return Err(crate::ConfigError::new(
                    field("api_key_env"),
                    "set api_key_env or api_key_file",
                ));
            }
            _ => {}
        }
    }
    if t.own_keys_only && t.provider_keys.is_empty() {
        return Err(crate::ConfigError::new(
            format!("tenants[{i}].own_keys_only"),
            "needs at least one entry in provider_keys",
        ));
    }
    Ok(())
}

/// Read every tenant's own provider keys (at start, as endpoint keys are).
/// An unset variable or unreadable file is an error naming the field.
pub(crate) fn read_provider_keys(
    tenants: &[TenantConfig],
) -> std::result::Result<HashMap<String, std::sync::Arc<baton_routing::OwnKeys>>, crate::ConfigError>
{
    let mut out = HashMap::new();
    for (i, t) in tenants.iter().enumerate() {
        if t.provider_keys.is_empty() {
            continue;
        }
        let mut by_endpoint = HashMap::new();
        for (k, pk) in t.provider_keys.iter().enumerate() {
            let key = baton_models::read_key(pk.api_key_env.as_deref(), pk.api_key_file.as_deref())
                .map_err(|(f, reason)| {
                    crate::ConfigError::new(format!("tenants[{i}].provider_keys[{k}].{f}"), reason)
                })?;
            if let Some(key) = key {
                by_endpoint.insert(pk.endpoint.clone(), baton_models::ProviderKey::new(key));
            }
        }
        out.insert(
            t.name.clone(),
            std::sync::Arc::new(baton_routing::OwnKeys {
                owner: format!("tenant {:?}", t.name),
                by_endpoint,
                only: t.own_keys_only,
            }),
        );
    }
    Ok(out)
}

/// Checks `[limits]`.
pub(crate) fn validate_limits(l: &LimitsConfig) -> std::result::Result<(), crate::ConfigError> {
    let most = crate::sessions::MAX_STEPS_LIMIT;
    if l.max_steps == 0 || l.max_steps > most {
        return Err(crate::ConfigError::new(
            "limits.max_steps",
            format!("must be 1 to {most}"),
        ));
    }
    if let Some(b) = l.max_session_budget_usd
        && !(b.is_finite() && b >= 0.0)
    {
        return Err(crate::ConfigError::new(
            "limits.max_session_budget_usd",
            "must be a non-negative number",
        ));
    }
    if l.max_output_tokens == Some(0) {
        return Err(crate::ConfigError::new(
            "limits.max_output_tokens",
            "must be at least 1",
        ));
    }
    Ok(())
}
