//! [`Endpoint`]: a provider plus the policy of one attempt (timeouts,
//! cancellation). Retries are the router's.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::providers::{
    anthropic::AnthropicProvider, echo::EchoProvider, openai::OpenAiProvider,
    scripted::ScriptedProvider,
};
use crate::{
    DeltaSink, EndpointConfig, Error, ModelRequest, ModelResponse, Provider, ProviderError,
    ProviderErrorKind, ProviderKind, Result,
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

    /// Exactly one attempt under the endpoint's timeouts, streaming text
    /// deltas into `deltas` when given and the endpoint streams (one that
    /// does not answers at the end). There are no retries here: retrying,
    /// backoff and failover are the router's (`baton-routing`), which makes
    /// every attempt through this. `attempts` of the response is 1; a failure
    /// is `Error::Provider` with the provider error (kind, `Retry-After`)
    /// inside. Returns `Err(Error::Cancelled)` promptly when `cancel` fires,
    /// dropping (and so aborting) the in-flight request.
    pub async fn attempt_once(
        &self,
        req: &ModelRequest,
        deltas: Option<&DeltaSink>,
        cancel: &CancellationToken,
    ) -> Result<ModelResponse> {
        // An endpoint configured not to stream answers at the end.
        let deltas = deltas.filter(|_| self.inner.cfg.stream);
        let timeout = Duration::from_millis(self.inner.cfg.timeout_ms);
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            r = run_with_timeout(timeout, async {
                match &req.embed {
                    Some(_) => self.inner.provider.embed(req).await,
                    None => self.inner.provider.complete(req, deltas).await,
                }
            }) => r,
        };
        match outcome {
            Ok(mut resp) => {
                resp.attempts = 1;
                Ok(resp)
            }
            Err(source) => Err(Error::Provider {
                endpoint: self.inner.cfg.name.clone(),
                source,
            }),
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use baton_types::{FinishReason, Message, Usage};
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::*;
    use crate::Delta;

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
                    embeddings: None,
                }),
            }
        }
    }

    fn endpoint(provider: Arc<dyn Provider>) -> Endpoint {
        let mut cfg = crate::echo_default();
        cfg.timeout_ms = 1_000;
        Endpoint::with_provider(cfg, provider)
    }

    async fn once(ep: &Endpoint) -> Result<ModelResponse> {
        ep.attempt_once(&ModelRequest::default(), None, &CancellationToken::new())
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn one_attempt_answers_or_fails_with_the_provider_error() {
        let p = Scripted::new(vec![]);
        let resp = once(&endpoint(p.clone())).await.unwrap();
        assert_eq!(resp.attempts, 1);
        assert_eq!(resp.message.content, "ok");

        let bad = ProviderError::new(ProviderErrorKind::Client { status: 400 }, "bad request");
        let p = Scripted::new(vec![bad.clone()]);
        let err = once(&endpoint(p.clone())).await.unwrap_err();
        assert_eq!(p.calls.load(Ordering::SeqCst), 1);
        assert_eq!(err.provider_error(), Some(&bad));
        assert!(err.to_string().contains("bad request"), "{err}");

        // The provider's Retry-After reaches the caller, which does the waiting.
        let limited = ProviderError::new(
            ProviderErrorKind::RateLimited {
                retry_after: Some(Duration::from_secs(3)),
            },
            "slow down",
        );
        let p = Scripted::new(vec![limited]);
        let start = Instant::now();
        let err = once(&endpoint(p)).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::ZERO, "no waiting here");
        assert_eq!(
            err.provider_error().unwrap().retry_after(),
            Some(Duration::from_secs(3))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_times_out_after_timeout_ms_keeping_its_deltas() {
        let timeout = ProviderError::new(ProviderErrorKind::Timeout, "never");
        let p = Scripted::new(vec![timeout]);
        let ep = endpoint(p);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let err = ep
            .attempt_once(
                &ModelRequest::default(),
                Some(&tx),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_millis(1_000));
        let source = err.provider_error().unwrap();
        assert_eq!(source.kind, ProviderErrorKind::Timeout);
        assert_eq!(source.message, "attempt timed out after 1000 ms");
        drop(tx);
        let mut got = Vec::new();
        while let Some(d) = rx.recv().await {
            got.push(d);
        }
        // What the attempt emitted, and no restart: retracting is the router's.
        assert_eq!(got, vec![Delta::Text("part0".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_streaming_endpoint_sends_no_deltas() {
        let mut cfg = crate::echo_default();
        cfg.stream = false;
        let ep = Endpoint::with_provider(cfg, Scripted::new(vec![]));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let resp = ep
            .attempt_once(
                &ModelRequest::default(),
                Some(&tx),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(resp.message.content, "ok");
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_map_to_deadline_exceeded() {
        let timeout = ProviderError::new(ProviderErrorKind::Timeout, "never");
        let err = once(&endpoint(Scripted::new(vec![timeout])))
            .await
            .unwrap_err();
        assert_eq!(err.code(), baton_types::ErrorCode::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_an_attempt_promptly() {
        // An attempt that would hang until the timeout.
        let p = Scripted::new(vec![ProviderError::new(ProviderErrorKind::Timeout, "x")]);
        let ep = endpoint(p);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.cancel();
        });
        let start = Instant::now();
        let err = ep
            .attempt_once(&ModelRequest::default(), None, &cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }
}
