//! The `baton.v1.Sessions` service: request validation and conversion over
//! the runtime's embedding API.

use std::pin::Pin;

use baton_proto::convert;
use baton_proto::v1::{self, sessions_server::Sessions};
use baton_runtime::{EventStream, ListQuery, RuntimeHandle, SessionView, StartSession};
use baton_types::SessionId;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::owner::{self, Onward};
use crate::status::status;

/// The Sessions service over a runtime.
#[derive(Clone)]
pub struct SessionsService {
    runtime: RuntimeHandle,
}

impl SessionsService {
    /// The runtime as the request's authenticated principal sees it.
    fn caller<T>(&self, req: &Request<T>) -> Result<baton_runtime::Caller, Status> {
        Ok(self.runtime.as_caller(crate::auth::principal(req)?))
    }

    pub fn new(runtime: RuntimeHandle) -> Self {
        Self { runtime }
    }
}

type EventResultStream = Pin<Box<dyn Stream<Item = Result<v1::SessionEvent, Status>> + Send>>;

fn session_id(field: &str, s: &str) -> Result<SessionId, Status> {
    if s.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    s.parse()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn to_grpc(stream: EventStream) -> EventResultStream {
    Box::pin(stream.map(|item| match item {
        Ok(e) => Ok(convert::event_to_proto(&e)),
        Err(e) => Err(status(&e)),
    }))
}

fn view_to_proto(v: SessionView) -> v1::Session {
    v1::Session {
        tenant: v.tenant.clone(),
        session_id: v.id.to_string(),
        status: convert::status_to_proto(v.status) as i32,
        status_reason: v.status_reason,
        route: v.route,
        system_prompt: v.system_prompt,
        metadata: v.metadata.into_iter().collect(),
        created_at_unix_ms: v.created_at_unix_ms,
        messages: v.messages.iter().map(convert::message_to_proto).collect(),
        current_turn: v.current_turn,
        queued_turns: v.queued_turns,
        usage: Some(convert::usage_to_proto(v.usage)),
        last_seq: v.last_seq,
        turns_completed: v.turns_completed,
        live: v.live,
        pending_tool_calls: v
            .pending_tools
            .into_iter()
            .map(|t| v1::PendingToolCall {
                needs_attention: t.attention.is_some(),
                call_id: t.call_id,
                name: t.name,
                arguments: t.arguments,
                client_side: t.client_side,
                started: t.started,
            })
            .collect(),
        allowed_tools: v.allowed_tools,
        client_tools: v
            .client_tools
            .iter()
            .map(convert::tool_definition_to_proto)
            .collect(),
        max_steps: v.max_steps,
    }
}

#[tonic::async_trait]
impl Sessions for SessionsService {
    async fn start_session(
        &self,
        req: Request<v1::StartSessionRequest>,
    ) -> Result<Response<v1::StartSessionResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let generation =
            convert::generation_from_proto(r.generation).map_err(|(field, problem)| {
                Status::invalid_argument(format!("generation.{field}: {problem}"))
            })?;
        let info = caller
            .start_session(StartSession {
                idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
                system_prompt: r.system_prompt,
                route: (!r.route.is_empty()).then_some(r.route),
                metadata: r.metadata.into_iter().collect(),
                allowed_tools: r.allowed_tools,
                client_tools: r
                    .client_tools
                    .into_iter()
                    .map(convert::tool_definition_from_proto)
                    .collect(),
                max_steps: r.max_steps,
                budget_usd: r.budget_usd,
                data_classes: r.data_classes,
                one_shot: false,
                history: Vec::new(),
                generation,
                // Hold sessions are for flows' gate steps, not clients.
                hold: None,
            })
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::StartSessionResponse {
            session_id: info.id.to_string(),
            status: convert::status_to_proto(info.status) as i32,
            created: info.created,
        }))
    }

    type SendMessageStream = EventResultStream;

    async fn send_message(
        &self,
        req: Request<v1::SendMessageRequest>,
    ) -> Result<Response<Self::SendMessageStream>, Status> {
        let caller = self.caller(&req)?;
        let onward = Onward::of(&req);
        let r = req.into_inner();
        let id = session_id("session_id", &r.session_id)?;
        let sent = if r.images.is_empty() {
            caller.send_with(id, r.content.clone(), r.review).await
        } else {
            let mut message = baton_types::Message::user(r.content.clone());
            message.images = r
                .images
                .iter()
                .cloned()
                .map(convert::image_from_proto)
                .collect();
            caller.send_message(id, message, r.review).await
        };
        match sent {
            Ok(stream) => Ok(Response::new(to_grpc(stream))),
            Err(e) => {
                let addr = onward.owner(e)?;
                let s = owner::sessions(&addr)?
                    .send_message(onward.request(r))
                    .await
                    .map_err(|s| owner::unreachable(&addr, s))?;
                Ok(Response::new(Box::pin(s.into_inner())))
            }
        }
    }

    type ResumeSessionStream = EventResultStream;

    async fn resume_session(
        &self,
        req: Request<v1::ResumeSessionRequest>,
    ) -> Result<Response<Self::ResumeSessionStream>, Status> {
        let caller = self.caller(&req)?;
        let onward = Onward::of(&req);
        let r = req.into_inner();
        let id = session_id("session_id", &r.session_id)?;
        match caller.resume(id, r.after_seq).await {
            Ok(stream) => Ok(Response::new(to_grpc(stream))),
            Err(e) => {
                let addr = onward.owner(e)?;
                let s = owner::sessions(&addr)?
                    .resume_session(onward.request(r))
                    .await
                    .map_err(|s| owner::unreachable(&addr, s))?;
                Ok(Response::new(Box::pin(s.into_inner())))
            }
        }
    }

    async fn get_session(
        &self,
        req: Request<v1::GetSessionRequest>,
    ) -> Result<Response<v1::Session>, Status> {
        let caller = self.caller(&req)?;
        let onward = Onward::of(&req);
        let r = req.into_inner();
        let id = session_id("session_id", &r.session_id)?;
        match caller.get(id).await {
            Ok(view) => Ok(Response::new(view_to_proto(view))),
            Err(e) => {
                let addr = onward.owner(e)?;
                owner::sessions(&addr)?
                    .get_session(onward.request(r))
                    .await
                    .map_err(|s| owner::unreachable(&addr, s))
            }
        }
    }

    async fn list_sessions(
        &self,
        req: Request<v1::ListSessionsRequest>,
    ) -> Result<Response<v1::ListSessionsResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let status_filter = convert::status_from_proto(r.status)
            .map_err(|v| Status::invalid_argument(format!("status: unknown session status {v}")))?;
        let list = caller
            .list(ListQuery {
                status: status_filter,
                tenant: None,
                route: (!r.route.is_empty()).then_some(r.route),
                flow: (!r.flow.is_empty()).then_some(r.flow),
                newest_first: r.newest_first,
                page_size: r.page_size,
                page_token: (!r.page_token.is_empty()).then_some(r.page_token),
            })
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::ListSessionsResponse {
            sessions: list
                .sessions
                .into_iter()
                .map(|s| v1::SessionSummary {
                    session_id: s.id.to_string(),
                    status: convert::status_to_proto(s.status) as i32,
                    route: s.route,
                    created_at_unix_ms: s.created_at_unix_ms,
                    status_reason: s.status_reason,
                })
                .collect(),
            next_page_token: list.next_page_token.unwrap_or_default(),
        }))
    }

    async fn cancel_turn(
        &self,
        req: Request<v1::CancelTurnRequest>,
    ) -> Result<Response<v1::CancelTurnResponse>, Status> {
        let caller = self.caller(&req)?;
        let onward = Onward::of(&req);
        let r = req.into_inner();
        let id = session_id("session_id", &r.session_id)?;
        match caller.cancel(id).await {
            Ok(turn) => Ok(Response::new(v1::CancelTurnResponse {
                cancelled: turn.is_some(),
                turn: turn.unwrap_or(0),
            })),
            Err(e) => {
                let addr = onward.owner(e)?;
                owner::sessions(&addr)?
                    .cancel_turn(onward.request(r))
                    .await
                    .map_err(|s| owner::unreachable(&addr, s))
            }
        }
    }

    async fn submit_tool_result(
        &self,
        req: Request<v1::SubmitToolResultRequest>,
    ) -> Result<Response<v1::SubmitToolResultResponse>, Status> {
        let caller = self.caller(&req)?;
        let onward = Onward::of(&req);
        let r = req.into_inner();
        let id = session_id("session_id", &r.session_id)?;
        let outcome = match r.outcome.clone() {
            Some(v1::submit_tool_result_request::Outcome::Output(o)) => Ok(o),
            Some(v1::submit_tool_result_request::Outcome::Error(e)) => Err(e),
            None => {
                return Err(Status::invalid_argument(
                    "outcome is required: set output or error",
                ));
            }
        };
        match caller
            .submit_tool_result(id, r.call_id.clone(), outcome)
            .await
        {
            Ok(seq) => Ok(Response::new(v1::SubmitToolResultResponse { seq })),
            Err(e) => {
                let addr = onward.owner(e)?;
                owner::sessions(&addr)?
                    .submit_tool_result(onward.request(r))
                    .await
                    .map_err(|s| owner::unreachable(&addr, s))
            }
        }
    }

    async fn delete_session(
        &self,
        req: Request<v1::DeleteSessionRequest>,
    ) -> Result<Response<v1::DeleteSessionResponse>, Status> {
        let caller = self.caller(&req)?;
        let onward = Onward::of(&req);
        let r = req.into_inner();
        let id = session_id("session_id", &r.session_id)?;
        match caller.delete(id).await {
            Ok(()) => Ok(Response::new(v1::DeleteSessionResponse {})),
            Err(e) => {
                let addr = onward.owner(e)?;
                owner::sessions(&addr)?
                    .delete_session(onward.request(r))
                    .await
                    .map_err(|s| owner::unreachable(&addr, s))
            }
        }
    }
}
