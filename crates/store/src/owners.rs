//! Sessions owned one node each: node leases, session claims, and the
//! fence that makes every write conditional on them (schema migration 4).
//!
//! With [`Ownership::Sessions`](crate::pgconn::Ownership), several live
//! nodes write to one database at once, each to the sessions it owns:
//!
//! - every node holds a **lease of its own**, its row in `baton_nodes`:
//!   an **epoch** raised each time a process joins under the node's id, and
//!   an expiry on the database's clock renewed with every heartbeat;
//! - a session is owned by the node named in its row of `baton_owners`,
//!   at that node's epoch. A node **claims** a session before it works on
//!   it ([`crate::Store::claim`]): it gets the session when nobody owns it, when its
//!   owner's epoch is over (the owner restarted, or was fenced), or when
//!   its owner is gone — its lease expired, or its process is dead (its
//!   node lock free and its heartbeat older than two of the claimer's
//!   heartbeats), the last two
//!   only once the database has been up for two heartbeats. Taking a
//!   session from a gone node first **fences** that node: its epoch is
//!   raised, so it never writes or renews again, and every session it
//!   owned may be claimed. A node gives a session up when it passivates
//!   it ([`crate::Store::release`]): a passivated session has no owner;
//! - a batch names the sessions (and runs) it writes (`Op::Owned`; writes
//!   of no session name nothing and pass on the node's lease), and
//!   `baton_fence_owned(node, epoch, sessions)` — part of the write's one
//!   statement — share-locks the node's row and refuses the whole write
//!   unless the node's epoch is current, its lease unexpired, and every
//!   named session its own at that epoch. Fencing a node updates its row,
//!   so it waits for a write in progress and every later write fails.

use postgres::{Client, GenericClient};

use crate::pgconn::{NodeOptions, db_error};
use crate::{Error, Result};

/// The schema of per-session ownership (migration 4).
pub(crate) const SCHEMA: &str = "
ALTER TABLE baton_nodes
    ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS lease_until timestamptz NOT NULL DEFAULT '-infinity';
CREATE TABLE IF NOT EXISTS baton_owners (
    session bytea PRIMARY KEY,
    node_id text NOT NULL,
    epoch bigint NOT NULL,
    since timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS baton_owners_by_node ON baton_owners (node_id, epoch);
-- Node epochs come from one sequence: never reused, even by a node whose
-- row was dropped and came back.
CREATE SEQUENCE IF NOT EXISTS baton_node_epochs;

CREATE OR REPLACE FUNCTION baton_node_gone(n baton_nodes, stale float8) RETURNS boolean
LANGUAGE sql STABLE AS $gone$
    SELECT pg_postmaster_start_time() < clock_timestamp() - stale * interval '1 second' AND (
           n.lease_until < clock_timestamp()
        OR (n.heartbeat_at < clock_timestamp() - stale * interval '1 second' AND NOT EXISTS (
               SELECT 1 FROM pg_locks l
                WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND l.classid::int8 = 7424013 AND l.objid::int8 = n.lock_key::int8)))
$gone$;
";

/// The claim and the fence of a write naming sessions (migration 4,
/// replaced in 5).
///
/// A claim commits without waiting for its WAL flush, and a claim of a
/// session already this node's writes nothing.
///
/// Every lookup of `baton_owners` here goes through its primary key,
/// whatever the planner believes of the table: a plan cached while the
/// table was empty (a node's first writes) took `baton_owners_by_node`
/// for `node_id = me AND epoch = e` and scanned every session the node
/// owns on each group (2.3 ms a group at a few thousand sessions, most of
/// the cost of owning sessions in the load bench). The node and epoch are
/// therefore compared where no index can serve them: in the count's
/// `FILTER`, and with `IS NOT DISTINCT FROM` (the columns are never null).
pub(crate) const FENCE: &str = "
CREATE OR REPLACE FUNCTION baton_claim(s bytea, me text, e bigint, stale float8)
RETURNS TABLE (owner_node text, owner_epoch bigint) LANGUAGE plpgsql AS $claim$
DECLARE
    o baton_owners%ROWTYPE;
    n baton_nodes%ROWTYPE;
    known boolean;
BEGIN
    PERFORM 1 FROM baton_nodes x
      WHERE x.node_id = me AND x.epoch = e AND x.lease_until > clock_timestamp();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'node % at epoch % no longer holds its lease: it claims nothing', me, e
            USING ERRCODE = 'BF001';
    END IF;
    -- Committed without waiting for its WAL flush: every write relying
    -- on a claim is a synchronous commit, which flushes the claim first
    -- (the log is written in order). A claim a database crash lost was
    -- relied on by nothing durable.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Already this node's (a session claimed again as its actor loads):
    -- nothing to lock or write.
    PERFORM 1 FROM baton_owners x
      WHERE x.session = s AND (x.node_id, x.epoch) IS NOT DISTINCT FROM (me, e);
    IF FOUND THEN
        RETURN QUERY SELECT me, e;
        RETURN;
    END IF;
    LOOP
        SELECT * INTO o FROM baton_owners x WHERE x.session = s FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO baton_owners (session, node_id, epoch) VALUES (s, me, e)
                ON CONFLICT (session) DO NOTHING;
            IF FOUND THEN
                RETURN QUERY SELECT me, e;
                RETURN;
            END IF;
            -- Another node claimed it meanwhile: look again.
            CONTINUE;
        END IF;
        IF o.node_id = me AND o.epoch = e THEN
            RETURN QUERY SELECT me, e;
            RETURN;
        END IF;
        -- A live owner's row is read without a lock (its writes share-lock
        -- it); it is locked only to fence an owner that looks gone, and
        -- checked again under the lock.
        SELECT * INTO n FROM baton_nodes x WHERE x.node_id = o.node_id;
        known := FOUND;
        IF known AND n.epoch = o.epoch AND NOT baton_node_gone(n, stale) THEN
            RETURN QUERY SELECT o.node_id, o.epoch;
            RETURN;
        END IF;
        IF known AND n.epoch = o.epoch THEN
            SELECT * INTO n FROM baton_nodes x WHERE x.node_id = o.node_id FOR UPDATE;
            IF n.epoch = o.epoch AND NOT baton_node_gone(n, stale) THEN
                RETURN QUERY SELECT o.node_id, o.epoch;
                RETURN;
            END IF;
            IF n.epoch = o.epoch THEN
                -- Its owner is gone: fenced for good, so that it never
                -- writes again, before its session changes hands.
                UPDATE baton_nodes x SET epoch = nextval('baton_node_epochs'),
                       lease_until = '-infinity'
                 WHERE x.node_id = o.node_id;
            END IF;
        END IF;
        UPDATE baton_owners x SET node_id = me, epoch = e, since = now() WHERE x.session = s;
        RETURN QUERY SELECT me, e;
        RETURN;
    END LOOP;
