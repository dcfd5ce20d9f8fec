//! The `baton.v1.Flows` service over [`baton_flows::Flows`], where this
//! node runs the flows; where another node holds the flows lease (nodes
//! owning sessions one by one, see [`baton_flows::Lead`]), every call is
//! forwarded there with the caller's credentials, streams included.

use std::pin::Pin;

use baton_flows::{
    Flows, Holder, Lead, RunId, RunMeta, RunQuery, RunRecord, RunStatus, RunView, StartRun,
};
use baton_proto::v1::flows_client::FlowsClient;
use baton_proto::v1::{self, flows_server};
use baton_types::Principal;
use futures::{Stream, StreamExt};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::owner::Onward;
use crate::status::grpc_code;

/// The Flows service.
#[derive(Clone)]
pub struct FlowsService {
    lead: Lead,
}

impl FlowsService {
    pub fn new(lead: impl Into<Lead>) -> Self {
        Self { lead: lead.into() }
    }
}

/// Where a call is answered.
enum At {
    Here(Flows),
    /// The holder's address, a client of it, and the call's credentials.
    Node(Box<(String, FlowsClient<Channel>, Onward)>),
}

impl FlowsService {
    /// The flows here, or the node to forward the call to (a call that
    /// was forwarded already is answered UNAVAILABLE rather than sent on:
    /// the lease moved meanwhile, and the client retries).
    fn at<T>(&self, req: &Request<T>) -> Result<At, Status> {
        let holder = self
            .lead
            .holder()
            .ok_or_else(|| Status::unimplemented("flows are not served by this server"))?;
        match holder {
            Holder::Here(f) => Ok(At::Here(f)),
            Holder::Node {
                node_id, grpc_addr, ..
            } => {
                let onward = Onward::of(req);
                if onward.forwarded() || grpc_addr.is_empty() {
                    return Err(Status::unavailable(format!(
                        "the flows run on node {node_id:?}, not here; retry"
                    )));
                }
                let client = crate::owner::flows(&grpc_addr)?;
                Ok(At::Node(Box::new((grpc_addr, client, onward))))
            }
            Holder::Nobody(why) => Err(Status::unavailable(format!("{why}; retry"))),
        }
    }
}

/// Send the call on to the flows' node, and its answer back.
macro_rules! forward {
    ($self:ident, $req:ident, $method:ident) => {
        match $self.at(&$req)? {
            At::Here(f) => f,
            At::Node(node) => {
                let (addr, mut client, onward) = *node;
                return client
                    .$method(onward.request($req.into_inner()))
                    .await
                    .map_err(|s| crate::owner::unreachable(&addr, s));
            }
        }
    };
}

/// A flows error as a gRPC status, with `retry-after` for limits.
pub fn flow_status(err: &baton_flows::Error) -> Status {
    let mut s = Status::new(grpc_code(err.code()), err.to_string());
    if let Some(secs) = err.retry_after_secs()
        && let Ok(v) = secs.to_string().parse()
    {
        s.metadata_mut().insert("retry-after", v);
    }
    s
}

fn run_id(s: &str) -> Result<RunId, Status> {
    if s.trim().is_empty() {
        return Err(Status::invalid_argument("run_id is required"));
    }
    s.trim()
        .parse()
        .map_err(|e: baton_flows::Error| Status::invalid_argument(format!("run_id: {e}")))
}

/// JSON text of a field; empty is `null`.
fn json_field(field: &str, text: &str) -> Result<Value, Status> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text)
        .map_err(|e| Status::invalid_argument(format!("{field}: not valid JSON: {e}")))
}

fn run_to_proto(m: &RunMeta) -> v1::Run {
    v1::Run {
        run_id: m.id.to_string(),
        flow: m.flow.clone(),
        version: m.version.clone(),
        tenant: m.tenant.clone(),
        started_by: m.by.clone(),
        status: m.status.as_str().into(),
        reason: m.reason.clone(),
        created_at_unix_ms: m.created_at_unix_ms,
        updated_at_unix_ms: m.updated_at_unix_ms,
        wake_at_unix_ms: m.wake_at_unix_ms,
        idempotency_key: m.idempotency_key.clone().unwrap_or_default(),
        parent_run_id: m
            .parent
            .as_ref()
            .map(|p| p.0.to_string())
            .unwrap_or_default(),
        parent_step: m.parent.as_ref().map(|p| p.1.clone()).unwrap_or_default(),
        trigger: m.trigger.clone(),
        output_json: if m.output.is_null() {
            String::new()
        } else {
            m.output.to_string()
        },
        ..v1::Run::default()
    }
}

