//! [`Batch`]: the writes of one atomic group (journal records and their
//! payloads, metadata and its indexes, snapshots, spend, keys), sealed
//! under a subject key when one is set.

use std::sync::Arc;

use baton_types::{EventKind, SessionId, SessionStatus};

use crate::codec::{self, SessionMeta};
use crate::engine::Op;
use crate::{
    CF_INDEXES, CF_JOURNAL, CF_PAYLOADS, CF_SESSIONS, CF_SNAPSHOTS, PAYLOAD_INLINE_LIMIT, keys,
    seal, seal_aad,
};

/// A set of writes applied atomically (one RocksDB `WriteBatch` — possibly
/// merged with other batches into one group commit).
#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
    /// When false the batch is written to the WAL without waiting for an fsync
    /// even in `sync` mode (provisional data such as output deltas).
    pub(crate) sync: bool,
    /// Journal records, payloads, snapshots and gate records added while
    /// set are sealed under this subject key.
    seal: Option<Arc<seal::SealKey>>,
    /// What the batch named to the fence so far ([`Op::Owned`]): session
    /// ids, and run owner keys ([`crate::runs::owner_key`]).
    owned: Vec<Vec<u8>>,
}

impl Batch {
    /// A batch that must be durable before it is acknowledged.
    pub fn new() -> Self {
        Self {
            ops: Vec::new(),
            sync: true,
            seal: None,
            owned: Vec::new(),
        }
    }

    /// Seal the session content added from now on under `key` (none:
    /// stored as is).
    pub fn seal_with(&mut self, key: Option<Arc<seal::SealKey>>) -> &mut Self {
        self.seal = key;
        self
    }

    /// `value`, sealed when the batch seals, bound to where it is stored.
    pub(crate) fn sealed(&self, cf: &str, key: &[u8], value: Vec<u8>) -> Vec<u8> {
        match &self.seal {
            Some(k) => k.seal(&seal_aad(cf, key), &value),
            None => value,
        }
    }

    /// The batch writes `session`: where nodes own sessions one by one,
    /// it lands only if this node owns it ([`Op::Owned`]). Named once.
    pub(crate) fn own(&mut self, session: &SessionId) {
        self.own_key(session.as_bytes());
    }

    /// The batch writes what `key` names (a session id, or a run's owner
    /// key). Named once.
    pub(crate) fn own_key(&mut self, key: &[u8]) {
        if !self.owned.iter().any(|k| k == key) {
            self.owned.push(key.to_vec());
            self.ops.push(Op::Owned {
                session: key.to_vec(),
            });
        }
    }

    /// A batch acknowledged once it is in the WAL (no fsync of its own).
    pub fn unsynced() -> Self {
        Self {
            sync: false,
            ..Self::new()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn is_sync(&self) -> bool {
        self.sync
    }

    /// Append journal record `seq` of `session`; the bytes of its value
    /// (and out-of-line payload) as written.
    pub fn append(
        &mut self,
        session: &SessionId,
        seq: u64,
        at_unix_ms: u64,
        kind: &EventKind,
    ) -> usize {
        self.own(session);
        let enc = codec::encode_record(session, seq, at_unix_ms, kind, PAYLOAD_INLINE_LIMIT);
        let mut bytes = 0;
        if let Some((key, value)) = enc.payload {
            let value = self.sealed(CF_PAYLOADS, &key, value);
            bytes += value.len();
            self.ops.push(Op::Put {
                cf: CF_PAYLOADS,
                key,
                value,
            });
        }
        let key = keys::journal_key(session, seq).to_vec();
        let value = self.sealed(CF_JOURNAL, &key, enc.record);
        bytes += value.len();
        self.ops.push(Op::Put {
            cf: CF_JOURNAL,
            key,
            value,
        });
        bytes
    }

    /// Write the session's metadata, moving its status index entry from
    /// `previous` (if any) to the new status.
    pub fn put_meta(
        &mut self,
        session: &SessionId,
        meta: &SessionMeta,
        previous: Option<SessionStatus>,
    ) {
        self.own(session);
        if let Some(prev) = previous
            && prev != meta.status
        {
            self.ops.push(Op::Delete {
                cf: CF_INDEXES,
                key: keys::status_index_key(prev, session).to_vec(),
            });
        }
        if previous.is_none() {
            self.ops.push(Op::Put {
                cf: CF_INDEXES,
                key: keys::tenant_index_key(&meta.tenant, session),
                value: Vec::new(),
            });
        }
        if previous != Some(meta.status) {
            self.ops.push(Op::Put {
                cf: CF_INDEXES,
                key: keys::status_index_key(meta.status, session).to_vec(),
                value: Vec::new(),
            });
        }
        self.ops.push(Op::Put {
            cf: CF_SESSIONS,
            key: session.as_bytes().to_vec(),
            value: codec::encode_meta(meta),
        });
    }

    /// Map an idempotency key to a session.
    /// The journal records of `session` up to `seq` must reach the audit
    /// trail (written with those records, so a crash cannot separate them).
    pub fn put_audit_pending(&mut self, session: &SessionId, seq: u64) {
        self.own(session);
        self.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::audit_key(b'p', session),
            value: seq.to_be_bytes().to_vec(),
        });
    }

