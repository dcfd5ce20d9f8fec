//! One attempt: a single request through an endpoint's executor pool, under
//! the routed call's deadline and cancellation, forwarding its text deltas.

use std::sync::Arc;
use std::time::Duration;

use baton_metrics::metrics;
use baton_models::{
    Delta, DeltaSink, Error as ModelError, ExecutorHandle, ModelJob, ModelRequest, ModelResponse,
    ProviderError,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How one attempt ended badly.
#[derive(Debug)]
pub(super) enum AttemptError {
    Provider(ProviderError),
    Overloaded(String),
    Stopped(String),
    WorkerFailed(String),
    Deadline,
    Cancelled,
    /// The answer arrived (and was billed) but its text does not match the
    /// JSON Schema the request asked for: a quality failure, retried and
    /// failed over like a transient one.
    Schema(String),
}

impl AttemptError {
    pub(super) fn class(&self) -> &'static str {
        match self {
            AttemptError::Provider(e) => e.class(),
            AttemptError::Overloaded(_) => "overloaded",
            AttemptError::Stopped(_) => "stopped",
            AttemptError::WorkerFailed(_) => "worker_failed",
            AttemptError::Deadline => "timeout",
            AttemptError::Cancelled => "cancelled",
            AttemptError::Schema(_) => "schema_violation",
        }
    }

    pub(super) fn message(&self) -> String {
        match self {
            AttemptError::Provider(e) => e.message.clone(),
            AttemptError::Overloaded(m)
            | AttemptError::Stopped(m)
            | AttemptError::WorkerFailed(m)
            | AttemptError::Schema(m) => m.clone(),
            AttemptError::Deadline => "the routed call's deadline passed during the attempt".into(),
            AttemptError::Cancelled => "cancelled".into(),
        }
    }

    fn from_model(e: ModelError) -> Self {
        match e {
            ModelError::Provider { source, .. } => AttemptError::Provider(source),
            ModelError::Overloaded { .. } => AttemptError::Overloaded(e.to_string()),
            ModelError::Cancelled => AttemptError::Cancelled,
            ModelError::Stopped { .. } | ModelError::Spawn { .. } | ModelError::Config { .. } => {
                AttemptError::Stopped(e.to_string())
            }
            ModelError::WorkerFailed { .. } => AttemptError::WorkerFailed(e.to_string()),
        }
    }
}

/// How one attempt ended.
pub(super) struct AttemptOutcome {
    pub(super) result: Result<ModelResponse, AttemptError>,
    /// Text deltas of this attempt reached the caller.
    pub(super) emitted: bool,
    pub(super) elapsed: Duration,
}

/// Where an attempt's text goes as it streams.
pub(super) trait TextSink: Sync {
    /// Pass `text` on; `true` when (some of) it reached the caller.
    fn text(&self, text: String) -> bool;
}

impl TextSink for DeltaSink {
    fn text(&self, text: String) -> bool {
        self.send(Delta::Text(text)).is_ok()
    }
}

impl TextSink for super::splice::Splice {
    fn text(&self, text: String) -> bool {
        self.push(text)
    }
}

/// One attempt on `handle`, under the deadline, forwarding deltas.
pub(super) async fn run_attempt(
    handle: &ExecutorHandle,
    request: &Arc<ModelRequest>,
    forward: Option<&dyn TextSink>,
    cancel: &CancellationToken,
    deadline: Option<Instant>,
) -> AttemptOutcome {
    let started = Instant::now();
    let child = cancel.child_token();
    // Dropped early (deadline, cancel, the caller went away): abort the job.
    let _abort = child.clone().drop_guard();
    let (tx, mut rx) = match forward {
        Some(_) => {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let (job, reply) = ModelJob::new(request.clone(), tx, child.clone());
    if let Err(e) = handle.submit(job) {
        return AttemptOutcome {
            result: Err(AttemptError::from_model(e)),
            emitted: false,
            elapsed: started.elapsed(),
        };
    }
    let endpoint = handle.endpoint().name();
    let mut emitted = false;
    let pass_on = |d: Delta, emitted: &mut bool| {
        if let (Delta::Text(t), Some(sink)) = (d, forward)
            && sink.text(t)
        {
            if !*emitted {
                metrics().time_to_first_token(endpoint, started.elapsed().as_secs_f64());
            }
            *emitted = true;
        }
    };
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    tokio::pin!(reply);
    let result = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Err(AttemptError::Cancelled),
            _ = &mut until_deadline => break Err(AttemptError::Deadline),
            Some(d) = async {
                match rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => pass_on(d, &mut emitted),
            r = &mut reply => {
                if let Some(rx) = rx.as_mut() {
                    while let Ok(d) = rx.try_recv() {
                        pass_on(d, &mut emitted);
                    }
                }
                break match r {
                    Ok(Ok(resp)) => Ok(resp),
                    Ok(Err(e)) => Err(AttemptError::from_model(e)),
                    Err(_) => Err(AttemptError::Stopped(format!("endpoint {endpoint} is stopped"))),
                };
            }
        }
    };
    AttemptOutcome {
        result,
        emitted,
        elapsed: started.elapsed(),
    }
}
