//! Baton's model router: which endpoint answers a model call, and what
//! happens when it cannot.
//!
//! A [`Router`] holds the routes of `baton.toml` (`[[routes]]`, see
//! [`RouteConfig`]) over the endpoints of a [`baton_models::ModelRegistry`];
//! every endpoint is also a route of its own name. [`Router::call`] filters
//! the route's endpoints (capabilities, context window, data classes,
//! circuit breaker, budget), picks one by the route's [`Strategy`], makes
//! single attempts through the endpoint's executor, retries transient
//! failures with backoff, fails over, escalates cascades through their
//! quality gates, and reports every choice as a
//! [`baton_types::RoutingDecision`] and every failed attempt as a
//! [`baton_types::AttemptFailure`].
//!
//! The router's call loop is Baton's only retry loop: `baton-models` makes
//! single attempts ([`baton_models::Endpoint::attempt_once`]) and never
//! retries; backoff with full jitter, `Retry-After` and each endpoint's
//! `[models.retry]` are applied here (see docs/routing.md, "In the code",
//! for the layout of the `router` module).
//!
//! ```
//! use baton_models::{echo_default, ModelRegistry, ModelRequest};
//! use baton_routing::{BudgetLedger, RouteCall, RouteConfig, Router};
//! use baton_types::Message;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let models = ModelRegistry::start(vec![echo_default()]).await.unwrap();
//! let routes = vec![RouteConfig::new("default", vec!["echo".into()])];
//! let router = Router::new(routes, models, BudgetLedger::default()).unwrap();
//! let req = ModelRequest::new(vec![Message::user("hello")]);
//! let routed = router.call(RouteCall::new("default", req)).await.unwrap();
//! assert_eq!(routed.endpoint, "echo");
//! assert_eq!(routed.decisions[0].rule, "only_candidate");
//! # });
//! ```

mod breaker;
mod budget;
mod config;
mod failure;
mod gates;
mod router;
pub mod select;

pub use breaker::{BreakerSnapshot, BreakerState};
pub use budget::{
    BudgetLedger, BudgetRejection, BudgetScope, OnSpend, Reservation, ReserveRequest, SessionBudget,
};
pub use config::{
    CascadeConfig, ComplexityConfig, ConfigError, FirstTokenTimeout, MissingConfidence,
    RouteConfig, Signal, Strategy, validate_routes,
};
pub use gates::{DEFAULT_EVALUATOR_PROMPT, compile_schema, evaluator_prompt};
pub use router::{
    AttemptObserver, AttemptSeen, EndpointStats, OwnKeys, RouteCall, RouteError, RouteErrorKind,
    RouteEvent, RouteInfo, Routed, Router,
};
