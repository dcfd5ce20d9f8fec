use serde::{Deserialize, Serialize};

use crate::gate::{Decision, GateKind, GatePoint, TimeoutAction};
use crate::generation::Generation;
use crate::id::{GateId, SessionId};
use crate::message::{FinishReason, Message, ToolDefinition, Usage};
use crate::routing::{AttemptFailure, RoutingDecision};
use crate::turn::{ModelCallReason, TurnFailureCode};

/// A session's lifecycle status, as stored and reported to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// No turn is running or queued.
    Idle,
    /// A turn is running or queued.
    Running,
    /// The session was stopped for good (too many actor restarts, or an
    /// unreadable journal); the reason is stored with it.
    Failed,
    /// A turn is paused on a step that needs a decision: a non-idempotent
    /// tool call that started but has no recorded result.
    NeedsAttention,
}

impl SessionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionStatus::Idle => "idle",
            SessionStatus::Running => "running",
            SessionStatus::Failed => "failed",
            SessionStatus::NeedsAttention => "needs_attention",
        }
    }

    /// Parse the lowercase name used in config, the CLI and the API.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "idle" => Some(SessionStatus::Idle),
            "running" => Some(SessionStatus::Running),
            "failed" => Some(SessionStatus::Failed),
            "needs_attention" => Some(SessionStatus::NeedsAttention),
            _ => None,
        }
    }
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    Completed,
    Failed { reason: String },
    Cancelled,
}

/// One event of a session. Every event is derived from exactly one journal
/// record and carries that record's `seq`, so `seq` is per session, strictly
/// increasing and gap-free: a client that saw events up to `seq = n` resumes
/// with `after_seq = n` and misses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub session_id: SessionId,
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the record was written.
    pub at_unix_ms: u64,
    pub kind: EventKind,
}

impl SessionEvent {
    /// The turn this event belongs to, if any.
    pub fn turn(&self) -> Option<u64> {
        self.kind.turn()
    }

