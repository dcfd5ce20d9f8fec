//! Nodes sharing one PostgreSQL database: membership, the writer lease,
//! fencing.
//!
//! Every process that opens a store on the database is a node: it takes
//! an advisory lock named by its node id on a connection of its own (so a
//! second live process with the same id is refused, and the lock frees the
//! moment the process dies), keeps a row in `baton_nodes` with its
//! addresses and a heartbeat, and writes only while it holds the writer
//! lease, the one row of `baton_writer`: a holder, an epoch raised by every
//! taking, and an expiry on the database's clock that the holder renews
//! with each heartbeat.
//!
//! A node takes the lease when nobody holds it, when it is its own (the
//! previous process under its id is dead: its lock was free), when it has
//! expired, or when its holder's lock is free and its heartbeat is stale
//! (the holder died; a SIGKILL frees the lock at once). Every write
//! transaction begins with `baton_fence(epoch)`, which share-locks the
//! lease row and fails unless the epoch is still the holder's and the
//! lease has not expired; a taking updates that row, so it waits for a
//! write in progress to commit, and every write after it fails. A node
//! paused past its lease, or cut off from the database, therefore cannot
//! write once another node took over, whatever it believes; a transaction
//! it left open is ended by the server after `lease` of idleness.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postgres::Client;

use crate::owners;
use crate::pgconn::{self, NodeOptions, Ownership, PgOptions, db_error};
use crate::{Error, Result};

/// The advisory-lock class of node locks: `(NODE_LOCK_CLASS, node_key(id))`.
const NODE_LOCK_CLASS: i32 = 7_424_013;

/// The key of a node id's lock: FNV-1a, 31 bits (so the `oid` pg_locks
/// shows equals it).
pub(crate) fn node_key(id: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i32::try_from(h & 0x7fff_ffff).unwrap_or(0)
}

/// The schema of membership and the lease (migration 2).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS baton_nodes (
    node_id text PRIMARY KEY,
    lock_key integer NOT NULL,
    grpc_addr text NOT NULL DEFAULT '',
    http_addr text NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE baton_writer
    ADD COLUMN IF NOT EXISTS holder text,
    ADD COLUMN IF NOT EXISTS expires_at timestamptz NOT NULL DEFAULT '-infinity';
CREATE OR REPLACE FUNCTION baton_fence(e bigint) RETURNS void LANGUAGE plpgsql AS $fence$
DECLARE
    now_epoch bigint;
BEGIN
    SELECT epoch INTO now_epoch FROM baton_writer
     WHERE id = 1 AND epoch = e AND expires_at > clock_timestamp() FOR SHARE;
    IF NOT FOUND THEN
        SELECT epoch INTO now_epoch FROM baton_writer WHERE id = 1;
        IF now_epoch = e THEN
            RAISE EXCEPTION 'the writer lease at epoch % lapsed (not renewed in time)', e
                USING ERRCODE = 'BF001';
        END IF;
        RAISE EXCEPTION 'this node held the writer lease at epoch %, another node took it (epoch %)',
            e, now_epoch USING ERRCODE = 'BF001';
    END IF;
END $fence$;
";

/// A node's standing, as it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: String,
    /// The epoch of the writer lease this node holds.
    pub epoch: i64,
    /// The last heartbeat reached the database.
    pub database_ok: bool,
    /// Milliseconds since the lease was last renewed.
    pub renewed_ms_ago: u64,
    pub lease_ms: u64,
    /// Set once the lease is lost for good: another node took it.
    pub lost: Option<String>,
}

/// A node as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node_id: String,
    pub grpc_addr: String,
    pub http_addr: String,
    /// Milliseconds since its last heartbeat (database clock).
    pub heartbeat_ms_ago: i64,
    /// Its process is alive (its node lock is held).
    pub live: bool,
    /// It holds the writer lease (and at which epoch).
    pub holds_lease: Option<i64>,
    /// Its epoch as a node owning sessions one by one, and how many it
    /// owns at that epoch (0 in writer mode).
    pub epoch: i64,
    pub sessions_owned: i64,
}

