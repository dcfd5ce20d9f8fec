//! Copying a journal into a new session a page at a time (a fork of a
//! long session), so that memory and the size of each write stay bounded
//! whatever the journal's length.
//!
//! The copy is crash-safe without being one write: the first page carries
//! a copy mark ([`Batch::put_copying`]), the records come before the new
//! session's metadata, and the write that adds the metadata removes the
//! mark. A session nobody can see has no metadata; a crash in between
//! leaves records and the mark, and the next start drops both
//! ([`drop_unfinished`]).

use std::sync::Arc;

use baton_store::seal::SealKey;
use baton_store::{Batch, Store};
use baton_types::SessionId;

use crate::audit::{self, AuditSink};
use crate::error::Result;

/// Records read and written a page at a time.
const PAGE: usize = 128;

/// What [`copy_journal`] wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Copied {
    /// The last seq copied (0: nothing).
    pub last_seq: u64,
    /// The highest copied seq that goes to the audit trail.
    pub audited: Option<u64>,
}

/// Copy `src`'s records 1..=`upto` into `dst`'s journal (same seqs and
/// times), a page a write, under the copy mark. On an error what was
/// written is dropped (or, if that fails too, left to the next start).
pub(crate) async fn copy_journal(
    store: &Store,
    src: SessionId,
    upto: u64,
    dst: SessionId,
    seal: Option<Arc<SealKey>>,
) -> Result<Copied> {
    // A caller that goes away mid-copy (a cancelled request) drops this
    // future: the guard drops what was written.
    let mut guard = CopyGuard {
        store: store.clone(),
        dst,
        armed: false,
    };
    let r = async {
        let mut copied = Copied::default();
        while copied.last_seq < upto {
            let page = store
                .read_journal_range(
                    src,
                    copied.last_seq,
                    upto.min(copied.last_seq + PAGE as u64),
                )
                .await?;
            if page.is_empty() {
                // The source lost records while it was copied (deleted,
                // erased): no fork of half a journal.
                return Err(crate::error::Error::FailedPrecondition(format!(
                    "session {src}'s journal ends at seq {} while it was copied up to {upto}: \
                     it was deleted meanwhile",
                    copied.last_seq
                )));
            }
            let mut batch = Batch::unsynced();
            batch.seal_with(seal.clone());
            if copied.last_seq == 0 {
                batch.put_copying(&dst);
            }
            for e in &page {
                batch.append(&dst, e.seq, e.at_unix_ms, &e.kind);
                if audit::is_audited(&e.kind) {
                    copied.audited = Some(e.seq);
                }
                copied.last_seq = e.seq;
            }
            store.write(batch).await?;
            guard.armed = true;
            if copied.last_seq < upto {
                crate::failpoint("fork_between_pages");
            }
        }
        Ok(copied)
    }
    .await;
    guard.armed = false;
    if r.is_err() {
        drop_copy(store, dst).await;
    }
    r
}

/// Drops a copy whose future was dropped part-way (in the background).
struct CopyGuard {
    store: Store,
    dst: SessionId,
    armed: bool,
}

impl Drop for CopyGuard {
    fn drop(&mut self) {
        if self.armed
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (store, dst) = (self.store.clone(), self.dst);
            rt.spawn(async move { drop_copy(&store, dst).await });
        }
    }
}

/// Drop a copy that will not be finished; if that fails, the next start
/// does it.
pub(crate) async fn drop_copy(store: &Store, dst: SessionId) {
    let mut batch = Batch::unsynced();
    batch.drop_copy(&dst);
    if let Err(e) = store.write(batch).await {
        tracing::warn!(session = %dst, error = %e, "cannot drop an unfinished journal copy; the next start drops it");
    }
}

/// At start-up: drop the copies a crash cut short. Returns how many.
pub(crate) async fn drop_unfinished(store: &Store) -> Result<usize> {
    let mut unfinished = store.unfinished_copies().await?;
    if unfinished.is_empty() {
        return Ok(0);
    }
    // Where nodes own sessions one by one, a copy in progress on another
    // live node is that node's: only those this node may claim (a gone
    // node's, or nobody's) are dropped, then given up.
    if store.claims() {
        let mut mine = Vec::new();
        for id in unfinished {
            if let baton_store::owners::Claim::Ours = store.claim(id).await? {
                mine.push(id);
            }
        }
        unfinished = mine;
        if unfinished.is_empty() {
            return Ok(0);
        }
    }
    let mut batch = Batch::new();
    for id in &unfinished {
        batch.drop_copy(id);
        tracing::info!(session = %id, "dropping a journal copy (fork) a crash cut short");
    }
    store.write(batch).await?;
    for id in &unfinished {
        store.release(*id).await?;
    }
    Ok(unfinished.len())
}

/// Report a copied journal (records 1..=`upto` of `dst`, whole and
/// visible now) to the audit trail, a page at a time.
pub(crate) async fn audit_copied(
    store: &Store,
    sink: &dyn AuditSink,
    dst: SessionId,
    upto: u64,
    seal: Option<&SealKey>,
) -> Result<()> {
    let mut after = 0;
    while after < upto {
        let page = store
            .read_journal_range(dst, after, upto.min(after + PAGE as u64))
            .await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        for e in &page {
            audit::record_event(sink, e, false, seal);
        }
        after = last;
    }
    Ok(())
}
