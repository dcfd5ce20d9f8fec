//! The quality gates of a cascade: JSON Schema, confidence, evaluator.

use baton_models::ModelResponse;

use crate::config::MissingConfidence;

/// The default evaluator prompt; `{question}` and `{answer}` are replaced.
pub const DEFAULT_EVALUATOR_PROMPT: &str = "You are grading an answer to a question.\n\n\
Question:\n{question}\n\nAnswer:\n{answer}\n\n\
Reply with exactly one word: PASS if the answer is correct, complete and follows the \
question's instructions, FAIL otherwise.";

/// The answer text as JSON (the whole text, or one code fence's inside),
/// and its check against a schema: one implementation, shared with the
/// output policies of `baton-governance`.
pub use baton_governance::json::{answer_json, schema_check as schema_gate};

/// A request's `json_schema`, compiled; the error says why it is not a
/// usable JSON Schema. Checked when a session starts, so a routed call
/// never meets one it cannot enforce.
pub fn compile_schema(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() {
        return Err("must be a JSON Schema object".into());
    }
    jsonschema::validator_for(schema).map_err(|e| format!("is not a valid JSON Schema: {e}"))
}

/// The answer's confidence: the provider's, else a top-level numeric
/// `confidence` of a JSON answer (self-reported), with where it came from.
pub fn confidence_of(resp: &ModelResponse) -> Option<(f64, &'static str)> {
    if let Some(c) = resp.confidence {
        return Some((c, "confidence"));
    }
    let v = answer_json(&resp.message.content)?;
    v.get("confidence")?
        .as_f64()
        .map(|c| (c, "self-reported confidence"))
}

/// `Ok(detail)` when the answer is confident enough, `Err(reason)` when not.
pub fn confidence_gate(
    min: f64,
    resp: &ModelResponse,
    missing: MissingConfidence,
) -> Result<String, String> {
    match confidence_of(resp) {
        Some((c, what)) if c >= min => Ok(format!("{what} {c:.2} >= min_confidence {min:.2}")),
        Some((c, what)) => Err(format!("{what} {c:.2} < min_confidence {min:.2}")),
        None => match missing {
            MissingConfidence::Pass => Ok("no confidence; on_missing_confidence = pass".into()),
            MissingConfidence::Escalate => Err(format!(
                "no confidence to compare with min_confidence {min:.2}; on_missing_confidence = escalate"
            )),
        },
    }
}

/// The evaluator's prompt for `question` and `answer`.
pub fn evaluator_prompt(template: Option<&str>, question: &str, answer: &str) -> String {
    let template = template.unwrap_or(DEFAULT_EVALUATOR_PROMPT);
    let mut prompt = template
        .replace("{question}", question)
        .replace("{answer}", answer);
    if !template.contains("{question}") {
        prompt.push_str("\n\nQuestion:\n");
        prompt.push_str(question);
    }
    if !template.contains("{answer}") {
        prompt.push_str("\n\nAnswer:\n");
        prompt.push_str(answer);
    }
    prompt
}

/// An evaluator's verdict passes when it starts with PASS (case-insensitive,
/// trimmed); anything else fails.
pub fn evaluator_passes(verdict: &str) -> bool {
    verdict
        .trim()
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case("pass"))
}

/// An answer rendered for the evaluator: its text, and its tool calls.
pub fn render_answer(resp: &ModelResponse) -> String {
    let mut out = resp.message.content.clone();
    for c in &resp.message.tool_calls {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("[tool call] {}({})", c.name, c.arguments));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use baton_types::{FinishReason, Message, Usage};
    use serde_json::json;

    use super::*;

    fn resp(text: &str, confidence: Option<f64>) -> ModelResponse {
        ModelResponse {
            message: Message::assistant(text),
            usage: Usage::default(),
            finish_reason: FinishReason::Stop,
            model: "m".into(),
            attempts: 1,
            confidence,
            embeddings: None,
        }
    }

    #[test]
    fn schema_gate_needs_valid_matching_json() {
        let schema = jsonschema::validator_for(&json!({
            "type": "object", "required": ["answer"],
            "properties": {"answer": {"type": "integer"}}
        }))
        .unwrap();
        schema_gate(&schema, r#" {"answer": 4} "#).unwrap();
        schema_gate(&schema, "```json\n{\"answer\": 4}\n```").unwrap();
        let e = schema_gate(&schema, "four").unwrap_err();
        assert_eq!(e, "json_schema: the answer is not valid JSON");
        let e = schema_gate(&schema, r#"{"answer": "four"}"#).unwrap_err();
        assert!(e.contains("/answer"), "{e}");
        let e = schema_gate(&schema, r#"{}"#).unwrap_err();
        assert!(e.contains("answer"), "{e}");
    }

    #[test]
    fn confidence_comes_from_the_provider_then_the_answer_then_the_policy() {
        let r = resp(r#"{"confidence": 0.2}"#, Some(0.9));
        assert!(confidence_gate(0.7, &r, MissingConfidence::Escalate).is_ok());
        let r = resp(r#"{"answer": 1, "confidence": 0.41}"#, None);
        let e = confidence_gate(0.7, &r, MissingConfidence::Pass).unwrap_err();
        assert_eq!(e, "self-reported confidence 0.41 < min_confidence 0.70");
        let r = resp("no idea", None);
        assert!(confidence_gate(0.7, &r, MissingConfidence::Escalate).is_err());
        assert!(confidence_gate(0.7, &r, MissingConfidence::Pass).is_ok());
    }

    #[test]
    fn evaluator_prompt_and_verdict() {
        let p = evaluator_prompt(None, "what is 2+2?", "5");
        assert!(p.contains("what is 2+2?") && p.contains("\n5\n"), "{p}");
        let p = evaluator_prompt(Some("Grade it."), "q?", "a!");
        assert_eq!(p, "Grade it.\n\nQuestion:\nq?\n\nAnswer:\na!");
        let p = evaluator_prompt(Some("Is {answer} right for {question}?"), "q", "a");
        assert_eq!(p, "Is a right for q?");
        assert!(evaluator_passes(" pass."));
        assert!(evaluator_passes("PASS"));
        assert!(!evaluator_passes("FAIL"));
        assert!(!evaluator_passes("I think it should pass"));
        assert!(!evaluator_passes(""));
    }
}
