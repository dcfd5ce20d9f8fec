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
use baton_models::{
    Continuation, EndpointConfig, ExecutorHandle, ModelRequest, ModelResponse, ProviderErrorKind,
};
use baton_types::{AttemptFailure, RoutingDecision};
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::attempt::{AttemptError, AttemptOutcome, TextSink, run_attempt};
use super::backoff::sleep_or_cancel;
use super::candidates::{Cand, Candidates, Want};
use super::cascade::{self, GateFailure};
use super::context::CallContext;
use super::permit::Permit;
use super::splice::{Resume, Splice};
use super::types::{RouteError, RouteErrorKind, RouteEvent, Routed};
use crate::budget::{BudgetRejection, Reservation, ReserveRequest};
use crate::config::Strategy;
use crate::gates;

/// An answer the call may return, and whether its text was streamed.
pub(super) struct Answer {
    response: ModelResponse,
    endpoint: String,
    /// Its text reached the caller through the [`Splice`].
    emitted: bool,
    /// Its text was checked against the request's JSON Schema and matches.
    schema_validated: bool,
}

/// The accumulating facts of one routed call.
pub(super) struct Progress {
    pub(super) attempt: u32,
    decisions: Vec<RoutingDecision>,
    /// Billed so far (successful attempts, evaluator calls); `None` while
    /// nothing priced was billed.
    cost: Option<f64>,
    /// The endpoint and `class: message` of the last failed attempt.
    pub(super) last_error: Option<(String, String)>,
    last_endpoint: Option<String>,
    escalations: u32,
    /// A cascade answer that failed a gate, kept in case every later step
    /// fails (never one that fails the request's JSON Schema).
    held: Option<Answer>,
    /// The last failed attempt's answer did not match the request's schema.
    last_schema_violation: bool,
}

impl Progress {
    fn add_cost(&mut self, c: Option<f64>) {
        if let Some(c) = c {
            self.cost = Some(self.cost.unwrap_or(0.0) + c);
        }
    }

    /// `e`, with the attempts, endpoint and cost of the call so far.
    pub(super) fn error(&self, mut e: RouteError) -> RouteError {
        e.attempts = self.attempt;
        e.endpoint = self.last_endpoint.clone();
        e.cost_usd = self.cost;
        e
    }
}

/// What comes after a step of the loop.
pub(super) enum Step {
    /// Another attempt, for `want`, after `delay`.
    Next { want: Want, delay: Duration },
    /// The call is over.
    Done(Result<Answer, RouteError>),
}

/// An endpoint picked for the next attempt, its breaker permit and budget
/// reservation taken.
pub(super) struct Picked {
    idx: usize,
    decision: RoutingDecision,
    permit: Permit,
    reservation: Reservation,
    /// No later cascade step could follow: the attempt streams, and its
    /// answer is not gated.
    last_step: bool,
}

/// An attempt about to be made: its decision recorded, its endpoint, span
/// and request ready.
pub(super) struct Prepared<'a> {
    pub(super) idx: usize,
    pub(super) name: String,
    pub(super) handle: &'a ExecutorHandle,
    pub(super) cfg: &'a EndpointConfig,
    pub(super) span: Span,
    permit: Permit,
    reservation: Reservation,
    pub(super) last_step: bool,
    /// The call's request, with the caller's own key for this endpoint.
    pub(super) request: Arc<ModelRequest>,
    own_key: bool,
    /// Its number among the call's attempts, from 1.
    attempt: u32,
}

impl<'a> Prepared<'a> {
    fn attempted(self, emitted: bool, elapsed: Duration) -> Attempted<'a> {
        Attempted {
            attempt: self.attempt,
            idx: self.idx,
            name: self.name,
            cfg: self.cfg,
            span: self.span,
            permit: self.permit,
            reservation: self.reservation,
            last_step: self.last_step,
            emitted,
            secs: elapsed.as_secs_f64(),
            own_key: self.own_key,
        }
    }
}

