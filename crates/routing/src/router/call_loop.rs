//! [`CallLoop`]: one routed call from its first attempt to its answer or
//! error — the router's one retry loop. Each step waits (a backoff, a
//! `Retry-After`, nothing), picks an endpoint and takes its breaker permit
//! and budget reservation, makes one attempt, and then either accepts the
//! answer, escalates a cascade, retries the same endpoint, fails over, starts
//! a new pass over the candidates, or gives up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use baton_metrics::metrics;
use baton_models::{Delta, EndpointConfig, ModelRequest, ModelResponse, ProviderErrorKind};
use baton_types::{AttemptFailure, RoutingDecision};
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::attempt::{AttemptError, run_attempt};
use super::backoff::{backoff_delay, sleep_or_cancel};
use super::candidates::{Cand, Candidates, Want};
use super::cascade::{self, GateFailure};
use super::context::CallContext;
use super::permit::Permit;
use super::state::lock;
use super::types::{RouteError, RouteErrorKind, RouteEvent, Routed};
use crate::budget::{BudgetRejection, Reservation, ReserveRequest};
use crate::config::Strategy;

/// An answer the call may return, and whether its text was streamed.
struct Answer {
    response: ModelResponse,
    endpoint: String,
    emitted: bool,
}

/// The accumulating facts of one routed call.
struct Progress {
    attempt: u32,
    decisions: Vec<RoutingDecision>,
    /// Billed so far (successful attempts, evaluator calls); `None` while
    /// nothing priced was billed.
    cost: Option<f64>,
    /// The endpoint and `class: message` of the last failed attempt.
    last_error: Option<(String, String)>,
    last_endpoint: Option<String>,
    escalations: u32,
    /// A cascade answer that failed a gate, kept in case every later step fails.
    held: Option<Answer>,
}

impl Progress {
    fn add_cost(&mut self, c: Option<f64>) {
        if let Some(c) = c {
            self.cost = Some(self.cost.unwrap_or(0.0) + c);
        }
    }

    /// `e`, with the attempts, endpoint and cost of the call so far.
    fn error(&self, mut e: RouteError) -> RouteError {
        e.attempts = self.attempt;
        e.endpoint = self.last_endpoint.clone();
        e.cost_usd = self.cost;
        e
    }
}

/// What comes after a step of the loop.
enum Step {
    /// Another attempt, for `want`, after `delay`.
    Next { want: Want, delay: Duration },
    /// The call is over.
    Done(Result<Answer, RouteError>),
}

/// An endpoint picked for the next attempt, its breaker permit and budget
/// reservation taken.
struct Picked {
    idx: usize,
    decision: RoutingDecision,
    permit: Permit,
    reservation: Reservation,
    /// No later cascade step could follow: the attempt streams, and its
    /// answer is not gated.
    last_step: bool,
}

/// An attempt just made, with what its outcome settles.
struct Attempted<'a> {
    idx: usize,
    name: String,
    cfg: &'a EndpointConfig,
    span: Span,
    permit: Permit,
    reservation: Reservation,
    last_step: bool,
    /// Text deltas of the attempt reached the caller.
    emitted: bool,
    secs: f64,
    /// The attempt sent the caller's own key, not the endpoint's.
    own_key: bool,
}

/// One routed call in progress: its fixed context, the candidates as the
/// call sees them, and what happened so far.
pub(super) struct CallLoop<'a> {
    ctx: CallContext<'a>,
    cands: Candidates<'a>,
    progress: Progress,
    /// The pass over the candidates, from 1; a new one starts when every
    /// candidate failed transiently in the last.
    pass: u32,
    /// The endpoint of the previous attempt.
    last_idx: Option<usize>,
    rng: fastrand::Rng,
}

impl<'a> CallLoop<'a> {
    pub(super) fn new(ctx: CallContext<'a>) -> Self {
        let call = ctx.call;
        let cands = Candidates::new(
            &ctx.router.inner,
            ctx.route,
            &call.request,
            call.needs_vision,
            &call.data_classes,
            call.own_keys.as_deref(),
        );
        Self {
            ctx,
            cands,
            progress: Progress {
                attempt: 0,
                decisions: Vec::new(),
                cost: None,
                last_error: None,
                last_endpoint: None,
                escalations: 0,
                held: None,
            },
            pass: 1,
            last_idx: None,
            rng: fastrand::Rng::new(),
        }
    }

