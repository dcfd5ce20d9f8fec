//! The storage contract: what the store needs of a database.
//!
//! Everything Baton keeps (journals, payloads, session metadata and its
//! indexes, gates, snapshots, spend, API keys, flow runs) is laid out by
//! this crate as ordered keys in a few named key spaces ([`crate::keys`],
//! [`crate::gates`], [`crate::runs`]). A database behind the store only has
//! to keep those key spaces: read one key, walk keys in byte order from a
//! point either way, and apply a group of writes atomically — durably when
//! asked. Every index, page and recovery rule is then one code path, the
//! same on every backend:
//!
//! - [`crate::rocks`]: RocksDB, embedded (the default): a key space is a
//!   column family, a group one `WriteBatch` with one WAL fsync;
//! - [`crate::postgres`]: PostgreSQL, for several nodes on one database: a
//!   key space is a table of `(key bytea primary key, value bytea)`, a
//!   group one transaction with one commit.
//!
//! Keys compare as unsigned bytes, shorter first on a common prefix (what
//! RocksDB's default comparator and PostgreSQL's `bytea` both do), which
//! is what every layout relies on.

use std::path::Path;

use crate::{Result, StoreMemory};

/// One operation inside a write.
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
    /// Every key `from <= key < to`.
    DeleteRange {
        cf: &'static str,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// Writes nothing: the group is for this session (its id's bytes; a
    /// flow run's [`crate::runs::owner_key`]), so where nodes own sessions
    /// one by one it lands only if this node owns it ([`crate::owners`]).
    /// A database of one node ignores it.
    Owned {
        session: Vec<u8>,
    },
}

impl Op {
    /// Bytes of its keys and value.
    pub fn bytes(&self) -> u64 {
        let n = match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
            Op::DeleteRange { from, to, .. } => from.len() + to.len(),
            Op::Owned { .. } => 0,
        };
        n as u64
    }
}

/// Which way a walk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Ascending keys.
    Forward,
    /// Descending keys.
    Reverse,
}

/// Where a walk starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek<'a> {
    /// The first key of the key space (ascending).
    First,
    /// The last key of the key space (descending).
    Last,
    /// Forward: the first key `>=` this one; reverse: the last key `<=` it.
    At(&'a [u8], Dir),
}

/// One key and its value, as a walk yields them.
pub type Entry = (Box<[u8]>, Box<[u8]>);

/// A walk over a key space, in key order; each step may fail (the
/// database went away mid-walk).
pub type Walk<'a> = Box<dyn Iterator<Item = Result<Entry>> + 'a>;

/// A database the store can run on. Calls block: the store makes them on
/// its writer thread or on tokio's blocking pool, never on an async worker.
pub trait Engine: Send + Sync + 'static {
    /// `"rocksdb"`, `"postgres"`: for health, logs and `baton inspect`.
    fn backend(&self) -> &'static str;

    /// The value at `key` in key space `cf`.
    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The keys of `cf` from `from` on, in order. A walk reads ahead in
    /// pages and holds no lock or connection between them, so the caller
    /// may read other keys while it walks.
    ///
    /// On RocksDB a walk sees one moment (an iterator's snapshot); on
    /// PostgreSQL each page is read at its own: a key written during a
    /// walk may or may not be seen, and an index entry moved across the
    /// walk's position (a status or deadline changing) may be missed or
    /// seen twice. Listings tolerate that (each entry is checked against
    /// the record it points to); recovery's scans run before any write.
    fn walk<'a>(&'a self, cf: &'static str, from: Seek<'a>) -> Result<Walk<'a>>;

    /// Apply every op of every group in order, all or none: one atomic
    /// write, durable before it returns when `sync` (and the store's
    /// durability is `sync`), otherwise at least safe from a crash of this
    /// process.
    fn write(&self, groups: &[&[Op]], sync: bool) -> Result<()>;

    /// What the engine holds in memory.
    fn memory(&self) -> StoreMemory {
        StoreMemory::default()
    }

    /// Rewrite key space `cf` so that no file of the database keeps what
    /// was deleted from it (the subject keys of an erasure). Where the
    /// key space is not kept by this engine, nothing to do.
    fn compact(&self, _cf: &'static str) -> Result<()> {
        Ok(())
    }

    /// A consistent copy of everything at `dir` (backups).
    fn checkpoint(&self, dir: &Path) -> Result<()>;

    /// This node's standing among the nodes sharing the database (its
    /// writer lease); `None` for a database of its own (RocksDB).
    fn node_status(&self) -> Option<crate::member::NodeStatus> {
        None
    }

    /// Whether this node owns sessions one by one (claims and releases go
    /// to the database); otherwise it owns every session it can write.
    fn claims(&self) -> bool {
        false
    }

    /// Claim `session` for this node before working on it. A database of
    /// its own, or a node holding the whole database, owns every session.
    fn claim(&self, _session: &[u8]) -> Result<crate::owners::Claim> {
        Ok(crate::owners::Claim::Ours)
    }

    /// Give `session` up (passivated): it has no owner until claimed.
    fn release(&self, _session: &[u8]) -> Result<()> {
        Ok(())
    }

    /// Sessions and runs whose owner is gone (at most `limit`): what a
    /// surviving node claims and recovers. Empty where one node owns all.
    fn orphaned(&self, _limit: usize) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }

    /// The owner of `session` as the shared database has it.
    fn owner(&self, _session: &[u8]) -> Result<Option<crate::owners::Owner>> {
        Ok(None)
    }

    /// Every node the shared database knows; empty for a database of its
    /// own.
    fn cluster_nodes(&self) -> Result<Vec<crate::member::NodeRow>> {
        Ok(Vec::new())
    }
}

impl dyn Engine {
    /// The keys of `cf` that start with `prefix`, in order.
    pub fn walk_prefix<'a>(
        &'a self,
        cf: &'static str,
        prefix: &'a [u8],
    ) -> Result<impl Iterator<Item = Result<Entry>> + 'a> {
        let walk = self.walk(cf, Seek::At(prefix, Dir::Forward))?;
        Ok(walk.take_while(move |item| match item {
            Ok((k, _)) => k.starts_with(prefix),
            Err(_) => true,
        }))
    }
}
