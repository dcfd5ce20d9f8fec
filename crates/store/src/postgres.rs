//! The shared backend: PostgreSQL (and databases speaking its protocol),
//! for several Baton nodes on one database.
//!
//! Each key space is a table `baton_<name> (key bytea primary key, value
//! bytea not null)`; `bytea` compares as unsigned bytes, shorter first, as
//! RocksDB's default comparator does, so every key layout and walk of the
//! store holds unchanged. A group of writes is one transaction:
//! puts become one `INSERT … SELECT unnest(…) ON CONFLICT DO UPDATE` per
//! table and deletes one `DELETE … = ANY(…)`, so a group commit of many
//! sessions' turns costs a few statements and one commit (with
//! `synchronous_commit = off` for writes that asked for no flush).
//!
//! The schema is versioned in `baton_schema`; [`PgEngine::open`] applies
//! what is missing under an advisory lock, so nodes starting together
//! migrate once. Reads take a connection from a bounded pool for one
//! statement (a walk reads page by page and holds none between pages); the
//! writer thread keeps its own connection. A connection that breaks is
//! dropped and the next call opens a new one, so the store serves again by
//! itself once the database is back.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Condvar, Mutex, PoisonError};

use postgres::{Client, Statement};

use crate::engine::{Dir, Engine, Entry, Op, Seek, Walk};
use crate::member::{self, Member, NodeStatus};
use crate::owners::{self, Claim, Owner};
use crate::pgconn::{self, db_error};
pub use crate::pgconn::{NodeOptions, Ownership, PgOptions, check_node_id, default_node_id};
use crate::{COLUMN_FAMILIES, Error, Result};

/// The versions of the schema, in order; each applied once, in one
/// transaction with its record in `baton_schema`.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "key spaces as tables of ordered bytea keys; the writer's epoch",
    ),
    (
        2,
        "nodes, their heartbeats and the writer lease; baton_fence(epoch)",
    ),
    (3, "subject keys kept in the database (baton_keys)"),
    (
        4,
        "sessions owned one node each: node leases, baton_owners, baton_claim, \
         baton_fence_owned",
    ),
    (
        5,
        "the ownership fence looks sessions up by their key only; every owner row names a \
         node row",
    ),
];

/// One connection and the statements prepared on it.
struct Conn {
    client: Client,
    stmts: HashMap<(&'static str, Sql), Statement>,
    /// One-statement group writes ([`write_one_statement`]), by their text.
    groups: HashMap<String, Statement>,
}

/// The statements of one key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sql {
    Get,
    /// A page of a walk: direction, and whether the bound is inclusive
    /// (`None`: no bound).
    Page(Dir, Option<bool>),
    Upsert,
    DeleteKeys,
    DeleteRange,
}

fn table(cf: &str) -> String {
    format!("baton_{cf}")
}

fn sql(cf: &str, which: Sql) -> String {
    let t = table(cf);
    match which {
        Sql::Get => format!("SELECT value FROM {t} WHERE key = $1"),
        Sql::Page(dir, bound) => {
            let (cmp, order) = match (dir, bound) {
                (Dir::Forward, Some(true)) => ("key >= $1", "ASC"),
                (Dir::Forward, Some(false)) => ("key > $1", "ASC"),
                (Dir::Reverse, Some(true)) => ("key <= $1", "DESC"),
                (Dir::Reverse, Some(false)) => ("key < $1", "DESC"),
                (Dir::Forward, None) => ("$1::bytea IS NULL", "ASC"),
                (Dir::Reverse, None) => ("$1::bytea IS NULL", "DESC"),
            };
            format!("SELECT key, value FROM {t} WHERE {cmp} ORDER BY key {order} LIMIT $2")
        }
        Sql::Upsert => format!(
            "INSERT INTO {t} (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        ),
        Sql::DeleteKeys => format!("DELETE FROM {t} WHERE key = ANY($1::bytea[])"),
        Sql::DeleteRange => format!("DELETE FROM {t} WHERE key >= $1 AND key < $2"),
    }
}

impl Conn {
    fn open(options: &PgOptions) -> Result<Conn> {
        Ok(Conn {
            client: pgconn::connect(options)?,
            stmts: HashMap::new(),
            groups: HashMap::new(),
        })
    }

    fn stmt(&mut self, cf: &'static str, which: Sql) -> Result<Statement> {
        if let Some(s) = self.stmts.get(&(cf, which)) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&sql(cf, which)).map_err(db_error)?;
        self.stmts.insert((cf, which), s.clone());
        Ok(s)
    }

    /// A statement of fixed text (a claim, a release), prepared once on
    /// this connection: one round trip a call instead of two.
    fn cached(&mut self, text: &'static str) -> Result<Statement> {
        if let Some(s) = self.groups.get(text) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(text).map_err(db_error)?;
        self.groups.insert(text.to_string(), s.clone());
        Ok(s)
    }
}