    /// The whole routed call.
    pub(super) async fn run(mut self) -> Result<Routed, RouteError> {
        let (mut want, mut delay) = (Want::First, Duration::ZERO);
        let result = loop {
            match self.step(want, delay).await {
                Step::Next { want: w, delay: d } => (want, delay) = (w, d),
                Step::Done(result) => break result,
            }
        };
        self.finish(result)
    }

    /// What this call has billed so far, counted against the session
    /// budget on top of what the session spent before it.
    fn session_extra(&self) -> f64 {
        self.progress.cost.unwrap_or(0.0)
    }

    fn give_up(&self, kind: RouteErrorKind, message: String) -> Step {
        Step::Done(Err(self.progress.error(RouteError::new(kind, message))))
    }

    /// Wait, pick an endpoint, attempt.
    async fn step(&mut self, want: Want, delay: Duration) -> Step {
        let route = self.ctx.route;
        if !sleep_or_cancel(delay, &self.ctx.call.cancel).await {
            return self.give_up(RouteErrorKind::Cancelled, "call cancelled".into());
        }
        if let Some(d) = self.ctx.deadline
            && Instant::now() >= d
        {
            return self.give_up(
                RouteErrorKind::DeadlineExceeded,
                format!(
                    "route {}: deadline exceeded after {} attempt(s)",
                    route.name(),
                    self.progress.attempt
                ),
            );
        }
        if let Want::NewPass { pass } = want {
            self.pass = pass;
            self.cands.new_pass();
        }
        match self.pick(&want) {
            Ok(picked) => self.attempt(picked).await,
            Err(cands) => self.after_no_candidate(&cands),
        }
    }

    /// Pick an endpoint for `want` and take its breaker permit and budget;
    /// `Err` with the candidates as last seen when none can be had.
    fn pick(&mut self, want: &Want) -> Result<Picked, Vec<Cand>> {
        let (route, call) = (self.ctx.route, self.ctx.call);
        let mut skip: HashMap<usize, (String, Option<BudgetRejection>)> = HashMap::new();
        loop {
            let cands =
                self.cands
                    .evaluate(call.session_budget.as_ref(), self.session_extra(), &skip);
            if self.progress.attempt >= route.max_attempts {
                return Err(cands);
            }
            let Some((idx, rule, reason)) =
                self.cands
                    .choose(&cands, want, &mut self.rng, self.last_idx)
            else {
                return Err(cands);
            };
            let Some(health) = self.ctx.health(idx) else {
                skip.insert(idx, ("endpoint not running".into(), None));
                continue;
            };
            let Some(permit) = Permit::acquire(health) else {
                skip.insert(idx, ("breaker open".into(), None));
                continue;
            };
            match self.ctx.router.inner.budgets.reserve(&ReserveRequest {
                route: route.name(),
                route_limit_usd: route.cfg.budget_usd,
                session: call.session_budget.as_ref(),
                session_extra_usd: self.session_extra(),
                amount_usd: cands[idx].estimate,
            }) {
                Ok(reservation) => {
                    // Cascade steps stream only when no later step could follow.
                    let last_step = route.cfg.strategy != Strategy::Cascade
                        || !self
                            .cands
                            .order
                            .iter()
                            .skip_while(|i| **i != idx)
                            .skip(1)
                            .any(|i| cands[*i].eligible);
                    let reason = if rule == "cascade_escalate" && last_step {
                        format!("{reason}; last step: its answer is accepted even if a gate fails")
                    } else {
                        reason
                    };
                    let decision =
                        self.cands
                            .decision(&cands, idx, rule, reason, self.progress.attempt + 1);
                    return Ok(Picked {
                        idx,
                        decision,
                        permit,
                        reservation,
                        last_step,
                    });
                }
                Err(rej) => {
                    drop(permit);
                    skip.insert(idx, (format!("over budget: {rej}"), Some(rej)));
                }
            }
        }
    }

