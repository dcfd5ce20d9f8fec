//! The router's unit tests over `echo` endpoints (and a scripted provider
//! for the retry loop), on paused time where timers matter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_models::{
    Capability, Delta, DeltaSink, Endpoint, EndpointConfig, ExecutorHandle, ModelJob,
    ModelRegistry, ModelRequest, ModelResponse, Provider, ProviderError, ProviderErrorKind,
    RetryConfig, echo_default,
};
use baton_types::{AttemptFailure, ErrorCode, FinishReason, Message, ToolDefinition, Usage};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{RouteCall, RouteErrorKind, RouteEvent, Router};
use crate::{BreakerState, BudgetLedger, RouteConfig, SessionBudget};

fn echo(name: &str) -> EndpointConfig {
    let mut c = echo_default();
    c.name = name.into();
    c
}

fn route(v: serde_json::Value) -> RouteConfig {
    serde_json::from_value(v).unwrap()
}

async fn router(endpoints: Vec<EndpointConfig>, routes: Vec<RouteConfig>) -> Router {
    let models = ModelRegistry::start(endpoints).await.unwrap();
    Router::new(routes, models, BudgetLedger::default()).unwrap()
}

fn ask(text: &str) -> ModelRequest {
    ModelRequest::new(vec![Message::user(text)])
}

fn tool() -> ToolDefinition {
    ToolDefinition {
        name: "t".into(),
        description: "d".into(),
        parameters: "{}".into(),
    }
}

#[tokio::test]
async fn candidates_are_filtered_and_every_exclusion_is_explained() {
    let mut small = echo("small");
    small.context_window = Some(50);
    let mut notools = echo("notools");
    notools.capabilities = vec![Capability::Streaming];
    let plain = echo("plain");
    let mut pii = echo("pii");
    pii.data_classes = vec!["pii".into()];
    let r = router(
        vec![small, notools, plain, pii],
        vec![
            route(json!({"name": "all", "endpoints": ["small", "notools", "plain", "pii"]})),
            route(json!({"name": "nopii", "endpoints": ["small", "notools", "plain"]})),
        ],
    )
    .await;
    let req = ask(&"x".repeat(300)).with_tools(vec![tool()]);
    let classes = vec!["pii".to_string()];
    let d = r.decide("all", &req, false, &classes).unwrap();
    assert_eq!(d.chosen, "pii");
    assert_eq!(d.rule, "only_candidate");
    assert_eq!(d.attempt, 1);
    assert_eq!(d.strategy, "fallback");
    let notes: Vec<(&str, bool, &str)> = d
        .candidates
        .iter()
        .map(|c| (c.endpoint.as_str(), c.eligible, c.note.as_str()))
        .collect();
    assert_eq!(
        notes,
        vec![
            ("small", false, "context window 50 < 79 needed"),
            ("notools", false, "lacks capability tools"),
            ("plain", false, "not certified for pii"),
            ("pii", true, ""),
        ]
    );
    let e = r.decide("nopii", &req, false, &classes).unwrap_err();
    assert_eq!(e.kind, RouteErrorKind::NoEligibleEndpoint);
    assert_eq!(e.label(), "no_eligible_endpoint");
    assert_eq!(
        e.message,
        "no eligible endpoint for route nopii: small: context window 50 < 79 needed; \
         notools: lacks capability tools; plain: not certified for pii"
    );
    // The same through call(), which also reports no attempts.
    let mut call = RouteCall::new("nopii", req.clone());
    call.data_classes = classes.clone();
    let e = r.call(call).await.unwrap_err();
    assert_eq!(
        (e.kind, e.attempts),
        (RouteErrorKind::NoEligibleEndpoint, 0)
    );
    // Vision: nobody has it.
    let e = r.decide("nopii", &ask("hi"), true, &[]).unwrap_err();
    assert!(e.message.contains("lacks capability vision"), "{e}");
    // Unknown routes.
    let e = r.decide("nope", &ask("hi"), false, &[]).unwrap_err();
    assert_eq!(
        (e.kind, e.code()),
        (RouteErrorKind::UnknownRoute, ErrorCode::NotFound)
    );
    let e = r.call(RouteCall::new("nope", ask("hi"))).await.unwrap_err();
    assert_eq!(e.label(), "unknown_route");
    // An endpoint is a route of its own.
    assert!(r.has_route("plain") && r.has_route("all") && !r.has_route("nope"));
    let routed = r.call(RouteCall::new("plain", ask("hi"))).await.unwrap();
    assert_eq!((routed.endpoint.as_str(), routed.attempts), ("plain", 1));
    assert_eq!(routed.response.message.content, "hi");
    r.models().stop().await;
}