/// The read connections: at most `pool_size` open, idle ones kept.
struct Pool {
    options: PgOptions,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

impl Pool {
    fn take(&self) -> Result<Conn> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(c) = st.idle.pop() {
                return Ok(c);
            }
            if st.open < self.options.pool_size.max(1) {
                st.open += 1;
                drop(st);
                return Conn::open(&self.options).inspect_err(|_| self.forget());
            }
            let (next, waited) = self
                .freed
                .wait_timeout(st, self.options.connect_timeout)
                .unwrap_or_else(PoisonError::into_inner);
            st = next;
            if waited.timed_out() && st.idle.is_empty() && st.open >= self.options.pool_size.max(1)
            {
                return Err(Error::Unavailable(format!(
                    "postgres: all {} read connections busy for {} ms",
                    self.options.pool_size,
                    self.options.connect_timeout.as_millis()
                )));
            }
        }
    }

    /// Give a connection back (dropped when it broke).
    fn give(&self, conn: Conn) {
        if conn.client.is_closed() {
            self.forget();
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.idle.push(conn);
        drop(st);
        self.freed.notify_one();
    }

    fn forget(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.open = st.open.saturating_sub(1);
        drop(st);
        self.freed.notify_one();
    }

    /// Run a read on a pooled connection. A read that fails because its
    /// connection was dead (the database restarted since it was last used)
    /// is tried once more on a new one: reads change nothing.
    fn with<T>(&self, mut f: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        let mut conn = self.take()?;
        let mut out = f(&mut conn);
        if out.is_err() && conn.client.is_closed() {
            self.give(conn);
            conn = self.take()?;
            out = f(&mut conn);
        }
        self.give(conn);
        out
    }
}

/// A PostgreSQL database as an [`Engine`].
pub struct PgEngine {
    pool: Pool,
    /// The writer thread's connection (opened on first use, and again
    /// after it broke).
    writer: Mutex<Option<Conn>>,
    /// This node's membership and writer lease: every write is fenced by
    /// its epoch. Dropped after the connections (giving the lease up).
    member: Member,
}

impl std::fmt::Debug for PgEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEngine").finish_non_exhaustive()
    }
}

impl Drop for PgEngine {
    fn drop(&mut self) {
        // A connection closes by blocking on its own small runtime, which
        // cannot happen on an async worker (where the last clone of a
        // store is often dropped): they are closed on a thread of their
        // own, and waited for, before the lease is given up.
        let mut conns: Vec<Conn> = std::mem::take(
            &mut self
                .pool
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .idle,
        );
        if let Some(w) = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            conns.push(w);
        }
        if conns.is_empty() {
            return;
        }
        if let Ok(closer) = std::thread::Builder::new()
            .name("baton-pg-close".into())
            .spawn(move || drop(conns))
        {
            let _ = closer.join();
        }
    }
}

