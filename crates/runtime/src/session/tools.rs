//! The tool calls of a turn's step: validated, gated, started once their
//! start record is durable, answered by the server or the client.

use std::time::Instant;

use baton_tools::{ToolError, ToolFilter};
use baton_types::{
    Decision, EventKind, GateKind, GateOutcome, GatePoint, ToolDefinition, now_unix_ms,
};
use ractor::{ActorRef, RpcReplyPort};
use tracing::Instrument;

use super::ctx::{SessionCtx, ToolRun};
use super::msg::SessionMsg;
use crate::error::{Error, Result};
use crate::gates::builtin_terms;
use crate::state::PendingTool;

impl SessionCtx {
    /// The tool definitions offered to the model: allowed server-side tools
    /// plus the session's client-side tools.
    pub fn tool_definitions(&self) -> Vec<ToolDefinition> {
        let filter = self.tool_filter();
        let mut defs = self.env.shared.tools.registry.definitions(&filter);
        defs.extend(self.durable.state.client_tools.iter().cloned());
        defs
    }

    fn tool_filter(&self) -> ToolFilter {
        let patterns = if self.durable.state.allowed_tools.is_empty() {
            &self.env.shared.config.tools.default_allowed
        } else {
            &self.durable.state.allowed_tools
        };
        // Patterns were validated when the session started.
        ToolFilter::new(patterns).unwrap_or_else(|_| ToolFilter::none())
    }

    /// Drive the current step's tool calls. True when every result is in
    /// (the loop continues with the next model call).
    pub fn pump_tools(&mut self, myself: &ActorRef<SessionMsg>) -> bool {
        let shared = self.env.shared.clone();
        let Some(current) = self.durable.state.current.as_ref() else {
            return false;
        };
        let turn = current.turn;
        let limit = shared.config.tools.max_parallel_calls.max(1);
        let filter = self.tool_filter();
        let registry = &shared.tools.registry;
        let mut records = Vec::new();
        let mut to_start = Vec::new();
        let mut running = self.tools.runs.len();
        let mut arm = Vec::new();
        let mut gates = Vec::new();
        for t in current.tools.iter().filter(|t| t.result.is_none()) {
            if t.attention.is_some()
                || self.tools.runs.contains_key(&t.call_id)
                || current.gates.iter().any(|g| g.call_id == t.call_id)
            {
                continue;
            }
            if t.client_side {
                if !self.tools.client_timers.contains(&t.call_id) {
                    arm.push((t.call_id.clone(), t.requested_at_unix_ms));
                }
                continue;
            }
            let tool = filter
                .allows(&t.name)
                .then(|| registry.get(&t.name))
                .flatten();
            let Some(tool) = tool else {
                records.push(tool_error(
                    turn,
                    t,
                    &ToolError::UnknownTool(t.name.clone()),
                    0,
                ));
                continue;
            };
            if t.started && !tool.spec().idempotent {
                let reason = format!(
                    "tool {} is not idempotent and its call {} started before a restart without a recorded result; \
                     it may or may not have run: decide its gate (approve runs it again, edit supplies its result, \
                     reject gives the model an error), submit its result with SubmitToolResult, or cancel the turn",
                    t.name, t.call_id
                );
                records.push(EventKind::NeedsAttention {
                    turn,
                    call_id: t.call_id.clone(),
                    reason: reason.clone(),
                });
                let terms = builtin_terms(
                    &shared.config.gates.needs_attention,
                    GateKind::NeedsAttention,
                    "needs_attention",
                    reason,
                );
                gates.push((t.call_id.clone(), terms, tool_subject(t)));
                continue;
            }
            let args = match registry.validate(&t.name, &t.arguments) {
                Ok(args) => args,
                Err(e) => {
                    records.push(tool_error(turn, t, &e, 0));
                    continue;
                }
            };
            if !current.is_approved(GatePoint::ToolCall, &t.call_id)
                && let Some(terms) = shared.gate_policies.before_tool(
                    &self.durable.state.tenant,
                    &self.durable.state.route,
                    &t.name,
                )
            {
                gates.push((t.call_id.clone(), terms, tool_subject(t)));
                continue;
            }
            if !current.is_approved(GatePoint::ToolCall, &t.call_id)
                && let Some(terms) = self.tool_policy_gate(&t.name, &t.arguments)
            {
                gates.push((t.call_id.clone(), terms, tool_subject(t)));
                continue;
            }
            if running >= limit {
                continue;
            }
            running += 1;
            records.push(EventKind::ToolCallStarted {
                turn,
                call_id: t.call_id.clone(),
                name: t.name.clone(),
                attempt: t.attempt + 1,
            });
            to_start.push((t.call_id.clone(), t.name.clone(), t.attempt + 1, args));
        }
        let timeout_ms = shared.config.tools.client_tool_timeout_ms;
        for (call_id, requested_at) in arm {
            let due = requested_at.saturating_add(timeout_ms);
            let wait = std::time::Duration::from_millis(due.saturating_sub(now_unix_ms()));
            let id = call_id.clone();
            myself.send_after(wait, move || SessionMsg::ClientToolTimeout {
                turn,
                call_id: id,
            });
            self.tools.client_timers.insert(call_id);
        }
        if records.is_empty() && gates.is_empty() {
            return false;
        }
        for r in records {
            self.stage(r);
        }
        for (call_id, terms, subject) in gates {
            self.open_gate(turn, terms, GatePoint::ToolCall, subject, call_id);
        }
        self.flush(myself, true);
        // A tool runs only once its ToolCallStarted is durable: after a crash,
        // "started, no result" then reliably means "may have run".
        let upto = self.durable.state.last_seq;
        for (call_id, name, attempt, args) in to_start {
            self.tools.runs.insert(
                call_id,
                ToolRun {
                    start_after_seq: upto,
                    name,
                    attempt,
                    args: Some(args),
                },
            );
        }
        self.durable
            .state
            .current
            .as_ref()
            .is_some_and(|c| c.tools.is_empty())
    }

