//! Policies: named sets of rules, attached to tenants and routes and
//! selected by session metadata, evaluated at a stage.
//!
//! Every detector of every rule of a stage is compiled into one
//! [`DetectorSet`], so a text is scanned once per stage whatever the number
//! of policies; each applicable rule then takes the hits of its own
//! detectors.

use std::collections::BTreeMap;

use crate::check::{Answer, Check, Via};
use crate::detect::{Builtin, CustomPattern, DetectorSet, Finding, Kind};
use crate::error::{Error, Result};

pub use crate::config::{GovernanceConfig, NoEligibleGate, PolicyConfig, RuleConfig};
pub use baton_types::{
    PolicyHit, PolicyMatch, PolicyOutcome as Outcome, PolicyStage as Stage, TimeoutAction,
};

/// What a session looks like to policy selection.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub tenant: &'a str,
    pub route: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
    /// At the tool stages: the tool called.
    pub tool: Option<&'a str>,
}

/// The result of one evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Every rule that matched, in policy and rule order: what it did and
    /// where (kinds and positions, never the matched text), as journaled.
    pub hits: Vec<PolicyHit>,
    /// The first blocking rule, with the message for the client.
    pub blocked: Option<Blocked>,
    /// The first `revise` rule, with what the model is told.
    pub revise: Option<Blocked>,
    /// Matches to pseudonymise, in order, without overlaps.
    pub redact: Vec<Finding>,
    /// Whether redacted values go back into the client's answer (false when
    /// any redacting rule says not to).
    pub restore: bool,
    /// Data classes the text adds to the call.
    pub data_classes: Vec<String>,
    /// The first `refuse` rule, with the answer the client gets.
    pub refused: Option<Blocked>,
    /// The first `gate` rule: a human decides before it goes on.
    pub gate: Option<Held>,
}

/// A blocking (or revising) rule and what the client (or model) is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub policy: String,
    pub rule: String,
    pub message: String,
}

/// A `gate` rule that matched: who decides, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub policy: String,
    pub rule: String,
    /// Why, for the reviewer.
    pub message: String,
    pub gate: GateSpec,
}

/// The gate of a `gate` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct GateSpec {
    pub reviewers: String,
    pub timeout_ms: u64,
    pub on_timeout: TimeoutAction,
}

/// How a rule reads the answer to its check.
#[derive(Debug, Clone, PartialEq)]
enum AnswerMatch {
    /// The label is one of these.
    In(Vec<String>),
    /// The label is none of these.
    NotIn(Vec<String>),
    /// The evaluator failed the answer.
    Fails,
}

struct Rule {
    name: String,
    kinds: Vec<Kind>,
    max_chars: Option<usize>,
    require: Option<regex::Regex>,
    schema: Option<std::sync::Arc<jsonschema::Validator>>,
    allowed_domains: Vec<String>,
    outcome: Outcome,
    data_class: Option<String>,
    restore: bool,
    message: Option<String>,
    /// The check it asks (an index into `Policies::checks`).
    check: Option<(usize, AnswerMatch)>,
    gate: Option<GateSpec>,
}

struct Policy {
    name: String,
    stage: Stage,
    tenants: Vec<String>,
    routes: Vec<String>,
    when: BTreeMap<String, String>,
    tools: Vec<String>,
    rules: Vec<Rule>,
}

impl Policy {
    fn applies(&self, s: &Subject<'_>) -> bool {
        (self.tenants.is_empty() || self.tenants.iter().any(|t| t == s.tenant))
            && (self.routes.is_empty() || self.routes.iter().any(|r| r == s.route))
            && self
                .when
                .iter()
                .all(|(k, v)| s.metadata.get(k).is_some_and(|m| m == v))
            && (self.tools.is_empty()
                || s.tool.is_some_and(|tool| {
                    self.tools.iter().any(|p| match p.strip_suffix('*') {
                        Some(prefix) => tool.starts_with(prefix),
                        None => tool == p,
                    })
                }))
    }
}

/// Compiled policies, ready to evaluate. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct Policies {
    policies: Vec<Policy>,
    /// One detector set per stage with policies.
    detectors: Vec<(Stage, DetectorSet)>,
    /// Every distinct check the rules ask.
    checks: Vec<Check>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.policies.iter().map(|p| (&p.name, p.stage)))
            .finish()
    }
}

/// The stages and outcomes built so far; others are refused at load
/// rather than accepted and not enforced.
pub const SUPPORTED: &[(Stage, &[Outcome])] = &[
    (
        Stage::Input,
        &[
            Outcome::Allow,
            Outcome::Redact,
            Outcome::Block,
            Outcome::Tag,
            Outcome::Gate,
            Outcome::Refuse,
        ],
    ),
    (
        Stage::Output,
        &[
            Outcome::Allow,
            Outcome::Redact,
            Outcome::Block,
            Outcome::Revise,
            Outcome::Gate,
        ],
    ),
    (
        Stage::ToolArguments,
        &[Outcome::Allow, Outcome::Block, Outcome::Gate],
    ),
    (
        Stage::ToolResult,
        &[
            Outcome::Allow,
            Outcome::Redact,
            Outcome::Block,
            Outcome::Gate,
        ],
    ),
];

