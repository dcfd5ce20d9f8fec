//! Flows where nodes own sessions one by one (`[cluster] ownership =
//! "sessions"`, docs/scaling.md): one node at a time runs them, the one
//! holding the flows lease; the others forward the Flows calls and webhook
//! deliveries to it, and a flow gate decided on another node wakes its run
//! through the database. Killed with SIGKILL, the flows' node loses the
//! lease to a survivor, which recovers the runs as a restart does.
//!
//! The real binary twice on loopback, a private PostgreSQL server, the
//! fake model and a fake ERP over real HTTP.

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use baton::flows::sign_webhook;
use baton::proto::v1::{self, flows_client::FlowsClient};
use baton_testkit::{BatonProcess, FakeOpenAi};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::cluster::{Cluster, skip};
use crate::flows::{erp, flows_client, flows_toml, records, wait_until};
use crate::owners::{owner_of, owning_cluster};

const APPROVE: &str = r#"
name = "approve"
[[steps]]
id = "decision"
kind = "gate"
reviewers = "doc-review"
subject = "{doc: .input.doc}"
[[steps]]
id = "after"
kind = "transform"
expr = ".steps.decision.approved"
"#;

const SECRET: &str = "a-webhook-secret-of-the-owner-flows-test";

/// The node holding the flows lease, as the database has it ("" for none).
fn flows_node(cluster: &Cluster) -> String {
    cluster
        .pg
        .psql_in(
            &cluster.db,
            "SELECT node_id FROM baton_owners WHERE session = convert_to('baton-flows-lease', 'UTF8')",
        )
        .unwrap()
        .trim()
        .to_string()
}

/// The node owning run `id` in the database ("" for none).
fn run_owner(cluster: &Cluster, id: &str) -> String {
    let hex: String = id.replace('-', "");
    cluster
        .pg
        .psql_in(
            &cluster.db,
            &format!("SELECT node_id FROM baton_owners WHERE session = '\\x72{hex}'::bytea"),
        )
        .unwrap()
        .trim()
        .to_string()
}

