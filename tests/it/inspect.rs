//! The Inspect API over real gRPC (in-process server on the echo model):
//! journal pages, time travel, forks, the actor tree; and, against the real
//! binary, `baton inspect …`, and `baton backup` under load followed by
//! `baton restore` and a second server on the restored data dir.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use baton::proto::v1::{self, inspect_client::InspectClient};
use baton::types::SessionEvent;
use baton::{RuntimeConfig, SessionId};
use baton_testkit::{BatonProcess, TestServer, process::write_config};
use tonic::transport::Channel;

use crate::common::*;

type Inspect = InspectClient<Channel>;

/// The built-in echo model, answering `echo: <message>`.
fn echo_config() -> RuntimeConfig {
    let mut echo = baton::models::echo_default();
    echo.echo.prefix = "echo: ".into();
    RuntimeConfig {
        models: vec![echo],
        ..Default::default()
    }
}

async fn inspect(server: &TestServer) -> Inspect {
    InspectClient::new(server.channel().await.unwrap())
}

/// The whole journal, page by page; checks every page's size and link.
async fn journal(ins: &mut Inspect, id: &str, page_size: u32) -> Vec<v1::JournalRecord> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = ins
            .get_journal(v1::GetJournalRequest {
                session_id: id.into(),
                after_seq: after,
                page_size,
            })
            .await
            .unwrap()
            .into_inner();
        let n = page.records.len();
        assert!(n <= page_size as usize, "{page:?}");
        out.extend(page.records);
        if page.next_after_seq == 0 {
            assert_eq!(out.last().map(|r| r.seq), Some(page.last_seq));
            return out;
        }
        assert_eq!(n, page_size as usize, "only the last page is short");
        assert_eq!(Some(page.next_after_seq), out.last().map(|r| r.seq));
        after = page.next_after_seq;
    }
}

async fn state_at(
    ins: &mut Inspect,
    id: &str,
    seq: u64,
) -> (v1::SessionStateView, serde_json::Value) {
    let v = ins
        .get_state_at(v1::GetStateAtRequest {
            session_id: id.into(),
            seq,
        })
        .await
        .unwrap()
        .into_inner();
    let state = serde_json::from_str(&v.state_json).unwrap();
    (v, state)
}