impl Policies {
    /// Check and compile `[[policies]]`; errors name the field
    /// (`policies[0].rules[1].regex`). Rules naming a `classifier` need
    /// [`Self::compile_with`].
    pub fn compile(configs: &[PolicyConfig], settings: &GovernanceConfig) -> Result<Policies> {
        Self::compile_with(configs, settings, &[])
    }

    /// [`Self::compile`], with the names of the classifiers the embedder
    /// registered.
    pub fn compile_with(
        configs: &[PolicyConfig],
        settings: &GovernanceConfig,
        classifiers: &[&str],
    ) -> Result<Policies> {
        if let Some(g) = &settings.no_eligible_gate {
            if g.reviewers.trim().is_empty() {
                return Err(Error::Config {
                    field: "governance.no_eligible_gate.reviewers".into(),
                    problem: "must name the reviewer group that decides these gates".into(),
                });
            }
            if g.on_timeout == TimeoutAction::Escalate {
                return Err(Error::Config {
                    field: "governance.no_eligible_gate.on_timeout".into(),
                    problem: "times out to reject or approve".into(),
                });
            }
        }
        let mut checks: Vec<Check> = Vec::new();
        let mut policies = Vec::new();
        let mut patterns: BTreeMap<Stage, (Vec<Builtin>, Vec<CustomPattern>)> = BTreeMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, pc) in configs.iter().enumerate() {
            let field = |f: &str| format!("policies[{i}].{f}");
            let bad = |f: &str, problem: String| Error::Config {
                field: field(f),
                problem,
            };
            if pc.name.trim().is_empty() {
                return Err(bad("name", "must not be empty".into()));
            }
            if !names.insert(pc.name.as_str()) {
                return Err(bad("name", format!("{:?} is defined twice", pc.name)));
            }
            let Some((_, outcomes)) = SUPPORTED.iter().find(|(s, _)| *s == pc.stage) else {
                return Err(bad(
                    "stage",
                    format!(
                        "stage {} is not supported yet (supported: input, output, tool_arguments, tool_result)",
                        pc.stage.as_str()
                    ),
                ));
            };
            if !pc.tools.is_empty() && !matches!(pc.stage, Stage::ToolArguments | Stage::ToolResult)
            {
                return Err(bad(
                    "tools",
                    "applies to the stages tool_arguments and tool_result only".into(),
                ));
            }
            if pc.rules.is_empty() {
                return Err(bad("rules", "a policy needs at least one rule".into()));
            }
            let (builtins, custom) = patterns.entry(pc.stage).or_default();
            let mut rules = Vec::new();
            let mut rule_names = std::collections::HashSet::new();
            for (j, rc) in pc.rules.iter().enumerate() {
                let rf = |f: &str| format!("rules[{j}].{f}");
                if rc.name.trim().is_empty() || rc.name.contains('/') {
                    return Err(bad(&rf("name"), "must be non-empty, without '/'".into()));
                }
                if !rule_names.insert(rc.name.as_str()) {
                    return Err(bad(
                        &rf("name"),
                        format!("{:?} is defined twice in policy {:?}", rc.name, pc.name),
                    ));
                }
                if !outcomes.contains(&rc.outcome) {
                    return Err(bad(
                        &rf("outcome"),
                        format!(
                            "outcome {} is not supported at stage {} yet",
                            rc.outcome.as_str(),
                            pc.stage.as_str()
                        ),
                    ));
                }
                let mut kinds: Vec<Kind> = rc.detect.iter().map(|b| Kind::Builtin(*b)).collect();
                builtins.extend(rc.detect.iter().copied());
                let custom_name = format!("{}/{}", pc.name, rc.name);
                if let Some(re) = &rc.regex {
                    if !rc.keywords.is_empty() {
                        return Err(bad(
                            &rf("keywords"),
                            "set either regex or keywords, not both".into(),
                        ));
                    }
                    custom.push(CustomPattern {
                        name: custom_name.clone(),
                        regex: re.clone(),
                    });
                    kinds.push(Kind::Custom(custom_name.clone()));
                } else if !rc.keywords.is_empty() {
                    if rc.keywords.iter().any(|k| k.trim().is_empty()) {
                        return Err(bad(&rf("keywords"), "a keyword is empty".into()));
                    }
                    custom.push(CustomPattern::keywords(custom_name.clone(), &rc.keywords));
                    kinds.push(Kind::Custom(custom_name.clone()));
                }
                let output_only = [
                    ("require", rc.require.is_some()),
                    ("json_schema", rc.json_schema.is_some()),
                    ("allowed_domains", !rc.allowed_domains.is_empty()),
                ];
                if pc.stage != Stage::Output
                    && let Some((key, _)) = output_only.iter().find(|(_, set)| *set)
                {
                    return Err(bad(&rf(key), "applies to stage output only".into()));
                }
                let require = match &rc.require {
                    Some(re) => Some(
                        regex::RegexBuilder::new(re)
                            .size_limit(1 << 22)
                            .build()
                            .map_err(|e| bad(&rf("require"), e.to_string()))?,
                    ),
                    None => None,
                };
                let schema = match &rc.json_schema {
                    Some(js) => Some(std::sync::Arc::new(
                        jsonschema::validator_for(js)
                            .map_err(|e| bad(&rf("json_schema"), e.to_string()))?,
                    )),
                    None => None,
                };
                let check = compile_check(pc.stage, rc, classifiers, &mut checks)
                    .map_err(|(key, problem)| bad(&rf(key), problem))?;
                let checks_text = !kinds.is_empty()
                    || rc.max_chars.is_some()
                    || output_only.iter().any(|(_, set)| *set);
                if check.is_some() && checks_text {
                    return Err(bad(
                        &rf("classifier"),
                        "a classifier or evaluator rule checks nothing else; put detectors and patterns in a rule of their own".into(),
                    ));
                }
                if check.is_none() && !checks_text {
                    return Err(bad(
                        &rf("detect"),
                        "a rule needs detect, regex, keywords, max_chars, classifier or classifier_route (or, for output, require, json_schema, allowed_domains or evaluator_route)".into(),
                    ));
                }
                if check.is_some() && rc.outcome == Outcome::Redact {
                    return Err(bad(
                        &rf("outcome"),
                        "a classifier or evaluator finds no positions to redact; use block, refuse, gate, tag or revise".into(),
                    ));
                }
                let gate = match (&rc.reviewers, rc.outcome) {
                    (Some(r), Outcome::Gate) if !r.trim().is_empty() => {
                        if rc.on_timeout == TimeoutAction::Escalate {
                            return Err(bad(
                                &rf("on_timeout"),
                                "a policy gate times out to reject or approve".into(),
                            ));
                        }
                        Some(GateSpec {
                            reviewers: r.clone(),
                            timeout_ms: rc.timeout_ms,
                            on_timeout: rc.on_timeout,
                        })
                    }
                    (_, Outcome::Gate) => {
                        return Err(bad(
                            &rf("reviewers"),
                            "a gate rule needs the reviewer group that decides its gates".into(),
                        ));
                    }
                    (Some(_), _) => {
                        return Err(bad(&rf("reviewers"), "applies to outcome gate only".into()));
                    }
                    (None, _) => None,
                };
                if gate.is_none() && (rc.timeout_ms > 0 || rc.on_timeout != TimeoutAction::Reject) {
                    return Err(bad(
                        &rf("timeout_ms"),
                        "timeout_ms and on_timeout apply to outcome gate only".into(),
                    ));
                }
                if rc.outcome == Outcome::Refuse
                    && rc.message.as_deref().is_none_or(|m| m.trim().is_empty())
                {
                    return Err(bad(
                        &rf("message"),
                        "a refuse rule needs the message the client gets instead of an answer"
                            .into(),
                    ));
                }
                if rc.outcome == Outcome::Redact && (require.is_some() || schema.is_some()) {
                    return Err(bad(
                        &rf("outcome"),
                        "require and json_schema cannot redact; use block or revise".into(),
                    ));
                }
                if rc.outcome == Outcome::Tag
                    && rc.data_class.is_none()
                    && (rc.regex.is_some()
                        || !rc.keywords.is_empty()
                        || rc.max_chars.is_some()
                        || check.is_some())
                {
                    return Err(bad(
                        &rf("data_class"),
                        "a tag rule with regex, keywords, max_chars or a classifier needs a data_class".into(),
                    ));
                }
                if rc.outcome == Outcome::Redact && rc.max_chars.is_some() {
                    return Err(bad(
                        &rf("max_chars"),
                        "a length limit cannot redact; use block".into(),
                    ));
                }
                rules.push(Rule {
                    name: rc.name.clone(),
                    kinds,
                    max_chars: rc.max_chars,
                    require,
                    schema,
                    allowed_domains: rc
                        .allowed_domains
                        .iter()
                        .map(|d| d.trim().trim_start_matches('.').to_ascii_lowercase())
                        .collect(),
                    outcome: rc.outcome,
                    data_class: rc.data_class.clone(),
                    restore: rc.restore,
                    message: rc.message.clone(),
                    check,
                    gate,
                });
            }
            policies.push(Policy {
                name: pc.name.clone(),
                stage: pc.stage,
                tenants: pc.tenants.clone(),
                routes: pc.routes.clone(),
                when: pc.when.clone(),
                tools: pc.tools.clone(),
                rules,
            });
        }
        let mut detectors = Vec::new();
        for (stage, (builtins, custom)) in patterns {
            let set =
                DetectorSet::new(&builtins, &custom, &settings.phone_region).map_err(|e| {
                    Error::Config {
                        field: "policies".into(),
                        problem: format!("stage {}: {e}", stage.as_str()),
                    }
                })?;
            detectors.push((stage, set));
        }
        if !configs.is_empty() {
            // Checked here too, so an unknown region fails with no policy using phones.
            DetectorSet::new(&[], &[], &settings.phone_region).map_err(|e| Error::Config {
                field: "governance.phone_region".into(),
                problem: e.to_string(),
            })?;
        }
        Ok(Policies {
            policies,
            detectors,
            checks,
        })
    }

    /// The checks (classifiers, evaluators) the rules of `stage` that apply
    /// to `subject` ask, by id. `tags_only`: only those of `tag` rules (a
    /// conversation's earlier messages, whose other outcomes were decided
    /// when they were new).
    pub fn checks(&self, stage: Stage, subject: &Subject<'_>, tags_only: bool) -> Vec<usize> {
        let mut ids = Vec::new();
        for p in self
            .policies
            .iter()
            .filter(|p| p.stage == stage && p.applies(subject))
        {
            for r in &p.rules {
                if let Some((id, _)) = &r.check
                    && (!tags_only || r.outcome == Outcome::Tag)
                    && !ids.contains(id)
                {
                    ids.push(*id);
                }
            }
        }
        ids
    }

    /// The check with this id.
    pub fn check(&self, id: usize) -> Option<&Check> {
        self.checks.get(id)
    }

    /// The gate of rule `rule` of policy `policy`, when it is a gate rule.
    pub fn gate_of(&self, policy: &str, rule: &str) -> Option<&GateSpec> {
        self.policies
            .iter()
            .find(|p| p.name == policy)?
            .rules
            .iter()
            .find(|r| r.name == rule)?
            .gate
            .as_ref()
    }

    /// Routes the rules call (`classifier_route`, `evaluator_route`), with
    /// the field naming each, for the runtime to check they exist.
    pub fn routes_called(configs: &[PolicyConfig]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, p) in configs.iter().enumerate() {
            for (j, r) in p.rules.iter().enumerate() {
                for (key, route) in [
                    ("classifier_route", &r.classifier_route),
                    ("evaluator_route", &r.evaluator_route),
                ] {
                    if let Some(route) = route {
                        out.push((format!("policies[{i}].rules[{j}].{key}"), route.clone()));
                    }
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether any policy of `stage` applies to `subject`.
    pub fn applies(&self, stage: Stage, subject: &Subject<'_>) -> bool {
        self.policies
            .iter()
            .any(|p| p.stage == stage && p.applies(subject))
    }

    /// Evaluate `text` at `stage` for `subject`; rules that ask a check
    /// (classifiers, evaluators) are left out.
    pub fn evaluate(&self, stage: Stage, subject: &Subject<'_>, text: &str) -> Verdict {
        self.evaluate_with(stage, subject, text, &[])
    }

    /// Evaluate `text` at `stage` for `subject`, with the answers to the
    /// checks asked of it (by check id); a rule whose check has no answer
    /// here is left out.
    pub fn evaluate_with(
        &self,
        stage: Stage,
        subject: &Subject<'_>,
        text: &str,
        answers: &[(usize, Answer)],
    ) -> Verdict {
        let mut v = Verdict {
            restore: true,
            ..Verdict::default()
        };
        let applicable: Vec<&Policy> = self
            .policies
            .iter()
            .filter(|p| p.stage == stage && p.applies(subject))
            .collect();
        if applicable.is_empty() {
            return v;
        }
        let findings = self
            .detectors
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, d)| d.detect(text))
            .unwrap_or_default();
        let mut chars = None;
        for p in applicable {
            for r in &p.rules {
                let mut matches: Vec<Finding> = findings
                    .iter()
                    .filter(|f| r.kinds.contains(&f.kind))
                    .cloned()
                    .collect();
                if let Some(max) = r.max_chars {
                    let n = *chars.get_or_insert_with(|| text.chars().count());
                    if n > max {
                        matches.push(whole("max_chars", text));
                    }
                }
                let mut detail = None;
                if let Some(re) = &r.require
                    && !re.is_match(text)
                {
                    matches.push(whole("require", text));
                    detail = Some(format!("the answer must match {:?}", re.as_str()));
                }
                if let Some(schema) = &r.schema
                    && let Err(why) = crate::json::schema_check(schema, text)
                {
                    matches.push(whole("json_schema", text));
                    detail = Some(why);
                }
                if !r.allowed_domains.is_empty() {
                    let links = crate::json::foreign_links(text, &r.allowed_domains);
                    if !links.is_empty() {
                        detail = Some(format!(
                            "links may only point to {}",
                            r.allowed_domains.join(", ")
                        ));
                    }
                    matches.extend(links);
                }
                if let Some((id, how)) = &r.check
                    && let Some((_, answer)) = answers.iter().find(|(i, _)| i == id)
                    && let Some(why) = answer_matches(answer, how)
                {
                    let kind = self.checks.get(*id).map(Check::kind).unwrap_or_default();
                    matches.push(whole(&kind, text));
                    detail = Some(why);
                }
                if matches.is_empty() {
                    continue;
                }
                let message = r.message.clone().unwrap_or_else(|| {
                    let at: Vec<String> = matches
                        .iter()
                        .map(|m| format!("{} at {}..{}", m.kind.as_str(), m.start, m.end))
                        .collect();
                    let verb = match r.outcome {
                        Outcome::Block => "blocked",
                        Outcome::Revise => "sent back",
                        Outcome::Redact => "redacted",
                        Outcome::Tag => "tagged",
                        Outcome::Gate => "held",
                        Outcome::Refuse => "refused",
                        Outcome::Allow => "noted",
                    };
                    let mut m = format!(
                        "policy {:?} rule {:?} {verb} the {}: {}",
                        p.name,
                        r.name,
                        stage_noun(stage),
                        at.join(", ")
                    );
                    if let Some(d) = &detail {
                        m.push_str(" (");
                        m.push_str(d);
                        m.push(')');
                    }
                    m
                });
                match r.outcome {
                    Outcome::Block if v.blocked.is_none() => {
                        v.blocked = Some(Blocked {
                            policy: p.name.clone(),
                            rule: r.name.clone(),
                            message: message.clone(),
                        });
                    }
                    Outcome::Revise if v.revise.is_none() => {
                        v.revise = Some(Blocked {
                            policy: p.name.clone(),
                            rule: r.name.clone(),
                            message: message.clone(),
                        });
                    }
                    Outcome::Refuse if v.refused.is_none() => {
                        v.refused = Some(Blocked {
                            policy: p.name.clone(),
                            rule: r.name.clone(),
                            message: message.clone(),
                        });
                    }
                    Outcome::Gate if v.gate.is_none() => {
                        if let Some(g) = &r.gate {
                            v.gate = Some(Held {
                                policy: p.name.clone(),
                                rule: r.name.clone(),
                                message: message.clone(),
                                gate: g.clone(),
                            });
                        }
                    }
                    Outcome::Redact => {
                        v.restore &= r.restore;
                        v.redact.extend(matches.iter().cloned());
                    }
                    Outcome::Tag => {
                        for m in &matches {
                            let class = r.data_class.clone().or_else(|| match &m.kind {
                                Kind::Builtin(b) => Some(b.data_class().to_string()),
                                Kind::Custom(_) => None,
                            });
                            if let Some(c) = class
                                && !v.data_classes.contains(&c)
                            {
                                v.data_classes.push(c);
                            }
                        }
                    }
                    _ => {}
                }
                v.hits.push(PolicyHit {
                    policy: p.name.clone(),
                    rule: r.name.clone(),
                    outcome: r.outcome,
                    message,
                    matches: matches
                        .iter()
                        .map(|m| PolicyMatch {
                            kind: m.kind.as_str().to_string(),
                            start: m.start as u64,
                            end: m.end as u64,
                        })
                        .collect(),
                });
            }
        }
        v.redact.sort_by_key(|f| (f.start, f.end));
        v.redact.dedup();
        v
    }
}

