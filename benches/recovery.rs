//! Recovery objectives, measured: RTO (SIGKILL to serving, SIGKILL to every
//! interrupted turn answered) and RPO (acknowledged work lost or repeated).
//!
//! Each round: the real `baton` binary serves `--sessions` sessions whose
//! turns wait on a slow fake model (real HTTP on loopback); once every turn
//! is acknowledged (its `TurnAccepted` is durable and streamed back) the
//! process is SIGKILLed and restarted on the same data dir. Measured:
//! * `serving`: kill to the restarted server printing its listen address
//!   (store open, recovery scan done, gRPC accepting);
//! * `new work`: kill to the restarted server accepting a new session's
//!   turn (its `TurnAccepted` durable and streamed back), while it recovers
//!   the others;
//! * `resumed`: kill to the last interrupted turn's `TurnCompleted`. By
//!   default every client resumes its session at once after the restart
//!   and waits on the stream (10,000 streams is itself load on the bench's
//!   side of the machine). With `--no-clients` nobody resumes: the bench
//!   only polls `ListSessions(status = RUNNING)` until none is left, then
//!   reads each session's journal to take the latest `TurnCompleted`
//!   time (the server's clock, same machine) and to count lost and
//!   duplicated answers — the server's own recovery, measured without
//!   10,000 clients on the same two cores;
//! * lost: acknowledged turns missing after the restart (RPO: must be 0);
//! * duplicated: turns with more than one recorded answer (must be 0).
//!
//! With `--long-session RECORDS`, instead: how long loading one long
//! session takes after a SIGKILL (its first request after the restart, a
//! `ResumeSession` after its last record), from its snapshot plus the
//! records after it, against the
//! same session with its snapshot removed (the whole journal folded: what
//! every load did before snapshots could be read), in the same run.
//!
//! With `BATON_BENCH_PERF=FILE` in the environment, `perf record -g`
//! samples the restarted server over the recovery into FILE.
//!
//! Run with: cargo bench --bench recovery -- [--sessions N] [--rounds N] [--model-delay-ms N] [--no-clients]
//!           cargo bench --bench recovery -- --long-session 10000 [--rounds N]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use baton_proto::v1::{self, session_event::Kind};
use baton_testkit::fake_openai::Behavior;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};
use futures::StreamExt;

