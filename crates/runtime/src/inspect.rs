//! Inspection: the live actor tree, a session's state (live or rebuilt from
//! disk), its journal, its state at any seq (time travel), and forks.
//!
//! Nothing here changes a session; reading the state of a passivated session
//! folds its journal without waking it.

use std::collections::{BTreeMap, HashMap, HashSet};

use baton_store::Batch;
use baton_types::{EventKind, SessionEvent, SessionId, SessionStatus, now_unix_ms};

use crate::gates::GateDecision;
use crate::session::SessionMsg;
use crate::state::{PendingTool, SessionState};
use crate::supervisor::{SessionNode, SupervisorMsg};
use crate::{Error, Result, RuntimeHandle, SessionInfo};

/// One node of the actor tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActorNode {
    /// `runtime`, `session_supervisor`, `session`, `model_executor`,
    /// `tool_executor`, `mcp_server`, `gate_scanner`, `journal_writer`.
    pub kind: String,
    pub id: String,
    pub name: String,
    pub status: String,
    pub uptime_ms: u64,
    pub restarts: u32,
    /// Messages or calls waiting, where known.
    pub queue_len: Option<u64>,
    /// Kind-specific facts (in-flight calls, breaker state, idle time, ...).
    pub detail: BTreeMap<String, String>,
    pub children: Vec<ActorNode>,
}

impl ActorNode {
    fn new(kind: &str, id: impl Into<String>, name: impl Into<String>, status: &str) -> Self {
        Self {
            kind: kind.into(),
            id: id.into(),
            name: name.into(),
            status: status.into(),
            uptime_ms: 0,
            restarts: 0,
            queue_len: None,
            detail: BTreeMap::new(),
            children: Vec::new(),
        }
    }
}

/// A session's state and where it came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StateView {
    pub state: SessionState,
    pub status: SessionStatus,
    /// True when read from the live actor; false when rebuilt from the journal.
    pub live: bool,
    /// The seq the state reflects.
    pub at_seq: u64,
}

/// A page of journal records.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalPage {
    pub events: Vec<SessionEvent>,
    /// Pass as `after_seq` for the next page; `None` at the end.
    pub next_after_seq: Option<u64>,
    pub last_seq: u64,
}

impl RuntimeHandle {
    /// The live actor tree: the runtime, its session supervisor with every
    /// live (or restarting) session actor, the model executor pools, the tool
    /// executor and the journal writer.
    pub async fn actor_tree(&self) -> Result<ActorNode> {
        let shared = &self.inner.shared;
        let (tx, rx) = ractor::concurrency::oneshot();
        self.inner
            .supervisor
            .cast(SupervisorMsg::Tree(tx.into()))
            .map_err(|_| Error::Unavailable("the runtime is shutting down".into()))?;
        let sessions: Vec<SessionNode> = rx
            .await
            .map_err(|_| Error::Unavailable("the supervisor did not answer".into()))?;
        let stats = self.stats().await?;
        let uptime = shared.elapsed_ms();

        let mut root = ActorNode::new("runtime", "runtime", "baton", "running");
        root.uptime_ms = uptime;

        let mut sup = ActorNode::new(
            "session_supervisor",
            self.inner.supervisor.get_id().to_string(),
            "sessions",
            "running",
        );
        sup.uptime_ms = uptime;
        sup.restarts = 0;
        sup.detail
            .insert("restarts_total".into(), stats.restarts_total.to_string());
        sup.detail.insert(
            "passivations_total".into(),
            stats.passivations_total.to_string(),
        );
        sup.detail
            .insert("failed_total".into(), stats.failed_total.to_string());
        for n in sessions {
            let mut node = ActorNode::new("session", n.actor_id, n.session.to_string(), n.status);
            node.uptime_ms = n.uptime_ms;
            node.restarts = n.restarts;
            node.queue_len = Some(n.held_messages as u64);
            node.detail.insert("idle_ms".into(), n.idle_ms.to_string());
            sup.children.push(node);
        }
        sup.queue_len = Some(sup.children.len() as u64);
        root.children.push(sup);

        let mut models = ActorNode::new("model_executors", "models", "models", "running");
        for name in shared.router.models().names() {
            if let Some(h) = shared.router.models().get(&name) {
                let cfg = h.endpoint().config();
                let mut node = ActorNode::new("model_executor", name.clone(), name, "running");
                node.uptime_ms = uptime;
                node.queue_len = Some(h.queued() as u64);
                node.detail
                    .insert("in_flight".into(), h.in_flight().to_string());
                node.detail
                    .insert("max_concurrency".into(), cfg.max_concurrency.to_string());
                node.detail
                    .insert("provider".into(), cfg.provider.as_str().into());
                node.detail.insert("model".into(), cfg.model.clone());
                models.children.push(node);
            }
        }
        for st in self.inner.shared.router.endpoint_stats() {
            if let Some(node) = models.children.iter_mut().find(|n| n.name == st.endpoint)
                && let Some(ms) = st.ewma_latency_ms
            {
                node.detail
                    .insert("ewma_latency_ms".into(), format!("{ms:.1}"));
            }
        }
        for b in self.breaker_details() {
            if let Some(node) = models.children.iter_mut().find(|n| n.name == b.0) {
                node.detail.insert("breaker".into(), b.1);
            }
        }
        root.children.push(models);

        let mut tools = ActorNode::new("tool_executor", "tools", "tools", "running");
        tools.uptime_ms = uptime;
        tools.detail.insert(
            "registered".into(),
            shared.tools.registry.specs().len().to_string(),
        );
        root.children.push(tools);

        let w = shared.store.writer_stats();
        let mut writer = ActorNode::new("journal_writer", "writer", "journal writer", "running");
        writer.uptime_ms = uptime;
        writer
            .detail
            .insert("group_commits".into(), w.groups.to_string());
        writer
            .detail
            .insert("fsyncs".into(), w.synced_groups.to_string());
        writer
            .detail
            .insert("requests".into(), w.requests.to_string());
        root.children.push(writer);
        Ok(root)
    }

