//! Phases 1 and 2: decision and call overhead over echo endpoints.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use baton_models::{
    Capability, EndpointConfig, ExecutorHandle, ModelRegistry, ModelRequest, ProviderKind,
};
use baton_routing::{
    BudgetLedger, CascadeConfig, ComplexityConfig, RouteCall, RouteConfig, Router, Signal, Strategy,
};
use tokio_util::sync::CancellationToken;

use crate::args::Args;
use crate::fixtures::{
    CHEAP_PRICE, MIN_CONFIDENCE, STRONG_PRICE, conversation_2kb, conversation_64kb, short_request,
    tools_and_schema_request,
};
use crate::report::{CallResult, DecideResult, hist, lat, record};

pub(crate) fn echo(name: &str) -> EndpointConfig {
    EndpointConfig::new(name, ProviderKind::Echo)
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The echo endpoints and routes of phases 1 and 2.
pub(crate) async fn echo_router() -> Result<Router> {
    let mut endpoints: Vec<EndpointConfig> = names("e", 10).iter().map(|n| echo(n)).collect();
    // x0, x2, x4, x6, x8 each lack tools, json_schema or both.
    for (i, name) in names("x", 10).iter().enumerate() {
        let mut cfg = echo(name);
        cfg.capabilities = match i {
            0 | 6 => vec![Capability::JsonSchema, Capability::Streaming],
            2 | 8 => vec![Capability::Tools, Capability::Streaming],
            4 => vec![Capability::Streaming],
            _ => cfg.capabilities,
        };
        endpoints.push(cfg);
    }
    for name in ["tier-small", "tier-medium", "tier-large"] {
        endpoints.push(echo(name));
    }
    for (name, (pin, pout)) in [("c-cheap", CHEAP_PRICE), ("c-strong", STRONG_PRICE)] {
        let mut cfg = echo(name);
        cfg.price_input_per_mtok = Some(pin);
        cfg.price_output_per_mtok = Some(pout);
        endpoints.push(cfg);
    }
    endpoints.push(echo("call-echo"));

    let ten = names("e", 10);
    let tiers: Vec<String> = ["tier-small", "tier-medium", "tier-large"]
        .map(String::from)
        .to_vec();
    let routes = vec![
        RouteConfig::new("fallback-2", names("e", 2)),
        RouteConfig::new("fallback-10", ten.clone()),
        RouteConfig {
            weights: (1..=10).collect(),
            ..RouteConfig::new("weighted-10", ten.clone()).with_strategy(Strategy::Weighted)
        },
        RouteConfig::new("least-latency-10", ten.clone()).with_strategy(Strategy::LeastLatency),
        RouteConfig::new("least-inflight-10", ten.clone()).with_strategy(Strategy::LeastInflight),
        RouteConfig::new("fallback-tiers", tiers.clone()),
        RouteConfig {
            complexity: ComplexityConfig {
                thresholds: vec![0.25, 0.5],
                signals: vec![
                    Signal {
                        pattern: r"(?i)\b(prove|proof|theorem|lemma)\b".into(),
                        weight: 0.3,
                    },
                    Signal {
                        pattern: r"(?i)step[- ]by[- ]step|explain (why|how)".into(),
                        weight: 0.15,
                    },
                    Signal {
                        pattern: r"(?i)\b(refactor\w*|concurren\w*|distributed|architecture)\b"
                            .into(),
                        weight: 0.2,
                    },
                ],
                ..ComplexityConfig::default()
            },
            ..RouteConfig::new("complexity-3", tiers).with_strategy(Strategy::ByComplexity)
        },
        RouteConfig {
            cascade: CascadeConfig {
                min_confidence: Some(MIN_CONFIDENCE),
                ..CascadeConfig::default()
            },
            ..RouteConfig::new("cascade-2", vec!["c-cheap".into(), "c-strong".into()])
                .with_strategy(Strategy::Cascade)
        },
        RouteConfig::new("capability-10", names("x", 10)),
        RouteConfig::new("call", vec!["call-echo".into()]),
    ];
    let models = ModelRegistry::start(endpoints).await?;
    Ok(Router::new(routes, models, BudgetLedger::default())?)
}

pub(crate) struct Case {
    name: &'static str,
    route: &'static str,
    request: ModelRequest,
    rule: &'static str,
    /// The endpoint every decision must choose, when deterministic.
    chosen: Option<&'static str>,
    eligible: usize,
}

pub(crate) fn cases() -> Vec<Case> {
    let short = short_request();
    let conv = conversation_2kb();
    let case = |name, route, request: &ModelRequest, rule, chosen, eligible| Case {
        name,
        route,
        request: request.clone(),
        rule,
        chosen,
        eligible,
    };
    vec![
        case(
            "fallback, 2 endpoints",
            "fallback-2",
            &short,
            "first_healthy",
            Some("e0"),
            2,
        ),
        case(
            "fallback, 10 endpoints",
            "fallback-10",
            &short,
            "first_healthy",
            Some("e0"),
            10,
        ),
        case(
            "weighted, 10 endpoints",
            "weighted-10",
            &short,
            "weighted_pick",
            None,
            10,
        ),
        case(
            "least_latency, 10 endpoints",
            "least-latency-10",
            &short,
            "lowest_ewma",
            None,
            10,
        ),
        case(
            "least_inflight, 10 endpoints",
            "least-inflight-10",
            &short,
            "p2c_fewer_inflight",
            None,
            10,
        ),
        case(
            "fallback, 3 endpoints, 2 KB conversation",
            "fallback-tiers",
            &conv,
            "first_healthy",
            Some("tier-small"),
            3,
        ),
        case(
            "by_complexity, 3 tiers, 3 signals, 2 KB conversation",
            "complexity-3",
            &conv,
            "complexity_tier",
            Some("tier-large"),
            3,
        ),
        case(
            "fallback, 10 endpoints, 64 KB conversation",
            "fallback-10",
            &conversation_64kb(),
            "first_healthy",
            Some("e0"),
            10,
        ),
        case(
            "cascade [cheap, strong], first step",
            "cascade-2",
            &short,
            "cascade_first",
            Some("c-cheap"),
            2,
        ),
        case(
            "fallback, 10 endpoints, 5 lack tools/json_schema",
            "capability-10",
            &tools_and_schema_request(),
            "first_healthy",
            Some("x1"),
            5,
        ),
    ]
}

/// Check the decision a case makes before timing it.
fn check_decision(router: &Router, c: &Case) -> Result<baton_types::RoutingDecision> {
    let d = router
        .decide(c.route, &c.request, false, &[])
        .map_err(|e| anyhow!("{}: decide failed: {e}", c.name))?;
    let eligible = d.candidates.iter().filter(|x| x.eligible).count();
    ensure!(
        d.rule == c.rule && eligible == c.eligible && c.chosen.is_none_or(|x| x == d.chosen),
        "{}: expected rule {} with {} eligible{}, got rule {} with {eligible} eligible, chose {} ({})",
        c.name,
        c.rule,
        c.eligible,
        c.chosen
            .map(|x| format!(", choosing {x}"))
            .unwrap_or_default(),
        d.rule,
        d.chosen,
        d.reason
    );
    if c.rule == "lowest_ewma" {
        ensure!(
            d.reason.starts_with("lowest latency EWMA"),
            "{}: latencies not measured yet: {}",
            c.name,
            d.reason
        );
    }
    Ok(d)
}

pub(crate) async fn decide_phase(router: &Router, args: &Args) -> Result<Vec<DecideResult>> {
    // least_latency: give every endpoint a measured EWMA first (unmeasured
    // ones are explored first, so ten calls reach all ten).
    for _ in 0..30 {
        router
            .call(RouteCall::new("least-latency-10", short_request()))
            .await
            .map_err(|e| anyhow!("least_latency warm-up: {e}"))?;
    }
    let cases = cases();
    let mut decisions = Vec::with_capacity(cases.len());
    for c in &cases {
        decisions.push(check_decision(router, c)?);
    }
    let batch = args.batch;
    let batches_per_round = args.decisions.div_ceil(batch * args.rounds).max(1);
    let mut hists = Vec::with_capacity(cases.len());
    for _ in &cases {
        hists.push(hist()?);
    }
    let mut totals = vec![Duration::ZERO; cases.len()];
    for round in 0..args.rounds {
        for (i, c) in cases.iter().enumerate() {
            if round == 0 {
                for _ in 0..args.warmup {
                    let _ = black_box(router.decide(black_box(c.route), &c.request, false, &[]));
                }
            }
            let started = Instant::now();
            for _ in 0..batches_per_round {
                let t = Instant::now();
                for _ in 0..batch {
                    let _ = black_box(router.decide(black_box(c.route), &c.request, false, &[]));
                }
                let per = t.elapsed() / batch as u32;
                record(&mut hists[i], per);
            }
            totals[i] += started.elapsed();
        }
    }
    let n = (batches_per_round * batch * args.rounds) as u64;
    let mut out: Vec<DecideResult> = cases
        .iter()
        .zip(decisions)
        .zip(hists.iter().zip(totals))
        .map(|((c, d), (h, total))| DecideResult {
            case: c.name.to_string(),
            route: c.route.to_string(),
            strategy: d.strategy.clone(),
            endpoints: d.candidates.len(),
            eligible: d.candidates.iter().filter(|x| x.eligible).count(),
            rule: d.rule.clone(),
            chosen: d.chosen.clone(),
            reason: d.reason.clone(),
            decisions: n,
            batch,
            mean_ns: total.as_nanos() as f64 / n as f64,
            per_batch: lat(h),
            p50_vs_baseline: 0.0,
        })
        .collect();
    let base = out.first().map_or(1, |r| r.per_batch.p50_ns.max(1)) as f64;
    for r in &mut out {
        r.p50_vs_baseline = r.per_batch.p50_ns as f64 / base;
    }
    Ok(out)
}

async fn direct_call(handle: &ExecutorHandle, req: &ModelRequest) -> Result<Duration> {
    let t = Instant::now();
    let resp = handle
        .call(req.clone(), None, CancellationToken::new())
        .await
        .map_err(|e| anyhow!("direct call failed: {e}"))?;
    let d = t.elapsed();
    ensure!(
        resp.attempts == 1
            && Some(&resp.message.content) == req.messages.last().map(|m| &m.content),
        "direct call: unexpected answer {:?}",
        resp.message.content
    );
    Ok(d)
}

async fn routed_call(router: &Router, req: &ModelRequest) -> Result<Duration> {
    let t = Instant::now();
    let r = router
        .call(RouteCall::new("call", req.clone()))
        .await
        .map_err(|e| anyhow!("routed call failed: {e}"))?;
    let d = t.elapsed();
    ensure!(
        r.endpoint == "call-echo"
            && r.attempts == 1
            && Some(&r.response.message.content) == req.messages.last().map(|m| &m.content),
        "routed call: unexpected answer from {}: {:?}",
        r.endpoint,
        r.response.message.content
    );
    Ok(d)
}

pub(crate) async fn call_phase(router: &Router, args: &Args) -> Result<CallResult> {
    let handle = router
        .models()
        .get("call-echo")
        .context("endpoint call-echo is not running")?
        .clone();
    let req = short_request();
    for _ in 0..(args.calls / 10).max(200) {
        direct_call(&handle, &req).await?;
        routed_call(router, &req).await?;
    }
    let blocks = (args.rounds * 5).max(2);
    let per_block = args.calls.div_ceil(blocks);
    let (mut direct, mut routed) = (hist()?, hist()?);
    let (mut direct_total, mut routed_total) = (Duration::ZERO, Duration::ZERO);
    for b in 0..blocks {
        for side in [b % 2, 1 - b % 2] {
            for _ in 0..per_block {
                if side == 0 {
                    let d = direct_call(&handle, &req).await?;
                    direct_total += d;
                    record(&mut direct, d);
                } else {
                    let d = routed_call(router, &req).await?;
                    routed_total += d;
                    record(&mut routed, d);
                }
            }
        }
    }
    let n = (blocks * per_block) as u64;
    let mut direct_lat = lat(&direct);
    let mut routed_lat = lat(&routed);
    direct_lat.mean_ns = direct_total.as_nanos() as f64 / n as f64;
    routed_lat.mean_ns = routed_total.as_nanos() as f64 / n as f64;
    Ok(CallResult {
        calls_per_side: n,
        blocks,
        added_mean_ns: routed_lat.mean_ns - direct_lat.mean_ns,
        added_p50_ns: routed_lat.p50_ns as i64 - direct_lat.p50_ns as i64,
        added_p99_ns: routed_lat.p99_ns as i64 - direct_lat.p99_ns as i64,
        direct: direct_lat,
        routed: routed_lat,
    })
}