#[tokio::test]
async fn weighted_decisions_follow_the_weights() {
    let r = router(
        vec![echo("a"), echo("b"), echo("c")],
        vec![route(json!({"name": "w", "strategy": "weighted",
            "endpoints": ["a", "b", "c"], "weights": [1, 3, 0]}))],
    )
    .await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..4000 {
        let d = r.decide("w", &ask("hi"), false, &[]).unwrap();
        assert_eq!(d.rule, "weighted_pick");
        *counts.entry(d.chosen).or_default() += 1;
    }
    let share = f64::from(counts["b"]) / 4000.0;
    assert!((share - 0.75).abs() < 0.05, "{counts:?}");
    assert!(
        !counts.contains_key("c"),
        "zero weight never picked: {counts:?}"
    );
    let d = r.decide("w", &ask("hi"), false, &[]).unwrap();
    assert_eq!(d.candidates[1].score, Some(3.0));
    r.models().stop().await;
}

#[tokio::test]
async fn least_inflight_prefers_the_less_loaded_endpoint() {
    let mut busy = echo("busy");
    busy.echo.delay_ms = 60_000;
    busy.max_concurrency = 1;
    let r = router(
        vec![busy, echo("idle")],
        vec![route(json!({"name": "p2c", "strategy": "least_inflight",
            "endpoints": ["busy", "idle"]}))],
    )
    .await;
    let handle = r.models().get("busy").unwrap().clone();
    let cancel = CancellationToken::new();
    for _ in 0..3 {
        let (job, _rx) = ModelJob::new(ask("x"), None, cancel.clone());
        handle.submit(job).unwrap();
    }
    for _ in 0..200 {
        if handle.in_flight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((handle.in_flight(), handle.queued()), (1, 2));
    for _ in 0..50 {
        let d = r.decide("p2c", &ask("hi"), false, &[]).unwrap();
        assert_eq!(
            (d.chosen.as_str(), d.rule.as_str()),
            ("idle", "p2c_fewer_inflight")
        );
        assert_eq!(d.candidates[0].score, Some(3.0));
        assert_eq!(d.candidates[1].score, Some(0.0));
    }
    let stats = r.endpoint_stats();
    assert_eq!(
        (
            stats[0].endpoint.as_str(),
            stats[0].in_flight,
            stats[0].queued
        ),
        ("busy", 1, 2)
    );
    cancel.cancel();
    r.models().stop().await;
}

#[tokio::test(start_paused = true)]
async fn least_latency_explores_unmeasured_endpoints_then_prefers_the_faster() {
    let mut slow = echo("slow");
    slow.echo.delay_ms = 200;
    let mut fast = echo("fast");
    fast.echo.delay_ms = 10;
    let r = router(
        vec![slow, fast],
        vec![route(json!({"name": "lat", "strategy": "least_latency",
            "endpoints": ["slow", "fast"], "ewma_alpha": 0.5}))],
    )
    .await;
    let mut chosen = Vec::new();
    for _ in 0..4 {
        let routed = r.call(RouteCall::new("lat", ask("hi"))).await.unwrap();
        assert_eq!(routed.decisions[0].rule, "lowest_ewma");
        chosen.push(routed.endpoint);
    }
    assert_eq!(chosen, vec!["slow", "fast", "fast", "fast"]);
    let stats = r.endpoint_stats();
    let ewma = |n: &str| {
        stats
            .iter()
            .find(|s| s.endpoint == n)
            .and_then(|s| s.ewma_latency_ms)
            .unwrap()
    };
    assert!(ewma("slow") >= 200.0 && ewma("fast") < 50.0, "{stats:?}");
    let d = r.decide("lat", &ask("hi"), false, &[]).unwrap();
    assert!(d.reason.starts_with("lowest latency EWMA"), "{}", d.reason);
    r.models().stop().await;
}

#[tokio::test]
async fn by_complexity_picks_a_tier_and_shows_the_score() {
    let r = router(
        vec![echo("small"), echo("medium"), echo("large")],
        vec![route(json!({"name": "tiers", "strategy": "by_complexity",
            "endpoints": ["small", "medium", "large"],
            "complexity": {"thresholds": [0.3, 0.6], "tokens_for_max": 1000,
                "signals": [{"pattern": "(?i)prove", "weight": 0.4}], "tools_weight": 0.3}}))],
    )
    .await;
    let d = r.decide("tiers", &ask("hello"), false, &[]).unwrap();
    assert_eq!(
        (d.chosen.as_str(), d.rule.as_str()),
        ("small", "complexity_tier")
    );
    assert!(d.reason.contains("tier 0"), "{}", d.reason);
    let d = r.decide("tiers", &ask("prove it"), false, &[]).unwrap();
    assert_eq!(d.chosen, "medium");
    assert!(d.reason.contains("signal"), "{}", d.reason);
    let score = d.candidates[1].score.unwrap();
    assert!((score - (6.0 / 1000.0 + 0.4)).abs() < 1e-9, "{score}");
    let d = r
        .decide(
            "tiers",
            &ask("prove it").with_tools(vec![tool()]),
            false,
            &[],
        )
        .unwrap();
    assert_eq!(d.chosen, "large");
    assert!(
        d.reason.contains("tools (0.30)") && d.reason.contains("tier 2"),
        "{}",
        d.reason
    );
    r.models().stop().await;
}

#[tokio::test]
async fn budgets_refuse_calls_that_would_overshoot_and_name_the_numbers() {
    let mut priced = echo("priced");
    priced.price_input_per_mtok = Some(1_000_000.0); // $1 per input token
    priced.price_output_per_mtok = Some(0.0);
    priced.max_output_tokens = Some(10);
    let changes = Arc::new(AtomicUsize::new(0));
    let seen = changes.clone();
    let models = ModelRegistry::start(vec![priced]).await.unwrap();
    let ledger = BudgetLedger::new(
        HashMap::from([("capped".to_string(), 1.0)]),
        Some(Arc::new(move |route: &str, _total: f64| {
            if route == "capped" {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })),
    );
    let r = Router::new(
        vec![route(
            json!({"name": "capped", "endpoints": ["priced"], "budget_usd": 12.0}),
        )],
        models,
        ledger,
    )
    .unwrap();
    // "abcd": estimate ceil(4/4) + 4 = 5 tokens = $5; actual usage 1 word = $1.
    let req = ask("abcd");
    assert_eq!(r.estimate_cost_usd("capped", &req), Some(5.0));
    let routed = r.call(RouteCall::new("capped", req.clone())).await.unwrap();
    assert_eq!(routed.cost_usd, Some(1.0));
    assert_eq!(changes.load(Ordering::SeqCst), 1);
    let info = r.routes();
    assert_eq!(info[0].name, "capped");
    assert_eq!((info[0].budget_usd, info[0].spent_usd), (Some(12.0), 2.0));
    // Spent 2 (1 initial + 1): 2 + 5 <= 12; then 3 + 5 <= 12; then 4 + 5 <= 12.
    for _ in 0..3 {
        r.call(RouteCall::new("capped", req.clone())).await.unwrap();
    }
    // 5 + 5 <= 12 ... 7 + 5 <= 12.
    for _ in 0..3 {
        r.call(RouteCall::new("capped", req.clone())).await.unwrap();
    }
    let e = r
        .call(RouteCall::new("capped", req.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.code()),
        (
            RouteErrorKind::BudgetExhausted,
            ErrorCode::ResourceExhausted
        )
    );
    assert_eq!(
        e.message,
        "budget of route capped exhausted: spent $8.000000 + reserved $0.000000 + this call's estimate $5.000000 > limit $12.000000"
    );
    let d = r.decide("capped", &req, false, &[]).unwrap_err();
    assert_eq!(d.kind, RouteErrorKind::BudgetExhausted);

    // A session budget is checked on the endpoint's own route too.
    let mut call = RouteCall::new("priced", req.clone());
    call.session_budget = Some(SessionBudget {
        scope: "s1".into(),
        limit_usd: 4.0,
        spent_usd: 0.0,
    });
    let e = r.call(call.clone()).await.unwrap_err();
    assert!(
        e.message.starts_with("budget of session s1 exhausted"),
        "{e}"
    );
    call.session_budget.as_mut().unwrap().limit_usd = 5.0;
    r.call(call).await.unwrap();
    r.models().stop().await;
}

#[tokio::test(start_paused = true)]
async fn deadlines_and_cancellation_end_calls_promptly() {
    let mut sleepy = echo("sleepy");
    sleepy.echo.delay_ms = 60_000;
    let r = router(
        vec![sleepy],
        vec![route(
            json!({"name": "quick", "endpoints": ["sleepy"], "deadline_ms": 250}),
        )],
    )
    .await;
    let start = Instant::now();
    let e = r
        .call(RouteCall::new("quick", ask("hi")))
        .await
        .unwrap_err();
    assert_eq!(e.kind, RouteErrorKind::DeadlineExceeded);
    assert_eq!(e.code(), ErrorCode::DeadlineExceeded);
    assert_eq!(e.attempts, 1);
    assert!(
        e.message
            .contains("deadline exceeded during attempt 1 on sleepy"),
        "{e}"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(250));

    // The caller's deadline wins when earlier.
    let mut call = RouteCall::new("quick", ask("hi"));
    call.deadline = Some(Instant::now() + Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(
        r.call(call).await.unwrap_err().kind,
        RouteErrorKind::DeadlineExceeded
    );
    assert_eq!(start.elapsed(), Duration::from_millis(100));

    // Cancellation.
    let call = RouteCall::new("sleepy", ask("hi"));
    let cancel = call.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(40)).await;
        cancel.cancel();
    });
    let start = Instant::now();
    let e = r.call(call).await.unwrap_err();
    assert_eq!(
        (e.kind, e.label()),
        (RouteErrorKind::Cancelled, "cancelled")
    );
    assert_eq!(start.elapsed(), Duration::from_millis(40));
    // The abandoned attempts were aborted, not left running.
    let h = r.models().get("sleepy").unwrap();
    for _ in 0..100 {
        if h.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(h.in_flight(), 0);
    r.models().stop().await;
}

#[tokio::test]
async fn routes_are_listed_explicit_first_and_estimates_take_the_maximum() {
    let mut cheap = echo("cheap");
    cheap.price_output_per_mtok = Some(1.0);
    let mut dear = echo("dear");
    dear.price_output_per_mtok = Some(10.0);
    let r = router(
        vec![dear, cheap, echo("free")],
        vec![
            route(json!({"name": "zeta", "endpoints": ["cheap", "dear"], "budget_usd": 5.0})),
            route(json!({"name": "alpha", "endpoints": ["free"]})),
        ],
    )
    .await;
    let names: Vec<String> = r.routes().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec!["zeta", "alpha", "cheap", "dear", "free"]);
    let info = &r.routes()[0];
    assert_eq!(info.strategy, "fallback");
    assert_eq!(info.endpoints, vec!["cheap", "dear"]);
    assert!(!info.implicit && r.routes()[2].implicit);
    let req = ask("hi");
    // 1024 output tokens assumed at $10/Mtok.
    let est = r.estimate_cost_usd("zeta", &req).unwrap();
    assert!((est - 1024.0 * 10.0 / 1e6).abs() < 1e-12, "{est}");
    assert_eq!(r.estimate_cost_usd("alpha", &req), None);
    assert_eq!(r.estimate_cost_usd("nope", &req), None);
    let b = r.breakers();
    assert_eq!(b.len(), 3);
    assert!(b.iter().all(|s| s.state == BreakerState::Closed));
    assert!(format!("{r:?}").contains("zeta"));
    r.models().stop().await;
}

