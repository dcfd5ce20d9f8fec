//! The session API of the handle: start (with idempotency keys), send
//! turns, read, list, cancel, delete, answer client-side tool calls.

use std::collections::BTreeMap;

use baton_store::{Batch, SessionMeta};
use baton_tools::ToolFilter;
use baton_types::{
    DEFAULT_TENANT, EventKind, Generation, Message, Principal, Role, SessionEvent, SessionId,
    SessionStatus, ToolChoice, ToolDefinition, now_unix_ms,
};

use crate::audit;
use crate::config::SessionsConfig;
use crate::error::{Error, Result};
use crate::handle::RuntimeHandle;
use crate::paging::{page_size, page_token};
use crate::session::{SessionMsg, SessionView};
use crate::stream::EventStream;

/// Largest `max_steps` a session may ask for.
pub const MAX_STEPS_LIMIT: u32 = 1000;
/// Longest accepted idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Most metadata entries on a session.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key or value, in bytes.
pub const MAX_METADATA_BYTES: usize = 1024;

/// Parameters of a new session.
#[derive(Debug, Clone, Default)]
pub struct StartSession {
    /// The same key always yields the same session; reusing it with other
    /// parameters is refused (`FAILED_PRECONDITION`).
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
    pub client_tools: Vec<ToolDefinition>,
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
    pub history: Vec<Message>,
    /// How every model call of the session generates: sampling, output
    /// limit, stop sequences, tool choice, structured output.
    pub generation: Generation,
    /// A hold session (a flow's `gate` step): its turns make no model
    /// call; each opens a gate on the turn's message with these terms and
    /// completes when a reviewer approves (or edits) it. Kept in the
    /// session's metadata under [`HOLD_METADATA_KEY`], which clients may
    /// not set themselves.
    pub hold: Option<HoldTerms>,
}

/// The metadata key that marks a hold session and carries its terms.
pub const HOLD_METADATA_KEY: &str = "baton.hold";

/// The gate a hold session's turns open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HoldTerms {
    /// The gate's policy name, shown to reviewers and used to filter
    /// (a flow's gates are `flow:<run>:<step path>`).
    pub policy: String,
    /// Why it is asked, readable.
    pub reason: String,
    /// The reviewer group that decides.
    pub reviewers: String,
    /// 0: no deadline.
    pub timeout_ms: u64,
    /// `approve` or `reject` at the deadline.
    pub on_timeout: baton_types::TimeoutAction,
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
    /// Only this tenant's sessions (a [`crate::Caller`] sets its own).
    pub tenant: Option<String>,
    /// Only sessions on this route.
    pub route: Option<String>,
    /// Only the sessions of this flow's steps.
    pub flow: Option<String>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Default 50, at most 1000.
    pub page_size: u32,
    /// The `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

/// Most sessions one page reads when filtering by route or flow (which
/// have no index): a sparse filter ends a page early, with a token to go on.
pub const LIST_SCAN_CAP: usize = 10_000;

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
    /// `None` on the last page. Filtered by route or flow, a page can be
    /// short (even empty) and still have a token: it stopped after reading
    /// [`LIST_SCAN_CAP`] sessions.
    pub next_page_token: Option<String>,
}

