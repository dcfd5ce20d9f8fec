//! Baton's own headers on front-door requests and responses.

/// Header: the Baton session that served the call.
pub const SESSION_HEADER: &str = "x-baton-session-id";
/// Header: the endpoint that answered.
pub const ENDPOINT_HEADER: &str = "x-baton-endpoint";
/// Header: the call's cost in USD, when the endpoint is priced.
pub const COST_HEADER: &str = "x-baton-cost-usd";
/// Header: attempts the routed model call took.
pub const ATTEMPTS_HEADER: &str = "x-baton-attempts";
/// Request header: the session's budget in USD.
pub const BUDGET_HEADER: &str = "x-baton-budget-usd";
/// Request header: data classes the content carries, comma-separated.
pub const DATA_CLASSES_HEADER: &str = "x-baton-data-classes";