impl PgEngine {
    /// Connect, bring the schema up to date, join the database's nodes
    /// and take the writer lease (see [`crate::member`]): a standby
    /// (`options.node.wait_for_lease`) waits here until it is its turn.
    pub fn open(options: PgOptions) -> Result<PgEngine> {
        let mut conn = Conn::open(&options)?;
        migrate(&mut conn.client)?;
        let member = Member::join(&options)?;
        writer_settings(&mut conn, &options)?;
        let engine = PgEngine {
            pool: Pool {
                options,
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            },
            writer: Mutex::new(Some(conn)),
            member,
        };
        Ok(engine)
    }

    /// This node's standing: its lease, and whether the database answers.
    pub fn node_status(&self) -> NodeStatus {
        self.member.status()
    }

    /// Whether a read connection to the database is encrypted (TLS), as
    /// the server sees it.
    pub fn connection_is_encrypted(&self) -> Result<bool> {
        self.pool.with(|c| {
            let row = c
                .client
                .query_one(
                    "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                    &[],
                )
                .map_err(db_error)?;
            row.try_get(0).map_err(db_error)
        })
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i32> {
        self.pool.with(|c| {
            let row = c
                .client
                .query_one("SELECT coalesce(max(version), 0) FROM baton_schema", &[])
                .map_err(db_error)?;
            row.try_get(0).map_err(db_error)
        })
    }
}

/// The writer's connection: a transaction it leaves open (its node
/// paused mid-write) is ended by the server after a lease's time, so that
/// it never holds the lease row from a node taking over.
fn writer_settings(conn: &mut Conn, options: &PgOptions) -> Result<()> {
    let ms = options.node.lease.as_millis().max(1);
    conn.client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = '{ms}ms'"
        ))
        .map_err(db_error)
}

fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction().map_err(db_error)?;
    // One node migrates; the others wait here, then find nothing to do.
    // Nothing is created when it exists, so that a user without CREATE
    // can run a node on a schema already in place.
    tx.batch_execute("SELECT pg_advisory_xact_lock(7424011)")
        .map_err(db_error)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('baton_schema') IS NOT NULL", &[])
        .map_err(db_error)?
        .try_get(0)
        .map_err(db_error)?;
    if !exists {
        tx.batch_execute(
            "CREATE TABLE baton_schema (version integer PRIMARY KEY, \
             description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .map_err(db_error)?;
    }
    let at: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM baton_schema", &[])
        .map_err(db_error)?
        .try_get(0)
        .map_err(db_error)?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if at > latest {
        return Err(Error::Config(format!(
            "the database's schema is version {at}, newer than this Baton knows ({latest}): \
             upgrade Baton"
        )));
    }
    for (version, description) in MIGRATIONS.iter().filter(|m| m.0 > at) {
        if *version == 1 {
            for cf in COLUMN_FAMILIES {
                tx.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {} (key bytea PRIMARY KEY, value bytea NOT NULL)",
                    table(cf)
                ))
                .map_err(db_error)?;
            }
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS baton_writer (id integer PRIMARY KEY, \
                 epoch bigint NOT NULL, since timestamptz NOT NULL DEFAULT now()); \
                 INSERT INTO baton_writer (id, epoch) VALUES (1, 0) ON CONFLICT DO NOTHING",
            )
            .map_err(db_error)?;
        }
        if *version == 2 {
            tx.batch_execute(member::SCHEMA).map_err(db_error)?;
        }
        if *version == 3 {
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (key bytea PRIMARY KEY, value bytea NOT NULL)",
                table(crate::seal::KEYS_CF)
            ))
            .map_err(db_error)?;
        }
        if *version == 4 {
            tx.batch_execute(owners::SCHEMA).map_err(db_error)?;
        }
        if *version == 4 || *version == 5 {
            // Made with the schema of 4, made again in 5 (a database at 4
            // has the fence that scanned the node's sessions).
            tx.batch_execute(owners::FENCE).map_err(db_error)?;
        }
        if *version == 5 {
            tx.batch_execute(owners::NODE_ROWS_OF_OWNERS)
                .map_err(db_error)?;
        }
        tx.execute(
            "INSERT INTO baton_schema (version, description) VALUES ($1, $2)",
            &[version, description],
        )
        .map_err(db_error)?;
    }
    tx.commit().map_err(db_error)
}

