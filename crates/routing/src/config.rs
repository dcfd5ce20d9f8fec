//! Route configuration: the `[[routes]]` tables of `baton.toml`, and their
//! validation into the compiled form the router uses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use baton_models::{EndpointConfig, ModelRegistry};
use regex::Regex;
use serde::Deserialize;

/// A route: a name callers use instead of an endpoint name, and how calls on
/// it are spread over its endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique among routes and endpoints.
    pub name: String,
    #[serde(default)]
    pub strategy: Strategy,
    /// The endpoints, in fallback order; `cascade`: cheapest first;
    /// `by_complexity`: tiers in ascending order of strength.
    pub endpoints: Vec<String>,
    /// `weighted`: one weight per endpoint.
    #[serde(default)]
    pub weights: Vec<u32>,
    /// Attempts across the whole routed call, failovers included; default
    /// `min(10, sum of the endpoints' retry.max_attempts)`.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Overall deadline of one routed call, backoff included.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Spend limit of the route, all sessions together, in USD.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    #[serde(default)]
    pub cascade: CascadeConfig,
    #[serde(default)]
    pub complexity: ComplexityConfig,
    /// Weight of the newest sample in the endpoints' latency EWMA
    /// (`least_latency`).
    #[serde(default = "default_ewma_alpha")]
    pub ewma_alpha: f64,
    /// What an attempt that timed out waiting for its first token leads to.
    #[serde(default)]
    pub first_token_timeout: FirstTokenTimeout,
    /// Start a second attempt on another candidate when the first has
    /// produced no output this long; the first with output wins and the
    /// other is cancelled (both billed and journaled). Not for cascades.
    #[serde(default)]
    pub hedge_after_ms: Option<u64>,
}

/// What a route does when an endpoint accepts a request and sends nothing
/// within its `first_token_timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstTokenTimeout {
    /// Fail over to the next candidate at once when there is one (a silent
    /// upstream is seldom cured by asking it again); retry the same endpoint
    /// only when it is the last candidate standing.
    #[default]
    Failover,
    /// Retry the same endpoint per its `retry` policy first, like any
    /// transient failure.
    Retry,
}

fn default_ewma_alpha() -> f64 {
    0.3
}

impl RouteConfig {
    /// A `fallback` route over `endpoints` with every other field at its default.
    pub fn new(name: impl Into<String>, endpoints: Vec<String>) -> Self {
        Self {
            name: name.into(),
            strategy: Strategy::default(),
            endpoints,
            weights: Vec::new(),
            max_attempts: None,
            deadline_ms: None,
            budget_usd: None,
            cascade: CascadeConfig::default(),
            complexity: ComplexityConfig::default(),
            ewma_alpha: default_ewma_alpha(),
            first_token_timeout: FirstTokenTimeout::default(),
            hedge_after_ms: None,
        }
    }

    /// The same route with another strategy.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }
}

/// How a route picks the endpoint of each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The first healthy endpoint in order.
    #[default]
    Fallback,
    /// Random, in proportion to `weights`.
    Weighted,
    /// The endpoint with the lowest latency EWMA; unmeasured ones first.
    LeastLatency,
    /// Power of two choices on in-flight + queued calls.
    LeastInflight,
    /// Cheapest first; escalate while the answer fails a quality gate.
    Cascade,
    /// A tier chosen by a complexity score of the request.
    ByComplexity,
}

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Fallback => "fallback",
            Strategy::Weighted => "weighted",
            Strategy::LeastLatency => "least_latency",
            Strategy::LeastInflight => "least_inflight",
            Strategy::Cascade => "cascade",
            Strategy::ByComplexity => "by_complexity",
        }
    }
}

