//! [`CallContext`]: what one routed call works with and never changes.

use std::sync::Arc;
use std::time::Duration;

use baton_models::EndpointConfig;
use tokio::time::Instant;

use super::state::{Health, Router};
use super::types::RouteCall;
use crate::config::Route;

/// The router, the route, the call and its deadline: fixed for the whole
/// call, shared by the call loop and the cascade gates.
#[derive(Clone, Copy)]
pub(super) struct CallContext<'a> {
    pub(super) router: &'a Router,
    pub(super) route: &'a Route,
    pub(super) call: &'a RouteCall,
    /// The earlier of the caller's deadline and the route's `deadline_ms`
    /// from the start of the call.
    pub(super) deadline: Option<Instant>,
}

impl<'a> CallContext<'a> {
    pub(super) fn new(router: &'a Router, route: &'a Route, call: &'a RouteCall) -> Self {
        let deadline = match (call.deadline, route.cfg.deadline_ms) {
            (Some(d), Some(ms)) => Some(d.min(Instant::now() + Duration::from_millis(ms))),
            (d, Some(ms)) => d.or(Some(Instant::now() + Duration::from_millis(ms))),
            (d, None) => d,
        };
        Self {
            router,
            route,
            call,
            deadline,
        }
    }

    /// The name of the route's endpoint `idx`.
    pub(super) fn name(&self, idx: usize) -> &'a str {
        &self.route.cfg.endpoints[idx]
    }

    /// The configuration of the route's endpoint `idx`, if it is running.
    pub(super) fn config(&self, idx: usize) -> Option<&'a EndpointConfig> {
        self.router
            .inner
            .models
            .get(self.name(idx))
            .map(|h| h.endpoint().config())
    }

    /// The breaker and latency of the route's endpoint `idx`.
    pub(super) fn health(&self, idx: usize) -> Option<&'a Arc<Health>> {
        self.router.inner.health.get(self.name(idx))
    }

    /// `wait` from now still ends before the deadline.
    pub(super) fn fits(&self, wait: Duration) -> bool {
        self.deadline
            .is_none_or(|d| Instant::now().checked_add(wait).is_some_and(|t| t < d))
    }
}
