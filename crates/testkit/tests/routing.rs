//! The router against fake OpenAI-compatible servers over real HTTP on
//! loopback: endpoints are `EndpointConfig::openai` pointing at a
//! `FakeOpenAi` each, started with `ModelRegistry::start`, so every retry,
//! failover, breaker probe and cascade step is a real request that the fake
//! counts.
//!
//! Real time throughout (paused time would fire timeouts while real sockets
//! wait); backoffs are a few ms, lower bounds are exact, upper bounds generous.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use baton_models::{Delta, EndpointConfig, ModelRegistry, ModelRequest, RetryConfig};
use baton_routing::{
    BreakerState, BudgetLedger, RouteCall, RouteConfig, RouteErrorKind, RouteEvent, Router,
};
use baton_testkit::fake_openai::{CONTENT_POLICY_MESSAGE, CONTEXT_LENGTH_MESSAGE};
use baton_testkit::{Behavior, FakeOpenAi, Fault, Reply};
use baton_types::{AttemptFailure, ErrorCode, Message, OutputResume, RoutingDecision};
use serde_json::json;
use tokio::sync::mpsc;

async fn fake() -> FakeOpenAi {
    FakeOpenAi::start().await.unwrap()
}

fn fixed(server: &FakeOpenAi, text: &str) {
    server.set_behavior(Behavior {
        reply: Reply::Fixed(text.into()),
        ..Behavior::default()
    });
}

/// An endpoint on `server` whose upstream model is `model-<name>`, with
/// quick backoffs.
fn endpoint(name: &str, server: &FakeOpenAi) -> EndpointConfig {
    let mut cfg = EndpointConfig::openai(name, server.base_url(), format!("model-{name}"));
    cfg.retry = RetryConfig {
        max_attempts: 2,
        initial_backoff_ms: 5,
        max_backoff_ms: 5_000,
    };
    cfg.timeout_ms = 5_000;
    cfg.first_token_timeout_ms = 5_000;
    cfg.idle_timeout_ms = 5_000;
    cfg
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

/// A call whose events are collected.
fn call_with_events(
    route: &str,
    req: ModelRequest,
) -> (RouteCall, mpsc::UnboundedReceiver<RouteEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut call = RouteCall::new(route, req);
    call.events = Some(tx);
    (call, rx)
}

fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Ok(x) = rx.try_recv() {
        out.push(x);
    }
    out
}

fn failures(events: &[RouteEvent]) -> Vec<AttemptFailure> {
    events
        .iter()
        .filter_map(|e| match e {
            RouteEvent::AttemptFailed(f) => Some(f.clone()),
            RouteEvent::Decision(_) => None,
        })
        .collect()
}

fn decisions(events: &[RouteEvent]) -> Vec<RoutingDecision> {
    events
        .iter()
        .filter_map(|e| match e {
            RouteEvent::Decision(d) => Some(d.clone()),
            RouteEvent::AttemptFailed(_) => None,
        })
        .collect()
}

fn rules(d: &[RoutingDecision]) -> Vec<&str> {
    d.iter().map(|d| d.rule.as_str()).collect()
}

fn server_error() -> Fault {
    Fault::Status {
        status: 500,
        retry_after: None,
        body: r#"{"error": {"message": "upstream exploded"}}"#.into(),
    }
}

#[tokio::test]
async fn server_errors_are_retried_then_fail_over_to_the_next_endpoint() {
    let (a, b) = (fake().await, fake().await);
    a.push_fault(server_error());
    a.push_fault(server_error());
    let r = router(
        vec![endpoint("a", &a), endpoint("b", &b)],
        vec![route(json!({"name": "main", "endpoints": ["a", "b"]}))],
    )
    .await;
    let (call, mut events) = call_with_events("main", ask("hello"));
    let routed = r.call(call).await.unwrap();
    assert_eq!((a.requests(), b.requests()), (2, 1));
    assert_eq!(routed.endpoint, "b");
    assert_eq!(routed.response.model, "model-b");
    assert_eq!(routed.response.message.content, "echo: hello");
    assert_eq!((routed.attempts, routed.response.attempts), (3, 3));
    assert_eq!(
        rules(&routed.decisions),
        vec!["first_healthy", "retry_same", "failover"]
    );
    for (i, d) in routed.decisions.iter().enumerate() {
        assert_eq!(d.attempt, i as u32 + 1);
        assert_eq!(d.route, "main");
        assert_eq!(d.strategy, "fallback");
        assert_eq!(d.candidates.len(), 2);
    }
    assert_eq!(routed.decisions[0].chosen, "a");
    assert!(routed.decisions[0].candidates.iter().all(|c| c.eligible));
    // The failover decision shows why a is out and names the error.
    let fo = &routed.decisions[2];
    assert_eq!(fo.chosen, "b");
    assert!(!fo.candidates[0].eligible);
    assert_eq!(fo.candidates[0].note, "failed: server");
    assert!(fo.reason.contains("upstream exploded"), "{}", fo.reason);

    let events = drain(&mut events);
    assert_eq!(decisions(&events), routed.decisions);
    let f = failures(&events);
    assert_eq!(f.len(), 2);
    assert!(
        f.iter()
            .all(|f| f.endpoint == "a" && f.kind == "server" && !f.streamed)
    );
    assert!(f[0].retry_in_ms.unwrap() <= 5, "{:?}", f[0]);
    assert_eq!(f[1].retry_in_ms, Some(0), "failover is immediate");
    r.models().stop().await;
}

