//! What is appended to the log.

/// One thing that happened, to be appended to the log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// What kind of event: `model_call`, `tool_call`, `gate_decision`, …
    pub kind: String,
    /// The session it belongs to, if any.
    pub session_id: Option<String>,
    /// Who did it: an agent, a user, an admin, if known.
    pub actor: Option<String>,
    /// The details.
    pub data: serde_json::Value,
    /// When it happened; `None` means when it is appended.
    pub ts_unix_ms: Option<u64>,
}

impl AuditEvent {
    /// An event of `kind` with `data`, no session or actor, stamped when
    /// appended.
    pub fn new(kind: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            session_id: None,
            actor: None,
            data,
            ts_unix_ms: None,
        }
    }

    /// Sets the session.
    #[must_use]
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Sets the actor.
    #[must_use]
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the timestamp.
    #[must_use]
    pub fn at(mut self, ts_unix_ms: u64) -> Self {
        self.ts_unix_ms = Some(ts_unix_ms);
        self
    }
}
