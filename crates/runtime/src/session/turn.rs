//! The turn state machine and its model calls.

use std::time::Instant;

use baton_models::{Delta, ModelRequest};
use baton_types::{
    EventKind, GatePoint, Message, ModelCallReason, Role, ToolChoice, TurnFailureCode,
};
use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ctx::{InFlight, SessionCtx};
use super::msg::SessionMsg;

impl SessionCtx {
    /// Start or resume work, as far as it can go without waiting:
    /// * a turn whose final answer is recorded gets its `TurnCompleted`
    ///   (unless a gate holds its release);
    /// * tool calls of the current step are validated, started (after their
    ///   `ToolCallStarted` is durable), re-run (idempotent tools, after a
    ///   crash) or paused (`NeedsAttention`: non-idempotent, after a crash);
    /// * a model call with no recorded answer is issued again (`recovery`);
    /// * once a step's tool results are in, the next model call is issued
    ///   (`tool_results`), unless the turn reached `max_steps`;
    /// * otherwise the next queued turn starts.
    pub fn pump(&mut self, myself: &ActorRef<SessionMsg>) {
        loop {
            let state = &self.durable.state;
            if self.model.call.is_some()
                || self.model.checking.is_some()
                || state.failed.is_some()
                || !self.durable.found
            {
                return;
            }
            let Some(current) = state.current.as_ref() else {
                // Idle: start the next queued turn.
                let Some(turn) = state.queued.front().map(|q| q.turn) else {
                    return;
                };
                if !self.start_model_call(myself, turn, 1, ModelCallReason::Turn) {
                    continue;
                }
                return;
            };
            let turn = current.turn;
            if current.gates.iter().any(|g| g.point != GatePoint::ToolCall) {
                // Held at a model call or a final answer: wait for a decision.
                return;
            }
            if current.response_recorded {
                if !current.is_approved(GatePoint::FinalAnswer, "")
                    && let Some((terms, subject)) = self.release_gate()
                {
                    self.open_gate(turn, terms, GatePoint::FinalAnswer, subject, String::new());
                    self.flush(myself, true);
                    return;
                }
                let usage = current.usage;
                self.commit(myself, vec![EventKind::TurnCompleted { turn, usage }], true);
                continue;
            }
            if !current.tools.is_empty() {
                if self.pump_tools(myself) {
                    continue;
                }
                return;
            }
            let attempt = current.attempt + 1;
            if current.model_call_open {
                // Issued before a crash, never answered: issue it again.
                if !self.start_model_call(myself, turn, attempt, ModelCallReason::Recovery) {
                    continue;
                }
                return;
            }
            let max_steps = match state.max_steps {
                0 => self.env.shared.config.sessions.max_steps,
                n => n,
            };
            if current.steps >= max_steps {
                let reason = format!(
                    "max_steps_exceeded: turn {turn} made {} model calls without a final answer (max_steps = {max_steps})",
                    current.steps
                );
                self.commit(
                    myself,
                    vec![EventKind::TurnFailed {
                        turn,
                        reason,
                        code: TurnFailureCode::MaxStepsExceeded,
                    }],
                    true,
                );
                continue;
            }
            if let Some(g) = &current.result_gate
                && !current.is_approved(GatePoint::ModelCall, "")
                && let Some(spec) = self.env.shared.policies.gate_of(&g.policy, &g.rule)
            {
                // A tool result a policy holds: the model sees it once a
                // reviewer approves.
                let terms = crate::gates::policy_terms(&g.policy, &g.reason, spec);
                let subject = serde_json::json!({
                    "policy": g.policy,
                    "rule": g.rule,
                    "tool_results": state
                        .messages
                        .iter()
                        .rev()
                        .take_while(|m| m.role == Role::Tool)
                        .map(|m| serde_json::json!({"call_id": m.tool_call_id, "output": m.content}))
                        .collect::<Vec<_>>(),
                })
                .to_string();
                self.open_gate(turn, terms, GatePoint::ModelCall, subject, String::new());
                self.flush(myself, true);
                return;
            }
            let reason = if current.steps == 0 {
                ModelCallReason::Turn
            } else if state.messages.last().is_some_and(|m| m.role == Role::User) {
                // A reviewer rejected the draft: the model revises it.
                ModelCallReason::Review
            } else {
                ModelCallReason::ToolResults
            };
            if !self.start_model_call(myself, turn, attempt, reason) {
                continue;
            }
            return;
        }
    }