/// The quality gates of a `cascade` route, applied in this order to each
/// answer but the last step's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeConfig {
    /// Escalate when the answer's confidence is below this, in `[0, 1]`.
    #[serde(default)]
    pub min_confidence: Option<f64>,
    /// Escalate unless the answer is JSON valid against this schema (a gate
    /// of the route's own: the request's `json_schema` holds on every route
    /// and step whether this is set or not).
    #[serde(default)]
    pub json_schema: Option<serde_json::Value>,
    /// A route that grades the answer PASS or FAIL.
    #[serde(default)]
    pub evaluator: Option<String>,
    /// The evaluator's prompt; `{question}` and `{answer}` are replaced by
    /// the last user message and the answer (appended when absent).
    #[serde(default)]
    pub evaluator_prompt: Option<String>,
    /// What `min_confidence` does with an answer that has no confidence.
    #[serde(default)]
    pub on_missing_confidence: MissingConfidence,
}

/// What to do with an answer without a confidence when `min_confidence` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingConfidence {
    /// Accept it.
    Pass,
    /// Escalate to the next endpoint.
    #[default]
    Escalate,
}

/// How a `by_complexity` route scores a request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplexityConfig {
    /// `endpoints.len() - 1` ascending cut points in `[0, 1]`: tier `i` takes
    /// scores `<= thresholds[i]`, the last tier the rest.
    #[serde(default)]
    pub thresholds: Vec<f64>,
    /// Input tokens that alone make the score 1.
    #[serde(default = "default_tokens_for_max")]
    pub tokens_for_max: u64,
    /// Patterns of the last user message that add to the score.
    #[serde(default)]
    pub signals: Vec<Signal>,
    /// Added when the request offers tools.
    #[serde(default = "default_tools_weight")]
    pub tools_weight: f64,
}

fn default_tokens_for_max() -> u64 {
    4000
}
fn default_tools_weight() -> f64 {
    0.2
}

impl Default for ComplexityConfig {
    fn default() -> Self {
        Self {
            thresholds: Vec::new(),
            tokens_for_max: default_tokens_for_max(),
            signals: Vec::new(),
            tools_weight: default_tools_weight(),
        }
    }
}

/// A regex on the last user message and what a match adds to the score.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    pub pattern: String,
    pub weight: f64,
}

/// An invalid `[[routes]]` table. `field` names the key as in the file,
/// with the route's index in `[[routes]]` (e.g. `routes[1].weights`), and
/// `route` the route's name: `routes[1].weights: must not all be zero
/// (route "fast")`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}{}", route_name(.route))]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
    pub route: String,
}

/// ` (route "name")`, or nothing for a route without a name.
fn route_name(route: &str) -> String {
    if route.trim().is_empty() {
        String::new()
    } else {
        format!(" (route {route:?})")
    }
}

impl ConfigError {
    /// An error on `key` of `routes[index]`, the route named `route`.
    fn at(index: usize, route: &str, key: &str, reason: impl Into<String>) -> Self {
        Self {
            field: format!("routes[{index}].{key}"),
            reason: reason.into(),
            route: route.to_string(),
        }
    }
}

/// Check `routes` against `endpoints` exactly as [`crate::Router::new`] will,
/// without starting anything: errors name the key, e.g.
/// `routes[0].endpoints: unknown endpoint "gtp" (known: claude, gpt)`.
pub fn validate_routes(
    routes: &[RouteConfig],
    endpoints: &[EndpointConfig],
) -> Result<(), ConfigError> {
    let attempts = endpoints
        .iter()
        .map(|e| (e.name.clone(), e.retry.max_attempts))
        .collect();
    compile_over(routes.to_vec(), &attempts).map(|_| ())
}

/// A validated route.
#[derive(Debug)]
pub(crate) struct Route {
    pub cfg: RouteConfig,
    /// One of the endpoints' own routes rather than a `[[routes]]` table.
    pub implicit: bool,
    pub max_attempts: u32,
    pub signals: Vec<(Regex, f64)>,
    pub schema: Option<Arc<jsonschema::Validator>>,
}

impl Route {
    pub fn name(&self) -> &str {
        &self.cfg.name
    }
}

/// Validate `routes` against the endpoints of `models` and add each
/// endpoint's implicit route; the explicit routes first, in order, then the
/// implicit ones sorted by name.
pub(crate) fn compile(
    routes: Vec<RouteConfig>,
    models: &ModelRegistry,
) -> Result<Vec<Route>, ConfigError> {
    let attempts = models
        .names()
        .into_iter()
        .filter_map(|name| {
            let attempts = models.get(&name)?.endpoint().config().retry.max_attempts;
            Some((name, attempts))
        })
        .collect();
    compile_over(routes, &attempts)
}