    /// Record the decision and make the attempt.
    async fn attempt(&mut self, picked: Picked) -> Step {
        let Picked {
            idx,
            decision,
            permit,
            reservation,
            last_step,
        } = picked;
        let (route, call) = (self.ctx.route, self.ctx.call);
        self.progress.attempt += 1;
        self.cands.tries[idx] += 1;
        self.last_idx = Some(idx);
        let name = self.ctx.name(idx).to_string();
        self.progress.last_endpoint = Some(name.clone());
        metrics().routing_decision(route.name(), route.cfg.strategy.as_str(), &decision.rule);
        tracing::debug!(
            route = %route.name(), endpoint = %name, rule = %decision.rule,
            reason = %decision.reason, attempt = self.progress.attempt, "routing decision"
        );
        self.progress.decisions.push(decision.clone());
        call.send_event(RouteEvent::Decision(decision));
        let Some(handle) = self.ctx.router.inner.models.get(&name) else {
            return self.give_up(
                RouteErrorKind::NoEligibleEndpoint,
                format!("endpoint {name} is not running"),
            );
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
            baton.attempt = i64::from(self.progress.attempt),
            baton.credential = Empty,
            otel.kind = "client",
            otel.status_code = Empty,
            error.type = Empty,
        );
        // The caller's own key for this endpoint goes on this attempt's copy
        // of the request; the shared request keeps none.
        let own_key = call.own_keys.as_ref().and_then(|k| k.get(&name));
        span.record(
            "baton.credential",
            if own_key.is_some() { "own" } else { "endpoint" },
        );
        let keyed;
        let request = match own_key {
            Some(key) => {
                keyed = Arc::new(ModelRequest {
                    api_key: Some(key.clone()),
                    ..(*call.request).clone()
                });
                &keyed
            }
            None => &call.request,
        };
        let outcome = run_attempt(handle, request, forward, &call.cancel, self.ctx.deadline)
            .instrument(span.clone())
            .await;
        let attempted = Attempted {
            idx,
            name,
            cfg,
            span,
            permit,
            reservation,
            last_step,
            emitted: outcome.emitted,
            secs: outcome.elapsed.as_secs_f64(),
            own_key: own_key.is_some(),
        };
        match outcome.result {
            Ok(resp) => self.on_success(attempted, resp).await,
            Err(err) => self.on_failure(attempted, err),
        }
    }

    /// Settle a failed attempt and plan what follows.
    fn on_failure(&mut self, a: Attempted<'_>, err: AttemptError) -> Step {
        let (route, call) = (self.ctx.route, self.ctx.call);
        let name = a.name;
        let class = err.class();
        a.span.record("error.type", class);
        a.span.record("otel.status_code", "error");
        metrics().model_attempt(&name, route.name(), class, a.secs);
        metrics().model_error(&name, class);
        if class != "cancelled" {
            self.ctx.router.observed(&super::types::AttemptSeen {
                endpoint: &name,
                model: &a.cfg.model,
                route: route.name(),
                ok: false,
                secs: a.secs,
            });
        }
        drop(a.reservation); // failed attempts are not billed
        let msg = err.message();
        self.progress.last_error = Some((name.clone(), format!("{class}: {msg}")));
        // Breaker bookkeeping. The breaker is the endpoint's, shared by every
        // caller: an auth error with a caller's own key says nothing about the
        // endpoint, only about that key.
        let counts = match &err {
            AttemptError::Provider(e) => {
                e.is_transient() || (e.kind == ProviderErrorKind::Auth && !a.own_key)
            }
            _ => false,
        };
        if counts {
            a.permit.failure();
        } else {
            a.permit.neutral();
        }
        if a.emitted
            && let Some(sink) = &call.deltas
        {
            let _ = sink.send(Delta::Restart);
        }
        let next = self.plan_after_failure(a.idx, &err);
        let retry_in_ms = match &next {
            Step::Next { delay, .. } => Some(delay.as_millis() as u64),
            Step::Done(_) => None,
        };
        tracing::info!(
            route = %route.name(), endpoint = %name, attempt = self.progress.attempt,
            kind = class, retry_in_ms = ?retry_in_ms, "model attempt failed: {msg}"
        );
        call.send_event(RouteEvent::AttemptFailed(AttemptFailure {
            endpoint: name,
            attempt: self.progress.attempt,
            kind: class.to_string(),
            message: msg,
            retry_in_ms,
            retracted: a.emitted,
        }));
        next
    }