#[tokio::test]
async fn transient_failures_everywhere_exhaust_the_attempts() {
    let (a, b) = (fake().await, fake().await);
    a.set_down(true);
    b.set_down(true);
    let r = router(
        vec![endpoint("a", &a), endpoint("b", &b)],
        vec![route(
            json!({"name": "main", "endpoints": ["a", "b"], "max_attempts": 6}),
        )],
    )
    .await;
    let e = r.call(RouteCall::new("main", ask("hi"))).await.unwrap_err();
    assert_eq!(e.kind, RouteErrorKind::Exhausted);
    assert_eq!(
        (e.label(), e.code()),
        ("model_error", ErrorCode::Unavailable)
    );
    assert_eq!(e.attempts, 6);
    // Two passes of 2 + 2 attempts, then 1 + 1 more: every attempt was a request.
    assert_eq!(a.requests() + b.requests(), 6);
    assert_eq!((a.requests(), b.requests()), (4, 2));
    assert!(e.message.contains("connection"), "{e}");
    r.models().stop().await;
}

#[tokio::test]
async fn rate_limits_wait_for_retry_after_or_back_off_without_it() {
    let a = fake().await;
    let mut cfg = endpoint("a", &a);
    cfg.retry.max_attempts = 3;
    let r = router(vec![cfg], vec![]).await;

    // With Retry-After: 1 s.
    a.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(1),
        body: "slow down".into(),
    });
    let (call, mut events) = call_with_events("a", ask("hi"));
    let start = Instant::now();
    let routed = r.call(call).await.unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    assert_eq!((a.requests(), routed.attempts), (2, 2));
    let f = failures(&drain(&mut events));
    assert_eq!(
        (f[0].kind.as_str(), f[0].retry_in_ms),
        ("rate_limited", Some(1_000))
    );
    assert_eq!(
        rules(&routed.decisions),
        vec!["only_candidate", "retry_same"]
    );

    // Without: a jittered backoff of at most initial_backoff_ms (5 ms).
    a.push_fault(Fault::Status {
        status: 429,
        retry_after: None,
        body: "slow down".into(),
    });
    let (call, mut events) = call_with_events("a", ask("hi"));
    let start = Instant::now();
    r.call(call).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(a.requests(), 4);
    let f = failures(&drain(&mut events));
    assert!(f[0].retry_in_ms.unwrap() <= 5, "{:?}", f[0]);
    r.models().stop().await;
}

/// An endpoint that accepts the request and sends nothing is not asked
/// again while another candidate can answer: one first-token timeout, then
/// failover. A route with `first_token_timeout = "retry"` retries it first,
/// and a lone endpoint is still retried.
#[tokio::test]
async fn a_first_token_timeout_fails_over_at_once_unless_the_route_says_retry() {
    let (a, b) = (fake().await, fake().await);
    a.set_behavior(Behavior {
        delay: Duration::from_secs(3),
        ..Behavior::default()
    });
    let mut silent = endpoint("a", &a);
    silent.retry.max_attempts = 3;
    silent.first_token_timeout_ms = 150;
    // Its breaker stays closed throughout (it would open after five
    // consecutive failures, and this test makes seven).
    silent.breaker.consecutive_failures = 100;
    silent.breaker.error_rate = 1.0;
    let r = router(
        vec![silent, endpoint("b", &b)],
        vec![
            route(json!({"name": "main", "endpoints": ["a", "b"]})),
            route(json!({"name": "patient", "endpoints": ["a", "b"],
                         "first_token_timeout": "retry"})),
        ],
    )
    .await;
    let (call, mut events) = call_with_events("main", ask("hi"));
    let routed = r.call(call).await.unwrap();
    assert_eq!(
        (routed.endpoint.as_str(), a.requests(), b.requests()),
        ("b", 1, 1)
    );
    assert_eq!(rules(&routed.decisions), vec!["first_healthy", "failover"]);
    let f = failures(&drain(&mut events));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].kind, "first_token_timeout");

    let routed = r.call(RouteCall::new("patient", ask("hi"))).await.unwrap();
    assert_eq!(
        (routed.endpoint.as_str(), a.requests(), b.requests()),
        ("b", 4, 2),
        "retried per a's policy (3 attempts) before failing over"
    );

    // Alone on its route (its implicit one), the endpoint is retried.
    let err = r.call(RouteCall::new("a", ask("hi"))).await.unwrap_err();
    assert_eq!(err.attempts, 3, "{err:?}");
    assert_eq!(a.requests(), 7);
    r.models().stop().await;
}

