//! The `baton.v1.Inspect` service: the actor tree, session state and
//! journal, time travel, forks, replays and online backups over the
//! runtime's inspection API. States and records go out as JSON text.

use std::path::PathBuf;

use baton_proto::convert;
use baton_proto::v1::{self, inspect_server::Inspect};
use baton_runtime::{ActorNode, RuntimeHandle, StateView};
use baton_types::SessionId;
use tonic::{Request, Response, Status};

use crate::status::status;

/// Journal records per page when the request does not say.
const DEFAULT_JOURNAL_PAGE: u32 = 100;
/// The most journal records one page may ask for.
const MAX_JOURNAL_PAGE: u32 = 1000;

/// Passes of an erasure (each deletes what it can here and sends the
/// rest to the nodes holding them live) before it gives up.
const MAX_ERASURE_PASSES: u32 = 5;

/// The Inspect service over a runtime.
#[derive(Clone)]
pub struct InspectService {
    runtime: RuntimeHandle,
    /// Flows served beside the runtime: their live runs join the actor tree.
    flows: baton_flows::Lead,
}

impl InspectService {
    /// The runtime as the request's authenticated principal sees it.
    fn caller<T>(&self, req: &Request<T>) -> Result<baton_runtime::Caller, Status> {
        Ok(self.runtime.as_caller(crate::auth::principal(req)?))
    }

    pub fn new(runtime: RuntimeHandle) -> Self {
        Self {
            runtime,
            flows: baton_flows::Lead::default(),
        }
    }

    /// Show the runs of `flows` in the actor tree.
    pub fn with_flows(mut self, flows: impl Into<baton_flows::Lead>) -> Self {
        self.flows = flows.into();
        self
    }
}

