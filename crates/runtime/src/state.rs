//! A session's state as a fold over its journal.
//!
//! `SessionState::apply` is the only way state changes, both live (the actor
//! applies each record as it creates it) and on recovery (records after the
//! snapshot are applied in order), so the two can never disagree.

use std::collections::{BTreeMap, VecDeque};

use baton_types::{
    Decision, EventKind, GateId, GateKind, GatePoint, Message, Role, SessionId, SessionStatus,
    TimeoutAction, ToolDefinition, Usage,
};
use serde::{Deserialize, Serialize};

/// A tool call of the current step, from request to result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct PendingTool {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
    pub client_side: bool,
    pub requested_at_unix_ms: u64,
    /// A `ToolCallStarted` is recorded (the tool may have run).
    pub started: bool,
    pub attempt: u32,
    /// `(output, is_error)` once recorded.
    pub result: Option<(String, bool)>,
    /// Set while the call waits for a decision (`NeedsAttention`).
    pub attention: Option<String>,
}

/// A gate of the current turn waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct PendingGate {
    pub gate_id: GateId,
    pub kind: GateKind,
    pub point: GatePoint,
    pub policy: String,
    pub reason: String,
    pub reviewers: String,
    pub subject: String,
    pub call_id: String,
    pub opened_at_unix_ms: u64,
    pub deadline_unix_ms: u64,
    pub on_timeout: TimeoutAction,
    pub escalations: u32,
}

impl PendingGate {
    /// The point this gate holds, as an approval key.
    pub fn key(&self, steps: u32) -> String {
        gate_key(self.point, &self.call_id, steps)
    }
}

/// The approval key of a gate point: approving it lets that exact point pass.
pub fn gate_key(point: GatePoint, call_id: &str, steps: u32) -> String {
    match point {
        GatePoint::ToolCall => format!("tool:{call_id}"),
        GatePoint::ModelCall => format!("model:{}", steps + 1),
        GatePoint::FinalAnswer => format!("final:{steps}"),
    }
}

/// The turn whose model call has started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct CurrentTurn {
    pub turn: u64,
    /// The last journaled attempt number (`ModelCallStarted.attempt`).
    pub attempt: u32,
    pub endpoint: String,
    /// Whether the model's final answer (one without tool calls) is
    /// recorded: the turn then only needs its completion record.
    pub response_recorded: bool,
    pub usage: Usage,
    /// Model calls of this turn (steps of the agentic loop); retries and
    /// recovery re-issues do not count.
    pub steps: u32,
    /// A `ModelCallStarted` without its answer yet.
    pub model_call_open: bool,
    /// Tool calls of the current step, in the model's order; emptied when
    /// every result is recorded (the results then join `messages`).
    pub tools: Vec<PendingTool>,
    /// Gates waiting for a decision.
    #[serde(default)]
    pub gates: Vec<PendingGate>,
    /// Gate points approved in this turn (see [`gate_key`]).
    #[serde(default)]
    pub approved: Vec<String>,
    /// The client asked for the final answer to be reviewed.
    #[serde(default)]
    pub review: bool,
    /// Cost of this turn's model calls, in USD.
    #[serde(default)]
    pub cost_usd: f64,
    /// Who sent the turn (a principal label).
    #[serde(default)]
    pub by: String,
    /// Answers output policies sent back for revision in this turn.
    #[serde(default)]
    pub revisions: u32,
    /// An output policy's `gate` rule holds the recorded answer's release.
    #[serde(default)]
    pub policy_gate: Option<PolicyGate>,
    /// A tool-result policy's `gate` rule holds the next model call (the
    /// one that would see the result).
    #[serde(default)]
    pub result_gate: Option<PolicyGate>,
}

/// A `gate` rule of an output policy that matched the recorded answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct PolicyGate {
    pub policy: String,
    pub rule: String,
    /// Why, for the reviewer.
    pub reason: String,
}

impl CurrentTurn {
    fn new(turn: u64, review: bool, by: String) -> Self {
        CurrentTurn {
            turn,
            attempt: 0,
            endpoint: String::new(),
            response_recorded: false,
            usage: Usage::default(),
            steps: 0,
            model_call_open: false,
            tools: Vec::new(),
            gates: Vec::new(),
            approved: Vec::new(),
            review,
            cost_usd: 0.0,
            by,
            revisions: 0,
            policy_gate: None,
            result_gate: None,
        }
    }

    pub fn is_approved(&self, point: GatePoint, call_id: &str) -> bool {
        let key = gate_key(point, call_id, self.steps);
        self.approved.contains(&key)
    }

    /// The call waiting for a decision, if any.
    pub fn attention(&self) -> Option<&PendingTool> {
        self.tools
            .iter()
            .find(|t| t.attention.is_some() && t.result.is_none())
    }
}

