//! Baton's flows: durable multi-step pipelines.
//!
//! A flow is a list of steps — `model`, `agent`, `tool`, `http`,
//! `transform`, `switch`, `parallel`, `map`, `retry`, `gate`, `wait`,
//! `call`, `emit` — written in TOML or YAML (or built in Rust with [`FlowBuilder`]),
//! with jq expressions over the run's data. A run of a flow is an actor
//! whose every step is journaled in the store: after a crash it resumes
//! without running a completed step again, a step with an effect that may
//! have run is re-run only when it is idempotent (otherwise the run needs
//! an operator), and timers fire once. A waiting run is passivated.
//!
//! ```no_run
//! # async fn demo(rt: baton_runtime::RuntimeHandle) -> baton_flows::Result<()> {
//! use baton_flows::{Flow, Flows, FlowsConfig, StartRun};
//! let triage = Flow::from_toml(r#"
//!     name = "triage"
//!     [[steps]]
//!     id = "label"
//!     kind = "transform"
//!     expr = 'if (.input.text | test("invoice")) then "billing" else "other" end'
//! "#)?;
//! let flows = Flows::start(rt, FlowsConfig::default(), vec![triage]).await?;
//! let by = baton_types::Principal::embedded();
//! let run = flows
//!     .start_run(StartRun { flow: "triage".into(), input: serde_json::json!({"text": "my invoice"}), ..Default::default() }, &by)
//!     .await?;
//! println!("started {}", run.id);
//! # Ok(()) }
//! ```

mod actor;
mod broker;
mod builder;
mod catalog;
mod config;
mod def;
mod deps;
mod effects;
mod error;
mod exec;
mod expr;
mod index;
mod lead;
mod log;
mod manager;
mod prepare;
mod queue;
mod record;
mod replay;
mod schedule;
mod spec;
mod views;
mod webhook;

pub use actor::LiveRun;
pub use broker::{QueueMessage, QueueSink, QueueSource};
pub use builder::{FlowBuilder, StepBuilder};
pub use catalog::ReloadReport;
pub use config::{
    FlowHttpConfig, FlowsConfig, Missed, QueueConfig, ScheduleConfig, SecretSource, WebhookConfig,
};
pub use def::{Flow, Step, StepKind};
pub use deps::{StartRun, Started};
pub use error::{Error, Result};
pub use expr::{Expr, Template};
pub use lead::{Holder, LEASE_KEY, Lead};
pub use manager::Flows;
pub use queue::{RedisSink, RedisSource};
pub use record::{RunEvent, RunId, RunMeta, RunRecord, RunStatus};
pub use replay::ReplayReport;
pub use spec::{
    BranchSpec, CaseSpec, EmitTarget, FlowSpec, JoinSpec, OnError, StepKindName, StepSpec,
};
pub use views::{FlowInfo, RunPage, RunQuery, RunView};
pub use webhook::sign as sign_webhook;

#[cfg(test)]
mod tests;
