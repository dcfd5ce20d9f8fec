//! Replaying a run: its flow walked again over its recorded input, with
//! every step that has an effect outside the run (`model`, `agent`, `tool`,
//! `http`, `call`, `emit`) and every `wait` taking its recorded outcome
//! instead of running, and everything else (transforms, conditions,
//! branches, joins, loops, the output) computed again. Nothing is sent,
//! written or audited: the replay's journal lives in memory.
//!
//! Replayed against the run's own version, a replay checks that the run
//! is reproducible from its journal; against the flow's current version,
//! it shows what a changed definition would have done with the same
//! answers — where it first takes another path or computes another value.

use std::sync::Arc;

use baton_types::Principal;
use serde_json::Value;

use crate::def::Flow;
use crate::deps::{Deps, RunCtx};
use crate::exec::{Exec, PassOutcome, Stop};
use crate::log::{Memo, RunLog};
use crate::record::{RunEvent, RunMeta, RunRecord};

/// What a replay found.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    /// The version replayed.
    pub version: String,
    /// Step outputs compared (the recorded run's and the replay's).
    pub compared: usize,
    /// Whether the replay differs from the recording.
    pub diverged: bool,
    /// The first difference, readable (empty when none).
    pub divergence: String,
    /// How the replay ended: `completed`, `failed`, or `stopped` where the
    /// recording ends (the run had not finished).
    pub status: String,
    /// The replay's output when it completed.
    pub output: Value,
}

/// Replay the run whose record is `meta` and whose journal is `journal`
/// (in seq order, its `run_started` first, which `principal` is from),
/// over `flow`.
pub async fn replay(
    deps: Arc<Deps>,
    flow: Arc<Flow>,
    meta: RunMeta,
    principal: Principal,
    journal: &[RunRecord],
) -> ReplayReport {
    let mut recording = Memo::default();
    let mut order = Vec::new();
    for r in journal {
        recording.apply(r.seq, &r.event);
        if let RunEvent::StepCompleted { path, .. } = &r.event {
            order.push(path.clone());
        }
    }
    let recording = Arc::new(recording);
    // The replay starts from the recorded input and nothing done.
    let mut scratch = Memo::default();
    if let Some(started) = &recording.started {
        scratch.apply(1, started);
    }
    let exec = Exec {
        deps,
        ctx: RunCtx {
            run: meta.id,
            principal,
            flow: flow.clone(),
        },
        log: Arc::new(RunLog::scratch(meta.clone(), scratch)),
        replay: Some(recording.clone()),
    };
    let outcome = exec.pass().await;
    let replayed = exec.log.memo().await;
    let (status, output) = match &outcome {
        PassOutcome::Completed(v) => ("completed", v.clone()),
        PassOutcome::Stopped(Stop::Failed { .. }) => ("failed", Value::Null),
        PassOutcome::Stopped(_) => ("stopped", Value::Null),
    };

    // Step by step, in the recorded order, then what only the replay did.
    let mut compared = 0;
    let mut divergence = String::new();
    for path in &order {
        let Some(recorded) = recording.completed.get(path) else {
            continue;
        };
        compared += 1;
        match replayed.completed.get(path) {
            Some(v) if v == recorded => {}
            Some(v) => {
                divergence = format!("step {path:?}: recorded {recorded}, replayed {v}");
                break;
            }
            None => {
                divergence = format!("step {path:?}: recorded, but the replay did not reach it");
                break;
            }
        }
    }
    if divergence.is_empty() {
        let mut extra: Vec<&String> = replayed
            .completed
            .keys()
            .filter(|p| !recording.completed.contains_key(*p))
            .collect();
        extra.sort();
        if let Some(p) = extra.first() {
            divergence = format!("step {p:?}: the replay ran it; the recorded run did not");
        }
    }
    if divergence.is_empty() {
        divergence = match (&recording.terminal, &outcome) {
            (Some(RunEvent::RunCompleted { output: recorded }), PassOutcome::Completed(v))
                if recorded != v =>
            {
                format!("output: recorded {recorded}, replayed {v}")
            }
            (Some(RunEvent::RunCompleted { .. }), PassOutcome::Stopped(stop)) => {
                format!("the recorded run completed; the replay stopped: {stop:?}")
            }
            (Some(RunEvent::RunFailed { .. }), PassOutcome::Completed(_)) => {
                "the recorded run failed; the replay completed".into()
            }
            _ => String::new(),
        };
    }
    ReplayReport {
        version: flow.version.clone(),
        compared,
        diverged: !divergence.is_empty(),
        divergence,
        status: status.into(),
        output,
    }
}
