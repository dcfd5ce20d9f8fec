//! Checks a rule asks of something other than the text itself: a
//! classifier (a model route, or one the embedder registered) labels it, or
//! an evaluator route passes or fails an answer.
//!
//! Evaluation stays synchronous: the runtime asks a stage's [`Check`]s
//! first (calls on a task of their own, results cached by content hash) and
//! hands the [`Answer`]s to [`Policies::evaluate_with`](crate::Policies::evaluate_with).

use std::future::Future;
use std::pin::Pin;

/// A boxed future, as [`Classifier`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A classifier the embedder registers (`RuntimeBuilder::with_policy_classifier`)
/// and rules name with `classifier = "NAME"`: it labels a text with one of
/// `labels` (a local model, a rules engine, another service).
pub trait Classifier: Send + Sync + std::fmt::Debug {
    /// One of `labels` (when the rule gives any), or why it could not
    /// label the text. An error fails the check closed: the rule matches.
    fn label<'a>(
        &'a self,
        text: &'a str,
        labels: &'a [String],
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// Who labels a text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Via {
    /// A model route (`classifier_route`).
    Route(String),
    /// A classifier registered by the embedder (`classifier`).
    Embedder(String),
}

/// One question the rules of a stage ask; rules asking the same question
/// share one answer (one call).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Check {
    /// Label the text with one of `labels`.
    Classify {
        via: Via,
        labels: Vec<String>,
        /// What the classifier is told about the labels.
        instructions: Option<String>,
    },
    /// Ask a route whether the answer passes (`PASS` or `FAIL: reason`).
    Evaluate {
        route: String,
        /// The prompt, with `{question}` and `{answer}` replaced.
        prompt: Option<String>,
    },
}

impl Check {
    /// What journaled matches call it: `classifier:NAME`,
    /// `classifier_route:ROUTE` or `evaluator_route:ROUTE`.
    pub fn kind(&self) -> String {
        match self {
            Check::Classify {
                via: Via::Embedder(n),
                ..
            } => format!("classifier:{n}"),
            Check::Classify {
                via: Via::Route(r), ..
            } => format!("classifier_route:{r}"),
            Check::Evaluate { route, .. } => format!("evaluator_route:{route}"),
        }
    }

    /// A stable key for caching its answers (with the content hash).
    pub fn cache_key(&self) -> String {
        match self {
            Check::Classify {
                labels,
                instructions,
                ..
            } => format!(
                "{}\u{1f}{}\u{1f}{}",
                self.kind(),
                labels.join("\u{1e}"),
                instructions.as_deref().unwrap_or("")
            ),
            Check::Evaluate { prompt, .. } => {
                format!("{}\u{1f}{}", self.kind(), prompt.as_deref().unwrap_or(""))
            }
        }
    }

    /// The instructions a classifier route gets (its system prompt).
    pub fn classifier_prompt(labels: &[String], instructions: Option<&str>) -> String {
        let mut p = String::from(
            "You label messages. Read the user's message and answer with exactly one of these labels, and nothing else: ",
        );
        p.push_str(&labels.join(", "));
        p.push('.');
        if let Some(i) = instructions {
            p.push_str("\n\n");
            p.push_str(i);
        }
        p
    }
}

/// The answer to a [`Check`] for one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The classifier's label.
    Label(String),
    /// The evaluator passed the answer.
    Pass,
    /// The evaluator failed it, with its reason.
    Fail(String),
    /// The check could not be answered (the route failed, an answer that
    /// is not a label): rules fail closed and match.
    Error(String),
}

/// The label a classifier route answered, among `labels`: the whole
/// answer (trimmed of quotes, punctuation and case), or its first word
/// (a label followed by an explanation). Anything else is not a label —
/// a sentence that merely mentions one ("not billing") is refused, so the
/// rule fails closed. The error never quotes the answer.
pub fn parse_label(answer: &str, labels: &[String]) -> Result<String, String> {
    let cleaned = answer
        .trim()
        .trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .to_lowercase();
    let first = cleaned
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .find(|w| !w.is_empty())
        .unwrap_or_default();
    labels
        .iter()
        .find(|l| {
            let l = l.to_lowercase();
            l == cleaned || l == first
        })
        .cloned()
        .ok_or_else(|| {
            format!(
                "answered something that is not one of the labels ({})",
                labels.join(", ")
            )
        })
}

/// An evaluator's answer: `PASS`, or `FAIL` with the reason it gave.
pub fn parse_verdict(answer: &str) -> Answer {
    let t = answer.trim();
    // The first word, exactly: "Passable" is no PASS.
    let end = t
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(t.len());
    let word = &t[..end];
    if word.eq_ignore_ascii_case("pass") {
        return Answer::Pass;
    }
    let reason = if word.eq_ignore_ascii_case("fail") {
        t[end..].trim_start_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
    } else {
        t
    };
    let reason: String = reason.chars().take(300).collect();
    Answer::Fail(if reason.is_empty() {
        "no reason given".into()
    } else {
        reason
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_read_leniently_but_never_guessed() {
        let labels = vec!["billing".to_string(), "orders".into(), "off_topic".into()];
        assert_eq!(parse_label(" Billing.", &labels).unwrap(), "billing");
        assert_eq!(parse_label("\"off_topic\"", &labels).unwrap(), "off_topic");
        assert_eq!(
            parse_label("orders - about a delivery", &labels).unwrap(),
            "orders"
        );
        // A sentence that mentions a label is not one: it fails closed.
        assert!(parse_label("The label is: orders", &labels).is_err());
        assert!(parse_label("not billing", &labels).is_err());
        let e = parse_label("weather in Paris", &labels).unwrap_err();
        assert!(
            e.contains("not one of the labels") && !e.contains("Paris"),
            "{e}"
        );
    }

    #[test]
    fn verdicts_pass_only_on_pass() {
        assert_eq!(parse_verdict(" PASS "), Answer::Pass);
        assert_eq!(
            parse_verdict("FAIL: promises a refund"),
            Answer::Fail("promises a refund".into())
        );
        assert_eq!(
            parse_verdict("fail"),
            Answer::Fail("no reason given".into())
        );
        assert_eq!(
            parse_verdict("It might pass"),
            Answer::Fail("It might pass".into())
        );
        assert!(matches!(
            parse_verdict("Passable, but FAIL"),
            Answer::Fail(_)
        ));
        assert_eq!(parse_verdict("PASS."), Answer::Pass);
    }
}
