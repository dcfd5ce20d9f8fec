//! A turn's events as a Responses API `response` object, and as the
//! `response.*` server-sent events of a streamed response.
//!
//! One [`Tracker`] reads the turn's events for both: the JSON answer keeps
//! the object it ends with, the stream sends the frames it makes on the
//! way. Text streams as `response.output_text.delta`; the recorded answer
//! is released when the turn completes (a gate may hold it), its text past
//! what was streamed, then each function call as its own output item. As on
//! chat completions, streamed text that an answer does not continue (a
//! retry that says something else, a reviewer's edit) cannot be taken back:
//! the stream then fails (`stream_retracted`).

use std::convert::Infallible;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use baton_runtime::{Caller, EventStream};
use baton_types::{EventKind, FinishReason, SessionId, ToolCall, Usage};
use serde_json::{Value, json};

use super::error::{ApiError, retracted_error, turn_ended_error};
use super::headers::{ATTEMPTS_HEADER, COST_HEADER, ENDPOINT_HEADER, SESSION_HEADER};
use super::responses_request::Echo;
use super::turn::{CancelOnDrop, header_value, next_event};

/// What a response says about itself besides its output.
pub(super) struct Meta {
    /// `resp_<session>_<turn>`.
    pub id: String,
    pub session: SessionId,
    /// Unix seconds.
    pub created_at: u64,
    /// The route, until the answer names the model.
    pub model: String,
    pub previous: Option<String>,
    pub store: bool,
    pub echo: Echo,
}

/// Where a turn's events have got the response.
pub(super) struct Tracker {
    meta: Meta,
    seq: u64,
    /// Text sent to the client, and the attempt it came from.
    sent: String,
    sent_attempt: Option<u32>,
    /// The message output item was announced.
    message_open: bool,
    /// The recorded answer's text beyond what was sent, and its calls.
    held: Option<(String, Vec<ToolCall>)>,
    finish: FinishReason,
    usage: Usage,
    pub(super) endpoint: String,
    pub(super) cost_usd: Option<f64>,
    pub(super) attempts: u32,
    calls: Vec<ToolCall>,
}

/// How far one event took the response.
pub(super) enum Outcome {
    More,
    Completed,
    Failed(ApiError),
}

impl Tracker {
    pub(super) fn new(meta: Meta) -> Self {
        Self {
            meta,
            seq: 0,
            sent: String::new(),
            sent_attempt: None,
            message_open: false,
            held: None,
            finish: FinishReason::Stop,
            usage: Usage::default(),
            endpoint: String::new(),
            cost_usd: None,
            attempts: 0,
            calls: Vec::new(),
        }
    }

    /// `event: <type>` and its data, numbered.
    fn event(&mut self, kind: &str, mut data: Value) -> Bytes {
        data["type"] = kind.into();
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
    }

    fn message_id(&self) -> String {
        format!("msg_{}", self.meta.id.trim_start_matches("resp_"))
    }

