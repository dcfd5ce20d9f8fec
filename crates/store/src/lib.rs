//! Baton's durable storage: RocksDB embedded (the default), or PostgreSQL.
//!
//! The journal is the truth: a session's state is its latest snapshot plus the
//! journal records after it. This crate owns the key spaces, the record
//! encoding (protobuf, versioned, evolvable), snapshots (bincode, rebuildable),
//! the indexes, and the group-commit writer thread. What it needs of a
//! database is the small contract of [`engine::Engine`] (ordered keys, one
//! atomic write per group), met by [`rocks::RocksEngine`] and
//! [`postgres::PgEngine`]; every layout, index and page is one code path on
//! both. All database I/O happens on the writer thread or on tokio's
//! blocking pool, never on an async worker.
//!
//! On PostgreSQL several nodes share one database ([`member`]): one holds
//! the writer lease and owns every session, or ([`owners`]) every node owns
//! the sessions it claimed, and every write is fenced by the owner of each
//! session it names.
//!
//! ```no_run
//! # async fn demo() -> baton_store::Result<()> {
//! use baton_store::{Batch, Durability, Store, StoreOptions};
//! use baton_types::{EventKind, SessionId};
//!
//! let store = Store::open(StoreOptions::new("./baton-data", Durability::Sync))?;
//! let session = SessionId::new();
//! let mut batch = Batch::new();
//! let cancelled = EventKind::TurnCancelled { turn: 1, by: String::new() };
//! batch.append(&session, 1, 0, &cancelled);
//! store.write(batch).await?; // resolves once the record is fsynced
//! let records = store.read_journal(session, 0, 100).await?;
//! assert_eq!(records.len(), 1);
//! # Ok(()) }
//! ```

mod audit_cursor;
mod batch;
mod codec;
pub mod console;
pub mod creations;
pub mod engine;
mod error;
pub mod gates;
pub mod keys;
pub mod member;
pub mod migrate;
pub mod owners;
mod pgconn;
pub mod postgres;
pub mod rocks;
pub mod runs;
pub mod seal;
pub mod session_list;
pub mod snapshot;
mod spend;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use baton_types::{GateId, GateRecord, SessionEvent, SessionId, SessionStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use batch::Batch;
pub use codec::{META_VERSION, RECORD_VERSION, SessionMeta, decode_record, encode_record};
pub use engine::{Dir, Engine, Op, Seek};
pub use error::{Error, Result};
pub use writer::{WriterStats, WriterStatsSnapshot};

pub const CF_SESSIONS: &str = "sessions";
pub const CF_JOURNAL: &str = "journal";
pub const CF_PAYLOADS: &str = "payloads";
pub const CF_INDEXES: &str = "indexes";
pub const CF_SNAPSHOTS: &str = "snapshots";
/// Every column family Baton uses.
/// Current state of each gate (see [`gates`]).
pub const CF_GATES: &str = "gates";
/// Every column family Baton uses.
pub const COLUMN_FAMILIES: [&str; 9] = [
    CF_SESSIONS,
    CF_JOURNAL,
    CF_PAYLOADS,
    CF_INDEXES,
    CF_SNAPSHOTS,
    CF_GATES,
    runs::CF_RUNS,
    runs::CF_RUN_JOURNAL,
    runs::CF_RUN_INDEX,
];

/// Message content longer than this many bytes is stored once in the
/// `payloads` column family and referenced from its journal record.
pub const PAYLOAD_INLINE_LIMIT: usize = 16 * 1024;

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fsync (fdatasync) the WAL before acknowledging; concurrent writers share
    /// one fsync through group commit. Survives power loss.
    #[default]
    Sync,
    /// Write the WAL without fsync: survives a process crash, not a power loss.
    Buffered,
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub path: PathBuf,
    pub durability: Durability,
    /// Subject keys, when values are sealed ([`seal`]): reads open sealed
    /// values with it.
    pub keyring: Option<Arc<seal::Keyring>>,
    /// The one block cache every column family shares, index blocks
    /// included, in bytes.
    pub cache_bytes: usize,
    /// Most bytes all column families' memtables hold together before the
    /// largest is flushed.
    pub memtable_bytes: usize,
    /// Keep everything in this PostgreSQL database instead of RocksDB at
    /// `path` (which then holds only what is local to the node).
    pub postgres: Option<postgres::PgOptions>,
}