    /// The request of the next model call of `turn`, and the user's input
    /// when the turn has not started yet (data rules look at it).
    fn model_request(&self, turn: u64) -> (ModelRequest, Option<String>) {
        let state = &self.durable.state;
        let mut messages = state.model_messages();
        let queued = state.current.as_ref().is_none_or(|c| c.turn != turn);
        let mut input = None;
        if queued
            && let Some(m) = state
                .queued
                .iter()
                .find(|q| q.turn == turn)
                .map(|q| &q.message)
        {
            input = Some(m.content.clone());
            messages.push(m.clone());
        }
        let g = &state.generation;
        // A required tool call applies to a turn's first model call only:
        // after the tool results the model must be free to answer, or the
        // loop would call tools until max_steps. A one-shot session (the
        // front door) makes exactly one call, whose caller runs the loop:
        // its choice always applies.
        let first_step = state.one_shot || messages.last().is_some_and(|m| m.role == Role::User);
        let tool_choice = match &g.tool_choice {
            ToolChoice::Required | ToolChoice::Tool(_) if !first_step => ToolChoice::Auto,
            choice => choice.clone(),
        };
        // Validated as a JSON object when the session started.
        let json_schema = g
            .json_schema
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        let request = ModelRequest {
            messages,
            max_output_tokens: g.max_output_tokens,
            temperature: g.temperature,
            top_p: g.top_p,
            stop: g.stop.clone(),
            tools: self.tool_definitions(),
            tool_choice,
            json_schema,
            // The router sets a tenant's own key per attempt.
            api_key: None,
            continue_from: None,
            embed: None,
        };
        (request, input)
    }

    /// Record `ModelCallStarted` (with anything staged) and dispatch the
    /// call — unless a cost or input data-rule gate holds it. False when the
    /// turn failed instead (unknown route).
    fn start_model_call(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        attempt: u32,
        reason: ModelCallReason,
    ) -> bool {
        if let Some(terms) = self.hold_terms() {
            return self.hold_turn(myself, turn, terms);
        }
        let route = self.durable.state.route.clone();
        let shared = self.env.shared.clone();
        if !shared.router.has_route(&route) {
            let reason = format!("route {route:?} is not a configured route or model endpoint");
            self.commit(
                myself,
                vec![EventKind::TurnFailed {
                    turn,
                    reason,
                    code: TurnFailureCode::UnknownRoute,
                }],
                true,
            );
            return false;
        }
        let (mut request, input) = self.model_request(turn);
        if !self.input_checks_ready(myself, turn, &request, input.as_deref()) {
            // The call starts when the policies' classifiers answered.
            return true;
        }
        let (data_classes, redaction) =
            match self.screen_input(myself, turn, &mut request, input.as_deref()) {
                super::policy::Screened::Blocked | super::policy::Screened::Refused => {
                    return false;
                }
                super::policy::Screened::Held => return true,
                super::policy::Screened::Pass {
                    data_classes,
                    redaction,
                } => (data_classes, redaction),
            };
        let approved = self
            .durable
            .state
            .current
            .as_ref()
            .is_some_and(|c| c.turn == turn && c.is_approved(GatePoint::ModelCall, ""));
        if reason != ModelCallReason::Recovery && !approved {
            let cost = shared.router.estimate_cost_usd(&route, &request);
            if let Some(terms) = shared.gate_policies.before_model_call(
                &self.durable.state.tenant,
                &route,
                input.as_deref(),
                cost,
            ) {
                let subject = serde_json::json!({
                    "route": route,
                    "estimated_cost_usd": cost,
                    "input": input,
                })
                .to_string();
                self.open_gate(turn, terms, GatePoint::ModelCall, subject, String::new());
                self.flush(myself, true);
                return true;
            }
        }
        // A reviewer let this call go without the classes found in its
        // content (no endpoint was certified for them): the session's own
        // classes still apply.
        let data_classes = if reason == ModelCallReason::Recovery && approved {
            Vec::new()
        } else {
            data_classes
        };
        if self.model.turn_started.is_none_or(|(t, _)| t != turn) {
            self.model.turn_started = Some((turn, tokio::time::Instant::now()));
        }
        self.turn_span(turn);
        let sync = self.turn_start_synced();
        self.commit(
            myself,
            vec![EventKind::ModelCallStarted {
                turn,
                attempt,
                endpoint: route,
                reason,
            }],
            sync,
        );
        // On RocksDB the call overlaps the write (its WAL append takes
        // microseconds); on PostgreSQL it waits for the commit, so that a
        // crash never leaves a call out whose turn the journal lacks.
        let hold = (sync && shared.store.backend() == "postgres").then(|| {
            (
                self.model.durable_seq.subscribe(),
                self.durable.state.last_seq,
            )
        });
        self.dispatch(myself, turn, request, data_classes, redaction, hold);
        true
    }

