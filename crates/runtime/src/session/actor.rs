//! The actor: its lifecycle and the dispatch of its messages.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use baton_types::SessionId;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::ctx::{Env, SessionCtx};
use super::msg::{Notice, Notify, SessionMsg};
use super::view::SessionView;
use crate::shared::Shared;

/// What a session actor is spawned with.
pub(crate) struct SessionArgs {
    pub id: SessionId,
    pub shared: Arc<Shared>,
    pub notify: Notify,
    pub activity: Arc<AtomicU64>,
    /// See [`Env::after_failure`].
    pub after_failure: bool,
}

pub(crate) struct SessionActor;

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionCtx;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionCtx, ActorProcessingErr> {
        // Kept trivial: the supervisor awaits pre_start, loading happens in post_start.
        Ok(SessionCtx::new(Env {
            id: args.id,
            shared: args.shared,
            notify: args.notify,
            activity: args.activity,
            seal: None,
            after_failure: args.after_failure,
        }))
    }

    async fn post_start(
        &self,
        myself: ActorRef<SessionMsg>,
        ctx: &mut SessionCtx,
    ) -> Result<(), ActorProcessingErr> {
        ctx.load().await?;
        if !ctx.durable.found {
            // Unknown (or deleted) session, or one owned by another node:
            // answer what is queued, then go.
            (ctx.env.notify)(Notice::Passivate(ctx.id()));
        } else {
            ctx.pump(&myself);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        ctx: &mut SessionCtx,
    ) -> Result<(), ActorProcessingErr> {
        ctx.touch();
        match msg {
            SessionMsg::Send {
                message,
                review,
                by,
                after_turn,
                reply,
            } => {
                let _ = reply.send(ctx.send(&myself, message, review, by, after_turn));
            }
            SessionMsg::Subscribe { after_seq, reply } => {
                let _ = reply.send(ctx.subscribe(after_seq));
            }
            SessionMsg::Get { reply } => {
                let view = ctx.ensure_found().map(|()| {
                    SessionView::of(ctx.id(), &ctx.durable.state, ctx.outbox.released_seq)
                });
                let _ = reply.send(view);
            }
            SessionMsg::GetState { reply } => {
                let state = ctx.ensure_found().map(|()| ctx.durable.state.clone());
                let _ = reply.send(state);
            }
            SessionMsg::Cancel { by, reply } => {
                let _ = reply.send(ctx.cancel(&myself, by));
            }
            SessionMsg::Delete { reply } => {
                let _ = reply.send(ctx.delete().await);
            }
            SessionMsg::Record { kind, reply } => {
                let r = ctx.ensure_found();
                if r.is_ok() {
                    ctx.commit(&myself, vec![*kind], true);
                }
                let _ = reply.send(r);
            }
            SessionMsg::Wake => ctx.pump(&myself),
            SessionMsg::Passivate => {
                if ctx.is_idle() {
                    // A one-shot session's few records load faster than a
                    // snapshot is written.
                    if !ctx.durable.state.one_shot {
                        ctx.write_snapshot().await?;
                    }
                    if ctx.durable.owner.is_none() {
                        // A passivated session has no owner: any node may
                        // load it next. The release waits for this actor's
                        // writes first; a successor this supervisor spawns
                        // claims it again after this stop. One that fails
                        // leaves the session owned by this live node,
                        // which loads it again when asked.
                        if let Err(e) = ctx.env.shared.store.release(ctx.id()).await {
                            tracing::warn!(session = %ctx.id(), error = %e, "cannot release the passivated session");
                        }
                    }
                    myself.stop(Some("passivated".into()));
                } else {
                    (ctx.env.notify)(Notice::PassivateDeclined(ctx.id()));
                }
            }
            SessionMsg::InjectFault => {
                return Err(format!("fault injected into session {}", ctx.id()).into());
            }
            SessionMsg::Written { upto, result } => {
                if let Err(e) = result {
                    // The journal's state is unknown: restart from disk.
                    return Err(format!("journal write of session {} failed: {e}", ctx.id()).into());
                }
                ctx.on_written(upto);
                ctx.start_durable_tools(&myself, upto);
            }
            SessionMsg::SubmitToolResult {
                call_id,
                output,
                is_error,
                by,
                reply,
            } => ctx.submit_tool_result(&myself, call_id, output, is_error, by, reply),
            SessionMsg::ToolDone {
                turn,
                call_id,
                attempt,
                result,
                latency_ms,
            } => ctx.on_tool_done(&myself, turn, call_id, attempt, result, latency_ms),
            SessionMsg::DecideGate {
                gate_id,
                decision,
                reviewer,
                reason,
                reply,
            } => {
                ctx.decide_gate(&myself, gate_id, decision, reviewer, reason, reply)
                    .await
            }
            SessionMsg::GateTimeout { gate_id } => ctx.gate_timeout(&myself, gate_id),
            SessionMsg::ClientToolTimeout { turn, call_id } => {
                ctx.on_client_timeout(&myself, turn, call_id)
            }
            SessionMsg::ModelDelta { call, delta } => ctx.on_delta(&myself, call, delta),
            SessionMsg::CloseOutput { seq } => ctx.on_close_output(&myself, seq),
            SessionMsg::RouteEvent { call, event } => ctx.on_route_event(&myself, call, *event),
            SessionMsg::ModelDone {
                call,
                result,
                latency_ms,
            } => ctx.on_done(&myself, call, *result, latency_ms),
            SessionMsg::Checked {
                turn,
                answers,
                cost_usd,
            } => ctx.on_checked(&myself, turn, answers, cost_usd),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        ctx: &mut SessionCtx,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(call) = ctx.model.call.take() {
            call.cancel.cancel();
        }
        Ok(())
    }
}
