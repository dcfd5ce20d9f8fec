//! Human-in-the-loop gates: placement policies and the gate API.
//!
//! A gate pauses a session at a defined point until a decision: before a
//! tool call runs, before a final answer is released, or before a model call
//! is issued. Operators place gates with policies in config; clients can ask
//! for one per turn (`review`); a non-idempotent tool call interrupted by a
//! crash (`needs_attention`) becomes one too. Gates are journaled in their
//! session and indexed in the store, so they survive restarts, list fast,
//! and let their (passivated) sessions wait without holding memory.

use std::sync::Arc;

use baton_tools::ToolFilter;
use serde::Deserialize;

pub use baton_types::{
    Decision, GateId, GateKind, GateOutcome, GatePoint, GateRecord, GateStatus, TimeoutAction,
};

use crate::error::{ConfigError, Error, Result};

/// What a gate policy watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatePolicyKind {
    /// Before a server-side tool call whose name matches `tools` runs.
    BeforeTool,
    /// Before a final answer is released.
    FinalAnswer,
    /// Before a model call whose estimated cost exceeds `max_cost_usd`.
    Cost,
    /// Before a final answer whose confidence is below `min_confidence`.
    Confidence,
    /// When input or output matches `pattern` (a regex) or `classifier`.
    DataRule,
}

impl GatePolicyKind {
    /// The kind of the gates this policy opens.
    pub fn gate_kind(self) -> GateKind {
        match self {
            GatePolicyKind::BeforeTool => GateKind::BeforeTool,
            GatePolicyKind::FinalAnswer => GateKind::FinalAnswer,
            GatePolicyKind::Cost => GateKind::Cost,
            GatePolicyKind::Confidence => GateKind::Confidence,
            GatePolicyKind::DataRule => GateKind::DataRule,
        }
    }
}

/// What a data rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataRuleTarget {
    /// The user's message, before the turn's first model call.
    Input,
    /// The final answer, before it is released.
    Output,
    #[default]
    Both,
}

/// The reviewer group of the built-in gates when their section sets none.
fn default_reviewers() -> String {
    "reviewers".into()
}

/// One placement policy (`[[gates.policies]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatePolicy {
    pub name: String,
    pub kind: GatePolicyKind,
    /// `before_tool`: tool names or patterns.
    #[serde(default)]
    pub tools: Vec<String>,
    /// `cost`: the threshold, in USD, for one model call's estimated cost.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// `confidence`: answers below this (0..1) need review.
    #[serde(default)]
    pub min_confidence: Option<f64>,
    /// `data_rule`: a regular expression.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `data_rule`: the name of a classifier registered by the embedder.
    #[serde(default)]
    pub classifier: Option<String>,
    #[serde(default)]
    pub applies_to: DataRuleTarget,
    /// Only sessions on these routes (empty: all).
    #[serde(default)]
    pub routes: Vec<String>,
    /// The reviewer group whose members decide this policy's gates; required
    /// (a policy is only useful if someone reviews what it holds).
    pub reviewers: String,
    /// 0: no timeout.
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub on_timeout: TimeoutAction,
    /// `escalate`: the next reviewer group.
    #[serde(default)]
    pub escalate_to: Option<String>,
    /// `escalate`: the escalated gate's timeout (then rejected); 0: none.
    #[serde(default)]
    pub escalate_timeout_ms: u64,
}

/// Defaults of the built-in gates (`explicit`, `needs_attention`); their
/// reviewer group is `reviewers` unless set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinGate {
    pub reviewers: String,
    pub timeout_ms: u64,
    pub on_timeout: TimeoutAction,
    pub escalate_to: Option<String>,
    pub escalate_timeout_ms: u64,
}

impl Default for BuiltinGate {
    fn default() -> Self {
        Self {
            reviewers: default_reviewers(),
            timeout_ms: 0,
            on_timeout: TimeoutAction::Reject,
            escalate_to: None,
            escalate_timeout_ms: 0,
        }
    }
}