    /// True for the last event of a turn (completed, failed or cancelled).
    pub fn ends_turn(&self) -> bool {
        matches!(
            self.kind,
            EventKind::TurnCompleted { .. }
                | EventKind::TurnFailed { .. }
                | EventKind::TurnCancelled { .. }
        )
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EventKind {
    /// The session was created.
    SessionStarted {
        route: String,
        system_prompt: String,
        /// Server-side tools the session may use (names or patterns).
        #[serde(default)]
        allowed_tools: Vec<String>,
        /// Tools the client runs itself and answers with SubmitToolResult.
        #[serde(default)]
        client_tools: Vec<ToolDefinition>,
        /// Most model calls per turn (0 = the configured default).
        #[serde(default)]
        max_steps: u32,
        /// The session's budget in USD; `None`: no session budget.
        #[serde(default)]
        budget_usd: Option<f64>,
        /// Data classes the session's content carries: its model calls only
        /// go to endpoints certified for all of them.
        #[serde(default)]
        data_classes: Vec<String>,
        /// A one-turn session (the OpenAI-compatible front door): the turn
        /// ends with the model's answer, tool calls included.
        #[serde(default)]
        one_shot: bool,
        /// Messages the conversation starts with.
        #[serde(default)]
        history: Vec<Message>,
        /// How every model call of the session generates (sampling, limits,
        /// tool choice, structured output).
        #[serde(default)]
        generation: Generation,
        /// For replay sessions: the session replayed.
        #[serde(default)]
        replay_of: Option<String>,
        /// The tenant the session belongs to.
        #[serde(default = "default_tenant")]
        tenant: String,
        /// The principal that started it ([`crate::Principal::label`]).
        #[serde(default)]
        by: String,
    },
    /// A user message was durably accepted as turn `turn` (it may wait
    /// behind an earlier turn before it runs).
    TurnAccepted {
        turn: u64,
        message: Message,
        /// The client asked for this turn's final answer to be reviewed.
        #[serde(default)]
        review: bool,
        /// The principal that sent the message.
        #[serde(default)]
        by: String,
    },
    /// A model call for the turn was issued (attempt 1, or a re-issue after a
    /// crash or a broken stream). Deltas of earlier attempts of the same turn
    /// are void from here on.
    ModelCallStarted {
        turn: u64,
        attempt: u32,
        endpoint: String,
        /// Why this call was issued.
        reason: ModelCallReason,
    },
    /// A piece of model output as it streamed in. Provisional: the
    /// `AssistantMessage` event holds the authoritative text.
    OutputDelta {
        turn: u64,
        attempt: u32,
        text: String,
    },
    /// The model's answer, durably recorded.
    AssistantMessage {
        turn: u64,
        message: Message,
        usage: Usage,
        endpoint: String,
        model: String,
        finish_reason: FinishReason,
        latency_ms: u64,
        /// Cost of the call's billed attempts in USD, when priced.
        #[serde(default)]
        cost_usd: Option<f64>,
        /// Attempts the routed call took.
        #[serde(default)]
        attempts: u32,
        /// The answer's text was checked against the JSON Schema the
        /// request asked for (`generation.json_schema`) and matches it. An
        /// answer that does not match is never recorded as one: its
        /// attempt fails with `schema_violation`.
        #[serde(default)]
        schema_validated: bool,
        /// How the streamed answer went on when an attempt failed after its
        /// text reached the caller.
        #[serde(default)]
        output_resumed: crate::OutputResume,
    },
    /// Which endpoint a model-call attempt went to, and why.
    RoutingDecided {
        turn: u64,
        decision: RoutingDecision,
    },
    /// An attempt of a model call failed (it may be retried or failed over).
    AttemptFailed {
        turn: u64,
        failure: AttemptFailure,
    },
    /// The turn's streamed output so far is void: the attempt that produced
    /// it failed after streaming; the answer continues from `attempt`.
    OutputRetracted {
        turn: u64,
        attempt: u32,
        reason: String,
    },
    /// Policies evaluated at `stage` for the turn, with every rule that
    /// matched (kinds and positions, never the matched text). Recorded when
    /// a rule matched or a classifier or evaluator call cost something; a
    /// blocking hit is followed by `TurnFailed` (`policy_blocked`).
    PolicyEvaluated {
        turn: u64,
        stage: crate::PolicyStage,
        hits: Vec<crate::PolicyHit>,
        /// What the policies' classifier and evaluator calls cost (USD).
        cost_usd: Option<f64>,
    },
    /// An answer of the turn was scored by the quality evaluator
    /// (`[quality]`), off the turn's critical path: recorded after the
    /// turn, whenever the score arrives.
    QualityScored {
        turn: u64,
        /// The endpoint and model that wrote the answer.
        endpoint: String,
        model: String,
        /// The evaluator route.
        evaluator: String,
        scores: Vec<crate::QualityScore>,
        /// What the evaluator call cost (USD).
        cost_usd: Option<f64>,
    },
    /// The model asked for a tool call (one event per call, in the model's
    /// order). `client_side` calls wait for `SubmitToolResult`.
    ToolCallRequested {
        turn: u64,
        call_id: String,
        name: String,
        arguments: String,
        client_side: bool,
    },
    /// A server-side tool call is about to run (durable before it runs).
    ToolCallStarted {
        turn: u64,
        call_id: String,
        name: String,
        attempt: u32,
    },
    /// The result (or error) of a tool call, as the model will see it.
    ToolResult {
        turn: u64,
        call_id: String,
        name: String,
        output: String,
        is_error: bool,
        latency_ms: u64,
        /// The principal that submitted it (empty: a server-side tool ran).
        #[serde(default)]
        by: String,
    },
    /// The turn is paused at a call that needs a decision (answer it with
    /// SubmitToolResult, or cancel the turn).
    NeedsAttention {
        turn: u64,
        call_id: String,
        reason: String,
    },
    /// A human decision is required before the turn goes on.
    GateOpened {
        turn: u64,
        gate_id: GateId,
        /// What placed the gate: a policy kind, the client or a crash.
        kind: GateKind,
        /// Where the turn waits.
        point: GatePoint,
        /// The policy's name.
        policy: String,
        /// Why it fired, readable.
        reason: String,
        /// The reviewer group the gate is for.
        reviewers: String,
        /// What waits for the decision, as JSON text (the tool call, the
        /// draft answer, the estimated cost, ...).
        subject: String,
        /// The tool call a `tool_call` gate holds.
        call_id: String,
        /// When the timeout action applies (0: never).
        deadline_unix_ms: u64,
        on_timeout: TimeoutAction,
    },
    /// The gate was decided (by a reviewer, or by its timeout).
    GateDecided {
        turn: u64,
        gate_id: GateId,
        decision: Decision,
        reviewer: String,
        reason: String,
        /// The replacement payload of an `edit` (tool arguments, answer text,
        /// user message or tool result).
        edited: String,
        by_timeout: bool,
    },
    /// The gate's timeout escalated it to another reviewer group.
    GateEscalated {
        turn: u64,
        gate_id: GateId,
        reviewers: String,
        deadline_unix_ms: u64,
        on_timeout: TimeoutAction,
    },
    TurnCompleted {
        turn: u64,
        usage: Usage,
    },
    /// `code` is a stable machine-readable kind, e.g. `max_steps_exceeded`,
    /// `model_error`, `unknown_route`.
    TurnFailed {
        turn: u64,
        reason: String,
        #[serde(default)]
        code: TurnFailureCode,
    },
    TurnCancelled {
        turn: u64,
        /// The principal that cancelled it (empty: the runtime).
        #[serde(default)]
        by: String,
    },
    /// The session moved to `failed`.
    SessionFailed {
        reason: String,
    },
}

impl EventKind {
    pub fn turn(&self) -> Option<u64> {
        match self {
            EventKind::TurnAccepted { turn, .. }
            | EventKind::ModelCallStarted { turn, .. }
            | EventKind::OutputDelta { turn, .. }
            | EventKind::AssistantMessage { turn, .. }
            | EventKind::ToolCallRequested { turn, .. }
            | EventKind::ToolCallStarted { turn, .. }
            | EventKind::ToolResult { turn, .. }
            | EventKind::NeedsAttention { turn, .. }
            | EventKind::GateOpened { turn, .. }
            | EventKind::GateDecided { turn, .. }
            | EventKind::GateEscalated { turn, .. }
            | EventKind::RoutingDecided { turn, .. }
            | EventKind::AttemptFailed { turn, .. }
            | EventKind::OutputRetracted { turn, .. }
            | EventKind::PolicyEvaluated { turn, .. }
            | EventKind::QualityScored { turn, .. }
            | EventKind::TurnCompleted { turn, .. }
            | EventKind::TurnFailed { turn, .. }
            | EventKind::TurnCancelled { turn, .. } => Some(*turn),
            EventKind::SessionStarted { .. } | EventKind::SessionFailed { .. } => None,
        }
    }

    /// A short snake_case name of the kind, for logs and the CLI.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::SessionStarted { .. } => "session_started",
            EventKind::TurnAccepted { .. } => "turn_accepted",
            EventKind::ModelCallStarted { .. } => "model_call_started",
            EventKind::OutputDelta { .. } => "output_delta",
            EventKind::AssistantMessage { .. } => "assistant_message",
            EventKind::ToolCallRequested { .. } => "tool_call_requested",
            EventKind::ToolCallStarted { .. } => "tool_call_started",
            EventKind::ToolResult { .. } => "tool_result",
            EventKind::NeedsAttention { .. } => "needs_attention",
            EventKind::GateOpened { .. } => "gate_opened",
            EventKind::GateDecided { .. } => "gate_decided",
            EventKind::GateEscalated { .. } => "gate_escalated",
            EventKind::RoutingDecided { .. } => "routing_decided",
            EventKind::AttemptFailed { .. } => "attempt_failed",
            EventKind::OutputRetracted { .. } => "output_retracted",
            EventKind::PolicyEvaluated { .. } => "policy_evaluated",
            EventKind::QualityScored { .. } => "quality_scored",
            EventKind::TurnCompleted { .. } => "turn_completed",
            EventKind::TurnFailed { .. } => "turn_failed",
            EventKind::TurnCancelled { .. } => "turn_cancelled",
            EventKind::SessionFailed { .. } => "session_failed",
        }
    }
}

fn default_tenant() -> String {
    crate::DEFAULT_TENANT.to_string()
}
