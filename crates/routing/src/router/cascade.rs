//! A cascade's quality gates on the answer of a step that is not the last:
//! the JSON Schema, the confidence threshold and the evaluator route, in
//! that order (see docs/routing.md, "Cascade").

use std::sync::Arc;

use baton_models::{ModelRequest, ModelResponse};
use baton_types::Message;

use super::context::CallContext;
use super::types::{RouteCall, RouteErrorKind};
use crate::budget::SessionBudget;
use crate::gates;
use crate::select::last_user_message;

/// Why a cascade step's answer is not accepted.
pub(super) enum GateFailure {
    /// A gate failed, and why (`min_confidence: …`, `evaluator: …`).
    Failed(String),
    /// The call was cancelled while the evaluator ran.
    Cancelled,
}

/// The gates' verdict on one answer, and what reaching it cost.
pub(super) struct Verdict {
    /// `Ok(detail)` to accept the answer: the gates passed, in order.
    pub(super) result: Result<String, GateFailure>,
    /// Billed by the evaluator route, whether it passed the answer or not.
    pub(super) cost_usd: Option<f64>,
}

/// Apply the route's gates to `resp`. `spent_usd` is what the call has
/// billed so far, counted against the session budget of an evaluator call.
pub(super) async fn check(ctx: &CallContext<'_>, resp: &ModelResponse, spent_usd: f64) -> Verdict {
    let mut passed = match local_gates(ctx, resp) {
        Ok(passed) => passed,
        Err(failure) => {
            return Verdict {
                result: Err(failure),
                cost_usd: None,
            };
        }
    };
    let Some(evaluator) = &ctx.route.cfg.cascade.evaluator else {
        return Verdict {
            result: Ok(passed.join("; ")),
            cost_usd: None,
        };
    };
    let verdict = ask_evaluator(ctx, evaluator, resp, spent_usd).await;
    Verdict {
        result: verdict.result.map(|detail| {
            passed.push(detail);
            passed.join("; ")
        }),
        cost_usd: verdict.cost_usd,
    }
}

/// The gates that need no model: the JSON Schema, then the confidence
/// threshold. `Ok` lists what passed.
fn local_gates(ctx: &CallContext<'_>, resp: &ModelResponse) -> Result<Vec<String>, GateFailure> {
    let route = ctx.route;
    let c = &route.cfg.cascade;
    let mut passed = Vec::new();
    let has_text = resp.message.tool_calls.is_empty();
    // 1. The route's JSON Schema. (The request's is checked before the
    // gates, on every route and step: see `CallLoop::on_success`.)
    if let Some(schema) = route.schema.as_deref()
        && has_text
    {
        gates::schema_gate(schema, &resp.message.content).map_err(GateFailure::Failed)?;
        passed.push("json_schema".to_string());
    }
    // 2. Confidence.
    if let Some(min) = c.min_confidence {
        let detail = gates::confidence_gate(min, resp, c.on_missing_confidence)
            .map_err(|r| GateFailure::Failed(format!("min_confidence: {r}")))?;
        passed.push(detail);
    }
    Ok(passed)
}

/// The third gate: the evaluator route, asked PASS or FAIL in a routed call
/// of its own, within this call's deadline, cancellation and session budget.
async fn ask_evaluator(
    ctx: &CallContext<'_>,
    evaluator: &str,
    resp: &ModelResponse,
    spent_usd: f64,
) -> Verdict {
    let call = ctx.call;
    let c = &ctx.route.cfg.cascade;
    let prompt = gates::evaluator_prompt(
        c.evaluator_prompt.as_deref(),
        last_user_message(&call.request),
        &gates::render_answer(resp),
    );
    let session_budget = call.session_budget.as_ref().map(|s| SessionBudget {
        scope: s.scope.clone(),
        limit_usd: s.limit_usd,
        spent_usd: s.spent_usd + spent_usd,
    });
    let eval_call = RouteCall {
        route: evaluator.to_string(),
        request: Arc::new(ModelRequest::new(vec![Message::user(prompt)])),
        needs_vision: false,
        data_classes: call.data_classes.clone(),
        deltas: None,
        events: None,
        cancel: call.cancel.clone(),
        deadline: ctx.deadline,
        session_budget,
        own_keys: call.own_keys.clone(),
    };
    match ctx.router.call_boxed(eval_call).await {
        Ok(r) => {
            let verdict = r.response.message.content.trim().to_string();
            let result = if gates::evaluator_passes(&verdict) {
                Ok(format!("evaluator {evaluator}: PASS"))
            } else {
                let short: String = verdict.chars().take(80).collect();
                Err(GateFailure::Failed(format!(
                    "evaluator: {evaluator} said {short:?}, not PASS"
                )))
            };
            Verdict {
                result,
                cost_usd: r.cost_usd,
            }
        }
        Err(e) if e.kind == RouteErrorKind::Cancelled => Verdict {
            result: Err(GateFailure::Cancelled),
            cost_usd: None,
        },
        Err(e) => Verdict {
            result: Err(GateFailure::Failed(format!(
                "evaluator: {evaluator} failed: {}",
                e.message
            ))),
            cost_usd: e.cost_usd,
        },
    }
}
