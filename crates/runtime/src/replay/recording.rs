//! What the recording did from outside (gate decisions, client tool
//! results, cancels), and the feeder that does it again to the replay
//! session at the same points.

use std::collections::{HashMap, HashSet};

use baton_types::{Decision, EventKind, GateId, GateKind, GatePoint, SessionEvent};

use crate::gates::GateDecision;

/// The part of a record that replay compares: what happened, without
/// timings, attempts, endpoints chosen or streamed deltas (routing is
/// re-decided live and deltas are provisional). Gates are compared by what
/// was decided and by whom, not by their random ids, deadlines or
/// escalations (how long a gate waited is not replayed), and not by the
/// principal that sent a turn (the replayer sends them again).
pub(crate) fn normalized(kind: &EventKind) -> Option<serde_json::Value> {
    use serde_json::json;
    Some(match kind {
        EventKind::SessionStarted { .. }
        | EventKind::OutputDelta { .. }
        | EventKind::RoutingDecided { .. }
        | EventKind::AttemptFailed { .. }
        | EventKind::OutputRetracted { .. }
        | EventKind::QualityScored { .. }
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
        other => {
            let mut v = serde_json::to_value(other).unwrap_or_default();
            // Who sent or cancelled a turn: in the replay, the replayer.
            if let Some(o) = v.as_object_mut() {
                o.remove("by");
            }
            v
        }
    })
}

/// A gate as replay matches it, independent of its random id: its turn,
/// policy kind, point, the tool call it holds (empty at other points) and
/// how many gates with those four opened before it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GateSlot {
    turn: u64,
    kind: GateKind,
    point: GatePoint,
    call_id: String,
    nth: u32,
}

/// Numbers one journal's gates into slots, in the order they open.
#[derive(Debug, Default)]
struct SlotCounter(HashMap<(u64, GateKind, GatePoint, String), u32>);

impl SlotCounter {
    fn next(&mut self, turn: u64, kind: GateKind, point: GatePoint, call_id: &str) -> GateSlot {
        let n = self
            .0
            .entry((turn, kind, point, call_id.into()))
            .or_default();
        let slot = GateSlot {
            turn,
            kind,
            point,
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
pub(super) struct Recording {
    actions: Vec<RecordedAction>,
    /// Every recorded gate; true when the recording closed it.
    gates: HashMap<GateSlot, bool>,
}

/// Builds a [`Recording`] from the recorded journal read in order, a
/// record at a time ([`Self::push`]), so the journal need not be held.
#[derive(Debug, Default)]
pub(super) struct RecordingReader {
    out: Recording,
    slots: SlotCounter,
    by_id: HashMap<GateId, GateSlot>,
    client_calls: HashSet<String>,
    cancelled: HashSet<u64>,
    /// Compared records so far.
    at: u64,
    /// Gate decisions not yet placed: whether a rejection was a cancel's is
    /// known from the first record after them that is not a decision.
    held: Vec<SessionEvent>,
}

impl RecordingReader {
    /// Take in the recording's next record.
    pub(super) fn push(&mut self, e: &SessionEvent) {
        if matches!(e.kind, EventKind::GateDecided { .. }) {
            self.held.push(e.clone());
            return;
        }
        self.place_held(Some(&e.kind));
        self.take(e, false);
    }

    /// The recording, once every record was pushed.
    pub(super) fn finish(mut self) -> Recording {
        self.place_held(None);
        self.out
    }

    /// The held decisions, now that the record after them (`next`, none at
    /// the journal's end) is known: a rejection (not by timeout) followed
    /// by its turn's `TurnCancelled` was written by the cancel.
    fn place_held(&mut self, next: Option<&EventKind>) {
        for e in std::mem::take(&mut self.held) {
            let by_cancel = match (&e.kind, next) {
                (
                    EventKind::GateDecided {
                        turn,
                        decision: Decision::Reject,
                        by_timeout: false,
                        ..
                    },
                    Some(EventKind::TurnCancelled { turn: t, .. }),
                ) => t == turn,
                _ => false,
            };
            self.take(&e, by_cancel);
        }
    }

    fn take(&mut self, e: &SessionEvent, by_cancel: bool) {
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
                let slot = self.slots.next(*turn, *kind, *point, call_id);
                self.out.gates.insert(slot.clone(), false);
                self.by_id.insert(*gate_id, slot);
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
                if let Some(slot) = self.by_id.get(gate_id) {
                    self.out.gates.insert(slot.clone(), true);
                    if by_cancel {
                        // One cancel closes all the turn's gates.
                        if self.cancelled.insert(*turn) {
                            action = Some(Action::Cancel { slot: slot.clone() });
                        }
                    } else {
                        let decision = match decision {
                            Decision::Approve => GateDecision::Approve,
                            Decision::Reject => GateDecision::Reject,
                            Decision::Edit => GateDecision::Edit(edited.clone()),
                        };
                        action = Some(Action::Decide {
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
                self.client_calls.insert(call_id.clone());
            }
            // Results of server-side calls are answered by call id
            // instead (`ReplaySource`).
            EventKind::ToolResult {
                call_id,
                output,
                is_error,
                ..
            } if self.client_calls.remove(call_id.as_str()) => {
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
            self.out.actions.push(RecordedAction {
                turn,
                at: self.at,
                action,
            });
        }
        if normalized(&e.kind).is_some() {
            self.at += 1;
        }
    }
}

/// A recorded action aimed at the replay session.
#[derive(Debug)]
pub(super) enum Apply {
    Decide {
        gate_id: GateId,
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
pub(super) enum Next {
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
pub(super) struct Feeder {
    recording: Recording,
    next: usize,
    slots: SlotCounter,
    /// The replay's open gates by slot, with their ids.
    open: HashMap<GateSlot, GateId>,
    /// The replay's client-side calls without a result.
    client_waiting: HashSet<String>,
    /// Compared records the replay wrote.
    count: u64,
    /// The seq of the replay's last record seen.
    pub(super) seen_seq: u64,
}

impl Feeder {
    pub(super) fn new(recording: Recording) -> Feeder {
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
    pub(super) fn observe(&mut self, e: &SessionEvent) -> std::result::Result<(), String> {
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
                let slot = self.slots.next(*turn, *kind, *point, call_id);
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
                        self.open.insert(slot, *gate_id);
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
    pub(super) fn holds_open(&self) -> bool {
        !self.open.is_empty() || !self.client_waiting.is_empty()
    }

    /// What to do next. `stuck`: the replay wrote everything it will write
    /// until it gets a decision or a tool result.
    pub(super) fn next(&self, stuck: bool) -> Next {
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
                gate_id: *gate_id,
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

    pub(super) fn applied(&mut self) {
        self.next += 1;
    }
}