/// An accepted turn waiting to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct QueuedTurn {
    pub turn: u64,
    pub message: Message,
    /// The client asked for the final answer to be reviewed.
    pub review: bool,
    /// Who sent it (a principal label, see `baton_types::Principal`).
    pub by: String,
}

/// Everything a session's actor holds, rebuildable from the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct SessionState {
    pub id: SessionId,
    pub route: String,
    pub system_prompt: String,
    pub created_at_unix_ms: u64,
    /// The conversation: user and assistant messages in turn order.
    pub messages: Vec<Message>,
    /// Highest accepted turn number.
    pub last_turn: u64,
    /// Accepted turns waiting to start, in order.
    pub queued: VecDeque<QueuedTurn>,
    pub current: Option<CurrentTurn>,
    pub usage: Usage,
    pub turns_completed: u64,
    pub turns_failed: u64,
    pub turns_cancelled: u64,
    /// Seq of the last applied record.
    pub last_seq: u64,
    pub failed: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Server-side tools this session may use (names or patterns).
    pub allowed_tools: Vec<String>,
    /// Tools the client runs (answered with SubmitToolResult).
    pub client_tools: Vec<ToolDefinition>,
    /// Most model calls per turn (0 = the configured default).
    pub max_steps: u32,
    /// Session budget in USD.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// Cost of the session's model calls so far, in USD.
    #[serde(default)]
    pub cost_usd: f64,
    /// Data classes the session's content carries.
    #[serde(default)]
    pub data_classes: Vec<String>,
    /// A one-turn session: tool calls end the turn (the client runs them).
    #[serde(default)]
    pub one_shot: bool,
    /// How the session's model calls generate.
    #[serde(default)]
    pub generation: baton_types::Generation,
    /// For replay sessions: the session replayed.
    #[serde(default)]
    pub replay_of: Option<String>,
    /// The tenant the session belongs to.
    pub tenant: String,
}

impl SessionState {
    pub fn new(id: SessionId) -> Self {
        Self {
            tenant: baton_types::DEFAULT_TENANT.into(),
            id,
            route: String::new(),
            system_prompt: String::new(),
            created_at_unix_ms: 0,
            messages: Vec::new(),
            last_turn: 0,
            queued: VecDeque::new(),
            current: None,
            usage: Usage::default(),
            turns_completed: 0,
            turns_failed: 0,
            turns_cancelled: 0,
            last_seq: 0,
            failed: None,
            metadata: BTreeMap::new(),
            allowed_tools: Vec::new(),
            client_tools: Vec::new(),
            max_steps: 0,
            budget_usd: None,
            cost_usd: 0.0,
            data_classes: Vec::new(),
            one_shot: false,
            generation: Default::default(),
            replay_of: None,
        }
    }

    pub fn status(&self) -> SessionStatus {
        if self.failed.is_some() {
            SessionStatus::Failed
        } else if self
            .current
            .as_ref()
            .is_some_and(|c| c.attention().is_some() || !c.gates.is_empty())
        {
            SessionStatus::NeedsAttention
        } else if self.current.is_some() || !self.queued.is_empty() {
            SessionStatus::Running
        } else {
            SessionStatus::Idle
        }
    }

