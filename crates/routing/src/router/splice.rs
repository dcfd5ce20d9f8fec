//! [`Splice`]: what a streaming caller holds of a routed call's answer, and
//! how a later attempt's text is joined onto it.
//!
//! When an attempt fails after its text reached the caller, the call goes
//! on with another attempt, and the caller must still end up with one
//! answer, nothing repeated and nothing missing. The next attempt resumes:
//!
//! - **continuation**: an endpoint that can continue a partial answer (its
//!   `continuation` setting) is asked to, the text sent as the start of its
//!   answer; what it writes follows on;
//! - **prefix**: any other endpoint is asked again; its text is held while
//!   it re-writes what was sent, and only what goes beyond is streamed;
//! - **retracted**: when the new answer does not begin with the text sent,
//!   that text is retracted ([`Delta::Restart`], journaled as
//!   `OutputRetracted`) and the new answer streamed from its start.
//!
//! The answer returned is always the text the caller holds.

use std::sync::{Mutex, MutexGuard, PoisonError};

use baton_models::{Continuation, Delta, DeltaSink};
use baton_types::OutputResume;

/// The caller's side of a routed call's text. Shared (behind a lock) by the
/// call loop and the attempt that streams.
pub(super) struct Splice {
    sink: DeltaSink,
    inner: Mutex<Inner>,
}

struct Inner {
    /// The text the caller holds.
    sent: String,
    mode: Mode,
    /// How the last resumption went.
    resumed: OutputResume,
}

enum Mode {
    /// Text goes to the caller as it comes.
    Open,
    /// A retry that re-writes `sent`: its text so far, held back.
    Matching { got: String },
    /// A continuation of `base` (what the caller held when it started).
    Continuing {
        base: String,
        /// The endpoint was sent `base` without its trailing whitespace
        /// (which the caller has): the continuation's leading whitespace
        /// is not the caller's to get again.
        trimmed: bool,
        /// Dropping leading whitespace still (until the first other
        /// character of the continuation).
        skip_space: bool,
    },
}

/// How an attempt is to resume what the caller holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Resume {
    /// Nothing to resume: the attempt's text goes to the caller as it comes.
    Fresh,
    /// Ask the endpoint for the whole answer and match it against this text.
    Prefix,
    /// Ask the endpoint to continue this text.
    Continue(String),
}

