//! Gate records and their indexes.
//!
//! The journal of the gate's session is the truth; the `gates` column family
//! holds each gate's current state, written in the same batch as the journal
//! record that changes it, so that gates can be listed and found by id
//! without reading any journal. Index keys (in `indexes`):
//!
//! | key | for |
//! |---|---|
//! | `gp` ++ gate id | pending gates, oldest first |
//! | `gd` ++ gate id | decided gates |
//! | `gs` ++ session id ++ gate id | a session's gates |
//! | `gP` ++ policy ++ 0 ++ status ++ gate id | gates by policy and status |
//! | `gQ` ++ policy ++ 0 ++ gate id | gates by policy |
//! | `gt` ++ deadline (u64 BE) ++ gate id | deadlines of pending gates |
//! | `gu` ++ tenant ++ 0 ++ deadline ++ gate id | a tenant's pending gates with a deadline |
//! | `gv` ++ tenant ++ 0 ++ gate id | a tenant's pending gates without one |
//! | `gw` ++ tenant ++ 0 ++ group ++ 0 ++ deadline ++ gate id | the same for one reviewer group |
//! | `gx` ++ tenant ++ 0 ++ group ++ 0 ++ gate id | |
//!
//! The last four serve a reviewer's or an operator's queue from its own
//! entries, however many gates other groups and tenants have pending.

use baton_proto::journal::v1 as pb;
use baton_types::{
    Decision, GateId, GateKind, GateOutcome, GatePoint, GateRecord, GateStatus, SessionId,
    TimeoutAction,
};
use prost::Message as _;

use crate::engine::{Dir, Engine, Op, Seek};
use crate::{Batch, CF_GATES, CF_INDEXES, Error, Result};

/// The status byte in index keys and records, and the status index prefix.
fn status_byte(s: GateStatus) -> u8 {
    match s {
        GateStatus::Pending => 1,
        GateStatus::Decided => 2,
    }
}

fn status_prefix(s: GateStatus) -> &'static [u8] {
    match s {
        GateStatus::Pending => b"gp",
        GateStatus::Decided => b"gd",
    }
}

const GATE_VERSION: u32 = 1;

pub(crate) fn encode(r: &GateRecord) -> Vec<u8> {
    let o = r.outcome.as_ref();
    pb::GateRecord {
        version: GATE_VERSION,
        session_id: r.session.as_bytes().to_vec(),
        turn: r.turn,
        status: status_byte(r.status()) as u32,
        kind: r.kind.as_str().into(),
        point: r.point.as_str().into(),
        policy: r.policy.clone(),
        reason: r.reason.clone(),
        reviewers: r.reviewers.clone(),
        subject: r.subject.clone(),
        call_id: r.call_id.clone(),
        opened_at_unix_ms: r.opened_at_unix_ms,
        deadline_unix_ms: r.deadline_unix_ms,
        on_timeout: r.on_timeout.as_str().into(),
        decision: o.map(|o| o.decision.as_str().into()).unwrap_or_default(),
        reviewer: o.map(|o| o.reviewer.clone()).unwrap_or_default(),
        decision_reason: o.map(|o| o.reason.clone()).unwrap_or_default(),
        edited: o.map(|o| o.edited.clone()).unwrap_or_default(),
        decided_at_unix_ms: o.map(|o| o.decided_at_unix_ms).unwrap_or_default(),
        by_timeout: o.is_some_and(|o| o.by_timeout),
        escalations: r.escalations,
        tenant: r.tenant.clone(),
    }
    .encode_to_vec()
}

