//! The routing vocabulary: what a router decided and why, and how an
//! attempt failed. Both are journaled, so "why did this call go to that
//! model" has an answer for as long as the journal is kept.

use serde::{Deserialize, Serialize};

use crate::wire::wire_enum;

/// One endpoint the router considered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteCandidate {
    pub endpoint: String,
    /// False when a rule excluded it (see `note`).
    pub eligible: bool,
    /// The strategy's score where it has one (EWMA latency in ms, in-flight
    /// calls, weight, complexity score); lower is better for latency and
    /// in-flight, higher for weight.
    #[serde(default)]
    pub score: Option<f64>,
    /// Why it is (in)eligible, e.g. `breaker open`, `lacks capability tools`,
    /// `context window 8192 < 12000 needed`, `not certified for pii`.
    #[serde(default)]
    pub note: String,
}

/// One routing decision: which endpoint an attempt goes to, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingDecision {
    pub route: String,
    /// `fallback`, `weighted`, `least_latency`, `least_inflight`, `cascade`,
    /// `by_complexity`.
    pub strategy: String,
    pub candidates: Vec<RouteCandidate>,
    /// The endpoint chosen.
    pub chosen: String,
    /// The rule that fired, a short stable label: `first_healthy`,
    /// `weighted_pick`, `lowest_ewma`, `p2c_fewer_inflight`, `cascade_first`,
    /// `cascade_escalate`, `complexity_tier`, `retry_same`, `failover`,
    /// `context_length_upgrade`, `only_candidate`.
    pub rule: String,
    /// Human-readable detail, e.g. `confidence 0.41 < min_confidence 0.7`.
    #[serde(default)]
    pub reason: String,
    /// The attempt this decision is for (1-based within the routed call).
    pub attempt: u32,
}

/// A failed attempt of a routed call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptFailure {
    pub endpoint: String,
    pub attempt: u32,
    /// The error class: `rate_limited`, `server`, `connection`, `timeout`,
    /// `first_token_timeout`, `stream_stalled`, `malformed`, `client`,
    /// `auth`, `invalid_request`, `context_length`, `content_policy`,
    /// `overloaded`, `quality_gate`.
    pub kind: String,
    pub message: String,
    /// The wait before the next attempt, when there is one.
    #[serde(default)]
    pub retry_in_ms: Option<u64>,
    /// The attempt's text had reached the caller when it failed: the next
    /// attempt resumes it (see [`OutputResume`]) or retracts it
    /// (`OutputRetracted`).
    #[serde(default)]
    pub streamed: bool,
}

wire_enum! {
    /// How an answer went on after an attempt failed with its text already
    /// streamed to the caller: the caller ends up with one answer, nothing
    /// repeated and nothing missing, unless it was `Retracted`.
    #[derive(Default)]
    pub enum OutputResume: "output resume" {
        /// Nothing to resume: no attempt failed after streaming.
        #[default]
        None = "",
        /// The next answer began with exactly the text streamed; only the
        /// rest was streamed.
        Prefix = "prefix",
        /// An endpoint that can continue a partial answer was asked to, and
        /// its continuation was streamed after the text already sent.
        Continuation = "continuation",
        /// Neither: the text streamed was retracted (`OutputRetracted`) and
        /// the answer streamed from its start.
        Retracted = "retracted",
    }
}
