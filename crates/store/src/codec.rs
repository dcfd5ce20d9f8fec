//! Encoding of journal records and session metadata (protobuf, versioned).
//!
//! Message content larger than the inline limit is stored once in the
//! `payloads` column family and referenced from the record, so journal records
//! stay small and nothing is ever copied per turn.

use std::collections::BTreeMap;

use baton_proto::journal::v1 as pb;
use baton_types::{
    EventKind, Generation, Image, Message, Role, SessionId, SessionStatus, ToolCall, ToolChoice,
    ToolDefinition, Usage,
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
    /// The tenant the session belongs to ([`baton_types::DEFAULT_TENANT`]
    /// for sessions stored before tenants).
    pub tenant: String,
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
        // The default tenant is stored as absent: the bytes of such a
        // session are those of a session stored before tenants.
        tenant: if m.tenant == baton_types::DEFAULT_TENANT {
            String::new()
        } else {
            m.tenant.clone()
        },
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
        tenant: if m.tenant.is_empty() {
            baton_types::DEFAULT_TENANT.to_string()
        } else {
            m.tenant
        },
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

/// What encoding a record needs: where large content goes.
struct Enc<'a> {
    session: &'a SessionId,
    seq: u64,
    inline_limit: usize,
    payload: Option<(Vec<u8>, Vec<u8>)>,
}

impl Enc<'_> {
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

/// What decoding a record needs: who it belongs to (for errors) and where
/// out-of-line payloads are.
struct Dec<'a, 'b> {
    session: SessionId,
    seq: u64,
    load_payload: &'a mut PayloadLoader<'b>,
}

impl Dec<'_, '_> {
    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::CorruptRecord {
            session: self.session,
            seq: self.seq,
            reason: reason.into(),
        }
    }

    fn message(&mut self, m: Option<pb::Message>) -> Result<Message> {
        let m = m.ok_or_else(|| self.corrupt("message missing"))?;
        let role = role_from_code(m.role)
            .ok_or_else(|| self.corrupt(format!("unknown role {}", m.role)))?;
        let content = match m.content_ref {
            None => m.content,
            Some(r) => {
                let bytes = (self.load_payload)(&r.key)?.ok_or(Error::MissingPayload {
                    session: self.session,
                    seq: self.seq,
                })?;
                if bytes.len() as u64 != r.len {
                    return Err(self.corrupt(format!(
                        "payload is {} bytes, the record says {}",
                        bytes.len(),
                        r.len
                    )));
                }
                String::from_utf8(bytes).map_err(|_| self.corrupt("payload is not UTF-8"))?
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
    }
}

/// A field of a journal record: how a domain value becomes its wire field
/// and back. `dec` refuses what this build cannot read, naming the record.
trait JournalField<W>: Sized {
    fn enc(&self, cx: &mut Enc<'_>) -> W;
    fn dec(w: W, cx: &mut Dec<'_, '_>) -> Result<Self>;
}

baton_proto::common_fields! {
    field = JournalField, enc = Enc<'_>, dec = Dec<'_, '_>, error = Error,
    malformed = |cx, reason| cx.corrupt(reason),
}

impl JournalField<Option<pb::Message>> for Message {
    fn enc(&self, cx: &mut Enc<'_>) -> Option<pb::Message> {
        Some(cx.message(self))
    }
    fn dec(w: Option<pb::Message>, cx: &mut Dec<'_, '_>) -> Result<Self> {
        cx.message(w)
    }
}

impl JournalField<Vec<pb::Message>> for Vec<Message> {
    fn enc(&self, cx: &mut Enc<'_>) -> Vec<pb::Message> {
        self.iter().map(|m| cx.message(m)).collect()
    }
    fn dec(w: Vec<pb::Message>, cx: &mut Dec<'_, '_>) -> Result<Self> {
        w.into_iter().map(|m| cx.message(Some(m))).collect()
    }
}

impl JournalField<Option<pb::Usage>> for Usage {
    fn enc(&self, _: &mut Enc<'_>) -> Option<pb::Usage> {
        Some(pb::Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
        })
    }
    fn dec(w: Option<pb::Usage>, _: &mut Dec<'_, '_>) -> Result<Self> {
        Ok(w.map(|u| Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
        })
        .unwrap_or_default())
    }
}

