//! The outbox: records on their way to disk, events on their way to clients.
//!
//! A record is *staged* (applied to the state, seq assigned), then handed
//! to the writer as part of a batch (*pending*), then *released* once the
//! writer says it is durable: only then do subscribers see its event and do
//! requests waiting for it get their answer. The writer is FIFO, so a later
//! acknowledgement implies every earlier write is done.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use baton_types::{GateRecord, SessionEvent};
use ractor::RpcReplyPort;
use tokio::sync::mpsc;

use crate::error::Result;

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

/// Staged, pending and released records, the subscribers, and the replies
/// that wait for a record to be durable.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Records applied to the state but not yet handed to the writer.
    pub staged: Vec<SessionEvent>,
    /// Records handed to the writer, not yet durable; released in order.
    pending: VecDeque<SessionEvent>,
    /// Seq of the last released (durable) event.
    pub released_seq: u64,
    subscribers: Vec<Subscriber>,
    /// Replies sent once the record at that seq is durable.
    acks: Vec<(u64, RpcReplyPort<Result<u64>>)>,
    gate_acks: Vec<(u64, GateRecord, RpcReplyPort<Result<GateRecord>>)>,
}

impl Outbox {
    /// Register a subscriber. Live events arrive on a channel of `buffer`
    /// events; one that falls further behind is cut (and told so).
    pub fn subscribe(&mut self, buffer: usize, turn: Option<u64>) -> Subscription {
        let (tx, rx) = mpsc::channel(buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        self.subscribers.push(Subscriber {
            tx,
            turn,
            lagged: lagged.clone(),
        });
        Subscription {
            history_after: self.released_seq,
            history_upto: self.released_seq,
            rx,
            lagged,
            turn,
        }
    }

    /// Move the staged records to pending, showing each to `write` (which
    /// adds it to the batch) on the way.
    pub fn hand_over(&mut self, mut write: impl FnMut(&SessionEvent)) {
        for e in self.staged.drain(..) {
            write(&e);
            self.pending.push_back(e);
        }
    }

    /// Answer `reply` with `seq` once the record at `seq` is durable.
    pub fn ack_at(&mut self, seq: u64, reply: RpcReplyPort<Result<u64>>) {
        self.acks.push((seq, reply));
    }

    /// Answer `reply` with `record` once the record at `seq` is durable.
    pub fn ack_gate_at(
        &mut self,
        seq: u64,
        record: GateRecord,
        reply: RpcReplyPort<Result<GateRecord>>,
    ) {
        self.gate_acks.push((seq, record, reply));
    }

    /// Everything up to `upto` is durable: answer the requests that waited
    /// for it and return the events now released, in order (hand each to
    /// [`Outbox::deliver`] once its side effects are done).
    pub fn release(&mut self, upto: u64) -> Vec<SessionEvent> {
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
        let mut released = Vec::new();
        while self.pending.front().is_some_and(|e| e.seq <= upto) {
            let Some(event) = self.pending.pop_front() else {
                break;
            };
            self.released_seq = event.seq;
            released.push(event);
        }
        released
    }

    /// Send a released event to the subscribers that want it.
    pub fn deliver(&mut self, event: &SessionEvent) {
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

    /// Nothing staged, pending, waiting or listening (subscribers that
    /// went away are dropped first).
    pub fn is_idle(&mut self) -> bool {
        self.subscribers.retain(|s| !s.tx.is_closed());
        self.subscribers.is_empty()
            && self.staged.is_empty()
            && self.pending.is_empty()
            && self.acks.is_empty()
            && self.gate_acks.is_empty()
    }

    /// End every stream once it has read what it holds.
    pub fn close_subscribers(&mut self) {
        self.subscribers.clear();
    }

    /// The session is gone: drop subscribers and what waits to be released.
    pub fn clear(&mut self) {
        self.subscribers.clear();
        self.pending.clear();
    }
}