struct Opts {
    sessions: usize,
    rounds: usize,
    model_delay_ms: u64,
    long_session: Option<u64>,
    no_clients: bool,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        sessions: 100,
        rounds: 5,
        model_delay_ms: 200,
        long_session: None,
        no_clients: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u64> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse::<u64>()
                .with_context(|| format!("{name} must be a number"))
        };
        match a.as_str() {
            "--sessions" => o.sessions = num("--sessions")? as usize,
            "--rounds" => o.rounds = num("--rounds")? as usize,
            "--model-delay-ms" => o.model_delay_ms = num("--model-delay-ms")?,
            "--long-session" => o.long_session = Some(num("--long-session")?),
            "--no-clients" => o.no_clients = true,
            "--bench" => {}
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

fn model_toml(base_url: &str) -> String {
    format!(
        "[server]\nmax_concurrent_streams = 65536\n\n[sessions]\ndefault_route = \"fake\"\n\n[[models]]\nname = \"fake\"\nprovider = \"openai\"\nbase_url = {base_url:?}\nmodel = \"fake-model\"\nstream = false\ntimeout_ms = 120000\nmax_concurrency = 16384\nmax_queue = 16384\n"
    )
}

struct Round {
    serving: Duration,
    first: Duration,
    resumed: Duration,
    lost: usize,
    duplicated: usize,
}

async fn round(o: &Opts) -> Result<Round> {
    let fake = FakeOpenAi::start().await?;
    fake.set_behavior(Behavior {
        delay: Duration::from_secs(600),
        ..Behavior::default()
    });
    let dir = tempfile::tempdir()?;
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &model_toml(&fake.base_url()),
    )?;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_baton"));
    let server = BatonProcess::start(bin, &config).await?;
    let mut client = server.client().await?;
    let mut ids = Vec::with_capacity(o.sessions);
    let mut streams = Vec::with_capacity(o.sessions);
    for i in 0..o.sessions {
        let (id, s) = accepted(&mut client, format!("question {i}")).await?;
        ids.push(id);
        streams.push(s);
    }
    // Every model call is in flight at the crash.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.requests() < o.sessions {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} model calls started",
                fake.requests(),
                o.sessions
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(streams);
    fake.set_behavior(Behavior {
        delay: Duration::from_millis(o.model_delay_ms),
        ..Behavior::default()
    });
    let killed = Instant::now();
    let killed_unix_ms = unix_ms();
    server.kill9().await?;
    let server = BatonProcess::start(bin, &config).await?;
    let serving = killed.elapsed();
    // BATON_BENCH_PERF=FILE: a sampled profile of the restarted server over
    // the recovery (the model's time plus 3 s), for `perf report -i FILE`.
    let _perf = match (std::env::var("BATON_BENCH_PERF"), server.pid()) {
        (Ok(file), Some(pid)) => Some(
            tokio::process::Command::new("perf")
                .args(["record", "-F", "999", "-g", "-o", &file, "-p"])
                .arg(pid.to_string())
                .args(["--", "sleep"])
                .arg(format!("{}", o.model_delay_ms / 1000 + 3))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(false)
                .spawn()?,
        ),
        _ => None,
    };
    let client = server.client().await?;
    // New work, accepted while the others recover.
    let first = {
        accepted(&mut client.clone(), "a new question".into()).await?;
        killed.elapsed()
    };
    // At most 500 streams to one connection, as clients spread out.
    let mut clients = vec![client.clone()];
    for _ in 1..ids.len().div_ceil(500) {
        clients.push(server.client().await?);
    }
    if o.no_clients {
        // How fast the model calls are issued again, as the fake sees them.
        let before = o.sessions + 1;
        let mut issued = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(o.model_delay_ms + 120_000);
        while running(&mut client.clone()).await? {
            let n = fake.requests().saturating_sub(before);
            if issued.last().is_none_or(|(_, m)| *m < o.sessions) {
                issued.push((killed.elapsed().as_millis(), n));
            }
            if Instant::now() > deadline {
                bail!("sessions still running two minutes after the restart");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let polled = killed.elapsed();
        // Nothing is running any more: read each journal, a few at a time.
        let mut lost = 0;
        let mut duplicated = 0;
        let mut last_ms = 0u64;
        for chunk in ids.chunks(64) {
            let reads = chunk.iter().enumerate().map(|(i, id)| {
                let c = clients[i % clients.len()].clone();
                // A turn that was lost never completes: its stream stays open.
                tokio::time::timeout(Duration::from_secs(30), outcome(c, id.clone()))
            });
            for r in futures::future::join_all(reads).await {
                let Ok(r) = r else {
                    lost += 1;
                    continue;
                };
                let (accepted, answers, done_ms) = r?;
                lost += usize::from(accepted != 1);
                duplicated += usize::from(answers > 1);
                last_ms = last_ms.max(done_ms);
            }
        }
        if last_ms == 0 {
            bail!("no interrupted turn was found completed ({lost} lost)");
        }
        let resumed = Duration::from_millis(last_ms.saturating_sub(killed_unix_ms));
        eprintln!(
            "  (no clients: the running list was empty after {:.0} ms)",
            polled.as_secs_f64() * 1e3
        );
        let every: Vec<String> = issued
            .iter()
            .step_by(10)
            .map(|(ms, n)| format!("{ms} ms: {n}"))
            .collect();
        eprintln!(
            "  model calls issued again since the kill: {}",
            every.join(", ")
        );
        for l in server.log().lines().filter(|l| l.contains("recovery")) {
            eprintln!("  server: {l}");
        }
        drop(client);
        server.terminate().await?;
        return Ok(Round {
            serving,
            first,
            resumed,
            lost,
            duplicated,
        });
    }
    let mut waits = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut c = clients[i / 500].clone();
        let id = id.clone();
        waits.push(tokio::spawn(async move {
            let mut s = c
                .resume_session(v1::ResumeSessionRequest {
                    session_id: id,
                    after_seq: 0,
                })
                .await?
                .into_inner();
            let (mut accepted, mut answers) = (0usize, 0usize);
            while let Some(e) = s.next().await {
                match e?.kind {
                    Some(Kind::TurnAccepted(_)) => accepted += 1,
                    Some(Kind::AssistantMessage(_)) => answers += 1,
                    Some(Kind::TurnCompleted(_)) => {
                        return Ok::<_, anyhow::Error>((accepted, answers));
                    }
                    _ => {}
                }
            }
            bail!("stream ended before the turn completed")
        }));
    }
    let mut lost = 0;
    let mut duplicated = 0;
    for w in waits {
        let (accepted, answers) = match w.await? {
            Ok(x) => x,
            Err(e) => {
                let log = server.log();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("the server's log ends with:");
                for l in tail.iter().rev() {
                    eprintln!("  {l}");
                }
                return Err(e);
            }
        };
        if accepted != 1 {
            lost += 1;
        }
        if answers > 1 {
            duplicated += 1;
        }
    }
    let resumed = killed.elapsed();
    drop(client);
    server.terminate().await?;
    Ok(Round {
        serving,
        first,
        resumed,
        lost,
        duplicated,
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether any session still has a turn running (one index read).
async fn running(
    client: &mut v1::sessions_client::SessionsClient<tonic::transport::Channel>,
) -> Result<bool> {
    let page = client
        .list_sessions(v1::ListSessionsRequest {
            status: v1::SessionStatus::Running as i32,
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(!page.sessions.is_empty())
}

/// A session's journal read from the start to its turn's end: turns
/// accepted, answers recorded, and when (server clock, Unix ms) the turn
/// completed.
async fn outcome(
    mut c: v1::sessions_client::SessionsClient<tonic::transport::Channel>,
    id: String,
) -> Result<(usize, usize, u64)> {
    let mut s = c
        .resume_session(v1::ResumeSessionRequest {
            session_id: id.clone(),
            after_seq: 0,
        })
        .await?
        .into_inner();
    let (mut accepted, mut answers) = (0usize, 0usize);
    while let Some(e) = s.next().await {
        let e = e?;
        match e.kind {
            Some(Kind::TurnAccepted(_)) => accepted += 1,
            Some(Kind::AssistantMessage(_)) => answers += 1,
            Some(Kind::TurnCompleted(_)) => return Ok((accepted, answers, e.at_unix_ms)),
            _ => {}
        }
    }
    bail!("session {id}: its journal has no completed turn")
}

/// A new session sent `text`, once its turn is acknowledged (its
/// `TurnAccepted` durable and streamed back): its id and the turn's stream.
async fn accepted(
    client: &mut v1::sessions_client::SessionsClient<tonic::transport::Channel>,
    text: String,
) -> Result<(String, tonic::Streaming<v1::SessionEvent>)> {
    let id = client
        .start_session(v1::StartSessionRequest::default())
        .await?
        .into_inner()
        .session_id;
    let mut s = client
        .send_message(v1::SendMessageRequest {
            session_id: id.clone(),
            content: text,
            review: false,
            images: Vec::new(),
        })
        .await?
        .into_inner();
    loop {
        let e = s.next().await.context("stream ended")??;
        if matches!(e.kind, Some(Kind::TurnAccepted(_))) {
            return Ok((id, s));
        }
    }
}

/// Send `text` and read the turn to its end; the seq of its last event.
async fn turn(
    client: &mut v1::sessions_client::SessionsClient<tonic::transport::Channel>,
    id: &str,
    text: String,
) -> Result<u64> {
    let mut s = client
        .send_message(v1::SendMessageRequest {
            session_id: id.into(),
            content: text,
            review: false,
            images: Vec::new(),
        })
        .await?
        .into_inner();
    let mut completed = None;
    // Read to the end of the stream (its trailers too): a client that drops
    // it early makes the server's HTTP/2 count a reset, and after 1,024 of
    // those the connection is closed.
    while let Some(e) = s.next().await {
        let e = e?;
        if matches!(e.kind, Some(Kind::TurnCompleted(_))) {
            completed = Some(e.seq);
        }
    }
    completed.context("the turn did not complete")
}

/// Restart the server and time the session's first request (its load).
async fn timed_load(
    bin: &std::path::Path,
    config: &std::path::Path,
    id: &str,
) -> Result<(BatonProcess, Duration, Option<u64>, u64)> {
    let server = BatonProcess::start(bin, config).await?;
    let mut client = server.client().await?;
    let channel = tonic::transport::Channel::from_shared(server.url())?
        .connect()
        .await?;
    let mut ins = v1::inspect_client::InspectClient::new(channel);
    // Read from disk first (no actor is loaded by this): the snapshot's seq.
    let disk = ins
        .get_session_state(v1::GetSessionStateRequest {
            session_id: id.into(),
        })
        .await?
        .into_inner();
    // The cheapest request that needs the session's actor: a resume after
    // its last record (answered once the actor is loaded; no history, no
    // state in the response, so the time is the load's).
    let started = Instant::now();
    let stream = client
        .resume_session(v1::ResumeSessionRequest {
            session_id: id.into(),
            after_seq: disk.at_seq,
        })
        .await?;
    let took = started.elapsed();
    drop(stream);
    Ok((server, took, disk.snapshot_seq, disk.at_seq))
}

async fn long_session(o: &Opts, records: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // The built-in echo model; buffered writes only make building the
    // journal faster, loading reads the same records.
    let config = dir.path().join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\ndata_dir = {:?}\ndurability = \"buffered\"\n",
            data.display().to_string()
        ),
    )?;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_baton"));
    let mut server = BatonProcess::start(bin, &config).await?;
    let mut client = server.client().await?;
    let id = client
        .start_session(v1::StartSessionRequest::default())
        .await?
        .into_inner()
        .session_id;
    let built = Instant::now();
    let mut last = 1;
    let mut i = 0u64;
    while last < records {
        last = turn(
            &mut client,
            &id,
            format!("question number {i} of a long session"),
        )
        .await?;
        i += 1;
    }
    eprintln!(
        "built a session of {last} journal records ({i} turns) in {:.1} s",
        built.elapsed().as_secs_f64()
    );
    let sid: baton::SessionId = id.parse()?;
    let (mut with_snapshot, mut journal_only) = (Vec::new(), Vec::new());
    for r in 0..o.rounds {
        server.kill9().await?;
        let (s, took, snapshot, at) = timed_load(bin, &config, &id).await?;
        let tail = at - snapshot.context("no snapshot was stored")?;
        with_snapshot.push(took);
        s.kill9().await?;
        // The same session without its snapshot.
        let opts = baton_store::StoreOptions::new(data.clone(), baton_store::Durability::Sync);
        let store = baton_store::Store::open(opts)?;
        let snapshot_bytes = store.load_snapshot(sid).await?.map_or(0, |b| b.len());
        let mut b = baton_store::Batch::new();
        b.delete_snapshot(&sid);
        store.write(b).await?;
        store.close();
        drop(store);
        let (s, took_journal, none, at) = timed_load(bin, &config, &id).await?;
        anyhow::ensure!(none.is_none(), "the snapshot was not removed");
        journal_only.push(took_journal);
        eprintln!(
            "round {}: {at} records; load from the snapshot ({snapshot_bytes} bytes) + {tail} records: {:.1} ms; from the whole journal: {:.1} ms",
            r + 1,
            took.as_secs_f64() * 1e3,
            took_journal.as_secs_f64() * 1e3
        );
        // A few more turns: the first writes a new snapshot (the loaded
        // actor has none), the others are the tail the next round applies.
        server = s;
        let mut client = server.client().await?;
        for k in 0..3 {
            turn(&mut client, &id, format!("round {r} follow-up {k}")).await?;
        }
    }
    server.terminate().await?;
    with_snapshot.sort();
    journal_only.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let (a, b) = (
        ms(&with_snapshot[with_snapshot.len() / 2]),
        ms(&journal_only[journal_only.len() / 2]),
    );
    println!(
        "load of a {records}-record session after SIGKILL: from its snapshot median {a:.1} ms (max {:.1}); from the whole journal median {b:.1} ms (max {:.1}); {:.1}x faster, {} rounds",
        ms(with_snapshot.last().context("no rounds")?),
        ms(journal_only.last().context("no rounds")?),
        b / a,
        o.rounds
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = opts()?;
    if let Some(records) = o.long_session {
        return long_session(&o, records).await;
    }
    eprintln!(
        "recovery: {} sessions with a turn in flight, model answers in {} ms after the restart, {} rounds",
        o.sessions, o.model_delay_ms, o.rounds
    );
    let mut serving = Vec::new();
    let mut first = Vec::new();
    let mut resumed = Vec::new();
    let (mut lost, mut duplicated) = (0, 0);
    for r in 0..o.rounds {
        let x = round(&o).await?;
        eprintln!(
            "round {}: serving after {:.0} ms, new work accepted after {:.0} ms, all turns answered after {:.0} ms, lost {}, duplicated {}",
            r + 1,
            x.serving.as_secs_f64() * 1e3,
            x.first.as_secs_f64() * 1e3,
            x.resumed.as_secs_f64() * 1e3,
            x.lost,
            x.duplicated
        );
        serving.push(x.serving);
        first.push(x.first);
        resumed.push(x.resumed);
        lost += x.lost;
        duplicated += x.duplicated;
    }
    serving.sort();
    first.sort();
    resumed.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    println!(
        "RTO serving: median {:.0} ms, max {:.0} ms | new work accepted: median {:.0} ms, max {:.0} ms | RTO turns resumed (incl. {} ms model time): median {:.0} ms, max {:.0} ms | RPO: {lost} acknowledged turns lost, {duplicated} answered twice, over {} turns",
        ms(&serving[serving.len() / 2]),
        ms(serving.last().context("no rounds")?),
        ms(&first[first.len() / 2]),
        ms(first.last().context("no rounds")?),
        o.model_delay_ms,
        ms(&resumed[resumed.len() / 2]),
        ms(resumed.last().context("no rounds")?),
        o.rounds * o.sessions
    );
    if lost > 0 || duplicated > 0 {
        bail!("recovery lost or duplicated work");
    }
    Ok(())
}
