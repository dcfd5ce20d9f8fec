//! Conversions between [`baton_types`] and the `baton.v1` API messages.

use baton_types::{
    EventKind, FinishReason, Generation, Image, Message, Role, SessionEvent, SessionStatus,
    ToolCall, ToolChoice, ToolDefinition, Usage,
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

pub fn event_to_proto(e: &SessionEvent) -> v1::SessionEvent {
    use v1::session_event::Kind;
    let kind = match &e.kind {
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
        } => Kind::SessionStarted(v1::SessionStarted {
            generation: generation_to_proto(generation),
            budget_usd: *budget_usd,
            data_classes: data_classes.clone(),
            one_shot: *one_shot,
            history_messages: history.len() as u32,
            replay_of: replay_of.clone().unwrap_or_default(),
            route: route.clone(),
            system_prompt: system_prompt.clone(),
            allowed_tools: allowed_tools.clone(),
            client_tools: client_tools.iter().map(tool_definition_to_proto).collect(),
            max_steps: *max_steps,
        }),
        EventKind::TurnAccepted {
            turn,
            message,
            review,
        } => Kind::TurnAccepted(v1::TurnAccepted {
            turn: *turn,
            message: Some(message_to_proto(message)),
            review: *review,
        }),
        EventKind::ModelCallStarted {
            turn,
            attempt,
            endpoint,
            reason,
        } => Kind::ModelCallStarted(v1::ModelCallStarted {
            turn: *turn,
            attempt: *attempt,
            endpoint: endpoint.clone(),
            reason: reason.clone(),
        }),
        EventKind::OutputDelta {
            turn,
            attempt,
            text,
        } => Kind::OutputDelta(v1::OutputDelta {
            turn: *turn,
            attempt: *attempt,
            text: text.clone(),
        }),
        EventKind::AssistantMessage {
            turn,
            message,
            usage,
            endpoint,
            model,
            finish_reason,
            latency_ms,
            cost_usd,
            attempts,
        } => Kind::AssistantMessage(v1::AssistantMessage {
            cost_usd: *cost_usd,
            attempts: *attempts,
            turn: *turn,
            message: Some(message_to_proto(message)),
            usage: Some(usage_to_proto(*usage)),
            endpoint: endpoint.clone(),
            model: model.clone(),
            finish_reason: finish_reason.as_str().to_string(),
            latency_ms: *latency_ms,
        }),
        EventKind::RoutingDecided { turn, decision } => Kind::RoutingDecided(v1::RoutingDecided {
            turn: *turn,
            route: decision.route.clone(),
            strategy: decision.strategy.clone(),
            candidates: decision
                .candidates
                .iter()
                .map(|c| v1::RouteCandidate {
                    endpoint: c.endpoint.clone(),
                    eligible: c.eligible,
                    score: c.score,
                    note: c.note.clone(),
                })
                .collect(),
            chosen: decision.chosen.clone(),
            rule: decision.rule.clone(),
            reason: decision.reason.clone(),
            attempt: decision.attempt,
        }),
        EventKind::AttemptFailed { turn, failure } => Kind::AttemptFailed(v1::AttemptFailed {
            turn: *turn,
            endpoint: failure.endpoint.clone(),
            attempt: failure.attempt,
            kind: failure.kind.clone(),
            message: failure.message.clone(),
            retry_in_ms: failure.retry_in_ms,
            retracted: failure.retracted,
        }),
        EventKind::OutputRetracted {
            turn,
            attempt,
            reason,
        } => Kind::OutputRetracted(v1::OutputRetracted {
            turn: *turn,
            attempt: *attempt,
            reason: reason.clone(),
        }),
        EventKind::TurnCompleted { turn, usage } => Kind::TurnCompleted(v1::TurnCompleted {
            turn: *turn,
            usage: Some(usage_to_proto(*usage)),
        }),
        EventKind::TurnFailed { turn, reason, code } => Kind::TurnFailed(v1::TurnFailed {
            turn: *turn,
            reason: reason.clone(),
            code: code.clone(),
        }),
        EventKind::ToolCallRequested {
            turn,
            call_id,
            name,
            arguments,
            client_side,
        } => Kind::ToolCallRequested(v1::ToolCallRequested {
            turn: *turn,
            call_id: call_id.clone(),
            name: name.clone(),
            arguments: arguments.clone(),
            client_side: *client_side,
        }),
        EventKind::ToolCallStarted {
            turn,
            call_id,
            name,
            attempt,
        } => Kind::ToolCallStarted(v1::ToolCallStarted {
            turn: *turn,
            call_id: call_id.clone(),
            name: name.clone(),
            attempt: *attempt,
        }),
        EventKind::ToolResult {
            turn,
            call_id,
            name,
            output,
            is_error,
            latency_ms,
        } => Kind::ToolResult(v1::ToolResult {
            turn: *turn,
            call_id: call_id.clone(),
            name: name.clone(),
            output: output.clone(),
            is_error: *is_error,
            latency_ms: *latency_ms,
        }),
        EventKind::NeedsAttention {
            turn,
            call_id,
            reason,
        } => Kind::NeedsAttention(v1::NeedsAttention {
            turn: *turn,
            call_id: call_id.clone(),
            reason: reason.clone(),
        }),
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
        } => Kind::GateOpened(v1::GateOpened {
            turn: *turn,
            gate_id: gate_id.clone(),
            kind: kind.clone(),
            point: point.clone(),
            policy: policy.clone(),
            reason: reason.clone(),
            reviewers: reviewers.clone(),
            subject: subject.clone(),
            call_id: call_id.clone(),
            deadline_unix_ms: *deadline_unix_ms,
            on_timeout: on_timeout.clone(),
        }),
        EventKind::GateDecided {
            turn,
            gate_id,
            decision,
            reviewer,
            reason,
            edited,
            by_timeout,
        } => Kind::GateDecided(v1::GateDecided {
            turn: *turn,
            gate_id: gate_id.clone(),
            decision: decision.clone(),
            reviewer: reviewer.clone(),
            reason: reason.clone(),
            edited: edited.clone(),
            by_timeout: *by_timeout,
        }),
        EventKind::GateEscalated {
            turn,
            gate_id,
            reviewers,
            deadline_unix_ms,
            on_timeout,
        } => Kind::GateEscalated(v1::GateEscalated {
            turn: *turn,
            gate_id: gate_id.clone(),
            reviewers: reviewers.clone(),
            deadline_unix_ms: *deadline_unix_ms,
            on_timeout: on_timeout.clone(),
        }),
        EventKind::TurnCancelled { turn } => Kind::TurnCancelled(v1::TurnCancelled { turn: *turn }),
        EventKind::SessionFailed { reason } => Kind::SessionFailed(v1::SessionFailed {
            reason: reason.clone(),
        }),
    };
    v1::SessionEvent {
        session_id: e.session_id.to_string(),
        seq: e.seq,
        at_unix_ms: e.at_unix_ms,
        kind: Some(kind),
    }
}

