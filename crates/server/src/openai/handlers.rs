//! The endpoints: `POST /v1/chat/completions` and `GET /v1/models`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use baton_runtime::{Caller, StartSession};

use super::error::{ApiError, body_error, runtime_error};
use super::request::parse_request;
use super::response::json_response;
use super::stream::stream_response;
use super::turn::{CancelOnDrop, Completion};
use super::types::{Model, ModelList};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    runtime: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match complete(runtime, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn complete(
    runtime: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let req = parse_request(&body, &headers)?;
    let routes = runtime.routes();
    if !routes.contains(&req.model) {
        return Err(ApiError::model_not_found(&req.model, &routes));
    }
    req.check_limits(&runtime.runtime().config().sessions)?;
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
            // Hold sessions are for flows' gate steps, not clients.
            hold: None,
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

/// `GET /v1/models`: every route the caller may use, as a model.
pub fn models(runtime: &Caller) -> ModelList {
    ModelList::routes(runtime.routes())
}

/// `GET /v1/models/{model}`: one route, as a model.
pub fn model_json(route: &str) -> Model {
    Model::route(route)
}
