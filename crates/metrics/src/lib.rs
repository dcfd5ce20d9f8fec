//! Baton's metrics: one process-wide registry, exposed by `baton serve` at
//! `GET /metrics` in the Prometheus / OpenMetrics text format.
//!
//! Every crate records into [`metrics()`]; nothing here blocks or allocates
//! on the hot path beyond the label lookup. Latencies are histograms in
//! seconds, so P50/P95/P99 are derivable with `histogram_quantile`.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `baton_model_attempt_duration_seconds` | endpoint, outcome | one provider attempt, start to end |
//! | `baton_model_time_to_first_token_seconds` | endpoint | attempt start to first streamed token |
//! | `baton_route_call_duration_seconds` | route, outcome | a routed call, all attempts and backoff included |
//! | `baton_model_attempts_total` | endpoint, route | attempts made |
//! | `baton_model_errors_total` | endpoint, kind | failed attempts by error kind |
//! | `baton_breaker_state` | endpoint | 0 closed, 1 half-open, 2 open |
//! | `baton_breaker_transitions_total` | endpoint, to | breaker state changes |
//! | `baton_model_tokens_total` | endpoint, direction | input / output tokens of successful attempts |
//! | `baton_model_cost_usd_total` | endpoint, route | cost of successful attempts |
//! | `baton_routing_decisions_total` | route, strategy, rule | routing decisions by the rule that fired |
//! | `baton_budget_rejections_total` | scope | calls refused by a budget |
//! | `baton_turns_total` | outcome | finished turns: completed, failed, cancelled |
//! | `baton_tenant_turns_total` | tenant, outcome | finished turns per tenant |
//! | `baton_tenant_tokens_total` | tenant, direction | input / output tokens of a tenant's model answers |
//! | `baton_tenant_cost_usd_total` | tenant | cost of a tenant's model answers |
//! | `baton_turn_duration_seconds` | outcome | turn accepted to finished |
//! | `baton_sessions_live` | | session actors in memory |
//! | `baton_sessions_passivated_total` | | sessions passivated |
//! | `baton_sessions_expired_total` | | sessions deleted by retention |
//! | `baton_actor_restarts_total` | kind | actors restarted by a supervisor |
//! | `baton_journal_append_duration_seconds` | | write request handed to the writer to durable |
//! | `baton_journal_batch_requests` | | write requests per group commit |
//! | `baton_journal_fsyncs_total` | | fsyncs made by the writer |
//! | `baton_audit_write_failures_total` | | failed flushes of the audit trail |
//! | `baton_audit_failing` | | 1 while the audit trail cannot be written |
//! | `baton_disk_low` | | 1 while the data directory is below `store.min_free_bytes` (new work refused) |
//! | `baton_store_write_failing` | | 1 while the store's writes fail (a full disk, a failing fsync; new work refused) |
//! | `baton_store_cache_bytes` | | bytes in the store's shared block cache (at most `store.cache_bytes`) |
//! | `baton_store_memtable_bytes` | | bytes of the store's memtables (flushed past `store.memtable_bytes`) |
//! | `baton_gates_pending` | | gates waiting for a decision |
//! | `baton_tool_calls_total` | tool, outcome | tool calls |
//! | `baton_tool_duration_seconds` | tool | tool call latency |
//! | `baton_quality_scored_total` | route, endpoint, model, outcome | answers scored by the quality evaluator (`scored`, `invalid`, `failed`, `dropped`) |
//! | `baton_quality_score` | route, endpoint, model, criterion | quality scores, 0 to 1 (histogram) |
//! | `baton_quality_alerts_total` | endpoint, signal | drift alerts raised (`score`, `error_rate`, `latency_p95`) |
//! | `baton_policy_checks_total` | check, answer | classifier and evaluator calls of policies (`label`, `pass`, `fail`, `error`) |