/// Decode an API event back into the shared type (used by clients and tests).
/// `None` when the event is malformed or of a kind this build does not know.
pub fn event_from_proto(e: v1::SessionEvent) -> Option<SessionEvent> {
    use v1::session_event::Kind;
    let kind = match e.kind? {
        Kind::SessionStarted(k) => EventKind::SessionStarted {
            route: k.route,
            system_prompt: k.system_prompt,
            allowed_tools: k.allowed_tools,
            client_tools: k
                .client_tools
                .into_iter()
                .map(tool_definition_from_proto)
                .collect(),
            max_steps: k.max_steps,
            budget_usd: k.budget_usd,
            data_classes: k.data_classes,
            one_shot: k.one_shot,
            // The API carries only the number of history messages.
            history: Vec::new(),
            generation: generation_from_proto(k.generation).ok()?,
            replay_of: (!k.replay_of.is_empty()).then_some(k.replay_of),
        },
        Kind::TurnAccepted(k) => EventKind::TurnAccepted {
            turn: k.turn,
            message: message_from_proto(k.message?)?,
            review: k.review,
        },
        Kind::ModelCallStarted(k) => EventKind::ModelCallStarted {
            turn: k.turn,
            attempt: k.attempt,
            endpoint: k.endpoint,
            reason: k.reason,
        },
        Kind::OutputDelta(k) => EventKind::OutputDelta {
            turn: k.turn,
            attempt: k.attempt,
            text: k.text,
        },
        Kind::AssistantMessage(k) => EventKind::AssistantMessage {
            turn: k.turn,
            message: message_from_proto(k.message?)?,
            usage: usage_from_proto(k.usage),
            endpoint: k.endpoint,
            model: k.model,
            finish_reason: FinishReason::from_provider(&k.finish_reason),
            latency_ms: k.latency_ms,
            cost_usd: k.cost_usd,
            attempts: k.attempts,
        },
        Kind::RoutingDecided(k) => EventKind::RoutingDecided {
            turn: k.turn,
            decision: baton_types::RoutingDecision {
                route: k.route,
                strategy: k.strategy,
                candidates: k
                    .candidates
                    .into_iter()
                    .map(|c| baton_types::RouteCandidate {
                        endpoint: c.endpoint,
                        eligible: c.eligible,
                        score: c.score,
                        note: c.note,
                    })
                    .collect(),
                chosen: k.chosen,
                rule: k.rule,
                reason: k.reason,
                attempt: k.attempt,
            },
        },
        Kind::AttemptFailed(k) => EventKind::AttemptFailed {
            turn: k.turn,
            failure: baton_types::AttemptFailure {
                endpoint: k.endpoint,
                attempt: k.attempt,
                kind: k.kind,
                message: k.message,
                retry_in_ms: k.retry_in_ms,
                retracted: k.retracted,
            },
        },
        Kind::OutputRetracted(k) => EventKind::OutputRetracted {
            turn: k.turn,
            attempt: k.attempt,
            reason: k.reason,
        },
        Kind::TurnCompleted(k) => EventKind::TurnCompleted {
            turn: k.turn,
            usage: usage_from_proto(k.usage),
        },
        Kind::TurnFailed(k) => EventKind::TurnFailed {
            turn: k.turn,
            reason: k.reason,
            code: k.code,
        },
        Kind::ToolCallRequested(k) => EventKind::ToolCallRequested {
            turn: k.turn,
            call_id: k.call_id,
            name: k.name,
            arguments: k.arguments,
            client_side: k.client_side,
        },
        Kind::ToolCallStarted(k) => EventKind::ToolCallStarted {
            turn: k.turn,
            call_id: k.call_id,
            name: k.name,
            attempt: k.attempt,
        },
        Kind::ToolResult(k) => EventKind::ToolResult {
            turn: k.turn,
            call_id: k.call_id,
            name: k.name,
            output: k.output,
            is_error: k.is_error,
            latency_ms: k.latency_ms,
        },
        Kind::NeedsAttention(k) => EventKind::NeedsAttention {
            turn: k.turn,
            call_id: k.call_id,
            reason: k.reason,
        },
        Kind::GateOpened(k) => EventKind::GateOpened {
            turn: k.turn,
            gate_id: k.gate_id,
            kind: k.kind,
            point: k.point,
            policy: k.policy,
            reason: k.reason,
            reviewers: k.reviewers,
            subject: k.subject,
            call_id: k.call_id,
            deadline_unix_ms: k.deadline_unix_ms,
            on_timeout: k.on_timeout,
        },
        Kind::GateDecided(k) => EventKind::GateDecided {
            turn: k.turn,
            gate_id: k.gate_id,
            decision: k.decision,
            reviewer: k.reviewer,
            reason: k.reason,
            edited: k.edited,
            by_timeout: k.by_timeout,
        },
        Kind::GateEscalated(k) => EventKind::GateEscalated {
            turn: k.turn,
            gate_id: k.gate_id,
            reviewers: k.reviewers,
            deadline_unix_ms: k.deadline_unix_ms,
            on_timeout: k.on_timeout,
        },
        Kind::TurnCancelled(k) => EventKind::TurnCancelled { turn: k.turn },
        Kind::SessionFailed(k) => EventKind::SessionFailed { reason: k.reason },
    };
    Some(SessionEvent {
        session_id: e.session_id.parse().ok()?,
        seq: e.seq,
        at_unix_ms: e.at_unix_ms,
        kind,
    })
}

