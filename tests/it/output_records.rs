//! Streamed model output through the real binary: every chunk reaches a
//! live client as it comes, while the journal keeps a handful of
//! `OutputDelta` records per answer; a client that resumes mid-answer gets
//! the text whole, nothing repeated or missing; a SIGKILL mid-stream loses
//! nothing acknowledged, and the interrupted turn is answered once.

use std::time::Duration;

use baton::types::{EventKind, ModelCallReason, SessionEvent};
use baton_testkit::fake_openai::{Behavior, Reply};
use baton_testkit::{BatonProcess, FakeOpenAi};

use crate::common::*;

/// About 60 words, streamed in chunks of 5 characters every 8 ms.
const ANSWER: &str = "Baton keeps the state of every conversation in a journal on disk, \
    so that a crash loses nothing that was acknowledged; the model's output \
    streams to the client as it comes, and the journal keeps it in a few \
    records rather than one per chunk, which makes a long answer cheap to \
    store, to read back and to replay, whatever its length in words and \
    however slowly the model writes it out for the waiting client.";
const CHUNK: usize = 5;
const RECORD_MS: u64 = 100;

fn deltas(events: &[SessionEvent]) -> usize {
    count(events, "output_delta")
}

fn count(events: &[SessionEvent], kind: &str) -> usize {
    events.iter().filter(|e| e.kind.name() == kind).count()
}

/// Journal seqs run 1, 2, 3, … with nothing missing or repeated.
fn assert_gap_free(journal: &[SessionEvent]) {
    let seqs: Vec<u64> = journal.iter().map(|e| e.seq).collect();
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1),
        "{seqs:?}"
    );
}

async fn started(dir: &std::path::Path, fake: &FakeOpenAi) -> (BatonProcess, std::path::PathBuf) {
    let toml = fake_model_toml(&fake.base_url(), true).replacen(
        "[sessions]\n",
        &format!("[sessions]\noutput_record_ms = {RECORD_MS}\n"),
        1,
    );
    let config = baton_testkit::process::write_config(dir, &dir.join("data"), &toml).unwrap();
    (BatonProcess::start(bin(), &config).await.unwrap(), config)
}

/// The journal of session `id` up to the end of turn `turn`.
async fn read_journal(client: &mut Client, id: &str, turn: u64) -> Vec<SessionEvent> {
    let mut all = resume(client, id, 0).await;
    read_until(&mut all, |e| e.ends_turn() && e.turn() == Some(turn)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_per_chunk_and_is_journaled_in_a_few_records() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_behavior(Behavior {
        reply: Reply::Fixed(ANSWER.into()),
        chunk_chars: CHUNK,
        chunk_delay: Duration::from_millis(8),
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (baton, config) = started(dir.path(), &fake).await;
    let mut client = baton.client().await.unwrap();
    let id = start(&mut client, "").await;
    let chunks = ANSWER.chars().count().div_ceil(CHUNK);

    // The sender sees every chunk as it comes.
    let mut live = send(&mut client, &id, "tell me").await;
    let first = read_until(&mut live, |e| deltas(std::slice::from_ref(e)) == 1).await;
    // A second client joins mid-answer, from the start of the session,
    // and a third from the last record the first had seen whole.
    let mut joined = resume(&mut client, &id, 0).await;
    let mut rest = read_until(&mut live, |e| e.ends_turn()).await;
    let mut seen = first;
    seen.append(&mut rest);
    assert_eq!(streamed(&seen), ANSWER);
    assert_eq!(deltas(&seen), chunks, "one live event per chunk");
    let joined = read_until(&mut joined, |e| e.ends_turn()).await;
    assert_eq!(
        streamed(&joined),
        ANSWER,
        "the joined client: nothing lost or repeated"
    );

    // The journal: the same text in a handful of records.
    let journal = to_turn_end(&mut client, &id).await;
    assert_gap_free(&journal);
    assert_eq!(streamed(&journal), ANSWER);
    let records = deltas(&journal);
    assert!(
        (1..=chunks / 5).contains(&records),
        "{records} output records for {chunks} chunks"
    );
    // Live chunks carried the seq of the record they are part of.
    for e in seen.iter().filter(|e| e.kind.name() == "output_delta") {
        let EventKind::OutputDelta { text: part, .. } = &e.kind else {
            unreachable!()
        };
        let record = journal.iter().find(|j| j.seq == e.seq).unwrap();
        let EventKind::OutputDelta { text: whole, .. } = &record.kind else {
            panic!("seq {} is {:?} in the journal", e.seq, record.kind)
        };
        assert!(whole.contains(part.as_str()));
    }

    // A client cut mid-answer resumes from the seq before the last chunk it
    // saw, drops that seq's text, and ends with the answer once.
    let mut live = send(&mut client, &id, "again").await;
    let mut seen = read_until(&mut live, |e| deltas(std::slice::from_ref(e)) == 1).await;
    seen.extend(read_until(&mut live, |e| e.kind.name() == "output_delta").await);
    drop(live);
    let last = seen.last().unwrap().seq;
    seen.retain(|e| e.seq < last);
    let mut resumed = resume(&mut client, &id, last - 1).await;
    seen.extend(read_until(&mut resumed, |e| e.ends_turn()).await);
    assert_eq!(streamed(&seen), ANSWER);

    // SIGKILL mid-answer: what was journaled survives whole, the turn is
    // re-issued once and answered once.
    let mut live = send(&mut client, &id, "and once more").await;
    read_until(
        &mut live,
        |e| matches!(&e.kind, EventKind::OutputDelta { text, .. } if text.contains("disk")),
    )
    .await;
    let requests = fake.requests();
    baton.kill9().await.unwrap();
    let baton = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = baton.client().await.unwrap();
    // The turn ends (history, then live events: the re-issued call's
    // chunks); then all of it is history.
    read_journal(&mut client, &id, 3).await;
    let journal = read_journal(&mut client, &id, 3).await;
    assert_gap_free(&journal);
    let third: Vec<SessionEvent> = journal
        .iter()
        .filter(|e| e.turn() == Some(3))
        .cloned()
        .collect();
    assert_eq!(count(&third, "assistant_message"), 1);
    assert_eq!(count(&third, "turn_completed"), 1);
    let recovery = third
        .iter()
        .position(|e| {
            matches!(
                &e.kind,
                EventKind::ModelCallStarted {
                    reason: ModelCallReason::Recovery,
                    ..
                }
            )
        })
        .expect("the interrupted call is re-issued");
    // Before the crash: whole records, the start of the answer.
    assert!(ANSWER.starts_with(&streamed(&third[..recovery])));
    assert_eq!(streamed(&third[recovery..]), ANSWER);
    assert_eq!(fake.requests(), requests + 1);
    baton.kill9().await.unwrap();
}