    /// Run tools whose start record is now durable.
    pub fn start_durable_tools(&mut self, myself: &ActorRef<SessionMsg>, upto: u64) {
        if self.tools.runs.is_empty() {
            return;
        }
        let Some(turn) = self.durable.state.current.as_ref().map(|c| c.turn) else {
            return;
        };
        let parent = self.turn_parent(turn);
        let source = self.source();
        for (call_id, run) in self.tools.runs.iter_mut() {
            if run.start_after_seq > upto {
                continue;
            }
            let Some(args) = run.args.take() else {
                continue;
            };
            let result = source.tool_call(call_id, &run.name, args);
            let me = myself.clone();
            let (call_id, attempt, name) = (call_id.clone(), run.attempt, run.name.clone());
            let started = Instant::now();
            let span = tracing::info_span!(
                parent: &parent,
                "tool.call",
                gen_ai.operation.name = "execute_tool",
                gen_ai.tool.name = %name,
                gen_ai.tool.call.id = %call_id,
                baton.session.id = %self.env.id,
                "error.type" = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            tokio::spawn(
                async move {
                    let result = result.await;
                    let latency_ms = started.elapsed().as_millis() as u64;
                    let outcome = if result.is_ok() { "ok" } else { "error" };
                    if let Err(e) = &result {
                        let span = tracing::Span::current();
                        span.record("error.type", e.to_string());
                        span.record("otel.status_code", "error");
                    }
                    baton_metrics::metrics().tool_call(
                        &name,
                        outcome,
                        started.elapsed().as_secs_f64(),
                    );
                    let _ = me.cast(SessionMsg::ToolDone {
                        turn,
                        call_id,
                        attempt,
                        result,
                        latency_ms,
                    });
                }
                .instrument(span),
            );
        }
    }

    pub fn on_tool_done(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        call_id: String,
        attempt: u32,
        result: std::result::Result<String, ToolError>,
        latency_ms: u64,
    ) {
        if self
            .tools
            .runs
            .get(&call_id)
            .is_none_or(|r| r.attempt != attempt)
        {
            return;
        }
        self.tools.runs.remove(&call_id);
        let Some(t) = self.durable.state.unanswered_tool(turn, &call_id) else {
            return;
        };
        let mut record = match result {
            Ok(output) => EventKind::ToolResult {
                by: String::new(),
                turn,
                call_id: t.call_id.clone(),
                name: t.name.clone(),
                output,
                is_error: false,
                latency_ms,
            },
            Err(e) => tool_error(turn, t, &e, latency_ms),
        };
        let screened = self.screen_tool_result(&mut record);
        self.commit(myself, screened.into_iter().chain([record]).collect(), true);
        self.pump(myself);
    }

    /// The result a client submitted, checked against the call it answers.
    fn submitted_result(
        &self,
        call_id: &str,
        output: String,
        is_error: bool,
        by: String,
    ) -> Result<EventKind> {
        self.ensure_found()?;
        let id = self.env.id;
        let state = &self.durable.state;
        let pending = state.current.as_ref().and_then(|c| {
            c.tools
                .iter()
                .find(|t| t.call_id == call_id)
                .map(|t| (c.turn, t))
        });
        let Some((turn, t)) = pending else {
            if state.tool_call_answered(call_id) {
                return Err(Error::FailedPrecondition(format!(
                    "tool call {call_id} of session {id} already has a result"
                )));
            }
            return Err(Error::NotFoundDetail(format!(
                "session {id} has no pending tool call {call_id:?}"
            )));
        };
        if t.result.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "tool call {call_id} of session {id} already has a result"
            )));
        }
        if !t.client_side && t.attention.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "tool call {call_id} ({}) runs on the server; only client-side calls and calls that need attention accept a submitted result",
                t.name
            )));
        }
        Ok(EventKind::ToolResult {
            by,
            turn,
            call_id: t.call_id.clone(),
            name: t.name.clone(),
            output,
            is_error,
            latency_ms: now_unix_ms().saturating_sub(t.requested_at_unix_ms),
        })
    }

    /// A client answers a client-side call (or one that needs attention,
    /// which also decides its gate). Acknowledged once durable.
    pub fn submit_tool_result(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        call_id: String,
        output: String,
        is_error: bool,
        by: String,
        reply: RpcReplyPort<Result<u64>>,
    ) {
        let mut record = match self.submitted_result(&call_id, output, is_error, by) {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let screened = self.screen_tool_result(&mut record);
        self.tools.runs.remove(&call_id);
        let gate = self.durable.state.current.as_ref().and_then(|c| {
            c.gates
                .iter()
                .find(|g| g.call_id == call_id)
                .map(|g| (c.turn, g.gate_id))
        });
        if let Some((turn, gate_id)) = gate {
            let edited = match &record {
                EventKind::ToolResult { output, .. } => output.clone(),
                _ => String::new(),
            };
            self.record_decision(
                turn,
                gate_id,
                GateOutcome {
                    decision: Decision::Edit,
                    reviewer: "SubmitToolResult".into(),
                    reason: "the result was submitted".into(),
                    edited,
                    decided_at_unix_ms: now_unix_ms(),
                    by_timeout: false,
                },
            );
        }
        self.commit(myself, screened.into_iter().chain([record]).collect(), true);
        self.outbox.ack_at(self.durable.state.last_seq, reply);
        self.pump(myself);
    }

    pub fn on_client_timeout(&mut self, myself: &ActorRef<SessionMsg>, turn: u64, call_id: String) {
        self.tools.client_timers.remove(&call_id);
        let timeout_ms = self.env.shared.config.tools.client_tool_timeout_ms;
        let Some(t) = self.durable.state.unanswered_tool(turn, &call_id) else {
            return;
        };
        let record = EventKind::ToolResult {
            by: String::new(),
            turn,
            call_id: t.call_id.clone(),
            name: t.name.clone(),
            output: format!(
                "the client did not submit a result for {} within {timeout_ms} ms",
                t.name
            ),
            is_error: true,
            latency_ms: now_unix_ms().saturating_sub(t.requested_at_unix_ms),
        };
        self.commit(myself, vec![record], true);
        self.pump(myself);
    }
}

/// The tool-error result the model sees for a call.
fn tool_error(turn: u64, t: &PendingTool, e: &ToolError, latency_ms: u64) -> EventKind {
    EventKind::ToolResult {
        by: String::new(),
        turn,
        call_id: t.call_id.clone(),
        name: t.name.clone(),
        output: format!("error: {e}"),
        is_error: true,
        latency_ms,
    }
}

/// What a tool-call gate shows the reviewer.
fn tool_subject(t: &PendingTool) -> String {
    let arguments: serde_json::Value = serde_json::from_str(&t.arguments)
        .unwrap_or_else(|_| serde_json::Value::String(t.arguments.clone()));
    serde_json::json!({ "tool": t.name, "call_id": t.call_id, "arguments": arguments }).to_string()
}
