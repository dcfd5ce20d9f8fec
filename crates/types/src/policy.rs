//! The policy vocabulary: stages, outcomes and what a policy evaluation
//! records (`EventKind::PolicyEvaluated`).

use serde::{Deserialize, Serialize};

use crate::wire::wire_enum;

wire_enum! {
    /// Where in a call a policy looks.
    pub enum PolicyStage: "policy stage" {
        /// A client's message, before any model sees it.
        Input = "input",
        /// A model's answer, before it is released.
        Output = "output",
        /// A tool call's arguments, before the tool runs.
        ToolArguments = "tool_arguments",
        /// A tool's result, before the model sees it.
        ToolResult = "tool_result",
    }
}

wire_enum! {
    /// What a policy rule does when it matches.
    pub enum PolicyOutcome: "policy outcome" {
        /// Let it through, recording the match.
        Allow = "allow",
        /// Replace each match with a placeholder before any model sees it.
        Redact = "redact",
        /// Refuse it: an error naming the policy; nothing is sent upstream.
        Block = "block",
        /// Add a data class to the call.
        Tag = "tag",
        /// Hold it for a human decision.
        Gate = "gate",
        /// Send the model the reason and ask again.
        Revise = "revise",
        /// Answer with a configured refusal instead of asking the model
        /// (an off-purpose request).
        Refuse = "refuse",
    }
}

/// One rule that matched, as journaled and audited: the policy, the rule,
/// what it did and where it matched — never the matched text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
pub struct PolicyHit {
    pub policy: String,
    pub rule: String,
    pub outcome: PolicyOutcome,
    /// What the rule says about it: the client's error for `block`, the
    /// model's instruction for `revise` (the rule's `message`, or one that
    /// names the policy, rule and match kinds and positions).
    #[serde(default)]
    pub message: String,
    pub matches: Vec<PolicyMatch>,
}

/// Where a rule matched: the detector (`email`, `iban`, or a custom
/// pattern as `policy/rule`) and byte offsets into the text evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
pub struct PolicyMatch {
    pub kind: String,
    pub start: u64,
    pub end: u64,
}

/// One criterion of an answer's quality score (`EventKind::QualityScored`):
/// 0 to 1, with the evaluator's reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
pub struct QualityScore {
    /// `factuality`, `relevance`, `coherence`, or a configured criterion.
    pub criterion: String,
    pub score: f64,
    pub reason: String,
}
