//! What the flows API answers with: a flow as listed, a run as read,
//! and a filtered page of runs.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::record::{RunMeta, RunStatus};

/// A flow as `ListFlows` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub steps: usize,
    pub max_active_runs: Option<u32>,
    /// Unfinished runs of it (running, waiting or needing attention).
    pub active_runs: u32,
}

/// One run as `GetRun` shows it.
#[derive(Debug, Clone)]
pub struct RunView {
    pub meta: RunMeta,
    /// The journal's last seq (or the seq it was read at).
    pub seq: u64,
    /// The input it started with.
    pub input: Value,
    /// Completed steps' outputs, by path.
    pub steps: BTreeMap<String, Value>,
    /// Steps started and not finished, by path (attempt).
    pub in_flight: BTreeMap<String, u32>,
    /// Pending timers, by path.
    pub timers: BTreeMap<String, u64>,
    /// Signals received and not consumed: (seq, name).
    pub pending_signals: Vec<(u64, String)>,
    /// The status at `seq` (the record's status when read at the end).
    pub status_at_seq: RunStatus,
}

/// A filter and page of [`Flows::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub flow: Option<String>,
    pub status: Option<RunStatus>,
    /// Default 50, at most 1000.
    pub page_size: u32,
    pub page_token: Option<String>,
}

/// A page of runs.
#[derive(Debug, Clone)]
pub struct RunPage {
    pub runs: Vec<RunMeta>,
    pub next_page_token: Option<String>,
}
