//! Inspection: the live actor tree, a session's state (live or rebuilt from
//! disk), its journal, its state at any seq (time travel), and forks.
//!
//! Nothing here changes a session; reading the state of a passivated session
//! folds its journal without waking it.

use std::collections::BTreeMap;

use baton_types::{SessionEvent, SessionId, SessionStatus};

use crate::error::{Error, Result};
use crate::handle::RuntimeHandle;
use crate::session::SessionMsg;
use crate::sessions::{NewSession, SessionInfo};
use crate::state::SessionState;
use crate::supervisor::{SessionNode, SupervisorMsg};

/// One node of the actor tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActorNode {
    /// `runtime`, `session_supervisor`, `session`, `model_executor`,
    /// `tool_executor`, `mcp_server`, `gate_scanner`, `journal_writer`;
    /// a server that serves flows adds `run_supervisor` and its `run`s.
    pub kind: String,
    pub id: String,
    pub name: String,
    pub status: String,
    pub uptime_ms: u64,
    pub restarts: u32,
    /// Messages or calls waiting, where known.
    pub queue_len: Option<u64>,
    /// Kind-specific facts (in-flight calls, breaker state, idle time, ...).
    pub detail: BTreeMap<String, String>,
    pub children: Vec<ActorNode>,
}

impl ActorNode {
    /// A node with no children, details or counters yet.
    pub fn new(kind: &str, id: impl Into<String>, name: impl Into<String>, status: &str) -> Self {
        Self {
            kind: kind.into(),
            id: id.into(),
            name: name.into(),
            status: status.into(),
            uptime_ms: 0,
            restarts: 0,
            queue_len: None,
            detail: BTreeMap::new(),
            children: Vec::new(),
        }
    }
}

/// A session's state and where it came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StateView {
    pub state: SessionState,
    pub status: SessionStatus,
    /// True when read from the live actor; false when rebuilt from the journal.
    pub live: bool,
    /// The seq the state reflects.
    pub at_seq: u64,
    /// The seq of the session's stored snapshot, when it has one this build
    /// can read (loading the session applies only the records after it).
    pub snapshot_seq: Option<u64>,
}

/// A page of journal records.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalPage {
    pub events: Vec<SessionEvent>,
    /// Pass as `after_seq` for the next page; `None` at the end.
    pub next_after_seq: Option<u64>,
    pub last_seq: u64,
}