    /// Breaker state per endpoint, as text, for the actor tree.
    fn breaker_details(&self) -> Vec<(String, String)> {
        self.inner
            .shared
            .router
            .breakers()
            .into_iter()
            .map(|b| {
                (
                    b.endpoint.clone(),
                    format!(
                        "{:?} (consecutive failures {}, error rate {:.2})",
                        b.state, b.consecutive_failures, b.error_rate
                    )
                    .to_lowercase(),
                )
            })
            .collect()
    }

    /// The session's full state: from its live actor when it has one (no
    /// session is woken for this), else rebuilt from its journal.
    pub async fn session_state(&self, id: SessionId) -> Result<StateView> {
        let (tx, rx) = ractor::concurrency::oneshot();
        self.inner
            .supervisor
            .cast(SupervisorMsg::Peek(id, tx.into()))
            .map_err(|_| Error::Unavailable("the runtime is shutting down".into()))?;
        if let Ok(Some(actor)) = rx.await {
            let (tx, rx) = ractor::concurrency::oneshot();
            if actor
                .cast(SessionMsg::GetState { reply: tx.into() })
                .is_ok()
                && let Ok(Ok(state)) = rx.await
            {
                return Ok(StateView {
                    status: state.status(),
                    at_seq: state.last_seq,
                    state,
                    live: true,
                });
            }
        }
        self.state_at(id, u64::MAX).await.map(|mut v| {
            v.live = false;
            v
        })
    }

    /// A page of the session's journal after `after_seq`, decoded.
    pub async fn journal_page(
        &self,
        id: SessionId,
        after_seq: u64,
        limit: usize,
    ) -> Result<JournalPage> {
        let store = &self.inner.shared.store;
        if store.load_meta(id).await?.is_none() {
            return Err(Error::SessionNotFound(id));
        }
        let limit = limit.clamp(1, 1000);
        let last_seq = store.last_seq(id).await?;
        let events = store.read_journal(id, after_seq, limit).await?;
        let next_after_seq = events
            .last()
            .map(|e| e.seq)
            .filter(|s| *s < last_seq && events.len() == limit);
        Ok(JournalPage {
            events,
            next_after_seq,
            last_seq,
        })
    }

    /// The state rebuilt from the journal up to and including `seq` (time
    /// travel); `u64::MAX` for the latest. A seq past the journal's end is
    /// refused, naming the last seq.
    pub async fn state_at(&self, id: SessionId, seq: u64) -> Result<StateView> {
        let store = &self.inner.shared.store;
        if store.load_meta(id).await?.is_none() {
            return Err(Error::SessionNotFound(id));
        }
        let last_seq = store.last_seq(id).await?;
        if seq == 0 {
            return Err(Error::InvalidArgument(
                "seq must be at least 1 (the SessionStarted record)".into(),
            ));
        }
        if seq != u64::MAX && seq > last_seq {
            return Err(Error::InvalidArgument(format!(
                "seq {seq} is past the end of session {id}'s journal (last seq {last_seq})"
            )));
        }
        let upto = seq.min(last_seq);
        let mut state = SessionState::new(id);
        let mut after = 0;
        for e in read_upto(store, id, upto).await? {
            state.apply(e.seq, e.at_unix_ms, &e.kind);
            after = e.seq;
        }
        Ok(StateView {
            status: state.status(),
            at_seq: after,
            state,
            live: false,
        })
    }