/// [`StoreOptions::cache_bytes`]' default: 64 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// [`StoreOptions::memtable_bytes`]' default: 64 MiB.
pub const DEFAULT_MEMTABLE_BYTES: usize = 64 << 20;

impl StoreOptions {
    pub fn new(path: impl Into<PathBuf>, durability: Durability) -> Self {
        Self {
            path: path.into(),
            durability,
            keyring: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            memtable_bytes: DEFAULT_MEMTABLE_BYTES,
            postgres: None,
        }
    }
}

/// What the store holds in memory ([`Store::memory`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreMemory {
    /// Bytes in the shared block cache (data, index and filter blocks).
    pub cache_bytes: u64,
    /// Bytes of all column families' memtables, flushing ones included.
    pub memtable_bytes: u64,
    /// Bytes of table readers outside the cache (should stay near 0: index
    /// and filter blocks are in the cache).
    pub table_readers_bytes: u64,
}

/// What a sealed value stored at `key` of column family `cf` is bound to.
pub(crate) fn seal_aad(cf: &str, key: &[u8]) -> Vec<u8> {
    [cf.as_bytes(), &[0u8], key].concat()
}

/// A value as stored, opened when it is sealed.
pub(crate) fn unseal(
    ring: Option<&seal::Keyring>,
    cf: &str,
    key: &[u8],
    value: Vec<u8>,
) -> Result<Vec<u8>> {
    if !seal::is_sealed(&value) {
        return Ok(value);
    }
    match ring {
        Some(r) => r.unseal(&seal_aad(cf, key), &value),
        None => Err(Error::NoKeyring),
    }
}

struct Inner {
    db: Arc<dyn Engine>,
    writer: std::sync::Mutex<Option<std::sync::mpsc::Sender<writer::WriteReq>>>,
    writer_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<WriterStats>,
    options: StoreOptions,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.options.path)
            .finish()
    }
}

/// One page of sessions.
#[derive(Debug, Clone)]
pub struct SessionPage {
    pub sessions: Vec<(SessionId, SessionMeta)>,
    /// Set when more sessions follow: pass it as `after` for the next page.
    pub next_after: Option<SessionId>,
}

impl Store {
    /// Open (or create) the store: on RocksDB at `options.path`, or in
    /// the PostgreSQL database `options.postgres` names (its schema brought
    /// up to date).
    pub fn open(options: StoreOptions) -> Result<Store> {
        let engine: Arc<dyn Engine> = match &options.postgres {
            Some(pg) => Arc::new(off_runtime(|| postgres::PgEngine::open(pg.clone()))?),
            None => Arc::new(rocks::RocksEngine::open(
                &options.path,
                options.cache_bytes,
                options.memtable_bytes,
            )?),
        };
        Store::with_engine(engine, options)
    }