/// `[gates]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatesConfig {
    pub policies: Vec<GatePolicy>,
    /// Gates a client asks for with `SendMessage.review`.
    pub explicit: BuiltinGate,
    /// Gates for non-idempotent tool calls interrupted by a crash.
    pub needs_attention: BuiltinGate,
    /// How often due gate timeouts are looked for.
    pub timeout_scan_ms: u64,
}

impl Default for GatesConfig {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            explicit: BuiltinGate::default(),
            needs_attention: BuiltinGate::default(),
            timeout_scan_ms: 1000,
        }
    }
}

/// Decides whether a text holds data that needs review: returns a reason.
/// Register with `RuntimeBuilder::with_classifier`.
pub trait DataClassifier: Send + Sync + std::fmt::Debug {
    fn classify(&self, text: &str) -> Option<String>;
}

/// A policy ready to evaluate.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    pub policy: GatePolicy,
    /// Set for a tenant's own policy (`[[tenants]] gate_policies`): it
    /// applies to that tenant's sessions only.
    tenant: Option<String>,
    tools: Option<ToolFilter>,
    pattern: Option<regex::Regex>,
    classifier: Option<Arc<dyn DataClassifier>>,
}

/// The gate timing and routing settings carried by an opened gate.
#[derive(Debug, Clone)]
pub(crate) struct GateTerms {
    pub kind: GateKind,
    pub policy: String,
    pub reason: String,
    pub reviewers: String,
    pub timeout_ms: u64,
    pub on_timeout: TimeoutAction,
}

impl CompiledPolicy {
    fn terms(&self, reason: String) -> GateTerms {
        GateTerms {
            kind: self.policy.kind.gate_kind(),
            policy: self.policy.name.clone(),
            reason,
            reviewers: self.policy.reviewers.clone(),
            timeout_ms: self.policy.timeout_ms,
            on_timeout: self.policy.on_timeout,
        }
    }

    fn applies_to_route(&self, route: &str) -> bool {
        self.policy.routes.is_empty() || self.policy.routes.iter().any(|r| r == route)
    }

    /// Whether it applies to a session of `tenant` on `route`.
    fn applies(&self, tenant: &str, route: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant) && self.applies_to_route(route)
    }

    fn data_match(&self, text: &str) -> Option<String> {
        if let Some(re) = &self.pattern
            && let Some(m) = re.find(text)
        {
            let shown: String = m.as_str().chars().take(40).collect();
            return Some(format!(
                "matches data rule {:?} ({shown:?})",
                self.policy.name
            ));
        }
        if let Some(c) = &self.classifier
            && let Some(why) = c.classify(text)
        {
            return Some(format!(
                "classifier of data rule {:?}: {why}",
                self.policy.name
            ));
        }
        None
    }
}

/// The terms of a gate a governance policy's `gate` rule opens.
pub(crate) fn policy_terms(
    policy: &str,
    reason: &str,
    spec: &baton_governance::GateSpec,
) -> GateTerms {
    GateTerms {
        kind: GateKind::DataRule,
        policy: policy.to_string(),
        reason: reason.to_string(),
        reviewers: spec.reviewers.clone(),
        timeout_ms: spec.timeout_ms,
        on_timeout: spec.on_timeout,
    }
}

/// All policies, compiled.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    list: Vec<CompiledPolicy>,
}

