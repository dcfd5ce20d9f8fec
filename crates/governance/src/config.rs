//! The governance sections of the config: `[[policies]]` (named rule sets
//! and their rules) and `[governance]` (detector settings, revision bound,
//! the gate for data no endpoint is certified for). Checked and compiled by
//! [`Policies::compile`](crate::Policies::compile).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::detect::Builtin;
use baton_types::{PolicyOutcome as Outcome, PolicyStage as Stage, TimeoutAction};

/// `[[policies]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    pub stage: Stage,
    /// Tenants it applies to; empty: every tenant.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Routes it applies to; empty: every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Session metadata it applies to: every key must have this value
    /// (e.g. `when = { tier = "guest" }`); empty: every session.
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// Tool stages: the tools it applies to (names, or prefixes ending in
    /// `*` such as `payments.*`); empty: every tool.
    #[serde(default)]
    pub tools: Vec<String>,
    pub rules: Vec<RuleConfig>,
}

/// `[[policies.rules]]`: what to look for (any of `detect`, `regex`,
/// `keywords`, `max_chars`) and what to do on a match.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// Built-in detectors.
    #[serde(default)]
    pub detect: Vec<Builtin>,
    /// A regular expression (Rust `regex` syntax).
    #[serde(default)]
    pub regex: Option<String>,
    /// Whole words or phrases, matched in any case.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Matches a text longer than this many characters.
    #[serde(default)]
    pub max_chars: Option<usize>,
    /// Output: a regular expression the answer must match (a required
    /// disclaimer); the rule matches when it does not.
    #[serde(default)]
    pub require: Option<String>,
    /// Output: a JSON Schema the answer (JSON, or JSON in one code fence)
    /// must satisfy, numeric limits included (`"maximum": 15`); the rule
    /// matches when it does not.
    #[serde(default)]
    pub json_schema: Option<serde_json::Value>,
    /// Output: the only domains links may point to (subdomains included);
    /// the rule matches each `http(s)` link to another host.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    pub outcome: Outcome,
    /// For `tag`: the data class to add (default: the detector's own,
    /// `pii`, `financial` or `secret`; custom patterns need one).
    #[serde(default)]
    pub data_class: Option<String>,
    /// For `redact`: put the values back in the answer the client gets
    /// (default true). False: the client sees the placeholders too.
    #[serde(default = "yes")]
    pub restore: bool,
    /// For `block`: the message the client gets; for `revise`: what the
    /// model is told (default: names the policy, the rule and what matched);
    /// for `refuse` (required): the answer the client gets instead of the
    /// model's.
    #[serde(default)]
    pub message: Option<String>,
    /// Input and output: a classifier the embedder registered
    /// (`RuntimeBuilder::with_policy_classifier`) labels the text.
    #[serde(default)]
    pub classifier: Option<String>,
    /// Input and output: a model route labels the text with one of
    /// `labels` (results cached per content hash).
    #[serde(default)]
    pub classifier_route: Option<String>,
    /// The labels a classifier chooses from (required for a route).
    #[serde(default)]
    pub labels: Vec<String>,
    /// What a classifier route is told about the labels (e.g. the
    /// application's purposes).
    #[serde(default)]
    pub instructions: Option<String>,
    /// The rule matches when the label is one of these.
    #[serde(default)]
    pub match_labels: Vec<String>,
    /// The rule matches when the label is none of these: an intent check
    /// against the application's allowed purposes.
    #[serde(default)]
    pub allowed_labels: Vec<String>,
    /// Output: a model route asked whether the answer passes (`PASS`, or
    /// `FAIL: reason`); the rule matches on anything but PASS.
    #[serde(default)]
    pub evaluator_route: Option<String>,
    /// The evaluator's prompt; `{question}` and `{answer}` are replaced.
    #[serde(default)]
    pub evaluator_prompt: Option<String>,
    /// For `gate`: the reviewer group that decides the gate (required).
    #[serde(default)]
    pub reviewers: Option<String>,
    /// For `gate`: how long the gate waits for a decision; 0: no limit.
    #[serde(default)]
    pub timeout_ms: u64,
    /// For `gate`: what a timeout decides (`reject` or `approve`).
    #[serde(default)]
    pub on_timeout: TimeoutAction,
}

fn yes() -> bool {
    true
}

/// Detector settings (`[governance]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceConfig {
    /// The region (ISO 3166 alpha-2) of phone numbers written without an
    /// international prefix.
    pub phone_region: String,
    /// Most times a turn's answer is sent back for revision (`revise`)
    /// before the turn fails as blocked.
    pub max_revisions: u32,
    /// When no endpoint is certified for the data classes found in a
    /// message's content: unset, the turn fails (`no_eligible_endpoint`);
    /// set, a reviewer decides (approve: the call goes to the route's
    /// endpoints without the classes found in flight; reject: it fails).
    pub no_eligible_gate: Option<NoEligibleGate>,
}

/// `[governance.no_eligible_gate]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoEligibleGate {
    pub reviewers: String,
    /// 0: no limit.
    #[serde(default)]
    pub timeout_ms: u64,
    /// `reject` (default) or `approve`.
    #[serde(default)]
    pub on_timeout: TimeoutAction,
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        GovernanceConfig {
            phone_region: "US".into(),
            max_revisions: 2,
            no_eligible_gate: None,
        }
    }
}
