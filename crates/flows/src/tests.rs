//! The engine over a real runtime and store: every step kind's control
//! flow, durable timers and signals across a restart, child runs,
//! idempotency, limits, attention after a crash, and inspection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use baton_models::{EndpointConfig, ProviderKind};
use baton_runtime::{Runtime, RuntimeConfig, RuntimeHandle};
use baton_types::Principal;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::*;

fn echo(name: &str) -> EndpointConfig {
    let mut c = EndpointConfig::new(name, ProviderKind::Echo);
    c.stream = false;
    c
}

/// A config on `dir`; with `BATON_TEST_STORE=postgres`, on the PostgreSQL
/// database standing for it.
fn test_config(dir: impl Into<std::path::PathBuf>) -> RuntimeConfig {
    let mut c = RuntimeConfig::with_data_dir(dir);
    if let Some(url) = baton_pgtest::database_for(&c.store.data_dir) {
        c.store.backend = baton_runtime::StoreBackend::Postgres;
        c.store.postgres.url = Some(url.expect("a PostgreSQL server"));
    }
    c
}

async fn runtime(dir: &std::path::Path) -> RuntimeHandle {
    let mut c = test_config(dir);
    c.models = vec![echo("echo")];
    c.sessions.default_route = "echo".into();
    Runtime::builder(c).start().await.expect("runtime")
}

fn config() -> FlowsConfig {
    FlowsConfig {
        inline_wait_ms: 0,
        timer_poll_ms: 20,
        ..FlowsConfig::default()
    }
}

fn by() -> Principal {
    Principal::embedded()
}

async fn start(flows: &Flows, flow: &str, input: Value) -> RunId {
    flows
        .start_run(
            StartRun {
                flow: flow.into(),
                input,
                ..StartRun::default()
            },
            &by(),
        )
        .await
        .expect("start")
        .id
}

