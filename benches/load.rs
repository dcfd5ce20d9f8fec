//! Baton's load generator: one run measures the disk's fsync floor, a direct
//! baseline against an instant OpenAI-compatible upstream, the same traffic
//! through Baton over gRPC (sync and buffered durability, closed and open
//! loop, with the group-commit counters), resident memory per live idle
//! session, and the creation of many persisted sessions.
//!
//! Run with: cargo bench --bench load -- [options]
//!
//! See `--help` for the options and docs/performance.md for the method and
//! the figures measured on the project's machine.

/// The allocator the `baton` binary uses (see src/main.rs), so the figures
/// are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use baton_models::EndpointConfig;
use baton_proto::v1::sessions_client::SessionsClient;
use baton_proto::v1::{SendMessageRequest, StartSessionRequest, session_event::Kind};
use baton_runtime::{
    Durability, ListQuery, Runtime, RuntimeConfig, RuntimeHandle, StartSession, WriterStatsSnapshot,
};
use baton_types::{EventKind, SessionId};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::transport::Channel;

const HELP: &str = "\
Baton load generator

Run with: cargo bench --bench load -- [options]

Options (default in brackets; --quick values in braces):
  --quick                 small smoke run, well under 30 s
  --json                  print the results as JSON on stdout (the report goes to stderr)
  --sessions N            concurrent sessions of the latency runs [64] {16}
  --concurrency N         sessions of the max-throughput runs [256] {64}
  --rate N                open-loop offered rate, turns/s [1000] {200}
  --duration-secs N       measured seconds per run [10] {0.5}
  --warmup-secs N         unmeasured seconds before each run [2] {0.2}
  --turns-per-session N   turns before a worker moves to a fresh session [32] {32}
  --idle-sessions N       live idle sessions for the RSS measurement [10000] {500}
  --persisted N           persisted sessions to create [100000] {2000}
  --fsync-iters N         samples per fsync-floor test [2000] {200}
  --data-dir PATH         where temporary data dirs go [system temp dir]
  --child                 (internal) run as a memory phase's fresh child process
  --phases LIST           comma-separated subset of fsync,latency,throughput,nodelay,rss,persisted [all]
                          (nodelay: repeat the gRPC runs with TCP_NODELAY on the server's sockets)
";

/// The model name sent upstream.
const MODEL: &str = "load-model";

/// The instant upstream's only answer.
const UPSTREAM_RESPONSE: &str = r#"{"id":"chatcmpl-load","object":"chat.completion","created":0,"model":"load-model","choices":[{"index":0,"message":{"role":"assistant","content":"Noted."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#;

/// Requests the upstream answered, to check one model call per turn.
static UPSTREAM_CALLS: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Args {
    quick: bool,
    json: bool,
    /// Run as the child process of a memory phase.
    child: bool,
    sessions: usize,
    concurrency: usize,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    turns_per_session: usize,
    idle_sessions: usize,
    persisted: usize,
    fsync_iters: usize,
    data_dir: PathBuf,
    phases: Vec<String>,
}

impl Args {
    fn defaults(quick: bool) -> Self {
        let mut a = Args {
            quick,
            json: false,
            child: false,
            sessions: 64,
            concurrency: 256,
            rate: 1000.0,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            turns_per_session: 32,
            idle_sessions: 10_000,
            persisted: 100_000,
            fsync_iters: 2000,
            data_dir: std::env::temp_dir(),
            phases: [
                "fsync",
                "latency",
                "throughput",
                "nodelay",
                "rss",
                "persisted",
            ]
            .map(String::from)
            .to_vec(),
        };
        if quick {
            a.sessions = 16;
            a.concurrency = 64;
            a.rate = 200.0;
            a.duration = Duration::from_millis(500);
            a.warmup = Duration::from_millis(200);
            a.idle_sessions = 500;
            a.persisted = 2000;
            a.fsync_iters = 200;
        }
        a
    }

    fn parse() -> Result<Args> {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let mut a = Args::defaults(raw.iter().any(|x| x == "--quick"));
        let mut it = raw.into_iter();
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (arg, None),
            };
            let mut value = || -> Result<String> {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| anyhow!("{key} needs a value"))
            };
            match key.as_str() {
                // `cargo bench` passes --bench to harness-less benches.
                "--bench" | "--quick" => {}
                "--json" => a.json = true,
                "--child" => a.child = true,
                "--sessions" => a.sessions = positive(&value()?, &key)?,
                "--concurrency" => a.concurrency = positive(&value()?, &key)?,
                "--rate" => a.rate = positive(&value()?, &key)? as f64,
                "--duration-secs" => a.duration = secs(&value()?, &key)?,
                "--warmup-secs" => a.warmup = secs(&value()?, &key)?,
                "--turns-per-session" => a.turns_per_session = positive(&value()?, &key)?,
                "--idle-sessions" => a.idle_sessions = positive(&value()?, &key)?,
                "--persisted" => a.persisted = positive(&value()?, &key)?,
                "--fsync-iters" => a.fsync_iters = positive(&value()?, &key)?,
                "--data-dir" => a.data_dir = PathBuf::from(value()?),
                "--phases" => {
                    a.phases = value()?.split(',').map(|s| s.trim().to_string()).collect()
                }
                "-h" | "--help" => {
                    print!("{HELP}");
                    std::process::exit(0);
                }
                other => bail!("unknown option {other:?}; see --help"),
            }
        }
        Ok(a)
    }

    fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

fn positive(v: &str, key: &str) -> Result<usize> {
    let n: usize = v
        .parse()
        .with_context(|| format!("{key}: {v:?} is not a number"))?;
    if n == 0 {
        bail!("{key}: must be greater than 0");
    }
    Ok(n)
}

