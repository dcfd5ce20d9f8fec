//! Baton's routing benchmark: what the router costs per decision and per
//! call, and what a cascade saves.
//!
//! 1. **Decision overhead.** `Router::decide` (the candidate filtering and
//!    strategy choice of a call's first attempt, sync, nothing reserved) is
//!    timed in batches over echo endpoints (no network) for every strategy,
//!    a `by_complexity` route scoring a 2 KB conversation with regex
//!    signals (and a fallback route on the same conversation to compare
//!    with), a fallback route on a 64 KB conversation, a cascade's first
//!    step, and a route where half the endpoints lack a capability the
//!    request needs. Each case's decision is checked before it is timed.
//! 2. **Call overhead.** A whole `Router::call` against an echo endpoint vs
//!    that endpoint's `ExecutorHandle::call`, one call at a time, in
//!    alternating blocks.
//! 3. **Cascade.** A cascade `[cheap, strong]` with `min_confidence = 0.7`
//!    over two fake OpenAI servers on loopback, on a seeded workload with a
//!    known share of hard requests (the cheap model answers those with low
//!    token log-probabilities), against the same requests sent straight to
//!    the strong model and straight to the cheap one. Every answer's
//!    endpoint, text, escalation count and cost is checked; the bench fails
//!    on the first mismatch.
//!
//! Run with: cargo bench --bench routing -- [options]
//!
//! See `--help` for the options and docs/performance.md ("Routing") for the
//! method and the figures measured on the project's machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use baton_models::{
    Capability, EndpointConfig, ExecutorHandle, ModelRegistry, ModelRequest, ProviderKind,
    count_words,
};
use baton_routing::{
    BudgetLedger, CascadeConfig, ComplexityConfig, RouteCall, RouteConfig, Routed, Router, Signal,
    Strategy,
};
use baton_testkit::{Behavior, FakeOpenAi, Reply};
use baton_types::{Message, ToolDefinition};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const HELP: &str = "\
Baton routing benchmark

Run with: cargo bench --bench routing -- [options]

Options (default in brackets; --quick values in braces):
  --quick               small smoke run, a few seconds; its figures mean little
  --json                print the results as JSON on stdout (the report goes to stderr)
  --decisions N         timed Router::decide calls per case [200000] {20000}
  --warmup N            untimed decisions per case before the first round [20000] {2000}
  --batch N             decisions per timed batch [50]
  --rounds N            rounds over all decide cases (noise spreads evenly) [4] {2}
  --calls N             calls per side, Router::call vs ExecutorHandle::call [20000] {2000}
  --requests N          requests of the cascade workload [1000] {100}
  --hard-share F        share of hard requests in the workload, 0 to 1 [0.3]
  --seed N              seed of the workload [42]
  --cheap-delay-ms N    the cheap fake model's delay before answering [0]
  --strong-delay-ms N   the strong fake model's delay before answering [0]
  --phases LIST         comma-separated subset of decide,call,cascade [all]
";

/// Prices of the cascade's fake models, USD per million tokens (input, output).
const CHEAP_PRICE: (f64, f64) = (0.15, 0.60);
const STRONG_PRICE: (f64, f64) = (2.50, 10.00);
/// The cascade's quality gate.
const MIN_CONFIDENCE: f64 = 0.7;

// ---------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, Serialize)]
struct Args {
    quick: bool,
    json: bool,
    decisions: usize,
    warmup: usize,
    batch: usize,
    rounds: usize,
    calls: usize,
    requests: usize,
    hard_share: f64,
    seed: u64,
    cheap_delay_ms: u64,
    strong_delay_ms: u64,
    phases: Vec<String>,
}

impl Args {
    fn defaults(quick: bool) -> Self {
        let mut a = Args {
            quick,
            json: false,
            decisions: 200_000,
            warmup: 20_000,
            batch: 50,
            rounds: 4,
            calls: 20_000,
            requests: 1000,
            hard_share: 0.3,
            seed: 42,
            cheap_delay_ms: 0,
            strong_delay_ms: 0,
            phases: ["decide", "call", "cascade"].map(String::from).to_vec(),
        };
        if quick {
            a.decisions = 20_000;
            a.warmup = 2000;
            a.rounds = 2;
            a.calls = 2000;
            a.requests = 100;
        }
        a
    }

