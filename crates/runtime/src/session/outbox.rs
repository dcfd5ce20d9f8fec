//! The outbox: records on their way to disk, events on their way to clients.
//!
//! A record is *staged* (applied to the state, seq assigned), then handed
//! to the writer as part of a batch (*pending*), then *released* once the
//! writer says it is durable: only then do subscribers see its event and do
//! requests waiting for it get their answer. The writer is FIFO, so a later
//! acknowledgement implies every earlier write is done.
//!
//! Model output is the exception: its text streams to subscribers as it
//! comes (*fragments*), while the journal keeps it as one `OutputDelta`
//! record per stretch of output ([`LiveText`], closed every
//! `sessions.output_record_ms` or `output_record_bytes`). Fragments carry
//! the seq their record will have, and stay in order with the records
//! around them. A subscriber gets each such record either as the fragments
//! it was streamed as, or (when it joined mid-stretch) whole.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use baton_types::{GateRecord, SessionEvent};
use ractor::RpcReplyPort;
use tokio::sync::mpsc;

use crate::error::Result;

/// A registration for live events, plus the history range the caller must
/// read from the journal first: `(history_after, history_upto]`.
pub struct Subscription {
    pub(crate) history_after: u64,
    pub(crate) history_upto: u64,
    pub(crate) rx: mpsc::Receiver<Queued>,
    pub(crate) lagged: Arc<AtomicBool>,
    /// Bytes of the events queued on `rx` (the reader takes off what it reads).
    pub(crate) queued_bytes: Arc<AtomicUsize>,
    /// Set for a `send`: the stream ends after this turn's last event.
    pub(crate) turn: Option<u64>,
}

/// An event on its way to a subscriber's stream.
pub(crate) struct Queued {
    pub event: SessionEvent,
    /// A fragment of an output record (sharing its seq with the fragments
    /// before it).
    pub fragment: bool,
    /// What it counts against the subscriber's byte limit.
    pub bytes: usize,
}

struct Subscriber {
    tx: mpsc::Sender<Queued>,
    turn: Option<u64>,
    lagged: Arc<AtomicBool>,
    queued_bytes: Arc<AtomicUsize>,
    /// Output records from this seq on reach it as fragments; earlier ones
    /// (streamed before it joined) whole.
    fragments_from: u64,
}

/// Model output streamed live and not yet journaled: it becomes the
/// `OutputDelta` record at `seq` (the next seq) when it is closed.
pub(crate) struct LiveText {
    pub turn: u64,
    pub attempt: u32,
    pub seq: u64,
    pub text: String,
}

/// A record or a fragment on its way to the subscribers.
enum Pending {
    /// A record; `live` when its text was streamed as fragments; `bytes`
    /// as journaled.
    Record {
        event: SessionEvent,
        live: bool,
        bytes: usize,
    },
    Fragment(SessionEvent),
}

/// What [`Outbox::release`] hands back, in order.
pub(crate) enum Released {
    Record {
        event: SessionEvent,
        live: bool,
        bytes: usize,
    },
    Fragment(SessionEvent),
}

/// Staged, pending and released records, the subscribers, and the replies
/// that wait for a record to be durable.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Records applied to the state but not yet handed to the writer.
    pub staged: Vec<SessionEvent>,
    /// Seqs of the staged records whose text was streamed as fragments.
    pub staged_live: Vec<u64>,
    /// Output streamed but not yet staged as a record.
    pub live: Option<LiveText>,
    /// Records handed to the writer, not yet durable, and the fragments
    /// behind them; released in order.
    pending: VecDeque<Pending>,
    /// Seq of the last released (durable) event.
    pub released_seq: u64,
    subscribers: Vec<Subscriber>,
    /// Most bytes of events queued for one subscriber.
    max_bytes: usize,
    /// Replies sent once the record at that seq is durable.
    acks: Vec<(u64, RpcReplyPort<Result<u64>>)>,
    gate_acks: Vec<(u64, GateRecord, RpcReplyPort<Result<GateRecord>>)>,
}

