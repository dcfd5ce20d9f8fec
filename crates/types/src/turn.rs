//! The turn vocabulary: why a model call was issued and why a turn failed.

use crate::wire::wire_enum;

wire_enum! {
    /// Why a model call was issued (`ModelCallStarted.reason`).
    pub enum ModelCallReason: "model call reason" {
        /// The turn's first model call.
        Turn = "turn",
        /// The next step of the agentic loop, after the tool results.
        ToolResults = "tool_results",
        /// A reviewer rejected the draft answer: the model revises it.
        Review = "review",
        /// Issued before a crash and never answered: issued again.
        Recovery = "recovery",
    }
}

impl ModelCallReason {
    /// Whether the call is a new step of the agentic loop (a recovery
    /// re-issue is the same step again).
    pub fn is_new_step(self) -> bool {
        !matches!(self, ModelCallReason::Recovery)
    }
}

wire_enum! {
    /// Why a turn failed (`TurnFailed.code`): stable and machine-readable.
    #[derive(Default)]
    pub enum TurnFailureCode: "turn failure code" {
        /// Written before turn failures carried a code.
        #[default]
        Unspecified = "",
        /// The turn made `max_steps` model calls without a final answer.
        MaxStepsExceeded = "max_steps_exceeded",
        /// The session's route is not configured (any more).
        UnknownRoute = "unknown_route",
        /// A reviewer rejected a gated model call.
        GateRejected = "gate_rejected",
        /// No endpoint of the route may take the call (capabilities, data
        /// classes, context window, open breakers).
        NoEligibleEndpoint = "no_eligible_endpoint",
        /// A route or session budget would be overshot.
        BudgetExhausted = "budget_exhausted",
        /// The turn's deadline passed.
        DeadlineExceeded = "deadline_exceeded",
        /// The provider refused the content.
        ContentPolicy = "content_policy",
        /// The conversation does not fit any candidate's context window.
        ContextLength = "context_length",
        /// The provider refused the request as invalid.
        InvalidRequest = "invalid_request",
        /// Every attempt failed (transient errors, retries and failover used up).
        ModelError = "model_error",
        /// The call was cancelled.
        Cancelled = "cancelled",
        /// A policy blocked the turn's message; nothing was sent upstream.
        PolicyBlocked = "policy_blocked",
        /// Every answer the route gave failed the JSON Schema the request
        /// asked for (retries and failover used up).
        SchemaViolation = "schema_violation",
    }
}
