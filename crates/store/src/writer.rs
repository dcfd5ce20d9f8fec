//! The group-commit writer: one dedicated OS thread owns all writes.
//!
//! Callers hand it write requests over a channel and await a oneshot. The
//! thread drains every request waiting at that moment into one RocksDB
//! `WriteBatch` and writes it with a single WAL append — and a single fsync
//! when any request in the group asked for durability. Concurrent sessions
//! therefore share fsyncs, and no tokio worker ever blocks on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rocksdb::{DB, WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use crate::{Durability, Error, Result};

/// One operation inside a write request.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        cf: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: &'static str,
        key: Vec<u8>,
    },
    DeleteRange {
        cf: &'static str,
        from: Vec<u8>,
        to: Vec<u8>,
    },
}

impl Op {
    /// Bytes of its keys and value.
    pub fn bytes(&self) -> u64 {
        let n = match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
            Op::DeleteRange { from, to, .. } => from.len() + to.len(),
        };
        n as u64
    }
}

pub(crate) struct WriteReq {
    pub ops: Vec<Op>,
    pub sync: bool,
    /// A synced request whose fsync may wait this long for a later one.
    pub within: Option<std::time::Duration>,
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

/// Synced requests written and waiting for a later fsync to cover them
/// ([`crate::Batch::synced_within`]), and the latest moment to sync them.
#[derive(Default)]
struct Deferred {
    reqs: Vec<WriteReq>,
    due: Option<Instant>,
}

pub(crate) fn run(
    db: Arc<DB>,
    rx: std::sync::mpsc::Receiver<WriteReq>,
    durability: Durability,
    stats: Arc<WriterStats>,
) {
    let mut group: Vec<WriteReq> = Vec::with_capacity(64);
    let mut deferred = Deferred::default();
    loop {
        let first = match deferred.due {
            Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(r) => r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    sync_deferred(&db, &mut deferred, &stats);
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        // A group with a synced request that may not wait is synced, and
        // covers every deferred one; otherwise the deferrable ones are
        // written now and answered when a sync covers them.
        let must_sync =
            durability == Durability::Sync && group.iter().any(|r| r.sync && r.within.is_none());
        let (result, synced) = write_group(&db, &group, must_sync, &stats);
        note_outcome(&stats, &result);
        let m = baton_metrics::metrics();
        m.journal_batch(group.len(), synced);
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        let bytes: u64 = group.iter().map(|r| r.bytes).sum();
        stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        stats
            .queued_requests
            .fetch_sub(group.len() as u64, Ordering::Relaxed);
        if synced || result.is_err() {
            // Durable (or failed) with this group: answered with it.
            group.append(&mut deferred.reqs);
            deferred.due = None;
        }
        for req in group.drain(..) {
            if result.is_ok() && !synced && durability == Durability::Sync && req.sync {
                let due = req.queued_at + req.within.unwrap_or_default();
                deferred.due = Some(deferred.due.map_or(due, |d| d.min(due)));
                deferred.reqs.push(req);
                continue;
            }
            answer(req, &result);
        }
    }
    if !deferred.reqs.is_empty() {
        sync_deferred(&db, &mut deferred, &stats);
    }
    tracing::debug!("store writer thread stopped");
}

/// Answer a request: its write is done (the caller may have gone away).
fn answer(req: WriteReq, result: &Result<()>) {
    baton_metrics::metrics().journal_append(req.queued_at.elapsed().as_secs_f64());
    let _ = req.done.send(result.clone());
}

/// No synced write came to cover the deferred requests in time: sync the
/// WAL for them.
fn sync_deferred(db: &DB, deferred: &mut Deferred, stats: &WriterStats) {
    let started = Instant::now();
    let result = db.flush_wal(true).map_err(Error::from);
    note_outcome(stats, &result);
    if result.is_ok() {
        stats.synced_groups.fetch_add(1, Ordering::Relaxed);
        stats
            .synced_write_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    deferred.due = None;
    for req in deferred.reqs.drain(..) {
        answer(req, &result);
    }
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

fn write_group(db: &DB, group: &[WriteReq], sync: bool, stats: &WriterStats) -> (Result<()>, bool) {
    let mut synced = false;
    let r = write_group_inner(db, group, sync, stats, &mut synced);
    (r, synced)
}

fn write_group_inner(
    db: &DB,
    group: &[WriteReq],
    sync: bool,
    stats: &WriterStats,
    synced: &mut bool,
) -> Result<()> {
    let mut batch = WriteBatch::default();
    for req in group {
        for op in &req.ops {
            match op {
                Op::Put { cf, key, value } => batch.put_cf(cf_handle(db, cf)?, key, value),
                Op::Delete { cf, key } => batch.delete_cf(cf_handle(db, cf)?, key),
                Op::DeleteRange { cf, from, to } => {
                    batch.delete_range_cf(cf_handle(db, cf)?, from, to)
                }
            }
        }
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(sync);
    let started = Instant::now();
    db.write_opt(batch, &opts)?;
    *synced = sync;
    if sync {
        stats.synced_groups.fetch_add(1, Ordering::Relaxed);
        stats
            .synced_write_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    Ok(())
}

pub(crate) fn cf_handle<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| Error::Rocks(format!("column family {name} is missing")))
}
