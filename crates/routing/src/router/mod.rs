//! The [`Router`]: candidate filtering, strategies, attempt supervision
//! (retries, failover, deadlines, cancellation, stream retraction), circuit
//! breakers, budgets and cascade gates.
//!
//! - `types`: the public data of a call (`RouteCall`, `Routed`, `RouteError`, …);
//! - `state`: the `Router` and the state its clones share;
//! - `api`: the `Router`'s public methods;
//! - `candidates`: which endpoints are eligible and which one a strategy picks;
//! - `call_loop`: one routed call, attempt by attempt — the one retry loop;
//! - `context`: what a call works with and never changes;
//! - `attempt`: one attempt through an endpoint's executor pool;
//! - `backoff`: the waits between attempts (full jitter, `Retry-After`);
//! - `cascade`: a cascade's quality gates;
//! - `permit`: an attempt's breaker admission.

mod api;
mod attempt;
mod backoff;
mod call_loop;
mod candidates;
mod cascade;
mod context;
mod hedge;
mod permit;
mod plan;
mod splice;
mod state;
mod types;

#[cfg(test)]
mod tests;

pub use state::Router;
pub use types::{
    AttemptObserver, AttemptSeen, EndpointStats, OwnKeys, RouteCall, RouteError, RouteErrorKind,
    RouteEvent, RouteInfo, Routed,
};
