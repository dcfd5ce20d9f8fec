//! The data directory's disk fills up under load (a size-limited tmpfs; CI
//! runs as root): new work is refused with UNAVAILABLE naming the cause,
//! health says so, nothing acknowledged is lost or half-written, and the
//! server takes work again by itself once space returns — then SIGKILL,
//! and every acknowledged answer is in the journal exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton::proto::v1;
use baton::types::EventKind;
use baton_testkit::BatonProcess;
use baton_testkit::process::write_config;
use futures::StreamExt;

use crate::common::*;

/// What one client saw: the messages whose turn completed, and the
/// refusals (status code and message).
#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    refused: Vec<(tonic::Code, String)>,
}

/// Send turns to one session until `stop`, a new message each time (a
/// refused one may or may not have been applied: the journal tells).
async fn client_loop(url: String, session: String, worker: usize, stop: Arc<AtomicBool>) -> Seen {
    let mut client = v1::sessions_client::SessionsClient::connect(url)
        .await
        .unwrap();
    let mut seen = Seen::default();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let text = format!("w{worker} m{n}");
        let r = client
            .send_message(v1::SendMessageRequest {
                session_id: session.clone(),
                content: text.clone(),
                review: false,
                images: Vec::new(),
            })
            .await;
        match r {
            Err(status) => {
                seen.refused
                    .push((status.code(), status.message().to_string()));
                tokio::time::sleep(Duration::from_millis(20)).await;
                n += 1;
            }
            Ok(stream) => {
                let mut stream = stream.into_inner();
                while let Some(Ok(e)) = stream.next().await {
                    let e = baton::proto::convert::event_from_proto(e).unwrap();
                    if e.ends_turn() {
                        if matches!(e.kind, EventKind::TurnCompleted { .. }) {
                            seen.acknowledged.push(text.clone());
                        }
                        break;
                    }
                }
                n += 1;
            }
        }
    }
    seen
}

