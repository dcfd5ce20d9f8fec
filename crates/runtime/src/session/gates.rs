//! Gates held by this session: opened by policy, decided once (by a
//! reviewer, a timeout, a cancel or a submitted result), escalated.

use baton_types::{
    EventKind, GateId, GateKind, GateOutcome, GatePoint, GateRecord, Role, TimeoutAction,
    TurnFailureCode, now_unix_ms,
};
use ractor::{ActorRef, RpcReplyPort};

use super::ctx::{RECENT_DECISIONS, SessionCtx, pending_record};
use super::msg::SessionMsg;
use crate::error::{Error, Result};
use crate::gates::{GateDecision, GateTerms, already_decided, builtin_terms};
use crate::state::PendingGate;

/// "why", or that none was given.
fn why(reason: &str) -> &str {
    if reason.is_empty() {
        "no reason given"
    } else {
        reason
    }
}

impl SessionCtx {
    /// Whether the current turn's final answer must wait for a review:
    /// the client asked for it, or a final_answer / data_rule / confidence
    /// policy fires. Returns the gate terms and the subject (the draft).
    pub fn release_gate(&self) -> Option<(GateTerms, String)> {
        let state = &self.durable.state;
        let current = state.current.as_ref()?;
        let draft = state
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let confidence = self.model.last_confidence;
        let subject = serde_json::json!({ "draft": draft, "confidence": confidence }).to_string();
        let shared = &self.env.shared;
        if current.review {
            let terms = builtin_terms(
                &shared.config.gates.explicit,
                GateKind::Explicit,
                "explicit",
                "the client asked for this answer to be reviewed".into(),
            );
            return Some((terms, subject));
        }
        if let Some(g) = &current.policy_gate
            && let Some(spec) = shared.policies.gate_of(&g.policy, &g.rule)
        {
            let terms = crate::gates::policy_terms(&g.policy, &g.reason, spec);
            return Some((terms, subject));
        }
        shared
            .gate_policies
            .before_release(&state.tenant, &state.route, &draft, confidence)
            .map(|t| (t, subject))
    }

    /// Open a gate: stage its record (journal + gate index) for the next flush.
    pub fn open_gate(
        &mut self,
        turn: u64,
        terms: GateTerms,
        point: GatePoint,
        subject: String,
        call_id: String,
    ) {
        let now = now_unix_ms();
        let gate_id = GateId::new();
        let deadline_unix_ms = if terms.timeout_ms > 0 {
            now + terms.timeout_ms
        } else {
            0
        };
        tracing::info!(session = %self.env.id, turn, %gate_id, policy = %terms.policy, reviewers = %terms.reviewers, "gate opened: {}", terms.reason);
        self.stage(EventKind::GateOpened {
            turn,
            gate_id,
            kind: terms.kind,
            point,
            policy: terms.policy,
            reason: terms.reason,
            reviewers: terms.reviewers,
            subject,
            call_id,
            deadline_unix_ms,
            on_timeout: terms.on_timeout,
        });
        self.stage_pending_record(gate_id);
    }

    /// Stage the current record of a pending gate (from the state) for the
    /// next flush, moving its index entries from the previous one.
    fn stage_pending_record(&mut self, gate_id: GateId) {
        let Some(current) = self.durable.state.current.as_ref() else {
            return;
        };
        let Some(g) = current.gates.iter().find(|g| g.gate_id == gate_id) else {
            return;
        };
        let record = pending_record(self.env.id, &self.durable.state.tenant, current.turn, g);
        let previous = self.gates.records.insert(gate_id, record.clone());
        self.gates.staged.push((record, previous));
    }