    /// A new session whose journal is a copy of `id`'s records 1..=`at_seq`:
    /// it continues from exactly that point (an open model call is issued
    /// again, queued turns run), with the current code and configuration.
    /// Refused at a seq where a gate is pending or a tool call is running
    /// (fork before the call or after its result). The fork's metadata
    /// records `forked_from` = `<id>@<seq>`.
    pub async fn fork(&self, id: SessionId, at_seq: u64) -> Result<SessionInfo> {
        let view = self.state_at(id, at_seq).await?;
        if view.at_seq != at_seq {
            return Err(Error::InvalidArgument(format!(
                "seq {at_seq} is not in session {id}'s journal"
            )));
        }
        if let Some(c) = &view.state.current {
            if !c.gates.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "session {id} has a gate pending at seq {at_seq}; fork before the gate opened or after its decision"
                )));
            }
            if c.tools.iter().any(|t| t.started && t.result.is_none()) {
                return Err(Error::FailedPrecondition(format!(
                    "session {id} has a tool call running at seq {at_seq}; fork before the call started or after its result"
                )));
            }
        }
        let store = &self.inner.shared.store;
        let Some(src_meta) = store.load_meta(id).await? else {
            return Err(Error::SessionNotFound(id));
        };
        let new_id = SessionId::new();
        let now = now_unix_ms();
        let status = view.state.status();
        let mut metadata = src_meta.metadata.clone();
        metadata.insert("forked_from".into(), format!("{id}@{at_seq}"));
        let meta = baton_store::SessionMeta {
            created_at_unix_ms: now,
            route: view.state.route.clone(),
            system_prompt: view.state.system_prompt.clone(),
            metadata,
            idempotency_key: None,
            status,
            status_reason: String::new(),
            updated_at_unix_ms: now,
        };
        let mut batch = Batch::new();
        batch.put_meta(&new_id, &meta, None);
        for e in read_upto(store, id, at_seq).await? {
            batch.append(&new_id, e.seq, e.at_unix_ms, &e.kind);
        }
        store.write(batch).await?;
        self.audit_admin(
            "fork_session",
            Some(new_id),
            serde_json::json!({ "from": id.to_string(), "at_seq": at_seq }),
        );
        if status == SessionStatus::Running {
            // Same as recovery at start-up: the fork picks up where the
            // source was at `at_seq`.
            let _ = self
                .inner
                .supervisor
                .cast(SupervisorMsg::Route(new_id, SessionMsg::Wake));
        }
        Ok(SessionInfo {
            id: new_id,
            status,
            created: true,
        })
    }
}

/// What [`RuntimeHandle::backup`] made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupInfo {
    pub path: std::path::PathBuf,
    /// Bytes of the backup's files.
    pub bytes: u64,
    pub files: u64,
    pub took_ms: u64,
    /// Sessions in the backup.
    pub sessions: u64,
}

impl RuntimeHandle {
    /// A consistent online backup at `dest` (which must not exist): a
    /// RocksDB checkpoint of the store (hard links where the file system
    /// allows, so it is fast and small) taken while sessions keep running,
    /// plus a copy of the audit log directory when there is one. A backup
    /// is itself a data dir: restoring is copying it into place (`baton
    /// restore`) and starting the server on it.
    pub async fn backup(&self, dest: std::path::PathBuf) -> Result<BackupInfo> {
        let started = std::time::Instant::now();
        if dest.exists() {
            return Err(Error::InvalidArgument(format!(
                "backup destination {} already exists",
                dest.display()
            )));
        }
        let shared = &self.inner.shared;
        // Everything acknowledged so far is in the checkpoint.
        shared.store.barrier().await?;
        shared.store.checkpoint(dest.clone()).await?;
        let audit_src = shared.config.store.data_dir.join("audit");
        if let Some(hook) = &shared.audit {
            hook.flush().await;
        }
        if audit_src.is_dir() {
            let to = dest.join("audit");
            tokio::task::spawn_blocking(move || baton_store::copy_dir(&audit_src, &to))
                .await
                .map_err(|e| Error::Internal(format!("backup copy task failed: {e}")))?
                .map_err(|e| Error::Internal(format!("cannot copy the audit log: {e}")))?;
        }
        let sessions = shared.store.count_sessions().await?;
        self.audit_admin(
            "backup",
            None,
            serde_json::json!({ "path": dest.display().to_string() }),
        );
        let (files, bytes) = {
            let d = dest.clone();
            tokio::task::spawn_blocking(move || baton_store::dir_size(&d))
                .await
                .map_err(|e| Error::Internal(format!("backup size task failed: {e}")))?
        };
        Ok(BackupInfo {
            path: dest,
            bytes,
            files,
            took_ms: started.elapsed().as_millis() as u64,
            sessions,
        })
    }
}

/// Where a replay first differed from the recording.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Divergence {
    /// Position among the compared records (0-based).
    pub index: u64,
    /// Seq of the recorded record there (None: the replay produced more).
    pub source_seq: Option<u64>,
    /// Seq of the replayed record there (None: the replay produced fewer).
    pub replay_seq: Option<u64>,
    /// The recorded record, as JSON.
    pub expected: String,
    /// The replayed record, as JSON.
    pub actual: String,
}

