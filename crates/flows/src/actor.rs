//! Runs as actors: [`RunActor`] executes one run, [`RunSupervisor`] spawns,
//! passivates and restarts them.
//!
//! A run's actor lives while the run has work: it executes passes (see
//! [`crate::exec`]), takes signals and cancellations, and sleeps through
//! short waits. When a pass suspends on a long wait, or the run ends or
//! needs an operator, the actor writes the run's record and asks to be
//! passivated; a passivated run costs its index entries only. A due timer,
//! a signal, a finished child or a restart activates it again: a new actor
//! folds the journal and runs a pass, which replays what is done.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use baton_types::now_unix_ms;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde_json::Value;

use crate::deps::{Deps, RunCtx};
use crate::error::{Error, Result};
use crate::exec::{Exec, PassOutcome, Stop};
use crate::log::RunLog;
use crate::record::{RunEvent, RunId, RunMeta, RunStatus};

/// Restarts of one run's actor before the run is marked failed.
const MAX_RESTARTS: u32 = 3;
/// Passes abandoned on store errors before the actor gives up (and is restarted).
const MAX_PASS_ERRORS: u32 = 3;

/// What a run's actor is told.
pub enum RunMsg {
    /// A pass ended (`generation` tells stale passes apart).
    PassDone(u64, PassOutcome),
    /// A timer is due or a child finished: run a pass.
    Wake,
    Signal {
        name: String,
        payload: Value,
        by: String,
        reply: RpcReplyPort<Result<u64>>,
    },
    /// An operator's answer to `needs_attention`: `retry` or `skip`.
    Resolve {
        action: String,
        by: String,
        reply: RpcReplyPort<Result<()>>,
    },
    Cancel {
        by: String,
        reason: String,
        reply: RpcReplyPort<Result<()>>,
    },
    /// The supervisor agreed to passivate it.
    Stop,
}

pub struct RunActor;

pub struct RunArgs {
    pub deps: Arc<Deps>,
    pub run: RunId,
    pub supervisor: ActorRef<SupMsg>,
}

pub struct RunState {
    exec: Option<Arc<Exec>>,
    supervisor: ActorRef<SupMsg>,
    run: RunId,
    deps: Arc<Deps>,
    pass: Option<tokio::task::JoinHandle<()>>,
    generation: u64,
    /// A signal or wake-up came during a pass: run another one after it.
    rerun: bool,
    sleeper: Option<tokio::task::JoinHandle<()>>,
    pass_errors: u32,
    stopping: bool,
}

impl RunState {
    fn start_pass(&mut self, myself: &ActorRef<RunMsg>) {
        let Some(exec) = self.exec.clone() else {
            return;
        };
        if let Some(s) = self.sleeper.take() {
            s.abort();
        }
        self.generation += 1;
        self.rerun = false;
        // Work again: a passivation asked for before is declined.
        self.stopping = false;
        let generation = self.generation;
        let me = myself.clone();
        self.pass = Some(tokio::spawn(async move {
            let outcome = exec.pass().await;
            let _ = me.cast(RunMsg::PassDone(generation, outcome));
        }));
    }

    fn passivate(&mut self) {
        if !self.stopping {
            self.stopping = true;
            let _ = self.supervisor.cast(SupMsg::Passivate(self.run));
        }
    }

    fn log(&self) -> Option<Arc<RunLog>> {
        self.exec.as_ref().map(|e| e.log.clone())
    }

    /// End the run with its last record: its slot under the flow's limit
    /// is freed before the record is written (whoever reads the run as
    /// ended can start another), taken back if the write fails; then a
    /// waiting parent wakes and the actor passivates.
    async fn end(
        &mut self,
        log: &Arc<RunLog>,
        event: RunEvent,
        update: impl FnOnce(&mut RunMeta),
    ) -> Result<u64> {
        let meta = log.meta().await;
        let starter = self.deps.starter();
        if let Some(s) = &starter {
            s.ended(&meta.flow);
        }
        let seq = match log.append_with(event, true, update).await {
            Ok(seq) => seq,
            Err(e) => {
                if let Some(s) = &starter {
                    s.not_ended(&meta.flow);
                }
                return Err(e);
            }
        };
        if let Some(s) = &starter
            && let Some((parent, _)) = meta.parent
        {
            s.wake(parent);
        }
        self.passivate();
        Ok(seq)
    }
}

