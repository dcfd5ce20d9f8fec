//! The executor of one endpoint: a pool actor supervising `max_concurrency`
//! linked worker actors, each making one attempt
//! ([`Endpoint::attempt_once`]) at a time, with a bounded queue in front. A worker that panics is replaced and its caller
//! gets [`Error::WorkerFailed`]; a call is never left without a reply.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::FutureExt;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{DeltaSink, Endpoint, EndpointConfig, Error, ModelRequest, ModelResponse, Result};

/// One attempt for an executor: the request, where deltas go, how to cancel
/// it and where the result goes. The executor never retries: the router does.
pub struct ModelJob {
    /// Shared, not copied: a router retrying or failing over hands the same
    /// request to several attempts.
    pub request: Arc<ModelRequest>,
    pub deltas: Option<DeltaSink>,
    pub cancel: CancellationToken,
    pub reply: oneshot::Sender<Result<ModelResponse>>,
}

impl ModelJob {
    /// A job and the receiver of its result.
    pub fn new(
        request: impl Into<Arc<ModelRequest>>,
        deltas: Option<DeltaSink>,
        cancel: CancellationToken,
    ) -> (ModelJob, oneshot::Receiver<Result<ModelResponse>>) {
        let (reply, rx) = oneshot::channel();
        (
            ModelJob {
                request: request.into(),
                deltas,
                cancel,
                reply,
            },
            rx,
        )
    }
}