/// Run `id` once it has `status`, read through `node` (retrying while the
/// flows move: a call forwarded to a node just killed answers UNAVAILABLE).
async fn until_status(node: &BatonProcess, id: &str, status: &str) -> v1::Run {
    let mut last = String::new();
    for _ in 0..1500 {
        let mut c = flows_client(node).await;
        match c
            .get_run(v1::GetRunRequest {
                run_id: id.into(),
                at_seq: 0,
            })
            .await
        {
            Ok(r) if r.get_ref().status == status => return r.into_inner(),
            Ok(r) => last = format!("{} ({})", r.get_ref().status, r.get_ref().reason),
            Err(s) if s.code() == tonic::Code::Unavailable => last = s.message().to_string(),
            Err(s) => panic!("run {id}: {s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("run {id} is not {status}: {last}");
}

async fn start_run(c: &mut FlowsClient<Channel>, flow: &str, input: Value) -> String {
    crate::flows::start_run(c, flow, input).await
}

/// The flows run on the node that started first (it holds the flows
/// lease). Through the other node: runs are started and read (forwarded),
/// a webhook delivery starts one run however often it is sent, and a gate
/// of a run, decided there on its passivated session, wakes the run
/// through the database. Then the flows' node is SIGKILLed with a run's
/// idempotent HTTP step in flight and another run waiting on a timer: the
/// survivor takes the lease over and finishes both as a restart would —
/// the recorded model answer not asked again, the GET re-run once, the
/// POST sent once, the timer fired once. No run keeps an owner once ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_runs_go_to_the_flows_node_and_move_when_it_is_killed() {
    if skip() {
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(baton_testkit::ScriptedReply::Text("{\"total\": 12}".into()));
    let erp = erp().await;
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("hook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut model = flows_toml(shared.path(), &fake, &erp);
    std::fs::write(shared.path().join("flows").join("approve.toml"), APPROVE).unwrap();
    // Idle sessions passivate (and are given up) quickly: the gate's
    // session is decided on a node that does not run the flows.
    model = model.replacen("[sessions]\n", "[sessions]\npassivate_after_ms = 500\n", 1);
    model.push_str(&format!(
        "[[flows.webhooks]]\nname = \"naps\"\nflow = \"nap\"\nsecret = {{ file = {:?} }}\n",
        secret.display().to_string()
    ));
    let cluster = owning_cluster(&model);
    let n0 = cluster.start("n0", 2_000).await;
    let n1 = cluster.start("n1", 2_000).await;
    assert_eq!(
        flows_node(&cluster),
        "n0",
        "the first node holds the flows lease"
    );
    let mut c = flows_client(&n1).await;

    // A gate decided through n1 on its passivated session: the run on n0
    // is woken through the database (without it, it would wait for the
    // five-minute recheck and this would time out).
    let approve = start_run(&mut c, "approve", json!({"doc": "d-1"})).await;
    let mut gates = crate::common::gates_client(&n1).await;
    let mut pending = Vec::new();
    for _ in 0..1500 {
        pending = crate::common::pending_gates(&mut gates).await;
        if !pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gate = pending.pop().expect("the run's gate opens");
    assert!(gate.policy.starts_with("flow:"), "{}", gate.policy);
    wait_until("the gate's session to be given up", || {
        owner_of(&cluster, &gate.session_id).is_empty()
    })
    .await;
    gates
        .decide_gate(v1::DecideGateRequest {
            gate_id: gate.gate_id.clone(),
            decision: v1::GateDecision::Approve as i32,
            reviewer: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let run = until_status(&n1, &approve, "completed").await;
    assert_eq!(run.output_json, "true");

    // A webhook delivery through n1 starts one run on n0, once.
    let url = format!("{}/hooks/naps", n1.http_url().unwrap());
    let body = json!({"id": 7}).to_string();
    let deliver = || {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .header("x-baton-timestamp", ts.to_string())
            .header(
                "x-baton-signature",
                sign_webhook(SECRET.as_bytes(), ts, body.as_bytes()),
            )
            .header("x-baton-delivery", "delivery-1")
            .body(body.clone())
            .send()
    };
    let first = deliver().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again: Value = deliver().await.unwrap().json().await.unwrap();
    assert_eq!(
        (first["created"].as_bool(), again["created"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(first["run_id"], again["run_id"]);
    let nap = first["run_id"].as_str().unwrap().to_string();

    // A run with its GET in flight on n0, started through n1.
    erp.slow.store(true, SeqCst);
    let invoice = start_run(&mut c, "invoice", json!({"text": "total 12 EUR"})).await;
    wait_until("the lookup to reach the ERP", || erp.hits.load(SeqCst) == 1).await;
    assert_eq!(
        run_owner(&cluster, &invoice),
        "n0",
        "the working run is n0's"
    );

    n0.kill9().await.unwrap();
    let killed = Instant::now();
    erp.slow.store(false, SeqCst);
    wait_until("n1 to take the flows lease", || {
        flows_node(&cluster) == "n1"
    })
    .await;
    println!(
        "the flows lease moved {} ms after the SIGKILL",
        killed.elapsed().as_millis()
    );
    let run = until_status(&n1, &invoice, "completed").await;
    println!(
        "the run in flight completed {} ms after the SIGKILL",
        killed.elapsed().as_millis()
    );
    let output: Value = serde_json::from_str(&run.output_json).unwrap();
    assert_eq!(output, json!({"total": 12, "po": "PO-7", "posted": 200}));
    assert_eq!(
        fake.requests(),
        1,
        "the recorded model answer was not asked again"
    );
    assert_eq!(erp.hits.load(SeqCst), 3, "GET re-run once, POST once");
    let mut c = flows_client(&n1).await;
    let recs = records(&mut c, &invoice).await;
    let done = |recs: &[(String, Value)], path: &str| {
        recs.iter()
            .filter(|(t, r)| t == "step_completed" && r["path"] == path)
            .count()
    };
    assert_eq!(
        (
            done(&recs, "extract"),
            done(&recs, "lookup"),
            done(&recs, "post")
        ),
        (1, 1, 1)
    );
    let run = until_status(&n1, &nap, "completed").await;
    assert_eq!(run.output_json, "\"woke\"");
    let recs = records(&mut c, &nap).await;
    assert_eq!((done(&recs, "sleep"), done(&recs, "after")), (1, 1));
    for id in [&approve, &nap, &invoice] {
        assert_eq!(
            run_owner(&cluster, id),
            "",
            "run {id} ended and was given up"
        );
    }
    n1.terminate().await.unwrap();
    assert_eq!(
        flows_node(&cluster),
        "",
        "a clean stop gives the flows lease up"
    );
    cluster.audit_verifies("n1");
}
