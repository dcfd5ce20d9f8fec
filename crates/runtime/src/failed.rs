//! Moving a session to `failed` for good, durably: used by supervision
//! (too many restarts) and by a session whose journal cannot be read.

use baton_store::{Batch, SessionMeta, Store};
use baton_types::{EventKind, SessionId, SessionStatus, now_unix_ms};

/// Durably move a session to `failed`, with a `SessionFailed` record, once
/// every write its dead actor queued has landed (so the record follows them).
pub(crate) async fn mark_failed(
    store: &Store,
    privacy: &crate::privacy::PrivacyConfig,
    id: SessionId,
    reason: String,
) -> baton_store::Result<()> {
    store.barrier().await?;
    let Some(mut meta) = store.load_meta(id).await? else {
        return Ok(());
    };
    let seal = crate::privacy::existing_seal_key(store, privacy, &meta.tenant, id, &meta.metadata)
        .map_err(|e| baton_store::Error::Keys(e.to_string()))?;
    write_failed(store, seal, id, &mut meta, reason)
        .await
        .map(|_| ())
}

/// Append `SessionFailed` after the journal's last record (read from keys
/// only, so it works on an undecodable journal) and move the session's
/// status to `failed`, in one batch. Returns the new record's seq.
pub(crate) async fn write_failed(
    store: &Store,
    seal: Option<std::sync::Arc<baton_store::seal::SealKey>>,
    id: SessionId,
    meta: &mut SessionMeta,
    reason: String,
) -> baton_store::Result<u64> {
    let seq = store.last_seq(id).await? + 1;
    let prev = meta.status;
    meta.status = SessionStatus::Failed;
    meta.status_reason = reason.clone();
    meta.updated_at_unix_ms = now_unix_ms();
    let mut batch = Batch::new();
    batch.seal_with(seal);
    batch.append(
        &id,
        seq,
        now_unix_ms(),
        &EventKind::SessionFailed { reason },
    );
    batch.put_meta(&id, meta, Some(prev));
    store.write(batch).await?;
    Ok(seq)
}
