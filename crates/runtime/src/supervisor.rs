//! The `SessionSupervisor`: spawns, routes to, passivates and restarts
//! session actors.
//!
//! Every message for a session goes through here, so there is never more than
//! one actor per session: while an actor is passivating, restarting after a
//! failure, or being marked failed, messages for it wait in a queue here and
//! go to its successor.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_types::SessionId;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::session::{Notice, Notify, SessionActor, SessionArgs, SessionMsg};
use crate::shared::Shared;

pub(crate) enum SupervisorMsg {
    Route(SessionId, SessionMsg),
    /// Spawn the session again (after a restart backoff, or once it is marked failed).
    Respawn(SessionId),
    /// Respawn once the store can be written again (checked every
    /// `store.disk_check_ms`): a session that failed on a failing store
    /// waits for it instead of re-issuing its work into it.
    RespawnWhenWritable(SessionId),
    /// Periodic: passivate sessions idle for longer than the configured time.
    Sweep,
    /// An actor asks to be passivated now (unknown or deleted session).
    RequestPassivate(SessionId),
    /// An actor was asked to passivate but had work.
    PassivateDeclined(SessionId),
    Stats(RpcReplyPort<SupervisorStats>),
    /// The live session actors, for inspection.
    Tree(RpcReplyPort<Vec<SessionNode>>),
    /// The actor of a live session that is not passivating, if any.
    Peek(SessionId, RpcReplyPort<Option<ActorRef<SessionMsg>>>),
}

/// A session actor as the supervisor sees it.
#[derive(Debug, Clone)]
pub struct SessionNode {
    pub session: SessionId,
    pub actor_id: String,
    /// `running`, `passivating` or `restarting`.
    pub status: &'static str,
    pub uptime_ms: u64,
    /// Restarts of this session's actor since the runtime started.
    pub restarts: u32,
    /// Messages held by the supervisor for it (while passivating or restarting).
    pub held_messages: usize,
    /// Milliseconds since its last activity.
    pub idle_ms: u64,
}

/// Counters of the supervisor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SupervisorStats {
    /// Session actors in memory.
    pub live_sessions: usize,
    /// Sessions waiting for a restart.
    pub restarting_sessions: usize,
    /// Actor restarts since start.
    pub restarts_total: u64,
    /// Sessions passivated since start.
    pub passivations_total: u64,
    /// Sessions marked failed by supervision since start.
    pub failed_total: u64,
}

struct Entry {
    actor: ActorRef<SessionMsg>,
    activity: Arc<AtomicU64>,
    passivating: bool,
    /// Messages that arrived while passivating; they go to the successor.
    queue: Vec<SessionMsg>,
    spawned_at: Instant,
}

struct RestartTrack {
    count: u32,
    window_start: Instant,
}

pub(crate) struct SessionSupervisor;

pub(crate) struct SupervisorState {
    shared: Arc<Shared>,
    live: HashMap<SessionId, Entry>,
    by_actor: HashMap<ActorId, SessionId>,
    /// Sessions between a failure and their respawn, with queued messages.
    down: HashMap<SessionId, Vec<SessionMsg>>,
    restarts: HashMap<SessionId, RestartTrack>,
    /// Restarts per session since start (for inspection).
    restart_counts: HashMap<SessionId, u32>,
    stats: SupervisorStats,
}

