//! Several nodes on one PostgreSQL database, each session owned by one of
//! them (`[cluster] ownership = "sessions"`, docs/scaling.md): the real
//! binary three times on loopback, a private PostgreSQL server, the fake
//! model over real HTTP. Every node serves; a session belongs to the node
//! that created or loaded it, and calls for it through another node are
//! forwarded there over gRPC. A node killed with SIGKILL loses its
//! sessions to the survivors, which recover them as a restart does; a
//! node paused past its lease is fenced, and stops itself when it wakes.
//!
//! Like `cluster`, these start their own database and run once, in the
//! RocksDB pass of the suite.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_testkit::FakeOpenAi;
use baton_testkit::fake_model::Behavior;

use crate::cluster::{
    Cluster, check_sessions, cluster_members, collect, health_until, inspect_actors,
    resume_to_turn_end, signal, skip, spawn_load, woken_node_is_fenced,
};
use crate::common::*;

pub(crate) fn owning_cluster(model: &str) -> Cluster {
    let mut c = Cluster::new(model);
    c.cluster_extra = "ownership = \"sessions\"\n".into();
    c
}

/// How many sessions each node owns, as the database has it.
fn owners(cluster: &Cluster) -> BTreeMap<String, usize> {
    let out = cluster
        .pg
        .psql_in(
            &cluster.db,
            "SELECT node_id || ' ' || count(*) FROM baton_owners GROUP BY node_id",
        )
        .unwrap();
    out.lines()
        .filter_map(|l| l.trim().split_once(' '))
        .map(|(n, c)| (n.to_string(), c.parse().unwrap()))
        .collect()
}

/// The owner of `session` in the database ("" for none).
pub(crate) fn owner_of(cluster: &Cluster, session: &str) -> String {
    let id: baton::types::SessionId = session.parse().unwrap();
    let hex: String = id.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    cluster
        .pg
        .psql_in(
            &cluster.db,
            &format!("SELECT node_id FROM baton_owners WHERE session = '\\x{hex}'::bytea"),
        )
        .unwrap()
        .trim()
        .to_string()
}

