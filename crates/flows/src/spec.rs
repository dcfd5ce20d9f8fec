//! Flow definitions as written: the serde shape of a flow file (TOML or
//! YAML) and of what the Rust builder produces. [`crate::def`] checks one
//! and compiles it into a [`crate::Flow`].
//!
//! A step is one flat table whose `kind` says which of its fields apply;
//! a field another kind uses is refused by name, so nothing written is
//! quietly ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One flow, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// `[a-z0-9_-]`, unique in the catalog.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// JSON Schema every run's input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// jq over the run's data giving the run's output (default: the last
    /// top-level step's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Most unfinished (running or waiting) runs of this flow at once;
    /// starts beyond it are refused with a retry hint (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_runs: Option<u32>,
    pub steps: Vec<StepSpec>,
}

/// The kinds of step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKindName {
    Model,
    Agent,
    Tool,
    Http,
    Transform,
    Switch,
    Parallel,
    Map,
    #[serde(alias = "loop")]
    Retry,
    Gate,
    Wait,
    Call,
    Emit,
}

impl StepKindName {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKindName::Model => "model",
            StepKindName::Agent => "agent",
            StepKindName::Tool => "tool",
            StepKindName::Http => "http",
            StepKindName::Transform => "transform",
            StepKindName::Switch => "switch",
            StepKindName::Parallel => "parallel",
            StepKindName::Map => "map",
            StepKindName::Retry => "retry",
            StepKindName::Gate => "gate",
            StepKindName::Wait => "wait",
            StepKindName::Call => "call",
            StepKindName::Emit => "emit",
        }
    }
}

/// How a `parallel` step joins its branches: `"all"`, `"any"` or
/// `{ first = n }` (the same in TOML and YAML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "JoinRepr", into = "JoinRepr")]
pub enum JoinSpec {
    /// Every branch (the default).
    All,
    /// The first branch to finish; the others are cancelled.
    Any,
    /// The first `n` branches to finish.
    First(u32),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum JoinRepr {
    Name(String),
    First { first: u32 },
}

impl TryFrom<JoinRepr> for JoinSpec {
    type Error = String;
    fn try_from(r: JoinRepr) -> Result<JoinSpec, String> {
        match r {
            JoinRepr::Name(n) if n == "all" => Ok(JoinSpec::All),
            JoinRepr::Name(n) if n == "any" => Ok(JoinSpec::Any),
            JoinRepr::Name(n) => Err(format!("join {n:?}: \"all\", \"any\" or {{ first = n }}")),
            JoinRepr::First { first } => Ok(JoinSpec::First(first)),
        }
    }
}

impl From<JoinSpec> for JoinRepr {
    fn from(j: JoinSpec) -> JoinRepr {
        match j {
            JoinSpec::All => JoinRepr::Name("all".into()),
            JoinSpec::Any => JoinRepr::Name("any".into()),
            JoinSpec::First(first) => JoinRepr::First { first },
        }
    }
}

/// What a failed step does to its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The run fails (the default).
    #[default]
    Fail,
    /// The step's output is `{"error": "..."}` and the run goes on.
    Continue,
}

/// Where an `emit` step sends its payload (exactly one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitTarget {
    /// Start a run of this flow with the payload as input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// POST the payload to this URL (an allowed host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Publish the payload to this configured queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// One branch of a `switch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    /// jq condition over the run's data.
    pub when: String,
    pub steps: Vec<StepSpec>,
}

/// One branch of a `parallel` step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSpec {
    pub name: String,
    pub steps: Vec<StepSpec>,
}

