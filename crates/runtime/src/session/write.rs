//! The write path: stage records, hand them to the group-commit writer in
//! one batch, and release their events once they are durable.
//!
//! Write-ahead rules, as built:
//! * `TurnAccepted` + `ModelCallStarted` are handed to the writer and the
//!   model call is dispatched right away: its fsync overlaps the model call.
//!   If the write fails the actor fails, and the answer is dropped with it.
//!   A one-shot session (a front-door call) writes them unsynced
//!   ([`SessionCtx::turn_start_synced`]): its answer's fsync covers them.
//! * `AssistantMessage` + `TurnCompleted` go out in one batch; the client
//!   sees them only after that batch is durable — one fsync on the critical
//!   path after the model answers.
//! * Output deltas are provisional and written without an fsync of their
//!   own. They stream to subscribers as they come, and are journaled as
//!   one record per stretch of output (`sessions.output_record_ms` /
//!   `output_record_bytes`): a turn costs a handful of records whatever the
//!   answer's length. A crash (or a shutdown mid-answer) loses at most the
//!   stretch not yet written, which the interrupted turn's re-issued call
//!   replaces anyway.

use std::time::Duration;

use baton_store::Batch;
use baton_types::{EventKind, SessionEvent, now_unix_ms};
use ractor::ActorRef;

use super::ctx::SessionCtx;
use super::msg::SessionMsg;
use super::outbox::{LiveText, Released};

impl SessionCtx {
    /// Model output text of `turn`'s `attempt`: streamed to subscribers
    /// now, journaled with the rest of its stretch.
    pub fn stream_text(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        attempt: u32,
        text: String,
    ) {
        let cfg = &self.env.shared.config.sessions;
        let (every_ms, max_bytes) = (cfg.output_record_ms, cfg.output_record_bytes);
        if every_ms == 0 {
            // Every delta its own record.
            self.commit(
                myself,
                vec![EventKind::OutputDelta {
                    turn,
                    attempt,
                    text,
                }],
                false,
            );
            return;
        }
        if self
            .outbox
            .live
            .as_ref()
            .is_some_and(|l| (l.turn, l.attempt) != (turn, attempt))
        {
            self.close_live_text();
        }
        // Records staged before this text are written (and released)
        // ahead of it.
        self.flush(myself, false);
        let seq = self.durable.state.last_seq + 1;
        let live = self.outbox.live.get_or_insert_with(|| {
            let me = myself.clone();
            me.send_after(Duration::from_millis(every_ms), move || {
                SessionMsg::CloseOutput { seq }
            });
            LiveText {
                turn,
                attempt,
                seq,
                text: String::new(),
            }
        });
        live.text.push_str(&text);
        let full = live.text.len() >= max_bytes;
        self.outbox.fragment(SessionEvent {
            session_id: self.env.id,
            seq,
            at_unix_ms: now_unix_ms(),
            kind: EventKind::OutputDelta {
                turn,
                attempt,
                text,
            },
        });
        if full {
            self.close_live_text();
            self.flush(myself, false);
        }
    }

    /// The stretch of output at `seq` is due to be journaled (its timer).
    pub fn on_close_output(&mut self, myself: &ActorRef<SessionMsg>, seq: u64) {
        if self.outbox.live.as_ref().is_some_and(|l| l.seq == seq) {
            self.close_live_text();
            self.flush(myself, false);
        }
    }

    /// Stage the output streamed since the last output record as one.
    fn close_live_text(&mut self) {
        let Some(live) = self.outbox.live.take() else {
            return;
        };
        debug_assert_eq!(live.seq, self.durable.state.last_seq + 1);
        self.stage_record(EventKind::OutputDelta {
            turn: live.turn,
            attempt: live.attempt,
            text: live.text,
        });
        self.outbox.staged_live.push(live.seq);
    }

    /// Assign the next seq to a record and apply it to the state; it is
    /// written by the next [`Self::flush`] (records staged together share
    /// one batch, so one fsync).
    pub fn stage(&mut self, kind: EventKind) {
        // Output streamed before it comes first.
        self.close_live_text();
        self.stage_record(kind);
    }