impl Actor for RunActor {
    type Msg = RunMsg;
    type State = RunState;
    type Arguments = RunArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RunMsg>,
        args: RunArgs,
    ) -> std::result::Result<RunState, ActorProcessingErr> {
        let mut st = RunState {
            exec: None,
            supervisor: args.supervisor,
            run: args.run,
            deps: args.deps.clone(),
            pass: None,
            generation: 0,
            rerun: false,
            sleeper: None,
            pass_errors: 0,
            stopping: false,
        };
        let deps = args.deps;
        // Where nodes own sessions one by one, the run is this node's
        // while its actor lives (its writes are fenced by the claim).
        claim(&deps, args.run).await?;
        let Some((meta, memo)) = RunLog::load(&deps.store, args.run).await? else {
            st.passivate();
            return Ok(st);
        };
        let Some(RunEvent::RunStarted {
            flow,
            version,
            definition,
            principal,
            ..
        }) = memo.started.clone()
        else {
            return Err(format!("run {} has no run_started record", args.run).into());
        };
        let status = meta.status;
        let log = Arc::new(RunLog::new(
            deps.store.clone(),
            deps.watchers.clone(),
            Some(deps.rt.clone()),
            meta,
            memo,
        ));
        let flow = deps.flow_of(&flow, &version, &definition)?;
        st.exec = Some(Arc::new(Exec {
            deps: deps.clone(),
            ctx: RunCtx {
                run: args.run,
                principal,
                flow,
            },
            log: log.clone(),
            replay: None,
        }));
        match status {
            // Only an operator's answer moves one that needs attention on.
            s if s.is_terminal() || s == RunStatus::NeedsAttention => st.passivate(),
            _ => {
                mark_running(&log).await?;
                st.start_pass(&myself);
            }
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<RunMsg>,
        msg: RunMsg,
        st: &mut RunState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let Some(log) = st.log() else {
            // A run that does not exist: answer and go.
            match msg {
                RunMsg::Signal { reply, .. } => {
                    let _ = reply.send(Err(Error::NotFound(format!("run {} not found", st.run))));
                }
                RunMsg::Resolve { reply, .. } | RunMsg::Cancel { reply, .. } => {
                    let _ = reply.send(Err(Error::NotFound(format!("run {} not found", st.run))));
                }
                RunMsg::Stop => myself.stop(Some("passivated".into())),
                _ => {}
            }
            return Ok(());
        };
        match msg {
            RunMsg::Stop if !st.stopping => {
                // Work started after the request: stay.
                let _ = st.supervisor.cast(SupMsg::Declined(st.run));
            }
            RunMsg::Stop => {
                if let Some(p) = st.pass.take() {
                    p.abort();
                }
                if let Some(s) = st.sleeper.take() {
                    s.abort();
                }
                myself.stop(Some("passivated".into()));
            }
            RunMsg::PassDone(generation, outcome) => {
                if generation != st.generation {
                    return Ok(());
                }
                st.pass = None;
                self.pass_done(&myself, st, &log, outcome).await?;
            }
            RunMsg::Wake => {
                let status = log.meta().await.status;
                if status.is_terminal() || status == RunStatus::NeedsAttention {
                    return Ok(());
                }
                if st.pass.is_some() {
                    st.rerun = true;
                } else {
                    mark_running(&log).await?;
                    st.start_pass(&myself);
                }
            }
            RunMsg::Signal {
                name,
                payload,
                by,
                reply,
            } => {
                let status = log.meta().await.status;
                if status.is_terminal() {
                    let _ = reply.send(Err(Error::FailedPrecondition(format!(
                        "run {} is {}: it takes no signals",
                        st.run,
                        status.as_str()
                    ))));
                    return Ok(());
                }
                let r = log
                    .append(RunEvent::SignalReceived { name, payload, by }, true)
                    .await;
                let ok = r.is_ok();
                let _ = reply.send(r);
                if ok && status != RunStatus::NeedsAttention {
                    if st.pass.is_some() {
                        st.rerun = true;
                    } else {
                        mark_running(&log).await?;
                        st.start_pass(&myself);
                    }
                }
            }
            RunMsg::Resolve { action, by, reply } => {
                let memo = log.memo().await;
                let Some(path) = memo.attention.clone() else {
                    let _ = reply.send(Err(Error::FailedPrecondition(format!(
                        "run {} does not need attention",
                        st.run
                    ))));
                    return Ok(());
                };
                if action != "retry" && action != "skip" {
                    let _ = reply.send(Err(Error::InvalidArgument(format!(
                        "action {action:?}: retry or skip"
                    ))));
                    return Ok(());
                }
                let r = log
                    .append_with(
                        RunEvent::AttentionResolved { path, action, by },
                        true,
                        |m| {
                            m.status = RunStatus::Running;
                            m.reason.clear();
                        },
                    )
                    .await
                    .map(|_| ());
                let ok = r.is_ok();
                let _ = reply.send(r);
                if ok {
                    st.start_pass(&myself);
                }
            }
            RunMsg::Cancel { by, reason, reply } => {
                let status = log.meta().await.status;
                if status.is_terminal() {
                    let _ = reply.send(Err(Error::FailedPrecondition(format!(
                        "run {} is already {}",
                        st.run,
                        status.as_str()
                    ))));
                    return Ok(());
                }
                if let Some(p) = st.pass.take() {
                    p.abort();
                }
                if let Some(s) = st.sleeper.take() {
                    s.abort();
                }
                st.generation += 1;
                // Steps in flight whose sessions may still hold a turn (a
                // gate waiting for a reviewer, a model call): cancel them.
                let in_flight = log.with_memo(|m| m.in_flight.clone()).await;
                if let Some(exec) = st.exec.clone()
                    && !in_flight.is_empty()
                {
                    let by = by.clone();
                    tokio::spawn(async move {
                        cancel_step_sessions(&exec, in_flight, by).await;
                    });
                }
                let r = st
                    .end(
                        &log,
                        RunEvent::RunCancelled {
                            by,
                            reason: reason.clone(),
                        },
                        |m| {
                            m.status = RunStatus::Cancelled;
                            m.reason = if reason.is_empty() {
                                "cancelled".into()
                            } else {
                                reason
                            };
                            m.wake_at_unix_ms = 0;
                        },
                    )
                    .await
                    .map(|_| ());
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RunMsg>,
        st: &mut RunState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if let Some(p) = st.pass.take() {
            p.abort();
        }
        if let Some(s) = st.sleeper.take() {
            s.abort();
        }
        // Given up once every write of it landed; its successor (spawned
        // after this returns) claims it again.
        if let Err(e) = st.deps.store.release_run(st.run.bytes()).await {
            tracing::warn!(run = %st.run, error = %e, "cannot give a passivated run up");
        }
        Ok(())
    }
}

/// Cancel the turns of the sessions that steps in flight started (found
/// by their keys, [`crate::effects::step_session_key`]): a cancelled run leaves no gate pending
/// for a reviewer and no model call running.
async fn cancel_step_sessions(exec: &Exec, in_flight: HashMap<String, u32>, by: String) {
    let rt = &exec.deps.rt;
    let tenant = &exec.ctx.principal.tenant;
    for (path, attempt) in in_flight {
        let key = crate::effects::step_session_key(exec.ctx.run, &path, attempt);
        match rt.session_by_key(tenant, &key).await {
            Ok(Some(session)) => {
                if let Err(e) = rt.cancel_by(session, by.clone()).await {
                    tracing::warn!(run = %exec.ctx.run, %session, error = %e, "cannot cancel a cancelled run's step session");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(run = %exec.ctx.run, error = %e, "cannot look up a cancelled run's step session")
            }
        }
    }
}

impl RunActor {
    async fn pass_done(
        &self,
        myself: &ActorRef<RunMsg>,
        st: &mut RunState,
        log: &Arc<RunLog>,
        outcome: PassOutcome,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match outcome {
            PassOutcome::Completed(output) => {
                st.end(
                    log,
                    RunEvent::RunCompleted {
                        output: output.clone(),
                    },
                    |m| {
                        m.status = RunStatus::Completed;
                        m.output = output;
                        m.reason.clear();
                    },
                )
                .await?;
            }
            PassOutcome::Stopped(Stop::Failed { path, error }) => {
                let reason = format!("step {path:?}: {error}");
                st.end(log, RunEvent::RunFailed { path, error }, |m| {
                    m.status = RunStatus::Failed;
                    m.reason = reason;
                })
                .await?;
            }
            PassOutcome::Stopped(Stop::Attention { reason, .. }) => {
                log.update_meta(|m| {
                    m.status = RunStatus::NeedsAttention;
                    m.reason = reason;
                })
                .await?;
                st.passivate();
            }
            PassOutcome::Stopped(Stop::Suspend { wake_at }) => {
                if st.rerun {
                    st.start_pass(myself);
                    return Ok(());
                }
                let now = now_unix_ms();
                match wake_at {
                    Some(at) if at <= now.saturating_add(st.deps.config.inline_wait_ms) => {
                        let me = myself.clone();
                        st.sleeper = Some(tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
                            let _ = me.cast(RunMsg::Wake);
                        }));
                    }
                    _ => {
                        log.update_meta(|m| {
                            m.status = RunStatus::Waiting;
                            m.wake_at_unix_ms = wake_at.unwrap_or(0);
                        })
                        .await?;
                        st.passivate();
                    }
                }
            }
            PassOutcome::Stopped(Stop::Internal(e)) => {
                st.pass_errors += 1;
                tracing::warn!(run = %st.run, error = %e, "a run's pass was abandoned");
                if st.pass_errors >= MAX_PASS_ERRORS {
                    return Err(format!("run {}: {e}", st.run).into());
                }
                let me = myself.clone();
                st.sleeper = Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = me.cast(RunMsg::Wake);
                }));
            }
        }
        Ok(())
    }
}