/// Wait (up to 10 s) until the run is in `status`.
async fn until_status(flows: &Flows, id: RunId, status: RunStatus) -> RunMeta {
    for _ in 0..1000 {
        let m = flows.meta(id, &by()).await.expect("meta");
        if m.status == status {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = flows.meta(id, &by()).await.expect("meta");
    panic!("run {id} is {:?} ({}), not {status:?}", m.status, m.reason);
}

async fn kinds(flows: &Flows, id: RunId) -> Vec<String> {
    flows
        .journal(id, 0, 10_000, &by())
        .await
        .expect("journal")
        .into_iter()
        .map(|r| match &r.event {
            RunEvent::StepCompleted { path, .. } => format!("done:{path}"),
            RunEvent::StepStarted { path, .. } => format!("start:{path}"),
            RunEvent::StepFailed { path, .. } => format!("fail:{path}"),
            e => e.type_name().to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_flow_steps_compute_the_run_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path()).await;
    let flow = Flow::from_yaml(
        r#"
name: calc
output: "{sum: .steps.sum, route: .steps.route, fan: .steps.fan, first: .steps.first, fixed: .steps.fix, skipped: .steps.never}"
steps:
  - { id: doubled, kind: map, over: ".input.items", concurrency: 2,
      steps: [{ id: twice, kind: transform, expr: ".item * 2" }] }
  - { id: sum, kind: transform, expr: ".steps.doubled | add" }
  - id: route
    kind: switch
    cases:
      - when: ".steps.sum > 100"
        steps: [{ id: big, kind: transform, expr: '"big"' }]
      - when: ".steps.sum > 10"
        steps: [{ id: mid, kind: transform, expr: '"mid"' }]
    default: [{ id: small, kind: transform, expr: '"small"' }]
  - id: fan
    kind: parallel
    branches:
      - { name: a, steps: [{ id: a1, kind: transform, expr: ".steps.sum + 1" }] }
      - { name: b, steps: [{ id: b1, kind: transform, expr: ".steps.sum - 1" }] }
    merge: ".branches.a + .branches.b"
  - id: first
    kind: parallel
    join: { first: 1 }
    branches:
      - { name: slow, steps: [{ id: s1, kind: wait, duration: "1h" }] }
      - { name: fast, steps: [{ id: f1, kind: transform, expr: '"fast"' }] }
  - id: fix
    kind: retry
    attempts: [{ route: cheap }, { route: strong }]
    until: ".steps.draft.route == \"strong\""
    steps: [{ id: draft, kind: transform, expr: "{route: .attempt.params.route, n: .attempt.n}" }]
  - { id: never, kind: transform, expr: "1", if: ".input.items | length > 99" }
"#,
    )
    .expect("flow");
    let flows = Flows::start(rt.clone(), config(), vec![flow])
        .await
        .expect("flows");
    let id = start(&flows, "calc", json!({"items": [1, 2, 3, 4]})).await;
    let m = until_status(&flows, id, RunStatus::Completed).await;
    assert_eq!(
        m.output,
        json!({
            "sum": 20, "route": "mid", "fan": 40, "first": {"fast": "fast"},
            "fixed": {"route": "strong", "n": 2}, "skipped": null
        })
    );
    let k = kinds(&flows, id).await;
    assert!(k.contains(&"done:doubled[3]/twice".to_string()), "{k:?}");
    assert!(k.contains(&"fail:fix#1".to_string()), "{k:?}");
    assert!(k.contains(&"done:fix#2/draft".to_string()), "{k:?}");
    // The losing branch of `first 1` never completed its wait.
    assert!(!k.contains(&"done:first/slow/s1".to_string()), "{k:?}");
    assert_eq!(k.last().map(String::as_str), Some("run_completed"));

    // Time travel: after the map and before the end.
    let seq_sum = flows
        .journal(id, 0, 1000, &by())
        .await
        .expect("journal")
        .into_iter()
        .find(|r| matches!(&r.event, RunEvent::StepCompleted { path, .. } if path == "sum"))
        .expect("sum")
        .seq;
    let v = flows.get_run(id, Some(seq_sum), &by()).await.expect("get");
    assert_eq!(v.steps.get("sum"), Some(&json!(20)));
    assert!(!v.steps.contains_key("route"));
    assert_eq!(v.status_at_seq, RunStatus::Running);
    flows.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_fails_the_run_naming_it_unless_it_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path()).await;
    let flows = Flows::start(
        rt.clone(),
        config(),
        vec![
            FlowBuilder::new("boom")
                .step(StepBuilder::transform("bad", ".input.x | error(\"no x\")"))
                .build()
                .expect("flow"),
            FlowBuilder::new("soft")
                .step(StepBuilder::transform("bad", "error(\"soft\")").on_error(OnError::Continue))
                .build()
                .expect("flow"),
        ],
    )
    .await
    .expect("flows");
    let id = start(&flows, "boom", json!({"x": 1})).await;
    let m = until_status(&flows, id, RunStatus::Failed).await;
    assert!(
        m.reason.contains("step \"bad\"") && m.reason.contains("no x"),
        "{}",
        m.reason
    );
    let id = start(&flows, "soft", json!({})).await;
    let m = until_status(&flows, id, RunStatus::Completed).await;
    assert!(
        m.output["error"]
            .as_str()
            .is_some_and(|e| e.contains("soft")),
        "{}",
        m.output
    );
    flows.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_passivate_the_run_survive_a_restart_and_fire_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = || {
        FlowBuilder::new("sleepy")
            .step(StepBuilder::wait_for("nap", "1s"))
            .step(StepBuilder::transform("after", "\"woke\""))
            .build()
            .expect("flow")
    };
    let (id, wake_at) = {
        let rt = runtime(dir.path()).await;
        let flows = Flows::start(rt.clone(), config(), vec![flow()])
            .await
            .expect("flows");
        let id = start(&flows, "sleepy", json!({})).await;
        let m = until_status(&flows, id, RunStatus::Waiting).await;
        assert!(m.wake_at_unix_ms > 0);
        // Passivated: no actor holds it.
        for _ in 0..100 {
            if !flows
                .live_runs()
                .await
                .expect("live")
                .iter()
                .any(|r| r.run == id)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !flows
                .live_runs()
                .await
                .expect("live")
                .iter()
                .any(|r| r.run == id)
        );
        flows.shutdown().await;
        rt.shutdown().await;
        (id, m.wake_at_unix_ms)
    };
    let rt = runtime(dir.path()).await;
    let flows = Flows::start(rt.clone(), config(), vec![flow()])
        .await
        .expect("flows");
    let m = until_status(&flows, id, RunStatus::Completed).await;
    assert!(baton_types::now_unix_ms() >= wake_at);
    assert_eq!(m.output, json!("woke"));
    let fired = kinds(&flows, id)
        .await
        .into_iter()
        .filter(|k| k == "done:nap")
        .count();
    assert_eq!(fired, 1);
    flows.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_wake_a_waiting_run_and_are_kept_until_a_step_takes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path()).await;
    let flow = FlowBuilder::new("approve")
        .step(StepBuilder::wait_signal("decision", "approval"))
        .step(StepBuilder::wait_signal("second", "approval"))
        .output("[.steps.decision.payload, .steps.second.payload]")
        .build()
        .expect("flow");
    let flows = Flows::start(rt.clone(), config(), vec![flow])
        .await
        .expect("flows");
    let id = start(&flows, "approve", json!({})).await;
    until_status(&flows, id, RunStatus::Waiting).await;
    // Two signals: the first wakes the first wait, the second is kept for the next.
    flows
        .signal(id, "approval", json!({"ok": 1}), &by())
        .await
        .expect("signal");
    flows
        .signal(id, "approval", json!({"ok": 2}), &by())
        .await
        .expect("signal");
    let m = until_status(&flows, id, RunStatus::Completed).await;
    assert_eq!(m.output, json!([{"ok": 1}, {"ok": 2}]));
    let e = flows
        .signal(id, "approval", json!(null), &by())
        .await
        .expect_err("ended");
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    let e = flows
        .signal(id, "Bad Name", json!(null), &by())
        .await
        .expect_err("bad");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    flows.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_runs_a_child_and_takes_its_output_and_keys_start_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path()).await;
    let child = FlowBuilder::new("child")
        .step(StepBuilder::wait_for("pause", "300ms"))
        .step(StepBuilder::transform("out", ".input.n * 10"))
        .build()
        .expect("child");
    let parent = FlowBuilder::new("parent")
        .step(StepBuilder::call("sub", "child").input("{n: .input.n}"))
        .step(StepBuilder::transform("plus", ".steps.sub + 1"))
        .max_active_runs(1)
        .build()
        .expect("parent");
    let flows = Flows::start(rt.clone(), config(), vec![child, parent])
        .await
        .expect("flows");
    let req = StartRun {
        flow: "parent".into(),
        input: json!({"n": 4}),
        idempotency_key: Some("order-17".into()),
        ..StartRun::default()
    };
    let a = flows.start_run(req.clone(), &by()).await.expect("start");
    let b = flows.start_run(req.clone(), &by()).await.expect("again");
    assert!(a.created && !b.created);
    assert_eq!(a.id, b.id);
    // One unfinished run of `parent` is its limit.
    let e = flows
        .start_run(
            StartRun {
                idempotency_key: None,
                ..req.clone()
            },
            &by(),
        )
        .await
        .expect_err("limited");
    assert!(
        matches!(
            e,
            Error::ResourceExhausted {
                retry_after_secs: 1,
                ..
            }
        ),
        "{e}"
    );
    let m = until_status(&flows, a.id, RunStatus::Completed).await;
    assert_eq!(m.output, json!(41));
    // The limit frees when the run ends.
    let c = flows
        .start_run(
            StartRun {
                idempotency_key: None,
                ..req
            },
            &by(),
        )
        .await
        .expect("after");
    until_status(&flows, c.id, RunStatus::Completed).await;
    let wrong = flows
        .start_run(
            StartRun {
                flow: "child".into(),
                input: json!({"n": 1}),
                idempotency_key: Some("order-17".into()),
                ..StartRun::default()
            },
            &by(),
        )
        .await
        .expect_err("other flow");
    assert!(matches!(wrong, Error::FailedPrecondition(_)), "{wrong}");
    flows.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_steps_run_as_sessions_and_check_their_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path()).await;
    let flows = Flows::start(
        rt.clone(),
        config(),
        vec![
            FlowBuilder::new("ask")
                .step(StepBuilder::model("say", "hello {{ .input.name }}").route("echo"))
                .build()
                .expect("flow"),
            FlowBuilder::new("strict")
                .step(
                    StepBuilder::model("say", "not json")
                        .json_schema(json!({"type": "object"}))
                        .retries(1),
                )
                .build()
                .expect("flow"),
        ],
    )
    .await
    .expect("flows");
    let id = start(&flows, "ask", json!({"name": "Ada"})).await;
    let m = until_status(&flows, id, RunStatus::Completed).await;
    assert!(
        m.output.as_str().is_some_and(|s| s.contains("hello Ada")),
        "{}",
        m.output
    );
    // The step's session is an ordinary session, found by its metadata.
    let sessions = rt
        .list(baton_runtime::ListQuery::default())
        .await
        .expect("list");
    assert_eq!(sessions.sessions.len(), 1);

    let id = start(&flows, "strict", json!({})).await;
    let m = until_status(&flows, id, RunStatus::Failed).await;
    assert!(m.reason.contains("json_schema"), "{}", m.reason);
    let fails = kinds(&flows, id)
        .await
        .into_iter()
        .filter(|k| k == "fail:say")
        .count();
    assert_eq!(fails, 2, "one retry");
    flows.shutdown().await;
    rt.shutdown().await;
}

