//! The `baton.v1.Gates` service: listing, inspecting, deciding and watching
//! human-in-the-loop gates over the runtime's gate API.

use std::pin::Pin;

use baton_proto::convert;
use baton_proto::v1::{self, gates_server::Gates};
use baton_runtime::RuntimeHandle;
use baton_runtime::gates::{GateDecision, GateOrder, GateQuery, GateRecord, GateStatus};
use baton_types::{Message, SessionId};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::status::status;

/// The Gates service over a runtime.
#[derive(Clone)]
pub struct GatesService {
    runtime: RuntimeHandle,
    /// Turns true when the server shuts down: open watches end then, since
    /// the runtime's gate feed itself never closes while a handle lives.
    stopping: Option<watch::Receiver<bool>>,
}

impl GatesService {
    /// The runtime as the request's authenticated principal sees it.
    fn caller<T>(&self, req: &Request<T>) -> Result<baton_runtime::Caller, Status> {
        Ok(self.runtime.as_caller(crate::auth::principal(req)?))
    }

    /// A service whose watches end only when their clients leave.
    pub fn new(runtime: RuntimeHandle) -> Self {
        Self {
            runtime,
            stopping: None,
        }
    }

    /// A service whose watches also end once `stopping` turns true.
    pub fn with_shutdown(runtime: RuntimeHandle, stopping: watch::Receiver<bool>) -> Self {
        Self {
            runtime,
            stopping: Some(stopping),
        }
    }
}

/// Resolves once the server is shutting down; never without a signal.
async fn stopped(stopping: &mut Option<watch::Receiver<bool>>) {
    if let Some(s) = stopping
        && s.wait_for(|stop| *stop).await.is_ok()
    {
        return;
    }
    // No signal, or its sender is gone: nothing will ever stop the watch.
    std::future::pending::<()>().await
}

type GateResultStream = Pin<Box<dyn Stream<Item = Result<v1::Gate, Status>> + Send>>;

/// A gate's state as an API message; `context` is filled by GetGate only.
pub fn gate_to_proto(g: &GateRecord, context: &[Message]) -> v1::Gate {
    let o = g.outcome.as_ref();
    v1::Gate {
        gate_id: g.gate_id.to_string(),
        session_id: g.session.to_string(),
        turn: g.turn,
        status: convert::gate_status_to_proto(g.status()) as i32,
        kind: g.kind.as_str().into(),
        point: g.point.as_str().into(),
        policy: g.policy.clone(),
        reason: g.reason.clone(),
        reviewers: g.reviewers.clone(),
        subject: g.subject.clone(),
        call_id: g.call_id.clone(),
        opened_at_unix_ms: g.opened_at_unix_ms,
        deadline_unix_ms: g.deadline_unix_ms,
        on_timeout: g.on_timeout.as_str().into(),
        decision: convert::decision_to_proto(o.map(|o| o.decision)) as i32,
        reviewer: o.map(|o| o.reviewer.clone()).unwrap_or_default(),
        decision_reason: o.map(|o| o.reason.clone()).unwrap_or_default(),
        edited: o.map(|o| o.edited.clone()).unwrap_or_default(),
        decided_at_unix_ms: o.map(|o| o.decided_at_unix_ms).unwrap_or_default(),
        by_timeout: o.is_some_and(|o| o.by_timeout),
        escalations: g.escalations,
        context: context.iter().map(convert::message_to_proto).collect(),
    }
}

/// `Ok(None)` for `GATE_STATUS_UNSPECIFIED` (any status).
fn status_filter(value: i32) -> Result<Option<GateStatus>, Status> {
    convert::gate_status_from_proto(value)
        .map_err(|v| Status::invalid_argument(format!("status: unknown gate status {v}")))
}

fn gate_id(s: &str) -> Result<&str, Status> {
    if s.trim().is_empty() {
        return Err(Status::invalid_argument("gate_id is required"));
    }
    Ok(s)
}

fn decision(r: &v1::DecideGateRequest) -> Result<GateDecision, Status> {
    match v1::GateDecision::try_from(r.decision) {
        Ok(v1::GateDecision::Approve) => Ok(GateDecision::Approve),
        Ok(v1::GateDecision::Reject) => Ok(GateDecision::Reject),
        Ok(v1::GateDecision::Edit) => {
            if r.edited_payload.is_empty() {
                Err(Status::invalid_argument(
                    "edited_payload is required when decision is EDIT",
                ))
            } else {
                Ok(GateDecision::Edit(r.edited_payload.clone()))
            }
        }
        Ok(v1::GateDecision::Unspecified) => Err(Status::invalid_argument(
            "decision is required: APPROVE, REJECT or EDIT",
        )),
        Err(_) => Err(Status::invalid_argument(format!(
            "decision: unknown gate decision {}",
            r.decision
        ))),
    }
}

