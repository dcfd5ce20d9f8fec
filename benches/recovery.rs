//! Recovery objectives, measured: RTO (SIGKILL to serving, SIGKILL to every
//! interrupted turn answered) and RPO (acknowledged work lost or repeated).
//!
//! Each round: the real `baton` binary serves `--sessions` sessions whose
//! turns wait on a slow fake model (real HTTP on loopback); once every turn
//! is acknowledged (its `TurnAccepted` is durable and streamed back) the
//! process is SIGKILLed and restarted on the same data dir. Measured:
//! * `serving`: kill to the restarted server printing its listen address
//!   (store open, recovery scan done, gRPC accepting);
//! * `resumed`: kill to the last interrupted turn's `TurnCompleted`;
//! * lost: acknowledged turns missing after the restart (RPO: must be 0);
//! * duplicated: turns with more than one recorded answer (must be 0).
//!
//! Run with: cargo bench --bench recovery -- [--sessions N] [--rounds N] [--model-delay-ms N]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_proto::v1::{self, session_event::Kind};
use baton_testkit::fake_openai::Behavior;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};
use futures::StreamExt;

struct Opts {
    sessions: usize,
    rounds: usize,
    model_delay_ms: u64,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        sessions: 100,
        rounds: 5,
        model_delay_ms: 200,
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
            "--bench" => {}
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

fn model_toml(base_url: &str) -> String {
    format!(
        "[sessions]\ndefault_route = \"fake\"\n\n[[models]]\nname = \"fake\"\nprovider = \"openai\"\nbase_url = {base_url:?}\nmodel = \"fake-model\"\nstream = false\ntimeout_ms = 120000\nmax_concurrency = 256\n"
    )
}

struct Round {
    serving: Duration,
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
        let id = client
            .start_session(v1::StartSessionRequest::default())
            .await?
            .into_inner()
            .session_id;
        let mut s = client
            .send_message(v1::SendMessageRequest {
                session_id: id.clone(),
                content: format!("question {i}"),
                review: false,
                images: Vec::new(),
            })
            .await?
            .into_inner();
        // Acknowledged: the TurnAccepted record is durable.
        loop {
            let e = s.next().await.context("stream ended")??;
            if matches!(e.kind, Some(Kind::TurnAccepted(_))) {
                break;
            }
        }
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
    server.kill9().await?;
    let server = BatonProcess::start(bin, &config).await?;
    let serving = killed.elapsed();
    let client = server.client().await?;
    let mut waits = Vec::new();
    for id in &ids {
        let mut c = client.clone();
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
        let (accepted, answers) = w.await??;
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
        resumed,
        lost,
        duplicated,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = opts()?;
    eprintln!(
        "recovery: {} sessions with a turn in flight, model answers in {} ms after the restart, {} rounds",
        o.sessions, o.model_delay_ms, o.rounds
    );
    let mut serving = Vec::new();
    let mut resumed = Vec::new();
    let (mut lost, mut duplicated) = (0, 0);
    for r in 0..o.rounds {
        let x = round(&o).await?;
        eprintln!(
            "round {}: serving after {:.0} ms, all turns answered after {:.0} ms, lost {}, duplicated {}",
            r + 1,
            x.serving.as_secs_f64() * 1e3,
            x.resumed.as_secs_f64() * 1e3,
            x.lost,
            x.duplicated
        );
        serving.push(x.serving);
        resumed.push(x.resumed);
        lost += x.lost;
        duplicated += x.duplicated;
    }
    serving.sort();
    resumed.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    println!(
        "RTO serving: median {:.0} ms, max {:.0} ms | RTO turns resumed (incl. {} ms model time): median {:.0} ms, max {:.0} ms | RPO: {lost} acknowledged turns lost, {duplicated} answered twice, over {} turns",
        ms(&serving[serving.len() / 2]),
        ms(serving.last().context("no rounds")?),
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