/// A session about to be created: what [`RuntimeHandle::create_session`]
/// writes, in one synced batch.
pub(crate) struct NewSession {
    pub route: String,
    pub system_prompt: String,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// Its status after `records` (the fold of them).
    pub status: SessionStatus,
    /// Its first records (seq 1, 2, ...) with their times: a
    /// `SessionStarted`.
    pub records: Vec<(u64, EventKind)>,
    /// A fork: records 1..=seq of this session, copied a page at a time
    /// before `records` ([`crate::copy`]).
    pub copy_from: Option<(SessionId, u64)>,
    /// The admin action it is audited as, with its data.
    pub audit: (&'static str, serde_json::Value),
    /// The tenant it belongs to.
    pub tenant: String,
    /// The principal that created it ([`Principal::label`]).
    pub by: String,
}

/// Images are for user messages, valid, and within the limits; errors name
/// `field[i]`.
fn check_images(m: &Message, field: &str, limits: &SessionsConfig) -> Result<()> {
    if m.images.is_empty() {
        return Ok(());
    }
    if m.role != Role::User {
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

/// FNV-1a: a stable, dependency-free hash to pick a lock stripe.
fn fnv1a(b: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as usize
}

impl RuntimeHandle {
    /// Create a session (or, with an idempotency key seen before, return the
    /// session that key created — if the parameters are the same; other
    /// parameters with a used key get `FAILED_PRECONDITION` naming the
    /// key). The session is durable when this returns.
    pub async fn start_session(&self, req: StartSession) -> Result<SessionInfo> {
        self.start_session_in(req, DEFAULT_TENANT, &Principal::embedded().label())
            .await
    }

    /// [`Self::start_session`] in `tenant`, started by principal `by`:
    /// the one path every way of starting a session takes (the embedding
    /// API, [`crate::Caller`] for the servers). Idempotency keys are
    /// scoped to the tenant.
    pub(crate) async fn start_session_in(
        &self,
        req: StartSession,
        tenant: &str,
        by: &str,
    ) -> Result<SessionInfo> {
        let shared = self.shared();
        shared.admit()?;
        let route = match req.route.as_deref() {
            None | Some("") => shared.config.sessions.default_route.clone(),
            Some(r) => r.to_string(),
        };
        self.validate_start(&req, &route)?;
        let mut req = req;
        if let Some(h) = req.hold.take() {
            let terms = serde_json::to_string(&h)
                .map_err(|e| Error::Internal(format!("hold terms: {e}")))?;
            req.metadata.insert(HOLD_METADATA_KEY.into(), terms);
        }
        let key = req
            .idempotency_key
            .clone()
            .filter(|k| !k.is_empty())
            .map(|k| scoped_key(tenant, k));
        let started = EventKind::SessionStarted {
            route: route.clone(),
            system_prompt: req.system_prompt.clone(),
            allowed_tools: req.allowed_tools,
            client_tools: req.client_tools,
            max_steps: req.max_steps,
            budget_usd: req.budget_usd.or(shared.config.sessions.default_budget_usd),
            data_classes: req.data_classes,
            one_shot: req.one_shot,
            history: req.history,
            generation: req.generation,
            replay_of: None,
            tenant: tenant.to_string(),
            by: by.to_string(),
        };
        // Serialise creations that share a key, so that exactly one creates:
        // in this process by a lock, and across the nodes owning sessions
        // one by one by a claim of the key (nothing asked elsewhere).
        let _guard = match &key {
            Some(k) => {
                let slot = fnv1a(k.as_bytes()) % self.inner.idempotency_locks.len();
                let guard = self.inner.idempotency_locks[slot].lock().await;
                let shown = req.idempotency_key.as_deref().unwrap_or_default();
                if let baton_store::owners::Claim::Owned(o) = shared.store.claim_creation(k).await?
                {
                    return Err(Error::Unavailable(format!(
                        "node {} is starting the session of idempotency key {shown:?} at this \
                         moment; retry to get it",
                        o.node_id
                    )));
                }
                let found = shared.store.find_idempotency(k.clone()).await;
                if !matches!(found, Ok(None)) {
                    self.release_creation(k).await;
                }
                if let Some(id) = found? {
                    return self
                        .existing_session(shown, id, &started, &req.metadata)
                        .await;
                }
                Some(guard)
            }
            None => None,
        };
        let created = self
            .create_session(NewSession {
                route: route.clone(),
                system_prompt: req.system_prompt,
                metadata: req.metadata,
                idempotency_key: key.clone(),
                status: SessionStatus::Idle,
                records: vec![(now_unix_ms(), started)],
                copy_from: None,
                audit: ("start_session", serde_json::json!({ "route": route })),
                tenant: tenant.to_string(),
                by: by.to_string(),
            })
            .await;
        if let Some(k) = &key {
            // Written (its index entry with it) or not to be: any node
            // finds it from here on.
            self.release_creation(k).await;
        }
        created
    }

    /// Give up the claim of an idempotency key's creation. One that fails
    /// leaves the key claimed by this live node: others are told to retry
    /// until it is taken over as a gone node's would be.
    async fn release_creation(&self, key: &str) {
        if let Err(e) = self.shared().store.release_creation(key).await {
            tracing::warn!(error = %e, "cannot release the claim of an idempotency key");
        }
    }

    /// The session an idempotency key created, if it was created with the
    /// same parameters.
    async fn existing_session(
        &self,
        key: &str,
        id: SessionId,
        started: &EventKind,
        metadata: &BTreeMap<String, String>,
    ) -> Result<SessionInfo> {
        let store = &self.shared().store;
        let meta = store.load_meta(id).await?;
        let first = store.read_journal(id, 0, 1).await?;
        let same = meta.as_ref().is_some_and(|m| m.metadata == *metadata)
            && first.first().is_some_and(|e| e.kind == *started);
        if !same {
            return Err(Error::FailedPrecondition(format!(
                "idempotency_key {key:?} was already used to start session {id} with other parameters; \
                 use a new key for a different session, or repeat the original request exactly"
            )));
        }
        Ok(SessionInfo {
            id,
            status: meta.map(|m| m.status).unwrap_or(SessionStatus::Idle),
            created: false,
        })
    }

    /// The one way a session comes to exist (start, fork, replay): its
    /// metadata, first records and idempotency key in one synced batch,
    /// audited, and woken when it has work.
    pub(crate) async fn create_session(&self, new: NewSession) -> Result<SessionInfo> {
        let shared = self.shared();
        let id = SessionId::new();
        // Where nodes own sessions one by one, the node creating a session
        // claims it first (a new id: nobody else does); nothing is asked of
        // the database elsewhere. An idle session nothing activates has no
        // owner once written, as a passivated one: the claim is given up,
        // and so it is when the creation fails. One with work (woken here)
        // or a one-shot session (its actor loads what was just written,
        // without claiming) stays this node's until its actor passivates.
        if let baton_store::owners::Claim::Owned(owner) = shared.store.claim(id).await? {
            return Err(Error::OwnedElsewhere { session: id, owner });
        }
        let created = self.create_claimed(id, new).await;
        let keep = matches!(&created, Ok((info, fresh)) if *fresh || info.status == SessionStatus::Running);
        if !keep && let Err(e) = shared.store.release(id).await {
            tracing::warn!(session = %id, error = %e, "cannot release a new session's claim");
        }
        created.map(|(info, _)| info)
    }

    /// [`Self::create_session`] once `id` is claimed: the session, and
    /// whether its actor will load it from [`crate::fresh`].
    async fn create_claimed(&self, id: SessionId, new: NewSession) -> Result<(SessionInfo, bool)> {
        let shared = self.shared();
        let now = now_unix_ms();
        let meta = SessionMeta {
            tenant: new.tenant,
            created_at_unix_ms: now,
            route: new.route,
            system_prompt: new.system_prompt,
            metadata: new.metadata,
            idempotency_key: new.idempotency_key.clone(),
            status: new.status,
            status_reason: String::new(),
            updated_at_unix_ms: now,
        };
        let seal = crate::privacy::seal_key(
            &shared.store,
            &shared.config.privacy,
            &meta.tenant,
            id,
            &meta.metadata,
        )?;
        let copied = match new.copy_from {
            Some((src, upto)) => {
                crate::copy::copy_journal(&shared.store, src, upto, id, seal.clone()).await?
            }
            None => crate::copy::Copied::default(),
        };
        let events: Vec<SessionEvent> = new
            .records
            .into_iter()
            .enumerate()
            .map(|(i, (at, kind))| SessionEvent {
                session_id: id,
                seq: copied.last_seq + i as u64 + 1,
                at_unix_ms: at,
                kind,
            })
            .collect();
        // A one-shot session (a front-door call) exists for its one turn:
        // nobody learns of it before that turn is accepted, and the turn's
        // synced write makes this one durable with it (the journal's log is
        // one sequence; a sync covers every write before it). So it costs
        // no fsync of its own. A crash in between loses a session no one
        // was told of, with no turn.
        let deferred = new.idempotency_key.is_none()
            && new.status == SessionStatus::Idle
            && matches!(
                events.first().map(|e| &e.kind),
                Some(EventKind::SessionStarted { one_shot: true, .. })
            );
        let mut batch = if deferred {
            Batch::unsynced()
        } else {
            Batch::new()
        };
        batch.seal_with(seal.clone());
        batch.put_meta(&id, &meta, None);
        if copied.last_seq > 0 {
            batch.delete_copying(&id);
        }
        for e in &events {
            batch.append(&id, e.seq, e.at_unix_ms, &e.kind);
        }
        if let Some(k) = &new.idempotency_key {
            batch.put_idempotency(k, &id);
        }
        let audited = events
            .iter()
            .filter(|e| audit::is_audited(&e.kind))
            .map(|e| e.seq)
            .max()
            .or(copied.audited);
        if let (Some(seq), Some(_)) = (audited, &shared.audit) {
            // With the records: a crash cannot leave them out of the audit trail.
            batch.put_audit_pending(&id, seq);
        }
        if let Err(e) = shared.store.write(batch).await {
            if copied.last_seq > 0 {
                crate::copy::drop_copy(&shared.store, id).await;
            }
            return Err(e.into());
        }
        if deferred {
            // Its actor starts from what was just written (see crate::fresh).
            let mut state = crate::state::SessionState::new(id);
            for e in &events {
                state.apply(e.seq, e.at_unix_ms, &e.kind);
            }
            state.metadata = meta.metadata.clone();
            shared.fresh.put(id, meta, state, seal.clone());
        }
        let (action, data) = new.audit;
        self.audit_admin(action, Some(id), data, &new.by);
        if let (Some(seq), Some(sink)) = (audited, &shared.audit) {
            let copied_audited = match copied.audited {
                Some(upto) => {
                    crate::copy::audit_copied(
                        &shared.store,
                        sink.as_ref(),
                        id,
                        upto,
                        seal.as_deref(),
                    )
                    .await
                }
                None => Ok(()),
            };
            for e in &events {
                audit::record_event(sink.as_ref(), e, false, seal.as_deref());
            }
            match copied_audited {
                Ok(()) => shared.audit_cursor.note(id, seq),
                // Not confirmed: the pending mark written with the records
                // stays, and the next start appends them.
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "cannot read a fork's journal for the audit trail; it is appended at the next start")
                }
            }
        }
        if new.status == SessionStatus::Running {
            // As recovery does at start-up: the session picks up its work.
            self.route(id, SessionMsg::Wake)?;
        }
        Ok((
            SessionInfo {
                id,
                status: new.status,
                created: true,
            },
            deferred,
        ))
    }

    /// Every field of a start request, each error naming its field.
    fn validate_start(&self, req: &StartSession, route: &str) -> Result<()> {
        let shared = self.shared();
        if !shared.router.has_route(route) {
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
        let limits = &shared.config.sessions;
        if req.system_prompt.len() > limits.max_system_prompt_bytes {
            return Err(Error::ResourceExhausted(format!(
                "system_prompt is {} bytes; the limit is {} (sessions.max_system_prompt_bytes)",
                req.system_prompt.len(),
                limits.max_system_prompt_bytes
            )));
        }
        if req.metadata.contains_key(HOLD_METADATA_KEY) {
            return Err(Error::InvalidArgument(format!(
                "metadata key {HOLD_METADATA_KEY:?} is reserved"
            )));
        }
        if let Some(h) = &req.hold
            && h.reviewers.trim().is_empty()
        {
            return Err(Error::InvalidArgument(
                "hold.reviewers: required: the group that decides".into(),
            ));
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
        self.validate_tools(req)?;
        for (i, m) in req.history.iter().enumerate() {
            check_images(m, &format!("history[{i}].images"), limits)?;
        }
        if let Some(k) = &req.idempotency_key
            && k.len() > MAX_IDEMPOTENCY_KEY_BYTES
        {
            return Err(Error::InvalidArgument(format!(
                "idempotency_key is {} bytes; at most {MAX_IDEMPOTENCY_KEY_BYTES} are allowed",
                k.len()
            )));
        }
        Ok(())
    }

    fn validate_tools(&self, req: &StartSession) -> Result<()> {
        let registry = &self.shared().tools.registry;
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
                Ok(v) => {
                    baton_routing::compile_schema(&v).map_err(|e| {
                        Error::InvalidArgument(format!("generation.json_schema: {e}"))
                    })?;
                }
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "generation.json_schema: is not valid JSON: {e}"
                    )));
                }
            }
        }
        if !matches!(g.tool_choice, ToolChoice::Required | ToolChoice::Tool(_)) {
            return Ok(());
        }
        let shared = self.shared();
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
            ToolChoice::Tool(name) if !names.contains(name) => {
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
        self.submit_tool_result_by(id, call_id, outcome, embedded())
            .await
    }

    /// [`Self::submit_tool_result`] by principal `by`.
    pub(crate) async fn submit_tool_result_by(
        &self,
        id: SessionId,
        call_id: String,
        outcome: std::result::Result<String, String>,
        by: String,
    ) -> Result<u64> {
        if call_id.is_empty() {
            return Err(Error::InvalidArgument("call_id is required".into()));
        }
        let (output, is_error) = match outcome {
            Ok(o) => (o, false),
            Err(e) => (e, true),
        };
        let limit = self.shared().config.sessions.max_message_bytes;
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
            by,
            reply,
        })
        .await
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
        // send_message refuses an empty user message.
        self.send_message(id, Message::user(content), review).await
    }

    /// Start a turn with `message`: a user message, or a tool result
    /// (`Role::Tool` with the `tool_call_id` of a call in the conversation;
    /// its content may be empty) — how the OpenAI-compatible front door
    /// continues a conversation whose client ran the tools.
    pub async fn send_message(
        &self,
        id: SessionId,
        message: Message,
        review: bool,
    ) -> Result<EventStream> {
        self.send_message_by(id, message, review, embedded()).await
    }

    /// [`Self::send_message`] by principal `by`.
    pub(crate) async fn send_message_by(
        &self,
        id: SessionId,
        message: Message,
        review: bool,
        by: String,
    ) -> Result<EventStream> {
        self.send_message_after(id, message, review, by, None).await
    }

    /// [`Self::send_message_by`], accepted only if the session is idle and
    /// its last turn is `after_turn` (when given): FAILED_PRECONDITION
    /// otherwise, with nothing sent.
    pub(crate) async fn send_message_after(
        &self,
        id: SessionId,
        message: Message,
        review: bool,
        by: String,
        after_turn: Option<u64>,
    ) -> Result<EventStream> {
        // Counted as an answer being waited for before the drain check, so
        // that a drain starting now either refuses it or waits for it.
        let answering = self.shared().drain.answering();
        self.shared().admit()?;
        let limits = &self.shared().config.sessions;
        match message.role {
            Role::User => {
                if message.content.trim().is_empty() && message.images.is_empty() {
                    return Err(Error::InvalidArgument("content is empty".into()));
                }
            }
            Role::Tool => {
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
                by,
                after_turn,
                reply,
            })
            .await?;
        Ok(self.stream(id, sub, Some(answering)))
    }

    /// The session as its actor holds it (rehydrating it if passivated).
    pub async fn get(&self, id: SessionId) -> Result<SessionView> {
        self.ask_read(id, |reply| SessionMsg::Get { reply }).await
    }

    /// A page of sessions, from storage (passivated sessions stay passivated).
    pub async fn list(&self, q: ListQuery) -> Result<SessionList> {
        let size = page_size(q.page_size)?;
        let after = page_token(q.page_token.as_deref(), |t| t.parse::<SessionId>().ok())?;
        let unindexed = q.route.is_some() || q.flow.is_some();
        let page = self
            .shared()
            .store
            .scan_sessions(baton_store::session_list::SessionScan {
                tenant: q.tenant,
                status: q.status,
                route: q.route.filter(|r| !r.is_empty()),
                flow: q.flow.filter(|f| !f.is_empty()),
                after,
                limit: size,
                newest_first: q.newest_first,
                max_scan: if unindexed { LIST_SCAN_CAP } else { 0 },
            })
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
        self.cancel_by(id, embedded()).await
    }

    /// The session an idempotency key created in `tenant`, if any.
    pub async fn session_by_key(&self, tenant: &str, key: &str) -> Result<Option<SessionId>> {
        Ok(self
            .shared()
            .store
            .find_idempotency(scoped_key(tenant, key.to_string()))
            .await?)
    }

    /// [`Self::cancel`] by principal `by` (its label, recorded and audited).
    pub async fn cancel_by(&self, id: SessionId, by: String) -> Result<Option<u64>> {
        let who = by.clone();
        let r = self
            .ask(id, |reply| SessionMsg::Cancel { by: who, reply })
            .await;
        if let Ok(turn) = &r {
            self.audit_admin(
                "cancel_turn",
                Some(id),
                serde_json::json!({ "turn": turn }),
                &by,
            );
        }
        r
    }

    /// Delete a session and everything stored for it.
    pub async fn delete(&self, id: SessionId) -> Result<()> {
        self.delete_by(id, &embedded()).await
    }

    /// [`Self::delete`] by principal `by`.
    pub(crate) async fn delete_by(&self, id: SessionId, by: &str) -> Result<()> {
        self.delete_uncompacted(id, by).await?;
        self.compact_keys().await
    }

    /// [`Self::delete_by`], leaving the keystore's compaction (which makes
    /// a deleted session's key gone from its files too) to the caller:
    /// deleting many sessions, compact once.
    pub(crate) async fn delete_uncompacted(&self, id: SessionId, by: &str) -> Result<()> {
        let r = self.ask(id, |reply| SessionMsg::Delete { reply }).await;
        if r.is_ok() {
            self.audit_admin("delete_session", Some(id), serde_json::json!({}), by);
        }
        r
    }

    /// Compact the keystore, when there is one (`[privacy]` encryption).
    pub(crate) async fn compact_keys(&self) -> Result<()> {
        if let Some(ring) = self.shared().store.keyring().cloned() {
            tokio::task::spawn_blocking(move || ring.compact())
                .await
                .map_err(|e| Error::Internal(format!("keystore compaction task failed: {e}")))??;
        }
        Ok(())
    }
}

/// The label of the embedding program, the principal of the plain
/// [`RuntimeHandle`] methods.
pub(crate) fn embedded() -> String {
    Principal::embedded().label()
}

/// An idempotency key as stored: scoped to its tenant (the default
/// tenant's keys are stored as given).
fn scoped_key(tenant: &str, key: String) -> String {
    if tenant == DEFAULT_TENANT {
        key
    } else {
        format!("{tenant}\u{0}{key}")
    }
}
