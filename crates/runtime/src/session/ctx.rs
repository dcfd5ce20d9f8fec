//! A session actor's state, split by what each part is for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use baton_store::SessionMeta;
use baton_types::{GateId, GateOutcome, GateRecord, SessionId};
use tokio_util::sync::CancellationToken;

use super::msg::Notify;
use super::outbox::Outbox;
use crate::shared::Shared;
use crate::source::{NoRecording, StepSource};
use crate::state::{PendingGate, SessionState};

/// What the actor was started with; never changes.
pub(crate) struct Env {
    pub id: SessionId,
    pub shared: Arc<Shared>,
    pub notify: Notify,
    /// Activity clock shared with the supervisor (idle sessions passivate).
    pub activity: Arc<AtomicU64>,
    /// The subject key the session's content is sealed with (`[privacy]`
    /// encryption), set when it loads.
    pub seal: Option<Arc<baton_store::seal::SealKey>>,
    /// An earlier actor of this session failed in this process, and may
    /// have left writes queued at the store's writer: loading waits for
    /// them first. An actor that passivated had none left (it stops only
    /// once idle, every write of it confirmed), and after a restart there
    /// was no earlier actor.
    pub after_failure: bool,
}

/// The session's durable state as this actor holds it.
pub(crate) struct Durable {
    /// False for an unknown (or deleted) session.
    pub found: bool,
    pub state: SessionState,
    pub meta: Option<SessionMeta>,
    /// The seq of the last snapshot written (or loaded).
    pub snapshot_seq: u64,
    /// Another live node owns the session (`[cluster] ownership =
    /// "sessions"`): this actor loaded nothing, answers every request with
    /// [`crate::Error::OwnedElsewhere`], and passivates without releasing.
    pub owner: Option<baton_store::owners::Owner>,
}

/// The model call in flight and the current turn's timing and tracing.
#[derive(Default)]
pub(crate) struct ModelWork {
    pub call: Option<InFlight>,
    pub next_call: u64,
    /// Confidence of the last model answer (gates on it are decided in the
    /// same batch as the answer, so it need not be journaled).
    pub last_confidence: Option<f64>,
    /// When the current turn's first model call started (turn deadline).
    pub turn_started: Option<(u64, tokio::time::Instant)>,
    /// The tracing span of the current turn (model, tool and gate spans are
    /// its children); closed when the turn ends.
    pub turn_span: Option<(u64, tracing::Span)>,
    /// Input-policy verdicts of texts this session sent, by a hash of the
    /// text: the conversation is sent (and screened) on every call, each
    /// message is evaluated once.
    pub screened: super::redaction::VerdictCache,
    /// Answers of policies' classifiers for texts of this session.
    pub answers: super::redaction::CheckAnswers,
    /// The turn whose policy checks (classifiers, evaluators) are being
    /// asked: nothing else starts meanwhile.
    pub checking: Option<u64>,
    /// A final answer waiting for its output checks.
    pub held: Option<super::redaction::HeldAnswer>,
    /// What checks cost that is not journaled yet (with the next
    /// `PolicyEvaluated`).
    pub check_cost_usd: f64,
    /// The last seq known durable (set by the writes' tasks): on
    /// PostgreSQL a model call waits here for its `ModelCallStarted`.
    pub durable_seq: Arc<tokio::sync::watch::Sender<u64>>,
}

/// A model call this actor issued.
pub(crate) struct InFlight {
    pub id: u64,
    pub turn: u64,
    pub cancel: CancellationToken,
    /// How its request was pseudonymised, when input policies redacted it.
    pub redaction: Option<super::redaction::Redaction>,
    /// Output policies apply: no deltas are streamed, the answer is
    /// released once checked.
    pub hold_output: bool,
    /// The request's last user message as sent (pseudonymised): the
    /// question evaluators and quality scoring are asked about.
    pub question: String,
    /// The request as sent.
    pub request: std::sync::Arc<baton_models::ModelRequest>,
    /// The data classes the call was routed under (checks of its answer
    /// are routed under them too).
    pub data_classes: Vec<String>,
}

