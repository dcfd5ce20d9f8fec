//! The run index keys (in the store's `run_index` column family):
//!
//! | key | value | for |
//! |---|---|---|
//! | `r/<tenant>\0<run>` | – | listing a tenant's runs, newest last |
//! | `s/<status>/<run>` | flow name | recovery (running), counts, attention |
//! | `t/<wake_at u64 BE><run>` | – | timers of waiting runs |
//! | `i/<tenant>\0<key>` | run | idempotency keys of `StartRun` |
//! | `d/<source>\0<delivery id>` | run | deliveries of triggers (at most one run each) |
//! | `w/<run>` | – | wake-ups asked by nodes that do not run the flows ([`crate::Lead`]) |
//!
//! `<run>` is the run id's 16 bytes; UUIDv7 ids sort by creation time.

use baton_store::Batch;

use crate::record::{RunId, RunMeta, RunStatus};

pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut k = b"r/".to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k
}

pub fn tenant_key(tenant: &str, run: RunId) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.extend_from_slice(&run.bytes());
    k
}

pub fn status_prefix(status: RunStatus) -> Vec<u8> {
    format!("s/{}/", status.as_str()).into_bytes()
}

pub fn status_key(status: RunStatus, run: RunId) -> Vec<u8> {
    let mut k = status_prefix(status);
    k.extend_from_slice(&run.bytes());
    k
}

pub const TIMER_PREFIX: &[u8] = b"t/";

pub fn timer_key(at_unix_ms: u64, run: RunId) -> Vec<u8> {
    let mut k = TIMER_PREFIX.to_vec();
    k.extend_from_slice(&at_unix_ms.to_be_bytes());
    k.extend_from_slice(&run.bytes());
    k
}

pub const WAKE_PREFIX: &[u8] = b"w/";

/// A wake-up of `run` asked through the store: the node running the
/// flows activates the run and deletes the key.
pub fn wake_key(run: RunId) -> Vec<u8> {
    let mut k = WAKE_PREFIX.to_vec();
    k.extend_from_slice(&run.bytes());
    k
}

/// The time and run of a timer key.
pub fn parse_timer_key(k: &[u8]) -> Option<(u64, RunId)> {
    let rest = k.strip_prefix(TIMER_PREFIX)?;
    if rest.len() != 24 {
        return None;
    }
    let mut at = [0u8; 8];
    at.copy_from_slice(&rest[..8]);
    Some((u64::from_be_bytes(at), RunId::from_bytes(&rest[8..])?))
}

pub fn idempotency_key(tenant: &str, key: &str) -> Vec<u8> {
    let mut k = b"i/".to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn delivery_key(source: &str, delivery: &str) -> Vec<u8> {
    let mut k = b"d/".to_vec();
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(delivery.as_bytes());
    k
}

fn timer_of(m: &RunMeta) -> Option<Vec<u8>> {
    (m.status == RunStatus::Waiting && m.wake_at_unix_ms > 0)
        .then(|| timer_key(m.wake_at_unix_ms, m.id))
}

/// The index changes from `before` (none: a new run) to `after`.
pub fn update(batch: &mut Batch, before: Option<&RunMeta>, after: &RunMeta) {
    match before {
        None => {
            batch.put_run_index(tenant_key(&after.tenant, after.id), Vec::new());
            if let Some(key) = &after.idempotency_key {
                batch.put_run_index(
                    idempotency_key(&after.tenant, key),
                    after.id.bytes().to_vec(),
                );
            }
            batch.put_run_index(
                status_key(after.status, after.id),
                after.flow.clone().into_bytes(),
            );
        }
        Some(b) => {
            if b.status != after.status {
                batch.delete_run_index(status_key(b.status, b.id));
                batch.put_run_index(
                    status_key(after.status, after.id),
                    after.flow.clone().into_bytes(),
                );
            }
            let (old, new) = (timer_of(b), timer_of(after));
            if old != new {
                if let Some(k) = old {
                    batch.delete_run_index(k);
                }
                if let Some(k) = new {
                    batch.put_run_index(k, Vec::new());
                }
            }
        }
    }
}
