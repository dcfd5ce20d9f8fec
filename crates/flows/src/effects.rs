//! Steps with an effect outside the run: `model`, `agent`, `tool`, `http`,
//! `call` and `emit`. Each is prepared (its input rendered from the run's
//! data, journaled) and then performed; [`idempotent`] says whether a
//! crash between the two lets it be performed again.
//!
//! Model and agent steps run as sessions of the runtime, started with an
//! idempotency key of the run, step and attempt: routing, policies, gates,
//! budgets, cost and audit apply as to any session, and after a crash the
//! step finds its session and its recorded answer instead of asking again.

use std::collections::BTreeMap;

use baton_runtime::StartSession;
use baton_types::{EventKind, Generation, Role};
use futures::StreamExt;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::config::host_allowed;
use crate::def::{EmitTo, HttpStep, ModelStep, Step, StepKind};
use crate::deps::{Deps, RunCtx, StartRun};

/// Whether `step` may be performed again when a crash left it unanswered.
pub fn idempotent(deps: &Deps, step: &Step) -> bool {
    match &step.kind {
        // The session key finds the recorded answer.
        StepKind::Model(_) | StepKind::Agent(_) => true,
        StepKind::Tool { tool, .. } => deps.rt.tool_spec(tool).is_some_and(|s| s.idempotent),
        StepKind::Http(h) => h.idempotent,
        // Started with an idempotency key of the run and step.
        StepKind::Call { .. } => true,
        // A second POST or XADD would deliver twice.
        StepKind::Emit { target, .. } => matches!(target, EmitTo::Flow(_)),
        _ => true,
    }
}

/// The step's input, rendered from the run's data.
pub fn prepare(step: &Step, data: &Value) -> Result<Value, String> {
    Ok(match &step.kind {
        StepKind::Model(m) | StepKind::Agent(m) => json!({
            "route": m.route.as_ref().map(|t| t.render(data)).transpose()?,
            "system": m.system.as_ref().map(|t| t.render(data)).transpose()?,
            "prompt": m.prompt.render(data)?,
        }),
        StepKind::Tool { tool, arguments } => json!({
            "tool": tool,
            "arguments": match arguments {
                Some(e) => e.eval(data)?,
                None => json!({}),
            },
        }),
        StepKind::Http(h) => {
            let mut headers = serde_json::Map::new();
            for (name, t) in &h.headers {
                headers.insert(name.clone(), Value::String(t.render(data)?));
            }
            json!({
                "method": h.method.as_str(),
                "url": h.url.render(data)?,
                "headers": headers,
                "body": h.body.as_ref().map(|e| e.eval(data)).transpose()?,
            })
        }
        StepKind::Gate(g) => json!({
            "reviewers": g.reviewers,
            "subject": match &g.subject {
                Some(e) => e.eval(data)?,
                None => json!({ "input": data.get("input"), "steps": data.get("steps") }),
            },
        }),
        StepKind::Call { flow, input }
        | StepKind::Emit {
            target: EmitTo::Flow(flow),
            payload: input,
        } => json!({
            "flow": flow,
            "input": match input {
                Some(e) => e.eval(data)?,
                None => data.get("input").cloned().unwrap_or(Value::Null),
            },
        }),
        StepKind::Emit {
            target: EmitTo::Webhook(url),
            payload,
        } => json!({
            "url": url.render(data)?,
            "payload": payload.as_ref().map(|e| e.eval(data)).transpose()?,
        }),
        StepKind::Emit {
            target: EmitTo::Queue(q),
            payload,
        } => json!({
            "queue": q,
            "payload": payload.as_ref().map(|e| e.eval(data)).transpose()?,
        }),
        _ => Value::Null,
    })
}

/// What a performed step gives back.
pub enum Outcome {
    Done(Value),
    /// The runtime refused for now (draining for a stop, the store or its
    /// disk unwritable, the audit trail blocking, a backlog): the step is
    /// tried again later, not failed.
    Later(String),
    /// A gate waits for its decision; the step is looked at again when a
    /// decision comes (or after `GATE_RECHECK_MS`).
    Pending,
    /// A child run was started; the step waits for it.
    Child(crate::record::RunId),
}

