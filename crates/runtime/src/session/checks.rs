//! Policies' checks in a session: before a model call, the input rules'
//! classifiers are asked of the turn's new message (every rule) and of the
//! conversation's earlier user messages (`tag` rules only, so data classes
//! found by a classifier keep applying); before an answer is released, the
//! output rules' classifiers and evaluators are asked of it. Asked on a
//! task of their own; the actor waits (the turn's next step starts when
//! they are answered) but keeps answering requests. A replay asks none: its
//! rules that need them are left out.

use baton_governance::{Answer, Check, Pseudonyms, Stage};
use baton_models::ModelRequest;
use baton_types::Role;
use ractor::ActorRef;
use tracing::Instrument;

use super::ctx::SessionCtx;
use super::msg::SessionMsg;
use super::redaction::{HeldAnswer, Sent, subject_of};
use crate::checks::{Ask, CallTerms, key};

/// The key of `check` asked of `text` (an evaluator: of the answer `text`
/// to `question`).
fn check_key(check: &Check, text: &str, question: &str) -> crate::checks::Key {
    match check {
        Check::Evaluate { .. } => key(check, &[question, text]),
        Check::Classify { .. } => key(check, &[text]),
    }
}

impl SessionCtx {
    /// Whether this session asks checks at all.
    fn asks_checks(&self) -> bool {
        self.durable.state.replay_of.is_none() && !self.env.shared.policies.is_empty()
    }

    /// The answers this session has to the checks of `stage` (only `tag`
    /// rules' with `tags_only`) asked of `text`, by check id.
    pub(super) fn answers_for(
        &self,
        stage: Stage,
        text: &str,
        question: &str,
        tags_only: bool,
    ) -> Vec<(usize, Answer)> {
        if !self.asks_checks() {
            return Vec::new();
        }
        let policies = &self.env.shared.policies;
        let subject = subject_of(&self.durable.state, None);
        policies
            .checks(stage, &subject, tags_only)
            .into_iter()
            .filter_map(|id| {
                let check = policies.check(id)?;
                let answer = self.model.answers.get(&check_key(check, text, question))?;
                Some((id, answer.clone()))
            })
            .collect()
    }

    /// What `text` looks like to a model route (pseudonymised as the input
    /// policies would), and the data classes its call must be certified for.
    fn as_sent(&self, text: &str) -> (String, Vec<String>) {
        let state = &self.durable.state;
        let v = self
            .env
            .shared
            .policies
            .evaluate(Stage::Input, &subject_of(state, None), text);
        let redacted = if v.redact.is_empty() {
            text.to_string()
        } else {
            Pseudonyms::default().redact(text, &v.redact)
        };
        let mut classes = state.data_classes.clone();
        for c in v.data_classes {
            if !classes.contains(&c) {
                classes.push(c);
            }
        }
        (redacted, classes)
    }

    /// Add the checks of `ids` asked of `text` that have no answer here
    /// (or in the runtime's cache) to `asks`.
    #[allow(clippy::too_many_arguments)]
    fn want(
        &mut self,
        stage: Stage,
        ids: &[usize],
        text: &str,
        sent: Option<&str>,
        question: &str,
        classes: Option<&[String]>,
        asks: &mut Vec<Ask>,
    ) {
        let shared = self.env.shared.clone();
        for &id in ids {
            let Some(check) = shared.policies.check(id) else {
                continue;
            };
            if stage == Stage::Input && matches!(check, Check::Evaluate { .. }) {
                continue;
            }
            let k = check_key(check, text, question);
            if self.model.answers.get(&k).is_some() || asks.iter().any(|a| a.key == k) {
                continue;
            }
            if let Some(a) = shared.check_cache.get(&k) {
                self.model.answers.insert(k, a);
                continue;
            }
            let (redacted, data_classes) = match (sent, classes) {
                (Some(s), Some(c)) => (s.to_string(), c.to_vec()),
                _ => self.as_sent(text),
            };
            asks.push(Ask {
                check: check.clone(),
                key: k,
                text: text.to_string(),
                redacted,
                question: question.to_string(),
                data_classes,
            });
        }
    }

    /// Ask the input checks of the next model call of `turn` (`input`: the
    /// turn's new message, when it has not started). True when every
    /// answer is known; false when they are being asked (the call starts
    /// when they are answered).
    pub(super) fn input_checks_ready(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        request: &ModelRequest,
        input: Option<&str>,
    ) -> bool {
        if !self.asks_checks() {
            return true;
        }
        self.model.answers.trim();
        let policies = self.env.shared.policies.clone();
        let subject = subject_of(&self.durable.state, None);
        let all = policies.checks(Stage::Input, &subject, false);
        if all.is_empty() {
            return true;
        }
        let tags = policies.checks(Stage::Input, &subject, true);
        let mut asks = Vec::new();
        if let Some(text) = input {
            self.want(Stage::Input, &all, text, None, "", None, &mut asks);
        }
        // Earlier user messages: on the first turn (history the client
        // sent) every check, else those of tag rules.
        let history = if input.is_some() && self.first_turn(turn) {
            all.clone()
        } else {
            tags
        };
        if !history.is_empty() {
            for m in request
                .messages
                .iter()
                .filter(|m| m.role == Role::User && Some(m.content.as_str()) != input)
            {
                self.want(
                    Stage::Input,
                    &history,
                    &m.content,
                    None,
                    "",
                    None,
                    &mut asks,
                );
            }
        }
        if asks.is_empty() {
            return true;
        }
        self.ask(myself, turn, asks);
        false
    }

