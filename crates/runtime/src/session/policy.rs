//! Governance in a session: input policies on a turn's new message (its
//! hits journaled, a block failing the turn before anything is sent), every
//! model request pseudonymised, and the answer — streamed or not — restored
//! for the client where the policy allows.

use std::sync::Arc;

use baton_governance::{Finding, Outcome, Pseudonyms, Stage};
use baton_models::ModelRequest;
use baton_types::{EventKind, FinishReason, GatePoint, Message, Role, TurnFailureCode, Usage};
use ractor::ActorRef;

use super::ctx::SessionCtx;
use super::msg::SessionMsg;
use super::redaction::{Redaction, subject_of};
use crate::gates::GateTerms;

/// What the input policies decided for a model call.
pub(crate) enum Screened {
    /// The turn failed (`policy_blocked`); nothing is sent.
    Blocked,
    /// The turn was answered with a policy's refusal; nothing is sent.
    Refused,
    /// A policy's gate holds the call until a reviewer decides.
    Held,
    /// Send the (pseudonymised) request, with these data classes added.
    Pass {
        data_classes: Vec<String>,
        redaction: Option<Redaction>,
    },
}

/// `text` with each of `found` (in order, without overlaps) replaced by
/// `[removed: KIND]`.
pub(crate) fn mask(text: &str, found: &[Finding]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in found {
        if f.start < at || f.end > text.len() || !text.is_char_boundary(f.start) {
            continue;
        }
        out.push_str(&text[at..f.start]);
        out.push_str(&format!("[removed: {}]", f.kind.as_str()));
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

impl SessionCtx {
    /// Whether output policies apply: then the answer is held until it is
    /// checked (no deltas are streamed).
    pub(super) fn holds_output(&self) -> bool {
        self.env
            .shared
            .policies
            .applies(Stage::Output, &subject_of(&self.durable.state, None))
    }

    /// Whether `turn` is the session's first: its history (sent by the
    /// client) has not been screened as new yet.
    pub(super) fn first_turn(&self, turn: u64) -> bool {
        turn == 1 && !self.durable.state.messages.is_empty()
    }

    /// The gate a tool-argument policy's `gate` rule holds this call with.
    pub(super) fn tool_policy_gate(&self, name: &str, arguments: &str) -> Option<GateTerms> {
        let policies = &self.env.shared.policies;
        if policies.is_empty() {
            return None;
        }
        let subject = subject_of(&self.durable.state, Some(name));
        let held = policies
            .evaluate(Stage::ToolArguments, &subject, arguments)
            .gate?;
        Some(crate::gates::policy_terms(
            &held.policy,
            &held.message,
            &held.gate,
        ))
    }

    /// Tool-argument policies on the tool calls of a model answer (`kinds`,
    /// its records): hits are journaled right after the call's
    /// `ToolCallRequested`, and a blocked call gets its error result in the
    /// same batch, so it never runs (nor reaches a client) and the model
    /// sees why.
    pub(super) fn screen_tool_calls(&self, turn: u64, kinds: &mut Vec<EventKind>) {
        let policies = &self.env.shared.policies;
        if policies.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(kinds.len());
        for k in kinds.drain(..) {
            let mut extra = Vec::new();
            if let EventKind::ToolCallRequested {
                call_id,
                name,
                arguments,
                ..
            } = &k
            {
                let subject = subject_of(&self.durable.state, Some(name));
                let v = policies.evaluate(Stage::ToolArguments, &subject, arguments);
                if !v.hits.is_empty() {
                    extra.push(EventKind::PolicyEvaluated {
                        turn,
                        stage: Stage::ToolArguments,
                        hits: v.hits,
                        cost_usd: None,
                    });
                    if let Some(b) = v.blocked {
                        extra.push(EventKind::ToolResult {
                            by: String::new(),
                            turn,
                            call_id: call_id.clone(),
                            name: name.clone(),
                            output: format!("the call was not run: {}", b.message),
                            is_error: true,
                            latency_ms: 0,
                        });
                    }
                }
            }
            out.push(k);
            out.extend(extra);
        }
        *kinds = out;
    }

    /// Tool-argument policies on the tool calls a one-shot session (the
    /// front door) hands to its client, which runs them: `block` withholds
    /// the answer and fails the turn (`policy_blocked`); `gate` holds its
    /// release for a reviewer (the state records it).
    pub(super) fn screen_client_tool_calls(&self, turn: u64, kinds: &mut Vec<EventKind>) {
        let state = &self.durable.state;
        let policies = &self.env.shared.policies;
        if !state.one_shot || policies.is_empty() {
            return;
        }
        let Some(EventKind::AssistantMessage { message, .. }) = kinds.first_mut() else {
            return;
        };
        let mut hits = Vec::new();
        let mut blocked = None;
        for call in &message.tool_calls {
            let v = policies.evaluate(
                Stage::ToolArguments,
                &subject_of(state, Some(&call.name)),
                &call.arguments,
            );
            hits.extend(v.hits);
            if blocked.is_none() {
                blocked = v.blocked;
            }
        }
        if hits.is_empty() {
            return;
        }
        if blocked.is_some() {
            message.tool_calls.clear();
            message.content.clear();
        }
        kinds.push(EventKind::PolicyEvaluated {
            turn,
            stage: Stage::ToolArguments,
            hits,
            cost_usd: None,
        });
        if let Some(b) = blocked {
            kinds.push(EventKind::TurnFailed {
                turn,
                reason: b.message,
                code: TurnFailureCode::PolicyBlocked,
            });
        }
    }

    /// Tool-result policies on a result before the model sees it: `block`
    /// replaces it with an error naming the policy, `redact` masks what
    /// matched. The record to journal before it, when a rule matched.
    pub(super) fn screen_tool_result(&self, record: &mut EventKind) -> Option<EventKind> {
        let EventKind::ToolResult {
            turn,
            name,
            output,
            is_error,
            ..
        } = record
        else {
            return None;
        };
        let policies = &self.env.shared.policies;
        if policies.is_empty() {
            return None;
        }
        let subject = subject_of(&self.durable.state, Some(name));
        let v = policies.evaluate(Stage::ToolResult, &subject, output);
        if v.hits.is_empty() {
            return None;
        }
        if let Some(b) = v.blocked {
            *output = format!("the result was withheld: {}", b.message);
            *is_error = true;
        } else if !v.redact.is_empty() {
            *output = mask(output, &v.redact);
        }
        Some(EventKind::PolicyEvaluated {
            turn: *turn,
            stage: Stage::ToolResult,
            hits: v.hits,
            cost_usd: None,
        })
    }

    /// Apply the output policies to a final answer (`kinds` starts with its
    /// `AssistantMessage`; `question`: what its evaluators were asked
    /// about): hits are journaled after it (`PolicyEvaluated`); `redact`
    /// masks what matched; `block` withholds the answer and fails the turn;
    /// `revise` withholds it and asks the model again with the rule's
    /// instruction, at most `governance.max_revisions` times, then blocks;
    /// `gate` holds its release for a reviewer (the state records it, and
    /// `release_gate` opens the gate).
    pub(super) fn screen_output(&mut self, turn: u64, kinds: &mut Vec<EventKind>, question: &str) {
        let Some(EventKind::AssistantMessage { message, .. }) = kinds.first_mut() else {
            return;
        };
        if !message.tool_calls.is_empty() {
            return;
        }
        let shared = self.env.shared.clone();
        if !shared
            .policies
            .applies(Stage::Output, &subject_of(&self.durable.state, None))
        {
            return;
        }
        let answers = self.answers_for(Stage::Output, &message.content, question, false);
        let v = shared.policies.evaluate_with(
            Stage::Output,
            &subject_of(&self.durable.state, None),
            &message.content,
            &answers,
        );
        self.model.answers.forget_errors();
        let cost_usd = self.take_check_cost();
        if v.hits.is_empty() {
            if cost_usd.is_some() {
                kinds.push(EventKind::PolicyEvaluated {
                    turn,
                    stage: Stage::Output,
                    hits: Vec::new(),
                    cost_usd,
                });
            }
            return;
        }
        let max = shared.config.governance.max_revisions;
        let revisions = self
            .durable
            .state
            .current
            .as_ref()
            .map_or(0, |c| c.revisions);
        let mut hits = v.hits;
        let end = if let Some(b) = v.blocked {
            message.content.clear();
            Some(b.message)
        } else if let Some(r) = v.revise {
            message.content.clear();
            if revisions >= max {
                let still = |m: &str| format!("{m} (still after {max} revisions)");
                for h in hits.iter_mut().filter(|h| h.outcome == Outcome::Revise) {
                    h.outcome = Outcome::Block;
                    h.message = still(&h.message);
                }
                Some(still(&r.message))
            } else {
                None
            }
        } else {
            if !v.redact.is_empty() {
                message.content = mask(&message.content, &v.redact);
            }
            None
        };
        kinds.push(EventKind::PolicyEvaluated {
            turn,
            stage: Stage::Output,
            hits,
            cost_usd,
        });
        if let Some(reason) = end {
            kinds.push(EventKind::TurnFailed {
                turn,
                reason,
                code: TurnFailureCode::PolicyBlocked,
            });
        }
    }

    /// Apply the input policies to the next model call of `turn`. `input`
    /// is the turn's new message when the turn has not started yet: its
    /// hits are journaled (`PolicyEvaluated`, with the call's start record)
    /// and a blocking rule fails the turn. Every message of `request` —
    /// contents and tool-call arguments — is then pseudonymised, and the
    /// data classes its hits carry are returned for routing.
    pub(super) fn screen_input(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        request: &mut ModelRequest,
        input: Option<&str>,
    ) -> Screened {
        let policies = self.env.shared.policies.clone();
        if !policies.applies(Stage::Input, &subject_of(&self.durable.state, None)) {
            return Screened::Pass {
                data_classes: Vec::new(),
                redaction: None,
            };
        }
        let mut cache = std::mem::take(&mut self.model.screened);
        // The new message's verdict goes into the cache, so screening the
        // whole request below does not evaluate it again.
        if let Some(text) = input {
            let answers = self.answers_for(Stage::Input, text, "", false);
            let state = &self.durable.state;
            let mut v: baton_governance::Verdict = (*cache.get_or_eval(text, true, || {
                policies.evaluate_with(Stage::Input, &subject_of(state, None), text, &answers)
            }))
            .clone();
            // A session's first turn: the history its client sent (a
            // front-door conversation, StartSession.history) is new to the
            // policies too — its user messages under every input rule, its
            // tool results under the tool_result rules.
            let mut result_hits = Vec::new();
            if self.first_turn(turn) {
                let mut history: Vec<(Role, String)> = state
                    .messages
                    .iter()
                    .map(|m| (m.role, m.content.clone()))
                    .collect();
                // A conversation that ends with a tool result (the front
                // door's next call after a tool call): that result too.
                if let Some(q) = state.queued.iter().find(|q| q.turn == turn)
                    && q.message.role == Role::Tool
                {
                    history.push((Role::Tool, q.message.content.clone()));
                }
                for (role, h) in history {
                    match role {
                        Role::User => {
                            let answers = self.answers_for(Stage::Input, &h, "", false);
                            let state = &self.durable.state;
                            let hv = cache.get_or_eval(&h, true, || {
                                policies.evaluate_with(
                                    Stage::Input,
                                    &subject_of(state, None),
                                    &h,
                                    &answers,
                                )
                            });
                            v.hits.extend(hv.hits.iter().cloned());
                            if v.blocked.is_none() {
                                v.blocked = hv.blocked.clone();
                            }
                            if v.refused.is_none() {
                                v.refused = hv.refused.clone();
                            }
                            if v.gate.is_none() {
                                v.gate = hv.gate.clone();
                            }
                        }
                        Role::Tool => {
                            let tv = policies.evaluate(
                                Stage::ToolResult,
                                &subject_of(&self.durable.state, None),
                                &h,
                            );
                            if tv.hits.is_empty() {
                                continue;
                            }
                            let replaced = match &tv.blocked {
                                Some(b) => Some(format!("the result was withheld: {}", b.message)),
                                None if !tv.redact.is_empty() => Some(mask(&h, &tv.redact)),
                                None => None,
                            };
                            if let Some(r) = replaced {
                                for m in request
                                    .messages
                                    .iter_mut()
                                    .filter(|m| m.role == Role::Tool && m.content == h)
                                {
                                    m.content = r.clone();
                                }
                            }
                            if v.gate.is_none() {
                                v.gate = tv.gate.clone();
                            }
                            result_hits.extend(tv.hits);
                        }
                        _ => {}
                    }
                }
            }
            if !result_hits.is_empty() {
                self.stage(EventKind::PolicyEvaluated {
                    turn,
                    stage: Stage::ToolResult,
                    hits: result_hits,
                    cost_usd: None,
                });
            }
            let cost_usd = self.take_check_cost();
            if !v.hits.is_empty() || cost_usd.is_some() {
                let record = EventKind::PolicyEvaluated {
                    turn,
                    stage: Stage::Input,
                    hits: v.hits.clone(),
                    cost_usd,
                };
                if let Some(b) = &v.blocked {
                    self.model.screened = cache;
                    tracing::info!(
                        session = %self.env.id, turn, policy = %b.policy, rule = %b.rule,
                        "input blocked by policy"
                    );
                    self.commit(
                        myself,
                        vec![
                            record,
                            EventKind::TurnFailed {
                                turn,
                                reason: b.message.clone(),
                                code: TurnFailureCode::PolicyBlocked,
                            },
                        ],
                        true,
                    );
                    self.model.answers.forget_errors();
                    return Screened::Blocked;
                }
                if let Some(r) = &v.refused {
                    self.model.screened = cache;
                    tracing::info!(
                        session = %self.env.id, turn, policy = %r.policy, rule = %r.rule,
                        "input refused by policy"
                    );
                    // The refusal answers the turn; no model is asked.
                    self.commit(
                        myself,
                        vec![
                            record,
                            EventKind::AssistantMessage {
                                turn,
                                message: Message {
                                    role: Role::Assistant,
                                    content: r.message.clone(),
                                    tool_calls: Vec::new(),
                                    tool_call_id: None,
                                    images: Vec::new(),
                                },
                                usage: Usage::default(),
                                endpoint: String::new(),
                                model: String::new(),
                                finish_reason: FinishReason::Stop,
                                latency_ms: 0,
                                cost_usd: None,
                                attempts: 0,
                                schema_validated: false,
                                output_resumed: baton_types::OutputResume::None,
                            },
                        ],
                        true,
                    );
                    self.model.answers.forget_errors();
                    return Screened::Refused;
                }
                if let Some(h) = &v.gate {
                    self.model.screened = cache;
                    let terms = crate::gates::policy_terms(&h.policy, &h.message, &h.gate);
                    let subject = serde_json::json!({
                        "input": text,
                        "policy": h.policy,
                        "rule": h.rule,
                    })
                    .to_string();
                    self.stage(record);
                    self.open_gate(turn, terms, GatePoint::ModelCall, subject, String::new());
                    self.flush(myself, true);
                    self.model.answers.forget_errors();
                    return Screened::Held;
                }
                self.stage(record);
            }
        }
        // Data classes a classifier found in earlier messages keep applying
        // (tag rules); their answers are cached by content.
        let tagged: std::collections::HashMap<String, Vec<(usize, baton_governance::Answer)>> =
            request
                .messages
                .iter()
                .filter(|m| m.role == Role::User && Some(m.content.as_str()) != input)
                .map(|m| {
                    (
                        m.content.clone(),
                        self.answers_for(Stage::Input, &m.content, "", true),
                    )
                })
                .filter(|(_, a)| !a.is_empty())
                .collect();
        if let Some(cost_usd) = self.take_check_cost() {
            self.stage(EventKind::PolicyEvaluated {
                turn,
                stage: Stage::Input,
                hits: Vec::new(),
                cost_usd: Some(cost_usd),
            });
        }
        let subject = subject_of(&self.durable.state, None);
        let mut names = Pseudonyms::default();
        let mut data_classes: Vec<String> = Vec::new();
        let mut restore = true;
        let mut screen = |text: &mut String, user: bool| {
            let v = cache.get_or_eval(text, user, || match tagged.get(text.as_str()) {
                Some(answers) => policies.evaluate_with(Stage::Input, &subject, text, answers),
                None => policies.evaluate(Stage::Input, &subject, text),
            });
            for c in &v.data_classes {
                if !data_classes.contains(c) {
                    data_classes.push(c.clone());
                }
            }
            if !v.redact.is_empty() {
                restore &= v.restore;
                *text = names.redact(text, &v.redact);
            }
        };
        for m in &mut request.messages {
            screen(&mut m.content, m.role == Role::User);
            for call in &mut m.tool_calls {
                screen(&mut call.arguments, false);
            }
        }
        self.model.screened = cache;
        self.model.answers.forget_errors();
        let redaction = (!names.is_empty()).then(|| {
            let names = Arc::new(names);
            Redaction {
                stream: names.streaming(),
                names,
                restore,
            }
        });
        Screened::Pass {
            data_classes,
            redaction,
        }
    }
}