impl Outbox {
    /// Register a subscriber; `next_seq` is the seq the next record staged
    /// will have. Live events arrive on a channel of `buffer` events and
    /// `max_bytes` bytes; one that falls further behind is cut (and told so).
    pub fn subscribe(
        &mut self,
        (buffer, max_bytes): (usize, usize),
        turn: Option<u64>,
        next_seq: u64,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(buffer);
        self.max_bytes = max_bytes;
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let lagged = Arc::new(AtomicBool::new(false));
        // Output already streaming reaches it whole, as its record.
        let fragments_from = match &self.live {
            Some(l) => l.seq + 1,
            None => next_seq,
        };
        self.subscribers.push(Subscriber {
            tx,
            turn,
            lagged: lagged.clone(),
            queued_bytes: queued_bytes.clone(),
            fragments_from,
        });
        Subscription {
            history_after: self.released_seq,
            history_upto: self.released_seq,
            rx,
            lagged,
            queued_bytes,
            turn,
        }
    }

    /// Move the staged records to pending, showing each to `write` (which
    /// adds it to the batch and says how many bytes it wrote) on the way.
    pub fn hand_over(&mut self, mut write: impl FnMut(&SessionEvent) -> usize) {
        for event in self.staged.drain(..) {
            let bytes = write(&event);
            let live = self.staged_live.contains(&event.seq);
            self.pending
                .push_back(Pending::Record { event, live, bytes });
        }
        self.staged_live.clear();
    }

    /// Drop what is staged (nothing may be written).
    pub fn drop_staged(&mut self) {
        self.staged.clear();
        self.staged_live.clear();
        self.live = None;
    }

    /// Stream a fragment of the output record at `event.seq`: now, or
    /// after the records still ahead of it are released.
    pub fn fragment(&mut self, event: SessionEvent) {
        if self.pending.is_empty() {
            self.deliver_fragment(&event);
        } else {
            self.pending.push_back(Pending::Fragment(event));
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
    pub fn release(&mut self, upto: u64) -> Vec<Released> {
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
        while let Some(p) = self.pending.front() {
            if matches!(p, Pending::Record { event, .. } if event.seq > upto) {
                break;
            }
            match self.pending.pop_front() {
                Some(Pending::Record { event, live, bytes }) => {
                    self.released_seq = event.seq;
                    released.push(Released::Record { event, live, bytes });
                }
                Some(Pending::Fragment(event)) => released.push(Released::Fragment(event)),
                None => break,
            }
        }
        released
    }

    /// Send a released record (`bytes` as journaled) to the subscribers
    /// that want it (a `live` one only to those that did not get its
    /// fragments).
    pub fn deliver(&mut self, event: &SessionEvent, live: bool, bytes: usize) {
        self.send(event, false, bytes, |s| {
            !live || event.seq < s.fragments_from
        });
    }

    /// Send a fragment (counted as its text) to the subscribers that
    /// stream its record's text.
    pub fn deliver_fragment(&mut self, event: &SessionEvent) {
        let bytes = match &event.kind {
            baton_types::EventKind::OutputDelta { text, .. } => text.len(),
            _ => 0,
        };
        self.send(event, true, bytes, |s| event.seq >= s.fragments_from);
    }

    fn send(
        &mut self,
        event: &SessionEvent,
        fragment: bool,
        bytes: usize,
        wants: impl Fn(&Subscriber) -> bool,
    ) {
        let max_bytes = self.max_bytes;
        self.subscribers.retain(|s| {
            if !wants(s) || s.turn.is_some_and(|t| event.turn() != Some(t)) {
                return !s.tx.is_closed();
            }
            // Over its byte limit: cut, as when over its count (a single
            // event larger than the limit still goes to an empty queue).
            let queued = s.queued_bytes.load(Ordering::Relaxed);
            if queued > 0 && queued + bytes > max_bytes {
                s.lagged.store(true, Ordering::Relaxed);
                return false;
            }
            s.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            let item = Queued {
                event: event.clone(),
                fragment,
                bytes,
            };
            match s.tx.try_send(item) {
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
            && self.live.is_none()
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
        self.live = None;
    }
}