/// `hedge_after_ms`: an attempt with no output by then gets a second one on
/// another candidate; the first with output wins, the other is cancelled,
/// billed for its input and journaled as `hedge_lost`; only the winner's
/// text reaches the caller. A fast attempt is never hedged, and a hedge that
/// fails leaves the first attempt running.
#[tokio::test]
async fn a_slow_attempt_is_hedged_and_the_first_with_output_wins() {
    let (a, b) = (fake().await, fake().await);
    let slow = |server: &FakeOpenAi, text: &str, ms: u64| {
        server.set_behavior(Behavior {
            reply: Reply::Fixed(text.into()),
            delay: Duration::from_millis(ms),
            ..Behavior::default()
        });
    };
    let priced = |mut cfg: EndpointConfig| {
        cfg.price_input_per_mtok = Some(1.0);
        cfg.price_output_per_mtok = Some(1.0);
        cfg.stream = true;
        cfg
    };
    let r = router(
        vec![priced(endpoint("a", &a)), priced(endpoint("b", &b))],
        vec![route(
            json!({"name": "hedged", "endpoints": ["a", "b"], "hedge_after_ms": 100}),
        )],
    )
    .await;
    let hedged_call = || {
        let (dtx, deltas) = mpsc::unbounded_channel();
        let (mut call, events) = call_with_events("hedged", ask("hi there"));
        call.deltas = Some(dtx);
        (call, events, deltas)
    };
    let text_of = |deltas: &mut mpsc::UnboundedReceiver<Delta>| -> String {
        drain(deltas)
            .into_iter()
            .map(|d| match d {
                Delta::Text(t) => t,
                Delta::Restart => panic!("nothing is retracted"),
            })
            .collect()
    };

    // a is silent for 3 s: b, started after 100 ms, answers.
    slow(&a, "from a", 3_000);
    fixed(&b, "from b");
    let (call, mut events, mut deltas) = hedged_call();
    let routed = r.call(call).await.unwrap();
    assert_eq!(routed.endpoint, "b");
    assert_eq!(rules(&routed.decisions), vec!["first_healthy", "hedge"]);
    assert!(
        routed.decisions[1]
            .reason
            .contains("no output within hedge_after_ms = 100"),
        "{}",
        routed.decisions[1].reason
    );
    let f = failures(&drain(&mut events));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].kind.as_str(), f[0].endpoint.as_str()),
        ("hedge_lost", "a")
    );
    assert_eq!(text_of(&mut deltas), "from b");
    // Billed: b's answer and a's estimated input.
    let b_only =
        (routed.response.usage.input_tokens + routed.response.usage.output_tokens) as f64 / 1e6;
    assert!(routed.cost_usd.unwrap() > b_only, "{:?}", routed.cost_usd);
    assert_eq!((a.requests(), b.requests()), (1, 1));

    // a answers at 300 ms, b would take 3 s: a wins, b is cancelled.
    slow(&a, "from a", 300);
    slow(&b, "from b", 3_000);
    let (call, mut events, mut deltas) = hedged_call();
    let routed = r.call(call).await.unwrap();
    assert_eq!(routed.endpoint, "a");
    let f = failures(&drain(&mut events));
    assert_eq!(
        (f[0].kind.as_str(), f[0].endpoint.as_str()),
        ("hedge_lost", "b")
    );
    assert_eq!(text_of(&mut deltas), "from a");

    // A fast first attempt is never hedged.
    fixed(&a, "quick");
    let (call, mut events, mut deltas) = hedged_call();
    let routed = r.call(call).await.unwrap();
    assert_eq!(rules(&routed.decisions), vec!["first_healthy"]);
    assert!(failures(&drain(&mut events)).is_empty());
    assert_eq!(text_of(&mut deltas), "quick");

    // The hedge fails at once: the first attempt goes on and answers.
    slow(&a, "late but fine", 400);
    b.push_fault(server_error());
    let (call, mut events, mut deltas) = hedged_call();
    let routed = r.call(call).await.unwrap();
    assert_eq!(routed.endpoint, "a");
    let f = failures(&drain(&mut events));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].kind.as_str(), f[0].endpoint.as_str()),
        ("server", "b")
    );
    assert!(
        f[0].message.contains("the hedged attempt on a goes on"),
        "{}",
        f[0].message
    );
    assert_eq!(text_of(&mut deltas), "late but fine");
    r.models().stop().await;
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_fails_over_at_once() {
    let (a, b) = (fake().await, fake().await);
    a.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(30),
        body: "come back in 30 s".into(),
    });
    let mut cfg = endpoint("a", &a);
    cfg.retry.max_backoff_ms = 60_000;
    let r = router(
        vec![cfg, endpoint("b", &b)],
        vec![route(
            json!({"name": "main", "endpoints": ["a", "b"], "deadline_ms": 5000}),
        )],
    )
    .await;
    let start = Instant::now();
    let routed = r.call(RouteCall::new("main", ask("hi"))).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        (routed.endpoint.as_str(), a.requests(), b.requests()),
        ("b", 1, 1)
    );
    assert_eq!(rules(&routed.decisions), vec!["first_healthy", "failover"]);
    r.models().stop().await;
}