/// [`compile`] over the endpoints' names and `retry.max_attempts`.
fn compile_over(
    routes: Vec<RouteConfig>,
    attempts: &BTreeMap<String, u32>,
) -> Result<Vec<Route>, ConfigError> {
    let known: HashSet<&str> = attempts.keys().map(String::as_str).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, r) in routes.iter().enumerate() {
        if r.name.trim().is_empty() {
            return Err(ConfigError::at(i, "", "name", "must not be empty"));
        }
        if !seen.insert(r.name.as_str()) {
            return Err(ConfigError::at(i, &r.name, "name", "duplicate route name"));
        }
        if known.contains(r.name.as_str()) {
            return Err(ConfigError::at(
                i,
                &r.name,
                "name",
                "is the name of an endpoint; routes and endpoints share one namespace",
            ));
        }
    }
    let all_routes: HashSet<&str> = routes
        .iter()
        .map(|r| r.name.as_str())
        .chain(known.iter().copied())
        .collect();
    let mut compiled = Vec::with_capacity(routes.len() + attempts.len());
    for (i, r) in routes.iter().enumerate() {
        compiled.push(validate(i, r.clone(), attempts, &known, &all_routes)?);
    }
    check_evaluator_cycles(&routes)?;
    // An endpoint's own route: one endpoint, defaults for everything else.
    for (name, max_attempts) in attempts {
        compiled.push(Route {
            cfg: RouteConfig::new(name.clone(), vec![name.clone()]),
            implicit: true,
            max_attempts: (*max_attempts).clamp(1, 10),
            signals: Vec::new(),
            schema: None,
        });
    }
    Ok(compiled)
}