pub(crate) fn decode(gate_id: GateId, bytes: &[u8]) -> Result<GateRecord> {
    let corrupt = |reason: String| Error::CorruptGate {
        gate: gate_id.to_string(),
        reason,
    };
    let g = pb::GateRecord::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    if g.version != GATE_VERSION {
        return Err(corrupt(format!(
            "unknown gate record version {}",
            g.version
        )));
    }
    let session = crate::keys::session_from_slice(&g.session_id)
        .ok_or_else(|| corrupt("bad session id".into()))?;
    let newer =
        |e: baton_types::UnknownValue| corrupt(format!("{e} (written by a newer version?)"));
    let outcome = match g.status {
        1 => None,
        2 => Some(GateOutcome {
            decision: Decision::parse(&g.decision).map_err(newer)?,
            reviewer: g.reviewer,
            reason: g.decision_reason,
            edited: g.edited,
            decided_at_unix_ms: g.decided_at_unix_ms,
            by_timeout: g.by_timeout,
        }),
        s => return Err(corrupt(format!("unknown gate status {s}"))),
    };
    Ok(GateRecord {
        gate_id,
        session,
        turn: g.turn,
        kind: GateKind::parse(&g.kind).map_err(newer)?,
        point: GatePoint::parse(&g.point).map_err(newer)?,
        policy: g.policy,
        reason: g.reason,
        reviewers: g.reviewers,
        subject: g.subject,
        call_id: g.call_id,
        opened_at_unix_ms: g.opened_at_unix_ms,
        deadline_unix_ms: g.deadline_unix_ms,
        on_timeout: TimeoutAction::parse(&g.on_timeout).map_err(newer)?,
        escalations: g.escalations,
        outcome,
        tenant: g.tenant,
    })
}

fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn index_keys(r: &GateRecord) -> Vec<Vec<u8>> {
    let id = r.gate_id.as_bytes();
    let status = r.status();
    let mut keys = vec![
        key(status_prefix(status), &[id]),
        key(b"gs", &[r.session.as_bytes(), id]),
        key(b"gP", &[r.policy.as_bytes(), &[0, status_byte(status)], id]),
        key(b"gQ", &[r.policy.as_bytes(), &[0], id]),
    ];
    if status == GateStatus::Pending && r.deadline_unix_ms > 0 {
        keys.push(key(b"gt", &[&r.deadline_unix_ms.to_be_bytes(), id]));
    }
    if status == GateStatus::Pending && !r.tenant.is_empty() {
        keys.extend(scoped_keys(
            &r.tenant,
            &r.reviewers,
            r.deadline_unix_ms,
            r.gate_id,
        ));
    }
    keys
}

/// Whose queue: everyone's, a tenant's, or one reviewer group's in a
/// tenant (`""`: the gates any reviewer may decide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueScope {
    All,
    Tenant(String),
    Group { tenant: String, group: String },
}

impl QueueScope {
    /// The (deadline, no deadline) index prefixes of the scope.
    fn prefixes(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            QueueScope::All => (b"gt".to_vec(), status_prefix(GateStatus::Pending).to_vec()),
            QueueScope::Tenant(t) => (
                key(b"gu", &[t.as_bytes(), &[0]]),
                key(b"gv", &[t.as_bytes(), &[0]]),
            ),
            QueueScope::Group { tenant, group } => (
                key(b"gw", &[tenant.as_bytes(), &[0], group.as_bytes(), &[0]]),
                key(b"gx", &[tenant.as_bytes(), &[0], group.as_bytes(), &[0]]),
            ),
        }
    }
}

/// The scoped queue entries of a pending gate (tenant and group).
fn scoped_keys(tenant: &str, group: &str, deadline: u64, id: GateId) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(2);
    for scope in [
        QueueScope::Tenant(tenant.to_string()),
        QueueScope::Group {
            tenant: tenant.to_string(),
            group: group.to_string(),
        },
    ] {
        let (due, open) = scope.prefixes();
        out.push(if deadline > 0 {
            key(&due, &[&deadline.to_be_bytes(), id.as_bytes()])
        } else {
            key(&open, &[id.as_bytes()])
        });
    }
    out
}

