//! Supervised tool execution.
//!
//! A `ToolSupervisor` actor owns every call in flight. Each call runs in its
//! own short-lived `ToolCall` actor, spawned linked under the supervisor:
//!
//! - the call finishes → the child sends its result to the supervisor, which answers the caller;
//! - the tool panics → the child actor fails, the supervisor observes the
//!   failure and answers [`ToolError::Panicked`];
//! - the call runs past the tool's `spec.timeout` → the supervisor's deadline
//!   fires, it answers [`ToolError::Timeout`] and kills the child, which drops
//!   (aborts) the tool's future.
//!
//! Every caller gets exactly one answer: if the executor stops first, pending
//! and later calls get [`ToolError::Unavailable`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr, SupervisionEvent};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Error, Result, Tool, ToolError, ToolRegistry};

type CallResult = Result<String, ToolError>;

/// Handle to the running tool executor. Cheap to clone.
#[derive(Clone)]
pub struct ToolExecutor {
    supervisor: ActorRef<SupervisorMsg>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ToolExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolExecutor")
            .field("supervisor", &self.supervisor.get_id())
            .field("calls_total", &self.calls_total())
            .finish()
    }
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    panics: AtomicU64,
    timeouts: AtomicU64,
}

impl ToolExecutor {
    /// Start the supervisor actor. Tools are looked up in `registry` at call
    /// time, so tools added later are callable.
    pub async fn spawn(registry: ToolRegistry) -> Result<ToolExecutor> {
        let counters = Arc::new(Counters::default());
        let (supervisor, _join) = Actor::spawn(
            None,
            ToolSupervisor,
            SupervisorArgs {
                registry,
                counters: Arc::clone(&counters),
            },
        )
        .await
        .map_err(|e| Error::Executor(format!("cannot start the tool supervisor: {e}")))?;
        Ok(ToolExecutor {
            supervisor,
            counters,
        })
    }

    /// Run tool `name` with `arguments` (already validated by
    /// [`ToolRegistry::validate`]). Never blocks; the receiver always gets
    /// exactly one answer.
    pub fn execute(&self, name: String, arguments: Value) -> oneshot::Receiver<CallResult> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let reply = Reply::new(name.clone(), tx);
        let msg = SupervisorMsg::Execute {
            name,
            arguments,
            reply,
        };
        if self.supervisor.cast(msg).is_err() {
            // The supervisor has stopped. The message (and its reply guard) is
            // dropped here, which answers the caller `Unavailable`.
            tracing::debug!("tool call requested after the executor stopped");
        }
        rx
    }

    /// Stop the executor: calls in flight are aborted and answered `Unavailable`.
    pub async fn stop(&self) {
        if let Err(e) = self.supervisor.stop_and_wait(None, None).await {
            tracing::debug!(error = %e, "tool supervisor already stopped");
        }
    }

    /// Calls requested through [`ToolExecutor::execute`].
    pub fn calls_total(&self) -> u64 {
        self.counters.calls.load(Ordering::Relaxed)
    }

    /// Calls whose tool panicked.
    pub fn panics_total(&self) -> u64 {
        self.counters.panics.load(Ordering::Relaxed)
    }

    /// Calls abandoned at their tool's timeout.
    pub fn timeouts_total(&self) -> u64 {
        self.counters.timeouts.load(Ordering::Relaxed)
    }
}

fn stopped_error(tool: String) -> ToolError {
    ToolError::Unavailable {
        tool,
        reason: "the tool executor has stopped".to_owned(),
    }
}

/// The caller's reply slot. Answers `Unavailable` if dropped unanswered (the
/// message was lost because the supervisor stopped), so no caller ever hangs.
struct Reply {
    tool: String,
    tx: Option<oneshot::Sender<CallResult>>,
}

impl Reply {
    fn new(tool: String, tx: oneshot::Sender<CallResult>) -> Self {
        Self { tool, tx: Some(tx) }
    }

    fn send(mut self, result: CallResult) {
        if let Some(tx) = self.tx.take() {
            // The caller may have stopped waiting; nothing to do then.
            let _ = tx.send(result);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(stopped_error(self.tool.clone())));
        }
    }
}

enum SupervisorMsg {
    Execute {
        name: String,
        arguments: Value,
        reply: Reply,
    },
    Finished {
        call: ActorId,
        result: CallResult,
    },
    Deadline {
        call: ActorId,
    },
}

struct SupervisorArgs {
    registry: ToolRegistry,
    counters: Arc<Counters>,
}

struct InFlight {
    tool: String,
    timeout: Duration,
    reply: Reply,
    child: ActorRef<CallMsg>,
    deadline: JoinHandle<std::result::Result<(), MessagingErr<SupervisorMsg>>>,
}

struct SupervisorState {
    registry: ToolRegistry,
    counters: Arc<Counters>,
    in_flight: HashMap<ActorId, InFlight>,
}

impl SupervisorState {
    fn take(&mut self, call: &ActorId) -> Option<InFlight> {
        let entry = self.in_flight.remove(call)?;
        entry.deadline.abort();
        Some(entry)
    }
}

struct ToolSupervisor;

