//! The [`Router`]: candidate filtering, strategies, attempt supervision
//! (retries, failover, deadlines, cancellation, stream retraction), circuit
//! breakers, budgets and cascade gates.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use baton_metrics::metrics;
use baton_models::{
    Delta, DeltaSink, Error as ModelError, ExecutorHandle, ModelJob, ModelRegistry, ModelRequest,
    ModelResponse, ProviderError, ProviderErrorKind, backoff_delay,
};
use baton_types::{AttemptFailure, ErrorCode, Message, RouteCandidate, RoutingDecision};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::Empty;

use crate::breaker::{Admission, Breaker, BreakerSnapshot, BreakerState};
use crate::budget::{BudgetLedger, BudgetRejection, ReserveRequest, SessionBudget};
use crate::config::{ConfigError, Route, RouteConfig, Strategy, compile};
use crate::gates;
use crate::select::{
    Complexity, complexity, estimate_input_tokens, last_user_message, p2c, required_capabilities,
    static_exclusion, weighted_pick,
};

/// One routed model call.
#[derive(Debug, Clone)]
pub struct RouteCall {
    /// A route name, or an endpoint name (its implicit route).
    pub route: String,
    /// Shared with every attempt of the call (not copied per attempt).
    pub request: Arc<ModelRequest>,
    /// The request carries images.
    pub needs_vision: bool,
    /// The call may only go to endpoints certified for all of these.
    pub data_classes: Vec<String>,
    /// When set, text deltas are streamed here; see the crate docs for
    /// [`Delta::Restart`].
    pub deltas: Option<DeltaSink>,
    /// Decisions and failed attempts, as they happen.
    pub events: Option<mpsc::UnboundedSender<RouteEvent>>,
    pub cancel: CancellationToken,
    /// The caller's deadline; the effective one is the earlier of this and
    /// the route's `deadline_ms` from now.
    pub deadline: Option<Instant>,
    pub session_budget: Option<SessionBudget>,
}

impl RouteCall {
    /// A call of `route` with no streaming, events, deadline or budget.
    pub fn new(route: impl Into<String>, request: impl Into<Arc<ModelRequest>>) -> Self {
        Self {
            route: route.into(),
            request: request.into(),
            needs_vision: false,
            data_classes: Vec::new(),
            deltas: None,
            events: None,
            cancel: CancellationToken::new(),
            deadline: None,
            session_budget: None,
        }
    }
}

/// What a routed call reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteEvent {
    Decision(RoutingDecision),
    AttemptFailed(AttemptFailure),
}

/// A routed call's answer.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The accepted answer; `attempts` counts every attempt of the call.
    pub response: ModelResponse,
    /// The endpoint that gave it.
    pub endpoint: String,
    pub attempts: u32,
    /// Cost of the billed (successful) attempts, cascade steps and evaluator
    /// calls included; `None` when no endpoint involved has prices.
    pub cost_usd: Option<f64>,
    pub decisions: Vec<RoutingDecision>,
    /// Cascade escalations made.
    pub escalations: u32,
}

/// Why a routed call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteErrorKind {
    UnknownRoute,
    NoEligibleEndpoint,
    BudgetExhausted,
    DeadlineExceeded,
    ContentPolicy,
    ContextLength,
    InvalidRequest,
    /// Transient failures used every attempt (or every candidate).
    Exhausted,
    Cancelled,
}

/// A routed call that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RouteError {
    pub kind: RouteErrorKind,
    pub message: String,
    pub attempts: u32,
    /// The endpoint of the last attempt, if any.
    pub endpoint: Option<String>,
    /// Cost billed before the call failed.
    pub cost_usd: Option<f64>,
}

impl RouteError {
    fn new(kind: RouteErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            attempts: 0,
            endpoint: None,
            cost_usd: None,
        }
    }

    /// The client-facing kind.
    pub fn code(&self) -> ErrorCode {
        match self.kind {
            RouteErrorKind::UnknownRoute => ErrorCode::NotFound,
            RouteErrorKind::NoEligibleEndpoint => ErrorCode::FailedPrecondition,
            RouteErrorKind::BudgetExhausted => ErrorCode::ResourceExhausted,
            RouteErrorKind::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            RouteErrorKind::ContentPolicy => ErrorCode::FailedPrecondition,
            RouteErrorKind::ContextLength | RouteErrorKind::InvalidRequest => {
                ErrorCode::InvalidArgument
            }
            RouteErrorKind::Exhausted => ErrorCode::Unavailable,
            RouteErrorKind::Cancelled => ErrorCode::Cancelled,
        }
    }

    /// A short stable label: `unknown_route`, `no_eligible_endpoint`,
    /// `budget_exhausted`, `deadline_exceeded`, `content_policy`,
    /// `context_length`, `invalid_request`, `model_error`, `cancelled`.
    pub fn label(&self) -> &'static str {
        match self.kind {
            RouteErrorKind::UnknownRoute => "unknown_route",
            RouteErrorKind::NoEligibleEndpoint => "no_eligible_endpoint",
            RouteErrorKind::BudgetExhausted => "budget_exhausted",
            RouteErrorKind::DeadlineExceeded => "deadline_exceeded",
            RouteErrorKind::ContentPolicy => "content_policy",
            RouteErrorKind::ContextLength => "context_length",
            RouteErrorKind::InvalidRequest => "invalid_request",
            RouteErrorKind::Exhausted => "model_error",
            RouteErrorKind::Cancelled => "cancelled",
        }
    }
}

/// A route as [`Router::routes`] lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteInfo {
    pub name: String,
    pub strategy: String,
    pub endpoints: Vec<String>,
    pub budget_usd: Option<f64>,
    pub spent_usd: f64,
    /// An endpoint's own route rather than a `[[routes]]` table.
    pub implicit: bool,
}

/// An endpoint's routing state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointStats {
    pub endpoint: String,
    /// EWMA of successful attempts' latency; `None` until one succeeded.
    pub ewma_latency_ms: Option<f64>,
    pub in_flight: usize,
    pub queued: usize,
    pub breaker: BreakerState,
}

/// Breaker and latency of one endpoint, shared by every call.
#[derive(Debug)]
struct Health {
    breaker: Mutex<Breaker>,
    ewma_ms: Mutex<Option<f64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    routes: HashMap<String, Arc<Route>>,
    /// Explicit routes in config order, then implicit ones by name.
    order: Vec<Arc<Route>>,
    models: ModelRegistry,
    budgets: BudgetLedger,
    health: HashMap<String, Arc<Health>>,
}

/// Routes model calls over endpoints. Cheap to clone; clones share
/// breakers, latency statistics and budgets.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field(
                "routes",
                &self
                    .inner
                    .order
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>(),
            )
            .field("budgets", &self.inner.budgets)
            .finish_non_exhaustive()
    }
}

