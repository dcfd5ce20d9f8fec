//! The broker seams: where queue triggers read ([`QueueSource`]) and where
//! `emit` steps publish ([`QueueSink`]). Redis Streams implements both
//! (in `queue.rs`); another broker is one more implementation.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::error::Result;

/// One message of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    pub id: String,
    pub fields: BTreeMap<String, String>,
}

/// Where a queue trigger reads messages.
pub trait QueueSource: Send {
    /// The next messages: first those delivered before and not
    /// acknowledged, then new ones (waiting up to `block` for them).
    fn fetch(&mut self, max: usize, block: Duration) -> BoxFuture<'_, Result<Vec<QueueMessage>>>;
    /// The message's run is durably started: the broker may forget it.
    fn ack<'a>(&'a mut self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Keep a message no run can be started for, with the reason.
    fn dead_letter<'a>(
        &'a mut self,
        msg: &'a QueueMessage,
        error: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
    /// Read the unacknowledged messages again from the first (after
    /// backpressure or an error).
    fn rewind(&mut self);
}

/// Where an `emit` step publishes.
pub trait QueueSink: Send + Sync {
    /// Publish `payload` with `key` (the run and step, for consumers to
    /// recognise a message sent twice); the broker's message id.
    fn publish<'a>(&'a self, payload: &'a Value, key: &'a str) -> BoxFuture<'a, Result<String>>;
}