    fn parse() -> Result<Args> {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let mut a = Args::defaults(raw.iter().any(|x| x == "--quick"));
        let mut it = raw.into_iter();
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (arg, None),
            };
            let mut value = || -> Result<String> {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| anyhow!("{key} needs a value"))
            };
            match key.as_str() {
                // `cargo bench` passes --bench to harness-less benches.
                "--bench" | "--quick" => {}
                "--json" => a.json = true,
                "--decisions" => a.decisions = positive(&value()?, &key)?,
                "--warmup" => a.warmup = number(&value()?, &key)?,
                "--batch" => a.batch = positive(&value()?, &key)?,
                "--rounds" => a.rounds = positive(&value()?, &key)?,
                "--calls" => a.calls = positive(&value()?, &key)?,
                "--requests" => a.requests = positive(&value()?, &key)?,
                "--hard-share" => {
                    let v = value()?;
                    let f: f64 = v
                        .parse()
                        .with_context(|| format!("{key}: {v:?} is not a number"))?;
                    if !(0.0..=1.0).contains(&f) {
                        bail!("{key}: must be between 0 and 1");
                    }
                    a.hard_share = f;
                }
                "--seed" => a.seed = number(&value()?, &key)? as u64,
                "--cheap-delay-ms" => a.cheap_delay_ms = number(&value()?, &key)? as u64,
                "--strong-delay-ms" => a.strong_delay_ms = number(&value()?, &key)? as u64,
                "--phases" => {
                    a.phases = value()?.split(',').map(|s| s.trim().to_string()).collect();
                    for p in &a.phases {
                        if !["decide", "call", "cascade"].contains(&p.as_str()) {
                            bail!("--phases: unknown phase {p:?} (decide, call, cascade)");
                        }
                    }
                }
                "-h" | "--help" => {
                    print!("{HELP}");
                    std::process::exit(0);
                }
                other => bail!("unknown option {other:?}; see --help"),
            }
        }
        Ok(a)
    }

    fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

fn number(v: &str, key: &str) -> Result<usize> {
    v.parse()
        .with_context(|| format!("{key}: {v:?} is not a number"))
}

fn positive(v: &str, key: &str) -> Result<usize> {
    let n = number(v, key)?;
    if n == 0 {
        bail!("{key}: must be greater than 0");
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// Results

/// A latency distribution, in nanoseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
struct Lat {
    count: u64,
    mean_ns: f64,
    p50_ns: u64,
    p99_ns: u64,
    max_ns: u64,
}

fn hist() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000_000, 3)?)
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_nanos() as u64).max(1));
}

fn lat(h: &Histogram<u64>) -> Lat {
    Lat {
        count: h.len(),
        mean_ns: h.mean(),
        p50_ns: h.value_at_quantile(0.50),
        p99_ns: h.value_at_quantile(0.99),
        max_ns: h.max(),
    }
}

#[derive(Debug, Clone, Serialize)]
struct DecideResult {
    case: String,
    route: String,
    strategy: String,
    endpoints: usize,
    eligible: usize,
    /// The decision as made before timing (every timed one is alike but for
    /// the random picks).
    rule: String,
    chosen: String,
    reason: String,
    decisions: u64,
    batch: usize,
    /// Total time / decisions.
    mean_ns: f64,
    /// Distribution of the per-batch mean (batch time / batch size).
    per_batch: Lat,
    /// p50 of this case / p50 of `fallback, 2 endpoints`.
    p50_vs_baseline: f64,
}

#[derive(Debug, Clone, Serialize)]
struct CallResult {
    calls_per_side: u64,
    blocks: usize,
    direct: Lat,
    routed: Lat,
    added_mean_ns: f64,
    added_p50_ns: i64,
    added_p99_ns: i64,
}