/// What the supervisor is told.
pub enum SupMsg {
    /// Deliver to the run's actor, activating the run when it is passivated.
    Route(RunId, RunMsg),
    /// Activate the run (a due timer, a finished child, recovery).
    Activate(RunId),
    /// The run's actor has nothing to do.
    Passivate(RunId),
    /// It was asked to stop but has work again.
    Declined(RunId),
    /// The runs in memory.
    Live(RpcReplyPort<Vec<LiveRun>>),
    /// Start the run's actor again (its first start failed), with the
    /// messages held for it.
    Respawn(RunId, Vec<RunMsg>),
}

/// A run whose actor is in memory, for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRun {
    pub run: RunId,
    pub actor_id: String,
    /// `running`, or `passivating` (asked to stop; has nothing to do).
    pub status: &'static str,
    pub uptime_ms: u64,
    /// Times its actor failed and was started again.
    pub restarts: u32,
    /// Messages held for it while it passivates.
    pub held_messages: usize,
}

struct Entry {
    actor: ActorRef<RunMsg>,
    started: std::time::Instant,
    passivating: bool,
    /// Messages that came while it passivated: they go to its successor.
    held: Vec<RunMsg>,
}

pub struct RunSupervisor;

pub struct SupState {
    deps: Arc<Deps>,
    live: HashMap<RunId, Entry>,
    by_actor: HashMap<ActorId, RunId>,
    restarts: HashMap<RunId, u32>,
    /// Activations whose actor could not start, tried again a few times.
    spawn_failures: HashMap<RunId, u32>,
}

