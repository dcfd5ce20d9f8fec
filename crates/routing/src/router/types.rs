//! The router's public data: a call ([`RouteCall`]), what it reports while
//! it runs ([`RouteEvent`]), its answer ([`Routed`]) or error
//! ([`RouteError`]), and the views of routes and endpoints that
//! [`Router`](super::Router) lists.

use std::sync::Arc;

use baton_models::{DeltaSink, ModelRequest, ModelResponse, ProviderKey};
use baton_types::{AttemptFailure, ErrorCode, RoutingDecision};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::BreakerState;
use crate::budget::SessionBudget;

/// One routed model call.
#[derive(Debug, Clone)]
pub struct RouteCall {
    /// A route name, or an endpoint name (its implicit route).
    pub route: String,
    /// Shared with every attempt of the call (not copied per attempt).
    pub request: Arc<ModelRequest>,
    /// The request carries images.
    pub needs_vision: bool,
    /// The call may only go to endpoints certified for all of these.
    pub data_classes: Vec<String>,
    /// When set, text deltas are streamed here; see the crate docs for
    /// [`Delta::Restart`](baton_models::Delta::Restart).
    pub deltas: Option<DeltaSink>,
    /// Decisions and failed attempts, as they happen.
    pub events: Option<mpsc::UnboundedSender<RouteEvent>>,
    pub cancel: CancellationToken,
    /// The caller's deadline; the effective one is the earlier of this and
    /// the route's `deadline_ms` from now.
    pub deadline: Option<Instant>,
    pub session_budget: Option<SessionBudget>,
    /// The caller's own provider keys (a tenant's, bring your own key):
    /// an attempt on an endpoint named here sends this key instead of the
    /// endpoint's.
    pub own_keys: Option<Arc<OwnKeys>>,
}

/// Provider keys that belong to one owner (a tenant), by endpoint name.
/// Its `Debug` output names the endpoints, never the keys.
#[derive(Clone, Default)]
pub struct OwnKeys {
    /// Who the keys belong to (a tenant name), for logs and traces.
    pub owner: String,
    pub by_endpoint: std::collections::HashMap<String, ProviderKey>,
    /// Only endpoints with a key here may serve the call (the owner's
    /// calls never spend on the server's keys).
    pub only: bool,
}

impl OwnKeys {
    pub fn get(&self, endpoint: &str) -> Option<&ProviderKey> {
        self.by_endpoint.get(endpoint)
    }
}

impl std::fmt::Debug for OwnKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut endpoints: Vec<&String> = self.by_endpoint.keys().collect();
        endpoints.sort();
        f.debug_struct("OwnKeys")
            .field("owner", &self.owner)
            .field("endpoints", &endpoints)
            .field("only", &self.only)
            .finish()
    }
}

impl RouteCall {
    /// A call of `route` with no streaming, events, deadline or budget.
    pub fn new(route: impl Into<String>, request: impl Into<Arc<ModelRequest>>) -> Self {
        Self {
            route: route.into(),
            request: request.into(),
            needs_vision: false,
            data_classes: Vec::new(),
            deltas: None,
            events: None,
            cancel: CancellationToken::new(),
            deadline: None,
            session_budget: None,
            own_keys: None,
        }
    }

    /// Report `ev` to the caller, if it listens.
    pub(super) fn send_event(&self, ev: RouteEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(ev);
        }
    }
}

/// What a routed call reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteEvent {
    Decision(RoutingDecision),
    AttemptFailed(AttemptFailure),
}

/// A routed call's answer.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The accepted answer; `attempts` counts every attempt of the call.
    pub response: ModelResponse,
    /// The endpoint that gave it.
    pub endpoint: String,
    pub attempts: u32,
    /// Cost of the billed (successful) attempts, cascade steps and evaluator
    /// calls included; `None` when no endpoint involved has prices.
    pub cost_usd: Option<f64>,
    pub decisions: Vec<RoutingDecision>,
    /// Cascade escalations made.
    pub escalations: u32,
    /// The answer's text was validated against the request's JSON Schema
    /// (and matches it: a routed call never returns one that does not).
    pub schema_validated: bool,
    /// How the streamed answer went on after an attempt failed with its
    /// text already sent to the caller.
    pub output_resumed: baton_types::OutputResume,
}

/// Why a routed call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteErrorKind {
    UnknownRoute,
    NoEligibleEndpoint,
    BudgetExhausted,
    DeadlineExceeded,
    ContentPolicy,
    ContextLength,
    InvalidRequest,
    /// Transient failures used every attempt (or every candidate).
    Exhausted,
    Cancelled,
    /// Every answer failed the JSON Schema the request asked for.
    SchemaViolation,
}

/// A routed call that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RouteError {
    pub kind: RouteErrorKind,
    pub message: String,
    pub attempts: u32,
    /// The endpoint of the last attempt, if any.
    pub endpoint: Option<String>,
    /// Cost billed before the call failed.
    pub cost_usd: Option<f64>,
}

impl RouteError {
    /// An error of `kind`, with no attempts, endpoint or cost.
    pub fn new(kind: RouteErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            attempts: 0,
            endpoint: None,
            cost_usd: None,
        }
    }

    /// `route` is neither a route nor an endpoint.
    pub(super) fn unknown_route(route: &str) -> Self {
        Self::new(
            RouteErrorKind::UnknownRoute,
            format!("unknown route {route:?}"),
        )
    }

    /// The client-facing kind.
    pub fn code(&self) -> ErrorCode {
        match self.kind {
            RouteErrorKind::UnknownRoute => ErrorCode::NotFound,
            RouteErrorKind::NoEligibleEndpoint => ErrorCode::FailedPrecondition,
            RouteErrorKind::BudgetExhausted => ErrorCode::ResourceExhausted,
            RouteErrorKind::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            RouteErrorKind::ContentPolicy => ErrorCode::FailedPrecondition,
            RouteErrorKind::ContextLength | RouteErrorKind::InvalidRequest => {
                ErrorCode::InvalidArgument
            }
            RouteErrorKind::Exhausted | RouteErrorKind::SchemaViolation => ErrorCode::Unavailable,
            RouteErrorKind::Cancelled => ErrorCode::Cancelled,
        }
    }

    /// A short stable label: the wire string of the turn failure code
    /// (`unknown_route`, `budget_exhausted`, `model_error`, …).
    pub fn label(&self) -> &'static str {
        self.failure_code().as_str()
    }
}

/// A route as [`Router::routes`](super::Router::routes) lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteInfo {
    pub name: String,
    pub strategy: String,
    pub endpoints: Vec<String>,
    pub budget_usd: Option<f64>,
    pub spent_usd: f64,
    /// An endpoint's own route rather than a `[[routes]]` table.
    pub implicit: bool,
}

/// An endpoint's routing state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointStats {
    pub endpoint: String,
    /// EWMA of successful attempts' latency; `None` until one succeeded.
    pub ewma_latency_ms: Option<f64>,
    pub in_flight: usize,
    pub queued: usize,
    pub breaker: BreakerState,
}

/// A settled attempt, as an [`AttemptObserver`] is told of it.
#[derive(Debug, Clone, Copy)]
pub struct AttemptSeen<'a> {
    pub endpoint: &'a str,
    /// The model the endpoint is configured with.
    pub model: &'a str,
    pub route: &'a str,
    /// False for a failed attempt (of any class but `cancelled`).
    pub ok: bool,
    pub secs: f64,
}

/// Told of every settled attempt: see `Router::observe_attempts`.
pub type AttemptObserver = Arc<dyn Fn(&AttemptSeen<'_>) + Send + Sync>;
