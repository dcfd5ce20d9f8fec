//! Session events as `chat.completion.chunk` server-sent events.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::response::Response;
use baton_runtime::EventStream;
use baton_types::{EventKind, SessionId};
use serde::Serialize;

use super::error::{ApiError, retracted_error, turn_ended_error};
use super::turn::{CancelOnDrop, Completion, next_event};
use super::types::{ChatCompletionChunk, ChunkChoice, ChunkObject, Delta, FinishReason};

/// Turns session events into `chat.completion.chunk` SSE frames.
struct Chunks {
    id: String,
    created: u64,
    /// The requested route until the answer names the model that gave it.
    model: String,
    include_usage: bool,
    sent_role: bool,
    /// Content sent to the client so far.
    sent: String,
    /// The attempt whose output was sent.
    sent_attempt: Option<u32>,
    finish: FinishReason,
    /// The recorded answer's text not streamed yet, and its tool calls:
    /// sent when the turn completes (a gate may hold its release).
    held: Option<(String, Vec<baton_types::ToolCall>)>,
}

/// What one event adds to the stream.
struct Step {
    frames: Vec<Bytes>,
    /// The stream ends after these frames.
    done: bool,
}

impl Step {
    fn more(frames: Vec<Bytes>) -> Self {
        Self {
            frames,
            done: false,
        }
    }

    fn end(frames: Vec<Bytes>) -> Self {
        Self { frames, done: true }
    }
}

/// `data: <json>` and the blank line that ends an event.
fn frame(data: &impl Serialize) -> Bytes {
    let mut buf = b"data: ".to_vec();
    if let Err(e) = serde_json::to_writer(&mut buf, data) {
        // Unreachable for these types (string keys only); never panic on it.
        tracing::error!(error = %e, "cannot serialize a chat.completion.chunk");
        return Bytes::from_static(
            b"data: {\"error\": {\"message\": \"cannot serialize the chunk\", \"type\": \"server_error\", \"param\": null, \"code\": null}}\n\n",
        );
    }
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// The error event that ends a stream.
fn error_frame(e: &ApiError) -> Bytes {
    frame(&e.body())
}

/// The event that ends a complete stream.
const DONE: &[u8] = b"data: [DONE]\n\n";

impl Chunks {
    fn new(completion: Completion, include_usage: bool) -> Self {
        Self {
            id: completion.id,
            created: completion.created,
            model: completion.model,
            include_usage,
            sent_role: false,
            sent: String::new(),
            sent_attempt: None,
            finish: FinishReason::Stop,
            held: None,
        }
    }

    /// A chunk of this stream with `choices`.
    fn chunk(&self, choices: Vec<ChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: ChunkObject::ChatCompletionChunk,
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage: None,
        }
    }

    fn delta(&self, delta: Delta, finish_reason: Option<FinishReason>) -> Bytes {
        frame(&self.chunk(vec![ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }]))
    }

    fn role(&mut self, frames: &mut Vec<Bytes>) {
        if !self.sent_role {
            self.sent_role = true;
            frames.push(self.delta(Delta::role(), None));
        }
    }

    fn text(&mut self, text: &str, frames: &mut Vec<Bytes>) {
        self.role(frames);
        self.sent.push_str(text);
        frames.push(self.delta(Delta::content(text), None));
    }

    fn retracted(&self) -> Step {
        Step::end(vec![error_frame(&retracted_error())])
    }

    fn on_event(&mut self, kind: EventKind) -> Step {
        let mut frames = Vec::new();
        match kind {
            EventKind::OutputDelta { text, attempt, .. } => {
                if text.is_empty() {
                    return Step::more(frames);
                }
                if !self.sent.is_empty() && self.sent_attempt != Some(attempt) {
                    // A new attempt's output: what was sent is void.
                    return self.retracted();
                }
                self.sent_attempt = Some(attempt);
                self.text(&text, &mut frames);
            }
            EventKind::OutputRetracted { .. } => {
                if !self.sent.is_empty() {
                    return self.retracted();
                }
                self.sent_attempt = None;
            }
            EventKind::AssistantMessage {
                message,
                model,
                finish_reason: reason,
                ..
            } => {
                if !model.is_empty() {
                    self.model = model;
                }
                let Some(rest) = message.content.strip_prefix(self.sent.as_str()) else {
                    // The recorded answer is not what was streamed.
                    return self.retracted();
                };
                // Released with TurnCompleted: a gate may hold the answer
                // (a reviewer may reject it, and the model revise it).
                self.held = Some((rest.to_string(), message.tool_calls.clone()));
                self.finish = FinishReason::of(&reason, !message.tool_calls.is_empty());
            }
            EventKind::TurnCompleted { usage, .. } => {
                if let Some((rest, calls)) = self.held.take() {
                    if !rest.is_empty() {
                        self.text(&rest, &mut frames);
                    }
                    if !calls.is_empty() {
                        self.role(&mut frames);
                        frames.push(self.delta(Delta::tool_calls(&calls), None));
                    }
                }
                self.role(&mut frames);
                frames.push(self.delta(Delta::default(), Some(self.finish)));
                if self.include_usage {
                    frames.push(frame(&ChatCompletionChunk {
                        usage: Some(usage.into()),
                        ..self.chunk(Vec::new())
                    }));
                }
                frames.push(Bytes::from_static(DONE));
                return Step::end(frames);
            }
            kind => {
                if let Some(e) = turn_ended_error(&kind) {
                    return Step::end(vec![error_frame(&e)]);
                }
            }
        }
        Step::more(frames)
    }
}

