//! The session actor: one per live session.
//!
//! It owns the session's state, assigns every journal record its `seq`, hands
//! records to the store's group-commit writer, and releases the matching
//! events to subscribers only once the record is durable. Model calls run in
//! the endpoint's executor pool; their results come back as messages, so the
//! actor never waits on a model and always answers `Get`, `Cancel` and
//! `Subscribe` promptly.
//!
//! Write-ahead rules, as built:
//! * `TurnAccepted` + `ModelCallStarted` are handed to the writer and the model
//!   call is dispatched right away: its fsync overlaps the model call. If the
//!   write fails the actor fails, and the answer is dropped with it.
//! * `AssistantMessage` + `TurnCompleted` go out in one batch; the client sees
//!   them only after that batch is durable — one fsync on the critical path
//!   after the model answers.
//! * Output deltas are provisional and written without an fsync of their own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use baton_models::{Delta, ModelRequest};
use baton_store::{Batch, SessionMeta};
use baton_types::{
    EventKind, Message, SessionEvent, SessionId, SessionStatus, ToolChoice, now_unix_ms,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Shared;
use crate::config::BusyPolicy;
use crate::gates::{GateDecision, GateRecord, GateStatus, GateTerms, TimeoutAction, builtin_terms};
use crate::state::{PendingGate, PendingTool, SessionState};
use crate::supervisor::SupervisorMsg;
use crate::{Error, Result};
use baton_tools::{ToolError, ToolFilter};

/// Messages a session actor handles.
pub(crate) enum SessionMsg {
    Send {
        message: Message,
        review: bool,
        reply: RpcReplyPort<Result<Subscription>>,
    },
    DecideGate {
        gate_id: String,
        decision: GateDecision,
        reviewer: String,
        reason: String,
        reply: RpcReplyPort<Result<GateRecord>>,
    },
    /// A gate's deadline passed (sent by the gate timeout scanner).
    GateTimeout {
        gate_id: String,
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
        reply: RpcReplyPort<Result<crate::state::SessionState>>,
    },
    Cancel {
        reply: RpcReplyPort<Result<Option<u64>>>,
    },
    Delete {
        reply: RpcReplyPort<Result<()>>,
    },
    /// Start (or resume) work; sent to sessions with unfinished turns at start-up.
    Wake,
    /// Sent by the supervisor: stop if idle, or decline.
    Passivate,
    /// Fail the actor (fault injection for supervision tests and drills).
    InjectFault,
    // Internal.
    Written {
        upto: u64,
        result: baton_store::Result<()>,
    },
    ModelDelta {
        call: u64,
        delta: Delta,
    },
    ModelDone {
        call: u64,
        result: Box<std::result::Result<baton_routing::Routed, baton_routing::RouteError>>,
        latency_ms: u64,
    },
    /// A routing decision or a failed attempt of the call in flight.
    RouteEvent {
        call: u64,
        event: Box<baton_routing::RouteEvent>,
    },
    /// A client answers a client-side tool call (or one that needs attention).
    SubmitToolResult {
        call_id: String,
        output: String,
        is_error: bool,
        reply: RpcReplyPort<Result<u64>>,
    },
    ToolDone {
        turn: u64,
        call_id: String,
        attempt: u32,
        result: Result<String, ToolError>,
        latency_ms: u64,
    },
    ClientToolTimeout {
        turn: u64,
        call_id: String,
    },
}

/// A server-side tool call this actor incarnation started (or will start
/// once its `ToolCallStarted` record is durable).
struct ToolRun {
    start_after_seq: u64,
    name: String,
    attempt: u32,
    /// Validated arguments; taken when the call is dispatched.
    args: Option<serde_json::Value>,
}

/// A registration for live events, plus the history range the caller must
/// read from the journal first: `(history_after, history_upto]`.
pub struct Subscription {
    pub(crate) history_after: u64,
    pub(crate) history_upto: u64,
    pub(crate) rx: mpsc::Receiver<SessionEvent>,
    pub(crate) lagged: Arc<AtomicBool>,
    /// Set for a `send`: the stream ends after this turn's last event.
    pub(crate) turn: Option<u64>,
}

struct Subscriber {
    tx: mpsc::Sender<SessionEvent>,
    turn: Option<u64>,
    lagged: Arc<AtomicBool>,
}

/// A session as its actor holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub id: SessionId,
    pub status: SessionStatus,
    pub status_reason: String,
    pub route: String,
    pub system_prompt: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub created_at_unix_ms: u64,
    pub messages: Vec<Message>,
    /// The running turn (0 = none).
    pub current_turn: u64,
    pub queued_turns: u32,
    pub usage: baton_types::Usage,
    /// Seq of the last durable event.
    pub last_seq: u64,
    pub turns_completed: u64,
    /// Whether the actor is in memory (always true when answered by the actor).
    pub live: bool,
    /// Tool calls of the current step without a result yet.
    pub pending_tools: Vec<PendingTool>,
    pub allowed_tools: Vec<String>,
    pub client_tools: Vec<baton_types::ToolDefinition>,
    pub max_steps: u32,
}

struct InFlight {
    id: u64,
    turn: u64,
    cancel: CancellationToken,
}

pub(crate) struct SessionArgs {
    pub id: SessionId,
    pub shared: Arc<Shared>,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub activity: Arc<AtomicU64>,
}

pub(crate) struct SessionActor;

pub(crate) struct SessionCtx {
    id: SessionId,
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    activity: Arc<AtomicU64>,
    found: bool,
    state: SessionState,
    meta: Option<SessionMeta>,
    released_seq: u64,
    /// Records applied to the state but not yet handed to the writer.
    staged: Vec<SessionEvent>,
    /// Records handed to the writer, not yet durable; released in order.
    pending: VecDeque<SessionEvent>,
    subscribers: Vec<Subscriber>,
    call: Option<InFlight>,
    next_call: u64,
    snapshot_seq: u64,
    tool_runs: HashMap<String, ToolRun>,
    client_timers: HashSet<String>,
    /// Replies sent once the record at that seq is durable.
    acks: Vec<(u64, RpcReplyPort<Result<u64>>)>,
    gate_acks: Vec<(u64, GateRecord, RpcReplyPort<Result<GateRecord>>)>,
    /// Confidence of the last model answer (gates on it are decided in the
    /// same batch as the answer, so it need not be journaled).
    last_confidence: Option<f64>,
    /// Gate records to write with the next flush: (new, previous).
    staged_gates: Vec<(GateRecord, Option<GateRecord>)>,
    /// Gate records written but not yet durable, released with their seq.
    pending_gates: VecDeque<(u64, GateRecord)>,
    /// Current records of this session's pending gates.
    gate_records: HashMap<String, GateRecord>,
    /// Gates this actor decided lately: (gate, decision, reviewer, reason).
    /// A racing second decision may arrive before the first is durable.
    recently_decided: VecDeque<(String, String, String, String)>,
    /// When the current turn's first model call started (turn deadline).
    turn_started: Option<(u64, tokio::time::Instant)>,
    /// The tracing span of the current turn (model, tool and gate spans are
    /// its children); closed when the turn ends.
    turn_span: Option<(u64, tracing::Span)>,
}