/// Gate records stored before they carried their tenant have no scoped
/// queue entries: write them once, from the sessions' metadata (marked
/// done in the same write).
pub(crate) fn build_queue_index(
    db: &dyn Engine,
    ring: Option<&crate::seal::Keyring>,
) -> Result<()> {
    if db
        .get(CF_INDEXES, crate::keys::GATE_QUEUE_INDEX_MARKER)?
        .is_some()
    {
        return Ok(());
    }
    let prefix = status_prefix(GateStatus::Pending);
    let mut ops = Vec::new();
    for item in db.walk_prefix(CF_INDEXES, prefix)? {
        let (k, _) = item?;
        if k.len() != prefix.len() + 16 {
            continue;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&k[prefix.len()..]);
        let Some(g) = get_blocking(db, ring, GateId::from_bytes(id))? else {
            continue;
        };
        let tenant = if g.tenant.is_empty() {
            match crate::load_meta_blocking(db, g.session)? {
                Some(m) => m.tenant,
                None => continue,
            }
        } else {
            g.tenant.clone()
        };
        for key in scoped_keys(&tenant, &g.reviewers, g.deadline_unix_ms, g.gate_id) {
            ops.push(Op::Put {
                cf: CF_INDEXES,
                key,
                value: g.session.as_bytes().to_vec(),
            });
        }
    }
    ops.push(Op::Put {
        cf: CF_INDEXES,
        key: crate::keys::GATE_QUEUE_INDEX_MARKER.to_vec(),
        value: Vec::new(),
    });
    db.write(&[&ops], true)
}

impl Batch {
    /// Write a gate's state, moving its index entries from `previous`.
    pub fn put_gate(&mut self, record: &GateRecord, previous: Option<&GateRecord>) {
        self.own(&record.session);
        let new_keys = index_keys(record);
        if let Some(prev) = previous {
            for k in index_keys(prev) {
                if !new_keys.contains(&k) {
                    self.push(Op::Delete {
                        cf: CF_INDEXES,
                        key: k,
                    });
                }
            }
        }
        for k in new_keys {
            self.push(Op::Put {
                cf: CF_INDEXES,
                key: k,
                value: record.session.as_bytes().to_vec(),
            });
        }
        let key = record.gate_id.as_bytes().to_vec();
        let value = self.sealed(CF_GATES, &key, encode(record));
        self.push(Op::Put {
            cf: CF_GATES,
            key,
            value,
        });
    }

    /// Remove a gate and its index entries (when its session is deleted).
    pub fn delete_gate(&mut self, record: &GateRecord) {
        self.own(&record.session);
        for k in index_keys(record) {
            self.push(Op::Delete {
                cf: CF_INDEXES,
                key: k,
            });
        }
        self.push(Op::Delete {
            cf: CF_GATES,
            key: record.gate_id.as_bytes().to_vec(),
        });
    }
}

/// Which gates to list.
#[derive(Debug, Clone, Default)]
pub struct GateFilter {
    pub status: Option<GateStatus>,
    pub session: Option<SessionId>,
    pub policy: Option<String>,
}

/// One page of gates; `P` is where the next page starts (a gate id, or a
/// place in the queue).
#[derive(Debug, Clone)]
pub struct GatePage<P = GateId> {
    pub gates: Vec<GateRecord>,
    /// Pass as `after` for the next page.
    pub next_after: Option<P>,
}

/// A gate record; none when it is absent, or sealed under an erased
/// subject key (an erased subject's gates are gone from every list).
pub(crate) fn get_blocking(
    db: &dyn Engine,
    ring: Option<&crate::seal::Keyring>,
    gate_id: GateId,
) -> Result<Option<GateRecord>> {
    match db.get(CF_GATES, gate_id.as_bytes())? {
        Some(v) => match crate::unseal(ring, CF_GATES, gate_id.as_bytes(), v) {
            Ok(v) => decode(gate_id, &v).map(Some),
            Err(Error::Erased(_)) => Ok(None),
            Err(e) => Err(e),
        },
        None => Ok(None),
    }
}

/// Walk the most selective index from `after`. Every index ends with the
/// gate id and is ordered by it within its prefix (and with no filter, the
/// gates column family itself is keyed by id), so pages are stable.
/// The number of pending gates (keys of the `gp` index; values not read).
pub(crate) fn count_pending_blocking(db: &dyn Engine) -> Result<u64> {
    let prefix = status_prefix(GateStatus::Pending);
    let mut n = 0;
    for item in db.walk_prefix(CF_INDEXES, prefix)? {
        let (k, _) = item?;
        if k.len() == prefix.len() + 16 {
            n += 1;
        }
    }
    Ok(n)
}