/// Whether a check's answer makes its rule match, and why.
fn answer_matches(answer: &Answer, how: &AnswerMatch) -> Option<String> {
    match (answer, how) {
        (Answer::Label(l), AnswerMatch::In(set)) => {
            set.contains(l).then(|| format!("labelled {l:?}"))
        }
        (Answer::Label(l), AnswerMatch::NotIn(set)) => {
            (!set.contains(l)).then(|| format!("labelled {l:?}, not one of {}", set.join(", ")))
        }
        (Answer::Fail(why), AnswerMatch::Fails) => Some(format!("the evaluator said: {why}")),
        (Answer::Error(e), _) => Some(format!("the check failed, so the rule applies: {e}")),
        _ => None,
    }
}

/// The check a rule asks, validated and added to `checks` (shared with
/// rules asking the same); errors name the key.
fn compile_check(
    stage: Stage,
    rc: &RuleConfig,
    classifiers: &[&str],
    checks: &mut Vec<Check>,
) -> std::result::Result<Option<(usize, AnswerMatch)>, (&'static str, String)> {
    let via = match (&rc.classifier, &rc.classifier_route) {
        (Some(_), Some(_)) => {
            return Err((
                "classifier_route",
                "set either classifier or classifier_route, not both".into(),
            ));
        }
        (Some(name), None) => {
            if !classifiers.contains(&name.as_str()) {
                return Err((
                    "classifier",
                    format!(
                        "no policy classifier named {name:?} is registered (registered: {})",
                        if classifiers.is_empty() {
                            "none".to_string()
                        } else {
                            classifiers.join(", ")
                        }
                    ),
                ));
            }
            Some(Via::Embedder(name.clone()))
        }
        (None, Some(route)) => Some(Via::Route(route.clone())),
        (None, None) => None,
    };
    let on_checks = matches!(stage, Stage::Input | Stage::Output);
    if let Some(via) = via {
        if !on_checks {
            return Err((
                "classifier",
                "classifiers apply at the stages input and output".into(),
            ));
        }
        if rc.evaluator_route.is_some() {
            return Err((
                "evaluator_route",
                "a rule asks a classifier or an evaluator, not both".into(),
            ));
        }
        if matches!(via, Via::Route(_)) && rc.labels.len() < 2 {
            return Err((
                "labels",
                "a classifier route needs at least two labels to choose from".into(),
            ));
        }
        let how = match (rc.match_labels.is_empty(), rc.allowed_labels.is_empty()) {
            (false, true) => AnswerMatch::In(rc.match_labels.clone()),
            (true, false) => AnswerMatch::NotIn(rc.allowed_labels.clone()),
            _ => {
                return Err((
                    "match_labels",
                    "a classifier rule needs either match_labels or allowed_labels".into(),
                ));
            }
        };
        let (AnswerMatch::In(named) | AnswerMatch::NotIn(named)) = &how else {
            unreachable!("built above as In or NotIn")
        };
        if !rc.labels.is_empty()
            && let Some(l) = named.iter().find(|l| !rc.labels.contains(l))
        {
            return Err((
                "match_labels",
                format!("{l:?} is not one of the labels ({})", rc.labels.join(", ")),
            ));
        }
        if rc.evaluator_prompt.is_some() {
            return Err(("evaluator_prompt", "set without evaluator_route".into()));
        }
        let check = Check::Classify {
            via,
            labels: rc.labels.clone(),
            instructions: rc.instructions.clone(),
        };
        return Ok(Some((intern(checks, check), how)));
    }
    let classifier_keys = [
        ("labels", !rc.labels.is_empty()),
        ("instructions", rc.instructions.is_some()),
        ("match_labels", !rc.match_labels.is_empty()),
        ("allowed_labels", !rc.allowed_labels.is_empty()),
    ];
    if let Some((key, _)) = classifier_keys.iter().find(|(_, set)| *set) {
        return Err((key, "set without classifier or classifier_route".into()));
    }
    if let Some(route) = &rc.evaluator_route {
        if stage != Stage::Output {
            return Err(("evaluator_route", "applies to stage output only".into()));
        }
        let check = Check::Evaluate {
            route: route.clone(),
            prompt: rc.evaluator_prompt.clone(),
        };
        return Ok(Some((intern(checks, check), AnswerMatch::Fails)));
    }
    if rc.evaluator_prompt.is_some() {
        return Err(("evaluator_prompt", "set without evaluator_route".into()));
    }
    Ok(None)
}