fn validate(
    index: usize,
    cfg: RouteConfig,
    attempts: &BTreeMap<String, u32>,
    known: &HashSet<&str>,
    all_routes: &HashSet<&str>,
) -> Result<Route, ConfigError> {
    let name = cfg.name.clone();
    if cfg.endpoints.is_empty() {
        return Err(ConfigError::at(
            index,
            &name,
            "endpoints",
            "must not be empty",
        ));
    }
    let mut listed = HashSet::new();
    for e in &cfg.endpoints {
        if !known.contains(e.as_str()) {
            let mut names: Vec<&str> = known.iter().copied().collect();
            names.sort_unstable();
            return Err(ConfigError::at(
                index,
                &name,
                "endpoints",
                format!("unknown endpoint {e:?} (known: {})", names.join(", ")),
            ));
        }
        if !listed.insert(e.as_str()) {
            return Err(ConfigError::at(
                index,
                &name,
                "endpoints",
                format!("endpoint {e:?} is listed twice"),
            ));
        }
    }
    let n = cfg.endpoints.len();
    if cfg.strategy == Strategy::Weighted {
        if cfg.weights.len() != n {
            return Err(ConfigError::at(
                index,
                &name,
                "weights",
                format!(
                    "needs one weight per endpoint: {} endpoints, {} weights",
                    n,
                    cfg.weights.len()
                ),
            ));
        }
        if cfg.weights.iter().map(|w| u64::from(*w)).sum::<u64>() == 0 {
            return Err(ConfigError::at(
                index,
                &name,
                "weights",
                "must not all be zero",
            ));
        }
    } else if !cfg.weights.is_empty() {
        return Err(ConfigError::at(
            index,
            &name,
            "weights",
            "only used by strategy weighted",
        ));
    }
    if cfg.max_attempts == Some(0) {
        return Err(ConfigError::at(
            index,
            &name,
            "max_attempts",
            "must be at least 1",
        ));
    }
    if cfg.deadline_ms == Some(0) {
        return Err(ConfigError::at(
            index,
            &name,
            "deadline_ms",
            "must be at least 1",
        ));
    }
    if let Some(b) = cfg.budget_usd
        && !(b.is_finite() && b >= 0.0)
    {
        return Err(ConfigError::at(
            index,
            &name,
            "budget_usd",
            "must be a non-negative number",
        ));
    }
    if let Some(h) = cfg.hedge_after_ms {
        if h == 0 {
            return Err(ConfigError::at(
                index,
                &name,
                "hedge_after_ms",
                "must be greater than 0",
            ));
        }
        if cfg.strategy == Strategy::Cascade {
            return Err(ConfigError::at(
                index,
                &name,
                "hedge_after_ms",
                "does not apply to strategy cascade (its steps run one after another)",
            ));
        }
    }
    if !(cfg.ewma_alpha > 0.0 && cfg.ewma_alpha <= 1.0) {
        return Err(ConfigError::at(
            index,
            &name,
            "ewma_alpha",
            "must be in (0, 1]",
        ));
    }

    // Cascade.
    let c = &cfg.cascade;
    let mut schema = None;
    if cfg.strategy == Strategy::Cascade {
        if n < 2 {
            return Err(ConfigError::at(
                index,
                &name,
                "endpoints",
                "strategy cascade needs at least 2 endpoints",
            ));
        }
        if let Some(m) = c.min_confidence
            && !(m.is_finite() && (0.0..=1.0).contains(&m))
        {
            return Err(ConfigError::at(
                index,
                &name,
                "cascade.min_confidence",
                "must be in [0, 1]",
            ));
        }
        if let Some(s) = &c.json_schema {
            let v = jsonschema::validator_for(s).map_err(|e| {
                ConfigError::at(
                    index,
                    &name,
                    "cascade.json_schema",
                    format!("invalid JSON Schema: {e}"),
                )
            })?;
            schema = Some(Arc::new(v));
        }
        if let Some(ev) = &c.evaluator {
            if ev == &cfg.name {
                return Err(ConfigError::at(
                    index,
                    &name,
                    "cascade.evaluator",
                    "must not be the route itself",
                ));
            }
            if !all_routes.contains(ev.as_str()) {
                return Err(ConfigError::at(
                    index,
                    &name,
                    "cascade.evaluator",
                    format!("unknown route {ev:?}"),
                ));
            }
        }
        if c.evaluator_prompt.is_some() && c.evaluator.is_none() {
            return Err(ConfigError::at(
                index,
                &name,
                "cascade.evaluator_prompt",
                "set without cascade.evaluator",
            ));
        }
    } else if c.min_confidence.is_some()
        || c.json_schema.is_some()
        || c.evaluator.is_some()
        || c.evaluator_prompt.is_some()
    {
        return Err(ConfigError::at(
            index,
            &name,
            "cascade",
            "only used by strategy cascade",
        ));
    }

    // Complexity.
    let x = &cfg.complexity;
    let mut signals = Vec::new();
    if cfg.strategy == Strategy::ByComplexity {
        if x.thresholds.len() != n - 1 {
            return Err(ConfigError::at(
                index,
                &name,
                "complexity.thresholds",
                format!(
                    "needs endpoints.len() - 1 = {} cut points, got {}",
                    n - 1,
                    x.thresholds.len()
                ),
            ));
        }
        for (i, t) in x.thresholds.iter().enumerate() {
            if !(t.is_finite() && (0.0..=1.0).contains(t)) {
                return Err(ConfigError::at(
                    index,
                    &name,
                    "complexity.thresholds",
                    format!("{t} is not in [0, 1]"),
                ));
            }
            if i > 0 && x.thresholds[i - 1] >= *t {
                return Err(ConfigError::at(
                    index,
                    &name,
                    "complexity.thresholds",
                    "must be strictly ascending",
                ));
            }
        }
        if x.tokens_for_max == 0 {
            return Err(ConfigError::at(
                index,
                &name,
                "complexity.tokens_for_max",
                "must be at least 1",
            ));
        }
        if !x.tools_weight.is_finite() {
            return Err(ConfigError::at(
                index,
                &name,
                "complexity.tools_weight",
                "must be a finite number",
            ));
        }
        for (i, s) in x.signals.iter().enumerate() {
            let re = Regex::new(&s.pattern).map_err(|e| {
                ConfigError::at(
                    index,
                    &name,
                    &format!("complexity.signals[{i}].pattern"),
                    format!("invalid regex: {e}"),
                )
            })?;
            if !s.weight.is_finite() {
                return Err(ConfigError::at(
                    index,
                    &name,
                    &format!("complexity.signals[{i}].weight"),
                    "must be a finite number",
                ));
            }
            signals.push((re, s.weight));
        }
    } else if !x.thresholds.is_empty() || !x.signals.is_empty() {
        return Err(ConfigError::at(
            index,
            &name,
            "complexity",
            "only used by strategy by_complexity",
        ));
    }

    let default_attempts: u32 = cfg
        .endpoints
        .iter()
        .filter_map(|e| attempts.get(e))
        .map(|a| (*a).max(1))
        .fold(0u32, u32::saturating_add)
        .clamp(1, 10);
    Ok(Route {
        max_attempts: cfg.max_attempts.unwrap_or(default_attempts),
        cfg,
        implicit: false,
        signals,
        schema,
    })
}