/// The node holding the writer lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node_id: String,
    pub grpc_addr: String,
    pub http_addr: String,
    pub epoch: i64,
    /// Milliseconds until the lease expires unless renewed (negative:
    /// expired).
    pub expires_in_ms: i64,
}

/// Take the lease if it is free, ours, expired, or held by a dead node —
/// the last two only once the database has been up for two heartbeats: a
/// database that restarted dropped every node's connection (and lock),
/// and its holder gets that long to come back before anyone takes over.
const ACQUIRE: &str = "
UPDATE baton_writer w
   SET epoch = w.epoch + 1, holder = $1, since = now(),
       expires_at = clock_timestamp() + $2::float8 * interval '1 second'
 WHERE w.id = 1 AND (
       w.holder IS NULL OR w.holder = $1
    OR (pg_postmaster_start_time() < clock_timestamp() - $3::float8 * interval '1 second' AND (
           w.expires_at < clock_timestamp()
        OR NOT EXISTS (SELECT 1 FROM baton_nodes n WHERE n.node_id = w.holder)
        OR EXISTS (
            SELECT 1 FROM baton_nodes n
             WHERE n.node_id = w.holder
               AND n.heartbeat_at < clock_timestamp() - $3::float8 * interval '1 second'
               AND NOT EXISTS (
                   SELECT 1 FROM pg_locks l
                    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                      AND l.classid::int8 = 7424013 AND l.objid::int8 = n.lock_key::int8)))))
RETURNING w.epoch";

const LIVE: &str = "EXISTS (
    SELECT 1 FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.classid::int8 = 7424013 AND l.objid::int8 = n.lock_key::int8)";

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Take the writer lease if [`ACQUIRE`] allows it — and no node owning
/// sessions one by one is live: both checked under the mode lock that such
/// nodes join under, so the two modes never write at once.
fn try_acquire(client: &mut Client, node: &NodeOptions) -> Result<Option<i64>> {
    let mut tx = client.transaction().map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&owners::MODE_LOCK])
        .map_err(db_error)?;
    owners::refuse_beside_owners(&mut tx, &node.id)?;
    let row = tx
        .query_opt(
            ACQUIRE,
            &[&node.id, &secs(node.lease), &secs(node.heartbeat * 2)],
        )
        .map_err(db_error)?;
    let epoch = row.map(|r| r.try_get(0).map_err(db_error)).transpose()?;
    tx.commit().map_err(db_error)?;
    Ok(epoch)
}

/// The holder of the writer lease, if any.
pub fn holder(client: &mut Client) -> Result<Option<Holder>> {
    let row = client
        .query_opt(
            "SELECT w.holder, coalesce(n.grpc_addr, ''), coalesce(n.http_addr, ''), w.epoch, \
             (extract(epoch FROM (w.expires_at - clock_timestamp())) * 1000)::int8 \
             FROM baton_writer w LEFT JOIN baton_nodes n ON n.node_id = w.holder \
             WHERE w.id = 1 AND w.holder IS NOT NULL AND w.expires_at > '-infinity'",
            &[],
        )
        .map_err(db_error)?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(Holder {
        node_id: r.try_get(0).map_err(db_error)?,
        grpc_addr: r.try_get(1).map_err(db_error)?,
        http_addr: r.try_get(2).map_err(db_error)?,
        epoch: r.try_get(3).map_err(db_error)?,
        expires_in_ms: r.try_get(4).map_err(db_error)?,
    }))
}

/// Every node the database knows, in id order.
pub fn nodes(client: &mut Client) -> Result<Vec<NodeRow>> {
    let rows = client
        .query(
            &format!(
                "SELECT n.node_id, n.grpc_addr, n.http_addr, \
                 (extract(epoch FROM (clock_timestamp() - n.heartbeat_at)) * 1000)::int8, \
                 {LIVE}, \
                 (SELECT w.epoch FROM baton_writer w WHERE w.id = 1 AND w.holder = n.node_id \
                   AND w.expires_at > '-infinity'), n.epoch, \
                 (SELECT count(*) FROM baton_owners o WHERE o.node_id = n.node_id \
                   AND o.epoch = n.epoch) \
                 FROM baton_nodes n ORDER BY n.node_id"
            ),
            &[],
        )
        .map_err(db_error)?;
    rows.iter()
        .map(|r| {
            Ok(NodeRow {
                node_id: r.try_get(0).map_err(db_error)?,
                grpc_addr: r.try_get(1).map_err(db_error)?,
                http_addr: r.try_get(2).map_err(db_error)?,
                heartbeat_ms_ago: r.try_get(3).map_err(db_error)?,
                live: r.try_get(4).map_err(db_error)?,
                holds_lease: r.try_get(5).map_err(db_error)?,
                epoch: r.try_get(6).map_err(db_error)?,
                sessions_owned: r.try_get(7).map_err(db_error)?,
            })
        })
        .collect()
}