pub(crate) fn list_blocking(
    db: &dyn Engine,
    ring: Option<&crate::seal::Keyring>,
    filter: &GateFilter,
    after: Option<GateId>,
    limit: usize,
) -> Result<GatePage> {
    let (cf, prefix): (&'static str, Vec<u8>) = if let Some(s) = &filter.session {
        (CF_INDEXES, key(b"gs", &[s.as_bytes()]))
    } else if let Some(p) = &filter.policy {
        match filter.status {
            Some(st) => (
                CF_INDEXES,
                key(b"gP", &[p.as_bytes(), &[0, status_byte(st)]]),
            ),
            None => (CF_INDEXES, key(b"gQ", &[p.as_bytes(), &[0]])),
        }
    } else {
        match filter.status {
            Some(st) => (CF_INDEXES, status_prefix(st).to_vec()),
            None => (CF_GATES, Vec::new()),
        }
    };
    let start = match after {
        Some(a) => key(&prefix, &[a.as_bytes()]),
        None => prefix.clone(),
    };
    let mut gates = Vec::new();
    let mut more = false;
    for item in db.walk(cf, Seek::At(&start, Dir::Forward))? {
        let (k, _) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        if k.len() != prefix.len() + 16 {
            continue;
        }
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&k[prefix.len()..]);
        let id = GateId::from_bytes(bytes);
        if after.is_some_and(|a| id <= a) {
            continue;
        }
        let Some(g) = get_blocking(db, ring, id)? else {
            continue;
        };
        if filter.status.is_some_and(|s| s != g.status())
            || filter.policy.as_ref().is_some_and(|p| *p != g.policy)
        {
            continue;
        }
        if gates.len() == limit {
            more = true;
            break;
        }
        gates.push(g);
    }
    let next_after = if more {
        gates.last().map(|g| g.gate_id)
    } else {
        None
    };
    Ok(GatePage { gates, next_after })
}

/// Pending gates whose deadline is at or before `now`, oldest deadline first.
pub(crate) fn due_blocking(
    db: &dyn Engine,
    ring: Option<&crate::seal::Keyring>,
    now_unix_ms: u64,
    limit: usize,
) -> Result<Vec<GateRecord>> {
    let mut out = Vec::new();
    for item in db.walk(CF_INDEXES, Seek::At(b"gt", Dir::Forward))? {
        let (k, _) = item?;
        if !k.starts_with(b"gt") || k.len() != 2 + 8 + 16 || out.len() >= limit {
            break;
        }
        let mut deadline = [0u8; 8];
        deadline.copy_from_slice(&k[2..10]);
        if u64::from_be_bytes(deadline) > now_unix_ms {
            break;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&k[10..]);
        if let Some(g) = get_blocking(db, ring, GateId::from_bytes(id))? {
            out.push(g);
        }
    }
    Ok(out)
}

/// A place in the reviewers' queue of pending gates: gates with a deadline
/// first, nearest deadline first (the `gt` index), then gates without one,
/// newest first (the `gp` index backwards; ids are UUID v7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuePos {
    Deadline(u64, GateId),
    Open(GateId),
}

/// Queue order: deadlines first, nearest first; then the others, newest
/// first.
impl Ord for QueuePos {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering::{Greater, Less};
        match (self, other) {
            (QueuePos::Deadline(d, a), QueuePos::Deadline(e, b)) => (d, a).cmp(&(e, b)),
            (QueuePos::Deadline(..), QueuePos::Open(_)) => Less,
            (QueuePos::Open(_), QueuePos::Deadline(..)) => Greater,
            (QueuePos::Open(a), QueuePos::Open(b)) => b.cmp(a),
        }
    }
}

impl PartialOrd for QueuePos {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl QueuePos {
    /// The place of `gate` in the queue.
    pub fn of(gate: &GateRecord) -> QueuePos {
        if gate.deadline_unix_ms > 0 {
            QueuePos::Deadline(gate.deadline_unix_ms, gate.gate_id)
        } else {
            QueuePos::Open(gate.gate_id)
        }
    }