END $claim$;

CREATE OR REPLACE FUNCTION baton_fence_owned(me text, e bigint, sessions bytea[]) RETURNS void
LANGUAGE plpgsql AS $fence$
DECLARE
    n baton_nodes%ROWTYPE;
    missing bytea;
    holder text;
BEGIN
    SELECT * INTO n FROM baton_nodes x WHERE x.node_id = me FOR SHARE;
    IF NOT FOUND OR n.epoch <> e THEN
        RAISE EXCEPTION 'node % at epoch % was fenced: another node took its sessions over', me, e
            USING ERRCODE = 'BF001';
    END IF;
    IF n.lease_until <= clock_timestamp() THEN
        RAISE EXCEPTION 'the lease of node % at epoch % lapsed (not renewed in time)', me, e
            USING ERRCODE = 'BF001';
    END IF;
    IF (SELECT count(*) FILTER (WHERE o.node_id = me AND o.epoch = e) FROM baton_owners o
         WHERE o.session = ANY(sessions))
       < cardinality(sessions) THEN
        SELECT x INTO missing FROM unnest(sessions) x
         WHERE NOT EXISTS (SELECT 1 FROM baton_owners o
                            WHERE o.session = x AND (o.node_id, o.epoch) IS NOT DISTINCT FROM (me, e))
         LIMIT 1;
        SELECT o.node_id INTO holder FROM baton_owners o WHERE o.session = missing;
        RAISE EXCEPTION 'session % is not owned by node % (its owner: %)',
            encode(missing, 'hex'), me, coalesce(holder, 'none') USING ERRCODE = 'BF002';
    END IF;
END $fence$;
";

/// Migration 5: an owner row whose node's row was dropped (earlier
/// versions dropped a node gone for a day, owning or not) gets a row back,
/// gone (no lease, no heartbeat, a lock key no node takes), so that
/// [`orphaned`], which starts from node rows, finds its sessions.
pub(crate) const NODE_ROWS_OF_OWNERS: &str = "
INSERT INTO baton_nodes (node_id, lock_key, heartbeat_at, epoch, lease_until)
SELECT DISTINCT o.node_id, -1, '-infinity'::timestamptz, 0, '-infinity'::timestamptz
  FROM baton_owners o
 WHERE NOT EXISTS (SELECT 1 FROM baton_nodes n WHERE n.node_id = o.node_id);
";

/// Who owns a session, as a claim found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node: it may work on the session (and its writes of it pass
    /// the fence) until it releases it or loses its lease.
    Ours,
    /// Another live node, which the call belongs to.
    Owned(Owner),
}

/// A node owning a session, and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node_id: String,
    pub epoch: i64,
    pub grpc_addr: String,
    pub http_addr: String,
}

