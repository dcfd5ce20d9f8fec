//! Checking a [`FlowSpec`] and compiling it into a [`Flow`]: every
//! expression compiled, every schema built, every field the kind does not
//! use refused. Errors name the flow, the step and the field.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::expr::{Expr, Template};
use crate::spec::{self, FlowSpec, JoinSpec, OnError, StepKindName, StepSpec};

/// Default `map` concurrency.
pub const DEFAULT_MAP_CONCURRENCY: u32 = 4;
/// Largest `map` concurrency.
pub const MAX_MAP_CONCURRENCY: u32 = 256;
/// Largest `retry` attempts.
pub const MAX_RETRY_ATTEMPTS: u32 = 100;
/// Largest `retries` of a leaf step.
pub const MAX_STEP_RETRIES: u32 = 20;
/// Deepest nesting of steps.
pub const MAX_DEPTH: usize = 16;

/// A checked, compiled flow at one version.
#[derive(Debug, Clone)]
pub struct Flow {
    pub name: String,
    /// The first 12 hex digits of the SHA-256 of its canonical JSON: the
    /// same definition always has the same version.
    pub version: String,
    pub description: String,
    pub spec: Arc<FlowSpec>,
    pub input_schema: Option<Arc<jsonschema::Validator>>,
    pub output: Option<Expr>,
    pub max_active_runs: Option<u32>,
    pub steps: Arc<Vec<Step>>,
}

/// One compiled step.
#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub when: Option<Expr>,
    pub retries: u32,
    pub on_error: OnError,
    pub kind: StepKind,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum StepKind {
    Model(ModelStep),
    Agent(ModelStep),
    Tool {
        tool: String,
        arguments: Option<Expr>,
    },
    Http(HttpStep),
    Transform {
        expr: Expr,
    },
    Switch {
        cases: Vec<(Expr, Vec<Step>)>,
        default: Vec<Step>,
    },
    Parallel {
        branches: Vec<(String, Vec<Step>)>,
        join: JoinSpec,
        merge: Option<Expr>,
    },
    Map {
        over: Expr,
        steps: Vec<Step>,
        concurrency: u32,
    },
    Retry {
        steps: Vec<Step>,
        until: Expr,
        max_attempts: u32,
        attempts: Vec<Value>,
    },
    Wait(WaitStep),
    Gate(GateStep),
    Call {
        flow: String,
        input: Option<Expr>,
    },
    Emit {
        target: EmitTo,
        payload: Option<Expr>,
    },
}

impl StepKind {
    pub fn name(&self) -> StepKindName {
        match self {
            StepKind::Model(_) => StepKindName::Model,
            StepKind::Agent(_) => StepKindName::Agent,
            StepKind::Tool { .. } => StepKindName::Tool,
            StepKind::Http(_) => StepKindName::Http,
            StepKind::Transform { .. } => StepKindName::Transform,
            StepKind::Switch { .. } => StepKindName::Switch,
            StepKind::Parallel { .. } => StepKindName::Parallel,
            StepKind::Map { .. } => StepKindName::Map,
            StepKind::Retry { .. } => StepKindName::Retry,
            StepKind::Wait(_) => StepKindName::Wait,
            StepKind::Gate(_) => StepKindName::Gate,
            StepKind::Call { .. } => StepKindName::Call,
            StepKind::Emit { .. } => StepKindName::Emit,
        }
    }
}

/// A `gate` step: a reviewer decides on its subject.
#[derive(Debug, Clone)]
pub struct GateStep {
    pub reviewers: String,
    /// jq giving what the reviewer decides on (default: the run's input
    /// and the steps' outputs so far).
    pub subject: Option<Expr>,
    /// 0: no deadline.
    pub timeout_ms: u64,
    pub on_timeout: baton_types::TimeoutAction,
}

