//! Key layouts. All integers are big-endian so that keys sort numerically.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `sessions` | session id (16) | `SessionMeta` (protobuf) |
//! | `journal` | session id (16) ++ seq (8) | `Record` (protobuf) |
//! | `payloads` | session id (16) ++ seq (8) | raw content bytes (UTF-8) |
//! | `indexes` | `s` ++ status (1) ++ session id (16) | empty — sessions by status |
//! | `indexes` | `i` ++ idempotency key | session id (16) |
//! | `indexes` | `t` ++ tenant ++ 0 ++ session id (16) | empty — sessions by tenant |
//! | `indexes` | `k` ++ key id | API key record (JSON) |
//! | `indexes` | `c` ++ session id (16) | empty — a journal being copied (fork) |
//! | `snapshots` | session id (16) | version (1) ++ seq (8) ++ bincode state |

use baton_types::{SessionId, SessionStatus};

pub const STATUS_PREFIX: u8 = b's';
pub const IDEMPOTENCY_PREFIX: u8 = b'i';
/// `indexes` key prefix of a session's audit cursors: `ap` ++ session ->
/// highest seq that must reach the audit trail, `au` ++ session -> highest seq
/// known to be in it.
pub const AUDIT_PREFIX: u8 = b'a';

/// `indexes` key of a session's audit cursor (`p`ending or `u`p to).
pub fn audit_key(which: u8, session: &SessionId) -> Vec<u8> {
    let mut k = vec![AUDIT_PREFIX, which];
    k.extend_from_slice(session.as_bytes());
    k
}

/// `indexes` key prefix of a session whose journal is being copied (a
/// fork of a long journal, written in pages): its records are there, its
/// metadata not yet. What is marked at start-up is a copy a crash cut
/// short, and is dropped.
pub const COPY_PREFIX: u8 = b'c';

/// `indexes` key of a session being copied.
pub fn copy_key(session: &SessionId) -> Vec<u8> {
    let mut k = vec![COPY_PREFIX];
    k.extend_from_slice(session.as_bytes());
    k
}

/// `indexes` key written by [`crate::Store::probe`] (empty value).
pub const PROBE_KEY: &[u8] = b"~probe";

/// `indexes` key prefix of a route's total spend (`b` ++ route name -> f64 BE).
pub const ROUTE_SPEND_PREFIX: u8 = b'b';

/// `indexes` key of `route`'s spend: the one total a lone node keeps, or
/// node `node`'s own part of it (a node id holds no NUL).
pub fn route_spend_key(route: &str, node: Option<&str>) -> Vec<u8> {
    let mut k = vec![ROUTE_SPEND_PREFIX];
    k.extend_from_slice(route.as_bytes());
    if let Some(node) = node {
        k.push(0);
        k.extend_from_slice(node.as_bytes());
    }
    k
}

pub fn journal_key(session: &SessionId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(session.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a journal or payload key into session and seq.
pub fn split_journal_key(key: &[u8]) -> Option<(SessionId, u64)> {
    if key.len() != 24 {
        return None;
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&key[..16]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&key[16..]);
    Some((SessionId::from_bytes(id), u64::from_be_bytes(seq)))
}

pub fn status_byte(status: SessionStatus) -> u8 {
    match status {
        SessionStatus::Idle => 1,
        SessionStatus::Running => 2,
        SessionStatus::Failed => 3,
        SessionStatus::NeedsAttention => 4,
    }
}

pub fn status_from_byte(b: u32) -> Option<SessionStatus> {
    match b {
        1 => Some(SessionStatus::Idle),
        2 => Some(SessionStatus::Running),
        3 => Some(SessionStatus::Failed),
        4 => Some(SessionStatus::NeedsAttention),
        _ => None,
    }
}

pub fn status_index_key(status: SessionStatus, session: &SessionId) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[0] = STATUS_PREFIX;
    k[1] = status_byte(status);
    k[2..].copy_from_slice(session.as_bytes());
    k
}

pub fn status_index_prefix(status: SessionStatus) -> [u8; 2] {
    [STATUS_PREFIX, status_byte(status)]
}

pub fn idempotency_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(IDEMPOTENCY_PREFIX);
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn session_from_slice(b: &[u8]) -> Option<SessionId> {
    let arr: [u8; 16] = b.try_into().ok()?;
    Some(SessionId::from_bytes(arr))
}

/// `indexes` key prefix of the sessions-by-tenant index.
pub const TENANT_PREFIX: u8 = b't';

/// `t` ++ tenant ++ 0: the prefix of one tenant's sessions.
pub fn tenant_index_prefix(tenant: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 2);
    k.push(TENANT_PREFIX);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k
}

