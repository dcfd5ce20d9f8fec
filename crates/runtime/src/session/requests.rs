//! Requests from clients: send a turn, subscribe, cancel, delete.

use baton_types::{Decision, EventKind, GateOutcome, GateRecord, Message, now_unix_ms};
use ractor::ActorRef;

use super::ctx::SessionCtx;
use super::msg::{Notice, SessionMsg};
use super::outbox::Subscription;
use crate::config::BusyPolicy;
use crate::error::{Error, Result};

impl SessionCtx {
    pub fn ensure_found(&self) -> Result<()> {
        if let Some(owner) = &self.durable.owner {
            return Err(Error::OwnedElsewhere {
                session: self.env.id,
                owner: owner.clone(),
            });
        }
        if self.durable.found {
            Ok(())
        } else {
            Err(Error::SessionNotFound(self.env.id))
        }
    }

    /// Accept a turn (queued behind a running one, per the busy policy).
    pub fn send(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        message: Message,
        review: bool,
        by: String,
        after_turn: Option<u64>,
    ) -> Result<Subscription> {
        self.ensure_found()?;
        let id = self.env.id;
        let state = &self.durable.state;
        if let Some(t) = after_turn
            && (state.last_turn != t || state.current.is_some() || !state.queued.is_empty())
        {
            return Err(Error::FailedPrecondition(format!(
                "session {id} moved on from turn {t} (its last turn is {}{})",
                state.last_turn,
                if state.current.is_some() {
                    ", running"
                } else {
                    ""
                }
            )));
        }
        if let Some(reason) = &state.failed {
            return Err(Error::FailedPrecondition(format!(
                "session {id} has failed: {reason}"
            )));
        }
        let busy = state.current.is_some() || !state.queued.is_empty();
        let cfg = &self.env.shared.config.sessions;
        if busy && cfg.busy_policy == BusyPolicy::Reject {
            let running = state.current.as_ref().map(|c| c.turn).unwrap_or_default();
            return Err(Error::FailedPrecondition(format!(
                "session {id} is busy with turn {running} and busy_policy is reject; wait for it to finish or cancel it"
            )));
        }
        if state.queued.len() >= cfg.max_queued_turns {
            return Err(Error::ResourceExhausted(format!(
                "session {id} already has {} queued turns (sessions.max_queued_turns)",
                state.queued.len()
            )));
        }
        let turn = state.last_turn + 1;
        let sub = self.outbox.subscribe(
            (cfg.subscriber_buffer, cfg.subscriber_buffer_bytes),
            Some(turn),
            state.last_seq + 1,
        );
        // Staged, not written: when the session is idle, pump() stages the
        // turn's ModelCallStarted and writes both as one batch (one fsync)
        // just before the model call starts.
        self.stage(EventKind::TurnAccepted {
            turn,
            message,
            review,
            by,
        });
        // Written with the turn's ModelCallStarted by pump(), or here when
        // the turn waits.
        self.pump(myself);
        self.flush(myself, self.turn_start_synced());
        Ok(sub)
    }

    /// Events after `after_seq`: history from the journal, then live.
    pub fn subscribe(&mut self, after_seq: u64) -> Result<Subscription> {
        self.ensure_found()?;
        let last = self.durable.state.last_seq;
        if after_seq > last {
            return Err(Error::InvalidArgument(format!(
                "after_seq {after_seq} is beyond the last seq {last} of session {}",
                self.env.id
            )));
        }
        let cfg = &self.env.shared.config.sessions;
        let buffer = (cfg.subscriber_buffer, cfg.subscriber_buffer_bytes);
        let mut sub = self.outbox.subscribe(buffer, None, last + 1);
        sub.history_after = after_seq;
        sub.history_upto = sub.history_upto.max(after_seq);
        Ok(sub)
    }

    /// Cancel the running turn; its open gates close with it.
    pub fn cancel(&mut self, myself: &ActorRef<SessionMsg>, by: String) -> Result<Option<u64>> {
        self.ensure_found()?;
        let Some(turn) = self.durable.state.current.as_ref().map(|c| c.turn) else {
            return Ok(None);
        };
        if let Some(call) = self.model.call.take() {
            call.cancel.cancel();
        }
        // Checks still being asked are ignored when they are answered.
        self.model.checking = None;
        self.model.held = None;
        // Results of tools still running are ignored when they arrive.
        self.tools.runs.clear();
        self.tools.client_timers.clear();
        let gates: Vec<_> = self
            .durable
            .state
            .current
            .as_ref()
            .map(|c| c.gates.iter().map(|g| g.gate_id).collect())
            .unwrap_or_default();
        for gate_id in gates {
            self.record_decision(
                turn,
                gate_id,
                GateOutcome {
                    decision: Decision::Reject,
                    reviewer: "system".into(),
                    reason: "the turn was cancelled".into(),
                    edited: String::new(),
                    decided_at_unix_ms: now_unix_ms(),
                    by_timeout: false,
                },
            );
        }
        self.commit(myself, vec![EventKind::TurnCancelled { turn, by }], true);
        self.pump(myself);
        Ok(Some(turn))
    }

    /// Delete the session and everything stored for it (its gates too).
    pub async fn delete(&mut self) -> Result<()> {
        self.ensure_found()?;
        let id = self.env.id;
        let Some(meta) = self.durable.meta.clone() else {
            return Err(Error::Internal(format!("session {id} has no metadata")));
        };
        if let Some(call) = self.model.call.take() {
            call.cancel.cancel();
        }
        self.model.checking = None;
        self.model.held = None;
        let store = &self.env.shared.store;
        let mut batch = baton_store::Batch::new();
        batch.delete_session(&id, &meta);
        let gates = store
            .list_gates(
                baton_store::gates::GateFilter {
                    session: Some(id),
                    ..Default::default()
                },
                None,
                usize::MAX,
            )
            .await?;
        for g in gates.gates {
            // Records stored before gates carried their tenant: their
            // scoped queue entries are the session's tenant's.
            let g = if g.tenant.is_empty() {
                GateRecord {
                    tenant: meta.tenant.clone(),
                    ..g
                }
            } else {
                g
            };
            batch.delete_gate(&g);
        }
        // Sealed under a key of its own (the session is its own subject):
        // the key goes too, so its audit records and any copy (backups)
        // cannot be read either. First: a crash after it leaves an
        // unreadable session to delete again, never a deleted session whose
        // key stays. A subject spanning sessions keeps its key until it is
        // erased.
        if let Some(ring) = store.keyring().cloned() {
            let privacy = &self.env.shared.config.privacy;
            let subject = privacy.subject(id, &meta.metadata);
            if subject == privacy.subject_named(&format!("session:{id}")) {
                tokio::task::spawn_blocking(move || ring.forget(&subject))
                    .await
                    .map_err(|e| Error::Internal(format!("key erasure task failed: {e}")))??;
            }
        }
        store.write(batch).await?;
        self.durable.found = false;
        // Running tools and client-side waits end here: their results have
        // no session to go to (and flush writes nothing for it).
        self.tools.runs.clear();
        self.tools.client_timers.clear();
        self.durable.state = crate::state::SessionState::new(id);
        self.outbox.clear();
        (self.env.notify)(Notice::Passivate(id));
        Ok(())
    }
}
