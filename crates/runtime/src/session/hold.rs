//! Hold sessions (a flow's `gate` step): a turn makes no model call. It
//! opens a gate on the turn's message with the session's hold terms, and
//! completes once a reviewer approves or edits it (or its deadline
//! approves it); a rejection fails the turn (`gate_rejected`). The
//! decision — reviewer, reason, edited payload — is the gate's record.

use baton_types::{EventKind, GateKind, GatePoint, Role, Usage};
use ractor::ActorRef;

use super::ctx::SessionCtx;
use super::msg::SessionMsg;
use crate::gates::GateTerms;
use crate::sessions::{HOLD_METADATA_KEY, HoldTerms};

impl SessionCtx {
    /// The terms of a hold session, from its metadata.
    pub(super) fn hold_terms(&self) -> Option<HoldTerms> {
        let raw = self.durable.state.metadata.get(HOLD_METADATA_KEY)?;
        match serde_json::from_str(raw) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(session = %self.env.id, error = %e, "unreadable hold terms");
                None
            }
        }
    }

    /// Take `turn` of a hold session one step: complete it when approved,
    /// else open its gate. False when the turn ended (as
    /// `start_model_call`).
    pub(super) fn hold_turn(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        terms: HoldTerms,
    ) -> bool {
        let state = &self.durable.state;
        let current = state.current.as_ref().filter(|c| c.turn == turn);
        if current.is_some_and(|c| c.is_approved(GatePoint::ModelCall, "")) {
            self.commit(
                myself,
                vec![EventKind::TurnCompleted {
                    turn,
                    usage: Usage::default(),
                }],
                true,
            );
            return false;
        }
        let subject = match current {
            Some(_) => state
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.content.clone()),
            None => state
                .queued
                .iter()
                .find(|q| q.turn == turn)
                .map(|q| q.message.content.clone()),
        }
        .unwrap_or_default();
        let terms = GateTerms {
            kind: GateKind::Flow,
            policy: terms.policy,
            reason: terms.reason,
            reviewers: terms.reviewers,
            timeout_ms: terms.timeout_ms,
            on_timeout: terms.on_timeout,
        };
        self.open_gate(turn, terms, GatePoint::ModelCall, subject, String::new());
        self.flush(myself, true);
        true
    }
}
