//! The audit trail of the real binary: every model call, routing decision
//! and admin action is signed into the hash chain, across a SIGKILL; `baton
//! audit verify` accepts it and rejects a tampered copy; `export` filters by
//! session.

use std::time::Duration;

use baton_testkit::fake_openai::Behavior;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};
use serde_json::Value;

use crate::common::*;

fn baton(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("run baton")
}

/// `baton` in `cwd` (no config file there) with `env` set.
fn baton_in(
    cwd: &std::path::Path,
    env: &[(&str, &std::path::Path)],
    args: &[&str],
) -> std::process::Output {
    let mut c = std::process::Command::new(bin());
    c.args(args).current_dir(cwd).env_remove("BATON_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run baton")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_every_call_across_a_crash_and_detects_tampering() {
    let fake = FakeOpenAi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &data, &fake_model_toml(&fake.base_url(), true)).unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let other = start(&mut client, "").await;
    turn(&mut client, &id, "first").await;
    turn(&mut client, &other, "unrelated").await;

    // Turn 2 is in flight at the model when the process is killed.
    fake.set_behavior(Behavior {
        delay: Duration::from_secs(600),
        ..Behavior::default()
    });
    let mut s = send(&mut client, &id, "second").await;
    read_until(&mut s, |e| e.kind.name() == "model_call_started").await;
    for _ in 0..500 {
        if fake.requests() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9().await.unwrap();
    fake.set_behavior(Behavior::default());
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let mut r = client
        .resume_session(baton::proto::v1::ResumeSessionRequest {
            session_id: id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    read_until(&mut r, |e| {
        matches!(
            e.kind,
            baton::types::EventKind::TurnCompleted { turn: 2, .. }
        )
    })
    .await;
    server.terminate().await.unwrap();

    let audit_dir = data.join("audit");
    let audit_dir = audit_dir.to_str().unwrap();
    let out = baton(&["audit", "verify", "--dir", audit_dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok:"), "{stdout}");
    // The offline commands find the log as the server does: through the
    // config file, or through BATON_STORE__DATA_DIR, without --dir.
    let out = baton_in(
        dir.path(),
        &[],
        &["audit", "verify", "--config", config.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    let out = baton_in(
        dir.path(),
        &[("BATON_STORE__DATA_DIR", &data)],
        &["audit", "verify"],
    );
    assert!(out.status.success(), "{out:?}");
    let out = baton_in(dir.path(), &[], &["audit", "verify"]);
    assert!(
        !out.status.success(),
        "./baton-data has no log here: {out:?}"
    );
    let out = baton_in(
        dir.path(),
        &[("BATON_STORE__DATA_DIR", &data)],
        &["audit", "pubkey"],
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(key.len(), 64, "{key}");

    // An exported file checks on its own, with the public key only.
    let export = dir.path().join("export.jsonl");
    let out = baton(&[
        "audit",
        "export",
        "--config",
        config.to_str().unwrap(),
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let e = export.to_str().unwrap();
    let out = baton_in(
        dir.path(),
        &[],
        &[
            "audit",
            "verify",
            "--export",
            e,
            "--public-key",
            &key,
            "--complete",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.starts_with("ok:"), "{out:?}");
    let mut bytes = std::fs::read(&export).unwrap();
    let at = bytes
        .windows(11)
        .position(|w| w == b"echo: first")
        .expect("the answer is in the export");
    bytes[at] = b'E';
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, bytes).unwrap();
    let out = baton_in(
        dir.path(),
        &[],
        &[
            "audit",
            "verify",
            "--export",
            tampered.to_str().unwrap(),
            "--public-key",
            &key,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !out.status.success() && text.contains("TAMPERED: line"),
        "{text}"
    );

    // The session's records: each model call exactly once (the crash did not
    // duplicate the answer), with the routing decisions and the admin action
    // that created it.
    let out = baton(&["audit", "export", "--dir", audit_dir, "--session", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.iter().all(|r| r["session_id"] == id.as_str()));
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    // At least once: a record the crash may have kept from the log is
    // appended again at the restart, marked `recovered` (same seq); the
    // first copy of each seq counts.
    let mut seen = std::collections::HashSet::new();
    let mut calls: Vec<&Value> = Vec::new();
    for r in records.iter().filter(|r| r["kind"] == "model_call") {
        if seen.insert(r["data"]["seq"].as_u64().unwrap()) {
            calls.push(r);
        } else {
            assert_eq!(r["data"]["recovered"], true, "an unmarked duplicate: {r}");
        }
    }
    assert_eq!(calls.len(), 2, "{kinds:?}");
    assert_eq!(calls[0]["data"]["response"]["content"], "echo: first");
    assert_eq!(calls[1]["data"]["response"]["content"], "echo: second");
    assert_eq!(calls[0]["data"]["endpoint"], "fake");
    assert!(kinds.contains(&"routing_decision"), "{kinds:?}");
    assert!(kinds.contains(&"model_input"), "{kinds:?}");
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "admin_action" && r["data"]["action"] == "start_session"),
        "{kinds:?}"
    );
    for r in &records {
        assert_eq!(r["hash"].as_str().unwrap().len(), 64);
        assert_eq!(r["sig"].as_str().unwrap().len(), 128);
    }
    // Both server starts and the clean stop are on record (the SIGKILLed run
    // never logged a stop).
    let out = baton(&["audit", "export", "--dir", audit_dir]);
    let all = String::from_utf8(out.stdout).unwrap();
    assert_eq!(all.matches("\"server_started\"").count(), 2);
    assert_eq!(all.matches("\"server_stopped\"").count(), 1);

    // A single changed byte in a copy is found and named.
    let copy = dir.path().join("tampered");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(audit_dir).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    let log = copy.join("audit.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes
        .windows(11)
        .position(|w| w == b"echo: first")
        .expect("the answer is in the log");
    bytes[at] = b'E';
    std::fs::write(&log, bytes).unwrap();
    let pubkey = format!("{audit_dir}/audit.key.pub");
    let out = baton(&[
        "audit",
        "verify",
        "--dir",
        copy.to_str().unwrap(),
        "--public-key-file",
        &pubkey,
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("TAMPERED") && text.contains("record"),
        "{text}"
    );
}

/// The audit kinds docs/inspection.md lists, as (kind, journal records it
/// comes from in snake_case — empty for records not made from the journal),
/// and the admin actions it names.
fn documented() -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/inspection.md"))
        .unwrap();
    let section = doc.split("## Audit trail").nth(1).unwrap();
    let ticks = |s: &str| -> Vec<String> {
        s.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let snake = |camel: &str| {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    };
    let mut kinds = Vec::new();
    let mut admin = Vec::new();
    let table = section
        .lines()
        .skip_while(|l| !l.starts_with("| kind"))
        .take_while(|l| l.starts_with('|'));
    for row in table.filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (names, from, data) = (ticks(cells[1]), cells[2], cells[3]);
        if names == ["admin_action"] {
            admin = ticks(data);
        }
        let froms: Vec<String> = if from == "those records" {
            names.clone()
        } else {
            ticks(from).iter().map(|f| snake(f)).collect()
        };
        for (i, n) in names.iter().enumerate() {
            let from = if froms.is_empty() {
                Vec::new()
            } else if froms.len() == names.len() {
                vec![froms[i].clone()]
            } else {
                froms.clone()
            };
            kinds.push((n.clone(), from));
        }
    }
    assert!(kinds.len() > 10, "the table was not found: {kinds:?}");
    (kinds, admin)
}

/// The audit trail holds what docs/inspection.md says, no more and no less:
/// a real server drives every path (gRPC sessions with a tool, a gate, a
/// retry, a failed and a cancelled turn; the OpenAI front door; fork,
/// replay, backup, delete), then the exported log is checked against the
/// documented table — and every audited journal record of every session is
/// in it, under the documented kind, with its seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_holds_what_the_docs_list() {
    if rocksdb_only(
        "it takes an online backup (`baton backup`), which a store on PostgreSQL leaves to the database's own tools",
    ) {
        return;
    }
    use baton::proto::v1::{self, gates_client::GatesClient, inspect_client::InspectClient};
    use baton::types::ToolCall;
    use baton_testkit::fake_model::{Fault, ScriptedReply};

    let fake = FakeOpenAi::start().await.unwrap();
    // Scores every answer (quality_score records), on a server of its own.
    let judge = FakeOpenAi::start().await.unwrap();
    judge.set_behavior(baton_testkit::fake_model::Behavior {
        reply: baton_testkit::fake_model::Reply::Fixed(
            r#"{"factuality": 1, "relevance": 1, "coherence": 1}"#.into(),
        ),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let toml = format!(
        "backup_dir = {:?}\n{}\n[[models]]\nname = \"judge\"\nprovider = \"openai\"\nbase_url = {:?}\nmodel = \"judge-model\"\n\n[[models]]\nname = \"vectors\"\nprovider = \"echo\"\ncapabilities = [\"embeddings\"]\n\n[quality]\nevaluator = \"judge\"\nsample = 1.0\n\n[tools.builtin]\ncalculator = true\ncurrent_time = true\n\n[[gates.policies]]\nname = \"review_math\"\nkind = \"before_tool\"\ntools = [\"calculator\"]\nreviewers = \"ops\"\n\n[[policies]]\nname = \"pii\"\nstage = \"input\"\n[[policies.rules]]\nname = \"contacts\"\ndetect = [\"email\"]\noutcome = \"redact\"\n",
        dir.path().display().to_string(),
        fake_model_toml(&fake.base_url(), false),
        judge.base_url(),
    );
    let flows_dir = dir.path().join("flows");
    std::fs::create_dir_all(&flows_dir).unwrap();
    std::fs::write(
        flows_dir.join("audited.toml"),
        "name = \"audited\"\n[[steps]]\nid = \"double\"\nkind = \"transform\"\nexpr = \".input.n * 2\"\n[[steps]]\nid = \"ok\"\nkind = \"wait\"\nsignal = \"ok\"\n",
    )
    .unwrap();
    let toml = format!(
        "{toml}\n[flows]\ndir = {:?}\n",
        flows_dir.display().to_string()
    );
    let config = write_config(dir.path(), &data, &toml).unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut gates = GatesClient::new(channel.clone());
    let mut ins = InspectClient::new(channel);
    let call = |id: &str, name: &str, args: &str| ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.into(),
    };
    let gate_of = |events: &[baton::types::SessionEvent]| {
        events
            .iter()
            .find_map(|e| match &e.kind {
                baton::types::EventKind::GateOpened { gate_id, .. } => Some(gate_id.to_string()),
                _ => None,
            })
            .unwrap()
    };

    // A: a tool call held by a gate, approved; then a turn whose first
    // attempt fails and is retried.
    let a = start(&mut client, "").await;
    fake.push_reply(ScriptedReply::ToolCalls(vec![call(
        "c1",
        "calculator",
        r#"{"expression":"6*7"}"#,
    )]));
    fake.push_reply(ScriptedReply::Text("it is 42".into()));
    let mut s = send(&mut client, &a, "compute").await;
    let opened = read_until(&mut s, |e| e.kind.name() == "gate_opened").await;
    gates
        .decide_gate(v1::DecideGateRequest {
            gate_id: gate_of(&opened),
            decision: v1::GateDecision::Approve as i32,
            reviewer: "ana".into(),
            reason: "fine".into(),
            edited_payload: String::new(),
        })
        .await
        .unwrap();
    read_until(&mut s, |e| e.ends_turn()).await;
    fake.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
        body: "busy".into(),
    });
    let t = turn(&mut client, &a, "again").await;
    assert_eq!(t.last().unwrap().kind.name(), "turn_completed");

    // B: a turn that fails (max_steps = 1, and the model wants a tool).
    let b = client
        .start_session(v1::StartSessionRequest {
            max_steps: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    fake.push_reply(ScriptedReply::ToolCalls(vec![call(
        "t1",
        "current_time",
        "{}",
    )]));
    let t = turn(&mut client, &b, "what time is it").await;
    assert_eq!(t.last().unwrap().kind.name(), "turn_failed");

    // C: a turn cancelled while its gate waits.
    let c = start(&mut client, "").await;
    fake.push_reply(ScriptedReply::ToolCalls(vec![call(
        "c9",
        "calculator",
        r#"{"expression":"1+1"}"#,
    )]));
    let mut s = send(&mut client, &c, "add").await;
    read_until(&mut s, |e| e.kind.name() == "gate_opened").await;
    client
        .cancel_turn(v1::CancelTurnRequest {
            session_id: c.clone(),
        })
        .await
        .unwrap();
    read_until(&mut s, |e| e.ends_turn()).await;

    // The front door.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/chat/completions",
            server.http_url().unwrap()
        ))
        .json(&serde_json::json!({"model": "fake", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello front door, I am jane@example.com"}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // Embeddings: one embedding_call record, the email redacted before it left.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", server.http_url().unwrap()))
        .json(&serde_json::json!({"model": "vectors", "input": ["mail jane@example.com"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    // Fork, replay, backup, delete.
    let last = journal_of(&mut ins, &a).await.last().unwrap().seq;
    ins.fork_session(v1::ForkSessionRequest {
        session_id: a.clone(),
        at_seq: last,
    })
    .await
    .unwrap();
    let replay = ins
        .replay_session(v1::ReplaySessionRequest {
            session_id: a.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(replay.divergence.is_none(), "{replay:?}");
    ins.backup(v1::BackupRequest {
        dest_path: dir.path().join("backup").display().to_string(),
    })
    .await
    .unwrap();
    client
        .delete_session(v1::DeleteSessionRequest {
            session_id: b.clone(),
        })
        .await
        .unwrap();
    // An API key made and revoked.
    let mut admin = v1::admin_client::AdminClient::new(
        tonic::transport::Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let key = admin
        .create_key(v1::CreateKeyRequest {
            tenant: "acme".into(),
            roles: vec!["client".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    admin
        .revoke_key(v1::RevokeKeyRequest { id: key.id })
        .await
        .unwrap();

    // A flow run, started and signalled.
    let mut flows = v1::flows_client::FlowsClient::new(
        tonic::transport::Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let run = flows
        .start_run(v1::StartRunRequest {
            flow: "audited".into(),
            input_json: "{\"n\": 21}".into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let signalled = async {
        loop {
            let r = flows
                .signal_run(v1::SignalRunRequest {
                    run_id: run.clone(),
                    name: "ok".into(),
                    payload_json: "true".into(),
                })
                .await;
            if r.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    signalled.await;
    let run_records: Vec<Value> = {
        use futures::StreamExt;
        let mut s = flows
            .watch_run(v1::WatchRunRequest {
                run_id: run.clone(),
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            out.push(serde_json::from_str(&r.unwrap().record_json).unwrap());
        }
        out
    };
    assert_eq!(
        run_records.last().unwrap()["type"],
        "run_completed",
        "{run_records:?}"
    );

    // Every session's journal, before the server stops (B is deleted: its
    // records were read by the checks above only through the log).
    let mut journals = Vec::new();
    let sessions = client
        .list_sessions(v1::ListSessionsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(
        sessions.len(),
        5,
        "A, C, the front door's, the fork, the replay"
    );
    for s in &sessions {
        journals.push((
            s.session_id.clone(),
            journal_of(&mut ins, &s.session_id).await,
        ));
    }
    server.terminate().await.unwrap();

    let out = baton(&["audit", "export", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (kinds, admin) = documented();
    let listed: std::collections::BTreeSet<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
    let seen: std::collections::BTreeSet<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    // Nothing undocumented is written.
    let undocumented: Vec<_> = seen.difference(&listed).collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/inspection.md: {undocumented:?}"
    );
    // Everything documented is written (a session failing for good needs an
    // actor that crashes over and over: its record is covered where that is
    // provoked, in the runtime's supervision tests, not here).
    let missing: Vec<_> = listed
        .difference(&seen)
        .filter(|k| **k != "session_failed")
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not in a real log: {missing:?}"
    );
    let actions: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|r| r["kind"] == "admin_action")
        .map(|r| r["data"]["action"].as_str().unwrap())
        .collect();
    let documented_actions: std::collections::BTreeSet<&str> =
        admin.iter().map(String::as_str).collect();
    assert_eq!(actions, documented_actions, "admin actions");

    // Every audited journal record of every session is in the trail, under
    // its documented kind, with its seq; every session starts with one.
    for (id, journal) in &journals {
        for rec in journal {
            let Some((kind, _)) = kinds.iter().find(|(_, from)| from.contains(&rec.kind)) else {
                continue;
            };
            assert!(
                records.iter().any(|r| r["session_id"] == id.as_str()
                    && r["kind"] == kind.as_str()
                    && r["data"]["seq"] == rec.seq),
                "session {id}: journal record {} ({}) is not in the audit trail as {kind}",
                rec.seq,
                rec.kind
            );
        }
        assert!(
            records.iter().any(|r| r["session_id"] == id.as_str()
                && r["kind"] == "session_started"
                && r["data"]["seq"] == 1),
            "session {id} has no session_started"
        );
    }
    // Every record of the flow run is in the trail, with its seq; the
    // signal's actor is who sent it.
    for rec in &run_records {
        assert!(
            records.iter().any(|r| r["kind"] == "flow_run"
                && r["data"]["run_id"] == run.as_str()
                && r["data"]["seq"] == rec["seq"]
                && r["data"]["event"] == rec["type"]),
            "run {run}: record {rec} is not in the audit trail"
        );
    }
    assert!(records.iter().any(|r| r["kind"] == "flow_run"
        && r["data"]["event"] == "signal_received"
        && r["actor"].as_str().is_some_and(|a| a.starts_with("local"))));
    // The front door's conversation: its system prompt and history are in
    // its session_started record, its last message in model_input.
    let fd = records
        .iter()
        .find(|r| r["kind"] == "session_started" && r["data"]["one_shot"] == true)
        .expect("the front door's session_started");
    assert_eq!(fd["data"]["system_prompt"], "be brief", "{fd}");
    assert!(
        records.iter().any(|r| r["session_id"] == fd["session_id"]
            && r["kind"] == "model_input"
            && r["data"]["message"]["content"] == "hello front door, I am jane@example.com"),
        "the front door's input is audited"
    );
    let out = baton(&["audit", "verify", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

async fn journal_of(
    ins: &mut baton::proto::v1::inspect_client::InspectClient<tonic::transport::Channel>,
    id: &str,
) -> Vec<baton::proto::v1::JournalRecord> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = ins
            .get_journal(baton::proto::v1::GetJournalRequest {
                session_id: id.into(),
                after_seq: after,
                page_size: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.records);
        if page.next_after_seq == 0 {
            return out;
        }
        after = page.next_after_seq;
    }
}

async fn healthz(server: &BatonProcess) -> (u16, String) {
    let r = reqwest::get(format!("{}/healthz", server.http_url().unwrap()))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The audit directory's disk fills up under a running server with
/// `audit.on_failure = "block"`: the failure is surfaced (health 503 naming
/// the cause, metrics), new work is refused with UNAVAILABLE, nothing
/// journaled goes missing from the trail; once space returns the server
/// recovers by itself, appends what the trail missed, and serves again —
/// and after a SIGKILL the chain still verifies with every answer in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_is_surfaced_blocks_new_work_and_loses_nothing() {
    let fake = FakeOpenAi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("auditfs"), "256k");
    let data = dir.path().join("data");
    let toml = format!(
        "{}\n[audit]\ndir = {:?}\non_failure = \"block\"\n",
        fake_model_toml(&fake.base_url(), false),
        disk.path.to_str().unwrap()
    );
    let config = write_config(dir.path(), &data, &toml).unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    turn(&mut client, &id, "first").await;
    assert_eq!(healthz(&server).await, (200, "ok".to_owned()));

    // The disk fills; turns go on until their records cannot be written
    // (the log's last partly used page still takes a few).
    let filler = disk.fill();
    let mut texts = vec!["first".to_owned()];
    let mut health = healthz(&server).await;
    for i in 0..20 {
        let text = format!("second-{i}");
        // The trail anchors (fsync, signed head) within 200 ms of a write,
        // so the failure may surface between the health check and the next
        // turn: then that turn is refused, naming it.
        match client
            .send_message(baton::proto::v1::SendMessageRequest {
                session_id: id.clone(),
                content: text.clone(),
                ..Default::default()
            })
            .await
        {
            Err(refused) => {
                assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
                assert!(refused.message().contains("audit trail"), "{refused:?}");
                health = healthz(&server).await;
                break;
            }
            Ok(events) => {
                read_until(&mut events.into_inner(), |e| e.ends_turn()).await;
            }
        }
        texts.push(text);
        for _ in 0..20 {
            health = healthz(&server).await;
            if health.0 == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if health.0 == 503 {
            break;
        }
    }
    assert_eq!(health.0, 503, "{health:?}");
    assert!(health.1.contains("No space left"), "{health:?}");
    assert_eq!(metric(&server, "baton_audit_failing").await, 1.0);
    assert!(metric(&server, "baton_audit_write_failures_total").await >= 1.0);
    let refused = client
        .start_session(baton::proto::v1::StartSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("audit trail"), "{refused:?}");
    let refused = client
        .send_message(baton::proto::v1::SendMessageRequest {
            session_id: id.clone(),
            content: "third".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // Space returns: the server recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..200 {
        if health.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        health = healthz(&server).await;
    }
    assert_eq!(health, (200, "ok".to_owned()));
    assert_eq!(metric(&server, "baton_audit_failing").await, 0.0);
    turn(&mut client, &id, "third").await;
    texts.push("third".into());

    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    server.terminate().await.unwrap();
    let audit_dir = disk.path.to_str().unwrap();
    let out = baton(&["audit", "verify", "--dir", audit_dir]);
    assert!(out.status.success(), "{out:?}");
    let out = baton(&["audit", "export", "--dir", audit_dir, "--session", &id]);
    assert!(out.status.success(), "{out:?}");
    let answers: std::collections::BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "model_call")
        .filter_map(|r| r["data"]["response"]["content"].as_str().map(str::to_owned))
        .collect();
    let expected: std::collections::BTreeSet<String> =
        texts.iter().map(|t| format!("echo: {t}")).collect();
    assert_eq!(answers, expected, "every answer is in the trail");
}