    /// What to do after attempt `idx` failed with `err`.
    fn plan_after_failure(&mut self, idx: usize, err: &AttemptError) -> Step {
        let route = self.ctx.route;
        let name = self.ctx.name(idx).to_string();
        let want = match err {
            AttemptError::Cancelled => {
                return self.give_up(RouteErrorKind::Cancelled, "call cancelled".into());
            }
            AttemptError::Deadline => {
                return self.give_up(
                    RouteErrorKind::DeadlineExceeded,
                    format!(
                        "route {}: deadline exceeded during attempt {} on {name}",
                        route.name(),
                        self.progress.attempt
                    ),
                );
            }
            AttemptError::Provider(e) => match &e.kind {
                ProviderErrorKind::ContentPolicy => {
                    return self.give_up(RouteErrorKind::ContentPolicy, e.message.clone());
                }
                ProviderErrorKind::InvalidRequest => {
                    return self.give_up(RouteErrorKind::InvalidRequest, e.message.clone());
                }
                ProviderErrorKind::Client { status } if *status != 404 => {
                    return self.give_up(RouteErrorKind::InvalidRequest, e.message.clone());
                }
                ProviderErrorKind::ContextLength => {
                    let window = |i: usize| self.ctx.config(i).and_then(|c| c.context_window);
                    let failed = window(idx);
                    for i in 0..self.cands.excluded.len() {
                        let larger = matches!((window(i), failed), (Some(w), Some(f)) if w > f);
                        if !larger && self.cands.excluded[i].is_none() {
                            self.cands.excluded[i] = Some(format!(
                                "context window not larger than {name}'s ({})",
                                failed.map_or("unknown".to_string(), |f| f.to_string())
                            ));
                        }
                    }
                    let any = self.evaluate_now().iter().any(|c| c.eligible);
                    if !any {
                        return self.give_up(
                            RouteErrorKind::ContextLength,
                            format!(
                                "{}; no endpoint of route {} with a larger context window is available",
                                e.message,
                                route.name()
                            ),
                        );
                    }
                    return Step::Next {
                        want: Want::Upgrade {
                            reason: format!("{name} refused the request: context length exceeded"),
                        },
                        delay: Duration::ZERO,
                    };
                }
                ProviderErrorKind::Auth | ProviderErrorKind::Client { .. } => {
                    self.cands.excluded[idx] = Some(format!("misconfigured: {}", e.class()));
                    Want::Failover {
                        reason: format!("{name} failed: {} ({})", e.class(), e.message),
                    }
                }
                _ => {
                    // Transient: retry the same endpoint after a backoff, if
                    // it has attempts left, the wait fits the deadline and
                    // its breaker is still closed.
                    if let Some(ra) = e.retry_after() {
                        self.cands.pass_retry_after =
                            Some(self.cands.pass_retry_after.map_or(ra, |x| x.min(ra)));
                    }
                    let retry = self
                        .ctx
                        .config(idx)
                        .map(|c| c.retry.clone())
                        .unwrap_or_default();
                    let tries = self.cands.tries[idx];
                    if tries < retry.max_attempts && self.progress.attempt < route.max_attempts {
                        let delay = backoff_delay(&retry, tries, e.retry_after());
                        let fits = self.ctx.fits(delay);
                        let healthy = self
                            .ctx
                            .health(idx)
                            .is_some_and(|h| lock(&h.breaker).would_admit(Instant::now()));
                        if fits && healthy {
                            return Step::Next {
                                want: Want::Retry {
                                    idx,
                                    reason: format!(
                                        "retry {} of {} on {name} after {}: {}",
                                        tries + 1,
                                        retry.max_attempts,
                                        e.class(),
                                        e.message
                                    ),
                                },
                                delay,
                            };
                        }
                    }
                    self.cands.failed[idx] = Some(format!("failed: {}", e.class()));
                    Want::Failover {
                        reason: format!("{name} failed: {} ({})", e.class(), e.message),
                    }
                }
            },
            AttemptError::Stopped(m) => {
                self.cands.excluded[idx] = Some("stopped".into());
                Want::Failover {
                    reason: format!("{name} failed: {m}"),
                }
            }
            AttemptError::Overloaded(m) | AttemptError::WorkerFailed(m) => {
                self.cands.failed[idx] = Some(format!("failed: {}", err.class()));
                Want::Failover {
                    reason: format!("{name} failed: {m}"),
                }
            }
        };
        // Fail over at once if anyone is left, else pass again or give up.
        let cands = self.evaluate_now();
        if self.progress.attempt < route.max_attempts && cands.iter().any(|c| c.eligible) {
            return Step::Next {
                want,
                delay: Duration::ZERO,
            };
        }
        self.after_no_candidate(&cands)
    }

