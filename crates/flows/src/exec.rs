//! One pass of a run: the interpreter over the flow's steps.
//!
//! A pass starts from the run's input and walks the steps. A step whose
//! outcome the journal already holds is not run again: its recorded output
//! is used (so a pass after a crash or a wake-up replays what is done in
//! memory and carries on from the first step not done). Control flow is a
//! pure function of recorded outputs, so every pass takes the same path.
//!
//! A pass ends with the run's output, a failure, a step that needs an
//! operator, or a suspension: a timer or a signal to wait for. The run's
//! actor decides what happens next (see [`crate::actor`]).
//!
//! Scopes: the data of a step is `{input, vars, steps, run}`, plus `item` and
//! `index` inside a `map`, and `attempt` inside a `retry`. Steps inside a
//! branch, case, item or attempt see the outer steps' outputs and their
//! own siblings'; outside it only the composite step's output is visible.

use std::sync::Arc;
use std::time::Duration;

use baton_types::now_unix_ms;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{Value, json};

use crate::def::{Step, StepKind, WaitStep};
use crate::deps::{Deps, RunCtx};
use crate::effects::{self, Outcome};
use crate::log::{Memo, RunLog};
use crate::record::{RunEvent, RunId, RunMeta, RunStatus};
use crate::spec::{JoinSpec, OnError};

/// Why a pass stopped before the end.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// A step failed (after its retries).
    Failed { path: String, error: String },
    /// Waiting: until a time (`Some`), or for a signal or a child (`None`).
    Suspend { wake_at: Option<u64> },
    /// A non-idempotent step may have run before a crash.
    Attention { path: String, reason: String },
    /// The journal could not be written: the pass is abandoned.
    Internal(String),
}

/// The end of a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum PassOutcome {
    Completed(Value),
    Stopped(Stop),
}

type Res<T> = Result<T, Stop>;

/// Longest backoff between attempts of a failing step.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A run being executed.
pub struct Exec {
    pub deps: Arc<Deps>,
    pub ctx: RunCtx,
    pub log: Arc<RunLog>,
    /// A replay: steps with an effect outside the run (and waits) take
    /// their outcome from this fold of the recorded journal instead of
    /// running; the others are computed again.
    pub replay: Option<Arc<Memo>>,
}

fn internal(e: crate::error::Error) -> Stop {
    Stop::Internal(e.to_string())
}

fn fail(path: &str, error: impl Into<String>) -> Stop {
    Stop::Failed {
        path: path.to_string(),
        error: error.into(),
    }
}

/// The earliest of two wake-ups (`None`: no time, a signal).
fn earliest(a: Option<Option<u64>>, b: Option<u64>) -> Option<Option<u64>> {
    Some(match a {
        None => b,
        Some(None) => b,
        Some(Some(x)) => Some(b.map_or(x, |y| x.min(y))),
    })
}

impl Exec {
    /// Run the flow from the start, replaying what the journal holds.
    pub async fn pass(&self) -> PassOutcome {
        let input = self
            .log
            .with_memo(|m| match &m.started {
                Some(RunEvent::RunStarted { input, .. }) => input.clone(),
                _ => Value::Null,
            })
            .await;
        let data = json!({
            "input": input,
            "vars": self.deps.vars,
            "steps": {},
            "run": { "id": self.ctx.run.to_string(), "flow": self.ctx.flow.name },
        });
        let steps = self.ctx.flow.steps.clone();
        match self.steps(&steps, data, String::new()).await {
            Ok((data, last)) => match &self.ctx.flow.output {
                Some(e) => match e.eval(&data) {
                    Ok(v) => PassOutcome::Completed(v),
                    Err(err) => PassOutcome::Stopped(fail("output", err)),
                },
                None => PassOutcome::Completed(last),
            },
            Err(stop) => PassOutcome::Stopped(stop),
        }
    }