#[derive(Debug, Clone, Serialize)]
struct CascadeResult {
    requests: usize,
    hard: usize,
    seed: u64,
    min_confidence: f64,
    cheap_price_per_mtok: (f64, f64),
    strong_price_per_mtok: (f64, f64),
    cheap_delay_ms: u64,
    strong_delay_ms: u64,
    /// Sum of `Routed.escalations` over the cascade's calls.
    escalated: u64,
    share_escalated: f64,
    answered_by_cheap: usize,
    answered_by_strong: usize,
    input_tokens: u64,
    output_tokens: u64,
    cascade_cost_usd: f64,
    always_strong_cost_usd: f64,
    /// Every request to cheap alone, whatever its answer is worth: the
    /// floor of any routing between the two.
    always_cheap_cost_usd: f64,
    /// Easy requests to cheap only, hard ones to strong only: what a perfect
    /// classifier in front of the two models would pay.
    oracle_cost_usd: f64,
    saved_pct: f64,
    cascade_latency: Lat,
    cascade_easy_latency: Lat,
    cascade_hard_latency: Lat,
    always_strong_latency: Lat,
    always_cheap_latency: Lat,
    cheap_requests: usize,
    strong_requests: usize,
}

#[derive(Debug, Clone, Serialize)]
struct Machine {
    nproc: usize,
    mem_total_kib: u64,
    kernel: String,
    loadavg_start: String,
    loadavg_end: String,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    machine: Machine,
    args: Args,
    conversation_chars: usize,
    long_conversation_chars: usize,
    decide: Vec<DecideResult>,
    call: Option<CallResult>,
    cascade: Option<CascadeResult>,
    total_secs: f64,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mem_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Requests

fn short_request() -> ModelRequest {
    ModelRequest::new(vec![
        Message::system("You are a helpful assistant."),
        Message::user("What is the capital of France? One word, please."),
    ])
}

/// A conversation of about 2 KB (system prompt, four exchanges, a last
/// question that matches two of the complexity route's three signals).
fn conversation_2kb() -> ModelRequest {
    let turns = [
        (
            "Our workers are Rust services on Kubernetes; pods are killed on every deploy and a \
             job can take from a second to twenty minutes. Should we heartbeat?",
            "Yes. Renew the lease from a background task every third of its length, stop the job \
             when a renewal fails, and keep the lease short enough that a crashed pod's jobs are \
             picked up quickly, a minute or two for your longest jobs.",
        ),
        (
            "We run a job queue on Postgres with SKIP LOCKED. Workers sometimes pick the same job \
             twice after a deploy. What could cause that?",
            "Usually a worker that lost its connection mid-transaction: the row lock is released, \
             the job is visible again, and a second worker takes it while the first still runs it \
             in memory. Check for statement timeouts, pool resets during the deploy, and whether \
             the job is marked running in the same transaction that locks it.",
        ),
        (
            "The job is marked running in a separate transaction after the lock. Is that the \
             problem?",
            "Yes: between the commit that releases the lock and the one that marks it running \
             there is a window where another worker can lock the same row. Do both in one \
             transaction, or add a lease column with an expiry that a worker must own to run the \
             job.",
        ),
        (
            "If we add a lease with an expiry, what happens when a job runs longer than the \
             lease?",
            "Another worker may take it over while the first is still running, so long jobs need \
             to renew their lease periodically, and the work itself must be idempotent or fenced \
             with a token that increases on every takeover.",
        ),
    ];
    let mut messages = vec![Message::system(
        "You are a careful senior engineer. Answer precisely, show your reasoning when it \
         matters, and say so when you are not sure.",
    )];
    for (q, a) in turns {
        messages.push(Message::user(q));
        messages.push(Message::assistant(a));
    }
    messages.push(Message::user(
        "Please prove, step by step, that a fencing token that increases on every takeover \
         prevents two workers from both committing the effects of the same job, assuming the \
         storage rejects writes that carry a token lower than the highest one it has seen. \
         Cover the case where the old worker resumes after a long pause and tries to write \
         first, and say which properties of the storage the argument depends on.",
    ));
    ModelRequest::new(messages)
}

/// The 2 KB conversation's exchanges repeated until it holds 64 KB, the
/// same last question at the end: a long agent conversation.
fn conversation_64kb() -> ModelRequest {
    let short = conversation_2kb();
    let (system, rest) = short.messages.split_at(1);
    let (exchanges, last) = rest.split_at(rest.len() - 1);
    let mut messages = system.to_vec();
    while conversation_chars(&ModelRequest::new(messages.clone())) < 64 * 1024 {
        messages.extend_from_slice(exchanges);
    }
    messages.extend_from_slice(last);
    ModelRequest::new(messages)
}

fn conversation_chars(req: &ModelRequest) -> usize {
    req.messages.iter().map(|m| m.content.len()).sum()
}

/// A request that needs the `tools` and `json_schema` capabilities.
fn tools_and_schema_request() -> ModelRequest {
    let mut req = short_request().with_tools(vec![ToolDefinition {
        name: "lookup_city".into(),
        description: "Look up facts about a city".into(),
        parameters:
            r#"{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}"#
                .into(),
    }]);
    req.json_schema = Some(json!({
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }));
    req
}

// ---------------------------------------------------------------------------
// 1 + 2. Decision and call overhead over echo endpoints

fn echo(name: &str) -> EndpointConfig {
    EndpointConfig::new(name, ProviderKind::Echo)
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The echo endpoints and routes of phases 1 and 2.
async fn echo_router() -> Result<Router> {
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

struct Case {
    name: &'static str,
    route: &'static str,
    request: ModelRequest,
    rule: &'static str,
    /// The endpoint every decision must choose, when deterministic.
    chosen: Option<&'static str>,
    eligible: usize,
}

fn cases() -> Vec<Case> {
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

async fn decide_phase(router: &Router, args: &Args) -> Result<Vec<DecideResult>> {
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

async fn call_phase(router: &Router, args: &Args) -> Result<CallResult> {
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

// ---------------------------------------------------------------------------
// 3. Cascade over real HTTP

const VOCABULARY: &[&str] = &[
    "the", "order", "service", "returns", "a", "list", "of", "items", "with", "their", "prices",
    "and", "stock", "levels", "when", "customer", "asks", "for", "refund", "policy", "we", "check",
    "invoice", "date", "against", "thirty", "day", "window", "then", "reply", "politely",
];

fn words(rng: &mut fastrand::Rng, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(VOCABULARY[rng.usize(0..VOCABULARY.len())]);
    }
    s
}

/// One request of the workload and how each fake model answers it.
struct Job {
    hard: bool,
    request: ModelRequest,
    /// The cheap model's token log-probability: confidence = exp(logprob).
    logprob: f64,
    cheap_answer: String,
    strong_answer: String,
}

/// `n` requests, exactly `round(n * hard_share)` of them hard, in a seeded
/// random order; prompts of 40–400 words, answers of 20–300.
fn workload(n: usize, hard_share: f64, seed: u64) -> Vec<Job> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let hard_count = ((n as f64) * hard_share).round() as usize;
    let mut hard: Vec<bool> = (0..n).map(|i| i < hard_count).collect();
    rng.shuffle(&mut hard);
    hard.into_iter()
        .enumerate()
        .map(|(i, hard)| {
            let (prompt_words, answer_words) = (rng.usize(40..=400), rng.usize(20..=300));
            let prompt = format!("Question {i}: {}?", words(&mut rng, prompt_words));
            let answer = words(&mut rng, answer_words);
            // Easy: confidence 0.74–0.99; hard: 0.14–0.64 (the gate is 0.7).
            let logprob = if hard {
                -(0.45 + 1.55 * rng.f64())
            } else {
                -(0.01 + 0.29 * rng.f64())
            };
            Job {
                hard,
                request: ModelRequest::new(vec![
                    Message::system("You are a support agent for an online shop. Be brief."),
                    Message::user(prompt),
                ]),
                logprob,
                cheap_answer: format!("[cheap] {answer}"),
                strong_answer: format!("[strong] {answer}"),
            }
        })
        .collect()
}

fn price(usage_in: u64, usage_out: u64, (pin, pout): (f64, f64)) -> f64 {
    (usage_in as f64 * pin + usage_out as f64 * pout) / 1_000_000.0
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-9)
}

fn cascade_endpoint(name: &str, server: &FakeOpenAi, (pin, pout): (f64, f64)) -> EndpointConfig {
    let mut cfg = EndpointConfig::openai(name, server.base_url(), format!("model-{name}"));
    cfg.price_input_per_mtok = Some(pin);
    cfg.price_output_per_mtok = Some(pout);
    cfg
}

/// Check one cascade answer: from the expected endpoint, with its text,
/// escalations, decisions, confidence and cost.
fn check_cascade(i: usize, job: &Job, r: &Routed, cheap_cost: f64, strong_cost: f64) -> Result<()> {
    let (endpoint, text, escalations, cost) = if job.hard {
        ("strong", &job.strong_answer, 1, cheap_cost + strong_cost)
    } else {
        ("cheap", &job.cheap_answer, 0, cheap_cost)
    };
    let rules: Vec<&str> = r.decisions.iter().map(|d| d.rule.as_str()).collect();
    let want_rules: &[&str] = if job.hard {
        &["cascade_first", "cascade_escalate"]
    } else {
        &["cascade_first"]
    };
    let got_cost = r.cost_usd.unwrap_or(f64::NAN);
    ensure!(
        r.endpoint == endpoint
            && &r.response.message.content == text
            && r.response.model == format!("model-{endpoint}")
            && r.escalations == escalations
            && rules == want_rules
            && close(got_cost, cost),
        "cascade request {i} ({}, cheap confidence {:.3}): expected {endpoint} with {escalations} \
         escalation(s), rules {want_rules:?}, cost ${cost:.9}; got {} (model {}) with {} \
         escalation(s), rules {rules:?}, cost ${got_cost:.9}, text {:?}",
        if job.hard { "hard" } else { "easy" },
        job.logprob.exp(),
        r.endpoint,
        r.response.model,
        r.escalations,
        r.response
            .message
            .content
            .chars()
            .take(40)
            .collect::<String>()
    );
    if !job.hard {
        let c = r.response.confidence.unwrap_or(f64::NAN);
        ensure!(
            (c - job.logprob.exp()).abs() < 1e-6 && c >= MIN_CONFIDENCE,
            "cascade request {i}: confidence {c}, expected {}",
            job.logprob.exp()
        );
    }
    Ok(())
}

async fn cascade_phase(args: &Args) -> Result<CascadeResult> {
    let cheap = FakeOpenAi::start().await?;
    let strong = FakeOpenAi::start().await?;
    let mut cheap_cfg = cascade_endpoint("cheap", &cheap, CHEAP_PRICE);
    cheap_cfg.logprobs = true;
    let strong_cfg = cascade_endpoint("strong", &strong, STRONG_PRICE);
    let route = RouteConfig {
        cascade: CascadeConfig {
            min_confidence: Some(MIN_CONFIDENCE),
            ..CascadeConfig::default()
        },
        ..RouteConfig::new("smart", vec!["cheap".into(), "strong".into()])
            .with_strategy(Strategy::Cascade)
    };
    let models = ModelRegistry::start(vec![cheap_cfg, strong_cfg]).await?;
    let router = Router::new(vec![route], models, BudgetLedger::default())?;

    let jobs = workload(args.requests, args.hard_share, args.seed);
    let cheap_delay = Duration::from_millis(args.cheap_delay_ms);
    let strong_delay = Duration::from_millis(args.strong_delay_ms);
    let (mut all, mut easy, mut hard) = (hist()?, hist()?, hist()?);
    let (mut only_strong, mut only_cheap) = (hist()?, hist()?);
    let mut totals = [Duration::ZERO; 3];
    let (mut cascade_cost, mut strong_cost_sum, mut cheap_cost_sum, mut oracle_cost) =
        (0.0, 0.0, 0.0, 0.0);
    let (mut escalated, mut by_cheap, mut by_strong) = (0u64, 0usize, 0usize);
    let (mut tokens_in, mut tokens_out) = (0u64, 0u64);

    for (i, job) in jobs.iter().enumerate() {
        // The fakes answer this request: sequential calls, so setting the
        // behaviour before each one is per-request.
        cheap.set_behavior(Behavior {
            reply: Reply::Fixed(job.cheap_answer.clone()),
            logprob: Some(job.logprob),
            delay: cheap_delay,
            ..Behavior::default()
        });
        strong.set_behavior(Behavior {
            reply: Reply::Fixed(job.strong_answer.clone()),
            delay: strong_delay,
            ..Behavior::default()
        });
        // What the fakes bill: words of every message in, of the reply out.
        let words_in: u64 = job
            .request
            .messages
            .iter()
            .map(|m| count_words(&m.content))
            .sum();
        let cheap_cost = price(words_in, count_words(&job.cheap_answer), CHEAP_PRICE);
        let strong_cost = price(words_in, count_words(&job.strong_answer), STRONG_PRICE);
        tokens_in += words_in;
        tokens_out += count_words(&job.strong_answer);

        // The cascade, straight to strong, straight to cheap; which goes
        // first rotates.
        for k in 0..3 {
            let run = (i + k) % 3;
            let route = ["smart", "strong", "cheap"][run];
            let t = Instant::now();
            let r = router
                .call(RouteCall::new(route, job.request.clone()))
                .await
                .map_err(|e| anyhow!("request {i} on route {route} failed: {e}"))?;
            let d = t.elapsed();
            totals[run] += d;
            let got = r.cost_usd.unwrap_or(f64::NAN);
            match run {
                0 => {
                    check_cascade(i, job, &r, cheap_cost, strong_cost)?;
                    record(&mut all, d);
                    record(if job.hard { &mut hard } else { &mut easy }, d);
                    cascade_cost += got;
                    escalated += u64::from(r.escalations);
                    if r.endpoint == "cheap" {
                        by_cheap += 1;
                    } else {
                        by_strong += 1;
                    }
                }
                _ => {
                    let (want, text, cost) = if run == 1 {
                        ("strong", &job.strong_answer, strong_cost)
                    } else {
                        ("cheap", &job.cheap_answer, cheap_cost)
                    };
                    ensure!(
                        r.endpoint == want
                            && &r.response.message.content == text
                            && close(got, cost),
                        "request {i} straight to {want}: expected its answer at ${cost:.9}, got \
                         {}'s at ${got:.9}",
                        r.endpoint
                    );
                    if run == 1 {
                        record(&mut only_strong, d);
                        strong_cost_sum += got;
                    } else {
                        record(&mut only_cheap, d);
                        cheap_cost_sum += got;
                    }
                }
            }
        }
        oracle_cost += if job.hard { strong_cost } else { cheap_cost };
    }
    let n = jobs.len();
    let hard_count = jobs.iter().filter(|j| j.hard).count();
    ensure!(
        cheap.requests() == 2 * n && strong.requests() == n + hard_count,
        "fake models saw {} cheap and {} strong requests; expected {} and {}",
        cheap.requests(),
        strong.requests(),
        2 * n,
        n + hard_count
    );
    router.models().stop().await;
    let with_mean = |h: &Histogram<u64>, total: Duration| Lat {
        mean_ns: total.as_nanos() as f64 / n as f64,
        ..lat(h)
    };
    Ok(CascadeResult {
        requests: n,
        hard: hard_count,
        seed: args.seed,
        min_confidence: MIN_CONFIDENCE,
        cheap_price_per_mtok: CHEAP_PRICE,
        strong_price_per_mtok: STRONG_PRICE,
        cheap_delay_ms: args.cheap_delay_ms,
        strong_delay_ms: args.strong_delay_ms,
        escalated,
        share_escalated: escalated as f64 / n as f64,
        answered_by_cheap: by_cheap,
        answered_by_strong: by_strong,
        input_tokens: tokens_in,
        output_tokens: tokens_out,
        cascade_cost_usd: cascade_cost,
        always_strong_cost_usd: strong_cost_sum,
        always_cheap_cost_usd: cheap_cost_sum,
        oracle_cost_usd: oracle_cost,
        saved_pct: 100.0 * (1.0 - cascade_cost / strong_cost_sum),
        cascade_latency: with_mean(&all, totals[0]),
        cascade_easy_latency: lat(&easy),
        cascade_hard_latency: lat(&hard),
        always_strong_latency: with_mean(&only_strong, totals[1]),
        always_cheap_latency: with_mean(&only_cheap, totals[2]),
        cheap_requests: cheap.requests(),
        strong_requests: strong.requests(),
    })
}

// ---------------------------------------------------------------------------
// Report

fn us(ns: f64) -> String {
    format!("{:.1}", ns / 1000.0)
}

fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "\n=== Baton routing report ===");
    let _ = writeln!(
        s,
        "machine: {} CPUs, {:.1} GiB RAM, Linux {}; load average {} at start, {} at end",
        m.nproc,
        m.mem_total_kib as f64 / 1048576.0,
        m.kernel,
        m.loadavg_start,
        m.loadavg_end
    );
    let a = &r.args;
    let _ = writeln!(
        s,
        "args: decisions {} (warm-up {}, batches of {}, {} rounds), calls {}, requests {}, \
         hard share {}, seed {}, model delays {}/{} ms, phases {}",
        a.decisions,
        a.warmup,
        a.batch,
        a.rounds,
        a.calls,
        a.requests,
        a.hard_share,
        a.seed,
        a.cheap_delay_ms,
        a.strong_delay_ms,
        a.phases.join(",")
    );
    if !r.decide.is_empty() {
        let first = &r.decide[0];
        let _ = writeln!(
            s,
            "\n-- 1. Router::decide: the first decision of a call ({} per case, timed in batches \
             of {}; ns per decision; conversations of {} and {} chars) --",
            first.decisions, first.batch, r.conversation_chars, r.long_conversation_chars
        );
        let _ = writeln!(
            s,
            "{:<54} {:>4} {:>4} {:>7} {:>7} {:>7} {:>6}  rule -> chosen",
            "case", "eps", "elig", "mean", "p50", "p99", "x base"
        );
        for d in &r.decide {
            let _ = writeln!(
                s,
                "{:<54} {:>4} {:>4} {:>7.0} {:>7} {:>7} {:>6.2}  {} -> {}",
                d.case,
                d.endpoints,
                d.eligible,
                d.mean_ns,
                d.per_batch.p50_ns,
                d.per_batch.p99_ns,
                d.p50_vs_baseline,
                d.rule,
                d.chosen
            );
        }
        for d in &r.decide {
            if d.strategy == "by_complexity" {
                let _ = writeln!(s, "  {}: {}", d.case, d.reason);
            }
        }
    }
    if let Some(c) = &r.call {
        let _ = writeln!(
            s,
            "\n-- 2. one call at a time to an echo endpoint, in-process ({} calls per side, {} \
             alternating blocks; µs per call) --",
            c.calls_per_side, c.blocks
        );
        let _ = writeln!(s, "{:<46} {:>8} {:>8} {:>8}", "", "mean", "p50", "p99");
        for (name, l) in [
            ("ExecutorHandle::call (direct)", c.direct),
            ("Router::call (fallback route, 1 endpoint)", c.routed),
        ] {
            let _ = writeln!(
                s,
                "{name:<46} {:>8} {:>8} {:>8}",
                us(l.mean_ns),
                us(l.p50_ns as f64),
                us(l.p99_ns as f64)
            );
        }
        let _ = writeln!(
            s,
            "{:<46} {:>+8.1} {:>+8.1} {:>+8.1}",
            "added by routing",
            c.added_mean_ns / 1000.0,
            c.added_p50_ns as f64 / 1000.0,
            c.added_p99_ns as f64 / 1000.0
        );
    }
    if let Some(c) = &r.cascade {
        let _ = writeln!(
            s,
            "\n-- 3. cascade [cheap ${}/${}, strong ${}/${} per Mtok], min_confidence {}, two fake \
             OpenAI servers over HTTP, sequential --",
            c.cheap_price_per_mtok.0,
            c.cheap_price_per_mtok.1,
            c.strong_price_per_mtok.0,
            c.strong_price_per_mtok.1,
            c.min_confidence
        );
        let _ = writeln!(
            s,
            "workload: {} requests, {} hard ({:.1}%), seed {}; {} input and {} output tokens; \
             model delays cheap {} ms, strong {} ms",
            c.requests,
            c.hard,
            100.0 * c.hard as f64 / c.requests as f64,
            c.seed,
            c.input_tokens,
            c.output_tokens,
            c.cheap_delay_ms,
            c.strong_delay_ms
        );
        let _ = writeln!(
            s,
            "escalated: {} of {} ({:.1}%); answered by cheap {}, by strong {}; every answer from \
             the expected endpoint (checked)",
            c.escalated,
            c.requests,
            100.0 * c.share_escalated,
            c.answered_by_cheap,
            c.answered_by_strong
        );
        let _ = writeln!(
            s,
            "{:<34} {:>12} {:>10} {:>10} {:>10}",
            "", "cost USD", "mean µs", "p50 µs", "p99 µs"
        );
        for (name, cost, l) in [
            ("cascade", Some(c.cascade_cost_usd), c.cascade_latency),
            ("  easy (answered by cheap)", None, c.cascade_easy_latency),
            ("  hard (escalated to strong)", None, c.cascade_hard_latency),
            (
                "always strong",
                Some(c.always_strong_cost_usd),
                c.always_strong_latency,
            ),
            (
                "always cheap (the cost floor)",
                Some(c.always_cheap_cost_usd),
                c.always_cheap_latency,
            ),
            (
                "oracle (no wasted cheap calls)",
                Some(c.oracle_cost_usd),
                Lat::default(),
            ),
        ] {
            let cost = cost.map(|x| format!("{x:.6}")).unwrap_or_default();
            if l.count == 0 && cost.is_empty() {
                let _ = writeln!(s, "{name:<34} {:>12} {:>10}", "", "-");
            } else if l.count == 0 {
                let _ = writeln!(s, "{name:<34} {cost:>12}");
            } else {
                let _ = writeln!(
                    s,
                    "{name:<34} {cost:>12} {:>10} {:>10} {:>10}",
                    us(l.mean_ns),
                    us(l.p50_ns as f64),
                    us(l.p99_ns as f64)
                );
            }
        }
        let _ = writeln!(
            s,
            "cost saved by the cascade vs always strong: {:.1}% (oracle: {:.1}%)",
            c.saved_pct,
            100.0 * (1.0 - c.oracle_cost_usd / c.always_strong_cost_usd)
        );
    }
    let _ = writeln!(s, "\ntotal {:.1} s", r.total_secs);
    s
}

// ---------------------------------------------------------------------------

async fn run(args: &Args) -> Result<Report> {
    let started = Instant::now();
    let loadavg_start = loadavg();
    let mut decide = Vec::new();
    let mut call = None;
    if args.has("decide") || args.has("call") {
        let router = echo_router().await?;
        if args.has("decide") {
            eprintln!("[routing] decide: {} cases", cases().len());
            decide = decide_phase(&router, args).await?;
        }
        if args.has("call") {
            eprintln!("[routing] call: Router::call vs ExecutorHandle::call");
            call = Some(call_phase(&router, args).await?);
        }
        router.models().stop().await;
    }
    let cascade = if args.has("cascade") {
        eprintln!("[routing] cascade: {} requests", args.requests);
        Some(cascade_phase(args).await?)
    } else {
        None
    };
    Ok(Report {
        machine: Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            mem_total_kib: mem_total_kib(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            loadavg_start,
            loadavg_end: loadavg(),
        },
        args: args.clone(),
        conversation_chars: conversation_chars(&conversation_2kb()),
        long_conversation_chars: conversation_chars(&conversation_64kb()),
        decide,
        call,
        cascade,
        total_secs: started.elapsed().as_secs_f64(),
    })
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    if args.quick {
        eprintln!("[routing] --quick: a smoke run; its figures are not meaningful");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&args))?;
    let text = render(&report);
    if args.json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