/// Writes of one group not yet sent, per key space: the last value of
/// each key (`None`: deleted).
type Pending<'a> = BTreeMap<&'static str, BTreeMap<&'a [u8], Option<&'a [u8]>>>;

type Prepared = HashMap<(&'static str, Sql), Statement>;

fn prepared<'a>(stmts: &'a Prepared, cf: &'static str, which: Sql) -> Result<&'a Statement> {
    stmts
        .get(&(cf, which))
        .ok_or_else(|| Error::Rocks(format!("postgres: no prepared statement for {cf}")))
}

fn send_pending(stmts: &Prepared, tx: &mut Client, pending: &mut Pending<'_>) -> Result<()> {
    for (cf, keys) in std::mem::take(pending) {
        let mut put_keys = Vec::new();
        let mut put_values = Vec::new();
        let mut deleted = Vec::new();
        for (k, v) in keys {
            match v {
                Some(v) => {
                    put_keys.push(k);
                    put_values.push(v);
                }
                None => deleted.push(k),
            }
        }
        if !deleted.is_empty() {
            tx.execute(prepared(stmts, cf, Sql::DeleteKeys)?, &[&deleted])
                .map_err(db_error)?;
        }
        if !put_keys.is_empty() {
            tx.execute(prepared(stmts, cf, Sql::Upsert)?, &[&put_keys, &put_values])
                .map_err(db_error)?;
        }
    }
    Ok(())
}

/// What a group's write is conditional on (the fence it runs first).
enum Fence<'a> {
    /// The writer lease, at this epoch.
    Writer(i64),
    /// This node's own lease at its epoch, and its ownership of each
    /// session the group names ([`Op::Owned`]).
    Owned {
        node: &'a str,
        epoch: i64,
        sessions: Vec<&'a [u8]>,
    },
}

impl Fence<'_> {
    /// The fence as a statement of its own, its values written out (the
    /// transaction path): node ids hold only `[A-Za-z0-9._-]`, sessions are
    /// sent in hex.
    fn statement(&self) -> String {
        match self {
            Fence::Writer(epoch) => format!("SELECT baton_fence({epoch})"),
            Fence::Owned {
                node,
                epoch,
                sessions,
            } => {
                let ids: Vec<String> = sessions
                    .iter()
                    .map(|s| {
                        let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
                        format!("decode('{hex}', 'hex')")
                    })
                    .collect();
                format!(
                    "SELECT baton_fence_owned('{node}', {epoch}, ARRAY[{}]::bytea[])",
                    ids.join(", ")
                )
            }
        }
    }
}

/// One group of writes as one transaction.
fn write_on(conn: &mut Conn, fence: &Fence<'_>, groups: &[&[Op]], sync: bool) -> Result<()> {
    // Without a range delete (nearly every group): one statement.
    let mut pending = Pending::new();
    if groups
        .iter()
        .flat_map(|ops| ops.iter())
        .all(|op| pend(&mut pending, op))
    {
        return write_one_statement(conn, fence, &pending, sync);
    }
    // Every statement the group needs is prepared before the transaction
    // borrows the connection.
    let mut stmts = Prepared::new();
    for op in groups.iter().flat_map(|ops| ops.iter()) {
        let (cf, which): (&'static str, &[Sql]) = match op {
            Op::Put { cf, .. } | Op::Delete { cf, .. } => (cf, &[Sql::Upsert, Sql::DeleteKeys]),
            Op::DeleteRange { cf, .. } => (cf, &[Sql::DeleteRange]),
            Op::Owned { .. } => continue,
        };
        for w in which {
            if let std::collections::hash_map::Entry::Vacant(slot) = stmts.entry((cf, *w)) {
                slot.insert(conn.stmt(cf, *w)?);
            }
        }
    }
    // BEGIN with the flush setting and the fence in the same round trip
    // (the lease row share-locked until COMMIT: a node taking over waits
    // for this write, and every later write of ours fails), the writes,
    // COMMIT; a failure rolls back.
    let flush = if sync {
        ""
    } else {
        "SET LOCAL synchronous_commit = off; "
    };
    let begun = conn
        .client
        .batch_execute(&format!("BEGIN; {flush}{}", fence.statement()))
        .map_err(db_error);
    if let Err(e) = begun {
        if !conn.client.is_closed() {
            let _ = conn.client.batch_execute("ROLLBACK");
        }
        return Err(e);
    }
    let out = write_in_transaction(&mut conn.client, &stmts, groups)
        .and_then(|()| conn.client.batch_execute("COMMIT").map_err(db_error));
    if out.is_err() && !conn.client.is_closed() {
        let _ = conn.client.batch_execute("ROLLBACK");
    }
    out
}