    /// Apply one journal record. Records must come in seq order.
    pub fn apply(&mut self, seq: u64, at_unix_ms: u64, kind: &EventKind) {
        self.last_seq = seq;
        match kind {
            EventKind::SessionStarted {
                route,
                system_prompt,
                allowed_tools,
                client_tools,
                max_steps,
                budget_usd,
                data_classes,
                one_shot,
                history,
                generation,
                replay_of,
                tenant,
                by: _,
            } => {
                self.tenant = if tenant.is_empty() {
                    baton_types::DEFAULT_TENANT.to_string()
                } else {
                    tenant.clone()
                };
                self.generation = generation.clone();
                self.budget_usd = *budget_usd;
                self.data_classes = data_classes.clone();
                self.one_shot = *one_shot;
                self.messages = history.clone();
                self.replay_of = replay_of.clone();
                self.route = route.clone();
                self.system_prompt = system_prompt.clone();
                self.created_at_unix_ms = at_unix_ms;
                self.allowed_tools = allowed_tools.clone();
                self.client_tools = client_tools.clone();
                self.max_steps = *max_steps;
            }
            EventKind::TurnAccepted {
                turn,
                message,
                review,
                by,
            } => {
                self.last_turn = self.last_turn.max(*turn);
                self.queued.push_back(QueuedTurn {
                    turn: *turn,
                    message: message.clone(),
                    review: *review,
                    by: by.clone(),
                });
            }
            EventKind::ModelCallStarted {
                turn,
                attempt,
                endpoint,
                reason,
            } => {
                if let Some(c) = self.promote(*turn) {
                    c.attempt = *attempt;
                    c.endpoint = endpoint.clone();
                    c.model_call_open = true;
                    c.result_gate = None;
                    if reason.is_new_step() {
                        c.steps += 1;
                    }
                }
            }
            EventKind::PolicyEvaluated {
                turn,
                stage,
                hits,
                cost_usd,
            } => {
                let usd = cost_usd.unwrap_or(0.0);
                self.cost_usd += usd;
                let refused = *stage == baton_types::PolicyStage::Input
                    && hits
                        .iter()
                        .any(|h| h.outcome == baton_types::PolicyOutcome::Refuse);
                if refused {
                    // The refusal answers the turn: it starts here.
                    self.promote(*turn);
                }
                if let Some(c) = self.current_turn_mut(*turn) {
                    c.cost_usd += usd;
                }
                if *stage == baton_types::PolicyStage::Output {
                    self.apply_output_policy(*turn, hits);
                }
                // A one-shot session's tool calls go to its client: a gate
                // on their arguments holds the answer's release.
                if *stage == baton_types::PolicyStage::ToolArguments
                    && self.one_shot
                    && let Some(h) = hits
                        .iter()
                        .find(|h| h.outcome == baton_types::PolicyOutcome::Gate)
                    && let Some(c) = self.current_turn_mut(*turn)
                {
                    c.policy_gate = Some(PolicyGate {
                        policy: h.policy.clone(),
                        rule: h.rule.clone(),
                        reason: h.message.clone(),
                    });
                }
                if *stage == baton_types::PolicyStage::ToolResult
                    && let Some(h) = hits
                        .iter()
                        .find(|h| h.outcome == baton_types::PolicyOutcome::Gate)
                    && let Some(c) = self.current_turn_mut(*turn)
                    && c.result_gate.is_none()
                {
                    c.result_gate = Some(PolicyGate {
                        policy: h.policy.clone(),
                        rule: h.rule.clone(),
                        reason: h.message.clone(),
                    });
                }
            }
            EventKind::QualityScored { turn, cost_usd, .. } => {
                let usd = cost_usd.unwrap_or(0.0);
                self.cost_usd += usd;
                if let Some(c) = self.current_turn_mut(*turn) {
                    c.cost_usd += usd;
                }
            }
            EventKind::OutputDelta { .. }
            | EventKind::RoutingDecided { .. }
            | EventKind::AttemptFailed { .. } => {}
            EventKind::OutputRetracted { turn, attempt, .. } => {
                if let Some(c) = self.current_turn_mut(*turn) {
                    c.attempt = *attempt;
                }
            }
            EventKind::AssistantMessage {
                turn,
                message,
                usage,
                cost_usd,
                ..
            } => {
                self.messages.push(message.clone());
                self.usage.add(*usage);
                self.cost_usd += cost_usd.unwrap_or(0.0);
                let one_shot = self.one_shot;
                if let Some(c) = &mut self.current
                    && c.turn == *turn
                {
                    c.model_call_open = false;
                    c.policy_gate = None;
                    c.response_recorded = one_shot || message.tool_calls.is_empty();
                    c.usage.add(*usage);
                    c.cost_usd += cost_usd.unwrap_or(0.0);
                }
            }
            EventKind::ToolCallRequested {
                turn,
                call_id,
                name,
                arguments,
                client_side,
            } => {
                if let Some(c) = self.current_turn_mut(*turn) {
                    c.tools.push(PendingTool {
                        call_id: call_id.clone(),
                        name: name.clone(),
                        arguments: arguments.clone(),
                        client_side: *client_side,
                        requested_at_unix_ms: at_unix_ms,
                        started: false,
                        attempt: 0,
                        result: None,
                        attention: None,
                    });
                }
            }
            EventKind::ToolCallStarted {
                turn,
                call_id,
                attempt,
                ..
            } => {
                if let Some(t) = self.pending_tool_mut(*turn, call_id) {
                    t.started = true;
                    t.attempt = *attempt;
                }
            }
            EventKind::NeedsAttention {
                turn,
                call_id,
                reason,
            } => {
                if let Some(t) = self.pending_tool_mut(*turn, call_id) {
                    t.attention = Some(reason.clone());
                }
            }
            EventKind::ToolResult {
                turn,
                call_id,
                output,
                is_error,
                ..
            } => {
                if let Some(t) = self.pending_tool_mut(*turn, call_id) {
                    t.result = Some((output.clone(), *is_error));
                    t.attention = None;
                }
                // Every result in: they join the conversation in the
                // model's call order, whatever order they finished in.
                if let Some(c) = self.current_turn_mut(*turn)
                    && !c.tools.is_empty()
                    && c.tools.iter().all(|t| t.result.is_some())
                {
                    let tools = std::mem::take(&mut c.tools);
                    for t in tools {
                        let (content, _) = t.result.unwrap_or_default();
                        self.messages.push(Message {
                            role: Role::Tool,
                            content,
                            tool_calls: Vec::new(),
                            tool_call_id: Some(t.call_id),
                            images: Vec::new(),
                        });
                    }
                }
            }
            EventKind::GateOpened {
                turn,
                gate_id,
                kind,
                point,
                policy,
                reason,
                reviewers,
                subject,
                call_id,
                deadline_unix_ms,
                on_timeout,
            } => {
                if let Some(c) = self.promote(*turn) {
                    c.gates.push(PendingGate {
                        gate_id: *gate_id,
                        kind: *kind,
                        point: *point,
                        policy: policy.clone(),
                        reason: reason.clone(),
                        reviewers: reviewers.clone(),
                        subject: subject.clone(),
                        call_id: call_id.clone(),
                        opened_at_unix_ms: at_unix_ms,
                        deadline_unix_ms: *deadline_unix_ms,
                        on_timeout: *on_timeout,
                        escalations: 0,
                    });
                }
            }
            EventKind::GateEscalated {
                turn,
                gate_id,
                reviewers,
                deadline_unix_ms,
                on_timeout,
            } => {
                if let Some(g) = self
                    .current_turn_mut(*turn)
                    .and_then(|c| c.gates.iter_mut().find(|g| g.gate_id == *gate_id))
                {
                    g.reviewers = reviewers.clone();
                    g.deadline_unix_ms = *deadline_unix_ms;
                    g.on_timeout = *on_timeout;
                    g.escalations += 1;
                }
            }
            EventKind::GateDecided {
                turn,
                gate_id,
                decision,
                reviewer,
                reason,
                edited,
                ..
            } => self.apply_decision(*turn, *gate_id, *decision, reviewer, reason, edited),
            EventKind::TurnCompleted { turn, .. } => {
                self.end_turn(*turn);
                self.turns_completed += 1;
            }
            EventKind::TurnFailed { turn, code, .. } => {
                // A blocked message never joins the conversation: no later
                // model call may send it. It is blocked before the turn's
                // first model call, so it is the last message.
                if *code == baton_types::TurnFailureCode::PolicyBlocked
                    && self
                        .current
                        .as_ref()
                        .is_some_and(|c| c.turn == *turn && c.steps == 0)
                    && self.messages.last().is_some_and(|m| m.role == Role::User)
                {
                    self.messages.pop();
                }
                self.end_turn(*turn);
                self.turns_failed += 1;
            }
            EventKind::TurnCancelled { turn, .. } => {
                self.end_turn(*turn);
                self.turns_cancelled += 1;
            }
            EventKind::SessionFailed { reason } => {
                self.failed = Some(reason.clone());
            }
        }
    }

