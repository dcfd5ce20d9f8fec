//! What [`crate::Flows::start`] reads and checks before anything runs: the
//! definitions, the secrets, and the webhooks, schedules and queues that
//! name flows. A node that does not run the flows itself (another holds
//! the flows lease, see [`crate::Lead`]) checks the same, so that a
//! configuration that could not run is refused at its start, not when it
//! takes the lease over.

use std::collections::HashMap;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::catalog::Catalog;
use crate::config::{FlowsConfig, QueueConfig};
use crate::def::{Flow, check_name};
use crate::error::{Error, Result};

/// The flows' configuration, read and checked.
pub(crate) struct Prepared {
    pub catalog: Catalog,
    pub secrets: HashMap<String, SecretString>,
    pub hooks: HashMap<String, crate::webhook::Hook>,
    pub schedules: Vec<crate::schedule::Schedule>,
    pub sinks: HashMap<String, Arc<dyn crate::broker::QueueSink>>,
    pub consumers: Vec<(QueueConfig, crate::expr::Expr)>,
}

/// Read and check `config` with the flows of `code`.
pub(crate) fn prepare(config: &FlowsConfig, code: Vec<Flow>) -> Result<Prepared> {
    let catalog = Catalog::open(config.dir.clone(), code)?;
    let mut secrets = HashMap::new();
    for (name, src) in &config.secrets {
        secrets.insert(name.clone(), src.resolve(&format!("flows.secrets.{name}"))?);
    }
    let needs_flow = |what: &str, name: &str, flow: &str| -> Result<()> {
        if catalog.get(flow).is_none() {
            return Err(Error::InvalidArgument(format!(
                "flows.{what}[{name}].flow: flow {flow:?} is not defined"
            )));
        }
        Ok(())
    };
    let mut hooks = HashMap::new();
    for h in &config.webhooks {
        needs_flow("webhooks", &h.name, &h.flow)?;
        let secret = h
            .secret
            .resolve(&format!("flows.webhooks[{}].secret", h.name))?;
        let hook = crate::webhook::Hook::new(h.clone(), secret.expose_secret().as_bytes())?;
        if hooks.insert(h.name.clone(), hook).is_some() {
            return Err(Error::InvalidArgument(format!(
                "flows.webhooks: {:?} is defined twice",
                h.name
            )));
        }
    }
    let mut schedules = Vec::new();
    for sc in &config.schedules {
        needs_flow("schedules", &sc.name, &sc.flow)?;
        schedules.push(crate::schedule::Schedule::new(sc.clone())?);
    }
    let mut sinks: HashMap<String, Arc<dyn crate::broker::QueueSink>> = HashMap::new();
    let mut consumers = Vec::new();
    for q in &config.queues {
        check_name(&q.name)
            .map_err(|p| Error::InvalidArgument(format!("flows.queues[{}].name: {p}", q.name)))?;
        sinks.insert(q.name.clone(), Arc::new(crate::queue::RedisSink::new(q)?));
        if let Some(flow) = &q.flow {
            needs_flow("queues", &q.name, flow)?;
            let input = crate::expr::Expr::parse(q.input.as_deref().unwrap_or(".payload"))
                .map_err(|p| {
                    Error::InvalidArgument(format!("flows.queues[{}].input: {p}", q.name))
                })?;
            consumers.push((q.clone(), input));
        }
    }
    Ok(Prepared {
        catalog,
        secrets,
        hooks,
        schedules,
        sinks,
        consumers,
    })
}