/// A connection for looking the cluster up (a standby finding where to
/// forward, an operator listing nodes): opened on first use and again
/// after it broke.
pub struct Directory {
    options: PgOptions,
    client: Option<Client>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        // A connection closes by blocking on its own small runtime, which
        // cannot happen on an async worker (where a directory is often
        // dropped): it is closed on a thread of its own.
        if let Some(c) = self.client.take() {
            let _ = std::thread::Builder::new()
                .name("baton-pg-close".into())
                .spawn(move || drop(c));
        }
    }
}

impl Directory {
    pub fn new(options: PgOptions) -> Self {
        Self {
            options,
            client: None,
        }
    }

    fn with<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => pgconn::connect(&self.options)?,
        };
        let out = f(&mut client);
        if !client.is_closed() {
            self.client = Some(client);
        }
        out
    }

    /// The node holding the writer lease, if any.
    pub fn holder(&mut self) -> Result<Option<Holder>> {
        self.with(holder)
    }

    /// Every node the database knows.
    pub fn nodes(&mut self) -> Result<Vec<NodeRow>> {
        self.with(nodes)
    }
}

/// Take this node's lock (its id is then ours until the connection ends).
fn take_node_lock(client: &mut Client, id: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&NODE_LOCK_CLASS, &node_key(id)],
        )
        .map_err(db_error)?;
    row.try_get(0).map_err(db_error)
}

/// A new member connection holding this node's lock again.
fn reconnect(options: &PgOptions) -> Result<Client> {
    let mut c = member_connection(options)?;
    if take_node_lock(&mut c, &options.node.id)? {
        Ok(c)
    } else {
        Err(Error::Unavailable(format!(
            "node id {:?}: its lock is still held (by this node's broken connection until \
             the server drops it, or by another process)",
            options.node.id
        )))
    }
}

fn member_connection(options: &PgOptions) -> Result<Client> {
    let mut client = pgconn::connect(options)?;
    // A taking waits for a write in progress on the lease row; never for
    // a transaction a paused node left open.
    let wait = options.node.heartbeat.as_millis().clamp(100, 5_000);
    client
        .batch_execute(&format!("SET lock_timeout = '{wait}ms'"))
        .map_err(db_error)?;
    Ok(client)
}

fn heartbeat(client: &mut Client, node: &NodeOptions) -> Result<()> {
    client
        .execute(
            "UPDATE baton_nodes SET heartbeat_at = clock_timestamp() WHERE node_id = $1",
            &[&node.id],
        )
        .map_err(db_error)?;
    Ok(())
}

/// Renew the lease: `false` when it is no longer ours (the epoch moved).
fn renew(client: &mut Client, node: &NodeOptions, epoch: i64) -> Result<bool> {
    heartbeat(client, node)?;
    let n = client
        .execute(
            "UPDATE baton_writer SET expires_at = clock_timestamp() + $2::float8 * interval '1 second' \
             WHERE id = 1 AND epoch = $1 AND holder = $3",
            &[&epoch, &secs(node.lease), &node.id],
        )
        .map_err(db_error)?;
    Ok(n == 1)
}

struct Shared {
    options: PgOptions,
    epoch: i64,
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    stop: bool,
    database_ok: bool,
    renewed: Instant,
    lost: Option<String>,
}