    /// The tracing span of `turn`, opened on first use.
    pub fn turn_span(&mut self, turn: u64) -> tracing::Span {
        if let Some((t, span)) = &self.model.turn_span
            && *t == turn
        {
            return span.clone();
        }
        let span = tracing::info_span!(
            "turn",
            baton.session.id = %self.env.id,
            baton.turn = i64::try_from(turn).unwrap_or(i64::MAX),
            baton.route = %self.durable.state.route,
        );
        self.model.turn_span = Some((turn, span.clone()));
        span
    }

    /// Hand the call to the session's source (the router: strategies,
    /// retries, failover, breakers, budgets — or a recording) on a task of
    /// its own; its deltas, routing events and result come back as messages.
    fn dispatch(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        request: ModelRequest,
        found_classes: Vec<String>,
        redaction: Option<super::redaction::Redaction>,
        hold: Option<(tokio::sync::watch::Receiver<u64>, u64)>,
    ) {
        self.model.next_call += 1;
        let call = self.model.next_call;
        let cancel = CancellationToken::new();
        let (delta_tx, mut delta_rx) = mpsc::unbounded_channel();
        let (event_tx, mut event_rx) = mpsc::unbounded_channel();
        let state = &self.durable.state;
        // The session's own classes, and those its content carries.
        let mut data_classes = state.data_classes.clone();
        for c in found_classes {
            if !data_classes.contains(&c) {
                data_classes.push(c);
            }
        }
        let hold_output = self.holds_output();
        let question = request
            .messages
            .iter()
            .rev()
            // Not the runtime's own notes to the model (a policy's or a
            // reviewer's request to revise): the user's question.
            .find(|m| {
                m.role == Role::User
                    && !m.content.starts_with("[policy] ")
                    && !m.content.starts_with("[review] ")
            })
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let request = std::sync::Arc::new(request);
        self.model.call = Some(InFlight {
            id: call,
            turn,
            cancel: cancel.clone(),
            redaction,
            hold_output,
            question,
            request: request.clone(),
            data_classes: data_classes.clone(),
        });
        let state = &self.durable.state;
        let deadline = self
            .env
            .shared
            .config
            .sessions
            .turn_deadline_ms
            .zip(self.model.turn_started)
            .map(|(ms, (_, at))| at + std::time::Duration::from_millis(ms));
        let session_budget = state
            .budget_usd
            .map(|limit_usd| baton_routing::SessionBudget {
                scope: self.env.id.to_string(),
                limit_usd,
                spent_usd: state.cost_usd,
            });
        let route_call = baton_routing::RouteCall {
            route: state.route.clone(),
            request,
            needs_vision: false,
            data_classes,
            deltas: Some(delta_tx),
            events: Some(event_tx),
            cancel,
            deadline,
            session_budget,
            own_keys: self.env.shared.own_keys.get(&state.tenant).cloned(),
        };
        let answer = self.source().model_call(route_call);
        let me = myself.clone();
        let started = Instant::now();
        let span = self.turn_span(turn);
        tokio::spawn(async move {
            if let Some((mut durable, upto)) = hold {
                // The actor stopped (its write failed): no call.
                match durable.wait_for(|d| *d >= upto).await {
                    Ok(r) => drop(r),
                    Err(_) => return,
                }
            }
            let routed = answer.instrument(span);
            tokio::pin!(routed);
            let mut deltas_open = true;
            let mut events_open = true;
            loop {
                tokio::select! {
                    biased;
                    e = event_rx.recv(), if events_open => match e {
                        Some(event) => {
                            if me.cast(SessionMsg::RouteEvent { call, event: Box::new(event) }).is_err() {
                                return;
                            }
                        }
                        None => events_open = false,
                    },
                    d = delta_rx.recv(), if deltas_open => match d {
                        Some(delta) => {
                            if me.cast(SessionMsg::ModelDelta { call, delta }).is_err() {
                                return;
                            }
                        }
                        None => deltas_open = false,
                    },
                    result = &mut routed => {
                        while let Ok(event) = event_rx.try_recv() {
                            let _ = me.cast(SessionMsg::RouteEvent { call, event: Box::new(event) });
                        }
                        while let Ok(delta) = delta_rx.try_recv() {
                            let _ = me.cast(SessionMsg::ModelDelta { call, delta });
                        }
                        let latency_ms = started.elapsed().as_millis() as u64;
                        let _ = me.cast(SessionMsg::ModelDone { call, result: Box::new(result), latency_ms });
                        return;
                    }
                }
            }
        });
    }

