//! Building flows in Rust: the same definitions as files, checked by the
//! same code ([`Flow::compile`]).
//!
//! ```
//! use baton_flows::{FlowBuilder, StepBuilder};
//! let flow = FlowBuilder::new("quote")
//!     .step(StepBuilder::model("extract", "Extract the requirements: {{ .input.text }}")
//!         .route("cheap")
//!         .json_schema(serde_json::json!({"type": "object", "required": ["items"]})))
//!     .step(StepBuilder::transform("total", "[.steps.extract.items[].price] | add"))
//!     .step(StepBuilder::switch("check")
//!         .case(".steps.total < 100", vec![StepBuilder::transform("low", "\"review\"")])
//!         .default(vec![StepBuilder::transform("ok", "\"send\"")]))
//!     .build()
//!     .expect("checks");
//! assert_eq!(flow.steps.len(), 3);
//! ```

use serde_json::Value;

use crate::def::Flow;
use crate::error::Result;
use crate::spec::{
    BranchSpec, CaseSpec, EmitTarget, FlowSpec, JoinSpec, OnError, StepKindName, StepSpec,
};

/// A flow under construction.
#[derive(Debug, Clone, Default)]
pub struct FlowBuilder {
    spec: FlowSpec,
}

impl FlowBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        FlowBuilder {
            spec: FlowSpec {
                name: name.into(),
                ..FlowSpec::default()
            },
        }
    }

    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.spec.description = d.into();
        self
    }

    pub fn input_schema(mut self, schema: Value) -> Self {
        self.spec.input_schema = Some(schema);
        self
    }

    /// jq over the run's data giving its output.
    pub fn output(mut self, expr: impl Into<String>) -> Self {
        self.spec.output = Some(expr.into());
        self
    }

    pub fn max_active_runs(mut self, n: u32) -> Self {
        self.spec.max_active_runs = Some(n);
        self
    }

    pub fn step(mut self, s: StepBuilder) -> Self {
        self.spec.steps.push(s.spec);
        self
    }

    /// The definition as written (to serialize as a file).
    pub fn spec(&self) -> &FlowSpec {
        &self.spec
    }

    /// Check and compile it.
    pub fn build(self) -> Result<Flow> {
        Flow::compile(self.spec)
    }
}

/// One step under construction.
#[derive(Debug, Clone)]
pub struct StepBuilder {
    spec: StepSpec,
}

fn steps(v: Vec<StepBuilder>) -> Vec<StepSpec> {
    v.into_iter().map(|s| s.spec).collect()
}

impl StepBuilder {
    fn of(id: impl Into<String>, kind: StepKindName) -> Self {
        StepBuilder {
            spec: StepSpec::new(id, kind),
        }
    }