/// The result of [`RuntimeHandle::replay`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    pub source: SessionId,
    /// The session the replay ran as (kept for inspection).
    pub replay: SessionId,
    pub turns: u64,
    /// Records compared.
    pub compared: u64,
    pub divergence: Option<Divergence>,
    /// Why the replay ended before the recording's last turn, when it did:
    /// a gate or client tool call the recording has no answer for, a
    /// refused recorded decision, or a replay that went silent.
    pub stopped: Option<String>,
}

/// What a replay session is answered with instead of models and tools:
/// the recording's model answers in order and its tool results by call id.
#[derive(Debug, Default)]
pub(crate) struct ReplaySource {
    pub answers: std::sync::Mutex<std::collections::VecDeque<RecordedAnswer>>,
    pub tools: std::collections::HashMap<String, (String, bool)>,
}

#[derive(Debug, Clone)]
pub(crate) struct RecordedAnswer {
    pub message: baton_types::Message,
    pub usage: baton_types::Usage,
    pub endpoint: String,
    pub model: String,
    pub finish_reason: baton_types::FinishReason,
    pub cost_usd: Option<f64>,
}

impl ReplaySource {
    pub(crate) fn next_answer(&self) -> Option<RecordedAnswer> {
        self.answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }
}

/// The part of a record that replay compares: what happened, without
/// timings, attempts, endpoints chosen or streamed deltas (routing is
/// re-decided live and deltas are provisional). Gates are compared by what
/// was decided and by whom, not by their random ids, deadlines or
/// escalations (how long a gate waited is not replayed).
fn normalized(kind: &EventKind) -> Option<serde_json::Value> {
    use serde_json::json;
    Some(match kind {
        EventKind::SessionStarted { .. }
        | EventKind::OutputDelta { .. }
        | EventKind::RoutingDecided { .. }
        | EventKind::AttemptFailed { .. }
        | EventKind::OutputRetracted { .. }
        | EventKind::GateEscalated { .. } => return None,
        EventKind::ModelCallStarted { turn, reason, .. } => {
            json!({"type": "model_call_started", "turn": turn, "reason": reason})
        }
        EventKind::AssistantMessage {
            turn,
            message,
            usage,
            finish_reason,
            ..
        } => json!({"type": "assistant_message", "turn": turn, "message": message,
                    "usage": usage, "finish_reason": finish_reason}),
        EventKind::ToolResult {
            turn,
            call_id,
            name,
            output,
            is_error,
            ..
        } => json!({"type": "tool_result", "turn": turn, "call_id": call_id, "name": name,
                    "output": output, "is_error": is_error}),
        EventKind::GateOpened {
            turn, kind, point, ..
        } => json!({"type": "gate_opened", "turn": turn, "kind": kind, "point": point}),
        EventKind::GateDecided {
            turn,
            decision,
            reviewer,
            reason,
            edited,
            ..
        } => json!({"type": "gate_decided", "turn": turn, "decision": decision,
                    "reviewer": reviewer, "reason": reason, "edited": edited}),
        other => serde_json::to_value(other).unwrap_or_default(),
    })
}

/// A gate as replay matches it, independent of its random id: its turn,
/// policy kind, point, the tool call it holds (empty at other points) and
/// how many gates with those four opened before it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GateSlot {
    turn: u64,
    kind: String,
    point: String,
    call_id: String,
    nth: u32,
}

/// Numbers one journal's gates into slots, in the order they open.
#[derive(Debug, Default)]
struct SlotCounter(HashMap<(u64, String, String, String), u32>);

impl SlotCounter {
    fn next(&mut self, turn: u64, kind: &str, point: &str, call_id: &str) -> GateSlot {
        let n = self
            .0
            .entry((turn, kind.into(), point.into(), call_id.into()))
            .or_default();
        let slot = GateSlot {
            turn,
            kind: kind.into(),
            point: point.into(),
            call_id: call_id.into(),
            nth: *n,
        };
        *n += 1;
        slot
    }
}

/// Something done to the recorded session from outside that a replay does
/// to its session too.
#[derive(Debug, Clone)]
enum Action {
    /// Decide the gate at `slot` as the recording's reviewer (or its
    /// timeout) did.
    Decide {
        slot: GateSlot,
        decision: GateDecision,
        reviewer: String,
        reason: String,
    },
    /// Answer a client-side tool call with the recorded result.
    Submit {
        call_id: String,
        outcome: std::result::Result<String, String>,
    },
    /// Cancel the turn: the recording's turn was cancelled while the gate
    /// at `slot` waited.
    Cancel { slot: GateSlot },
}

/// An action and where the recording took it.
#[derive(Debug, Clone)]
struct RecordedAction {
    turn: u64,
    /// How many compared records precede it in the recording.
    at: u64,
    action: Action,
}