    /// Stage a `GateDecided` and the gate's decided record.
    pub fn record_decision(&mut self, turn: u64, gate_id: GateId, outcome: GateOutcome) {
        let kind = self
            .gates
            .records
            .get(&gate_id)
            .map(|r| r.kind.as_str())
            .unwrap_or_default();
        tracing::info_span!(
            parent: &self.turn_parent(turn),
            "gate",
            baton.session.id = %self.env.id,
            baton.gate.id = %gate_id,
            baton.gate.kind = %kind,
            baton.gate.decision = %outcome.decision,
            baton.gate.reviewer = %outcome.reviewer,
        )
        .in_scope(|| tracing::info!("gate decided"));
        self.stage(EventKind::GateDecided {
            turn,
            gate_id,
            decision: outcome.decision,
            reviewer: outcome.reviewer.clone(),
            reason: outcome.reason.clone(),
            edited: outcome.edited.clone(),
            by_timeout: outcome.by_timeout,
        });
        let recent = &mut self.gates.recently_decided;
        recent.push_back((gate_id, outcome.clone()));
        if recent.len() > RECENT_DECISIONS {
            recent.pop_front();
        }
        if let Some(prev) = self.gates.records.remove(&gate_id) {
            let decided = GateRecord {
                outcome: Some(outcome),
                ..prev.clone()
            };
            self.gates.staged.push((decided, Some(prev)));
        }
    }

    /// Why a decision for `gate_id` cannot be taken: decided already (a
    /// race lost, or a repeat), or unknown.
    async fn not_pending(&self, gate_id: GateId) -> Error {
        if let Some((_, o)) = self
            .gates
            .recently_decided
            .iter()
            .find(|(g, _)| *g == gate_id)
        {
            return already_decided(gate_id, o);
        }
        match self.env.shared.store.get_gate(gate_id).await {
            Ok(Some(GateRecord {
                outcome: Some(o), ..
            })) => already_decided(gate_id, &o),
            Ok(_) => Error::NotFoundDetail(format!(
                "session {} has no pending gate {gate_id}",
                self.env.id
            )),
            Err(e) => e.into(),
        }
    }

