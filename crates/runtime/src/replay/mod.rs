//! Deterministic replay: a recorded session run again with its recorded
//! model answers, tool results and outside actions (gate decisions, client
//! tool results, cancels), compared record by record with the recording.
//!
//! Files: `source` (the recording as the replay session's [`StepSource`]),
//! `recording` (what the recording did from outside, and the feeder that
//! does it again at the same points), `run` (the replay itself).
//!
//! [`StepSource`]: crate::source::StepSource

mod recording;
#[cfg(test)]
pub(crate) use recording::normalized;
mod run;
mod source;

use baton_types::SessionId;

/// Where a replay first differed from the recording.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Divergence {
    /// Position among the compared records (0-based).
    pub index: u64,
    /// Seq of the recorded record there (None: the replay produced more).
    pub source_seq: Option<u64>,
    /// Seq of the replayed record there (None: the replay produced fewer).
    pub replay_seq: Option<u64>,
    /// The recorded record, as JSON.
    pub expected: String,
    /// The replayed record, as JSON.
    pub actual: String,
}

/// The result of [`crate::RuntimeHandle::replay`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    pub source: SessionId,
    /// The session the replay ran as (kept for inspection).
    pub replay: SessionId,
    pub turns: u64,
    /// Records compared.
    pub compared: u64,
    pub divergence: Option<Divergence>,
    /// Why the replay ended before the recording's last turn, when it did:
    /// a gate or client tool call the recording has no answer for, a
    /// refused recorded decision, or a replay that went silent.
    pub stopped: Option<String>,
}
