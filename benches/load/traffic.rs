//! The traffic: targets (direct, Baton over gRPC, Baton embedded), one
//! connection per worker, and the closed and open loops that drive them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use baton_proto::v1::sessions_client::SessionsClient;
use baton_proto::v1::{SendMessageRequest, StartSessionRequest, session_event::Kind};
use baton_runtime::{RuntimeHandle, StartSession};
use baton_types::{EventKind, SessionId};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::report::{RunResult, hist, lat, ratio, record, writer_delta};
use crate::sys::cpu_us;
use crate::upstream::{MODEL, UPSTREAM_CALLS};

#[derive(Clone)]
pub(crate) enum Target {
    Direct {
        client: reqwest::Client,
        url: Arc<str>,
    },
    /// Baton's OpenAI-compatible front door: the same requests as the
    /// direct client, to the route `model`.
    FrontDoor {
        client: reqwest::Client,
        url: Arc<str>,
        model: Arc<str>,
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
            Target::FrontDoor { .. } => "baton-front-door",
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
        model: Arc<str>,
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
                model: MODEL.into(),
                history: Vec::new(),
            },
            Target::FrontDoor { client, url, model } => Conn::Direct {
                client: client.clone(),
                url: url.clone(),
                model: model.clone(),
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
                model,
                history,
            } => {
                history.push(json!({"role": "user", "content": content}));
                let body = json!({"model": &**model, "messages": history, "stream": false});
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

pub(crate) struct RunSpec<'a> {
    pub(crate) label: String,
    pub(crate) target: &'a Target,
    pub(crate) durability: Option<&'static str>,
    pub(crate) sessions: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) turns_per_session: usize,
    /// For writer counters.
    pub(crate) runtime: Option<&'a RuntimeHandle>,
}

/// Closed loop: every session sends its next turn as soon as the previous one
/// ends. Measures the throughput at this concurrency; latency is counted for
/// turns that end inside the measured window.
pub(crate) async fn closed_loop(spec: RunSpec<'_>) -> Result<RunResult> {
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
pub(crate) async fn open_loop(spec: RunSpec<'_>, rate: f64) -> Result<RunResult> {
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
