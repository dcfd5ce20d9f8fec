//! Conversions between [`baton_types`] and the `baton.v1` API messages.

use baton_types::{
    Decision, GateStatus, Generation, Image, Message, Role, SessionEvent, SessionStatus, ToolCall,
    ToolChoice, ToolDefinition, Usage,
};

use crate::v1;

pub fn role_to_proto(role: Role) -> v1::Role {
    match role {
        Role::System => v1::Role::System,
        Role::User => v1::Role::User,
        Role::Assistant => v1::Role::Assistant,
        Role::Tool => v1::Role::Tool,
    }
}

/// `None` for `ROLE_UNSPECIFIED` or an unknown value.
pub fn role_from_proto(role: i32) -> Option<Role> {
    match v1::Role::try_from(role).ok()? {
        v1::Role::System => Some(Role::System),
        v1::Role::User => Some(Role::User),
        v1::Role::Assistant => Some(Role::Assistant),
        v1::Role::Tool => Some(Role::Tool),
        v1::Role::Unspecified => None,
    }
}

pub fn status_to_proto(status: SessionStatus) -> v1::SessionStatus {
    match status {
        SessionStatus::Idle => v1::SessionStatus::Idle,
        SessionStatus::Running => v1::SessionStatus::Running,
        SessionStatus::Failed => v1::SessionStatus::Failed,
        SessionStatus::NeedsAttention => v1::SessionStatus::NeedsAttention,
    }
}

/// `Ok(None)` for `SESSION_STATUS_UNSPECIFIED`, `Err(value)` for an unknown value.
pub fn status_from_proto(status: i32) -> Result<Option<SessionStatus>, i32> {
    match v1::SessionStatus::try_from(status).map_err(|_| status)? {
        v1::SessionStatus::Unspecified => Ok(None),
        v1::SessionStatus::Idle => Ok(Some(SessionStatus::Idle)),
        v1::SessionStatus::Running => Ok(Some(SessionStatus::Running)),
        v1::SessionStatus::Failed => Ok(Some(SessionStatus::Failed)),
        v1::SessionStatus::NeedsAttention => Ok(Some(SessionStatus::NeedsAttention)),
    }
}

pub fn usage_to_proto(u: Usage) -> v1::Usage {
    v1::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
    }
}

pub fn usage_from_proto(u: Option<v1::Usage>) -> Usage {
    u.map(|u| Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
    })
    .unwrap_or_default()
}

pub fn tool_definition_to_proto(t: &ToolDefinition) -> v1::ToolDefinition {
    v1::ToolDefinition {
        name: t.name.clone(),
        description: t.description.clone(),
        parameters_json: t.parameters.clone(),
    }
}

pub fn tool_definition_from_proto(t: v1::ToolDefinition) -> ToolDefinition {
    ToolDefinition {
        name: t.name,
        description: t.description,
        parameters: t.parameters_json,
    }
}

/// The API shape of a session's generation settings; `None` for defaults.
pub fn generation_to_proto(g: &Generation) -> Option<v1::Generation> {
    if g.is_default() {
        return None;
    }
    let (choice, name) = g.tool_choice.to_wire();
    Some(v1::Generation {
        temperature: g.temperature,
        top_p: g.top_p,
        max_output_tokens: g.max_output_tokens,
        stop: g.stop.clone(),
        tool_choice: choice.into(),
        tool_name: name.into(),
        json_schema: g.json_schema.clone().unwrap_or_default(),
    })
}

/// Generation settings from the API shape. `Err((field, problem))` names the
/// field at fault (`tool_choice`, `tool_name`); ranges are checked by
/// [`Generation::validate`].
pub fn generation_from_proto(
    g: Option<v1::Generation>,
) -> Result<Generation, (&'static str, String)> {
    let Some(g) = g else {
        return Ok(Generation::default());
    };
    let tool_choice = ToolChoice::from_wire(&g.tool_choice, g.tool_name)?;
    Ok(Generation {
        temperature: g.temperature,
        top_p: g.top_p,
        max_output_tokens: g.max_output_tokens,
        stop: g.stop,
        tool_choice,
        json_schema: (!g.json_schema.is_empty()).then_some(g.json_schema),
    })
}