impl Actor for SessionSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        shared: Arc<Shared>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let period = (shared.config.passivate_after() / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        myself.send_interval(period, || SupervisorMsg::Sweep);
        Ok(SupervisorState {
            shared,
            live: HashMap::new(),
            by_actor: HashMap::new(),
            down: HashMap::new(),
            restarts: HashMap::new(),
            restart_counts: HashMap::new(),
            stats: SupervisorStats::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Route(id, msg) => st.route(&myself, id, msg).await,
            SupervisorMsg::Respawn(id) => {
                let queue = st.down.remove(&id).unwrap_or_default();
                if st.live.contains_key(&id) {
                    st.forward(id, queue);
                } else {
                    st.spawn(&myself, id, queue).await;
                }
            }
            SupervisorMsg::RespawnWhenWritable(id) => {
                if st.shared.store.write_failing().is_some() {
                    let wait = st.shared.config.store.disk_check_ms.max(10);
                    myself.send_after(Duration::from_millis(wait), move || {
                        SupervisorMsg::RespawnWhenWritable(id)
                    });
                } else {
                    let _ = myself.cast(SupervisorMsg::Respawn(id));
                }
            }
            SupervisorMsg::Sweep => st.sweep(),
            SupervisorMsg::RequestPassivate(id) => {
                if let Some(e) = st.live.get_mut(&id)
                    && !e.passivating
                {
                    e.passivating = true;
                    let _ = e.actor.cast(SessionMsg::Passivate);
                }
            }
            SupervisorMsg::PassivateDeclined(id) => {
                if let Some(e) = st.live.get_mut(&id) {
                    e.passivating = false;
                    let queue = std::mem::take(&mut e.queue);
                    st.forward(id, queue);
                }
            }
            SupervisorMsg::Stats(reply) => {
                let mut s = st.stats;
                s.live_sessions = st.live.len();
                s.restarting_sessions = st.down.len();
                let _ = reply.send(s);
            }
            SupervisorMsg::Tree(reply) => {
                let now = st.shared.elapsed_ms();
                let mut nodes: Vec<SessionNode> = st
                    .live
                    .iter()
                    .map(|(id, e)| SessionNode {
                        session: *id,
                        actor_id: e.actor.get_id().to_string(),
                        status: if e.passivating {
                            "passivating"
                        } else {
                            "running"
                        },
                        uptime_ms: e.spawned_at.elapsed().as_millis() as u64,
                        restarts: st.restart_counts.get(id).copied().unwrap_or(0),
                        held_messages: e.queue.len(),
                        idle_ms: now.saturating_sub(e.activity.load(Ordering::Relaxed)),
                    })
                    .collect();
                nodes.extend(st.down.iter().map(|(id, q)| SessionNode {
                    session: *id,
                    actor_id: String::new(),
                    status: "restarting",
                    uptime_ms: 0,
                    restarts: st.restart_counts.get(id).copied().unwrap_or(0),
                    held_messages: q.len(),
                    idle_ms: 0,
                }));
                nodes.sort_by_key(|n| n.session);
                let _ = reply.send(nodes);
            }
            SupervisorMsg::Peek(id, reply) => {
                let actor = st
                    .live
                    .get(&id)
                    .filter(|e| !e.passivating)
                    .map(|e| e.actor.clone());
                let _ = reply.send(actor);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let Some(id) = st.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let Some(entry) = st.live.remove(&id) else {
                    return Ok(());
                };
                if reason.as_deref() == Some("passivated") {
                    st.stats.passivations_total += 1;
                    baton_metrics::metrics().session_passivated();
                }
                baton_metrics::metrics().sessions_live(st.live.len() as i64);
                if !entry.queue.is_empty() {
                    st.spawn(&myself, id, entry.queue).await;
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(id) = st.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let queue = st.live.remove(&id).map(|e| e.queue).unwrap_or_default();
                baton_metrics::metrics().sessions_live(st.live.len() as i64);
                st.on_failure(&myself, id, err.to_string(), queue);
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        for e in st.live.values() {
            e.actor.stop(Some("shutdown".into()));
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn route(&mut self, myself: &ActorRef<SupervisorMsg>, id: SessionId, msg: SessionMsg) {
        if let Some(queue) = self.down.get_mut(&id) {
            queue.push(msg);
            return;
        }
        if let Some(entry) = self.live.get_mut(&id) {
            if entry.passivating {
                entry.queue.push(msg);
                return;
            }
            if let Err(ractor::MessagingErr::SendErr(msg)) = entry.actor.send_message(msg) {
                // The actor is stopping; its termination event will respawn it.
                entry.passivating = true;
                entry.queue.push(msg);
            }
            return;
        }
        self.spawn(myself, id, vec![msg]).await;
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: SessionId,
        queue: Vec<SessionMsg>,
    ) {
        let activity = Arc::new(AtomicU64::new(self.shared.elapsed_ms()));
        let me = myself.clone();
        let notify: Notify = Arc::new(move |notice| {
            let _ = me.cast(match notice {
                Notice::Passivate(id) => SupervisorMsg::RequestPassivate(id),
                Notice::PassivateDeclined(id) => SupervisorMsg::PassivateDeclined(id),
            });
        });
        let args = SessionArgs {
            id,
            shared: self.shared.clone(),
            notify,
            activity: activity.clone(),
            after_failure: self.restart_counts.contains_key(&id),
        };
        match Actor::spawn_linked(None, SessionActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), id);
                self.live.insert(
                    id,
                    Entry {
                        actor,
                        activity,
                        passivating: false,
                        queue: Vec::new(),
                        spawned_at: Instant::now(),
                    },
                );
                baton_metrics::metrics().sessions_live(self.live.len() as i64);
                self.forward(id, queue);
                self.enforce_cap();
            }
            Err(e) => {
                tracing::error!(session = %id, error = %e, "cannot spawn session actor");
                self.on_failure(myself, id, e.to_string(), queue);
            }
        }
    }

    fn forward(&mut self, id: SessionId, queue: Vec<SessionMsg>) {
        let Some(entry) = self.live.get_mut(&id) else {
            return;
        };
        for msg in queue {
            if let Err(ractor::MessagingErr::SendErr(msg)) = entry.actor.send_message(msg) {
                entry.passivating = true;
                entry.queue.push(msg);
            }
        }
    }

    /// Over `sessions.max_live_sessions`: ask the least recently active
    /// sessions to passivate, down to 90% of the cap so that the scan is
    /// rare; busy ones decline and stay live.
    fn enforce_cap(&mut self) {
        let cap = self.shared.config.sessions.max_live_sessions;
        // Counting is a scan of every live session: only when it can matter.
        if cap == 0 || self.live.len() <= cap {
            return;
        }
        let active = self.live.values().filter(|e| !e.passivating).count();
        if active <= cap {
            return;
        }
        let target = cap - cap / 10;
        let mut by_age: Vec<(u64, SessionId)> = self
            .live
            .iter()
            .filter(|(_, e)| !e.passivating)
            .map(|(id, e)| (e.activity.load(Ordering::Relaxed), *id))
            .collect();
        by_age.sort_unstable();
        for (_, id) in by_age.into_iter().take(active - target) {
            if let Some(e) = self.live.get_mut(&id) {
                e.passivating = true;
                let _ = e.actor.cast(SessionMsg::Passivate);
            }
        }
    }

    fn sweep(&mut self) {
        let now = self.shared.elapsed_ms();
        let idle_ms = self.shared.config.sessions.passivate_after_ms;
        for entry in self.live.values_mut() {
            if !entry.passivating
                && now.saturating_sub(entry.activity.load(Ordering::Relaxed)) >= idle_ms
            {
                entry.passivating = true;
                let _ = entry.actor.cast(SessionMsg::Passivate);
            }
        }
    }

    fn on_failure(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: SessionId,
        reason: String,
        queue: Vec<SessionMsg>,
    ) {
        let cfg = &self.shared.config.supervision;
        if self.shared.store.write_failing().is_some() {
            // The store cannot be written (a full disk, a failing fsync):
            // the session is not at fault and keeps its restarts. It
            // restarts from its journal once writes may succeed again.
            self.down.insert(id, queue);
            self.stats.restarts_total += 1;
            *self.restart_counts.entry(id).or_insert(0) += 1;
            baton_metrics::metrics().actor_restart("session");
            let wait = self
                .shared
                .config
                .store
                .disk_check_ms
                .max(cfg.initial_backoff_ms);
            tracing::warn!(session = %id, %reason, "session actor failed while the store cannot be written; restarting once it can");
            myself.send_after(Duration::from_millis(wait), move || {
                SupervisorMsg::RespawnWhenWritable(id)
            });
            return;
        }
        let window = Duration::from_millis(cfg.restart_window_ms);
        let track = self.restarts.entry(id).or_insert(RestartTrack {
            count: 0,
            window_start: Instant::now(),
        });
        if track.window_start.elapsed() > window {
            track.count = 0;
            track.window_start = Instant::now();
        }
        track.count += 1;
        let count = track.count;
        self.down.insert(id, queue);
        if count > cfg.max_restarts {
            tracing::error!(session = %id, %reason, restarts = count - 1, "session keeps failing; marking it failed");
            self.stats.failed_total += 1;
            self.restarts.remove(&id);
            let shared = self.shared.clone();
            let me = myself.clone();
            let why = format!(
                "session actor failed {} times within {} ms; last error: {reason}",
                count, cfg.restart_window_ms
            );
            tokio::spawn(async move {
                if let Err(e) =
                    crate::failed::mark_failed(&shared.store, &shared.config.privacy, id, why).await
                {
                    tracing::error!(session = %id, error = %e, "cannot mark session failed");
                }
                let _ = me.cast(SupervisorMsg::Respawn(id));
            });
            return;
        }
        self.stats.restarts_total += 1;
        *self.restart_counts.entry(id).or_insert(0) += 1;
        baton_metrics::metrics().actor_restart("session");
        let backoff = cfg
            .initial_backoff_ms
            .saturating_mul(1u64 << (count - 1).min(20))
            .min(cfg.max_backoff_ms);
        tracing::warn!(session = %id, %reason, restart = count, backoff_ms = backoff, "session actor failed; restarting");
        myself.send_after(Duration::from_millis(backoff), move || {
            SupervisorMsg::Respawn(id)
        });
    }
}