fn view_to_proto(v: &RunView) -> v1::Run {
    v1::Run {
        seq: v.seq,
        input_json: v.input.to_string(),
        steps: v
            .steps
            .iter()
            .map(|(path, out)| v1::StepOutput {
                path: path.clone(),
                output_json: out.to_string(),
            })
            .collect(),
        in_flight: v.in_flight.keys().cloned().collect(),
        timers: v.timers.clone().into_iter().collect(),
        pending_signals: v.pending_signals.iter().map(|(_, n)| n.clone()).collect(),
        status_at_seq: v.status_at_seq.as_str().into(),
        ..run_to_proto(&v.meta)
    }
}

/// A journal record as an API message.
pub fn record_to_proto(r: &RunRecord) -> v1::RunRecord {
    v1::RunRecord {
        seq: r.seq,
        at_unix_ms: r.at_unix_ms,
        r#type: r.event.type_name().into(),
        record_json: serde_json::to_string(r).unwrap_or_default(),
    }
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<v1::RunRecord, Status>> + Send>>;

impl FlowsService {
    async fn current(flows: &Flows, id: RunId, who: &Principal) -> Result<v1::Run, Status> {
        let v = flows
            .get_run(id, None, who)
            .await
            .map_err(|e| flow_status(&e))?;
        Ok(view_to_proto(&v))
    }
}

#[tonic::async_trait]
impl flows_server::Flows for FlowsService {
    async fn list_flows(
        &self,
        req: Request<v1::ListFlowsRequest>,
    ) -> Result<Response<v1::ListFlowsResponse>, Status> {
        let flows = forward!(self, req, list_flows);
        crate::auth::principal(&req)?;
        Ok(Response::new(v1::ListFlowsResponse {
            flows: flows
                .list_flows()
                .into_iter()
                .map(|f| v1::FlowInfo {
                    name: f.name,
                    version: f.version,
                    description: f.description,
                    steps: f.steps as u32,
                    max_active_runs: f.max_active_runs.unwrap_or(0),
                    active_runs: f.active_runs,
                })
                .collect(),
            errors: flows.definition_errors(),
        }))
    }

    async fn start_run(
        &self,
        req: Request<v1::StartRunRequest>,
    ) -> Result<Response<v1::StartRunResponse>, Status> {
        let flows = forward!(self, req, start_run);
        let who = crate::auth::principal(&req)?;
        let r = req.into_inner();
        if r.flow.trim().is_empty() {
            return Err(Status::invalid_argument("flow is required"));
        }
        let started = flows
            .start_run(
                StartRun {
                    flow: r.flow,
                    input: json_field("input_json", &r.input_json)?,
                    idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
                    trigger: "grpc".into(),
                    ..StartRun::default()
                },
                &who,
            )
            .await
            .map_err(|e| flow_status(&e))?;
        Ok(Response::new(v1::StartRunResponse {
            run_id: started.id.to_string(),
            created: started.created,
        }))
    }

    async fn get_run(&self, req: Request<v1::GetRunRequest>) -> Result<Response<v1::Run>, Status> {
        let flows = forward!(self, req, get_run);
        let who = crate::auth::principal(&req)?;
        let r = req.into_inner();
        let id = run_id(&r.run_id)?;
        let at = (r.at_seq > 0).then_some(r.at_seq);
        let v = flows
            .get_run(id, at, &who)
            .await
            .map_err(|e| flow_status(&e))?;
        Ok(Response::new(view_to_proto(&v)))
    }

    async fn list_runs(
        &self,
        req: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        let flows = forward!(self, req, list_runs);
        let who = crate::auth::principal(&req)?;
        let r = req.into_inner();
        let status = match r.status.as_str() {
            "" => None,
            s => Some(RunStatus::parse(s).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "status {s:?}: running, waiting, needs_attention, completed, failed or cancelled"
                ))
            })?),
        };
        let page = flows
            .list_runs(
                RunQuery {
                    flow: (!r.flow.is_empty()).then_some(r.flow),
                    status,
                    page_size: r.page_size,
                    page_token: (!r.page_token.is_empty()).then_some(r.page_token),
                },
                &who,
            )
            .await
            .map_err(|e| flow_status(&e))?;
        Ok(Response::new(v1::ListRunsResponse {
            runs: page.runs.iter().map(run_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    type WatchRunStream = RecordStream;

    async fn watch_run(
        &self,
        req: Request<v1::WatchRunRequest>,
    ) -> Result<Response<RecordStream>, Status> {
        let who = crate::auth::principal(&req)?;
        let flows = match self.at(&req)? {
            At::Here(f) => f,
            At::Node(node) => {
                let (addr, mut client, onward) = *node;
                let s = client
                    .watch_run(onward.request(req.into_inner()))
                    .await
                    .map_err(|s| crate::owner::unreachable(&addr, s))?
                    .into_inner();
                return Ok(Response::new(Box::pin(s)));
            }
        };
        let r = req.into_inner();
        let id = run_id(&r.run_id)?;
        let s = flows
            .watch(id, r.after_seq, &who)
            .await
            .map_err(|e| flow_status(&e))?;
        Ok(Response::new(Box::pin(s.map(|r| match r {
            Ok(rec) => Ok(record_to_proto(&rec)),
            Err(e) => Err(flow_status(&e)),
        }))))
    }

    async fn cancel_run(
        &self,
        req: Request<v1::CancelRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let flows = forward!(self, req, cancel_run);
        let who = crate::auth::principal(&req)?;
        let r = req.into_inner();
        let id = run_id(&r.run_id)?;
        flows
            .cancel(id, &r.reason, &who)
            .await
            .map_err(|e| flow_status(&e))?;
        Ok(Response::new(Self::current(&flows, id, &who).await?))
    }

    async fn signal_run(
        &self,
        req: Request<v1::SignalRunRequest>,
    ) -> Result<Response<v1::SignalRunResponse>, Status> {
        let flows = forward!(self, req, signal_run);
        let who = crate::auth::principal(&req)?;
        let r = req.into_inner();
        let id = run_id(&r.run_id)?;
        if r.name.trim().is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let seq = flows
            .signal(
                id,
                &r.name,
                json_field("payload_json", &r.payload_json)?,
                &who,
            )
            .await
            .map_err(|e| flow_status(&e))?;
        Ok(Response::new(v1::SignalRunResponse { seq }))
    }

    async fn resolve_run(
        &self,
        req: Request<v1::ResolveRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let flows = forward!(self, req, resolve_run);
        let who = crate::auth::principal(&req)?;
        let r = req.into_inner();
        let id = run_id(&r.run_id)?;
        flows
            .resolve(id, &r.action, &who)
            .await
            .map_err(|e| flow_status(&e))?;
        Ok(Response::new(Self::current(&flows, id, &who).await?))
    }

    async fn reload_flows(
        &self,
        req: Request<v1::ReloadFlowsRequest>,
    ) -> Result<Response<v1::ReloadFlowsResponse>, Status> {
        let flows = forward!(self, req, reload_flows);
        crate::auth::principal(&req)?;
        let r = flows.reload().map_err(|e| flow_status(&e))?;
        Ok(Response::new(v1::ReloadFlowsResponse {
            changed: r.changed,
            removed: r.removed,
            errors: r.errors,
        }))
    }

    async fn replay_run(
        &self,
        req: Request<v1::ReplayRunRequest>,
    ) -> Result<Response<v1::ReplayRunResponse>, Status> {
        let flows = forward!(self, req, replay_run);
        let who = crate::auth::principal(&req)?;
        let r = req.into_inner();
        let id = run_id(&r.run_id)?;
        let report = flows
            .replay(id, r.current_version, &who)
            .await
            .map_err(|e| flow_status(&e))?;
        Ok(Response::new(v1::ReplayRunResponse {
            version: report.version,
            compared: report.compared as u32,
            diverged: report.diverged,
            divergence: report.divergence,
            status: report.status,
            output_json: if report.output.is_null() {
                String::new()
            } else {
                report.output.to_string()
            },
        }))
    }
}