/// A group without range deletes, coalesced into `pending`, as one
/// statement, in one round trip: the fence and every key space's deletes and upserts
/// as parts of one `WITH`, committed by itself (unsynced: with
/// `synchronous_commit` off for that transaction). Its parts see one
/// snapshot and touch disjoint rows (a key's last write wins before
/// anything is sent), so their order does not matter; a fence that
/// refuses aborts the whole statement. On a database across a network a
/// commit costs one round trip instead of one per statement.
fn write_one_statement(
    conn: &mut Conn,
    fence: &Fence<'_>,
    pending: &Pending<'_>,
    sync: bool,
) -> Result<()> {
    /// One key space's part: its deleted keys, its put keys and values.
    struct Part<'a> {
        cf: &'static str,
        del: Vec<&'a [u8]>,
        put: Vec<&'a [u8]>,
        val: Vec<&'a [u8]>,
    }
    let mut arrays = Vec::new();
    for (cf, keys) in pending {
        let mut part = Part {
            cf,
            del: Vec::new(),
            put: Vec::new(),
            val: Vec::new(),
        };
        for (k, v) in keys {
            match v {
                Some(v) => {
                    part.put.push(*k);
                    part.val.push(*v);
                }
                None => part.del.push(*k),
            }
        }
        arrays.push(part);
    }
    let (mut text, mut params): (String, Vec<&(dyn postgres::types::ToSql + Sync)>) = match fence {
        Fence::Writer(epoch) => (
            "WITH f AS (SELECT baton_fence($1::bigint))".into(),
            vec![epoch],
        ),
        Fence::Owned {
            node,
            epoch,
            sessions,
        } => (
            "WITH f AS (SELECT baton_fence_owned($1::text, $2::bigint, $3::bytea[]))".into(),
            vec![node, epoch, sessions],
        ),
    };
    if !sync {
        text.push_str(", s AS (SELECT set_config('synchronous_commit', 'off', true))");
    }
    for (i, Part { cf, del, put, val }) in arrays.iter().enumerate() {
        let t = table(cf);
        if !del.is_empty() {
            params.push(del);
            text.push_str(&format!(
                ", d{i} AS (DELETE FROM {t} WHERE key = ANY(${}::bytea[]))",
                params.len()
            ));
        }
        if !put.is_empty() {
            params.push(put);
            params.push(val);
            text.push_str(&format!(
                ", u{i} AS (INSERT INTO {t} (key, value) SELECT * FROM unnest(${}::bytea[], \
                 ${}::bytea[]) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value)",
                params.len() - 1,
                params.len()
            ));
        }
    }
    text.push_str(if sync {
        " SELECT 1 FROM f"
    } else {
        " SELECT 1 FROM f, s"
    });
    let stmt = match conn.groups.get(&text) {
        Some(s) => s.clone(),
        None => {
            let s = conn.client.prepare(&text).map_err(db_error)?;
            // A few dozen shapes occur; a bound all the same.
            if conn.groups.len() >= 256 {
                conn.groups.clear();
            }
            conn.groups.insert(text, s.clone());
            s
        }
    };
    conn.client.execute(&stmt, &params).map_err(db_error)?;
    Ok(())
}