#[tokio::test]
async fn client_errors_are_not_retried_and_misconfigured_endpoints_are_skipped() {
    let (a, b) = (fake().await, fake().await);
    let r = router(
        vec![endpoint("a", &a), endpoint("b", &b)],
        vec![route(json!({"name": "main", "endpoints": ["a", "b"]}))],
    )
    .await;
    // 400: the request is at fault; neither retried nor sent elsewhere.
    a.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
        body: r#"{"error": {"message": "temperature must be <= 2"}}"#.into(),
    });
    let e = r.call(RouteCall::new("main", ask("hi"))).await.unwrap_err();
    assert_eq!(
        (e.kind, e.code()),
        (RouteErrorKind::InvalidRequest, ErrorCode::InvalidArgument)
    );
    assert!(e.message.contains("temperature must be <= 2"), "{e}");
    assert_eq!((e.attempts, e.endpoint.as_deref()), (1, Some("a")));
    assert_eq!((a.requests(), b.requests()), (1, 0));

    // 404 (model not found) and 401: the endpoint is misconfigured; fail over.
    for status in [404, 401] {
        a.push_fault(Fault::Status {
            status,
            retry_after: None,
            body: "nope".into(),
        });
        let before = (a.requests(), b.requests());
        let routed = r.call(RouteCall::new("main", ask("hi"))).await.unwrap();
        assert_eq!(routed.endpoint, "b", "status {status}");
        assert_eq!((a.requests(), b.requests()), (before.0 + 1, before.1 + 1));
        assert_eq!(
            routed.decisions[1].candidates[0].note.split(':').next(),
            Some("misconfigured")
        );
    }
    r.models().stop().await;
}

#[tokio::test]
async fn context_length_errors_move_to_a_larger_context_endpoint() {
    let (small, mid, large) = (fake().await, fake().await, fake().await);
    small.push_fault(Fault::ContextLength);
    let mut s = endpoint("small", &small);
    s.context_window = Some(8_000);
    let mut m = endpoint("mid", &mid);
    m.context_window = Some(8_000);
    let mut l = endpoint("large", &large);
    l.context_window = Some(128_000);
    let r = router(
        vec![s, m, l],
        vec![route(
            json!({"name": "main", "endpoints": ["small", "mid", "large"]}),
        )],
    )
    .await;
    let routed = r
        .call(RouteCall::new("main", ask("a long story")))
        .await
        .unwrap();
    assert_eq!(routed.endpoint, "large");
    assert_eq!(
        (small.requests(), mid.requests(), large.requests()),
        (1, 0, 1)
    );
    assert_eq!(
        rules(&routed.decisions),
        vec!["first_healthy", "context_length_upgrade"]
    );
    let d = &routed.decisions[1];
    assert!(
        d.reason.contains("large has a context window of 128000"),
        "{}",
        d.reason
    );
    assert!(
        d.candidates[1]
            .note
            .starts_with("context window not larger"),
        "{:?}",
        d.candidates[1]
    );

    // Nowhere larger to go: a context_length error, not retried.
    small.push_fault(Fault::ContextLength);
    let e = r
        .call(RouteCall::new("small", ask("a long story")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.label()),
        (RouteErrorKind::ContextLength, "context_length")
    );
    assert!(e.message.contains(CONTEXT_LENGTH_MESSAGE), "{e}");
    assert_eq!(small.requests(), 2);
    r.models().stop().await;
}

#[tokio::test]
async fn content_policy_refusals_propagate_at_once_with_the_reason() {
    let (a, b) = (fake().await, fake().await);
    a.push_fault(Fault::ContentPolicy);
    let r = router(
        vec![endpoint("a", &a), endpoint("b", &b)],
        vec![route(json!({"name": "main", "endpoints": ["a", "b"]}))],
    )
    .await;
    let (call, mut events) = call_with_events("main", ask("something naughty"));
    let e = r.call(call).await.unwrap_err();
    assert_eq!(
        (e.kind, e.label()),
        (RouteErrorKind::ContentPolicy, "content_policy")
    );
    assert!(e.message.contains(CONTENT_POLICY_MESSAGE), "{e}");
    assert_eq!((a.requests(), b.requests()), (1, 0));
    let f = failures(&drain(&mut events));
    assert_eq!(
        (f[0].kind.as_str(), f[0].retry_in_ms),
        ("content_policy", None)
    );
    // Not a breaker failure.
    assert_eq!(r.breakers()[0].consecutive_failures, 0);
    r.models().stop().await;
}