/// What a replay takes from the recording besides model answers and server
/// tool results: its gates and the actions that closed them, and its
/// client-side tool results, in journal order.
#[derive(Debug, Default)]
struct Recording {
    actions: Vec<RecordedAction>,
    /// Every recorded gate; true when the recording closed it.
    gates: HashMap<GateSlot, bool>,
}

impl Recording {
    fn read(source: &[SessionEvent]) -> Recording {
        let mut out = Recording::default();
        let mut slots = SlotCounter::default();
        let mut by_id: HashMap<&str, GateSlot> = HashMap::new();
        let mut client_calls: HashSet<&str> = HashSet::new();
        let mut cancelled: HashSet<u64> = HashSet::new();
        let mut at = 0u64;
        for (i, e) in source.iter().enumerate() {
            let mut action = None;
            match &e.kind {
                EventKind::GateOpened {
                    turn,
                    gate_id,
                    kind,
                    point,
                    call_id,
                    ..
                } => {
                    let slot = slots.next(*turn, kind, point, call_id);
                    out.gates.insert(slot.clone(), false);
                    by_id.insert(gate_id, slot);
                }
                EventKind::GateDecided {
                    turn,
                    gate_id,
                    decision,
                    reviewer,
                    reason,
                    edited,
                    ..
                } => {
                    if let Some(slot) = by_id.get(gate_id.as_str()) {
                        out.gates.insert(slot.clone(), true);
                        if closed_by_cancel(source, i) {
                            // One cancel closes all the turn's gates.
                            if cancelled.insert(*turn) {
                                action = Some(Action::Cancel { slot: slot.clone() });
                            }
                        } else {
                            let decision = match decision.as_str() {
                                "approve" => Some(GateDecision::Approve),
                                "reject" => Some(GateDecision::Reject),
                                "edit" => Some(GateDecision::Edit(edited.clone())),
                                _ => None,
                            };
                            // An unknown decision is not applied: the
                            // replay stops at that gate.
                            action = decision.map(|decision| Action::Decide {
                                slot: slot.clone(),
                                decision,
                                reviewer: reviewer.clone(),
                                reason: reason.clone(),
                            });
                        }
                    }
                }
                EventKind::ToolCallRequested {
                    call_id,
                    client_side: true,
                    ..
                } => {
                    client_calls.insert(call_id);
                }
                // Results of server-side calls are answered by call id
                // instead (`ReplaySource::tools`).
                EventKind::ToolResult {
                    call_id,
                    output,
                    is_error,
                    ..
                } if client_calls.remove(call_id.as_str()) => {
                    action = Some(Action::Submit {
                        call_id: call_id.clone(),
                        outcome: if *is_error {
                            Err(output.clone())
                        } else {
                            Ok(output.clone())
                        },
                    });
                }
                _ => {}
            }
            if let (Some(action), Some(turn)) = (action, e.turn()) {
                out.actions.push(RecordedAction { turn, at, action });
            }
            if normalized(&e.kind).is_some() {
                at += 1;
            }
        }
        out
    }
}

/// Whether the `GateDecided` at `i` was written by a cancellation of its
/// turn: a cancel rejects the turn's open gates right before its
/// `TurnCancelled`, while a reviewer's or timeout's rejection is followed by
/// its effect (a tool error, a failed turn, a new model call).
fn closed_by_cancel(source: &[SessionEvent], i: usize) -> bool {
    let Some(EventKind::GateDecided {
        turn,
        decision,
        by_timeout: false,
        ..
    }) = source.get(i).map(|e| &e.kind)
    else {
        return false;
    };
    decision == "reject"
        && source
            .iter()
            .skip(i + 1)
            .find(|e| !matches!(e.kind, EventKind::GateDecided { .. }))
            .is_some_and(|e| matches!(e.kind, EventKind::TurnCancelled { turn: t } if t == *turn))
}

/// A recorded action aimed at the replay session.
#[derive(Debug)]
enum Apply {
    Decide {
        gate_id: String,
        decision: GateDecision,
        reviewer: String,
        reason: String,
    },
    Submit {
        call_id: String,
        outcome: std::result::Result<String, String>,
    },
    Cancel,
}

#[derive(Debug)]
enum Next {
    Apply(Apply),
    /// The replay has more to write before it needs the next action.
    Wait,
    /// The replay waits for something the recording does not give: it ends.
    Stop(String),
}

/// Follows a replay session's records and says when to apply the
/// recording's next action: in the recording's order, once the replay holds
/// its target (the gate, the client's tool call) and has written as many
/// compared records as the recording had at that point — or, sooner, once
/// the replay can go no further without it.
#[derive(Debug)]
struct Feeder {
    recording: Recording,
    next: usize,
    slots: SlotCounter,
    /// The replay's open gates by slot, with their ids.
    open: HashMap<GateSlot, String>,
    /// The replay's client-side calls without a result.
    client_waiting: HashSet<String>,
    /// Compared records the replay wrote.
    count: u64,
    /// The seq of the replay's last record seen.
    seen_seq: u64,
}