/// A runtime error as a step's outcome: `UNAVAILABLE` passes (see
/// [`Outcome::Later`]); anything else fails the attempt.
fn refusal(e: baton_runtime::Error) -> Result<Outcome, String> {
    if e.code() == baton_types::ErrorCode::Unavailable {
        Ok(Outcome::Later(e.to_string()))
    } else {
        Err(e.to_string())
    }
}

/// Perform `step` with its prepared `input`.
pub async fn perform(
    deps: &Deps,
    ctx: &RunCtx,
    step: &Step,
    path: &str,
    attempt: u32,
    input: &Value,
) -> Result<Outcome, String> {
    match &step.kind {
        StepKind::Model(m) => model(deps, ctx, m, path, attempt, input, false).await,
        StepKind::Agent(m) => model(deps, ctx, m, path, attempt, input, true).await,
        StepKind::Tool { tool, .. } => {
            let args = input.get("arguments").cloned().unwrap_or(json!({}));
            let text = deps.rt.call_tool(tool, &args).await?;
            Ok(Outcome::Done(
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            ))
        }
        StepKind::Http(h) => http(deps, Some(h), input).await.map(Outcome::Done),
        StepKind::Gate(g) => gate(deps, ctx, g, path, attempt, input).await,
        StepKind::Call { .. } => {
            let started = start_child(deps, ctx, path, input, true).await?;
            Ok(Outcome::Child(started))
        }
        StepKind::Emit {
            target: EmitTo::Flow(_),
            ..
        } => {
            let id = start_child(deps, ctx, path, input, false).await?;
            Ok(Outcome::Done(json!({ "run_id": id.to_string() })))
        }
        StepKind::Emit {
            target: EmitTo::Webhook(_),
            ..
        } => {
            let url = input.get("url").and_then(Value::as_str).unwrap_or_default();
            let req = json!({
                "method": "POST",
                "url": url,
                "headers": { "idempotency-key": format!("{}:{path}", ctx.run) },
                "body": input.get("payload").cloned().unwrap_or(Value::Null),
            });
            http(deps, None, &req).await.map(Outcome::Done)
        }
        StepKind::Emit {
            target: EmitTo::Queue(q),
            ..
        } => {
            let sink = deps
                .queues
                .get(q)
                .ok_or_else(|| format!("queue {q:?} is not in [[flows.queues]]"))?;
            let payload = input.get("payload").cloned().unwrap_or(Value::Null);
            let id = sink
                .publish(&payload, &format!("{}:{path}", ctx.run))
                .await
                .map_err(|e| e.to_string())?;
            Ok(Outcome::Done(json!({ "message_id": id })))
        }
        other => Err(format!("{:?} is not an effect", other.name())),
    }
}

async fn start_child(
    deps: &Deps,
    ctx: &RunCtx,
    path: &str,
    input: &Value,
    wait: bool,
) -> Result<crate::record::RunId, String> {
    let starter = deps
        .starter()
        .ok_or_else(|| "the flows service is stopping".to_string())?;
    let flow = input
        .get("flow")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let req = StartRun {
        flow,
        input: input.get("input").cloned().unwrap_or(Value::Null),
        idempotency_key: Some(format!(
            "{}:{}:{path}",
            if wait { "call" } else { "emit" },
            ctx.run
        )),
        trigger: format!("flow:{}", ctx.run),
        parent: wait.then(|| (ctx.run, path.to_string())),
        delivery: None,
    };
    starter
        .start(req, ctx.principal.clone())
        .await
        .map(|s| s.id)
        .map_err(|e| e.to_string())
}

/// How often a run waiting on a gate looks at it again without being
/// woken (a decision wakes it; this covers a missed wake-up).
pub const GATE_RECHECK_MS: u64 = 300_000;

/// How long a step the runtime refused for now ([`Outcome::Later`]) waits
/// before it is tried again.
pub const REFUSED_RETRY_MS: u64 = 1_000;

