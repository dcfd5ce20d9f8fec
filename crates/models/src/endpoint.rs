//! [`Endpoint`]: a provider plus the call policy (timeouts, retries, cancellation).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::providers::{
    anthropic::AnthropicProvider, echo::EchoProvider, openai::OpenAiProvider,
    scripted::ScriptedProvider,
};
use crate::{
    Delta, DeltaSink, EndpointConfig, Error, ModelRequest, ModelResponse, Provider, ProviderError,
    ProviderErrorKind, ProviderKind, Result, RetryConfig,
};

/// One configured endpoint: provider + policy. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: EndpointConfig,
    provider: Arc<dyn Provider>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The provider's own Debug redacts its key.
        f.debug_struct("Endpoint")
            .field("name", &self.inner.cfg.name)
            .field("provider", &self.inner.provider)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Validate `cfg`, read its api key (from `api_key_env` or `api_key_file`)
    /// or its script (`script_file`), and build its provider.
    pub fn from_config(cfg: EndpointConfig) -> Result<Endpoint> {
        cfg.validate()?;
        let provider: Arc<dyn Provider> = match cfg.provider {
            ProviderKind::Openai => Arc::new(OpenAiProvider::from_config(&cfg)?),
            ProviderKind::Echo => Arc::new(EchoProvider::new(&cfg)),
            ProviderKind::Scripted => Arc::new(ScriptedProvider::from_config(&cfg)?),
            ProviderKind::Anthropic => Arc::new(AnthropicProvider::from_config(&cfg)?),
        };
        Ok(Self::with_provider(cfg, provider))
    }

    /// An endpoint around a provider built elsewhere (tests, embedders).
    /// `cfg` supplies the name and policy; its provider fields are ignored.
    pub fn with_provider(cfg: EndpointConfig, provider: Arc<dyn Provider>) -> Endpoint {
        Endpoint {
            inner: Arc::new(Inner { cfg, provider }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.inner.cfg
    }

    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.inner.provider
    }

    /// Call the model: attempts with a per-attempt timeout, retried with
    /// exponential backoff and full jitter on transient errors, honouring
    /// `Retry-After` (capped at `max_backoff_ms`). Before retrying an attempt
    /// that had emitted deltas, sends [`Delta::Restart`]. Returns
    /// `Err(Error::Cancelled)` promptly when `cancel` fires, dropping (and so
    /// aborting) the in-flight request.
    pub async fn call(
        &self,
        req: &ModelRequest,
        deltas: Option<&DeltaSink>,
        cancel: &CancellationToken,
    ) -> Result<ModelResponse> {
        let cfg = &self.inner.cfg;
        let max_attempts = cfg.retry.max_attempts.max(1);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let (outcome, emitted) = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                r = self.attempt(req, deltas) => r,
            };
            let err = match outcome {
                Ok(mut resp) => {
                    resp.attempts = attempt;
                    return Ok(resp);
                }
                Err(err) => err,
            };
            if !err.is_transient() || attempt >= max_attempts {
                tracing::warn!(
                    endpoint = %cfg.name, attempt, error = %err,
                    "model call failed"
                );
                return Err(Error::Provider {
                    endpoint: cfg.name.clone(),
                    attempts: attempt,
                    source: err,
                });
            }
            let delay = backoff_delay(&cfg.retry, attempt, err.retry_after());
            tracing::info!(
                endpoint = %cfg.name, attempt, error = %err,
                delay_ms = delay.as_millis() as u64,
                "model call failed, retrying"
            );
            if emitted && let Some(sink) = deltas {
                let _ = sink.send(Delta::Restart);
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Exactly one attempt under the endpoint's timeouts, no retries: what a
    /// router uses, which does the retrying (and the failing over) itself.
    /// `attempts` of the response is 1; a failure is `Error::Provider` with
    /// `attempts: 1` and the provider error (kind, `Retry-After`) inside.
    pub async fn attempt_once(
        &self,
        req: &ModelRequest,
        deltas: Option<&DeltaSink>,
        cancel: &CancellationToken,
    ) -> Result<ModelResponse> {
        // An endpoint configured not to stream answers at the end.
        let deltas = deltas.filter(|_| self.inner.cfg.stream);
        let (outcome, _) = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            r = self.attempt(req, deltas) => r,
        };
        match outcome {
            Ok(mut resp) => {
                resp.attempts = 1;
                Ok(resp)
            }
            Err(source) => Err(Error::Provider {
                endpoint: self.inner.cfg.name.clone(),
                attempts: 1,
                source,
            }),
        }
    }

    /// One attempt under the per-attempt timeout. Deltas pass through a
    /// channel of their own so that we know whether the attempt emitted any.
    async fn attempt(
        &self,
        req: &ModelRequest,
        deltas: Option<&DeltaSink>,
    ) -> (std::result::Result<ModelResponse, ProviderError>, bool) {
        let timeout = Duration::from_millis(self.inner.cfg.timeout_ms);
        let provider = &self.inner.provider;
        let Some(outer) = deltas else {
            let r = run_with_timeout(timeout, provider.complete(req, None)).await;
            return (r, false);
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let attempt = async {
            let tx = tx;
            run_with_timeout(timeout, provider.complete(req, Some(&tx))).await
            // `tx` drops here, which ends the forwarding loop below.
        };
        let forward = async {
            let mut emitted = false;
            while let Some(delta) = rx.recv().await {
                emitted = true;
                let _ = outer.send(delta);
            }
            emitted
        };
        tokio::join!(attempt, forward)
    }
}

async fn run_with_timeout<F>(
    timeout: Duration,
    fut: F,
) -> std::result::Result<ModelResponse, ProviderError>
where
    F: Future<Output = std::result::Result<ModelResponse, ProviderError>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ProviderError::new(
            ProviderErrorKind::Timeout,
            format!("attempt timed out after {} ms", timeout.as_millis()),
        )),
    }
}

