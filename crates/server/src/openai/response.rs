//! A finished one-shot turn as a `chat.completion` response.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use baton_runtime::EventStream;
use baton_types::{EventKind, Message, SessionId, Usage};

use super::error::{ApiError, turn_ended_error};
use super::headers::{ATTEMPTS_HEADER, COST_HEADER, ENDPOINT_HEADER, SESSION_HEADER};
use super::turn::{CancelOnDrop, Completion, header_value, next_event};
use super::types::{ChatCompletion, ChatCompletionObject, Choice, FinishReason, ResponseMessage};

/// The recorded answer of a one-shot turn.
struct Answer {
    message: Message,
    usage: Usage,
    endpoint: String,
    model: String,
    finish_reason: baton_types::FinishReason,
    cost_usd: Option<f64>,
    attempts: u32,
}

/// Wait for the turn to end; answer with the completion and Baton's headers
/// (session, endpoint, attempts, cost), or with the turn's error.
pub(super) async fn json_response(
    id: SessionId,
    mut events: EventStream,
    mut guard: CancelOnDrop,
    completion: Completion,
) -> Result<Response, ApiError> {
    let mut answer = None;
    let turn_usage = loop {
        let kind = next_event(&mut events, id)
            .await
            .inspect_err(|_| guard.disarm())?;
        match kind {
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
            kind => {
                if let Some(e) = turn_ended_error(&kind) {
                    guard.disarm();
                    return Err(e);
                }
            }
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
    let body = ChatCompletion {
        id: completion.id,
        object: ChatCompletionObject::ChatCompletion,
        created: completion.created,
        model: if a.model.is_empty() {
            completion.model
        } else {
            a.model
        },
        system_fingerprint: None,
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage::answer(&a.message),
            logprobs: None,
            finish_reason: FinishReason::of(&a.finish_reason, !a.message.tool_calls.is_empty()),
        }],
        usage: usage.into(),
    };
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
