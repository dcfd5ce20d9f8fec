//! A finished one-shot turn as a `chat.completion` response.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use baton_runtime::EventStream;
use baton_types::{EventKind, FinishReason, Message, SessionId, ToolCall, Usage};
use futures::StreamExt;
use serde_json::{Value, json};

use super::error::{
    ApiError, cancelled_error, ended_early_error, runtime_error, turn_failed_error,
};
use super::headers::{ATTEMPTS_HEADER, COST_HEADER, ENDPOINT_HEADER, SESSION_HEADER};
use super::turn::{CancelOnDrop, Completion, header_value};

pub(super) fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total(),
    })
}

pub(super) fn tool_calls_json(calls: &[ToolCall], indexed: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if indexed {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

/// The finish reason as OpenAI names it (SDKs with typed enums reject others).
pub(super) fn finish_reason(reason: &FinishReason, has_tool_calls: bool) -> &'static str {
    if has_tool_calls {
        return "tool_calls";
    }
    match reason {
        FinishReason::Stop | FinishReason::Other(_) => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}
/// The recorded answer of a one-shot turn.
struct Answer {
    message: Message,
    usage: Usage,
    endpoint: String,
    model: String,
    finish_reason: FinishReason,
    cost_usd: Option<f64>,
    attempts: u32,
}
pub(super) async fn json_response(
    id: SessionId,
    mut events: EventStream,
    mut guard: CancelOnDrop,
    completion: Completion,
) -> Result<Response, ApiError> {
    let mut answer = None;
    let turn_usage = loop {
        let event = match events.next().await {
            None => {
                guard.disarm();
                return Err(ended_early_error(id));
            }
            Some(Err(e)) => {
                guard.disarm();
                return Err(runtime_error(&e));
            }
            Some(Ok(e)) => e,
        };
        match event.kind {
            EventKind::AssistantMessage {
                message,
                usage,
                endpoint,
                model,
                finish_reason,
                cost_usd,
                attempts,
                ..
            } => {
                answer = Some(Answer {
                    message,
                    usage,
                    endpoint,
                    model,
                    finish_reason,
                    cost_usd,
                    attempts,
                });
            }
            EventKind::TurnCompleted { usage, .. } => break usage,
            EventKind::TurnFailed { reason, code, .. } => {
                guard.disarm();
                return Err(turn_failed_error(&code, &reason));
            }
            EventKind::TurnCancelled { .. } => {
                guard.disarm();
                return Err(cancelled_error());
            }
            _ => {}
        }
    };
    guard.disarm();
    let Some(a) = answer else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("the turn of session {id} completed without an answer"),
        ));
    };
    let usage = if turn_usage == Usage::default() {
        a.usage
    } else {
        turn_usage
    };
    let has_calls = !a.message.tool_calls.is_empty();
    let mut message = json!({
        "role": "assistant",
        "content": if a.message.content.is_empty() && has_calls {
            Value::Null
        } else {
            Value::String(a.message.content.clone())
        },
        "refusal": null,
    });
    if has_calls {
        message["tool_calls"] = tool_calls_json(&a.message.tool_calls, false);
    }
    let model = if a.model.is_empty() {
        completion.model
    } else {
        a.model
    };
    let body = json!({
        "id": completion.id,
        "object": "chat.completion",
        "created": completion.created,
        "model": model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(&a.finish_reason, has_calls),
        }],
        "usage": usage_json(usage),
    });
    let mut resp = Json(body).into_response();
    let h = resp.headers_mut();
    if let Some(v) = header_value(&id.to_string()) {
        h.insert(SESSION_HEADER, v);
    }
    if let Some(v) = header_value(&a.endpoint) {
        h.insert(ENDPOINT_HEADER, v);
    }
    if let Some(cost) = a.cost_usd
        && let Some(v) = header_value(&cost.to_string())
    {
        h.insert(COST_HEADER, v);
    }
    h.insert(ATTEMPTS_HEADER, HeaderValue::from(a.attempts.max(1)));
    Ok(resp)
}