impl Policies {
    /// Check and compile `[[gates.policies]]`; errors name the key as
    /// `gates.policies[i].key` and the policy. `RuntimeConfig::validate`
    /// runs this too, so a config is checked before anything starts.
    pub fn compile(
        cfg: &GatesConfig,
        classifiers: &[(String, Arc<dyn DataClassifier>)],
    ) -> Result<Policies, ConfigError> {
        let mut list = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, p) in cfg.policies.iter().enumerate() {
            let err = |f: &str, problem: String| {
                let named = if p.name.is_empty() {
                    problem
                } else {
                    format!("{problem} (policy {:?})", p.name)
                };
                ConfigError::new(format!("gates.policies[{i}].{f}"), named)
            };
            if p.name.trim().is_empty() {
                return Err(err("name", "must not be empty".into()));
            }
            if !names.insert(p.name.clone()) {
                return Err(err("name", "duplicate policy name".into()));
            }
            if p.reviewers.trim().is_empty() {
                return Err(err(
                    "reviewers",
                    "must name the reviewer group that decides this policy's gates".into(),
                ));
            }
            let mut tools = None;
            let mut pattern = None;
            let mut classifier = None;
            match p.kind {
                GatePolicyKind::BeforeTool => {
                    if p.tools.is_empty() {
                        return Err(err("tools", "required for kind before_tool".into()));
                    }
                    tools =
                        Some(ToolFilter::new(&p.tools).map_err(|e| err("tools", e.to_string()))?);
                }
                GatePolicyKind::Cost => match p.max_cost_usd {
                    Some(c) if c.is_finite() && c >= 0.0 => {}
                    _ => {
                        return Err(err(
                            "max_cost_usd",
                            "required for kind cost, a non-negative number".into(),
                        ));
                    }
                },
                GatePolicyKind::Confidence => match p.min_confidence {
                    Some(c) if (0.0..=1.0).contains(&c) => {}
                    _ => {
                        return Err(err(
                            "min_confidence",
                            "required for kind confidence, between 0 and 1".into(),
                        ));
                    }
                },
                GatePolicyKind::DataRule => {
                    if let Some(pat) = &p.pattern {
                        pattern = Some(
                            regex::Regex::new(pat)
                                .map_err(|e| err("pattern", format!("invalid regex: {e}")))?,
                        );
                    }
                    if let Some(name) = &p.classifier {
                        classifier = Some(
                            classifiers
                                .iter()
                                .find(|(n, _)| n == name)
                                .map(|(_, c)| c.clone())
                                .ok_or_else(|| {
                                    err(
                                        "classifier",
                                        format!("no classifier named {name:?} is registered"),
                                    )
                                })?,
                        );
                    }
                    if pattern.is_none() && classifier.is_none() {
                        return Err(err(
                            "pattern",
                            "a data_rule needs a pattern or a classifier".into(),
                        ));
                    }
                }
                GatePolicyKind::FinalAnswer => {}
            }
            if p.on_timeout == TimeoutAction::Escalate && p.escalate_to.is_none() {
                return Err(err(
                    "escalate_to",
                    "required when on_timeout = escalate".into(),
                ));
            }
            list.push(CompiledPolicy {
                policy: p.clone(),
                tenant: None,
                tools,
                pattern,
                classifier,
            });
        }
        Ok(Policies { list })
    }

    /// The server's policies and every tenant's own (`[[tenants]]
    /// gate_policies`), which apply to that tenant's sessions only. Policy
    /// names are unique across all of them (a gate names its policy).
    /// `tenants`: each tenant's name and policies, in `[[tenants]]` order.
    pub fn compile_all(
        cfg: &GatesConfig,
        tenants: &[(&str, &[GatePolicy])],
        classifiers: &[(String, Arc<dyn DataClassifier>)],
    ) -> Result<Policies, ConfigError> {
        let mut all = Self::compile(cfg, classifiers)?;
        for (ti, (tenant, policies)) in tenants.iter().enumerate() {
            let own = GatesConfig {
                policies: policies.to_vec(),
                ..Default::default()
            };
            let compiled = Self::compile(&own, classifiers).map_err(|e| ConfigError {
                field: e.field.replacen(
                    "gates.policies",
                    &format!("tenants[{ti}].gate_policies"),
                    1,
                ),
                ..e
            })?;
            for (i, mut p) in compiled.list.into_iter().enumerate() {
                if all.list.iter().any(|q| q.policy.name == p.policy.name) {
                    return Err(ConfigError::new(
                        format!("tenants[{ti}].gate_policies[{i}].name"),
                        format!("{:?} is already the name of another policy", p.policy.name),
                    ));
                }
                p.tenant = Some((*tenant).to_string());
                all.list.push(p);
            }
        }
        Ok(all)
    }

    /// The first `before_tool` policy for this tool.
    pub fn before_tool(&self, tenant: &str, route: &str, tool: &str) -> Option<GateTerms> {
        self.list
            .iter()
            .filter(|p| p.policy.kind == GatePolicyKind::BeforeTool && p.applies(tenant, route))
            .find(|p| p.tools.as_ref().is_some_and(|f| f.allows(tool)))
            .map(|p| {
                p.terms(format!(
                    "tool {tool} needs approval (policy {:?})",
                    p.policy.name
                ))
            })
    }

    /// Policies that hold a model call: input data rules (first call of a
    /// turn only) and cost.
    pub fn before_model_call(
        &self,
        tenant: &str,
        route: &str,
        input: Option<&str>,
        estimated_cost_usd: Option<f64>,
    ) -> Option<GateTerms> {
        for p in self.list.iter().filter(|p| p.applies(tenant, route)) {
            match p.policy.kind {
                GatePolicyKind::DataRule if p.policy.applies_to != DataRuleTarget::Output => {
                    if let Some(text) = input
                        && let Some(why) = p.data_match(text)
                    {
                        return Some(p.terms(format!("the user's message {why}")));
                    }
                }
                GatePolicyKind::Cost => {
                    if let (Some(cost), Some(max)) = (estimated_cost_usd, p.policy.max_cost_usd)
                        && cost > max
                    {
                        return Some(p.terms(format!(
                            "the next model call is estimated at ${cost:.4}, above ${max:.4} (policy {:?})",
                            p.policy.name
                        )));
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Policies that hold a final answer.
    pub fn before_release(
        &self,
        tenant: &str,
        route: &str,
        answer: &str,
        confidence: Option<f64>,
    ) -> Option<GateTerms> {
        for p in self.list.iter().filter(|p| p.applies(tenant, route)) {
            match p.policy.kind {
                GatePolicyKind::FinalAnswer => {
                    return Some(p.terms(format!(
                        "final answers need review (policy {:?})",
                        p.policy.name
                    )));
                }
                GatePolicyKind::DataRule if p.policy.applies_to != DataRuleTarget::Input => {
                    if let Some(why) = p.data_match(answer) {
                        return Some(p.terms(format!("the draft answer {why}")));
                    }
                }
                GatePolicyKind::Confidence => {
                    if let (Some(c), Some(min)) = (confidence, p.policy.min_confidence)
                        && c < min
                    {
                        return Some(p.terms(format!(
                            "the model's confidence {c:.2} is below {min:.2} (policy {:?})",
                            p.policy.name
                        )));
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// The escalation target of a policy (by name), for timeouts.
    pub fn escalation(
        &self,
        cfg: &GatesConfig,
        kind: GateKind,
        policy: &str,
    ) -> Option<(String, u64)> {
        let builtin = |b: &BuiltinGate| b.escalate_to.clone().map(|t| (t, b.escalate_timeout_ms));
        match kind {
            GateKind::Explicit => builtin(&cfg.explicit),
            GateKind::NeedsAttention => builtin(&cfg.needs_attention),
            // A flow's gate step says what happens at its deadline.
            GateKind::Flow => None,
            _ => self
                .list
                .iter()
                .find(|p| p.policy.name == policy)
                .and_then(|p| {
                    p.policy
                        .escalate_to
                        .clone()
                        .map(|t| (t, p.policy.escalate_timeout_ms))
                }),
        }
    }
}

pub(crate) fn builtin_terms(
    b: &BuiltinGate,
    kind: GateKind,
    policy: &str,
    reason: String,
) -> GateTerms {
    GateTerms {
        kind,
        policy: policy.into(),
        reason,
        reviewers: b.reviewers.clone(),
        timeout_ms: b.timeout_ms,
        on_timeout: b.on_timeout,
    }
}

/// A reviewer's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    Approve,
    Reject,
    /// Replace the held payload (tool arguments as JSON, the answer text, the
    /// user message, or a tool result), then continue.
    Edit(String),
}

impl GateDecision {
    /// The decision as journaled (an edit's payload goes into `edited`).
    pub fn decision(&self) -> Decision {
        match self {
            GateDecision::Approve => Decision::Approve,
            GateDecision::Reject => Decision::Reject,
            GateDecision::Edit(_) => Decision::Edit,
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.decision().as_str()
    }
}

/// A filter and page of [`crate::RuntimeHandle::list_gates`].
#[derive(Debug, Clone, Default)]
pub struct GateQuery {
    pub status: Option<GateStatus>,
    pub session: Option<baton_types::SessionId>,
    pub policy: Option<String>,
    /// Only gates of this tenant's sessions (a [`crate::Caller`] sets its own).
    pub tenant: Option<String>,
    /// Only gates for one of these reviewer groups (a reviewer's [`crate::Caller`]
    /// sets its groups).
    pub groups: Option<Vec<String>>,
    /// Default 50, at most 1000.
    pub page_size: u32,
    pub page_token: Option<String>,
    /// The order of the page (and the form of its tokens).
    pub order: GateOrder,
}

/// The order of a [`GateQuery`]'s pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GateOrder {
    /// By gate id: the order gates opened in.
    #[default]
    Opened,
    /// The reviewers' queue: pending gates only, those with a deadline
    /// first (nearest first), then the others newest first. Takes no
    /// session or policy filter.
    Queue,
}

/// A page of gates.
#[derive(Debug, Clone)]
pub struct GateList {
    pub gates: Vec<GateRecord>,
    pub next_page_token: Option<String>,
}

/// The error for a decision on a gate that was decided already: it names
/// the first decision, who took it, and why.
pub(crate) fn already_decided(gate_id: GateId, o: &GateOutcome) -> Error {
    let why = if o.reason.is_empty() {
        "no reason given"
    } else {
        &o.reason
    };
    Error::FailedPrecondition(format!(
        "gate {gate_id} was already decided: {} by {} ({why})",
        o.decision, o.reviewer
    ))
}

/// Parse a gate id; errors name the field.
pub fn parse_gate_id(s: &str) -> Result<GateId> {
    s.parse()
        .map_err(|e| Error::InvalidArgument(format!("gate_id: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> GatesConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn policies_fire_where_they_should() {
        let cfg = policy(
            r#"
            [[policies]]
            name = "payments"
            reviewers = "ops"
            kind = "before_tool"
            tools = ["http_post", "pay.*"]
            [[policies]]
            name = "pii"
            reviewers = "ops"
            kind = "data_rule"
            pattern = "(?i)\\biban\\b"
            [[policies]]
            name = "spend"
            reviewers = "ops"
            kind = "cost"
            max_cost_usd = 0.5
            [[policies]]
            name = "unsure"
            reviewers = "ops"
            kind = "confidence"
            min_confidence = 0.7
            "#,
        );
        let p = Policies::compile(&cfg, &[]).unwrap();
        assert_eq!(
            p.before_tool("t", "r", "pay.refund").unwrap().policy,
            "payments"
        );
        assert!(p.before_tool("t", "r", "calculator").is_none());
        assert_eq!(
            p.before_model_call("t", "r", Some("my IBAN is"), None)
                .unwrap()
                .policy,
            "pii"
        );
        assert!(
            p.before_model_call("t", "r", Some("hello"), Some(0.1))
                .is_none()
        );
        assert_eq!(
            p.before_model_call("t", "r", None, Some(0.9))
                .unwrap()
                .policy,
            "spend"
        );
        assert_eq!(
            p.before_release("t", "r", "fine", Some(0.2))
                .unwrap()
                .policy,
            "unsure"
        );
        assert!(p.before_release("t", "r", "fine", Some(0.9)).is_none());
        assert_eq!(
            p.before_release("t", "r", "iban: x", None).unwrap().kind,
            GateKind::DataRule
        );

        // A tenant's own policies apply to its sessions only.
        let own: GatePolicy = toml::from_str(
            r#"
            name = "acme_answers"
            reviewers = "acme-leads"
            kind = "final_answer"
            "#,
        )
        .unwrap();
        let p = Policies::compile_all(&cfg, &[("acme", std::slice::from_ref(&own))], &[]).unwrap();
        assert_eq!(
            p.before_release("acme", "r", "fine", Some(0.9))
                .unwrap()
                .policy,
            "acme_answers"
        );
        assert!(p.before_release("globex", "r", "fine", Some(0.9)).is_none());
        let mut clash = own.clone();
        clash.name = "payments".into();
        let e = Policies::compile_all(&cfg, &[("acme", std::slice::from_ref(&clash))], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tenants[0].gate_policies[0].name"), "{e}");
    }

    #[test]
    fn bad_policies_are_named() {
        let bad = [
            (
                "name = \"x\"\nreviewers = \"r\"\nkind = \"before_tool\"",
                "gates.policies[0].tools",
            ),
            (
                "name = \"x\"\nreviewers = \"r\"\nkind = \"cost\"",
                "gates.policies[0].max_cost_usd",
            ),
            (
                "name = \"x\"\nreviewers = \"r\"\nkind = \"confidence\"\nmin_confidence = 2.0",
                "gates.policies[0].min_confidence",
            ),
            (
                "name = \"x\"\nreviewers = \"r\"\nkind = \"data_rule\"\npattern = \"(\"",
                "gates.policies[0].pattern",
            ),
            (
                "name = \"x\"\nreviewers = \"r\"\nkind = \"data_rule\"\nclassifier = \"nope\"",
                "gates.policies[0].classifier",
            ),
            (
                "name = \"x\"\nreviewers = \"r\"\nkind = \"final_answer\"\non_timeout = \"escalate\"",
                "gates.policies[0].escalate_to",
            ),
        ];
        for (text, field) in bad {
            let cfg = policy(&format!("[[policies]]\n{text}\n"));
            let err = Policies::compile(&cfg, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{field}: ")) && err.ends_with("(policy \"x\")"),
                "{err} should name {field} and the policy"
            );
        }
        // The index is the policy's place in the array.
        let cfg = policy(
            "[[policies]]\nname = \"a\"\nreviewers = \"r\"\nkind = \"final_answer\"\n\
             [[policies]]\nname = \"a\"\nreviewers = \"r\"\nkind = \"final_answer\"\n",
        );
        assert_eq!(
            Policies::compile(&cfg, &[]).unwrap_err().to_string(),
            "gates.policies[1].name: duplicate policy name (policy \"a\")"
        );
    }

    #[test]
    fn policies_need_reviewers_and_builtin_gates_default_them() {
        let err = toml::from_str::<GatesConfig>(
            "[[policies]]\nname = \"pay\"\nkind = \"final_answer\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("missing field `reviewers`"),
            "{err}"
        );
        let cfg =
            policy("[[policies]]\nname = \"pay\"\nkind = \"final_answer\"\nreviewers = \" \"\n");
        assert_eq!(
            Policies::compile(&cfg, &[]).unwrap_err().to_string(),
            "gates.policies[0].reviewers: must name the reviewer group that decides this policy's gates (policy \"pay\")"
        );
        let cfg = policy("[explicit]\ntimeout_ms = 5\n");
        assert_eq!(cfg.explicit.reviewers, "reviewers");
        assert_eq!(cfg.needs_attention.reviewers, "reviewers");
    }
}
