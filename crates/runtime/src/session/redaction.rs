//! The per-call and per-session data of governance in a session: how a
//! request was pseudonymised (to restore its answer), the verdicts of texts
//! already screened, the answers of policies' checks, and an answer held
//! for its checks.

use std::sync::Arc;

use baton_governance::{Pseudonyms, StreamRestorer, Subject};

use crate::state::SessionState;

/// The policies' view of a session: its tenant, route and metadata (and,
/// at the tool stages, the tool), borrowed from its state.
pub(crate) fn subject_of<'a>(state: &'a SessionState, tool: Option<&'a str>) -> Subject<'a> {
    Subject {
        tenant: &state.tenant,
        route: &state.route,
        metadata: &state.metadata,
        tool,
    }
}

/// How one model call's request was pseudonymised.
pub(crate) struct Redaction {
    pub(super) names: Arc<Pseudonyms>,
    pub(super) stream: StreamRestorer,
    /// Put the values back in what the client gets.
    pub(super) restore: bool,
}

impl Redaction {
    /// A streamed piece of the answer as the client may see it.
    pub(crate) fn delta(&mut self, text: String) -> String {
        if self.restore {
            self.stream.push(&text)
        } else {
            text
        }
    }

    /// The attempt that streamed so far failed: drop what is held.
    pub(crate) fn restart(&mut self) {
        self.stream.reset();
    }

    /// What the stream still holds, at the end of the answer.
    pub(crate) fn finish(&mut self) -> String {
        if self.restore {
            self.stream.finish()
        } else {
            String::new()
        }
    }

    /// The answer's text (or a tool call's arguments) as the client and
    /// the journal get it.
    pub(crate) fn restore(&self, text: &str) -> String {
        if self.restore {
            self.names.restore(text)
        } else {
            text.to_string()
        }
    }
}

/// Verdicts by a hash of the text evaluated (one session: its tenant,
/// route and metadata, which select the policies, do not change).
#[derive(Default)]
pub(crate) struct VerdictCache {
    by_hash: std::collections::HashMap<u64, Arc<baton_governance::Verdict>>,
}

/// Verdicts a session keeps; past it, the cache starts again (a
/// conversation longer than this is screened afresh once).
const VERDICT_CACHE_ENTRIES: usize = 1024;

impl VerdictCache {
    /// The verdict of `text`; `user`: a user's message (whose verdict
    /// may take classifiers' answers), cached apart from the same text
    /// elsewhere.
    pub(super) fn get_or_eval(
        &mut self,
        text: &str,
        user: bool,
        eval: impl FnOnce() -> baton_governance::Verdict,
    ) -> Arc<baton_governance::Verdict> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        user.hash(&mut h);
        let key = h.finish();
        if let Some(v) = self.by_hash.get(&key) {
            return v.clone();
        }
        if self.by_hash.len() >= VERDICT_CACHE_ENTRIES {
            self.by_hash.clear();
        }
        let v = Arc::new(eval());
        self.by_hash.insert(key, v.clone());
        v
    }
}

/// Answers of policies' checks (classifiers, evaluators) by content hash,
/// for one session (the runtime's shared cache backs it).
#[derive(Default)]
pub(crate) struct CheckAnswers {
    by_key: std::collections::HashMap<crate::checks::Key, baton_governance::Answer>,
}

impl CheckAnswers {
    pub(crate) fn get(&self, key: &crate::checks::Key) -> Option<&baton_governance::Answer> {
        self.by_key.get(key)
    }

    /// Add an answer. Nothing is evicted here: the answers a call was
    /// asked for stay until it is screened (see [`Self::trim`]).
    pub(crate) fn insert(&mut self, key: crate::checks::Key, answer: baton_governance::Answer) {
        self.by_key.insert(key, answer);
    }

    /// Before a call asks its checks: past its bound the map starts again.
    pub(crate) fn trim(&mut self) {
        if self.by_key.len() >= VERDICT_CACHE_ENTRIES {
            self.by_key.clear();
        }
    }

    /// After a screening used them: failed answers are dropped, so the
    /// next call asks again (each screening sees its own failures, and
    /// fails closed on them).
    pub(crate) fn forget_errors(&mut self) {
        self.by_key
            .retain(|_, a| !matches!(a, baton_governance::Answer::Error(_)));
    }
}

/// A final answer whose output checks are being asked: released (or
/// withheld) when they are answered. Not journaled meanwhile: a crash
/// loses it, and the model call is issued again.
pub(crate) struct HeldAnswer {
    pub(crate) turn: u64,
    pub(crate) routed: baton_routing::Routed,
    pub(crate) latency_ms: u64,
    pub(crate) sent: Sent,
}

/// What a model call's answer was written for, as sent upstream
/// (pseudonymised): for its checks and its quality score.
pub(crate) struct Sent {
    /// The answer as the model wrote it.
    pub(crate) raw: String,
    /// The user's question (the request's last user message that is not
    /// the runtime's own note to the model).
    pub(crate) question: String,
    pub(crate) request: Arc<baton_models::ModelRequest>,
    /// The data classes the call was routed under.
    pub(crate) data_classes: Vec<String>,
}