/// Answer with an event stream once the turn's first output is known; a
/// failure before it is an HTTP error.
pub(super) async fn stream_response(
    id: SessionId,
    mut events: EventStream,
    mut guard: CancelOnDrop,
    completion: Completion,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let mut chunks = Chunks::new(completion, include_usage);
    let first = loop {
        let kind = next_event(&mut events, id)
            .await
            .inspect_err(|_| guard.disarm())?;
        if let Some(e) = turn_ended_error(&kind) {
            guard.disarm();
            return Err(e);
        }
        let step = chunks.on_event(kind);
        if !step.frames.is_empty() {
            break step;
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(32);
    tokio::spawn(async move {
        let mut step = first;
        loop {
            for f in step.frames {
                if tx.send(Ok(f)).await.is_err() {
                    return; // the client went away: the guard cancels the turn
                }
            }
            if step.done {
                guard.disarm();
                return;
            }
            step = match next_event(&mut events, id).await {
                Ok(kind) => chunks.on_event(kind),
                Err(e) => Step::end(vec![error_frame(&e)]),
            };
        }
    });
    Ok(super::turn::sse_response(rx, id))
}

#[cfg(test)]
mod tests {
    use baton_types::{FinishReason, Message, ToolCall, Usage};
    use serde_json::Value;

    use super::*;
    use crate::openai::error::RETRACTED_MESSAGE;

    fn chunks() -> Chunks {
        let completion = Completion {
            id: "chatcmpl-x".into(),
            created: 1,
            model: "route".into(),
        };
        Chunks::new(completion, true)
    }

    fn data(frames: &[Bytes]) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                String::from_utf8_lossy(f)
                    .strip_prefix("data: ")
                    .unwrap()
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    fn answer(text: &str, calls: Vec<ToolCall>) -> EventKind {
        EventKind::AssistantMessage {
            turn: 1,
            message: Message {
                tool_calls: calls,
                ..Message::assistant(text)
            },
            usage: Usage::default(),
            endpoint: "e".into(),
            model: "real-model".into(),
            finish_reason: FinishReason::Stop,
            latency_ms: 0,
            cost_usd: None,
            attempts: 1,
            schema_validated: false,
            output_resumed: baton_types::OutputResume::None,
        }
    }

    #[test]
    fn a_retraction_before_output_is_invisible_and_after_output_ends_the_stream() {
        let delta = |text: &str, attempt| EventKind::OutputDelta {
            turn: 1,
            attempt,
            text: text.into(),
        };
        let retract = EventKind::OutputRetracted {
            turn: 1,
            attempt: 2,
            reason: "broken".into(),
        };
        // Nothing sent: the retry is invisible.
        let mut c = chunks();
        assert!(c.on_event(retract.clone()).frames.is_empty());
        let s = c.on_event(delta("hel", 2));
        assert_eq!(s.frames.len(), 2, "role, then content");
        // The rest of the recorded answer comes with its completion.
        assert!(c.on_event(answer("hello", vec![])).frames.is_empty());
        let s = c.on_event(EventKind::TurnCompleted {
            turn: 1,
            usage: Usage {
                input_tokens: 2,
                output_tokens: 3,
            },
        });
        assert!(s.done);
        let d = data(&s.frames);
        assert!(
            d[0].contains(r#""content":"lo""#),
            "the rest of the answer: {d:?}"
        );
        assert!(d[1].contains(r#""finish_reason":"stop""#) && d[1].contains("real-model"));
        assert!(d[2].contains(r#""total_tokens":5"#));
        assert_eq!(d[3], "[DONE]");

        // Output sent, then retracted: an error event, no [DONE].
        let mut c = chunks();
        c.on_event(delta("hel", 1));
        let s = c.on_event(retract);
        assert!(s.done);
        let d = data(&s.frames);
        assert_eq!(d.len(), 1);
        let v: Value = serde_json::from_str(&d[0]).unwrap();
        assert_eq!(v["error"]["code"], "stream_retracted");
        assert_eq!(v["error"]["message"], RETRACTED_MESSAGE);

        // An answer that does not extend what was sent.
        let mut c = chunks();
        c.on_event(delta("hel", 1));
        let s = c.on_event(answer("goodbye", vec![]));
        assert!(s.done && data(&s.frames)[0].contains("stream_retracted"));
    }

    #[test]
    fn tool_calls_are_streamed_in_one_indexed_chunk() {
        let mut c = chunks();
        let calls = vec![
            ToolCall {
                id: "a".into(),
                name: "f".into(),
                arguments: "{}".into(),
            },
            ToolCall {
                id: "b".into(),
                name: "g".into(),
                arguments: "{\"x\":1}".into(),
            },
        ];
        assert!(c.on_event(answer("", calls)).frames.is_empty(), "held");
        let s = c.on_event(EventKind::TurnCompleted {
            turn: 1,
            usage: Usage::default(),
        });
        let d = data(&s.frames);
        assert!(d.len() >= 3, "role, tool calls, finish: {d:?}");
        let v: Value = serde_json::from_str(&d[1]).unwrap();
        let tc = &v["choices"][0]["delta"]["tool_calls"];
        assert_eq!(tc[1]["index"], 1);
        assert_eq!(tc[1]["function"]["arguments"], "{\"x\":1}");
        assert!(d[2].contains(r#""finish_reason":"tool_calls""#));
    }

    #[test]
    fn a_recorded_answer_is_released_only_when_the_turn_completes() {
        // A draft a gate holds, rejected, then the revision: only the
        // revision reaches the client.
        let mut c = chunks();
        assert!(c.on_event(answer("a draft", Vec::new())).frames.is_empty());
        assert!(
            c.on_event(answer("the revision", Vec::new()))
                .frames
                .is_empty()
        );
        let s = c.on_event(EventKind::TurnCompleted {
            turn: 1,
            usage: Usage::default(),
        });
        let all = data(&s.frames).join("\n");
        assert!(
            all.contains("the revision") && !all.contains("a draft"),
            "{all}"
        );
    }
}
