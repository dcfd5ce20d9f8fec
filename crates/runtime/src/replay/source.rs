//! The recording as a replay session's source of model answers and tool
//! results: no model or tool is called.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use baton_routing::{RouteCall, RouteError, Routed};
use baton_tools::ToolError;
use baton_types::{EventKind, FinishReason, Message, SessionEvent, Usage};
use futures::future::BoxFuture;

use crate::source::{StepSource, unrecorded_answer, unrecorded_result};

/// The recording's model answers in order and its tool results by call id.
#[derive(Debug, Default)]
pub(crate) struct ReplaySource {
    answers: Mutex<VecDeque<RecordedAnswer>>,
    tools: HashMap<String, (String, bool)>,
}

#[derive(Debug, Clone)]
struct RecordedAnswer {
    message: Message,
    usage: Usage,
    endpoint: String,
    model: String,
    finish_reason: FinishReason,
    cost_usd: Option<f64>,
    schema_validated: bool,
}

impl ReplaySource {
    /// The answers and results of a recorded journal.
    pub(crate) fn read(source: &[SessionEvent]) -> ReplaySource {
        let mut answers = VecDeque::new();
        let mut tools = HashMap::new();
        for e in source {
            match &e.kind {
                EventKind::AssistantMessage {
                    message,
                    usage,
                    endpoint,
                    model,
                    finish_reason,
                    cost_usd,
                    schema_validated,
                    ..
                } => answers.push_back(RecordedAnswer {
                    message: message.clone(),
                    usage: *usage,
                    endpoint: endpoint.clone(),
                    model: model.clone(),
                    finish_reason: finish_reason.clone(),
                    cost_usd: *cost_usd,
                    schema_validated: *schema_validated,
                }),
                EventKind::ToolResult {
                    call_id,
                    output,
                    is_error,
                    ..
                } => {
                    tools.insert(call_id.clone(), (output.clone(), *is_error));
                }
                _ => {}
            }
        }
        ReplaySource {
            answers: Mutex::new(answers),
            tools,
        }
    }

    fn next_answer(&self) -> Option<RecordedAnswer> {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

impl StepSource for ReplaySource {
    /// The recording's next answer.
    fn model_call(&self, _call: RouteCall) -> BoxFuture<'static, Result<Routed, RouteError>> {
        let result = match self.next_answer() {
            Some(a) => Ok(Routed {
                response: baton_models::ModelResponse {
                    message: a.message,
                    usage: a.usage,
                    finish_reason: a.finish_reason,
                    model: a.model,
                    attempts: 1,
                    confidence: None,
                    embeddings: None,
                },
                endpoint: a.endpoint,
                attempts: 1,
                cost_usd: a.cost_usd,
                decisions: Vec::new(),
                escalations: 0,
                schema_validated: a.schema_validated,
                output_resumed: baton_types::OutputResume::None,
            }),
            None => Err(unrecorded_answer()),
        };
        Box::pin(std::future::ready(result))
    }

    /// The recorded result of the call (an error result as the same error).
    fn tool_call(
        &self,
        call_id: &str,
        _name: &str,
        _arguments: serde_json::Value,
    ) -> BoxFuture<'static, Result<String, ToolError>> {
        let result = match self.tools.get(call_id).cloned() {
            Some((output, false)) => Ok(output),
            Some((output, true)) => Err(ToolError::Failed(
                output
                    .strip_prefix("error: ")
                    .unwrap_or(&output)
                    .to_string(),
            )),
            None => Err(unrecorded_result(call_id)),
        };
        Box::pin(std::future::ready(result))
    }
}