/// The policy name of a flow's gate: `flow:<run>:<step path>`.
pub fn gate_policy(run: crate::record::RunId, path: &str) -> String {
    format!("flow:{run}:{path}")
}

/// The run a flow gate's policy name ([`gate_policy`]) belongs to.
pub fn gate_run(policy: &str) -> Option<crate::record::RunId> {
    policy
        .strip_prefix("flow:")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

/// The idempotency key of the session a step's attempt runs in (`model`,
/// `agent`, `gate`): after a crash the step finds its session by it, and a
/// cancelled run finds the sessions to cancel.
pub fn step_session_key(run: crate::record::RunId, path: &str, attempt: u32) -> String {
    format!("flow:{run}:{path}:{attempt}")
}

/// What every step session starts with: its key, and metadata naming the
/// flow, the run and the step.
fn step_session(ctx: &RunCtx, path: &str, attempt: u32) -> StartSession {
    let mut metadata = BTreeMap::new();
    metadata.insert("flow".to_string(), ctx.flow.name.clone());
    metadata.insert("flow_run".to_string(), ctx.run.to_string());
    metadata.insert("flow_step".to_string(), path.to_string());
    StartSession {
        idempotency_key: Some(step_session_key(ctx.run, path, attempt)),
        metadata,
        ..StartSession::default()
    }
}

/// A `gate` step: a hold session of the runtime (started with an
/// idempotency key of the run, step and attempt) whose one turn is a gate
/// on the subject; the step's output is the decision once there is one.
async fn gate(
    deps: &Deps,
    ctx: &RunCtx,
    g: &crate::def::GateStep,
    path: &str,
    attempt: u32,
    input: &Value,
) -> Result<Outcome, String> {
    let caller = deps.rt.as_caller(ctx.principal.clone());
    let subject = input.get("subject").cloned().unwrap_or(Value::Null);
    let req = StartSession {
        one_shot: true,
        hold: Some(baton_runtime::HoldTerms {
            policy: gate_policy(ctx.run, path),
            reason: format!(
                "flow {:?}, step {path:?}: a decision is needed",
                ctx.flow.name
            ),
            reviewers: g.reviewers.clone(),
            timeout_ms: g.timeout_ms,
            on_timeout: g.on_timeout,
        }),
        ..step_session(ctx, path, attempt)
    };
    let info = match caller.start_session(req).await {
        Ok(info) => info,
        Err(e) => return refusal(e),
    };
    let view = caller.get(info.id).await.map_err(|e| e.to_string())?;
    let sent = view.turns_completed > 0
        || view.current_turn != 0
        || view.queued_turns > 0
        || !view.messages.is_empty();
    if !sent {
        // The turn is durable when this answers; its gate opens next.
        match caller.send_with(info.id, subject.to_string(), false).await {
            Ok(events) => drop(events),
            Err(e) => return refusal(e),
        }
        return Ok(Outcome::Pending);
    }
    let gates = deps
        .rt
        .list_gates(baton_runtime::GateQuery {
            session: Some(info.id),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let Some((gate, outcome)) = gates
        .gates
        .iter()
        .find_map(|g| g.outcome.as_ref().map(|o| (g, o)))
    else {
        return Ok(Outcome::Pending);
    };
    let decision = outcome.decision.as_str();
    let payload = if outcome.edited.is_empty() {
        subject.clone()
    } else {
        serde_json::from_str(&outcome.edited).unwrap_or(Value::String(outcome.edited.clone()))
    };
    Ok(Outcome::Done(json!({
        "approved": decision != "reject",
        "decision": decision,
        "reviewer": outcome.reviewer,
        "reason": outcome.reason,
        "by_timeout": outcome.by_timeout,
        "gate_id": gate.gate_id.to_string(),
        "subject": subject,
        "payload": payload,
    })))
}

async fn model(
    deps: &Deps,
    ctx: &RunCtx,
    m: &ModelStep,
    path: &str,
    attempt: u32,
    input: &Value,
    agent: bool,
) -> Result<Outcome, String> {
    let caller = deps.rt.as_caller(ctx.principal.clone());
    let text = |k: &str| input.get(k).and_then(Value::as_str).map(str::to_string);
    let prompt = text("prompt").unwrap_or_default();
    let req = StartSession {
        system_prompt: text("system").unwrap_or_default(),
        route: text("route").filter(|r| !r.is_empty()),
        allowed_tools: if agent { m.tools.clone() } else { Vec::new() },
        max_steps: m.max_steps,
        one_shot: !agent,
        generation: Generation {
            json_schema: m.json_schema.as_ref().map(|(v, _)| v.to_string()),
            ..Generation::default()
        },
        ..step_session(ctx, path, attempt)
    };
    let info = match caller.start_session(req).await {
        Ok(info) => info,
        Err(e) => return refusal(e),
    };
    let view = caller.get(info.id).await.map_err(|e| e.to_string())?;
    if view.turns_completed == 0 {
        let started = if view.current_turn != 0 {
            caller.resume(info.id, 0).await
        } else {
            caller.send_with(info.id, prompt, false).await
        };
        let mut events = match started {
            Ok(events) => events,
            Err(e) => return refusal(e),
        };
        loop {
            let Some(ev) = events.next().await else {
                return Err("the session's event stream ended before its turn did".into());
            };
            // A stream cut by a restart or a stop: the step session goes
            // on, and the step finds it again by its key.
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => return refusal(e),
            };
            match ev.kind {
                EventKind::TurnCompleted { .. } => break,
                EventKind::TurnFailed { reason, code, .. } => {
                    return Err(format!("{}: {reason}", code.as_str()));
                }
                EventKind::TurnCancelled { .. } => return Err("the turn was cancelled".into()),
                _ => {}
            }
        }
    }
    let view = caller.get(info.id).await.map_err(|e| e.to_string())?;
    let answer = view
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant)
        .map(|m| m.content.clone())
        .ok_or_else(|| "the session has no answer".to_string())?;
    match &m.json_schema {
        Some((_, schema)) => {
            baton_governance::json::schema_check(schema, &answer)?;
            baton_governance::json::answer_json(&answer)
                .map(Outcome::Done)
                .ok_or_else(|| "json_schema: the answer is not valid JSON".to_string())
        }
        None => Ok(Outcome::Done(Value::String(answer))),
    }
}

async fn http(deps: &Deps, h: Option<&HttpStep>, input: &Value) -> Result<Value, String> {
    let url_text = input.get("url").and_then(Value::as_str).unwrap_or_default();
    let url = reqwest::Url::parse(url_text).map_err(|e| format!("url {url_text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url {url_text:?}: only http and https"));
    }
    let host = url.host_str().unwrap_or_default();
    if !host_allowed(
        &deps.config.http.allowed_hosts,
        host,
        url.port_or_known_default(),
    ) {
        return Err(format!("host {host:?} is not in flows.http.allowed_hosts"));
    }
    let timeout = h
        .and_then(|h| h.timeout)
        .unwrap_or(std::time::Duration::from_millis(
            deps.config.http.timeout_ms,
        ));
    let limit = h
        .and_then(|h| h.max_response_bytes)
        .unwrap_or(deps.config.http.max_response_bytes);
    let method = input
        .get("method")
        .and_then(Value::as_str)
        .and_then(|m| reqwest::Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(reqwest::Method::POST);
    let mut req = deps.http.request(method, url).timeout(timeout);
    if let Some(headers) = input.get("headers").and_then(Value::as_object) {
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str().unwrap_or_default());
        }
    }
    for (header, secret) in h.map(|h| h.secret_headers.as_slice()).unwrap_or_default() {
        let value = deps
            .secrets
            .get(secret)
            .ok_or_else(|| format!("secret {secret:?} is not in flows.secrets"))?;
        req = req.header(header.as_str(), value.expose_secret());
    }
    if let Some(body) = input.get("body").filter(|b| !b.is_null()) {
        req = req.json(body);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
    }
    let body: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if !status.is_success() {
        return Err(format!(
            "HTTP {}: {}",
            status.as_u16(),
            truncate(&body.to_string(), 300)
        ));
    }
    Ok(json!({ "status": status.as_u16(), "body": body }))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