/// A gate decision as the journal names it (`approve`, `reject`, `edit`);
/// `GATE_DECISION_UNSPECIFIED` for an undecided gate (`""`) or an unknown name.
pub fn gate_decision_from_name(name: &str) -> v1::GateDecision {
    match name {
        "approve" => v1::GateDecision::Approve,
        "reject" => v1::GateDecision::Reject,
        "edit" => v1::GateDecision::Edit,
        _ => v1::GateDecision::Unspecified,
    }
}

/// The journal's name of an API gate decision; `None` for
/// `GATE_DECISION_UNSPECIFIED` or an unknown value.
pub fn gate_decision_name(decision: i32) -> Option<&'static str> {
    match v1::GateDecision::try_from(decision).ok()? {
        v1::GateDecision::Approve => Some("approve"),
        v1::GateDecision::Reject => Some("reject"),
        v1::GateDecision::Edit => Some("edit"),
        v1::GateDecision::Unspecified => None,
    }
}

/// `pending` or `decided`; `None` for `GATE_STATUS_UNSPECIFIED` or an unknown value.
pub fn gate_status_name(status: i32) -> Option<&'static str> {
    match v1::GateStatus::try_from(status).ok()? {
        v1::GateStatus::Pending => Some("pending"),
        v1::GateStatus::Decided => Some("decided"),
        v1::GateStatus::Unspecified => None,
    }
}

/// The API value of a gate status name (`pending`, `decided`).
pub fn gate_status_from_name(name: &str) -> Option<v1::GateStatus> {
    match name {
        "pending" => Some(v1::GateStatus::Pending),
        "decided" => Some(v1::GateStatus::Decided),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_types::SessionId;

    #[test]
    fn events_round_trip_through_the_api_shape() {
        let id = SessionId::new();
        let events = vec![
            EventKind::SessionStarted {
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
                turn: 1,
                message: Message::user("hi"),
                review: false,
            },
            EventKind::ModelCallStarted {
                turn: 1,
                attempt: 1,
                endpoint: "echo".into(),
                reason: "turn".into(),
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
                    retracted: true,
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
                code: "model_error".into(),
            },
            EventKind::TurnCancelled { turn: 3 },
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
    fn gate_enums_map_by_name_and_reject_unknown_values() {
        for name in ["approve", "reject", "edit"] {
            let d = gate_decision_from_name(name) as i32;
            assert_eq!(gate_decision_name(d), Some(name));
        }
        assert_eq!(gate_decision_from_name(""), v1::GateDecision::Unspecified);
        assert_eq!(gate_decision_name(0), None);
        assert_eq!(gate_decision_name(77), None);
        for name in ["pending", "decided"] {
            let st = gate_status_from_name(name).map(|s| s as i32);
            assert_eq!(st.and_then(gate_status_name), Some(name));
        }
        assert_eq!(gate_status_from_name("open"), None);
        assert_eq!(gate_status_name(9), None);
    }
}
