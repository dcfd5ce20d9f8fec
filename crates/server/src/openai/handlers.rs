//! The endpoints: `POST /v1/chat/completions` and `GET /v1/models`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use baton_runtime::{RuntimeHandle, StartSession};
use serde_json::{Value, json};

use super::error::{ApiError, runtime_error};
use super::request::parse_request;
use super::response::json_response;
use super::stream::stream_response;
use super::turn::{CancelOnDrop, Completion};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    runtime: RuntimeHandle,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match complete(runtime, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn complete(
    runtime: RuntimeHandle,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| {
        let status = r.status();
        let e = ApiError::new(status, "invalid_request_error", r.body_text());
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            e.code("request_too_large")
        } else {
            e
        }
    })?;
    let req = parse_request(&body, &headers)?;
    let routes = runtime.routes();
    if !routes.contains(&req.model) {
        return Err(ApiError::model_not_found(&req.model, &routes));
    }
    let limits = &runtime.config().sessions;
    if req.last.content.len() > limits.max_message_bytes {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the last message is {} bytes; the limit is {} (sessions.max_message_bytes)",
                req.last.content.len(),
                limits.max_message_bytes
            ),
        )
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .code("request_too_large"));
    }
    if req.system_prompt.len() > limits.max_system_prompt_bytes {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the system and developer messages are {} bytes; the limit is {} (sessions.max_system_prompt_bytes)",
                req.system_prompt.len(),
                limits.max_system_prompt_bytes
            ),
        )
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .code("request_too_large"));
    }
    let info = runtime
        .start_session(StartSession {
            idempotency_key: None,
            system_prompt: req.system_prompt,
            route: Some(req.model.clone()),
            metadata: req.metadata,
            allowed_tools: Vec::new(),
            client_tools: req.tools,
            max_steps: 0,
            budget_usd: req.budget_usd,
            data_classes: req.data_classes,
            one_shot: true,
            history: req.history,
            generation: req.generation,
        })
        .await
        .map_err(|e| runtime_error(&e))?;
    let id = info.id;
    let events = runtime
        .send_message(id, req.last, false)
        .await
        .map_err(|e| runtime_error(&e).in_session(id))?;
    let guard = CancelOnDrop::new(runtime, id);
    let completion = Completion {
        id: format!("chatcmpl-{id}"),
        created: unix_now(),
        model: req.model,
    };
    if req.stream {
        stream_response(id, events, guard, completion, req.include_usage).await
    } else {
        json_response(id, events, guard, completion).await
    }
    .map_err(|e| e.in_session(id))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /v1/models`: every route, as a model.
pub fn models(runtime: &RuntimeHandle) -> Value {
    let data: Vec<Value> = runtime.routes().iter().map(|r| model_json(r)).collect();
    json!({"object": "list", "data": data})
}

/// One model (route) object.
pub fn model_json(route: &str) -> Value {
    json!({"id": route, "object": "model", "created": 0, "owned_by": "baton"})
}
