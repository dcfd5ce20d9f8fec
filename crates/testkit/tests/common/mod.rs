//! Calls through a `Router` over one endpoint, shared by the provider tests:
//! where a test is about retries, backoff or `Retry-After`, it calls the
//! endpoint the way production does — the endpoint's own route (fallback
//! over that one endpoint), whose call loop is the only retry loop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use baton_models::{Delta, EndpointConfig, ModelRegistry, ModelRequest};
use baton_routing::{BudgetLedger, RouteCall, RouteError, RouteEvent, Routed, Router};
use baton_types::AttemptFailure;
use tokio::sync::mpsc;

/// A routed call's outcome and what it reported on the way.
pub struct RoutedCall {
    pub result: Result<Routed, RouteError>,
    /// Deltas that reached the caller, `Restart`s included.
    pub deltas: Vec<Delta>,
    /// Every failed attempt, in order.
    pub failures: Vec<AttemptFailure>,
}

impl RoutedCall {
    pub fn unwrap(self) -> Routed {
        self.result
            .unwrap_or_else(|e| panic!("routed call failed: {e:?}; {:?}", self.failures))
    }

    pub fn unwrap_err(self) -> RouteError {
        match self.result {
            Ok(r) => panic!("expected an error, got {:?}", r.response),
            Err(e) => e,
        }
    }

    /// The kinds of the failed attempts, in order.
    pub fn failure_kinds(&self) -> Vec<&str> {
        self.failures.iter().map(|f| f.kind.as_str()).collect()
    }
}

/// Route `req` to the endpoint `cfg` alone, streaming to a sink (which a
/// non-streaming endpoint leaves empty). The endpoint's executor is started
/// for this call and stopped after it.
pub async fn routed(cfg: EndpointConfig, req: &ModelRequest) -> RoutedCall {
    let route = cfg.name.clone();
    let models = ModelRegistry::start(vec![cfg]).await.unwrap();
    let router = Router::new(vec![], models, BudgetLedger::default()).unwrap();
    let (dtx, mut drx) = mpsc::unbounded_channel();
    let (etx, mut erx) = mpsc::unbounded_channel();
    let mut call = RouteCall::new(route, req.clone());
    call.deltas = Some(dtx);
    call.events = Some(etx);
    let result = router.call(call).await;
    router.models().stop().await;
    let mut deltas = Vec::new();
    while let Ok(d) = drx.try_recv() {
        deltas.push(d);
    }
    let mut failures = Vec::new();
    while let Ok(ev) = erx.try_recv() {
        if let RouteEvent::AttemptFailed(f) = ev {
            failures.push(f);
        }
    }
    RoutedCall {
        result,
        deltas,
        failures,
    }
}
