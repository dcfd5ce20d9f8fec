//! The gate vocabulary: what placed a gate, where its turn waits, what its
//! timeout does, how it was decided, and a gate's current record.

use serde::{Deserialize, Serialize};

use crate::id::{GateId, SessionId};
use crate::wire::wire_enum;

wire_enum! {
    /// What placed a gate: a policy kind, the client, or a crash.
    pub enum GateKind: "gate kind" {
        /// A `before_tool` policy: a server-side tool call waits.
        BeforeTool = "before_tool",
        /// A `final_answer` policy: every final answer is reviewed.
        FinalAnswer = "final_answer",
        /// A `cost` policy: a model call's estimated cost is above the threshold.
        Cost = "cost",
        /// A `confidence` policy: the answer's confidence is below the threshold.
        Confidence = "confidence",
        /// A `data_rule` policy: input or output matched a pattern or classifier.
        DataRule = "data_rule",
        /// The client asked for the turn's answer to be reviewed.
        Explicit = "explicit",
        /// A non-idempotent tool call started before a crash without a result.
        NeedsAttention = "needs_attention",
        /// A flow's `gate` step asks for a decision on its subject.
        Flow = "flow",
    }
}

wire_enum! {
    /// Where a gated turn waits.
    pub enum GatePoint: "gate point" {
        /// Before a tool call runs.
        ToolCall = "tool_call",
        /// Before a final answer is released.
        FinalAnswer = "final_answer",
        /// Before a model call is issued.
        ModelCall = "model_call",
    }
}

wire_enum! {
    /// What happens when a gate's deadline passes without a decision.
    #[derive(Default)]
    pub enum TimeoutAction: "timeout action" {
        /// Reject (the default).
        #[default]
        Reject = "reject",
        /// Approve.
        Approve = "approve",
        /// Hand the gate to the policy's `escalate_to` group with a fresh timeout.
        Escalate = "escalate",
    }
}

wire_enum! {
    /// How a gate was decided.
    pub enum Decision: "gate decision" {
        Approve = "approve",
        Reject = "reject",
        /// The held payload was replaced (tool arguments, answer text, user
        /// message or tool result), then the turn went on.
        Edit = "edit",
    }
}

wire_enum! {
    /// Whether a gate waits for a decision.
    pub enum GateStatus: "gate status" {
        Pending = "pending",
        Decided = "decided",
    }
}

/// How a decided gate was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateOutcome {
    pub decision: Decision,
    /// Who decided: the reviewer, `timeout`, `system` (a cancelled turn) or
    /// `SubmitToolResult`.
    pub reviewer: String,
    pub reason: String,
    /// The replacement payload of an `edit`.
    pub edited: String,
    pub decided_at_unix_ms: u64,
    /// Decided by its timeout action.
    pub by_timeout: bool,
}

/// A gate's current state, as indexed by the store and shown to reviewers.
/// The gate's session journal is the truth; this is kept in step with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    pub gate_id: GateId,
    pub session: SessionId,
    pub turn: u64,
    pub kind: GateKind,
    pub point: GatePoint,
    /// The policy's name (`explicit` and `needs_attention` for built-in gates).
    pub policy: String,
    /// Why it fired, readable.
    pub reason: String,
    /// The reviewer group the gate is for.
    pub reviewers: String,
    /// What waits for the decision, as JSON text.
    pub subject: String,
    /// The tool call a `tool_call` gate holds (empty otherwise).
    pub call_id: String,
    pub opened_at_unix_ms: u64,
    /// When the timeout action applies (0: never).
    pub deadline_unix_ms: u64,
    pub on_timeout: TimeoutAction,
    /// Times the gate's timeout escalated it.
    pub escalations: u32,
    /// `None` while pending.
    pub outcome: Option<GateOutcome>,
    /// The tenant of the gate's session (empty in records stored before
    /// gates carried it: the session's metadata has it).
    #[serde(default)]
    pub tenant: String,
}

impl GateRecord {
    pub fn status(&self) -> GateStatus {
        if self.outcome.is_some() {
            GateStatus::Decided
        } else {
            GateStatus::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WireEnum;

    fn round_trips<T: WireEnum + std::fmt::Debug + PartialEq + Serialize>() {
        for v in T::ALL {
            assert_eq!(T::parse(v.as_str()).as_ref(), Ok(v));
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("{:?}", v.as_str()));
        }
    }

    #[test]
    fn every_value_round_trips_through_its_wire_string() {
        round_trips::<GateKind>();
        round_trips::<GatePoint>();
        round_trips::<TimeoutAction>();
        round_trips::<Decision>();
        round_trips::<GateStatus>();
    }

    #[test]
    fn unknown_strings_are_refused_and_named() {
        let e = GatePoint::parse("tool").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown gate point \"tool\": expected one of tool_call, final_answer, model_call"
        );
        assert!(serde_json::from_str::<Decision>("\"maybe\"").is_err());
        assert_eq!(
            serde_json::from_str::<Decision>("\"edit\"").unwrap(),
            Decision::Edit
        );
    }

    #[test]
    fn gate_ids_parse_and_print() {
        let id = GateId::new();
        assert_eq!(id.to_string().parse::<GateId>().unwrap(), id);
        assert_eq!(GateId::from_bytes(*id.as_bytes()), id);
        assert!(
            "nope"
                .parse::<GateId>()
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
    }
}