/// Evaluator routes must not call back into the route they grade.
fn check_evaluator_cycles(routes: &[RouteConfig]) -> Result<(), ConfigError> {
    let next: HashMap<&str, &str> = routes
        .iter()
        .filter(|r| r.strategy == Strategy::Cascade)
        .filter_map(|r| Some((r.name.as_str(), r.cascade.evaluator.as_deref()?)))
        .collect();
    // In file order, so the first route of a cycle is the one named.
    for (i, start) in routes.iter().map(|r| r.name.as_str()).enumerate() {
        let mut at = start;
        let mut path = vec![at];
        while let Some(n) = next.get(at) {
            if *n == start {
                path.push(n);
                return Err(ConfigError::at(
                    i,
                    start,
                    "cascade.evaluator",
                    format!("evaluators form a cycle: {}", path.join(" -> ")),
                ));
            }
            if path.contains(n) {
                break;
            }
            path.push(n);
            at = n;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use baton_models::echo_default;
    use serde_json::json;

    use super::*;

    async fn registry(names: &[&str]) -> ModelRegistry {
        let cfgs = names
            .iter()
            .map(|n| {
                let mut c = echo_default();
                c.name = (*n).to_string();
                c
            })
            .collect();
        ModelRegistry::start(cfgs).await.unwrap()
    }

    fn parse(v: serde_json::Value) -> RouteConfig {
        serde_json::from_value(v).unwrap()
    }

    fn err(models: &ModelRegistry, routes: Vec<RouteConfig>) -> String {
        compile(routes, models).unwrap_err().to_string()
    }

    #[test]
    fn parsing_applies_defaults_and_refuses_unknown_fields() {
        let r = parse(json!({"name": "r", "endpoints": ["a"]}));
        assert_eq!(r.strategy, Strategy::Fallback);
        assert_eq!(r.ewma_alpha, 0.3);
        assert_eq!(r.complexity.tokens_for_max, 4000);
        assert_eq!(r.complexity.tools_weight, 0.2);
        assert_eq!(r.cascade.on_missing_confidence, MissingConfidence::Escalate);
        let r = parse(json!({"name": "r", "endpoints": ["a"], "strategy": "least_inflight"}));
        assert_eq!(r.strategy, Strategy::LeastInflight);
        for bad in [
            json!({"name": "r", "endpoints": ["a"], "retries": 2}),
            json!({"name": "r", "endpoints": ["a"], "strategy": "random"}),
            json!({"name": "r", "endpoints": ["a"], "cascade": {"threshold": 1}}),
            json!({"name": "r", "endpoints": ["a"], "complexity": {"signals": [{"pattern": "x"}]}}),
        ] {
            assert!(
                serde_json::from_value::<RouteConfig>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn validation_errors_name_the_field() {
        let m = registry(&["a", "b", "c"]).await;
        let r = |v: serde_json::Value| vec![parse(v)];
        let cases: Vec<(Vec<RouteConfig>, &str)> = vec![
            (
                r(json!({"name": " ", "endpoints": ["a"]})),
                "routes[0].name: must not be empty",
            ),
            (
                vec![
                    parse(json!({"name": "x", "endpoints": ["a"]})),
                    parse(json!({"name": "x", "endpoints": ["b"]})),
                ],
                "routes[1].name: duplicate route name (route \"x\")",
            ),
            (
                r(json!({"name": "a", "endpoints": ["b"]})),
                "routes[0].name: is the name of an endpoint",
            ),
            (
                r(json!({"name": "x", "endpoints": []})),
                "routes[0].endpoints: must not be empty",
            ),
            (
                r(json!({"name": "x", "endpoints": ["a", "zz"]})),
                "routes[0].endpoints: unknown endpoint \"zz\" (known: a, b, c)",
            ),
            (
                r(json!({"name": "x", "endpoints": ["a", "a"]})),
                "routes[0].endpoints: endpoint \"a\" is listed twice",
            ),
            (
                r(
                    json!({"name": "x", "strategy": "weighted", "endpoints": ["a", "b"], "weights": [1]}),
                ),
                "routes[0].weights: needs one weight per endpoint",
            ),
            (
                r(
                    json!({"name": "x", "strategy": "weighted", "endpoints": ["a", "b"], "weights": [0, 0]}),
                ),
                "routes[0].weights: must not all be zero",
            ),
            (
                r(json!({"name": "x", "endpoints": ["a"], "weights": [1]})),
                "routes[0].weights: only used by strategy weighted",
            ),
            (
                r(
                    json!({"name": "x", "strategy": "by_complexity", "endpoints": ["a", "b", "c"], "complexity": {"thresholds": [0.5]}}),
                ),
                "routes[0].complexity.thresholds: needs endpoints.len() - 1 = 2 cut points, got 1",
            ),
            (
                r(
                    json!({"name": "x", "strategy": "by_complexity", "endpoints": ["a", "b", "c"], "complexity": {"thresholds": [0.6, 0.4]}}),
                ),
                "routes[0].complexity.thresholds: must be strictly ascending",
            ),
            (
                r(
                    json!({"name": "x", "strategy": "by_complexity", "endpoints": ["a", "b"], "complexity": {"thresholds": [1.5]}}),
                ),
                "routes[0].complexity.thresholds: 1.5 is not in [0, 1]",
            ),
            (
                r(
                    json!({"name": "x", "strategy": "by_complexity", "endpoints": ["a", "b"], "complexity": {"thresholds": [0.5], "signals": [{"pattern": "(", "weight": 0.1}]}}),
                ),
                "routes[0].complexity.signals[0].pattern: invalid regex",
            ),
            (
                r(json!({"name": "x", "endpoints": ["a"], "complexity": {"thresholds": [0.5]}})),
                "routes[0].complexity: only used by strategy by_complexity",
            ),
            (
                r(json!({"name": "x", "strategy": "cascade", "endpoints": ["a"]})),
                "routes[0].endpoints: strategy cascade needs at least 2 endpoints",
            ),
            (
                r(
                    json!({"name": "x", "strategy": "cascade", "endpoints": ["a", "b"], "cascade": {"evaluator": "nope"}}),
                ),
                "routes[0].cascade.evaluator: unknown route \"nope\"",
            ),
            (
                r(
                    json!({"name": "x", "strategy": "cascade", "endpoints": ["a", "b"], "cascade": {"evaluator": "x"}}),
                ),
                "routes[0].cascade.evaluator: must not be the route itself",
            ),
            (
                vec![
                    parse(
                        json!({"name": "x", "strategy": "cascade", "endpoints": ["a", "b"], "cascade": {"evaluator": "y"}}),
                    ),
                    parse(
                        json!({"name": "y", "strategy": "cascade", "endpoints": ["b", "c"], "cascade": {"evaluator": "x"}}),
                    ),
                ],
                "routes[0].cascade.evaluator: evaluators form a cycle: x -> y -> x (route \"x\")",
            ),
            (
                r(
                    json!({"name": "x", "strategy": "cascade", "endpoints": ["a", "b"], "cascade": {"json_schema": {"type": "nonsense"}}}),
                ),
                "routes[0].cascade.json_schema: invalid JSON Schema",
            ),
            (
                r(
                    json!({"name": "x", "strategy": "cascade", "endpoints": ["a", "b"], "cascade": {"min_confidence": 1.2}}),
                ),
                "routes[0].cascade.min_confidence: must be in [0, 1]",
            ),
            (
                r(json!({"name": "x", "endpoints": ["a"], "cascade": {"min_confidence": 0.5}})),
                "routes[0].cascade: only used by strategy cascade",
            ),
            (
                r(json!({"name": "x", "endpoints": ["a"], "budget_usd": -1.0})),
                "routes[0].budget_usd: must be a non-negative number",
            ),
            (
                r(json!({"name": "x", "endpoints": ["a"], "max_attempts": 0})),
                "routes[0].max_attempts: must be at least 1",
            ),
            (
                r(json!({"name": "x", "endpoints": ["a"], "deadline_ms": 0})),
                "routes[0].deadline_ms: must be at least 1",
            ),
            (
                r(json!({"name": "x", "endpoints": ["a"], "ewma_alpha": 0.0})),
                "routes[0].ewma_alpha: must be in (0, 1]",
            ),
        ];
        for (routes, expected) in cases {
            let e = err(&m, routes);
            assert!(e.contains(expected), "expected {expected:?}, got {e:?}");
        }
        // Non-finite budgets cannot come from TOML/JSON but can from code.
        let mut nan = RouteConfig::new("x", vec!["a".into()]);
        nan.budget_usd = Some(f64::NAN);
        assert_eq!(
            err(&m, vec![nan]),
            "routes[0].budget_usd: must be a non-negative number (route \"x\")"
        );
        m.stop().await;
    }

    #[test]
    fn validate_routes_checks_configs_as_the_router_does_without_starting_anything() {
        let endpoints: Vec<EndpointConfig> = ["a", "b"]
            .iter()
            .map(|n| EndpointConfig::new(*n, baton_models::ProviderKind::Echo))
            .collect();
        let ok = parse(json!({"name": "main", "endpoints": ["a", "b"]}));
        validate_routes(std::slice::from_ref(&ok), &endpoints).unwrap();
        let typo = parse(json!({"name": "fast", "endpoints": ["a", "zz"]}));
        assert_eq!(
            validate_routes(&[ok, typo], &endpoints)
                .unwrap_err()
                .to_string(),
            "routes[1].endpoints: unknown endpoint \"zz\" (known: a, b) (route \"fast\")"
        );
    }

    #[tokio::test]
    async fn valid_routes_compile_with_implicit_routes_and_default_attempts() {
        let m = registry(&["b", "a"]).await;
        let routes = vec![
            parse(json!({"name": "main", "endpoints": ["a", "b"]})),
            parse(
                json!({"name": "judge", "strategy": "cascade", "endpoints": ["a", "b"],
                "cascade": {"evaluator": "a", "min_confidence": 0.5, "json_schema": {"type": "object"}}}),
            ),
            parse(
                json!({"name": "tiered", "strategy": "by_complexity", "endpoints": ["a", "b"],
                "complexity": {"thresholds": [0.5], "signals": [{"pattern": "(?i)prove", "weight": 0.4}]}}),
            ),
            parse(json!({"name": "capped", "endpoints": ["a"], "max_attempts": 7})),
        ];
        let compiled = compile(routes, &m).unwrap();
        let names: Vec<&str> = compiled.iter().map(Route::name).collect();
        assert_eq!(names, vec!["main", "judge", "tiered", "capped", "a", "b"]);
        // Default: min(10, sum of retry.max_attempts) = 3 + 3.
        assert_eq!(compiled[0].max_attempts, 6);
        assert_eq!(compiled[3].max_attempts, 7);
        assert_eq!(compiled[4].max_attempts, 3);
        assert!(compiled[4].implicit && !compiled[0].implicit);
        assert!(compiled[1].schema.is_some());
        assert_eq!(compiled[2].signals.len(), 1);
        m.stop().await;
    }
}