fn secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

/// The advisory lock under which a node joins owning sessions, and a
/// node in writer mode takes the writer lease: each checks that no node of
/// the other mode is live, and acts, while holding it.
pub(crate) const MODE_LOCK: i64 = 7_424_012;

/// Join under a new epoch: this node's earlier process (dead: its node
/// lock was free) is fenced by it, and what it owned may be claimed.
/// Refused while a node holds the writer lease.
pub(crate) fn join(client: &mut Client, node: &NodeOptions) -> Result<i64> {
    let mut tx = client.transaction().map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MODE_LOCK])
        .map_err(db_error)?;
    refuse_beside_writer(&mut tx)?;
    let row = tx
        .query_one(
            "UPDATE baton_nodes SET epoch = nextval('baton_node_epochs'), \
             lease_until = clock_timestamp() + $2::float8 * interval '1 second' \
             WHERE node_id = $1 RETURNING epoch",
            &[&node.id, &secs(node.lease)],
        )
        .map_err(db_error)?;
    let epoch = row.try_get(0).map_err(db_error)?;
    tx.commit().map_err(db_error)?;
    Ok(epoch)
}

/// Heartbeat and renew this node's lease: `false` once it is over (the
/// node was fenced, or its lease lapsed and the database has been up for
/// two heartbeats — then another node may have taken its sessions).
pub(crate) fn renew(client: &mut Client, node: &NodeOptions, epoch: i64) -> Result<bool> {
    let n = client
        .execute(
            "UPDATE baton_nodes SET heartbeat_at = clock_timestamp(), \
             lease_until = clock_timestamp() + $3::float8 * interval '1 second' \
             WHERE node_id = $1 AND epoch = $2 AND (lease_until > clock_timestamp() \
             OR pg_postmaster_start_time() >= clock_timestamp() - $4::float8 * interval '1 second')",
            &[&node.id, &epoch, &secs(node.lease), &secs(node.heartbeat * 2)],
        )
        .map_err(db_error)?;
    Ok(n == 1)
}

/// A clean stop: the node's lease ends now, so that other nodes claim its
/// sessions at once. Its owner rows stay: the sessions it still held
/// (a turn the drain's grace cut short among them) are then what
/// [`orphaned`] lists, and survivors resume them as after a crash.
pub(crate) fn leave(client: &mut Client, node: &NodeOptions, epoch: i64) -> Result<()> {
    client
        .execute(
            "UPDATE baton_nodes SET lease_until = '-infinity' WHERE node_id = $1 AND epoch = $2",
            &[&node.id, &epoch],
        )
        .map_err(db_error)?;
    Ok(())
}

/// The statement of a claim: prepared once per connection by the engine
/// ([`claim`] takes it as text or prepared).
pub(crate) const CLAIM: &str = "SELECT c.owner_node, c.owner_epoch, coalesce(n.grpc_addr, ''), \
     coalesce(n.http_addr, '') \
     FROM baton_claim($1, $2, $3, $4) c LEFT JOIN baton_nodes n ON n.node_id = c.owner_node";

/// Claim `session` for this node at `epoch` (see the module), with
/// [`CLAIM`].
pub(crate) fn claim<S>(
    client: &mut Client,
    statement: &S,
    node: &NodeOptions,
    epoch: i64,
    session: &[u8],
) -> Result<Claim>
where
    S: postgres::ToStatement + ?Sized,
{
    let row = client
        .query_one(
            statement,
            &[&session, &node.id, &epoch, &secs(node.heartbeat * 2)],
        )
        .map_err(db_error)?;
    let owner = owner_row(&row)?;
    if owner.node_id == node.id && owner.epoch == epoch {
        Ok(Claim::Ours)
    } else {
        Ok(Claim::Owned(owner))
    }
}

/// The statement of a release, by the primary key only (see [`FENCE`]):
/// a plan cached on an empty table would take the node's index and scan
/// every session it owns. Committed without waiting for the flush: a
/// release a database crash lost leaves the session this node's (claimed
/// again at once by it, or taken over if it is gone).
pub(crate) const RELEASE: &str = "WITH f AS (SELECT set_config('synchronous_commit', 'off', true)) \
     DELETE FROM baton_owners o USING f WHERE o.session = $1 \
     AND (o.node_id, o.epoch) IS NOT DISTINCT FROM ($2, $3)";

/// Give `session` up (its actor passivated, its writes done), with
/// [`RELEASE`]: it has no owner until the next claim. Nothing happens
/// when it is not this node's at `epoch`.
pub(crate) fn release<S>(
    client: &mut Client,
    statement: &S,
    node: &NodeOptions,
    epoch: i64,
    session: &[u8],
) -> Result<()>
where
    S: postgres::ToStatement + ?Sized,
{
    client
        .execute(statement, &[&session, &node.id, &epoch])
        .map_err(db_error)?;
    Ok(())
}