impl JournalField<Option<pb::Generation>> for Generation {
    /// Absent for the defaults (journals from before generation settings).
    fn enc(&self, _: &mut Enc<'_>) -> Option<pb::Generation> {
        if self.is_default() {
            return None;
        }
        let (choice, name) = self.tool_choice.to_wire();
        Some(pb::Generation {
            temperature: self.temperature,
            top_p: self.top_p,
            max_output_tokens: self.max_output_tokens,
            stop: self.stop.clone(),
            tool_choice: choice.into(),
            tool_name: name.into(),
            json_schema: self.json_schema.clone().unwrap_or_default(),
        })
    }
    fn dec(w: Option<pb::Generation>, cx: &mut Dec<'_, '_>) -> Result<Self> {
        let Some(g) = w else {
            return Ok(Generation::default());
        };
        let tool_choice =
            ToolChoice::from_wire(&g.tool_choice, g.tool_name).map_err(|(field, problem)| {
                cx.corrupt(format!(
                    "generation.{field}: {problem} (written by a newer version?)"
                ))
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
}

impl JournalField<Vec<pb::ToolDefinition>> for Vec<ToolDefinition> {
    fn enc(&self, _: &mut Enc<'_>) -> Vec<pb::ToolDefinition> {
        self.iter()
            .map(|t| pb::ToolDefinition {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters_json: t.parameters.clone(),
            })
            .collect()
    }
    fn dec(w: Vec<pb::ToolDefinition>, _: &mut Dec<'_, '_>) -> Result<Self> {
        Ok(w.into_iter()
            .map(|t| ToolDefinition {
                name: t.name,
                description: t.description,
                parameters: t.parameters_json,
            })
            .collect())
    }
}

/// `ToolResult.output`: stored as a tool-role message, so a large result
/// goes out of line like any large content. Encoded after `call_id`.
mod tool_output {
    use super::*;
    pub(super) fn enc(output: &str, w: &mut pb::ToolResult, cx: &mut Enc<'_>) {
        w.output = Some(cx.message(&Message {
            role: Role::Tool,
            content: output.to_string(),
            tool_calls: Vec::new(),
            tool_call_id: Some(w.call_id.clone()),
            images: Vec::new(),
        }));
    }
    pub(super) fn dec(w: &mut pb::ToolResult, cx: &mut Dec<'_, '_>) -> Result<String> {
        Ok(cx.message(w.output.take())?.content)
    }
}

baton_proto::policy_hits! {
    field = JournalField, wire = pb, enc = Enc<'_>, dec = Dec<'_, '_>, error = Error,
    malformed = |cx, reason| cx.corrupt(reason),
}

baton_proto::quality_scores! {
    field = JournalField, wire = pb, enc = Enc<'_>, dec = Dec<'_, '_>, error = Error,
}

baton_proto::flattened_routing! { wire = pb, enc = Enc<'_>, dec = Dec<'_, '_>, error = Error }

use pb::record::Kind;

// The journal's table: one line per record kind (domain event => record).
baton_proto::event_codec! {
    field = JournalField, wire = pb, kind = Kind, error = Error,
    encode = encode_kind(Enc<'_>), decode = decode_kind(Dec<'_, '_>),
    {
        SessionStarted => SessionCreated {
            route, system_prompt, allowed_tools, client_tools, max_steps, budget_usd,
            data_classes, one_shot, history, generation, replay_of, tenant, by,
        },
        TurnAccepted => TurnAccepted { turn, message, review, by },
        ModelCallStarted => ModelCallStarted { turn, attempt, endpoint, reason },
        OutputDelta => OutputDelta { turn, attempt, text },
        AssistantMessage => ModelResponse {
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
        ToolResult => ToolResult { turn, call_id, name, output via tool_output, is_error, latency_ms, by },
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

/// Encode one journal record.
pub fn encode_record(
    session: &SessionId,
    seq: u64,
    at_unix_ms: u64,
    kind: &EventKind,
    inline_limit: usize,
) -> EncodedRecord {
    let mut cx = Enc {
        session,
        seq,
        inline_limit,
        payload: None,
    };
    let kind = encode_kind(kind, &mut cx);
    let record = pb::Record {
        version: RECORD_VERSION,
        at_unix_ms,
        kind: Some(kind),
    }
    .encode_to_vec();
    EncodedRecord {
        record,
        payload: cx.payload,
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
    let mut cx = Dec {
        session,
        seq,
        load_payload,
    };
    let r = pb::Record::decode(bytes).map_err(|e| cx.corrupt(e.to_string()))?;
    if r.version != RECORD_VERSION {
        return Err(cx.corrupt(format!(
            "unknown record version {} (this build reads version {RECORD_VERSION})",
            r.version
        )));
    }
    let kind = r
        .kind
        .ok_or_else(|| cx.corrupt("record has no kind (written by a newer version?)"))?;
    let kind = decode_kind(kind, &mut cx)?;
    Ok((r.at_unix_ms, kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_types::{
        Decision, FinishReason, GateId, GateKind, GatePoint, ModelCallReason, TimeoutAction,
        TurnFailureCode,
    };

    fn fixed_session() -> SessionId {
        SessionId::from_bytes([7; 16])
    }

    fn no_payloads(_: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn gate_id() -> GateId {
        "0190f5c2-7a5e-7cc0-8000-000000000001".parse().unwrap()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn schema_validated_round_trips() {
        let kind = EventKind::AssistantMessage {
            turn: 3,
            message: Message::assistant(r#"{"a": 1}"#),
            usage: Usage::default(),
            endpoint: "e".into(),
            model: "m".into(),
            finish_reason: FinishReason::Stop,
            latency_ms: 9,
            cost_usd: None,
            attempts: 2,
            schema_validated: true,
            output_resumed: baton_types::OutputResume::Continuation,
        };
        let enc = encode_record(&fixed_session(), 1, 42, &kind, 1 << 20);
        let (_, back) = decode_record(fixed_session(), 1, &enc.record, &mut no_payloads).unwrap();
        assert_eq!(back, kind);
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
                    by: String::new(),
                    tenant: String::new(),
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
                    by: String::new(),
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
                    reason: ModelCallReason::Recovery,
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
                    schema_validated: false,
                    output_resumed: baton_types::OutputResume::None,
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
                    code: TurnFailureCode::Unspecified,
                },
                "0801102a8201050804120178",
            ),
            (
                EventKind::TurnFailed {
                    turn: 4,
                    reason: "x".into(),
                    code: TurnFailureCode::MaxStepsExceeded,
                },
                "0801102a82011908041201781a126d61785f73746570735f6578636565646564",
            ),
            (
                EventKind::GateOpened {
                    turn: 2,
                    gate_id: gate_id(),
                    kind: GateKind::BeforeTool,
                    point: GatePoint::ToolCall,
                    policy: "payments".into(),
                    reason: "r".into(),
                    reviewers: "finance".into(),
                    subject: "{}".into(),
                    call_id: "c".into(),
                    deadline_unix_ms: 99,
                    on_timeout: TimeoutAction::Escalate,
                },
                "0801102aba01690802122430313930663563322d376135652d376363302d383030302d3030303030303030303030311a0b6265666f72655f746f6f6c2209746f6f6c5f63616c6c2a087061796d656e74733201723a0766696e616e636542027b7d4a016350635a08657363616c617465",
            ),
            (
                EventKind::GateDecided {
                    turn: 2,
                    gate_id: gate_id(),
                    decision: Decision::Edit,
                    reviewer: "ana".into(),
                    reason: "fixed".into(),
                    edited: "{}".into(),
                    by_timeout: true,
                },
                "0801102ac201400802122430313930663563322d376135652d376363302d383030302d3030303030303030303030311a04656469742203616e612a05666978656432027b7d3801",
            ),
            (
                EventKind::GateEscalated {
                    turn: 2,
                    gate_id: gate_id(),
                    reviewers: "leads".into(),
                    deadline_unix_ms: 5,
                    on_timeout: TimeoutAction::Reject,
                },
                "0801102aca01390802122430313930663563322d376135652d376363302d383030302d3030303030303030303030311a056c6561647320052a0672656a656374",
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
                    by: String::new(),
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
            (
                EventKind::TurnCancelled {
                    by: String::new(),
                    turn: 5,
                },
                "0801102a8a01020805",
            ),
            (
                EventKind::SessionFailed { reason: "y".into() },
                "0801102a9201030a0179",
            ),
            (
                EventKind::SessionStarted {
                    by: String::new(),
                    tenant: String::new(),
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
                    by: String::new(),
                    tenant: String::new(),
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
                    by: String::new(),
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
                    schema_validated: false,
                    output_resumed: baton_types::OutputResume::None,
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
                        streamed: true,
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
                by: String::new(),
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
        let enc = encode_record(
            &s,
            1,
            42,
            &EventKind::TurnCancelled {
                by: String::new(),
                turn: 5,
            },
            1024,
        );
        assert_eq!(hex(&enc.record), "0801102a8a01020805");
    }

    #[test]
    fn golden_bytes_of_session_meta() {
        let m = SessionMeta {
            tenant: baton_types::DEFAULT_TENANT.into(),
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
            by: String::new(),
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
    fn an_unknown_vocabulary_value_is_a_corrupt_record_naming_it() {
        let s = fixed_session();
        let record = pb::Record {
            version: RECORD_VERSION,
            at_unix_ms: 1,
            kind: Some(Kind::ModelCallStarted(pb::ModelCallStarted {
                turn: 1,
                attempt: 1,
                endpoint: "e".into(),
                reason: "whim".into(),
            })),
        }
        .encode_to_vec();
        let err = decode_record(s, 4, &record, &mut no_payloads)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown model call reason \"whim\"") && err.contains("4"),
            "{err}"
        );
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

    proptest::proptest! {
        /// Whatever bytes a journal record holds, decoding gives a record
        /// or an error naming the corruption, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decode_record(fixed_session(), 1, &bytes, &mut no_payloads);
        }

        /// Records of every shape the hot path writes come back as written.
        #[test]
        fn records_round_trip(
            turn in proptest::num::u64::ANY,
            attempt in proptest::num::u32::ANY,
            text in "\\PC{0,80}",
            input in proptest::num::u64::ANY,
            output in proptest::num::u64::ANY,
            cost in proptest::option::of(0.0f64..1e6),
            validated in proptest::bool::ANY,
            code in 0usize..4,
        ) {
            let code = [
                TurnFailureCode::ModelError,
                TurnFailureCode::SchemaViolation,
                TurnFailureCode::PolicyBlocked,
                TurnFailureCode::Unspecified,
            ][code];
            for kind in [
                EventKind::OutputDelta { turn, attempt, text: text.clone() },
                EventKind::TurnAccepted {
                    turn,
                    message: Message::user(text.clone()),
                    review: validated,
                    by: text.clone(),
                },
                EventKind::AssistantMessage {
                    turn,
                    message: Message::assistant(text.clone()),
                    usage: Usage { input_tokens: input, output_tokens: output },
                    endpoint: text.clone(),
                    model: "m".into(),
                    finish_reason: FinishReason::Stop,
                    latency_ms: input,
                    cost_usd: cost,
                    attempts: attempt,
                    schema_validated: validated,
                    output_resumed: baton_types::OutputResume::None,
                },
                EventKind::TurnFailed { turn, reason: text.clone(), code },
            ] {
                let enc = encode_record(&fixed_session(), 1, 42, &kind, 1 << 20);
                let (at, back) = decode_record(fixed_session(), 1, &enc.record, &mut no_payloads).unwrap();
                proptest::prop_assert_eq!(at, 42);
                proptest::prop_assert_eq!(back, kind);
            }
        }
    }
}