impl RuntimeHandle {
    /// The live actor tree: the runtime, its session supervisor with every
    /// live (or restarting) session actor, the model executor pools, the tool
    /// executor and the journal writer.
    pub async fn actor_tree(&self) -> Result<ActorNode> {
        let shared = &self.inner.shared;
        let (tx, rx) = ractor::concurrency::oneshot();
        self.inner
            .supervisor
            .cast(SupervisorMsg::Tree(tx.into()))
            .map_err(|_| Error::Unavailable("the runtime is shutting down".into()))?;
        let sessions: Vec<SessionNode> = rx
            .await
            .map_err(|_| Error::Unavailable("the supervisor did not answer".into()))?;
        let stats = self.stats().await?;
        let uptime = shared.elapsed_ms();

        let mut root = ActorNode::new("runtime", "runtime", "baton", "running");
        root.uptime_ms = uptime;
        root.detail
            .insert("store".into(), shared.store.backend().to_string());
        // On a shared database this node owns every live actor below (it
        // holds the writer lease); the database's nodes are listed too.
        if let Some(node) = shared.store.node_status() {
            root.detail.insert("node".into(), node.node_id.clone());
            root.detail
                .insert("lease_epoch".into(), node.epoch.to_string());
            root.detail.insert(
                "lease_renewed_ms_ago".into(),
                node.renewed_ms_ago.to_string(),
            );
            let store = shared.store.clone();
            let rows = tokio::task::spawn_blocking(move || store.cluster_nodes())
                .await
                .map_err(|e| Error::Internal(format!("node listing task failed: {e}")))?
                .map_err(Error::from)?;
            let mut cluster = ActorNode::new("cluster", "cluster", "nodes", "running");
            // The nodes of one database all run in this node's mode (a
            // node of the other mode is refused): a node's epoch left from
            // an earlier run in the other mode says nothing.
            let owning = shared.store.claims();
            for r in rows {
                let status = match (r.live, r.holds_lease) {
                    (_, Some(_)) => "holds_lease",
                    // `cluster.ownership = "sessions"`: each node owns
                    // the sessions it loaded.
                    (true, None) if owning => "owns_sessions",
                    (true, None) => "standby",
                    (false, None) => "gone",
                };
                let mut n = ActorNode::new("node", r.node_id.clone(), r.node_id, status);
                n.detail.insert("grpc".into(), r.grpc_addr);
                n.detail.insert("http".into(), r.http_addr);
                n.detail
                    .insert("heartbeat_ms_ago".into(), r.heartbeat_ms_ago.to_string());
                if let Some(e) = r.holds_lease {
                    n.detail.insert("lease_epoch".into(), e.to_string());
                }
                if owning && r.epoch > 0 {
                    n.detail.insert("node_epoch".into(), r.epoch.to_string());
                    n.detail
                        .insert("sessions_owned".into(), r.sessions_owned.to_string());
                }
                cluster.children.push(n);
            }
            root.children.push(cluster);
        }

        let mut sup = ActorNode::new(
            "session_supervisor",
            self.inner.supervisor.get_id().to_string(),
            "sessions",
            "running",
        );
        sup.uptime_ms = uptime;
        sup.restarts = 0;
        sup.detail
            .insert("restarts_total".into(), stats.restarts_total.to_string());
        sup.detail.insert(
            "passivations_total".into(),
            stats.passivations_total.to_string(),
        );
        sup.detail
            .insert("failed_total".into(), stats.failed_total.to_string());
        for n in sessions {
            let mut node = ActorNode::new("session", n.actor_id, n.session.to_string(), n.status);
            node.uptime_ms = n.uptime_ms;
            node.restarts = n.restarts;
            node.queue_len = Some(n.held_messages as u64);
            node.detail.insert("idle_ms".into(), n.idle_ms.to_string());
            sup.children.push(node);
        }
        sup.queue_len = Some(sup.children.len() as u64);
        root.children.push(sup);

        let mut models = ActorNode::new("model_executors", "models", "models", "running");
        models.uptime_ms = uptime;
        for name in shared.router.models().names() {
            if let Some(h) = shared.router.models().get(&name) {
                let cfg = h.endpoint().config();
                let mut node = ActorNode::new("model_executor", name.clone(), name, "running");
                node.uptime_ms = uptime;
                node.queue_len = Some(h.queued() as u64);
                node.detail
                    .insert("in_flight".into(), h.in_flight().to_string());
                node.detail
                    .insert("max_concurrency".into(), cfg.max_concurrency.to_string());
                node.detail
                    .insert("provider".into(), cfg.provider.as_str().into());
                node.detail.insert("model".into(), cfg.model.clone());
                models.children.push(node);
            }
        }
        for st in self.inner.shared.router.endpoint_stats() {
            if let Some(node) = models.children.iter_mut().find(|n| n.name == st.endpoint)
                && let Some(ms) = st.ewma_latency_ms
            {
                node.detail
                    .insert("ewma_latency_ms".into(), format!("{ms:.1}"));
            }
        }
        for b in self.breaker_details() {
            if let Some(node) = models.children.iter_mut().find(|n| n.name == b.0) {
                node.detail.insert("breaker".into(), b.1);
            }
        }
        root.children.push(models);

        let mut tools = ActorNode::new("tool_executor", "tools", "tools", "running");
        tools.uptime_ms = uptime;
        tools.detail.insert(
            "registered".into(),
            shared.tools.registry.specs().len().to_string(),
        );
        root.children.push(tools);

        let w = shared.store.writer_stats();
        let mut writer = ActorNode::new("journal_writer", "writer", "journal writer", "running");
        writer.uptime_ms = uptime;
        writer
            .detail
            .insert("group_commits".into(), w.groups.to_string());
        writer
            .detail
            .insert("fsyncs".into(), w.synced_groups.to_string());
        writer
            .detail
            .insert("requests".into(), w.requests.to_string());
        root.children.push(writer);
        Ok(root)
    }

    /// Breaker state per endpoint, as text, for the actor tree.
    fn breaker_details(&self) -> Vec<(String, String)> {
        self.inner
            .shared
            .router
            .breakers()
            .into_iter()
            .map(|b| {
                (
                    b.endpoint.clone(),
                    format!(
                        "{:?} (consecutive failures {}, error rate {:.2})",
                        b.state, b.consecutive_failures, b.error_rate
                    )
                    .to_lowercase(),
                )
            })
            .collect()
    }

    /// The session's full state: from its live actor when it has one (no
    /// session is woken for this), else rebuilt from its journal.
    pub async fn session_state(&self, id: SessionId) -> Result<StateView> {
        let (tx, rx) = ractor::concurrency::oneshot();
        self.inner
            .supervisor
            .cast(SupervisorMsg::Peek(id, tx.into()))
            .map_err(|_| Error::Unavailable("the runtime is shutting down".into()))?;
        if let Ok(Some(actor)) = rx.await {
            let (tx, rx) = ractor::concurrency::oneshot();
            if actor
                .cast(SessionMsg::GetState { reply: tx.into() })
                .is_ok()
                && let Ok(Ok(state)) = rx.await
            {
                return Ok(StateView {
                    status: state.status(),
                    at_seq: state.last_seq,
                    state,
                    live: true,
                    snapshot_seq: self.snapshot_seq(id).await?,
                });
            }
        }
        self.state_at(id, u64::MAX).await.map(|mut v| {
            v.live = false;
            v
        })
    }