#[tokio::test]
async fn streamed_calls_forward_deltas_and_report_decisions_as_events() {
    let mut chunky = echo("chunky");
    chunky.echo.chunk_chars = 2;
    let mut quiet = echo("quiet");
    quiet.stream = false;
    let r = router(vec![chunky, quiet], vec![]).await;
    let (dtx, mut drx) = mpsc::unbounded_channel();
    let (etx, mut erx) = mpsc::unbounded_channel();
    let mut call = RouteCall::new("chunky", ask("hello"));
    call.deltas = Some(dtx.clone());
    call.events = Some(etx.clone());
    let routed = r.call(call).await.unwrap();
    let mut got = Vec::new();
    while let Ok(d) = drx.try_recv() {
        got.push(d);
    }
    assert_eq!(
        got,
        vec![
            Delta::Text("he".into()),
            Delta::Text("ll".into()),
            Delta::Text("o".into())
        ]
    );
    match erx.try_recv().unwrap() {
        RouteEvent::Decision(d) => assert_eq!(d, routed.decisions[0]),
        other => panic!("{other:?}"),
    }
    // A non-streaming endpoint answers through the final message only.
    let mut call = RouteCall::new("quiet", ask("hello there"));
    call.deltas = Some(dtx);
    let routed = r.call(call).await.unwrap();
    assert_eq!(routed.response.message.content, "hello there");
    assert!(drx.try_recv().is_err());
    r.models().stop().await;
}