fn write_in_transaction(tx: &mut Client, stmts: &Prepared, groups: &[&[Op]]) -> Result<()> {
    let mut pending = Pending::new();
    for op in groups.iter().flat_map(|ops| ops.iter()) {
        if pend(&mut pending, op) {
            continue;
        }
        if let Op::DeleteRange { cf, from, to } = op {
            // What came before the range is sent first, so it is deleted
            // too.
            send_pending(stmts, tx, &mut pending)?;
            tx.execute(prepared(stmts, cf, Sql::DeleteRange)?, &[from, to])
                .map_err(db_error)?;
        }
    }
    send_pending(stmts, tx, &mut pending)?;
    Ok(())
}

/// Note a put or delete in `pending` (a key's last write wins); false for
/// a range delete, which the caller handles in order.
fn pend<'a>(pending: &mut Pending<'a>, op: &'a Op) -> bool {
    match op {
        Op::Put { cf, key, value } => {
            pending.entry(cf).or_default().insert(key, Some(value));
            true
        }
        Op::Delete { cf, key } => {
            pending.entry(cf).or_default().insert(key, None);
            true
        }
        Op::DeleteRange { .. } => false,
        // The fence checks it; nothing to write.
        Op::Owned { .. } => true,
    }
}

/// Rows of one page of a walk, as entries.
fn page_rows(rows: Vec<postgres::Row>) -> Result<VecDeque<Entry>> {
    rows.into_iter()
        .map(|r| {
            let k: Vec<u8> = r.try_get(0).map_err(db_error)?;
            let v: Vec<u8> = r.try_get(1).map_err(db_error)?;
            Ok((k.into_boxed_slice(), v.into_boxed_slice()))
        })
        .collect()
}

/// Walks read 16 rows first (most stop early: the last record of a
/// journal, one page of a list), then up to this many at a time.
const MAX_PAGE: i64 = 1024;

struct PgWalk<'a> {
    engine: &'a PgEngine,
    cf: &'static str,
    dir: Dir,
    /// Where the next page starts: a key and whether it is included;
    /// `None` before the first page of a walk from either end.
    from: Option<(Vec<u8>, bool)>,
    rows: VecDeque<Entry>,
    page: i64,
    done: bool,
}

impl PgWalk<'_> {
    fn fetch(&mut self) -> Result<()> {
        let which = Sql::Page(self.dir, self.from.as_ref().map(|f| f.1));
        let key: Option<&[u8]> = self.from.as_ref().map(|f| &f.0[..]);
        let (cf, page) = (self.cf, self.page);
        let rows = self.engine.pool.with(|c| {
            let s = c.stmt(cf, which)?;
            c.client.query(&s, &[&key, &page]).map_err(db_error)
        })?;
        let got = rows.len() as i64;
        self.rows = page_rows(rows)?;
        self.done = got < self.page;
        if let Some((k, _)) = self.rows.back() {
            self.from = Some((k.to_vec(), false));
        }
        self.page = (self.page * 4).min(MAX_PAGE);
        Ok(())
    }
}

impl Iterator for PgWalk<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rows.is_empty() {
            if self.done {
                return None;
            }
            if let Err(e) = self.fetch() {
                self.done = true;
                return Some(Err(e));
            }
        }
        self.rows.pop_front().map(Ok)
    }
}

