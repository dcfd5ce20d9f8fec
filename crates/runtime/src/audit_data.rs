//! What an audited journal record says in the audit trail: its kind, who
//! acted, and its data as JSON text.
//!
//! The data is serialised once, straight from the record's fields, with no
//! tree of `serde_json` values built and dropped per record (that was most
//! of the trail's cost per model call). Members are in alphabetical order
//! (a record appended again after a crash ends with `"recovered": true`);
//! inside nested objects they come in their types' field order.

use baton_types::{
    AttemptFailure, EventKind, FinishReason, Generation, Message, RoutingDecision, SessionEvent,
    TurnFailureCode, Usage,
};
use serde::Serialize;
use serde_json::value::RawValue;

/// A record's audit kind, actor (none: the runtime) and data.
pub(crate) type Record<'a> = (&'static str, Option<&'a str>, Box<RawValue>);

#[derive(Serialize)]
struct SessionStarted<'a> {
    allowed_tools: &'a [String],
    budget_usd: &'a Option<f64>,
    client_tools: Vec<&'a str>,
    data_classes: &'a [String],
    generation: &'a Generation,
    history: &'a [Message],
    max_steps: u32,
    one_shot: bool,
    replay_of: &'a Option<String>,
    route: &'a str,
    seq: u64,
    system_prompt: &'a str,
    tenant: &'a str,
}

#[derive(Serialize)]
struct ModelInput<'a> {
    message: &'a Message,
    seq: u64,
    turn: u64,
}

#[derive(Serialize)]
struct ModelCall<'a> {
    attempts: u32,
    cost_usd: &'a Option<f64>,
    endpoint: &'a str,
    finish_reason: &'a FinishReason,
    latency_ms: u64,
    model: &'a str,
    output_resumed: &'static str,
    response: &'a Message,
    schema_validated: bool,
    seq: u64,
    turn: u64,
    usage: &'a Usage,
}

#[derive(Serialize)]
struct Routing<'a> {
    decision: &'a RoutingDecision,
    seq: u64,
    turn: u64,
}

#[derive(Serialize)]
struct AttemptFailed<'a> {
    failure: &'a AttemptFailure,
    seq: u64,
    turn: u64,
}

#[derive(Serialize)]
struct ToolRequested<'a> {
    arguments: &'a str,
    call_id: &'a str,
    client_side: bool,
    name: &'a str,
    seq: u64,
    turn: u64,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    call_id: &'a str,
    is_error: bool,
    latency_ms: u64,
    name: &'a str,
    output: &'a str,
    seq: u64,
    turn: u64,
}

#[derive(Serialize)]
struct TurnFailed<'a> {
    code: &'a TurnFailureCode,
    reason: &'a str,
    seq: u64,
    turn: u64,
}

#[derive(Serialize)]
struct SeqTurn {
    seq: u64,
    turn: u64,
}

#[derive(Serialize)]
struct SessionFailed<'a> {
    reason: &'a str,
    seq: u64,
}

/// The principal a record names as its actor (none for the runtime's own).
fn actor(by: &str) -> Option<&str> {
    (!by.is_empty()).then_some(by)
}

fn raw<T: Serialize>(data: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(data).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// The record's JSON (its `type` and fields) with its `seq`.
fn with_seq(e: &SessionEvent) -> Box<RawValue> {
    let mut v = serde_json::to_value(&e.kind).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), e.seq.into());
    }
    raw(&v)
}

