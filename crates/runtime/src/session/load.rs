//! Loading (rehydrating) a session from storage, and passivating it.

use baton_store::Batch;
use baton_types::SessionStatus;
use ractor::ActorProcessingErr;

use super::ctx::{SessionCtx, pending_record};
use crate::state::SessionState;

impl SessionCtx {
    /// Load the session: meta, then the snapshot if this build can read
    /// it, then every journal record after the snapshot's seq.
    pub async fn load(&mut self) -> Result<(), ActorProcessingErr> {
        let id = self.env.id;
        if let Some(fresh) = self.env.shared.fresh.take(id) {
            // Just created: what was written, without reading it back.
            self.durable.found = true;
            self.env.seal = fresh.seal;
            self.durable.state = fresh.state;
            self.durable.meta = Some(fresh.meta);
            self.durable.snapshot_seq = 0;
            self.outbox.released_seq = self.durable.state.last_seq;
            return Ok(());
        }
        let store = self.env.shared.store.clone();
        if self.env.after_failure {
            // Writes the failed actor queued are applied first.
            store.barrier().await?;
        }
        // Sessions owned one node each (`[cluster] ownership = "sessions"`):
        // this node works on the session only once it owns it, and its
        // writes pass the store's fence only while it does. Elsewhere (one
        // node, or the writer lease) this asks nothing of the database.
        if let baton_store::owners::Claim::Owned(owner) = store.claim(id).await? {
            tracing::debug!(session = %id, owner = %owner.node_id, "session owned by another node");
            self.durable.owner = Some(owner);
            return Ok(());
        }
        let meta = match store.load_meta(id).await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(e) if e.is_corruption() => {
                tracing::error!(session = %id, error = %e, "session metadata unreadable");
                self.durable.found = true;
                self.durable.state.failed = Some(e.to_string());
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.durable.found = true;
        self.env.seal = crate::privacy::existing_seal_key(
            &store,
            &self.env.shared.config.privacy,
            &meta.tenant,
            id,
            &meta.metadata,
        )
        .map_err(|e| ActorProcessingErr::from(e.to_string()))?;
        let snapshot = match store.load_snapshot(id).await {
            // Erased: the journal says so below, and the session fails.
            Err(e) if e.is_corruption() => None,
            other => other?,
        };
        let snapshot = match snapshot {
            Some(bytes) => match baton_store::snapshot::decode::<SessionState>(&bytes) {
                Some((seq, st)) if st.id == id && st.last_seq == seq => Some((st, seq)),
                _ => {
                    tracing::warn!(session = %id, "snapshot unreadable by this build; rebuilding from the journal");
                    None
                }
            },
            None => None,
        };
        let from_snapshot = snapshot.is_some();
        let (mut state, from) = snapshot.unwrap_or_else(|| (SessionState::new(id), 0));
        self.durable.snapshot_seq = from;
        let mut after = from;
        let mut replayed = 0u64;
        const PAGE: usize = 1024;
        let load_result = loop {
            match store.read_journal(id, after, PAGE).await {
                Ok(events) => {
                    for e in &events {
                        state.apply(e.seq, e.at_unix_ms, &e.kind);
                    }
                    replayed += events.len() as u64;
                    after = state.last_seq;
                    if events.len() < PAGE {
                        // A short page is the journal's end.
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        baton_metrics::metrics()
            .session_rehydrated(if from_snapshot { "snapshot" } else { "journal" }, replayed);
        state.metadata = meta.metadata.clone();
        if store.claims() {
            // Another node may have priced turns of this session since
            // this node's ledger read its spend.
            let shared = &self.env.shared;
            for period in crate::spend::periods(baton_types::now_unix_ms()) {
                if let Some(usd) = store.tenant_spend_of(&meta.tenant, &period, id).await? {
                    shared.tenant_spend.sync(&meta.tenant, &period, id, usd);
                }
            }
            // A previous owner that died may have left records its trail
            // never confirmed: this node's trail takes them.
            if let Some(sink) = &shared.audit
                && let Err(e) = crate::audit::recover_session(
                    sink.as_ref(),
                    &shared.audit_cursor,
                    &store,
                    id,
                    self.env.seal.as_deref(),
                )
                .await
            {
                match e {
                    crate::audit::RecoverError::Store(e) => return Err(e.into()),
                    crate::audit::RecoverError::Audit(e) => {
                        tracing::warn!(session = %id, error = %e, "audit trail: cannot append a previous owner's records; they stay pending");
                    }
                }
            }
        }
        if meta.status == SessionStatus::Failed && state.failed.is_none() {
            state.failed = Some(meta.status_reason.clone());
        }
        self.durable.state = state;
        self.durable.meta = Some(meta);
        if let Err(e) = load_result {
            if !e.is_corruption() {
                return Err(e.into());
            }
            self.mark_corrupt(e).await?;
        }
        self.outbox.released_seq = self.durable.state.last_seq;
        if let Some(c) = &self.durable.state.current {
            for g in &c.gates {
                self.gates.records.insert(
                    g.gate_id,
                    pending_record(id, &self.durable.state.tenant, c.turn, g),
                );
            }
        }
        Ok(())
    }

    /// An undecodable record: the session is failed for good, durably, with
    /// the reason naming the seq. Other sessions are untouched.
    async fn mark_corrupt(&mut self, err: baton_store::Error) -> Result<(), ActorProcessingErr> {
        let reason = err.to_string();
        let id = self.env.id;
        tracing::error!(session = %id, %reason, "session journal unreadable; marking the session failed");
        self.durable.state.failed = Some(reason.clone());
        let Some(meta) = &mut self.durable.meta else {
            return Ok(());
        };
        if meta.status == SessionStatus::Failed {
            return Ok(());
        }
        self.durable.state.last_seq = crate::failed::write_failed(
            &self.env.shared.store,
            self.env.seal.clone(),
            id,
            meta,
            reason,
        )
        .await?;
        Ok(())
    }

    /// Whether the actor can stop without losing anything in flight.
    pub fn is_idle(&mut self) -> bool {
        // A turn parked on a human decision holds no memory while it waits:
        // gate timeouts are found from the store, not by this actor.
        let parked = self.durable.state.current.as_ref().is_none_or(|c| {
            (!c.gates.is_empty() || c.attention().is_some())
                && !c.tools.iter().any(|t| t.client_side && t.result.is_none())
        });
        self.outbox.is_idle()
            && self.model.call.is_none()
            && parked
            && self.durable.state.queued.is_empty()
            && self.tools.runs.is_empty()
    }

    /// Write a snapshot of the state if it moved since the last one.
    pub async fn write_snapshot(&mut self) -> Result<(), ActorProcessingErr> {
        let d = &mut self.durable;
        if !d.found || d.state.last_seq <= d.snapshot_seq || d.state.failed.is_some() {
            return Ok(());
        }
        let mut batch = Batch::unsynced();
        batch.seal_with(self.env.seal.clone());
        batch.put_snapshot(
            &self.env.id,
            baton_store::snapshot::encode(d.state.last_seq, &d.state)?,
        );
        self.env.shared.store.write(batch).await?;
        d.snapshot_seq = d.state.last_seq;
        Ok(())
    }
}