    /// The seq of the session's stored snapshot, if this build can read it.
    async fn snapshot_seq(&self, id: SessionId) -> Result<Option<u64>> {
        let bytes = self.inner.shared.store.load_snapshot(id).await?;
        Ok(bytes
            .and_then(|b| baton_store::snapshot::decode::<SessionState>(&b).map(|(seq, _)| seq)))
    }

    /// A page of the session's journal after `after_seq`, decoded.
    pub async fn journal_page(
        &self,
        id: SessionId,
        after_seq: u64,
        limit: usize,
    ) -> Result<JournalPage> {
        let store = &self.inner.shared.store;
        if store.load_meta(id).await?.is_none() {
            return Err(Error::SessionNotFound(id));
        }
        let limit = limit.clamp(1, 1000);
        let last_seq = store.last_seq(id).await?;
        let events = store.read_journal(id, after_seq, limit).await?;
        let next_after_seq = events
            .last()
            .map(|e| e.seq)
            .filter(|s| *s < last_seq && events.len() == limit);
        Ok(JournalPage {
            events,
            next_after_seq,
            last_seq,
        })
    }

    /// The state rebuilt from the journal up to and including `seq` (time
    /// travel); `u64::MAX` for the latest. A seq past the journal's end is
    /// refused, naming the last seq.
    pub async fn state_at(&self, id: SessionId, seq: u64) -> Result<StateView> {
        let store = &self.inner.shared.store;
        if store.load_meta(id).await?.is_none() {
            return Err(Error::SessionNotFound(id));
        }
        let last_seq = store.last_seq(id).await?;
        if seq == 0 {
            return Err(Error::InvalidArgument(
                "seq must be at least 1 (the SessionStarted record)".into(),
            ));
        }
        if seq != u64::MAX && seq > last_seq {
            return Err(Error::InvalidArgument(format!(
                "seq {seq} is past the end of session {id}'s journal (last seq {last_seq})"
            )));
        }
        let upto = seq.min(last_seq);
        // From the snapshot when it is at or before `upto` (folding on from
        // it arrives at the state the whole fold would), else from the
        // start; the records a page at a time, never the whole journal.
        let snapshot = match store.load_snapshot(id).await {
            Err(e) if e.is_corruption() => None,
            other => other?,
        };
        let mut state = snapshot
            .and_then(|b| baton_store::snapshot::decode::<SessionState>(&b))
            .filter(|(at, st)| st.id == id && st.last_seq == *at && *at <= upto)
            .map(|(_, mut st)| {
                // Kept by the live actor, not by the records.
                st.metadata.clear();
                st
            })
            .unwrap_or_else(|| SessionState::new(id));
        while state.last_seq < upto {
            let before = state.last_seq;
            let page = store.read_journal(id, before, 512).await?;
            for e in page.iter().take_while(|e| e.seq <= upto) {
                state.apply(e.seq, e.at_unix_ms, &e.kind);
            }
            if state.last_seq == before {
                break;
            }
        }
        Ok(StateView {
            status: state.status(),
            at_seq: state.last_seq,
            state,
            live: false,
            snapshot_seq: self.snapshot_seq(id).await?,
        })
    }

    /// A new session whose journal is a copy of `id`'s records 1..=`at_seq`:
    /// it continues from exactly that point (an open model call is issued
    /// again, queued turns run), with the current code and configuration.
    /// Refused at a seq where a gate is pending or a tool call is running
    /// (fork before the call or after its result). The fork's metadata
    /// records `forked_from` = `<id>@<seq>`.
    pub async fn fork(&self, id: SessionId, at_seq: u64) -> Result<SessionInfo> {
        self.fork_by(id, at_seq, crate::sessions::embedded()).await
    }