    /// A model call; `prompt` is a template.
    pub fn model(id: impl Into<String>, prompt: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Model);
        s.spec.prompt = Some(prompt.into());
        s
    }

    /// A tool-using session of its own.
    pub fn agent(id: impl Into<String>, prompt: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Agent);
        s.spec.prompt = Some(prompt.into());
        s
    }

    pub fn tool(id: impl Into<String>, tool: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Tool);
        s.spec.tool = Some(tool.into());
        s
    }

    /// An HTTP request; `url` is a template.
    pub fn http(id: impl Into<String>, method: &str, url: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Http);
        s.spec.method = Some(method.to_string());
        s.spec.url = Some(url.into());
        s
    }

    pub fn transform(id: impl Into<String>, expr: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Transform);
        s.spec.expr = Some(expr.into());
        s
    }

    pub fn switch(id: impl Into<String>) -> Self {
        Self::of(id, StepKindName::Switch)
    }

    pub fn parallel(id: impl Into<String>) -> Self {
        Self::of(id, StepKindName::Parallel)
    }

    /// The sub-steps for every item of the list `over` gives.
    pub fn map(id: impl Into<String>, over: impl Into<String>, sub: Vec<StepBuilder>) -> Self {
        let mut s = Self::of(id, StepKindName::Map);
        s.spec.over = Some(over.into());
        s.spec.steps = Some(steps(sub));
        s
    }

    /// The sub-steps again until `until` holds.
    pub fn retry(id: impl Into<String>, until: impl Into<String>, sub: Vec<StepBuilder>) -> Self {
        let mut s = Self::of(id, StepKindName::Retry);
        s.spec.until = Some(until.into());
        s.spec.steps = Some(steps(sub));
        s
    }

    /// A human decision: a gate for reviewer group `reviewers`.
    pub fn gate(id: impl Into<String>, reviewers: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Gate);
        s.spec.reviewers = Some(reviewers.into());
        s
    }

    /// A durable sleep, e.g. `"15m"`.
    pub fn wait_for(id: impl Into<String>, duration: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Wait);
        s.spec.duration = Some(duration.into());
        s
    }

    /// A durable sleep until the time `expr` gives.
    pub fn wait_until(id: impl Into<String>, expr: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Wait);
        s.spec.until = Some(expr.into());
        s
    }

    /// Wait for signal `name`.
    pub fn wait_signal(id: impl Into<String>, name: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Wait);
        s.spec.signal = Some(name.into());
        s
    }

    /// Run flow `flow` as a child and take its output.
    pub fn call(id: impl Into<String>, flow: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Call);
        s.spec.flow = Some(flow.into());
        s
    }

    /// Start a run of `flow` and go on.
    pub fn emit_flow(id: impl Into<String>, flow: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Emit);
        s.spec.to = Some(EmitTarget {
            flow: Some(flow.into()),
            ..EmitTarget::default()
        });
        s
    }

    /// POST the payload to `url` (a template).
    pub fn emit_webhook(id: impl Into<String>, url: impl Into<String>) -> Self {
        let mut s = Self::of(id, StepKindName::Emit);
        s.spec.to = Some(EmitTarget {
            webhook: Some(url.into()),
            ..EmitTarget::default()
        });
        s
    }

    /// Run only when `expr` is truthy.
    pub fn when(mut self, expr: impl Into<String>) -> Self {
        self.spec.when = Some(expr.into());
        self
    }

    pub fn retries(mut self, n: u32) -> Self {
        self.spec.retries = Some(n);
        self
    }

    pub fn on_error(mut self, o: OnError) -> Self {
        self.spec.on_error = Some(o);
        self
    }

    pub fn route(mut self, r: impl Into<String>) -> Self {
        self.spec.route = Some(r.into());
        self
    }

    pub fn system(mut self, s: impl Into<String>) -> Self {
        self.spec.system = Some(s.into());
        self
    }

    pub fn json_schema(mut self, schema: Value) -> Self {
        self.spec.json_schema = Some(schema);
        self
    }

    pub fn tools(mut self, tools: Vec<String>) -> Self {
        self.spec.tools = tools;
        self
    }

    pub fn max_steps(mut self, n: u32) -> Self {
        self.spec.max_steps = Some(n);
        self
    }

    /// jq giving a tool's arguments.
    pub fn arguments(mut self, expr: impl Into<String>) -> Self {
        self.spec.arguments = Some(expr.into());
        self
    }

    pub fn header(mut self, name: impl Into<String>, template: impl Into<String>) -> Self {
        self.spec.headers.insert(name.into(), template.into());
        self
    }

    pub fn secret_header(mut self, name: impl Into<String>, secret: impl Into<String>) -> Self {
        self.spec.secret_headers.insert(name.into(), secret.into());
        self
    }

    /// jq giving an HTTP body.
    pub fn body(mut self, expr: impl Into<String>) -> Self {
        self.spec.body = Some(expr.into());
        self
    }

    pub fn idempotent(mut self, b: bool) -> Self {
        self.spec.idempotent = Some(b);
        self
    }

    /// `gate`: jq giving what the reviewer decides on.
    pub fn subject(mut self, expr: impl Into<String>) -> Self {
        self.spec.subject = Some(expr.into());
        self
    }

    /// `gate`: `"approve"` or `"reject"` at the deadline (`timeout_ms`).
    pub fn on_timeout(mut self, action: impl Into<String>) -> Self {
        self.spec.on_timeout = Some(action.into());
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.spec.timeout_ms = Some(ms);
        self
    }

    pub fn max_response_bytes(mut self, n: u64) -> Self {
        self.spec.max_response_bytes = Some(n);
        self
    }

    pub fn case(mut self, when: impl Into<String>, sub: Vec<StepBuilder>) -> Self {
        self.spec.cases.push(CaseSpec {
            when: when.into(),
            steps: steps(sub),
        });
        self
    }

    pub fn default(mut self, sub: Vec<StepBuilder>) -> Self {
        self.spec.default = Some(steps(sub));
        self
    }

    pub fn branch(mut self, name: impl Into<String>, sub: Vec<StepBuilder>) -> Self {
        self.spec.branches.push(BranchSpec {
            name: name.into(),
            steps: steps(sub),
        });
        self
    }

    pub fn join(mut self, j: JoinSpec) -> Self {
        self.spec.join = Some(j);
        self
    }

    /// jq over `{branches}` giving a parallel step's output.
    pub fn merge(mut self, expr: impl Into<String>) -> Self {
        self.spec.merge = Some(expr.into());
        self
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.spec.concurrency = Some(n);
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.spec.max_attempts = Some(n);
        self
    }

    /// Parameters of the next attempt of a retry (`.attempt.params`).
    pub fn attempt(mut self, params: Value) -> Self {
        self.spec.attempts.push(params);
        self
    }

    /// jq giving a call's input or an emit's payload.
    pub fn input(mut self, expr: impl Into<String>) -> Self {
        self.spec.input = Some(expr.into());
        self
    }

    pub fn payload(mut self, expr: impl Into<String>) -> Self {
        self.spec.payload = Some(expr.into());
        self
    }
}
