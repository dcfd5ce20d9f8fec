//! Flows through the real binary: runs started over gRPC resume after
//! SIGKILL without re-running completed steps; a non-idempotent step that
//! may have run needs an operator; timers fire once across a crash; bad
//! requests get clear statuses; the CLI drives it all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing;
use baton::proto::v1::{self, flows_client::FlowsClient};
use baton_testkit::fake_openai::ScriptedReply;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::common::*;

/// A small ERP: counts hits; hangs while `slow` (any request) or
/// `slow_post` (POSTs) is set.
pub(crate) struct Erp {
    pub(crate) hits: Arc<AtomicUsize>,
    pub(crate) slow: Arc<AtomicBool>,
    slow_post: Arc<AtomicBool>,
    host: String,
}

pub(crate) async fn erp() -> Erp {
    #[derive(Clone)]
    struct S {
        hits: Arc<AtomicUsize>,
        slow: Arc<AtomicBool>,
        slow_post: Arc<AtomicBool>,
    }
    async fn handle(
        State(s): State<S>,
        method: axum::http::Method,
        body: Option<axum::Json<Value>>,
    ) -> axum::Json<Value> {
        s.hits.fetch_add(1, Ordering::SeqCst);
        while s.slow.load(Ordering::SeqCst)
            || (method == axum::http::Method::POST && s.slow_post.load(Ordering::SeqCst))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        axum::Json(json!({"po": "PO-7", "echo": body.map(|b| b.0)}))
    }
    let s = S {
        hits: Arc::new(AtomicUsize::new(0)),
        slow: Arc::new(AtomicBool::new(false)),
        slow_post: Arc::new(AtomicBool::new(false)),
    };
    let app = Router::new()
        .route("/po", routing::get(handle).post(handle))
        .with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Erp {
        hits: s.hits,
        slow: s.slow,
        slow_post: s.slow_post,
        host: addr.to_string(),
    }
}

const INVOICE: &str = r#"
name = "invoice"
description = "extract, look up the purchase order, post"
input_schema = { type = "object", required = ["text"] }
output = "{total: .steps.extract.total, po: .steps.lookup.body.po, posted: .steps.post.status}"

[[steps]]
id = "extract"
kind = "model"
prompt = "Extract the total: {{ .input.text }}"
json_schema = { type = "object", required = ["total"] }

[[steps]]
id = "lookup"
kind = "http"
method = "GET"
url = "http://ERP/po"

[[steps]]
id = "post"
kind = "http"
method = "POST"
url = "http://ERP/po"
body = "{total: .steps.extract.total}"
"#;

const NAP: &str = r#"
name = "nap"
[[steps]]
id = "sleep"
kind = "wait"
duration = "2s"
[[steps]]
id = "after"
kind = "transform"
expr = '"woke"'
"#;

fn setup(dir: &std::path::Path, fake: &FakeOpenAi, erp: &Erp) -> std::path::PathBuf {
    write_config(dir, &dir.join("data"), &flows_toml(dir, fake, erp)).unwrap()
}

/// The flows (in `dir/flows`) and the model of these tests, as config
/// TOML.
pub(crate) fn flows_toml(dir: &std::path::Path, fake: &FakeOpenAi, erp: &Erp) -> String {
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::write(
        flows.join("invoice.toml"),
        INVOICE.replace("ERP", &erp.host),
    )
    .unwrap();
    std::fs::write(flows.join("nap.toml"), NAP).unwrap();
    format!(
        "{}\n[flows]\ndir = {:?}\ninline_wait_ms = 0\ntimer_poll_ms = 50\n[flows.http]\nallowed_hosts = [{:?}]\n",
        fake_model_toml(&fake.base_url(), false),
        flows.display().to_string(),
        erp.host
    )
}

pub(crate) async fn flows_client(server: &BatonProcess) -> FlowsClient<Channel> {
    FlowsClient::connect(server.url()).await.unwrap()
}