    /// As a page token: `d<deadline>.<id>` or `o<id>`.
    pub fn to_token(self) -> String {
        match self {
            QueuePos::Deadline(d, id) => format!("d{d}.{id}"),
            QueuePos::Open(id) => format!("o{id}"),
        }
    }

    /// A token made by [`QueuePos::to_token`]; none for anything else.
    pub fn parse(token: &str) -> Option<QueuePos> {
        if let Some(rest) = token.strip_prefix('d') {
            let (d, id) = rest.split_once('.')?;
            return Some(QueuePos::Deadline(d.parse().ok()?, id.parse().ok()?));
        }
        Some(QueuePos::Open(token.strip_prefix('o')?.parse().ok()?))
    }
}

/// One page of the queue.
pub type QueuePage = GatePage<QueuePos>;

/// A page of pending gates in queue order after `after`, from the
/// deadline and pending indexes of `scopes` (no sort of the whole queue):
/// each scope's next `limit`, merged. Scopes are disjoint (a gate has one
/// tenant and one group), so no gate comes twice.
pub(crate) fn queue_blocking(
    db: &dyn Engine,
    ring: Option<&crate::seal::Keyring>,
    scopes: &[QueueScope],
    after: Option<QueuePos>,
    limit: usize,
) -> Result<QueuePage> {
    let mut gates = Vec::new();
    let mut more = false;
    for scope in scopes {
        let (due, open) = scope.prefixes();
        let page = queue_in_blocking(db, ring, (&due, &open), after, limit)?;
        more |= page.next_after.is_some();
        gates.extend(page.gates);
    }
    gates.sort_by_key(QueuePos::of);
    if gates.len() > limit {
        gates.truncate(limit);
        more = true;
    }
    let next_after = if more {
        gates.last().map(QueuePos::of)
    } else {
        None
    };
    Ok(QueuePage { gates, next_after })
}

/// The queue read from a deadline index (`due` ++ deadline ++ id, forward)
/// and a pending index (`open` ++ id, backwards, skipping gates with a
/// deadline).
fn queue_in_blocking(
    db: &dyn Engine,
    ring: Option<&crate::seal::Keyring>,
    (due, open): (&[u8], &[u8]),
    after: Option<QueuePos>,
    limit: usize,
) -> Result<QueuePage> {
    let mut gates: Vec<GateRecord> = Vec::new();
    let mut more = false;
    let gate_at = |k: &[u8], at: usize| -> Result<Option<GateRecord>> {
        let mut id = [0u8; 16];
        id.copy_from_slice(&k[at..at + 16]);
        Ok(get_blocking(db, ring, GateId::from_bytes(id))?
            .filter(|g| g.status() == GateStatus::Pending))
    };
    if !matches!(after, Some(QueuePos::Open(_))) {
        let start = match after {
            Some(QueuePos::Deadline(d, id)) => key(due, &[&d.to_be_bytes(), id.as_bytes()]),
            _ => due.to_vec(),
        };
        for item in db.walk(CF_INDEXES, Seek::At(&start, Dir::Forward))? {
            let (k, _) = item?;
            if !k.starts_with(due) {
                break;
            }
            if k.len() != due.len() + 8 + 16 || (after.is_some() && *k == *start) {
                continue;
            }
            let Some(g) = gate_at(&k, due.len() + 8)? else {
                continue;
            };
            if gates.len() == limit {
                more = true;
                break;
            }
            gates.push(g);
        }
    }
    if !more {
        let prefix = open;
        let start = match after {
            Some(QueuePos::Open(id)) => key(prefix, &[id.as_bytes()]),
            _ => key(prefix, &[&[0xff; 17]]),
        };
        for item in db.walk(CF_INDEXES, Seek::At(&start, Dir::Reverse))? {
            let (k, _) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if k.len() != prefix.len() + 16 || *k == *start {
                continue;
            }
            let Some(g) = gate_at(&k, prefix.len())? else {
                continue;
            };
            if g.deadline_unix_ms > 0 {
                continue;
            }
            if gates.len() == limit {
                more = true;
                break;
            }
            gates.push(g);
        }
    }
    let next_after = if more {
        gates.last().map(QueuePos::of)
    } else {
        None
    };
    Ok(QueuePage { gates, next_after })
}
