//! Governance in a session: input policies on a turn's new message (its
//! hits journaled, a block failing the turn before anything is sent), every
//! model request pseudonymised, and the answer — streamed or not — restored
//! for the client where the policy allows.

use std::sync::Arc;

use baton_governance::{Finding, Outcome, Pseudonyms, Stage, Subject};
use baton_models::ModelRequest;
use baton_types::{EventKind, TurnFailureCode};
use ractor::ActorRef;

use super::ctx::SessionCtx;
use super::msg::SessionMsg;
use super::redaction::Redaction;
use crate::state::SessionState;

/// What the input policies decided for a model call.
pub(crate) enum Screened {
    /// The turn failed (`policy_blocked`); nothing is sent.
    Blocked,
    /// Send the (pseudonymised) request, with these data classes added.
    Pass {
        data_classes: Vec<String>,
        redaction: Option<Redaction>,
    },
}

/// `text` with each of `found` (in order, without overlaps) replaced by
/// `[removed: KIND]`.
fn mask(text: &str, found: &[Finding]) -> String {
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

/// The policies' view of a session: its tenant, route and metadata (and,
/// at the tool stages, the tool), borrowed from its state.
fn subject_of<'a>(state: &'a SessionState, tool: Option<&'a str>) -> Subject<'a> {
    Subject {
        tenant: &state.tenant,
        route: &state.route,
        metadata: &state.metadata,
        tool,
    }
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
        })
    }

    /// Apply the output policies to a final answer (`kinds` starts with its
    /// `AssistantMessage`): hits are journaled after it (`PolicyEvaluated`);
    /// `redact` masks what matched; `block` withholds the answer and fails
    /// the turn; `revise` withholds it and asks the model again with the
    /// rule's instruction, at most `governance.max_revisions` times, then
    /// blocks.
    pub(super) fn screen_output(&self, turn: u64, kinds: &mut Vec<EventKind>) {
        let Some(EventKind::AssistantMessage { message, .. }) = kinds.first_mut() else {
            return;
        };
        if !message.tool_calls.is_empty() {
            return;
        }
        let subject = subject_of(&self.durable.state, None);
        let shared = &self.env.shared;
        if !shared.policies.applies(Stage::Output, &subject) {
            return;
        }
        let v = shared
            .policies
            .evaluate(Stage::Output, &subject, &message.content);
        if v.hits.is_empty() {
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
            let state = &self.durable.state;
            let v = cache.get_or_eval(text, || {
                policies.evaluate(Stage::Input, &subject_of(state, None), text)
            });
            if !v.hits.is_empty() {
                let record = EventKind::PolicyEvaluated {
                    turn,
                    stage: Stage::Input,
                    hits: v.hits.clone(),
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
                    return Screened::Blocked;
                }
                self.stage(record);
            }
        }
        let subject = subject_of(&self.durable.state, None);
        let mut names = Pseudonyms::default();
        let mut data_classes: Vec<String> = Vec::new();
        let mut restore = true;
        let mut screen = |text: &mut String| {
            let v = cache.get_or_eval(text, || policies.evaluate(Stage::Input, &subject, text));
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
            screen(&mut m.content);
            for call in &mut m.tool_calls {
                screen(&mut call.arguments);
            }
        }
        self.model.screened = cache;
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