/// Whether a watched gate passes the (optional) filters of a watch.
fn watched(g: &GateRecord, policy: &str, reviewers: &str) -> bool {
    (policy.is_empty() || g.policy == policy) && (reviewers.is_empty() || g.reviewers == reviewers)
}

#[tonic::async_trait]
impl Gates for GatesService {
    async fn list_gates(
        &self,
        req: Request<v1::ListGatesRequest>,
    ) -> Result<Response<v1::ListGatesResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let session = if r.session_id.is_empty() {
            None
        } else {
            Some(
                r.session_id
                    .parse::<SessionId>()
                    .map_err(|e| Status::invalid_argument(format!("session_id: {e}")))?,
            )
        };
        let list = caller
            .list_gates(GateQuery {
                status: status_filter(r.status)?,
                session,
                policy: (!r.policy.is_empty()).then_some(r.policy),
                tenant: None,
                groups: None,
                page_size: r.page_size,
                page_token: (!r.page_token.is_empty()).then_some(r.page_token),
                order: match v1::GateOrder::try_from(r.order) {
                    Ok(v1::GateOrder::Opened) => GateOrder::Opened,
                    Ok(v1::GateOrder::Queue) => GateOrder::Queue,
                    Err(_) => {
                        return Err(Status::invalid_argument(format!(
                            "order: unknown gate order {}",
                            r.order
                        )));
                    }
                },
            })
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::ListGatesResponse {
            gates: list.gates.iter().map(|g| gate_to_proto(g, &[])).collect(),
            next_page_token: list.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_gate(
        &self,
        req: Request<v1::GetGateRequest>,
    ) -> Result<Response<v1::Gate>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let (gate, context) = caller
            .get_gate(gate_id(&r.gate_id)?)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(gate_to_proto(&gate, &context)))
    }

    async fn decide_gate(
        &self,
        req: Request<v1::DecideGateRequest>,
    ) -> Result<Response<v1::Gate>, Status> {
        let mut who = crate::auth::principal(&req)?;
        let onward = crate::owner::Onward::of(&req);
        let r = req.into_inner();
        // The reviewer is the authenticated principal. Without
        // authentication (loopback only) the caller may name itself; the
        // name is recorded as `local:<name>`, self-declared.
        if who.via == baton_types::AuthMethod::Local && !r.reviewer.trim().is_empty() {
            who.id = r.reviewer.trim().to_string();
        }
        let caller = self.runtime.as_caller(who);
        let id = gate_id(&r.gate_id)?;
        let decision = decision(&r)?;
        match caller.decide_gate(id, decision, r.reason.clone()).await {
            Ok(gate) => Ok(Response::new(gate_to_proto(&gate, &[]))),
            // The gate's session is owned by another node: decided there.
            Err(e) => {
                let addr = onward.owner(e)?;
                crate::owner::gates(&addr)?
                    .decide_gate(onward.request(r))
                    .await
                    .map_err(|s| crate::owner::unreachable(&addr, s))
            }
        }
    }

    type WatchGatesStream = GateResultStream;

    async fn watch_gates(
        &self,
        req: Request<v1::WatchGatesRequest>,
    ) -> Result<Response<Self::WatchGatesStream>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let rx = self.runtime.watch_gates();
        // The stream ends when the server shuts down or the runtime drops its
        // sender; when the client leaves, tonic drops the stream and with it
        // the receiver.
        let state = (rx, self.stopping.clone());
        let stream = futures::stream::unfold(state, move |(mut rx, mut stopping)| {
            let (policy, reviewers) = (r.policy.clone(), r.reviewers.clone());
            let caller = caller.clone();
            async move {
                loop {
                    let item = tokio::select! {
                        item = rx.recv() => item,
                        () = stopped(&mut stopping) => return None,
                    };
                    match item {
                        Ok(g) if watched(&g, &policy, &reviewers) && caller.sees_gate(&g).await => {
                            return Some((Ok(gate_to_proto(&g, &[])), (rx, stopping)));
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(
                                missed,
                                "a gate watcher fell behind; skipped gate updates"
                            );
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_status_and_decision_values_name_the_field() {
        assert_eq!(status_filter(0).ok(), Some(None));
        assert_eq!(status_filter(1).ok(), Some(Some(GateStatus::Pending)));
        let e = status_filter(9).err().map(|s| s.message().to_string());
        assert!(e.is_some_and(|m| m.starts_with("status:")));
        let req = |decision: i32, edited: &str| v1::DecideGateRequest {
            decision,
            edited_payload: edited.into(),
            ..Default::default()
        };
        assert!(decision(&req(0, "")).is_err());
        assert!(decision(&req(3, "")).is_err());
        assert!(decision(&req(42, "")).is_err());
        assert_eq!(
            decision(&req(3, "x")).ok(),
            Some(GateDecision::Edit("x".into()))
        );
        assert_eq!(decision(&req(2, "")).ok(), Some(GateDecision::Reject));
    }
}