/// A candidate as one selection saw it.
#[derive(Debug, Clone)]
struct Cand {
    eligible: bool,
    note: String,
    score: Option<f64>,
    estimate: f64,
    budget: Option<BudgetRejection>,
}

/// What the next selection is for.
#[derive(Debug, Clone)]
enum Want {
    First,
    Retry { idx: usize, reason: String },
    Failover { reason: String },
    Upgrade { reason: String },
    Escalate { reason: String },
    NewPass { pass: u32 },
}

/// Per-call routing state, indexed like the route's endpoints.
struct CallState<'r> {
    route: &'r Route,
    /// The request's estimated input tokens, counted once per call.
    input_tokens: u64,
    /// This call's preference order (by_complexity: the tier, higher tiers,
    /// then lower ones).
    order: Vec<usize>,
    statics: Vec<Option<String>>,
    /// Out for the rest of the call (auth, not found, too small a context,
    /// a cascade step already taken).
    excluded: Vec<Option<String>>,
    /// Failed transiently in the current pass.
    failed: Vec<Option<String>>,
    /// Attempts in the current pass.
    tries: Vec<u32>,
    complexity: Option<Complexity>,
    /// The smallest `Retry-After` seen in the current pass.
    pass_retry_after: Option<Duration>,
}

impl CallState<'_> {
    fn new_pass(&mut self) {
        self.failed.iter_mut().for_each(|f| *f = None);
        self.tries.iter_mut().for_each(|t| *t = 0);
        self.pass_retry_after = None;
    }
}

/// How one attempt ended badly.
#[derive(Debug)]
enum AttemptError {
    Provider(ProviderError),
    Overloaded(String),
    Stopped(String),
    WorkerFailed(String),
    Deadline,
    Cancelled,
}

impl AttemptError {
    fn class(&self) -> &'static str {
        match self {
            AttemptError::Provider(e) => e.class(),
            AttemptError::Overloaded(_) => "overloaded",
            AttemptError::Stopped(_) => "stopped",
            AttemptError::WorkerFailed(_) => "worker_failed",
            AttemptError::Deadline => "timeout",
            AttemptError::Cancelled => "cancelled",
        }
    }

    fn message(&self) -> String {
        match self {
            AttemptError::Provider(e) => e.message.clone(),
            AttemptError::Overloaded(m)
            | AttemptError::Stopped(m)
            | AttemptError::WorkerFailed(m) => m.clone(),
            AttemptError::Deadline => "the routed call's deadline passed during the attempt".into(),
            AttemptError::Cancelled => "cancelled".into(),
        }
    }

    fn from_model(e: ModelError) -> Self {
        match e {
            ModelError::Provider { source, .. } => AttemptError::Provider(source),
            ModelError::Overloaded { .. } => AttemptError::Overloaded(e.to_string()),
            ModelError::Cancelled => AttemptError::Cancelled,
            ModelError::Stopped { .. } | ModelError::Spawn { .. } | ModelError::Config { .. } => {
                AttemptError::Stopped(e.to_string())
            }
            ModelError::WorkerFailed { .. } => AttemptError::WorkerFailed(e.to_string()),
        }
    }
}

struct AttemptOutcome {
    result: Result<ModelResponse, AttemptError>,
    emitted: bool,
    elapsed: Duration,
}

/// What happens after a failed attempt.
enum Plan {
    Next { want: Want, delay: Duration },
    GiveUp(RouteError),
}

/// The accumulating facts of one routed call.
struct Progress {
    attempt: u32,
    decisions: Vec<RoutingDecision>,
    cost: Option<f64>,
    last_error: Option<(String, String)>,
    last_endpoint: Option<String>,
    escalations: u32,
    /// A cascade answer that failed a gate, kept in case every later step fails.
    held: Option<(ModelResponse, String, bool)>,
}

impl Progress {
    fn add_cost(&mut self, c: Option<f64>) {
        if let Some(c) = c {
            self.cost = Some(self.cost.unwrap_or(0.0) + c);
        }
    }

    fn error(&self, mut e: RouteError) -> RouteError {
        e.attempts = self.attempt;
        e.endpoint = self.last_endpoint.clone();
        e.cost_usd = self.cost;
        e
    }
}

