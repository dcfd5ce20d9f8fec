//! The requests and model prices shared by the phases.

use baton_models::ModelRequest;
use baton_types::{Message, ToolDefinition};
use serde_json::json;

/// Prices of the cascade's fake models, USD per million tokens (input, output).
pub(crate) const CHEAP_PRICE: (f64, f64) = (0.15, 0.60);
pub(crate) const STRONG_PRICE: (f64, f64) = (2.50, 10.00);
/// The cascade's quality gate.
pub(crate) const MIN_CONFIDENCE: f64 = 0.7;

pub(crate) fn short_request() -> ModelRequest {
    ModelRequest::new(vec![
        Message::system("You are a helpful assistant."),
        Message::user("What is the capital of France? One word, please."),
    ])
}

/// A conversation of about 2 KB (system prompt, four exchanges, a last
/// question that matches two of the complexity route's three signals).
pub(crate) fn conversation_2kb() -> ModelRequest {
    let turns = [
        (
            "Our workers are Rust services on Kubernetes; pods are killed on every deploy and a \
             job can take from a second to twenty minutes. Should we heartbeat?",
            "Yes. Renew the lease from a background task every third of its length, stop the job \
             when a renewal fails, and keep the lease short enough that a crashed pod's jobs are \
             picked up quickly, a minute or two for your longest jobs.",
        ),
        (
            "We run a job queue on Postgres with SKIP LOCKED. Workers sometimes pick the same job \
             twice after a deploy. What could cause that?",
            "Usually a worker that lost its connection mid-transaction: the row lock is released, \
             the job is visible again, and a second worker takes it while the first still runs it \
             in memory. Check for statement timeouts, pool resets during the deploy, and whether \
             the job is marked running in the same transaction that locks it.",
        ),
        (
            "The job is marked running in a separate transaction after the lock. Is that the \
             problem?",
            "Yes: between the commit that releases the lock and the one that marks it running \
             there is a window where another worker can lock the same row. Do both in one \
             transaction, or add a lease column with an expiry that a worker must own to run the \
             job.",
        ),
        (
            "If we add a lease with an expiry, what happens when a job runs longer than the \
             lease?",
            "Another worker may take it over while the first is still running, so long jobs need \
             to renew their lease periodically, and the work itself must be idempotent or fenced \
             with a token that increases on every takeover.",
        ),
    ];
    let mut messages = vec![Message::system(
        "You are a careful senior engineer. Answer precisely, show your reasoning when it \
         matters, and say so when you are not sure.",
    )];
    for (q, a) in turns {
        messages.push(Message::user(q));
        messages.push(Message::assistant(a));
    }
    messages.push(Message::user(
        "Please prove, step by step, that a fencing token that increases on every takeover \
         prevents two workers from both committing the effects of the same job, assuming the \
         storage rejects writes that carry a token lower than the highest one it has seen. \
         Cover the case where the old worker resumes after a long pause and tries to write \
         first, and say which properties of the storage the argument depends on.",
    ));
    ModelRequest::new(messages)
}

/// The 2 KB conversation's exchanges repeated until it holds 64 KB, the
/// same last question at the end: a long agent conversation.
pub(crate) fn conversation_64kb() -> ModelRequest {
    let short = conversation_2kb();
    let (system, rest) = short.messages.split_at(1);
    let (exchanges, last) = rest.split_at(rest.len() - 1);
    let mut messages = system.to_vec();
    while conversation_chars(&ModelRequest::new(messages.clone())) < 64 * 1024 {
        messages.extend_from_slice(exchanges);
    }
    messages.extend_from_slice(last);
    ModelRequest::new(messages)
}

pub(crate) fn conversation_chars(req: &ModelRequest) -> usize {
    req.messages.iter().map(|m| m.content.len()).sum()
}

/// A request that needs the `tools` and `json_schema` capabilities.
pub(crate) fn tools_and_schema_request() -> ModelRequest {
    let mut req = short_request().with_tools(vec![ToolDefinition {
        name: "lookup_city".into(),
        description: "Look up facts about a city".into(),
        parameters:
            r#"{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}"#
                .into(),
    }]);
    req.json_schema = Some(json!({
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }));
    req
}