/// What record `e` says in the audit trail; `None` for kinds not audited.
pub(crate) fn audit_record(e: &SessionEvent) -> Option<Record<'_>> {
    use EventKind as K;
    let seq = e.seq;
    Some(match &e.kind {
        K::SessionStarted {
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
            by,
        } => (
            "session_started",
            actor(by),
            raw(&SessionStarted {
                allowed_tools,
                budget_usd,
                client_tools: client_tools.iter().map(|t| t.name.as_str()).collect(),
                data_classes,
                generation,
                history,
                max_steps: *max_steps,
                one_shot: *one_shot,
                replay_of,
                route,
                seq,
                system_prompt,
                tenant,
            }),
        ),
        K::TurnAccepted {
            turn, message, by, ..
        } => (
            "model_input",
            actor(by),
            raw(&ModelInput {
                message,
                seq,
                turn: *turn,
            }),
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
            schema_validated,
            output_resumed,
        } => (
            "model_call",
            None,
            raw(&ModelCall {
                attempts: *attempts,
                cost_usd,
                endpoint,
                finish_reason,
                latency_ms: *latency_ms,
                model,
                output_resumed: output_resumed.as_str(),
                response: message,
                schema_validated: *schema_validated,
                seq,
                turn: *turn,
                usage,
            }),
        ),
        K::RoutingDecided { turn, decision } => (
            "routing_decision",
            None,
            raw(&Routing {
                decision,
                seq,
                turn: *turn,
            }),
        ),
        K::AttemptFailed { turn, failure } => (
            "model_attempt_failed",
            None,
            raw(&AttemptFailed {
                failure,
                seq,
                turn: *turn,
            }),
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
            raw(&ToolRequested {
                arguments,
                call_id,
                client_side: *client_side,
                name,
                seq,
                turn: *turn,
            }),
        ),
        K::ToolResult {
            turn,
            call_id,
            name,
            output,
            is_error,
            latency_ms,
            by,
        } => (
            "tool_call",
            actor(by),
            raw(&ToolCall {
                call_id,
                is_error: *is_error,
                latency_ms: *latency_ms,
                name,
                output,
                seq,
                turn: *turn,
            }),
        ),
        K::GateOpened { .. } | K::GateEscalated { .. } | K::NeedsAttention { .. } => {
            ("policy_decision", None, with_seq(e))
        }
        K::GateDecided { reviewer, .. } => ("gate_decision", Some(reviewer.as_str()), with_seq(e)),
        // Kinds and positions of what matched, never the matched text.
        K::PolicyEvaluated { .. } => ("policy_evaluation", None, with_seq(e)),
        K::QualityScored { .. } => ("quality_score", None, with_seq(e)),
        K::TurnFailed { turn, reason, code } => (
            "turn_failed",
            None,
            raw(&TurnFailed {
                code,
                reason,
                seq,
                turn: *turn,
            }),
        ),
        K::TurnCancelled { turn, by } => (
            "turn_cancelled",
            actor(by),
            raw(&SeqTurn { seq, turn: *turn }),
        ),
        K::SessionFailed { reason } => {
            ("session_failed", None, raw(&SessionFailed { reason, seq }))
        }
        _ => return None,
    })
}

/// `data` (a JSON object) with `"recovered": true` added: a record
/// appended again after a crash or a failed write, which the trail may or
/// may not hold already (same session and seq).
pub(crate) fn mark_recovered(data: Box<RawValue>) -> Box<RawValue> {
    let text = data.get();
    let marked = match text.strip_suffix('}') {
        Some("{") => "{\"recovered\":true}".to_string(),
        Some(open) if open.starts_with('{') => format!("{open},\"recovered\":true}}"),
        _ => return data,
    };
    RawValue::from_string(marked).unwrap_or(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> SessionEvent {
        SessionEvent {
            session_id: baton_types::SessionId::new(),
            seq: 7,
            at_unix_ms: 1,
            kind,
        }
    }

    #[test]
    fn data_is_what_a_tree_of_values_would_have_said() {
        // The same members and values as the `serde_json::Value` the trail
        // was built from before (the reader sees no difference).
        let e = event(EventKind::TurnAccepted {
            turn: 3,
            message: Message::user("hello \"there\"\n"),
            review: false,
            by: "key:k1".into(),
        });
        let (kind, actor, data) = audit_record(&e).unwrap();
        assert_eq!((kind, actor), ("model_input", Some("key:k1")));
        let parsed: serde_json::Value = serde_json::from_str(data.get()).unwrap();
        let EventKind::TurnAccepted { message, .. } = &e.kind else {
            unreachable!()
        };
        assert_eq!(
            parsed,
            serde_json::json!({"seq": 7, "turn": 3, "message": message})
        );
        let e = event(EventKind::TurnFailed {
            turn: 2,
            reason: "no".into(),
            code: TurnFailureCode::default(),
        });
        let (_, actor, data) = audit_record(&e).unwrap();
        assert_eq!(actor, None);
        let parsed: serde_json::Value = serde_json::from_str(data.get()).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"seq": 7, "turn": 2, "reason": "no", "code": TurnFailureCode::default()})
        );
    }

    #[test]
    fn a_recovered_record_says_so() {
        let raw = |s: &str| RawValue::from_string(s.into()).unwrap();
        assert_eq!(
            mark_recovered(raw("{\"seq\":1}")).get(),
            "{\"seq\":1,\"recovered\":true}"
        );
        assert_eq!(mark_recovered(raw("{}")).get(), "{\"recovered\":true}");
        assert_eq!(mark_recovered(raw("[1]")).get(), "[1]");
    }
}