fn messages(state: &serde_json::Value) -> Vec<String> {
    state["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

/// The seq of the first record of `kind` in turn `turn`.
fn seq_of(records: &[v1::JournalRecord], kind: &str, turn: u64) -> u64 {
    records
        .iter()
        .find(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.json).unwrap();
            r.kind == kind && v["kind"]["turn"].as_u64() == Some(turn)
        })
        .unwrap_or_else(|| panic!("no {kind} of turn {turn}"))
        .seq
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (tonic::Code, String) {
    let s = r.expect_err("the call is refused");
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_rebuilds_the_state_at_each_seq_of_a_known_journal() {
    let server = TestServer::start(echo_config()).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut ins = inspect(&server).await;
    let id = start(&mut client, "").await;
    turn(&mut client, &id, "one").await;
    turn(&mut client, &id, "two").await;

    // Pages of 3 reassemble exactly the journal a full resume replays.
    let records = journal(&mut ins, &id, 3).await;
    let last = records.last().unwrap().seq;
    assert_eq!(last, get(&mut client, &id).await.last_seq);
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    let mut all = client
        .resume_session(v1::ResumeSessionRequest {
            session_id: id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let resumed = read_until(&mut all, |e| e.seq == last).await;
    assert_eq!(records.len(), resumed.len());
    for (r, e) in records.iter().zip(&resumed) {
        let decoded: SessionEvent = serde_json::from_str(&r.json).unwrap();
        assert_eq!(&decoded, e, "record {} is the journaled event", r.seq);
        assert_eq!(r.kind, e.kind.name());
        assert_eq!(r.at_unix_ms, e.at_unix_ms);
    }
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r.kind.as_str())
        .filter(|k| *k != "output_delta")
        .collect();
    let one_turn = [
        "turn_accepted",
        "model_call_started",
        "routing_decided",
        "assistant_message",
        "turn_completed",
    ];
    let mut expected = vec!["session_started"];
    expected.extend(one_turn);
    expected.extend(one_turn);
    assert_eq!(kinds, expected);

    // The state at chosen seqs.
    let (v, s) = state_at(&mut ins, &id, 1).await;
    assert_eq!((v.at_seq, v.live), (1, false));
    assert_eq!(v.status, v1::SessionStatus::Idle as i32);
    assert!(messages(&s).is_empty());

    let t1c = seq_of(&records, "turn_completed", 1);
    let (v, s) = state_at(&mut ins, &id, t1c).await;
    assert_eq!(v.at_seq, t1c);
    assert_eq!(messages(&s), ["one", "echo: one"]);
    assert_eq!(s["turns_completed"], 1);
    assert!(s["current"].is_null());

    let t2a = seq_of(&records, "turn_accepted", 2);
    let (v, s) = state_at(&mut ins, &id, t2a).await;
    assert_eq!(
        v.status,
        v1::SessionStatus::Running as i32,
        "turn 2 is queued"
    );
    assert_eq!(messages(&s), ["one", "echo: one"]);
    assert_eq!(s["queued"][0]["turn"], 2);
    assert_eq!(s["queued"][0]["message"]["content"], "two");
    assert_eq!(s["last_seq"], t2a);

    let t2m = seq_of(&records, "model_call_started", 2);
    let (_, s) = state_at(&mut ins, &id, t2m).await;
    assert_eq!(s["current"]["turn"], 2, "turn 2 runs");
    assert_eq!(s["queued"].as_array().unwrap().len(), 0);

    let (v, s) = state_at(&mut ins, &id, last).await;
    assert_eq!(v.at_seq, last);
    assert_eq!(v.status, v1::SessionStatus::Idle as i32);
    assert_eq!(messages(&s), ["one", "echo: one", "two", "echo: two"]);
    assert_eq!(s["turns_completed"], 2);

    // The live state is the state the journal folds to.
    let live = ins
        .get_session_state(v1::GetSessionStateRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(live.live);
    assert_eq!(live.at_seq, last);
    let live_state: serde_json::Value = serde_json::from_str(&live.state_json).unwrap();
    assert_eq!(live_state, s);

    // Out of range, malformed and unknown.
    let past = ins
        .get_state_at(v1::GetStateAtRequest {
            session_id: id.clone(),
            seq: last + 1,
        })
        .await;
    let (c, m) = code(past);
    assert_eq!(c, tonic::Code::InvalidArgument);
    assert!(m.contains(&format!("last seq {last}")), "{m}");
    for seq in [0, u64::MAX] {
        let r = ins
            .get_state_at(v1::GetStateAtRequest {
                session_id: id.clone(),
                seq,
            })
            .await;
        assert_eq!(code(r).0, tonic::Code::InvalidArgument, "seq {seq}");
    }
    let r = ins
        .get_journal(v1::GetJournalRequest {
            session_id: id.clone(),
            after_seq: 0,
            page_size: 1001,
        })
        .await;
    let (c, m) = code(r);
    assert_eq!(c, tonic::Code::InvalidArgument);
    assert!(m.contains("page_size"), "{m}");
    let end = ins
        .get_journal(v1::GetJournalRequest {
            session_id: id.clone(),
            after_seq: last,
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(end.records.is_empty());
    assert_eq!((end.next_after_seq, end.last_seq), (0, last));

    let r = ins
        .get_session_state(v1::GetSessionStateRequest {
            session_id: "not-an-id".into(),
        })
        .await;
    let (c, m) = code(r);
    assert_eq!(c, tonic::Code::InvalidArgument);
    assert!(m.starts_with("session_id"), "{m}");
    let unknown = SessionId::new().to_string();
    let r = ins
        .get_session_state(v1::GetSessionStateRequest {
            session_id: unknown.clone(),
        })
        .await;
    assert_eq!(code(r).0, tonic::Code::NotFound);
    let r = ins
        .get_journal(v1::GetJournalRequest {
            session_id: unknown.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r).0, tonic::Code::NotFound);
    let r = ins
        .get_state_at(v1::GetStateAtRequest {
            session_id: unknown,
            seq: 1,
        })
        .await;
    assert_eq!(code(r).0, tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_continues_from_its_seq_and_diverges_alone() {
    let server = TestServer::start(echo_config()).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut ins = inspect(&server).await;
    let id = start(&mut client, "").await;
    turn(&mut client, &id, "one").await;
    turn(&mut client, &id, "two").await;
    let source = journal(&mut ins, &id, 1000).await;
    let source_last = source.last().unwrap().seq;
    let t1c = seq_of(&source, "turn_completed", 1);

    let fork = ins
        .fork_session(v1::ForkSessionRequest {
            session_id: id.clone(),
            at_seq: t1c,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(fork.session_id, id);
    assert_eq!(fork.status, v1::SessionStatus::Idle as i32);
    let f = get(&mut client, &fork.session_id).await;
    assert_eq!(texts(&f), ["one", "echo: one"]);
    assert_eq!(f.last_seq, t1c);
    assert_eq!(f.metadata.get("forked_from"), Some(&format!("{id}@{t1c}")));
    // The fork's journal is the source's records 1..=t1c.
    let copied = journal(&mut ins, &fork.session_id, 1000).await;
    assert_eq!(copied.len() as u64, t1c);
    for (a, b) in copied.iter().zip(&source) {
        let (a_v, b_v): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&a.json).unwrap(),
            serde_json::from_str(&b.json).unwrap(),
        );
        assert_eq!(
            (a.seq, a.at_unix_ms, &a_v["kind"]),
            (b.seq, b.at_unix_ms, &b_v["kind"])
        );
    }

    // A different message to the fork: the fork diverges, the source does not.
    let t = turn(&mut client, &fork.session_id, "something else").await;
    assert_eq!(t.last().unwrap().kind.name(), "turn_completed");
    assert_eq!(t[0].seq, t1c + 1, "the fork continues after its last seq");
    assert_eq!(
        texts(&get(&mut client, &fork.session_id).await),
        ["one", "echo: one", "something else", "echo: something else"]
    );
    let s = get(&mut client, &id).await;
    assert_eq!(texts(&s), ["one", "echo: one", "two", "echo: two"]);
    assert_eq!(s.last_seq, source_last);

    // A fork inside a turn picks the turn up and runs it.
    let t2a = seq_of(&source, "turn_accepted", 2);
    let mid = ins
        .fork_session(v1::ForkSessionRequest {
            session_id: id.clone(),
            at_seq: t2a,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mid.status, v1::SessionStatus::Running as i32);
    let mut done = None;
    for _ in 0..300 {
        let m = get(&mut client, &mid.session_id).await;
        if m.turns_completed == 2 && m.status == v1::SessionStatus::Idle as i32 {
            done = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = done.expect("the fork ran turn 2 to its end");
    assert_eq!(texts(&m), ["one", "echo: one", "two", "echo: two"]);

    // Refusals: past the end, seq 0, inside a pending gate.
    let r = ins
        .fork_session(v1::ForkSessionRequest {
            session_id: id.clone(),
            at_seq: source_last + 1,
        })
        .await;
    assert_eq!(code(r).0, tonic::Code::InvalidArgument);
    let r = ins
        .fork_session(v1::ForkSessionRequest {
            session_id: id.clone(),
            at_seq: 0,
        })
        .await;
    assert_eq!(code(r).0, tonic::Code::InvalidArgument);
    let held = start(&mut client, "").await;
    let mut stream = client
        .send_message(v1::SendMessageRequest {
            session_id: held.clone(),
            content: "hold this".into(),
            review: true,
            images: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let events = read_until(&mut stream, |e| {
        e.kind.name() == "gate_opened" || e.ends_turn()
    })
    .await;
    let gate = events.last().unwrap();
    assert_eq!(gate.kind.name(), "gate_opened", "{:?}", kinds(&events));
    let r = ins
        .fork_session(v1::ForkSessionRequest {
            session_id: held.clone(),
            at_seq: gate.seq,
        })
        .await;
    let (c, m) = code(r);
    assert_eq!(c, tonic::Code::FailedPrecondition);
    assert!(m.contains("gate"), "{m}");
    server.stop().await;
}

/// The session nodes under the session supervisor.
async fn session_nodes(ins: &mut Inspect) -> Vec<v1::ActorNode> {
    let root = ins
        .list_actors(v1::ListActorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .root
        .unwrap();
    assert_eq!(root.kind, "runtime");
    let sup = root
        .children
        .iter()
        .find(|c| c.kind == "session_supervisor")
        .expect("a session supervisor");
    assert!(sup.children.iter().all(|c| c.kind == "session"));
    sup.children.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sessions_join_the_actor_tree_and_leave_it_when_passivated() {
    let mut cfg = echo_config();
    cfg.sessions.passivate_after_ms = 2000;
    let server = TestServer::start(cfg).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut ins = inspect(&server).await;

    let root = ins
        .list_actors(v1::ListActorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .root
        .unwrap();
    let kinds: Vec<&str> = root.children.iter().map(|c| c.kind.as_str()).collect();
    for k in [
        "session_supervisor",
        "model_executors",
        "tool_executor",
        "journal_writer",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let models = root
        .children
        .iter()
        .find(|c| c.kind == "model_executors")
        .unwrap();
    assert!(
        models
            .children
            .iter()
            .any(|m| m.kind == "model_executor" && m.name == "echo"),
        "{models:?}"
    );
    assert!(session_nodes(&mut ins).await.is_empty());

    let id = start(&mut client, "").await;
    turn(&mut client, &id, "remember me").await;
    let nodes = session_nodes(&mut ins).await;
    let node = nodes
        .iter()
        .find(|n| n.name == id)
        .expect("the session is live");
    assert_eq!(node.restarts, 0);
    assert!(
        matches!(node.status.as_str(), "running" | "passivating"),
        "{node:?}"
    );
    let v = ins
        .get_session_state(v1::GetSessionStateRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.live);

    let mut gone = false;
    for _ in 0..300 {
        if !session_nodes(&mut ins).await.iter().any(|n| n.name == id) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the passivated session left the tree");
    let v = ins
        .get_session_state(v1::GetSessionStateRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.live, "rebuilt from the journal");
    let s: serde_json::Value = serde_json::from_str(&v.state_json).unwrap();
    assert_eq!(messages(&s), ["remember me", "echo: remember me"]);
    assert_eq!(v.at_seq, get_last_seq_offline(&mut ins, &id).await);
    // Reading the state woke nothing.
    assert!(!session_nodes(&mut ins).await.iter().any(|n| n.name == id));
    assert_eq!(server.runtime.stats().await.unwrap().live_sessions, 0);
    server.stop().await;
}

/// The last seq, from the journal (GetSession would wake the session).
async fn get_last_seq_offline(ins: &mut Inspect, id: &str) -> u64 {
    ins.get_journal(v1::GetJournalRequest {
        session_id: id.into(),
        after_seq: u64::MAX - 1,
        page_size: 1,
    })
    .await
    .unwrap()
    .into_inner()
    .last_seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_session_actor_shows_its_restarts_in_the_tree() {
    let mut cfg = echo_config();
    cfg.supervision.initial_backoff_ms = 10;
    let server = TestServer::start(cfg).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut ins = inspect(&server).await;
    let id = start(&mut client, "").await;
    turn(&mut client, &id, "before").await;
    let node = session_nodes(&mut ins)
        .await
        .into_iter()
        .find(|n| n.name == id)
        .unwrap();
    assert_eq!(node.restarts, 0);

    server
        .runtime
        .inject_actor_fault(id.parse().unwrap())
        .unwrap();
    let mut restarted = None;
    for _ in 0..300 {
        if let Some(n) = session_nodes(&mut ins)
            .await
            .into_iter()
            .find(|n| n.name == id && n.restarts >= 1 && n.status == "running")
        {
            restarted = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = restarted.expect("the node shows the restart");
    assert_eq!(n.restarts, 1);
    let root = ins
        .list_actors(v1::ListActorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .root
        .unwrap();
    let sup = root
        .children
        .iter()
        .find(|c| c.kind == "session_supervisor")
        .unwrap();
    assert_eq!(
        sup.detail.get("restarts_total").map(String::as_str),
        Some("1")
    );
    // Restarted from disk: state intact and usable.
    let t = turn(&mut client, &id, "after").await;
    assert_eq!(t.last().unwrap().kind.name(), "turn_completed");
    assert_eq!(
        texts(&get(&mut client, &id).await),
        ["before", "echo: before", "after", "echo: after"]
    );
    server.stop().await;
}

// --- the real binary ------------------------------------------------------

async fn baton(args: &[&str]) -> Output {
    tokio::process::Command::new(bin())
        .args(args)
        .output()
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The echo model answering `echo: <message>` after `delay_ms`, streamed.
fn echo_toml(delay_ms: u64) -> String {
    format!(
        "[[models]]\nname = \"echo\"\nprovider = \"echo\"\nstream = true\n[models.echo]\nprefix = \"echo: \"\nchunk_chars = 4\ndelay_ms = {delay_ms}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_commands_print_the_tree_every_journal_seq_and_states() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("data"), &echo_toml(0)).unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let url = server.url();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    turn(&mut client, &id, "hello").await;
    turn(&mut client, &id, "again").await;
    let last = get(&mut client, &id).await.last_seq;

    let out = baton(&["inspect", "actors", "--json", "--server", &url]).await;
    assert!(out.status.success(), "{out:?}");
    let tree: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(tree["kind"], "runtime");
    let sup = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "session_supervisor")
        .unwrap();
    assert!(
        sup["children"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == id.as_str()),
        "{sup}"
    );

    let out = baton(&["inspect", "actors", "--server", &url]).await;
    let text = stdout(&out);
    assert!(
        text.starts_with("runtime baton [running] uptime "),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("    session {id} [running]"))),
        "sessions are indented under the supervisor: {text}"
    );

    // Every seq, one line each, across pages of 3.
    let out = baton(&[
        "inspect", "journal", &id, "--all", "--limit", "3", "--server", &url,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("turn_accepted") && l.contains("user: again")),
        "{text}"
    );
    // One page: its records and where to go on.
    let out = baton(&["inspect", "journal", &id, "--limit", "3", "--server", &url]).await;
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.lines().last().unwrap().starts_with("more: --after 3"),
        "{text}"
    );

    let out = baton(&[
        "inspect", "journal", &id, "--all", "--json", "--server", &url,
    ])
    .await;
    let records: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    let t1c = records
        .iter()
        .find(|r| r["kind"]["type"] == "turn_completed")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();

    let out = baton(&[
        "inspect",
        "at",
        &id,
        &t1c.to_string(),
        "--json",
        "--server",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["at_seq"], t1c);
    assert_eq!(messages(&v["state"]), ["hello", "echo: hello"]);

    let out = baton(&["inspect", "session", &id, "--server", &url]).await;
    let text = stdout(&out);
    assert!(text.contains("messages  4"), "{text}");
    assert!(text.contains(&format!("at seq {last}")), "{text}");

    let out = baton(&[
        "inspect",
        "at",
        &id,
        &(last + 1).to_string(),
        "--server",
        &url,
    ])
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("InvalidArgument"), "{out:?}");

    let out = baton(&[
        "inspect",
        "fork",
        &id,
        &t1c.to_string(),
        "--json",
        "--server",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let f: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let fork_id = f["session_id"].as_str().unwrap();
    assert_eq!(
        texts(&get(&mut client, fork_id).await),
        ["hello", "echo: hello"]
    );
    // --quiet prints the bare id, for ID=$(baton inspect fork … --quiet).
    let out = baton(&[
        "inspect",
        "fork",
        &id,
        &t1c.to_string(),
        "--quiet",
        "--server",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let quiet_id = stdout(&out).trim().to_string();
    assert!(quiet_id.parse::<SessionId>().is_ok(), "{quiet_id:?}");
    assert_eq!(
        texts(&get(&mut client, &quiet_id).await),
        ["hello", "echo: hello"]
    );

    let out = baton(&["inspect", "actors", "--server", &url]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let executors: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("model_executor"))
        .collect();
    assert!(!executors.is_empty(), "{text}");
    assert!(
        executors.iter().all(|l| !l.contains("uptime 0.0s")),
        "model executors show how long they have run: {text}"
    );

    let out = baton(&["inspect", "replay", &id, "--server", &url]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("replayed 2 turns, compared ") && first.ends_with(" records: identical"),
        "{text}"
    );
    server.terminate().await.unwrap();
}

/// Every session's journal, through the Inspect API.
async fn journals(url: &str, ids: &[String]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut ins = InspectClient::new(
        Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut out = BTreeMap::new();
    for id in ids {
        let records = journal(&mut ins, id, 1000).await;
        out.insert(
            id.clone(),
            records
                .iter()
                .map(|r| serde_json::from_str(&r.json).unwrap())
                .collect(),
        );
    }
    out
}

/// (relative path, length) of every file under `dir`.
fn listing(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, e.metadata().unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_to_a_server_that_finishes_the_open_turns() {
    if rocksdb_only("online backups and restores are of the embedded store") {
        return;
    }
    const SESSIONS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Slow enough that most sessions are mid-turn at any moment.
    // Backups over the API go inside store.backup_dir (the line lands in [store]).
    // The audit signing key lives outside the data dir (backups leave it out).
    let key = format!(
        "[audit]\nkey_file = {:?}\n",
        dir.path().join("audit.key").display().to_string()
    );
    let extra = format!(
        "backup_dir = {:?}\n{}\n{key}",
        dir.path().display().to_string(),
        echo_toml(150)
    );
    let config = write_config(dir.path(), &data, &extra).unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let url = server.url();
    let mut client = server.client().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        ids.push(start(&mut client, "").await);
    }

    // Several clients send turns continuously.
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let (mut c, id) = (client.clone(), id.clone());
        let (stop, completed) = (stop.clone(), completed.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = turn(&mut c, &id, &format!("client {k} turn {n}")).await;
                assert_eq!(t.last().unwrap().kind.name(), "turn_completed");
                completed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while completed.load(Ordering::Relaxed) < 2 * SESSIONS as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let backup = dir.path().join("backup");
    let out = baton(&[
        "backup",
        "--to",
        backup.to_str().unwrap(),
        "--json",
        "--server",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let info: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(info["sessions"], SESSIONS as u64);
    assert_eq!(info["path"], backup.display().to_string());
    assert!(info["bytes"].as_u64().unwrap() > 0 && info["files"].as_u64().unwrap() > 0);
    // A second backup to the same place is refused.
    let out = baton(&["backup", "--to", backup.to_str().unwrap(), "--server", &url]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{out:?}");
    // One whose parent directory is missing: INVALID_ARGUMENT naming it.
    let orphan = dir.path().join("no/such/parent/backup");
    let out = baton(&["backup", "--to", orphan.to_str().unwrap(), "--server", &url]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("InvalidArgument")
            && err.contains("parent directory")
            && err.contains(&dir.path().join("no/such/parent").display().to_string()),
        "{err}"
    );

    // The load goes on a little, then stops; every client finishes its turn.
    let at_backup = completed.load(Ordering::Relaxed);
    while completed.load(Ordering::Relaxed) < at_backup + SESSIONS as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let live = journals(&url, &ids).await;

    // A restore refuses a data dir a server has open, and leaves it alone.
    let out = baton(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--force",
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is a server running on it"),
        "{out:?}"
    );
    assert_eq!(texts(&get(&mut client, &ids[0]).await).len() % 2, 0);

    // The original dies hard; the backup is not touched by it.
    let before = listing(&backup);
    server.kill9().await.unwrap();
    assert_eq!(listing(&backup), before);

    let restored = dir.path().join("restored");
    let out = baton(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(r["sessions"], SESSIONS as u64);
    let out = baton(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ])
    .await;
    assert!(!out.status.success(), "a non-empty data dir needs --force");

    // What the backup holds, read offline before a server touches it.
    let mut backed_up: BTreeMap<String, (Vec<SessionEvent>, bool)> = BTreeMap::new();
    {
        let store = baton_store::Store::open(baton_store::StoreOptions::new(
            &restored,
            baton_store::Durability::Sync,
        ))
        .unwrap();
        for id in &ids {
            let sid: SessionId = id.parse().unwrap();
            let meta = store
                .load_meta(sid)
                .await
                .unwrap()
                .expect("the session is in the backup");
            let events = store.read_journal(sid, 0, 1_000_000).await.unwrap();
            backed_up.insert(
                id.clone(),
                (events, meta.status == baton::SessionStatus::Running),
            );
        }
        store.close();
    }
    let mut mid_turn = 0;
    let mut behind = 0;
    for id in &ids {
        let (events, running) = &backed_up[id];
        let last = events.last().unwrap().seq;
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "session {id}: the backup's journal is gap-free"
        );
        let live = &live[id];
        assert!(live.len() as u64 >= last);
        for (e, l) in events.iter().zip(live) {
            assert_eq!(
                &serde_json::to_value(e).unwrap(),
                l,
                "session {id} seq {}",
                e.seq
            );
        }
        mid_turn += usize::from(*running);
        behind += usize::from((live.len() as u64) > last);
    }
    assert!(mid_turn > 0, "some sessions were mid-turn at the backup");
    assert!(behind > 0, "the load went on after the backup");

    // A second server on the restored data: every session reads, and the
    // turns that were open at the backup complete.
    let cfg_dir = dir.path().join("second");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let config2 = write_config(&cfg_dir, &restored, &format!("{}\n{key}", echo_toml(0))).unwrap();
    let server2 = BatonProcess::start(bin(), &config2).await.unwrap();
    let mut client2 = server2.client().await.unwrap();
    for id in &ids {
        let mut settled = None;
        for _ in 0..300 {
            let s = get(&mut client2, id).await;
            if s.status == v1::SessionStatus::Idle as i32 {
                settled = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = settled.unwrap_or_else(|| panic!("session {id} finished its open turn"));
        let t = texts(&s);
        assert_eq!(t.len() % 2, 0, "{t:?}");
        for pair in t.chunks(2) {
            assert_eq!(pair[1], format!("echo: {}", pair[0]));
        }
        let (events, running) = &backed_up[id];
        if *running {
            let open_turn = events.iter().rev().find_map(|e| match &e.kind {
                baton::EventKind::TurnAccepted { turn, .. } => Some(*turn),
                _ => None,
            });
            assert_eq!(Some(s.turns_completed), open_turn, "session {id}");
        }
    }
    let after = journals(&server2.url(), &ids).await;
    for id in &ids {
        let (events, _) = &backed_up[id];
        for (e, l) in events.iter().zip(&after[id]) {
            assert_eq!(
                &serde_json::to_value(e).unwrap(),
                l,
                "session {id} seq {}",
                e.seq
            );
        }
    }
    server2.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_an_echo_session_is_identical() {
    let server = TestServer::start(echo_config()).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut ins = inspect(&server).await;
    let id = start(&mut client, "").await;
    turn(&mut client, &id, "one").await;
    turn(&mut client, &id, "two").await;
    let r = ins
        .replay_session(v1::ReplaySessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.source, id);
    assert_eq!(r.turns, 2);
    assert!(r.compared > 0);
    assert!(!r.diverged, "{:?}", r.divergence);
    assert!(r.replay_session_id.parse::<SessionId>().is_ok());
    server.stop().await;
}