impl Feeder {
    fn new(recording: Recording) -> Feeder {
        Feeder {
            recording,
            next: 0,
            slots: SlotCounter::default(),
            open: HashMap::new(),
            client_waiting: HashSet::new(),
            count: 0,
            seen_seq: 0,
        }
    }

    /// Take in the replay's next record. An error ends the replay: it
    /// opened a gate the recording has no decision for.
    fn observe(&mut self, e: &SessionEvent) -> std::result::Result<(), String> {
        self.seen_seq = e.seq;
        if normalized(&e.kind).is_some() {
            self.count += 1;
        }
        match &e.kind {
            EventKind::GateOpened {
                turn,
                gate_id,
                kind,
                point,
                call_id,
                ..
            } => {
                let slot = self.slots.next(*turn, kind, point, call_id);
                let held = if call_id.is_empty() {
                    String::new()
                } else {
                    format!(" holding tool call {call_id}")
                };
                match self.recording.gates.get(&slot) {
                    None => {
                        return Err(format!(
                            "the replay opened a {kind} gate at {point}{held} in turn {turn} that the recording does not have"
                        ));
                    }
                    Some(false) => {
                        return Err(format!(
                            "the recording's {kind} gate at {point}{held} in turn {turn} was still pending when it ended"
                        ));
                    }
                    Some(true) => {
                        self.open.insert(slot, gate_id.clone());
                    }
                }
            }
            EventKind::GateDecided { gate_id, .. } => self.open.retain(|_, g| g != gate_id),
            EventKind::ToolCallRequested {
                call_id,
                client_side: true,
                ..
            } => {
                self.client_waiting.insert(call_id.clone());
            }
            EventKind::ToolResult { call_id, .. } => {
                self.client_waiting.remove(call_id);
            }
            _ => {}
        }
        if e.ends_turn()
            && let Some(turn) = e.turn()
        {
            // What the recording did in this turn and the replay never
            // reached stays undone; the comparison shows it.
            while self
                .recording
                .actions
                .get(self.next)
                .is_some_and(|a| a.turn <= turn)
            {
                self.next += 1;
            }
            self.open.clear();
            self.client_waiting.clear();
        }
        Ok(())
    }

    /// Whether the replay holds a gate or a client-side call open.
    fn holds_open(&self) -> bool {
        !self.open.is_empty() || !self.client_waiting.is_empty()
    }

    /// What to do next. `stuck`: the replay wrote everything it will write
    /// until it gets a decision or a tool result.
    fn next(&self, stuck: bool) -> Next {
        let Some(r) = self.recording.actions.get(self.next) else {
            return if stuck {
                Next::Stop(
                    "the replay waits for a decision or a tool result the recording does not have"
                        .into(),
                )
            } else {
                Next::Wait
            };
        };
        let target = match &r.action {
            Action::Decide {
                slot,
                decision,
                reviewer,
                reason,
            } => self.open.get(slot).map(|gate_id| Apply::Decide {
                gate_id: gate_id.clone(),
                decision: decision.clone(),
                reviewer: reviewer.clone(),
                reason: reason.clone(),
            }),
            Action::Cancel { slot } => self.open.get(slot).map(|_| Apply::Cancel),
            Action::Submit { call_id, outcome } => {
                self.client_waiting
                    .contains(call_id)
                    .then(|| Apply::Submit {
                        call_id: call_id.clone(),
                        outcome: outcome.clone(),
                    })
            }
        };
        match target {
            Some(apply) if stuck || self.count >= r.at => Next::Apply(apply),
            None if stuck => Next::Stop(format!(
                "the replay waits, but the recording's next step (turn {}, after {} compared records) is for a gate or tool call the replay has not reached",
                r.turn, r.at
            )),
            _ => Next::Wait,
        }
    }

    fn applied(&mut self) {
        self.next += 1;
    }
}