pub(crate) async fn start_run(c: &mut FlowsClient<Channel>, flow: &str, input: Value) -> String {
    c.start_run(v1::StartRunRequest {
        flow: flow.into(),
        input_json: input.to_string(),
        idempotency_key: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .run_id
}

pub(crate) async fn get_run(c: &mut FlowsClient<Channel>, id: &str) -> v1::Run {
    c.get_run(v1::GetRunRequest {
        run_id: id.into(),
        at_seq: 0,
    })
    .await
    .unwrap()
    .into_inner()
}

pub(crate) async fn until_status(c: &mut FlowsClient<Channel>, id: &str, status: &str) -> v1::Run {
    for _ in 0..1500 {
        let r = get_run(c, id).await;
        if r.status == status {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = get_run(c, id).await;
    panic!("run {id} is {} ({}), not {status}", r.status, r.reason);
}

pub(crate) async fn records(c: &mut FlowsClient<Channel>, id: &str) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let mut s = c
        .watch_run(v1::WatchRunRequest {
            run_id: id.into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        let r = r.unwrap();
        out.push((r.r#type, serde_json::from_str(&r.record_json).unwrap()));
    }
    out
}

pub(crate) async fn wait_until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumes_after_sigkill_without_rerunning_completed_steps() {
    let fake = FakeOpenAi::start().await.unwrap();
    let erp = erp().await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &fake, &erp);
    fake.push_reply(ScriptedReply::Text("{\"total\": 12}".into()));
    erp.slow.store(true, Ordering::SeqCst);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let id = start_run(&mut c, "invoice", json!({"text": "total 12 EUR"})).await;
    // The idempotent GET is in flight when the process dies.
    wait_until("the lookup to reach the ERP", || {
        erp.hits.load(Ordering::SeqCst) == 1
    })
    .await;
    // The run's actor is live, under the runs' supervisor, in the actor tree.
    let mut inspect = v1::inspect_client::InspectClient::connect(server.url())
        .await
        .unwrap();
    let root = inspect
        .list_actors(v1::ListActorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .root
        .unwrap();
    let runs = root
        .children
        .iter()
        .find(|n| n.kind == "run_supervisor")
        .expect("a run_supervisor node");
    assert!(
        runs.children
            .iter()
            .any(|n| n.kind == "run" && n.name == id && n.status == "running"),
        "{runs:?}"
    );
    server.kill9().await.unwrap();
    erp.slow.store(false, Ordering::SeqCst);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let run = until_status(&mut c, &id, "completed").await;
    let output: Value = serde_json::from_str(&run.output_json).unwrap();
    assert_eq!(output, json!({"total": 12, "po": "PO-7", "posted": 200}));
    assert_eq!(
        fake.requests(),
        1,
        "the recorded model answer was not asked again"
    );
    assert_eq!(
        erp.hits.load(Ordering::SeqCst),
        3,
        "GET re-run once, POST once"
    );
    let recs = records(&mut c, &id).await;
    let done = |path: &str| {
        recs.iter()
            .filter(|(t, r)| t == "step_completed" && r["path"] == path)
            .count()
    };
    assert_eq!((done("extract"), done("lookup"), done("post")), (1, 1, 1));
    let seqs: Vec<u64> = recs
        .iter()
        .map(|(_, r)| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    // A replay after the crash reproduces the run from its journal and
    // sends nothing: no model call, no request to the ERP.
    let replay = c
        .replay_run(v1::ReplayRunRequest {
            run_id: id.clone(),
            current_version: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!replay.diverged, "{}", replay.divergence);
    assert_eq!((replay.compared, replay.status.as_str()), (3, "completed"));
    assert_eq!(
        serde_json::from_str::<Value>(&replay.output_json).unwrap(),
        output
    );
    assert_eq!(fake.requests(), 1);
    assert_eq!(erp.hits.load(Ordering::SeqCst), 3);
    let bad = c
        .replay_run(v1::ReplayRunRequest {
            run_id: "nope".into(),
            current_version: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    server.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_in_flight_at_sigkill_is_not_sent_again_and_the_run_needs_attention() {
    let fake = FakeOpenAi::start().await.unwrap();
    let erp = erp().await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &fake, &erp);
    fake.push_reply(ScriptedReply::Text("{\"total\": 5}".into()));
    erp.slow_post.store(true, Ordering::SeqCst);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let id = start_run(&mut c, "invoice", json!({"text": "total 5"})).await;
    // The GET answers; the POST hangs.
    wait_until("the post", || erp.hits.load(Ordering::SeqCst) == 2).await;
    server.kill9().await.unwrap();
    erp.slow_post.store(false, Ordering::SeqCst);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let run = until_status(&mut c, &id, "needs_attention").await;
    assert!(
        run.reason.contains("\"post\"") && run.reason.contains("not idempotent"),
        "{}",
        run.reason
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        erp.hits.load(Ordering::SeqCst),
        2,
        "the POST was not sent again"
    );
    // The operator decides: send it again.
    let r = c
        .resolve_run(v1::ResolveRunRequest {
            run_id: id.clone(),
            action: "retry".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.status, "needs_attention");
    until_status(&mut c, &id, "completed").await;
    assert_eq!(erp.hits.load(Ordering::SeqCst), 3);
    let bad = c
        .resolve_run(v1::ResolveRunRequest {
            run_id: id.clone(),
            action: "retry".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::FailedPrecondition, "{bad:?}");
    server.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_fires_once_across_sigkill_and_bad_requests_get_clear_statuses() {
    let fake = FakeOpenAi::start().await.unwrap();
    let erp = erp().await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &fake, &erp);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let id = start_run(&mut c, "nap", json!(null)).await;
    let r = until_status(&mut c, &id, "waiting").await;
    assert!(r.wake_at_unix_ms > 0);

    let code = |r: Result<tonic::Response<v1::StartRunResponse>, tonic::Status>| {
        let e = r.unwrap_err();
        (e.code(), e.message().to_string())
    };
    let (c1, m1) = code(
        c.start_run(v1::StartRunRequest {
            flow: "nope".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c1, tonic::Code::NotFound, "{m1}");
    let (c2, m2) = code(
        c.start_run(v1::StartRunRequest {
            flow: "invoice".into(),
            input_json: "{not json".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c2, tonic::Code::InvalidArgument);
    assert!(m2.starts_with("input_json: not valid JSON"), "{m2}");
    let (c3, m3) = code(
        c.start_run(v1::StartRunRequest {
            flow: "invoice".into(),
            input_json: "{\"txt\": 1}".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c3, tonic::Code::InvalidArgument);
    assert!(m3.contains("input_schema") && m3.contains("text"), "{m3}");
    let e = c
        .get_run(v1::GetRunRequest {
            run_id: "x".into(),
            at_seq: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Crash while it waits; come back after its time.
    server.kill9().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let r = until_status(&mut c, &id, "completed").await;
    assert_eq!(r.output_json, "\"woke\"");
    let fired = records(&mut c, &id)
        .await
        .iter()
        .filter(|(t, r)| t == "step_completed" && r["path"] == "sleep")
        .count();
    assert_eq!(fired, 1);
    server.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_starts_signals_and_shows_runs() {
    let fake = FakeOpenAi::start().await.unwrap();
    let erp = erp().await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &fake, &erp);
    std::fs::write(
        dir.path().join("flows/ask.yaml"),
        "name: ask\nsteps:\n  - {id: answer, kind: wait, signal: answer}\noutput: .steps.answer.payload\n",
    )
    .unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("flows")
            .args(args)
            .args(["--server", &server.url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "baton flows {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let list = cli(&["list"]);
    assert!(
        list.contains("ask@") && list.contains("invoice@") && list.contains("nap@"),
        "{list}"
    );
    let id = cli(&["start", "ask", "--input", "{}"]).trim().to_string();
    let mut c = flows_client(&server).await;
    until_status(&mut c, &id, "waiting").await;
    let said = cli(&["signal", &id, "answer", "--payload", "{\"yes\": true}"]);
    assert!(said.contains("signal delivered"), "{said}");
    until_status(&mut c, &id, "completed").await;
    let shown: Value = serde_json::from_str(cli(&["get", &id, "--json"]).trim()).unwrap();
    assert_eq!(shown["output"], json!({"yes": true}));
    assert_eq!(shown["status"], "completed");
    let runs = cli(&["runs", "--flow", "ask"]);
    assert!(runs.contains(&id), "{runs}");
    let replayed: Value = serde_json::from_str(cli(&["replay", &id, "--json"]).trim()).unwrap();
    assert_eq!(replayed["diverged"], false, "{replayed}");
    assert_eq!(replayed["output"], json!({"yes": true}));
    server.terminate().await.unwrap();
}