/// The wait before retrying after failed attempt number `attempt` (1-based).
///
/// With a `Retry-After`, exactly that, capped at `max_backoff_ms`. Otherwise
/// full jitter: uniform in `[0, min(max_backoff, initial_backoff * 2^(attempt-1))]`.
pub fn backoff_delay(retry: &RetryConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let max = Duration::from_millis(retry.max_backoff_ms);
    if let Some(ra) = retry_after {
        return ra.min(max);
    }
    let exp = attempt.saturating_sub(1).min(63);
    let ceiling = retry
        .initial_backoff_ms
        .saturating_mul(1u64.checked_shl(exp).unwrap_or(u64::MAX))
        .min(retry.max_backoff_ms);
    Duration::from_millis(fastrand::u64(0..=ceiling))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use baton_types::{FinishReason, Message, Usage};
    use tokio::time::Instant;

    use super::*;

    /// Fails with the scripted errors, then answers "ok". Emits one delta per attempt.
    #[derive(Debug)]
    struct Scripted {
        failures: Mutex<Vec<ProviderError>>,
        calls: AtomicU32,
    }

    impl Scripted {
        fn new(mut failures: Vec<ProviderError>) -> Arc<Self> {
            failures.reverse();
            Arc::new(Self {
                failures: Mutex::new(failures),
                calls: AtomicU32::new(0),
            })
        }
    }

    #[async_trait::async_trait]
    impl Provider for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }
        async fn complete(
            &self,
            _req: &ModelRequest,
            deltas: Option<&DeltaSink>,
        ) -> std::result::Result<ModelResponse, ProviderError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(d) = deltas {
                let _ = d.send(Delta::Text(format!("part{n}")));
            }
            let failure = self.failures.lock().unwrap().pop();
            match failure {
                Some(e) if e.kind == ProviderErrorKind::Timeout => {
                    std::future::pending::<()>().await;
                    Err(e)
                }
                Some(e) => Err(e),
                None => Ok(ModelResponse {
                    message: Message::assistant("ok"),
                    usage: Usage::default(),
                    finish_reason: FinishReason::Stop,
                    model: "m".into(),
                    attempts: 0,
                    confidence: None,
                }),
            }
        }
    }

    fn endpoint(provider: Arc<dyn Provider>, retry: RetryConfig) -> Endpoint {
        let mut cfg = crate::echo_default();
        cfg.retry = retry;
        cfg.timeout_ms = 1_000;
        Endpoint::with_provider(cfg, provider)
    }

    fn server_error() -> ProviderError {
        ProviderError::new(ProviderErrorKind::Server { status: 503 }, "unavailable")
    }

    fn retry(max_attempts: u32, initial: u64, max: u64) -> RetryConfig {
        RetryConfig {
            max_attempts,
            initial_backoff_ms: initial,
            max_backoff_ms: max,
        }
    }

    #[test]
    fn full_jitter_stays_within_the_exponential_ceiling() {
        let r = retry(10, 100, 1_000);
        for (attempt, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..500 {
                let d = backoff_delay(&r, attempt, None);
                assert!(
                    d <= Duration::from_millis(ceiling),
                    "attempt {attempt}: {d:?}"
                );
                seen.insert(d);
            }
            // Full jitter spreads the delays; a fixed delay would be a bug.
            assert!(
                seen.len() > 10,
                "attempt {attempt}: only {} values",
                seen.len()
            );
        }
        let huge = retry(u32::MAX, u64::MAX / 2, u64::MAX);
        let _ = backoff_delay(&huge, u32::MAX, None); // no overflow panic
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let r = retry(3, 100, 2_000);
        assert_eq!(
            backoff_delay(&r, 1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            backoff_delay(&r, 1, Some(Duration::from_secs(30))),
            Duration::from_secs(2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_within_backoff_bounds() {
        let p = Scripted::new(vec![server_error(), server_error()]);
        let ep = endpoint(p.clone(), retry(3, 100, 10_000));
        let start = Instant::now();
        let resp = ep
            .call(&ModelRequest::default(), None, &CancellationToken::new())
            .await
            .unwrap();
        let waited = start.elapsed();
        assert_eq!(resp.attempts, 3);
        assert_eq!(p.calls.load(Ordering::SeqCst), 3);
        // Two backoffs: at most 100 ms + 200 ms.
        assert!(waited <= Duration::from_millis(300), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_sets_the_wait_exactly() {
        let limited = ProviderError::new(
            ProviderErrorKind::RateLimited {
                retry_after: Some(Duration::from_secs(3)),
            },
            "slow down",
        );
        let p = Scripted::new(vec![limited]);
        let ep = endpoint(p, retry(3, 10, 60_000));
        let start = Instant::now();
        let resp = ep
            .call(&ModelRequest::default(), None, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(resp.attempts, 2);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn non_transient_errors_are_not_retried() {
        let bad = ProviderError::new(ProviderErrorKind::Client { status: 400 }, "bad request");
        let p = Scripted::new(vec![bad]);
        let ep = endpoint(p.clone(), retry(5, 10, 100));
        let err = ep
            .call(&ModelRequest::default(), None, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.attempts(), Some(1));
        assert_eq!(p.calls.load(Ordering::SeqCst), 1);
        assert!(err.to_string().contains("bad request"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_retries_report_every_attempt() {
        let p = Scripted::new(vec![server_error(), server_error(), server_error()]);
        let ep = endpoint(p.clone(), retry(2, 10, 100));
        let err = ep
            .call(&ModelRequest::default(), None, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.attempts(), Some(2));
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_time_out_and_restart_deltas() {
        let timeout = ProviderError::new(ProviderErrorKind::Timeout, "never");
        let p = Scripted::new(vec![timeout]);
        let ep = endpoint(p, retry(2, 10, 100));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let resp = ep
            .call(
                &ModelRequest::default(),
                Some(&tx),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(resp.attempts, 2);
        assert!(start.elapsed() >= Duration::from_millis(1_000));
        drop(tx);
        let mut got = Vec::new();
        while let Some(d) = rx.recv().await {
            got.push(d);
        }
        assert_eq!(
            got,
            vec![
                Delta::Text("part0".into()),
                Delta::Restart,
                Delta::Text("part1".into())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_map_to_deadline_exceeded() {
        let timeout = || ProviderError::new(ProviderErrorKind::Timeout, "never");
        let p = Scripted::new(vec![timeout()]);
        let ep = endpoint(p, retry(1, 10, 100));
        let err = ep
            .call(&ModelRequest::default(), None, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.code(), baton_types::ErrorCode::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_during_attempt_and_backoff() {
        // During an attempt that would hang until the timeout.
        let p = Scripted::new(vec![ProviderError::new(ProviderErrorKind::Timeout, "x")]);
        let ep = endpoint(p, retry(3, 10, 100));
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.cancel();
        });
        let start = Instant::now();
        let err = ep
            .call(&ModelRequest::default(), None, &cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert_eq!(start.elapsed(), Duration::from_millis(50));

        // During a long Retry-After backoff.
        let limited = ProviderError::new(
            ProviderErrorKind::RateLimited {
                retry_after: Some(Duration::from_secs(60)),
            },
            "slow down",
        );
        let p = Scripted::new(vec![limited]);
        let ep = endpoint(p.clone(), retry(3, 10, 120_000));
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.cancel();
        });
        let err = ep
            .call(&ModelRequest::default(), None, &cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    }
}
