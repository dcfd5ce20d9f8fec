//! Candidate choice: the route's endpoints as one call sees them
//! ([`Candidates`]), which of them are eligible for the next attempt
//! ([`Cand`]), which one the route's strategy picks for what the attempt is
//! for ([`Want`]), and the [`RoutingDecision`] that records the choice.

use std::collections::HashMap;
use std::time::Duration;

use baton_models::ModelRequest;
use baton_types::{RouteCandidate, RoutingDecision};
use tokio::time::Instant;

use super::state::{Inner, lock};
use super::types::{OwnKeys, RouteError, RouteErrorKind};
use crate::budget::{BudgetRejection, ReserveRequest, SessionBudget};
use crate::config::{Route, Strategy};
use crate::select::{
    Complexity, complexity, estimate_input_tokens, p2c, required_capabilities, static_exclusion,
    weighted_pick,
};

/// A candidate as one selection saw it.
#[derive(Debug, Clone)]
pub(super) struct Cand {
    pub(super) eligible: bool,
    pub(super) note: String,
    pub(super) score: Option<f64>,
    /// The most an attempt on it may cost (what a reservation takes).
    pub(super) estimate: f64,
    /// Why the budget refused it, when it did.
    pub(super) budget: Option<BudgetRejection>,
}

/// What the next selection is for.
#[derive(Debug, Clone)]
pub(super) enum Want {
    First,
    Retry {
        idx: usize,
        reason: String,
    },
    Failover {
        reason: String,
    },
    Upgrade {
        reason: String,
    },
    Escalate {
        reason: String,
    },
    NewPass {
        pass: u32,
    },
    /// A second, concurrent attempt on another endpoint while the first
    /// has produced nothing (`hedge_after_ms`).
    Hedge {
        reason: String,
    },
}

/// The route's endpoints as one call sees them, indexed like the route's
/// endpoints: what rules each out, for the rest of the call or for the
/// current pass, and how often each was tried in this pass.
pub(super) struct Candidates<'r> {
    inner: &'r Inner,
    pub(super) route: &'r Route,
    request: &'r ModelRequest,
    /// The request's estimated input tokens, counted once per call.
    input_tokens: u64,
    /// This call's preference order (by_complexity: the tier, higher tiers,
    /// then lower ones).
    pub(super) order: Vec<usize>,
    /// Ruled out by the request itself (capabilities, context window, data
    /// classes) or not running.
    statics: Vec<Option<String>>,
    /// Out for the rest of the call (auth, not found, too small a context,
    /// a cascade step already taken).
    pub(super) excluded: Vec<Option<String>>,
    /// Failed transiently in the current pass.
    pub(super) failed: Vec<Option<String>>,
    /// Attempts in the current pass.
    pub(super) tries: Vec<u32>,
    complexity: Option<Complexity>,
    /// The smallest `Retry-After` seen in the current pass.
    pub(super) pass_retry_after: Option<Duration>,
}

impl<'r> Candidates<'r> {
    /// Start a new pass: forget this pass's failures, tries and `Retry-After`.
    pub(super) fn new_pass(&mut self) {
        self.failed.iter_mut().for_each(|f| *f = None);
        self.tries.iter_mut().for_each(|t| *t = 0);
        self.pass_retry_after = None;
    }

    /// The candidates of `route` for `request`, statics evaluated once.
    pub(super) fn new(
        inner: &'r Inner,
        route: &'r Route,
        request: &'r ModelRequest,
        needs_vision: bool,
        data_classes: &[String],
        own_keys: Option<&OwnKeys>,
    ) -> Self {
        let n = route.cfg.endpoints.len();
        let input_tokens = estimate_input_tokens(request);
        let needs = required_capabilities(request, needs_vision);
        let statics = route
            .cfg
            .endpoints
            .iter()
            .map(|e| match inner.models.get(e) {
                Some(_) if own_keys.is_some_and(|k| k.only && k.get(e).is_none()) => Some(format!(
                    "{} calls only with its own provider keys and has none for this endpoint",
                    own_keys.map_or("", |k| k.owner.as_str())
                )),
                Some(h) => static_exclusion(
                    h.endpoint().config(),
                    request,
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
                request,
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
        Candidates {
            inner,
            route,
            request,
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
    pub(super) fn evaluate(
        &self,
        session: Option<&SessionBudget>,
        session_extra: f64,
        skip: &HashMap<usize, (String, Option<BudgetRejection>)>,
    ) -> Vec<Cand> {
        let route = self.route;
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
                            .estimate_cost_usd_for(self.input_tokens, self.request)
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
                    Strategy::ByComplexity => self.complexity.as_ref().map(|c| c.score),
                };
                let mut cand = Cand {
                    eligible: false,
                    note: String::new(),
                    score,
                    estimate,
                    budget: None,
                };
                let note = if let Some(n) = &self.statics[i] {
                    Some(n.clone())
                } else if let Some(n) = &self.excluded[i] {
                    Some(n.clone())
                } else if let Some(n) = &self.failed[i] {
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
    pub(super) fn choose(
        &self,
        cands: &[Cand],
        want: &Want,
        rng: &mut fastrand::Rng,
        last: Option<usize>,
    ) -> Option<(usize, &'static str, String)> {
        let route = self.route;
        let eligible: Vec<usize> = self
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
                let breakdown = self
                    .complexity
                    .as_ref()
                    .map(|c| c.breakdown.clone())
                    .unwrap_or_default();
                let tier = self.order.first().copied().unwrap_or(0);
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
                let detail = match &self.complexity {
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
            Want::Hedge { reason } => Some((idx, "hedge", format!("{reason}; {detail}"))),
            Want::Upgrade { .. } | Want::Escalate { .. } => None,
        }
    }

    /// The record of choosing `idx` for attempt number `attempt`.
    pub(super) fn decision(
        &self,
        cands: &[Cand],
        idx: usize,
        rule: &str,
        reason: String,
        attempt: u32,
    ) -> RoutingDecision {
        let route = self.route;
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

    /// Every endpoint and why it is (not) eligible, for error messages.
    pub(super) fn summary(&self, cands: &[Cand]) -> String {
        self.route
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
    pub(super) fn no_candidate_error(&self, cands: &[Cand]) -> RouteError {
        if let Some(rej) = cands.iter().find_map(|c| c.budget.clone()) {
            return RouteError::new(RouteErrorKind::BudgetExhausted, rej.to_string());
        }
        RouteError::new(
            RouteErrorKind::NoEligibleEndpoint,
            format!(
                "no eligible endpoint for route {}: {}",
                self.route.name(),
                self.summary(cands)
            ),
        )
    }
}