/// A decision to record on a gate.
struct Decided {
    decision: String,
    reviewer: String,
    reason: String,
    edited: String,
    by_timeout: bool,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionCtx;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionCtx, ActorProcessingErr> {
        // Kept trivial: the supervisor awaits pre_start, loading happens in post_start.
        Ok(SessionCtx {
            id: args.id,
            state: SessionState::new(args.id),
            shared: args.shared,
            supervisor: args.supervisor,
            activity: args.activity,
            found: false,
            meta: None,
            released_seq: 0,
            staged: Vec::new(),
            pending: VecDeque::new(),
            subscribers: Vec::new(),
            call: None,
            next_call: 0,
            snapshot_seq: 0,
            tool_runs: HashMap::new(),
            client_timers: HashSet::new(),
            acks: Vec::new(),
            gate_acks: Vec::new(),
            last_confidence: None,
            staged_gates: Vec::new(),
            pending_gates: VecDeque::new(),
            gate_records: HashMap::new(),
            recently_decided: VecDeque::new(),
            turn_started: None,
            turn_span: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SessionMsg>,
        ctx: &mut SessionCtx,
    ) -> Result<(), ActorProcessingErr> {
        ctx.load().await?;
        if !ctx.found {
            // Unknown (or deleted) session: answer what is queued, then go.
            let _ = ctx.supervisor.cast(SupervisorMsg::RequestPassivate(ctx.id));
        } else {
            ctx.pump(&myself);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        ctx: &mut SessionCtx,
    ) -> Result<(), ActorProcessingErr> {
        ctx.touch();
        match msg {
            SessionMsg::Send {
                message,
                review,
                reply,
            } => {
                let r = ctx.send(&myself, message, review);
                let _ = reply.send(r);
            }
            SessionMsg::Subscribe { after_seq, reply } => {
                let _ = reply.send(ctx.subscribe(after_seq));
            }
            SessionMsg::Get { reply } => {
                let r = if ctx.found {
                    Ok(ctx.view())
                } else {
                    Err(Error::SessionNotFound(ctx.id))
                };
                let _ = reply.send(r);
            }
            SessionMsg::GetState { reply } => {
                let r = if ctx.found {
                    Ok(ctx.state.clone())
                } else {
                    Err(Error::SessionNotFound(ctx.id))
                };
                let _ = reply.send(r);
            }
            SessionMsg::Cancel { reply } => {
                let _ = reply.send(ctx.cancel(&myself));
            }
            SessionMsg::Delete { reply } => {
                let r = ctx.delete().await;
                let _ = reply.send(r);
            }
            SessionMsg::Wake => ctx.pump(&myself),
            SessionMsg::Passivate => {
                if ctx.is_idle() {
                    ctx.write_snapshot().await?;
                    myself.stop(Some("passivated".into()));
                } else {
                    let _ = ctx
                        .supervisor
                        .cast(SupervisorMsg::PassivateDeclined(ctx.id));
                }
            }
            SessionMsg::InjectFault => {
                return Err(format!("fault injected into session {}", ctx.id).into());
            }
            SessionMsg::Written { upto, result } => {
                if let Err(e) = result {
                    // The journal's state is unknown: restart from disk.
                    return Err(format!("journal write of session {} failed: {e}", ctx.id).into());
                }
                ctx.release(upto);
                ctx.start_durable_tools(&myself, upto);
            }
            SessionMsg::SubmitToolResult {
                call_id,
                output,
                is_error,
                reply,
            } => ctx.submit_tool_result(&myself, call_id, output, is_error, reply),
            SessionMsg::ToolDone {
                turn,
                call_id,
                attempt,
                result,
                latency_ms,
            } => ctx.on_tool_done(&myself, turn, call_id, attempt, result, latency_ms),
            SessionMsg::DecideGate {
                gate_id,
                decision,
                reviewer,
                reason,
                reply,
            } => {
                ctx.decide_gate(&myself, gate_id, decision, reviewer, reason, reply)
                    .await
            }
            SessionMsg::GateTimeout { gate_id } => ctx.gate_timeout(&myself, &gate_id),
            SessionMsg::ClientToolTimeout { turn, call_id } => {
                ctx.on_client_timeout(&myself, turn, call_id)
            }
            SessionMsg::ModelDelta { call, delta } => ctx.on_delta(&myself, call, delta),
            SessionMsg::RouteEvent { call, event } => ctx.on_route_event(&myself, call, *event),
            SessionMsg::ModelDone {
                call,
                result,
                latency_ms,
            } => {
                ctx.on_done(&myself, call, *result, latency_ms);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        ctx: &mut SessionCtx,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(call) = ctx.call.take() {
            call.cancel.cancel();
        }
        Ok(())
    }
}

impl SessionCtx {
    fn touch(&self) {
        self.activity
            .store(self.shared.elapsed_ms(), Ordering::Relaxed);
    }

    async fn load(&mut self) -> Result<(), ActorProcessingErr> {
        let store = &self.shared.store;
        // Writes a previous incarnation of this actor queued are applied first.
        store.barrier().await?;
        let meta = match store.load_meta(self.id).await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(e) if e.is_corruption() => {
                tracing::error!(session = %self.id, error = %e, "session metadata unreadable");
                self.found = true;
                self.state.failed = Some(e.to_string());
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.found = true;
        let (mut state, from) = match store.load_snapshot(self.id).await? {
            Some(bytes) => match baton_store::snapshot::decode::<SessionState>(&bytes) {
                Some((seq, st)) if st.id == self.id => (st, seq),
                _ => {
                    tracing::warn!(session = %self.id, "snapshot unreadable by this build; rebuilding from the journal");
                    (SessionState::new(self.id), 0)
                }
            },
            None => (SessionState::new(self.id), 0),
        };
        self.snapshot_seq = from;
        let mut after = from;
        let load_result = loop {
            match store.read_journal(self.id, after, 1024).await {
                Ok(events) if events.is_empty() => break Ok(()),
                Ok(events) => {
                    for e in &events {
                        state.apply(e.seq, e.at_unix_ms, &e.kind);
                    }
                    after = state.last_seq;
                }
                Err(e) => break Err(e),
            }
        };
        state.metadata = meta.metadata.clone();
        if meta.status == SessionStatus::Failed && state.failed.is_none() {
            state.failed = Some(meta.status_reason.clone());
        }
        self.state = state;
        self.meta = Some(meta);
        if let Err(e) = load_result {
            if !e.is_corruption() {
                return Err(e.into());
            }
            self.mark_corrupt(e).await?;
        }
        self.released_seq = self.state.last_seq;
        if let Some(c) = &self.state.current {
            for g in &c.gates {
                self.gate_records
                    .insert(g.gate_id.clone(), pending_record(self.id, c.turn, g));
            }
        }
        Ok(())
    }

    /// An undecodable record: the session is failed for good, durably, with
    /// the reason naming the seq. Other sessions are untouched.
    async fn mark_corrupt(&mut self, err: baton_store::Error) -> Result<(), ActorProcessingErr> {
        let reason = err.to_string();
        tracing::error!(session = %self.id, %reason, "session journal unreadable; marking the session failed");
        self.state.failed = Some(reason.clone());
        let Some(meta) = &mut self.meta else {
            return Ok(());
        };
        if meta.status == SessionStatus::Failed {
            return Ok(());
        }
        self.state.last_seq =
            crate::supervisor::write_failed(&self.shared.store, self.id, meta, reason).await?;
        Ok(())
    }

    fn is_idle(&mut self) -> bool {
        self.subscribers.retain(|s| !s.tx.is_closed());
        // A turn parked on a human decision holds no memory while it waits:
        // gate timeouts are found from the store, not by this actor.
        let parked = self.state.current.as_ref().is_none_or(|c| {
            (!c.gates.is_empty() || c.attention().is_some())
                && !c.tools.iter().any(|t| t.client_side && t.result.is_none())
        });
        self.call.is_none()
            && parked
            && self.state.queued.is_empty()
            && self.gate_acks.is_empty()
            && self.acks.is_empty()
            && self.pending.is_empty()
            && self.staged.is_empty()
            && self.tool_runs.is_empty()
            && self.subscribers.is_empty()
    }

    async fn write_snapshot(&mut self) -> Result<(), ActorProcessingErr> {
        if !self.found || self.state.last_seq <= self.snapshot_seq || self.state.failed.is_some() {
            return Ok(());
        }
        let mut batch = Batch::unsynced();
        batch.put_snapshot(
            &self.id,
            baton_store::snapshot::encode(self.state.last_seq, &self.state)?,
        );
        self.shared.store.write(batch).await?;
        self.snapshot_seq = self.state.last_seq;
        Ok(())
    }

    /// Assign the next seq to a record and apply it to the state; it is
    /// written by the next [`Self::flush`] (records staged together share one
    /// batch, so one fsync).
    fn stage(&mut self, kind: EventKind) {
        let seq = self.state.last_seq + 1;
        let now = now_unix_ms();
        self.state.apply(seq, now, &kind);
        self.staged.push(SessionEvent {
            session_id: self.id,
            seq,
            at_unix_ms: now,
            kind,
        });
    }

    /// Stage records and write everything staged as one batch.
    fn commit(&mut self, myself: &ActorRef<SessionMsg>, kinds: Vec<EventKind>, sync: bool) {
        for kind in kinds {
            self.stage(kind);
        }
        self.flush(myself, sync);
    }

    /// Hand the staged records (plus a status change and, now and then, a
    /// snapshot) to the writer as one batch; `Written` comes back when it is
    /// durable (or, unsynced, in the WAL).
    fn flush(&mut self, myself: &ActorRef<SessionMsg>, sync: bool) {
        if self.staged.is_empty() {
            return;
        }
        let mut batch = if sync {
            Batch::new()
        } else {
            Batch::unsynced()
        };
        let mut audited = 0;
        let auditing = self.shared.audit.is_some();
        for e in self.staged.drain(..) {
            batch.append(&self.id, e.seq, e.at_unix_ms, &e.kind);
            if auditing && crate::audit::is_audited(&e.kind) {
                audited = e.seq;
            }
            self.pending.push_back(e);
        }
        if audited > 0 {
            // With the records: a crash cannot leave them out of the audit trail.
            batch.put_audit_pending(&self.id, audited);
        }
        let now = now_unix_ms();
        let status = self.state.status();
        if let Some(meta) = &mut self.meta
            && meta.status != status
        {
            let prev = meta.status;
            meta.status = status;
            meta.status_reason = self.state.failed.clone().unwrap_or_default();
            meta.updated_at_unix_ms = now;
            batch.put_meta(&self.id, meta, Some(prev));
        }
        if sync
            && self.state.current.is_none()
            && self.state.last_seq - self.snapshot_seq >= self.shared.config.sessions.snapshot_every
            && let Ok(bytes) = baton_store::snapshot::encode(self.state.last_seq, &self.state)
        {
            batch.put_snapshot(&self.id, bytes);
            self.snapshot_seq = self.state.last_seq;
        }
        let upto = self.state.last_seq;
        for (record, previous) in self.staged_gates.drain(..) {
            batch.put_gate(&record, previous.as_ref());
            self.pending_gates.push_back((upto, record));
        }
        let write = self.shared.store.write(batch);
        let me = myself.clone();
        tokio::spawn(async move {
            let result = write.await;
            let _ = me.cast(SessionMsg::Written { upto, result });
        });
    }

    /// Release durable events, in order, to subscribers; answer requests
    /// that waited for their record to be durable.
    fn release(&mut self, upto: u64) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.acks)
            .into_iter()
            .partition(|(seq, _)| *seq <= upto);
        self.acks = waiting;
        for (seq, reply) in ready {
            let _ = reply.send(Ok(seq));
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.gate_acks)
            .into_iter()
            .partition(|(seq, _, _)| *seq <= upto);
        self.gate_acks = waiting;
        for (_, record, reply) in ready {
            let _ = reply.send(Ok(record));
        }
        while self
            .pending_gates
            .front()
            .is_some_and(|(seq, _)| *seq <= upto)
        {
            if let Some((_, record)) = self.pending_gates.pop_front() {
                // Nobody watching is fine.
                let _ = self.shared.gate_events.send(record);
            }
        }
        while self.pending.front().is_some_and(|e| e.seq <= upto) {
            let Some(event) = self.pending.pop_front() else {
                break;
            };
            self.released_seq = event.seq;
            if let Some(audit) = &self.shared.audit {
                crate::audit::record_event(audit.as_ref(), &event, false);
                if crate::audit::is_audited(&event.kind) {
                    self.shared.audit_cursor.note(self.id, event.seq);
                }
            }
            match &event.kind {
                EventKind::GateOpened { .. } => baton_metrics::metrics().gates_pending_add(1),
                EventKind::GateDecided { .. } => baton_metrics::metrics().gates_pending_add(-1),
                _ => {}
            }
            let outcome = match &event.kind {
                EventKind::TurnCompleted { .. } => Some("completed"),
                EventKind::TurnFailed { .. } => Some("failed"),
                EventKind::TurnCancelled { .. } => Some("cancelled"),
                _ => None,
            };
            if let Some(outcome) = outcome {
                if self
                    .turn_span
                    .as_ref()
                    .is_some_and(|(t, _)| event.turn() == Some(*t))
                {
                    self.turn_span = None;
                }
                let secs = self
                    .turn_started
                    .filter(|(t, _)| event.turn() == Some(*t))
                    .map_or(0.0, |(_, at)| at.elapsed().as_secs_f64());
                baton_metrics::metrics().turn_finished(outcome, secs);
            }
            self.subscribers.retain(|s| {
                if let Some(t) = s.turn
                    && event.turn() != Some(t)
                {
                    return !s.tx.is_closed();
                }
                match s.tx.try_send(event.clone()) {
                    Ok(()) => !(s.turn.is_some() && event.ends_turn()),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.lagged.store(true, Ordering::Relaxed);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
        }
    }

    fn subscriber(&mut self, turn: Option<u64>) -> (mpsc::Receiver<SessionEvent>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(self.shared.config.sessions.subscriber_buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        self.subscribers.push(Subscriber {
            tx,
            turn,
            lagged: lagged.clone(),
        });
        (rx, lagged)
    }

    fn send(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        message: Message,
        review: bool,
    ) -> Result<Subscription> {
        if !self.found {
            return Err(Error::SessionNotFound(self.id));
        }
        if let Some(reason) = &self.state.failed {
            return Err(Error::FailedPrecondition(format!(
                "session {} has failed: {reason}",
                self.id
            )));
        }
        let busy = self.state.current.is_some() || !self.state.queued.is_empty();
        let cfg = &self.shared.config.sessions;
        if busy && cfg.busy_policy == BusyPolicy::Reject {
            let running = self
                .state
                .current
                .as_ref()
                .map(|c| c.turn)
                .unwrap_or_default();
            return Err(Error::FailedPrecondition(format!(
                "session {} is busy with turn {running} and busy_policy is reject; wait for it to finish or cancel it",
                self.id
            )));
        }
        if self.state.queued.len() >= cfg.max_queued_turns {
            return Err(Error::ResourceExhausted(format!(
                "session {} already has {} queued turns (sessions.max_queued_turns)",
                self.id,
                self.state.queued.len()
            )));
        }
        let turn = self.state.last_turn + 1;
        let (rx, lagged) = self.subscriber(Some(turn));
        // Staged, not written: when the session is idle, pump() stages the
        // turn's ModelCallStarted and writes both as one batch (one fsync)
        // just before the model call starts.
        self.stage(EventKind::TurnAccepted {
            turn,
            message,
            review,
        });
        self.pump(myself);
        self.flush(myself, true);
        Ok(Subscription {
            history_after: self.released_seq,
            history_upto: self.released_seq,
            rx,
            lagged,
            turn: Some(turn),
        })
    }

    fn subscribe(&mut self, after_seq: u64) -> Result<Subscription> {
        if !self.found {
            return Err(Error::SessionNotFound(self.id));
        }
        if after_seq > self.state.last_seq {
            return Err(Error::InvalidArgument(format!(
                "after_seq {after_seq} is beyond the last seq {} of session {}",
                self.state.last_seq, self.id
            )));
        }
        let (rx, lagged) = self.subscriber(None);
        Ok(Subscription {
            history_after: after_seq,
            history_upto: self.released_seq.max(after_seq),
            rx,
            lagged,
            turn: None,
        })
    }

    fn cancel(&mut self, myself: &ActorRef<SessionMsg>) -> Result<Option<u64>> {
        if !self.found {
            return Err(Error::SessionNotFound(self.id));
        }
        let Some(turn) = self.state.current.as_ref().map(|c| c.turn) else {
            return Ok(None);
        };
        if let Some(call) = self.call.take() {
            call.cancel.cancel();
        }
        // Results of tools still running are ignored when they arrive.
        self.tool_runs.clear();
        self.client_timers.clear();
        // Its pending gates close with the turn.
        let gates: Vec<String> = self
            .state
            .current
            .as_ref()
            .map(|c| c.gates.iter().map(|g| g.gate_id.clone()).collect())
            .unwrap_or_default();
        for gate_id in gates {
            self.record_decision(
                turn,
                &gate_id,
                Decided {
                    decision: "reject".into(),
                    reviewer: "system".into(),
                    reason: "the turn was cancelled".into(),
                    edited: String::new(),
                    by_timeout: false,
                },
            );
        }
        self.commit(myself, vec![EventKind::TurnCancelled { turn }], true);
        self.pump(myself);
        Ok(Some(turn))
    }

    async fn delete(&mut self) -> Result<()> {
        if !self.found {
            return Err(Error::SessionNotFound(self.id));
        }
        let Some(meta) = self.meta.clone() else {
            return Err(Error::Internal(format!(
                "session {} has no metadata",
                self.id
            )));
        };
        if let Some(call) = self.call.take() {
            call.cancel.cancel();
        }
        let mut batch = Batch::new();
        batch.delete_session(&self.id, &meta);
        let gates = self
            .shared
            .store
            .list_gates(
                baton_store::gates::GateFilter {
                    session: Some(self.id),
                    ..Default::default()
                },
                None,
                usize::MAX,
            )
            .await?;
        for g in &gates.gates {
            batch.delete_gate(g);
        }
        self.shared.store.write(batch).await?;
        self.found = false;
        self.subscribers.clear();
        self.pending.clear();
        let _ = self
            .supervisor
            .cast(SupervisorMsg::RequestPassivate(self.id));
        Ok(())
    }

    /// Start or resume work, as far as it can go without waiting:
    /// * a turn whose final answer is recorded gets its `TurnCompleted`;
    /// * tool calls of the current step are validated, started (after their
    ///   `ToolCallStarted` is durable), re-run (idempotent tools, after a
    ///   crash) or paused (`NeedsAttention`: non-idempotent, after a crash);
    /// * a model call with no recorded answer is issued again (`recovery`);
    /// * once a step's tool results are in, the next model call is issued
    ///   (`tool_results`), unless the turn reached `max_steps`;
    /// * otherwise the next queued turn starts.
    fn pump(&mut self, myself: &ActorRef<SessionMsg>) {
        loop {
            if self.call.is_some() || self.state.failed.is_some() || !self.found {
                return;
            }
            let Some(current) = self.state.current.as_ref() else {
                // Idle: start the next queued turn.
                let Some(turn) = self.state.queued.front().map(|(t, _, _)| *t) else {
                    return;
                };
                if !self.start_model_call(myself, turn, 1, "turn") {
                    continue;
                }
                return;
            };
            let turn = current.turn;
            if current.gates.iter().any(|g| g.point != "tool_call") {
                // Held at a model call or a final answer: wait for a decision.
                return;
            }
            if current.response_recorded {
                if !current.is_approved("final_answer", "")
                    && let Some((terms, subject)) = self.release_gate()
                {
                    self.open_gate(turn, terms, "final_answer", subject, String::new());
                    self.flush(myself, true);
                    return;
                }
                let usage = current.usage;
                self.commit(myself, vec![EventKind::TurnCompleted { turn, usage }], true);
                continue;
            }
            if !current.tools.is_empty() {
                if self.pump_tools(myself) {
                    continue;
                }
                return;
            }
            let attempt = current.attempt + 1;
            if current.model_call_open {
                // Issued before a crash, never answered: issue it again.
                if !self.start_model_call(myself, turn, attempt, "recovery") {
                    continue;
                }
                return;
            }
            let max_steps = match self.state.max_steps {
                0 => self.shared.config.sessions.max_steps,
                n => n,
            };
            if current.steps >= max_steps {
                let reason = format!(
                    "max_steps_exceeded: turn {turn} made {} model calls without a final answer (max_steps = {max_steps})",
                    current.steps
                );
                self.commit(
                    myself,
                    vec![EventKind::TurnFailed {
                        turn,
                        reason,
                        code: "max_steps_exceeded".into(),
                    }],
                    true,
                );
                continue;
            }
            let reason = if current.steps == 0 {
                "turn"
            } else if self
                .state
                .messages
                .last()
                .is_some_and(|m| m.role == baton_types::Role::User)
            {
                // A reviewer rejected the draft: the model revises it.
                "review"
            } else {
                "tool_results"
            };
            if !self.start_model_call(myself, turn, attempt, reason) {
                continue;
            }
            return;
        }
    }

    /// Whether the current turn's final answer must wait for a review:
    /// the client asked for it, or a final_answer / data_rule / confidence
    /// policy fires. Returns the gate terms and the subject (the draft).
    fn release_gate(&self) -> Option<(GateTerms, String)> {
        let current = self.state.current.as_ref()?;
        let draft = self
            .state
            .messages
            .iter()
            .rev()
            .find(|m| m.role == baton_types::Role::Assistant)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let subject =
            serde_json::json!({ "draft": draft, "confidence": self.last_confidence }).to_string();
        let cfg = &self.shared.config.gates;
        if current.review {
            let terms = builtin_terms(
                &cfg.explicit,
                "explicit",
                "explicit",
                "the client asked for this answer to be reviewed".into(),
            );
            return Some((terms, subject));
        }
        self.shared
            .gate_policies
            .before_release(&self.state.route, &draft, self.last_confidence)
            .map(|t| (t, subject))
    }

    /// Open a gate: stage its record (journal + gate index) for the next flush.
    fn open_gate(
        &mut self,
        turn: u64,
        terms: GateTerms,
        point: &str,
        subject: String,
        call_id: String,
    ) {
        let now = now_unix_ms();
        let gate_id = uuid::Uuid::now_v7().to_string();
        let deadline_unix_ms = if terms.timeout_ms > 0 {
            now + terms.timeout_ms
        } else {
            0
        };
        tracing::info!(session = %self.id, turn, %gate_id, policy = %terms.policy, reviewers = %terms.reviewers, "gate opened: {}", terms.reason);
        self.stage(EventKind::GateOpened {
            turn,
            gate_id: gate_id.clone(),
            kind: terms.kind.into(),
            point: point.into(),
            policy: terms.policy,
            reason: terms.reason,
            reviewers: terms.reviewers,
            subject,
            call_id,
            deadline_unix_ms,
            on_timeout: terms.on_timeout.as_str().into(),
        });
        self.stage_gate_record(&gate_id, None);
    }

    /// Stage the gate's current record (from the state) for the next flush.
    fn stage_gate_record(&mut self, gate_id: &str, decided: Option<Decided>) {
        let Some(current) = self.state.current.as_ref() else {
            return;
        };
        let pending = current.gates.iter().find(|g| g.gate_id == gate_id).cloned();
        let previous = self.gate_records.get(gate_id).cloned();
        let record = match (pending, previous.clone(), decided) {
            (Some(g), _, None) => pending_record(self.id, current.turn, &g),
            (_, Some(prev), Some(d)) => GateRecord {
                status: GateStatus::Decided,
                decision: d.decision,
                reviewer: d.reviewer,
                decision_reason: d.reason,
                edited: d.edited,
                decided_at_unix_ms: now_unix_ms(),
                by_timeout: d.by_timeout,
                ..prev
            },
            _ => return,
        };
        self.staged_gates.push((record.clone(), previous));
        if record.status == GateStatus::Pending {
            self.gate_records.insert(gate_id.to_string(), record);
        } else {
            self.gate_records.remove(gate_id);
        }
    }

    /// Record `ModelCallStarted` (with anything staged) and dispatch the
    /// call — unless a cost or input data-rule gate holds it. False when the
    /// turn failed instead (unknown route, endpoint refused).
    fn start_model_call(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        attempt: u32,
        reason: &str,
    ) -> bool {
        let route = self.state.route.clone();
        if !self.shared.router.has_route(&route) {
            let reason = format!("route {route:?} is not a configured route or model endpoint");
            self.commit(
                myself,
                vec![EventKind::TurnFailed {
                    turn,
                    reason,
                    code: "unknown_route".into(),
                }],
                true,
            );
            return false;
        }
        let mut messages = self.state.model_messages();
        let queued = self.state.current.as_ref().is_none_or(|c| c.turn != turn);
        let mut input = None;
        if queued && let Some((_, m, _)) = self.state.queued.iter().find(|(t, _, _)| *t == turn) {
            input = Some(m.content.clone());
            messages.push(m.clone());
        }
        let g = &self.state.generation;
        // A required tool call applies to a turn's first model call only:
        // after the tool results the model must be free to answer, or the
        // loop would call tools until max_steps. A one-shot session (the
        // front door) makes exactly one call, whose caller runs the loop:
        // its choice always applies.
        let first_step = self.state.one_shot
            || messages
                .last()
                .is_some_and(|m| m.role == baton_types::Role::User);
        let tool_choice = match &g.tool_choice {
            ToolChoice::Required | ToolChoice::Tool(_) if !first_step => ToolChoice::Auto,
            choice => choice.clone(),
        };
        // Validated as a JSON object when the session started.
        let json_schema = g
            .json_schema
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        let request = ModelRequest {
            messages,
            max_output_tokens: g.max_output_tokens,
            temperature: g.temperature,
            top_p: g.top_p,
            stop: g.stop.clone(),
            tools: self.tool_definitions(),
            tool_choice,
            json_schema,
        };
        let approved = self
            .state
            .current
            .as_ref()
            .is_some_and(|c| c.turn == turn && c.is_approved("model_call", ""));
        if reason != "recovery" && !approved {
            let cost = self.shared.router.estimate_cost_usd(&route, &request);
            if let Some(terms) =
                self.shared
                    .gate_policies
                    .before_model_call(&route, input.as_deref(), cost)
            {
                let subject = serde_json::json!({
                    "route": route,
                    "estimated_cost_usd": cost,
                    "input": input,
                })
                .to_string();
                self.open_gate(turn, terms, "model_call", subject, String::new());
                self.flush(myself, true);
                return true;
            }
        }
        if self.turn_started.is_none_or(|(t, _)| t != turn) {
            self.turn_started = Some((turn, tokio::time::Instant::now()));
        }
        self.turn_span(turn);
        self.commit(
            myself,
            vec![EventKind::ModelCallStarted {
                turn,
                attempt,
                endpoint: route,
                reason: reason.into(),
            }],
            true,
        );
        self.dispatch(myself, turn, request);
        true
    }

    /// The tool definitions offered to the model: allowed server-side tools
    /// plus the session's client-side tools.
    fn tool_definitions(&self) -> Vec<baton_types::ToolDefinition> {
        let filter = self.tool_filter();
        let mut defs = self.shared.tools.registry.definitions(&filter);
        defs.extend(self.state.client_tools.iter().cloned());
        defs
    }

    fn tool_filter(&self) -> ToolFilter {
        let patterns = if self.state.allowed_tools.is_empty() {
            &self.shared.config.tools.default_allowed
        } else {
            &self.state.allowed_tools
        };
        // Patterns were validated when the session started.
        ToolFilter::new(patterns).unwrap_or_else(|_| ToolFilter::none())
    }

    /// Drive the current step's tool calls. True when every result is in
    /// (the loop continues with the next model call).
    fn pump_tools(&mut self, myself: &ActorRef<SessionMsg>) -> bool {
        let Some(current) = self.state.current.as_ref() else {
            return false;
        };
        let turn = current.turn;
        let limit = self.shared.config.tools.max_parallel_calls.max(1);
        let filter = self.tool_filter();
        let registry = &self.shared.tools.registry;
        let mut records = Vec::new();
        let mut to_start = Vec::new();
        let mut running = self.tool_runs.len();
        let mut arm = Vec::new();
        let mut gates = Vec::new();
        let policies = &self.shared.gate_policies;
        for t in current.tools.iter().filter(|t| t.result.is_none()) {
            if t.attention.is_some()
                || self.tool_runs.contains_key(&t.call_id)
                || current.gates.iter().any(|g| g.call_id == t.call_id)
            {
                continue;
            }
            if t.client_side {
                if !self.client_timers.contains(&t.call_id) {
                    arm.push((t.call_id.clone(), t.requested_at_unix_ms));
                }
                continue;
            }
            let tool = filter
                .allows(&t.name)
                .then(|| registry.get(&t.name))
                .flatten();
            let Some(tool) = tool else {
                records.push(tool_error(
                    turn,
                    t,
                    &ToolError::UnknownTool(t.name.clone()),
                    0,
                ));
                continue;
            };
            if t.started && !tool.spec().idempotent {
                let reason = format!(
                    "tool {} is not idempotent and its call {} started before a restart without a recorded result; \
                     it may or may not have run: decide its gate (approve runs it again, edit supplies its result, \
                     reject gives the model an error), submit its result with SubmitToolResult, or cancel the turn",
                    t.name, t.call_id
                );
                records.push(EventKind::NeedsAttention {
                    turn,
                    call_id: t.call_id.clone(),
                    reason: reason.clone(),
                });
                let terms = builtin_terms(
                    &self.shared.config.gates.needs_attention,
                    "needs_attention",
                    "needs_attention",
                    reason,
                );
                gates.push((t.call_id.clone(), terms, tool_subject(t)));
                continue;
            }
            let args = match registry.validate(&t.name, &t.arguments) {
                Ok(args) => args,
                Err(e) => {
                    records.push(tool_error(turn, t, &e, 0));
                    continue;
                }
            };
            if !current.is_approved("tool_call", &t.call_id)
                && let Some(terms) = policies.before_tool(&self.state.route, &t.name)
            {
                gates.push((t.call_id.clone(), terms, tool_subject(t)));
                continue;
            }
            if running >= limit {
                continue;
            }
            running += 1;
            records.push(EventKind::ToolCallStarted {
                turn,
                call_id: t.call_id.clone(),
                name: t.name.clone(),
                attempt: t.attempt + 1,
            });
            to_start.push((t.call_id.clone(), t.name.clone(), t.attempt + 1, args));
        }
        let timeout_ms = self.shared.config.tools.client_tool_timeout_ms;
        for (call_id, requested_at) in arm {
            let due = requested_at.saturating_add(timeout_ms);
            let wait = std::time::Duration::from_millis(due.saturating_sub(now_unix_ms()));
            let id = call_id.clone();
            myself.send_after(wait, move || SessionMsg::ClientToolTimeout {
                turn,
                call_id: id,
            });
            self.client_timers.insert(call_id);
        }
        if records.is_empty() && gates.is_empty() {
            return false;
        }
        for r in records {
            self.stage(r);
        }
        for (call_id, terms, subject) in gates {
            self.open_gate(turn, terms, "tool_call", subject, call_id);
        }
        self.flush(myself, true);
        // A tool runs only once its ToolCallStarted is durable: after a crash,
        // "started, no result" then reliably means "may have run".
        let upto = self.state.last_seq;
        for (call_id, name, attempt, args) in to_start {
            self.tool_runs.insert(
                call_id.clone(),
                ToolRun {
                    start_after_seq: upto,
                    name,
                    attempt,
                    args: Some(args),
                },
            );
        }
        self.state
            .current
            .as_ref()
            .is_some_and(|c| c.tools.is_empty())
    }

    /// Run tools whose start record is now durable.
    fn start_durable_tools(&mut self, myself: &ActorRef<SessionMsg>, upto: u64) {
        let Some(turn) = self.state.current.as_ref().map(|c| c.turn) else {
            return;
        };
        for (call_id, run) in self.tool_runs.iter_mut() {
            if run.start_after_seq > upto {
                continue;
            }
            let Some(args) = run.args.take() else {
                continue;
            };
            if self.state.replay_of.is_some() {
                // A replay session: the recorded result, the tool is not run.
                let result = match self
                    .shared
                    .replay_source(self.id)
                    .and_then(|s| s.tools.get(call_id).cloned())
                {
                    Some((output, false)) => Ok(output),
                    Some((output, true)) => Err(ToolError::Failed(
                        output
                            .strip_prefix("error: ")
                            .unwrap_or(&output)
                            .to_string(),
                    )),
                    None => Err(ToolError::Failed(format!(
                        "replay: the recording has no result for tool call {call_id}"
                    ))),
                };
                let _ = myself.cast(SessionMsg::ToolDone {
                    turn,
                    call_id: call_id.clone(),
                    attempt: run.attempt,
                    result,
                    latency_ms: 0,
                });
                continue;
            }
            let rx = self.shared.tools.executor.execute(run.name.clone(), args);
            let me = myself.clone();
            let (call_id, attempt, name) = (call_id.clone(), run.attempt, run.name.clone());
            let started = Instant::now();
            let parent = self
                .turn_span
                .as_ref()
                .filter(|(t, _)| *t == turn)
                .map(|(_, s)| s.clone())
                .unwrap_or_else(tracing::Span::current);
            let span = tracing::info_span!(
                parent: &parent,
                "tool.call",
                gen_ai.operation.name = "execute_tool",
                gen_ai.tool.name = %name,
                gen_ai.tool.call.id = %call_id,
                baton.session.id = %self.id,
                "error.type" = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let tool_metric_name = name.clone();
            tokio::spawn(
                async move {
                    let result = rx.await.unwrap_or_else(|_| {
                        Err(ToolError::Unavailable {
                            tool: name,
                            reason: "the tool executor stopped".into(),
                        })
                    });
                    let latency_ms = started.elapsed().as_millis() as u64;
                    let outcome = if result.is_ok() { "ok" } else { "error" };
                    if let Err(e) = &result {
                        let span = tracing::Span::current();
                        span.record("error.type", e.to_string());
                        span.record("otel.status_code", "error");
                    }
                    baton_metrics::metrics().tool_call(
                        &tool_metric_name,
                        outcome,
                        started.elapsed().as_secs_f64(),
                    );
                    let _ = me.cast(SessionMsg::ToolDone {
                        turn,
                        call_id,
                        attempt,
                        result,
                        latency_ms,
                    });
                }
                .instrument(span),
            );
        }
    }

    fn on_tool_done(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        call_id: String,
        attempt: u32,
        result: Result<String, ToolError>,
        latency_ms: u64,
    ) {
        if self
            .tool_runs
            .get(&call_id)
            .is_none_or(|r| r.attempt != attempt)
        {
            return;
        }
        self.tool_runs.remove(&call_id);
        let Some(t) = self.state.unanswered_tool(turn, &call_id) else {
            return;
        };
        let record = match result {
            Ok(output) => EventKind::ToolResult {
                turn,
                call_id: t.call_id.clone(),
                name: t.name.clone(),
                output,
                is_error: false,
                latency_ms,
            },
            Err(e) => tool_error(turn, t, &e, latency_ms),
        };
        self.commit(myself, vec![record], true);
        self.pump(myself);
    }

    fn submit_tool_result(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        call_id: String,
        output: String,
        is_error: bool,
        reply: RpcReplyPort<Result<u64>>,
    ) {
        let outcome = (|| {
            if !self.found {
                return Err(Error::SessionNotFound(self.id));
            }
            let pending = self.state.current.as_ref().and_then(|c| {
                c.tools
                    .iter()
                    .find(|t| t.call_id == call_id)
                    .map(|t| (c.turn, t))
            });
            let Some((turn, t)) = pending else {
                if self.state.tool_call_answered(&call_id) {
                    return Err(Error::FailedPrecondition(format!(
                        "tool call {call_id} of session {} already has a result",
                        self.id
                    )));
                }
                return Err(Error::NotFoundDetail(format!(
                    "session {} has no pending tool call {call_id:?}",
                    self.id
                )));
            };
            if t.result.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "tool call {call_id} of session {} already has a result",
                    self.id
                )));
            }
            if !t.client_side && t.attention.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "tool call {call_id} ({}) runs on the server; only client-side calls and calls that need attention accept a submitted result",
                    t.name
                )));
            }
            let latency_ms = now_unix_ms().saturating_sub(t.requested_at_unix_ms);
            Ok(EventKind::ToolResult {
                turn,
                call_id: t.call_id.clone(),
                name: t.name.clone(),
                output,
                is_error,
                latency_ms,
            })
        })();
        match outcome {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(record) => {
                self.tool_runs.remove(&call_id);
                let gate = self.state.current.as_ref().and_then(|c| {
                    c.gates
                        .iter()
                        .find(|g| g.call_id == call_id)
                        .map(|g| (c.turn, g.gate_id.clone()))
                });
                if let Some((turn, gate_id)) = gate {
                    let edited = match &record {
                        EventKind::ToolResult { output, .. } => output.clone(),
                        _ => String::new(),
                    };
                    self.record_decision(
                        turn,
                        &gate_id,
                        Decided {
                            decision: "edit".into(),
                            reviewer: "SubmitToolResult".into(),
                            reason: "the result was submitted".into(),
                            edited,
                            by_timeout: false,
                        },
                    );
                }
                self.commit(myself, vec![record], true);
                // Acknowledged once the result is durable.
                self.acks.push((self.state.last_seq, reply));
                self.pump(myself);
            }
        }
    }

    fn on_client_timeout(&mut self, myself: &ActorRef<SessionMsg>, turn: u64, call_id: String) {
        self.client_timers.remove(&call_id);
        let timeout_ms = self.shared.config.tools.client_tool_timeout_ms;
        let Some(t) = self.state.unanswered_tool(turn, &call_id) else {
            return;
        };
        let record = EventKind::ToolResult {
            turn,
            call_id: t.call_id.clone(),
            name: t.name.clone(),
            output: format!(
                "the client did not submit a result for {} within {timeout_ms} ms",
                t.name
            ),
            is_error: true,
            latency_ms: now_unix_ms().saturating_sub(t.requested_at_unix_ms),
        };
        self.commit(myself, vec![record], true);
        self.pump(myself);
    }

    /// The tracing span of `turn`, opened on first use.
    fn turn_span(&mut self, turn: u64) -> tracing::Span {
        if let Some((t, span)) = &self.turn_span
            && *t == turn
        {
            return span.clone();
        }
        let span = tracing::info_span!(
            "turn",
            baton.session.id = %self.id,
            baton.turn = i64::try_from(turn).unwrap_or(i64::MAX),
            baton.route = %self.state.route,
        );
        self.turn_span = Some((turn, span.clone()));
        span
    }

    /// Hand the call to the router (strategies, retries, failover,
    /// breakers, budgets) on a task of its own; its deltas, routing events
    /// and result come back as messages.
    fn dispatch(&mut self, myself: &ActorRef<SessionMsg>, turn: u64, request: ModelRequest) {
        self.next_call += 1;
        let call = self.next_call;
        let cancel = CancellationToken::new();
        let (delta_tx, mut delta_rx) = mpsc::unbounded_channel();
        let (event_tx, mut event_rx) = mpsc::unbounded_channel();
        self.call = Some(InFlight {
            id: call,
            turn,
            cancel: cancel.clone(),
        });
        let deadline = self
            .shared
            .config
            .sessions
            .turn_deadline_ms
            .zip(self.turn_started)
            .map(|(ms, (_, at))| at + std::time::Duration::from_millis(ms));
        let session_budget = self
            .state
            .budget_usd
            .map(|limit_usd| baton_routing::SessionBudget {
                scope: self.id.to_string(),
                limit_usd,
                spent_usd: self.state.cost_usd,
            });
        let route_call = baton_routing::RouteCall {
            route: self.state.route.clone(),
            request: std::sync::Arc::new(request),
            needs_vision: false,
            data_classes: self.state.data_classes.clone(),
            deltas: Some(delta_tx),
            events: Some(event_tx),
            cancel,
            deadline,
            session_budget,
        };
        if self.state.replay_of.is_some() {
            // A replay session: answered from the recording, no model call.
            let result = match self
                .shared
                .replay_source(self.id)
                .and_then(|s| s.next_answer())
            {
                Some(a) => Ok(baton_routing::Routed {
                    response: baton_models::ModelResponse {
                        message: a.message,
                        usage: a.usage,
                        finish_reason: a.finish_reason,
                        model: a.model,
                        attempts: 1,
                        confidence: None,
                    },
                    endpoint: a.endpoint,
                    attempts: 1,
                    cost_usd: a.cost_usd,
                    decisions: Vec::new(),
                    escalations: 0,
                }),
                None => Err(baton_routing::RouteError {
                    kind: baton_routing::RouteErrorKind::Exhausted,
                    message: "replay: the recording has no model answer for this call".into(),
                    attempts: 0,
                    endpoint: None,
                    cost_usd: None,
                }),
            };
            drop(route_call);
            let _ = myself.cast(SessionMsg::ModelDone {
                call,
                result: Box::new(result),
                latency_ms: 0,
            });
            return;
        }
        let router = self.shared.router.clone();
        let me = myself.clone();
        let started = Instant::now();
        let span = self.turn_span(turn);
        tokio::spawn(async move {
            let routed = router.call(route_call).instrument(span);
            tokio::pin!(routed);
            let mut deltas_open = true;
            let mut events_open = true;
            loop {
                tokio::select! {
                    biased;
                    e = event_rx.recv(), if events_open => match e {
                        Some(event) => {
                            if me.cast(SessionMsg::RouteEvent { call, event: Box::new(event) }).is_err() {
                                return;
                            }
                        }
                        None => events_open = false,
                    },
                    d = delta_rx.recv(), if deltas_open => match d {
                        Some(delta) => {
                            if me.cast(SessionMsg::ModelDelta { call, delta }).is_err() {
                                return;
                            }
                        }
                        None => deltas_open = false,
                    },
                    result = &mut routed => {
                        while let Ok(event) = event_rx.try_recv() {
                            let _ = me.cast(SessionMsg::RouteEvent { call, event: Box::new(event) });
                        }
                        while let Ok(delta) = delta_rx.try_recv() {
                            let _ = me.cast(SessionMsg::ModelDelta { call, delta });
                        }
                        let latency_ms = started.elapsed().as_millis() as u64;
                        let _ = me.cast(SessionMsg::ModelDone { call, result: Box::new(result), latency_ms });
                        return;
                    }
                }
            }
        });
    }

    fn current_call(&self, call: u64) -> Option<u64> {
        self.call.as_ref().filter(|c| c.id == call).map(|c| c.turn)
    }

    fn on_delta(&mut self, myself: &ActorRef<SessionMsg>, call: u64, delta: Delta) {
        let Some(turn) = self.current_call(call) else {
            return;
        };
        let Some(current) = self.state.current.as_ref() else {
            return;
        };
        let kind = match delta {
            Delta::Text(text) => EventKind::OutputDelta {
                turn,
                attempt: current.attempt,
                text,
            },
            Delta::Restart => EventKind::OutputRetracted {
                turn,
                attempt: current.attempt + 1,
                reason: "the attempt that streamed this output failed; the answer continues from another attempt".into(),
            },
        };
        self.commit(myself, vec![kind], false);
    }

    fn on_route_event(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        call: u64,
        event: baton_routing::RouteEvent,
    ) {
        let Some(turn) = self.current_call(call) else {
            return;
        };
        let kind = match event {
            baton_routing::RouteEvent::Decision(decision) => {
                EventKind::RoutingDecided { turn, decision }
            }
            baton_routing::RouteEvent::AttemptFailed(failure) => {
                EventKind::AttemptFailed { turn, failure }
            }
        };
        // Written with the next batch (a delta or the answer): no write of
        // its own on the hot path. A crash before that loses only the record
        // of a call that is then issued again.
        let _ = myself;
        self.stage(kind);
    }

    fn on_done(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        call: u64,
        result: std::result::Result<baton_routing::Routed, baton_routing::RouteError>,
        latency_ms: u64,
    ) {
        let Some(turn) = self.current_call(call) else {
            return;
        };
        self.call = None;
        let kinds = match result {
            Ok(routed) => {
                let endpoint = routed.endpoint;
                let cost_usd = routed.cost_usd;
                let attempts = routed.attempts;
                let resp = routed.response;
                self.last_confidence = resp.confidence;
                let mut message = resp.message;
                message.role = baton_types::Role::Assistant;
                normalise_call_ids(
                    &mut message,
                    turn,
                    self.state.current.as_ref().map_or(0, |c| c.steps),
                );
                // A one-shot session hands tool calls to its client (the
                // front door's caller) instead of running them.
                let one_shot = self.state.one_shot;
                let calls: Vec<_> = message
                    .tool_calls
                    .iter()
                    .filter(|_| !one_shot)
                    .map(|c| EventKind::ToolCallRequested {
                        turn,
                        call_id: c.id.clone(),
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                        client_side: self.state.client_tools.iter().any(|t| t.name == c.name),
                    })
                    .collect();
                let mut kinds = vec![EventKind::AssistantMessage {
                    turn,
                    message,
                    usage: resp.usage,
                    endpoint,
                    model: resp.model,
                    finish_reason: resp.finish_reason,
                    latency_ms,
                    cost_usd,
                    attempts,
                }];
                // A final answer completes the turn in pump(), in the same
                // batch, unless a gate holds its release.
                kinds.extend(calls);
                kinds
            }
            Err(e) => vec![EventKind::TurnFailed {
                turn,
                reason: e.message.clone(),
                code: e.label().into(),
            }],
        };
        for k in kinds {
            self.stage(k);
        }
        self.pump(myself);
        self.flush(myself, true);
    }

    /// Stage a `GateDecided` and the gate's decided record.
    fn record_decision(&mut self, turn: u64, gate_id: &str, d: Decided) {
        let parent = self
            .turn_span
            .as_ref()
            .filter(|(t, _)| *t == turn)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(tracing::Span::current);
        let kind = self
            .gate_records
            .get(gate_id)
            .map(|r| r.kind.clone())
            .unwrap_or_default();
        tracing::info_span!(
            parent: &parent,
            "gate",
            baton.session.id = %self.id,
            baton.gate.id = %gate_id,
            baton.gate.kind = %kind,
            baton.gate.decision = %d.decision,
            baton.gate.reviewer = %d.reviewer,
        )
        .in_scope(|| tracing::info!("gate decided"));
        // The record is built from the pending state, before the decision
        // removes the gate from it.
        let record = self.gate_records.get(gate_id).cloned();
        self.stage(EventKind::GateDecided {
            turn,
            gate_id: gate_id.to_string(),
            decision: d.decision.clone(),
            reviewer: d.reviewer.clone(),
            reason: d.reason.clone(),
            edited: d.edited.clone(),
            by_timeout: d.by_timeout,
        });
        self.recently_decided.push_back((
            gate_id.to_string(),
            d.decision.clone(),
            d.reviewer.clone(),
            d.reason.clone(),
        ));
        if self.recently_decided.len() > 256 {
            self.recently_decided.pop_front();
        }
        if let Some(prev) = record {
            let decided = GateRecord {
                status: GateStatus::Decided,
                decision: d.decision,
                reviewer: d.reviewer,
                decision_reason: d.reason,
                edited: d.edited,
                decided_at_unix_ms: now_unix_ms(),
                by_timeout: d.by_timeout,
                ..prev.clone()
            };
            self.gate_records.remove(gate_id);
            self.staged_gates.push((decided, Some(prev)));
        }
    }

    async fn decide_gate(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        gate_id: String,
        decision: GateDecision,
        reviewer: String,
        reason: String,
        reply: RpcReplyPort<Result<GateRecord>>,
    ) {
        let pending = self.state.pending_gate(&gate_id);
        let Some((turn, gate)) = pending else {
            // Decided already (a race lost, or a repeat), or unknown.
            if let Some((_, decision, by, why)) =
                self.recently_decided.iter().find(|(g, ..)| *g == gate_id)
            {
                let _ = reply.send(Err(Error::FailedPrecondition(format!(
                    "gate {gate_id} was already decided: {decision} by {by} ({})",
                    if why.is_empty() {
                        "no reason given"
                    } else {
                        why
                    }
                ))));
                return;
            }
            let known = match crate::gates::parse_gate_id(&gate_id) {
                Ok(id) => self.shared.store.get_gate(id).await,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            let err = match known {
                Ok(Some(g)) if g.status == GateStatus::Decided => {
                    Error::FailedPrecondition(format!(
                        "gate {gate_id} was already decided: {} by {} ({})",
                        g.decision,
                        g.reviewer,
                        if g.decision_reason.is_empty() {
                            "no reason given"
                        } else {
                            &g.decision_reason
                        }
                    ))
                }
                Ok(_) => Error::NotFoundDetail(format!(
                    "session {} has no pending gate {gate_id}",
                    self.id
                )),
                Err(e) => e.into(),
            };
            let _ = reply.send(Err(err));
            return;
        };
        match self.decision_records(turn, &gate, &decision, &reviewer, &reason) {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(extra) => {
                let edited = match &decision {
                    GateDecision::Edit(p) => p.clone(),
                    _ => String::new(),
                };
                self.record_decision(
                    turn,
                    &gate.gate_id,
                    Decided {
                        decision: decision.as_str().into(),
                        reviewer,
                        reason,
                        edited,
                        by_timeout: false,
                    },
                );
                let decided = self.staged_gates.last().map(|(r, _)| r.clone());
                for k in extra {
                    self.stage(k);
                }
                self.flush(myself, true);
                match decided {
                    Some(r) => self.gate_acks.push((self.state.last_seq, r, reply)),
                    None => {
                        let _ = reply.send(Err(Error::Internal(format!(
                            "gate {gate_id} has no record"
                        ))));
                    }
                }
                self.pump(myself);
            }
        }
    }

    /// Validate a decision against the gate's point and return the records
    /// that carry out its effect (next to the `GateDecided` itself).
    fn decision_records(
        &self,
        turn: u64,
        gate: &PendingGate,
        decision: &GateDecision,
        reviewer: &str,
        reason: &str,
    ) -> Result<Vec<EventKind>> {
        let why = if reason.is_empty() {
            "no reason given".to_string()
        } else {
            reason.to_string()
        };
        let tool = || {
            self.state
                .current
                .as_ref()
                .and_then(|c| c.tools.iter().find(|t| t.call_id == gate.call_id))
        };
        let tool_result = |output: String, is_error: bool| -> Result<Vec<EventKind>> {
            let t = tool().ok_or_else(|| {
                Error::Internal(format!("gate {} holds an unknown tool call", gate.gate_id))
            })?;
            Ok(vec![EventKind::ToolResult {
                turn,
                call_id: t.call_id.clone(),
                name: t.name.clone(),
                output,
                is_error,
                latency_ms: now_unix_ms().saturating_sub(t.requested_at_unix_ms),
            }])
        };
        if let GateDecision::Edit(p) = decision
            && p.trim().is_empty()
        {
            return Err(Error::InvalidArgument(
                "edited_payload is required for an edit".into(),
            ));
        }
        match (gate.point.as_str(), decision) {
            (_, GateDecision::Approve) => Ok(Vec::new()),
            ("tool_call", GateDecision::Reject) => tool_result(
                format!("error: a reviewer ({reviewer}) rejected this tool call: {why}"),
                true,
            ),
            ("tool_call", GateDecision::Edit(payload)) if gate.kind == "needs_attention" => {
                // The reviewer supplies the call's result.
                tool_result(payload.clone(), false)
            }
            ("tool_call", GateDecision::Edit(payload)) => {
                let t = tool().ok_or_else(|| {
                    Error::Internal(format!("gate {} holds an unknown tool call", gate.gate_id))
                })?;
                self.shared
                    .tools
                    .registry
                    .validate(&t.name, payload)
                    .map_err(|e| Error::InvalidArgument(format!("edited_payload: {e}")))?;
                Ok(Vec::new())
            }
            ("final_answer", _) => Ok(Vec::new()),
            ("model_call", GateDecision::Reject) => Ok(vec![EventKind::TurnFailed {
                turn,
                reason: format!("a reviewer ({reviewer}) rejected the model call: {why}"),
                code: "gate_rejected".into(),
            }]),
            ("model_call", GateDecision::Edit(_)) if gate.kind == "cost" => {
                Err(Error::InvalidArgument(
                    "a cost gate can be approved or rejected, not edited".into(),
                ))
            }
            ("model_call", GateDecision::Edit(_)) => Ok(Vec::new()),
            (point, _) => Err(Error::Internal(format!(
                "gate {} has an unknown point {point:?}",
                gate.gate_id
            ))),
        }
    }

    /// Apply a gate's timeout action, if its deadline has passed.
    fn gate_timeout(&mut self, myself: &ActorRef<SessionMsg>, gate_id: &str) {
        let pending = self.state.pending_gate(gate_id);
        let Some((turn, gate)) = pending else { return };
        if gate.deadline_unix_ms == 0 || gate.deadline_unix_ms > now_unix_ms() {
            return;
        }
        let waited = gate.deadline_unix_ms.saturating_sub(gate.opened_at_unix_ms);
        let action = TimeoutAction::parse(&gate.on_timeout);
        if action == TimeoutAction::Escalate
            && let Some((to, ms)) = self
                .shared
                .gate_policies
                .escalation(&self.shared.config.gates, &gate.policy)
        {
            let deadline_unix_ms = if ms > 0 { now_unix_ms() + ms } else { 0 };
            tracing::info!(session = %self.id, gate = %gate_id, to = %to, "gate escalated after its timeout");
            let prev = self.gate_records.get(gate_id).cloned();
            self.stage(EventKind::GateEscalated {
                turn,
                gate_id: gate_id.to_string(),
                reviewers: to,
                deadline_unix_ms,
                on_timeout: "reject".into(),
            });
            if let Some(c) = &self.state.current
                && let Some(g) = c.gates.iter().find(|g| g.gate_id == gate_id)
            {
                let record = pending_record(self.id, turn, g);
                self.gate_records
                    .insert(gate_id.to_string(), record.clone());
                self.staged_gates.push((record, prev));
            }
            self.flush(myself, true);
            return;
        }
        let decision = if action == TimeoutAction::Approve {
            GateDecision::Approve
        } else {
            GateDecision::Reject
        };
        let reason = format!("no decision within {waited} ms");
        let extra = self
            .decision_records(turn, &gate, &decision, "timeout", &reason)
            .unwrap_or_default();
        self.record_decision(
            turn,
            gate_id,
            Decided {
                decision: decision.as_str().into(),
                reviewer: "timeout".into(),
                reason,
                edited: String::new(),
                by_timeout: true,
            },
        );
        for k in extra {
            self.stage(k);
        }
        self.flush(myself, true);
        self.pump(myself);
    }

    fn view(&self) -> SessionView {
        let s = &self.state;
        SessionView {
            id: self.id,
            status: s.status(),
            status_reason: s.failed.clone().unwrap_or_default(),
            route: s.route.clone(),
            system_prompt: s.system_prompt.clone(),
            metadata: s.metadata.clone(),
            created_at_unix_ms: s.created_at_unix_ms,
            messages: s.messages.clone(),
            current_turn: s.current.as_ref().map(|c| c.turn).unwrap_or(0),
            queued_turns: s.queued.len() as u32,
            usage: s.usage,
            last_seq: self.released_seq,
            turns_completed: s.turns_completed,
            live: true,
            pending_tools: s
                .current
                .as_ref()
                .map(|c| {
                    c.tools
                        .iter()
                        .filter(|t| t.result.is_none())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            allowed_tools: s.allowed_tools.clone(),
            client_tools: s.client_tools.clone(),
            max_steps: s.max_steps,
        }
    }
}

/// The tool-error result the model sees for a call.
fn tool_error(turn: u64, t: &PendingTool, e: &ToolError, latency_ms: u64) -> EventKind {
    EventKind::ToolResult {
        turn,
        call_id: t.call_id.clone(),
        name: t.name.clone(),
        output: format!("error: {e}"),
        is_error: true,
        latency_ms,
    }
}

/// Give every tool call a unique, non-empty id (providers usually do; a
/// missing or repeated id would make results ambiguous).
fn normalise_call_ids(message: &mut Message, turn: u64, step: u32) {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in message.tool_calls.iter_mut().enumerate() {
        if c.id.is_empty() || !seen.insert(c.id.clone()) {
            c.id = format!("call_{turn}_{step}_{i}");
            seen.insert(c.id.clone());
        }
    }
}

/// The index record of a pending gate.
fn pending_record(session: SessionId, turn: u64, g: &PendingGate) -> GateRecord {
    GateRecord {
        gate_id: uuid::Uuid::parse_str(&g.gate_id)
            .map(|u| *u.as_bytes())
            .unwrap_or_default(),
        session,
        turn,
        status: GateStatus::Pending,
        kind: g.kind.clone(),
        point: g.point.clone(),
        policy: g.policy.clone(),
        reason: g.reason.clone(),
        reviewers: g.reviewers.clone(),
        subject: g.subject.clone(),
        call_id: g.call_id.clone(),
        opened_at_unix_ms: g.opened_at_unix_ms,
        deadline_unix_ms: g.deadline_unix_ms,
        on_timeout: g.on_timeout.clone(),
        decision: String::new(),
        reviewer: String::new(),
        decision_reason: String::new(),
        edited: String::new(),
        decided_at_unix_ms: 0,
        by_timeout: false,
        escalations: g.escalations,
    }
}

/// What a tool-call gate shows the reviewer.
fn tool_subject(t: &PendingTool) -> String {
    let arguments: serde_json::Value = serde_json::from_str(&t.arguments)
        .unwrap_or_else(|_| serde_json::Value::String(t.arguments.clone()));
    serde_json::json!({ "tool": t.name, "call_id": t.call_id, "arguments": arguments }).to_string()
}