impl SupState {
    async fn spawn(&mut self, myself: &ActorRef<SupMsg>, run: RunId, held: Vec<RunMsg>) {
        let args = RunArgs {
            deps: self.deps.clone(),
            run,
            supervisor: myself.clone(),
        };
        match Actor::spawn_linked(None, RunActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.spawn_failures.remove(&run);
                self.by_actor.insert(actor.get_id(), run);
                for m in held {
                    let _ = actor.cast(m);
                }
                self.live.insert(
                    run,
                    Entry {
                        actor,
                        started: std::time::Instant::now(),
                        passivating: false,
                        held: Vec::new(),
                    },
                );
            }
            Err(e) => {
                // Its store was unreachable, or (where nodes own sessions
                // one by one) it is still another node's for a moment:
                // tried again shortly, a few times, its messages kept.
                let n = self.spawn_failures.entry(run).or_default();
                *n += 1;
                tracing::warn!(run = %run, error = %e, attempts = *n, "cannot start a run's actor");
                if *n <= MAX_RESTARTS {
                    let (me, delay) = (myself.clone(), Duration::from_millis(200 << *n));
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = me.cast(SupMsg::Respawn(run, held));
                    });
                } else {
                    self.spawn_failures.remove(&run);
                }
            }
        }
    }
}