    /// The current turn, starting `turn` from the queue if it is not
    /// current yet (its first record may be a model call or a gate).
    fn promote(&mut self, turn: u64) -> Option<&mut CurrentTurn> {
        if self.current.as_ref().is_none_or(|c| c.turn != turn)
            && let Some(pos) = self.queued.iter().position(|q| q.turn == turn)
            && let Some(q) = self.queued.remove(pos)
        {
            self.messages.push(q.message);
            self.current = Some(CurrentTurn::new(turn, q.review, q.by));
        }
        self.current_turn_mut(turn)
    }

    /// An answer output policies withheld (`block`, or `revise`): the
    /// conversation keeps a marker in its place; a revision also asks the
    /// model again with the rule's instruction.
    fn apply_output_policy(&mut self, turn: u64, hits: &[baton_types::PolicyHit]) {
        use baton_types::PolicyOutcome as O;
        let withheld = hits
            .iter()
            .find(|h| h.outcome == O::Block)
            .or_else(|| hits.iter().find(|h| h.outcome == O::Revise));
        let Some(hit) = withheld else {
            if let Some(h) = hits.iter().find(|h| h.outcome == O::Gate)
                && let Some(c) = self.current_turn_mut(turn)
            {
                c.policy_gate = Some(PolicyGate {
                    policy: h.policy.clone(),
                    rule: h.rule.clone(),
                    reason: h.message.clone(),
                });
            }
            return;
        };
        if let Some(m) = self
            .messages
            .last_mut()
            .filter(|m| m.role == Role::Assistant)
        {
            m.content = format!("[answer withheld by policy {}/{}]", hit.policy, hit.rule);
        }
        if hit.outcome == O::Revise
            && let Some(c) = self.current_turn_mut(turn)
        {
            c.response_recorded = false;
            c.revisions += 1;
            self.messages.push(Message::user(format!(
                "[policy] {} Revise your answer.",
                hit.message
            )));
        }
    }