    /// [`Self::fork`] by principal `by` (the fork stays in the source's
    /// tenant).
    pub(crate) async fn fork_by(
        &self,
        id: SessionId,
        at_seq: u64,
        by: String,
    ) -> Result<SessionInfo> {
        // New work, as a start is: refused while draining or unwritable.
        self.inner.shared.admit()?;
        let view = self.state_at(id, at_seq).await?;
        if view.at_seq != at_seq {
            return Err(Error::InvalidArgument(format!(
                "seq {at_seq} is not in session {id}'s journal"
            )));
        }
        if let Some(c) = &view.state.current {
            if !c.gates.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "session {id} has a gate pending at seq {at_seq}; fork before the gate opened or after its decision"
                )));
            }
            if c.tools.iter().any(|t| t.started && t.result.is_none()) {
                return Err(Error::FailedPrecondition(format!(
                    "session {id} has a tool call running at seq {at_seq}; fork before the call started or after its result"
                )));
            }
        }
        let store = &self.inner.shared.store;
        let Some(src_meta) = store.load_meta(id).await? else {
            return Err(Error::SessionNotFound(id));
        };
        let mut metadata = src_meta.metadata.clone();
        metadata.insert("forked_from".into(), format!("{id}@{at_seq}"));
        // Running at `at_seq`: the fork picks up where the source was then,
        // as recovery does at start-up.
        self.create_session(NewSession {
            route: view.state.route.clone(),
            system_prompt: view.state.system_prompt.clone(),
            metadata,
            idempotency_key: None,
            status: view.state.status(),
            records: Vec::new(),
            copy_from: Some((id, at_seq)),
            audit: (
                "fork_session",
                serde_json::json!({ "from": id.to_string(), "at_seq": at_seq }),
            ),
            tenant: src_meta.tenant.clone(),
            by,
        })
        .await
    }
}

/// What [`RuntimeHandle::backup`] made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupInfo {
    pub path: std::path::PathBuf,
    /// Bytes of the backup's files.
    pub bytes: u64,
    pub files: u64,
    pub took_ms: u64,
    /// Sessions in the backup.
    pub sessions: u64,
}

impl RuntimeHandle {
    /// A consistent online backup at `dest` (which must not exist): a
    /// RocksDB checkpoint of the store (hard links where the file system
    /// allows, so it is fast and small) taken while sessions keep running,
    /// plus a copy of the audit log directory when there is one. A backup
    /// is itself a data dir: restoring is copying it into place (`baton
    /// restore`) and starting the server on it.
    pub async fn backup(&self, dest: std::path::PathBuf) -> Result<BackupInfo> {
        self.backup_by(dest, &crate::sessions::embedded()).await
    }

    /// [`Self::backup`] by principal `by`.
    pub(crate) async fn backup_by(&self, dest: std::path::PathBuf, by: &str) -> Result<BackupInfo> {
        let started = std::time::Instant::now();
        if dest.as_os_str().is_empty() {
            return Err(Error::InvalidArgument(
                "backup destination is empty: name a directory that does not exist yet".into(),
            ));
        }
        if dest.exists() {
            return Err(Error::InvalidArgument(format!(
                "backup destination {} already exists",
                dest.display()
            )));
        }
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "backup destination {}: its parent directory {} does not exist on the server \
                 (the backup creates only the last component of the path)",
                dest.display(),
                parent.display()
            )));
        }
        let shared = &self.inner.shared;
        // Everything acknowledged so far is in the checkpoint.
        shared.store.barrier().await?;
        shared.store.checkpoint(dest.clone()).await?;
        let audit_src = shared
            .config
            .store
            .audit_dir
            .clone()
            .unwrap_or_else(|| shared.config.store.data_dir.join("audit"));
        let key = shared.config.store.audit_key_file.clone();
        let except: Vec<std::path::PathBuf> = key
            .into_iter()
            .chain(std::iter::once(audit_src.join("audit.key")))
            .collect();
        if let Some(hook) = &shared.audit
            && let Err(e) = hook.flush().await
        {
            // The checkpoint's journal still holds them as unconfirmed: a
            // server started on the backup appends them to its trail.
            tracing::warn!(error = %e, "backup: the audit trail lacks its latest records; they are pending in the backup's journal");
        }
        if audit_src.is_dir() {
            let to = dest.join("audit");
            tokio::task::spawn_blocking(move || {
                baton_store::copy_dir_except(&audit_src, &to, &except)
            })
            .await
            .map_err(|e| Error::Internal(format!("backup copy task failed: {e}")))?
            .map_err(|e| Error::Internal(format!("cannot copy the audit log: {e}")))?;
        }
        let sessions = shared.store.count_sessions().await?;
        self.audit_admin(
            "backup",
            None,
            serde_json::json!({ "path": dest.display().to_string() }),
            by,
        );
        let (files, bytes) = {
            let d = dest.clone();
            tokio::task::spawn_blocking(move || baton_store::dir_size(&d))
                .await
                .map_err(|e| Error::Internal(format!("backup size task failed: {e}")))?
        };
        Ok(BackupInfo {
            path: dest,
            bytes,
            files,
            took_ms: started.elapsed().as_millis() as u64,
            sessions,
        })
    }
}