/// This process as the lease holder: its heartbeat thread renews the
/// lease until the member is dropped (which gives the lease up, so a
/// standby takes over at once) or another node takes it.
pub(crate) struct Member {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    /// Join the database's nodes and take the writer lease: returns once
    /// it is held; without `wait_for_lease`, gives up after the connect
    /// timeout naming the holder.
    pub(crate) fn join(options: &PgOptions) -> Result<Member> {
        let node = &options.node;
        pgconn::check_node_id(&node.id).map_err(Error::Config)?;
        let mut client = member_connection(options)?;
        // A process that just died under this id may not have been noticed
        // yet: wait for its lock a little.
        let deadline = Instant::now() + options.connect_timeout;
        while !take_node_lock(&mut client, &node.id)? {
            if Instant::now() >= deadline {
                return Err(Error::Config(format!(
                    "another Baton node is writing to this database under node id {:?} (its \
                     process is alive): give each node its own [cluster] node_id",
                    node.id
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        client
            .execute(
                "INSERT INTO baton_nodes (node_id, lock_key, grpc_addr, http_addr, started_at, \
                 heartbeat_at) VALUES ($1, $2, $3, $4, now(), clock_timestamp()) \
                 ON CONFLICT (node_id) DO UPDATE SET lock_key = EXCLUDED.lock_key, \
                 grpc_addr = EXCLUDED.grpc_addr, http_addr = EXCLUDED.http_addr, \
                 started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at",
                &[
                    &node.id,
                    &node_key(&node.id),
                    &node.grpc_addr,
                    &node.http_addr,
                ],
            )
            .map_err(db_error)?;
        // Nodes gone for a day (their process ended, their id not used
        // since) leave the listing, once they own nothing (a survivor
        // finds what a node left through its row: `owners::orphaned`).
        client
            .execute(
                &format!(
                    "DELETE FROM baton_nodes n WHERE n.node_id <> $1 \
                     AND n.heartbeat_at < clock_timestamp() - interval '1 day' AND NOT {LIVE} \
                     AND NOT EXISTS (SELECT 1 FROM baton_writer w WHERE w.holder = n.node_id) \
                     AND NOT EXISTS (SELECT 1 FROM baton_owners o WHERE o.node_id = n.node_id)"
                ),
                &[&node.id],
            )
            .map_err(db_error)?;
        if node.ownership == Ownership::Sessions {
            // A lock wait (a dead process's transaction still open on this
            // node's row) or a broken connection: try again until the
            // connect timeout.
            let (epoch, renewed) = loop {
                let renewed = Instant::now();
                match owners::join(&mut client, node) {
                    Ok(epoch) => break (epoch, renewed),
                    Err(Error::Unavailable(e)) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, "joining failed; trying again");
                        if client.is_closed() {
                            client = reconnect(options)?;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => return Err(e),
                }
            };
            tracing::info!(node = %node.id, epoch, "joined: this node owns the sessions it claims");
            return Self::start(options, client, epoch, renewed);
        }
        let mut announced = false;
        let epoch = loop {
            let renewed = Instant::now();
            match try_acquire(&mut client, node) {
                Ok(Some(epoch)) => break (epoch, renewed),
                Ok(None) => {}
                // A taking that waited too long on the row (a write of the
                // holder's in progress, or a transaction a paused holder
                // left open): try again.
                // The database gone (a standby waits it out): connect
                // again, and take this node's lock again, before the next
                // try.
                Err(e) if node.wait_for_lease && !matches!(e, Error::Config(_)) => {
                    tracing::debug!(error = %e, "taking the writer lease failed; trying again");
                    if client.is_closed() {
                        match reconnect(options) {
                            Ok(c) => client = c,
                            Err(e) => tracing::debug!(error = %e, "standby: cannot reconnect yet"),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
            if !node.wait_for_lease && Instant::now() >= deadline {
                let who = holder(&mut client)?
                    .map(|h| format!("node {:?} at {:?}", h.node_id, h.grpc_addr))
                    .unwrap_or_else(|| "another node".into());
                return Err(Error::Config(format!(
                    "another Baton node is writing to this database: {who} holds its writer \
                     lease. Run this node as a standby of it ([cluster] in the config), or \
                     stop that node first"
                )));
            }
            if !announced && node.wait_for_lease {
                announced = true;
                tracing::info!(node = %node.id, "standing by: another node holds the writer lease");
            }
            let _ = heartbeat(&mut client, node);
            std::thread::sleep(node.heartbeat.min(Duration::from_millis(200)));
        };
        let (epoch, renewed) = epoch;
        tracing::info!(node = %node.id, epoch, "holding the database's writer lease");
        Self::start(options, client, epoch, renewed)
    }

    /// Keep the lease from here on: the heartbeat thread.
    fn start(options: &PgOptions, client: Client, epoch: i64, renewed: Instant) -> Result<Member> {
        let shared = Arc::new(Shared {
            options: options.clone(),
            epoch,
            state: Mutex::new(State {
                stop: false,
                database_ok: true,
                renewed,
                lost: None,
            }),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("baton-pg-lease".into())
                .spawn(move || keep(shared, client))
                .map_err(|e| Error::Rocks(format!("cannot start the lease thread: {e}")))?
        };
        Ok(Member {
            shared,
            thread: Some(thread),
        })
    }

    pub(crate) fn epoch(&self) -> i64 {
        self.shared.epoch
    }

    pub(crate) fn status(&self) -> NodeStatus {
        let st = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        NodeStatus {
            node_id: self.shared.options.node.id.clone(),
            epoch: self.shared.epoch,
            database_ok: st.database_ok,
            renewed_ms_ago: u64::try_from(st.renewed.elapsed().as_millis()).unwrap_or(u64::MAX),
            lease_ms: u64::try_from(self.shared.options.node.lease.as_millis()).unwrap_or(u64::MAX),
            lost: st.lost.clone(),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The heartbeat thread: renew every `heartbeat`, reconnect when the
/// connection broke, stop for good once the lease is someone else's; on
/// stop, give the lease up.
fn keep(shared: Arc<Shared>, client: Client) {
    let node = &shared.options.node;
    let mut client = Some(client);
    loop {
        // Without a connection (the database down or restarting), try
        // again soon rather than a heartbeat later: after a restart every
        // node has two heartbeats to renew before others may take over.
        let wait = if client.as_ref().is_some_and(|c| !c.is_closed()) {
            node.heartbeat
        } else {
            node.heartbeat.min(Duration::from_millis(50))
        };
        {
            let st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            let (st, _) = shared
                .wake
                .wait_timeout_while(st, wait, |s| !s.stop)
                .unwrap_or_else(PoisonError::into_inner);
            if st.stop {
                break;
            }
            if st.lost.is_some() {
                continue;
            }
        }
        let c = match client.take() {
            Some(c) if !c.is_closed() => Ok(c),
            _ => reconnect(&shared.options),
        };
        let sent = Instant::now();
        let out = c.and_then(|mut c| {
            let r = match node.ownership {
                Ownership::Writer => renew(&mut c, node, shared.epoch),
                Ownership::Sessions => owners::renew(&mut c, node, shared.epoch),
            };
            client = Some(c);
            r
        });
        let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        match out {
            Ok(true) => {
                st.database_ok = true;
                st.renewed = sent;
            }
            Ok(false) => {
                st.database_ok = true;
                let msg = match node.ownership {
                    Ownership::Writer => format!(
                        "node {:?} lost the writer lease (epoch {}): another node took over",
                        node.id, shared.epoch
                    ),
                    Ownership::Sessions => format!(
                        "node {:?} lost its lease (epoch {}): it lapsed or another node fenced \
                         it, and its sessions may be owned elsewhere",
                        node.id, shared.epoch
                    ),
                };
                tracing::error!("{msg}");
                st.lost = Some(msg);
            }
            Err(e) => {
                if st.database_ok {
                    tracing::warn!(error = %e, "lease renewal failed");
                }
                st.database_ok = false;
            }
        }
    }
    // Give the lease up so that a standby takes over now, not when it
    // expires.
    let lost = shared
        .state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .lost
        .is_some();
    if let (Some(mut c), false) = (client, lost)
        && !c.is_closed()
    {
        let _ = match node.ownership {
            Ownership::Writer => c
                .execute(
                    "UPDATE baton_writer SET holder = NULL, expires_at = '-infinity' \
                     WHERE id = 1 AND epoch = $1",
                    &[&shared.epoch],
                )
                .map(drop)
                .map_err(db_error),
            Ownership::Sessions => owners::leave(&mut c, node, shared.epoch),
        };
    }
}
