//! `POST /v1/responses`: OpenAI's Responses API over durable Baton sessions.
//!
//! A response is one turn of a session: its id is `resp_<session>_<turn>`.
//! A request without `previous_response_id` starts a session (one-shot:
//! function calls go back to the client, and the session leaves memory when
//! the turn ends). A request with one continues the conversation that
//! response ended, which lives in Baton — journaled, surviving restarts,
//! inspectable and audited like any session:
//!
//! - **in place**, as the session's next turn, when the response is the
//!   session's latest, the request brings one new message (a user message
//!   or one function call's output) and the same route, instructions, tools
//!   and generation settings (their fingerprint is in the session's
//!   metadata), no data classes or budget the session lacks, and `store`
//!   is not false — sent only if the session is still at that turn (two
//!   requests continuing the same response: one goes in place, the other
//!   branches);
//! - otherwise **in a new session** whose history is that conversation
//!   (up to the response, read from the journal) plus the new input: a
//!   branch from an earlier response, new instructions or tools, several
//!   function outputs at once. Its metadata names `previous_response_id`.
//!
//! `store: false` answers the same way and then deletes the session (also
//! when the client goes away or the turn fails): what remains is the audit
//! trail's records of the call. Until then its session is marked so that it
//! cannot be continued.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use baton_runtime::{Caller, Error as RuntimeError, EventStream, StartSession};
use baton_types::{EventKind, SessionId};
use futures::StreamExt;

use super::error::{ApiError, body_error, runtime_error};
use super::responses_request::{
    ResponsesRequest, SETTINGS_KEY, parse_responses, previous_not_found, response_id,
};
use super::responses_stream::{Meta, Tracker, forget, json_answer, stream_answer};
use super::turn::CancelOnDrop;

/// The metadata key naming the response a branched session continues.
const PREVIOUS_KEY: &str = "previous_response_id";

/// The metadata key marking a `store: false` session (deleted once
/// answered, and never continued meanwhile).
const STORE_KEY: &str = "baton.responses.store";

/// `POST /v1/responses`.
pub async fn responses(
    runtime: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match respond(runtime, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn respond(
    runtime: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let req = parse_responses(&body, &headers)?;
    let routes = runtime.routes();
    if !routes.contains(&req.chat.model) {
        return Err(ApiError::model_not_found(&req.chat.model, &routes));
    }
    req.chat
        .check_limits(&runtime.runtime().config().sessions)?;
    let ResponsesRequest {
        chat,
        previous,
        store,
        settings,
        echo,
    } = req;
    let mut history = Vec::new();
    let mut in_place = None;
    let mut branch_classes = chat.data_classes.clone();
    if let Some((raw, session, turn)) = &previous {
        let conv = runtime
            .conversation_at_turn(*session, *turn)
            .await
            .map_err(|e| match e {
                RuntimeError::SessionNotFound(_) | RuntimeError::NotFoundDetail(_) => {
                    previous_not_found(raw)
                }
                RuntimeError::FailedPrecondition(m) => {
                    ApiError::invalid("previous_response_id", m).code("previous_response_unusable")
                }
                e => runtime_error(&e),
            })?;
        if conv.metadata.get(STORE_KEY).is_some_and(|v| v == "false") {
            return Err(previous_not_found(raw));
        }
        // In place only when nothing about the call differs from the
        // session: its route, settings, data classes (a request that
        // declares more goes to a branch that carries them) and budget.
        let classes_held = chat
            .data_classes
            .iter()
            .all(|c| conv.data_classes.contains(c));
        if conv.head
            && store
            && chat.history.is_empty()
            && conv.route == chat.model
            && conv.metadata.get(SETTINGS_KEY) == Some(&settings)
            && classes_held
            && chat.budget_usd.is_none_or(|b| Some(b) == conv.budget_usd)
        {
            in_place = Some((*session, *turn));
        }
        // Should this request branch (or lose the race to continue in
        // place): the conversation at that response, with its labels.
        history = conv.messages;
        for c in conv.data_classes {
            if !branch_classes.contains(&c) {
                branch_classes.push(c);
            }
        }
    }
    let continued = match in_place {
        Some((id, turn)) => match runtime
            .continue_after_turn(id, turn, chat.last.clone())
            .await
        {
            Ok(events) => Some((id, events)),
            // Another request continued it first: this one branches.
            Err(RuntimeError::FailedPrecondition(_)) => None,
            Err(e) => return Err(runtime_error(&e).in_session(id)),
        },
        None => None,
    };
    let (id, mut events) = match continued {
        Some(c) => c,
        None => {
            history.extend(chat.history);
            let mut metadata = chat.metadata;
            metadata.insert(SETTINGS_KEY.into(), settings);
            if let Some((raw, ..)) = &previous {
                metadata.insert(PREVIOUS_KEY.into(), raw.clone());
            }
            if !store {
                metadata.insert(STORE_KEY.into(), "false".into());
            }
            let info = runtime
                .start_session(StartSession {
                    idempotency_key: None,
                    system_prompt: chat.system_prompt,
                    route: Some(chat.model.clone()),
                    metadata,
                    allowed_tools: Vec::new(),
                    client_tools: chat.tools,
                    max_steps: 0,
                    budget_usd: chat.budget_usd,
                    data_classes: branch_classes,
                    one_shot: true,
                    history,
                    generation: chat.generation,
                    hold: None,
                })
                .await
                .map_err(|e| runtime_error(&e))?;
            match runtime.send_message(info.id, chat.last, false).await {
                Ok(events) => (info.id, events),
                Err(e) => {
                    if !store {
                        forget(&runtime, info.id).await;
                    }
                    return Err(runtime_error(&e).in_session(info.id));
                }
            }
        }
    };
    let guard = CancelOnDrop::new(runtime.clone(), id);
    let turn = match accepted_turn(&mut events, id).await {
        Ok(t) => t,
        Err(e) => {
            if !store {
                forget(&runtime, id).await;
            }
            return Err(e);
        }
    };
    let tracker = Tracker::new(Meta {
        id: response_id(id, turn),
        session: id,
        created_at: unix_now(),
        model: chat.model,
        previous: previous.map(|(raw, ..)| raw),
        store,
        echo,
    });
    let erase = (!store).then(|| runtime.clone());
    if chat.stream {
        return Ok(stream_answer(events, guard, tracker, erase));
    }
    let Some(caller) = erase else {
        return json_answer(events, guard, tracker)
            .await
            .map_err(|e| e.in_session(id));
    };
    // store: false: the deletion follows the answer even when the client
    // goes away meanwhile.
    let answered = tokio::spawn(async move {
        let answer = json_answer(events, guard, tracker).await;
        forget(&caller, id).await;
        answer
    });
    match answered.await {
        Ok(answer) => answer.map_err(|e| e.in_session(id)),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("the response task failed: {e}"),
        )
        .in_session(id)),
    }
}

/// The number of the turn the message started (its `TurnAccepted`).
async fn accepted_turn(events: &mut EventStream, id: SessionId) -> Result<u64, ApiError> {
    while let Some(e) = events.next().await {
        match e {
            Ok(e) => {
                if let EventKind::TurnAccepted { turn, .. } = e.kind {
                    return Ok(turn);
                }
            }
            Err(e) => return Err(runtime_error(&e).in_session(id)),
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        format!("session {id} ended its stream before accepting the turn"),
    )
    .in_session(id))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