/// A `model` or `agent` step.
#[derive(Debug, Clone)]
pub struct ModelStep {
    pub route: Option<Template>,
    pub system: Option<Template>,
    pub prompt: Template,
    pub json_schema: Option<(Value, Arc<jsonschema::Validator>)>,
    pub tools: Vec<String>,
    pub max_steps: u32,
}

/// An `http` step.
#[derive(Debug, Clone)]
pub struct HttpStep {
    pub method: reqwest::Method,
    pub url: Template,
    pub headers: Vec<(String, Template)>,
    pub secret_headers: Vec<(String, String)>,
    pub body: Option<Expr>,
    pub idempotent: bool,
    pub timeout: Option<Duration>,
    pub max_response_bytes: Option<u64>,
}

/// A `wait` step: a sleep, a time, or a signal (with an optional timeout).
#[derive(Debug, Clone)]
pub enum WaitStep {
    For(Duration),
    Until(Expr),
    Signal {
        name: String,
        timeout: Option<Duration>,
    },
}

/// Where an `emit` step sends.
#[derive(Debug, Clone)]
pub enum EmitTo {
    Flow(String),
    Webhook(Template),
    Queue(String),
}

impl Flow {
    /// Check and compile `spec`.
    pub fn compile(spec: FlowSpec) -> Result<Flow> {
        let flow = spec.name.clone();
        let bad = |step: &str, field: &str, problem: String| Error::Definition {
            flow: flow.clone(),
            step: step.to_string(),
            field: field.to_string(),
            problem,
        };
        check_name(&spec.name).map_err(|p| bad("", "name", p))?;
        if spec.steps.is_empty() {
            return Err(bad("", "steps", "a flow needs at least one step".into()));
        }
        let input_schema = match &spec.input_schema {
            Some(s) => Some(Arc::new(jsonschema::validator_for(s).map_err(|e| {
                bad("", "input_schema", format!("not a valid JSON Schema: {e}"))
            })?)),
            None => None,
        };
        let output = spec
            .output
            .as_deref()
            .map(Expr::parse)
            .transpose()
            .map_err(|p| bad("", "output", p))?;
        if spec.max_active_runs == Some(0) {
            return Err(bad("", "max_active_runs", "must be at least 1".into()));
        }
        let mut ids = HashSet::new();
        let steps = compile_steps(&flow, &spec.steps, &mut ids, 0)?;
        let canonical = serde_json::to_vec(&spec).map_err(|e| bad("", "", e.to_string()))?;
        let digest = Sha256::digest(&canonical);
        let version: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Flow {
            name: spec.name.clone(),
            version,
            description: spec.description.clone(),
            input_schema,
            output,
            max_active_runs: spec.max_active_runs,
            steps: Arc::new(steps),
            spec: Arc::new(spec),
        })
    }

    /// Parse and compile a TOML definition.
    pub fn from_toml(text: &str) -> Result<Flow> {
        let spec: FlowSpec = toml::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        Flow::compile(spec)
    }

    /// Parse and compile a YAML definition.
    pub fn from_yaml(text: &str) -> Result<Flow> {
        let spec: FlowSpec =
            serde_yaml_ng::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        Flow::compile(spec)
    }

    /// Check `input` against the flow's input schema.
    pub fn check_input(&self, input: &Value) -> Result<()> {
        if let Some(schema) = &self.input_schema {
            let errors: Vec<String> = schema
                .iter_errors(input)
                .take(3)
                .map(|e| {
                    let path = e.instance_path().to_string();
                    format!("{}: {e}", if path.is_empty() { "/" } else { &path })
                })
                .collect();
            if !errors.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "input does not match flow {:?}'s input_schema: {}",
                    self.name,
                    errors.join("; ")
                )));
            }
        }
        Ok(())
    }
}

/// Names of flows and steps: 1–64 of `[a-z0-9_-]`, starting with a letter.
pub(crate) fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: 1 to 64 of a-z, 0-9, _ and -, starting with a letter"
        ))
    }
}

