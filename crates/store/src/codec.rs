//! Encoding of journal records and session metadata (protobuf, versioned).
//!
//! Message content larger than the inline limit is stored once in the
//! `payloads` column family and referenced from the record, so journal records
//! stay small and nothing is ever copied per turn.

use std::collections::BTreeMap;

use baton_proto::journal::v1 as pb;
use baton_types::{
    EventKind, FinishReason, Generation, Image, Message, Role, SessionId, SessionStatus, ToolCall,
    ToolChoice, ToolDefinition, Usage,
};
use prost::Message as _;

use crate::keys;
use crate::{Error, Result};

/// The record format version written by this build.
pub const RECORD_VERSION: u32 = 1;
/// The metadata format version written by this build.
pub const META_VERSION: u32 = 1;

/// A session's metadata, stored in the `sessions` column family and updated in
/// the same atomic batch as the journal records that change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMeta {
    pub created_at_unix_ms: u64,
    pub route: String,
    pub system_prompt: String,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub status: SessionStatus,
    pub status_reason: String,
    pub updated_at_unix_ms: u64,
}

pub fn encode_meta(m: &SessionMeta) -> Vec<u8> {
    pb::SessionMeta {
        version: META_VERSION,
        created_at_unix_ms: m.created_at_unix_ms,
        route: m.route.clone(),
        system_prompt: m.system_prompt.clone(),
        metadata: m.metadata.clone().into_iter().collect(),
        idempotency_key: m.idempotency_key.clone().unwrap_or_default(),
        status: keys::status_byte(m.status) as u32,
        status_reason: m.status_reason.clone(),
        updated_at_unix_ms: m.updated_at_unix_ms,
    }
    .encode_to_vec()
}

pub fn decode_meta(session: SessionId, bytes: &[u8]) -> Result<SessionMeta> {
    let corrupt = |reason: String| Error::CorruptMeta { session, reason };
    let m = pb::SessionMeta::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    if m.version != META_VERSION {
        return Err(corrupt(format!("unknown metadata version {}", m.version)));
    }
    let status = keys::status_from_byte(m.status)
        .ok_or_else(|| corrupt(format!("unknown status {}", m.status)))?;
    Ok(SessionMeta {
        created_at_unix_ms: m.created_at_unix_ms,
        route: m.route,
        system_prompt: m.system_prompt,
        metadata: m.metadata.into_iter().collect(),
        idempotency_key: (!m.idempotency_key.is_empty()).then_some(m.idempotency_key),
        status,
        status_reason: m.status_reason,
        updated_at_unix_ms: m.updated_at_unix_ms,
    })
}

/// An encoded record, plus the out-of-line payload it refers to, if any.
pub struct EncodedRecord {
    pub record: Vec<u8>,
    pub payload: Option<(Vec<u8>, Vec<u8>)>,
}

fn role_code(r: Role) -> u32 {
    match r {
        Role::System => 1,
        Role::User => 2,
        Role::Assistant => 3,
        Role::Tool => 4,
    }
}

fn role_from_code(c: u32) -> Option<Role> {
    match c {
        1 => Some(Role::System),
        2 => Some(Role::User),
        3 => Some(Role::Assistant),
        4 => Some(Role::Tool),
        _ => None,
    }
}

fn generation_pb(g: &Generation) -> pb::Generation {
    let (choice, name) = g.tool_choice.to_wire();
    pb::Generation {
        temperature: g.temperature,
        top_p: g.top_p,
        max_output_tokens: g.max_output_tokens,
        stop: g.stop.clone(),
        tool_choice: choice.into(),
        tool_name: name.into(),
        json_schema: g.json_schema.clone().unwrap_or_default(),
    }
}