impl Engine for PgEngine {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.pool.with(|c| {
            let s = c.stmt(cf, Sql::Get)?;
            let row = c.client.query_opt(&s, &[&key]).map_err(db_error)?;
            row.map(|r| r.try_get(0).map_err(db_error)).transpose()
        })
    }

    fn walk<'a>(&'a self, cf: &'static str, from: Seek<'a>) -> Result<Walk<'a>> {
        let (dir, from) = match from {
            Seek::First => (Dir::Forward, None),
            Seek::Last => (Dir::Reverse, None),
            Seek::At(k, dir) => (dir, Some((k.to_vec(), true))),
        };
        Ok(Box::new(PgWalk {
            engine: self,
            cf,
            dir,
            from,
            rows: VecDeque::new(),
            page: 16,
            done: false,
        }))
    }

    fn write(&self, groups: &[&[Op]], sync: bool) -> Result<()> {
        if let Some(lost) = self.member.status().lost {
            return Err(Error::Unavailable(format!("fenced: {lost}")));
        }
        let mut slot = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut conn = match slot.take() {
            Some(c) if !c.client.is_closed() => c,
            _ => {
                // The fence decides whether this node may still write.
                let mut c = Conn::open(&self.pool.options)?;
                writer_settings(&mut c, &self.pool.options)?;
                c
            }
        };
        let node = &self.pool.options.node;
        let fence = match node.ownership {
            Ownership::Writer => Fence::Writer(self.member.epoch()),
            Ownership::Sessions => {
                let sessions: std::collections::BTreeSet<&[u8]> = groups
                    .iter()
                    .flat_map(|ops| ops.iter())
                    .filter_map(|op| match op {
                        Op::Owned { session } => Some(&session[..]),
                        _ => None,
                    })
                    .collect();
                Fence::Owned {
                    node: &node.id,
                    epoch: self.member.epoch(),
                    sessions: sessions.into_iter().collect(),
                }
            }
        };
        let out = write_on(&mut conn, &fence, groups, sync);
        if !conn.client.is_closed() {
            *slot = Some(conn);
        }
        out
    }

    fn node_status(&self) -> Option<NodeStatus> {
        Some(self.member.status())
    }

    fn claims(&self) -> bool {
        self.pool.options.node.ownership == Ownership::Sessions
    }

    fn claim(&self, session: &[u8]) -> Result<Claim> {
        let node = &self.pool.options.node;
        if node.ownership == Ownership::Writer {
            // The lease holder owns every session.
            return Ok(Claim::Ours);
        }
        if let Some(lost) = self.member.status().lost {
            return Err(Error::Unavailable(format!("fenced: {lost}")));
        }
        let epoch = self.member.epoch();
        self.pool.with(|c| {
            let stmt = c.cached(owners::CLAIM)?;
            owners::claim(&mut c.client, &stmt, node, epoch, session)
        })
    }

    fn release(&self, session: &[u8]) -> Result<()> {
        let node = &self.pool.options.node;
        if node.ownership == Ownership::Writer {
            return Ok(());
        }
        let epoch = self.member.epoch();
        self.pool.with(|c| {
            let stmt = c.cached(owners::RELEASE)?;
            owners::release(&mut c.client, &stmt, node, epoch, session)
        })
    }

    fn orphaned(&self, limit: usize) -> Result<Vec<Vec<u8>>> {
        let node = &self.pool.options.node;
        if node.ownership == Ownership::Writer {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.pool
            .with(|c| owners::orphaned(&mut c.client, node, limit))
    }

    fn owner(&self, session: &[u8]) -> Result<Option<Owner>> {
        self.pool.with(|c| owners::owner(&mut c.client, session))
    }

    fn cluster_nodes(&self) -> Result<Vec<member::NodeRow>> {
        self.pool.with(|c| member::nodes(&mut c.client))
    }

    fn compact(&self, cf: &'static str) -> Result<()> {
        // VACUUM FULL writes the live rows into a new file and removes the
        // old one, dead rows (deleted keys) with it.
        self.pool.with(|c| {
            c.client
                .batch_execute(&format!("VACUUM FULL {}", table(cf)))
                .map_err(|e| {
                    Error::Unavailable(format!(
                        "cannot rewrite {} (VACUUM FULL needs the table's owner): {e}",
                        table(cf)
                    ))
                })
        })
    }

    fn checkpoint(&self, _dir: &Path) -> Result<()> {
        Err(Error::Config(
            "a store on PostgreSQL is backed up by the database's own tools \
             (pg_dump, continuous archiving), not by `baton backup`"
                .into(),
        ))
    }
}