impl Splice {
    pub(super) fn new(sink: DeltaSink) -> Self {
        Self {
            sink,
            inner: Mutex::new(Inner {
                sent: String::new(),
                mode: Mode::Open,
                resumed: OutputResume::None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The caller holds some of the answer.
    pub(super) fn holds_text(&self) -> bool {
        !self.lock().sent.is_empty()
    }

    /// Ready an attempt that streams, on an endpoint that continues answers
    /// as `continuation` says: how it is to resume what the caller holds.
    pub(super) fn begin(&self, continuation: Continuation) -> Resume {
        let mut inner = self.lock();
        if inner.sent.is_empty() {
            inner.mode = Mode::Open;
            return Resume::Fresh;
        }
        // A prefill must not be blank (Anthropic refuses one).
        let can_continue = match continuation {
            Continuation::None => false,
            Continuation::Prefill => !inner.sent.trim_end().is_empty(),
            Continuation::ContinueFinalMessage | Continuation::Prefix => true,
        };
        if can_continue {
            let base = inner.sent.clone();
            let trimmed =
                continuation == Continuation::Prefill && base.ends_with(char::is_whitespace);
            inner.mode = Mode::Continuing {
                base: base.clone(),
                trimmed,
                skip_space: trimmed,
            };
            Resume::Continue(base)
        } else {
            inner.mode = Mode::Matching { got: String::new() };
            Resume::Prefix
        }
    }

    /// More text of the attempt that streams; `true` when some of it
    /// reached the caller.
    pub(super) fn push(&self, text: String) -> bool {
        let mut inner = self.lock();
        let inner = &mut *inner;
        match &mut inner.mode {
            Mode::Open => self.send(&mut inner.sent, text),
            Mode::Continuing { skip_space, .. } => {
                let text = if *skip_space {
                    let rest = text.trim_start();
                    if rest.is_empty() {
                        return false;
                    }
                    *skip_space = false;
                    rest.to_string()
                } else {
                    text
                };
                inner.resumed = OutputResume::Continuation;
                self.send(&mut inner.sent, text)
            }
            Mode::Matching { got } => {
                // `got` is the start of `sent` so far: compare only the
                // new text with what follows it (linear in the answer).
                let ahead = &inner.sent[got.len()..];
                if ahead.starts_with(text.as_str()) {
                    // Still re-writing what the caller has.
                    got.push_str(&text);
                    false
                } else if let Some(rest) = text.strip_prefix(ahead) {
                    let rest = rest.to_string();
                    inner.mode = Mode::Open;
                    inner.resumed = OutputResume::Prefix;
                    self.send(&mut inner.sent, rest)
                } else {
                    let whole = format!("{got}{text}");
                    self.retract(inner);
                    self.send(&mut inner.sent, whole)
                }
            }
        }
    }

    /// The attempt that streams answered `content`: the rest of it goes to
    /// the caller (all of it when the endpoint did not stream), and the
    /// answer becomes what the caller then holds (a continuation's answer
    /// is the text it continued plus its own). `true` when text went to
    /// the caller now.
    pub(super) fn answered(&self, content: &mut String) -> bool {
        let mut inner = self.lock();
        let inner = &mut *inner;
        match std::mem::replace(&mut inner.mode, Mode::Open) {
            Mode::Open => {
                // Everything streamed (or the endpoint does not stream, and
                // the caller gets the answer from the final message).
                if inner.sent.is_empty() || content.starts_with(inner.sent.as_str()) {
                    return false;
                }
                // An answer that differs from its own stream.
                self.retract(inner);
                self.send(&mut inner.sent, content.clone())
            }
            Mode::Matching { .. } => {
                if let Some(rest) = content.strip_prefix(inner.sent.as_str()) {
                    let rest = rest.to_string();
                    inner.resumed = OutputResume::Prefix;
                    self.send(&mut inner.sent, rest)
                } else {
                    self.retract(inner);
                    self.send(&mut inner.sent, content.clone())
                }
            }
            Mode::Continuing { base, trimmed, .. } => {
                inner.resumed = OutputResume::Continuation;
                let own = if trimmed {
                    content.trim_start()
                } else {
                    content.as_str()
                };
                let whole = format!("{base}{own}");
                // What did not stream (all of it, from an endpoint that
                // does not stream) goes now.
                let sent = match whole.strip_prefix(inner.sent.as_str()) {
                    Some(rest) => {
                        let rest = rest.to_string();
                        self.send(&mut inner.sent, rest)
                    }
                    None => false,
                };
                *content = whole;
                sent
            }
        }
    }

    /// An answer that did not come from a streaming attempt (a cascade's
    /// held answer, a structured answer once validated) goes to the caller:
    /// the rest of it when it begins with what the caller holds, else in
    /// full after a retraction.
    pub(super) fn deliver(&self, content: &str) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.mode = Mode::Open;
        if let Some(rest) = content.strip_prefix(inner.sent.as_str()) {
            if !inner.sent.is_empty() {
                inner.resumed = OutputResume::Prefix;
            }
            let rest = rest.to_string();
            self.send(&mut inner.sent, rest);
        } else {
            self.retract(inner);
            self.send(&mut inner.sent, content.to_string());
        }
    }

    /// How the last resumption went.
    pub(super) fn resumed(&self) -> OutputResume {
        self.lock().resumed
    }

    fn send(&self, sent: &mut String, text: String) -> bool {
        if text.is_empty() {
            return false;
        }
        sent.push_str(&text);
        let _ = self.sink.send(Delta::Text(text));
        true
    }

    fn retract(&self, inner: &mut Inner) {
        if !inner.sent.is_empty() {
            let _ = self.sink.send(Delta::Restart);
            inner.sent.clear();
        }
        inner.resumed = OutputResume::Retracted;
        inner.mode = Mode::Open;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn splice() -> (Splice, mpsc::UnboundedReceiver<Delta>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Splice::new(tx), rx)
    }

    /// What the caller ends up holding.
    fn held(rx: &mut mpsc::UnboundedReceiver<Delta>) -> String {
        let mut s = String::new();
        while let Ok(d) = rx.try_recv() {
            match d {
                Delta::Text(t) => s.push_str(&t),
                Delta::Restart => s.clear(),
            }
        }
        s
    }

    #[test]
    fn a_fresh_attempt_streams_as_it_comes() {
        let (s, mut rx) = splice();
        assert_eq!(s.begin(Continuation::Prefill), Resume::Fresh);
        assert!(s.push("Hello ".into()));
        assert!(s.push("world".into()));
        let mut answer = "Hello world".to_string();
        s.answered(&mut answer);
        assert_eq!(held(&mut rx), "Hello world");
        assert_eq!(s.resumed(), OutputResume::None);
    }

    #[test]
    fn a_retry_that_rewrites_the_text_sent_streams_only_the_rest() {
        let (s, mut rx) = splice();
        s.begin(Continuation::None);
        s.push("The quick ".into());
        s.push("brown".into());
        // The attempt broke; the retry says it all again, in other pieces.
        assert_eq!(s.begin(Continuation::None), Resume::Prefix);
        assert!(!s.push("The qu".into()));
        assert!(!s.push("ick br".into()));
        assert!(s.push("own fox".into()));
        assert!(s.push(" jumps".into()));
        let mut answer = "The quick brown fox jumps".to_string();
        s.answered(&mut answer);
        assert_eq!(held(&mut rx), "The quick brown fox jumps");
        assert_eq!(answer, "The quick brown fox jumps");
        assert_eq!(s.resumed(), OutputResume::Prefix);
    }

    #[test]
    fn a_retry_that_says_something_else_retracts_the_text_sent() {
        let (s, mut rx) = splice();
        s.begin(Continuation::None);
        s.push("The quick brown".into());
        s.begin(Continuation::None);
        assert!(!s.push("The ".into()));
        assert!(s.push("slow green".into()));
        let mut answer = "The slow green turtle".to_string();
        s.push(" turtle".into());
        s.answered(&mut answer);
        assert_eq!(held(&mut rx), "The slow green turtle");
        assert_eq!(s.resumed(), OutputResume::Retracted);
    }

    #[test]
    fn an_answer_that_ends_inside_the_text_sent_is_a_retraction() {
        let (s, mut rx) = splice();
        s.begin(Continuation::None);
        s.push("One two three".into());
        s.begin(Continuation::None);
        s.push("One two".into());
        let mut answer = "One two".to_string();
        s.answered(&mut answer);
        assert_eq!(held(&mut rx), "One two");
        assert_eq!(s.resumed(), OutputResume::Retracted);
    }

    #[test]
    fn a_retry_that_does_not_stream_sends_the_rest_with_its_answer() {
        let (s, mut rx) = splice();
        s.begin(Continuation::None);
        s.push("One two".into());
        s.begin(Continuation::None);
        let mut answer = "One two three".to_string();
        s.answered(&mut answer);
        assert_eq!(held(&mut rx), "One two three");
        assert_eq!(s.resumed(), OutputResume::Prefix);
    }

    #[test]
    fn a_continuation_follows_on_and_the_answer_is_the_whole_text() {
        let (s, mut rx) = splice();
        s.begin(Continuation::ContinueFinalMessage);
        s.push("One two ".into());
        assert_eq!(
            s.begin(Continuation::ContinueFinalMessage),
            Resume::Continue("One two ".into())
        );
        assert!(s.push("three".into()));
        let mut answer = "three".to_string();
        s.answered(&mut answer);
        assert_eq!(answer, "One two three");
        assert_eq!(held(&mut rx), "One two three");
        assert_eq!(s.resumed(), OutputResume::Continuation);
    }

    #[test]
    fn a_prefill_drops_the_whitespace_the_caller_already_has() {
        let (s, mut rx) = splice();
        s.begin(Continuation::Prefill);
        s.push("One two ".into());
        assert_eq!(
            s.begin(Continuation::Prefill),
            Resume::Continue("One two ".into())
        );
        // The model was sent "One two" and continues with " three".
        assert!(!s.push(" ".into()));
        assert!(s.push("three".into()));
        let mut answer = " three".to_string();
        s.answered(&mut answer);
        assert_eq!(answer, "One two three");
        assert_eq!(held(&mut rx), "One two three");
    }

    #[test]
    fn a_continuation_that_does_not_stream_sends_its_text_with_its_answer() {
        let (s, mut rx) = splice();
        s.begin(Continuation::Prefix);
        s.push("Über ".into());
        s.begin(Continuation::Prefix);
        let mut answer = "alles".to_string();
        s.answered(&mut answer);
        assert_eq!(answer, "Über alles");
        assert_eq!(held(&mut rx), "Über alles");
    }

    #[test]
    fn a_blank_text_is_not_prefilled() {
        let (s, _rx) = splice();
        s.begin(Continuation::Prefill);
        s.push("  ".into());
        assert_eq!(s.begin(Continuation::Prefill), Resume::Prefix);
    }

    #[test]
    fn a_failed_continuation_leaves_its_text_to_the_next() {
        let (s, mut rx) = splice();
        s.begin(Continuation::Prefix);
        s.push("a b ".into());
        s.begin(Continuation::Prefix);
        s.push("c ".into());
        // It broke too: the next continues from everything sent.
        assert_eq!(
            s.begin(Continuation::Prefix),
            Resume::Continue("a b c ".into())
        );
        s.push("d".into());
        let mut answer = "d".to_string();
        s.answered(&mut answer);
        assert_eq!(answer, "a b c d");
        assert_eq!(held(&mut rx), "a b c d");
    }

    #[test]
    fn a_held_answer_is_delivered_after_what_the_caller_has() {
        let (s, mut rx) = splice();
        s.deliver("whole");
        assert_eq!(held(&mut rx), "whole");
        assert_eq!(s.resumed(), OutputResume::None);

        let (s, mut rx) = splice();
        s.begin(Continuation::None);
        s.push("partial".into());
        s.deliver("another answer");
        assert_eq!(held(&mut rx), "another answer");
        assert_eq!(s.resumed(), OutputResume::Retracted);
    }
}
