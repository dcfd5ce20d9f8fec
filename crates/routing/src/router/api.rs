//! The [`Router`]'s public API: building it, listing its routes, endpoints
//! and breakers, deciding (without calling), and routing a call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use baton_metrics::metrics;
use baton_models::{ModelRegistry, ModelRequest};
use baton_types::RoutingDecision;
use tokio::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

use super::call_loop::CallLoop;
use super::candidates::{Candidates, Want};
use super::context::CallContext;
use super::state::{Health, Inner, Router, lock};
use super::types::{EndpointStats, RouteCall, RouteError, RouteInfo, Routed};
use crate::breaker::{Breaker, BreakerSnapshot};
use crate::budget::BudgetLedger;
use crate::config::{ConfigError, Route, RouteConfig, compile};

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
                Some((name.clone(), Arc::new(Health::new(Breaker::new(name, cfg)))))
            })
            .collect();
        Ok(Router {
            inner: Arc::new(Inner {
                routes,
                order,
                models,
                budgets,
                health,
                observer: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Tell `observer` of every attempt settled from now on (its endpoint,
    /// model, route, outcome and duration; cancelled attempts are not
    /// told). Set once; false when an observer is set already.
    pub fn observe_attempts(&self, observer: super::types::AttemptObserver) -> bool {
        self.inner.observer.set(observer).is_ok()
    }

    /// Tell the observer of an attempt.
    pub(super) fn observed(&self, attempt: &super::types::AttemptSeen<'_>) {
        if let Some(o) = self.inner.observer.get() {
            o(attempt);
        }
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

    /// Whether some endpoint of `route` is certified for every one of
    /// `classes` (data classes only: capabilities, health and budgets are
    /// not considered).
    pub fn certified_for(&self, route: &str, classes: &[String]) -> bool {
        let Some(r) = self.inner.routes.get(route) else {
            return false;
        };
        r.cfg.endpoints.iter().any(|e| {
            self.inner.models.get(e).is_some_and(|m| {
                let have = &m.endpoint().config().data_classes;
                classes.iter().all(|c| have.contains(c))
            })
        })
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
            return Err(RouteError::unknown_route(route));
        };
        let st = Candidates::new(&self.inner, r, request, needs_vision, data_classes, None);
        let cands = st.evaluate(None, 0.0, &HashMap::new());
        let mut rng = fastrand::Rng::new();
        match st.choose(&cands, &Want::First, &mut rng, None) {
            Some((idx, rule, reason)) => Ok(st.decision(&cands, idx, rule, reason, 1)),
            None => Err(st.no_candidate_error(&cands)),
        }
    }

    /// Route one call: pick an endpoint, attempt, retry, fail over, escalate
    /// (cascade), within the deadline and budgets.
    pub async fn call(&self, call: RouteCall) -> Result<Routed, RouteError> {
        let Some(route) = self.inner.routes.get(&call.route).cloned() else {
            return Err(RouteError::unknown_route(&call.route));
        };
        if call.request.embed.is_some() && route.cfg.strategy == crate::config::Strategy::Cascade {
            // A cascade's gates judge answers; vectors have none to judge.
            return Err(RouteError::new(
                super::types::RouteErrorKind::InvalidRequest,
                format!(
                    "route {} is a cascade, whose quality gates judge text answers; embeddings need a route of another strategy",
                    route.name()
                ),
            ));
        }
        let started = Instant::now();
        let span = tracing::info_span!(
            "route.call",
            baton.route = %route.name(),
            baton.strategy = route.cfg.strategy.as_str(),
            baton.endpoint = Empty,
            baton.attempts = Empty,
            error.type = Empty,
        );
        let result = async {
            CallLoop::new(CallContext::new(self, &route, &call))
                .run()
                .await
        }
        .instrument(span.clone())
        .await;
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

    /// [`call`](Self::call) as a boxed future: a cascade's evaluator is a
    /// routed call made from within a routed call.
    pub(super) fn call_boxed<'a>(
        &'a self,
        call: RouteCall,
    ) -> Pin<Box<dyn Future<Output = Result<Routed, RouteError>> + Send + 'a>> {
        Box::pin(self.call(call))
    }
}