fn compile_steps(
    flow: &str,
    specs: &[StepSpec],
    ids: &mut HashSet<String>,
    depth: usize,
) -> Result<Vec<Step>> {
    specs
        .iter()
        .map(|s| compile_step(flow, s, ids, depth))
        .collect()
}

/// A duration such as `90s`, `15m`, `2h`, `1d` or `500ms`.
pub(crate) fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h or d)"))?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => return Err(format!("unknown unit {other:?} (ms, s, m, h or d)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

fn compile_step(flow: &str, s: &StepSpec, ids: &mut HashSet<String>, depth: usize) -> Result<Step> {
    let bad = |field: &str, problem: String| Error::Definition {
        flow: flow.to_string(),
        step: s.id.clone(),
        field: field.to_string(),
        problem,
    };
    check_name(&s.id).map_err(|p| bad("id", p))?;
    if !ids.insert(s.id.clone()) {
        return Err(bad("id", "another step has this id".into()));
    }
    if depth >= MAX_DEPTH {
        return Err(bad("steps", format!("steps nest deeper than {MAX_DEPTH}")));
    }
    let allowed = spec::fields_of(s.kind);
    for f in s.set_fields() {
        if !allowed.contains(&f) {
            return Err(bad(
                f,
                format!("a {} step does not use this field", s.kind.as_str()),
            ));
        }
    }
    let expr = |field: &str, v: &Option<String>| -> Result<Option<Expr>> {
        v.as_deref()
            .map(Expr::parse)
            .transpose()
            .map_err(|p| bad(field, p))
    };
    let need_expr = |field: &str, v: &Option<String>| -> Result<Expr> {
        expr(field, v)?.ok_or_else(|| bad(field, format!("a {} step needs it", s.kind.as_str())))
    };
    let template = |field: &str, v: &Option<String>| -> Result<Option<Template>> {
        v.as_deref()
            .map(Template::parse)
            .transpose()
            .map_err(|p| bad(field, p))
    };
    let sub = |field: &str, steps: &Option<Vec<StepSpec>>, ids: &mut HashSet<String>| match steps {
        Some(v) if !v.is_empty() => compile_steps(flow, v, ids, depth + 1),
        _ => Err(bad(
            field,
            format!("a {} step needs sub-steps", s.kind.as_str()),
        )),
    };
    let retries = s.retries.unwrap_or(0);
    if retries > MAX_STEP_RETRIES {
        return Err(bad("retries", format!("at most {MAX_STEP_RETRIES}")));
    }
    let kind = match s.kind {
        StepKindName::Model | StepKindName::Agent => {
            let prompt = template("prompt", &s.prompt)?
                .ok_or_else(|| bad("prompt", format!("a {} step needs it", s.kind.as_str())))?;
            let json_schema = match &s.json_schema {
                Some(v) => Some((
                    v.clone(),
                    Arc::new(jsonschema::validator_for(v).map_err(|e| {
                        bad("json_schema", format!("not a valid JSON Schema: {e}"))
                    })?),
                )),
                None => None,
            };
            if s.max_steps == Some(0) {
                return Err(bad("max_steps", "must be at least 1".into()));
            }
            let m = ModelStep {
                route: template("route", &s.route)?,
                system: template("system", &s.system)?,
                prompt,
                json_schema,
                tools: s.tools.clone(),
                max_steps: s
                    .max_steps
                    .unwrap_or(if s.kind == StepKindName::Agent { 8 } else { 1 }),
            };
            if s.kind == StepKindName::Agent {
                StepKind::Agent(m)
            } else {
                StepKind::Model(m)
            }
        }
        StepKindName::Tool => StepKind::Tool {
            tool: s
                .tool
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| bad("tool", "a tool step needs the tool's name".into()))?,
            arguments: expr("arguments", &s.arguments)?,
        },
        StepKindName::Http => {
            let method_text = s.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
            let method = match method_text.as_str() {
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" => {
                    reqwest::Method::from_bytes(method_text.as_bytes())
                        .map_err(|e| bad("method", e.to_string()))?
                }
                other => {
                    return Err(bad(
                        "method",
                        format!("{other:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE"),
                    ));
                }
            };
            let idempotent = s.idempotent.unwrap_or(matches!(
                method_text.as_str(),
                "GET" | "HEAD" | "PUT" | "DELETE"
            ));
            let mut headers = Vec::new();
            for (name, value) in &s.headers {
                reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad("headers", format!("{name:?} is not a header name")))?;
                headers.push((
                    name.clone(),
                    Template::parse(value).map_err(|p| bad("headers", p))?,
                ));
            }
            for name in s.secret_headers.keys() {
                reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad("secret_headers", format!("{name:?} is not a header name")))?;
            }
            StepKind::Http(HttpStep {
                method,
                url: template("url", &s.url)?
                    .ok_or_else(|| bad("url", "an http step needs it".into()))?,
                headers,
                secret_headers: s
                    .secret_headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                body: expr("body", &s.body)?,
                idempotent,
                timeout: s.timeout_ms.map(Duration::from_millis),
                max_response_bytes: s.max_response_bytes,
            })
        }
        StepKindName::Transform => StepKind::Transform {
            expr: need_expr("expr", &s.expr)?,
        },
        StepKindName::Switch => {
            if s.cases.is_empty() {
                return Err(bad("cases", "a switch step needs at least one case".into()));
            }
            let mut cases = Vec::new();
            for (i, c) in s.cases.iter().enumerate() {
                let when = Expr::parse(&c.when).map_err(|p| bad(&format!("cases[{i}].when"), p))?;
                if c.steps.is_empty() {
                    return Err(bad(
                        &format!("cases[{i}].steps"),
                        "a case needs steps".into(),
                    ));
                }
                cases.push((when, compile_steps(flow, &c.steps, ids, depth + 1)?));
            }
            let default = match &s.default {
                Some(d) => compile_steps(flow, d, ids, depth + 1)?,
                None => Vec::new(),
            };
            StepKind::Switch { cases, default }
        }
        StepKindName::Parallel => {
            if s.branches.len() < 2 {
                return Err(bad(
                    "branches",
                    "a parallel step needs two branches or more".into(),
                ));
            }
            let mut names = HashSet::new();
            let mut branches = Vec::new();
            for (i, b) in s.branches.iter().enumerate() {
                check_name(&b.name).map_err(|p| bad(&format!("branches[{i}].name"), p))?;
                if !names.insert(b.name.clone()) {
                    return Err(bad(
                        &format!("branches[{i}].name"),
                        "another branch has this name".into(),
                    ));
                }
                if b.steps.is_empty() {
                    return Err(bad(
                        &format!("branches[{i}].steps"),
                        "a branch needs steps".into(),
                    ));
                }
                branches.push((
                    b.name.clone(),
                    compile_steps(flow, &b.steps, ids, depth + 1)?,
                ));
            }
            let join = s.join.unwrap_or(JoinSpec::All);
            if let JoinSpec::First(n) = join
                && (n == 0 || n as usize > branches.len())
            {
                return Err(bad(
                    "join",
                    format!(
                        "first {n} of {} branches: n must be 1 to {}",
                        branches.len(),
                        branches.len()
                    ),
                ));
            }
            StepKind::Parallel {
                branches,
                join,
                merge: expr("merge", &s.merge)?,
            }
        }
        StepKindName::Map => {
            let concurrency = s.concurrency.unwrap_or(DEFAULT_MAP_CONCURRENCY);
            if concurrency == 0 || concurrency > MAX_MAP_CONCURRENCY {
                return Err(bad(
                    "concurrency",
                    format!("must be 1 to {MAX_MAP_CONCURRENCY}"),
                ));
            }
            StepKind::Map {
                over: need_expr("over", &s.over)?,
                steps: sub("steps", &s.steps, ids)?,
                concurrency,
            }
        }
        StepKindName::Retry => {
            let max_attempts = s.max_attempts.unwrap_or(if s.attempts.is_empty() {
                3
            } else {
                s.attempts.len() as u32
            });
            if max_attempts == 0 || max_attempts > MAX_RETRY_ATTEMPTS {
                return Err(bad(
                    "max_attempts",
                    format!("must be 1 to {MAX_RETRY_ATTEMPTS}"),
                ));
            }
            StepKind::Retry {
                steps: sub("steps", &s.steps, ids)?,
                until: need_expr("until", &s.until)?,
                max_attempts,
                attempts: s.attempts.clone(),
            }
        }
        StepKindName::Gate => {
            let reviewers = s.reviewers.clone().unwrap_or_default();
            if reviewers.trim().is_empty() {
                return Err(bad(
                    "reviewers",
                    "required: the reviewer group that decides".into(),
                ));
            }
            let on_timeout = match s.on_timeout.as_deref() {
                None | Some("reject") => baton_types::TimeoutAction::Reject,
                Some("approve") => baton_types::TimeoutAction::Approve,
                Some(other) => {
                    return Err(bad(
                        "on_timeout",
                        format!("{other:?}: \"approve\" or \"reject\""),
                    ));
                }
            };
            if s.on_timeout.is_some() && s.timeout_ms.is_none() {
                return Err(bad(
                    "on_timeout",
                    "applies at a deadline: set timeout_ms".into(),
                ));
            }
            StepKind::Gate(GateStep {
                reviewers,
                subject: expr("subject", &s.subject)?,
                timeout_ms: s.timeout_ms.unwrap_or(0),
                on_timeout,
            })
        }
        StepKindName::Wait => {
            let set = [s.duration.is_some(), s.until.is_some(), s.signal.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if set != 1 {
                return Err(bad(
                    "duration",
                    "a wait step needs exactly one of duration, until and signal".into(),
                ));
            }
            if s.timeout_ms.is_some() && s.signal.is_none() {
                return Err(bad(
                    "timeout_ms",
                    "only a wait on a signal has a timeout".into(),
                ));
            }
            if let Some(d) = &s.duration {
                WaitStep::For(parse_duration(d).map_err(|p| bad("duration", p))?)
            } else if let Some(name) = &s.signal {
                check_name(name).map_err(|p| bad("signal", p))?;
                WaitStep::Signal {
                    name: name.clone(),
                    timeout: s.timeout_ms.map(Duration::from_millis),
                }
            } else {
                WaitStep::Until(need_expr("until", &s.until)?)
            }
            .into()
        }
        StepKindName::Call => {
            let target = s
                .flow
                .clone()
                .ok_or_else(|| bad("flow", "a call step needs the flow to run".into()))?;
            check_name(&target).map_err(|p| bad("flow", p))?;
            StepKind::Call {
                flow: target,
                input: expr("input", &s.input)?,
            }
        }
        StepKindName::Emit => {
            let to =
                s.to.as_ref()
                    .ok_or_else(|| bad("to", "an emit step needs a target".into()))?;
            let target = match (&to.flow, &to.webhook, &to.queue) {
                (Some(f), None, None) => {
                    check_name(f).map_err(|p| bad("to.flow", p))?;
                    EmitTo::Flow(f.clone())
                }
                (None, Some(u), None) => {
                    EmitTo::Webhook(Template::parse(u).map_err(|p| bad("to.webhook", p))?)
                }
                (None, None, Some(q)) => {
                    check_name(q).map_err(|p| bad("to.queue", p))?;
                    EmitTo::Queue(q.clone())
                }
                _ => {
                    return Err(bad("to", "exactly one of flow, webhook and queue".into()));
                }
            };
            StepKind::Emit {
                target,
                payload: expr("payload", &s.payload)?,
            }
        }
    };
    Ok(Step {
        id: s.id.clone(),
        when: expr("if", &s.when)?,
        retries,
        on_error: s.on_error.unwrap_or_default(),
        kind,
    })
}

