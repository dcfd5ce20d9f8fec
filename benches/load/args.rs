//! The load generator's command-line options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

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
  --calls N               front-door calls of the flat phase [1000000] {5000}
  --audit                 run Baton with the signed audit trail on (as `[audit] dir` does)
  --postgres              keep the store on a private PostgreSQL server (initdb'd by the
                          bench; synchronous commit) instead of RocksDB
  --owning                with --postgres: Baton as one node owning its sessions one by one
                          (`[cluster] ownership = \"sessions\"`: a claim per new session,
                          every write fenced by its owner) instead of alone on the database
  --pg-delay-us N         with --postgres: N µs added each way between Baton and the
                          database (a delay line on loopback), as across a network [0]
  --data-dir PATH         where temporary data dirs go [system temp dir]
  --child                 (internal) run as a memory phase's fresh child process
  --phases LIST           comma-separated subset of fsync,latency,throughput,frontdoor,nodelay,rss,oneshot,persisted,flat
                          [all but flat]
                          (frontdoor: the OpenAI front door against the direct client, 400/s and 32 clients)
                          (oneshot: the rss phase with one-shot sessions, as the front door makes)
                          (nodelay: repeat the gRPC runs with TCP_NODELAY on the server's sockets)
                          (flat: memory and live sessions sampled over --calls stateless front-door calls)
";

#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) quick: bool,
    pub(crate) json: bool,
    /// Run as the child process of a memory phase.
    pub(crate) child: bool,
    pub(crate) sessions: usize,
    pub(crate) concurrency: usize,
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) turns_per_session: usize,
    pub(crate) idle_sessions: usize,
    pub(crate) persisted: usize,
    pub(crate) fsync_iters: usize,
    /// Front-door calls of the flat phase.
    pub(crate) calls: usize,
    /// The signed audit trail on.
    pub(crate) audit: bool,
    /// Keep the store on a private PostgreSQL server.
    pub(crate) postgres: bool,
    pub(crate) owning: bool,
    /// Microseconds added each way between Baton and the database.
    pub(crate) pg_delay_us: u64,
    pub(crate) data_dir: PathBuf,
    pub(crate) phases: Vec<String>,
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
            calls: 1_000_000,
            audit: false,
            postgres: false,
            owning: false,
            pg_delay_us: 0,
            data_dir: std::env::temp_dir(),
            phases: [
                "fsync",
                "latency",
                "throughput",
                "frontdoor",
                "nodelay",
                "rss",
                "oneshot",
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
            a.calls = 5000;
        }
        a
    }

    pub(crate) fn parse() -> Result<Args> {
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
                "--audit" => a.audit = true,
                "--postgres" => a.postgres = true,
                "--owning" => a.owning = true,
                "--pg-delay-us" => a.pg_delay_us = positive(&value()?, &key)? as u64,
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
                "--calls" => a.calls = positive(&value()?, &key)?,
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

    pub(crate) fn has(&self, phase: &str) -> bool {
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