    /// What a decision does to the state. Effects that need their own
    /// records (a tool error result, a failed turn) are journaled by the
    /// session next to the decision.
    fn apply_decision(
        &mut self,
        turn: u64,
        gate_id: GateId,
        decision: Decision,
        reviewer: &str,
        reason: &str,
        edited: &str,
    ) {
        let Some(c) = self.current_turn_mut(turn) else {
            return;
        };
        let Some(pos) = c.gates.iter().position(|g| g.gate_id == gate_id) else {
            return;
        };
        let gate = c.gates.remove(pos);
        let key = gate.key(c.steps);
        match (gate.point, decision) {
            (_, Decision::Approve) => {
                c.approved.push(key);
                if gate.kind == GateKind::NeedsAttention
                    && let Some(t) = c.tools.iter_mut().find(|t| t.call_id == gate.call_id)
                {
                    // Approved: run it again, knowing it may have run.
                    t.attention = None;
                    t.started = false;
                }
            }
            (GatePoint::ToolCall, Decision::Edit) if gate.kind != GateKind::NeedsAttention => {
                c.approved.push(key);
                if let Some(t) = c.tools.iter_mut().find(|t| t.call_id == gate.call_id) {
                    t.arguments = edited.to_string();
                }
            }
            (GatePoint::FinalAnswer, Decision::Edit) => {
                c.approved.push(key);
                if let Some(m) = self
                    .messages
                    .iter_mut()
                    .rev()
                    .find(|m| m.role == Role::Assistant)
                {
                    m.content = edited.to_string();
                }
            }
            (GatePoint::FinalAnswer, Decision::Reject) => {
                // The model gets the reviewer's reason and tries again.
                c.response_recorded = false;
                let why = if reason.is_empty() {
                    "no reason given"
                } else {
                    reason
                };
                self.messages.push(Message::user(format!(
                    "[review] {reviewer} rejected the draft answer: {why}. Revise it."
                )));
            }
            (GatePoint::ModelCall, Decision::Edit) => {
                c.approved.push(key);
                if let Some(m) = self
                    .messages
                    .iter_mut()
                    .rev()
                    .find(|m| m.role == Role::User)
                {
                    m.content = edited.to_string();
                }
            }
            _ => {}
        }
    }

    fn current_turn_mut(&mut self, turn: u64) -> Option<&mut CurrentTurn> {
        self.current.as_mut().filter(|c| c.turn == turn)
    }

    fn pending_tool_mut(&mut self, turn: u64, call_id: &str) -> Option<&mut PendingTool> {
        self.current_turn_mut(turn)?
            .tools
            .iter_mut()
            .find(|t| t.call_id == call_id)
    }

    /// A tool call of `turn` (the current turn) still without a result.
    pub fn unanswered_tool(&self, turn: u64, call_id: &str) -> Option<&PendingTool> {
        self.current
            .as_ref()
            .filter(|c| c.turn == turn)?
            .tools
            .iter()
            .find(|t| t.call_id == call_id && t.result.is_none())
    }

    /// A pending gate of the current turn, with the turn.
    pub fn pending_gate(&self, gate_id: GateId) -> Option<(u64, PendingGate)> {
        let c = self.current.as_ref()?;
        c.gates
            .iter()
            .find(|g| g.gate_id == gate_id)
            .map(|g| (c.turn, g.clone()))
    }

    /// Whether a tool call of this session already has a recorded result
    /// (in the current step, or in the conversation).
    pub fn tool_call_answered(&self, call_id: &str) -> bool {
        let in_step = self.current.as_ref().is_some_and(|c| {
            c.tools
                .iter()
                .any(|t| t.call_id == call_id && t.result.is_some())
        });
        in_step
            || self
                .messages
                .iter()
                .any(|m| m.role == Role::Tool && m.tool_call_id.as_deref() == Some(call_id))
    }

    fn end_turn(&mut self, turn: u64) {
        if self.current.as_ref().is_some_and(|c| c.turn == turn) {
            self.current = None;
        } else {
            self.queued.retain(|q| q.turn != turn);
        }
    }