fn session_id(field: &str, s: &str) -> Result<SessionId, Status> {
    if s.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    s.parse()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn journal_page_size(n: u32) -> Result<usize, Status> {
    match n {
        0 => Ok(DEFAULT_JOURNAL_PAGE as usize),
        n if n > MAX_JOURNAL_PAGE => Err(Status::invalid_argument(format!(
            "page_size {n} exceeds the maximum of {MAX_JOURNAL_PAGE}"
        ))),
        n => Ok(n as usize),
    }
}

fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, Status> {
    serde_json::to_string(v).map_err(|e| Status::internal(format!("cannot encode {what}: {e}")))
}

/// The runs' supervisor and every run actor in memory (a passivated run
/// has none).
async fn runs_node(flows: &baton_flows::Flows, uptime_ms: u64) -> Result<ActorNode, Status> {
    let runs = flows
        .live_runs()
        .await
        .map_err(|e| crate::flows::flow_status(&e))?;
    let mut sup = ActorNode::new("run_supervisor", "runs", "flows", "running");
    sup.uptime_ms = uptime_ms;
    sup.queue_len = Some(runs.len() as u64);
    sup.detail
        .insert("flows".into(), flows.list_flows().len().to_string());
    for r in runs {
        let mut n = ActorNode::new("run", r.actor_id, r.run.to_string(), r.status);
        n.uptime_ms = r.uptime_ms;
        n.restarts = r.restarts;
        n.queue_len = Some(r.held_messages as u64);
        sup.children.push(n);
    }
    Ok(sup)
}

/// An actor node and its subtree as an API message.
pub fn actor_to_proto(n: &ActorNode) -> v1::ActorNode {
    v1::ActorNode {
        kind: n.kind.clone(),
        id: n.id.clone(),
        name: n.name.clone(),
        status: n.status.clone(),
        uptime_ms: n.uptime_ms,
        restarts: n.restarts,
        queue_len: n.queue_len,
        detail: n
            .detail
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        children: n.children.iter().map(actor_to_proto).collect(),
    }
}

fn view_to_proto(v: &StateView) -> Result<v1::SessionStateView, Status> {
    Ok(v1::SessionStateView {
        state_json: to_json("the session state", &v.state)?,
        status: convert::status_to_proto(v.status) as i32,
        live: v.live,
        at_seq: v.at_seq,
        snapshot_seq: v.snapshot_seq,
    })
}

#[tonic::async_trait]
impl Inspect for InspectService {
    async fn list_actors(
        &self,
        _req: Request<v1::ListActorsRequest>,
    ) -> Result<Response<v1::ListActorsResponse>, Status> {
        let mut root = self.runtime.actor_tree().await.map_err(|e| status(&e))?;
        if let Some(flows) = self.flows.here() {
            root.children.push(runs_node(&flows, root.uptime_ms).await?);
        }
        Ok(Response::new(v1::ListActorsResponse {
            root: Some(actor_to_proto(&root)),
        }))
    }

    async fn get_session_state(
        &self,
        req: Request<v1::GetSessionStateRequest>,
    ) -> Result<Response<v1::SessionStateView>, Status> {
        let caller = self.caller(&req)?;
        let onward = crate::owner::Onward::of(&req);
        let r = req.into_inner();
        let id = session_id("session_id", &r.session_id)?;
        let view = caller.session_state(id).await.map_err(|e| status(&e))?;
        // Not live here: where nodes own sessions one by one, the live
        // state is the owner's (the journal here has only what committed).
        if !view.live
            && let Some(addr) = crate::owner::owner_elsewhere(&self.runtime, id, &onward).await
        {
            match crate::owner::inspect(&addr)?
                .get_session_state(onward.request(r))
                .await
            {
                Ok(live) => return Ok(live),
                Err(s) => {
                    tracing::debug!(owner = %addr, error = %s, "the session's owner did not answer; its state from the journal")
                }
            }
        }
        Ok(Response::new(view_to_proto(&view)?))
    }

    async fn get_journal(
        &self,
        req: Request<v1::GetJournalRequest>,
    ) -> Result<Response<v1::GetJournalResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let id = session_id("session_id", &r.session_id)?;
        let limit = journal_page_size(r.page_size)?;
        let page = caller
            .journal_page(id, r.after_seq, limit)
            .await
            .map_err(|e| status(&e))?;
        let records = page
            .events
            .iter()
            .map(|e| {
                Ok(v1::JournalRecord {
                    seq: e.seq,
                    at_unix_ms: e.at_unix_ms,
                    kind: e.kind.name().to_string(),
                    json: to_json("a journal record", e)?,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(v1::GetJournalResponse {
            records,
            next_after_seq: page.next_after_seq.unwrap_or(0),
            last_seq: page.last_seq,
        }))
    }

    async fn get_state_at(
        &self,
        req: Request<v1::GetStateAtRequest>,
    ) -> Result<Response<v1::SessionStateView>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let id = session_id("session_id", &r.session_id)?;
        // The runtime reads u64::MAX as "the latest"; over the API a seq is
        // always a position, and that one is past every journal's end.
        if r.seq == u64::MAX {
            let last = caller
                .journal_page(id, u64::MAX - 1, 1)
                .await
                .map_err(|e| status(&e))?
                .last_seq;
            return Err(Status::invalid_argument(format!(
                "seq {} is past the end of session {id}'s journal (last seq {last})",
                r.seq
            )));
        }
        let view = caller.state_at(id, r.seq).await.map_err(|e| status(&e))?;
        Ok(Response::new(view_to_proto(&view)?))
    }

    async fn fork_session(
        &self,
        req: Request<v1::ForkSessionRequest>,
    ) -> Result<Response<v1::ForkSessionResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let id = session_id("session_id", &r.session_id)?;
        if r.at_seq == 0 {
            return Err(Status::invalid_argument(
                "at_seq is required: the seq the fork continues from (at least 1)",
            ));
        }
        let info = caller.fork(id, r.at_seq).await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::ForkSessionResponse {
            session_id: info.id.to_string(),
            status: convert::status_to_proto(info.status) as i32,
        }))
    }

    async fn replay_session(
        &self,
        req: Request<v1::ReplaySessionRequest>,
    ) -> Result<Response<v1::ReplaySessionResponse>, Status> {
        let caller = self.caller(&req)?;
        let id = session_id("session_id", &req.into_inner().session_id)?;
        let report = caller.replay(id).await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::ReplaySessionResponse {
            source: report.source.to_string(),
            replay_session_id: report.replay.to_string(),
            turns: report.turns,
            compared: report.compared,
            diverged: report.divergence.is_some(),
            divergence: report.divergence.map(|d| v1::Divergence {
                index: d.index,
                source_seq: d.source_seq.unwrap_or(0),
                replay_seq: d.replay_seq.unwrap_or(0),
                expected: d.expected,
                actual: d.actual,
            }),
            stopped: report.stopped.unwrap_or_default(),
        }))
    }

    async fn erase_subject(
        &self,
        req: Request<v1::EraseSubjectRequest>,
    ) -> Result<Response<v1::EraseSubjectResponse>, Status> {
        let caller = self.caller(&req)?;
        let onward = crate::owner::Onward::of(&req);
        let r = req.into_inner();
        if r.subject.trim().is_empty() {
            return Err(Status::invalid_argument(
                "subject is required: a value of [privacy] subject_field, or session:<id>",
            ));
        }
        // Where nodes own sessions one by one, a subject's session live on
        // another node is deleted there (DeleteSession, forwarded with the
        // caller's credentials), and the erasure goes on: its keys are
        // destroyed once every session is gone.
        let mut deleted = 0u64;
        let mut passes = 0;
        let e = loop {
            let pass = caller
                .erase_subject_pass(&r.tenant, &r.subject)
                .await
                .map_err(|e| status(&e))?;
            deleted += pass.sessions_deleted;
            if let Some(e) = pass.erasure {
                break e;
            }
            passes += 1;
            if passes > MAX_ERASURE_PASSES {
                return Err(Status::unavailable(format!(
                    "{deleted} sessions of the subject were deleted, but some stay live on other \
                     nodes after {MAX_ERASURE_PASSES} passes; erase again"
                )));
            }
            for (session, owner) in pass.elsewhere {
                let err = baton_runtime::Error::OwnedElsewhere { session, owner };
                let addr = onward.owner(err)?;
                match crate::owner::sessions(&addr)?
                    .delete_session(onward.request(v1::DeleteSessionRequest {
                        session_id: session.to_string(),
                    }))
                    .await
                {
                    Ok(_) => deleted += 1,
                    // Gone meanwhile (its owner passivated it, and another
                    // deleted it): the next pass finds it or not.
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(crate::owner::unreachable(&addr, s)),
                }
            }
        };
        Ok(Response::new(v1::EraseSubjectResponse {
            keys_destroyed: e.keys_destroyed,
            sessions_deleted: deleted,
        }))
    }

    async fn backup(
        &self,
        req: Request<v1::BackupRequest>,
    ) -> Result<Response<v1::BackupResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        if r.dest_path.trim().is_empty() {
            return Err(Status::invalid_argument(
                "dest_path is required: a directory that does not exist yet",
            ));
        }
        // Inside store.backup_dir (relative paths are taken relative to it).
        let dest = PathBuf::from(&r.dest_path);
        let info = caller.backup(dest).await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::BackupResponse {
            path: info.path.display().to_string(),
            bytes: info.bytes,
            files: info.files,
            took_ms: info.took_ms,
            sessions: info.sessions,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_are_capped_naming_the_field() {
        assert_eq!(journal_page_size(0).ok(), Some(100));
        assert_eq!(journal_page_size(1000).ok(), Some(1000));
        let e = journal_page_size(1001)
            .err()
            .map(|s| s.message().to_string());
        assert!(e.is_some_and(|m| m.starts_with("page_size 1001")));
    }

    #[test]
    fn session_ids_are_required_and_parsed() {
        let e = session_id("session_id", "").err();
        assert_eq!(
            e.map(|s| (s.code(), s.message().to_string())),
            Some((
                tonic::Code::InvalidArgument,
                "session_id is required".into()
            ))
        );
        let e = session_id("session_id", "nope").err();
        assert!(e.is_some_and(|s| s.message().starts_with("session_id:")));
    }
}