impl Actor for ToolSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            registry: args.registry,
            counters: args.counters,
            in_flight: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Execute {
                name,
                arguments,
                reply,
            } => {
                let Some(tool) = state.registry.get(&name) else {
                    reply.send(Err(ToolError::UnknownTool(name)));
                    return Ok(());
                };
                let timeout = tool.spec().timeout;
                let spawned = Actor::spawn_linked(
                    None,
                    ToolCall,
                    CallArgs {
                        tool,
                        arguments,
                        supervisor: myself.clone(),
                    },
                    myself.get_cell(),
                )
                .await;
                let child = match spawned {
                    Ok((child, _join)) => child,
                    Err(e) => {
                        // pre_start does not run the tool, so this is not the tool's panic.
                        reply.send(Err(ToolError::Failed(format!(
                            "cannot start a call of tool {name}: {e}"
                        ))));
                        return Ok(());
                    }
                };
                let call = child.get_id();
                let deadline = myself.send_after(timeout, move || SupervisorMsg::Deadline { call });
                if let Err(e) = child.cast(CallMsg::Run) {
                    deadline.abort();
                    reply.send(Err(ToolError::Failed(format!(
                        "cannot start a call of tool {name}: {e}"
                    ))));
                    return Ok(());
                }
                state.in_flight.insert(
                    call,
                    InFlight {
                        tool: name,
                        timeout,
                        reply,
                        child,
                        deadline,
                    },
                );
            }
            SupervisorMsg::Finished { call, result } => {
                if let Some(entry) = state.take(&call) {
                    entry.reply.send(result);
                }
            }
            SupervisorMsg::Deadline { call } => {
                if let Some(entry) = state.take(&call) {
                    state.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tool = %entry.tool, timeout_ms = entry.timeout.as_millis() as u64, "tool call timed out; aborting it");
                    // Kill drops the call's future mid-await: the work is abandoned.
                    entry.child.kill();
                    entry.reply.send(Err(ToolError::Timeout {
                        tool: entry.tool,
                        after: entry.timeout,
                    }));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        // Unlike ractor's default, a failed child never stops the supervisor.
        if let SupervisionEvent::ActorFailed(cell, err) = event
            && let Some(entry) = state.take(&cell.get_id())
        {
            state.counters.panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!(tool = %entry.tool, error = %err, "tool panicked");
            entry.reply.send(Err(ToolError::Panicked {
                tool: entry.tool,
                reason: err.to_string(),
            }));
        }
        // A child that terminated normally has sent `Finished` first (it may be
        // handled after this event: supervision events jump the message queue).
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let calls: Vec<ActorId> = state.in_flight.keys().copied().collect();
        for call in calls {
            if let Some(entry) = state.take(&call) {
                entry.child.kill();
                let tool = entry.tool.clone();
                entry.reply.send(Err(stopped_error(tool)));
            }
        }
        Ok(())
    }
}

enum CallMsg {
    Run,
}

struct CallArgs {
    tool: Arc<dyn Tool>,
    arguments: Value,
    supervisor: ActorRef<SupervisorMsg>,
}

/// One tool call. Lives from spawn until its result is sent (or it is killed).
struct ToolCall;

impl Actor for ToolCall {
    type Msg = CallMsg;
    type State = Option<CallArgs>;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: CallArgs,
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        Ok(Some(args))
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        CallMsg::Run: Self::Msg,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let Some(CallArgs {
            tool,
            arguments,
            supervisor,
        }) = state.take()
        else {
            return Ok(());
        };
        let result = tool.call(arguments).await;
        let call = myself.get_id();
        if supervisor
            .cast(SupervisorMsg::Finished { call, result })
            .is_err()
        {
            tracing::debug!(tool = %tool.spec().name, "tool supervisor gone before the result arrived");
        }
        myself.stop(None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use serde_json::json;
    use tokio::sync::Barrier;

    use super::*;
    use crate::ToolSpec;

    type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = CallResult> + Send>>;
    type Behaviour = Arc<dyn Fn(Value) -> BoxFuture + Send + Sync>;

    struct FnTool {
        spec: ToolSpec,
        behaviour: Behaviour,
    }

    impl std::fmt::Debug for FnTool {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FnTool").field("spec", &self.spec).finish()
        }
    }

    #[async_trait::async_trait]
    impl Tool for FnTool {
        fn spec(&self) -> &ToolSpec {
            &self.spec
        }
        async fn call(&self, arguments: Value) -> CallResult {
            (self.behaviour)(arguments).await
        }
    }

    fn fn_tool<F, Fut>(name: &str, timeout: Duration, f: F) -> Arc<dyn Tool>
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = CallResult> + Send + 'static,
    {
        Arc::new(FnTool {
            spec: ToolSpec {
                name: name.to_owned(),
                description: String::new(),
                parameters: json!({"type": "object"}),
                output_schema: None,
                idempotent: true,
                timeout,
            },
            behaviour: Arc::new(move |args| Box::pin(f(args))),
        })
    }