fn secs(v: &str, key: &str) -> Result<Duration> {
    let s: f64 = v
        .parse()
        .with_context(|| format!("{key}: {v:?} is not a number"))?;
    if !(s.is_finite() && s >= 0.0) {
        bail!("{key}: must be a non-negative number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

// ---------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Copy, Serialize, Default)]
struct Lat {
    count: u64,
    mean_us: f64,
    p50_us: u64,
    p95_us: u64,
    p99_us: u64,
    max_us: u64,
}

fn hist() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

fn lat(h: &Histogram<u64>) -> Lat {
    Lat {
        count: h.len(),
        mean_us: h.mean(),
        p50_us: h.value_at_quantile(0.50),
        p95_us: h.value_at_quantile(0.95),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
    }
}

#[derive(Debug, Clone, Serialize)]
struct FsyncFloor {
    path: String,
    iterations: usize,
    overwrite_4k_fdatasync: Lat,
    append_4k_fdatasync: Lat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct WriterDelta {
    groups: u64,
    requests: u64,
    synced_groups: u64,
    synced_write_micros: u64,
    /// Synced groups (fsyncs) per measured turn.
    fsyncs_per_turn: f64,
    /// Write requests per group: the group-commit factor.
    requests_per_group: f64,
    /// Mean duration of a synced group write (WAL append + fdatasync), µs.
    mean_synced_write_us: f64,
}

fn writer_delta(a: WriterStatsSnapshot, b: WriterStatsSnapshot, turns: u64) -> WriterDelta {
    let groups = b.groups - a.groups;
    let requests = b.requests - a.requests;
    let synced_groups = b.synced_groups - a.synced_groups;
    let synced_write_micros = b.synced_write_micros - a.synced_write_micros;
    WriterDelta {
        groups,
        requests,
        synced_groups,
        synced_write_micros,
        fsyncs_per_turn: ratio(synced_groups, turns),
        requests_per_group: ratio(requests, groups),
        mean_synced_write_us: ratio(synced_write_micros, synced_groups),
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[derive(Debug, Clone, Serialize)]
struct RunResult {
    label: String,
    /// `direct`, `baton-grpc` or `baton-embedded`.
    target: &'static str,
    durability: Option<&'static str>,
    /// `closed` (each session sends its next turn when the last one ends) or
    /// `open` (turns are sent at a fixed rate whatever the latency).
    mode: &'static str,
    sessions: usize,
    offered_rate: Option<f64>,
    measured_secs: f64,
    turns: u64,
    errors: u64,
    first_error: Option<String>,
    turns_per_sec: f64,
    latency: Lat,
    /// Open loop: turns whose session was still busy with the previous one.
    queued_behind_busy: u64,
    /// Upstream model calls per measured turn (expect 1.0).
    upstream_calls_per_turn: f64,
    /// CPU time of the whole process per measured turn, µs (2 cores = at
    /// most 2,000,000 µs per second).
    cpu_us_per_turn: f64,
    writer: Option<WriterDelta>,
}

#[derive(Debug, Clone, Serialize)]
struct Comparison {
    label: String,
    durability: &'static str,
    mode: &'static str,
    sessions: usize,
    offered_rate: Option<f64>,
    direct: RunResult,
    baton: RunResult,
    added_p50_us: i64,
    added_p95_us: i64,
    added_p99_us: i64,
}

fn compare(label: &str, direct: RunResult, baton: RunResult) -> Comparison {
    let d = direct.latency;
    let b = baton.latency;
    Comparison {
        label: label.to_string(),
        durability: baton.durability.unwrap_or("-"),
        mode: baton.mode,
        sessions: baton.sessions,
        offered_rate: baton.offered_rate,
        added_p50_us: b.p50_us as i64 - d.p50_us as i64,
        added_p95_us: b.p95_us as i64 - d.p95_us as i64,
        added_p99_us: b.p99_us as i64 - d.p99_us as i64,
        direct,
        baton,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdleRss {
    sessions: usize,
    warmup_sessions: usize,
    create_and_turn_secs: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    kib_per_session: f64,
    live_before: usize,
    live_after: usize,
    live_added_ok: bool,
    errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    sessions: usize,
    durability: String,
    in_flight: usize,
    errors: u64,
    secs: f64,
    sessions_per_sec: f64,
    writer: WriterDelta,
    rss_before_kib: u64,
    rss_after_kib: u64,
    rss_kib_per_1000_sessions: f64,
    live_sessions_after: usize,
    listed: u64,
    list_pages: u64,
    list_secs: f64,
    data_dir_bytes: u64,
    data_dir_allocated_bytes: u64,
    wal_bytes: u64,
    sst_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Machine {
    nproc: usize,
    mem_total_kib: u64,
    kernel: String,
    data_dir: String,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Report {
    machine: Option<Machine>,
    args: String,
    fsync: Option<FsyncFloor>,
    comparisons: Vec<Comparison>,
    runs: Vec<RunResult>,
    idle_rss: Option<IdleRss>,
    persisted: Option<Persisted>,
    total_secs: f64,
}

// ---------------------------------------------------------------------------
// Machine and process facts

fn rss_kib() -> Result<u64> {
    proc_kib("/proc/self/status", "VmRSS:")
}

fn proc_kib(file: &str, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(file)?;
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .ok_or_else(|| anyhow!("{key} not found in {file}"))?;
    Ok(line
        .trim_start_matches(key)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

/// CPU time (user + system) of this whole process — client, Baton and
/// upstream alike — in microseconds, from /proc/self/stat (clock ticks of
/// 10 ms, which is fine over multi-second windows).
fn cpu_us() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    // Fields after the command: state is field 3; utime and stime are 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) * 10_000
}

fn machine(data_dir: &Path) -> Machine {
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mem_total_kib: proc_kib("/proc/meminfo", "MemTotal:").unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        data_dir: data_dir.display().to_string(),
    }
}

#[derive(Debug, Default)]
struct DirSize {
    bytes: u64,
    allocated: u64,
    wal: u64,
    sst: u64,
}

fn dir_size(dir: &Path) -> Result<DirSize> {
    use std::os::unix::fs::MetadataExt;
    let mut out = DirSize::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let md = entry.metadata()?;
            if md.is_dir() {
                stack.push(entry.path());
                continue;
            }
            out.bytes += md.len();
            out.allocated += md.blocks() * 512;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".log") {
                out.wal += md.len();
            } else if name.ends_with(".sst") {
                out.sst += md.len();
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// 1. fsync floor

fn fsync_floor(dir: &Path, iterations: usize) -> Result<FsyncFloor> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::Builder::new()
        .prefix("baton-fsync-")
        .tempdir_in(dir)?;
    let block = vec![0xA5u8; 4096];

    // (a) Overwrite 4 KiB at offset 0 of a preallocated (written, synced) file:
    // no size or extent change, so fdatasync writes data only.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("overwrite.bin"))?;
    let mib = vec![0u8; 1 << 20];
    for _ in 0..64 {
        f.write_all(&mib)?;
    }
    f.sync_all()?;
    let mut h = hist()?;
    for _ in 0..iterations {
        let t = Instant::now();
        f.write_all_at(&block, 0)?;
        f.sync_data()?;
        record(&mut h, t.elapsed());
    }
    let overwrite = lat(&h);

    // (b) Append 4 KiB to a growing file: fdatasync must also persist the
    // new size (a journal commit on ext4).
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("append.bin"))?;
    let mut h = hist()?;
    for _ in 0..iterations {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        record(&mut h, t.elapsed());
    }
    Ok(FsyncFloor {
        path: dir.path().display().to_string(),
        iterations,
        overwrite_4k_fdatasync: overwrite,
        append_4k_fdatasync: lat(&h),
    })
}

// ---------------------------------------------------------------------------
// The instant upstream

async fn chat(body: axum::body::Bytes) -> impl axum::response::IntoResponse {
    drop(body);
    UPSTREAM_CALLS.fetch_add(1, Ordering::Relaxed);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        UPSTREAM_RESPONSE,
    )
}

/// Serve the upstream on its own single-threaded tokio runtime, standing in
/// for a separate process.
fn start_upstream(rt: &tokio::runtime::Runtime) -> Result<std::net::SocketAddr> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("upstream stopped: {e}");
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------
// Targets: direct, Baton over gRPC, Baton embedded

#[derive(Clone)]
enum Target {
    Direct {
        client: reqwest::Client,
        url: Arc<str>,
    },
    Grpc {
        clients: Arc<Vec<SessionsClient<Channel>>>,
    },
    Embedded {
        handle: RuntimeHandle,
    },
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Direct { .. } => "direct",
            Target::Grpc { .. } => "baton-grpc",
            Target::Embedded { .. } => "baton-embedded",
        }
    }
}

/// One worker's conversation. Baton sends the whole conversation to the model
/// each turn, so after `turns_per_session` turns the worker moves to a fresh
/// session (the direct client resets its history the same way): request
/// sizes stay bounded and the same for both.
enum Conn {
    Direct {
        client: reqwest::Client,
        url: Arc<str>,
        history: Vec<Value>,
    },
    Grpc {
        client: SessionsClient<Channel>,
        session: String,
    },
    Embedded {
        handle: RuntimeHandle,
        session: SessionId,
    },
}

struct Slot {
    conn: Conn,
    turns_in_session: usize,
    turns_per_session: usize,
    next: u64,
}

impl Slot {
    async fn new(target: &Target, index: usize, turns_per_session: usize) -> Result<Slot> {
        let conn = match target {
            Target::Direct { client, url } => Conn::Direct {
                client: client.clone(),
                url: url.clone(),
                history: Vec::new(),
            },
            Target::Grpc { clients } => {
                let mut client = clients[index % clients.len()].clone();
                let session = grpc_session(&mut client).await?;
                Conn::Grpc { client, session }
            }
            Target::Embedded { handle } => Conn::Embedded {
                handle: handle.clone(),
                session: handle.start_session(StartSession::default()).await?.id,
            },
        };
        Ok(Slot {
            conn,
            turns_in_session: 0,
            turns_per_session,
            next: 0,
        })
    }

    /// One turn: send a short user message and wait for the end of the turn.
    async fn turn(&mut self) -> Result<()> {
        self.next += 1;
        let content = format!("Hello! This is load-test message number {}.", self.next);
        match &mut self.conn {
            Conn::Direct {
                client,
                url,
                history,
            } => {
                history.push(json!({"role": "user", "content": content}));
                let body = json!({"model": MODEL, "messages": history, "stream": false});
                let resp = client
                    .post(&**url)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?;
                let bytes = resp.bytes().await?;
                let v: Value = serde_json::from_slice(&bytes)?;
                let text = v["choices"][0]["message"]["content"]
                    .as_str()
                    .ok_or_else(|| anyhow!("upstream answer has no content"))?
                    .to_string();
                history.push(json!({"role": "assistant", "content": text}));
                Ok(())
            }
            Conn::Grpc { client, session } => {
                let mut stream = client
                    .send_message(SendMessageRequest {
                        session_id: session.clone(),
                        content,
                        review: false,
                        images: Vec::new(),
                    })
                    .await?
                    .into_inner();
                while let Some(ev) = stream.message().await? {
                    match ev.kind {
                        Some(Kind::TurnCompleted(_)) => {
                            // Read to the stream's end (it ends right after
                            // this event): dropping it here lets the end
                            // arrive for a stream h2 has forgotten, a counted
                            // reset; after 1,024 the client's connection
                            // closes (`too_many_internal_resets`).
                            while stream.message().await?.is_some() {}
                            return Ok(());
                        }
                        Some(Kind::TurnFailed(f)) => bail!("turn failed: {}", f.reason),
                        Some(Kind::TurnCancelled(_)) => bail!("turn cancelled"),
                        _ => {}
                    }
                }
                bail!("stream ended before the turn completed")
            }
            Conn::Embedded { handle, session } => {
                let mut stream = handle.send(*session, content).await?;
                while let Some(ev) = stream.next().await {
                    match ev?.kind {
                        EventKind::TurnCompleted { .. } => return Ok(()),
                        EventKind::TurnFailed { reason, .. } => bail!("turn failed: {reason}"),
                        EventKind::TurnCancelled { .. } => bail!("turn cancelled"),
                        _ => {}
                    }
                }
                bail!("stream ended before the turn completed")
            }
        }
    }

    /// Count the turn; move to a fresh session when this one has had its share.
    async fn after_turn(&mut self) -> Result<()> {
        self.turns_in_session += 1;
        if self.turns_in_session < self.turns_per_session {
            return Ok(());
        }
        self.turns_in_session = 0;
        match &mut self.conn {
            Conn::Direct { history, .. } => history.clear(),
            Conn::Grpc { client, session } => *session = grpc_session(client).await?,
            Conn::Embedded { handle, session } => {
                *session = handle.start_session(StartSession::default()).await?.id
            }
        }
        Ok(())
    }
}

async fn grpc_session(client: &mut SessionsClient<Channel>) -> Result<String> {
    Ok(client
        .start_session(StartSessionRequest::default())
        .await?
        .into_inner()
        .session_id)
}

async fn make_slots(target: &Target, n: usize, turns_per_session: usize) -> Result<Vec<Slot>> {
    futures::stream::iter(0..n)
        .map(|i| Slot::new(target, i, turns_per_session))
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

#[derive(Default)]
struct WorkerOut {
    hist: Option<Histogram<u64>>,
    turns: u64,
    errors: u64,
    first_error: Option<String>,
}

impl WorkerOut {
    fn new() -> Result<Self> {
        Ok(WorkerOut {
            hist: Some(hist()?),
            ..Default::default()
        })
    }

    fn ok(&mut self, d: Duration) {
        self.turns += 1;
        if let Some(h) = &mut self.hist {
            record(h, d);
        }
    }

    fn err(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    fn merge(&mut self, o: WorkerOut) -> Result<()> {
        if let (Some(h), Some(oh)) = (&mut self.hist, &o.hist) {
            h.add(oh)?;
        }
        self.turns += o.turns;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        Ok(())
    }
}

struct RunSpec<'a> {
    label: String,
    target: &'a Target,
    durability: Option<&'static str>,
    sessions: usize,
    warmup: Duration,
    duration: Duration,
    turns_per_session: usize,
    /// For writer counters.
    runtime: Option<&'a RuntimeHandle>,
}

/// Closed loop: every session sends its next turn as soon as the previous one
/// ends. Measures the throughput at this concurrency; latency is counted for
/// turns that end inside the measured window.
async fn closed_loop(spec: RunSpec<'_>) -> Result<RunResult> {
    let slots = make_slots(spec.target, spec.sessions, spec.turns_per_session).await?;
    let start = Instant::now();
    let from = start + spec.warmup;
    let end = from + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut slot in slots {
        tasks.spawn(async move {
            let mut out = WorkerOut::new()?;
            while Instant::now() < end {
                let t = Instant::now();
                let r = slot.turn().await;
                let done = Instant::now();
                let measured = done >= from && done <= end;
                match r {
                    Ok(()) if measured => out.ok(done - t),
                    Ok(()) => {}
                    Err(e) => {
                        if measured {
                            out.err(&e);
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                if let Err(e) = slot.after_turn().await {
                    out.err(&e);
                }
            }
            Ok::<_, anyhow::Error>(out)
        });
    }
    tokio::time::sleep_until(from.into()).await;
    let w0 = spec.runtime.map(|r| r.writer_stats());
    let u0 = UPSTREAM_CALLS.load(Ordering::Relaxed);
    let c0 = cpu_us();
    tokio::time::sleep_until(end.into()).await;
    let w1 = spec.runtime.map(|r| r.writer_stats());
    let u1 = UPSTREAM_CALLS.load(Ordering::Relaxed);
    let c1 = cpu_us();
    let mut out = WorkerOut::new()?;
    while let Some(r) = tasks.join_next().await {
        out.merge(r??)?;
    }
    let secs = spec.duration.as_secs_f64();
    let latency = out.hist.as_ref().map(lat).unwrap_or_default();
    Ok(RunResult {
        label: spec.label,
        target: spec.target.name(),
        durability: spec.durability,
        mode: "closed",
        cpu_us_per_turn: ratio(c1 - c0, out.turns),
        sessions: spec.sessions,
        offered_rate: None,
        measured_secs: secs,
        turns: out.turns,
        errors: out.errors,
        first_error: out.first_error,
        turns_per_sec: out.turns as f64 / secs,
        latency,
        queued_behind_busy: 0,
        upstream_calls_per_turn: ratio(u1 - u0, out.turns),
        writer: w0.zip(w1).map(|(a, b)| writer_delta(a, b, out.turns)),
    })
}

/// Open loop: turns are dispatched at a fixed rate, round-robin over the
/// sessions, whatever the latency. A session still busy with its previous
/// turn queues the new one (and the queueing counts in its latency). Latency
/// runs from the dispatch instant to the end of the turn; turns dispatched in
/// the measured window are counted.
async fn open_loop(spec: RunSpec<'_>, rate: f64) -> Result<RunResult> {
    let slots = make_slots(spec.target, spec.sessions, spec.turns_per_session).await?;
    let start = Instant::now();
    let from = start + spec.warmup;
    let end = from + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut senders = Vec::with_capacity(slots.len());
    let mut pending = Vec::with_capacity(slots.len());
    for mut slot in slots {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let busy = Arc::new(AtomicUsize::new(0));
        senders.push(tx);
        pending.push(busy.clone());
        tasks.spawn(async move {
            let mut out = WorkerOut::new()?;
            while let Some(sent) = rx.recv().await {
                let r = slot.turn().await;
                let done = Instant::now();
                busy.fetch_sub(1, Ordering::SeqCst);
                let measured = sent >= from && sent < end;
                match r {
                    Ok(()) if measured => out.ok(done - sent),
                    Ok(()) => {}
                    Err(e) if measured => out.err(&e),
                    Err(_) => {}
                }
                if let Err(e) = slot.after_turn().await {
                    out.err(&e);
                }
            }
            Ok::<_, anyhow::Error>(out)
        });
    }
    let mut w0 = None;
    let mut u0 = 0;
    let mut c0 = 0;
    let mut queued_behind_busy = 0;
    let mut i: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due >= end {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let now = Instant::now();
        if now >= from && w0.is_none() {
            w0 = spec.runtime.map(|r| r.writer_stats());
            u0 = UPSTREAM_CALLS.load(Ordering::Relaxed);
            c0 = cpu_us();
        }
        let s = (i as usize) % senders.len();
        if pending[s].fetch_add(1, Ordering::SeqCst) > 0 && now >= from {
            queued_behind_busy += 1;
        }
        senders[s]
            .send(now)
            .map_err(|_| anyhow!("session worker {s} stopped"))?;
        i += 1;
    }
    drop(senders);
    let mut out = WorkerOut::new()?;
    let drained = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            out.merge(r??)?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    match drained {
        Ok(r) => r?,
        Err(_) => bail!("{}: turns still running 120 s after the run", spec.label),
    }
    // Every turn dispatched in the window has ended: its writes are counted.
    let w1 = spec.runtime.map(|r| r.writer_stats());
    let u1 = UPSTREAM_CALLS.load(Ordering::Relaxed);
    let c1 = cpu_us();
    let secs = spec.duration.as_secs_f64();
    let latency = out.hist.as_ref().map(lat).unwrap_or_default();
    Ok(RunResult {
        label: spec.label,
        target: spec.target.name(),
        durability: spec.durability,
        mode: "open",
        cpu_us_per_turn: ratio(c1 - c0, out.turns),
        sessions: spec.sessions,
        offered_rate: Some(rate),
        measured_secs: secs,
        turns: out.turns,
        errors: out.errors,
        first_error: out.first_error,
        turns_per_sec: out.turns as f64 / secs,
        latency,
        queued_behind_busy,
        upstream_calls_per_turn: ratio(u1 - u0, out.turns),
        writer: w0.zip(w1).map(|(a, b)| writer_delta(a, b, out.turns)),
    })
}

// ---------------------------------------------------------------------------
// A Baton instance: runtime + gRPC server on loopback

struct Baton {
    handle: RuntimeHandle,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn data_dir(parent: &Path, what: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("baton-load-{what}-"))
        .tempdir_in(parent)?)
}

fn upstream_endpoint(upstream: std::net::SocketAddr) -> EndpointConfig {
    let mut ep = EndpointConfig::openai("upstream", format!("http://{upstream}/v1"), MODEL);
    ep.stream = false;
    ep.max_concurrency = 512;
    ep.max_queue = 8192;
    ep
}

impl Baton {
    async fn start(
        parent: &Path,
        durability: Durability,
        upstream: std::net::SocketAddr,
        server_nodelay: bool,
    ) -> Result<Baton> {
        let dir = data_dir(parent, durability_name(durability))?;
        let mut cfg = RuntimeConfig::with_data_dir(dir.path());
        cfg.store.durability = durability;
        cfg.models = vec![upstream_endpoint(upstream)];
        cfg.sessions.default_route = "upstream".into();
        cfg.sessions.passivate_after_ms = 3_600_000;
        let handle = Runtime::builder(cfg).start().await?;
        let listener = if server_nodelay {
            // Linux copies TCP_NODELAY from a listening socket to the sockets
            // it accepts: the server then writes without Nagle's delay.
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_nodelay(true)?;
            socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
            socket.listen(1024)?
        } else {
            tokio::net::TcpListener::bind("127.0.0.1:0").await?
        };
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let handle = handle.clone();
            async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(e) =
                    baton_server::serve(handle, listener, Default::default(), shutdown).await
                {
                    eprintln!("gRPC server stopped: {e}");
                }
            }
        });
        Ok(Baton {
            handle,
            addr,
            stop: Some(stop),
            server,
            _dir: dir,
        })
    }

    /// gRPC clients over `n` HTTP/2 connections; workers use them round-robin.
    async fn grpc(&self, n: usize) -> Result<Target> {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let ch = Channel::from_shared(format!("http://{}", self.addr))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            clients.push(SessionsClient::new(ch));
        }
        Ok(Target::Grpc {
            clients: Arc::new(clients),
        })
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.server).await;
        self.handle.shutdown().await;
        Ok(())
    }
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Sync => "sync",
        Durability::Buffered => "buffered",
    }
}

// ---------------------------------------------------------------------------
// 2 + 3. Latency (direct vs Baton) and throughput

fn spec<'a>(
    args: &Args,
    label: String,
    target: &'a Target,
    durability: Option<&'static str>,
    sessions: usize,
    runtime: Option<&'a RuntimeHandle>,
) -> RunSpec<'a> {
    RunSpec {
        label,
        target,
        durability,
        sessions,
        warmup: args.warmup,
        duration: args.duration,
        turns_per_session: args.turns_per_session,
        runtime,
    }
}

async fn latency_and_throughput(
    args: &Args,
    upstream: std::net::SocketAddr,
    report: &mut Report,
) -> Result<()> {
    let direct = Target::Direct {
        client: reqwest::Client::builder().tcp_nodelay(true).build()?,
        url: format!("http://{upstream}/v1/chat/completions").into(),
    };
    let mut configs = vec![(Durability::Sync, false), (Durability::Buffered, false)];
    if args.has("nodelay") {
        configs.extend([(Durability::Sync, true), (Durability::Buffered, true)]);
    }
    for (durability, nodelay) in configs {
        let dname = if nodelay {
            match durability {
                Durability::Sync => "sync+nodelay",
                Durability::Buffered => "buffered+nodelay",
            }
        } else {
            durability_name(durability)
        };
        let baton = Baton::start(&args.data_dir, durability, upstream, nodelay).await?;
        let grpc = baton.grpc(4).await?;
        if args.has("latency") {
            // Open loop at the target rate: the added-latency comparison.
            let n = args.sessions;
            let label = format!("open {:.0}/s, {n} sessions", args.rate);
            progress(&format!("direct {label}"));
            let d = open_loop(
                spec(args, format!("direct {label}"), &direct, None, n, None),
                args.rate,
            )
            .await?;
            progress(&format!("baton {dname} {label}"));
            let b = open_loop(
                spec(
                    args,
                    format!("baton {dname} {label}"),
                    &grpc,
                    Some(dname),
                    n,
                    Some(&baton.handle),
                ),
                args.rate,
            )
            .await?;
            report.comparisons.push(compare(&label, d, b));

            // Closed loop at the same session count.
            let label = format!("closed, {n} sessions");
            progress(&format!("direct {label}"));
            let d = closed_loop(spec(
                args,
                format!("direct {label}"),
                &direct,
                None,
                n,
                None,
            ))
            .await?;
            progress(&format!("baton {dname} {label}"));
            let b = closed_loop(spec(
                args,
                format!("baton {dname} {label}"),
                &grpc,
                Some(dname),
                n,
                Some(&baton.handle),
            ))
            .await?;
            report.comparisons.push(compare(&label, d, b));
        }
        if args.has("throughput") && durability == Durability::Sync {
            let n = args.concurrency;
            let label = format!("closed, {n} sessions");
            progress(&format!("direct {label}"));
            let d = closed_loop(spec(
                args,
                format!("direct {label}"),
                &direct,
                None,
                n,
                None,
            ))
            .await?;
            progress(&format!("baton {dname} {label} (gRPC)"));
            let b = closed_loop(spec(
                args,
                format!("baton {dname} {label}"),
                &grpc,
                Some(dname),
                n,
                Some(&baton.handle),
            ))
            .await?;
            let embedded = Target::Embedded {
                handle: baton.handle.clone(),
            };
            progress(&format!("baton {dname} {label} (embedded)"));
            let e = closed_loop(spec(
                args,
                format!("baton-embedded {dname} {label}"),
                &embedded,
                Some(dname),
                n,
                Some(&baton.handle),
            ))
            .await?;
            report.comparisons.push(compare(&label, d.clone(), b));
            report
                .comparisons
                .push(compare(&format!("{label}, embedded API"), d, e));
        }
        baton.stop().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. RSS per live idle session

async fn create_and_touch(h: &RuntimeHandle, n: usize, in_flight: usize) -> u64 {
    futures::stream::iter(0..n)
        .map(|i| {
            let h = h.clone();
            async move {
                let s = h.start_session(StartSession::default()).await?;
                let mut events = h.send(s.id, format!("hello {i}")).await?;
                while let Some(ev) = events.next().await {
                    if ev?.ends_turn() {
                        break;
                    }
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(in_flight)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await as u64
}

async fn idle_rss(args: &Args) -> Result<IdleRss> {
    let dir = data_dir(&args.data_dir, "rss")?;
    // The built-in echo endpoint: no HTTP client buffers in the figure.
    let mut cfg = RuntimeConfig::with_data_dir(dir.path());
    cfg.sessions.passivate_after_ms = 3_600_000;
    let h = Runtime::builder(cfg).start().await?;
    let m = args.idle_sessions;
    let warm = (m / 10).clamp(1, 1000);
    let in_flight = 256;
    // Warm the allocator, the writer and the memtable first.
    let mut errors = create_and_touch(&h, warm, in_flight).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live_before = h.stats().await?.live_sessions;
    let rss_before_kib = rss_kib()?;
    let t = Instant::now();
    errors += create_and_touch(&h, m, in_flight).await;
    let create_and_turn_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after_kib = rss_kib()?;
    let live_after = h.stats().await?.live_sessions;
    h.shutdown().await;
    Ok(IdleRss {
        sessions: m,
        warmup_sessions: warm,
        create_and_turn_secs,
        rss_before_kib,
        rss_after_kib,
        kib_per_session: (rss_after_kib as f64 - rss_before_kib as f64) / m as f64,
        live_before,
        live_after,
        live_added_ok: live_after == live_before + m,
        errors,
    })
}

// ---------------------------------------------------------------------------
// 5. Many persisted sessions

async fn persisted(args: &Args) -> Result<Persisted> {
    let dir = data_dir(&args.data_dir, "persisted")?;
    let mut cfg = RuntimeConfig::with_data_dir(dir.path());
    cfg.store.durability = Durability::Sync;
    let h = Runtime::builder(cfg).start().await?;
    let n = args.persisted;
    let in_flight = 256;
    let rss_before_kib = rss_kib()?;
    let w0 = h.writer_stats();
    let t = Instant::now();
    let errors = futures::stream::iter(0..n)
        .map(|_| {
            let h = h.clone();
            async move { h.start_session(StartSession::default()).await }
        })
        .buffer_unordered(in_flight)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await as u64;
    let secs = t.elapsed().as_secs_f64();
    let writer = writer_delta(w0, h.writer_stats(), n as u64);
    let rss_after_kib = rss_kib()?;
    let live_sessions_after = h.stats().await?.live_sessions;
    let t = Instant::now();
    let mut listed = 0u64;
    let mut list_pages = 0u64;
    let mut token = None;
    loop {
        let page = h
            .list(ListQuery {
                status: None,
                page_size: 1000,
                page_token: token,
            })
            .await?;
        listed += page.sessions.len() as u64;
        list_pages += 1;
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    let list_secs = t.elapsed().as_secs_f64();
    let size = dir_size(dir.path())?;
    h.shutdown().await;
    Ok(Persisted {
        sessions: n,
        durability: "sync".into(),
        in_flight,
        errors,
        secs,
        sessions_per_sec: n as f64 / secs,
        writer,
        rss_before_kib,
        rss_after_kib,
        rss_kib_per_1000_sessions: (rss_after_kib as f64 - rss_before_kib as f64) * 1000.0
            / n as f64,
        live_sessions_after,
        listed,
        list_pages,
        list_secs,
        data_dir_bytes: size.bytes,
        data_dir_allocated_bytes: size.allocated,
        wal_bytes: size.wal,
        sst_bytes: size.sst,
    })
}

// ---------------------------------------------------------------------------
// Report

fn progress(what: &str) {
    eprintln!("[load] {what} ...");
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn signed_ms(us: i64) -> String {
    format!("{:+.3}", us as f64 / 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

fn render(r: &Report, args: &Args) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "\n=== Baton load report ===");
    if let Some(m) = &r.machine {
        let _ = writeln!(
            s,
            "machine: {} CPUs, {:.1} GiB RAM, Linux {}; data dir parent {}",
            m.nproc,
            m.mem_total_kib as f64 / 1048576.0,
            m.kernel,
            m.data_dir
        );
    }
    let _ = writeln!(s, "args: {}", r.args);
    if let Some(f) = &r.fsync {
        let _ = writeln!(
            s,
            "\n-- 1. fsync floor ({} samples each, in {}) --",
            f.iterations, f.path
        );
        for (name, l) in [
            (
                "overwrite 4 KiB @0 + fdatasync (preallocated 64 MiB)",
                f.overwrite_4k_fdatasync,
            ),
            (
                "append 4 KiB + fdatasync (growing file)",
                f.append_4k_fdatasync,
            ),
        ] {
            let _ = writeln!(
                s,
                "{name:<55} median {} ms  p99 {} ms  max {} ms",
                ms(l.p50_us),
                ms(l.p99_us),
                ms(l.max_us)
            );
        }
    }
    if !r.comparisons.is_empty() {
        let _ = writeln!(
            s,
            "\n-- 2+3. turns: direct baseline vs Baton over gRPC (latency in ms) --"
        );
        let _ = writeln!(
            s,
            "{:<44} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>9} {:>9} {:>8}",
            "run",
            "turns/s",
            "p50",
            "p95",
            "p99",
            "max",
            "errors",
            "fsync/t",
            "reqs/grp",
            "fsync ms",
            "cpu us/t"
        );
        for c in &r.comparisons {
            for run in [&c.direct, &c.baton] {
                let (fpt, rpg, fms) = match &run.writer {
                    Some(w) => (
                        format!("{:.3}", w.fsyncs_per_turn),
                        format!("{:.1}", w.requests_per_group),
                        format!("{:.3}", w.mean_synced_write_us / 1000.0),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                let _ = writeln!(
                    s,
                    "{:<44} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>9} {:>9} {:>8.0}",
                    run.label,
                    run.turns_per_sec,
                    ms(run.latency.p50_us),
                    ms(run.latency.p95_us),
                    ms(run.latency.p99_us),
                    ms(run.latency.max_us),
                    run.errors,
                    fpt,
                    rpg,
                    fms,
                    run.cpu_us_per_turn
                );
            }
            let _ = writeln!(
                s,
                "{:<44} {:>9} {:>8} {:>8} {:>8}   (queued behind a busy session: {}; upstream calls/turn {:.3})",
                format!("  added by Baton ({})", c.durability),
                "",
                signed_ms(c.added_p50_us),
                signed_ms(c.added_p95_us),
                signed_ms(c.added_p99_us),
                c.baton.queued_behind_busy,
                c.baton.upstream_calls_per_turn,
            );
            for run in [&c.direct, &c.baton] {
                if let Some(e) = &run.first_error {
                    let _ = writeln!(s, "  first error of {}: {e}", run.label);
                }
            }
        }
    }
    if let Some(i) = &r.idle_rss {
        let _ = writeln!(s, "\n-- 4. RSS per live idle session --");
        let _ = writeln!(
            s,
            "{} sessions created + one echo turn each in {:.1} s ({} errors); RSS {} -> {} KiB: {:.2} KiB/session; live sessions {} -> {} ({})",
            i.sessions,
            i.create_and_turn_secs,
            i.errors,
            i.rss_before_kib,
            i.rss_after_kib,
            i.kib_per_session,
            i.live_before,
            i.live_after,
            if i.live_added_ok {
                "all live"
            } else {
                "NOT all live"
            }
        );
    }
    if let Some(p) = &r.persisted {
        let _ = writeln!(s, "\n-- 5. persisted sessions --");
        let _ = writeln!(
            s,
            "{} sessions ({} durability, {} in flight) in {:.2} s = {:.0} sessions/s, {} errors; {} fsyncs, {:.1} requests/group",
            p.sessions,
            p.durability,
            p.in_flight,
            p.secs,
            p.sessions_per_sec,
            p.errors,
            p.writer.synced_groups,
            p.writer.requests_per_group
        );
        let _ = writeln!(
            s,
            "listed {} in {} pages in {:.2} s; live actors after: {}; RSS {} -> {} KiB ({:.1} KiB per 1000 sessions)",
            p.listed,
            p.list_pages,
            p.list_secs,
            p.live_sessions_after,
            p.rss_before_kib,
            p.rss_after_kib,
            p.rss_kib_per_1000_sessions
        );
        let _ = writeln!(
            s,
            "data dir: {:.1} MiB apparent, {:.1} MiB allocated (WAL {:.1} MiB, SST {:.1} MiB)",
            p.data_dir_bytes as f64 / 1048576.0,
            p.data_dir_allocated_bytes as f64 / 1048576.0,
            p.wal_bytes as f64 / 1048576.0,
            p.sst_bytes as f64 / 1048576.0
        );
    }

    let _ = writeln!(s, "\n-- targets --");
    let open = |d: &str| {
        r.comparisons
            .iter()
            .find(|c| c.mode == "open" && c.durability == d)
    };
    for d in ["sync", "sync+nodelay"] {
        let Some(c) = open(d) else { continue };
        let _ = writeln!(
            s,
            "{d}: added latency at {:.0}/s: p50 {} ms (<= 0.5: {}), p99 {} ms (<= 2: {})",
            args.rate,
            signed_ms(c.added_p50_us),
            verdict(c.added_p50_us <= 500),
            signed_ms(c.added_p99_us),
            verdict(c.added_p99_us <= 2000)
        );
        if let Some(w) = &c.baton.writer {
            let _ = writeln!(
                s,
                "{d}: group commit at {:.0}/s: {:.3} fsyncs per turn (2 synced batches per turn), {:.1} requests per group",
                args.rate, w.fsyncs_per_turn, w.requests_per_group
            );
        }
    }
    for d in ["buffered", "buffered+nodelay"] {
        let Some(c) = open(d) else { continue };
        let _ = writeln!(
            s,
            "{d}: added latency at {:.0}/s: p99 {} ms (<= 1: {})",
            args.rate,
            signed_ms(c.added_p99_us),
            verdict(c.added_p99_us <= 1000)
        );
    }
    for c in r
        .comparisons
        .iter()
        .filter(|c| c.mode == "closed" && c.sessions == args.concurrency)
    {
        let _ = writeln!(
            s,
            "{} throughput, {}: {:.0} turns/s (>= 3000: {})",
            c.durability,
            c.label,
            c.baton.turns_per_sec,
            verdict(c.baton.turns_per_sec >= 3000.0)
        );
    }
    if let Some(i) = &r.idle_rss {
        let _ = writeln!(
            s,
            "RSS per live idle session: {:.2} KiB (<= 20: {})",
            i.kib_per_session,
            verdict(i.kib_per_session <= 20.0 && i.live_added_ok)
        );
    }
    if let Some(p) = &r.persisted {
        let _ = writeln!(
            s,
            "persisted sessions: {} created, {} listed (>= 100000: {})",
            p.sessions - p.errors as usize,
            p.listed,
            verdict(p.listed >= 100_000 && p.errors == 0)
        );
    }
    let _ = writeln!(s, "\ntotal {:.1} s", r.total_secs);
    s
}

// ---------------------------------------------------------------------------

/// Run a memory phase in a fresh process of this bench, so that what the
/// other phases allocated (and the allocator kept for reuse) neither hides
/// nor inflates its RSS delta.
async fn in_child(args: &Args, phase: &str) -> Result<Value> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--child", "--json", "--phases", phase])
        .args(["--idle-sessions", &args.idle_sessions.to_string()])
        .args(["--persisted", &args.persisted.to_string()])
        .arg("--data-dir")
        .arg(&args.data_dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        bail!("the {phase} child process failed: {}", out.status);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn run(args: Args, upstream: std::net::SocketAddr) -> Result<Report> {
    let t = Instant::now();
    let mut report = Report {
        machine: Some(machine(&args.data_dir)),
        args: format!("{args:?}"),
        ..Default::default()
    };
    if args.has("fsync") {
        progress("fsync floor");
        let (dir, n) = (args.data_dir.clone(), args.fsync_iters);
        report.fsync = Some(tokio::task::spawn_blocking(move || fsync_floor(&dir, n)).await??);
    }
    if args.has("latency") || args.has("throughput") {
        latency_and_throughput(&args, upstream, &mut report).await?;
    }
    if args.has("rss") {
        progress(&format!("RSS of {} live idle sessions", args.idle_sessions));
        report.idle_rss = Some(if args.child {
            idle_rss(&args).await?
        } else {
            serde_json::from_value(in_child(&args, "rss").await?["idle_rss"].take())?
        });
    }
    if args.has("persisted") {
        progress(&format!("{} persisted sessions", args.persisted));
        report.persisted = Some(if args.child {
            persisted(&args).await?
        } else {
            serde_json::from_value(in_child(&args, "persisted").await?["persisted"].take())?
        });
    }
    report.total_secs = t.elapsed().as_secs_f64();
    Ok(report)
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    if let Ok(f) = std::env::var("LOAD_TRACE_FILE") {
        let file = std::fs::File::create(f)?;
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init();
    }
    if args.quick {
        eprintln!("[load] --quick: a smoke run; its figures are not meaningful");
    }
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("upstream")
        .enable_all()
        .build()?;
    let upstream = start_upstream(&upstream_rt)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(args.clone(), upstream))?;
    let text = render(&report, &args);
    if args.child {
        println!("{}", serde_json::to_string(&report)?);
    } else if args.json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    upstream_rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