/// Three nodes owning sessions. Sessions are started through each node
/// (and owned by it), then driven through the others (forwarded to the
/// owner). One owner is killed with SIGKILL under load: the survivors
/// take its sessions over after two heartbeats and recover them as a
/// restart does, and the clients go on through the survivors. Nothing
/// acknowledged is lost, duplicated or asked of the model again; the
/// time from the kill until every session answered again is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_owning_sessions_survive_one_killed_under_load() {
    if skip() {
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_behavior(Behavior {
        delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let cluster = owning_cluster(&fake_model_toml(&fake.base_url(), true));
    let n0 = cluster.start("n0", 2_000).await;
    let n1 = cluster.start("n1", 2_000).await;
    let n2 = cluster.start("n2", 2_000).await;
    let nodes = [&n0, &n1, &n2];
    let names = ["n0", "n1", "n2"];

    // A new idle session has no owner; the node that loads it first (here
    // the one that started it) owns it.
    let mut sessions = Vec::new();
    for i in 0..6 {
        let mut c = nodes[i % 3].client().await.unwrap();
        let s = start(&mut c, "").await;
        assert_eq!(owner_of(&cluster, &s), "", "{s}");
        get(&mut c, &s).await;
        sessions.push(s);
    }
    for (i, s) in sessions.iter().enumerate() {
        assert_eq!(owner_of(&cluster, s), names[i % 3], "{s}");
    }
    // Read and driven through a node that does not own it: forwarded.
    let mut via_n1 = n1.client().await.unwrap();
    assert_eq!(get(&mut via_n1, &sessions[0]).await.session_id, sessions[0]);
    let t = turn(&mut via_n1, &sessions[0], "through n1").await;
    assert_eq!(answer(&t), "echo: through n1");
    assert_eq!(
        owner_of(&cluster, &sessions[0]),
        "n0",
        "forwarded, not moved"
    );
    // Its live state too: read from the owner's actor.
    let state = baton::proto::v1::inspect_client::InspectClient::connect(n1.url())
        .await
        .unwrap()
        .get_session_state(baton::proto::v1::GetSessionStateRequest {
            session_id: sessions[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(state.live, "the owner's live actor answered");
    assert!(
        state.state_json.contains("through n1"),
        "{}",
        state.state_json
    );
    // A subject erased through n1 whose session n0 holds live: deleted on
    // n0 (forwarded), then its key destroyed; gone on every node.
    let mut via_n0 = n0.client().await.unwrap();
    let doomed = start(&mut via_n0, "").await;
    turn(&mut via_n0, &doomed, "forget me").await;
    assert_eq!(owner_of(&cluster, &doomed), "n0");
    let out = std::process::Command::new(bin())
        .args(["erase", "--subject", &format!("session:{doomed}"), "--json"])
        .args(["--server", &n1.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["sessions_deleted"], 1, "{r}");
    for node in nodes {
        let err = node
            .client()
            .await
            .unwrap()
            .get_session(baton::proto::v1::GetSessionRequest {
                session_id: doomed.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    }
    // Inspection lists the nodes, each owning sessions; health says so.
    let tree = inspect_actors(&n2).await;
    assert_eq!(
        cluster_members(&tree),
        [
            ("n0".to_string(), "owns_sessions".to_string()),
            ("n1".into(), "owns_sessions".into()),
            ("n2".into(), "owns_sessions".into())
        ],
        "{tree}"
    );
    let health = reqwest::get(format!("{}/healthz", n1.http_url().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        health.starts_with("ok\nnode n1 owns the sessions it loaded under its lease (epoch"),
        "{health}"
    );
    // The front door: a racing continuation forwarded over HTTP.
    responses_race(&cluster, &fake, reqwest::Client::new(), &n0, &n2, "http").await;
    fake.set_behavior(Behavior {
        delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    // One idempotency key, started through the three nodes at once (four
    // calls each, retried while another node is creating it): one session.
    let mut calls = Vec::new();
    for i in 0..12 {
        let url = nodes[i % 3].url();
        calls.push(tokio::spawn(async move {
            let mut c = baton::proto::v1::sessions_client::SessionsClient::connect(url)
                .await
                .unwrap();
            for _ in 0..200 {
                match c
                    .start_session(baton::proto::v1::StartSessionRequest {
                        idempotency_key: "one-key".into(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        return (r.session_id, r.created);
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(s) => panic!("{s}"),
                }
            }
            panic!("the key stayed busy");
        }));
    }
    let mut started = Vec::new();
    for c in calls {
        started.push(c.await.unwrap());
    }
    let ids: std::collections::BTreeSet<&String> = started.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 1, "{started:?}");
    assert_eq!(
        started.iter().filter(|(_, created)| *created).count(),
        1,
        "{started:?}"
    );
    // A call for an unknown session is answered as such, wherever it goes.
    let err = via_n1
        .get_session(baton::proto::v1::GetSessionRequest {
            session_id: baton::types::SessionId::new().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // Each client begins on a node that does not own its session.
    let urls: Vec<String> = [&n1, &n2, &n0].iter().map(|n| n.url()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(std::sync::Mutex::new(None));
    let workers = spawn_load(&urls, &sessions, &stop, &killed);
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let kill = Instant::now();
    *killed.lock().unwrap() = Some(kill);
    n0.kill9().await.unwrap();
    // n0's sessions are taken over by the survivors.
    let mut taken = None;
    for _ in 0..400 {
        let by = owners(&cluster);
        if !by.contains_key("n0") {
            taken = Some(kill.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let taken = taken.unwrap_or_else(|| panic!("n0 still owns: {:?}", owners(&cluster)));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let (acknowledged, resumed) = collect(workers, &sessions, kill).await;
    let total: usize = acknowledged.values().map(Vec::len).sum();
    eprintln!(
        "owners: {total} turns acknowledged; the killed node's sessions taken {} ms after the \
         SIGKILL; every session answering again within {} ms",
        taken.as_millis(),
        resumed.iter().max().unwrap().as_millis()
    );
    for (i, s) in sessions.iter().enumerate() {
        let o = owner_of(&cluster, s);
        assert!(
            o.is_empty() || o == "n1" || o == "n2",
            "{s}: owned by {o:?}"
        );
        if i % 3 == 0 {
            assert_ne!(o, "n0");
        }
    }
    check_sessions(&n1, &acknowledged, &fake, true).await;
    check_sessions(&n2, &acknowledged, &fake, true).await;
    cluster.audit_verifies("n0");
    let audited = audited_records(&n1, &sessions).await;
    n1.terminate().await.unwrap();
    n2.terminate().await.unwrap();
    // Every audited record is in some node's trail: what n0 had handed to
    // its trail and not confirmed when it was killed was appended again by
    // the node that took its session over.
    let trails = trail_records(&cluster, &["n0", "n1", "n2"]);
    let missing: Vec<_> = audited.iter().filter(|r| !trails.contains(*r)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} audited records in no trail: {missing:?}",
        missing.len(),
        audited.len()
    );
    // Nodes that left own nothing any more: their rows stay, orphaned, for
    // a node that starts to resume what they held.
    let live = cluster
        .pg
        .psql_in(
            &cluster.db,
            "SELECT count(*) FROM baton_owners o JOIN baton_nodes n USING (node_id) \
             WHERE n.epoch = o.epoch AND n.lease_until > clock_timestamp()",
        )
        .unwrap();
    assert_eq!(live.trim(), "0");
    cluster.audit_verifies("n1");
    cluster.audit_verifies("n2");
}

/// The audited records of `sessions`' journals, read through `node`, as
/// (session, seq).
async fn audited_records(
    node: &baton_testkit::BatonProcess,
    sessions: &[String],
) -> std::collections::BTreeSet<(String, u64)> {
    const NOT_AUDITED: [&str; 5] = [
        "model_call_started",
        "output_delta",
        "tool_call_started",
        "turn_completed",
        "output_retracted",
    ];
    let mut c = baton::proto::v1::inspect_client::InspectClient::connect(node.url())
        .await
        .unwrap();
    let mut out = std::collections::BTreeSet::new();
    for s in sessions {
        let mut after = 0;
        loop {
            let page = c
                .get_journal(baton::proto::v1::GetJournalRequest {
                    session_id: s.clone(),
                    after_seq: after,
                    page_size: 1000,
                })
                .await
                .unwrap()
                .into_inner();
            for r in &page.records {
                if !NOT_AUDITED.contains(&r.kind.as_str()) {
                    out.insert((s.clone(), r.seq));
                }
            }
            if page.next_after_seq == 0 {
                break;
            }
            after = page.next_after_seq;
        }
    }
    out
}

/// The journal records (session, seq) in the nodes' audit trails.
fn trail_records(cluster: &Cluster, nodes: &[&str]) -> std::collections::BTreeSet<(String, u64)> {
    let mut out = std::collections::BTreeSet::new();
    for node in nodes {
        let export = std::process::Command::new(bin())
            .args(["audit", "export", "--dir"])
            .arg(cluster.dir.path().join(node).join("audit"))
            .output()
            .unwrap();
        assert!(export.status.success(), "{export:?}");
        for line in String::from_utf8_lossy(&export.stdout).lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            if let (Some(s), Some(seq)) = (r["session_id"].as_str(), r["data"]["seq"].as_u64()) {
                out.insert((s.to_string(), seq));
            }
        }
    }
    out
}

/// An owner paused with SIGSTOP past its lease while a turn of its session
/// is at the model: another node takes the session over (fencing the
/// paused node) and finishes the turn; the paused node, resumed, has the
/// answer it was waiting for, but its write is refused by the fence and
/// it stops itself (status 75). The session has one writer: each message
/// answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_and_its_session_has_one_writer() {
    if skip() {
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    let cluster = owning_cluster(&fake_model_toml(&fake.base_url(), true));
    let n0 = cluster.start("n0", 1_500).await;
    let n1 = cluster.start("n1", 1_500).await;
    let mut c0 = n0.client().await.unwrap();
    let id = start(&mut c0, "").await;
    turn(&mut c0, &id, "first").await;
    assert_eq!(owner_of(&cluster, &id), "n0");

    fake.set_behavior(Behavior {
        delay: Duration::from_millis(3_000),
        ..Behavior::default()
    });
    let mut s = send(&mut c0, &id, "second").await;
    let seen = read_until(&mut s, |e| e.kind.name() == "model_call_started").await;
    let last_seen = seen.last().map(|e| e.seq).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = n0.pid().unwrap();
    let signal = |sig: &str| signal(pid, sig);
    signal("-STOP");
    let paused = Instant::now();
    for _ in 0..400 {
        if owner_of(&cluster, &id) == "n1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(owner_of(&cluster, &id), "n1");
    eprintln!(
        "owners: session taken from the paused owner {} ms after the pause",
        paused.elapsed().as_millis()
    );
    // n1 finished the turn; the client resumes on n1 from the last seq it
    // saw: the next record on, none skipped or repeated.
    let mut c1 = n1.client().await.unwrap();
    let rest = resume_to_turn_end(&mut c1, &id, last_seen).await;
    assert_eq!(answer(&rest), "echo: second");

    fake.set_behavior(Behavior::default());
    signal("-CONT");
    let log = cluster.dir.path().join("n0").join("baton-0.log");
    woken_node_is_fenced(n0, &log, &mut c1, &id).await;
    n1.terminate().await.unwrap();
    cluster.audit_verifies("n1");
}

/// Nodes owning sessions with TLS on their gRPC and HTTP ports: a call
/// through a node that does not own the session is forwarded to the owner
/// over TLS, trusting `cluster.peer_ca_file`; a node with mutual TLS in
/// that mode, or TLS without the CA, is refused at start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_forwarded_to_the_owner_over_tls() {
    use crate::tls_auth::{ca, leaf, tls_channel, write};
    if skip() {
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let authority = ca("Baton Nodes CA");
    let (cert, key) = leaf(&authority, "baton", &["localhost", "127.0.0.1"]);
    let ca_pem = authority.cert.pem();
    let (c, k, a) = (
        write(tmp.path(), "node.pem", &cert),
        write(tmp.path(), "node.key", &key),
        write(tmp.path(), "ca.pem", &ca_pem),
    );
    let tls = format!(
        "\n[server.tls]\ncert_file = {c:?}\nkey_file = {k:?}\n\n\
         [http.tls]\ncert_file = {c:?}\nkey_file = {k:?}\n"
    );
    let mut cluster = owning_cluster(&format!("{}{tls}", fake_model_toml(&fake.base_url(), true)));
    // Without the CA, a node refuses to start, naming the key.
    let refused = refused_start(&cluster, "n9").await;
    assert!(refused.contains("cluster.peer_ca_file"), "{refused}");
    cluster.cluster_extra = format!("ownership = \"sessions\"\npeer_ca_file = {a:?}\n");
    let n0 = cluster.start("n0", 2_000).await;
    let n1 = cluster.start("n1", 2_000).await;
    let client = |url: String| {
        let ca_pem = ca_pem.clone();
        async move {
            baton::proto::v1::sessions_client::SessionsClient::new(
                tls_channel(&url, &ca_pem, None).await.unwrap(),
            )
        }
    };
    let mut c0 = client(n0.url()).await;
    let id = start(&mut c0, "").await;
    get(&mut c0, &id).await;
    assert_eq!(owner_of(&cluster, &id), "n0");
    let mut c1 = client(n1.url()).await;
    let t = turn(&mut c1, &id, "over tls").await;
    assert_eq!(answer(&t), "echo: over tls");
    assert_eq!(get(&mut c1, &id).await.session_id, id);
    assert_eq!(owner_of(&cluster, &id), "n0", "forwarded, not moved");
    // The front door over HTTPS: a racing continuation forwarded over TLS.
    let web = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    responses_race(&cluster, &fake, web, &n0, &n1, "https").await;
    n0.terminate().await.unwrap();
    n1.terminate().await.unwrap();
}

/// Start node `node`, which must refuse to: what it printed.
pub(crate) async fn refused_start(cluster: &Cluster, node: &str) -> String {
    let out = tokio::process::Command::new(crate::common::bin())
        .arg("serve")
        .arg("--config")
        .arg(cluster.config(node, 2_000))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The database restarted under load, down for longer than the nodes'
/// leases, with two nodes each owning sessions: both report it (health 503
/// naming the database), neither is fenced or takes the other's sessions
/// when it returns (both renew within the restart's grace), the clients
/// are served again by themselves, and nothing acknowledged is lost or
/// doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_keeps_every_owner_and_loses_nothing() {
    if skip() {
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    let cluster = owning_cluster(&fake_model_toml(&fake.base_url(), true));
    let n0 = cluster.start("n0", 1_500).await;
    let n1 = cluster.start("n1", 1_500).await;
    let mut sessions = Vec::new();
    for i in 0..4 {
        let mut c = [&n0, &n1][i % 2].client().await.unwrap();
        let s = start(&mut c, "").await;
        get(&mut c, &s).await;
        sessions.push(s);
    }
    let before: Vec<String> = sessions.iter().map(|s| owner_of(&cluster, s)).collect();
    assert_eq!(before, ["n0", "n1", "n0", "n1"]);
    // Each client drives a session through the node that does not own it.
    let urls = vec![n1.url(), n0.url()];
    let stop = Arc::new(AtomicBool::new(false));
    let marked = Arc::new(std::sync::Mutex::new(None));
    let workers = spawn_load(&urls, &sessions, &stop, &marked);
    tokio::time::sleep(Duration::from_millis(800)).await;

    cluster.pg.stop().unwrap();
    for node in [&n0, &n1] {
        let down = health_until(node, 503).await;
        assert_eq!(down.0, 503, "{down:?}");
        assert!(down.1.contains("database"), "{down:?}");
    }
    // Down for longer than the leases.
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
    let after: Vec<String> = sessions.iter().map(|s| owner_of(&cluster, s)).collect();
    assert_eq!(after, before, "every session kept its owner");
    for node in [&n0, &n1] {
        assert_eq!(health_until(node, 200).await.0, 200);
    }
    check_sessions(&n1, &acknowledged, &fake, false).await;
    n1.terminate().await.unwrap();
    n0.terminate().await.unwrap();
    cluster.audit_verifies("n0");
    cluster.audit_verifies("n1");
}

/// The front door: a conversation begun on `owner` is being continued
/// there (its session live on `owner`, the model slow); a second
/// continuation of the same response through `other` finds the session
/// owned by `owner` and is forwarded there over HTTP (`scheme`), where it
/// loses the race to continue in place and branches, as on one node.
async fn responses_race(
    cluster: &Cluster,
    fake: &FakeOpenAi,
    web: reqwest::Client,
    owner: &baton_testkit::BatonProcess,
    other: &baton_testkit::BatonProcess,
    scheme: &str,
) {
    let respond = |node: &baton_testkit::BatonProcess, body: serde_json::Value| {
        let url = node.http_url().unwrap().replacen("http", scheme, 1);
        web.post(format!("{url}/v1/responses")).json(&body).send()
    };
    let first = respond(
        owner,
        serde_json::json!({"model": "fake", "input": "door one"}),
    )
    .await
    .unwrap();
    assert_eq!(first.status(), 200);
    let door = first.headers()["x-baton-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let first: serde_json::Value = first.json().await.unwrap();
    let name = owner_of(cluster, &door);
    fake.set_behavior(Behavior {
        delay: Duration::from_millis(2_000),
        ..Behavior::default()
    });
    let in_place = tokio::spawn(respond(
        owner,
        serde_json::json!({"model": "fake", "input": "door two", "previous_response_id": first["id"]}),
    ));
    let mut live = String::new();
    for _ in 0..100 {
        live = owner_of(cluster, &door);
        if !live.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !live.is_empty() && name.is_empty(),
        "the continuation holds the session ({live:?}; before it {name:?})"
    );
    let branched = respond(
        other,
        serde_json::json!({"model": "fake", "input": "door three", "previous_response_id": first["id"]}),
    )
    .await
    .unwrap();
    let status = branched.status();
    let branch = branched.headers().get("x-baton-session-id").cloned();
    let body = branched.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("echo: door three"), "{body}");
    assert_ne!(
        branch.as_ref().and_then(|v| v.to_str().ok()),
        Some(door.as_str()),
        "branched: {body}"
    );
    let in_place = in_place.await.unwrap().unwrap();
    assert_eq!(in_place.headers()["x-baton-session-id"], door.as_str());
    assert!(in_place.text().await.unwrap().contains("echo: door two"));
    fake.set_behavior(Behavior::default());
}

/// A database that nodes owning sessions used goes back to the writer
/// lease: the same nodes start in writer mode (one holds the lease, the
/// other stands by), and inspection labels them so (a node's epoch left
/// from the earlier mode does not make it `owns_sessions`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_owning_nodes_goes_back_to_the_writer_lease() {
    if skip() {
        return;
    }
    let mut cluster = owning_cluster("[[models]]\nname = \"echo\"\nprovider = \"echo\"\n");
    let n0 = cluster.start("n0", 2_000).await;
    let n1 = cluster.start("n1", 2_000).await;
    let mut c = n1.client().await.unwrap();
    let s = start(&mut c, "").await;
    turn(&mut c, &s, "before").await;
    n0.terminate().await.unwrap();
    n1.terminate().await.unwrap();
    cluster.cluster_extra = String::new();
    let n0 = cluster.start("n0", 2_000).await;
    let n1 = cluster.start("n1", 2_000).await;
    // One holds the lease (whichever took it first), the other stands by;
    // the standby's row goes live as it joins, just after it listens.
    let roles = |tree: &serde_json::Value| {
        let mut r: Vec<String> = cluster_members(tree).into_iter().map(|(_, s)| s).collect();
        r.sort();
        r
    };
    let want = ["holds_lease".to_string(), "standby".to_string()];
    let mut tree = inspect_actors(&n0).await;
    for _ in 0..100 {
        if roles(&tree) == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        tree = inspect_actors(&n0).await;
    }
    assert_eq!(roles(&tree), want, "{tree}");
    // The session goes on under the lease, through the standby.
    let mut c = n1.client().await.unwrap();
    let t = turn(&mut c, &s, "after").await;
    assert_eq!(answer(&t), "after");
    n1.terminate().await.unwrap();
    n0.terminate().await.unwrap();
}
