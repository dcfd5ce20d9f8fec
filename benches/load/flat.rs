//! Memory over many stateless front-door calls: `--calls` requests to
//! `POST /v1/chat/completions`, each a new one-message conversation, from 32
//! clients as fast as they go, with RSS, live sessions and the elapsed time
//! sampled twenty times along the way. A call keeps no live actor once it
//! answers, so RSS should level off once the allocator, the memtables and
//! the caches have reached their sizes, whatever the number of calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use baton_runtime::Durability;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::args::Args;
use crate::baton::Baton;
use crate::sys::{dir_size, rss_kib};
use crate::traffic::Target;

const CLIENTS: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FlatSample {
    pub(crate) calls: u64,
    pub(crate) secs: f64,
    pub(crate) rss_kib: u64,
    pub(crate) live_sessions: usize,
    /// The store's block cache and memtables.
    pub(crate) store: baton_store::StoreMemory,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Flat {
    pub(crate) calls: u64,
    pub(crate) clients: usize,
    pub(crate) audit: bool,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) secs: f64,
    pub(crate) calls_per_sec: f64,
    pub(crate) rss_start_kib: u64,
    pub(crate) samples: Vec<FlatSample>,
    /// RSS at the end less RSS at the sample a tenth of the way in.
    pub(crate) growth_after_tenth_kib: i64,
    pub(crate) data_dir_bytes: u64,
    pub(crate) audit_dir_bytes: u64,
}

/// One call: a fresh conversation of one message, its answer checked.
async fn call(client: &reqwest::Client, url: &str, model: &str, i: u64) -> Result<()> {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("Hello! This is call number {i}.")}],
        "stream": false,
    });
    let resp = client.post(url).json(&body).send().await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&bytes));
    }
    let v: Value = serde_json::from_slice(&bytes)?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| anyhow!("the answer has no content: {v}"))?;
    Ok(())
}

pub(crate) async fn flat(args: &Args, upstream: std::net::SocketAddr) -> Result<Flat> {
    let baton = Baton::start(
        &args.data_dir,
        Durability::Sync,
        upstream,
        false,
        args.audit,
    )
    .await?;
    let Target::FrontDoor { client, url, model } = baton.front_door()? else {
        bail!("the front door is not a front-door target");
    };
    let n = args.calls as u64;
    let every = (n / 20).max(1);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let samples = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let rss_start_kib = rss_kib()?;
    let t = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, model) = (client.clone(), url.clone(), model.clone());
            let (next, done, errors) = (next.clone(), done.clone(), errors.clone());
            let (first_error, samples) = (first_error.clone(), samples.clone());
            let handle = baton.handle.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    if let Err(e) = call(&client, &url, &model, i).await {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert_with(|| format!("{e:#}"));
                    }
                    let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if k % every == 0 {
                        let sample = FlatSample {
                            calls: k,
                            secs: t.elapsed().as_secs_f64(),
                            rss_kib: rss_kib()?,
                            live_sessions: handle.stats().await?.live_sessions,
                            store: handle.store_memory(),
                        };
                        eprintln!(
                            "[load] flat: {} calls in {:.0} s, RSS {} MiB, {} live sessions, store cache {} MiB + memtables {} MiB",
                            sample.calls,
                            sample.secs,
                            sample.rss_kib / 1024,
                            sample.live_sessions,
                            sample.store.cache_bytes >> 20,
                            sample.store.memtable_bytes >> 20,
                        );
                        samples.lock().await.push(sample);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let mut samples = std::mem::take(&mut *samples.lock().await);
    samples.sort_by_key(|s| s.calls);
    let growth_after_tenth_kib = match (samples.iter().find(|s| s.calls >= n / 10), samples.last())
    {
        (Some(a), Some(b)) => b.rss_kib as i64 - a.rss_kib as i64,
        _ => 0,
    };
    let data_dir_bytes = dir_size(baton.dir())?.bytes;
    let audit_dir = baton.dir().join("audit");
    let audit_dir_bytes = if audit_dir.exists() {
        dir_size(&audit_dir)?.bytes
    } else {
        0
    };
    baton.stop().await?;
    let first_error = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(Flat {
        calls: n,
        clients: CLIENTS,
        audit: args.audit,
        errors: errors.load(Ordering::Relaxed),
        first_error,
        secs,
        calls_per_sec: n as f64 / secs,
        rss_start_kib,
        samples,
        growth_after_tenth_kib,
        data_dir_bytes,
        audit_dir_bytes,
    })
}
