//! Where the runtime reports what it did, for the audit trail.
//!
//! The runtime calls an [`AuditSink`] for every durable model call, tool
//! call, gate decision, routing decision, policy decision and admin action
//! (see `docs/inspection.md` for the list). `baton serve` plugs in the
//! signed, hash-chained log of `baton-audit`; embedders may plug in their own.

use std::future::Future;
use std::pin::Pin;

use baton_types::SessionId;

/// Receives audit events. `record` must not block (queue and return).
pub trait AuditSink: Send + Sync + std::fmt::Debug + 'static {
    /// One event: `kind` (e.g. `model_call`), the session it concerns, who
    /// did it (`runtime`, a reviewer, an admin client), and its data.
    fn record(
        &self,
        kind: &str,
        session: Option<SessionId>,
        actor: Option<&str>,
        data: serde_json::Value,
    );

    /// [`Self::record`] with the data as JSON text, serialised once by the
    /// runtime (every journal record it audits comes this way). Sinks that
    /// write text take it as it is; by default it is parsed back into a
    /// value for [`Self::record`].
    #[allow(clippy::boxed_local)] // a sink that writes text keeps the box it is given
    fn record_json(
        &self,
        kind: &str,
        session: Option<SessionId>,
        actor: Option<&str>,
        data: Box<serde_json::value::RawValue>,
    ) {
        let value = serde_json::from_str(data.get()).unwrap_or_default();
        self.record(kind, session, actor, value);
    }

    /// Resolves once everything recorded before it is durable; an error
    /// (naming the cause: disk full, an I/O error) when some of it may not
    /// be. The runtime then keeps the journal records it reported since
    /// the last good flush pending, and appends them again once a flush
    /// succeeds: nothing journaled goes missing from the trail.
    fn flush(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;

    /// Events recorded and not yet taken for writing: past
    /// `audit.max_queued`, new work is refused until the sink catches up.
    /// Sinks that hold nothing back answer 0.
    fn queued(&self) -> u64 {
        0
    }
}

/// What the runtime does while its audit trail cannot be written
/// (`[audit] on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOnFailure {
    /// Keep serving; what the trail missed is appended again once it can
    /// be written (the failure is logged, counted and shown by health).
    #[default]
    Continue,
    /// Fail closed: refuse new sessions and messages (`UNAVAILABLE` naming
    /// the cause) until the trail is written again. Turns already running
    /// finish; their records are journaled and appended on recovery.
    Block,
}

/// Whether the audit trail keeps up. A failed flush makes it failing until
/// a later flush succeeds and every record the trail may have missed was
/// appended again.
#[derive(Debug, Default)]
pub(crate) struct AuditHealth {
    failing: std::sync::Mutex<Option<String>>,
    pub(crate) on_failure: AuditOnFailure,
}

impl AuditHealth {
    pub(crate) fn new(on_failure: AuditOnFailure) -> Self {
        Self {
            failing: std::sync::Mutex::new(None),
            on_failure,
        }
    }

    /// Why the trail is failing, while it is.
    pub(crate) fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn fail(&self, reason: String) {
        baton_metrics::metrics().audit_write_failure();
        baton_metrics::metrics().audit_failing(true);
        let mut failing = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failing.is_none() {
            tracing::error!(
                error = %reason,
                on_failure = ?self.on_failure,
                "audit trail write failed: its records stay pending in the journal and are appended again once it can be written"
            );
        }
        *failing = Some(reason);
    }

    fn clear(&self, reappended: u64) {
        let was = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if was.is_some() {
            baton_metrics::metrics().audit_failing(false);
            tracing::warn!(
                records = reappended,
                "audit trail writable again; the records it missed were appended again"
            );
        }
    }

    /// `Err(Unavailable)` while the trail fails and `on_failure = block`:
    /// the check every start of new work makes.
    pub(crate) fn admit(&self) -> crate::Result<()> {
        if self.on_failure != AuditOnFailure::Block {
            return Ok(());
        }
        match self.failing() {
            Some(reason) => Err(crate::Error::Unavailable(format!(
                "the audit trail cannot be written ({reason}); audit.on_failure = block refuses new work until it can"
            ))),
            None => Ok(()),
        }
    }
}

/// Report a durable journal record to the audit trail, if it is one of the
/// audited kinds: model calls, routing decisions, failed attempts, tool
/// calls, gate openings (policy decisions) and decisions, failed turns.
/// With `seal` (`[privacy]` encryption), the record's data is sealed under
/// the session's subject key: the chain covers the sealed bytes.
pub(crate) fn record_event(
    sink: &dyn AuditSink,
    e: &baton_types::SessionEvent,
    recovered: bool,
    seal: Option<&baton_store::seal::SealKey>,
) {
    if let Some((kind, actor, mut data)) = crate::audit_data::audit_record(e) {
        if recovered {
            // Appended again at start-up after a crash: the original may or
            // may not have reached the log (same session and seq).
            data = crate::audit_data::mark_recovered(data);
        }
        if let Some(key) = seal {
            data = crate::privacy::seal_audit(key, e.session_id, e.seq, &data);
        }
        sink.record_json(
            kind,
            Some(e.session_id),
            Some(actor.unwrap_or("runtime")),
            data,
        );
    }
}

