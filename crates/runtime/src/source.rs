//! Where a session's model answers and tool results come from.
//!
//! A live session asks the router (strategies, retries, failover, breakers,
//! budgets) and runs tools in the tool executor; a replay session is answered
//! from a recording (see `replay`). The session actor does not know which:
//! it hands each call to its [`StepSource`] and gets the result back as a
//! message, the same way on every path.

use std::fmt::Debug;

use baton_routing::{RouteCall, RouteError, Routed, Router};
use baton_tools::{ToolError, ToolExecutor};
use futures::future::BoxFuture;

/// Answers a session's model calls and tool calls.
pub(crate) trait StepSource: Send + Sync + Debug {
    /// Answer one model call. Streamed deltas and routing events go to the
    /// call's channels, when it has them.
    fn model_call(&self, call: RouteCall) -> BoxFuture<'static, Result<Routed, RouteError>>;

    /// Run one tool call with validated arguments.
    fn tool_call(
        &self,
        call_id: &str,
        name: &str,
        arguments: serde_json::Value,
    ) -> BoxFuture<'static, Result<String, ToolError>>;
}

/// The live source: the router and the tool executor.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub router: Router,
    pub tools: ToolExecutor,
}

impl StepSource for Live {
    fn model_call(&self, call: RouteCall) -> BoxFuture<'static, Result<Routed, RouteError>> {
        let router = self.router.clone();
        Box::pin(async move { router.call(call).await })
    }

    fn tool_call(
        &self,
        _call_id: &str,
        name: &str,
        arguments: serde_json::Value,
    ) -> BoxFuture<'static, Result<String, ToolError>> {
        let rx = self.tools.execute(name.to_string(), arguments);
        let name = name.to_string();
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(ToolError::Unavailable {
                    tool: name,
                    reason: "the tool executor stopped".into(),
                })
            })
        })
    }
}

/// The source of a replay session whose recording is not registered (the
/// replay ended, or the process restarted during it): nothing is called,
/// every call fails.
#[derive(Debug)]
pub(crate) struct NoRecording;

/// A replay's model call the recording has no answer for.
pub(crate) fn unrecorded_answer() -> RouteError {
    RouteError {
        kind: baton_routing::RouteErrorKind::Exhausted,
        message: "replay: the recording has no model answer for this call".into(),
        attempts: 0,
        endpoint: None,
        cost_usd: None,
    }
}

/// A replay's tool call the recording has no result for.
pub(crate) fn unrecorded_result(call_id: &str) -> ToolError {
    ToolError::Failed(format!(
        "replay: the recording has no result for tool call {call_id}"
    ))
}

impl StepSource for NoRecording {
    fn model_call(&self, _call: RouteCall) -> BoxFuture<'static, Result<Routed, RouteError>> {
        Box::pin(std::future::ready(Err(unrecorded_answer())))
    }

    fn tool_call(
        &self,
        call_id: &str,
        _name: &str,
        _arguments: serde_json::Value,
    ) -> BoxFuture<'static, Result<String, ToolError>> {
        Box::pin(std::future::ready(Err(unrecorded_result(call_id))))
    }
}
