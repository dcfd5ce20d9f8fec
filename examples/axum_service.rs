//! Run with: cargo run --example axum_service
//!
//! Baton embedded in a small axum backend: one durable session per support
//! ticket (the ticket id is the session's idempotency key), so a retried
//! request or a restarted service continues the same conversation.
//!
//! ```sh
//! curl -s -X POST localhost:3000/tickets/T-1/messages -H 'content-type: application/json' \
//!      -d '{"text": "My order has not arrived"}'
//! curl -s localhost:3000/tickets/T-1
//! ```

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use baton::{EventKind, Runtime, RuntimeConfig, RuntimeHandle, StartSession};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct NewMessage {
    text: String,
}

#[derive(Serialize)]
struct Reply {
    ticket: String,
    session_id: String,
    turn: u64,
    reply: String,
    model: String,
    tokens: u64,
}

#[derive(Serialize)]
struct Ticket {
    session_id: String,
    status: &'static str,
    messages: Vec<baton::Message>,
}

type ApiError = (StatusCode, String);

/// Map Baton's error codes onto HTTP statuses.
fn api_error(e: baton::Error) -> ApiError {
    use baton::types::ErrorCode::*;
    let status = match e.code() {
        InvalidArgument => StatusCode::BAD_REQUEST,
        NotFound => StatusCode::NOT_FOUND,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        PermissionDenied => StatusCode::FORBIDDEN,
        AlreadyExists | FailedPrecondition => StatusCode::CONFLICT,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Cancelled | Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string())
}

async fn session_for(baton: &RuntimeHandle, ticket: &str) -> Result<baton::SessionId, ApiError> {
    let info = baton
        .start_session(StartSession {
            idempotency_key: Some(format!("ticket:{ticket}")),
            system_prompt: "You are a courteous support agent.".into(),
            metadata: BTreeMap::from([("ticket".to_string(), ticket.to_string())]),
            ..Default::default()
        })
        .await
        .map_err(api_error)?;
    Ok(info.id)
}

async fn post_message(
    State(baton): State<RuntimeHandle>,
    Path(ticket): Path<String>,
    Json(body): Json<NewMessage>,
) -> Result<Json<Reply>, ApiError> {
    let id = session_for(&baton, &ticket).await?;
    let mut events = baton.send(id, body.text).await.map_err(api_error)?;
    let mut reply = None;
    while let Some(event) = events.next().await {
        match event.map_err(api_error)?.kind {
            EventKind::AssistantMessage {
                turn,
                message,
                model,
                usage,
                ..
            } => {
                reply = Some(Reply {
                    ticket: ticket.clone(),
                    session_id: id.to_string(),
                    turn,
                    reply: message.content,
                    model,
                    tokens: usage.total(),
                });
            }
            EventKind::TurnFailed { reason, .. } => return Err((StatusCode::BAD_GATEWAY, reason)),
            EventKind::TurnCancelled { .. } => {
                return Err((StatusCode::CONFLICT, "turn cancelled".into()));
            }
            _ => {}
        }
    }
    reply.map(Json).ok_or((
        StatusCode::INTERNAL_SERVER_ERROR,
        "the turn ended without an answer".into(),
    ))
}

async fn get_ticket(
    State(baton): State<RuntimeHandle>,
    Path(ticket): Path<String>,
) -> Result<Json<Ticket>, ApiError> {
    let id = session_for(&baton, &ticket).await?;
    let view = baton.get(id).await.map_err(api_error)?;
    Ok(Json(Ticket {
        session_id: id.to_string(),
        status: view.status.as_str(),
        messages: view.messages,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The built-in echo model: no keys, no network. Configure [[models]] for real ones.
    let baton = Runtime::builder(RuntimeConfig::with_data_dir("./baton-example-data"))
        .start()
        .await?;
    let app = Router::new()
        .route("/tickets/{ticket}/messages", post(post_message))
        .route("/tickets/{ticket}", get(get_ticket))
        .with_state(baton.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("ticket service on http://{}", listener.local_addr()?);
    // Ctrl-C: Baton refuses new messages (503 through `api_error`) while
    // the answers in progress finish, for up to 10 s; then axum stops.
    let draining = baton.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            draining.drain(std::time::Duration::from_secs(10)).await;
        })
        .await?;
    baton.shutdown().await;
    Ok(())
}