    fn stage_record(&mut self, kind: EventKind) {
        let state = &mut self.durable.state;
        // Tokens of an answer count against the tenant (`tokens_per_minute`)
        // and the principal who sent the turn (`key_tokens_per_minute`); a
        // replay's answers are recorded ones.
        if let EventKind::AssistantMessage { turn, usage, .. } = &kind
            && state.replay_of.is_none()
        {
            let tokens = usage.input_tokens + usage.output_tokens;
            if tokens > 0 {
                let shared = &self.env.shared;
                let now = std::time::Instant::now();
                shared.tenant_tokens.add(&state.tenant, tokens, now);
                if let Some(c) = state.current.as_ref().filter(|c| c.turn == *turn) {
                    shared.principal_tokens.add(
                        &crate::spend::principal_meter_key(&state.tenant, &c.by),
                        tokens,
                        now,
                    );
                }
            }
        }
        let seq = state.last_seq + 1;
        let now = now_unix_ms();
        state.apply(seq, now, &kind);
        self.outbox.staged.push(SessionEvent {
            session_id: self.env.id,
            seq,
            at_unix_ms: now,
            kind,
        });
    }

    /// Whether a turn's first records (`TurnAccepted`, `ModelCallStarted`)
    /// are synced. Not for a one-shot session (a front-door call): nobody
    /// is told of its turn before the answer, and the answer's synced write
    /// covers these records too (the write-ahead log is one sequence). A
    /// process crash keeps them (they are in the log); a machine crash
    /// before the answer loses a call nobody was answered.
    pub fn turn_start_synced(&self) -> bool {
        !self.durable.state.one_shot
    }

    /// Stage records and write everything staged as one batch.
    pub fn commit(&mut self, myself: &ActorRef<SessionMsg>, kinds: Vec<EventKind>, sync: bool) {
        for kind in kinds {
            self.stage(kind);
        }
        self.flush(myself, sync);
    }

    /// Hand the staged records (plus a status change, the gate records and,
    /// now and then, a snapshot) to the writer as one batch; `Written` comes
    /// back when it is durable (or, unsynced, in the WAL).
    pub fn flush(&mut self, myself: &ActorRef<SessionMsg>, sync: bool) {
        if self.outbox.staged.is_empty() {
            return;
        }
        if !self.durable.found {
            // Deleted (or never created): nothing may be written for it,
            // whatever finishes late (a tool, a model answer).
            self.outbox.drop_staged();
            return;
        }
        let id = self.env.id;
        let mut batch = if sync {
            Batch::new()
        } else {
            Batch::unsynced()
        };
        batch.seal_with(self.env.seal.clone());
        let mut audited = 0;
        let mut priced = 0.0;
        let (mut input, mut output) = (0u64, 0u64);
        let auditing = self.env.shared.audit.is_some();
        self.outbox.hand_over(|e| {
            if let EventKind::AssistantMessage {
                cost_usd, usage, ..
            } = &e.kind
            {
                priced += cost_usd.unwrap_or(0.0);
                input += usage.input_tokens;
                output += usage.output_tokens;
            }
            if let EventKind::PolicyEvaluated {
                cost_usd: Some(usd),
                ..
            }
            | EventKind::QualityScored {
                cost_usd: Some(usd),
                ..
            } = &e.kind
            {
                // Policies' classifier and evaluator calls are spent too.
                priced += usd;
            }
            let bytes = batch.append(&id, e.seq, e.at_unix_ms, &e.kind);
            if auditing && crate::audit::is_audited(&e.kind) {
                audited = e.seq;
            }
            bytes
        });
        if audited > 0 {
            // With the records: a crash cannot leave them out of the audit trail.
            batch.put_audit_pending(&id, audited);
        }
        if input + output > 0 && self.durable.state.replay_of.is_none() {
            baton_metrics::metrics().tenant_usage(
                &self.durable.state.tenant,
                input,
                output,
                priced,
            );
        }
        // A replay's answers are recorded ones: nothing was spent.
        if priced > 0.0 && self.durable.state.replay_of.is_none() {
            let tenant = &self.durable.state.tenant;
            let totals = self
                .env
                .shared
                .tenant_spend
                .add(tenant, id, priced, now_unix_ms());
            for (period, total) in totals {
                batch.put_tenant_spend(tenant, &period, &id, total);
            }
        }
        let durable = &mut self.durable;
        let status = durable.state.status();
        if let Some(meta) = &mut durable.meta
            && meta.status != status
        {
            let prev = meta.status;
            meta.status = status;
            meta.status_reason = durable.state.failed.clone().unwrap_or_default();
            meta.updated_at_unix_ms = now_unix_ms();
            batch.put_meta(&id, meta, Some(prev));
        }
        let every = self.env.shared.config.sessions.snapshot_every;
        if sync
            && durable.state.current.is_none()
            && durable.state.last_seq - durable.snapshot_seq >= every
        {
            match baton_store::snapshot::encode(durable.state.last_seq, &durable.state) {
                Ok(bytes) => {
                    batch.put_snapshot(&id, bytes);
                    durable.snapshot_seq = durable.state.last_seq;
                }
                Err(e) => tracing::warn!(session = %id, error = %e, "cannot encode a snapshot"),
            }
        }
        let upto = durable.state.last_seq;
        for (record, previous) in self.gates.staged.drain(..) {
            batch.put_gate(&record, previous.as_ref());
            self.gates.pending.push_back((upto, record));
        }
        let write = self.env.shared.store.write(batch);
        let me = myself.clone();
        let durable = self.model.durable_seq.clone();
        tokio::spawn(async move {
            let result = write.await;
            if result.is_ok() {
                durable.send_if_modified(|d| {
                    let later = upto > *d;
                    if later {
                        *d = upto;
                    }
                    later
                });
            }
            let _ = me.cast(SessionMsg::Written { upto, result });
        });
    }

