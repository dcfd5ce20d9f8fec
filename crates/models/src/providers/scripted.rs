//! `scripted`: replays a script of canned answers, for demos and tests of
//! tool-using agents without a real model.
//!
//! The script is a JSON array of steps, read once when the endpoint is built:
//!
//! ```json
//! [
//!   {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}]},
//!   {"text": "2 + 2 = 4", "delay_ms": 200}
//! ]
//! ```
//!
//! A step has `text`, `tool_calls` or both, and optionally `delay_ms` and
//! `confidence` (a number from 0 to 1, the response's confidence). A tool
//! call has a `name`, `arguments` (a JSON object, or a string sent verbatim
//! as the arguments text; `{}` when absent) and an optional `id` (by default
//! `call_<step>_<index>`). Steps count from 0.
//!
//! The step answered is the number of assistant messages already in the
//! request's conversation: each session walks the script from its start, and
//! a call re-issued after a crash gets the same answer. A conversation past
//! the end of the script is an error that is never retried.

use std::sync::Arc;
use std::time::Duration;

use baton_types::{FinishReason, Message, Role, ToolCall, Usage};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    Delta, DeltaSink, EndpointConfig, ModelRequest, ModelResponse, Provider, ProviderError,
    ProviderErrorKind, Result, count_words,
};

/// One answer of a script.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptStep {
    /// Answer text; may be empty when there are tool calls.
    pub text: String,
    /// Tool calls, ids resolved.
    pub tool_calls: Vec<ToolCall>,
    /// Wait before answering.
    pub delay: Duration,
    /// The response's confidence; a value outside `[0, 1]` is not reported.
    pub confidence: Option<f64>,
}

/// Answers with step *n* of its script when the conversation holds *n*
/// assistant messages. Text is streamed word by word. Usage counts
/// whitespace-separated words: input over all message contents, output over
/// the answer text and tool-call arguments.
#[derive(Debug, Clone)]
pub struct ScriptedProvider {
    steps: Arc<[ScriptStep]>,
    model: String,
    /// Where the script came from, for error messages.
    source: String,
}

impl ScriptedProvider {
    /// Load and check `cfg.script_file`; errors name the field, the file and
    /// what is wrong with it.
    pub fn from_config(cfg: &EndpointConfig) -> Result<Self> {
        let field = "script_file";
        let Some(path) = &cfg.script_file else {
            return Err(cfg.invalid(field, "required for provider scripted"));
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| cfg.invalid(field, format!("cannot read {shown}: {e}")))?;
        let steps = parse_script(&text).map_err(|e| cfg.invalid(field, format!("{shown}: {e}")))?;
        Ok(Self {
            steps: steps.into(),
            model: model_name(cfg),
            source: shown,
        })
    }

    /// A provider replaying `steps` (built in code rather than read from a file).
    pub fn new(model: impl Into<String>, steps: Vec<ScriptStep>) -> Self {
        Self {
            steps: steps.into(),
            model: model.into(),
            source: "the script".to_string(),
        }
    }

    pub fn steps(&self) -> &[ScriptStep] {
        &self.steps
    }
}

