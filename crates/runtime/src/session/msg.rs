//! What a session actor is sent, and what it tells its supervisor.

use std::sync::Arc;

use baton_models::Delta;
use baton_tools::ToolError;
use baton_types::{GateId, GateRecord, Message, SessionId};
use ractor::RpcReplyPort;

use super::outbox::Subscription;
use super::view::SessionView;
use crate::error::Result;
use crate::gates::GateDecision;
use crate::state::SessionState;

/// Messages a session actor handles.
pub(crate) enum SessionMsg {
    Send {
        message: Message,
        review: bool,
        /// The principal that sent it ([`baton_types::Principal::label`]).
        by: String,
        /// Accept it only if the session is idle and its last turn is this
        /// one (a client continuing exactly that conversation).
        after_turn: Option<u64>,
        reply: RpcReplyPort<Result<Subscription>>,
    },
    DecideGate {
        gate_id: GateId,
        decision: GateDecision,
        reviewer: String,
        reason: String,
        reply: RpcReplyPort<Result<GateRecord>>,
    },
    /// A gate's deadline passed (sent by the gate timeout scanner).
    GateTimeout {
        gate_id: GateId,
    },
    Subscribe {
        after_seq: u64,
        reply: RpcReplyPort<Result<Subscription>>,
    },
    Get {
        reply: RpcReplyPort<Result<SessionView>>,
    },
    /// The full state as this actor holds it (inspection).
    GetState {
        reply: RpcReplyPort<Result<SessionState>>,
    },
    Cancel {
        by: String,
        reply: RpcReplyPort<Result<Option<u64>>>,
    },
    Delete {
        reply: RpcReplyPort<Result<()>>,
    },
    /// Journal a record that arrives after its turn (a quality score).
    Record {
        kind: Box<baton_types::EventKind>,
        reply: RpcReplyPort<Result<()>>,
    },
    /// Start (or resume) work; sent to sessions with unfinished turns at start-up.
    Wake,
    /// Sent by the supervisor: stop if idle, or decline.
    Passivate,
    /// Fail the actor (fault injection for supervision tests and drills).
    InjectFault,
    /// A client answers a client-side tool call (or one that needs attention).
    SubmitToolResult {
        call_id: String,
        output: String,
        is_error: bool,
        by: String,
        reply: RpcReplyPort<Result<u64>>,
    },
    // Internal.
    /// The writer finished the batches up to `upto`.
    Written {
        upto: u64,
        result: baton_store::Result<()>,
    },
    ModelDelta {
        call: u64,
        delta: Delta,
    },
    /// The model output streamed since the last output record (which will
    /// have `seq`) is due to be journaled.
    CloseOutput {
        seq: u64,
    },
    ModelDone {
        call: u64,
        result: Box<std::result::Result<baton_routing::Routed, baton_routing::RouteError>>,
        latency_ms: u64,
    },
    /// The policy checks (classifiers, evaluators) of `turn` are answered.
    Checked {
        turn: u64,
        answers: Vec<(crate::checks::Key, baton_governance::Answer)>,
        cost_usd: f64,
    },
    /// A routing decision or a failed attempt of the call in flight.
    RouteEvent {
        call: u64,
        event: Box<baton_routing::RouteEvent>,
    },
    ToolDone {
        turn: u64,
        call_id: String,
        attempt: u32,
        result: std::result::Result<String, ToolError>,
        latency_ms: u64,
    },
    ClientToolTimeout {
        turn: u64,
        call_id: String,
    },
}

/// What a session actor tells its supervisor.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Notice {
    /// Passivate me now (an unknown or deleted session, or a one-shot
    /// session whose turn ended).
    Passivate(SessionId),
    /// Asked to passivate, the actor had work.
    PassivateDeclined(SessionId),
}

/// How a session actor reaches its supervisor (without knowing its type).
pub(crate) type Notify = Arc<dyn Fn(Notice) + Send + Sync>;
