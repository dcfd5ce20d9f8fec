//! The recording as a replay session's source of model answers and tool
//! results: no model or tool is called. The recording is read from the
//! store as the replay asks for it (answers a page at a time, a tool
//! result by its seq), so a replay holds no more of it than a page.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use baton_routing::{RouteCall, RouteError, Routed};
use baton_store::Store;
use baton_tools::ToolError;
use baton_types::{EventKind, FinishReason, Message, SessionId, Usage};
use futures::future::BoxFuture;

use crate::source::{StepSource, unrecorded_answer, unrecorded_result};

/// Records of the recording read at a time, looking for its next answer.
const PAGE: u64 = 256;

/// The recording's model answers in order and its tool results by call id.
#[derive(Debug)]
pub(crate) struct ReplaySource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    /// The recorded session and its last seq when the replay began.
    session: SessionId,
    upto: u64,
    answers: tokio::sync::Mutex<Answers>,
    /// The seq of each server-side tool call's result, by call id.
    tools: HashMap<String, u64>,
}

/// Where the reading of answers is: after `after`, with `queue` read
/// ahead.
#[derive(Debug, Default)]
struct Answers {
    after: u64,
    queue: VecDeque<RecordedAnswer>,
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
    /// The recording `session` up to seq `upto`, with the seqs of its tool
    /// results by call id (a later result of the same id wins).
    pub(crate) fn new(
        store: Store,
        session: SessionId,
        upto: u64,
        tools: HashMap<String, u64>,
    ) -> ReplaySource {
        ReplaySource {
            inner: Arc::new(Inner {
                store,
                session,
                upto,
                answers: tokio::sync::Mutex::new(Answers::default()),
                tools,
            }),
        }
    }
}

impl Inner {
    /// The recording's next answer, reading on from the last one.
    async fn next_answer(&self) -> Result<Option<RecordedAnswer>, String> {
        let mut a = self.answers.lock().await;
        while a.queue.is_empty() && a.after < self.upto {
            let page = self
                .store
                .read_journal_range(self.session, a.after, self.upto.min(a.after + PAGE))
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            a.after = last;
            for e in page {
                if let EventKind::AssistantMessage {
                    message,
                    usage,
                    endpoint,
                    model,
                    finish_reason,
                    cost_usd,
                    schema_validated,
                    ..
                } = e.kind
                {
                    a.queue.push_back(RecordedAnswer {
                        message,
                        usage,
                        endpoint,
                        model,
                        finish_reason,
                        cost_usd,
                        schema_validated,
                    });
                }
            }
        }
        Ok(a.queue.pop_front())
    }

    /// The recorded result of `call_id`: (output, is_error).
    async fn tool_result(&self, call_id: &str) -> Result<Option<(String, bool)>, String> {
        let Some(&seq) = self.tools.get(call_id) else {
            return Ok(None);
        };
        let page = self
            .store
            .read_journal_range(self.session, seq.saturating_sub(1), seq)
            .await
            .map_err(|e| e.to_string())?;
        Ok(page.into_iter().find_map(|e| match e.kind {
            EventKind::ToolResult {
                output, is_error, ..
            } => Some((output, is_error)),
            _ => None,
        }))
    }
}

impl StepSource for ReplaySource {
    /// The recording's next answer.
    fn model_call(&self, _call: RouteCall) -> BoxFuture<'static, Result<Routed, RouteError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            match inner.next_answer().await {
                Ok(Some(a)) => Ok(Routed {
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
                Ok(None) => Err(unrecorded_answer()),
                Err(e) => Err(RouteError {
                    message: format!("replay: cannot read the recording's next answer: {e}"),
                    ..unrecorded_answer()
                }),
            }
        })
    }

    /// The recorded result of the call (an error result as the same error).
    fn tool_call(
        &self,
        call_id: &str,
        _name: &str,
        _arguments: serde_json::Value,
    ) -> BoxFuture<'static, Result<String, ToolError>> {
        let inner = self.inner.clone();
        let call_id = call_id.to_string();
        Box::pin(async move {
            match inner.tool_result(&call_id).await {
                Ok(Some((output, false))) => Ok(output),
                Ok(Some((output, true))) => Err(ToolError::Failed(
                    output
                        .strip_prefix("error: ")
                        .unwrap_or(&output)
                        .to_string(),
                )),
                Ok(None) => Err(unrecorded_result(&call_id)),
                Err(e) => Err(ToolError::Failed(format!(
                    "replay: cannot read the recorded result of tool call {call_id}: {e}"
                ))),
            }
        })
    }
}