/// The owner of `session` as the database has it, if any (a row left by
/// a gone node included: a claim would take it).
pub fn owner(client: &mut Client, session: &[u8]) -> Result<Option<Owner>> {
    let row = client
        .query_opt(
            "SELECT o.node_id, o.epoch, coalesce(n.grpc_addr, ''), coalesce(n.http_addr, '') \
             FROM baton_owners o LEFT JOIN baton_nodes n ON n.node_id = o.node_id \
             WHERE o.session = $1",
            &[&session],
        )
        .map_err(db_error)?;
    row.as_ref().map(owner_row).transpose()
}

/// An owner from a row of (node id, epoch, gRPC address, HTTP address).
fn owner_row(r: &postgres::Row) -> Result<Owner> {
    Ok(Owner {
        node_id: r.try_get(0).map_err(db_error)?,
        epoch: r.try_get(1).map_err(db_error)?,
        grpc_addr: r.try_get(2).map_err(db_error)?,
        http_addr: r.try_get(3).map_err(db_error)?,
    })
}

/// Sessions (and runs) whose owner is gone or whose owner's epoch is
/// over, at most `limit`: what a surviving node claims and recovers after
/// another died, paused past its lease or was fenced. Sessions come
/// first: other keys (runs, creations, the flows lease) are taken by
/// whoever needs them, and never crowd sessions out of a page.
///
/// Every node asks this every heartbeat, so it reads the few rows of
/// `baton_nodes` first and then, through `baton_owners_by_node`, only the
/// rows of gone nodes and of epochs that are over: the sessions live nodes
/// own are never scanned (a join of the whole table cost 13 ms a
/// heartbeat at 10,000 owned sessions). An owner row always names a node
/// row: a claim needs its node's row, and a node's row is dropped only
/// once it owns nothing.
pub(crate) fn orphaned(
    client: &mut Client,
    node: &NodeOptions,
    limit: i64,
) -> Result<Vec<Vec<u8>>> {
    let nodes = client
        .query(
            "SELECT n.node_id, n.epoch, baton_node_gone(n, $1) FROM baton_nodes n",
            &[&secs(node.heartbeat * 2)],
        )
        .map_err(db_error)?;
    let mut found: Vec<Vec<u8>> = Vec::new();
    for n in &nodes {
        let id: &str = n.try_get(0).map_err(db_error)?;
        let epoch: i64 = n.try_get(1).map_err(db_error)?;
        let gone: bool = n.try_get(2).map_err(db_error)?;
        let rows = if gone {
            client.query(
                "SELECT o.session FROM baton_owners o WHERE o.node_id = $1 \
                 ORDER BY length(o.session) <> 16, o.session LIMIT $2",
                &[&id, &limit],
            )
        } else {
            client.query(
                "SELECT o.session FROM baton_owners o \
                 WHERE o.node_id = $1 AND (o.epoch < $2 OR o.epoch > $2) \
                 ORDER BY length(o.session) <> 16, o.session LIMIT $3",
                &[&id, &epoch, &limit],
            )
        }
        .map_err(db_error)?;
        for r in &rows {
            found.push(r.try_get(0).map_err(db_error)?);
        }
    }
    found.sort_by(|a, b| (a.len() != 16, a).cmp(&(b.len() != 16, b)));
    found.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(found)
}

/// A node in writer mode holds the database: a node owning sessions may
/// not join beside it (and the reverse), since the writer's writes are not
/// fenced by session.
fn refuse_beside_writer(client: &mut impl GenericClient) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT holder FROM baton_writer WHERE id = 1 AND holder IS NOT NULL \
             AND expires_at > clock_timestamp()",
            &[],
        )
        .map_err(db_error)?;
    if let Some(r) = row {
        let holder: String = r.try_get(0).map_err(db_error)?;
        return Err(Error::Config(format!(
            "node {holder:?} holds this database's writer lease (one node owns every session): \
             nodes owning sessions one by one cannot join it; run every node in the same mode"
        )));
    }
    Ok(())
}

/// Nodes owning sessions one by one are live on this database: a node in
/// writer mode may not take the database beside them.
pub(crate) fn refuse_beside_owners(client: &mut impl GenericClient, me: &str) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT node_id FROM baton_nodes WHERE node_id <> $1 \
             AND lease_until > clock_timestamp() LIMIT 1",
            &[&me],
        )
        .map_err(db_error)?;
    if let Some(r) = row {
        let other: String = r.try_get(0).map_err(db_error)?;
        return Err(Error::Config(format!(
            "node {other:?} owns sessions of this database one by one: a node taking the whole \
             database (the writer lease) cannot join it; run every node in the same mode"
        )));
    }
    Ok(())
}
