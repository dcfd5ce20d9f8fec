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

    /// Resolves once everything recorded before it is durable.
    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Report a durable journal record to the audit trail, if it is one of the
/// audited kinds: model calls, routing decisions, failed attempts, tool
/// calls, gate openings (policy decisions) and decisions, failed turns.
pub(crate) fn record_event(sink: &dyn AuditSink, e: &baton_types::SessionEvent) {
    use baton_types::EventKind as K;
    let session = Some(e.session_id);
    let (kind, actor, data) = match &e.kind {
        K::SessionStarted { route, .. } => (
            "session_started",
            None,
            serde_json::json!({ "seq": e.seq, "route": route }),
        ),
        K::TurnAccepted { turn, message, .. } => (
            "model_input",
            None,
            serde_json::json!({ "seq": e.seq, "turn": turn, "message": message }),
        ),
        K::AssistantMessage {
            turn,
            message,
            usage,
            endpoint,
            model,
            finish_reason,
            latency_ms,
            cost_usd,
            attempts,
        } => (
            "model_call",
            None,
            serde_json::json!({
                "seq": e.seq, "turn": turn, "endpoint": endpoint, "model": model,
                "response": message, "usage": usage, "finish_reason": finish_reason,
                "latency_ms": latency_ms, "cost_usd": cost_usd, "attempts": attempts,
            }),
        ),
        K::RoutingDecided { turn, decision } => (
            "routing_decision",
            None,
            serde_json::json!({ "seq": e.seq, "turn": turn, "decision": decision }),
        ),
        K::AttemptFailed { turn, failure } => (
            "model_attempt_failed",
            None,
            serde_json::json!({ "seq": e.seq, "turn": turn, "failure": failure }),
        ),
        K::ToolCallRequested {
            turn,
            call_id,
            name,
            arguments,
            client_side,
        } => (
            "tool_call_requested",
            None,
            serde_json::json!({
                "seq": e.seq, "turn": turn, "call_id": call_id, "name": name,
                "arguments": arguments, "client_side": client_side,
            }),
        ),
        K::ToolResult {
            turn,
            call_id,
            name,
            output,
            is_error,
            latency_ms,
        } => (
            "tool_call",
            None,
            serde_json::json!({
                "seq": e.seq, "turn": turn, "call_id": call_id, "name": name,
                "output": output, "is_error": is_error, "latency_ms": latency_ms,
            }),
        ),
        K::GateOpened { .. } | K::GateEscalated { .. } | K::NeedsAttention { .. } => (
            "policy_decision",
            None,
            serde_json::to_value(&e.kind).unwrap_or_default(),
        ),
        K::GateDecided { reviewer, .. } => (
            "gate_decision",
            Some(reviewer.as_str()),
            serde_json::to_value(&e.kind).unwrap_or_default(),
        ),
        K::TurnFailed { turn, reason, code } => (
            "turn_failed",
            None,
            serde_json::json!({ "seq": e.seq, "turn": turn, "reason": reason, "code": code }),
        ),
        K::TurnCancelled { turn } => (
            "turn_cancelled",
            None,
            serde_json::json!({ "seq": e.seq, "turn": turn }),
        ),
        K::SessionFailed { reason } => (
            "session_failed",
            None,
            serde_json::json!({ "seq": e.seq, "reason": reason }),
        ),
        _ => return,
    };
    sink.record(kind, session, Some(actor.unwrap_or("runtime")), data);
}