fn send_event(call: &RouteCall, ev: RouteEvent) {
    if let Some(tx) = &call.events {
        let _ = tx.send(ev);
    }
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    if d.is_zero() {
        return !cancel.is_cancelled();
    }
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

impl Router {
    /// Validate `routes` against the endpoints of `models` and build the
    /// router. Every endpoint is also a route of its own name.
    pub fn new(
        routes: Vec<RouteConfig>,
        models: ModelRegistry,
        budgets: BudgetLedger,
    ) -> Result<Router, ConfigError> {
        let compiled = compile(routes, &models)?;
        let order: Vec<Arc<Route>> = compiled.into_iter().map(Arc::new).collect();
        let routes = order
            .iter()
            .map(|r| (r.name().to_string(), r.clone()))
            .collect();
        let health = models
            .names()
            .into_iter()
            .filter_map(|name| {
                let cfg = models.get(&name)?.endpoint().config().breaker.clone();
                Some((
                    name.clone(),
                    Arc::new(Health {
                        breaker: Mutex::new(Breaker::new(name, cfg)),
                        ewma_ms: Mutex::new(None),
                    }),
                ))
            })
            .collect();
        Ok(Router {
            inner: Arc::new(Inner {
                routes,
                order,
                models,
                budgets,
                health,
            }),
        })
    }

    pub fn models(&self) -> &ModelRegistry {
        &self.inner.models
    }

    pub fn budgets(&self) -> &BudgetLedger {
        &self.inner.budgets
    }

    pub fn has_route(&self, name: &str) -> bool {
        self.inner.routes.contains_key(name)
    }

    /// Every route, explicit ones first (in config order), then the
    /// endpoints' implicit routes by name.
    pub fn routes(&self) -> Vec<RouteInfo> {
        self.inner
            .order
            .iter()
            .map(|r| RouteInfo {
                name: r.name().to_string(),
                strategy: r.cfg.strategy.as_str().to_string(),
                endpoints: r.cfg.endpoints.clone(),
                budget_usd: r.cfg.budget_usd,
                spent_usd: self.inner.budgets.route_spent_usd(r.name()),
                implicit: r.implicit,
            })
            .collect()
    }

    /// The most `req` may cost on `route`: the maximum of its endpoints'
    /// estimates; `None` for an unknown route or when none is priced.
    pub fn estimate_cost_usd(&self, route: &str, req: &ModelRequest) -> Option<f64> {
        let route = self.inner.routes.get(route)?;
        let tokens = req.estimated_input_tokens();
        route
            .cfg
            .endpoints
            .iter()
            .filter_map(|e| self.inner.models.get(e))
            .filter_map(|h| h.endpoint().config().estimate_cost_usd_for(tokens, req))
            .reduce(f64::max)
    }

    /// Every endpoint's circuit breaker, by endpoint name.
    pub fn breakers(&self) -> Vec<BreakerSnapshot> {
        let now = Instant::now();
        let mut out: Vec<BreakerSnapshot> = self
            .inner
            .health
            .values()
            .map(|h| lock(&h.breaker).snapshot(now))
            .collect();
        out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        out
    }

    /// Every endpoint's latency EWMA, load and breaker state, by name.
    pub fn endpoint_stats(&self) -> Vec<EndpointStats> {
        let now = Instant::now();
        self.inner
            .models
            .names()
            .into_iter()
            .filter_map(|name| {
                let h = self.inner.models.get(&name)?;
                let health = self.inner.health.get(&name)?;
                Some(EndpointStats {
                    ewma_latency_ms: *lock(&health.ewma_ms),
                    in_flight: h.in_flight(),
                    queued: h.queued(),
                    breaker: lock(&health.breaker).state(now),
                    endpoint: name,
                })
            })
            .collect()
    }

    /// The first routing decision for `request` on `route`, without making
    /// a call, reserving budget or taking a breaker probe: the candidate
    /// filtering and strategy of [`call`](Self::call) as a plain sync
    /// function (what the routing-overhead benchmark times).
    pub fn decide(
        &self,
        route: &str,
        request: &ModelRequest,
        needs_vision: bool,
        data_classes: &[String],
    ) -> Result<RoutingDecision, RouteError> {
        let Some(r) = self.inner.routes.get(route) else {
            return Err(unknown_route(route));
        };
        let st = self.call_state(r, request, needs_vision, data_classes);
        let cands = self.evaluate(&st, request, None, 0.0, &HashMap::new());
        let mut rng = fastrand::Rng::new();
        match self.choose(&st, &cands, &Want::First, &mut rng, None) {
            Some((idx, rule, reason)) => Ok(self.decision(&st, &cands, idx, rule, reason, 1)),
            None => Err(self.no_candidate_error(&st, &cands)),
        }
    }

    /// Route one call: pick an endpoint, attempt, retry, fail over, escalate
    /// (cascade), within the deadline and budgets.
    pub async fn call(&self, call: RouteCall) -> Result<Routed, RouteError> {
        let Some(route) = self.inner.routes.get(&call.route).cloned() else {
            return Err(unknown_route(&call.route));
        };
        let started = Instant::now();
        let span = tracing::info_span!(
            "route.call",
            baton.route = %route.name(),
            baton.strategy = route.cfg.strategy.as_str(),
            baton.endpoint = Empty,
            baton.attempts = Empty,
            error.type = Empty,
        );
        let result = self.run(&route, &call).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(r) => {
                span.record("baton.endpoint", r.endpoint.as_str());
                span.record("baton.attempts", i64::from(r.attempts));
                "ok"
            }
            Err(e) => {
                span.record("baton.attempts", i64::from(e.attempts));
                span.record("error.type", e.label());
                if let Some(ep) = &e.endpoint {
                    span.record("baton.endpoint", ep.as_str());
                }
                e.label()
            }
        };
        metrics().route_call(route.name(), outcome, started.elapsed().as_secs_f64());
        result
    }

    fn call_boxed<'a>(
        &'a self,
        call: RouteCall,
    ) -> Pin<Box<dyn Future<Output = Result<Routed, RouteError>> + Send + 'a>> {
        Box::pin(self.call(call))
    }

    fn call_state<'r>(
        &self,
        route: &'r Route,
        req: &ModelRequest,
        needs_vision: bool,
        data_classes: &[String],
    ) -> CallState<'r> {
        let n = route.cfg.endpoints.len();
        let input_tokens = estimate_input_tokens(req);
        let needs = required_capabilities(req, needs_vision);
        let statics = route
            .cfg
            .endpoints
            .iter()
            .map(|e| match self.inner.models.get(e) {
                Some(h) => static_exclusion(
                    h.endpoint().config(),
                    req,
                    &needs,
                    input_tokens,
                    data_classes,
                ),
                None => Some("endpoint not running".to_string()),
            })
            .collect();
        let mut order: Vec<usize> = (0..n).collect();
        let mut cx = None;
        if route.cfg.strategy == Strategy::ByComplexity {
            let x = &route.cfg.complexity;
            let c = complexity(
                req,
                input_tokens,
                x.tokens_for_max,
                &route.signals,
                x.tools_weight,
                &x.thresholds,
            );
            let tier = c.tier.min(n - 1);
            order = (tier..n).chain((0..tier).rev()).collect();
            cx = Some(c);
        }
        CallState {
            route,
            input_tokens,
            order,
            statics,
            excluded: vec![None; n],
            failed: vec![None; n],
            tries: vec![0; n],
            complexity: cx,
            pass_retry_after: None,
        }
    }

    /// Every endpoint of the route as the next selection sees it.
    fn evaluate(
        &self,
        st: &CallState<'_>,
        req: &ModelRequest,
        session: Option<&SessionBudget>,
        session_extra: f64,
        skip: &HashMap<usize, (String, Option<BudgetRejection>)>,
    ) -> Vec<Cand> {
        let route = st.route;
        let now = Instant::now();
        route
            .cfg
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let handle = self.inner.models.get(name);
                let health = self.inner.health.get(name);
                let estimate = handle
                    .and_then(|h| {
                        h.endpoint()
                            .config()
                            .estimate_cost_usd_for(st.input_tokens, req)
                    })
                    .unwrap_or(0.0);
                let score = match route.cfg.strategy {
                    Strategy::Fallback => None,
                    Strategy::Weighted => route.cfg.weights.get(i).map(|w| f64::from(*w)),
                    Strategy::LeastLatency => {
                        Some(health.and_then(|h| *lock(&h.ewma_ms)).unwrap_or(0.0))
                    }
                    Strategy::LeastInflight => handle.map(|h| (h.in_flight() + h.queued()) as f64),
                    Strategy::Cascade => Some(estimate),
                    Strategy::ByComplexity => st.complexity.as_ref().map(|c| c.score),
                };
                let mut cand = Cand {
                    eligible: false,
                    note: String::new(),
                    score,
                    estimate,
                    budget: None,
                };
                let note = if let Some(n) = &st.statics[i] {
                    Some(n.clone())
                } else if let Some(n) = &st.excluded[i] {
                    Some(n.clone())
                } else if let Some(n) = &st.failed[i] {
                    Some(n.clone())
                } else if let Some((n, rej)) = skip.get(&i) {
                    cand.budget = rej.clone();
                    Some(n.clone())
                } else if !health.is_some_and(|h| lock(&h.breaker).would_admit(now)) {
                    Some("breaker open".to_string())
                } else {
                    let check = self.inner.budgets.check(&ReserveRequest {
                        route: route.name(),
                        route_limit_usd: route.cfg.budget_usd,
                        session,
                        session_extra_usd: session_extra,
                        amount_usd: estimate,
                    });
                    match check {
                        Ok(()) => None,
                        Err(rej) => {
                            let note = format!("over budget: {rej}");
                            cand.budget = Some(rej);
                            Some(note)
                        }
                    }
                };
                match note {
                    Some(n) => cand.note = n,
                    None => cand.eligible = true,
                }
                cand
            })
            .collect()
    }

    /// The endpoint for the next attempt among the eligible candidates, the
    /// rule that fired and why.
    fn choose(
        &self,
        st: &CallState<'_>,
        cands: &[Cand],
        want: &Want,
        rng: &mut fastrand::Rng,
        last: Option<usize>,
    ) -> Option<(usize, &'static str, String)> {
        let route = st.route;
        let eligible: Vec<usize> = st
            .order
            .iter()
            .copied()
            .filter(|i| cands[*i].eligible)
            .collect();
        let first = *eligible.first()?;
        let names = &route.cfg.endpoints;
        match want {
            Want::Retry { idx, reason } if cands[*idx].eligible => {
                return Some((*idx, "retry_same", reason.clone()));
            }
            Want::Upgrade { reason } => {
                let window = |i: usize| {
                    self.inner
                        .models
                        .get(&names[i])
                        .and_then(|h| h.endpoint().config().context_window)
                        .unwrap_or(u32::MAX)
                };
                let idx = eligible.iter().copied().min_by_key(|i| window(*i))?;
                let reason = format!(
                    "{reason}; {} has a context window of {}",
                    names[idx],
                    window(idx)
                );
                return Some((idx, "context_length_upgrade", reason));
            }
            Want::Escalate { reason } => {
                return Some((first, "cascade_escalate", reason.clone()));
            }
            _ => {}
        }
        let (idx, rule, detail) = match route.cfg.strategy {
            Strategy::Fallback => (
                first,
                "first_healthy",
                "first eligible endpoint in order".to_string(),
            ),
            Strategy::Cascade => (
                first,
                "cascade_first",
                format!(
                    "cheapest eligible step, estimated ${:.6}",
                    cands[first].estimate
                ),
            ),
            Strategy::ByComplexity => {
                let breakdown = st
                    .complexity
                    .as_ref()
                    .map(|c| c.breakdown.clone())
                    .unwrap_or_default();
                let tier = st.order.first().copied().unwrap_or(0);
                let detail = if tier == first {
                    breakdown
                } else {
                    format!(
                        "{breakdown}; tier endpoint {} unavailable ({}), next: {}",
                        names[tier], cands[tier].note, names[first]
                    )
                };
                (first, "complexity_tier", detail)
            }
            Strategy::Weighted => {
                let items: Vec<(usize, u32)> = eligible
                    .iter()
                    .map(|i| (*i, route.cfg.weights.get(*i).copied().unwrap_or(0)))
                    .collect();
                let total: u64 = items.iter().map(|(_, w)| u64::from(*w)).sum();
                match weighted_pick(rng, &items) {
                    Some(i) => (
                        i,
                        "weighted_pick",
                        format!(
                            "weight {} of {total} among eligible endpoints",
                            route.cfg.weights.get(i).copied().unwrap_or(0)
                        ),
                    ),
                    None => (
                        first,
                        "weighted_pick",
                        "only zero-weight endpoints are eligible; first in order".to_string(),
                    ),
                }
            }
            Strategy::LeastLatency => {
                let score = |i: usize| cands[i].score.unwrap_or(0.0);
                let mut best = first;
                for i in &eligible {
                    if score(*i) < score(best) {
                        best = *i;
                    }
                }
                let detail = if score(best) == 0.0 {
                    "no latency measured yet; exploring".to_string()
                } else {
                    format!("lowest latency EWMA, {:.1} ms", score(best))
                };
                (best, "lowest_ewma", detail)
            }
            Strategy::LeastInflight => {
                let items: Vec<(usize, f64)> = eligible
                    .iter()
                    .map(|i| (*i, cands[*i].score.unwrap_or(0.0)))
                    .collect();
                let (pick, other) = p2c(rng, &items)?;
                let detail = match other {
                    Some(o) => format!(
                        "sampled {} ({} in flight or queued) and {} ({})",
                        names[pick],
                        cands[pick].score.unwrap_or(0.0),
                        names[o],
                        cands[o].score.unwrap_or(0.0)
                    ),
                    None => "one eligible endpoint".to_string(),
                };
                (pick, "p2c_fewer_inflight", detail)
            }
        };
        match want {
            Want::First if eligible.len() == 1 => {
                let detail = match &st.complexity {
                    Some(c) => format!("the only eligible endpoint; {}", c.breakdown),
                    None => "the only eligible endpoint".to_string(),
                };
                Some((idx, "only_candidate", detail))
            }
            Want::First => Some((idx, rule, detail)),
            Want::NewPass { pass } => {
                let rule = if last == Some(idx) {
                    "retry_same"
                } else {
                    "failover"
                };
                Some((
                    idx,
                    rule,
                    format!("pass {pass} after every candidate failed; {detail}"),
                ))
            }
            Want::Failover { reason } | Want::Retry { reason, .. } => {
                Some((idx, "failover", format!("{reason}; {detail}")))
            }
            Want::Upgrade { .. } | Want::Escalate { .. } => None,
        }
    }

    fn decision(
        &self,
        st: &CallState<'_>,
        cands: &[Cand],
        idx: usize,
        rule: &str,
        reason: String,
        attempt: u32,
    ) -> RoutingDecision {
        let route = st.route;
        RoutingDecision {
            route: route.name().to_string(),
            strategy: route.cfg.strategy.as_str().to_string(),
            candidates: route
                .cfg
                .endpoints
                .iter()
                .zip(cands)
                .map(|(name, c)| RouteCandidate {
                    endpoint: name.clone(),
                    eligible: c.eligible,
                    score: c.score,
                    note: c.note.clone(),
                })
                .collect(),
            chosen: route.cfg.endpoints[idx].clone(),
            rule: rule.to_string(),
            reason,
            attempt,
        }
    }

    fn candidates_summary(st: &CallState<'_>, cands: &[Cand]) -> String {
        st.route
            .cfg
            .endpoints
            .iter()
            .zip(cands)
            .map(|(n, c)| {
                if c.eligible {
                    format!("{n}: eligible")
                } else {
                    format!("{n}: {}", c.note)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The error when no candidate is left and no attempt failed.
    fn no_candidate_error(&self, st: &CallState<'_>, cands: &[Cand]) -> RouteError {
        if let Some(rej) = cands.iter().find_map(|c| c.budget.clone()) {
            return RouteError::new(RouteErrorKind::BudgetExhausted, rej.to_string());
        }
        RouteError::new(
            RouteErrorKind::NoEligibleEndpoint,
            format!(
                "no eligible endpoint for route {}: {}",
                st.route.name(),
                Self::candidates_summary(st, cands)
            ),
        )
    }

    /// Nothing is eligible now: pass again after a backoff, or give up.
    #[allow(clippy::too_many_arguments)]
    fn after_no_candidate(
        &self,
        st: &mut CallState<'_>,
        call: &RouteCall,
        progress: &Progress,
        cands: &[Cand],
        pass: u32,
        deadline: Option<Instant>,
        session_extra: f64,
    ) -> Plan {
        let route = st.route;
        let any_failed = st.failed.iter().any(Option::is_some);
        if any_failed && progress.attempt < route.max_attempts {
            // Would anything be eligible in a new pass?
            let saved_failed = st.failed.clone();
            let saved_tries = st.tries.clone();
            let saved_ra = st.pass_retry_after;
            st.new_pass();
            let again = self.evaluate(
                st,
                &call.request,
                call.session_budget.as_ref(),
                session_extra,
                &HashMap::new(),
            );
            st.failed = saved_failed;
            st.tries = saved_tries;
            st.pass_retry_after = saved_ra;
            if again.iter().any(|c| c.eligible) {
                let retry = st
                    .order
                    .first()
                    .and_then(|i| self.inner.models.get(&route.cfg.endpoints[*i]))
                    .map(|h| h.endpoint().config().retry.clone())
                    .unwrap_or_default();
                let delay = backoff_delay(&retry, pass, st.pass_retry_after);
                let fits = deadline.is_none_or(|d| Instant::now() + delay < d);
                if fits {
                    return Plan::Next {
                        want: Want::NewPass { pass: pass + 1 },
                        delay,
                    };
                }
                let (ep, err) = progress.last_error.clone().unwrap_or_default();
                return Plan::GiveUp(progress.error(RouteError::new(
                    RouteErrorKind::Exhausted,
                    format!(
                        "route {}: every candidate failed and the backoff of {} ms before another pass would pass the deadline; last error from {ep}: {err}",
                        route.name(),
                        delay.as_millis()
                    ),
                )));
            }
        }
        if progress.attempt >= route.max_attempts
            && let Some((ep, err)) = &progress.last_error
        {
            return Plan::GiveUp(progress.error(RouteError::new(
                RouteErrorKind::Exhausted,
                format!(
                    "route {}: all {} attempts failed; last error from {ep}: {err}",
                    route.name(),
                    progress.attempt
                ),
            )));
        }
        if let Some(rej) = cands.iter().find_map(|c| c.budget.clone()) {
            return Plan::GiveUp(progress.error(RouteError::new(
                RouteErrorKind::BudgetExhausted,
                rej.to_string(),
            )));
        }
        if let Some((ep, err)) = &progress.last_error {
            return Plan::GiveUp(progress.error(RouteError::new(
                RouteErrorKind::Exhausted,
                format!(
                    "route {}: no candidate left after {} attempt(s) ({}); last error from {ep}: {err}",
                    route.name(),
                    progress.attempt,
                    Self::candidates_summary(st, cands)
                ),
            )));
        }
        Plan::GiveUp(progress.error(self.no_candidate_error(st, cands)))
    }

    fn budget_rejected(e: &RouteError, call: &RouteCall, route: &Route) {
        if e.kind == RouteErrorKind::BudgetExhausted {
            let scope = if e.message.starts_with("budget of session") {
                "session"
            } else {
                "route"
            };
            metrics().budget_rejection(scope);
            tracing::info!(route = %route.name(), session = ?call.session_budget.as_ref().map(|s| &s.scope), "{}", e.message);
        }
    }

    /// The whole routed call.
    async fn run(&self, route: &Route, call: &RouteCall) -> Result<Routed, RouteError> {
        let deadline = match (call.deadline, route.cfg.deadline_ms) {
            (Some(d), Some(ms)) => Some(d.min(Instant::now() + Duration::from_millis(ms))),
            (d, Some(ms)) => d.or(Some(Instant::now() + Duration::from_millis(ms))),
            (d, None) => d,
        };
        let mut st = self.call_state(route, &call.request, call.needs_vision, &call.data_classes);
        let mut rng = fastrand::Rng::new();
        let mut p = Progress {
            attempt: 0,
            decisions: Vec::new(),
            cost: None,
            last_error: None,
            last_endpoint: None,
            escalations: 0,
            held: None,
        };
        let mut want = Want::First;
        let mut delay = Duration::ZERO;
        let mut pass: u32 = 1;
        let mut session_extra = 0.0;
        let mut last_idx: Option<usize> = None;

        let result = 'call: loop {
            if !sleep_or_cancel(delay, &call.cancel).await {
                break 'call Err(
                    p.error(RouteError::new(RouteErrorKind::Cancelled, "call cancelled"))
                );
            }
            delay = Duration::ZERO;
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                break 'call Err(p.error(RouteError::new(
                    RouteErrorKind::DeadlineExceeded,
                    format!(
                        "route {}: deadline exceeded after {} attempt(s)",
                        route.name(),
                        p.attempt
                    ),
                )));
            }
            if let Want::NewPass { pass: n } = want {
                pass = n;
                st.new_pass();
            }

            // Pick an endpoint and take its breaker permit and budget.
            let mut skip: HashMap<usize, (String, Option<BudgetRejection>)> = HashMap::new();
            let picked = loop {
                let cands = self.evaluate(
                    &st,
                    &call.request,
                    call.session_budget.as_ref(),
                    session_extra,
                    &skip,
                );
                if p.attempt >= route.max_attempts {
                    break Err(cands);
                }
                let Some((idx, rule, reason)) = self.choose(&st, &cands, &want, &mut rng, last_idx)
                else {
                    break Err(cands);
                };
                let name = &route.cfg.endpoints[idx];
                let Some(health) = self.inner.health.get(name) else {
                    skip.insert(idx, ("endpoint not running".into(), None));
                    continue;
                };
                let Some(adm) = lock(&health.breaker).try_acquire(Instant::now()) else {
                    skip.insert(idx, ("breaker open".into(), None));
                    continue;
                };
                let permit = Permit {
                    health: health.clone(),
                    adm,
                    done: false,
                };
                match self.inner.budgets.reserve(&ReserveRequest {
                    route: route.name(),
                    route_limit_usd: route.cfg.budget_usd,
                    session: call.session_budget.as_ref(),
                    session_extra_usd: session_extra,
                    amount_usd: cands[idx].estimate,
                }) {
                    Ok(reservation) => {
                        // Cascade steps stream only when no later step could follow.
                        let last_step = route.cfg.strategy != Strategy::Cascade
                            || !st
                                .order
                                .iter()
                                .skip_while(|i| **i != idx)
                                .skip(1)
                                .any(|i| cands[*i].eligible);
                        let reason = if rule == "cascade_escalate" && last_step {
                            format!(
                                "{reason}; last step: its answer is accepted even if a gate fails"
                            )
                        } else {
                            reason
                        };
                        let d = self.decision(&st, &cands, idx, rule, reason, p.attempt + 1);
                        break Ok((idx, d, permit, reservation, last_step));
                    }
                    Err(rej) => {
                        drop(permit);
                        skip.insert(idx, (format!("over budget: {rej}"), Some(rej)));
                    }
                }
            };
            let (idx, decision, permit, reservation, last_step) = match picked {
                Ok(x) => x,
                Err(cands) => {
                    match self.after_no_candidate(
                        &mut st,
                        call,
                        &p,
                        &cands,
                        pass,
                        deadline,
                        session_extra,
                    ) {
                        Plan::Next { want: w, delay: d } => {
                            want = w;
                            delay = d;
                            continue 'call;
                        }
                        Plan::GiveUp(e) => break 'call Err(e),
                    }
                }
            };

            // The attempt.
            p.attempt += 1;
            st.tries[idx] += 1;
            last_idx = Some(idx);
            let name = route.cfg.endpoints[idx].clone();
            p.last_endpoint = Some(name.clone());
            metrics().routing_decision(route.name(), route.cfg.strategy.as_str(), &decision.rule);
            tracing::debug!(
                route = %route.name(), endpoint = %name, rule = %decision.rule,
                reason = %decision.reason, attempt = p.attempt, "routing decision"
            );
            p.decisions.push(decision.clone());
            send_event(call, RouteEvent::Decision(decision));
            let Some(handle) = self.inner.models.get(&name) else {
                break 'call Err(p.error(RouteError::new(
                    RouteErrorKind::NoEligibleEndpoint,
                    format!("endpoint {name} is not running"),
                )));
            };
            let forward = if last_step {
                call.deltas.as_ref()
            } else {
                None
            };
            let cfg = handle.endpoint().config();
            let span = tracing::info_span!(
                "model.call",
                gen_ai.operation.name = "chat",
                gen_ai.provider.name = handle.endpoint().provider().kind(),
                gen_ai.request.model = %cfg.model,
                gen_ai.response.model = Empty,
                gen_ai.usage.input_tokens = Empty,
                gen_ai.usage.output_tokens = Empty,
                baton.route = %route.name(),
                baton.endpoint = %name,
                baton.attempt = i64::from(p.attempt),
                otel.kind = "client",
                otel.status_code = Empty,
                error.type = Empty,
            );
            let outcome = self
                .run_attempt(handle, &call.request, forward, &call.cancel, deadline)
                .instrument(span.clone())
                .await;
            let secs = outcome.elapsed.as_secs_f64();

            let resp = match outcome.result {
                Ok(resp) => resp,
                Err(err) => {
                    let class = err.class();
                    span.record("error.type", class);
                    span.record("otel.status_code", "error");
                    metrics().model_attempt(&name, route.name(), class, secs);
                    metrics().model_error(&name, class);
                    drop(reservation); // failed attempts are not billed
                    let msg = err.message();
                    p.last_error = Some((name.clone(), format!("{class}: {msg}")));
                    // Breaker bookkeeping.
                    let counts = match &err {
                        AttemptError::Provider(e) => {
                            e.is_transient() || e.kind == ProviderErrorKind::Auth
                        }
                        _ => false,
                    };
                    if counts {
                        permit.failure();
                    } else {
                        permit.neutral();
                    }
                    if outcome.emitted
                        && let Some(sink) = &call.deltas
                    {
                        let _ = sink.send(Delta::Restart);
                    }
                    let plan = self.plan_after_failure(
                        &mut st,
                        call,
                        &p,
                        idx,
                        &err,
                        pass,
                        deadline,
                        session_extra,
                    );
                    let retry_in_ms = match &plan {
                        Plan::Next { delay, .. } => Some(delay.as_millis() as u64),
                        Plan::GiveUp(_) => None,
                    };
                    tracing::info!(
                        route = %route.name(), endpoint = %name, attempt = p.attempt,
                        kind = class, retry_in_ms = ?retry_in_ms, "model attempt failed: {msg}"
                    );
                    send_event(
                        call,
                        RouteEvent::AttemptFailed(AttemptFailure {
                            endpoint: name.clone(),
                            attempt: p.attempt,
                            kind: class.to_string(),
                            message: msg,
                            retry_in_ms,
                            retracted: outcome.emitted,
                        }),
                    );
                    match plan {
                        Plan::Next { want: w, delay: d } => {
                            want = w;
                            delay = d;
                            continue 'call;
                        }
                        Plan::GiveUp(e) => break 'call Err(e),
                    }
                }
            };

            // A successful attempt.
            {
                let mut ewma = lock(&permit.health.ewma_ms);
                let ms = secs * 1000.0;
                let alpha = route.cfg.ewma_alpha;
                *ewma = Some(match *ewma {
                    Some(prev) => alpha * ms + (1.0 - alpha) * prev,
                    None => ms,
                });
            }
            permit.success();
            let cost = cfg.cost_usd(resp.usage);
            reservation.settle(cost.unwrap_or(0.0));
            p.add_cost(cost);
            session_extra += cost.unwrap_or(0.0);
            span.record("gen_ai.response.model", resp.model.as_str());
            span.record(
                "gen_ai.usage.input_tokens",
                i64::try_from(resp.usage.input_tokens).unwrap_or(i64::MAX),
            );
            span.record(
                "gen_ai.usage.output_tokens",
                i64::try_from(resp.usage.output_tokens).unwrap_or(i64::MAX),
            );
            metrics().model_attempt(&name, route.name(), "ok", secs);
            metrics().usage(
                &name,
                route.name(),
                resp.usage.input_tokens,
                resp.usage.output_tokens,
                cost.unwrap_or(0.0),
            );

            // Cascade gates.
            if route.cfg.strategy == Strategy::Cascade && !last_step {
                match self
                    .gates(route, call, &resp, deadline, &mut p, &mut session_extra)
                    .await
                {
                    Ok(_) => {}
                    Err(GateFailure::Cancelled) => {
                        break 'call Err(
                            p.error(RouteError::new(RouteErrorKind::Cancelled, "call cancelled"))
                        );
                    }
                    Err(GateFailure::Failed(reason)) => {
                        p.escalations += 1;
                        st.excluded[idx] = Some(format!("escalated: {reason}"));
                        p.held = Some((resp, name.clone(), false));
                        send_event(
                            call,
                            RouteEvent::AttemptFailed(AttemptFailure {
                                endpoint: name.clone(),
                                attempt: p.attempt,
                                kind: "quality_gate".into(),
                                message: reason.clone(),
                                retry_in_ms: Some(0),
                                retracted: false,
                            }),
                        );
                        want = Want::Escalate {
                            reason: format!("{name} failed gate {reason}"),
                        };
                        continue 'call;
                    }
                }
            }
            break 'call Ok((resp, name, outcome.emitted));
        };

        let (mut resp, endpoint, emitted) = match result {
            Ok(x) => x,
            Err(e) => {
                // A cascade keeps the last answer that failed a gate for
                // when every later step fails.
                let keep = matches!(
                    e.kind,
                    RouteErrorKind::Exhausted
                        | RouteErrorKind::NoEligibleEndpoint
                        | RouteErrorKind::BudgetExhausted
                        | RouteErrorKind::DeadlineExceeded
                        | RouteErrorKind::ContextLength
                );
                match p.held.take() {
                    Some(held) if keep => {
                        tracing::warn!(
                            route = %route.name(), endpoint = %held.1,
                            "later cascade steps failed ({}); accepting the earlier answer", e.message
                        );
                        held
                    }
                    _ => {
                        Self::budget_rejected(&e, call, route);
                        return Err(e);
                    }
                }
            }
        };
        // A cascade ran its steps without streaming: hand the accepted
        // answer to a streaming caller at once. (An endpoint that does not
        // stream answers through the final message only.)
        if !emitted
            && route.cfg.strategy == Strategy::Cascade
            && let Some(sink) = &call.deltas
            && !resp.message.content.is_empty()
        {
            let _ = sink.send(Delta::Text(resp.message.content.clone()));
        }
        resp.attempts = p.attempt;
        Ok(Routed {
            response: resp,
            endpoint,
            attempts: p.attempt,
            cost_usd: p.cost,
            decisions: p.decisions,
            escalations: p.escalations,
        })
    }

    /// What to do after attempt `idx` failed with `err`.
    #[allow(clippy::too_many_arguments)]
    fn plan_after_failure(
        &self,
        st: &mut CallState<'_>,
        call: &RouteCall,
        p: &Progress,
        idx: usize,
        err: &AttemptError,
        pass: u32,
        deadline: Option<Instant>,
        session_extra: f64,
    ) -> Plan {
        let route = st.route;
        let name = route.cfg.endpoints[idx].clone();
        let give_up = |kind, msg: String| Plan::GiveUp(p.error(RouteError::new(kind, msg)));
        let want = match err {
            AttemptError::Cancelled => {
                return give_up(RouteErrorKind::Cancelled, "call cancelled".into());
            }
            AttemptError::Deadline => {
                return give_up(
                    RouteErrorKind::DeadlineExceeded,
                    format!(
                        "route {}: deadline exceeded during attempt {} on {name}",
                        route.name(),
                        p.attempt
                    ),
                );
            }
            AttemptError::Provider(e) => match &e.kind {
                ProviderErrorKind::ContentPolicy => {
                    return give_up(RouteErrorKind::ContentPolicy, e.message.clone());
                }
                ProviderErrorKind::InvalidRequest => {
                    return give_up(RouteErrorKind::InvalidRequest, e.message.clone());
                }
                ProviderErrorKind::Client { status } if *status != 404 => {
                    return give_up(RouteErrorKind::InvalidRequest, e.message.clone());
                }
                ProviderErrorKind::ContextLength => {
                    let window = |i: usize| {
                        self.inner
                            .models
                            .get(&route.cfg.endpoints[i])
                            .and_then(|h| h.endpoint().config().context_window)
                    };
                    let failed = window(idx);
                    for i in 0..st.excluded.len() {
                        let larger = matches!((window(i), failed), (Some(w), Some(f)) if w > f);
                        if !larger && st.excluded[i].is_none() {
                            st.excluded[i] = Some(format!(
                                "context window not larger than {name}'s ({})",
                                failed.map_or("unknown".to_string(), |f| f.to_string())
                            ));
                        }
                    }
                    let any = self
                        .evaluate(
                            st,
                            &call.request,
                            call.session_budget.as_ref(),
                            session_extra,
                            &HashMap::new(),
                        )
                        .iter()
                        .any(|c| c.eligible);
                    if !any {
                        return give_up(
                            RouteErrorKind::ContextLength,
                            format!(
                                "{}; no endpoint of route {} with a larger context window is available",
                                e.message,
                                route.name()
                            ),
                        );
                    }
                    return Plan::Next {
                        want: Want::Upgrade {
                            reason: format!("{name} refused the request: context length exceeded"),
                        },
                        delay: Duration::ZERO,
                    };
                }
                ProviderErrorKind::Auth | ProviderErrorKind::Client { .. } => {
                    st.excluded[idx] = Some(format!("misconfigured: {}", e.class()));
                    Want::Failover {
                        reason: format!("{name} failed: {} ({})", e.class(), e.message),
                    }
                }
                _ => {
                    // Transient.
                    if let Some(ra) = e.retry_after() {
                        st.pass_retry_after = Some(st.pass_retry_after.map_or(ra, |x| x.min(ra)));
                    }
                    let retry = self
                        .inner
                        .models
                        .get(&name)
                        .map(|h| h.endpoint().config().retry.clone())
                        .unwrap_or_default();
                    if st.tries[idx] < retry.max_attempts && p.attempt < route.max_attempts {
                        let delay = backoff_delay(&retry, st.tries[idx], e.retry_after());
                        let fits = deadline.is_none_or(|d| Instant::now() + delay < d);
                        let healthy = self
                            .inner
                            .health
                            .get(&name)
                            .is_some_and(|h| lock(&h.breaker).would_admit(Instant::now()));
                        if fits && healthy {
                            return Plan::Next {
                                want: Want::Retry {
                                    idx,
                                    reason: format!(
                                        "retry {} of {} on {name} after {}: {}",
                                        st.tries[idx] + 1,
                                        retry.max_attempts,
                                        e.class(),
                                        e.message
                                    ),
                                },
                                delay,
                            };
                        }
                    }
                    st.failed[idx] = Some(format!("failed: {}", e.class()));
                    Want::Failover {
                        reason: format!("{name} failed: {} ({})", e.class(), e.message),
                    }
                }
            },
            AttemptError::Stopped(m) => {
                st.excluded[idx] = Some("stopped".into());
                Want::Failover {
                    reason: format!("{name} failed: {m}"),
                }
            }
            AttemptError::Overloaded(m) | AttemptError::WorkerFailed(m) => {
                st.failed[idx] = Some(format!("failed: {}", err.class()));
                Want::Failover {
                    reason: format!("{name} failed: {m}"),
                }
            }
        };
        // Fail over at once if anyone is left, else pass again or give up.
        let cands = self.evaluate(
            st,
            &call.request,
            call.session_budget.as_ref(),
            session_extra,
            &HashMap::new(),
        );
        if p.attempt < route.max_attempts && cands.iter().any(|c| c.eligible) {
            return Plan::Next {
                want,
                delay: Duration::ZERO,
            };
        }
        self.after_no_candidate(st, call, p, &cands, pass, deadline, session_extra)
    }

    /// One attempt on `handle`, under the deadline, forwarding deltas.
    async fn run_attempt(
        &self,
        handle: &ExecutorHandle,
        request: &Arc<ModelRequest>,
        forward: Option<&DeltaSink>,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> AttemptOutcome {
        let started = Instant::now();
        let child = cancel.child_token();
        // Dropped early (deadline, cancel, the caller went away): abort the job.
        let _abort = child.clone().drop_guard();
        let (tx, mut rx) = match forward {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let (mut job, reply) = ModelJob::new(request.clone(), tx, child.clone());
        job.single_attempt = true;
        if let Err(e) = handle.submit(job) {
            return AttemptOutcome {
                result: Err(AttemptError::from_model(e)),
                emitted: false,
                elapsed: started.elapsed(),
            };
        }
        let endpoint = handle.endpoint().name();
        let mut emitted = false;
        let pass_on = |d: Delta, emitted: &mut bool| {
            if let (Delta::Text(t), Some(sink)) = (d, forward) {
                if !*emitted {
                    metrics().time_to_first_token(endpoint, started.elapsed().as_secs_f64());
                }
                *emitted = true;
                let _ = sink.send(Delta::Text(t));
            }
        };
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until_deadline);
        tokio::pin!(reply);
        let result = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break Err(AttemptError::Cancelled),
                _ = &mut until_deadline => break Err(AttemptError::Deadline),
                Some(d) = async {
                    match rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => pass_on(d, &mut emitted),
                r = &mut reply => {
                    if let Some(rx) = rx.as_mut() {
                        while let Ok(d) = rx.try_recv() {
                            pass_on(d, &mut emitted);
                        }
                    }
                    break match r {
                        Ok(Ok(resp)) => Ok(resp),
                        Ok(Err(e)) => Err(AttemptError::from_model(e)),
                        Err(_) => Err(AttemptError::Stopped(format!("endpoint {endpoint} is stopped"))),
                    };
                }
            }
        };
        AttemptOutcome {
            result,
            emitted,
            elapsed: started.elapsed(),
        }
    }

    /// Apply a cascade's gates to `resp`: `Ok(detail)` to accept it.
    async fn gates(
        &self,
        route: &Route,
        call: &RouteCall,
        resp: &ModelResponse,
        deadline: Option<Instant>,
        p: &mut Progress,
        session_extra: &mut f64,
    ) -> Result<String, GateFailure> {
        let c = &route.cfg.cascade;
        let mut passed = Vec::new();
        let has_text = resp.message.tool_calls.is_empty();
        // 1. JSON Schema: the route's, else the request's.
        let request_schema;
        let schema = match (&route.schema, &call.request.json_schema) {
            (Some(s), _) => Some(s.as_ref()),
            (None, Some(s)) => match jsonschema::validator_for(s) {
                Ok(v) => {
                    request_schema = v;
                    Some(&request_schema)
                }
                Err(e) => {
                    tracing::warn!(route = %route.name(), "request json_schema is invalid, not used as a gate: {e}");
                    None
                }
            },
            (None, None) => None,
        };
        if let Some(schema) = schema
            && has_text
        {
            gates::schema_gate(schema, &resp.message.content).map_err(GateFailure::Failed)?;
            passed.push("json_schema".to_string());
        }
        // 2. Confidence.
        if let Some(min) = c.min_confidence {
            let detail = gates::confidence_gate(min, resp, c.on_missing_confidence)
                .map_err(|r| GateFailure::Failed(format!("min_confidence: {r}")))?;
            passed.push(detail);
        }
        // 3. Evaluator.
        if let Some(evaluator) = &c.evaluator {
            let prompt = gates::evaluator_prompt(
                c.evaluator_prompt.as_deref(),
                last_user_message(&call.request),
                &gates::render_answer(resp),
            );
            let session_budget = call.session_budget.as_ref().map(|s| SessionBudget {
                scope: s.scope.clone(),
                limit_usd: s.limit_usd,
                spent_usd: s.spent_usd + *session_extra,
            });
            let eval_call = RouteCall {
                route: evaluator.clone(),
                request: Arc::new(ModelRequest::new(vec![Message::user(prompt)])),
                needs_vision: false,
                data_classes: call.data_classes.clone(),
                deltas: None,
                events: None,
                cancel: call.cancel.clone(),
                deadline,
                session_budget,
            };
            match self.call_boxed(eval_call).await {
                Ok(r) => {
                    p.add_cost(r.cost_usd);
                    *session_extra += r.cost_usd.unwrap_or(0.0);
                    let verdict = r.response.message.content.trim().to_string();
                    if !gates::evaluator_passes(&verdict) {
                        let short: String = verdict.chars().take(80).collect();
                        return Err(GateFailure::Failed(format!(
                            "evaluator: {evaluator} said {short:?}, not PASS"
                        )));
                    }
                    passed.push(format!("evaluator {evaluator}: PASS"));
                }
                Err(e) if e.kind == RouteErrorKind::Cancelled => {
                    return Err(GateFailure::Cancelled);
                }
                Err(e) => {
                    p.add_cost(e.cost_usd);
                    *session_extra += e.cost_usd.unwrap_or(0.0);
                    return Err(GateFailure::Failed(format!(
                        "evaluator: {evaluator} failed: {}",
                        e.message
                    )));
                }
            }
        }
        Ok(passed.join("; "))
    }
}

enum GateFailure {
    Failed(String),
    Cancelled,
}

fn unknown_route(route: &str) -> RouteError {
    RouteError::new(
        RouteErrorKind::UnknownRoute,
        format!("unknown route {route:?}"),
    )
}

/// A breaker admission; neutral when dropped without an outcome.
struct Permit {
    health: Arc<Health>,
    adm: Admission,
    done: bool,
}

impl Permit {
    fn success(mut self) {
        self.done = true;
        lock(&self.health.breaker).on_success(self.adm, Instant::now());
    }

    fn failure(mut self) {
        self.done = true;
        lock(&self.health.breaker).on_failure(self.adm, Instant::now());
    }

    fn neutral(mut self) {
        self.done = true;
        lock(&self.health.breaker).on_neutral(self.adm);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.health.breaker).on_neutral(self.adm);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use baton_models::{Capability, EndpointConfig, echo_default};
    use baton_types::ToolDefinition;
    use serde_json::json;

    use super::*;

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
}