fn generation_from(g: pb::Generation) -> std::result::Result<Generation, String> {
    let tool_choice =
        ToolChoice::from_wire(&g.tool_choice, g.tool_name).map_err(|(field, problem)| {
            format!("generation.{field}: {problem} (written by a newer version?)")
        })?;
    Ok(Generation {
        temperature: g.temperature,
        top_p: g.top_p,
        max_output_tokens: g.max_output_tokens,
        stop: g.stop,
        tool_choice,
        json_schema: (!g.json_schema.is_empty()).then_some(g.json_schema),
    })
}

fn usage_pb(u: &Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
    }
}

fn usage_from(u: Option<pb::Usage>) -> Usage {
    u.map(|u| Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
    })
    .unwrap_or_default()
}

struct MessageEncoder<'a> {
    session: &'a SessionId,
    seq: u64,
    inline_limit: usize,
    payload: Option<(Vec<u8>, Vec<u8>)>,
}

impl MessageEncoder<'_> {
    fn message(&mut self, m: &Message) -> pb::Message {
        let (content, content_ref) = if m.content.len() > self.inline_limit {
            let key = keys::journal_key(self.session, self.seq).to_vec();
            let r = pb::PayloadRef {
                key: key.clone(),
                len: m.content.len() as u64,
            };
            self.payload = Some((key, m.content.as_bytes().to_vec()));
            (String::new(), Some(r))
        } else {
            (m.content.clone(), None)
        };
        pb::Message {
            role: role_code(m.role),
            content,
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| pb::ToolCall {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                })
                .collect(),
            tool_call_id: m.tool_call_id.clone().unwrap_or_default(),
            content_ref,
            images: m
                .images
                .iter()
                .map(|i| pb::Image {
                    url: i.url.clone(),
                    detail: i.detail.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// Encode one journal record.
pub fn encode_record(
    session: &SessionId,
    seq: u64,
    at_unix_ms: u64,
    kind: &EventKind,
    inline_limit: usize,
) -> EncodedRecord {
    use pb::record::Kind;
    let mut enc = MessageEncoder {
        session,
        seq,
        inline_limit,
        payload: None,
    };
    let kind = match kind {
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
        } => Kind::SessionCreated(pb::SessionCreated {
            generation: (!generation.is_default()).then(|| generation_pb(generation)),
            budget_usd: *budget_usd,
            data_classes: data_classes.clone(),
            one_shot: *one_shot,
            history: history.iter().map(|m| enc.message(m)).collect(),
            replay_of: replay_of.clone().unwrap_or_default(),
            route: route.clone(),
            system_prompt: system_prompt.clone(),
            metadata: Default::default(),
            idempotency_key: String::new(),
            allowed_tools: allowed_tools.clone(),
            client_tools: client_tools
                .iter()
                .map(|t| pb::ToolDefinition {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    parameters_json: t.parameters.clone(),
                })
                .collect(),
            max_steps: *max_steps,
        }),
        EventKind::TurnAccepted {
            turn,
            message,
            review,
        } => Kind::TurnAccepted(pb::TurnAccepted {
            turn: *turn,
            message: Some(enc.message(message)),
            review: *review,
        }),
        EventKind::ModelCallStarted {
            turn,
            attempt,
            endpoint,
            reason,
        } => Kind::ModelCallStarted(pb::ModelCallStarted {
            turn: *turn,
            attempt: *attempt,
            endpoint: endpoint.clone(),
            reason: reason.clone(),
        }),
        EventKind::OutputDelta {
            turn,
            attempt,
            text,
        } => Kind::OutputDelta(pb::OutputDelta {
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
        } => Kind::ModelResponse(pb::ModelResponse {
            cost_usd: *cost_usd,
            attempts: *attempts,
            turn: *turn,
            message: Some(enc.message(message)),
            usage: Some(usage_pb(usage)),
            endpoint: endpoint.clone(),
            model: model.clone(),
            finish_reason: finish_reason.as_str().to_string(),
            latency_ms: *latency_ms,
        }),
        EventKind::RoutingDecided { turn, decision } => Kind::RoutingDecided(pb::RoutingDecided {
            turn: *turn,
            route: decision.route.clone(),
            strategy: decision.strategy.clone(),
            candidates: decision
                .candidates
                .iter()
                .map(|c| pb::RouteCandidate {
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
        EventKind::AttemptFailed { turn, failure } => Kind::AttemptFailed(pb::AttemptFailed {
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
        } => Kind::OutputRetracted(pb::OutputRetracted {
            turn: *turn,
            attempt: *attempt,
            reason: reason.clone(),
        }),
        EventKind::TurnCompleted { turn, usage } => Kind::TurnCompleted(pb::TurnCompleted {
            turn: *turn,
            usage: Some(usage_pb(usage)),
        }),
        EventKind::TurnFailed { turn, reason, code } => Kind::TurnFailed(pb::TurnFailed {
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
        } => Kind::ToolCallRequested(pb::ToolCallRequested {
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
        } => Kind::ToolCallStarted(pb::ToolCallStarted {
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
        } => Kind::ToolResult(pb::ToolResult {
            turn: *turn,
            call_id: call_id.clone(),
            name: name.clone(),
            output: Some(enc.message(&Message {
                role: Role::Tool,
                content: output.clone(),
                tool_calls: Vec::new(),
                tool_call_id: Some(call_id.clone()),
                images: Vec::new(),
            })),
            is_error: *is_error,
            latency_ms: *latency_ms,
        }),
        EventKind::NeedsAttention {
            turn,
            call_id,
            reason,
        } => Kind::NeedsAttention(pb::NeedsAttention {
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
        } => Kind::GateOpened(pb::GateOpened {
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
        } => Kind::GateDecided(pb::GateDecided {
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
        } => Kind::GateEscalated(pb::GateEscalated {
            turn: *turn,
            gate_id: gate_id.clone(),
            reviewers: reviewers.clone(),
            deadline_unix_ms: *deadline_unix_ms,
            on_timeout: on_timeout.clone(),
        }),
        EventKind::TurnCancelled { turn } => Kind::TurnCancelled(pb::TurnCancelled { turn: *turn }),
        EventKind::SessionFailed { reason } => Kind::SessionFailed(pb::SessionFailed {
            reason: reason.clone(),
        }),
    };
    let record = pb::Record {
        version: RECORD_VERSION,
        at_unix_ms,
        kind: Some(kind),
    }
    .encode_to_vec();
    EncodedRecord {
        record,
        payload: enc.payload,
    }
}

/// Fetches an out-of-line payload by its key (`None` when it is missing).
pub type PayloadLoader<'a> = dyn FnMut(&[u8]) -> Result<Option<Vec<u8>>> + 'a;

/// Decode one journal record. `load_payload` fetches an out-of-line payload by key.
pub fn decode_record(
    session: SessionId,
    seq: u64,
    bytes: &[u8],
    load_payload: &mut PayloadLoader<'_>,
) -> Result<(u64, EventKind)> {
    use pb::record::Kind;
    let corrupt = |reason: String| Error::CorruptRecord {
        session,
        seq,
        reason,
    };
    let r = pb::Record::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    if r.version != RECORD_VERSION {
        return Err(corrupt(format!(
            "unknown record version {} (this build reads version {RECORD_VERSION})",
            r.version
        )));
    }
    let mut message = |m: Option<pb::Message>| -> Result<Message> {
        let m = m.ok_or_else(|| corrupt("message missing".into()))?;
        let role =
            role_from_code(m.role).ok_or_else(|| corrupt(format!("unknown role {}", m.role)))?;
        let content = match m.content_ref {
            None => m.content,
            Some(r) => {
                let bytes = load_payload(&r.key)?.ok_or(Error::MissingPayload { session, seq })?;
                if bytes.len() as u64 != r.len {
                    return Err(corrupt(format!(
                        "payload is {} bytes, the record says {}",
                        bytes.len(),
                        r.len
                    )));
                }
                String::from_utf8(bytes).map_err(|_| corrupt("payload is not UTF-8".into()))?
            }
        };
        Ok(Message {
            role,
            content,
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
            images: m
                .images
                .into_iter()
                .map(|i| Image {
                    url: i.url,
                    detail: (!i.detail.is_empty()).then_some(i.detail),
                })
                .collect(),
        })
    };
    let kind = match r
        .kind
        .ok_or_else(|| corrupt("record has no kind (written by a newer version?)".into()))?
    {
        Kind::SessionCreated(k) => EventKind::SessionStarted {
            route: k.route,
            system_prompt: k.system_prompt,
            allowed_tools: k.allowed_tools,
            client_tools: k
                .client_tools
                .into_iter()
                .map(|t| ToolDefinition {
                    name: t.name,
                    description: t.description,
                    parameters: t.parameters_json,
                })
                .collect(),
            max_steps: k.max_steps,
            budget_usd: k.budget_usd,
            data_classes: k.data_classes,
            one_shot: k.one_shot,
            history: k
                .history
                .into_iter()
                .map(|m| message(Some(m)))
                .collect::<Result<Vec<_>, _>>()?,
            generation: k
                .generation
                .map(generation_from)
                .transpose()
                .map_err(corrupt)?
                .unwrap_or_default(),
            replay_of: (!k.replay_of.is_empty()).then_some(k.replay_of),
        },
        Kind::TurnAccepted(k) => EventKind::TurnAccepted {
            turn: k.turn,
            message: message(k.message)?,
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
        Kind::ModelResponse(k) => EventKind::AssistantMessage {
            turn: k.turn,
            message: message(k.message)?,
            usage: usage_from(k.usage),
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
            usage: usage_from(k.usage),
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
            output: message(k.output)?.content,
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
    Ok((r.at_unix_ms, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_session() -> SessionId {
        SessionId::from_bytes([7; 16])
    }

    fn no_payloads(_: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Golden bytes: these encodings are what every existing data directory
    /// holds. If this test fails, an encoding changed: add a new field or a new
    /// record version instead, and keep reading the old one.
    #[test]
    fn golden_bytes_of_journal_records() {
        let s = fixed_session();
        let cases: Vec<(EventKind, &str)> = vec![
            (
                EventKind::SessionStarted {
                    route: "echo".into(),
                    system_prompt: "be brief".into(),
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
                "0801102a52100a046563686f12086265206272696566",
            ),
            (
                EventKind::TurnAccepted {
                    turn: 1,
                    message: Message::user("hi"),
                    review: false,
                },
                "0801102a5a0a08011206080212026869",
            ),
            (
                EventKind::ModelCallStarted {
                    turn: 1,
                    attempt: 2,
                    endpoint: "e".into(),
                    reason: "recovery".into(),
                },
                "0801102a6211080110021a016522087265636f76657279",
            ),
            (
                EventKind::AssistantMessage {
                    turn: 3,
                    message: Message::assistant("ok"),
                    usage: Usage {
                        input_tokens: 5,
                        output_tokens: 6,
                    },
                    endpoint: "e".into(),
                    model: "m".into(),
                    finish_reason: FinishReason::Stop,
                    latency_ms: 9,
                    cost_usd: None,
                    attempts: 0,
                },
                "0801102a721e08031206080312026f6b1a04080510062201652a016d320473746f703809",
            ),
            (
                EventKind::TurnCompleted {
                    turn: 3,
                    usage: Usage {
                        input_tokens: 5,
                        output_tokens: 6,
                    },
                },
                "0801102a7a080803120408051006",
            ),
            (
                EventKind::TurnFailed {
                    turn: 4,
                    reason: "x".into(),
                    code: String::new(),
                },
                "0801102a8201050804120178",
            ),
            (
                EventKind::ToolCallRequested {
                    turn: 1,
                    call_id: "c".into(),
                    name: "t".into(),
                    arguments: "{}".into(),
                    client_side: true,
                },
                "0801102a9a010e08011201631a017422027b7d2801",
            ),
            (
                EventKind::ToolCallStarted {
                    turn: 1,
                    call_id: "c".into(),
                    name: "t".into(),
                    attempt: 2,
                },
                "0801102aa2010a08011201631a01742002",
            ),
            (
                EventKind::ToolResult {
                    turn: 1,
                    call_id: "c".into(),
                    name: "t".into(),
                    output: "4".into(),
                    is_error: true,
                    latency_ms: 5,
                },
                "0801102aaa011608011201631a01742208080412013422016328013005",
            ),
            (
                EventKind::NeedsAttention {
                    turn: 1,
                    call_id: "c".into(),
                    reason: "r".into(),
                },
                "0801102ab2010808011201631a0172",
            ),
            (EventKind::TurnCancelled { turn: 5 }, "0801102a8a01020805"),
            (
                EventKind::SessionFailed { reason: "y".into() },
                "0801102a9201030a0179",
            ),
            (
                EventKind::SessionStarted {
                    route: "r".into(),
                    system_prompt: String::new(),
                    allowed_tools: vec![],
                    client_tools: vec![],
                    max_steps: 0,
                    budget_usd: Some(0.5),
                    data_classes: vec!["pii".into()],
                    one_shot: true,
                    history: vec![Message::user("h")],
                    generation: Default::default(),
                    replay_of: Some("x".into()),
                },
                "0801102a521d0a017241000000000000e03f4a0370696950015a050802120168620178",
            ),
            (
                EventKind::SessionStarted {
                    route: "r".into(),
                    system_prompt: String::new(),
                    allowed_tools: vec![],
                    client_tools: vec![],
                    max_steps: 0,
                    budget_usd: None,
                    data_classes: Vec::new(),
                    one_shot: false,
                    history: Vec::new(),
                    generation: Generation {
                        temperature: Some(0.5),
                        top_p: Some(1.0),
                        max_output_tokens: Some(7),
                        stop: vec!["E".into()],
                        tool_choice: ToolChoice::Tool("t".into()),
                        json_schema: Some("{}".into()),
                    },
                    replay_of: None,
                },
                "0801102a52210a01726a1c0d0000003f150000803f18072201452a04746f6f6c3201743a027b7d",
            ),
            (
                EventKind::TurnAccepted {
                    turn: 1,
                    message: Message {
                        images: vec![Image {
                            url: "u".into(),
                            detail: Some("low".into()),
                        }],
                        ..Message::user("hi")
                    },
                    review: false,
                },
                "0801102a5a140801121008021202686932080a017512036c6f77",
            ),
            (
                EventKind::AssistantMessage {
                    turn: 3,
                    message: Message::assistant("ok"),
                    usage: Usage {
                        input_tokens: 5,
                        output_tokens: 6,
                    },
                    endpoint: "e".into(),
                    model: "m".into(),
                    finish_reason: FinishReason::Stop,
                    latency_ms: 9,
                    cost_usd: Some(0.25),
                    attempts: 2,
                },
                "0801102a722908031206080312026f6b1a04080510062201652a016d320473746f70380941000000000000d03f4802",
            ),
            (
                EventKind::RoutingDecided {
                    turn: 1,
                    decision: baton_types::RoutingDecision {
                        route: "r".into(),
                        strategy: "fallback".into(),
                        candidates: vec![baton_types::RouteCandidate {
                            endpoint: "a".into(),
                            eligible: false,
                            score: Some(1.5),
                            note: "breaker open".into(),
                        }],
                        chosen: "b".into(),
                        rule: "failover".into(),
                        reason: "why".into(),
                        attempt: 2,
                    },
                },
                "0801102ad2013f08011201721a0866616c6c6261636b221a0a016119000000000000f83f220c627265616b6572206f70656e2a016232086661696c6f7665723a037768794002",
            ),
            (
                EventKind::AttemptFailed {
                    turn: 1,
                    failure: baton_types::AttemptFailure {
                        endpoint: "a".into(),
                        attempt: 1,
                        kind: "server".into(),
                        message: "503".into(),
                        retry_in_ms: Some(200),
                        retracted: true,
                    },
                },
                "0801102ada01190801120161180122067365727665722a0335303330c8013801",
            ),
            (
                EventKind::OutputRetracted {
                    turn: 1,
                    attempt: 2,
                    reason: "x".into(),
                },
                "0801102ae20107080110021a0178",
            ),
        ];
        for (kind, golden_prefix) in cases {
            let enc = encode_record(&s, 1, 42, &kind, 1024);
            let got = hex(&enc.record);
            assert_eq!(got, golden_prefix, "encoding of {} changed", kind.name());
            let (at, back) = decode_record(s, 1, &enc.record, &mut no_payloads).unwrap();
            assert_eq!(at, 42);
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn golden_bytes_full_records() {
        let s = fixed_session();
        let enc = encode_record(
            &s,
            1,
            42,
            &EventKind::TurnAccepted {
                turn: 1,
                message: Message::user("hi"),
                review: false,
            },
            1024,
        );
        assert_eq!(
            hex(&enc.record),
            "0801102a5a0a080112060802120268 69".replace(' ', "")
        );
        let enc = encode_record(&s, 1, 42, &EventKind::TurnCancelled { turn: 5 }, 1024);
        assert_eq!(hex(&enc.record), "0801102a8a01020805");
    }

    #[test]
    fn golden_bytes_of_session_meta() {
        let m = SessionMeta {
            created_at_unix_ms: 1,
            route: "r".into(),
            system_prompt: String::new(),
            metadata: BTreeMap::from([("k".to_string(), "v".to_string())]),
            idempotency_key: Some("key".into()),
            status: SessionStatus::Running,
            status_reason: String::new(),
            updated_at_unix_ms: 2,
        };
        let bytes = encode_meta(&m);
        assert_eq!(
            hex(&bytes),
            "080110011a0172 2a060a016b120176 32036b6579 3802 4802".replace(' ', "")
        );
        assert_eq!(decode_meta(fixed_session(), &bytes).unwrap(), m);
    }

    #[test]
    fn large_content_goes_out_of_line_and_comes_back() {
        let s = fixed_session();
        let big = "x".repeat(5000);
        let kind = EventKind::TurnAccepted {
            turn: 1,
            message: Message::user(big.clone()),
            review: false,
        };
        let enc = encode_record(&s, 9, 1, &kind, 1024);
        assert!(
            enc.record.len() < 100,
            "record must not hold the large content"
        );
        let (pkey, pval) = enc.payload.clone().expect("payload stored separately");
        assert_eq!(pval.len(), 5000);
        let mut load = |k: &[u8]| -> Result<Option<Vec<u8>>> {
            Ok((k == pkey.as_slice()).then(|| pval.clone()))
        };
        let (_, back) = decode_record(s, 9, &enc.record, &mut load).unwrap();
        assert_eq!(back, kind);
        let err = decode_record(s, 9, &enc.record, &mut no_payloads).unwrap_err();
        assert!(matches!(err, Error::MissingPayload { seq: 9, .. }));
    }

    #[test]
    fn garbage_and_unknown_versions_name_session_and_seq() {
        let s = fixed_session();
        let err = decode_record(s, 17, &[0xff, 0xff, 0xff], &mut no_payloads).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("17") && msg.contains(&s.to_string()), "{msg}");
        let future = pb::Record {
            version: 99,
            at_unix_ms: 0,
            kind: None,
        }
        .encode_to_vec();
        let err = decode_record(s, 3, &future, &mut no_payloads).unwrap_err();
        assert!(
            err.to_string().contains("unknown record version 99"),
            "{err}"
        );
    }
}