/// A tiny HTTP service: counts its calls; `/hang` never answers.
async fn service() -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let app = axum::Router::new()
        .route(
            "/echo",
            axum::routing::post(move |body: axum::Json<Value>| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"got": body.0}))
                }
            }),
        )
        .route(
            "/hang",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("127.0.0.1:{}", addr.port()), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_steps_reach_allowed_hosts_only_and_a_crash_mid_post_needs_attention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, calls) = service().await;
    let mut cfg = config();
    cfg.http.allowed_hosts = vec![host.clone()];
    let flow = || {
        FlowBuilder::new("post")
            .step(
                StepBuilder::http(
                    "send",
                    "POST",
                    format!("http://{host}/{{{{ .input.path }}}}"),
                )
                .body("{order: .input.order}"),
            )
            .build()
            .expect("flow")
    };
    let denied = FlowBuilder::new("denied")
        .step(StepBuilder::http("get", "GET", "http://10.255.255.1/x"))
        .build()
        .expect("flow");
    let id = {
        let rt = runtime(dir.path()).await;
        let flows = Flows::start(rt.clone(), cfg.clone(), vec![flow(), denied])
            .await
            .expect("flows");
        let ok = start(&flows, "post", json!({"path": "echo", "order": 7})).await;
        let m = until_status(&flows, ok, RunStatus::Completed).await;
        assert_eq!(
            m.output,
            json!({"status": 200, "body": {"got": {"order": 7}}})
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let no = start(&flows, "denied", json!({})).await;
        let m = until_status(&flows, no, RunStatus::Failed).await;
        assert!(
            m.reason.contains("not in flows.http.allowed_hosts"),
            "{}",
            m.reason
        );

        // A POST that never answers, then the process goes away.
        let id = start(&flows, "post", json!({"path": "hang", "order": 8})).await;
        for _ in 0..500 {
            if kinds(&flows, id).await.contains(&"start:send".to_string()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        flows.shutdown().await;
        rt.shutdown().await;
        id
    };
    let rt = runtime(dir.path()).await;
    let flows = Flows::start(rt.clone(), cfg, vec![flow()])
        .await
        .expect("flows");
    let m = until_status(&flows, id, RunStatus::NeedsAttention).await;
    assert!(m.reason.contains("not idempotent"), "{}", m.reason);
    flows.resolve(id, "skip", &by()).await.expect("skip");
    let m = until_status(&flows, id, RunStatus::Completed).await;
    assert_eq!(m.output, Value::Null);
    // The POST was not sent again.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    flows.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_records_in_order_and_ends_with_the_run_and_cancel_ends_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path()).await;
    let flows = Flows::start(
        rt.clone(),
        config(),
        vec![
            FlowBuilder::new("slow")
                .step(StepBuilder::wait_signal("go", "go"))
                .step(StepBuilder::transform("end", "1"))
                .build()
                .expect("flow"),
        ],
    )
    .await
    .expect("flows");
    let id = start(&flows, "slow", json!({})).await;
    until_status(&flows, id, RunStatus::Waiting).await;
    let watch = flows.watch(id, 0, &by()).await.expect("watch");
    flows
        .signal(id, "go", json!(1), &by())
        .await
        .expect("signal");
    let recs: Vec<RunRecord> = watch.map(|r| r.expect("record")).collect().await;
    let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(matches!(
        recs.last().map(|r| &r.event),
        Some(RunEvent::RunCompleted { .. })
    ));
    // Resume from the middle: only what follows.
    let tail: Vec<RunRecord> = flows
        .watch(id, 2, &by())
        .await
        .expect("watch")
        .map(|r| r.expect("record"))
        .collect()
        .await;
    assert_eq!(tail.first().map(|r| r.seq), Some(3));

    let id = start(&flows, "slow", json!({})).await;
    until_status(&flows, id, RunStatus::Waiting).await;
    flows.cancel(id, "not needed", &by()).await.expect("cancel");
    let m = until_status(&flows, id, RunStatus::Cancelled).await;
    assert_eq!(m.reason, "not needed");
    let other = Principal {
        tenant: "other".into(),
        roles: vec![baton_types::AccessRole::Client],
        ..Principal::embedded()
    };
    assert!(matches!(
        flows.get_run(id, None, &other).await,
        Err(Error::NotFound(_))
    ));
    assert!(
        flows
            .list_runs(RunQuery::default(), &other)
            .await
            .expect("list")
            .runs
            .is_empty()
    );
    assert_eq!(
        flows
            .list_runs(RunQuery::default(), &by())
            .await
            .expect("list")
            .runs
            .len(),
        2
    );
    flows.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_agent_emit_and_wait_until_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.models = vec![echo("echo")];
    c.sessions.default_route = "echo".into();
    c.tools.builtin.calculator = true;
    let rt = Runtime::builder(c).start().await.expect("runtime");
    let (host, calls) = service().await;
    let mut cfg = config();
    cfg.http.allowed_hosts = vec![host.clone()];
    cfg.vars
        .insert("hook".into(), json!(format!("http://{host}/echo")));
    let sink = FlowBuilder::new("sink")
        .step(StepBuilder::transform("got", ".input"))
        .build()
        .expect("sink");
    let flow = FlowBuilder::new("kinds")
        .step(StepBuilder::tool("calc", "calculator").arguments("{expression: \"6*7\"}"))
        .step(StepBuilder::agent("helper", "say {{ .steps.calc }}").tools(vec!["calculator".into()]).max_steps(2))
        .step(StepBuilder::emit_flow("hand_off", "sink").payload("{answer: .steps.calc}"))
        .step(StepBuilder::emit_webhook("notify", "{{ .vars.hook }}").payload("{answer: .steps.calc}"))
        .step(StepBuilder::wait_until("soon", "now * 1000 + 50 | floor"))
        .output("{calc: .steps.calc, helper: .steps.helper, child: .steps.hand_off.run_id, hook: .steps.notify.body}")
        .build()
        .expect("flow");
    let flows = Flows::start(rt.clone(), cfg, vec![sink, flow])
        .await
        .expect("flows");
    let id = start(&flows, "kinds", json!({})).await;
    let m = until_status(&flows, id, RunStatus::Completed).await;
    assert_eq!(m.output["calc"], json!(42));
    assert!(
        m.output["helper"]
            .as_str()
            .is_some_and(|s| s.contains("say 42")),
        "{}",
        m.output
    );
    assert_eq!(m.output["hook"], json!({"got": {"answer": 42}}));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The emitted run started and finished with the payload as input.
    let child: RunId = m.output["child"]
        .as_str()
        .expect("child")
        .parse()
        .expect("id");
    let cm = until_status(&flows, child, RunStatus::Completed).await;
    assert_eq!(cm.output, json!({"answer": 42}));
    assert_eq!(cm.trigger, format!("flow:{id}"));
    // The agent's session got the tools it was given.
    let sessions = rt
        .list(baton_runtime::ListQuery::default())
        .await
        .expect("list");
    let agent = sessions.sessions.iter().map(|s| s.id).collect::<Vec<_>>();
    let mut found = false;
    for s in agent {
        let v = rt.get(s).await.expect("get");
        if v.metadata.get("flow_step").map(String::as_str) == Some("helper") {
            assert_eq!(v.allowed_tools, vec!["calculator".to_string()]);
            assert_eq!(v.max_steps, 2);
            found = true;
        }
    }
    assert!(found);
    flows.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_runs_wait_on_timers_passivated_and_each_fires_once() {
    const RUNS: usize = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path()).await;
    let flow = FlowBuilder::new("later")
        .step(StepBuilder::wait_until("pause", ".input.at"))
        .step(StepBuilder::transform("done", ".input.n"))
        .build()
        .expect("flow");
    let mut cfg = config();
    cfg.max_activations = 1024;
    let flows = Flows::start(rt.clone(), cfg, vec![flow])
        .await
        .expect("flows");
    // One absolute wake-up time for every run, far enough ahead that all are
    // started and passivated before the first fires, even on a loaded 2-core
    // CI machine (starting them took just over 19 s there once).
    const AHEAD: Duration = Duration::from_secs(45);
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + AHEAD.as_millis() as u64;
    let started = std::time::Instant::now();
    let ids: Vec<RunId> = futures::stream::iter(0..RUNS)
        .map(|n| {
            let flows = flows.clone();
            async move { start(&flows, "later", json!({"n": n, "at": at})).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    // All waiting, none in memory.
    let mut waiting = 0;
    for _ in 0..3000 {
        waiting = flows
            .list_runs(
                RunQuery {
                    status: Some(RunStatus::Waiting),
                    page_size: 1000,
                    ..RunQuery::default()
                },
                &by(),
            )
            .await
            .expect("list")
            .runs
            .len();
        let live = flows.live_runs().await.expect("live").len();
        if waiting == 1000 && live == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let checked = started.elapsed();
    eprintln!("{RUNS} runs started and passivated in {checked:?}");
    assert!(
        checked < AHEAD - Duration::from_secs(1),
        "the check ran before the timers were due ({checked:?})"
    );
    assert_eq!(waiting, 1000, "a full page of waiting runs");
    assert_eq!(
        flows.live_runs().await.expect("live").len(),
        0,
        "all passivated"
    );
    let info = flows.list_flows();
    assert_eq!(info[0].active_runs as usize, RUNS);
    // Every timer fires, once.
    let mut completed = 0;
    for _ in 0..3000 {
        completed = 0;
        let mut token = None;
        loop {
            let page = flows
                .list_runs(
                    RunQuery {
                        status: Some(RunStatus::Completed),
                        page_size: 1000,
                        page_token: token,
                        ..RunQuery::default()
                    },
                    &by(),
                )
                .await
                .expect("list");
            completed += page.runs.len();
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        if completed == RUNS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(completed, RUNS);
    for id in ids.iter().step_by(997) {
        let fired = kinds(&flows, *id)
            .await
            .iter()
            .filter(|k| *k == "done:pause")
            .count();
        assert_eq!(fired, 1);
    }
    assert_eq!(flows.list_flows()[0].active_runs, 0);
    flows.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reproduces_a_run_from_its_journal_and_shows_where_a_changed_definition_diverges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path()).await;
    let defs = dir.path().join("flows");
    std::fs::create_dir_all(&defs).expect("dir");
    let v1 = r#"
name = "grade"
output = "{grade: .steps.route, answer: .steps.ask}"
[[steps]]
id = "ask"
kind = "model"
route = "echo"
prompt = "score {{ .input.n }}"
[[steps]]
id = "score"
kind = "transform"
expr = ".input.n * 10"
[[steps]]
id = "route"
kind = "switch"
[[steps.cases]]
when = ".steps.score >= 50"
steps = [{ id = "high", kind = "transform", expr = '"high"' }]
[steps.default]
"#;
    // `default` as an array of tables is awkward inline: write it plainly.
    let v1 = v1.replace(
        "[steps.default]\n",
        "[[steps.default]]\nid = \"low\"\nkind = \"transform\"\nexpr = '\"low\"'\n",
    );
    std::fs::write(defs.join("grade.toml"), &v1).expect("write");
    let cfg = FlowsConfig {
        dir: Some(defs.clone()),
        reload_interval_ms: 0,
        ..config()
    };
    let flows = Flows::start(rt.clone(), cfg, Vec::new())
        .await
        .expect("flows");
    let id = start(&flows, "grade", json!({"n": 6})).await;
    let m = until_status(&flows, id, RunStatus::Completed).await;
    assert_eq!(m.output["grade"], "high");
    let sessions_before = rt
        .list(baton_runtime::ListQuery::default())
        .await
        .expect("list")
        .sessions
        .len();

    // Over its own version: identical, and nothing was asked again.
    let r = flows.replay(id, false, &by()).await.expect("replay");
    assert_eq!(r.status, "completed");
    assert!(!r.diverged, "{}", r.divergence);
    assert_eq!(r.compared, 4, "ask, score, route/0/high, route");
    assert_eq!(r.output, m.output);
    assert_eq!(r.version, m.version);
    let sessions_after = rt
        .list(baton_runtime::ListQuery::default())
        .await
        .expect("list")
        .sessions
        .len();
    assert_eq!(sessions_after, sessions_before, "no model call in a replay");

    // A changed definition: the same answers take the other branch.
    std::fs::write(
        defs.join("grade.toml"),
        v1.replace(".input.n * 10", ".input.n * 5"),
    )
    .expect("write");
    flows.reload().expect("reload");
    let r = flows.replay(id, true, &by()).await.expect("replay");
    assert!(r.diverged);
    assert_ne!(r.version, m.version);
    assert_eq!(r.divergence, "step \"score\": recorded 60, replayed 30");
    assert_eq!(r.output["grade"], "low");
    // Its own version still replays identically; the run is untouched.
    assert!(
        !flows
            .replay(id, false, &by())
            .await
            .expect("replay")
            .diverged
    );
    assert_eq!(
        flows.meta(id, &by()).await.expect("meta").status,
        RunStatus::Completed
    );

    // Another tenant's caller does not see the run.
    let stranger = Principal {
        tenant: "other".into(),
        roles: vec![baton_types::AccessRole::Client],
        ..by()
    };
    assert!(matches!(
        flows.replay(id, false, &stranger).await,
        Err(Error::NotFound(_))
    ));
    flows.shutdown().await;
    rt.shutdown().await;
}

/// Pending gates, once `n` of them are open.
async fn pending_gates(rt: &RuntimeHandle, n: usize) -> Vec<baton_runtime::GateRecord> {
    for _ in 0..1000 {
        let gates = rt
            .list_gates(baton_runtime::GateQuery {
                status: Some(baton_runtime::GateStatus::Pending),
                ..Default::default()
            })
            .await
            .expect("gates")
            .gates;
        if gates.len() >= n {
            return gates;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} gates opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_steps_hold_runs_for_reviewers_across_a_restart_and_take_their_decisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = || {
        FlowBuilder::new("spend")
            .step(StepBuilder::transform("amount", ".input.amount"))
            .step(
                StepBuilder::gate("review", "finance")
                    .subject("{amount: .steps.amount, vendor: .input.vendor}"),
            )
            .step(StepBuilder::transform(
                "result",
                "if .steps.review.approved then .steps.review.payload else \"rejected: \" + .steps.review.reason end",
            ))
            .build()
            .expect("flow")
    };
    let (edited, rejected) = {
        let rt = runtime(dir.path()).await;
        let flows = Flows::start(rt.clone(), config(), vec![flow()])
            .await
            .expect("flows");
        let a = start(&flows, "spend", json!({"amount": 120, "vendor": "ACME"})).await;
        let b = start(&flows, "spend", json!({"amount": 9000, "vendor": "Evil"})).await;
        until_status(&flows, a, RunStatus::Waiting).await;
        until_status(&flows, b, RunStatus::Waiting).await;
        pending_gates(&rt, 2).await;
        flows.shutdown().await;
        rt.shutdown().await;
        (a, b)
    };
    // After a restart the gates are still there, for the step's group,
    // with the step's subject; no run holds an actor while it waits.
    let rt = runtime(dir.path()).await;
    let flows = Flows::start(rt.clone(), config(), vec![flow()])
        .await
        .expect("flows");
    let gates = pending_gates(&rt, 2).await;
    assert_eq!(gates.len(), 2);
    let gate_of = |run: RunId| {
        gates
            .iter()
            .find(|g| g.policy == format!("flow:{run}:review"))
            .unwrap_or_else(|| panic!("no gate of run {run}: {gates:?}"))
            .clone()
    };
    let ga = gate_of(edited);
    assert_eq!(ga.kind, baton_types::GateKind::Flow);
    assert_eq!(ga.reviewers, "finance");
    let subject: Value = serde_json::from_str(&ga.subject).expect("subject");
    assert_eq!(subject, json!({"amount": 120, "vendor": "ACME"}));
    assert!(flows.live_runs().await.expect("live").is_empty());

    rt.decide_gate(
        &ga.gate_id.to_string(),
        baton_runtime::GateDecision::Edit(json!({"amount": 100, "vendor": "ACME"}).to_string()),
        "ana".into(),
        "capped".into(),
    )
    .await
    .expect("edit");
    rt.decide_gate(
        &gate_of(rejected).gate_id.to_string(),
        baton_runtime::GateDecision::Reject,
        "bo".into(),
        "too much".into(),
    )
    .await
    .expect("reject");
    let m = until_status(&flows, edited, RunStatus::Completed).await;
    assert_eq!(m.output, json!({"amount": 100, "vendor": "ACME"}));
    let m = until_status(&flows, rejected, RunStatus::Completed).await;
    assert_eq!(m.output, json!("rejected: too much"));
    for run in [edited, rejected] {
        let k = kinds(&flows, run).await;
        let count = |s: &str| k.iter().filter(|x| *x == s).count();
        assert_eq!(
            (count("start:review"), count("done:review")),
            (1, 1),
            "{k:?}"
        );
    }
    // Decided once.
    assert!(
        rt.decide_gate(
            &ga.gate_id.to_string(),
            baton_runtime::GateDecision::Approve,
            "cy".into(),
            String::new(),
        )
        .await
        .is_err()
    );

    // A deadline decides by the step's rule.
    let lazy = FlowBuilder::new("lazy")
        .step(
            StepBuilder::gate("review", "nobody")
                .timeout_ms(100)
                .on_timeout("approve"),
        )
        .build()
        .expect("flow");
    flows.shutdown().await;
    let flows = Flows::start(rt.clone(), config(), vec![flow(), lazy])
        .await
        .expect("flows");
    let c = start(&flows, "lazy", json!({"x": 1})).await;
    let m = until_status(&flows, c, RunStatus::Completed).await;
    assert_eq!(m.output["by_timeout"], true);
    assert_eq!(m.output["approved"], true);
    assert_eq!(m.output["payload"]["input"], json!({"x": 1}));

    // Cancelling a run takes its gate off the reviewers' list.
    let d = start(&flows, "spend", json!({"amount": 1, "vendor": "X"})).await;
    until_status(&flows, d, RunStatus::Waiting).await;
    let policy = format!("flow:{d}:review");
    for _ in 0..1000 {
        if pending_gates(&rt, 0)
            .await
            .iter()
            .any(|g| g.policy == policy)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flows.cancel(d, "not needed", &by()).await.expect("cancel");
    let mut outcome = None;
    for _ in 0..1000 {
        let gates = rt
            .list_gates(baton_runtime::GateQuery {
                policy: Some(policy.clone()),
                ..Default::default()
            })
            .await
            .expect("gates")
            .gates;
        outcome = gates.first().and_then(|g| g.outcome.clone());
        if outcome.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = outcome.expect("the gate was decided by the cancellation");
    assert_eq!(outcome.decision, baton_types::Decision::Reject);
    assert_eq!(outcome.reason, "the turn was cancelled");
    flows.shutdown().await;
    rt.shutdown().await;
}

#[test]
fn gate_steps_check_their_fields() {
    let err = |toml: &str| Flow::from_toml(toml).expect_err("refused").to_string();
    let base = "name = \"g\"\n[[steps]]\nid = \"r\"\nkind = \"gate\"\n";
    assert!(err(base).contains("reviewers"), "{}", err(base));
    let e = err(&format!(
        "{base}reviewers = \"x\"\non_timeout = \"maybe\"\ntimeout_ms = 5\n"
    ));
    assert!(e.contains("on_timeout"), "{e}");
    let e = err(&format!(
        "{base}reviewers = \"x\"\non_timeout = \"approve\"\n"
    ));
    assert!(e.contains("timeout_ms"), "{e}");
    Flow::from_toml(&format!("{base}reviewers = \"x\"\nsubject = \".input\"\n")).expect("valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_the_runtime_refuses_for_now_waits_instead_of_failing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = || {
        FlowBuilder::new("ask")
            .step(StepBuilder::model("say", "hello {{ .input.name }}").route("echo"))
            .build()
            .expect("flow")
    };
    let rt = runtime(dir.path()).await;
    let flows = Flows::start(rt.clone(), config(), vec![flow()])
        .await
        .expect("flows");
    // A stop has begun: the runtime refuses new sessions (UNAVAILABLE).
    assert_eq!(rt.drain(Duration::ZERO).await, 0);
    let id = start(&flows, "ask", json!({"name": "Ada"})).await;
    let m = until_status(&flows, id, RunStatus::Waiting).await;
    assert!(m.wake_at_unix_ms > 0, "it tries again later");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = flows.meta(id, &by()).await.expect("meta");
    assert!(!m.status.is_terminal(), "{:?} {}", m.status, m.reason);
    assert!(
        !kinds(&flows, id)
            .await
            .iter()
            .any(|k| k.starts_with("fail:")),
        "no failed attempt"
    );
    flows.shutdown().await;
    rt.shutdown().await;
    drop((flows, rt));

    // After the restart the run goes on and completes.
    let rt = runtime(dir.path()).await;
    let flows = Flows::start(rt.clone(), config(), vec![flow()])
        .await
        .expect("flows");
    let m = until_status(&flows, id, RunStatus::Completed).await;
    assert!(
        m.output.as_str().is_some_and(|s| s.contains("hello Ada")),
        "{}",
        m.output
    );
    flows.shutdown().await;
    rt.shutdown().await;
}