    fn message_item(&self, status: &str, text: Option<&str>) -> Value {
        let content = match text {
            Some(t) => {
                json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}])
            }
            None => json!([]),
        };
        json!({
            "type": "message",
            "id": self.message_id(),
            "status": status,
            "role": "assistant",
            "content": content,
        })
    }

    fn call_item(c: &ToolCall, status: &str, arguments: &str) -> Value {
        json!({
            "type": "function_call",
            "id": format!("fc_{}", c.id),
            "call_id": c.id,
            "name": c.name,
            "arguments": arguments,
            "status": status,
        })
    }

    /// The response object, as it stands.
    pub(super) fn object(&self, status: &str, error: Option<&ApiError>) -> Value {
        let mut output = Vec::new();
        let done = status != "in_progress";
        if done && (!self.sent.is_empty() || self.calls.is_empty()) && error.is_none() {
            output.push(self.message_item("completed", Some(&self.sent)));
        }
        if done && error.is_none() {
            output.extend(
                self.calls
                    .iter()
                    .map(|c| Self::call_item(c, "completed", &c.arguments)),
            );
        }
        let e = &self.meta.echo;
        let incomplete = match (status, &self.finish) {
            ("incomplete", FinishReason::ContentFilter) => json!({"reason": "content_filter"}),
            ("incomplete", _) => json!({"reason": "max_output_tokens"}),
            _ => Value::Null,
        };
        json!({
            "id": self.meta.id,
            "object": "response",
            "created_at": self.meta.created_at,
            "status": status,
            "error": error.map(|e| json!({"code": e.code.clone().unwrap_or_else(|| "server_error".into()), "message": e.message})),
            "incomplete_details": incomplete,
            "instructions": e.instructions,
            "max_output_tokens": e.max_output_tokens,
            "model": self.meta.model,
            "output": output,
            "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": self.meta.previous,
            "store": self.meta.store,
            "temperature": e.temperature,
            "text": e.text,
            "tool_choice": e.tool_choice,
            "tools": e.tools,
            "top_p": e.top_p,
            "truncation": "disabled",
            "usage": done.then(|| json!({
                "input_tokens": self.usage.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.usage.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.usage.input_tokens + self.usage.output_tokens,
            })),
            "user": e.user,
            "metadata": e.metadata,
        })
    }

    /// `response.created` and `response.in_progress`.
    pub(super) fn start(&mut self) -> Vec<Bytes> {
        let r = self.object("in_progress", None);
        vec![
            self.event("response.created", json!({"response": r})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    fn open_message(&mut self, frames: &mut Vec<Bytes>) {
        if self.message_open {
            return;
        }
        self.message_open = true;
        let item = self.message_item("in_progress", None);
        frames.push(self.event(
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        ));
        let id = self.message_id();
        frames.push(self.event(
            "response.content_part.added",
            json!({"item_id": id, "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
        ));
    }

    fn text(&mut self, text: &str, frames: &mut Vec<Bytes>) {
        self.open_message(frames);
        self.sent.push_str(text);
        let id = self.message_id();
        frames.push(self.event(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": []}),
        ));
    }

    /// The last frames of a completed turn: the held answer, the output
    /// items closed, `response.completed` (or `.incomplete`).
    fn complete(&mut self, frames: &mut Vec<Bytes>) {
        let (rest, calls) = self.held.take().unwrap_or_default();
        if !rest.is_empty() {
            self.text(&rest, frames);
        }
        if calls.is_empty() {
            self.open_message(frames);
        }
        if self.message_open {
            let id = self.message_id();
            let text = self.sent.clone();
            frames.push(self.event(
                "response.output_text.done",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            ));
            frames.push(self.event(
                "response.content_part.done",
                json!({"item_id": id, "output_index": 0, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
            ));
            let item = self.message_item("completed", Some(&text));
            frames.push(self.event(
                "response.output_item.done",
                json!({"output_index": 0, "item": item}),
            ));
        }
        let first = usize::from(self.message_open);
        for (i, c) in calls.iter().enumerate() {
            let at = first + i;
            let id = format!("fc_{}", c.id);
            let added = Self::call_item(c, "in_progress", "");
            frames.push(self.event(
                "response.output_item.added",
                json!({"output_index": at, "item": added}),
            ));
            frames.push(self.event(
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": at, "delta": c.arguments}),
            ));
            frames.push(self.event(
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": at, "name": c.name, "arguments": c.arguments}),
            ));
            let done = Self::call_item(c, "completed", &c.arguments);
            frames.push(self.event(
                "response.output_item.done",
                json!({"output_index": at, "item": done}),
            ));
        }
        self.calls = calls;
        let (kind, status) = match self.finish {
            FinishReason::Length | FinishReason::ContentFilter => {
                ("response.incomplete", "incomplete")
            }
            _ => ("response.completed", "completed"),
        };
        let r = self.object(status, None);
        frames.push(self.event(kind, json!({"response": r})));
    }

    /// The frames that end a failed stream.
    pub(super) fn failed(&mut self, e: &ApiError) -> Vec<Bytes> {
        let error = self.event(
            "error",
            json!({"code": e.code, "message": e.message, "param": e.param}),
        );
        let r = self.object("failed", Some(e));
        vec![error, self.event("response.failed", json!({"response": r}))]
    }

    /// The status the finished response has.
    pub(super) fn status(&self) -> &'static str {
        match self.finish {
            FinishReason::Length | FinishReason::ContentFilter => "incomplete",
            _ => "completed",
        }
    }

    /// Take one event of the turn, pushing the frames it makes.
    pub(super) fn on_event(&mut self, kind: EventKind, frames: &mut Vec<Bytes>) -> Outcome {
        match kind {
            EventKind::OutputDelta { text, attempt, .. } => {
                if text.is_empty() {
                    return Outcome::More;
                }
                if !self.sent.is_empty() && self.sent_attempt != Some(attempt) {
                    return Outcome::Failed(retracted_error());
                }
                self.sent_attempt = Some(attempt);
                self.text(&text, frames);
            }
            EventKind::OutputRetracted { .. } => {
                if !self.sent.is_empty() {
                    return Outcome::Failed(retracted_error());
                }
                self.sent_attempt = None;
            }
            EventKind::AssistantMessage {
                message,
                model,
                finish_reason,
                usage,
                endpoint,
                cost_usd,
                attempts,
                ..
            } => {
                if !model.is_empty() {
                    self.meta.model = model;
                }
                let Some(rest) = message.content.strip_prefix(self.sent.as_str()) else {
                    return Outcome::Failed(retracted_error());
                };
                self.held = Some((rest.to_string(), message.tool_calls.clone()));
                self.finish = finish_reason;
                self.usage = usage;
                self.endpoint = endpoint;
                self.cost_usd = cost_usd;
                self.attempts = attempts;
            }
            EventKind::TurnCompleted { usage, .. } => {
                if usage != Usage::default() {
                    self.usage = usage;
                }
                if self.held.is_none() {
                    return Outcome::Failed(ApiError::new(
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        format!(
                            "the turn of session {} completed without an answer",
                            self.meta.session
                        ),
                    ));
                }
                self.complete(frames);
                return Outcome::Completed;
            }
            kind => {
                if let Some(e) = turn_ended_error(&kind) {
                    return Outcome::Failed(e);
                }
            }
        }
        Outcome::More
    }
}

/// Wait for the turn to end and answer with the response object.
pub(super) async fn json_answer(
    mut events: EventStream,
    mut guard: CancelOnDrop,
    mut tracker: Tracker,
) -> Result<Response, ApiError> {
    let id = tracker.meta.session;
    let mut frames = Vec::new();
    loop {
        let kind = next_event(&mut events, id)
            .await
            .inspect_err(|_| guard.disarm())?;
        frames.clear();
        match tracker.on_event(kind, &mut frames) {
            Outcome::More => {}
            Outcome::Completed => break,
            Outcome::Failed(e) => {
                guard.disarm();
                return Err(e);
            }
        }
    }
    guard.disarm();
    let body = tracker.object(tracker.status(), None);
    let mut resp = axum::Json(body).into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        (SESSION_HEADER, Some(id.to_string())),
        (ENDPOINT_HEADER, Some(tracker.endpoint.clone())),
        (ATTEMPTS_HEADER, Some(tracker.attempts.max(1).to_string())),
        (COST_HEADER, tracker.cost_usd.map(|c| c.to_string())),
    ] {
        if let Some(v) = value.as_deref().and_then(header_value) {
            h.insert(name, v);
        }
    }
    Ok(resp)
}

/// Answer with the `response.*` event stream; `erase` (store: false) is
/// deleted once the stream ended.
pub(super) fn stream_answer(
    mut events: EventStream,
    mut guard: CancelOnDrop,
    mut tracker: Tracker,
    erase: Option<Caller>,
) -> Response {
    let id = tracker.meta.session;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(32);
    tokio::spawn(async move {
        let mut frames = tracker.start();
        let mut done = false;
        'stream: loop {
            for f in frames.drain(..) {
                if tx.send(Ok(f)).await.is_err() {
                    // The client went away: the guard cancels the turn.
                    break 'stream;
                }
            }
            if done {
                guard.disarm();
                break;
            }
            let next = tokio::select! {
                // A client that leaves while nothing is sent (a gate holds
                // the answer) is noticed at once.
                _ = tx.closed() => break 'stream,
                next = next_event(&mut events, id) => next,
            };
            match next {
                Ok(kind) => match tracker.on_event(kind, &mut frames) {
                    Outcome::More => {}
                    Outcome::Completed => done = true,
                    Outcome::Failed(e) => {
                        frames.extend(tracker.failed(&e));
                        done = true;
                    }
                },
                Err(e) => {
                    frames.extend(tracker.failed(&e));
                    done = true;
                }
            }
        }
        drop(guard);
        drop(tx);
        if let Some(caller) = erase {
            forget(&caller, id).await;
        }
    });
    super::turn::sse_response(rx, id)
}

/// Delete the session of a `store: false` response once it was answered:
/// nothing of it stays but its audit records (the deletion is one too).
pub(super) async fn forget(caller: &Caller, id: SessionId) {
    if let Err(e) = caller.delete(id).await {
        tracing::warn!(session = %id, error = %e, "cannot delete the session of a store: false response");
    }
}