    /// The model's input for the current turn: system prompt plus the conversation.
    pub fn model_messages(&self) -> Vec<Message> {
        let mut out = Vec::with_capacity(self.messages.len() + 1);
        if !self.system_prompt.is_empty() {
            out.push(Message::system(self.system_prompt.clone()));
        }
        out.extend(self.messages.iter().cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(kinds: &[EventKind]) -> SessionState {
        let mut s = SessionState::new(SessionId::from_bytes([1; 16]));
        for (i, k) in kinds.iter().enumerate() {
            s.apply(i as u64 + 1, 100, k);
        }
        s
    }

    fn started(turn: u64, attempt: u32) -> EventKind {
        EventKind::ModelCallStarted {
            turn,
            attempt,
            endpoint: "e".into(),
            reason: baton_types::ModelCallReason::Turn,
        }
    }

    #[test]
    fn a_full_turn_moves_through_queue_current_and_messages() {
        let s = fold(&[
            EventKind::SessionStarted {
                by: String::new(),
                tenant: baton_types::DEFAULT_TENANT.into(),
                route: "e".into(),
                system_prompt: "sys".into(),
                allowed_tools: vec![],
                client_tools: vec![],
                max_steps: 0,
                budget_usd: None,
                data_classes: Vec::new(),
                one_shot: false,
                history: Vec::new(),
                generation: Default::default(),
                replay_of: None,
            },
            EventKind::TurnAccepted {
                by: String::new(),
                turn: 1,
                message: Message::user("a"),
                review: false,
            },
            EventKind::TurnAccepted {
                by: String::new(),
                turn: 2,
                message: Message::user("b"),
                review: false,
            },
        ]);
        assert_eq!(s.status(), SessionStatus::Running);
        assert_eq!(s.queued.len(), 2);
        let mut s2 = s.clone();
        s2.apply(4, 0, &started(1, 1));
        assert_eq!(s2.messages, vec![Message::user("a")]);
        assert_eq!(s2.model_messages()[0], Message::system("sys"));
        s2.apply(
            5,
            0,
            &EventKind::AssistantMessage {
                turn: 1,
                message: Message::assistant("A"),
                usage: Usage {
                    input_tokens: 1,
                    output_tokens: 2,
                },
                endpoint: "e".into(),
                model: "m".into(),
                finish_reason: baton_types::FinishReason::Stop,
                latency_ms: 1,
                cost_usd: None,
                attempts: 1,
                schema_validated: false,
                output_resumed: baton_types::OutputResume::None,
            },
        );
        assert!(s2.current.as_ref().unwrap().response_recorded);
        s2.apply(
            6,
            0,
            &EventKind::TurnCompleted {
                turn: 1,
                usage: Usage::default(),
            },
        );
        assert!(s2.current.is_none());
        assert_eq!(s2.queued.len(), 1);
        assert_eq!(s2.turns_completed, 1);
        assert_eq!(s2.usage.total(), 3);
        s2.apply(
            7,
            0,
            &EventKind::TurnCancelled {
                by: String::new(),
                turn: 2,
            },
        );
        assert_eq!(s2.status(), SessionStatus::Idle);
        assert_eq!(s2.last_seq, 7);
    }

    #[test]
    fn a_reissued_call_keeps_the_turn_and_bumps_the_attempt() {
        let mut s = fold(&[
            EventKind::SessionStarted {
                by: String::new(),
                tenant: baton_types::DEFAULT_TENANT.into(),
                route: "e".into(),
                system_prompt: String::new(),
                allowed_tools: vec![],
                client_tools: vec![],
                max_steps: 0,
                budget_usd: None,
                data_classes: Vec::new(),
                one_shot: false,
                history: Vec::new(),
                generation: Default::default(),
                replay_of: None,
            },
            EventKind::TurnAccepted {
                by: String::new(),
                turn: 1,
                message: Message::user("a"),
                review: false,
            },
            started(1, 1),
        ]);
        s.apply(
            4,
            0,
            &EventKind::ModelCallStarted {
                turn: 1,
                attempt: 2,
                endpoint: "e".into(),
                reason: baton_types::ModelCallReason::Recovery,
            },
        );
        assert_eq!(s.messages.len(), 1, "the user message is not added twice");
        assert_eq!(s.current.as_ref().unwrap().attempt, 2);
    }

    #[test]
    fn session_failed_wins_over_everything() {
        let s = fold(&[
            EventKind::TurnAccepted {
                by: String::new(),
                turn: 1,
                message: Message::user("a"),
                review: false,
            },
            EventKind::SessionFailed {
                reason: "bad".into(),
            },
        ]);
        assert_eq!(s.status(), SessionStatus::Failed);
    }

    #[test]
    fn tool_results_join_the_conversation_in_call_order() {
        let mut s = fold(&[
            EventKind::TurnAccepted {
                by: String::new(),
                turn: 1,
                message: Message::user("a"),
                review: false,
            },
            started(1, 1),
        ]);
        let call = |id: &str| baton_types::ToolCall {
            id: id.into(),
            name: "t".into(),
            arguments: "{}".into(),
        };
        let mut answer = Message::assistant("");
        answer.tool_calls = vec![call("c1"), call("c2")];
        let records = [
            EventKind::AssistantMessage {
                turn: 1,
                message: answer,
                usage: Usage::default(),
                endpoint: "e".into(),
                model: "m".into(),
                finish_reason: baton_types::FinishReason::ToolCalls,
                latency_ms: 1,
                cost_usd: None,
                attempts: 1,
                schema_validated: false,
                output_resumed: baton_types::OutputResume::None,
            },
            EventKind::ToolCallRequested {
                turn: 1,
                call_id: "c1".into(),
                name: "t".into(),
                arguments: "{}".into(),
                client_side: false,
            },
            EventKind::ToolCallRequested {
                turn: 1,
                call_id: "c2".into(),
                name: "t".into(),
                arguments: "{}".into(),
                client_side: true,
            },
            EventKind::ToolCallStarted {
                turn: 1,
                call_id: "c1".into(),
                name: "t".into(),
                attempt: 1,
            },
        ];
        for (i, r) in records.iter().enumerate() {
            s.apply(10 + i as u64, 0, r);
        }
        let c = s.current.as_ref().unwrap();
        assert!(!c.response_recorded, "tool calls are not a final answer");
        assert!(!c.model_call_open);
        assert_eq!(c.tools.len(), 2);
        assert!(c.tools[0].started && !c.tools[1].started);
        // c2 answers first; c1 needs attention, then is answered.
        let result = |id: &str, out: &str| EventKind::ToolResult {
            by: String::new(),
            turn: 1,
            call_id: id.into(),
            name: "t".into(),
            output: out.into(),
            is_error: false,
            latency_ms: 0,
        };
        s.apply(20, 0, &result("c2", "two"));
        s.apply(
            21,
            0,
            &EventKind::NeedsAttention {
                turn: 1,
                call_id: "c1".into(),
                reason: "r".into(),
            },
        );
        assert_eq!(s.status(), SessionStatus::NeedsAttention);
        assert!(s.tool_call_answered("c2"));
        assert!(!s.tool_call_answered("c1"));
        s.apply(22, 0, &result("c1", "one"));
        assert_eq!(s.status(), SessionStatus::Running);
        let c = s.current.as_ref().unwrap();
        assert!(c.tools.is_empty(), "step complete");
        let tail: Vec<_> = s.messages[2..]
            .iter()
            .map(|m| (m.role, m.content.as_str(), m.tool_call_id.as_deref()))
            .collect();
        assert_eq!(
            tail,
            vec![
                (Role::Tool, "one", Some("c1")),
                (Role::Tool, "two", Some("c2"))
            ],
            "results in the model's call order, not completion order"
        );
        assert!(s.tool_call_answered("c1"));
        // The next model call is a new step.
        s.apply(
            23,
            0,
            &EventKind::ModelCallStarted {
                turn: 1,
                attempt: 2,
                endpoint: "e".into(),
                reason: baton_types::ModelCallReason::ToolResults,
            },
        );
        assert_eq!(s.current.as_ref().unwrap().steps, 2);
    }

    /// A state with everything a snapshot must carry: history with an image,
    /// generation settings, a user message with images, an answer with tool
    /// calls, tool calls pending (one started), an open gate, usage and
    /// cost, a queued turn, metadata.
    fn realistic() -> SessionState {
        let image = |url: &str, detail: Option<&str>| baton_types::Image {
            url: url.into(),
            detail: detail.map(Into::into),
        };
        let mut history_image = Message::user("what is in this picture?");
        history_image.images = vec![image("https://example.com/cat.png", None)];
        let mut with_images = Message::user("and these?");
        with_images.images = vec![
            image("data:image/png;base64,iVBORw0KGgo=", Some("low")),
            image("https://example.com/dog.jpg", Some("high")),
        ];
        let mut answer = Message::assistant("let me look that up");
        answer.tool_calls = vec![
            baton_types::ToolCall {
                id: "c1".into(),
                name: "search".into(),
                arguments: r#"{"q":"dogs"}"#.into(),
            },
            baton_types::ToolCall {
                id: "c2".into(),
                name: "pay".into(),
                arguments: r#"{"amount":3}"#.into(),
            },
        ];
        let mut s = fold(&[
            EventKind::SessionStarted {
                by: String::new(),
                tenant: baton_types::DEFAULT_TENANT.into(),
                route: "chain".into(),
                system_prompt: "be careful".into(),
                allowed_tools: vec!["search".into(), "pay*".into()],
                client_tools: vec![ToolDefinition {
                    name: "lookup".into(),
                    description: "d".into(),
                    parameters: "{}".into(),
                }],
                max_steps: 5,
                budget_usd: Some(1.25),
                data_classes: vec!["pii".into()],
                one_shot: false,
                history: vec![history_image, Message::assistant("a cat")],
                generation: baton_types::Generation {
                    temperature: Some(0.3),
                    top_p: Some(0.9),
                    max_output_tokens: Some(256),
                    stop: vec!["END".into()],
                    tool_choice: baton_types::ToolChoice::Tool("search".into()),
                    json_schema: Some(r#"{"type":"object"}"#.into()),
                },
                replay_of: None,
            },
            EventKind::TurnAccepted {
                by: String::new(),
                turn: 1,
                message: with_images,
                review: true,
            },
            started(1, 1),
            EventKind::AssistantMessage {
                turn: 1,
                message: answer,
                usage: Usage {
                    input_tokens: 120,
                    output_tokens: 17,
                },
                endpoint: "cheap".into(),
                model: "m-1".into(),
                finish_reason: baton_types::FinishReason::Other("weird".into()),
                latency_ms: 80,
                cost_usd: Some(0.002),
                attempts: 2,
                schema_validated: true,
                output_resumed: baton_types::OutputResume::None,
            },
            EventKind::ToolCallRequested {
                turn: 1,
                call_id: "c1".into(),
                name: "search".into(),
                arguments: r#"{"q":"dogs"}"#.into(),
                client_side: false,
            },
            EventKind::ToolCallRequested {
                turn: 1,
                call_id: "c2".into(),
                name: "pay".into(),
                arguments: r#"{"amount":3}"#.into(),
                client_side: false,
            },
            EventKind::ToolCallStarted {
                turn: 1,
                call_id: "c1".into(),
                name: "search".into(),
                attempt: 1,
            },
            EventKind::GateOpened {
                turn: 1,
                gate_id: baton_types::GateId::new(),
                kind: GateKind::BeforeTool,
                point: GatePoint::ToolCall,
                policy: "payments".into(),
                reason: "tool pay needs approval".into(),
                reviewers: "finance".into(),
                subject: r#"{"tool":"pay"}"#.into(),
                call_id: "c2".into(),
                deadline_unix_ms: 99,
                on_timeout: TimeoutAction::Escalate,
            },
            EventKind::TurnAccepted {
                by: String::new(),
                turn: 2,
                message: Message::user("next"),
                review: false,
            },
        ]);
        s.metadata.insert("tier".into(), "gold".into());
        s.failed = None;
        s
    }

    #[test]
    fn a_realistic_state_round_trips_through_a_snapshot() {
        let s = realistic();
        let c = s.current.as_ref().unwrap();
        assert_eq!((c.tools.len(), c.gates.len()), (2, 1));
        assert!(c.tools[0].started && c.review);
        assert_eq!(s.queued.len(), 1);
        assert_eq!(s.messages[0].images.len(), 1);
        assert!(s.messages[1].images.is_empty());
        let bytes = baton_store::snapshot::encode(s.last_seq, &s).unwrap();
        let (seq, back) = baton_store::snapshot::decode::<SessionState>(&bytes).unwrap();
        assert_eq!(seq, s.last_seq);
        assert_eq!(back, s);
    }

    #[test]
    fn a_damaged_snapshot_of_a_realistic_state_is_refused_not_misread() {
        let s = realistic();
        let bytes = baton_store::snapshot::encode(s.last_seq, &s).unwrap();
        for n in [0, 1, 9, 10, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(
                baton_store::snapshot::decode::<SessionState>(&bytes[..n]),
                None,
                "truncated to {n} bytes"
            );
        }
        // Every 8-byte window set to a huge length: refused or decoded,
        // never an allocation from it (which would abort the test).
        for at in (9..bytes.len().saturating_sub(8)).step_by(3) {
            let mut bad = bytes.clone();
            bad[at..at + 8].copy_from_slice(&(1u64 << 50).to_be_bytes());
            let _ = baton_store::snapshot::decode::<SessionState>(&bad);
        }
    }

    proptest::proptest! {
        /// A snapshot damaged anywhere (bytes changed, cut, or inserted) is
        /// refused or decoded, never a panic or a huge allocation.
        #[test]
        fn damaged_snapshots_never_panic(
            edits in proptest::collection::vec(
                (proptest::num::usize::ANY, proptest::num::u8::ANY, 0u8..3),
                1..8,
            ),
        ) {
            let s = realistic();
            let mut bytes = baton_store::snapshot::encode(s.last_seq, &s).unwrap();
            for (at, byte, how) in edits {
                let at = at % (bytes.len() + 1);
                match how {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, byte),
                }
            }
            let _ = baton_store::snapshot::decode::<SessionState>(&bytes);
        }

        /// Arbitrary bodies behind a valid header: the same.
        #[test]
        fn arbitrary_snapshot_bodies_never_panic(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let mut bytes = baton_store::snapshot::encode(7, &realistic()).unwrap();
            bytes.truncate(9);
            bytes.extend_from_slice(&body);
            let _ = baton_store::snapshot::decode::<SessionState>(&bytes);
        }
    }
}
