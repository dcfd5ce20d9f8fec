//! A session as its actor shows it to clients.

use baton_types::{Message, SessionId, SessionStatus};

use crate::state::{PendingTool, SessionState};

/// A session as its actor holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub id: SessionId,
    pub status: SessionStatus,
    pub status_reason: String,
    pub route: String,
    pub system_prompt: String,
    /// The tenant the session belongs to.
    pub tenant: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub created_at_unix_ms: u64,
    pub messages: Vec<Message>,
    /// The running turn (0 = none).
    pub current_turn: u64,
    pub queued_turns: u32,
    pub usage: baton_types::Usage,
    /// Seq of the last durable event.
    pub last_seq: u64,
    pub turns_completed: u64,
    /// The number of the last turn accepted (0 = none yet).
    pub last_turn: u64,
    /// Whether the actor is in memory (always true when answered by the actor).
    pub live: bool,
    /// Tool calls of the current step without a result yet.
    pub pending_tools: Vec<PendingTool>,
    pub allowed_tools: Vec<String>,
    pub client_tools: Vec<baton_types::ToolDefinition>,
    pub max_steps: u32,
    /// Data classes the session's content is labelled with.
    pub data_classes: Vec<String>,
    /// The session's own budget, if it has one.
    pub budget_usd: Option<f64>,
}

impl SessionView {
    /// The view of `state`, whose events up to `released_seq` are durable.
    pub(crate) fn of(id: SessionId, s: &SessionState, released_seq: u64) -> SessionView {
        SessionView {
            id,
            status: s.status(),
            status_reason: s.failed.clone().unwrap_or_default(),
            route: s.route.clone(),
            system_prompt: s.system_prompt.clone(),
            tenant: s.tenant.clone(),
            metadata: s.metadata.clone(),
            created_at_unix_ms: s.created_at_unix_ms,
            messages: s.messages.clone(),
            current_turn: s.current.as_ref().map(|c| c.turn).unwrap_or(0),
            queued_turns: u32::try_from(s.queued.len()).unwrap_or(u32::MAX),
            usage: s.usage,
            last_seq: released_seq,
            turns_completed: s.turns_completed,
            last_turn: s.last_turn,
            live: true,
            pending_tools: s
                .current
                .as_ref()
                .map(|c| {
                    c.tools
                        .iter()
                        .filter(|t| t.result.is_none())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            allowed_tools: s.allowed_tools.clone(),
            client_tools: s.client_tools.clone(),
            max_steps: s.max_steps,
            data_classes: s.data_classes.clone(),
            budget_usd: s.budget_usd,
        }
    }
}
