use std::time::Duration;

use baton::proto::convert;
use baton::proto::v1::{self, sessions_client::SessionsClient};
use baton::types::SessionEvent;
use futures::StreamExt;
use tonic::transport::Channel;

pub type Client = SessionsClient<Channel>;

pub fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_baton"))
}

pub async fn start(client: &mut Client, route: &str) -> String {
    client
        .start_session(v1::StartSessionRequest {
            route: route.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id
}

/// Read events until `stop` says so (or the stream ends), with a time limit.
pub async fn read_until(
    stream: &mut tonic::Streaming<v1::SessionEvent>,
    mut stop: impl FnMut(&SessionEvent) -> bool,
) -> Vec<SessionEvent> {
    let mut out = Vec::new();
    let read = async {
        while let Some(item) = stream.next().await {
            let e = convert::event_from_proto(item.unwrap()).expect("a known event");
            let done = stop(&e);
            out.push(e);
            if done {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("events within 30 s");
    out
}

/// Send a message; the turn's event stream.
pub async fn send(
    client: &mut Client,
    session_id: &str,
    text: impl Into<String>,
) -> tonic::Streaming<v1::SessionEvent> {
    client
        .send_message(v1::SendMessageRequest {
            session_id: session_id.into(),
            content: text.into(),
            review: false,
            images: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Send a message and read the turn to its end.
pub async fn turn(client: &mut Client, session_id: &str, text: &str) -> Vec<SessionEvent> {
    let mut s = send(client, session_id, text).await;
    read_until(&mut s, |e| e.ends_turn()).await
}

/// The text of the last assistant message among `events`.
pub fn answer(events: &[SessionEvent]) -> String {
    events
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            baton::types::EventKind::AssistantMessage { message, .. } => {
                Some(message.content.clone())
            }
            _ => None,
        })
        .unwrap_or_default()
}

pub fn kinds(events: &[SessionEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

pub async fn get(client: &mut Client, id: &str) -> v1::Session {
    client
        .get_session(v1::GetSessionRequest {
            session_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub fn texts(s: &v1::Session) -> Vec<String> {
    s.messages.iter().map(|m| m.content.clone()).collect()
}

/// A `[[models]]` table for the fake OpenAI server.
pub fn fake_model_toml(base_url: &str, stream: bool) -> String {
    format!(
        "[sessions]\ndefault_route = \"fake\"\n\n[[models]]\nname = \"fake\"\nprovider = \"openai\"\nbase_url = {base_url:?}\nmodel = \"fake-model\"\nstream = {stream}\ntimeout_ms = 120000\n[models.retry]\ninitial_backoff_ms = 10\nmax_backoff_ms = 100\n"
    )
}

/// The real binary started on `toml` (data under `dir`), with its HTTP
/// address and a client for it.
pub async fn serve_http(
    dir: &std::path::Path,
    toml: &str,
) -> (baton_testkit::BatonProcess, String, reqwest::Client) {
    let config = baton_testkit::process::write_config(dir, &dir.join("data"), toml).unwrap();
    let baton = baton_testkit::BatonProcess::start(bin(), &config)
        .await
        .unwrap();
    let http = baton.http_url().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    (baton, http, client)
}

/// A metric of a child process as `/metrics` shows it, by the start of its
/// line (name and labels, e.g. `baton_turns_total{outcome="completed"}`);
/// 0 when the series does not exist yet.
pub async fn metric(server: &baton_testkit::BatonProcess, series: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.http_url().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// A Gates client of a child process.
pub async fn gates_client(
    server: &baton_testkit::BatonProcess,
) -> v1::gates_client::GatesClient<Channel> {
    v1::gates_client::GatesClient::new(
        Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// The pending gates, as listed by the Gates API.
pub async fn pending_gates(g: &mut v1::gates_client::GatesClient<Channel>) -> Vec<v1::Gate> {
    g.list_gates(v1::ListGatesRequest {
        status: v1::GateStatus::Pending as i32,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .gates
}

/// A session's events after `after_seq`: the journal, then live.
pub async fn resume(
    c: &mut Client,
    id: &str,
    after_seq: u64,
) -> tonic::Streaming<v1::SessionEvent> {
    c.resume_session(v1::ResumeSessionRequest {
        session_id: id.into(),
        after_seq,
    })
    .await
    .unwrap()
    .into_inner()
}

/// A session's whole journal up to the end of its (first unfinished) turn.
pub async fn to_turn_end(c: &mut Client, id: &str) -> Vec<SessionEvent> {
    let mut r = resume(c, id, 0).await;
    read_until(&mut r, |e| e.ends_turn()).await
}

/// The output text the events carry (`OutputDelta`s joined).
pub fn streamed(events: &[SessionEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            baton::types::EventKind::OutputDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// A size-limited tmpfs mounted for one test (CI runs as root), unmounted
/// when dropped.
pub struct SmallDisk {
    pub path: std::path::PathBuf,
}

impl SmallDisk {
    pub fn mount(path: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a size-limited tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path }
    }

    /// Fill the disk to the last byte; the filler file's path.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0u8; 1]);
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// The store of a stopped server whose data dir is `data`, opened offline:
/// RocksDB in the dir, or (with `BATON_TEST_STORE=postgres`) the database
/// that stands for it.
pub async fn open_store_offline(data: &std::path::Path) -> baton_store::Store {
    let mut opts = baton_store::StoreOptions::new(data, baton_store::Durability::Sync);
    opts.postgres = baton_pgtest::database_for(data)
        .map(|url| baton_store::postgres::PgOptions::new(url.unwrap()));
    tokio::task::spawn_blocking(move || baton_store::Store::open(opts))
        .await
        .unwrap()
        .unwrap()
}

/// For a test of what only the embedded store has (its data dir's disk, its
/// online backups): true, after saying so, when this run keeps the store
/// on PostgreSQL (`BATON_TEST_STORE=postgres`), where the test does not
/// apply; the caller returns.
pub fn rocksdb_only(why: &str) -> bool {
    let skip = baton_pgtest::on_postgres();
    if skip {
        eprintln!("not run with the store on PostgreSQL: {why}");
    }
    skip
}

/// Every acknowledged turn (per session, in the order acknowledged) is in
/// its session's journal once and in order (with turns whose outcome a
/// client was not told between them), no message twice, and each message
/// answered once with `answer(message)`.
pub async fn assert_acknowledged_once(
    client: &mut Client,
    acknowledged: &std::collections::BTreeMap<String, Vec<String>>,
    answer: impl Fn(&str) -> String,
) {
    for (s, acked) in acknowledged {
        let session = get(client, s).await;
        let of = |role: v1::Role| -> Vec<String> {
            session
                .messages
                .iter()
                .filter(|m| m.role == role as i32)
                .map(|m| m.content.clone())
                .collect()
        };
        let (users, answers) = (of(v1::Role::User), of(v1::Role::Assistant));
        let mut rest = users.iter();
        for a in acked {
            assert!(
                rest.any(|u| u == a),
                "{s}: acknowledged {a:?} is not in the journal in order: {users:?}"
            );
        }
        let distinct: std::collections::BTreeSet<_> = users.iter().collect();
        assert_eq!(
            distinct.len(),
            users.len(),
            "{s}: no message twice: {users:?}"
        );
        let want: Vec<String> = users.iter().map(|u| answer(u)).collect();
        assert_eq!(answers, want, "{s}: each message answered once");
    }
}