// The retry loop on one endpoint, as production routes a call to an
// endpoint's own route: a provider that fails as scripted, on paused time.

/// Fails with the scripted errors, in order, then answers. Streams one
/// delta per attempt, `part{n}` (n counting attempts from 0), which is all
/// of its answer; a `Timeout` error hangs until the endpoint's timeout.
#[derive(Debug)]
struct Flaky {
    failures: Mutex<Vec<ProviderError>>,
    calls: AtomicU32,
}

impl Flaky {
    fn new(mut failures: Vec<ProviderError>) -> Arc<Self> {
        failures.reverse();
        Arc::new(Self {
            failures: Mutex::new(failures),
            calls: AtomicU32::new(0),
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Provider for Flaky {
    fn kind(&self) -> &'static str {
        "flaky"
    }

    async fn complete(
        &self,
        _req: &ModelRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<ModelResponse, ProviderError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(d) = deltas {
            let _ = d.send(Delta::Text(format!("part{n}")));
        }
        let failure = self.failures.lock().unwrap().pop();
        match failure {
            Some(e) if e.kind == ProviderErrorKind::Timeout => {
                std::future::pending::<()>().await;
                Err(e)
            }
            Some(e) => Err(e),
            None => Ok(ModelResponse {
                message: Message::assistant(format!("part{n}")),
                usage: Usage::default(),
                finish_reason: FinishReason::Stop,
                model: "m".into(),
                attempts: 0,
                confidence: None,
                embeddings: None,
            }),
        }
    }
}

fn retry(max_attempts: u32, initial: u64, max: u64) -> RetryConfig {
    RetryConfig {
        max_attempts,
        initial_backoff_ms: initial,
        max_backoff_ms: max,
    }
}

/// A router over the one endpoint `flaky` (1 s attempt timeout), called
/// through its own route.
async fn flaky_router(provider: Arc<Flaky>, retry: RetryConfig) -> Router {
    let mut cfg = echo("flaky");
    cfg.retry = retry;
    cfg.timeout_ms = 1_000;
    let mut models = ModelRegistry::default();
    models.insert(
        ExecutorHandle::spawn(Endpoint::with_provider(cfg, provider))
            .await
            .unwrap(),
    );
    Router::new(vec![], models, BudgetLedger::default()).unwrap()
}

fn server_error() -> ProviderError {
    ProviderError::new(ProviderErrorKind::Server { status: 503 }, "unavailable")
}

/// `call` of route `flaky`, with its events collected.
fn flaky_call() -> (RouteCall, mpsc::UnboundedReceiver<RouteEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut call = RouteCall::new("flaky", ask("hi"));
    call.events = Some(tx);
    (call, rx)
}

fn failures(rx: &mut mpsc::UnboundedReceiver<RouteEvent>) -> Vec<AttemptFailure> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let RouteEvent::AttemptFailed(f) = ev {
            out.push(f);
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_on_the_same_endpoint_within_backoff_bounds() {
    let p = Flaky::new(vec![server_error(), server_error()]);
    let r = flaky_router(p.clone(), retry(3, 100, 10_000)).await;
    let (call, mut events) = flaky_call();
    let start = Instant::now();
    let routed = r.call(call).await.unwrap();
    let waited = start.elapsed();
    assert_eq!((routed.attempts, routed.response.attempts), (3, 3));
    assert_eq!(p.calls(), 3);
    let rules: Vec<&str> = routed.decisions.iter().map(|d| d.rule.as_str()).collect();
    assert_eq!(rules, vec!["only_candidate", "retry_same", "retry_same"]);
    // Full jitter under the doubling ceiling: at most 100 ms, then 200 ms;
    // the router waits exactly what it reports.
    let waits: Vec<u64> = failures(&mut events)
        .iter()
        .map(|f| f.retry_in_ms.unwrap())
        .collect();
    assert_eq!(waits.len(), 2);
    assert!(waits[0] <= 100 && waits[1] <= 200, "{waits:?}");
    assert_eq!(waited, Duration::from_millis(waits[0] + waits[1]));
    r.models().stop().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_sets_the_wait_exactly() {
    let limited = ProviderError::new(
        ProviderErrorKind::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
        },
        "slow down",
    );
    let p = Flaky::new(vec![limited]);
    let r = flaky_router(p, retry(3, 10, 60_000)).await;
    let (call, mut events) = flaky_call();
    let start = Instant::now();
    let routed = r.call(call).await.unwrap();
    assert_eq!(routed.attempts, 2);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    let f = failures(&mut events);
    assert_eq!(
        (f[0].kind.as_str(), f[0].retry_in_ms),
        ("rate_limited", Some(3_000))
    );
    r.models().stop().await;
}

#[tokio::test(start_paused = true)]
async fn non_transient_errors_are_not_retried() {
    let bad = ProviderError::new(ProviderErrorKind::Client { status: 400 }, "bad request");
    let p = Flaky::new(vec![bad]);
    let r = flaky_router(p.clone(), retry(5, 10, 100)).await;
    let (call, mut events) = flaky_call();
    let e = r.call(call).await.unwrap_err();
    assert_eq!(
        (e.kind, e.code(), e.attempts),
        (
            RouteErrorKind::InvalidRequest,
            ErrorCode::InvalidArgument,
            1
        )
    );
    assert_eq!(p.calls(), 1);
    assert!(e.message.contains("bad request"), "{e}");
    assert_eq!(failures(&mut events)[0].retry_in_ms, None);
    r.models().stop().await;
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_report_every_attempt() {
    let p = Flaky::new(vec![server_error(), server_error(), server_error()]);
    let r = flaky_router(p.clone(), retry(2, 10, 100)).await;
    let e = r
        .call(RouteCall::new("flaky", ask("hi")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.code(), e.attempts),
        (RouteErrorKind::Exhausted, ErrorCode::Unavailable, 2)
    );
    assert_eq!(p.calls(), 2);
    assert!(
        e.message.contains("all 2 attempts failed") && e.message.contains("unavailable"),
        "{e}"
    );
    r.models().stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_retried_and_its_deltas_retracted() {
    let timeout = ProviderError::new(ProviderErrorKind::Timeout, "never");
    let p = Flaky::new(vec![timeout]);
    let r = flaky_router(p, retry(2, 10, 100)).await;
    let (mut call, mut events) = flaky_call();
    let (tx, mut rx) = mpsc::unbounded_channel();
    call.deltas = Some(tx);
    let start = Instant::now();
    let routed = r.call(call).await.unwrap();
    assert_eq!(routed.attempts, 2);
    assert!(start.elapsed() >= Duration::from_millis(1_000));
    let mut got = Vec::new();
    while let Ok(d) = rx.try_recv() {
        got.push(d);
    }
    assert_eq!(
        got,
        vec![
            Delta::Text("part0".into()),
            Delta::Restart,
            Delta::Text("part1".into())
        ]
    );
    let f = failures(&mut events);
    assert_eq!((f[0].kind.as_str(), f[0].streamed), ("timeout", true));
    // The retry said something else: the text sent was retracted.
    assert_eq!(routed.output_resumed, baton_types::OutputResume::Retracted);
    r.models().stop().await;
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_a_retry_after_backoff() {
    let limited = ProviderError::new(
        ProviderErrorKind::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
        },
        "slow down",
    );
    let p = Flaky::new(vec![limited]);
    let r = flaky_router(p.clone(), retry(3, 10, 120_000)).await;
    let call = RouteCall::new("flaky", ask("hi"));
    let cancel = call.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
    });
    let start = Instant::now();
    let e = r.call(call).await.unwrap_err();
    assert_eq!((e.kind, e.attempts), (RouteErrorKind::Cancelled, 1));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(p.calls(), 1);
    r.models().stop().await;
}