    async fn executor_with(tools: Vec<Arc<dyn Tool>>) -> (ToolRegistry, ToolExecutor) {
        let registry = ToolRegistry::new();
        for tool in tools {
            registry.register(tool).unwrap();
        }
        let executor = ToolExecutor::spawn(registry.clone()).await.unwrap();
        (registry, executor)
    }

    fn echo() -> Arc<dyn Tool> {
        fn_tool("echo", Duration::from_secs(5), |args| async move {
            Ok(args.to_string())
        })
    }

    fn panicker() -> Arc<dyn Tool> {
        fn_tool("boom", Duration::from_secs(5), |_| async move {
            tokio::task::yield_now().await;
            panic!("boom went the tool");
        })
    }

    #[tokio::test(start_paused = true)]
    async fn runs_a_tool_and_returns_its_result() {
        let (_registry, executor) = executor_with(vec![echo()]).await;
        let result = executor
            .execute("echo".into(), json!({"x": 1}))
            .await
            .unwrap();
        assert_eq!(result.unwrap(), r#"{"x":1}"#);
        assert_eq!(executor.calls_total(), 1);
        executor.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn tool_errors_pass_through() {
        let failing = fn_tool("fail", Duration::from_secs(5), |_| async {
            Err(ToolError::Failed("no such file".into()))
        });
        let (_registry, executor) = executor_with(vec![failing]).await;
        let result = executor.execute("fail".into(), json!({})).await.unwrap();
        assert_eq!(result, Err(ToolError::Failed("no such file".into())));
        executor.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_tool() {
        let (_registry, executor) = executor_with(vec![]).await;
        let result = executor.execute("nope".into(), json!({})).await.unwrap();
        assert_eq!(result, Err(ToolError::UnknownTool("nope".into())));
        executor.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn tools_registered_later_are_callable() {
        let (registry, executor) = executor_with(vec![]).await;
        registry.register(echo()).unwrap();
        let result = executor.execute("echo".into(), json!(1)).await.unwrap();
        assert_eq!(result.unwrap(), "1");
        executor.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_tool_is_reported_and_the_executor_keeps_serving() {
        let (_registry, executor) = executor_with(vec![panicker(), echo()]).await;
        for _ in 0..3 {
            let result = executor.execute("boom".into(), json!({})).await.unwrap();
            match result {
                Err(ToolError::Panicked { tool, reason }) => {
                    assert_eq!(tool, "boom");
                    assert!(reason.contains("boom went the tool"), "{reason}");
                }
                other => panic!("expected Panicked, got {other:?}"),
            }
            let ok = executor.execute("echo".into(), json!("hi")).await.unwrap();
            assert_eq!(ok.unwrap(), r#""hi""#);
        }
        assert_eq!(executor.panics_total(), 3);
        assert_eq!(executor.calls_total(), 6);
        executor.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_tool_times_out_and_is_aborted() {
        let dropped = Arc::new(AtomicBool::new(false));
        let hang = {
            let dropped = Arc::clone(&dropped);
            fn_tool("hang", Duration::from_millis(250), move |_| {
                let guard = DropFlag(Arc::clone(&dropped));
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(String::new())
                }
            })
        };
        let (_registry, executor) = executor_with(vec![hang, echo()]).await;
        let started = tokio::time::Instant::now();
        let result = executor.execute("hang".into(), json!({})).await.unwrap();
        assert_eq!(
            result,
            Err(ToolError::Timeout {
                tool: "hang".into(),
                after: Duration::from_millis(250)
            })
        );
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert_eq!(executor.timeouts_total(), 1);
        // The abandoned call's future is dropped once its actor is killed.
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            dropped.load(Ordering::SeqCst),
            "the hanging call was not aborted"
        );
        let ok = executor.execute("echo".into(), json!(2)).await.unwrap();
        assert_eq!(ok.unwrap(), "2");
        executor.stop().await;
    }

    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_run_concurrently() {
        // Each call waits until all three are running at once: run one after
        // another, the first would time out.
        let barrier = Arc::new(Barrier::new(3));
        let meet = fn_tool("meet", Duration::from_secs(10), move |args| {
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
                Ok(args.to_string())
            }
        });
        let (_registry, executor) = executor_with(vec![meet]).await;
        let receivers: Vec<_> = (0..3)
            .map(|i| executor.execute("meet".into(), json!(i)))
            .collect();
        for (i, rx) in receivers.into_iter().enumerate() {
            assert_eq!(rx.await.unwrap().unwrap(), i.to_string());
        }
        assert_eq!(executor.timeouts_total(), 0);
        executor.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_answers_calls_in_flight_and_later_calls() {
        let hang = fn_tool("hang", Duration::from_secs(3600), |_| async {
            std::future::pending::<CallResult>().await
        });
        let (_registry, executor) = executor_with(vec![hang]).await;
        let in_flight = executor.execute("hang".into(), json!({}));
        tokio::time::sleep(Duration::from_millis(10)).await;
        executor.stop().await;
        let unavailable =
            |r: CallResult| matches!(r, Err(ToolError::Unavailable { tool, .. }) if tool == "hang");
        assert!(unavailable(in_flight.await.unwrap()));
        let later = executor.execute("hang".into(), json!({}));
        assert!(unavailable(later.await.unwrap()));
    }
}
