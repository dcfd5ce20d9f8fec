//! The checks policies ask of something other than the text: classifiers
//! (a model route, or one the embedder registered) and evaluator routes.
//!
//! A session asks them on a task of its own before it evaluates the stage
//! (policy evaluation itself stays synchronous); answers are cached by a
//! SHA-256 of the check and the content, shared by every session, so a
//! text is classified once however many sessions and turns carry it.
//! Failed checks are not cached: the rule fails closed this time and the
//! next evaluation asks again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use baton_governance::check::{parse_label, parse_verdict};
use baton_governance::{Answer, Check, Via};
use baton_models::ModelRequest;
use baton_routing::{OwnKeys, RouteCall, SessionBudget};
use baton_types::Message;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// How long a check may take (its routed call, or a registered
/// classifier); past it the check fails (closed).
pub(crate) const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What an answer is cached under: a SHA-256 of the check and the content.
pub(crate) type Key = [u8; 32];

/// The cache key of `check` asked of `parts` (the text; for an evaluator,
/// the question and the answer).
pub(crate) fn key(check: &Check, parts: &[&str]) -> Key {
    let mut h = Sha256::new();
    h.update(check.cache_key().as_bytes());
    for p in parts {
        h.update([0u8]);
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// Answers by content hash, shared by every session.
#[derive(Default)]
pub(crate) struct CheckCache {
    map: Mutex<HashMap<Key, Answer>>,
}

/// Answers the cache keeps; past it, it starts again.
const CACHE_ENTRIES: usize = 65_536;

impl CheckCache {
    pub(crate) fn get(&self, key: &Key) -> Option<Answer> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn put(&self, key: Key, answer: &Answer) {
        if matches!(answer, Answer::Error(_)) {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= CACHE_ENTRIES {
            map.clear();
        }
        map.insert(key, answer.clone());
    }
}

/// One check to answer.
pub(crate) struct Ask {
    pub check: Check,
    pub key: Key,
    /// The text as a registered classifier sees it (in process: as is).
    pub text: String,
    /// The text as a model route sees it: pseudonymised by the input
    /// policies, as the main call's request is.
    pub redacted: String,
    /// An evaluator's question (pseudonymised).
    pub question: String,
    /// The data classes the routed call must be certified for.
    pub data_classes: Vec<String>,
}

/// What answers checks: the router, the registered classifiers, the cache.
pub(crate) struct Checker<'a> {
    pub router: &'a baton_routing::Router,
    pub classifiers: &'a HashMap<String, Arc<dyn baton_governance::Classifier>>,
    pub cache: &'a CheckCache,
}

/// The terms of the routed calls: the session's keys, budget and deadline.
pub(crate) struct CallTerms {
    pub own_keys: Option<Arc<OwnKeys>>,
    pub session_budget: Option<SessionBudget>,
    pub deadline: Option<tokio::time::Instant>,
    pub cancel: CancellationToken,
}

/// The answers to `asks` (asked concurrently, cached when they succeed),
/// and what their routed calls cost.
pub(crate) async fn answer_all(
    shared: &Checker<'_>,
    asks: Vec<Ask>,
    terms: &CallTerms,
) -> (Vec<(Key, Answer)>, f64) {
    let answers = futures::future::join_all(asks.iter().map(|a| answer(shared, a, terms))).await;
    let mut cost = 0.0;
    let mut out = Vec::with_capacity(asks.len());
    for (ask, (answer, usd)) in asks.into_iter().zip(answers) {
        cost += usd;
        shared.cache.put(ask.key, &answer);
        baton_metrics::metrics().policy_check(&ask.check.kind(), answer_label(&answer));
        out.push((ask.key, answer));
    }
    (out, cost)
}

/// How an answer is counted in metrics.
fn answer_label(a: &Answer) -> &'static str {
    match a {
        Answer::Label(_) => "label",
        Answer::Pass => "pass",
        Answer::Fail(_) => "fail",
        Answer::Error(_) => "error",
    }
}

/// One answer, and what its routed call cost.
async fn answer(shared: &Checker<'_>, ask: &Ask, terms: &CallTerms) -> (Answer, f64) {
    match &ask.check {
        Check::Classify {
            via: Via::Embedder(name),
            labels,
            ..
        } => {
            let Some(c) = shared.classifiers.get(name) else {
                return (
                    Answer::Error(format!("no policy classifier named {name:?} is registered")),
                    0.0,
                );
            };
            let answer = match tokio::time::timeout(CHECK_TIMEOUT, c.label(&ask.text, labels)).await
            {
                Ok(Ok(l)) if labels.is_empty() || labels.contains(&l) => Answer::Label(l),
                Ok(Ok(_)) => Answer::Error(format!(
                    "classifier {name:?} answered a label that is not one of {}",
                    labels.join(", ")
                )),
                Ok(Err(e)) => Answer::Error(format!("classifier {name:?}: {e}")),
                Err(_) => Answer::Error(format!(
                    "classifier {name:?} did not answer within {} s",
                    CHECK_TIMEOUT.as_secs()
                )),
            };
            (answer, 0.0)
        }
        Check::Classify {
            via: Via::Route(route),
            labels,
            instructions,
        } => {
            let mut request = ModelRequest::new(vec![
                Message::system(Check::classifier_prompt(labels, instructions.as_deref())),
                Message::user(ask.redacted.clone()),
            ]);
            request.temperature = Some(0.0);
            request.max_output_tokens = Some(32);
            match routed(shared, route, request, ask, terms).await {
                Ok((text, usd)) => (
                    parse_label(&text, labels)
                        .map(Answer::Label)
                        .unwrap_or_else(|e| Answer::Error(format!("route {route}: {e}"))),
                    usd,
                ),
                Err((e, usd)) => (Answer::Error(e), usd),
            }
        }
        Check::Evaluate { route, prompt } => {
            let text =
                baton_routing::evaluator_prompt(prompt.as_deref(), &ask.question, &ask.redacted);
            let mut request = ModelRequest::new(vec![Message::user(text)]);
            request.temperature = Some(0.0);
            match routed(shared, route, request, ask, terms).await {
                Ok((text, usd)) => (parse_verdict(&text), usd),
                Err((e, usd)) => (Answer::Error(e), usd),
            }
        }
    }
}

/// A routed call's answer text and cost, or why it failed.
async fn routed(
    shared: &Checker<'_>,
    route: &str,
    request: ModelRequest,
    ask: &Ask,
    terms: &CallTerms,
) -> Result<(String, f64), (String, f64)> {
    let call = RouteCall {
        route: route.to_string(),
        request: Arc::new(request),
        needs_vision: false,
        data_classes: ask.data_classes.clone(),
        deltas: None,
        events: None,
        cancel: terms.cancel.clone(),
        deadline: terms.deadline,
        session_budget: terms.session_budget.clone(),
        own_keys: terms.own_keys.clone(),
    };
    match shared.router.call(call).await {
        Ok(r) => Ok((r.response.message.content, r.cost_usd.unwrap_or(0.0))),
        Err(e) => Err((
            format!("route {route} failed: {}", e.message),
            e.cost_usd.unwrap_or(0.0),
        )),
    }
}