async fn health(server: &BatonProcess) -> (u16, String) {
    let r = reqwest::get(format!("{}/healthz", server.http_url().unwrap()))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Fill the disk in 1 MiB steps (as another program writing would) until
/// less than `floor` bytes are free; the filler's path.
fn fill_until(disk: &SmallDisk, floor: u64) -> std::path::PathBuf {
    use std::io::Write;
    let filler = disk.path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![7u8; 1 << 20];
    while baton::disk::free_bytes(&disk.path).unwrap() >= floor {
        if f.write_all(&chunk).is_err() {
            break;
        }
        f.sync_all().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    filler
}

/// The config of a disk test: the echo model, the audit trail outside the
/// small disk, and the `[store]` lines given.
fn disk_config(dir: &std::path::Path, data: &std::path::Path, store: &str) -> std::path::PathBuf {
    let toml = format!(
        "{store}\n[[models]]\nname = \"echo\"\nprovider = \"echo\"\n\n[audit]\ndir = {:?}\n",
        dir.join("audit").display().to_string()
    );
    write_config(dir, data, &toml).unwrap()
}

/// Stop the load: what was acknowledged, per session, and every refusal.
async fn end_load(
    stop: &AtomicBool,
    workers: Vec<tokio::task::JoinHandle<Seen>>,
    sessions: &[String],
) -> (BTreeMap<String, Vec<String>>, Vec<(tonic::Code, String)>) {
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut refused = Vec::new();
    for (w, s) in workers.into_iter().zip(sessions) {
        let seen = w.await.unwrap();
        acknowledged.insert(s.clone(), seen.acknowledged);
        refused.extend(seen.refused);
    }
    (acknowledged, refused)
}

/// Four sessions, each with a client sending turns until the flag is set.
async fn load(
    server: &BatonProcess,
    client: &mut Client,
) -> (
    Vec<String>,
    Arc<AtomicBool>,
    Vec<tokio::task::JoinHandle<Seen>>,
) {
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(start(client, "echo").await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(client_loop(server.url(), s.clone(), i, stop.clone())))
        .collect();
    (sessions, stop, workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_disk_refuses_new_work_loses_nothing_and_recovers_by_itself() {
    if rocksdb_only(
        "it fills the disk under the data dir, where a store on PostgreSQL keeps nothing",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("datafs"), "256m");
    let data = disk.path.join("data");
    let config = disk_config(
        dir.path(),
        &data,
        "min_free_bytes = 16777216\nballast_bytes = 16777216\ndisk_check_ms = 50\n",
    );
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    assert!(data.join(baton::disk::BALLAST_FILE).exists());
    let mut client = server.client().await.unwrap();
    let (sessions, stop, workers) = load(&server, &mut client).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let filler = {
        let d = &disk;
        tokio::task::block_in_place(|| fill_until(d, 8 << 20))
    };
    wait_for("health to report the full disk", async || {
        health(&server).await.0 == 503
    })
    .await;
    let (_, text) = health(&server).await;
    assert!(text.contains("store.min_free_bytes"), "{text}");
    assert_eq!(metric(&server, "baton_disk_low").await, 1.0);
    assert!(
        !data.join(baton::disk::BALLAST_FILE).exists(),
        "the ballast was released for the work running"
    );
    let e = client
        .start_session(v1::StartSessionRequest {
            route: "echo".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("bytes free"), "{}", e.message());
    // gRPC health says the same.
    let mut h = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    wait_for("gRPC health to say NOT_SERVING", async || {
        let st = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: "baton.v1.Sessions".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        st == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Space returns: the server takes work again by itself.
    std::fs::remove_file(&filler).unwrap();
    wait_for("the server to serve again", async || {
        health(&server).await.0 == 200
    })
    .await;
    assert_eq!(metric(&server, "baton_disk_low").await, 0.0);
    assert!(data.join(baton::disk::BALLAST_FILE).exists());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acknowledged, refused) = end_load(&stop, workers, &sessions).await;
    assert!(!refused.is_empty(), "the load met the full disk");
    for (code, message) in &refused {
        assert_eq!(*code, tonic::Code::Unavailable, "{message}");
        assert!(message.contains("min_free_bytes"), "{message}");
    }
    let total: usize = acknowledged.values().map(Vec::len).sum();
    assert!(total > 20, "turns were answered before and after: {total}");

    // SIGKILL: every acknowledged answer is in the journal, once, in order.
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    check_after_sigkill(&server, &acknowledged, &dir.path().join("audit")).await;
    server.terminate().await.unwrap();
}

/// After a SIGKILL and a restart: every acknowledged turn is in its
/// session's journal once and in order, answered once, and the audit
/// chain verifies.
async fn check_after_sigkill(
    server: &BatonProcess,
    acknowledged: &BTreeMap<String, Vec<String>>,
    audit_dir: &std::path::Path,
) {
    let mut client = server.client().await.unwrap();
    // The echo model answers each message with itself.
    assert_acknowledged_once(&mut client, acknowledged, str::to_string).await;
    let out = std::process::Command::new(bin())
        .args(["audit", "verify", "--dir", audit_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No floor (`min_free_bytes = 0`): the disk fills to its last byte under
/// load between two checks, so RocksDB's own writes fail (ENOSPC on the
/// WAL). The store reports it: new work is refused with UNAVAILABLE naming
/// the cause, health is not serving, the sessions whose writes failed are
/// not marked failed; once space returns a probe write succeeds and the
/// server takes work again by itself, without a restart. Then SIGKILL:
/// nothing acknowledged lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_to_the_last_byte_between_checks_recovers_without_a_restart() {
    if rocksdb_only(
        "it fills the disk under the data dir, where a store on PostgreSQL keeps nothing",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("datafs"), "128m");
    let data = disk.path.join("data");
    let config = disk_config(
        dir.path(),
        &data,
        "min_free_bytes = 0\nballast_bytes = 0\ndisk_check_ms = 100\n",
    );
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let (sessions, stop, workers) = load(&server, &mut client).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let filler = tokio::task::block_in_place(|| disk.fill());
    wait_for("health to report the failing store", async || {
        health(&server).await.0 == 503
    })
    .await;
    let (_, text) = health(&server).await;
    assert!(
        text.contains("cannot be written") && text.contains("No space left"),
        "{text}"
    );
    assert_eq!(metric(&server, "baton_store_write_failing").await, 1.0);
    let e = client
        .start_session(v1::StartSessionRequest {
            route: "echo".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("cannot be written"), "{}", e.message());
    // Longer than the supervisor's restarts would last (5 in 3 s) if a
    // session were at fault.
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Space returns: the server takes work again by itself.
    std::fs::remove_file(&filler).unwrap();
    wait_for("the server to serve again", async || {
        health(&server).await.0 == 200
    })
    .await;
    assert_eq!(metric(&server, "baton_store_write_failing").await, 0.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut acknowledged, refused) = end_load(&stop, workers, &sessions).await;
    assert!(!refused.is_empty(), "the load met the full disk");
    for (code, message) in &refused {
        assert_eq!(*code, tonic::Code::Unavailable, "{message}");
        assert!(message.contains("cannot be written"), "{message}");
    }
    // No session was failed for the disk; each answers again.
    for s in &sessions {
        let got = get(&mut client, s).await;
        assert_ne!(got.status, v1::SessionStatus::Failed as i32, "{s}");
        let t = turn(&mut client, s, "after the disk").await;
        assert_eq!(kinds(&t).last(), Some(&"turn_completed"), "{s}");
        acknowledged
            .get_mut(s)
            .unwrap()
            .push("after the disk".into());
    }

    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    check_after_sigkill(&server, &acknowledged, &dir.path().join("audit")).await;
    server.terminate().await.unwrap();
}

/// The store on PostgreSQL, and the database stopped under load: new work
/// is refused with UNAVAILABLE naming the database and health is not
/// serving; once the database is back the server takes work again by
/// itself, without a restart. Then SIGKILL: nothing acknowledged is lost
/// or doubled, and the audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopped_under_load_refuses_new_work_loses_nothing_and_recovers_by_itself() {
    let pg = baton_pgtest::PgServer::start().unwrap();
    let url = pg.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Its own config (not write_config's, which may put the store on the
    // shared server): the database this test stops and starts.
    let config = dir.path().join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\ndata_dir = {:?}\nbackend = \"postgres\"\npostgres = {{ url = {url:?}, \
             connect_timeout_ms = 1000 }}\ndisk_check_ms = 100\n\n[[models]]\nname = \"echo\"\n\
             provider = \"echo\"\n\n[audit]\ndir = {:?}\n",
            dir.path().join("data").display().to_string(),
            dir.path().join("audit").display().to_string()
        ),
    )
    .unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let (sessions, stop, workers) = load(&server, &mut client).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    pg.stop().unwrap();
    wait_for("health to report the database gone", async || {
        health(&server).await.0 == 503
    })
    .await;
    let (_, text) = health(&server).await;
    assert!(text.contains("database"), "{text}");
    let e = client
        .start_session(v1::StartSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("database"), "{e:?}");

    pg.restart().unwrap();
    wait_for("the server to serve again", async || {
        health(&server).await.0 == 200
    })
    .await;
    start(&mut client, "echo").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acknowledged, refused) = end_load(&stop, workers, &sessions).await;
    assert!(!refused.is_empty(), "the load met the stopped database");
    for (code, message) in &refused {
        assert_eq!(*code, tonic::Code::Unavailable, "{message}");
    }
    let total: usize = acknowledged.values().map(Vec::len).sum();
    assert!(total > 20, "turns were answered before and after: {total}");

    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    check_after_sigkill(&server, &acknowledged, &dir.path().join("audit")).await;
    server.terminate().await.unwrap();
}