#[tokio::test]
async fn the_breaker_opens_on_a_down_provider_and_a_probe_brings_traffic_back() {
    let (primary, backup) = (fake().await, fake().await);
    let mut p = endpoint("primary", &primary);
    p.retry.max_attempts = 1;
    p.breaker.consecutive_failures = 3;
    p.breaker.open_ms = 600;
    p.breaker.half_open_probes = 1;
    let r = router(
        vec![p, endpoint("backup", &backup)],
        vec![route(
            json!({"name": "main", "endpoints": ["primary", "backup"]}),
        )],
    )
    .await;
    let breaker = |r: &Router| {
        r.breakers()
            .into_iter()
            .find(|b| b.endpoint == "primary")
            .unwrap()
    };

    primary.set_down(true);
    for i in 0..3 {
        let routed = r.call(RouteCall::new("main", ask("hi"))).await.unwrap();
        assert_eq!(routed.endpoint, "backup", "call {i}");
    }
    assert_eq!(primary.requests(), 3);
    let snap = breaker(&r);
    assert_eq!(snap.state, BreakerState::Open);
    assert!(snap.opened_at_unix_ms.is_some());

    // Open: calls keep arriving and go straight to the backup.
    let opened = Instant::now();
    for _ in 0..5 {
        let routed = r.call(RouteCall::new("main", ask("hi"))).await.unwrap();
        assert_eq!(routed.endpoint, "backup");
        assert_eq!(routed.attempts, 1);
        let c = &routed.decisions[0].candidates[0];
        assert_eq!((c.eligible, c.note.as_str()), (false, "breaker open"));
    }
    assert_eq!(
        primary.requests(),
        3,
        "an open breaker sends nothing to the primary"
    );

    // The provider comes back; after open_ms one probe goes through and,
    // as it succeeds, traffic returns to the primary.
    primary.set_down(false);
    let mut back_after = None;
    while opened.elapsed() < Duration::from_secs(5) {
        let routed = r.call(RouteCall::new("main", ask("hi"))).await.unwrap();
        if routed.endpoint == "primary" {
            back_after = Some(opened.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let back_after = back_after.expect("traffic never returned to the primary");
    assert!(back_after >= Duration::from_millis(600), "{back_after:?}");
    assert_eq!(primary.requests(), 4, "exactly one probe");
    assert_eq!(breaker(&r).state, BreakerState::Closed);
    for _ in 0..3 {
        let routed = r.call(RouteCall::new("main", ask("hi"))).await.unwrap();
        assert_eq!(routed.endpoint, "primary");
    }
    assert_eq!(primary.requests(), 7);
    r.models().stop().await;
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker() {
    let (primary, backup) = (fake().await, fake().await);
    let mut p = endpoint("primary", &primary);
    p.retry.max_attempts = 1;
    p.breaker.consecutive_failures = 2;
    p.breaker.open_ms = 300;
    let r = router(
        vec![p, endpoint("backup", &backup)],
        vec![route(
            json!({"name": "main", "endpoints": ["primary", "backup"]}),
        )],
    )
    .await;
    primary.set_down(true);
    for _ in 0..2 {
        r.call(RouteCall::new("main", ask("hi"))).await.unwrap();
    }
    assert_eq!(r.breakers()[1].state, BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(r.breakers()[1].state, BreakerState::HalfOpen);
    // The probe fails (still down): open again, and the call still succeeds on the backup.
    let routed = r.call(RouteCall::new("main", ask("hi"))).await.unwrap();
    assert_eq!(routed.endpoint, "backup");
    assert_eq!(primary.requests(), 3);
    assert_eq!(r.breakers()[1].state, BreakerState::Open);
    r.models().stop().await;
}

fn cascade_route(extra: serde_json::Value) -> RouteConfig {
    let mut v = json!({"name": "smart", "strategy": "cascade", "endpoints": ["cheap", "strong"]});
    v["cascade"] = extra;
    route(v)
}

#[tokio::test]
async fn cascade_escalates_an_answer_that_is_not_valid_json() {
    let (cheap, strong) = (fake().await, fake().await);
    fixed(&cheap, "the answer is 42");
    fixed(&strong, r#"{"answer": 42}"#);
    let mut c = endpoint("cheap", &cheap);
    c.price_output_per_mtok = Some(1.0);
    let mut s = endpoint("strong", &strong);
    s.price_output_per_mtok = Some(30.0);
    let r = router(
        vec![c, s],
        vec![cascade_route(json!({"json_schema": {
            "type": "object", "required": ["answer"],
            "properties": {"answer": {"type": "integer"}}
        }}))],
    )
    .await;
    let (dtx, mut deltas) = mpsc::unbounded_channel();
    let (mut call, mut events) = call_with_events("smart", ask("what is six times seven?"));
    call.deltas = Some(dtx);
    let routed = r.call(call).await.unwrap();
    assert_eq!(routed.endpoint, "strong");
    assert_eq!(routed.response.message.content, r#"{"answer": 42}"#);
    assert_eq!((cheap.requests(), strong.requests()), (1, 1));
    assert_eq!(routed.escalations, 1);
    assert_eq!(
        rules(&routed.decisions),
        vec!["cascade_first", "cascade_escalate"]
    );
    let esc = &routed.decisions[1].reason;
    assert!(
        esc.contains("json_schema: the answer is not valid JSON"),
        "{esc}"
    );
    assert!(esc.contains("last step"), "{esc}");
    // Both answers were billed: 4 words at $1/Mtok + 2 words at $30/Mtok.
    let cost = routed.cost_usd.unwrap();
    assert!(
        (cost - (4.0 * 1.0 + 2.0 * 30.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );
    let f = failures(&drain(&mut events));
    assert_eq!(
        (f[0].kind.as_str(), f[0].endpoint.as_str()),
        ("quality_gate", "cheap")
    );
    // Only the last step streamed: the cheap answer never reached the caller.
    let text: String = drain(&mut deltas)
        .into_iter()
        .map(|d| match d {
            Delta::Text(t) => t,
            Delta::Restart => panic!("nothing to retract"),
        })
        .collect();
    assert_eq!(text, r#"{"answer": 42}"#);

    // A good cheap answer is accepted: the strong model is never asked.
    fixed(&cheap, r#"{"answer": 42}"#);
    let (dtx, mut deltas) = mpsc::unbounded_channel();
    let mut call = RouteCall::new("smart", ask("what is six times seven?"));
    call.deltas = Some(dtx);
    let routed = r.call(call).await.unwrap();
    assert_eq!((routed.endpoint.as_str(), routed.escalations), ("cheap", 0));
    assert_eq!((cheap.requests(), strong.requests()), (2, 1));
    assert_eq!(rules(&routed.decisions), vec!["cascade_first"]);
    // Its text reaches a streaming caller as one delta.
    assert_eq!(
        drain(&mut deltas),
        vec![Delta::Text(r#"{"answer": 42}"#.into())]
    );
    r.models().stop().await;
}

/// The request's JSON Schema holds on every route, not only a cascade's
/// gates: an answer that does not match is a quality failure, retried and
/// failed over like a transient one, and when every answer fails the call
/// fails with `SchemaViolation` naming the violation — never a success.
#[tokio::test]
async fn the_requests_json_schema_is_enforced_on_every_route() {
    let (a, b) = (fake().await, fake().await);
    fixed(&a, "The answer is 42.");
    // A fenced answer is accepted, as cascade gates always did.
    fixed(&b, "```json\n{\"answer\": 42}\n```");
    let r = router(
        vec![endpoint("a", &a), endpoint("b", &b)],
        vec![route(json!({"name": "plain", "endpoints": ["a", "b"]}))],
    )
    .await;
    let schema = json!({"type": "object", "required": ["answer"],
                        "properties": {"answer": {"type": "integer"}}});
    let structured = |text: &str| ModelRequest {
        json_schema: Some(schema.clone()),
        ..ask(text)
    };

    // Fallback route: a's prose is retried once (its retry policy), then
    // b's JSON answers.
    let (call, mut events) = call_with_events("plain", structured("six times seven?"));
    let routed = r.call(call).await.unwrap();
    assert_eq!(routed.endpoint, "b");
    assert!(routed.schema_validated);
    assert_eq!((a.requests(), b.requests()), (2, 1));
    let f = failures(&drain(&mut events));
    let kinds: Vec<(&str, &str)> = f
        .iter()
        .map(|f| (f.kind.as_str(), f.endpoint.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [("schema_violation", "a"), ("schema_violation", "a")]
    );
    assert!(
        f[0].message
            .contains("json_schema: the answer is not valid JSON"),
        "{}",
        f[0].message
    );

    // Without a schema the same prose is a fine answer.
    let routed = r
        .call(RouteCall::new("plain", ask("prose?")))
        .await
        .unwrap();
    assert_eq!(routed.endpoint, "a");
    assert!(!routed.schema_validated);

    // Every endpoint answers off-schema: an error naming the violation.
    fixed(&b, r#"{"answer": "forty-two"}"#);
    let err = r
        .call(RouteCall::new("plain", structured("six times seven?")))
        .await
        .unwrap_err();
    assert_eq!(err.kind, RouteErrorKind::SchemaViolation, "{err:?}");
    assert_eq!(err.label(), "schema_violation");
    assert!(err.message.contains("/answer"), "{}", err.message);
    assert_eq!(err.attempts, 4);

    // A cascade's last step no longer passes an off-schema answer, and no
    // off-schema earlier step is held to fall back on.
    let r2 = router(
        vec![endpoint("cheap", &a), endpoint("strong", &b)],
        vec![cascade_route(json!({}))],
    )
    .await;
    let err = r2
        .call(RouteCall::new("smart", structured("six times seven?")))
        .await
        .unwrap_err();
    assert_eq!(err.kind, RouteErrorKind::SchemaViolation, "{err:?}");
    fixed(&b, r#"{"answer": 42}"#);
    let routed = r2
        .call(RouteCall::new("smart", structured("six times seven?")))
        .await
        .unwrap();
    assert_eq!(
        (routed.endpoint.as_str(), routed.escalations),
        ("strong", 1)
    );
    assert!(routed.schema_validated);

    // A schema that is not one is refused before any request is made.
    let before = (a.requests(), b.requests());
    let bad = ModelRequest {
        json_schema: Some(json!({"type": "nonsense"})),
        ..ask("x")
    };
    let err = r.call(RouteCall::new("plain", bad)).await.unwrap_err();
    assert_eq!(err.kind, RouteErrorKind::InvalidRequest, "{err:?}");
    assert!(err.message.starts_with("json_schema: "), "{}", err.message);
    assert_eq!((a.requests(), b.requests()), before);
    r.models().stop().await;
    r2.models().stop().await;
}

#[tokio::test]
async fn cascade_escalates_on_low_logprob_confidence() {
    let (cheap, strong) = (fake().await, fake().await);
    let mut c = endpoint("cheap", &cheap);
    c.logprobs = true;
    let r = router(
        vec![c, endpoint("strong", &strong)],
        vec![cascade_route(json!({"min_confidence": 0.7}))],
    )
    .await;
    cheap.set_behavior(Behavior {
        logprob: Some(-2.0), // e^-2 = 0.135
        ..Behavior::default()
    });
    let routed = r
        .call(RouteCall::new("smart", ask("hard question")))
        .await
        .unwrap();
    assert_eq!(routed.endpoint, "strong");
    assert_eq!((cheap.requests(), strong.requests()), (1, 1));
    let esc = &routed.decisions[1].reason;
    assert!(
        esc.contains("confidence 0.14 < min_confidence 0.70"),
        "{esc}"
    );

    cheap.set_behavior(Behavior {
        logprob: Some(-0.01), // 0.99
        ..Behavior::default()
    });
    let routed = r
        .call(RouteCall::new("smart", ask("easy question")))
        .await
        .unwrap();
    assert_eq!(routed.endpoint, "cheap");
    assert!((routed.response.confidence.unwrap() - (-0.01f64).exp()).abs() < 1e-6);
    assert_eq!((cheap.requests(), strong.requests()), (2, 1));
    r.models().stop().await;
}

#[tokio::test]
async fn cascade_asks_the_evaluator_and_escalates_on_fail() {
    let (cheap, strong, judge) = (fake().await, fake().await, fake().await);
    fixed(&cheap, "Paris is the capital of Germany");
    fixed(&strong, "Berlin");
    fixed(&judge, "FAIL - Paris is in France");
    let r = router(
        vec![
            endpoint("cheap", &cheap),
            endpoint("strong", &strong),
            endpoint("judge", &judge),
        ],
        vec![cascade_route(json!({"evaluator": "judge"}))],
    )
    .await;
    let routed = r
        .call(RouteCall::new("smart", ask("capital of Germany?")))
        .await
        .unwrap();
    assert_eq!(routed.endpoint, "strong");
    assert_eq!(routed.response.message.content, "Berlin");
    assert_eq!(
        (cheap.requests(), strong.requests(), judge.requests()),
        (1, 1, 1)
    );
    let esc = &routed.decisions[1].reason;
    assert!(
        esc.contains("evaluator: judge said \"FAIL - Paris is in France\""),
        "{esc}"
    );
    // The judge saw the question and the cheap answer.
    let prompt = judge.received()[0]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(prompt.contains("capital of Germany?"), "{prompt}");
    assert!(
        prompt.contains("Paris is the capital of Germany"),
        "{prompt}"
    );
    // The evaluator's own decisions are not the routed call's.
    assert!(routed.decisions.iter().all(|d| d.route == "smart"));

    fixed(&judge, "pass");
    fixed(&cheap, "Berlin");
    let routed = r
        .call(RouteCall::new("smart", ask("capital of Germany?")))
        .await
        .unwrap();
    assert_eq!(routed.endpoint, "cheap");
    assert_eq!(
        (cheap.requests(), strong.requests(), judge.requests()),
        (2, 1, 2)
    );
    r.models().stop().await;
}

#[tokio::test]
async fn concurrent_calls_never_overspend_a_route_budget() {
    const AFFORDABLE: usize = 7;
    let server = fake().await;
    // Every answer is exactly 5 words, the output limit: actual = estimate.
    server.set_behavior(Behavior {
        reply: Reply::Fixed("one two three four five".into()),
        delay: Duration::from_millis(100),
        ..Behavior::default()
    });
    let mut cfg = endpoint("priced", &server);
    cfg.price_input_per_mtok = Some(0.0);
    cfg.price_output_per_mtok = Some(1_000_000.0); // $1 per output token
    cfg.max_output_tokens = Some(5);
    cfg.max_concurrency = 64;
    let per_call = cfg.estimate_cost_usd(&ask("go")).unwrap();
    assert_eq!(per_call, 5.0);
    let budget = per_call * AFFORDABLE as f64;
    let spent_seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = spent_seen.clone();
    let models = ModelRegistry::start(vec![cfg]).await.unwrap();
    let ledger = BudgetLedger::new(
        HashMap::new(),
        Some(std::sync::Arc::new(move |_: &str, total: f64| {
            sink.lock().unwrap().push(total);
        })),
    );
    let r = Router::new(
        vec![route(
            json!({"name": "capped", "endpoints": ["priced"], "budget_usd": budget}),
        )],
        models,
        ledger,
    )
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            r.call(RouteCall::new("capped", ask("go"))).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(routed) => {
                ok += 1;
                assert_eq!(routed.cost_usd, Some(5.0));
            }
            Err(e) => {
                assert_eq!(e.kind, RouteErrorKind::BudgetExhausted, "{e}");
                assert!(
                    e.message.starts_with("budget of route capped exhausted"),
                    "{e}"
                );
                assert_eq!(e.attempts, 0);
            }
        }
    }
    assert_eq!(ok, AFFORDABLE);
    assert_eq!(server.requests(), AFFORDABLE, "refused calls send nothing");
    let spent = r.routes()[0].spent_usd;
    assert!(spent <= budget, "{spent} > {budget}");
    assert_eq!(spent, budget);
    let seen = spent_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), AFFORDABLE);
    assert!(seen.iter().all(|s| *s <= budget));
    r.models().stop().await;
}

#[tokio::test]
async fn a_fallback_that_says_something_else_retracts_the_text_sent() {
    let (a, b) = (fake().await, fake().await);
    a.set_behavior(Behavior {
        reply: Reply::Fixed("the first try that breaks".into()),
        chunk_chars: 4,
        ..Behavior::default()
    });
    a.push_fault(Fault::BreakStreamAfter { chunks: 3 });
    b.set_behavior(Behavior {
        reply: Reply::Fixed("the fallback answer".into()),
        chunk_chars: 5,
        ..Behavior::default()
    });
    let mut ca = endpoint("a", &a);
    ca.retry.max_attempts = 1;
    let r = router(
        vec![ca, endpoint("b", &b)],
        vec![route(json!({"name": "main", "endpoints": ["a", "b"]}))],
    )
    .await;
    let (dtx, mut deltas) = mpsc::unbounded_channel();
    let (mut call, mut events) = call_with_events("main", ask("hi"));
    call.deltas = Some(dtx);
    let routed = r.call(call).await.unwrap();
    assert_eq!(routed.endpoint, "b");
    assert_eq!(routed.response.message.content, "the fallback answer");
    let got = drain(&mut deltas);
    let restart = got
        .iter()
        .position(|d| *d == Delta::Restart)
        .expect("a Restart was sent");
    let text = |ds: &[Delta]| -> String {
        ds.iter()
            .map(|d| match d {
                Delta::Text(t) => t.clone(),
                Delta::Restart => panic!("one Restart only: {got:?}"),
            })
            .collect()
    };
    let before = text(&got[..restart]);
    assert!(
        !before.is_empty() && "the first try that breaks".starts_with(&before),
        "{before:?}"
    );
    assert_eq!(text(&got[restart + 1..]), "the fallback answer");
    let f = failures(&drain(&mut events));
    assert_eq!(f.len(), 1);
    assert!(f[0].streamed, "{:?}", f[0]);
    assert_eq!(f[0].endpoint, "a");
    assert_eq!(routed.output_resumed, OutputResume::Retracted);
    r.models().stop().await;
}

#[tokio::test]
async fn the_deadline_ends_a_hanging_call_with_deadline_exceeded() {
    let a = fake().await;
    a.push_fault(Fault::Hang);
    let r = router(
        vec![endpoint("a", &a)],
        vec![route(
            json!({"name": "main", "endpoints": ["a"], "deadline_ms": 300}),
        )],
    )
    .await;
    let start = Instant::now();
    let e = r.call(RouteCall::new("main", ask("hi"))).await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(
        (e.kind, e.code()),
        (
            RouteErrorKind::DeadlineExceeded,
            ErrorCode::DeadlineExceeded
        )
    );
    assert_eq!(e.attempts, 1);
    assert!(e.message.contains("attempt 1"), "{e}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A deadline is not the provider's fault.
    assert_eq!(r.breakers()[0].consecutive_failures, 0);
    r.models().stop().await;
}