    /// Every candidate as a selection would see it now.
    fn evaluate_now(&self) -> Vec<Cand> {
        self.cands.evaluate(
            self.ctx.call.session_budget.as_ref(),
            self.session_extra(),
            &HashMap::new(),
        )
    }

    /// Nothing is eligible now: pass again after a backoff, or give up.
    fn after_no_candidate(&mut self, cands: &[Cand]) -> Step {
        let route = self.ctx.route;
        let progress = &self.progress;
        let any_failed = self.cands.failed.iter().any(Option::is_some);
        if any_failed && progress.attempt < route.max_attempts {
            // Would anything be eligible in a new pass?
            let saved_failed = self.cands.failed.clone();
            let saved_tries = self.cands.tries.clone();
            let saved_ra = self.cands.pass_retry_after;
            self.cands.new_pass();
            let again = self.evaluate_now();
            self.cands.failed = saved_failed;
            self.cands.tries = saved_tries;
            self.cands.pass_retry_after = saved_ra;
            if again.iter().any(|c| c.eligible) {
                let retry = self
                    .cands
                    .order
                    .first()
                    .and_then(|i| self.ctx.config(*i))
                    .map(|c| c.retry.clone())
                    .unwrap_or_default();
                let delay = backoff_delay(&retry, self.pass, self.cands.pass_retry_after);
                if self.ctx.fits(delay) {
                    return Step::Next {
                        want: Want::NewPass {
                            pass: self.pass + 1,
                        },
                        delay,
                    };
                }
                let (ep, err) = self.progress.last_error.clone().unwrap_or_default();
                return self.give_up(
                    RouteErrorKind::Exhausted,
                    format!(
                        "route {}: every candidate failed and the backoff of {} ms before another pass would pass the deadline; last error from {ep}: {err}",
                        route.name(),
                        delay.as_millis()
                    ),
                );
            }
        }
        let progress = &self.progress;
        if progress.attempt >= route.max_attempts
            && let Some((ep, err)) = &progress.last_error
        {
            return self.give_up(
                RouteErrorKind::Exhausted,
                format!(
                    "route {}: all {} attempts failed; last error from {ep}: {err}",
                    route.name(),
                    progress.attempt
                ),
            );
        }
        if let Some(rej) = cands.iter().find_map(|c| c.budget.clone()) {
            return self.give_up(RouteErrorKind::BudgetExhausted, rej.to_string());
        }
        if let Some((ep, err)) = &progress.last_error {
            return self.give_up(
                RouteErrorKind::Exhausted,
                format!(
                    "route {}: no candidate left after {} attempt(s) ({}); last error from {ep}: {err}",
                    route.name(),
                    progress.attempt,
                    self.cands.summary(cands)
                ),
            );
        }
        Step::Done(Err(progress.error(self.cands.no_candidate_error(cands))))
    }

