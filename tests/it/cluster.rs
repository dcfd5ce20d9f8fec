//! Several nodes on one PostgreSQL database (docs/scaling.md): the real
//! binary three times on loopback, a private PostgreSQL server, the fake
//! model over real HTTP. One node holds the writer lease and owns every
//! session; the others forward to it and take over when it dies (SIGKILL)
//! or is paused past its lease (SIGSTOP), recovering as a restart does.
//!
//! Every node seals what it stores per data subject (`[privacy]
//! encryption`), with the subject keys in the database (`keystore =
//! "database"`): a node taking over opens what another sealed.
//!
//! These tests start their own database, so they run once, in the
//! RocksDB pass of the suite (the second pass would repeat them as is).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton::proto::v1;
use baton::types::EventKind;
use baton_testkit::fake_model::Behavior;
use baton_testkit::{BatonProcess, FakeOpenAi};
use futures::StreamExt;

use crate::common::*;

pub(crate) struct Cluster {
    pub(crate) pg: baton_pgtest::PgServer,
    pub(crate) db: String,
    /// Kept when a test fails, for the nodes' logs; removed on success.
    pub(crate) dir: tempfile::TempDir,
    url: String,
    model: String,
    /// More `[cluster]` settings for every node.
    pub(crate) cluster_extra: String,
}

impl Cluster {
    pub(crate) fn new(model: &str) -> Cluster {
        let pg = baton_pgtest::PgServer::start().unwrap();
        let url = pg.database().unwrap();
        let db = baton_pgtest::PgServer::database_name(&url);
        Cluster {
            pg,
            db,
            dir: tempfile::Builder::new()
                .prefix("baton-cluster-")
                .disable_cleanup(true)
                .tempdir()
                .unwrap(),
            url,
            model: model.to_string(),
            cluster_extra: String::new(),
        }
    }

    pub(crate) fn config(&self, node: &str, lease_ms: u64) -> std::path::PathBuf {
        let dir = self.dir.path().join(node);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("baton.toml");
        let master = self.dir.path().join("master.key");
        std::fs::write(
            &master,
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
        )
        .unwrap();
        std::fs::write(
            &path,
            format!(
                "[store]\ndata_dir = {:?}\nbackend = \"postgres\"\n\
                 postgres = {{ url = {:?}, connect_timeout_ms = 1000 }}\n\n\
                 [cluster]\nenabled = true\nnode_id = {node:?}\nlease_ms = {lease_ms}\n\
                 heartbeat_ms = 200\n{}\n[audit]\ndir = {:?}\n\n\
                 [privacy]\nencryption = true\nkeystore = \"database\"\nmaster_key_file = {:?}\n\n{}",
                dir.join("data").display().to_string(),
                self.url,
                self.cluster_extra,
                dir.join("audit").display().to_string(),
                master.display().to_string(),
                self.model,
            ),
        )
        .unwrap();
        path
    }

    /// The lease's holder and epoch, as the database has them (none
    /// before the first node created the schema).
    fn holder(&self) -> (String, i64) {
        let Ok(out) = self.pg.psql_in(
            &self.db,
            "SELECT coalesce(holder, '') || ' ' || epoch FROM baton_writer",
        ) else {
            return (String::new(), 0);
        };
        let (h, e) = out.trim().split_once(' ').unwrap_or(("", "0"));
        (h.to_string(), e.parse().unwrap_or(0))
    }