    /// The store on `engine` (a database opened by the caller); `options`
    /// give durability and the keyring (its path names the store in logs).
    pub fn with_engine(engine: Arc<dyn Engine>, options: StoreOptions) -> Result<Store> {
        let db = engine;
        off_runtime(|| {
            if let Some(ring) = &options.keyring {
                ring.attach(&db)?;
            }
            build_tenant_index(&*db)?;
            gates::build_queue_index(&*db, options.keyring.as_deref())
        })?;
        let stats = Arc::new(WriterStats::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let db = db.clone();
            let stats = stats.clone();
            let durability = options.durability;
            std::thread::Builder::new()
                .name("baton-store-writer".into())
                .spawn(move || writer::run(db, rx, durability, stats))
                .map_err(|e| Error::Rocks(format!("cannot start the writer thread: {e}")))?
        };
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                writer: std::sync::Mutex::new(Some(tx)),
                writer_thread: std::sync::Mutex::new(Some(thread)),
                stats,
                options,
            }),
        })
    }

    /// What the store holds in memory now.
    pub fn memory(&self) -> StoreMemory {
        self.inner.db.memory()
    }

    /// This node's standing among the nodes sharing the database (its
    /// writer lease, whether the database answers); `None` on RocksDB.
    pub fn node_status(&self) -> Option<member::NodeStatus> {
        self.inner.db.node_status()
    }

    /// Every node the shared database knows (its id, addresses, heartbeat,
    /// whether it lives and holds the lease); empty on RocksDB. Blocks:
    /// call it off the async workers.
    pub fn cluster_nodes(&self) -> Result<Vec<member::NodeRow>> {
        self.inner.db.cluster_nodes()
    }

    /// Claim `session` for this node before working on it: where nodes
    /// own sessions one by one ([`postgres::Ownership::Sessions`]), it is
    /// this node's unless another live node owns it (then named, with its
    /// addresses); everywhere else, always this node's.
    pub async fn claim(&self, session: SessionId) -> Result<owners::Claim> {
        self.claim_owner_key(session.as_bytes().to_vec()).await
    }

    /// Give `session` up once its actor stopped: it has no owner until the
    /// next claim. Every write handed to the writer before it (one whose
    /// caller went away included) lands first, so no write of this node
    /// can follow another node's claim; a write after it is refused.
    pub async fn release(&self, session: SessionId) -> Result<()> {
        self.release_owner_key(session.as_bytes().to_vec()).await
    }

    /// Whether this node owns sessions one by one, beside other live nodes
    /// ([`postgres::Ownership::Sessions`]): [`Self::claim`] and
    /// [`Self::release`] ask the database only then.
    pub fn claims(&self) -> bool {
        self.inner.db.claims()
    }

    /// Sessions and runs (their owner keys: a session id's 16 bytes, or
    /// [`runs::owner_key`]) whose owner is gone, at most `limit`: what a
    /// surviving node claims and recovers. Empty where one node owns all.
    pub async fn orphaned(&self, limit: usize) -> Result<Vec<Vec<u8>>> {
        self.blocking(move |db| db.orphaned(limit)).await
    }

    /// The node owning `session` as the shared database has it.
    pub async fn owner(&self, session: SessionId) -> Result<Option<owners::Owner>> {
        self.blocking(move |db| db.owner(session.as_bytes())).await
    }

    /// The database under the store: `"rocksdb"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.inner.db.backend()
    }

    pub fn path(&self) -> &Path {
        &self.inner.options.path
    }

    pub fn durability(&self) -> Durability {
        self.inner.options.durability
    }

    /// The writer's counters.
    pub fn writer_stats(&self) -> WriterStatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Hand a batch to the group-commit writer. The returned future resolves
    /// once the batch is durable (or, for unsynced batches and in `buffered`
    /// mode, once it is in the WAL). The write happens even if the future is
    /// dropped.
    pub fn write(
        &self,
        batch: Batch,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let bytes = batch.ops.iter().map(Op::bytes).sum();
        let stats = &self.inner.stats;
        stats.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        stats.queued_requests.fetch_add(1, Ordering::Relaxed);
        let sent = match self.inner.writer.lock() {
            Ok(guard) => match guard.as_ref() {
                Some(tx) => tx
                    .send(writer::WriteReq {
                        ops: batch.ops,
                        sync: batch.sync,
                        done,
                        queued_at: std::time::Instant::now(),
                        bytes,
                    })
                    .is_ok(),
                None => false,
            },
            Err(_) => false,
        };
        if !sent {
            stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            stats.queued_requests.fetch_sub(1, Ordering::Relaxed);
        }
        async move {
            if !sent {
                return Err(Error::Closed);
            }
            rx.await.map_err(|_| Error::Closed)?
        }
    }

    /// Why writes fail, while they do: the error of the last write (a full
    /// disk, a failing fsync). `None` once a write succeeds again.
    pub fn write_failing(&self) -> Option<String> {
        self.inner
            .stats
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Try a small synced write (while writes fail, to learn when they
    /// succeed again; its success clears [`Self::write_failing`]).
    pub async fn probe(&self) -> Result<()> {
        let mut batch = Batch::new();
        batch.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::PROBE_KEY.to_vec(),
            value: Vec::new(),
        });
        self.write(batch).await
    }

    /// Writes handed to the writer and not yet written: (requests, bytes of
    /// their keys and values).
    pub fn backlog(&self) -> (u64, u64) {
        let s = &self.inner.stats;
        (
            s.queued_requests.load(Ordering::Relaxed),
            s.queued_bytes.load(Ordering::Relaxed),
        )
    }

    /// Resolves once every write handed to the writer before this call is
    /// applied (the writer is FIFO).
    pub async fn barrier(&self) -> Result<()> {
        self.write(Batch::unsynced()).await
    }

    /// Stop the writer thread after it has written everything queued.
    pub fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        if let Ok(mut t) = self.inner.writer_thread.lock()
            && let Some(handle) = t.take()
        {
            let _ = handle.join();
        }
    }

    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Engine) -> Result<T> + Send + 'static,
    {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || f(&*db))
            .await
            .map_err(|e| Error::Rocks(format!("blocking read task failed: {e}")))?
    }

    /// A session's metadata.
    pub async fn load_meta(&self, session: SessionId) -> Result<Option<SessionMeta>> {
        self.blocking(move |db| load_meta_blocking(db, session))
            .await
    }

    /// Journal records with `seq > after_seq`, at most `limit`, as events.
    pub async fn read_journal(
        &self,
        session: SessionId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<SessionEvent>> {
        let ring = self.inner.options.keyring.clone();
        self.blocking(move |db| {
            read_journal_blocking(db, ring.as_deref(), session, after_seq, u64::MAX, limit)
        })
        .await
    }

    /// Journal records with `after_seq < seq <= upto_seq`.
    pub async fn read_journal_range(
        &self,
        session: SessionId,
        after_seq: u64,
        upto_seq: u64,
    ) -> Result<Vec<SessionEvent>> {
        let ring = self.inner.options.keyring.clone();
        self.blocking(move |db| {
            read_journal_blocking(
                db,
                ring.as_deref(),
                session,
                after_seq,
                upto_seq,
                usize::MAX,
            )
        })
        .await
    }

    /// The highest seq in a session's journal (0 when it has none). Reads keys
    /// only, so it works on a journal with undecodable records.
    pub async fn last_seq(&self, session: SessionId) -> Result<u64> {
        self.blocking(move |db| last_seq_blocking(db, session))
            .await
    }

    /// The stored snapshot bytes of a session, if any (opened when sealed).
    pub async fn load_snapshot(&self, session: SessionId) -> Result<Option<Vec<u8>>> {
        let ring = self.inner.options.keyring.clone();
        self.blocking(move |db| match db.get(CF_SNAPSHOTS, session.as_bytes())? {
            Some(v) => unseal(ring.as_deref(), CF_SNAPSHOTS, session.as_bytes(), v).map(Some),
            None => Ok(None),
        })
        .await
    }

    /// The subject keys values are sealed with, when configured.
    pub fn keyring(&self) -> Option<&Arc<seal::Keyring>> {
        self.inner.options.keyring.as_ref()
    }

    /// The session an idempotency key maps to.
    pub async fn find_idempotency(&self, key: String) -> Result<Option<SessionId>> {
        self.blocking(move |db| {
            let v = db.get(CF_INDEXES, &keys::idempotency_key(&key))?;
            Ok(v.and_then(|v| keys::session_from_slice(&v)))
        })
        .await
    }

    /// Audit records no journal holds, not yet confirmed in the audit
    /// trail (see [`Batch::put_audit_record`]), by id.
    pub async fn pending_audit_records(&self) -> Result<Vec<(SessionId, Vec<u8>)>> {
        self.blocking(|db| {
            let prefix = [keys::AUDIT_PREFIX, b'q'];
            let mut out = Vec::new();
            for item in db.walk_prefix(CF_INDEXES, &prefix)? {
                let (k, v) = item?;
                if let Some(id) = keys::session_from_slice(&k[2..]) {
                    out.push((id, v.to_vec()));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Sessions whose journal has records the audit trail may lack:
    /// `(session, audited up to, must be audited up to)` where the first is
    /// below the second.
    pub async fn audit_backlog(&self) -> Result<Vec<(SessionId, u64, u64)>> {
        self.blocking(|db| {
            let read = |which: u8| -> Result<std::collections::HashMap<SessionId, u64>> {
                let prefix = [keys::AUDIT_PREFIX, which];
                let mut out = std::collections::HashMap::new();
                for item in db.walk_prefix(CF_INDEXES, &prefix)? {
                    let (k, v) = item?;
                    if let (Some(id), Ok(bytes)) = (
                        keys::session_from_slice(&k[2..]),
                        <[u8; 8]>::try_from(&v[..]),
                    ) {
                        out.insert(id, u64::from_be_bytes(bytes));
                    }
                }
                Ok(out)
            };
            let pending = read(b'p')?;
            let done = read(b'u')?;
            let mut out: Vec<_> = pending
                .into_iter()
                .map(|(id, p)| (id, done.get(&id).copied().unwrap_or(0), p))
                .filter(|(_, d, p)| d < p)
                .collect();
            out.sort();
            Ok(out)
        })
        .await
    }

    /// A page of sessions in id (= creation) order, optionally only those with
    /// `status` (served from the status index, not a scan).
    pub async fn list_sessions(
        &self,
        status: Option<SessionStatus>,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<SessionPage> {
        self.blocking(move |db| list_sessions_blocking(db, status, after, limit))
            .await
    }

    /// A page of `tenant`'s sessions in id (= creation) order, optionally
    /// only those with `status` (served from the tenant index).
    pub async fn list_tenant_sessions(
        &self,
        tenant: String,
        status: Option<SessionStatus>,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<SessionPage> {
        self.blocking(move |db| list_tenant_blocking(db, &tenant, status, after, limit))
            .await
    }

    /// A page of sessions by tenant, status, route and flow, in either
    /// order, reading at most `scan.max_scan` entries.
    pub async fn scan_sessions(&self, scan: session_list::SessionScan) -> Result<SessionPage> {
        self.blocking(move |db| session_list::scan_blocking(db, &scan))
            .await
    }

    /// Number of `tenant`'s sessions (a scan of its index keys).
    pub async fn count_tenant_sessions(&self, tenant: String) -> Result<u64> {
        self.blocking(move |db| {
            let prefix = keys::tenant_index_prefix(&tenant);
            let mut n = 0;
            for item in db.walk_prefix(CF_INDEXES, &prefix)? {
                item?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    /// Every stored API key record (JSON), by key id.
    pub async fn api_keys(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.blocking(|db| {
            let prefix = [keys::API_KEY_PREFIX];
            let mut out = Vec::new();
            for item in db.walk_prefix(CF_INDEXES, &prefix)? {
                let (k, v) = item?;
                out.push((String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec()));
            }
            Ok(out)
        })
        .await
    }

    /// Sessions whose journal copy did not finish ([`Batch::put_copying`]).
    pub async fn unfinished_copies(&self) -> Result<Vec<SessionId>> {
        self.blocking(|db| {
            let prefix = [keys::COPY_PREFIX];
            let mut out = Vec::new();
            for item in db.walk_prefix(CF_INDEXES, &prefix)? {
                let (k, _) = item?;
                if let Some(id) = keys::session_from_slice(&k[1..]) {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Every session with `status` (used at start-up to find unfinished turns).
    pub async fn sessions_with_status(&self, status: SessionStatus) -> Result<Vec<SessionId>> {
        self.blocking(move |db| {
            let prefix = keys::status_index_prefix(status);
            let mut out = Vec::new();
            for item in db.walk_prefix(CF_INDEXES, &prefix)? {
                let (k, _) = item?;
                if let Some(id) = keys::session_from_slice(&k[2..]) {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Number of sessions (a scan of keys; for tools and benchmarks).
    pub async fn count_sessions(&self) -> Result<u64> {
        self.blocking(|db| {
            let mut n = 0;
            for item in db.walk(CF_SESSIONS, Seek::First)? {
                item?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    /// A gate's current state.
    pub async fn get_gate(&self, gate_id: GateId) -> Result<Option<GateRecord>> {
        let ring = self.inner.options.keyring.clone();
        self.blocking(move |db| gates::get_blocking(db, ring.as_deref(), gate_id))
            .await
    }

    /// A page of gates, served from the gate indexes.
    pub async fn list_gates(
        &self,
        filter: gates::GateFilter,
        after: Option<GateId>,
        limit: usize,
    ) -> Result<gates::GatePage> {
        let ring = self.inner.options.keyring.clone();
        self.blocking(move |db| gates::list_blocking(db, ring.as_deref(), &filter, after, limit))
            .await
    }

    /// A page of the reviewers' queue of pending gates — nearest deadline
    /// first, then (without a deadline) newest first — of `scopes`
    /// (everyone's, a tenant's, reviewer groups'), each read from its own
    /// index entries.
    pub async fn gate_queue(
        &self,
        scopes: Vec<gates::QueueScope>,
        after: Option<gates::QueuePos>,
        limit: usize,
    ) -> Result<gates::QueuePage> {
        let ring = self.inner.options.keyring.clone();
        self.blocking(move |db| gates::queue_blocking(db, ring.as_deref(), &scopes, after, limit))
            .await
    }

    /// How many gates are pending (for the `gates_pending` gauge at start).
    pub async fn count_pending_gates(&self) -> Result<u64> {
        self.blocking(gates::count_pending_blocking).await
    }

    /// Pending gates whose deadline has passed.
    pub async fn due_gates(&self, now_unix_ms: u64, limit: usize) -> Result<Vec<GateRecord>> {
        let ring = self.inner.options.keyring.clone();
        self.blocking(move |db| gates::due_blocking(db, ring.as_deref(), now_unix_ms, limit))
            .await
    }

    /// Create a consistent checkpoint (hard-linked copy) of the store at `dir`.
    pub async fn checkpoint(&self, dir: PathBuf) -> Result<()> {
        self.blocking(move |db| db.checkpoint(&dir)).await
    }
}

/// Run `f` on a thread of its own, outside any async runtime the caller
/// may be on: a database client that blocks (PostgreSQL's) must not block
/// an async worker, and cannot run inside one.
fn off_runtime<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("baton-store-open".into())
            .spawn_scoped(s, f)
            .map_err(|e| Error::Rocks(format!("cannot start a thread: {e}")))?
            .join()
            .map_err(|_| Error::Rocks("opening the store failed (a thread panicked)".into()))?
    })
}

/// Run `f`, which blocks on a database client that cannot run on an
/// async worker (PostgreSQL's), from wherever the caller is: directly off
/// any runtime, in `block_in_place` on a multi-threaded one (the worker's
/// other tasks move on), on a thread of its own on a current-thread one.
pub(crate) fn blocking<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Err(_) => f(),
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => off_runtime(f),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Ok(mut t) = self.writer_thread.lock()
            && let Some(handle) = t.take()
        {
            let _ = handle.join();
        }
    }
}

pub(crate) fn load_meta_blocking(
    db: &dyn Engine,
    session: SessionId,
) -> Result<Option<SessionMeta>> {
    match db.get(CF_SESSIONS, session.as_bytes())? {
        Some(bytes) => codec::decode_meta(session, &bytes).map(Some),
        None => Ok(None),
    }
}

fn read_journal_blocking(
    db: &dyn Engine,
    ring: Option<&seal::Keyring>,
    session: SessionId,
    after_seq: u64,
    upto_seq: u64,
    limit: usize,
) -> Result<Vec<SessionEvent>> {
    let start = keys::journal_key(&session, after_seq.saturating_add(1));
    let mut out = Vec::new();
    let mut load = |k: &[u8]| -> Result<Option<Vec<u8>>> {
        match db.get(CF_PAYLOADS, k)? {
            Some(v) => unseal(ring, CF_PAYLOADS, k, v).map(Some),
            None => Ok(None),
        }
    };
    for item in db.walk(CF_JOURNAL, Seek::At(&start, Dir::Forward))? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item?;
        let Some((sid, seq)) = keys::split_journal_key(&k) else {
            break;
        };
        if sid != session || seq > upto_seq {
            break;
        }
        let v = unseal(ring, CF_JOURNAL, &k, v.into_vec())?;
        let (at, kind) = codec::decode_record(session, seq, &v, &mut load)?;
        out.push(SessionEvent {
            session_id: session,
            seq,
            at_unix_ms: at,
            kind,
        });
    }
    Ok(out)
}

fn last_seq_blocking(db: &dyn Engine, session: SessionId) -> Result<u64> {
    let end = keys::journal_key(&session, u64::MAX);
    if let Some(item) = db.walk(CF_JOURNAL, Seek::At(&end, Dir::Reverse))?.next() {
        let (k, _) = item?;
        if let Some((sid, seq)) = keys::split_journal_key(&k)
            && sid == session
        {
            return Ok(seq);
        }
    }
    Ok(0)
}

fn list_sessions_blocking(
    db: &dyn Engine,
    status: Option<SessionStatus>,
    after: Option<SessionId>,
    limit: usize,
) -> Result<SessionPage> {
    session_list::scan_blocking(
        db,
        &session_list::SessionScan {
            status,
            after,
            limit,
            ..Default::default()
        },
    )
}

fn list_tenant_blocking(
    db: &dyn Engine,
    tenant: &str,
    status: Option<SessionStatus>,
    after: Option<SessionId>,
    limit: usize,
) -> Result<SessionPage> {
    session_list::scan_blocking(
        db,
        &session_list::SessionScan {
            tenant: Some(tenant.to_string()),
            status,
            after,
            limit,
            ..Default::default()
        },
    )
}

/// Sessions stored before tenants have no tenant index entry: add one for
/// every session, once (a marker records that it was done).
fn build_tenant_index(db: &dyn Engine) -> Result<()> {
    if db.get(CF_INDEXES, keys::TENANT_INDEX_MARKER)?.is_some() {
        return Ok(());
    }
    let mut ops = Vec::new();
    for item in db.walk(CF_SESSIONS, Seek::First)? {
        let (k, v) = item?;
        let Some(id) = keys::session_from_slice(&k) else {
            continue;
        };
        let meta = codec::decode_meta(id, &v)?;
        ops.push(Op::Put {
            cf: CF_INDEXES,
            key: keys::tenant_index_key(&meta.tenant, &id),
            value: Vec::new(),
        });
    }
    ops.push(Op::Put {
        cf: CF_INDEXES,
        key: keys::TENANT_INDEX_MARKER.to_vec(),
        value: Vec::new(),
    });
    db.write(&[&ops], true)
}

#[cfg(test)]
mod tests;

/// Copy a directory tree (backups of the audit directory, restores).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    copy_dir_except(from, to, &[])
}

/// [`copy_dir`] without the files at the paths in `except` (a secret such
/// as the audit signing key stays out of backups).
pub fn copy_dir_except(from: &Path, to: &Path, except: &[PathBuf]) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        if except.iter().any(|e| same_file(e, &path)) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir_except(&path, &target, except)?;
        } else {
            std::fs::copy(&path, target)?;
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Files and bytes below `dir` (unreadable entries are skipped).
pub fn dir_size(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    let (f, b) = dir_size(&e.path());
                    files += f;
                    bytes += b;
                }
                Ok(_) => {
                    files += 1;
                    bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}