/// How long a replay waits for its session's next record before it gives up.
const REPLAY_RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl RuntimeHandle {
    /// Re-run a recorded session deterministically: a new session (kept,
    /// with `replay_of` set) gets the recording's turns in order, its model
    /// calls are answered with the recorded answers in order and its tool
    /// calls with the recorded results — no model or tool is called. What
    /// was done to the recording from outside is done again, in the
    /// recording's order and at the same point: each gate the replay opens
    /// is decided as the recording's gate with the same turn, kind, point,
    /// tool call and order was (through [`RuntimeHandle::decide_gate`], with
    /// the recorded decision, reviewer, reason and edit; a gate the
    /// recording's timeout decided is decided by reviewer `timeout` with the
    /// recorded reason), client-side tool calls get the recorded results
    /// (through [`RuntimeHandle::submit_tool_result`]) and a turn cancelled
    /// at a gate is cancelled. The runtime's current code and configuration
    /// decide everything else (steps, tool selection, which gates open,
    /// limits). The replay stops early when it opens a gate the recording
    /// does not have or did not decide, or waits for anything the recording
    /// does not give; its open turn is then cancelled once compared. The
    /// two journals are compared record by record (without timings,
    /// attempts, routing, deltas, gate ids and escalations) and the first
    /// difference is reported.
    pub async fn replay(&self, id: SessionId) -> Result<ReplayReport> {
        let store = &self.inner.shared.store;
        let Some(meta) = store.load_meta(id).await? else {
            return Err(Error::SessionNotFound(id));
        };
        let source = read_all(store, id).await?;
        let Some(first) = source.first() else {
            return Err(Error::FailedPrecondition(format!(
                "session {id} has an empty journal"
            )));
        };
        let mut started = first.kind.clone();
        let EventKind::SessionStarted {
            route,
            system_prompt,
            replay_of,
            ..
        } = &mut started
        else {
            return Err(Error::FailedPrecondition(format!(
                "session {id}'s journal does not start with SessionStarted"
            )));
        };
        // Everything the recording started with, so fields added later
        // carry over without a change here.
        *replay_of = Some(id.to_string());
        let (route, system_prompt) = (route.clone(), system_prompt.clone());
        let mut answers = std::collections::VecDeque::new();
        let mut tools = HashMap::new();
        let mut turns = Vec::new();
        for e in &source {
            match &e.kind {
                EventKind::AssistantMessage {
                    message,
                    usage,
                    endpoint,
                    model,
                    finish_reason,
                    cost_usd,
                    ..
                } => answers.push_back(RecordedAnswer {
                    message: message.clone(),
                    usage: *usage,
                    endpoint: endpoint.clone(),
                    model: model.clone(),
                    finish_reason: finish_reason.clone(),
                    cost_usd: *cost_usd,
                }),
                EventKind::ToolResult {
                    call_id,
                    output,
                    is_error,
                    ..
                } => {
                    tools.insert(call_id.clone(), (output.clone(), *is_error));
                }
                EventKind::TurnAccepted {
                    message, review, ..
                } => {
                    turns.push((message.clone(), *review));
                }
                _ => {}
            }
        }
        let mut feeder = Feeder::new(Recording::read(&source));
        // The replay session.
        let replay_id = SessionId::new();
        let now = now_unix_ms();
        let mut metadata = meta.metadata.clone();
        metadata.insert("replay_of".into(), id.to_string());
        let replay_meta = baton_store::SessionMeta {
            created_at_unix_ms: now,
            route: route.clone(),
            system_prompt: system_prompt.clone(),
            metadata,
            idempotency_key: None,
            status: SessionStatus::Idle,
            status_reason: String::new(),
            updated_at_unix_ms: now,
        };
        let mut batch = Batch::new();
        batch.put_meta(&replay_id, &replay_meta, None);
        batch.append(&replay_id, 1, now, &started);
        self.inner.shared.replays_insert(
            replay_id,
            std::sync::Arc::new(ReplaySource {
                answers: std::sync::Mutex::new(answers),
                tools,
            }),
        );
        let outcome = async {
            store.write(batch).await?;
            self.audit_admin(
                "replay_session",
                Some(replay_id),
                serde_json::json!({ "source": id.to_string() }),
            );
            let mut replayed_turns = 0u64;
            let mut stopped = None;
            'turns: for (message, review) in turns {
                let mut events = self.send_message(replay_id, message, review).await?;
                replayed_turns += 1;
                use futures::StreamExt;
                loop {
                    let e = match tokio::time::timeout(REPLAY_RECORD_TIMEOUT, events.next()).await {
                        Ok(Some(Ok(e))) => e,
                        Ok(Some(Err(e))) => return Err(e),
                        Ok(None) => break,
                        Err(_) => {
                            stopped = Some(format!(
                                "the replay wrote nothing for {} s",
                                REPLAY_RECORD_TIMEOUT.as_secs()
                            ));
                            break 'turns;
                        }
                    };
                    if let Err(why) = feeder.observe(&e) {
                        stopped = Some(why);
                        break 'turns;
                    }
                    if e.ends_turn() {
                        break;
                    }
                    if let Err(why) = self.feed_replay(replay_id, &mut feeder).await {
                        stopped = Some(why);
                        break 'turns;
                    }
                }
            }
            Ok::<_, Error>((replayed_turns, stopped))
        }
        .await;
        self.inner.shared.replays_remove(replay_id);
        let (replayed_turns, stopped) = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.end_replay_turn(replay_id).await;
                return Err(e);
            }
        };
        let replayed = read_all(store, replay_id).await?;
        if let Some(why) = &stopped {
            tracing::info!(source = %id, replay = %replay_id, "replay stopped early: {why}");
            // Compared first: the cancellation's records are the replay's
            // own, not the recording's.
            self.end_replay_turn(replay_id).await;
        }
        let a: Vec<_> = source
            .iter()
            .filter_map(|e| normalized(&e.kind).map(|v| (e.seq, v)))
            .collect();
        let b: Vec<_> = replayed
            .iter()
            .filter_map(|e| normalized(&e.kind).map(|v| (e.seq, v)))
            .collect();
        let mut divergence = None;
        let n = a.len().max(b.len());
        let mut compared = 0;
        for i in 0..n {
            let (x, y) = (a.get(i), b.get(i));
            if x.map(|v| &v.1) == y.map(|v| &v.1) {
                compared += 1;
                continue;
            }
            divergence = Some(Divergence {
                index: i as u64,
                source_seq: x.map(|v| v.0),
                replay_seq: y.map(|v| v.0),
                expected: x.map(|v| v.1.to_string()).unwrap_or_default(),
                actual: y.map(|v| v.1.to_string()).unwrap_or_default(),
            });
            break;
        }
        Ok(ReplayReport {
            source: id,
            replay: replay_id,
            turns: replayed_turns,
            compared,
            divergence,
            stopped,
        })
    }

    /// Apply every recorded action the replay session is ready for. An
    /// error ends the replay, saying why.
    async fn feed_replay(
        &self,
        replay: SessionId,
        feeder: &mut Feeder,
    ) -> std::result::Result<(), String> {
        loop {
            let mut next = feeder.next(false);
            if matches!(next, Next::Wait)
                && feeder.holds_open()
                && self.replay_is_stuck(replay, feeder.seen_seq).await
            {
                next = feeder.next(true);
            }
            let apply = match next {
                Next::Wait => return Ok(()),
                Next::Stop(why) => return Err(why),
                Next::Apply(apply) => apply,
            };
            let (what, result) = match apply {
                Apply::Decide {
                    gate_id,
                    decision,
                    reviewer,
                    reason,
                } => (
                    format!("{} by {reviewer} of gate {gate_id}", decision.as_str()),
                    self.decide_gate(&gate_id, decision, reviewer, reason)
                        .await
                        .map(drop),
                ),
                Apply::Submit { call_id, outcome } => (
                    format!("result of tool call {call_id}"),
                    self.submit_tool_result(replay, call_id, outcome)
                        .await
                        .map(drop),
                ),
                Apply::Cancel => (
                    "cancellation".to_string(),
                    self.cancel(replay).await.map(drop),
                ),
            };
            match result {
                // Decided or answered already (by the replay's own gate or
                // client-tool timeout): the comparison shows how.
                Ok(()) | Err(Error::FailedPrecondition(_)) => feeder.applied(),
                Err(e) => return Err(format!("the recorded {what} was refused: {e}")),
            }
        }
    }

    /// Whether the replay session wrote everything up to `seen_seq` and can
    /// go no further without a gate decision or a client's tool result: no
    /// model call open, and every tool call without a result is held by a
    /// gate or is the client's.
    async fn replay_is_stuck(&self, replay: SessionId, seen_seq: u64) -> bool {
        let Ok(view) = self.session_state(replay).await else {
            return false;
        };
        if !view.live || view.state.last_seq > seen_seq {
            return false;
        }
        let Some(c) = &view.state.current else {
            return false;
        };
        let held = |t: &PendingTool| {
            t.client_side || t.attention.is_some() || c.gates.iter().any(|g| g.call_id == t.call_id)
        };
        let mut open = c.tools.iter().filter(|t| t.result.is_none());
        !c.model_call_open
            && open.clone().all(held)
            && (!c.gates.is_empty() || open.any(|t| t.client_side))
    }

    /// Cancel the replay session's open turn, if any, so that nobody is
    /// asked to decide a replay's gate; returns once the cancellation is
    /// written (or after a few seconds).
    async fn end_replay_turn(&self, replay: SessionId) {
        let after = self.inner.shared.store.last_seq(replay).await.unwrap_or(0);
        let turn = match self.cancel(replay).await {
            Ok(Some(turn)) => turn,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(replay = %replay, error = %e, "cannot cancel the replay's open turn");
                return;
            }
        };
        let Ok(mut events) = self.resume(replay, after).await else {
            return;
        };
        use futures::StreamExt;
        let ended = async {
            while let Some(Ok(e)) = events.next().await {
                if e.ends_turn() && e.turn() == Some(turn) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), ended).await;
    }
}

async fn read_all(store: &baton_store::Store, id: SessionId) -> Result<Vec<SessionEvent>> {
    read_upto(store, id, u64::MAX).await
}

/// The session's journal records with seq <= `upto`, in order.
async fn read_upto(
    store: &baton_store::Store,
    id: SessionId,
    upto: u64,
) -> Result<Vec<SessionEvent>> {
    let mut out = Vec::new();
    let mut after = 0;
    while after < upto {
        let page = store.read_journal(id, after, 512).await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        out.extend(page.into_iter().filter(|e| e.seq <= upto));
        after = last;
    }
    Ok(out)
}