fn model_name(cfg: &EndpointConfig) -> String {
    if cfg.model.is_empty() {
        "scripted".to_string()
    } else {
        cfg.model.clone()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireStep {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireCall>>,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    confidence: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCall {
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
    #[serde(default)]
    id: Option<String>,
}

/// Parse and check a script; the error says where (`[step].field`) and why.
fn parse_script(text: &str) -> std::result::Result<Vec<ScriptStep>, String> {
    let wire: Vec<WireStep> =
        serde_json::from_str(text).map_err(|e| format!("not a valid script: {e}"))?;
    if wire.is_empty() {
        return Err("the script has no steps".to_string());
    }
    wire.into_iter()
        .enumerate()
        .map(|(step, w)| {
            let calls = w.tool_calls.unwrap_or_default();
            if w.text.is_none() && calls.is_empty() {
                return Err(format!("[{step}]: a step needs text or tool_calls"));
            }
            if let Some(c) = w.confidence
                && !(0.0..=1.0).contains(&c)
            {
                return Err(format!(
                    "[{step}].confidence: must be a number from 0 to 1, got {c}"
                ));
            }
            let tool_calls = calls
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let at = format!("[{step}].tool_calls[{i}]");
                    if c.name.trim().is_empty() {
                        return Err(format!("{at}.name: must not be empty"));
                    }
                    let arguments = match c.arguments {
                        None => "{}".to_string(),
                        Some(Value::String(raw)) => raw,
                        Some(v @ Value::Object(_)) => v.to_string(),
                        Some(_) => {
                            return Err(format!(
                                "{at}.arguments: must be a JSON object (or a string of raw arguments text)"
                            ));
                        }
                    };
                    let id = match c.id {
                        Some(id) if id.trim().is_empty() => {
                            return Err(format!("{at}.id: must not be empty"));
                        }
                        Some(id) => id,
                        None => format!("call_{step}_{i}"),
                    };
                    Ok(ToolCall {
                        id,
                        name: c.name,
                        arguments,
                    })
                })
                .collect::<std::result::Result<Vec<_>, String>>()?;
            Ok(ScriptStep {
                text: w.text.unwrap_or_default(),
                tool_calls,
                delay: Duration::from_millis(w.delay_ms),
                confidence: w.confidence,
            })
        })
        .collect()
}

/// `text` split after each run of whitespace: `"a b  c"` → `["a ", "b  ", "c"]`.
fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    let mut has_word = false;
    for (i, c) in text.char_indices() {
        let space = c.is_whitespace();
        if in_space && !space && has_word {
            pieces.push(&text[start..i]);
            start = i;
        }
        has_word |= !space;
        in_space = space;
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

#[async_trait::async_trait]
impl Provider for ScriptedProvider {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    async fn complete(
        &self,
        req: &ModelRequest,
        deltas: Option<&DeltaSink>,
    ) -> std::result::Result<ModelResponse, ProviderError> {
        let index = req
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        let Some(step) = self.steps.get(index) else {
            return Err(ProviderError::new(
                ProviderErrorKind::InvalidRequest,
                format!(
                    "{} has {} step(s) and all are used: the conversation already holds {index} assistant message(s)",
                    self.source,
                    self.steps.len()
                ),
            ));
        };
        if !step.delay.is_zero() {
            tokio::time::sleep(step.delay).await;
        }
        if let Some(sink) = deltas {
            for piece in word_pieces(&step.text) {
                let _ = sink.send(Delta::Text(piece.to_string()));
            }
        }
        let input_tokens = req.messages.iter().map(|m| count_words(&m.content)).sum();
        let output_tokens = count_words(&step.text)
            + step
                .tool_calls
                .iter()
                .map(|c| count_words(&c.arguments))
                .sum::<u64>();
        Ok(ModelResponse {
            message: Message {
                role: Role::Assistant,
                content: step.text.clone(),
                tool_calls: step.tool_calls.clone(),
                tool_call_id: None,
                images: Vec::new(),
            },
            usage: Usage {
                input_tokens,
                output_tokens,
            },
            finish_reason: if step.tool_calls.is_empty() {
                FinishReason::Stop
            } else {
                FinishReason::ToolCalls
            },
            model: self.model.clone(),
            attempts: 1,
            confidence: step.confidence.filter(|c| (0.0..=1.0).contains(c)),
            embeddings: None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use tokio::sync::mpsc;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{Endpoint, ProviderKind};

    const SCRIPT: &str = r#"[
        {"tool_calls": [
            {"name": "calculator", "arguments": {"expression": "2+2"}},
            {"name": "clock", "id": "my-id"}
        ]},
        {"text": "thinking", "tool_calls": [{"name": "echo", "arguments": "{\"raw\": tru"}], "delay_ms": 300},
        {"text": "2 + 2 =  4, done."}
    ]"#;

    struct Script {
        _dir: tempfile::TempDir,
        cfg: EndpointConfig,
    }

    fn script(text: &str) -> Script {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script.json");
        std::fs::write(&path, text).unwrap();
        Script {
            cfg: EndpointConfig::scripted("demo", path),
            _dir: dir,
        }
    }

    fn config_error(text: &str) -> String {
        let s = script(text);
        let err = Endpoint::from_config(s.cfg.clone()).unwrap_err();
        assert!(matches!(err, crate::Error::Config { .. }), "{err:?}");
        let msg = err.to_string();
        let prefix = format!("script_file: {}: ", s.cfg.script_file.unwrap().display());
        let suffix = " (endpoint \"demo\")";
        assert!(msg.starts_with(&prefix) && msg.ends_with(suffix), "{msg}");
        msg[prefix.len()..msg.len() - suffix.len()].to_string()
    }

    /// A conversation holding `assistants` assistant messages.
    fn at_step(assistants: usize) -> ModelRequest {
        let mut messages = vec![Message::system("be brief"), Message::user("what is 2+2")];
        for i in 0..assistants {
            messages.push(Message::assistant(format!("answer {i}")));
            messages.push(Message::user("go on"));
        }
        ModelRequest::new(messages)
    }

    async fn call(ep: &Endpoint, req: &ModelRequest) -> crate::Result<ModelResponse> {
        ep.attempt_once(req, None, &CancellationToken::new()).await
    }

    #[tokio::test(start_paused = true)]
    async fn the_step_is_the_number_of_assistant_messages() {
        let s = script(SCRIPT);
        let ep = Endpoint::from_config(s.cfg.clone()).unwrap();
        assert_eq!(ep.provider().kind(), "scripted");

        let r0 = call(&ep, &at_step(0)).await.unwrap();
        assert_eq!(r0.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r0.message.role, Role::Assistant);
        assert_eq!(r0.message.content, "");
        assert_eq!(
            r0.message.tool_calls,
            vec![
                ToolCall {
                    id: "call_0_0".into(),
                    name: "calculator".into(),
                    arguments: r#"{"expression":"2+2"}"#.into(),
                },
                ToolCall {
                    id: "my-id".into(),
                    name: "clock".into(),
                    arguments: "{}".into(),
                },
            ]
        );
        assert_eq!(r0.model, "scripted");
        // "be brief" + "what is 2+2" in; two one-word argument texts out.
        assert_eq!(
            r0.usage,
            Usage {
                input_tokens: 5,
                output_tokens: 2
            }
        );

        let start = Instant::now();
        let r1 = call(&ep, &at_step(1)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(r1.message.content, "thinking");
        assert_eq!(r1.message.tool_calls[0].id, "call_1_0");
        assert_eq!(r1.message.tool_calls[0].arguments, r#"{"raw": tru"#);
        assert_eq!(r1.finish_reason, FinishReason::ToolCalls);

        let r2 = call(&ep, &at_step(2)).await.unwrap();
        assert_eq!(r2.message, Message::assistant("2 + 2 =  4, done."));
        assert_eq!(r2.finish_reason, FinishReason::Stop);
        assert_eq!(r2.usage.output_tokens, 6);

        // Deterministic: the same conversation gets the same answer, whatever
        // was asked before and from whichever provider instance.
        let again = Endpoint::from_config(s.cfg.clone()).unwrap();
        assert_eq!(call(&again, &at_step(1)).await.unwrap(), r1);
        assert_eq!(call(&ep, &at_step(0)).await.unwrap(), r0);
        // Tool results and user messages do not advance the script.
        let mut req = at_step(0);
        req.messages.push(Message {
            role: Role::Tool,
            content: "4".into(),
            tool_calls: vec![],
            tool_call_id: Some("call_0_0".into()),
            images: Vec::new(),
        });
        req.messages.push(Message::user("and?"));
        assert_eq!(
            call(&ep, &req).await.unwrap().message.tool_calls,
            r0.message.tool_calls
        );
    }

    #[tokio::test]
    async fn past_the_end_of_the_script_is_an_error_naming_the_step_count() {
        let s = script(SCRIPT);
        let ep = Endpoint::from_config(s.cfg.clone()).unwrap();
        let err = call(&ep, &at_step(3)).await.unwrap_err();
        let source = err.provider_error().unwrap();
        assert_eq!(source.kind, ProviderErrorKind::InvalidRequest);
        // Not transient: a router gives up rather than retrying it.
        assert!(!source.is_transient(), "{err}");
        assert!(
            source.message.contains("has 3 step(s)")
                && source.message.contains("3 assistant message(s)"),
            "{err}"
        );
        assert_eq!(err.code(), baton_types::ErrorCode::InvalidArgument);
    }

    #[tokio::test]
    async fn streams_the_text_word_by_word() {
        let p = ScriptedProvider::new(
            "m",
            vec![ScriptStep {
                text: "2 + 2 =  4, done.".into(),
                tool_calls: vec![],
                delay: Duration::ZERO,
                confidence: None,
            }],
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        let resp = p.complete(&at_step(0), Some(&tx)).await.unwrap();
        drop(tx);
        let mut pieces = Vec::new();
        while let Some(d) = rx.recv().await {
            match d {
                Delta::Text(t) => pieces.push(t),
                Delta::Restart => panic!("restart"),
            }
        }
        assert_eq!(pieces, vec!["2 ", "+ ", "2 ", "=  ", "4, ", "done."]);
        assert_eq!(pieces.concat(), resp.message.content);
        assert_eq!(resp.model, "m");

        // Tool calls alone stream no text.
        let s = script(SCRIPT);
        let p = ScriptedProvider::from_config(&s.cfg).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        p.complete(&at_step(0), Some(&tx)).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn word_pieces_keep_every_character() {
        for text in ["", " ", "a", "  lead", "trail  ", "a\nb\tc", "héllo wörld"] {
            assert_eq!(word_pieces(text).concat(), text);
        }
        assert_eq!(word_pieces("  a b"), vec!["  a ", "b"]);
    }

    #[test]
    fn the_model_name_is_configurable() {
        let s = script(r#"[{"text": "hi"}]"#);
        let mut cfg = s.cfg.clone();
        cfg.model = "demo-model".into();
        assert_eq!(
            ScriptedProvider::from_config(&cfg).unwrap().model,
            "demo-model"
        );
        assert_eq!(cfg.provider, ProviderKind::Scripted);
    }

    #[test]
    fn bad_scripts_are_config_errors_naming_the_file_and_the_problem() {
        let missing = EndpointConfig::scripted("demo", "/nonexistent/baton/script.json");
        let err = Endpoint::from_config(missing).unwrap_err().to_string();
        assert!(
            err.starts_with("script_file: cannot read /nonexistent/baton/script.json"),
            "{err}"
        );

        let err = config_error("[{\"text\": \"hi\"},");
        assert!(
            err.starts_with("not a valid script: ") && err.contains("line 1"),
            "{err}"
        );
        let err = config_error(r#"[{"text": "hi", "txet": "typo"}]"#);
        assert!(err.contains("unknown field `txet`"), "{err}");
        let err = config_error(r#"{"text": "hi"}"#);
        assert!(err.starts_with("not a valid script: "), "{err}");
        assert_eq!(config_error("[]"), "the script has no steps");
        assert_eq!(
            config_error(r#"[{"text": "a"}, {"delay_ms": 5}]"#),
            "[1]: a step needs text or tool_calls"
        );
        assert_eq!(
            config_error(r#"[{"tool_calls": [{"name": "a"}, {"name": " "}]}]"#),
            "[0].tool_calls[1].name: must not be empty"
        );
        let err = config_error(r#"[{"tool_calls": [{"name": "a", "arguments": [1]}]}]"#);
        assert!(
            err.starts_with("[0].tool_calls[0].arguments: must be a JSON object"),
            "{err}"
        );
        let err = config_error(r#"[{"tool_calls": [{"name": "a", "args": {}}]}]"#);
        assert!(err.contains("unknown field `args`"), "{err}");
    }

    #[tokio::test]
    async fn a_step_may_carry_a_confidence() {
        let s = script(
            r#"[{"text": "sure", "confidence": 0.42}, {"text": "hm"}, {"text": "x", "confidence": 1}]"#,
        );
        let ep = Endpoint::from_config(s.cfg.clone()).unwrap();
        assert_eq!(call(&ep, &at_step(0)).await.unwrap().confidence, Some(0.42));
        assert_eq!(call(&ep, &at_step(1)).await.unwrap().confidence, None);
        assert_eq!(call(&ep, &at_step(2)).await.unwrap().confidence, Some(1.0));

        assert_eq!(
            config_error(r#"[{"text": "a"}, {"text": "b", "confidence": 1.5}]"#),
            "[1].confidence: must be a number from 0 to 1, got 1.5"
        );
        assert_eq!(
            config_error(r#"[{"text": "a", "confidence": -0.1}]"#),
            "[0].confidence: must be a number from 0 to 1, got -0.1"
        );
        let err = config_error(r#"[{"text": "a", "confidence": "high"}]"#);
        assert!(err.starts_with("not a valid script: "), "{err}");

        // Steps built in code are not validated: out-of-range values are dropped.
        for bad in [f64::NAN, 2.0, -1.0] {
            let p = ScriptedProvider::new(
                "m",
                vec![ScriptStep {
                    text: "t".into(),
                    tool_calls: vec![],
                    delay: Duration::ZERO,
                    confidence: Some(bad),
                }],
            );
            assert_eq!(
                p.complete(&at_step(0), None).await.unwrap().confidence,
                None
            );
        }
    }
}
