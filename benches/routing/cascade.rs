//! Phase 3: a cascade over two fake OpenAI servers on real HTTP, against
//! always-strong and always-cheap on the same seeded workload.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use baton_models::{EndpointConfig, ModelRegistry, ModelRequest, count_words};
use baton_routing::{
    BudgetLedger, CascadeConfig, RouteCall, RouteConfig, Routed, Router, Strategy,
};
use baton_testkit::{Behavior, FakeOpenAi, Reply};
use baton_types::Message;
use hdrhistogram::Histogram;

use crate::args::Args;
use crate::fixtures::{CHEAP_PRICE, MIN_CONFIDENCE, STRONG_PRICE};
use crate::report::{CascadeResult, Lat, hist, lat, record};

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

pub(crate) async fn cascade_phase(args: &Args) -> Result<CascadeResult> {
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