/// One step, as written. Which fields apply depends on `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// `[a-z0-9_-]`, unique in the flow; its output is `.steps.<id>`.
    pub id: String,
    pub kind: StepKindName,
    /// jq condition: the step runs only when it is truthy (its output is
    /// then `null`).
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Extra attempts after a failure of a `model`, `agent`, `tool` or `http`
    /// step (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,

    // model, agent
    /// Route (or endpoint) name, a template; none: the default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// System prompt, a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The user message, a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The answer must be JSON satisfying this schema; the output is that JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<Value>,
    /// `agent`: tools it may use (names or patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// `agent`: most model calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,

    // tool
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// jq giving the tool's arguments object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,

    // http
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Header name → template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Header name → the name of a secret in `[flows.secrets]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_headers: BTreeMap<String, String>,
    /// jq giving the JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Whether the request may be sent again after a crash left it
    /// unanswered (default: true for GET, HEAD, PUT and DELETE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// `http`: longest wait for the answer; `wait`: longest wait for the
    /// signal; `gate`: the decision's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `http`: the largest accepted response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,

    // transform
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,

    // switch
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<CaseSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Vec<StepSpec>>,

    // parallel
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<BranchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSpec>,
    /// jq over `{branches: {name: output}}` giving the step's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<String>,

    // map, retry
    /// `map`: jq giving the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<String>,
    /// `map`, `retry`: the sub-flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepSpec>>,
    /// `map`: most items at once (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// `retry`: the quality check over the attempt's data; `wait`: jq
    /// giving the time to wake (unix ms, or RFC 3339 text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// `retry`: most attempts (default: the number of `attempts`, else 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// `retry`: parameters of each attempt (`.attempt.params`), e.g.
    /// `[{route = "cheap"}, {route = "strong"}]`; the last repeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Value>,

    // gate
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewers: Option<String>,
    /// jq giving what the reviewer decides on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `approve` or `reject` when the deadline passes (default reject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,

    // wait
    /// A fixed sleep, e.g. `"90s"`, `"15m"`, `"2h"`, `"1d"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Wait for a signal of this name (`SignalRun`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,

    // call, emit
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// `call`: jq giving the child run's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<EmitTarget>,
    /// `emit`: jq giving what is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

impl StepSpec {
    /// A step of `kind` with every optional field empty.
    pub fn new(id: impl Into<String>, kind: StepKindName) -> StepSpec {
        StepSpec {
            id: id.into(),
            kind,
            when: None,
            retries: None,
            on_error: None,
            route: None,
            system: None,
            prompt: None,
            json_schema: None,
            tools: Vec::new(),
            max_steps: None,
            tool: None,
            arguments: None,
            method: None,
            url: None,
            headers: BTreeMap::new(),
            secret_headers: BTreeMap::new(),
            body: None,
            idempotent: None,
            timeout_ms: None,
            max_response_bytes: None,
            expr: None,
            cases: Vec::new(),
            default: None,
            branches: Vec::new(),
            join: None,
            merge: None,
            over: None,
            steps: None,
            concurrency: None,
            until: None,
            max_attempts: None,
            attempts: Vec::new(),
            reviewers: None,
            subject: None,
            on_timeout: None,
            duration: None,
            signal: None,
            flow: None,
            input: None,
            to: None,
            payload: None,
        }
    }

    /// The fields that are set, by their written name (to refuse those the
    /// kind does not use).
    pub(crate) fn set_fields(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        let mut add = |set: bool, name: &'static str| {
            if set {
                f.push(name)
            }
        };
        add(self.retries.is_some(), "retries");
        add(self.route.is_some(), "route");
        add(self.system.is_some(), "system");
        add(self.prompt.is_some(), "prompt");
        add(self.json_schema.is_some(), "json_schema");
        add(!self.tools.is_empty(), "tools");
        add(self.max_steps.is_some(), "max_steps");
        add(self.tool.is_some(), "tool");
        add(self.arguments.is_some(), "arguments");
        add(self.method.is_some(), "method");
        add(self.url.is_some(), "url");
        add(!self.headers.is_empty(), "headers");
        add(!self.secret_headers.is_empty(), "secret_headers");
        add(self.body.is_some(), "body");
        add(self.idempotent.is_some(), "idempotent");
        add(self.timeout_ms.is_some(), "timeout_ms");
        add(self.max_response_bytes.is_some(), "max_response_bytes");
        add(self.expr.is_some(), "expr");
        add(!self.cases.is_empty(), "cases");
        add(self.default.is_some(), "default");
        add(!self.branches.is_empty(), "branches");
        add(self.join.is_some(), "join");
        add(self.merge.is_some(), "merge");
        add(self.over.is_some(), "over");
        add(self.steps.is_some(), "steps");
        add(self.concurrency.is_some(), "concurrency");
        add(self.until.is_some(), "until");
        add(self.max_attempts.is_some(), "max_attempts");
        add(!self.attempts.is_empty(), "attempts");
        add(self.reviewers.is_some(), "reviewers");
        add(self.subject.is_some(), "subject");
        add(self.on_timeout.is_some(), "on_timeout");
        add(self.duration.is_some(), "duration");
        add(self.signal.is_some(), "signal");
        add(self.flow.is_some(), "flow");
        add(self.input.is_some(), "input");
        add(self.to.is_some(), "to");
        add(self.payload.is_some(), "payload");
        f
    }
}

/// The fields each kind uses, besides `id`, `kind`, `if` and `on_error`.
pub(crate) fn fields_of(kind: StepKindName) -> &'static [&'static str] {
    match kind {
        StepKindName::Model => &["retries", "route", "system", "prompt", "json_schema"],
        StepKindName::Agent => &[
            "retries",
            "route",
            "system",
            "prompt",
            "json_schema",
            "tools",
            "max_steps",
        ],
        StepKindName::Tool => &["retries", "tool", "arguments"],
        StepKindName::Http => &[
            "retries",
            "method",
            "url",
            "headers",
            "secret_headers",
            "body",
            "idempotent",
            "timeout_ms",
            "max_response_bytes",
        ],
        StepKindName::Transform => &["expr"],
        StepKindName::Switch => &["cases", "default"],
        StepKindName::Parallel => &["branches", "join", "merge"],
        StepKindName::Map => &["over", "steps", "concurrency"],
        StepKindName::Retry => &["steps", "until", "max_attempts", "attempts"],
        StepKindName::Gate => &["reviewers", "subject", "timeout_ms", "on_timeout"],
        StepKindName::Wait => &["duration", "until", "signal", "timeout_ms"],
        StepKindName::Call => &["flow", "input"],
        StepKindName::Emit => &["to", "payload"],
    }
}