    /// Hold a final answer for its output checks when some have no answer
    /// yet: they are asked, and the answer is released when they are
    /// answered ([`Self::on_checked`]). Gives the answer back when it need
    /// not wait.
    pub(super) fn hold_for_checks(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        routed: baton_routing::Routed,
        latency_ms: u64,
        sent: Sent,
    ) -> Option<(baton_routing::Routed, Sent)> {
        let message = &routed.response.message;
        if !self.asks_checks() || !message.tool_calls.is_empty() {
            return Some((routed, sent));
        }
        let policies = self.env.shared.policies.clone();
        let ids = policies.checks(Stage::Output, &subject_of(&self.durable.state, None), false);
        if ids.is_empty() {
            return Some((routed, sent));
        }
        self.model.answers.trim();
        let mut asks = Vec::new();
        let text = message.content.clone();
        self.want(
            Stage::Output,
            &ids,
            &text,
            Some(&sent.raw),
            &sent.question,
            Some(&sent.data_classes),
            &mut asks,
        );
        if asks.is_empty() {
            return Some((routed, sent));
        }
        self.model.held = Some(HeldAnswer {
            turn,
            routed,
            latency_ms,
            sent,
        });
        self.ask(myself, turn, asks);
        None
    }

    /// Ask `asks` on a task of their own; [`SessionMsg::Checked`] brings
    /// the answers.
    fn ask(&mut self, myself: &ActorRef<SessionMsg>, turn: u64, asks: Vec<Ask>) {
        let state = &self.durable.state;
        let shared = self.env.shared.clone();
        let terms = CallTerms {
            own_keys: shared.own_keys.get(&state.tenant).cloned(),
            session_budget: state
                .budget_usd
                .map(|limit_usd| baton_routing::SessionBudget {
                    scope: self.env.id.to_string(),
                    limit_usd,
                    spent_usd: state.cost_usd + self.model.check_cost_usd,
                }),
            deadline: Some(tokio::time::Instant::now() + crate::checks::CHECK_TIMEOUT),
            cancel: tokio_util::sync::CancellationToken::new(),
        };
        self.model.checking = Some(turn);
        let me = myself.clone();
        let span = self.turn_span(turn);
        let keys: Vec<crate::checks::Key> = asks.iter().map(|a| a.key).collect();
        tokio::spawn(
            async move {
                let work = tokio::spawn(async move {
                    let checker = crate::checks::Checker {
                        router: &shared.router,
                        classifiers: &shared.policy_classifiers,
                        cache: &shared.check_cache,
                    };
                    crate::checks::answer_all(&checker, asks, &terms).await
                });
                // Whatever happens to the checks (a classifier that panics),
                // the session hears back: failed checks fail closed.
                let (answers, cost_usd) = work.await.unwrap_or_else(|e| {
                    let why = format!("the check failed: {e}");
                    (
                        keys.into_iter()
                            .map(|k| (k, Answer::Error(why.clone())))
                            .collect(),
                        0.0,
                    )
                });
                let _ = me.cast(SessionMsg::Checked {
                    turn,
                    answers,
                    cost_usd,
                });
            }
            .instrument(span),
        );
    }

    /// The checks of `turn` are answered: a held answer is released (or
    /// withheld) now, or the turn goes on.
    pub fn on_checked(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        turn: u64,
        answers: Vec<(crate::checks::Key, Answer)>,
        cost_usd: f64,
    ) {
        if self.model.checking != Some(turn) {
            // Cancelled or deleted meanwhile.
            return;
        }
        self.model.checking = None;
        for (k, a) in answers {
            self.model.answers.insert(k, a);
        }
        self.model.check_cost_usd += cost_usd;
        if let Some(held) = self.model.held.take()
            && held.turn == turn
        {
            self.release_answer(myself, held);
            return;
        }
        self.pump(myself);
        self.flush(myself, true);
    }

    /// The cost of checks not journaled yet, taken for a record.
    pub(super) fn take_check_cost(&mut self) -> Option<f64> {
        let usd = std::mem::take(&mut self.model.check_cost_usd);
        (usd > 0.0).then_some(usd)
    }
}
