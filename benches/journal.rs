//! Journal records and bytes per streamed turn: one answer of 73 words
//! (388 characters), streamed by a fake OpenAI upstream (real HTTP on loopback) in
//! 5-character chunks, through an embedded runtime, with output journaled
//! one record per delta (`sessions.output_record_ms = 0`, what every turn
//! wrote before coalescing) and per 50 ms stretch (the default), from an
//! instant upstream and from one pacing its chunks 20 ms apart (about 50
//! tokens/s, a model writing as fast as people read).
//!
//! Bytes are the encoded records as the store writes them (protobuf, before
//! RocksDB's own overhead).
//!
//! Run with: cargo bench --bench journal -- [--turns N]

use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_runtime::{Runtime, RuntimeConfig, StartSession};
use baton_testkit::FakeOpenAi;
use baton_testkit::fake_openai::{Behavior, Reply};
use baton_testkit::server::openai_endpoint;
use futures::StreamExt;

const ANSWER: &str = "Baton keeps the state of every conversation in a journal on disk, so \
    that a crash loses nothing that was acknowledged; the output streams to the client as \
    it comes, and the journal keeps it in a few records rather than one per chunk, which \
    makes a long answer cheap to store and to read back, whatever its length in words and \
    however slowly the model writes it out for the client waiting.";

struct Row {
    record_ms: u64,
    chunk_delay_ms: u64,
    turns: usize,
    records: f64,
    delta_records: f64,
    bytes: f64,
}

async fn measure(
    fake: &FakeOpenAi,
    record_ms: u64,
    chunk_delay_ms: u64,
    turns: usize,
) -> Result<Row> {
    fake.set_behavior(Behavior {
        reply: Reply::Fixed(ANSWER.into()),
        chunk_chars: 5,
        chunk_delay: Duration::from_millis(chunk_delay_ms),
        ..Behavior::default()
    });
    let dir = tempfile::tempdir()?;
    let mut cfg = RuntimeConfig::with_data_dir(dir.path());
    cfg.models = vec![openai_endpoint("fake", &fake.base_url(), true)];
    cfg.sessions.output_record_ms = record_ms;
    let h = Runtime::builder(cfg).start().await?;
    let ids: Vec<_> = futures::stream::iter(0..turns)
        .map(|_| {
            let h = h.clone();
            async move {
                let s = h.start_session(StartSession::default()).await?;
                let mut events = h.send(s.id, "tell me about the journal".into()).await?;
                while let Some(e) = events.next().await {
                    if e?.ends_turn() {
                        break;
                    }
                }
                Ok::<_, anyhow::Error>(s.id)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let (mut records, mut deltas, mut bytes) = (0usize, 0usize, 0usize);
    for id in &ids {
        let page = h.journal_page(*id, 0, 1000).await?;
        if page.next_after_seq.is_some() {
            bail!("session {id}: more than 1000 records");
        }
        let text: String = page
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                baton_types::EventKind::OutputDelta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        if text != ANSWER {
            bail!("session {id}: the journaled output is not the answer: {text:?}");
        }
        for e in &page.events {
            let enc =
                baton_store::encode_record(&e.session_id, e.seq, e.at_unix_ms, &e.kind, usize::MAX);
            records += 1;
            bytes += enc.record.len() + enc.payload.map_or(0, |(k, v)| k.len() + v.len());
            if e.kind.name() == "output_delta" {
                deltas += 1;
            }
        }
    }
    h.shutdown().await;
    let n = turns as f64;
    Ok(Row {
        record_ms,
        chunk_delay_ms,
        turns,
        records: records as f64 / n,
        delta_records: deltas as f64 / n,
        bytes: bytes as f64 / n,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut turns = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--turns" => {
                turns = args
                    .next()
                    .context("--turns needs a value")?
                    .parse()
                    .context("--turns must be a number")?
            }
            "--bench" => {}
            other => bail!("unknown option {other} (options: --turns N)"),
        }
    }
    let fake = FakeOpenAi::start().await?;
    let chunks = ANSWER.chars().count().div_ceil(5);
    println!(
        "one answer: {} words, {} characters, {chunks} chunks\n",
        ANSWER.split_whitespace().count(),
        ANSWER.len()
    );
    println!(
        "| output_record_ms | chunks every | turns | records per turn | of them OutputDelta | bytes per turn |"
    );
    println!("|---|---|---|---|---|---|");
    for chunk_delay_ms in [0, 20] {
        for record_ms in [0, 50] {
            let r = measure(&fake, record_ms, chunk_delay_ms, turns).await?;
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.0} |",
                if r.record_ms == 0 {
                    "0 (one per delta)".to_string()
                } else {
                    r.record_ms.to_string()
                },
                if r.chunk_delay_ms == 0 {
                    "instant".to_string()
                } else {
                    format!("{} ms", r.chunk_delay_ms)
                },
                r.turns,
                r.records,
                r.delta_records,
                r.bytes
            );
        }
    }
    Ok(())
}