/// The id of `check`, added when new.
fn intern(checks: &mut Vec<Check>, check: Check) -> usize {
    match checks.iter().position(|c| *c == check) {
        Some(i) => i,
        None => {
            checks.push(check);
            checks.len() - 1
        }
    }
}

/// A match covering the whole text (a rule about the text as a whole).
fn whole(kind: &str, text: &str) -> Finding {
    Finding {
        kind: Kind::Custom(kind.into()),
        start: 0,
        end: text.len(),
    }
}

fn stage_noun(stage: Stage) -> &'static str {
    match stage {
        Stage::Input => "message",
        Stage::Output => "answer",
        Stage::ToolArguments => "tool arguments",
        Stage::ToolResult => "tool result",
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    fn compile(toml_text: &str) -> Result<Policies> {
        #[derive(Deserialize)]
        struct File {
            policies: Vec<PolicyConfig>,
        }
        let f: File = toml::from_str(toml_text).map_err(|e| Error::Invalid(e.to_string()))?;
        Policies::compile(&f.policies, &GovernanceConfig::default())
    }

    const POLICIES: &str = r#"
[[policies]]
name = "pii"
stage = "input"
[[policies.rules]]
name = "contacts"
detect = ["email", "phone"]
outcome = "redact"
[[policies.rules]]
name = "money"
detect = ["iban", "payment_card"]
outcome = "tag"

[[policies]]
name = "guests"
stage = "input"
tenants = ["acme"]
when = { tier = "guest" }
[[policies.rules]]
name = "no-secrets"
detect = ["secret"]
outcome = "block"
[[policies.rules]]
name = "short"
max_chars = 30
outcome = "block"
message = "messages from guests are limited to 30 characters"
"#;

    #[test]
    fn rules_apply_by_tenant_route_and_metadata() {
        let p = compile(POLICIES).unwrap();
        let guest = BTreeMap::from([("tier".to_string(), "guest".to_string())]);
        let platinum = BTreeMap::from([("tier".to_string(), "platinum".to_string())]);
        let s = |tenant, metadata| Subject {
            tenant,
            route: "default",
            metadata,
            tool: None,
        };
        let text = "mail a@b.io, IBAN GB82WEST12345698765432";
        let v = p.evaluate(Stage::Input, &s("acme", &platinum), text);
        assert!(v.blocked.is_none());
        assert_eq!(v.redact.len(), 1);
        assert_eq!(&text[v.redact[0].start..v.redact[0].end], "a@b.io");
        assert_eq!(v.data_classes, ["financial"]);
        assert_eq!(
            v.hits.iter().map(|h| h.rule.as_str()).collect::<Vec<_>>(),
            ["contacts", "money"]
        );
        // A guest of acme is held to the length limit; of another tenant, not.
        let v = p.evaluate(Stage::Input, &s("acme", &guest), text);
        let b = v.blocked.unwrap();
        assert_eq!((b.policy.as_str(), b.rule.as_str()), ("guests", "short"));
        assert_eq!(
            b.message,
            "messages from guests are limited to 30 characters"
        );
        assert!(
            p.evaluate(Stage::Input, &s("globex", &guest), text)
                .blocked
                .is_none()
        );
        // A blocked secret names the policy, rule, kind and position only.
        let v = p.evaluate(Stage::Input, &s("acme", &guest), "AKIAIOSFODNN7EXAMPLE");
        let b = v.blocked.unwrap();
        assert_eq!(
            b.message,
            "policy \"guests\" rule \"no-secrets\" blocked the message: secret at 0..20"
        );
        assert!(!b.message.contains("AKIA"));
        // Nothing applies at another stage.
        assert_eq!(
            p.evaluate(Stage::Output, &s("acme", &guest), text),
            Verdict {
                restore: true,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn bad_policies_are_refused_naming_the_field() {
        let err = |t: &str| compile(t).unwrap_err().to_string();
        assert_eq!(
            err(
                "[[policies]]\nname = \"p\"\nstage = \"input\"\ntools = [\"x\"]\n[[policies.rules]]\nname = \"r\"\nkeywords = [\"x\"]\noutcome = \"block\"\n"
            ),
            "policies[0].tools: applies to the stages tool_arguments and tool_result only"
        );
        assert_eq!(
            err(
                "[[policies]]\nname = \"p\"\nstage = \"tool_result\"\n[[policies.rules]]\nname = \"r\"\nkeywords = [\"x\"]\noutcome = \"revise\"\n"
            ),
            "policies[0].rules[0].outcome: outcome revise is not supported at stage tool_result yet"
        );
        assert_eq!(
            err(
                "[[policies]]\nname = \"p\"\nstage = \"input\"\n[[policies.rules]]\nname = \"r\"\nkeywords = [\"x\"]\noutcome = \"revise\"\n"
            ),
            "policies[0].rules[0].outcome: outcome revise is not supported at stage input yet"
        );
        assert_eq!(
            err(
                "[[policies]]\nname = \"p\"\nstage = \"input\"\n[[policies.rules]]\nname = \"r\"\noutcome = \"block\"\n"
            ),
            "policies[0].rules[0].detect: a rule needs detect, regex, keywords, max_chars, classifier or classifier_route (or, for output, require, json_schema, allowed_domains or evaluator_route)"
        );
        assert!(
            err("[[policies]]\nname = \"p\"\nstage = \"input\"\n[[policies.rules]]\nname = \"r\"\nregex = \"(\"\noutcome = \"block\"\n")
                .contains("p/r")
        );
        assert!(err("[[policies]]\nname = \"p\"\nstage = \"input\"\n[[policies.rules]]\nname = \"r\"\ndetect = [\"emial\"]\noutcome = \"block\"\n").contains("emial"));
    }

    #[test]
    fn output_rules_require_validate_and_bound_links() {
        let p = compile(
            r#"
[[policies]]
name = "sales"
stage = "output"
[[policies.rules]]
name = "no-guarantees"
keywords = ["we guarantee"]
outcome = "revise"
message = "Do not promise guarantees."
[[policies.rules]]
name = "disclaimer"
require = "(?i)not financial advice"
outcome = "revise"
[[policies.rules]]
name = "quote"
json_schema = { type = "object", properties = { discount = { type = "number", maximum = 15 } } }
outcome = "block"
[[policies.rules]]
name = "links"
allowed_domains = ["example.com"]
outcome = "redact"
"#,
        )
        .unwrap();
        let none = BTreeMap::new();
        let s = Subject {
            tenant: "t",
            route: "r",
            metadata: &none,
            tool: None,
        };
        let ok = "{\"discount\": 10, \"note\": \"not financial advice\"}";
        let v = p.evaluate(Stage::Output, &s, ok);
        assert!(v.hits.is_empty(), "{:?}", v.hits);
        let v = p.evaluate(Stage::Output, &s, "{\"discount\": 25}");
        let rules: Vec<&str> = v.hits.iter().map(|h| h.rule.as_str()).collect();
        assert_eq!(rules, ["disclaimer", "quote"]);
        assert!(v.blocked.unwrap().message.contains("/discount"));
        let revise = v.revise.unwrap();
        assert_eq!(revise.rule, "disclaimer");
        assert!(revise.message.contains("must match"), "{}", revise.message);
        let text = "We guarantee it; see https://evil.test/x. Not financial advice.";
        let v = p.evaluate(Stage::Output, &s, text);
        assert_eq!(v.revise.unwrap().message, "Do not promise guarantees.");
        assert_eq!(v.redact.len(), 1);
        assert_eq!(
            &text[v.redact[0].start..v.redact[0].end],
            "https://evil.test/x."
        );
        // Output-only keys are refused at input.
        assert!(
            compile("[[policies]]\nname = \"p\"\nstage = \"input\"\n[[policies.rules]]\nname = \"r\"\nrequire = \"x\"\noutcome = \"block\"\n")
                .unwrap_err()
                .to_string()
                .contains("rules[0].require: applies to stage output only")
        );
    }

    #[test]
    fn classifiers_evaluators_gates_and_refusals() {
        let p = Policies::compile_with(
            &toml::from_str::<std::collections::HashMap<String, Vec<PolicyConfig>>>(
                r#"
[[policies]]
name = "purpose"
stage = "input"
[[policies.rules]]
name = "intent"
classifier_route = "cheap"
labels = ["billing", "orders", "other"]
allowed_labels = ["billing", "orders"]
outcome = "refuse"
message = "I can only help with billing and orders."
[[policies.rules]]
name = "health"
classifier = "medical"
match_labels = ["health"]
outcome = "tag"
data_class = "health"
[[policies.rules]]
name = "legal"
keywords = ["lawsuit"]
outcome = "gate"
reviewers = "legal"
timeout_ms = 60000

[[policies]]
name = "quality"
stage = "output"
[[policies.rules]]
name = "grounded"
evaluator_route = "cheap"
outcome = "revise"
[[policies.rules]]
name = "same-intent"
classifier_route = "cheap"
labels = ["billing", "orders", "other"]
allowed_labels = ["billing", "orders"]
outcome = "gate"
reviewers = "support"
"#,
            )
            .unwrap()["policies"],
            &GovernanceConfig::default(),
            &["medical"],
        )
        .unwrap();
        let none = BTreeMap::new();
        let s = Subject {
            tenant: "t",
            route: "r",
            metadata: &none,
            tool: None,
        };
        // Input asks two checks; the output's classifier is the same
        // question as the input's (one id), the evaluator another.
        let input = p.checks(Stage::Input, &s, false);
        assert_eq!(input.len(), 2);
        let output = p.checks(Stage::Output, &s, false);
        assert_eq!(output.len(), 2);
        assert!(output.contains(&input[0]));
        assert_eq!(p.checks(Stage::Input, &s, true), [input[1]]);
        assert_eq!(p.check(input[0]).unwrap().kind(), "classifier_route:cheap");
        // Without answers, check rules are left out.
        let text = "what is the weather?";
        assert!(p.evaluate(Stage::Input, &s, text).hits.is_empty());
        let answers = [
            (input[0], Answer::Label("other".into())),
            (input[1], Answer::Label("health".into())),
        ];
        let v = p.evaluate_with(Stage::Input, &s, text, &answers);
        assert_eq!(
            v.refused.as_ref().unwrap().message,
            "I can only help with billing and orders."
        );
        assert_eq!(v.data_classes, ["health"]);
        assert_eq!(v.hits[0].matches[0].kind, "classifier_route:cheap");
        // An allowed purpose passes; a failed classifier fails closed.
        let ok = [(input[0], Answer::Label("billing".into()))];
        assert!(
            p.evaluate_with(Stage::Input, &s, text, &ok)
                .refused
                .is_none()
        );
        let down = [(input[0], Answer::Error("route cheap failed: 503".into()))];
        let v = p.evaluate_with(Stage::Input, &s, text, &down);
        assert!(v.refused.is_some());
        assert!(v.hits[0].message.is_empty() || !v.hits[0].message.contains("weather"));
        // A gate rule carries its reviewers.
        let v = p.evaluate(Stage::Input, &s, "about the lawsuit");
        let held = v.gate.unwrap();
        assert_eq!(held.gate.reviewers, "legal");
        assert_eq!(held.gate.timeout_ms, 60000);
        assert_eq!(p.gate_of("purpose", "legal"), Some(&held.gate));
        // The evaluator's FAIL revises, with its reason.
        let evaluator = *output.iter().find(|i| **i != input[0]).unwrap();
        let v = p.evaluate_with(
            Stage::Output,
            &s,
            "answer",
            &[(
                evaluator,
                Answer::Fail("not grounded in the context".into()),
            )],
        );
        assert!(
            v.revise
                .unwrap()
                .message
                .contains("not grounded in the context"),
        );
        let v = p.evaluate_with(Stage::Output, &s, "answer", &[(evaluator, Answer::Pass)]);
        assert!(v.hits.is_empty());
    }

    #[test]
    fn bad_check_and_gate_rules_are_refused() {
        let err = |rule: &str| {
            compile(&format!(
                "[[policies]]\nname = \"p\"\nstage = \"input\"\n[[policies.rules]]\nname = \"r\"\n{rule}"
            ))
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            err("classifier = \"x\"\nmatch_labels = [\"a\"]\noutcome = \"block\"\n"),
            "policies[0].rules[0].classifier: no policy classifier named \"x\" is registered (registered: none)"
        );
        assert_eq!(
            err("classifier_route = \"c\"\nlabels = [\"a\", \"b\"]\noutcome = \"block\"\n"),
            "policies[0].rules[0].match_labels: a classifier rule needs either match_labels or allowed_labels"
        );
        assert_eq!(
            err(
                "classifier_route = \"c\"\nlabels = [\"a\", \"b\"]\nallowed_labels = [\"z\"]\noutcome = \"block\"\n"
            ),
            "policies[0].rules[0].match_labels: \"z\" is not one of the labels (a, b)"
        );
        assert_eq!(
            err(
                "classifier_route = \"c\"\nlabels = [\"a\", \"b\"]\nmatch_labels = [\"a\"]\noutcome = \"redact\"\n"
            ),
            "policies[0].rules[0].outcome: a classifier or evaluator finds no positions to redact; use block, refuse, gate, tag or revise"
        );
        assert_eq!(
            err("evaluator_route = \"c\"\noutcome = \"block\"\n"),
            "policies[0].rules[0].evaluator_route: applies to stage output only"
        );
        assert_eq!(
            err("keywords = [\"x\"]\noutcome = \"gate\"\n"),
            "policies[0].rules[0].reviewers: a gate rule needs the reviewer group that decides its gates"
        );
        assert_eq!(
            err(
                "keywords = [\"x\"]\noutcome = \"gate\"\nreviewers = \"r\"\non_timeout = \"escalate\"\n"
            ),
            "policies[0].rules[0].on_timeout: a policy gate times out to reject or approve"
        );
        assert_eq!(
            err("keywords = [\"x\"]\noutcome = \"refuse\"\n"),
            "policies[0].rules[0].message: a refuse rule needs the message the client gets instead of an answer"
        );
        assert_eq!(
            err("keywords = [\"x\"]\nlabels = [\"a\"]\noutcome = \"block\"\n"),
            "policies[0].rules[0].labels: set without classifier or classifier_route"
        );
    }
}
