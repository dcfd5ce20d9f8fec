//! Resuming sessions with unfinished turns: those of this node's previous
//! process at start, and, where nodes own sessions one by one (`[cluster]
//! ownership = "sessions"`), those of nodes that died or were fenced,
//! taken over while this node runs.
//!
//! Both go the one way a restart always went: the session's actor loads
//! from the journal (claiming the session first where nodes own sessions)
//! and goes on from its last record, so recorded answers are never asked
//! for again and tools that are not idempotent never run twice.

use std::sync::Arc;
use std::time::Duration;

use baton_types::SessionId;
use futures::StreamExt;

use crate::error::Error;
use crate::handle::RuntimeHandle;
use crate::session::SessionMsg;

/// Wake each of `ids` (at most `sessions.recovery_concurrency` at once),
/// wait until its actor loaded, and log `done` with how many resumed here,
/// turned out owned by another node, or failed.
async fn resume(handle: &RuntimeHandle, ids: Vec<SessionId>, done: &'static str) {
    let (n, started) = (ids.len(), std::time::Instant::now());
    let at_once = handle.config().sessions.recovery_concurrency;
    let weak = Arc::downgrade(&handle.inner);
    let outcomes: Vec<Result<(), Error>> = futures::stream::iter(ids)
        .map(|id| {
            let weak = weak.clone();
            async move {
                let Some(inner) = weak.upgrade() else {
                    return Ok(());
                };
                let handle = RuntimeHandle { inner };
                handle.route(id, SessionMsg::Wake)?;
                // Answered once the actor has loaded and taken the wake.
                let r = handle.ask(id, |reply| SessionMsg::Get { reply }).await;
                if let Err(e) = &r
                    && !matches!(e, Error::OwnedElsewhere { .. })
                {
                    tracing::warn!(session = %id, error = %e, "recovery: the session did not resume");
                }
                r.map(|_| ())
            }
        })
        .buffer_unordered(at_once.max(1))
        .collect()
        .await;
    let elsewhere = outcomes
        .iter()
        .filter(|r| matches!(r, Err(Error::OwnedElsewhere { .. })))
        .count();
    let failed = outcomes.iter().filter(|r| r.is_err()).count() - elsewhere;
    tracing::info!(
        sessions = n,
        resumed = n - failed - elsewhere,
        owned_elsewhere = elsewhere,
        failed,
        took_ms = started.elapsed().as_millis() as u64,
        "{done}"
    );
}

/// At start: resume the sessions whose turns were unfinished when this
/// node's previous process stopped.
pub(crate) fn spawn_recovery(handle: &RuntimeHandle, ids: Vec<SessionId>) {
    let n = ids.len();
    tracing::info!(
        sessions = n,
        at_once = handle.config().sessions.recovery_concurrency,
        "resuming sessions with unfinished turns"
    );
    let handle = handle.clone();
    tokio::spawn(async move {
        resume(
            &handle,
            ids,
            "recovery: sessions with unfinished turns resumed",
        )
        .await;
    });
}

/// How many orphaned sessions one round takes over at most.
const TAKEOVER_PAGE: usize = 1024;

/// Where nodes own sessions one by one: every heartbeat, read the API keys
/// again (another node may have created or revoked one), exchange the
/// tenants' spend with the other nodes, and claim and
/// resume the sessions whose owner is gone (its process died, or its lease lapsed
/// and it was fenced). Several survivors may look at once: each session's
/// claim has one winner, and the others find it owned and leave it.
pub(crate) fn spawn_takeover(handle: &RuntimeHandle) {
    let weak = Arc::downgrade(&handle.inner);
    let stop = handle.inner.stop.clone();
    let period = Duration::from_millis(handle.config().cluster.heartbeat_ms.max(10));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let handle = RuntimeHandle { inner };
            let store = handle.inner.shared.store.clone();
            // The other nodes create and revoke API keys too: this node's
            // ring follows the database within a heartbeat.
            if let Err(e) = handle.inner.shared.keys.refresh(&store).await {
                tracing::warn!(error = %e, "cannot read the API keys again");
            }
            // Tenants' budgets hold against the cluster's spend.
            let shared = &handle.inner.shared;
            if let Err(e) = shared.tenant_spend.exchange(&store).await {
                tracing::warn!(error = %e, "cannot exchange the tenants' spend with the other nodes");
            }
            if let Some(base) = &shared.route_base
                && let Err(e) =
                    crate::spend::exchange_route_spend(&store, base, shared.router.budgets()).await
            {
                tracing::warn!(error = %e, "cannot read the other nodes' route spend");
            }
            if let Err(e) = crate::spend::exchange_tokens(
                &store,
                &shared.tenant_tokens,
                &shared.principal_tokens,
            )
            .await
            {
                tracing::warn!(error = %e, "cannot exchange the token use with the other nodes");
            }
            let orphaned = match store.orphaned(TAKEOVER_PAGE).await {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for sessions whose owner is gone");
                    continue;
                }
            };
            // A gone node's claims of idempotency keys it was creating
            // under: taken and given up, so the key is free again (its
            // session, if written, is found by its index entry).
            for k in orphaned
                .iter()
                .filter(|k| baton_store::creations::is_creation_key(k))
            {
                let taken = store.claim_owner_key(k.clone()).await;
                if matches!(taken, Ok(baton_store::owners::Claim::Ours))
                    && let Err(e) = store.release_owner_key(k.clone()).await
                {
                    tracing::warn!(error = %e, "cannot free a gone node's idempotency key claim");
                }
            }
            // Sessions: 16 bytes (a run's key is 17, and runs are the
            // flows' to take over).
            let ids: Vec<SessionId> = orphaned
                .iter()
                .filter_map(|k| <[u8; 16]>::try_from(k.as_slice()).ok())
                .map(SessionId::from_bytes)
                .collect();
            if ids.is_empty() {
                continue;
            }
            resume(
                &handle,
                ids,
                "took over the sessions of a node that is gone",
            )
            .await;
        }
    });
}