    /// Settle a successful attempt; gate it if it is a cascade step that is
    /// not the last.
    async fn on_success(&mut self, a: Attempted<'_>, resp: ModelResponse) -> Step {
        let route = self.ctx.route;
        a.permit
            .health
            .record_latency(a.secs * 1000.0, route.cfg.ewma_alpha);
        a.permit.success();
        let cost = a.cfg.cost_usd(resp.usage);
        a.reservation.settle(cost.unwrap_or(0.0));
        self.progress.add_cost(cost);
        a.span.record("gen_ai.response.model", resp.model.as_str());
        a.span.record(
            "gen_ai.usage.input_tokens",
            i64::try_from(resp.usage.input_tokens).unwrap_or(i64::MAX),
        );
        a.span.record(
            "gen_ai.usage.output_tokens",
            i64::try_from(resp.usage.output_tokens).unwrap_or(i64::MAX),
        );
        metrics().model_attempt(&a.name, route.name(), "ok", a.secs);
        self.ctx.router.observed(&super::types::AttemptSeen {
            endpoint: &a.name,
            model: &a.cfg.model,
            route: route.name(),
            ok: true,
            secs: a.secs,
        });
        metrics().usage(
            &a.name,
            route.name(),
            resp.usage.input_tokens,
            resp.usage.output_tokens,
            cost.unwrap_or(0.0),
        );

        // Cascade gates.
        if route.cfg.strategy == Strategy::Cascade && !a.last_step {
            let verdict = cascade::check(&self.ctx, &resp, self.session_extra()).await;
            self.progress.add_cost(verdict.cost_usd);
            match verdict.result {
                Ok(_) => {}
                Err(GateFailure::Cancelled) => {
                    return self.give_up(RouteErrorKind::Cancelled, "call cancelled".into());
                }
                Err(GateFailure::Failed(reason)) => {
                    return self.escalate(a.idx, a.name, resp, reason);
                }
            }
        }
        Step::Done(Ok(Answer {
            response: resp,
            endpoint: a.name,
            emitted: a.emitted,
        }))
    }

    /// A cascade step's answer failed gate `reason`: hold it and go on to
    /// the next step.
    fn escalate(&mut self, idx: usize, name: String, resp: ModelResponse, reason: String) -> Step {
        self.progress.escalations += 1;
        self.cands.excluded[idx] = Some(format!("escalated: {reason}"));
        self.progress.held = Some(Answer {
            response: resp,
            endpoint: name.clone(),
            emitted: false,
        });
        self.ctx
            .call
            .send_event(RouteEvent::AttemptFailed(AttemptFailure {
                endpoint: name.clone(),
                attempt: self.progress.attempt,
                kind: "quality_gate".into(),
                message: reason.clone(),
                retry_in_ms: Some(0),
                retracted: false,
            }));
        Step::Next {
            want: Want::Escalate {
                reason: format!("{name} failed gate {reason}"),
            },
            delay: Duration::ZERO,
        }
    }

    /// The call's answer, or its error (a cascade falls back to an answer it
    /// held).
    fn finish(mut self, result: Result<Answer, RouteError>) -> Result<Routed, RouteError> {
        let (route, call) = (self.ctx.route, self.ctx.call);
        let answer = match result {
            Ok(answer) => answer,
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
                match self.progress.held.take() {
                    Some(held) if keep => {
                        tracing::warn!(
                            route = %route.name(), endpoint = %held.endpoint,
                            "later cascade steps failed ({}); accepting the earlier answer", e.message
                        );
                        held
                    }
                    _ => {
                        self.budget_rejected(&e);
                        return Err(e);
                    }
                }
            }
        };
        let Answer {
            response: mut resp,
            endpoint,
            emitted,
        } = answer;
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
        resp.attempts = self.progress.attempt;
        Ok(Routed {
            response: resp,
            endpoint,
            attempts: self.progress.attempt,
            cost_usd: self.progress.cost,
            decisions: self.progress.decisions,
            escalations: self.progress.escalations,
        })
    }

    /// Count and log a call refused by a budget.
    fn budget_rejected(&self, e: &RouteError) {
        if e.kind == RouteErrorKind::BudgetExhausted {
            let scope = if e.message.starts_with("budget of session") {
                "session"
            } else {
                "route"
            };
            metrics().budget_rejection(scope);
            tracing::info!(route = %self.ctx.route.name(), session = ?self.ctx.call.session_budget.as_ref().map(|s| &s.scope), "{}", e.message);
        }
    }
}