    /// A reviewer's decision: validated, journaled with its effect in one
    /// batch, answered once durable.
    pub async fn decide_gate(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        gate_id: GateId,
        decision: GateDecision,
        reviewer: String,
        reason: String,
        reply: RpcReplyPort<Result<GateRecord>>,
    ) {
        if let Err(e @ crate::Error::OwnedElsewhere { .. }) = self.ensure_found() {
            let _ = reply.send(Err(e));
            return;
        }
        let Some((turn, gate)) = self.durable.state.pending_gate(gate_id) else {
            let _ = reply.send(Err(self.not_pending(gate_id).await));
            return;
        };
        let extra = match self.decision_records(turn, &gate, &decision, &reviewer, &reason) {
            Ok(extra) => extra,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let edited = match &decision {
            GateDecision::Edit(p) => p.clone(),
            _ => String::new(),
        };
        self.record_decision(
            turn,
            gate.gate_id,
            GateOutcome {
                decision: decision.decision(),
                reviewer,
                reason,
                edited,
                decided_at_unix_ms: now_unix_ms(),
                by_timeout: false,
            },
        );
        let decided = self.gates.staged.last().map(|(r, _)| r.clone());
        for k in extra {
            self.stage(k);
        }
        self.flush(myself, true);
        match decided {
            Some(r) => self
                .outbox
                .ack_gate_at(self.durable.state.last_seq, r, reply),
            None => {
                let _ = reply.send(Err(Error::Internal(format!(
                    "gate {gate_id} has no record"
                ))));
            }
        }
        self.pump(myself);
    }

    /// Validate a decision against the gate's point and return the records
    /// that carry out its effect (next to the `GateDecided` itself).
    fn decision_records(
        &self,
        turn: u64,
        gate: &PendingGate,
        decision: &GateDecision,
        reviewer: &str,
        reason: &str,
    ) -> Result<Vec<EventKind>> {
        let why = why(reason);
        let tool = || {
            self.durable
                .state
                .current
                .as_ref()
                .and_then(|c| c.tools.iter().find(|t| t.call_id == gate.call_id))
                .ok_or_else(|| {
                    Error::Internal(format!("gate {} holds an unknown tool call", gate.gate_id))
                })
        };
        let tool_result = |output: String, is_error: bool| -> Result<Vec<EventKind>> {
            let t = tool()?;
            Ok(vec![EventKind::ToolResult {
                by: String::new(),
                turn,
                call_id: t.call_id.clone(),
                name: t.name.clone(),
                output,
                is_error,
                latency_ms: now_unix_ms().saturating_sub(t.requested_at_unix_ms),
            }])
        };
        if let GateDecision::Edit(p) = decision
            && p.trim().is_empty()
        {
            return Err(Error::InvalidArgument(
                "edited_payload is required for an edit".into(),
            ));
        }
        match (gate.point, decision) {
            (_, GateDecision::Approve) => Ok(Vec::new()),
            (GatePoint::ToolCall, GateDecision::Reject) => tool_result(
                format!("error: a reviewer ({reviewer}) rejected this tool call: {why}"),
                true,
            ),
            (GatePoint::ToolCall, GateDecision::Edit(payload))
                if gate.kind == GateKind::NeedsAttention =>
            {
                // The reviewer supplies the call's result.
                tool_result(payload.clone(), false)
            }
            (GatePoint::ToolCall, GateDecision::Edit(payload)) => {
                let t = tool()?;
                self.env
                    .shared
                    .tools
                    .registry
                    .validate(&t.name, payload)
                    .map_err(|e| Error::InvalidArgument(format!("edited_payload: {e}")))?;
                Ok(Vec::new())
            }
            (GatePoint::FinalAnswer, _) => Ok(Vec::new()),
            (GatePoint::ModelCall, GateDecision::Reject) => Ok(vec![EventKind::TurnFailed {
                turn,
                reason: format!("a reviewer ({reviewer}) rejected the model call: {why}"),
                code: TurnFailureCode::GateRejected,
            }]),
            (GatePoint::ModelCall, GateDecision::Edit(_)) if gate.kind == GateKind::Cost => {
                Err(Error::InvalidArgument(
                    "a cost gate can be approved or rejected, not edited".into(),
                ))
            }
            (GatePoint::ModelCall, GateDecision::Edit(_))
                if self
                    .durable
                    .state
                    .current
                    .as_ref()
                    .is_some_and(|c| c.result_gate.is_some())
                    || gate.policy == "no_eligible_endpoint" =>
            {
                Err(Error::InvalidArgument(
                    "this gate holds a model call (tool results a policy flagged, or data no endpoint is certified for): approve or reject it; edit is for a held user message".into(),
                ))
            }
            (GatePoint::ModelCall, GateDecision::Edit(_)) => Ok(Vec::new()),
        }
    }

    /// Apply a gate's timeout action, if its deadline has passed.
    pub fn gate_timeout(&mut self, myself: &ActorRef<SessionMsg>, gate_id: GateId) {
        let Some((turn, gate)) = self.durable.state.pending_gate(gate_id) else {
            return;
        };
        if gate.deadline_unix_ms == 0 || gate.deadline_unix_ms > now_unix_ms() {
            return;
        }
        let waited = gate.deadline_unix_ms.saturating_sub(gate.opened_at_unix_ms);
        let shared = self.env.shared.clone();
        if gate.on_timeout == TimeoutAction::Escalate
            && let Some((to, ms)) =
                shared
                    .gate_policies
                    .escalation(&shared.config.gates, gate.kind, &gate.policy)
        {
            let deadline_unix_ms = if ms > 0 { now_unix_ms() + ms } else { 0 };
            tracing::info!(session = %self.env.id, gate = %gate_id, to = %to, "gate escalated after its timeout");
            self.stage(EventKind::GateEscalated {
                turn,
                gate_id,
                reviewers: to,
                deadline_unix_ms,
                on_timeout: TimeoutAction::Reject,
            });
            self.stage_pending_record(gate_id);
            self.flush(myself, true);
            return;
        }
        let decision = if gate.on_timeout == TimeoutAction::Approve {
            GateDecision::Approve
        } else {
            GateDecision::Reject
        };
        let reason = format!("no decision within {waited} ms");
        let extra = self
            .decision_records(turn, &gate, &decision, "timeout", &reason)
            .unwrap_or_default();
        self.record_decision(
            turn,
            gate_id,
            GateOutcome {
                decision: decision.decision(),
                reviewer: "timeout".into(),
                reason,
                edited: String::new(),
                decided_at_unix_ms: now_unix_ms(),
                by_timeout: true,
            },
        );
        for k in extra {
            self.stage(k);
        }
        self.flush(myself, true);
        self.pump(myself);
    }
}