    /// Everything up to `upto` is durable: answer what waited for it,
    /// publish the gate records, and release the events (audit trail,
    /// metrics, subscribers), in order.
    pub fn on_written(&mut self, upto: u64) {
        let released = self.outbox.release(upto);
        while self
            .gates
            .pending
            .front()
            .is_some_and(|(seq, _)| *seq <= upto)
        {
            if let Some((_, record)) = self.gates.pending.pop_front() {
                // Nobody watching is fine.
                let _ = self.env.shared.gate_events.send(record);
            }
        }
        let turn_ended = released
            .iter()
            .any(|r| matches!(r, Released::Record { event, .. } if event.ends_turn()));
        for r in released {
            match r {
                Released::Record { event, live, bytes } => {
                    self.released(&event);
                    self.outbox.deliver(&event, live, bytes);
                }
                Released::Fragment(event) => self.outbox.deliver_fragment(&event),
            }
        }
        // A one-shot session (a front-door call) has nothing left to do once
        // its turn ended: its streams end after the events they hold, and it
        // leaves memory now rather than after the idle timeout.
        let state = &self.durable.state;
        if turn_ended && state.one_shot && state.current.is_none() && state.queued.is_empty() {
            self.outbox.close_subscribers();
            (self.env.notify)(super::msg::Notice::Passivate(self.env.id));
        }
    }

    /// The side effects of one released event.
    fn released(&mut self, event: &SessionEvent) {
        let shared = &self.env.shared;
        if let Some(audit) = &shared.audit {
            crate::audit::record_event(audit.as_ref(), event, false, self.env.seal.as_deref());
            if crate::audit::is_audited(&event.kind) {
                shared.audit_cursor.note(self.env.id, event.seq);
            }
        }
        let metrics = baton_metrics::metrics();
        match &event.kind {
            EventKind::GateOpened { .. } => metrics.gates_pending_add(1),
            EventKind::GateDecided { .. } => metrics.gates_pending_add(-1),
            _ => {}
        }
        let outcome = match &event.kind {
            EventKind::TurnCompleted { .. } => "completed",
            EventKind::TurnFailed { .. } => "failed",
            EventKind::TurnCancelled { .. } => "cancelled",
            _ => return,
        };
        let turn = event.turn();
        if self
            .model
            .turn_span
            .as_ref()
            .is_some_and(|(t, _)| turn == Some(*t))
        {
            self.model.turn_span = None;
        }
        let secs = self
            .model
            .turn_started
            .filter(|(t, _)| turn == Some(*t))
            .map_or(0.0, |(_, at)| at.elapsed().as_secs_f64());
        metrics.turn_finished(&self.durable.state.tenant, outcome, secs);
    }
}
