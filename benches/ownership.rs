//! Writes of sessions owned one node each (`Ownership::Sessions`) against
//! the writer lease, on a private PostgreSQL (initdb'd by the bench): what
//! the per-session fence costs, and what a second writing node adds.
//!
//! Each writer is a task with a session of its own (claimed first),
//! writing one synced batch after another — two journal records of about
//! 100 bytes, as a turn's commit holds — and waiting for each; the store's
//! group commit folds the batches waiting at a moment into one statement,
//! whose fence names every session in it. Every scenario runs on a new
//! database of the same server.
//!
//! Run with: cargo bench --bench ownership -- [--writers N] [--secs S]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_store::owners::Claim;
use baton_store::postgres::{Ownership, PgOptions};
use baton_store::{Batch, Durability, Store, StoreOptions};
use baton_types::{EventKind, SessionId};

struct Scenario {
    name: &'static str,
    ownership: Ownership,
    nodes: usize,
}

struct Row {
    name: &'static str,
    writes: u64,
    commits: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn open(url: &str, id: &str, ownership: Ownership, dir: &std::path::Path) -> Result<Store> {
    let mut pg = PgOptions::new(url.to_string());
    pg.node.id = id.into();
    pg.node.ownership = ownership;
    let mut options = StoreOptions::new(dir, Durability::Sync);
    options.postgres = Some(pg);
    Store::open(options).with_context(|| format!("opening node {id}"))
}

async fn writer(store: Store, until: Instant) -> Result<Vec<Duration>> {
    let s = SessionId::new();
    if store.claim(s).await? != Claim::Ours {
        bail!("a new session was not this node's");
    }
    let delta = EventKind::OutputDelta {
        turn: 1,
        attempt: 1,
        text: "a piece of an answer as it streamed in, about as long as a turn's record ".into(),
    };
    let mut took = Vec::new();
    let mut seq = 0;
    while Instant::now() < until {
        let mut b = Batch::new();
        for _ in 0..2 {
            seq += 1;
            b.append(&s, seq, 0, &delta);
        }
        let t = Instant::now();
        store.write(b).await?;
        took.push(t.elapsed());
    }
    store.release(s).await?;
    Ok(took)
}

async fn run(url: &str, sc: &Scenario, writers: usize, secs: u64) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let stores: Vec<Store> = (0..sc.nodes)
        .map(|i| open(url, &format!("n{i}"), sc.ownership, dir.path()))
        .collect::<Result<_>>()?;
    let groups_before: u64 = stores.iter().map(|s| s.writer_stats().groups).sum();
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(writer(stores[w % stores.len()].clone(), until)))
        .collect();
    let mut took = Vec::new();
    for t in tasks {
        took.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let commits = stores.iter().map(|s| s.writer_stats().groups).sum::<u64>() - groups_before;
    took.sort();
    let pct = |p: f64| {
        let i = ((took.len() as f64 * p) as usize).min(took.len().saturating_sub(1));
        took.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    for s in &stores {
        s.close();
    }
    Ok(Row {
        name: sc.name,
        writes: took.len() as u64,
        commits,
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

fn main() -> Result<()> {
    let mut writers = 128usize;
    let mut secs = 8u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--writers" => writers = args.next().context("--writers N")?.parse()?,
            "--secs" => secs = args.next().context("--secs S")?.parse()?,
            // cargo bench passes --bench.
            "--bench" => {}
            other => bail!("unknown argument {other:?} (--writers N, --secs S)"),
        }
    }
    let server = baton_pgtest::PgServer::start().map_err(anyhow::Error::msg)?;
    let scenarios = [
        Scenario {
            name: "writer lease, 1 node",
            ownership: Ownership::Writer,
            nodes: 1,
        },
        Scenario {
            name: "sessions owned, 1 node",
            ownership: Ownership::Sessions,
            nodes: 1,
        },
        Scenario {
            name: "sessions owned, 2 nodes",
            ownership: Ownership::Sessions,
            nodes: 2,
        },
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "{writers} writers, {secs} s each, synced batches of 2 journal records, PostgreSQL on \
         this machine\n"
    );
    println!(
        "| scenario | batches/s | commits/s | batches per commit | p50 | p99 |\n|---|---|---|---|---|---|"
    );
    for sc in &scenarios {
        let url = server.database().map_err(anyhow::Error::msg)?;
        let r = rt.block_on(run(&url, sc, writers, secs))?;
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.2} ms | {:.2} ms |",
            r.name,
            r.writes as f64 / r.secs,
            r.commits as f64 / r.secs,
            r.writes as f64 / r.commits.max(1) as f64,
            r.p50_ms,
            r.p99_ms
        );
    }
    Ok(())
}