    fn steps<'a>(
        &'a self,
        steps: &'a [Step],
        mut data: Value,
        prefix: String,
    ) -> BoxFuture<'a, Res<(Value, Value)>> {
        Box::pin(async move {
            let mut last = Value::Null;
            for step in steps {
                let path = format!("{prefix}{}", step.id);
                let out = self.step(step, &data, &path).await?;
                if let Some(map) = data.get_mut("steps").and_then(Value::as_object_mut) {
                    map.insert(step.id.clone(), out.clone());
                }
                last = out;
            }
            Ok((data, last))
        })
    }

    async fn step(&self, step: &Step, data: &Value, path: &str) -> Res<Value> {
        let (done, skipped) = self
            .log
            .with_memo(|m| (m.completed.get(path).cloned(), m.skipped.contains(path)))
            .await;
        if let Some(v) = done {
            return Ok(v);
        }
        if skipped {
            return Ok(Value::Null);
        }
        if let Some(cond) = &step.when {
            match cond.test(data) {
                Ok(true) => {}
                Ok(false) => {
                    self.log
                        .append(
                            RunEvent::StepSkipped {
                                path: path.to_string(),
                            },
                            false,
                        )
                        .await
                        .map_err(internal)?;
                    return Ok(Value::Null);
                }
                Err(e) => return Err(fail(path, format!("if: {e}"))),
            }
        }
        let kind = step.kind.name().as_str();
        let result = match &step.kind {
            StepKind::Transform { expr } => expr.eval(data).map_err(|e| fail(path, e)),
            StepKind::Switch { cases, default } => self.switch(cases, default, data, path).await,
            StepKind::Parallel {
                branches,
                join,
                merge,
            } => {
                self.parallel(branches, *join, merge.as_ref(), data, path)
                    .await
            }
            StepKind::Map {
                over,
                steps,
                concurrency,
            } => self.map(over, steps, *concurrency, data, path).await,
            StepKind::Retry {
                steps,
                until,
                max_attempts,
                attempts,
            } => {
                self.retry(steps, until, *max_attempts, attempts, data, path)
                    .await
            }
            // A replay takes these from the recording.
            StepKind::Wait(_)
            | StepKind::Gate(_)
            | StepKind::Model(_)
            | StepKind::Agent(_)
            | StepKind::Tool { .. }
            | StepKind::Http(_)
            | StepKind::Call { .. }
            | StepKind::Emit { .. }
                if self.replay.is_some() =>
            {
                let recording = self.replay.clone().unwrap_or_default();
                return self
                    .or_continue(step, path, self.recorded(&recording, step, path).await)
                    .await;
            }
            // These journal their own outcome.
            StepKind::Wait(w) => {
                return self
                    .or_continue(step, path, self.wait(w, data, path).await)
                    .await;
            }
            _ => {
                return self
                    .or_continue(step, path, self.effect(step, data, path).await)
                    .await;
            }
        };
        let result = self.or_continue(step, path, result).await?;
        self.complete(path, kind, result.clone(), None, false)
            .await?;
        Ok(result)
    }

    /// `on_error = "continue"`: a failure becomes the output `{"error": ...}`.
    async fn or_continue(&self, step: &Step, path: &str, r: Res<Value>) -> Res<Value> {
        match r {
            Err(Stop::Failed { error, .. }) if step.on_error == OnError::Continue => {
                let out = json!({ "error": error });
                self.complete(path, step.kind.name().as_str(), out.clone(), None, false)
                    .await?;
                Ok(out)
            }
            other => other,
        }
    }

    async fn complete(
        &self,
        path: &str,
        kind: &str,
        output: Value,
        signal_seq: Option<u64>,
        sync: bool,
    ) -> Res<()> {
        self.log
            .append(
                RunEvent::StepCompleted {
                    path: path.to_string(),
                    kind: kind.to_string(),
                    output,
                    signal_seq,
                },
                sync,
            )
            .await
            .map(|_| ())
            .map_err(internal)
    }

    async fn switch(
        &self,
        cases: &[(crate::expr::Expr, Vec<Step>)],
        default: &[Step],
        data: &Value,
        path: &str,
    ) -> Res<Value> {
        for (i, (when, steps)) in cases.iter().enumerate() {
            match when.test(data) {
                Ok(true) => {
                    let (_, last) = self
                        .steps(steps, data.clone(), format!("{path}/{i}/"))
                        .await?;
                    return Ok(last);
                }
                Ok(false) => {}
                Err(e) => return Err(fail(path, format!("cases[{i}].when: {e}"))),
            }
        }
        if default.is_empty() {
            return Ok(Value::Null);
        }
        let (_, last) = self
            .steps(default, data.clone(), format!("{path}/default/"))
            .await?;
        Ok(last)
    }

    async fn parallel(
        &self,
        branches: &[(String, Vec<Step>)],
        join: JoinSpec,
        merge: Option<&crate::expr::Expr>,
        data: &Value,
        path: &str,
    ) -> Res<Value> {
        let need = match join {
            JoinSpec::All => branches.len(),
            JoinSpec::Any => 1,
            JoinSpec::First(n) => n as usize,
        };
        let mut running: FuturesUnordered<_> = branches
            .iter()
            .map(|(name, steps)| {
                let d = data.clone();
                let prefix = format!("{path}/{name}/");
                async move { (name.clone(), self.steps(steps, d, prefix).await) }
            })
            .collect();
        let mut done = serde_json::Map::new();
        let mut suspend: Option<Option<u64>> = None;
        let mut failure: Option<Stop> = None;
        while let Some((name, r)) = running.next().await {
            match r {
                Ok((_, last)) => {
                    done.insert(name, last);
                    if done.len() >= need {
                        break;
                    }
                }
                Err(Stop::Suspend { wake_at }) => suspend = earliest(suspend, wake_at),
                Err(stop @ (Stop::Attention { .. } | Stop::Internal(_))) => return Err(stop),
                Err(stop @ Stop::Failed { .. }) => {
                    if join == JoinSpec::All {
                        return Err(stop);
                    }
                    failure.get_or_insert(stop);
                }
            }
        }
        // Branches still running when the join is met are cancelled here.
        drop(running);
        if done.len() < need {
            if let Some(wake_at) = suspend {
                return Err(Stop::Suspend { wake_at });
            }
            return Err(match failure {
                Some(Stop::Failed { error, .. }) => fail(
                    path,
                    format!(
                        "{} of {need} branches finished; a branch failed: {error}",
                        done.len()
                    ),
                ),
                _ => fail(path, format!("{} of {need} branches finished", done.len())),
            });
        }
        let out = Value::Object(done);
        match merge {
            Some(e) => e
                .eval(&json!({ "branches": out, "input": data.get("input"), "steps": data.get("steps") }))
                .map_err(|err| fail(path, format!("merge: {err}"))),
            None => Ok(out),
        }
    }

    async fn map(
        &self,
        over: &crate::expr::Expr,
        steps: &[Step],
        concurrency: u32,
        data: &Value,
        path: &str,
    ) -> Res<Value> {
        let items = match over.eval(data) {
            Ok(Value::Array(items)) => items,
            Ok(other) => {
                return Err(fail(
                    path,
                    format!("over: expected a list, got {}", type_name(&other)),
                ));
            }
            Err(e) => return Err(fail(path, format!("over: {e}"))),
        };
        let max = self.deps.config.max_map_items;
        if items.len() > max {
            return Err(fail(
                path,
                format!(
                    "over: {} items; the limit is {max} (flows.max_map_items)",
                    items.len()
                ),
            ));
        }
        let results: Vec<Res<Value>> =
            futures::stream::iter(items.into_iter().enumerate().map(|(i, item)| {
                let mut d = data.clone();
                if let Some(o) = d.as_object_mut() {
                    o.insert("item".into(), item);
                    o.insert("index".into(), json!(i));
                }
                let prefix = format!("{path}[{i}]/");
                async move { self.steps(steps, d, prefix).await.map(|(_, last)| last) }
            }))
            .buffered(concurrency as usize)
            .collect()
            .await;
        let mut out = Vec::with_capacity(results.len());
        let mut suspend: Option<Option<u64>> = None;
        for r in results {
            match r {
                Ok(v) => out.push(v),
                Err(Stop::Suspend { wake_at }) => suspend = earliest(suspend, wake_at),
                Err(stop) => return Err(stop),
            }
        }
        if let Some(wake_at) = suspend {
            return Err(Stop::Suspend { wake_at });
        }
        Ok(Value::Array(out))
    }

    async fn retry(
        &self,
        steps: &[Step],
        until: &crate::expr::Expr,
        max_attempts: u32,
        attempts: &[Value],
        data: &Value,
        path: &str,
    ) -> Res<Value> {
        let mut last_error = String::new();
        for n in 1..=max_attempts {
            let apath = format!("{path}#{n}");
            let failed = self
                .log
                .with_memo(|m| m.failures.get(&apath).copied().unwrap_or(0))
                .await;
            if failed > 0 {
                continue;
            }
            let params = attempts
                .get(n as usize - 1)
                .or(attempts.last())
                .cloned()
                .unwrap_or(Value::Null);
            let mut d = data.clone();
            if let Some(o) = d.as_object_mut() {
                o.insert("attempt".into(), json!({ "n": n, "params": params }));
            }
            let error = match self.steps(steps, d, format!("{apath}/")).await {
                Ok((d2, last)) => match until.test(&d2) {
                    Ok(true) => return Ok(last),
                    Ok(false) => format!("the quality check `{}` did not pass", until.source()),
                    Err(e) => return Err(fail(path, format!("until: {e}"))),
                },
                Err(Stop::Failed { error, .. }) => error,
                Err(other) => return Err(other),
            };
            self.log
                .append(
                    RunEvent::StepFailed {
                        path: apath,
                        kind: "retry".into(),
                        error: error.clone(),
                        attempt: n,
                    },
                    false,
                )
                .await
                .map_err(internal)?;
            last_error = error;
        }
        Err(fail(
            path,
            format!("no attempt of {max_attempts} passed; the last: {last_error}"),
        ))
    }

    /// A durable timer at `path`: its time, set (and journaled) the first
    /// time the step is reached.
    async fn timer(&self, path: &str, at: impl FnOnce() -> Result<u64, String>) -> Res<u64> {
        if let Some(t) = self.log.with_memo(|m| m.timers.get(path).copied()).await {
            return Ok(t);
        }
        let t = at().map_err(|e| fail(path, e))?;
        self.log
            .append(
                RunEvent::TimerSet {
                    path: path.to_string(),
                    fire_at_unix_ms: t,
                },
                true,
            )
            .await
            .map_err(internal)?;
        Ok(t)
    }

    /// A replay's outcome of a step with an effect or a wait: the recorded
    /// output, the recorded failure, or the end of the recording.
    async fn recorded(&self, recording: &Memo, step: &Step, path: &str) -> Res<Value> {
        let kind = step.kind.name().as_str();
        if let Some(v) = recording.completed.get(path) {
            self.complete(path, kind, v.clone(), None, false).await?;
            return Ok(v.clone());
        }
        let failures = recording.failures.get(path).copied().unwrap_or(0);
        if failures > step.retries {
            return Err(fail(
                path,
                format!("failed in the recording ({failures} attempts)"),
            ));
        }
        // The recorded run had not finished this step.
        Err(Stop::Suspend { wake_at: None })
    }

    async fn wait(&self, w: &WaitStep, data: &Value, path: &str) -> Res<Value> {
        let now = now_unix_ms();
        match w {
            WaitStep::For(d) => {
                let at = self
                    .timer(path, || Ok(now.saturating_add(d.as_millis() as u64)))
                    .await?;
                self.fire(path, at, now).await
            }
            WaitStep::Until(e) => {
                let at = self.timer(path, || wake_time(e, data)).await?;
                self.fire(path, at, now).await
            }
            WaitStep::Signal { name, timeout } => {
                if let Some((seq, payload)) = self.log.with_memo(|m| m.next_signal(name)).await {
                    let out = json!({ "signal": name, "payload": payload });
                    self.complete(path, "wait", out.clone(), Some(seq), true)
                        .await?;
                    return Ok(out);
                }
                match timeout {
                    Some(t) => {
                        let at = self
                            .timer(path, || Ok(now.saturating_add(t.as_millis() as u64)))
                            .await?;
                        if now >= at {
                            let out = json!({ "signal": name, "timed_out": true });
                            self.complete(path, "wait", out.clone(), None, true).await?;
                            Ok(out)
                        } else {
                            Err(Stop::Suspend { wake_at: Some(at) })
                        }
                    }
                    None => Err(Stop::Suspend { wake_at: None }),
                }
            }
        }
    }

    /// A timer that has fired completes its step (once: the completion is
    /// journaled); one that has not suspends the run.
    async fn fire(&self, path: &str, at: u64, now: u64) -> Res<Value> {
        if now < at {
            return Err(Stop::Suspend { wake_at: Some(at) });
        }
        let out = json!({ "fired_at_unix_ms": at });
        self.complete(path, "wait", out.clone(), None, true).await?;
        Ok(out)
    }

    async fn effect(&self, step: &Step, data: &Value, path: &str) -> Res<Value> {
        let kind = step.kind.name().as_str();
        loop {
            let (in_flight, failures, resolved, child, attention) = self
                .log
                .with_memo(|m| {
                    (
                        m.in_flight.get(path).copied(),
                        m.failures.get(path).copied().unwrap_or(0),
                        m.resolved.get(path).cloned(),
                        m.children.get(path).copied(),
                        m.attention.clone(),
                    )
                })
                .await;
            if let Some(child) = child {
                return self.await_child(path, child).await;
            }
            let attempt = failures + 1;
            let input = effects::prepare(step, data).map_err(|e| fail(path, e))?;
            let idempotent = effects::idempotent(&self.deps, step);
            if in_flight.is_some() && !idempotent {
                match resolved.as_deref() {
                    Some("skip") => {
                        self.complete(path, kind, Value::Null, None, true).await?;
                        return Ok(Value::Null);
                    }
                    Some("retry") => {}
                    _ => {
                        let reason = format!(
                            "the {kind} step {path:?} may have run before a crash and is not idempotent: signal `retry` or `skip`, or cancel the run"
                        );
                        if attention.as_deref() != Some(path) {
                            self.log
                                .append(
                                    RunEvent::NeedsAttention {
                                        path: path.to_string(),
                                        reason: reason.clone(),
                                    },
                                    true,
                                )
                                .await
                                .map_err(internal)?;
                        }
                        return Err(Stop::Attention {
                            path: path.to_string(),
                            reason,
                        });
                    }
                }
            }
            // A gate looked at again (woken, or after a restart) is still
            // the same attempt.
            let gate_again = in_flight.is_some() && matches!(step.kind, StepKind::Gate(_));
            if !gate_again {
                self.log
                    .append(
                        RunEvent::StepStarted {
                            path: path.to_string(),
                            kind: kind.to_string(),
                            input: input.clone(),
                            attempt,
                        },
                        !idempotent,
                    )
                    .await
                    .map_err(internal)?;
            }
            match effects::perform(&self.deps, &self.ctx, step, path, attempt, &input).await {
                Ok(Outcome::Pending) => {
                    return Err(Stop::Suspend {
                        wake_at: Some(now_unix_ms().saturating_add(effects::GATE_RECHECK_MS)),
                    });
                }
                Ok(Outcome::Later(why)) => {
                    tracing::info!(run = %self.ctx.run, step = path, reason = %why, "the runtime refused the step for now; trying again later");
                    return Err(Stop::Suspend {
                        wake_at: Some(now_unix_ms().saturating_add(effects::REFUSED_RETRY_MS)),
                    });
                }
                Ok(Outcome::Done(v)) => {
                    self.complete(path, kind, v.clone(), None, !idempotent)
                        .await?;
                    return Ok(v);
                }
                Ok(Outcome::Child(id)) => {
                    self.log
                        .append(
                            RunEvent::ChildStarted {
                                path: path.to_string(),
                                child: id,
                            },
                            true,
                        )
                        .await
                        .map_err(internal)?;
                    return self.await_child(path, id).await;
                }
                Err(error) => {
                    self.log
                        .append(
                            RunEvent::StepFailed {
                                path: path.to_string(),
                                kind: kind.to_string(),
                                error: error.clone(),
                                attempt,
                            },
                            false,
                        )
                        .await
                        .map_err(internal)?;
                    if attempt > step.retries {
                        return Err(fail(path, error));
                    }
                    let backoff =
                        Duration::from_millis(200u64.saturating_mul(1 << attempt.min(10)))
                            .min(MAX_BACKOFF);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// A `call` step's child: its output once it has completed.
    async fn await_child(&self, path: &str, child: RunId) -> Res<Value> {
        let meta = match self.deps.store.load_run(child.bytes()).await {
            Ok(Some(bytes)) => {
                crate::record::decode::<RunMeta>("run record", &bytes).map_err(internal)?
            }
            Ok(None) => return Err(fail(path, format!("child run {child} is gone"))),
            Err(e) => return Err(Stop::Internal(e.to_string())),
        };
        match meta.status {
            RunStatus::Completed => {
                self.complete(path, "call", meta.output.clone(), None, false)
                    .await?;
                Ok(meta.output)
            }
            RunStatus::Failed | RunStatus::Cancelled => Err(fail(
                path,
                format!(
                    "child run {child} {}: {}",
                    meta.status.as_str(),
                    meta.reason
                ),
            )),
            _ => Err(Stop::Suspend { wake_at: None }),
        }
    }
}

/// The time a `wait until` expression gives: unix ms, or RFC 3339 text.
fn wake_time(e: &crate::expr::Expr, data: &Value) -> Result<u64, String> {
    match e.eval(data)? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
            .ok_or_else(|| "until: not a time".to_string()),
        Value::String(s) => s
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond().max(0) as u64)
            .map_err(|err| format!("until: {s:?} is not an RFC 3339 time: {err}")),
        other => Err(format!(
            "until: expected unix milliseconds or RFC 3339 text, got {}",
            type_name(&other)
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