/// Tool calls this actor incarnation runs or waits for.
#[derive(Default)]
pub(crate) struct ToolWork {
    /// Server-side calls started (or to start once their start record is durable).
    pub runs: HashMap<String, ToolRun>,
    /// Client-side calls whose timeout is armed.
    pub client_timers: HashSet<String>,
}

/// A server-side tool call this actor incarnation started (or will start
/// once its `ToolCallStarted` record is durable).
pub(crate) struct ToolRun {
    pub start_after_seq: u64,
    pub name: String,
    pub attempt: u32,
    /// Validated arguments; taken when the call is dispatched.
    pub args: Option<serde_json::Value>,
}

/// The gate index records of this session's gates on their way to disk.
#[derive(Default)]
pub(crate) struct GateBook {
    /// Records to write with the next flush: (new, previous).
    pub staged: Vec<(GateRecord, Option<GateRecord>)>,
    /// Records written but not yet durable, released with their seq.
    pub pending: VecDeque<(u64, GateRecord)>,
    /// Current records of this session's pending gates.
    pub records: HashMap<GateId, GateRecord>,
    /// Gates this actor decided lately: a racing second decision may arrive
    /// before the first is durable.
    pub recently_decided: VecDeque<(GateId, GateOutcome)>,
}

/// How many recent decisions [`GateBook::recently_decided`] keeps.
pub(crate) const RECENT_DECISIONS: usize = 256;

/// Everything a session actor holds.
pub(crate) struct SessionCtx {
    pub env: Env,
    pub durable: Durable,
    pub outbox: Outbox,
    pub model: ModelWork,
    pub tools: ToolWork,
    pub gates: GateBook,
}

impl SessionCtx {
    pub fn new(env: Env) -> Self {
        SessionCtx {
            durable: Durable {
                found: false,
                owner: None,
                state: SessionState::new(env.id),
                meta: None,
                snapshot_seq: 0,
            },
            env,
            outbox: Outbox::default(),
            model: ModelWork::default(),
            tools: ToolWork::default(),
            gates: GateBook::default(),
        }
    }

    /// Where model answers and tool results come from: live, or for a
    /// replay session its recording (never live: without the recording,
    /// nothing answers it).
    pub fn source(&self) -> Arc<dyn StepSource> {
        let shared = &self.env.shared;
        if self.durable.state.replay_of.is_none() {
            return shared.live.clone();
        }
        shared
            .replay_source(self.env.id)
            .unwrap_or_else(|| Arc::new(NoRecording))
    }

    pub fn id(&self) -> SessionId {
        self.env.id
    }

    /// Stamp the activity clock (idle sessions are passivated).
    pub fn touch(&self) {
        self.env
            .activity
            .store(self.env.shared.elapsed_ms(), Ordering::Relaxed);
    }

    /// The tracing span of `turn`'s spans' parent: the turn span when it is
    /// open, else the current span.
    pub fn turn_parent(&self, turn: u64) -> tracing::Span {
        self.model
            .turn_span
            .as_ref()
            .filter(|(t, _)| *t == turn)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(tracing::Span::current)
    }
}

/// The index record of a pending gate.
pub(crate) fn pending_record(
    session: SessionId,
    tenant: &str,
    turn: u64,
    g: &PendingGate,
) -> GateRecord {
    GateRecord {
        tenant: tenant.to_string(),
        gate_id: g.gate_id,
        session,
        turn,
        kind: g.kind,
        point: g.point,
        policy: g.policy.clone(),
        reason: g.reason.clone(),
        reviewers: g.reviewers.clone(),
        subject: g.subject.clone(),
        call_id: g.call_id.clone(),
        opened_at_unix_ms: g.opened_at_unix_ms,
        deadline_unix_ms: g.deadline_unix_ms,
        on_timeout: g.on_timeout,
        escalations: g.escalations,
        outcome: None,
    }
}