pub fn message_to_proto(m: &Message) -> v1::Message {
    v1::Message {
        role: role_to_proto(m.role) as i32,
        content: m.content.clone(),
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| v1::ToolCall {
                id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect(),
        tool_call_id: m.tool_call_id.clone().unwrap_or_default(),
        images: m.images.iter().map(image_to_proto).collect(),
    }
}

pub fn image_to_proto(i: &Image) -> v1::Image {
    v1::Image {
        url: i.url.clone(),
        detail: i.detail.clone().unwrap_or_default(),
    }
}

/// An image from the API shape (checked by [`Image::validate`] where it
/// enters).
pub fn image_from_proto(i: v1::Image) -> Image {
    Image {
        url: i.url,
        detail: (!i.detail.is_empty()).then_some(i.detail),
    }
}

/// Messages with an unknown role are read as user messages' peers would be: the
/// role is required, so `None` is returned for them.
pub fn message_from_proto(m: v1::Message) -> Option<Message> {
    Some(Message {
        role: role_from_proto(m.role)?,
        content: m.content,
        tool_calls: m
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
        tool_call_id: (!m.tool_call_id.is_empty()).then_some(m.tool_call_id),
        images: m.images.into_iter().map(image_from_proto).collect(),
    })
}

/// A field of an API event: how a domain value becomes its wire field and
/// back. `dec` fails (`Malformed`) on values this build does not know.
trait ApiField<W>: Sized {
    fn enc(&self, cx: &mut ()) -> W;
    fn dec(w: W, cx: &mut ()) -> Result<Self, Malformed>;
}

/// An API event this build cannot read (unknown enum value, missing message).
#[derive(Debug)]
struct Malformed;

crate::common_fields! {
    field = ApiField, enc = (), dec = (), error = Malformed,
    malformed = |cx, reason| Malformed,
}

impl ApiField<Option<v1::Message>> for Message {
    fn enc(&self, _: &mut ()) -> Option<v1::Message> {
        Some(message_to_proto(self))
    }
    fn dec(w: Option<v1::Message>, _: &mut ()) -> Result<Self, Malformed> {
        w.and_then(message_from_proto).ok_or(Malformed)
    }
}

impl ApiField<Option<v1::Usage>> for Usage {
    fn enc(&self, _: &mut ()) -> Option<v1::Usage> {
        Some(usage_to_proto(*self))
    }
    fn dec(w: Option<v1::Usage>, _: &mut ()) -> Result<Self, Malformed> {
        Ok(usage_from_proto(w))
    }
}

impl ApiField<Option<v1::Generation>> for Generation {
    fn enc(&self, _: &mut ()) -> Option<v1::Generation> {
        generation_to_proto(self)
    }
    fn dec(w: Option<v1::Generation>, _: &mut ()) -> Result<Self, Malformed> {
        generation_from_proto(w).map_err(|_| Malformed)
    }
}

impl ApiField<Vec<v1::ToolDefinition>> for Vec<ToolDefinition> {
    fn enc(&self, _: &mut ()) -> Vec<v1::ToolDefinition> {
        self.iter().map(tool_definition_to_proto).collect()
    }
    fn dec(w: Vec<v1::ToolDefinition>, _: &mut ()) -> Result<Self, Malformed> {
        Ok(w.into_iter().map(tool_definition_from_proto).collect())
    }
}

/// `SessionStarted.history`: the API carries only the number of messages.
mod history_count {
    use super::*;
    pub(super) fn enc(h: &[Message], w: &mut v1::SessionStarted, _: &mut ()) {
        w.history_messages = u32::try_from(h.len()).unwrap_or(u32::MAX);
    }
    pub(super) fn dec(_: &mut v1::SessionStarted, _: &mut ()) -> Result<Vec<Message>, Malformed> {
        Ok(Vec::new())
    }
}

crate::policy_hits! {
    field = ApiField, wire = v1, enc = (), dec = (), error = Malformed,
    malformed = |cx, reason| Malformed,
}

crate::quality_scores! {
    field = ApiField, wire = v1, enc = (), dec = (), error = Malformed,
}

crate::flattened_routing! { wire = v1, enc = (), dec = (), error = Malformed }

use v1::session_event::Kind as ApiKind;

crate::event_codec! {
    field = ApiField, wire = v1, kind = ApiKind, error = Malformed,
    encode = encode_kind(()), decode = decode_kind(()),
    {
        SessionStarted => SessionStarted {
            route, system_prompt, allowed_tools, client_tools, max_steps, budget_usd,
            data_classes, one_shot, history via history_count, generation, replay_of, tenant, by,
        },
        TurnAccepted => TurnAccepted { turn, message, review, by },
        ModelCallStarted => ModelCallStarted { turn, attempt, endpoint, reason },
        OutputDelta => OutputDelta { turn, attempt, text },
        AssistantMessage => AssistantMessage {
            turn, message, usage, endpoint, model, finish_reason, latency_ms, cost_usd, attempts,
            schema_validated, output_resumed,
        },
        RoutingDecided => RoutingDecided { turn, decision via routing_decision },
        AttemptFailed => AttemptFailed { turn, failure via attempt_failure },
        OutputRetracted => OutputRetracted { turn, attempt, reason },
        PolicyEvaluated => PolicyEvaluated { turn, stage, hits, cost_usd },
        QualityScored => QualityScored { turn, endpoint, model, evaluator, scores, cost_usd },
        ToolCallRequested => ToolCallRequested { turn, call_id, name, arguments, client_side },
        ToolCallStarted => ToolCallStarted { turn, call_id, name, attempt },
        ToolResult => ToolResult { turn, call_id, name, output, is_error, latency_ms, by },
        NeedsAttention => NeedsAttention { turn, call_id, reason },
        GateOpened => GateOpened {
            turn, gate_id, kind, point, policy, reason, reviewers, subject, call_id,
            deadline_unix_ms, on_timeout,
        },
        GateDecided => GateDecided { turn, gate_id, decision, reviewer, reason, edited, by_timeout },
        GateEscalated => GateEscalated { turn, gate_id, reviewers, deadline_unix_ms, on_timeout },
        TurnCompleted => TurnCompleted { turn, usage },
        TurnFailed => TurnFailed { turn, reason, code },
        TurnCancelled => TurnCancelled { turn, by },
        SessionFailed => SessionFailed { reason },
    }
}

pub fn event_to_proto(e: &SessionEvent) -> v1::SessionEvent {
    v1::SessionEvent {
        session_id: e.session_id.to_string(),
        seq: e.seq,
        at_unix_ms: e.at_unix_ms,
        kind: Some(encode_kind(&e.kind, &mut ())),
    }
}

/// Decode an API event back into the shared type (used by clients and tests).
/// `None` when the event is malformed or of a kind this build does not know.
pub fn event_from_proto(e: v1::SessionEvent) -> Option<SessionEvent> {
    Some(SessionEvent {
        session_id: e.session_id.parse().ok()?,
        seq: e.seq,
        at_unix_ms: e.at_unix_ms,
        kind: decode_kind(e.kind?, &mut ()).ok()?,
    })
}

/// The API value of a gate decision; `GATE_DECISION_UNSPECIFIED` for none
/// (an undecided gate).
pub fn decision_to_proto(decision: Option<Decision>) -> v1::GateDecision {
    match decision {
        Some(Decision::Approve) => v1::GateDecision::Approve,
        Some(Decision::Reject) => v1::GateDecision::Reject,
        Some(Decision::Edit) => v1::GateDecision::Edit,
        None => v1::GateDecision::Unspecified,
    }
}

/// A gate decision from its API value; `None` for `GATE_DECISION_UNSPECIFIED`
/// or an unknown value.
pub fn decision_from_proto(decision: i32) -> Option<Decision> {
    match v1::GateDecision::try_from(decision).ok()? {
        v1::GateDecision::Approve => Some(Decision::Approve),
        v1::GateDecision::Reject => Some(Decision::Reject),
        v1::GateDecision::Edit => Some(Decision::Edit),
        v1::GateDecision::Unspecified => None,
    }
}

pub fn gate_status_to_proto(status: GateStatus) -> v1::GateStatus {
    match status {
        GateStatus::Pending => v1::GateStatus::Pending,
        GateStatus::Decided => v1::GateStatus::Decided,
    }
}

/// `Ok(None)` for `GATE_STATUS_UNSPECIFIED`, `Err(value)` for an unknown value.
pub fn gate_status_from_proto(status: i32) -> Result<Option<GateStatus>, i32> {
    match v1::GateStatus::try_from(status).map_err(|_| status)? {
        v1::GateStatus::Unspecified => Ok(None),
        v1::GateStatus::Pending => Ok(Some(GateStatus::Pending)),
        v1::GateStatus::Decided => Ok(Some(GateStatus::Decided)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_types::{
        EventKind, FinishReason, GateId, GateKind, GatePoint, ModelCallReason, SessionId,
        TimeoutAction, TurnFailureCode,
    };

    #[test]
    fn events_round_trip_through_the_api_shape() {
        let id = SessionId::new();
        let events = vec![
            EventKind::SessionStarted {
                by: String::new(),
                tenant: baton_types::DEFAULT_TENANT.into(),
                route: "echo".into(),
                system_prompt: "be brief".into(),
                allowed_tools: vec!["calc*".into()],
                client_tools: vec![ToolDefinition {
                    name: "lookup".into(),
                    description: "d".into(),
                    parameters: "{}".into(),
                }],
                max_steps: 7,
                budget_usd: Some(2.5),
                data_classes: vec!["pii".into()],
                one_shot: true,
                // The API carries only the number of history messages.
                history: Vec::new(),
                generation: Generation {
                    temperature: Some(0.5),
                    top_p: None,
                    max_output_tokens: Some(64),
                    stop: vec!["END".into()],
                    tool_choice: ToolChoice::Tool("lookup".into()),
                    json_schema: Some("{}".into()),
                },
                replay_of: Some("src".into()),
            },
            EventKind::ToolCallRequested {
                turn: 1,
                call_id: "c1".into(),
                name: "lookup".into(),
                arguments: "{}".into(),
                client_side: true,
            },
            EventKind::ToolCallStarted {
                turn: 1,
                call_id: "c1".into(),
                name: "calc".into(),
                attempt: 2,
            },
            EventKind::ToolResult {
                by: String::new(),
                turn: 1,
                call_id: "c1".into(),
                name: "calc".into(),
                output: "4".into(),
                is_error: true,
                latency_ms: 3,
            },
            EventKind::NeedsAttention {
                turn: 1,
                call_id: "c1".into(),
                reason: "r".into(),
            },
            EventKind::TurnAccepted {
                by: String::new(),
                turn: 1,
                message: Message::user("hi"),
                review: false,
            },
            EventKind::ModelCallStarted {
                turn: 1,
                attempt: 1,
                endpoint: "echo".into(),
                reason: ModelCallReason::Turn,
            },
            EventKind::OutputDelta {
                turn: 1,
                attempt: 1,
                text: "h".into(),
            },
            EventKind::AssistantMessage {
                turn: 1,
                message: Message {
                    role: Role::Assistant,
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "f".into(),
                        arguments: "{}".into(),
                    }],
                    tool_call_id: None,
                    images: Vec::new(),
                },
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 4,
                },
                endpoint: "echo".into(),
                model: "m".into(),
                finish_reason: FinishReason::ToolCalls,
                latency_ms: 12,
                cost_usd: Some(0.001),
                attempts: 2,
                schema_validated: true,
                output_resumed: baton_types::OutputResume::None,
            },
            EventKind::RoutingDecided {
                turn: 1,
                decision: baton_types::RoutingDecision {
                    route: "r".into(),
                    strategy: "fallback".into(),
                    candidates: vec![baton_types::RouteCandidate {
                        endpoint: "echo".into(),
                        eligible: true,
                        score: None,
                        note: String::new(),
                    }],
                    chosen: "echo".into(),
                    rule: "first_healthy".into(),
                    reason: String::new(),
                    attempt: 1,
                },
            },
            EventKind::AttemptFailed {
                turn: 1,
                failure: baton_types::AttemptFailure {
                    endpoint: "echo".into(),
                    attempt: 1,
                    kind: "server".into(),
                    message: "503".into(),
                    retry_in_ms: Some(10),
                    streamed: true,
                },
            },
            EventKind::OutputRetracted {
                turn: 1,
                attempt: 2,
                reason: "r".into(),
            },
            EventKind::TurnCompleted {
                turn: 1,
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 4,
                },
            },
            EventKind::TurnFailed {
                turn: 2,
                reason: "boom".into(),
                code: TurnFailureCode::ModelError,
            },
            EventKind::GateOpened {
                turn: 2,
                gate_id: GateId::new(),
                kind: GateKind::BeforeTool,
                point: GatePoint::ToolCall,
                policy: "payments".into(),
                reason: "r".into(),
                reviewers: "finance".into(),
                subject: "{}".into(),
                call_id: "c9".into(),
                deadline_unix_ms: 99,
                on_timeout: TimeoutAction::Escalate,
            },
            EventKind::GateDecided {
                turn: 2,
                gate_id: GateId::new(),
                decision: Decision::Edit,
                reviewer: "ana".into(),
                reason: "fixed".into(),
                edited: "{\"a\":1}".into(),
                by_timeout: false,
            },
            EventKind::GateEscalated {
                turn: 2,
                gate_id: GateId::new(),
                reviewers: "leads".into(),
                deadline_unix_ms: 5,
                on_timeout: TimeoutAction::Reject,
            },
            EventKind::TurnCancelled {
                by: String::new(),
                turn: 3,
            },
            EventKind::SessionFailed {
                reason: "bad".into(),
            },
        ];
        for (i, kind) in events.into_iter().enumerate() {
            let e = SessionEvent {
                session_id: id,
                seq: i as u64 + 1,
                at_unix_ms: 7,
                kind,
            };
            let back = event_from_proto(event_to_proto(&e)).expect("decodes");
            assert_eq!(back, e);
        }
    }

    #[test]
    fn unknown_enum_values_are_rejected_not_guessed() {
        assert_eq!(role_from_proto(99), None);
        assert_eq!(status_from_proto(42), Err(42));
        assert_eq!(status_from_proto(0), Ok(None));
    }

    #[test]
    fn gate_enums_map_and_reject_unknown_values() {
        for d in [Decision::Approve, Decision::Reject, Decision::Edit] {
            let v = decision_to_proto(Some(d)) as i32;
            assert_eq!(decision_from_proto(v), Some(d));
        }
        assert_eq!(decision_to_proto(None), v1::GateDecision::Unspecified);
        assert_eq!(decision_from_proto(0), None);
        assert_eq!(decision_from_proto(77), None);
        for st in [GateStatus::Pending, GateStatus::Decided] {
            let v = gate_status_to_proto(st) as i32;
            assert_eq!(gate_status_from_proto(v), Ok(Some(st)));
        }
        assert_eq!(gate_status_from_proto(0), Ok(None));
        assert_eq!(gate_status_from_proto(9), Err(9));
    }

    #[test]
    fn an_event_with_an_unknown_vocabulary_value_is_refused() {
        let mut e = event_to_proto(&SessionEvent {
            session_id: SessionId::new(),
            seq: 1,
            at_unix_ms: 1,
            kind: EventKind::TurnFailed {
                turn: 1,
                reason: "x".into(),
                code: TurnFailureCode::Cancelled,
            },
        });
        if let Some(ApiKind::TurnFailed(k)) = &mut e.kind {
            k.code = "exploded".into();
        }
        assert_eq!(event_from_proto(e), None);
    }
}