/// An attempt just made, with what its outcome settles.
struct Attempted<'a> {
    attempt: u32,
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
    pub(super) ctx: CallContext<'a>,
    pub(super) cands: Candidates<'a>,
    pub(super) progress: Progress,
    /// The pass over the candidates, from 1; a new one starts when every
    /// candidate failed transiently in the last.
    pub(super) pass: u32,
    /// The endpoint of the previous attempt.
    last_idx: Option<usize>,
    rng: fastrand::Rng,
    /// The JSON Schema the request asks for: every answer's text must match
    /// it, on every route (see [`Self::on_success`]).
    schema: Option<jsonschema::Validator>,
    /// What a streaming caller holds of the answer.
    pub(super) splice: Option<Arc<Splice>>,
    /// The endpoint of the attempt in flight or just made, when it was
    /// asked to continue text the caller holds.
    pub(super) continuing: Option<usize>,
    /// Endpoints that refused to continue a partial answer in this call.
    pub(super) no_continuation: Vec<usize>,
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
                last_schema_violation: false,
            },
            pass: 1,
            last_idx: None,
            rng: fastrand::Rng::new(),
            schema: None,
            splice: call.deltas.clone().map(|sink| Arc::new(Splice::new(sink))),
            continuing: None,
            no_continuation: Vec::new(),
        }
    }

    /// The whole routed call.
    pub(super) async fn run(mut self) -> Result<Routed, RouteError> {
        if let Some(schema) = &self.ctx.call.request.json_schema {
            match gates::compile_schema(schema) {
                Ok(v) => self.schema = Some(v),
                Err(e) => {
                    return Err(RouteError::new(
                        RouteErrorKind::InvalidRequest,
                        format!("json_schema: {e}"),
                    ));
                }
            }
        }
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
    pub(super) fn session_extra(&self) -> f64 {
        self.progress.cost.unwrap_or(0.0)
    }

    pub(super) fn give_up(&self, kind: RouteErrorKind, message: String) -> Step {
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
    pub(super) fn pick(&mut self, want: &Want) -> Result<Picked, Vec<Cand>> {
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
                        format!(
                            "{reason}; last step: its answer is accepted even if a quality gate fails (not the request's json_schema)"
                        )
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

    /// Record the decision and make the attempt (hedged when the route
    /// says so).
    async fn attempt(&mut self, picked: Picked) -> Step {
        let p = match self.prepare(picked) {
            Ok(p) => p,
            Err(step) => return *step,
        };
        self.continuing = None;
        if let Some(after) = self.hedge_after(p.idx) {
            if let Some(s) = self.forward(p.last_step) {
                s.begin(Continuation::None);
            }
            return self.attempt_hedged(p, after).await;
        }
        let mut p = p;
        let forward = self.forward(p.last_step);
        if let Some(splice) = &forward {
            self.resume(splice, &mut p);
        }
        let outcome = run_attempt(
            p.handle,
            &p.request,
            forward.as_deref().map(|s| s as &dyn TextSink),
            &self.ctx.call.cancel,
            self.ctx.deadline,
        )
        .instrument(p.span.clone())
        .await;
        self.settle(p, outcome).await
    }

    /// Ready attempt `p` to resume the text the caller holds, if any: a
    /// continuation of it on an endpoint that can continue, else a retry
    /// whose answer is matched against it (see [`Splice`]).
    fn resume(&mut self, splice: &Splice, p: &mut Prepared<'a>) {
        let continuation = if self.no_continuation.contains(&p.idx) {
            Continuation::None
        } else {
            p.cfg.continuation()
        };
        match splice.begin(continuation) {
            Resume::Fresh => {}
            Resume::Prefix => tracing::info!(
                route = %self.ctx.route.name(), endpoint = %p.name,
                "resuming streamed text: asking for the whole answer again, streaming only what goes beyond the text sent"
            ),
            Resume::Continue(start) => {
                tracing::info!(
                    route = %self.ctx.route.name(), endpoint = %p.name,
                    chars = start.chars().count(),
                    "resuming streamed text: asking the endpoint to continue it ({})",
                    continuation.as_str()
                );
                self.continuing = Some(p.idx);
                p.request = Arc::new(ModelRequest {
                    continue_from: Some(start),
                    ..(*p.request).clone()
                });
            }
        }
    }

    /// Where an attempt's text goes: to the caller when it streams and may
    /// see it at once (not a cascade step that a later one may replace, not
    /// a structured answer before it is validated: those reach it from
    /// `finish`, so a client never sees text taken back).
    pub(super) fn forward(&self, last_step: bool) -> Option<Arc<Splice>> {
        if last_step && self.schema.is_none() {
            self.splice.clone()
        } else {
            None
        }
    }

    /// Settle a finished attempt: accept, gate, retry, fail over or give up.
    pub(super) async fn settle(&mut self, p: Prepared<'a>, outcome: AttemptOutcome) -> Step {
        let attempted = p.attempted(outcome.emitted, outcome.elapsed);
        match outcome.result {
            Ok(resp) => self.on_success(attempted, resp).await,
            Err(err) => self.on_failure(attempted, err),
        }
    }

    /// Record the decision of `picked` and ready its attempt; `Err` with
    /// the step that follows when its endpoint is gone.
    pub(super) fn prepare(&mut self, picked: Picked) -> Result<Prepared<'a>, Box<Step>> {
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
            return Err(Box::new(self.give_up(
                RouteErrorKind::NoEligibleEndpoint,
                format!("endpoint {name} is not running"),
            )));
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
        let request = match own_key {
            Some(key) => Arc::new(ModelRequest {
                api_key: Some(key.clone()),
                ..(*call.request).clone()
            }),
            None => call.request.clone(),
        };
        Ok(Prepared {
            idx,
            name,
            handle,
            cfg,
            span,
            permit,
            reservation,
            last_step,
            request,
            own_key: own_key.is_some(),
            attempt: self.progress.attempt,
        })
    }

    /// Settle a failed attempt and plan what follows.
    fn on_failure(&mut self, a: Attempted<'_>, err: AttemptError) -> Step {
        let (idx, emitted, attempt) = (a.idx, a.emitted, a.attempt);
        let name = self.book_failure(a, &err);
        self.settle_failure(idx, name, emitted, attempt, &err)
    }

    /// A hedged attempt failed while the other goes on: booked and told,
    /// its endpoint out of this pass, nothing planned (the other attempt's
    /// outcome decides what follows).
    pub(super) fn failed_beside(
        &mut self,
        p: Prepared<'a>,
        err: AttemptError,
        elapsed: Duration,
        other: &str,
    ) {
        let (idx, attempt) = (p.idx, p.attempt);
        let name = self.book_failure(p.attempted(false, elapsed), &err);
        let (class, msg) = (err.class(), err.message());
        metrics().model_error(&name, class);
        self.progress.last_error = Some((name.clone(), format!("{class}: {msg}")));
        self.progress.last_schema_violation = false;
        self.cands.failed[idx] = Some(format!("failed: {class}"));
        tracing::info!(
            route = %self.ctx.route.name(), endpoint = %name, attempt, kind = class,
            "hedged model attempt failed; the attempt on {other} goes on: {msg}"
        );
        self.ctx
            .call
            .send_event(RouteEvent::AttemptFailed(AttemptFailure {
                endpoint: name,
                attempt,
                kind: class.to_string(),
                message: format!("{msg} (the hedged attempt on {other} goes on)"),
                retry_in_ms: None,
                streamed: false,
            }));
    }

    /// A hedged attempt cancelled because the other produced output first:
    /// not its endpoint's fault (breaker untouched), billed for the input
    /// its provider had started on (estimated), journaled as `hedge_lost`.
    pub(super) fn settle_lost(&mut self, p: Prepared<'a>, elapsed: Duration, winner: &str) {
        let route = self.ctx.route;
        metrics().model_attempt(&p.name, route.name(), "hedge_lost", elapsed.as_secs_f64());
        p.span.record("error.type", "hedge_lost");
        p.permit.neutral();
        let input = crate::select::estimate_input_tokens(&p.request);
        let cost = p.cfg.cost_usd(baton_types::Usage {
            input_tokens: input,
            output_tokens: 0,
        });
        p.reservation.settle(cost.unwrap_or(0.0));
        self.progress.add_cost(cost);
        self.ctx.call.send_event(RouteEvent::AttemptFailed(AttemptFailure {
            endpoint: p.name,
            attempt: p.attempt,
            kind: "hedge_lost".into(),
            message: format!(
                "cancelled: {winner} produced output first; billed for its estimated {input} input tokens"
            ),
            retry_in_ms: None,
            streamed: false,
        }));
    }

    /// Metrics, breaker and reservation of a failed attempt; its endpoint's name.
    fn book_failure(&mut self, a: Attempted<'_>, err: &AttemptError) -> String {
        let route = self.ctx.route;
        let name = a.name;
        let class = err.class();
        a.span.record("error.type", class);
        a.span.record("otel.status_code", "error");
        metrics().model_attempt(&name, route.name(), class, a.secs);
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
        // Breaker bookkeeping. The breaker is the endpoint's, shared by every
        // caller: an auth error with a caller's own key says nothing about the
        // endpoint, only about that key.
        let counts = match err {
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
        name
    }

    /// What follows a failed attempt (a transport or provider failure, or
    /// an answer that fails the request's schema): the failure told, the
    /// next step planned (text it streamed stays with the caller, for the
    /// next attempt to resume).
    fn settle_failure(
        &mut self,
        idx: usize,
        name: String,
        emitted: bool,
        attempt: u32,
        err: &AttemptError,
    ) -> Step {
        let (route, call) = (self.ctx.route, self.ctx.call);
        let class = err.class();
        let msg = err.message();
        metrics().model_error(&name, class);
        self.progress.last_error = Some((name.clone(), format!("{class}: {msg}")));
        self.progress.last_schema_violation = matches!(err, AttemptError::Schema(_));
        // Text the caller holds stays: the next attempt resumes it (see
        // `Splice`).
        let next = self.plan_after_failure(idx, err);
        let retry_in_ms = match &next {
            Step::Next { delay, .. } => Some(delay.as_millis() as u64),
            Step::Done(_) => None,
        };
        tracing::info!(
            route = %route.name(), endpoint = %name, attempt,
            kind = class, retry_in_ms = ?retry_in_ms, "model attempt failed: {msg}"
        );
        call.send_event(RouteEvent::AttemptFailed(AttemptFailure {
            endpoint: name,
            attempt,
            kind: class.to_string(),
            message: msg,
            retry_in_ms,
            streamed: emitted,
        }));
        next
    }

    /// Settle a successful attempt; gate it if it is a cascade step that is
    /// not the last.
    async fn on_success(&mut self, mut a: Attempted<'_>, mut resp: ModelResponse) -> Step {
        let route = self.ctx.route;
        // The rest of a streamed answer goes to the caller, and the answer
        // becomes the text the caller holds (with what a continuation
        // continued).
        if let Some(splice) = self.forward(a.last_step) {
            a.emitted |= splice.answered(&mut resp.message.content);
        }
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

        let cascade_step = route.cfg.strategy == Strategy::Cascade && !a.last_step;
        // The request's JSON Schema holds on every route: an answer that
        // does not match is never returned. (A tool call is not an answer;
        // the turn's next step is.)
        let mut schema_validated = false;
        if let Some(schema) = &self.schema
            && resp.message.tool_calls.is_empty()
        {
            if let Err(reason) = gates::schema_gate(schema, &resp.message.content) {
                if cascade_step {
                    return self.escalate(a.idx, a.name, resp, reason, false);
                }
                return self.settle_failure(
                    a.idx,
                    a.name,
                    a.emitted,
                    a.attempt,
                    &AttemptError::Schema(reason),
                );
            }
            schema_validated = true;
        }
        // Cascade gates.
        if cascade_step {
            let verdict = cascade::check(&self.ctx, &resp, self.session_extra()).await;
            self.progress.add_cost(verdict.cost_usd);
            match verdict.result {
                Ok(_) => {}
                Err(GateFailure::Cancelled) => {
                    return self.give_up(RouteErrorKind::Cancelled, "call cancelled".into());
                }
                Err(GateFailure::Failed(reason)) => {
                    return self.escalate(a.idx, a.name, resp, reason, schema_validated);
                }
            }
        }
        Step::Done(Ok(Answer {
            response: resp,
            endpoint: a.name,
            emitted: a.emitted,
            schema_validated,
        }))
    }

    /// A cascade step's answer failed gate `reason`: go on to the next
    /// step, holding the answer (for when every later step fails) unless it
    /// failed the request's JSON Schema, which nothing may return.
    fn escalate(
        &mut self,
        idx: usize,
        name: String,
        resp: ModelResponse,
        reason: String,
        schema_ok: bool,
    ) -> Step {
        self.progress.escalations += 1;
        self.cands.excluded[idx] = Some(format!("escalated: {reason}"));
        let fails_request_schema = self.schema.is_some() && !schema_ok;
        if !fails_request_schema {
            self.progress.held = Some(Answer {
                response: resp,
                endpoint: name.clone(),
                emitted: false,
                schema_validated: schema_ok,
            });
        }
        self.ctx
            .call
            .send_event(RouteEvent::AttemptFailed(AttemptFailure {
                endpoint: name.clone(),
                attempt: self.progress.attempt,
                kind: "quality_gate".into(),
                message: reason.clone(),
                retry_in_ms: Some(0),
                streamed: false,
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
        let route = self.ctx.route;
        let answer = match result {
            Ok(answer) => answer,
            Err(mut e) => {
                // Every answer failed the schema: say so, not "model error".
                if e.kind == RouteErrorKind::Exhausted && self.progress.last_schema_violation {
                    e.kind = RouteErrorKind::SchemaViolation;
                }
                // A cascade keeps the last answer that failed a gate for
                // when every later step fails.
                let keep = matches!(
                    e.kind,
                    RouteErrorKind::Exhausted
                        | RouteErrorKind::SchemaViolation
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
            schema_validated,
        } = answer;
        // A cascade ran its steps without streaming, and a structured answer
        // is held until validated: hand the accepted answer to a streaming
        // caller at once. (An endpoint that does not stream answers through
        // the final message only.)
        if !emitted
            && (route.cfg.strategy == Strategy::Cascade || self.schema.is_some())
            && let Some(splice) = &self.splice
        {
            splice.deliver(&resp.message.content);
        }
        resp.attempts = self.progress.attempt;
        Ok(Routed {
            response: resp,
            endpoint,
            attempts: self.progress.attempt,
            cost_usd: self.progress.cost,
            decisions: self.progress.decisions,
            escalations: self.progress.escalations,
            schema_validated,
            output_resumed: self
                .splice
                .as_ref()
                .map_or(baton_types::OutputResume::None, |s| s.resumed()),
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
