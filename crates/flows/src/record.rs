//! A run's persisted shape: its record (what lists and indexes show) and
//! its journal (the truth, folded on recovery).
//!
//! Both are JSON with a version field: step inputs and outputs are JSON
//! already, and fields added later take serde defaults, so old records
//! keep decoding (golden-bytes tests below pin the format).

use baton_types::Principal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Version written in every record.
pub const RECORD_VERSION: u32 = 1;

/// A run id: a UUIDv7 (time-ordered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub uuid::Uuid);

impl RunId {
    pub fn new() -> RunId {
        RunId(uuid::Uuid::now_v7())
    }

    pub fn bytes(&self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    pub fn from_bytes(b: &[u8]) -> Option<RunId> {
        uuid::Uuid::from_slice(b).ok().map(RunId)
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for RunId {
    type Err = Error;
    fn from_str(s: &str) -> Result<RunId> {
        uuid::Uuid::parse_str(s)
            .map(RunId)
            .map_err(|_| Error::InvalidArgument(format!("{s:?} is not a run id (a UUID)")))
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Executing steps (in memory).
    Running,
    /// Passivated until a time or a signal; costs only its index entries.
    Waiting,
    /// A non-idempotent step may have run before a crash: an operator
    /// decides (cancel, or signal `retry` / `skip`).
    NeedsAttention,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::NeedsAttention => "needs_attention",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "waiting" => RunStatus::Waiting,
            "needs_attention" => RunStatus::NeedsAttention,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// A run's record: what lists, indexes and `GetRun` show without reading
/// the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub v: u32,
    pub id: RunId,
    pub flow: String,
    pub version: String,
    pub tenant: String,
    /// Who started it ([`Principal::label`]).
    pub by: String,
    pub status: RunStatus,
    #[serde(default)]
    pub reason: String,
    pub created_at_unix_ms: u64,
    pub updated_at_unix_ms: u64,
    /// When a waiting run wakes (0: on a signal only).
    #[serde(default)]
    pub wake_at_unix_ms: u64,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The run (and step path) that started this one with a `call` step.
    #[serde(default)]
    pub parent: Option<(RunId, String)>,
    /// How it was started: `grpc`, `embedded`, `webhook:<name>`,
    /// `schedule:<name>`, `queue:<name>`, `flow:<run>`.
    #[serde(default)]
    pub trigger: String,
    #[serde(default)]
    pub last_seq: u64,
    /// The output of a completed run.
    #[serde(default)]
    pub output: Value,
}

/// One journal record of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// The definition it runs (so a later edit of the file changes nothing
    /// for it), its input and who started it.
    RunStarted {
        flow: String,
        version: String,
        definition: Value,
        input: Value,
        principal: Principal,
        #[serde(default)]
        trigger: String,
    },
    /// A step with an effect is about to run (written before the effect).
    StepStarted {
        path: String,
        kind: String,
        input: Value,
        attempt: u32,
    },
    /// A step's output.
    StepCompleted {
        path: String,
        kind: String,
        output: Value,
        /// The signal a `wait` step consumed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal_seq: Option<u64>,
    },
    /// One failed attempt of a step (retried when it has retries left).
    StepFailed {
        path: String,
        kind: String,
        error: String,
        attempt: u32,
    },
    /// A step was skipped because its `if` was false.
    StepSkipped {
        path: String,
    },
    /// A durable timer of a `wait` step: it fires at this time, once.
    TimerSet {
        path: String,
        fire_at_unix_ms: u64,
    },
    /// An external signal (`SignalRun`), kept until a `wait` consumes it.
    SignalReceived {
        name: String,
        payload: Value,
        by: String,
    },
    /// A child run started by a `call` or `emit` step.
    ChildStarted {
        path: String,
        child: RunId,
    },
    /// A step that may have run before a crash cannot be re-run safely.
    NeedsAttention {
        path: String,
        reason: String,
    },
    /// An operator's answer to `needs_attention`: `retry` or `skip`.
    AttentionResolved {
        path: String,
        action: String,
        by: String,
    },
    RunCompleted {
        output: Value,
    },
    RunFailed {
        path: String,
        error: String,
    },
    RunCancelled {
        by: String,
        reason: String,
    },
}

impl RunEvent {
    /// The wire name of the event's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            RunEvent::RunStarted { .. } => "run_started",
            RunEvent::StepStarted { .. } => "step_started",
            RunEvent::StepCompleted { .. } => "step_completed",
            RunEvent::StepFailed { .. } => "step_failed",
            RunEvent::StepSkipped { .. } => "step_skipped",
            RunEvent::TimerSet { .. } => "timer_set",
            RunEvent::SignalReceived { .. } => "signal_received",
            RunEvent::ChildStarted { .. } => "child_started",
            RunEvent::NeedsAttention { .. } => "needs_attention",
            RunEvent::AttentionResolved { .. } => "attention_resolved",
            RunEvent::RunCompleted { .. } => "run_completed",
            RunEvent::RunFailed { .. } => "run_failed",
            RunEvent::RunCancelled { .. } => "run_cancelled",
        }
    }

    /// Whether the run ends with it.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RunEvent::RunCompleted { .. }
                | RunEvent::RunFailed { .. }
                | RunEvent::RunCancelled { .. }
        )
    }
}

/// A journal record as stored and streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub v: u32,
    pub seq: u64,
    pub at_unix_ms: u64,
    #[serde(flatten)]
    pub event: RunEvent,
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these types cannot fail: every map key is a string.
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Internal(format!("undecodable {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes_still_decode() {
        let bytes = br#"{"v":1,"seq":3,"at_unix_ms":1700000000000,"type":"step_completed","path":"classify","kind":"model","output":{"label":"billing"}}"#;
        let r: RunRecord = decode("record", bytes).expect("decodes");
        assert_eq!(r.seq, 3);
        assert_eq!(
            r.event,
            RunEvent::StepCompleted {
                path: "classify".into(),
                kind: "model".into(),
                output: serde_json::json!({"label": "billing"}),
                signal_seq: None
            }
        );
        assert_eq!(encode(&r).as_slice(), &bytes[..]);
        let meta = br#"{"v":1,"id":"0190a5b2-7c4e-7d41-9a6f-1c2d3e4f5a6b","flow":"f","version":"abc","tenant":"default","by":"key:bk_1","status":"waiting","created_at_unix_ms":1,"updated_at_unix_ms":2}"#;
        let m: RunMeta = decode("meta", meta).expect("decodes");
        assert_eq!(m.status, RunStatus::Waiting);
        assert_eq!(m.wake_at_unix_ms, 0);
    }
}
