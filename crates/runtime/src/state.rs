//! A session's state as a fold over its journal.
//!
//! `SessionState::apply` is the only way state changes, both live (the actor
//! applies each record as it creates it) and on recovery (records after the
//! snapshot are applied in order), so the two can never disagree.

use std::collections::{BTreeMap, VecDeque};

use baton_types::{EventKind, Message, SessionId, SessionStatus, Usage};
use serde::{Deserialize, Serialize};

/// The turn whose model call has started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentTurn {
    pub turn: u64,
    /// The last journaled attempt number (`ModelCallStarted.attempt`).
    pub attempt: u32,
    pub endpoint: String,
    /// Whether the model's answer is recorded (the turn then only needs its
    /// completion record).
    pub response_recorded: bool,
    pub usage: Usage,
}

/// Everything a session's actor holds, rebuildable from the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub id: SessionId,
    pub route: String,
    pub system_prompt: String,
    pub created_at_unix_ms: u64,
    /// The conversation: user and assistant messages in turn order.
    pub messages: Vec<Message>,
    /// Highest accepted turn number.
    pub last_turn: u64,
    /// Accepted turns waiting to start, in order.
    pub queued: VecDeque<(u64, Message)>,
    pub current: Option<CurrentTurn>,
    pub usage: Usage,
    pub turns_completed: u64,
    pub turns_failed: u64,
    pub turns_cancelled: u64,
    /// Seq of the last applied record.
    pub last_seq: u64,
    pub failed: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl SessionState {
    pub fn new(id: SessionId) -> Self {
        Self {
            id,
            route: String::new(),
            system_prompt: String::new(),
            created_at_unix_ms: 0,
            messages: Vec::new(),
            last_turn: 0,
            queued: VecDeque::new(),
            current: None,
            usage: Usage::default(),
            turns_completed: 0,
            turns_failed: 0,
            turns_cancelled: 0,
            last_seq: 0,
            failed: None,
            metadata: BTreeMap::new(),
        }
    }

    pub fn status(&self) -> SessionStatus {
        if self.failed.is_some() {
            SessionStatus::Failed
        } else if self.current.is_some() || !self.queued.is_empty() {
            SessionStatus::Running
        } else {
            SessionStatus::Idle
        }
    }

    /// Apply one journal record. Records must come in seq order.
    pub fn apply(&mut self, seq: u64, at_unix_ms: u64, kind: &EventKind) {
        self.last_seq = seq;
        match kind {
            EventKind::SessionStarted {
                route,
                system_prompt,
            } => {
                self.route = route.clone();
                self.system_prompt = system_prompt.clone();
                self.created_at_unix_ms = at_unix_ms;
            }
            EventKind::TurnAccepted { turn, message } => {
                self.last_turn = self.last_turn.max(*turn);
                self.queued.push_back((*turn, message.clone()));
            }
            EventKind::ModelCallStarted {
                turn,
                attempt,
                endpoint,
                ..
            } => match &mut self.current {
                Some(c) if c.turn == *turn => {
                    c.attempt = *attempt;
                    c.endpoint = endpoint.clone();
                }
                _ => {
                    if let Some(pos) = self.queued.iter().position(|(t, _)| t == turn)
                        && let Some((_, message)) = self.queued.remove(pos)
                    {
                        self.messages.push(message);
                    }
                    self.current = Some(CurrentTurn {
                        turn: *turn,
                        attempt: *attempt,
                        endpoint: endpoint.clone(),
                        response_recorded: false,
                        usage: Usage::default(),
                    });
                }
            },
            EventKind::OutputDelta { .. } => {}
            EventKind::AssistantMessage {
                turn,
                message,
                usage,
                ..
            } => {
                self.messages.push(message.clone());
                self.usage.add(*usage);
                if let Some(c) = &mut self.current
                    && c.turn == *turn
                {
                    c.response_recorded = true;
                    c.usage.add(*usage);
                }
            }
            EventKind::TurnCompleted { turn, .. } => {
                self.end_turn(*turn);
                self.turns_completed += 1;
            }
            EventKind::TurnFailed { turn, .. } => {
                self.end_turn(*turn);
                self.turns_failed += 1;
            }
            EventKind::TurnCancelled { turn } => {
                self.end_turn(*turn);
                self.turns_cancelled += 1;
            }
            EventKind::SessionFailed { reason } => {
                self.failed = Some(reason.clone());
            }
        }
    }

    fn end_turn(&mut self, turn: u64) {
        if self.current.as_ref().is_some_and(|c| c.turn == turn) {
            self.current = None;
        } else {
            self.queued.retain(|(t, _)| *t != turn);
        }
    }

    /// The model's input for the current turn: system prompt plus the conversation.
    pub fn model_messages(&self) -> Vec<Message> {
        let mut out = Vec::with_capacity(self.messages.len() + 1);
        if !self.system_prompt.is_empty() {
            out.push(Message::system(self.system_prompt.clone()));
        }
        out.extend(self.messages.iter().cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(kinds: &[EventKind]) -> SessionState {
        let mut s = SessionState::new(SessionId::from_bytes([1; 16]));
        for (i, k) in kinds.iter().enumerate() {
            s.apply(i as u64 + 1, 100, k);
        }
        s
    }

    fn started(turn: u64, attempt: u32) -> EventKind {
        EventKind::ModelCallStarted {
            turn,
            attempt,
            endpoint: "e".into(),
            reason: "turn".into(),
        }
    }

    #[test]
    fn a_full_turn_moves_through_queue_current_and_messages() {
        let s = fold(&[
            EventKind::SessionStarted {
                route: "e".into(),
                system_prompt: "sys".into(),
            },
            EventKind::TurnAccepted {
                turn: 1,
                message: Message::user("a"),
            },
            EventKind::TurnAccepted {
                turn: 2,
                message: Message::user("b"),
            },
        ]);
        assert_eq!(s.status(), SessionStatus::Running);
        assert_eq!(s.queued.len(), 2);
        let mut s2 = s.clone();
        s2.apply(4, 0, &started(1, 1));
        assert_eq!(s2.messages, vec![Message::user("a")]);
        assert_eq!(s2.model_messages()[0], Message::system("sys"));
        s2.apply(
            5,
            0,
            &EventKind::AssistantMessage {
                turn: 1,
                message: Message::assistant("A"),
                usage: Usage {
                    input_tokens: 1,
                    output_tokens: 2,
                },
                endpoint: "e".into(),
                model: "m".into(),
                finish_reason: baton_types::FinishReason::Stop,
                latency_ms: 1,
            },
        );
        assert!(s2.current.as_ref().unwrap().response_recorded);
        s2.apply(
            6,
            0,
            &EventKind::TurnCompleted {
                turn: 1,
                usage: Usage::default(),
            },
        );
        assert!(s2.current.is_none());
        assert_eq!(s2.queued.len(), 1);
        assert_eq!(s2.turns_completed, 1);
        assert_eq!(s2.usage.total(), 3);
        s2.apply(7, 0, &EventKind::TurnCancelled { turn: 2 });
        assert_eq!(s2.status(), SessionStatus::Idle);
        assert_eq!(s2.last_seq, 7);
    }

    #[test]
    fn a_reissued_call_keeps_the_turn_and_bumps_the_attempt() {
        let mut s = fold(&[
            EventKind::SessionStarted {
                route: "e".into(),
                system_prompt: String::new(),
            },
            EventKind::TurnAccepted {
                turn: 1,
                message: Message::user("a"),
            },
            started(1, 1),
        ]);
        s.apply(
            4,
            0,
            &EventKind::ModelCallStarted {
                turn: 1,
                attempt: 2,
                endpoint: "e".into(),
                reason: "recovery".into(),
            },
        );
        assert_eq!(s.messages.len(), 1, "the user message is not added twice");
        assert_eq!(s.current.as_ref().unwrap().attempt, 2);
    }

    #[test]
    fn session_failed_wins_over_everything() {
        let s = fold(&[
            EventKind::TurnAccepted {
                turn: 1,
                message: Message::user("a"),
            },
            EventKind::SessionFailed {
                reason: "bad".into(),
            },
        ]);
        assert_eq!(s.status(), SessionStatus::Failed);
    }
}