impl Actor for RunSupervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = Arc<Deps>;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupMsg>,
        deps: Arc<Deps>,
    ) -> std::result::Result<SupState, ActorProcessingErr> {
        Ok(SupState {
            deps,
            live: HashMap::new(),
            by_actor: HashMap::new(),
            restarts: HashMap::new(),
            spawn_failures: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::Route(run, m) => match st.live.get_mut(&run) {
                Some(e) if e.passivating => e.held.push(m),
                Some(e) => {
                    if let Err(ractor::MessagingErr::SendErr(m)) = e.actor.send_message(m) {
                        e.held.push(m);
                    }
                }
                None => st.spawn(&myself, run, vec![m]).await,
            },
            SupMsg::Activate(run) => match st.live.get_mut(&run) {
                Some(e) if e.passivating => e.held.push(RunMsg::Wake),
                Some(e) => {
                    let _ = e.actor.cast(RunMsg::Wake);
                }
                None => st.spawn(&myself, run, Vec::new()).await,
            },
            SupMsg::Passivate(run) => {
                if let Some(e) = st.live.get_mut(&run)
                    && !e.passivating
                {
                    e.passivating = true;
                    let _ = e.actor.cast(RunMsg::Stop);
                }
            }
            SupMsg::Declined(run) => {
                if let Some(e) = st.live.get_mut(&run) {
                    e.passivating = false;
                    for m in std::mem::take(&mut e.held) {
                        let _ = e.actor.cast(m);
                    }
                }
            }
            SupMsg::Respawn(run, held) => match st.live.get_mut(&run) {
                // Started meanwhile (activated again): the messages go to it.
                Some(e) => {
                    for m in held {
                        if e.passivating {
                            e.held.push(m);
                        } else if let Err(ractor::MessagingErr::SendErr(m)) =
                            e.actor.send_message(m)
                        {
                            e.held.push(m);
                        }
                    }
                }
                None => st.spawn(&myself, run, held).await,
            },
            SupMsg::Live(reply) => {
                let mut runs: Vec<LiveRun> = st
                    .live
                    .iter()
                    .map(|(run, e)| LiveRun {
                        run: *run,
                        actor_id: e.actor.get_id().to_string(),
                        status: if e.passivating {
                            "passivating"
                        } else {
                            "running"
                        },
                        uptime_ms: e.started.elapsed().as_millis() as u64,
                        restarts: st.restarts.get(run).copied().unwrap_or(0),
                        held_messages: e.held.len(),
                    })
                    .collect();
                runs.sort_by_key(|r| r.run);
                let _ = reply.send(runs);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut SupState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                let Some(run) = st.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                if let Some(e) = st.live.remove(&run)
                    && !e.held.is_empty()
                {
                    st.spawn(&myself, run, e.held).await;
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(run) = st.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let held = st.live.remove(&run).map(|e| e.held).unwrap_or_default();
                let n = st.restarts.entry(run).or_default();
                // While the store cannot be written (a full disk, a failing
                // fsync) the run is not at fault: it keeps its restarts and
                // tries again once a second.
                let store_failing = st.deps.store.write_failing().is_some();
                if !store_failing {
                    *n += 1;
                }
                tracing::warn!(run = %run, error = %err, restarts = *n, store_failing, "a run's actor failed");
                if *n <= MAX_RESTARTS {
                    let me = myself.clone();
                    let delay = if store_failing {
                        Duration::from_secs(1)
                    } else {
                        Duration::from_millis(200 << *n)
                    };
                    let store = st.deps.store.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        // Not into a store that still cannot be written.
                        while store.write_failing().is_some() {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        let _ = me.cast(SupMsg::Activate(run));
                    });
                    // Messages held for it go to its successor.
                    for m in held {
                        let _ = myself.cast(SupMsg::Route(run, m));
                    }
                } else {
                    st.restarts.remove(&run);
                    fail_run(&st.deps, run, &err.to_string()).await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupMsg>,
        st: &mut SupState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let stopping = st.live.values().map(|e| {
            e.actor
                .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
        });
        futures::future::join_all(stopping).await;
        Ok(())
    }
}

/// Claim `run` for this node (always this node's where one node owns
/// everything); a run another live node owns is not worked on here.
async fn claim(deps: &Deps, run: RunId) -> Result<()> {
    match deps.store.claim_run(run.bytes()).await? {
        baton_store::owners::Claim::Ours => Ok(()),
        baton_store::owners::Claim::Owned(o) => Err(Error::Unavailable(format!(
            "run {run} is owned by node {} ({})",
            o.node_id, o.grpc_addr
        ))),
    }
}

/// A waiting run that works again.
async fn mark_running(log: &RunLog) -> Result<()> {
    log.update_meta(|m| {
        if m.status == RunStatus::Waiting {
            m.status = RunStatus::Running;
            m.wake_at_unix_ms = 0;
        }
    })
    .await
}

/// Mark a run whose actor keeps failing as failed.
async fn fail_run(deps: &Deps, run: RunId, error: &str) {
    let r = async {
        claim(deps, run).await?;
        let Some((meta, memo)) = RunLog::load(&deps.store, run).await? else {
            return Ok::<(), Error>(());
        };
        if meta.status.is_terminal() {
            return Ok(());
        }
        let flow = meta.flow.clone();
        let log = RunLog::new(
            deps.store.clone(),
            deps.watchers.clone(),
            Some(deps.rt.clone()),
            meta,
            memo,
        );
        let reason = format!("the run's actor failed {MAX_RESTARTS} times; the last: {error}");
        // The slot frees before the last record is written (as `RunState::end`).
        let starter = deps.starter();
        if let Some(s) = &starter {
            s.ended(&flow);
        }
        let written = log
            .append_with(
                RunEvent::RunFailed {
                    path: String::new(),
                    error: reason.clone(),
                },
                true,
                |m| {
                    m.status = RunStatus::Failed;
                    m.reason = reason;
                    m.wake_at_unix_ms = 0;
                },
            )
            .await;
        if written.is_err()
            && let Some(s) = &starter
        {
            s.not_ended(&flow);
        }
        written.map(|_| ())
    }
    .await;
    if let Err(e) = r {
        tracing::error!(run = %run, error = %e, "cannot mark a failing run failed");
    }
    if let Err(e) = deps.store.release_run(run.bytes()).await {
        tracing::warn!(run = %run, error = %e, "cannot give a failed run up");
    }
}