    /// The turn of model call `call`, when it is the one in flight.
    fn current_call(&self, call: u64) -> Option<u64> {
        self.model
            .call
            .as_ref()
            .filter(|c| c.id == call)
            .map(|c| c.turn)
    }

    pub fn on_delta(&mut self, myself: &ActorRef<SessionMsg>, call: u64, delta: Delta) {
        let Some(turn) = self.current_call(call) else {
            return;
        };
        let Some(attempt) = self.durable.state.current.as_ref().map(|c| c.attempt) else {
            return;
        };
        if self.model.call.as_ref().is_some_and(|c| c.hold_output) {
            // The answer is released once the output policies passed it.
            return;
        }
        let redaction = self.model.call.as_mut().and_then(|c| c.redaction.as_mut());
        let kind = match delta {
            Delta::Text(text) => {
                let text = match redaction {
                    Some(r) => r.delta(text),
                    None => text,
                };
                if !text.is_empty() {
                    self.stream_text(myself, turn, attempt, text);
                }
                return;
            }
            Delta::Restart => {
                if let Some(r) = redaction {
                    r.restart();
                }
                EventKind::OutputRetracted {
                turn,
                attempt: attempt + 1,
                reason: "the attempt that streamed this output failed; the answer continues from another attempt".into(),
                }
            }
        };
        self.commit(myself, vec![kind], false);
    }

    pub fn on_route_event(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        call: u64,
        event: baton_routing::RouteEvent,
    ) {
        let Some(turn) = self.current_call(call) else {
            return;
        };
        let kind = match event {
            baton_routing::RouteEvent::Decision(decision) => {
                EventKind::RoutingDecided { turn, decision }
            }
            baton_routing::RouteEvent::AttemptFailed(failure) => {
                EventKind::AttemptFailed { turn, failure }
            }
        };
        // Written with the next batch (a delta or the answer): no write of
        // its own on the hot path. A crash before that loses only the record
        // of a call that is then issued again. Unless it closes a stretch of
        // output clients already have: that is journaled now (a client that
        // joined mid-stretch waits for it).
        let streaming = self.outbox.live.is_some();
        self.stage(kind);
        if streaming {
            self.flush(myself, false);
        }
    }