pub fn tenant_index_key(tenant: &str, session: &SessionId) -> Vec<u8> {
    let mut k = tenant_index_prefix(tenant);
    k.extend_from_slice(session.as_bytes());
    k
}

/// `indexes` key prefix of tenants' spend: `T` ++ tenant ++ 0 ++ period
/// ++ 0 ++ session id (16) -> that session's spend in the period (f64 BE).
/// One key per session, written by its actor with the priced record, so
/// totals are exact across crashes; a tenant's spend is their sum.
pub const TENANT_SPEND_PREFIX: u8 = b'T';

pub fn tenant_spend_key(tenant: &str, period: &str, session: &SessionId) -> Vec<u8> {
    let mut k = vec![TENANT_SPEND_PREFIX];
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(period.as_bytes());
    k.push(0);
    k.extend_from_slice(session.as_bytes());
    k
}

/// `indexes` key prefix of each node's part of tenants' spend per period,
/// where nodes own sessions one by one: `P` ++ period ++ 0 ++ tenant ++ 0
/// ++ node id -> what that node added to the tenant's spend in the
/// period (f64 BE). The period comes first, so that a node reads every
/// tenant's parts of the current day and month in two short scans.
pub const TENANT_NODE_SPEND_PREFIX: u8 = b'P';

/// The prefix of every node's part of every tenant's spend in `period`.
pub fn tenant_node_spend_prefix(period: &str) -> Vec<u8> {
    let mut k = vec![TENANT_NODE_SPEND_PREFIX];
    k.extend_from_slice(period.as_bytes());
    k.push(0);
    k
}

/// Node `node`'s part of `tenant`'s spend in `period` (a tenant name and
/// a node id hold no NUL).
pub fn tenant_node_spend_key(period: &str, tenant: &str, node: &str) -> Vec<u8> {
    let mut k = tenant_node_spend_prefix(period);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(node.as_bytes());
    k
}

/// `indexes` key prefix of each node's token use in the last minute,
/// where nodes own sessions one by one: `M` ++ node id ++ 0 ++ meter
/// (`t` a tenant's, `p` a key's) ++ meter key -> tokens (u64 BE) and when
/// they were counted (unix ms, u64 BE). Each node writes its own and reads
/// the others', for `tokens_per_minute` across the cluster.
pub const NODE_TOKENS_PREFIX: u8 = b'M';

/// Node `node`'s token use under `meter` and `key`.
pub fn node_tokens_key(node: &str, meter: u8, key: &str) -> Vec<u8> {
    let mut k = vec![NODE_TOKENS_PREFIX];
    k.extend_from_slice(node.as_bytes());
    k.push(0);
    k.push(meter);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `indexes` key prefix of API key records.
pub const API_KEY_PREFIX: u8 = b'k';

pub fn api_key_key(id: &str) -> Vec<u8> {
    let mut k = vec![API_KEY_PREFIX];
    k.extend_from_slice(id.as_bytes());
    k
}

/// `indexes` key marking that the tenant index covers every session
/// (written once, by the first start that built it).
pub const TENANT_INDEX_MARKER: &[u8] = b"~tenant-index-v1";
/// Set once the pending gates' scoped queue entries were written
/// (`gates::build_queue_index`).
pub const GATE_QUEUE_INDEX_MARKER: &[u8] = b"~gate-queue-index-v1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_keys_sort_by_seq_within_a_session() {
        let s = SessionId::new();
        let mut keys: Vec<_> = [300u64, 2, 1 << 40, 1]
            .iter()
            .map(|q| journal_key(&s, *q))
            .collect();
        keys.sort();
        let seqs: Vec<u64> = keys
            .iter()
            .map(|k| split_journal_key(k).unwrap().1)
            .collect();
        assert_eq!(seqs, vec![1, 2, 300, 1 << 40]);
    }
}