    /// The audit trail holds `session`'s records up to `seq`.
    ///
    /// Names no session for the owners' fence: the node confirming is the
    /// one whose audit trail took the records, often after the session
    /// passivated and was released. A cursor is only ever behind the
    /// journal, so a stale one appends records again (`"recovered"`,
    /// at least once) and loses none; the node's lease still fences it.
    pub fn put_audit_done(&mut self, session: &SessionId, seq: u64) {
        self.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::audit_key(b'u', session),
            value: seq.to_be_bytes().to_vec(),
        });
    }

    /// An audit record no journal holds (an embeddings call): kept with the
    /// write it belongs to until the audit trail confirms it, so that a
    /// crash before then appends it again at the next start.
    ///
    /// `id` is the call's, which no node claims: it names nothing for the
    /// owners' fence (the node's lease still fences it).
    pub fn put_audit_record(&mut self, id: &SessionId, record: Vec<u8>) {
        self.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::audit_key(b'q', id),
            value: record,
        });
    }

    /// The audit trail holds the record now.
    pub fn delete_audit_record(&mut self, id: &SessionId) {
        self.push(Op::Delete {
            cf: CF_INDEXES,
            key: keys::audit_key(b'q', id),
        });
    }

    /// Record node `node`'s own part of `route`'s spend in USD, where
    /// several nodes serve at once (`cluster.ownership = "sessions"`):
    /// each writes its own key, and [`crate::Store::route_spends`] adds
    /// them up, so that no node overwrites another's total.
    pub fn put_node_route_spend(&mut self, route: &str, node: &str, total_usd: f64) {
        self.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::route_spend_key(route, Some(node)),
            value: total_usd.to_be_bytes().to_vec(),
        });
    }

    /// Record node `node`'s own part of `tenant`'s spend in `period` (what
    /// it added), where several nodes serve at once: each node reads the
    /// others' parts to check a tenant's budget against the cluster's
    /// spend ([`crate::Store::tenant_node_spends`]).
    pub fn put_tenant_node_spend(&mut self, period: &str, tenant: &str, node: &str, usd: f64) {
        self.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::tenant_node_spend_key(period, tenant, node),
            value: usd.to_be_bytes().to_vec(),
        });
    }

    /// Record node `node`'s token use in the last minute under `meter` and
    /// `key`, counted at `at_unix_ms` ([`crate::Store::node_tokens`]);
    /// none: the key is dropped.
    pub fn put_node_tokens(
        &mut self,
        node: &str,
        meter: u8,
        key: &str,
        tokens: u64,
        at_unix_ms: u64,
    ) {
        let k = keys::node_tokens_key(node, meter, key);
        if tokens == 0 {
            self.push(Op::Delete {
                cf: CF_INDEXES,
                key: k,
            });
            return;
        }
        let mut value = tokens.to_be_bytes().to_vec();
        value.extend_from_slice(&at_unix_ms.to_be_bytes());
        self.push(Op::Put {
            cf: CF_INDEXES,
            key: k,
            value,
        });
    }

    /// Drop node `node`'s part of `route`'s spend (folded into the total).
    pub fn delete_node_route_spend(&mut self, route: &str, node: &str) {
        self.push(Op::Delete {
            cf: CF_INDEXES,
            key: keys::route_spend_key(route, Some(node)),
        });
    }

    /// Record `route`'s total spend in USD (route budgets survive restarts).
    pub fn put_route_spend(&mut self, route: &str, total_usd: f64) {
        self.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::route_spend_key(route, None),
            value: total_usd.to_be_bytes().to_vec(),
        });
    }

    pub fn put_idempotency(&mut self, key: &str, session: &SessionId) {
        self.own(session);
        self.ops.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::idempotency_key(key),
            value: session.as_bytes().to_vec(),
        });
    }

    /// Store a snapshot of a session's state as of `seq`.
    pub fn put_snapshot(&mut self, session: &SessionId, encoded: Vec<u8>) {
        self.own(session);
        let key = session.as_bytes().to_vec();
        let value = self.sealed(CF_SNAPSHOTS, &key, encoded);
        self.ops.push(Op::Put {
            cf: CF_SNAPSHOTS,
            key,
            value,
        });
    }

    /// Drop a session's snapshot: its next load folds the whole journal
    /// (benchmarks, and a snapshot an operator no longer trusts).
    pub fn delete_snapshot(&mut self, session: &SessionId) {
        self.own(session);
        self.ops.push(Op::Delete {
            cf: CF_SNAPSHOTS,
            key: session.as_bytes().to_vec(),
        });
    }

    /// `session`'s journal is being copied in pages: its records come
    /// before its metadata. Written with the first page.
    pub fn put_copying(&mut self, session: &SessionId) {
        self.own(session);
        self.ops.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::copy_key(session),
            value: Vec::new(),
        });
    }

    /// The copy is whole: written with the session's metadata.
    pub fn delete_copying(&mut self, session: &SessionId) {
        self.own(session);
        self.ops.push(Op::Delete {
            cf: CF_INDEXES,
            key: keys::copy_key(session),
        });
    }

    /// Drop what a copy that did not finish wrote: `session`'s journal and
    /// payload records and its mark (it has no metadata or index entries).
    pub fn drop_copy(&mut self, session: &SessionId) {
        self.own(session);
        let from = keys::journal_key(session, 0).to_vec();
        let to = keys::journal_key(session, u64::MAX).to_vec();
        for cf in [CF_JOURNAL, CF_PAYLOADS] {
            self.ops.push(Op::DeleteRange {
                cf,
                from: from.clone(),
                to: to.clone(),
            });
        }
        self.delete_copying(session);
    }

    /// Remove every trace of a session.
    pub fn delete_session(&mut self, session: &SessionId, meta: &SessionMeta) {
        self.own(session);
        let from = keys::journal_key(session, 0).to_vec();
        let to = keys::journal_key(session, u64::MAX).to_vec();
        for cf in [CF_JOURNAL, CF_PAYLOADS] {
            self.ops.push(Op::DeleteRange {
                cf,
                from: from.clone(),
                to: to.clone(),
            });
        }
        self.ops.push(Op::Delete {
            cf: CF_SESSIONS,
            key: session.as_bytes().to_vec(),
        });
        self.ops.push(Op::Delete {
            cf: CF_SNAPSHOTS,
            key: session.as_bytes().to_vec(),
        });
        self.ops.push(Op::Delete {
            cf: CF_INDEXES,
            key: keys::status_index_key(meta.status, session).to_vec(),
        });
        self.ops.push(Op::Delete {
            cf: CF_INDEXES,
            key: keys::tenant_index_key(&meta.tenant, session),
        });
        if let Some(k) = &meta.idempotency_key {
            self.ops.push(Op::Delete {
                cf: CF_INDEXES,
                key: keys::idempotency_key(k),
            });
        }
        for which in [b'p', b'u'] {
            self.ops.push(Op::Delete {
                cf: CF_INDEXES,
                key: keys::audit_key(which, session),
            });
        }
    }

    /// Record `session`'s total spend in `period` for its tenant (written
    /// with the record that priced it).
    ///
    /// Names nothing for the owners' fence itself: a session's spend goes
    /// with its journal record, which names the session, and an embeddings
    /// call's id (its "session" here) is nobody's to claim.
    pub fn put_tenant_spend(
        &mut self,
        tenant: &str,
        period: &str,
        session: &SessionId,
        total_usd: f64,
    ) {
        self.ops.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::tenant_spend_key(tenant, period, session),
            value: total_usd.to_be_bytes().to_vec(),
        });
    }

    /// Store an API key record (JSON) under its key id.
    pub fn put_api_key(&mut self, id: &str, record: Vec<u8>) {
        self.ops.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::api_key_key(id),
            value: record,
        });
    }

    /// A raw operation (tests and tools).
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }
}
