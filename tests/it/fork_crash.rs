//! A fork of a long journal is copied a page at a time, on the real
//! binary: the process dies between two pages (an abort at the failpoint,
//! as a SIGKILL ends it), and the restart drops the half-written copy —
//! no fork is listed, its records are gone from the store, no copy mark is
//! left. A fork that answered survives SIGKILL whole, record for record,
//! and the audit trail verifies afterwards.

use baton::SessionId;
use baton::proto::v1::{self, inspect_client::InspectClient};
use baton_testkit::{BatonProcess, process::write_config};
use tonic::transport::Channel;

use crate::common::*;

/// The echo model, answering at once in 4-character chunks.
const ECHO: &str = "[[models]]\nname = \"echo\"\nprovider = \"echo\"\nstream = true\n[models.echo]\nprefix = \"echo: \"\nchunk_chars = 4\ndelay_ms = 0\n";

async fn inspect(server: &BatonProcess) -> InspectClient<Channel> {
    InspectClient::new(
        Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// Every record of `id` as (seq, kind, JSON with the session id blanked).
async fn journal(ins: &mut InspectClient<Channel>, id: &str) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = ins
            .get_journal(v1::GetJournalRequest {
                session_id: id.into(),
                after_seq: after,
                page_size: 500,
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(
            page.records
                .into_iter()
                .map(|r| (r.seq, r.kind, r.json.replace(id, "<id>"))),
        );
        if page.next_after_seq == 0 {
            return out;
        }
        after = page.next_after_seq;
    }
}

async fn session_ids(c: &mut Client) -> Vec<String> {
    let mut ids: Vec<String> = c
        .list_sessions(v1::ListSessionsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_cut_short_by_a_crash_leaves_nothing_and_one_that_answered_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &data, ECHO).unwrap();
    let server =
        BatonProcess::start_with_env(bin(), &config, &[("BATON_FAILPOINT", "fork_between_pages")])
            .await
            .unwrap();
    let mut c = server.client().await.unwrap();
    let source = start(&mut c, "").await;
    // Enough turns for several pages of records (128 a page).
    for i in 0..80 {
        let t = turn(
            &mut c,
            &source,
            &format!("message number {i} of a long session"),
        )
        .await;
        assert_eq!(kinds(&t).last(), Some(&"turn_completed"));
    }
    let mut ins = inspect(&server).await;
    let recorded = journal(&mut ins, &source).await;
    let last = recorded.last().unwrap().0;
    assert!(
        last > 3 * 128,
        "{last} records: not enough for several pages"
    );

    // The server dies after the copy's first page.
    let r = ins
        .fork_session(v1::ForkSessionRequest {
            session_id: source.clone(),
            at_seq: last,
        })
        .await;
    assert!(r.is_err(), "the failpoint ends the server mid-copy: {r:?}");
    assert!(server.log().contains("failpoint fork_between_pages"));
    drop(server);

    // The restart drops the half copy, naming it; nobody sees a fork.
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = server.client().await.unwrap();
    assert_eq!(session_ids(&mut c).await, vec![source.clone()]);
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("dropping a journal copy"))
        .unwrap_or_else(|| panic!("no line on the dropped copy in:\n{log}"));
    let at = line.find("session=").expect("the session named") + "session=".len();
    let half: SessionId = line[at..at + 36].parse().unwrap();
    assert_ne!(half.to_string(), source);
    assert_eq!(
        c.get_session(v1::GetSessionRequest {
            session_id: half.to_string(),
        })
        .await
        .unwrap_err()
        .code(),
        tonic::Code::NotFound
    );
    server.terminate().await.unwrap();
    {
        // Offline: the copy's records and its mark are gone.
        let store = open_store_offline(&data).await;
        assert!(store.read_journal(half, 0, 10).await.unwrap().is_empty());
        assert!(store.unfinished_copies().await.unwrap().is_empty());
        assert_eq!(store.last_seq(source.parse().unwrap()).await.unwrap(), last);
    }

    // A fork that answers is whole, and stays whole through SIGKILL.
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut ins = inspect(&server).await;
    let fork = ins
        .fork_session(v1::ForkSessionRequest {
            session_id: source.clone(),
            at_seq: last,
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let copied = journal(&mut ins, &fork).await;
    assert_eq!(copied, journal(&mut ins, &source).await);
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = server.client().await.unwrap();
    let mut ins = inspect(&server).await;
    assert_eq!(journal(&mut ins, &fork).await, copied);
    let mut both = vec![source.clone(), fork.clone()];
    both.sort();
    assert_eq!(session_ids(&mut c).await, both);
    // The fork goes on by itself.
    let t = turn(&mut c, &fork, "after the fork").await;
    assert_eq!(t[0].seq, last + 1);
    assert_eq!(journal(&mut ins, &source).await.len() as u64, last);
    server.terminate().await.unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "audit",
            "verify",
            "--dir",
            data.join("audit").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The fork's records reached the trail as the source's did: the same
    // seqs (a record appended again after the SIGKILL is marked
    // `recovered`), and none of the dropped copy's.
    let seqs = |id: &str| {
        let out = std::process::Command::new(bin())
            .args([
                "audit",
                "export",
                "--dir",
                data.join("audit").to_str().unwrap(),
            ])
            .args(["--session", id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut seen = std::collections::BTreeSet::new();
        for l in String::from_utf8(out.stdout).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(seq) = r["data"]["seq"].as_u64()
                && !seen.insert(seq)
            {
                assert_eq!(r["data"]["recovered"], true, "an unmarked duplicate: {r}");
            }
        }
        seen
    };
    let forked: std::collections::BTreeSet<u64> =
        seqs(&fork).into_iter().filter(|s| *s <= last).collect();
    let original: std::collections::BTreeSet<u64> =
        seqs(&source).into_iter().filter(|s| *s <= last).collect();
    assert!(!original.is_empty());
    assert_eq!(forked, original);
    assert!(seqs(&half.to_string()).is_empty());
}