impl From<WaitStep> for StepKind {
    fn from(w: WaitStep) -> StepKind {
        StepKind::Wait(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Flow::from_toml(text).expect_err("refused").to_string()
    }

    #[test]
    fn a_valid_flow_compiles_with_a_stable_version() {
        let text = r#"
name = "triage"
[[steps]]
id = "classify"
kind = "model"
prompt = "Classify: {{ .input.text }}"
json_schema = { type = "object", required = ["label"] }
[[steps]]
id = "route"
kind = "switch"
[[steps.cases]]
when = '.steps.classify.label == "billing"'
steps = [{ id = "bill", kind = "transform", expr = '"billing"' }]
"#;
        let a = Flow::from_toml(text).expect("compiles");
        let b = Flow::from_toml(text).expect("compiles");
        assert_eq!(a.version, b.version);
        assert_eq!(a.version.len(), 12);
        assert_eq!(a.steps.len(), 2);
        let changed = text.replace("Classify:", "Label:");
        assert_ne!(
            Flow::from_toml(&changed).expect("compiles").version,
            a.version
        );
    }

    #[test]
    fn errors_name_the_flow_step_and_field() {
        let e =
            err("name = \"f\"\n[[steps]]\nid = \"t\"\nkind = \"transform\"\nexpr = \".a | (\"\n");
        assert!(
            e.starts_with("flow \"f\", step \"t\", field \"expr\": jq syntax"),
            "{e}"
        );
        let e = err(
            "name = \"f\"\n[[steps]]\nid = \"t\"\nkind = \"transform\"\nexpr = \".\"\nprompt = \"x\"\n",
        );
        assert_eq!(
            e,
            "flow \"f\", step \"t\", field \"prompt\": a transform step does not use this field"
        );
        let e = err(
            "name = \"f\"\n[[steps]]\nid = \"a\"\nkind = \"transform\"\nexpr = \".\"\n[[steps]]\nid = \"a\"\nkind = \"transform\"\nexpr = \".\"\n",
        );
        assert!(e.contains("field \"id\": another step has this id"), "{e}");
        let e =
            err("name = \"f\"\n[[steps]]\nid = \"w\"\nkind = \"wait\"\nduration = \"5 parsecs\"\n");
        assert!(e.contains("field \"duration\""), "{e}");
        let e = err("name = \"f\"\n[[steps]]\nid = \"m\"\nkind = \"model\"\n");
        assert!(e.contains("field \"prompt\": a model step needs it"), "{e}");
        let e = err("name = \"f\"\n[[steps]]\nid = \"m\"\nkind = \"modle\"\n");
        assert!(e.contains("unknown variant"), "{e}");
        let e = err("name = \"F!\"\n[[steps]]\nid = \"m\"\nkind = \"transform\"\nexpr = \".\"\n");
        assert!(e.contains("field \"name\""), "{e}");
    }

    #[test]
    fn yaml_definitions_nest_naturally() {
        let f = Flow::from_yaml(
            r#"
name: docs
steps:
  - id: fan
    kind: parallel
    join: { first: 1 }
    branches:
      - name: a
        steps: [{ id: a1, kind: transform, expr: "1" }]
      - name: b
        steps: [{ id: b1, kind: transform, expr: "2" }]
  - id: each
    kind: map
    over: ".input.items"
    concurrency: 2
    steps: [{ id: one, kind: transform, expr: ".item * 2" }]
"#,
        )
        .expect("compiles");
        assert!(matches!(
            f.steps[0].kind,
            StepKind::Parallel {
                join: JoinSpec::First(1),
                ..
            }
        ));
        assert!(matches!(
            f.steps[1].kind,
            StepKind::Map { concurrency: 2, .. }
        ));
    }

    #[test]
    fn durations_have_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("x1s").is_err());
    }
}