    async fn wait_for_holder(&self, pred: impl Fn(&str) -> bool) -> (String, i64) {
        for _ in 0..400 {
            let h = self.holder();
            if pred(&h.0) {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no node took the lease: {:?}", self.holder());
    }

    pub(crate) async fn start(&self, node: &str, lease_ms: u64) -> BatonProcess {
        BatonProcess::start(bin(), &self.config(node, lease_ms))
            .await
            .unwrap()
    }

    pub(crate) fn audit_verifies(&self, node: &str) {
        let out = std::process::Command::new(bin())
            .args(["audit", "verify", "--dir"])
            .arg(self.dir.path().join(node).join("audit"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{node}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the nodes' logs are kept in {}", self.dir.path().display());
        } else {
            let _ = std::fs::remove_dir_all(self.dir.path());
        }
    }
}

pub(crate) fn skip() -> bool {
    if baton_pgtest::on_postgres() {
        eprintln!(
            "skipped in the PostgreSQL pass: it starts its own database, and ran in the first"
        );
        return true;
    }
    false
}

/// Wait until `node` serves as the lease holder (until then its port
/// forwards, to the paused holder too).
async fn serving(node: &BatonProcess) {
    for _ in 0..400 {
        if node.log().contains("baton serving") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the node did not begin serving: {}", node.log());
}

/// `baton inspect actors --json` through `node`.
pub(crate) async fn inspect_actors(node: &BatonProcess) -> serde_json::Value {
    let out = tokio::process::Command::new(bin())
        .args(["inspect", "actors", "--json", "--server", &node.url()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The nodes of an actor tree's `cluster` child: id and status.
pub(crate) fn cluster_members(tree: &serde_json::Value) -> Vec<(String, String)> {
    let cluster = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "cluster")
        .unwrap_or_else(|| panic!("no cluster in {tree}"));
    cluster["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// What one client saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) acknowledged: Vec<String>,
    /// When its first turn after the kill completed.
    pub(crate) resumed: Option<Instant>,
}

/// Send turns to one session until `stop`, through `nodes` in turn: on a
/// failure (the node died, its forwarded connection broke, a turn cut)
/// move to the next node and go on with a new message.
async fn client_loop(
    nodes: Vec<String>,
    first: usize,
    session: String,
    worker: usize,
    stop: Arc<AtomicBool>,
    killed: Arc<std::sync::Mutex<Option<Instant>>>,
) -> Seen {
    let mut seen = Seen::default();
    let mut at = first;
    let mut client = None;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            let connect =
                v1::sessions_client::SessionsClient::connect(nodes[at % nodes.len()].clone());
            match tokio::time::timeout(Duration::from_secs(15), connect).await {
                Err(_) => panic!("{session}: connecting to node {} hung", at % nodes.len()),
                Ok(Ok(c)) => client = Some(c),
                Ok(Err(_)) => {
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let text = format!("w{worker} m{n}");
        n += 1;
        let call = async {
            let Ok(stream) = c
                .send_message(v1::SendMessageRequest {
                    session_id: session.clone(),
                    content: text.clone(),
                    review: false,
                    images: Vec::new(),
                })
                .await
            else {
                return false;
            };
            let mut stream = stream.into_inner();
            while let Some(Ok(e)) = stream.next().await {
                let e = baton::proto::convert::event_from_proto(e).unwrap();
                if e.ends_turn() {
                    return matches!(e.kind, EventKind::TurnCompleted { .. });
                }
            }
            false
        };
        // A call must end (answered, or cut when its node died), never hang.
        let Ok(completed) = tokio::time::timeout(Duration::from_secs(15), call).await else {
            panic!("{session}: {text:?} through node {} hung", at % nodes.len());
        };
        if completed {
            seen.acknowledged.push(text);
            let kill = *killed.lock().unwrap();
            if seen.resumed.is_none() && kill.is_some() {
                seen.resumed = Some(Instant::now());
            }
        } else {
            client = None;
            at += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    seen
}

/// Every acknowledged turn is in its session's journal once and in order,
/// each answered once, and (with `asked_once`) no acknowledged answer was
/// asked of the model twice. (A write that failed while the database was
/// down leaves its answer unrecorded: that turn may be asked again.)
pub(crate) async fn check_sessions(
    node: &BatonProcess,
    acknowledged: &BTreeMap<String, Vec<String>>,
    fake: &FakeOpenAi,
    asked_once: bool,
) {
    let mut asked: BTreeMap<String, usize> = BTreeMap::new();
    for body in fake.received() {
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string();
        *asked.entry(last).or_default() += 1;
    }
    for a in acknowledged.values().flatten() {
        if asked_once {
            assert_eq!(asked.get(a), Some(&1), "{a:?} was asked of the model once");
        } else {
            assert!(asked.contains_key(a), "{a:?} was asked of the model");
        }
    }
    let mut client = node.client().await.unwrap();
    assert_acknowledged_once(&mut client, acknowledged, |u| format!("echo: {u}")).await;
}

/// Clients sending turns to `sessions`, each through `urls` from node
/// `i % urls.len()` on; `marker` is set by the test at the moment after
/// which each client notes its first answer.
pub(crate) fn spawn_load(
    urls: &[String],
    sessions: &[String],
    stop: &Arc<AtomicBool>,
    marker: &Arc<std::sync::Mutex<Option<Instant>>>,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    sessions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(client_loop(
                urls.to_vec(),
                i % urls.len(),
                s.clone(),
                i,
                stop.clone(),
                marker.clone(),
            ))
        })
        .collect()
}

/// What the clients of [`spawn_load`] saw, by session, and how long after
/// `kill` each answered again; every session answered before and after.
pub(crate) async fn collect(
    workers: Vec<tokio::task::JoinHandle<Seen>>,
    sessions: &[String],
    kill: Instant,
) -> (BTreeMap<String, Vec<String>>, Vec<Duration>) {
    let mut acknowledged = BTreeMap::new();
    let mut resumed = Vec::new();
    for (w, s) in workers.into_iter().zip(sessions) {
        let seen = w.await.unwrap();
        assert!(!seen.acknowledged.is_empty(), "{s}: no turn answered");
        resumed.push(
            seen.resumed
                .unwrap_or_else(|| panic!("{s}: never answered after the kill"))
                .duration_since(kill),
        );
        acknowledged.insert(s.clone(), seen.acknowledged);
    }
    (acknowledged, resumed)
}

/// Three nodes on one database. Sessions are started and driven through
/// every node (the standbys forward to the holder). The holder is killed
/// with SIGKILL under load: another node takes the lease, recovers every
/// session as a restart does, and the clients go on through the
/// survivors. Nothing acknowledged is lost, duplicated or asked of the
/// model again; the time from the kill until every session answered again
/// is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_the_holder_killed_under_load() {
    if skip() {
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_behavior(Behavior {
        delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let cluster = Cluster::new(&fake_model_toml(&fake.base_url(), true));
    let n0 = cluster.start("n0", 2_000).await;
    let (_, epoch0) = cluster.wait_for_holder(|h| h == "n0").await;
    let n1 = cluster.start("n1", 2_000).await;
    let n2 = cluster.start("n2", 2_000).await;
    let nodes = [&n0, &n1, &n2];
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();

    // Sessions started through each node; each client begins on a node of
    // its own.
    let mut sessions = Vec::new();
    for i in 0..6 {
        let mut c = nodes[i % 3].client().await.unwrap();
        sessions.push(start(&mut c, "").await);
    }
    // The standbys answered with the holder's sessions.
    let mut via_n2 = n2.client().await.unwrap();
    assert_eq!(get(&mut via_n2, &sessions[0]).await.session_id, sessions[0]);
    // Inspection through a standby: the holder owns the actors, and the
    // database lists the three nodes.
    // (A standby joins the database's nodes just after it says it
    // listens.)
    let mut tree = inspect_actors(&n2).await;
    for _ in 0..100 {
        if cluster_members(&tree).len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        tree = inspect_actors(&n2).await;
    }
    assert_eq!(tree["detail"]["node"], "n0", "{tree}");
    let members = cluster_members(&tree);
    assert_eq!(
        members,
        [
            ("n0".to_string(), "holds_lease".to_string()),
            ("n1".into(), "standby".into()),
            ("n2".into(), "standby".into())
        ],
        "{tree}"
    );
    // Health on the holder (through a standby's HTTP port) names it.
    let health = reqwest::get(format!("{}/healthz", n1.http_url().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        health.starts_with("ok\nnode n0 holds the writer lease (epoch"),
        "{health}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(std::sync::Mutex::new(None));
    let workers = spawn_load(&urls, &sessions, &stop, &killed);
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let kill = Instant::now();
    *killed.lock().unwrap() = Some(kill);
    n0.kill9().await.unwrap();
    let (holder, epoch1) = cluster.wait_for_holder(|h| h == "n1" || h == "n2").await;
    assert!(epoch1 > epoch0);
    let took = kill.elapsed();
    // Load on the survivors until every session answered again, and a
    // little after.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let (acknowledged, resumed) = collect(workers, &sessions, kill).await;
    let total: usize = acknowledged.values().map(Vec::len).sum();
    let slowest = resumed.iter().max().unwrap();
    eprintln!(
        "cluster: {total} turns acknowledged; lease taken by {holder} {} ms after the SIGKILL; \
         every session answering again within {} ms",
        took.as_millis(),
        slowest.as_millis()
    );
    let survivor = if holder == "n1" { &n1 } else { &n2 };
    let tree = inspect_actors(survivor).await;
    assert_eq!(tree["detail"]["node"], holder.as_str(), "{tree}");
    let members = cluster_members(&tree);
    assert!(
        members.contains(&("n0".to_string(), "gone".to_string()))
            && members.contains(&(holder.clone(), "holds_lease".to_string())),
        "{tree}"
    );
    check_sessions(survivor, &acknowledged, &fake, true).await;
    // Read through the other survivor too: the same journal.
    let other = if holder == "n1" { &n2 } else { &n1 };
    check_sessions(other, &acknowledged, &fake, true).await;
    cluster.audit_verifies("n0");

    // Sealed in the database, one key per session (its own subject), kept
    // there for every node.
    let sql = |q: &str| {
        cluster
            .pg
            .psql_in(&cluster.db, q)
            .unwrap()
            .trim()
            .to_string()
    };
    let plain = "SELECT count(*) FROM baton_journal \
                 WHERE position(convert_to('echo: ', 'UTF8') in value) > 0";
    assert_eq!(sql(plain), "0", "plaintext answers in the journal");
    let keys = "SELECT count(*) FROM baton_keys WHERE key >= 'k/'::bytea AND key < 'k0'::bytea";
    assert_eq!(sql(keys), "6");
    // Erased through a standby (forwarded to the holder): gone for the
    // whole cluster, its key destroyed in the database.
    let gone = &sessions[0];
    let out = std::process::Command::new(bin())
        .args(["erase", "--subject", &format!("session:{gone}"), "--json"])
        .args(["--server", &other.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // (The session's key went with the session, as a deletion does.)
    assert_eq!(r["sessions_deleted"], 1, "{r}");
    assert_eq!(sql(keys), "5");
    let marker = format!(
        "SELECT count(*) FROM baton_keys WHERE key = \
         convert_to('e/', 'UTF8') || sha256(convert_to('session:{gone}', 'UTF8'))"
    );
    assert_eq!(sql(&marker), "1", "the erasure is recorded in the database");
    for node in [survivor, other] {
        let mut c = node.client().await.unwrap();
        let err = c
            .get_session(v1::GetSessionRequest {
                session_id: gone.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    }
    n1.terminate().await.unwrap();
    n2.terminate().await.unwrap();
    cluster.audit_verifies(&holder);
}

/// Send `sig` (`-STOP`, `-CONT`) to the process `pid`.
pub(crate) fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Resume `id` through `c` after `last_seen`, to the turn's end: the next
/// record on, none skipped or repeated, and the turn completed.
pub(crate) async fn resume_to_turn_end(
    c: &mut Client,
    id: &str,
    last_seen: u64,
) -> Vec<baton::types::SessionEvent> {
    let mut resumed = resume(c, id, last_seen).await;
    let rest = read_until(&mut resumed, |e| e.ends_turn()).await;
    assert_eq!(rest.first().map(|e| e.seq), Some(last_seen + 1), "{rest:?}");
    assert!(
        rest.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "{rest:?}"
    );
    assert!(
        matches!(
            rest.last().map(|e| &e.kind),
            Some(EventKind::TurnCompleted { .. })
        ),
        "{rest:?}"
    );
    rest
}

/// A holder paused with SIGSTOP past its lease while a turn is at the
/// model: a standby takes over and finishes the turn; the paused node,
/// resumed, has the answer it was waiting for but its write is refused by
/// the fence and it stops itself (status 75). The session has one writer:
/// each message answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_fenced_when_it_wakes() {
    if skip() {
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    let cluster = Cluster::new(&fake_model_toml(&fake.base_url(), true));
    let n0 = cluster.start("n0", 1_500).await;
    cluster.wait_for_holder(|h| h == "n0").await;
    let n1 = cluster.start("n1", 1_500).await;
    let mut c0 = n0.client().await.unwrap();
    let id = start(&mut c0, "").await;
    turn(&mut c0, &id, "first").await;

    // The next turn waits at the model; the holder is paused meanwhile.
    fake.set_behavior(Behavior {
        delay: Duration::from_millis(3_000),
        ..Behavior::default()
    });
    let mut s = send(&mut c0, &id, "second").await;
    let seen = read_until(&mut s, |e| e.kind.name() == "model_call_started").await;
    let last_seen = seen.last().map(|e| e.seq).unwrap();
    // Its opening records land (the write overlaps the call).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = n0.pid().unwrap();
    let signal = |sig: &str| signal(pid, sig);
    signal("-STOP");
    let paused = Instant::now();
    let (holder, _) = cluster.wait_for_holder(|h| h == "n1").await;
    assert_eq!(holder, "n1");
    eprintln!(
        "cluster: lease taken from the paused holder {} ms after the pause",
        paused.elapsed().as_millis()
    );
    // n1 recovers the turn and finishes it (the model asked again: no
    // answer was recorded before the pause). The client's stream, stuck
    // on the paused node, resumes on n1 from the last seq it saw: the
    // next record on, none skipped or repeated, to the turn's end.
    serving(&n1).await;
    let mut c1 = n1.client().await.unwrap();
    let rest = resume_to_turn_end(&mut c1, &id, last_seen).await;
    assert_eq!(answer(&rest), "echo: second");

    // The paused node wakes with its answer; its write is refused.
    fake.set_behavior(Behavior::default());
    signal("-CONT");
    let log = cluster.dir.path().join("n0").join("baton-0.log");
    woken_node_is_fenced(n0, &log, &mut c1, &id).await;
    n1.terminate().await.unwrap();
    cluster.audit_verifies("n1");
}

/// A node paused and resumed stops itself (status 75, its log saying it
/// was fenced), and session `id` holds each of its messages answered
/// once ("first", then "second" finished by the node that took over), and
/// goes on through `c`.
pub(crate) async fn woken_node_is_fenced(
    node: BatonProcess,
    log: &std::path::Path,
    c: &mut Client,
    id: &str,
) {
    let status = node.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(75), "the fenced node stops itself");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("fenced"), "{log}");
    let got = get(c, id).await;
    assert_eq!(
        texts(&got),
        ["first", "echo: first", "second", "echo: second"],
        "one writer: each message answered once"
    );
    let t = turn(c, id, "third").await;
    assert_eq!(answer(&t), "echo: third");
}

/// Poll `node`'s health until it answers `status` (at most 5 s): its
/// status and text.
pub(crate) async fn health_until(node: &BatonProcess, status: u16) -> (u16, String) {
    let mut seen = (0, String::new());
    for _ in 0..100 {
        let r = reqwest::get(format!("{}/healthz", node.http_url().unwrap()))
            .await
            .unwrap();
        seen = (r.status().as_u16(), r.text().await.unwrap());
        if seen.0 == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// The database restarted under a loaded cluster, down longer than the
/// lease: the holder reports it (health 503 naming the database), the
/// standby does not take the lease when the database returns (the holder
/// renews first), the cluster serves again by itself, and nothing
/// acknowledged is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_keeps_the_holder_and_loses_nothing() {
    if skip() {
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    let cluster = Cluster::new(&fake_model_toml(&fake.base_url(), true));
    let n0 = cluster.start("n0", 1_500).await;
    let (_, epoch) = cluster.wait_for_holder(|h| h == "n0").await;
    let n1 = cluster.start("n1", 1_500).await;
    let urls = vec![n0.url(), n1.url()];
    let mut sessions = Vec::new();
    for i in 0..4 {
        let mut c = [&n0, &n1][i % 2].client().await.unwrap();
        sessions.push(start(&mut c, "").await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let marked = Arc::new(std::sync::Mutex::new(None));
    let workers = spawn_load(&urls, &sessions, &stop, &marked);
    tokio::time::sleep(Duration::from_millis(800)).await;

    cluster.pg.stop().unwrap();
    let down = health_until(&n0, 503).await;
    assert_eq!(down.0, 503, "{down:?}");
    assert!(down.1.contains("database"), "{down:?}");
    // Down for longer than the lease.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    cluster.pg.restart().unwrap();
    *marked.lock().unwrap() = Some(Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = BTreeMap::new();
    for (w, s) in workers.into_iter().zip(&sessions) {
        let seen = w.await.unwrap();
        assert!(
            seen.resumed.is_some(),
            "{s}: never answered after the restart"
        );
        acknowledged.insert(s.clone(), seen.acknowledged);
    }
    assert_eq!(
        cluster.holder(),
        ("n0".to_string(), epoch),
        "the lease stayed with its holder"
    );
    assert_eq!(health_until(&n0, 200).await.0, 200);
    check_sessions(&n1, &acknowledged, &fake, false).await;
    n1.terminate().await.unwrap();
    n0.terminate().await.unwrap();
    cluster.audit_verifies("n0");
}

/// A flow run whose idempotent HTTP step is in flight when the holder is
/// SIGKILLed, started through the standby: the standby takes over and
/// finishes the run as a restart would — the recorded model answer not
/// asked again, the idempotent GET re-run once, the POST sent once, every
/// step completed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_run_in_flight_moves_to_the_standby() {
    use std::sync::atomic::Ordering::SeqCst;
    if skip() {
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(baton_testkit::ScriptedReply::Text("{\"total\": 12}".into()));
    let erp = crate::flows::erp().await;
    erp.slow.store(true, SeqCst);
    let shared = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(&crate::flows::flows_toml(shared.path(), &fake, &erp));
    let n0 = cluster.start("n0", 2_000).await;
    cluster.wait_for_holder(|h| h == "n0").await;
    let n1 = cluster.start("n1", 2_000).await;
    let mut c = crate::flows::flows_client(&n1).await;
    let id = crate::flows::start_run(
        &mut c,
        "invoice",
        serde_json::json!({"text": "total 12 EUR"}),
    )
    .await;
    crate::flows::wait_until("the lookup to reach the ERP", || erp.hits.load(SeqCst) == 1).await;
    n0.kill9().await.unwrap();
    erp.slow.store(false, SeqCst);
    cluster.wait_for_holder(|h| h == "n1").await;
    serving(&n1).await;
    let mut c = crate::flows::flows_client(&n1).await;
    let run = crate::flows::until_status(&mut c, &id, "completed").await;
    let output: serde_json::Value = serde_json::from_str(&run.output_json).unwrap();
    assert_eq!(
        output,
        serde_json::json!({"total": 12, "po": "PO-7", "posted": 200})
    );
    assert_eq!(
        fake.requests(),
        1,
        "the recorded model answer was not asked again"
    );
    assert_eq!(erp.hits.load(SeqCst), 3, "GET re-run once, POST once");
    let recs = crate::flows::records(&mut c, &id).await;
    let done = |path: &str| {
        recs.iter()
            .filter(|(t, r)| t == "step_completed" && r["path"] == path)
            .count()
    };
    assert_eq!((done("extract"), done("lookup"), done("post")), (1, 1, 1));
    n1.terminate().await.unwrap();
}