impl fmt::Debug for ModelJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelJob")
            .field("messages", &self.request.messages.len())
            .field("streaming", &self.deltas.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Counters {
    /// Accepted and not yet answered: the admission count.
    outstanding: AtomicUsize,
    queued: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Counters {
    fn dec(counter: &AtomicUsize) {
        let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// Delivers a job's result exactly once. Dropped without a result (the
/// worker was killed, or the job was lost with its message), it answers
/// `Error::Stopped`; either way it settles the counters.
struct ReplyGuard {
    tx: Option<oneshot::Sender<Result<ModelResponse>>>,
    counters: Arc<Counters>,
    endpoint: String,
}

impl ReplyGuard {
    fn send(mut self, result: Result<ModelResponse>) {
        self.settle(result);
    }

    fn settle(&mut self, result: Result<ModelResponse>) {
        if let Some(tx) = self.tx.take() {
            Counters::dec(&self.counters.in_flight);
            Counters::dec(&self.counters.outstanding);
            let _ = tx.send(result);
        }
    }
}

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        let endpoint = self.endpoint.clone();
        self.settle(Err(Error::Stopped { endpoint }));
    }
}

/// A job handed to a worker.
struct Assigned {
    request: Arc<ModelRequest>,
    deltas: Option<DeltaSink>,
    cancel: CancellationToken,
    reply: ReplyGuard,
}

enum PoolMsg {
    Submit(ModelJob),
    Done(ActorId),
}

struct Pool;

struct PoolState {
    endpoint: Endpoint,
    counters: Arc<Counters>,
    idle: Vec<ActorRef<Assigned>>,
    busy: HashMap<ActorId, ActorRef<Assigned>>,
    queue: VecDeque<ModelJob>,
}

impl PoolState {
    fn name(&self) -> String {
        self.endpoint.name().to_string()
    }

    /// Start queued jobs on idle workers.
    fn dispatch(&mut self) {
        while let Some(worker) = self.idle.pop() {
            let Some(job) = self.queue.pop_front() else {
                self.idle.push(worker);
                return;
            };
            Counters::dec(&self.counters.queued);
            self.counters.in_flight.fetch_add(1, Ordering::SeqCst);
            let assigned = Assigned {
                request: job.request,
                deltas: job.deltas,
                cancel: job.cancel,
                reply: ReplyGuard {
                    tx: Some(job.reply),
                    counters: self.counters.clone(),
                    endpoint: self.name(),
                },
            };
            let id = worker.get_id();
            if let Err(e) = worker.send_message(assigned) {
                // The worker is gone and its supervision event will replace
                // it; dropping the returned message's guard answers the caller.
                tracing::warn!(endpoint = %self.name(), "model worker unreachable: {e}");
                continue;
            }
            self.busy.insert(id, worker);
        }
    }

    async fn spawn_worker(&self, pool: &ActorRef<PoolMsg>) -> Result<ActorRef<Assigned>> {
        let (worker, _) = Actor::spawn_linked(
            None,
            Worker,
            (self.endpoint.clone(), pool.clone()),
            pool.get_cell(),
        )
        .await
        .map_err(|e| Error::Spawn {
            endpoint: self.name(),
            reason: e.to_string(),
        })?;
        Ok(worker)
    }

    fn fail_queued(&mut self) {
        for job in self.queue.drain(..) {
            Counters::dec(&self.counters.queued);
            Counters::dec(&self.counters.outstanding);
            let _ = job.reply.send(Err(Error::Stopped {
                endpoint: self.endpoint.name().to_string(),
            }));
        }
    }
}

impl Actor for Pool {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = (Endpoint, Arc<Counters>);

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        (endpoint, counters): Self::Arguments,
    ) -> std::result::Result<PoolState, ActorProcessingErr> {
        let mut state = PoolState {
            endpoint,
            counters,
            idle: Vec::new(),
            busy: HashMap::new(),
            queue: VecDeque::new(),
        };
        for _ in 0..state.endpoint.config().max_concurrency {
            let worker = state.spawn_worker(&myself).await?;
            state.idle.push(worker);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Submit(job) => state.queue.push_back(job),
            PoolMsg::Done(id) => {
                if let Some(worker) = state.busy.remove(&id) {
                    state.idle.push(worker);
                }
            }
        }
        state.dispatch();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let was_busy = state.busy.remove(&id).is_some();
        state.idle.retain(|w| w.get_id() != id);
        tracing::error!(
            endpoint = %state.name(), was_busy, reason = %why,
            "model worker exited, replacing it"
        );
        match state.spawn_worker(&myself).await {
            Ok(worker) => state.idle.push(worker),
            Err(e) => tracing::error!(endpoint = %state.name(), "cannot replace model worker: {e}"),
        }
        state.dispatch();
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PoolMsg>,
        state: &mut PoolState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.fail_queued();
        let workers = state
            .idle
            .drain(..)
            .chain(state.busy.drain().map(|(_, w)| w));
        for worker in workers.collect::<Vec<_>>() {
            // Killing drops the in-flight call (aborting its request); its
            // guard answers the caller with `Stopped`.
            let _ = worker.kill_and_wait(None).await;
        }
        Ok(())
    }
}

struct Worker;

impl Actor for Worker {
    type Msg = Assigned;
    type State = (Endpoint, ActorRef<PoolMsg>);
    type Arguments = (Endpoint, ActorRef<PoolMsg>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Assigned>,
        args: Self::Arguments,
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<Assigned>,
        job: Assigned,
        (endpoint, pool): &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let Assigned {
            request,
            deltas,
            cancel,
            reply,
        } = job;
        let call = endpoint.attempt_once(&request, deltas.as_ref(), &cancel);
        match AssertUnwindSafe(call).catch_unwind().await {
            Ok(result) => {
                reply.send(result);
                let _ = pool.send_message(PoolMsg::Done(myself.get_id()));
                Ok(())
            }
            Err(panic) => {
                let reason = panic_message(panic.as_ref());
                reply.send(Err(Error::WorkerFailed {
                    endpoint: endpoint.name().to_string(),
                    reason: format!("panicked: {reason}"),
                }));
                // Fail this worker so that the pool replaces it.
                Err(format!("model call panicked: {reason}").into())
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Handle to a running executor. Cheap to clone.
#[derive(Clone)]
pub struct ExecutorHandle {
    endpoint: Endpoint,
    pool: ActorRef<PoolMsg>,
    counters: Arc<Counters>,
}

impl fmt::Debug for ExecutorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorHandle")
            .field("endpoint", &self.endpoint)
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish()
    }
}

impl ExecutorHandle {
    /// Start the pool and its `max_concurrency` workers.
    pub async fn spawn(endpoint: Endpoint) -> Result<ExecutorHandle> {
        let counters = Arc::new(Counters::default());
        let (pool, _) = Actor::spawn(None, Pool, (endpoint.clone(), counters.clone()))
            .await
            .map_err(|e| Error::Spawn {
                endpoint: endpoint.name().to_string(),
                reason: e.to_string(),
            })?;
        Ok(ExecutorHandle {
            endpoint,
            pool,
            counters,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Queue a call. Never waits: `Err(Error::Overloaded)` when
    /// `max_concurrency + max_queue` calls are already accepted,
    /// `Err(Error::Stopped)` after [`stop`](Self::stop). Otherwise the result
    /// comes through `job.reply`.
    pub fn submit(&self, job: ModelJob) -> Result<()> {
        let cfg = self.endpoint.config();
        let limit = cfg.max_concurrency.saturating_add(cfg.max_queue);
        let admitted =
            self.counters
                .outstanding
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < limit).then_some(n + 1)
                });
        if admitted.is_err() {
            return Err(Error::Overloaded {
                endpoint: self.endpoint.name().to_string(),
            });
        }
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        if self.pool.send_message(PoolMsg::Submit(job)).is_err() {
            Counters::dec(&self.counters.queued);
            Counters::dec(&self.counters.outstanding);
            return Err(Error::Stopped {
                endpoint: self.endpoint.name().to_string(),
            });
        }
        Ok(())
    }

    /// Submit one attempt and wait for its result.
    pub async fn call(
        &self,
        request: ModelRequest,
        deltas: Option<DeltaSink>,
        cancel: CancellationToken,
    ) -> Result<ModelResponse> {
        let (job, rx) = ModelJob::new(request, deltas, cancel);
        self.submit(job)?;
        rx.await.unwrap_or_else(|_| {
            Err(Error::Stopped {
                endpoint: self.endpoint.name().to_string(),
            })
        })
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.counters.in_flight.load(Ordering::SeqCst)
    }

    /// Calls accepted and waiting for a worker.
    pub fn queued(&self) -> usize {
        self.counters.queued.load(Ordering::SeqCst)
    }

    /// Stop the executor: queued calls and calls in flight are answered
    /// with `Error::Stopped` (in-flight requests are aborted); later
    /// submissions are refused.
    pub async fn stop(&self) {
        let _ = self.pool.stop_and_wait(None, None).await;
    }
}

/// The executors of all endpoints, by name.
#[derive(Clone, Default, Debug)]
pub struct ModelRegistry {
    executors: HashMap<String, ExecutorHandle>,
}

impl ModelRegistry {
    /// Build every endpoint and start its executor. Names must be unique.
    pub async fn start(configs: Vec<EndpointConfig>) -> Result<ModelRegistry> {
        let mut endpoints = Vec::with_capacity(configs.len());
        for (i, cfg) in configs.into_iter().enumerate() {
            if endpoints.iter().any(|e: &Endpoint| e.name() == cfg.name) {
                return Err(Error::config(&cfg.name, "name", "duplicate endpoint name").at_index(i));
            }
            endpoints.push(Endpoint::from_config(cfg).map_err(|e| e.at_index(i))?);
        }
        let mut registry = ModelRegistry::default();
        for endpoint in endpoints {
            match ExecutorHandle::spawn(endpoint).await {
                Ok(h) => registry.insert(h),
                Err(e) => {
                    registry.stop().await;
                    return Err(e);
                }
            }
        }
        Ok(registry)
    }

    /// Add (or replace) an executor under its endpoint's name.
    pub fn insert(&mut self, h: ExecutorHandle) {
        self.executors.insert(h.endpoint().name().to_string(), h);
    }

    pub fn get(&self, name: &str) -> Option<&ExecutorHandle> {
        self.executors.get(name)
    }

    /// Endpoint names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.executors.keys().cloned().collect();
        names.sort();
        names
    }

    /// Stop every executor.
    pub async fn stop(&self) {
        for h in self.executors.values() {
            h.stop().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use baton_types::{ErrorCode, FinishReason, Message, Usage};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::{DeltaSink, Provider, ProviderError, echo_default};

    /// Counts calls running at once; each call waits for a permit of `gate`.
    #[derive(Debug)]
    struct Gated {
        gate: Arc<Semaphore>,
        active: AtomicUsize,
        max_active: AtomicUsize,
    }

    impl Gated {
        fn new(permits: usize) -> Arc<Self> {
            Arc::new(Self {
                gate: Arc::new(Semaphore::new(permits)),
                active: AtomicUsize::new(0),
                max_active: AtomicUsize::new(0),
            })
        }
    }

    #[async_trait::async_trait]
    impl Provider for Gated {
        fn kind(&self) -> &'static str {
            "gated"
        }

        #[allow(clippy::panic)]
        async fn complete(
            &self,
            req: &ModelRequest,
            _deltas: Option<&DeltaSink>,
        ) -> std::result::Result<ModelResponse, ProviderError> {
            let text = req
                .messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default();
            if text == "panic" {
                panic!("provider exploded");
            }
            let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_active.fetch_max(now, Ordering::SeqCst);
            // Hold the call open so that calls overlap.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let permit = self.gate.acquire().await;
            self.active.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            Ok(ModelResponse {
                message: Message::assistant(text),
                usage: Usage::default(),
                finish_reason: FinishReason::Stop,
                model: "gated".into(),
                attempts: 0,
                confidence: None,
                embeddings: None,
            })
        }
    }

    async fn executor(
        provider: Arc<dyn Provider>,
        concurrency: usize,
        queue: usize,
    ) -> ExecutorHandle {
        let mut cfg = echo_default();
        cfg.max_concurrency = concurrency;
        cfg.max_queue = queue;
        ExecutorHandle::spawn(Endpoint::with_provider(cfg, provider))
            .await
            .unwrap()
    }

    fn job(text: &str) -> (ModelJob, oneshot::Receiver<Result<ModelResponse>>) {
        ModelJob::new(
            ModelRequest::new(vec![Message::user(text)]),
            None,
            CancellationToken::new(),
        )
    }

    async fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_never_exceeds_max_concurrency() {
        let p = Gated::new(1000);
        let ex = executor(p.clone(), 3, 100).await;
        let mut rxs = Vec::new();
        for i in 0..24 {
            let (j, rx) = job(&format!("m{i}"));
            ex.submit(j).unwrap();
            rxs.push(rx);
        }
        let mut max_seen = 0;
        for (i, rx) in rxs.into_iter().enumerate() {
            max_seen = max_seen.max(ex.in_flight());
            let resp = rx.await.unwrap().unwrap();
            assert_eq!(resp.message.content, format!("m{i}"));
            assert_eq!(resp.attempts, 1);
        }
        assert_eq!(
            p.max_active.load(Ordering::SeqCst),
            3,
            "the pool should use all 3 workers, no more"
        );
        assert!(max_seen <= 3, "in_flight reported {max_seen}");
        assert_eq!((ex.in_flight(), ex.queued()), (0, 0));
        ex.stop().await;
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_as_overloaded() {
        let p = Gated::new(0);
        let ex = executor(p.clone(), 1, 2).await;
        let mut rxs = Vec::new();
        for i in 0..3 {
            let (j, rx) = job(&format!("m{i}"));
            ex.submit(j).unwrap();
            rxs.push(rx);
        }
        assert!(wait_until(|| ex.in_flight() == 1).await, "no call started");
        assert_eq!(ex.queued(), 2);
        let (j, _rx) = job("one too many");
        let err = ex.submit(j).unwrap_err();
        assert!(matches!(err, Error::Overloaded { .. }), "{err}");
        assert_eq!(err.code(), ErrorCode::ResourceExhausted);

        p.gate.add_permits(100);
        for rx in rxs {
            rx.await.unwrap().unwrap();
        }
        // Capacity is released once calls finish.
        let resp = ex
            .call(
                ModelRequest::new(vec![Message::user("again")]),
                None,
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(resp.message.content, "again");
        ex.stop().await;
    }

    #[tokio::test]
    async fn a_panicking_call_fails_its_caller_and_the_pool_keeps_serving() {
        let p = Gated::new(1000);
        let ex = executor(p, 1, 10).await;
        let (bad, bad_rx) = job("panic");
        let (good, good_rx) = job("after");
        ex.submit(bad).unwrap();
        ex.submit(good).unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), bad_rx)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, Error::WorkerFailed { .. }), "{err}");
        assert!(err.to_string().contains("provider exploded"), "{err}");
        assert_eq!(err.code(), ErrorCode::Internal);
        // The job queued behind it is served by the replacement worker.
        let resp = tokio::time::timeout(Duration::from_secs(5), good_rx)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(resp.message.content, "after");
        for i in 0..3 {
            let (j, rx) = job(&format!("more{i}"));
            ex.submit(j).unwrap();
            assert_eq!(
                rx.await.unwrap().unwrap().message.content,
                format!("more{i}")
            );
        }
        assert_eq!((ex.in_flight(), ex.queued()), (0, 0));
        ex.stop().await;
    }

    #[tokio::test]
    async fn stop_answers_every_accepted_call_and_refuses_new_ones() {
        let p = Gated::new(0);
        let ex = executor(p, 1, 10).await;
        let (a, a_rx) = job("running");
        let (b, b_rx) = job("queued");
        ex.submit(a).unwrap();
        ex.submit(b).unwrap();
        assert!(wait_until(|| ex.in_flight() == 1).await, "no call started");
        ex.stop().await;
        for rx in [a_rx, b_rx] {
            let err = rx.await.unwrap().unwrap_err();
            assert!(matches!(err, Error::Stopped { .. }), "{err}");
        }
        let (c, _c_rx) = job("late");
        assert!(matches!(ex.submit(c), Err(Error::Stopped { .. })));
        assert_eq!((ex.in_flight(), ex.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_queued_call_cancelled_before_it_runs_is_cancelled() {
        let p = Gated::new(0);
        let ex = executor(p.clone(), 1, 10).await;
        let (a, a_rx) = job("first");
        ex.submit(a).unwrap();
        let cancel = CancellationToken::new();
        let (b, b_rx) = ModelJob::new(
            ModelRequest::new(vec![Message::user("second")]),
            None,
            cancel.clone(),
        );
        ex.submit(b).unwrap();
        cancel.cancel();
        p.gate.add_permits(10);
        a_rx.await.unwrap().unwrap();
        assert!(matches!(b_rx.await.unwrap(), Err(Error::Cancelled)));
        ex.stop().await;
    }

    #[tokio::test]
    async fn the_registry_starts_endpoints_by_unique_name() {
        let mut other = echo_default();
        other.name = "other".into();
        other.echo.prefix = "> ".into();
        let reg = ModelRegistry::start(vec![echo_default(), other.clone()])
            .await
            .unwrap();
        assert_eq!(reg.names(), vec!["echo".to_string(), "other".to_string()]);
        let h = reg.get("other").unwrap();
        let resp = h
            .call(
                ModelRequest::new(vec![Message::user("hi")]),
                None,
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(resp.message.content, "> hi");
        assert!(reg.get("missing").is_none());
        reg.stop().await;

        let err = ModelRegistry::start(vec![other.clone(), other])
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "models[1].name: duplicate endpoint name (endpoint \"other\")"
        );
    }
}