    pub fn on_done(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        call: u64,
        result: Result<baton_routing::Routed, baton_routing::RouteError>,
        latency_ms: u64,
    ) {
        let Some(turn) = self.current_call(call) else {
            return;
        };
        let Some(done) = self.model.call.take() else {
            return;
        };
        let (redaction, hold_output) = (done.redaction, done.hold_output);
        let kinds = match result {
            Ok(mut routed) => {
                // As the model wrote it (pseudonymised): what routes that
                // check it see.
                let raw = routed.response.message.content.clone();
                if let Some(mut r) = redaction {
                    // Placeholders back to their values: the end of the
                    // stream, the answer, and the tool calls' arguments.
                    let tail = r.finish();
                    if !tail.is_empty()
                        && !hold_output
                        && let Some(c) = self.durable.state.current.as_ref()
                    {
                        let attempt = c.attempt;
                        self.stage(EventKind::OutputDelta {
                            turn,
                            attempt,
                            text: tail,
                        });
                    }
                    let m = &mut routed.response.message;
                    m.content = r.restore(&m.content);
                    for call in &mut m.tool_calls {
                        call.arguments = r.restore(&call.arguments);
                    }
                }
                let sent = super::redaction::Sent {
                    raw,
                    question: done.question,
                    request: done.request,
                    data_classes: done.data_classes,
                };
                let Some((routed, sent)) =
                    self.hold_for_checks(myself, turn, routed, latency_ms, sent)
                else {
                    // Released when its output checks are answered; the
                    // output streamed so far is journaled now.
                    self.flush(myself, false);
                    return;
                };
                self.answer_kinds(turn, routed, latency_ms, &sent)
            }
            Err(e) => {
                if self.no_eligible_gate(myself, turn, &e, &done.data_classes) {
                    return;
                }
                vec![EventKind::TurnFailed {
                    turn,
                    reason: e.message.clone(),
                    code: e.failure_code(),
                }]
            }
        };
        for k in kinds {
            self.stage(k);
        }
        // A final answer completes the turn in pump(), in the same batch,
        // unless a gate holds its release.
        self.pump(myself);
        self.flush(myself, true);
    }

