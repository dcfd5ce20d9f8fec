//! The group-commit writer: one dedicated OS thread owns all writes.
//!
//! Callers hand it write requests over a channel and await a oneshot. The
//! thread drains every request waiting at that moment into one RocksDB
//! atomic write of the engine (one RocksDB `WriteBatch` with a single WAL
//! append, one PostgreSQL transaction) — and a single fsync or commit flush
//! when any request in the group asked for durability. Concurrent sessions
//! therefore share fsyncs, and no tokio worker ever blocks on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::engine::{Engine, Op};
use crate::{Durability, Error, Result};

pub(crate) struct WriteReq {
    pub ops: Vec<Op>,
    pub sync: bool,
    pub done: oneshot::Sender<Result<()>>,
    /// When the request was handed to the writer (append latency metric).
    pub queued_at: Instant,
    /// Bytes of its keys and values (the writer's backlog).
    pub bytes: u64,
}

/// Counters of the writer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub groups: AtomicU64,
    pub requests: AtomicU64,
    pub synced_groups: AtomicU64,
    /// Sum of the time spent in synced writes, in microseconds.
    pub synced_write_micros: AtomicU64,
    /// Requests handed to the writer and not yet written, and their bytes.
    pub queued_requests: AtomicU64,
    pub queued_bytes: AtomicU64,
    /// The error of the last write, while writes fail (a full disk, a
    /// failing fsync); cleared by the next write that succeeds.
    pub failing: std::sync::Mutex<Option<String>>,
}

/// A copy of the writer's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStatsSnapshot {
    pub groups: u64,
    pub requests: u64,
    pub synced_groups: u64,
    pub synced_write_micros: u64,
}

impl WriterStats {
    pub fn snapshot(&self) -> WriterStatsSnapshot {
        WriterStatsSnapshot {
            groups: self.groups.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            synced_groups: self.synced_groups.load(Ordering::Relaxed),
            synced_write_micros: self.synced_write_micros.load(Ordering::Relaxed),
        }
    }
}

/// Most requests folded into one group; bounds the latency of the first one.
const MAX_GROUP: usize = 4096;

pub(crate) fn run(
    db: Arc<dyn Engine>,
    rx: std::sync::mpsc::Receiver<WriteReq>,
    durability: Durability,
    stats: Arc<WriterStats>,
) {
    let mut group: Vec<WriteReq> = Vec::with_capacity(64);
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let (result, synced) = write_group(&*db, &group, durability, &stats);
        let results = one_by_one_if_not_owner(&*db, &group, durability, result);
        // A write refused because its session is another node's is that
        // write's error, not the store failing.
        let outcome = results
            .iter()
            .find(|r| r.is_err() && !matches!(r, Err(Error::NotOwner(_))))
            .cloned()
            .unwrap_or(Ok(()));
        note_outcome(&stats, &outcome);
        let m = baton_metrics::metrics();
        m.journal_batch(group.len(), synced);
        for req in &group {
            m.journal_append(req.queued_at.elapsed().as_secs_f64());
        }
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        let bytes: u64 = group.iter().map(|r| r.bytes).sum();
        stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        stats
            .queued_requests
            .fetch_sub(group.len() as u64, Ordering::Relaxed);
        for (req, result) in group.drain(..).zip(results) {
            // The caller may have gone away; its write is done regardless.
            let _ = req.done.send(result);
        }
    }
    tracing::debug!("store writer thread stopped");
}

/// Keep the state of writes: failing from a failed write on, until one
/// succeeds. Logged once each way.
fn note_outcome(stats: &WriterStats, result: &Result<()>) {
    let mut failing = stats
        .failing
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match result {
        Ok(()) => {
            if failing.take().is_some() {
                tracing::info!("the store is written again");
                baton_metrics::metrics().store_write_failing(false);
            }
        }
        Err(e) => {
            if failing.is_none() {
                tracing::error!(error = %e, "the store cannot be written");
                baton_metrics::metrics().store_write_failing(true);
            }
            *failing = Some(e.to_string());
        }
    }
}

/// Each request's result. A group refused because one of its requests
/// named a session this node does not own ([`Error::NotOwner`]) — where
/// nodes own sessions one by one — is written again one request at a
/// time, so that only the requests for sessions owned elsewhere fail.
fn one_by_one_if_not_owner(
    db: &dyn Engine,
    group: &[WriteReq],
    durability: Durability,
    result: Result<()>,
) -> Vec<Result<()>> {
    match result {
        Err(Error::NotOwner(_)) if group.len() > 1 => group
            .iter()
            .map(|r| db.write(&[&r.ops[..]], durability == Durability::Sync && r.sync))
            .collect(),
        result => vec![result; group.len()],
    }
}

fn write_group(
    db: &dyn Engine,
    group: &[WriteReq],
    durability: Durability,
    stats: &WriterStats,
) -> (Result<()>, bool) {
    let sync = durability == Durability::Sync && group.iter().any(|r| r.sync);
    let ops: Vec<&[Op]> = group.iter().map(|r| &r.ops[..]).collect();
    let started = Instant::now();
    let result = db.write(&ops, sync);
    if result.is_ok() && sync {
        stats.synced_groups.fetch_add(1, Ordering::Relaxed);
        stats
            .synced_write_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    let synced = result.is_ok() && sync;
    (result, synced)
}
