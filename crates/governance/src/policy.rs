//! Policies: named sets of rules, attached to tenants and routes and
//! selected by session metadata, evaluated at a stage.
//!
//! Every detector of every rule of a stage is compiled into one
//! [`DetectorSet`], so a text is scanned once per stage whatever the number
//! of policies; each applicable rule then takes the hits of its own
//! detectors.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::detect::{Builtin, CustomPattern, DetectorSet, Finding, Kind};
use crate::error::{Error, Result};

pub use baton_types::{PolicyHit, PolicyMatch, PolicyOutcome as Outcome, PolicyStage as Stage};

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
    /// model is told (default: names the policy, the rule and what matched).
    #[serde(default)]
    pub message: Option<String>,
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
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        GovernanceConfig {
            phone_region: "US".into(),
            max_revisions: 2,
        }
    }
}

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
}

/// A blocking (or revising) rule and what the client (or model) is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub policy: String,
    pub rule: String,
    pub message: String,
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
        ],
    ),
    (
        Stage::Output,
        &[
            Outcome::Allow,
            Outcome::Redact,
            Outcome::Block,
            Outcome::Revise,
        ],
    ),
    (Stage::ToolArguments, &[Outcome::Allow, Outcome::Block]),
    (
        Stage::ToolResult,
        &[Outcome::Allow, Outcome::Redact, Outcome::Block],
    ),
];

impl Policies {
    /// Check and compile `[[policies]]`; errors name the field
    /// (`policies[0].rules[1].regex`).
    pub fn compile(configs: &[PolicyConfig], settings: &GovernanceConfig) -> Result<Policies> {
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
                if kinds.is_empty()
                    && rc.max_chars.is_none()
                    && output_only.iter().all(|(_, set)| !set)
                {
                    return Err(bad(
                        &rf("detect"),
                        "a rule needs detect, regex, keywords or max_chars (or, for output, require, json_schema or allowed_domains)".into(),
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
                    && (rc.regex.is_some() || !rc.keywords.is_empty() || rc.max_chars.is_some())
                {
                    return Err(bad(
                        &rf("data_class"),
                        "a tag rule with regex, keywords or max_chars needs a data_class".into(),
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
        })
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

    /// Evaluate `text` at `stage` for `subject`.
    pub fn evaluate(&self, stage: Stage, subject: &Subject<'_>, text: &str) -> Verdict {
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
            "policies[0].rules[0].detect: a rule needs detect, regex, keywords or max_chars (or, for output, require, json_schema or allowed_domains)"
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
}