pub mod live;

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label values, in the order of the metric's label names.
type L2 = [(&'static str, String); 2];
type L1 = [(&'static str, String); 1];
type L3 = [(&'static str, String); 3];
type L4 = [(&'static str, String); 4];

fn score_histogram() -> Histogram {
    // 0.1 .. 1.0
    Histogram::new([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// Every metric Baton records.
pub struct Metrics {
    registry: Registry,
    attempt_duration: Family<L2, Histogram, fn() -> Histogram>,
    ttft: Family<L1, Histogram, fn() -> Histogram>,
    route_duration: Family<L2, Histogram, fn() -> Histogram>,
    attempts: Family<L2, Counter>,
    errors: Family<L2, Counter>,
    breaker_state: Family<L1, Gauge>,
    breaker_transitions: Family<L2, Counter>,
    tokens: Family<L2, Counter>,
    cost: Family<L2, Counter<f64, AtomicU64>>,
    decisions: Family<L3, Counter>,
    budget_rejections: Family<L1, Counter>,
    turns: Family<L1, Counter>,
    tenant_turns: Family<L2, Counter>,
    tenant_tokens: Family<L2, Counter>,
    tenant_cost: Family<L1, Counter<f64, AtomicU64>>,
    turn_duration: Family<L1, Histogram, fn() -> Histogram>,
    sessions_live: Gauge,
    passivated: Counter,
    expired: Counter,
    restarts: Family<L1, Counter>,
    journal_append: Histogram,
    journal_batch: Histogram,
    fsyncs: Counter,
    audit_failures: Counter,
    audit_failing: Gauge,
    disk_low: Gauge,
    store_write_failing: Gauge,
    store_cache: Gauge,
    store_memtables: Gauge,
    gates_pending: Gauge,
    tool_calls: Family<L2, Counter>,
    policy_checks: Family<L2, Counter>,
    quality_scored: Family<L4, Counter>,
    quality_score: Family<L4, Histogram, fn() -> Histogram>,
    quality_alerts: Family<L2, Counter>,
    tool_duration: Family<L1, Histogram, fn() -> Histogram>,
    rehydrations: Family<L1, Counter>,
    records_replayed: Counter,
    live: live::Live,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Breaker states as the `baton_breaker_state` gauge reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerGauge {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let m = Metrics {
            attempt_duration: Family::new_with_constructor(latency_histogram),
            ttft: Family::new_with_constructor(latency_histogram),
            route_duration: Family::new_with_constructor(latency_histogram),
            attempts: Family::default(),
            errors: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
            decisions: Family::default(),
            budget_rejections: Family::default(),
            turns: Family::default(),
            tenant_turns: Family::default(),
            tenant_tokens: Family::default(),
            tenant_cost: Family::default(),
            turn_duration: Family::new_with_constructor(latency_histogram),
            sessions_live: Gauge::default(),
            passivated: Counter::default(),
            expired: Counter::default(),
            restarts: Family::default(),
            journal_append: latency_histogram(),
            journal_batch: size_histogram(),
            fsyncs: Counter::default(),
            audit_failures: Counter::default(),
            audit_failing: Gauge::default(),
            disk_low: Gauge::default(),
            store_write_failing: Gauge::default(),
            store_cache: Gauge::default(),
            store_memtables: Gauge::default(),
            gates_pending: Gauge::default(),
            tool_calls: Family::default(),
            policy_checks: Family::default(),
            quality_scored: Family::default(),
            quality_score: Family::new_with_constructor(score_histogram),
            quality_alerts: Family::default(),
            tool_duration: Family::new_with_constructor(latency_histogram),
            rehydrations: Family::default(),
            records_replayed: Counter::default(),
            live: live::Live::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "model_attempt_duration_seconds",
            "One provider attempt, start to end",
            m.attempt_duration.clone(),
        );
        r.register(
            "model_time_to_first_token_seconds",
            "Attempt start to the first streamed token",
            m.ttft.clone(),
        );
        r.register(
            "route_call_duration_seconds",
            "A routed model call, every attempt and backoff included",
            m.route_duration.clone(),
        );
        r.register("model_attempts", "Attempts made", m.attempts.clone());
        r.register(
            "model_errors",
            "Failed attempts by error kind",
            m.errors.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        r.register(
            "breaker_transitions",
            "Circuit breaker state changes",
            m.breaker_transitions.clone(),
        );
        r.register(
            "model_tokens",
            "Tokens of successful attempts",
            m.tokens.clone(),
        );
        r.register(
            "model_cost_usd",
            "Cost of successful attempts in USD",
            m.cost.clone(),
        );
        r.register(
            "routing_decisions",
            "Routing decisions by the rule that fired",
            m.decisions.clone(),
        );
        r.register(
            "budget_rejections",
            "Model calls refused by a budget",
            m.budget_rejections.clone(),
        );
        r.register("turns", "Finished turns", m.turns.clone());
        r.register(
            "tenant_turns",
            "Finished turns per tenant",
            m.tenant_turns.clone(),
        );
        r.register(
            "tenant_tokens",
            "Tokens of a tenant's model answers",
            m.tenant_tokens.clone(),
        );
        r.register(
            "tenant_cost_usd",
            "Cost of a tenant's model answers in USD",
            m.tenant_cost.clone(),
        );
        r.register(
            "turn_duration_seconds",
            "Turn accepted to finished",
            m.turn_duration.clone(),
        );
        r.register(
            "sessions_live",
            "Session actors in memory",
            m.sessions_live.clone(),
        );
        r.register(
            "sessions_passivated",
            "Sessions passivated",
            m.passivated.clone(),
        );
        r.register(
            "sessions_expired",
            "Sessions deleted by retention",
            m.expired.clone(),
        );
        r.register(
            "actor_restarts",
            "Actors restarted by a supervisor",
            m.restarts.clone(),
        );
        r.register(
            "journal_append_duration_seconds",
            "Journal write request handed to the writer until durable",
            m.journal_append.clone(),
        );
        r.register(
            "journal_batch_requests",
            "Write requests per group commit",
            m.journal_batch.clone(),
        );
        r.register(
            "journal_fsyncs",
            "fsyncs made by the journal writer",
            m.fsyncs.clone(),
        );
        r.register(
            "audit_write_failures",
            "Failed flushes of the audit trail",
            m.audit_failures.clone(),
        );
        r.register(
            "audit_failing",
            "1 while the audit trail cannot be written",
            m.audit_failing.clone(),
        );
        r.register(
            "disk_low",
            "1 while the data directory is below store.min_free_bytes (new work refused)",
            m.disk_low.clone(),
        );
        r.register(
            "store_write_failing",
            "1 while the store's writes fail (new work refused)",
            m.store_write_failing.clone(),
        );
        r.register(
            "store_cache_bytes",
            "Bytes in the store's shared block cache",
            m.store_cache.clone(),
        );
        r.register(
            "store_memtable_bytes",
            "Bytes of the store's memtables",
            m.store_memtables.clone(),
        );
        r.register(
            "gates_pending",
            "Gates waiting for a decision",
            m.gates_pending.clone(),
        );
        r.register("tool_calls", "Tool calls", m.tool_calls.clone());
        r.register(
            "quality_scored",
            "Answers scored by the quality evaluator, by outcome",
            m.quality_scored.clone(),
        );
        r.register(
            "quality_score",
            "Quality scores of answers (0 to 1), by criterion",
            m.quality_score.clone(),
        );
        r.register(
            "quality_alerts",
            "Quality drift alerts raised, by endpoint and signal",
            m.quality_alerts.clone(),
        );
        r.register(
            "policy_checks",
            "Classifier and evaluator calls of policies, by check and answer",
            m.policy_checks.clone(),
        );
        r.register(
            "tool_duration_seconds",
            "Tool call latency",
            m.tool_duration.clone(),
        );
        r.register(
            "session_rehydrations",
            "Session actors loaded from storage, by what their state started from (snapshot or journal)",
            m.rehydrations.clone(),
        );
        r.register(
            "session_records_replayed",
            "Journal records applied when loading session actors (those after the snapshot)",
            m.records_replayed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The whole registry in the OpenMetrics text format (which Prometheus
    /// scrapes); serve it with [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The last hour per endpoint, route and tenant (the console's view).
    pub fn live(&self) -> &live::Live {
        &self.live
    }

    pub fn model_attempt(&self, endpoint: &str, route: &str, outcome: &str, seconds: f64) {
        if outcome != "hedge_lost" && outcome != "cancelled" {
            self.live
                .call(live::Kind::Endpoint, endpoint, outcome == "ok", seconds);
        }
        self.attempt_duration
            .get_or_create(&[("endpoint", endpoint.into()), ("outcome", outcome.into())])
            .observe(seconds);
        self.attempts
            .get_or_create(&[("endpoint", endpoint.into()), ("route", route.into())])
            .inc();
    }

    pub fn model_error(&self, endpoint: &str, kind: &str) {
        self.errors
            .get_or_create(&[("endpoint", endpoint.into()), ("kind", kind.into())])
            .inc();
    }

    pub fn time_to_first_token(&self, endpoint: &str, seconds: f64) {
        self.ttft
            .get_or_create(&[("endpoint", endpoint.into())])
            .observe(seconds);
    }

    pub fn route_call(&self, route: &str, outcome: &str, seconds: f64) {
        if outcome != "cancelled" {
            self.live
                .call(live::Kind::Route, route, outcome == "ok", seconds);
        }
        self.route_duration
            .get_or_create(&[("route", route.into()), ("outcome", outcome.into())])
            .observe(seconds);
    }

    pub fn breaker(&self, endpoint: &str, state: BreakerGauge, transition: bool) {
        self.breaker_state
            .get_or_create(&[("endpoint", endpoint.into())])
            .set(state as i64);
        if transition {
            let to = match state {
                BreakerGauge::Closed => "closed",
                BreakerGauge::HalfOpen => "half_open",
                BreakerGauge::Open => "open",
            };
            self.breaker_transitions
                .get_or_create(&[("endpoint", endpoint.into()), ("to", to.into())])
                .inc();
        }
    }

    pub fn usage(&self, endpoint: &str, route: &str, input: u64, output: u64, cost_usd: f64) {
        self.tokens
            .get_or_create(&[("endpoint", endpoint.into()), ("direction", "input".into())])
            .inc_by(input);
        self.tokens
            .get_or_create(&[
                ("endpoint", endpoint.into()),
                ("direction", "output".into()),
            ])
            .inc_by(output);
        if cost_usd > 0.0 {
            self.cost
                .get_or_create(&[("endpoint", endpoint.into()), ("route", route.into())])
                .inc_by(cost_usd);
            self.live.cost(live::Kind::Endpoint, endpoint, cost_usd);
            self.live.cost(live::Kind::Route, route, cost_usd);
        }
    }

    pub fn routing_decision(&self, route: &str, strategy: &str, rule: &str) {
        self.decisions
            .get_or_create(&[
                ("route", route.into()),
                ("strategy", strategy.into()),
                ("rule", rule.into()),
            ])
            .inc();
    }

    pub fn budget_rejection(&self, scope: &str) {
        self.budget_rejections
            .get_or_create(&[("scope", scope.into())])
            .inc();
    }

    pub fn turn_finished(&self, tenant: &str, outcome: &str, seconds: f64) {
        self.turns
            .get_or_create(&[("outcome", outcome.into())])
            .inc();
        self.tenant_turns
            .get_or_create(&[("tenant", tenant.into()), ("outcome", outcome.into())])
            .inc();
        self.turn_duration
            .get_or_create(&[("outcome", outcome.into())])
            .observe(seconds);
    }

    /// What a tenant's model answers used.
    pub fn tenant_usage(&self, tenant: &str, input: u64, output: u64, cost_usd: f64) {
        for (direction, n) in [("input", input), ("output", output)] {
            if n > 0 {
                self.tenant_tokens
                    .get_or_create(&[("tenant", tenant.into()), ("direction", direction.into())])
                    .inc_by(n);
            }
        }
        if cost_usd > 0.0 {
            self.tenant_cost
                .get_or_create(&[("tenant", tenant.into())])
                .inc_by(cost_usd);
            self.live.cost(live::Kind::Tenant, tenant, cost_usd);
        }
    }

    /// The store's memory: its block cache and its memtables, in bytes.
    pub fn store_memory(&self, cache_bytes: u64, memtable_bytes: u64) {
        self.store_cache
            .set(i64::try_from(cache_bytes).unwrap_or(i64::MAX));
        self.store_memtables
            .set(i64::try_from(memtable_bytes).unwrap_or(i64::MAX));
    }

    pub fn sessions_live(&self, n: i64) {
        self.sessions_live.set(n);
    }

    pub fn session_passivated(&self) {
        self.passivated.inc();
    }

    /// An answer given to the quality evaluator: `scored`, `invalid` (no
    /// scores in its answer), `failed` (the route failed) or `dropped`
    /// (the queue was full).
    pub fn quality_scored(&self, route: &str, endpoint: &str, model: &str, outcome: &str) {
        self.quality_scored
            .get_or_create(&[
                ("route", route.into()),
                ("endpoint", endpoint.into()),
                ("model", model.into()),
                ("outcome", outcome.into()),
            ])
            .inc();
    }

    /// One criterion's score of an answer.
    pub fn quality_score(
        &self,
        route: &str,
        endpoint: &str,
        model: &str,
        criterion: &str,
        score: f64,
    ) {
        self.quality_score
            .get_or_create(&[
                ("route", route.into()),
                ("endpoint", endpoint.into()),
                ("model", model.into()),
                ("criterion", criterion.into()),
            ])
            .observe(score);
    }

    /// A drift alert raised.
    pub fn quality_alert(&self, endpoint: &str, signal: &str) {
        self.quality_alerts
            .get_or_create(&[("endpoint", endpoint.into()), ("signal", signal.into())])
            .inc();
    }

    /// A policy check (`classifier_route:NAME`, ...) answered.
    pub fn policy_check(&self, check: &str, answer: &'static str) {
        self.policy_checks
            .get_or_create(&[("check", check.into()), ("answer", answer.into())])
            .inc();
    }

    pub fn session_expired(&self) {
        self.expired.inc();
    }

    pub fn actor_restart(&self, kind: &str) {
        self.restarts.get_or_create(&[("kind", kind.into())]).inc();
    }

    pub fn journal_append(&self, seconds: f64) {
        self.journal_append.observe(seconds);
    }

    pub fn journal_batch(&self, requests: usize, fsynced: bool) {
        self.journal_batch.observe(requests as f64);
        if fsynced {
            self.fsyncs.inc();
        }
    }

    pub fn audit_write_failure(&self) {
        self.audit_failures.inc();
    }

    pub fn audit_failing(&self, failing: bool) {
        self.audit_failing.set(i64::from(failing));
    }

    pub fn disk_low(&self, low: bool) {
        self.disk_low.set(i64::from(low));
    }

    pub fn store_write_failing(&self, failing: bool) {
        self.store_write_failing.set(i64::from(failing));
    }

    pub fn gates_pending_add(&self, delta: i64) {
        self.gates_pending.inc_by(delta);
    }

    pub fn gates_pending_set(&self, n: i64) {
        self.gates_pending.set(n);
    }

    /// A session actor loaded its state: `from` is `snapshot` or `journal`,
    /// `replayed` the journal records applied on top.
    pub fn session_rehydrated(&self, from: &str, replayed: u64) {
        self.rehydrations
            .get_or_create(&[("from", from.into())])
            .inc();
        self.records_replayed.inc_by(replayed);
    }

    pub fn tool_call(&self, tool: &str, outcome: &str, seconds: f64) {
        self.tool_calls
            .get_or_create(&[("tool", tool.into()), ("outcome", outcome.into())])
            .inc();
        self.tool_duration
            .get_or_create(&[("tool", tool.into())])
            .observe(seconds);
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_values_with_labels() {
        let m = metrics();
        m.model_attempt("ep-a", "r1", "ok", 0.012);
        m.model_error("ep-a", "rate_limited");
        m.breaker("ep-a", BreakerGauge::Open, true);
        m.usage("ep-a", "r1", 10, 5, 0.25);
        let text = m.render();
        assert!(
            text.contains("baton_model_attempts_total{endpoint=\"ep-a\",route=\"r1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("baton_model_errors_total{endpoint=\"ep-a\",kind=\"rate_limited\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("baton_breaker_state{endpoint=\"ep-a\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("baton_model_tokens_total{endpoint=\"ep-a\",direction=\"output\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("baton_model_attempt_duration_seconds_bucket{le=\"0.016\",endpoint=\"ep-a\",outcome=\"ok\"} 1")
                || text.contains("baton_model_attempt_duration_seconds_count{endpoint=\"ep-a\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