/// True for the records that go to the audit trail.
pub(crate) fn is_audited(kind: &baton_types::EventKind) -> bool {
    use baton_types::EventKind as K;
    !matches!(
        kind,
        K::ModelCallStarted { .. }
            | K::OutputDelta { .. }
            | K::ToolCallStarted { .. }
            | K::TurnCompleted { .. }
            | K::OutputRetracted { .. }
    )
}

/// Which journal records have been handed to the audit sink and not yet
/// confirmed durable there, per session (the highest seq).
#[derive(Debug, Default)]
pub(crate) struct AuditCursor {
    noted: std::sync::Mutex<std::collections::HashMap<SessionId, u64>>,
    /// Records kept in the store until confirmed (`put_audit_record`).
    records: std::sync::Mutex<Vec<SessionId>>,
}

/// An audit record no journal holds, as the store keeps it until the
/// trail confirms it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct KeptRecord {
    pub kind: String,
    pub actor: Option<String>,
    pub data: serde_json::Value,
}

impl AuditCursor {
    /// Record `id` was handed to the sink and is kept in the store until
    /// the next good flush.
    pub(crate) fn note_record(&self, id: SessionId) {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(id);
    }

    fn take_records(&self) -> Vec<SessionId> {
        std::mem::take(
            &mut *self
                .records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub(crate) fn note(&self, session: SessionId, seq: u64) {
        let mut m = self
            .noted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = m.entry(session).or_insert(0);
        *e = (*e).max(seq);
    }

    /// Whether records of `session` were handed to the sink by this node
    /// and not yet confirmed.
    pub(crate) fn holds(&self, session: SessionId) -> bool {
        self.noted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&session)
    }

    fn take(&self) -> std::collections::HashMap<SessionId, u64> {
        std::mem::take(
            &mut *self
                .noted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Flush the sink, then record that what was noted is in the audit trail.
/// A failed flush confirms nothing (the records stay pending) and marks the
/// trail failing; the next good flush appends every pending record again
/// before anything is confirmed.
pub(crate) async fn confirm(
    sink: &dyn AuditSink,
    cursor: &AuditCursor,
    store: &baton_store::Store,
    health: &AuditHealth,
    privacy: &crate::privacy::PrivacyConfig,
) -> baton_store::Result<()> {
    let noted = cursor.take();
    let records = cursor.take_records();
    let failing = health.failing().is_some();
    if noted.is_empty() && records.is_empty() && !failing {
        return Ok(());
    }
    if let Err(e) = sink.flush().await {
        // The kept records stay in the store: the recovery after the next
        // good flush appends them again.
        health.fail(e);
        return Ok(());
    }
    if failing {
        // Records handed over since the failure may be missing: the
        // journal's backlog (everything not confirmed) is appended again.
        match recover(sink, store, privacy).await {
            Ok(n) => health.clear(n),
            Err(RecoverError::Audit(e)) => health.fail(e),
            Err(RecoverError::Store(e)) => return Err(e),
        }
        return Ok(());
    }
    let mut batch = baton_store::Batch::unsynced();
    for (session, seq) in &noted {
        batch.put_audit_done(session, *seq);
    }
    for id in &records {
        batch.delete_audit_record(id);
    }
    store.write(batch).await
}

/// The nodes other than this one that live, by id, with their epochs
/// (where nodes own sessions one by one; otherwise none).
async fn live_other_nodes(
    store: &baton_store::Store,
) -> baton_store::Result<std::collections::HashMap<String, i64>> {
    let Some(me) = store.node_status().filter(|_| store.claims()) else {
        return Ok(Default::default());
    };
    let s = store.clone();
    let rows = tokio::task::spawn_blocking(move || s.cluster_nodes())
        .await
        .map_err(|e| baton_store::Error::Unavailable(format!("node list task: {e}")))??;
    Ok(rows
        .into_iter()
        .filter(|n| n.live && n.node_id != me.node_id)
        .map(|n| (n.node_id, n.epoch))
        .collect())
}

/// Hand the sink session `session`'s audited records after `done` up to
/// `pending`, marked recovered: how many, and whether all were read (an
/// undecodable journal stops it, reported to the trail).
async fn append_backlog(
    sink: &dyn AuditSink,
    store: &baton_store::Store,
    session: baton_types::SessionId,
    done: u64,
    pending: u64,
    seal: Option<&baton_store::seal::SealKey>,
) -> (u64, bool) {
    let (mut after, mut appended) = (done, 0);
    while after < pending {
        let page = match store.read_journal(session, after, 512).await {
            Ok(p) => p,
            Err(e) => {
                // An undecodable journal fails only its own session
                // (when it is next loaded); its audit backlog stays
                // pending and is retried at the next start.
                tracing::error!(session = %session, error = %e, "audit trail: cannot read the journal to recover its records");
                sink.record(
                    "audit_recovery_failed",
                    Some(session),
                    Some("runtime"),
                    serde_json::json!({ "after_seq": after, "upto_seq": pending, "reason": e.to_string() }),
                );
                return (appended, false);
            }
        };
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        for e in page.iter().filter(|e| e.seq <= pending) {
            if is_audited(&e.kind) {
                record_event(sink, e, true, seal);
                appended += 1;
            }
        }
        after = last;
    }
    (appended, true)
}

/// Where nodes own sessions one by one, a session this node just loaded
/// may have a backlog its previous owner handed to its own trail and never
/// confirmed (it died): appended again to this node's trail, marked
/// recovered, and confirmed, before this node's own records move the
/// confirmation past them. Nothing to do for almost every session.
pub(crate) async fn recover_session(
    sink: &dyn AuditSink,
    cursor: &AuditCursor,
    store: &baton_store::Store,
    session: baton_types::SessionId,
    seal: Option<&baton_store::seal::SealKey>,
) -> Result<u64, RecoverError> {
    // Handed to this node's own trail (an actor that failed and was
    // started again): its confirmer confirms them.
    if cursor.holds(session) {
        return Ok(0);
    }
    let Some((done, pending)) = store.audit_backlog_of(session).await? else {
        return Ok(0);
    };
    let (appended, complete) = append_backlog(sink, store, session, done, pending, seal).await;
    if appended > 0 {
        sink.flush().await.map_err(RecoverError::Audit)?;
        tracing::warn!(session = %session, records = appended, "audit trail: re-appended the records of a session's previous owner");
    }
    if complete {
        let mut batch = baton_store::Batch::unsynced();
        batch.put_audit_done(&session, pending);
        store.write(batch).await?;
    }
    Ok(appended)
}

/// Why the backlog could not be appended again.
pub(crate) enum RecoverError {
    /// The store could not be read or written.
    Store(baton_store::Error),
    /// The audit trail could not be written: nothing was confirmed.
    Audit(String),
}

impl From<baton_store::Error> for RecoverError {
    fn from(e: baton_store::Error) -> Self {
        RecoverError::Store(e)
    }
}

/// Hand the audit sink every audited journal record that is durable in the
/// journal but not confirmed in the audit trail — after a crash (at start)
/// or a failed write (once it can be written again); at-least-once: such
/// records carry `"recovered": true` — then confirm them. Returns how many
/// records were appended again.
pub(crate) async fn recover(
    sink: &dyn AuditSink,
    store: &baton_store::Store,
    privacy: &crate::privacy::PrivacyConfig,
) -> Result<u64, RecoverError> {
    let backlog = store.audit_backlog().await?;
    let mut appended = 0;
    let mut batch = baton_store::Batch::unsynced();
    // Where nodes own sessions one by one, a session another live node
    // owns is that node's to append and confirm (its own trail): only
    // the others' (no owner, or a gone one) are appended here.
    let live_elsewhere = live_other_nodes(store).await?;
    for (session, done, pending) in backlog {
        if !live_elsewhere.is_empty()
            && let Some(o) = store.owner(session).await?
            && live_elsewhere.get(&o.node_id) == Some(&o.epoch)
        {
            continue;
        }
        // Sealed again under the session's subject key, as when it was new.
        let seal = match store.load_meta(session).await? {
            Some(meta) => crate::privacy::existing_seal_key(
                store,
                privacy,
                &meta.tenant,
                session,
                &meta.metadata,
            )
            .map_err(|e| baton_store::Error::Keys(e.to_string()))?,
            None => None,
        };
        let (n, complete) =
            append_backlog(sink, store, session, done, pending, seal.as_deref()).await;
        appended += n;
        if complete {
            batch.put_audit_done(&session, pending);
        }
    }
    // Records no journal holds, kept until confirmed.
    for (id, bytes) in store.pending_audit_records().await? {
        match serde_json::from_slice::<KeptRecord>(&bytes) {
            Ok(mut r) => {
                if let Some(o) = r.data.as_object_mut() {
                    o.insert("recovered".into(), true.into());
                }
                sink.record(&r.kind, None, r.actor.as_deref(), r.data);
                appended += 1;
            }
            Err(e) => {
                tracing::error!(record = %id, error = %e, "audit trail: a kept record cannot be read; dropped");
            }
        }
        batch.delete_audit_record(&id);
    }
    if appended > 0 {
        sink.flush().await.map_err(RecoverError::Audit)?;
        tracing::warn!(
            records = appended,
            "audit trail: re-appended journal records a crash may have kept from it"
        );
    }
    if !batch.is_empty() {
        store.write(batch).await?;
    }
    Ok(appended)
}