    /// No endpoint is certified for the classes found in the call's
    /// content, and `[governance.no_eligible_gate]` is set: a reviewer
    /// decides instead of the turn failing. True when the gate opened.
    fn no_eligible_gate(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        e: &baton_routing::RouteError,
        call_classes: &[String],
    ) -> bool {
        let shared = self.env.shared.clone();
        let Some(g) = &shared.config.governance.no_eligible_gate else {
            return false;
        };
        let state = &self.durable.state;
        let found: Vec<&String> = call_classes
            .iter()
            .filter(|c| !state.data_classes.contains(c))
            .collect();
        // Only when the classes found in the content alone exclude every
        // endpoint: not for a breaker, a budget or a capability.
        if e.failure_code() != TurnFailureCode::NoEligibleEndpoint
            || found.is_empty()
            || shared.router.certified_for(&state.route, call_classes)
            || !shared
                .router
                .certified_for(&state.route, &state.data_classes)
        {
            return false;
        }
        let terms = crate::gates::GateTerms {
            kind: baton_types::GateKind::DataRule,
            policy: "no_eligible_endpoint".into(),
            reason: format!(
                "{}; approve to send it to the route's endpoints without the classes found in its content ({}), reject to fail the turn",
                e.message,
                found
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            reviewers: g.reviewers.clone(),
            timeout_ms: g.timeout_ms,
            on_timeout: g.on_timeout,
        };
        let subject = serde_json::json!({
            "route": state.route,
            "found_classes": found,
            "reason": e.message,
        })
        .to_string();
        self.open_gate(turn, terms, GatePoint::ModelCall, subject, String::new());
        self.flush(myself, true);
        true
    }

    /// The records of a model answer, screened by the output and
    /// tool-argument policies; a final answer may be handed to quality
    /// scoring (`sent`: what it was written for).
    fn answer_kinds(
        &mut self,
        turn: u64,
        routed: baton_routing::Routed,
        latency_ms: u64,
        sent: &super::redaction::Sent,
    ) -> Vec<EventKind> {
        let mut kinds = self.answer_records(turn, routed, latency_ms);
        self.screen_output(turn, &mut kinds, &sent.question);
        self.screen_tool_calls(turn, &mut kinds);
        self.screen_client_tool_calls(turn, &mut kinds);
        self.submit_for_scoring(turn, &kinds, sent);
        kinds
    }

    /// Hand a final answer to quality scoring when it is sampled or an
    /// output policy flagged it; never waits.
    fn submit_for_scoring(&self, turn: u64, kinds: &[EventKind], sent: &super::redaction::Sent) {
        let shared = &self.env.shared;
        let state = &self.durable.state;
        if !shared.quality.scores() || state.replay_of.is_some() {
            return;
        }
        let Some(EventKind::AssistantMessage {
            message,
            endpoint,
            model,
            ..
        }) = kinds.first()
        else {
            return;
        };
        if !message.tool_calls.is_empty() {
            return;
        }
        let flagged = kinds.iter().any(|k| {
            matches!(k, EventKind::PolicyEvaluated { stage: baton_types::PolicyStage::Output, hits, .. } if !hits.is_empty())
        });
        if !shared
            .quality
            .wants(&state.route, self.env.id, turn, flagged)
        {
            return;
        }
        shared.quality.submit(crate::quality::ScoreJob {
            session: self.env.id,
            turn,
            route: state.route.clone(),
            endpoint: endpoint.clone(),
            model: model.clone(),
            request: sent.request.clone(),
            question: sent.question.clone(),
            answer: sent.raw.clone(),
            data_classes: sent.data_classes.clone(),
            own_keys: shared.own_keys.get(&state.tenant).cloned(),
        });
    }

    /// A final answer held for its output checks, now answered: screened
    /// and recorded as if it had just arrived.
    pub(super) fn release_answer(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        held: super::redaction::HeldAnswer,
    ) {
        let turn = held.turn;
        if self
            .durable
            .state
            .current
            .as_ref()
            .is_none_or(|c| c.turn != turn)
        {
            return;
        }
        let kinds = self.answer_kinds(turn, held.routed, held.latency_ms, &held.sent);
        for k in kinds {
            self.stage(k);
        }
        self.pump(myself);
        self.flush(myself, true);
    }

    /// The records of a model answer: the message, and a request per tool call.
    fn answer_records(
        &mut self,
        turn: u64,
        routed: baton_routing::Routed,
        latency_ms: u64,
    ) -> Vec<EventKind> {
        let state = &self.durable.state;
        let resp = routed.response;
        self.model.last_confidence = resp.confidence;
        let mut message = resp.message;
        message.role = Role::Assistant;
        normalise_call_ids(
            &mut message,
            turn,
            state.current.as_ref().map_or(0, |c| c.steps),
        );
        // A one-shot session hands tool calls to its client (the front
        // door's caller) instead of running them.
        let calls: Vec<_> = message
            .tool_calls
            .iter()
            .filter(|_| !state.one_shot)
            .map(|c| EventKind::ToolCallRequested {
                turn,
                call_id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
                client_side: state.client_tools.iter().any(|t| t.name == c.name),
            })
            .collect();
        let mut kinds = vec![EventKind::AssistantMessage {
            turn,
            message,
            usage: resp.usage,
            endpoint: routed.endpoint,
            model: resp.model,
            finish_reason: resp.finish_reason,
            latency_ms,
            cost_usd: routed.cost_usd,
            attempts: routed.attempts,
            schema_validated: routed.schema_validated,
            output_resumed: routed.output_resumed,
        }];
        kinds.extend(calls);
        kinds
    }
}

/// Give every tool call a unique, non-empty id (providers usually do; a
/// missing or repeated id would make results ambiguous).
fn normalise_call_ids(message: &mut Message, turn: u64, step: u32) {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in message.tool_calls.iter_mut().enumerate() {
        if c.id.is_empty() || !seen.insert(c.id.clone()) {
            c.id = format!("call_{turn}_{step}_{i}");
            seen.insert(c.id.clone());
        }
    }
}
