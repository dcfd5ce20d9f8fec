//! Embeddings: texts to vectors, routed like a model turn.
//!
//! An embeddings call has no conversation, so it is not a session: it goes
//! through the caller's access checks and the tenant's budgets and token
//! limits, the input policies (a text that a policy blocks is refused;
//! redacted values are removed before the text leaves; data classes found
//! restrict the endpoints), then through the router — the same candidate
//! choice, breakers, retries, failover, hedging and budgets as a turn, to
//! endpoints with the `embeddings` capability. Its cost counts against the
//! tenant's day and month (written durably before the answer), and every
//! call is one `embedding_call` record in the audit trail: who, which route
//! and endpoint, the routing decisions, tokens, cost, policy hits — never
//! the texts or vectors.

use std::sync::Arc;
use std::time::Duration;

use baton_governance::{Stage, Subject};
use baton_models::ModelRequest;
use baton_routing::{RouteCall, RouteError, SessionBudget};
use baton_types::{RoutingDecision, SessionId, Usage};
use tokio_util::sync::CancellationToken;

use crate::access::Caller;
use crate::error::{Error, Result};

/// An embeddings request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedCall {
    /// A route the caller may use (its tenant's default when empty).
    pub route: String,
    /// The texts, one vector each.
    pub input: Vec<String>,
    /// The vectors' length, for models that can shorten them.
    pub dimensions: Option<u32>,
    /// The texts may only go to endpoints certified for these.
    pub data_classes: Vec<String>,
    /// The most this call may cost, in USD.
    pub budget_usd: Option<f64>,
}

/// The answer to an [`EmbedCall`].
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// The call's id in the audit trail (and its spend record).
    pub id: SessionId,
    /// One vector per input, in order.
    pub vectors: Arc<Vec<Vec<f32>>>,
    /// The endpoint that answered and the model it named.
    pub endpoint: String,
    pub model: String,
    pub usage: Usage,
    pub cost_usd: Option<f64>,
    pub attempts: u32,
}

impl Caller {
    /// Embed `call.input`; an `Err` before any model was called (access,
    /// limits, policies), `Ok(Err)` when the routed call failed.
    pub async fn embed(
        &self,
        mut call: EmbedCall,
    ) -> Result<std::result::Result<Embedded, RouteError>> {
        self.require(baton_types::AccessRole::Client)?;
        self.within_budget()?;
        let shared = self.runtime().shared();
        shared.admit()?;
        if call.input.is_empty() {
            return Err(Error::InvalidArgument(
                "input: must hold at least one text".into(),
            ));
        }
        if call.route.is_empty()
            && let Some(r) = self.tenant().and_then(|t| t.default_route.clone())
        {
            call.route = r;
        }
        if !self.routes().contains(&call.route) {
            return Err(Error::NotFoundDetail(format!(
                "route {:?} does not exist or is not open to {}",
                call.route,
                self.principal().label()
            )));
        }
        let tenant = self.principal().tenant.clone();
        let metadata = std::collections::BTreeMap::new();
        let subject = Subject {
            tenant: &tenant,
            route: &call.route,
            metadata: &metadata,
            tool: None,
        };
        let policies = &shared.policies;
        if !policies.checks(Stage::Input, &subject, false).is_empty() {
            // Fail closed: a rule that needs a classifier or an evaluator
            // is not left out.
            return Err(Error::FailedPrecondition(
                "an input policy of this route asks a classifier or evaluator check, which embeddings calls do not run; the texts were not sent".into(),
            ));
        }
        let mut hits = Vec::new();
        let mut classes = call.data_classes.clone();
        for (i, text) in call.input.iter_mut().enumerate() {
            let v = policies.evaluate(Stage::Input, &subject, text);
            if let Some(b) = v.blocked.or(v.refused) {
                return Err(Error::InvalidArgument(format!(
                    "input[{i}]: refused by policy {} rule {}: {}",
                    b.policy, b.rule, b.message
                )));
            }
            if let Some(g) = v.gate {
                return Err(Error::InvalidArgument(format!(
                    "input[{i}]: policy {} rule {} holds it for review, which an embeddings call cannot wait for: {}",
                    g.policy, g.rule, g.message
                )));
            }
            if !v.redact.is_empty() {
                *text = crate::session::mask(text, &v.redact);
            }
            for c in v.data_classes {
                if !classes.contains(&c) {
                    classes.push(c);
                }
            }
            hits.extend(v.hits.into_iter().map(|h| (i, h)));
        }
        // The call and its accounting run to the end even when the caller
        // goes away: what was spent is counted and audited.
        let me = self.clone();
        let task =
            tokio::spawn(async move { me.route_embedding(call, classes, hits, tenant).await });
        task.await
            .map_err(|e| Error::Internal(format!("the embeddings task failed: {e}")))
    }

    /// Route an embeddings call whose checks passed, count its spend and
    /// audit it.
    async fn route_embedding(
        &self,
        call: EmbedCall,
        classes: Vec<String>,
        hits: Vec<(usize, baton_types::PolicyHit)>,
        tenant: String,
    ) -> std::result::Result<Embedded, RouteError> {
        let shared = self.runtime().shared();
        let id = SessionId::new();
        let request = ModelRequest::embeddings(call.input, call.dimensions);
        let routed = shared
            .router
            .call(RouteCall {
                route: call.route.clone(),
                request: Arc::new(request),
                needs_vision: false,
                data_classes: classes.clone(),
                deltas: None,
                events: None,
                cancel: CancellationToken::new(),
                deadline: Some(
                    tokio::time::Instant::now()
                        + shared
                            .config
                            .sessions
                            .turn_deadline_ms
                            .map_or(Duration::from_secs(600), Duration::from_millis),
                ),
                session_budget: call.budget_usd.map(|limit_usd| SessionBudget {
                    scope: id.to_string(),
                    limit_usd,
                    spent_usd: 0.0,
                }),
                own_keys: shared.own_keys.get(&tenant).cloned(),
            })
            .await;
        let (decisions, cost, outcome) = match &routed {
            Ok(r) => (&r.decisions, r.cost_usd, "ok"),
            Err(e) => (&Vec::new(), e.cost_usd, e.label()),
        };
        let usage = routed
            .as_ref()
            .map(|r| r.response.usage)
            .unwrap_or_default();
        let audit = self.embedding_audit(
            id,
            &call.route,
            &routed,
            decisions,
            &classes,
            &hits,
            outcome,
        );
        self.count_spend(id, &tenant, usage, cost, audit).await;
        routed.and_then(|r| {
            let vectors = r.response.embeddings.clone().ok_or_else(|| {
                RouteError::new(
                    baton_routing::RouteErrorKind::Exhausted,
                    format!("endpoint {} answered without vectors", r.endpoint),
                )
            })?;
            Ok(Embedded {
                id,
                vectors,
                endpoint: r.endpoint,
                model: r.response.model,
                usage,
                cost_usd: r.cost_usd,
                attempts: r.attempts,
            })
        })
    }

    /// Tokens against the tenant's and the caller's per-minute limits, cost
    /// against the tenant's day and month, and the call's audit record:
    /// written before the answer, so a crash cannot forget what was spent,
    /// nor keep the call from the audit trail (the record is kept in the
    /// store until the trail confirms it, and appended again at the next
    /// start if a crash came first).
    async fn count_spend(
        &self,
        id: SessionId,
        tenant: &str,
        usage: Usage,
        cost: Option<f64>,
        audit: Option<crate::audit::KeptRecord>,
    ) {
        let shared = self.runtime().shared();
        let tokens = usage.input_tokens + usage.output_tokens;
        if tokens > 0 {
            let now = std::time::Instant::now();
            shared.tenant_tokens.add(tenant, tokens, now);
            shared.principal_tokens.add(
                &crate::spend::principal_meter_key(tenant, &self.principal().label()),
                tokens,
                now,
            );
        }
        let usd = cost.unwrap_or(0.0);
        if tokens > 0 || usd > 0.0 {
            baton_metrics::metrics().tenant_usage(tenant, usage.input_tokens, 0, usd);
        }
        let mut batch = baton_store::Batch::new();
        if usd > 0.0 {
            for (period, total) in
                shared
                    .tenant_spend
                    .add(tenant, id, usd, baton_types::now_unix_ms())
            {
                batch.put_tenant_spend(tenant, &period, &id, total);
            }
        }
        if let Some(r) = &audit {
            batch.put_audit_record(&id, serde_json::to_vec(r).unwrap_or_default());
        }
        if batch.is_empty() {
            return;
        }
        let kept = match shared.store.write(batch).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(call = %id, error = %e, "cannot record an embeddings call's spend and audit record");
                false
            }
        };
        if let (Some(r), Some(sink)) = (audit, &shared.audit) {
            sink.record(&r.kind, None, r.actor.as_deref(), r.data);
            if kept {
                shared.audit_cursor.note_record(id);
            }
        }
    }

    /// The call's `embedding_call` audit record (none without a trail).
    #[allow(clippy::too_many_arguments)]
    fn embedding_audit(
        &self,
        id: SessionId,
        route: &str,
        routed: &std::result::Result<baton_routing::Routed, RouteError>,
        decisions: &[RoutingDecision],
        classes: &[String],
        hits: &[(usize, baton_types::PolicyHit)],
        outcome: &str,
    ) -> Option<crate::audit::KeptRecord> {
        self.runtime().shared().audit.as_ref()?;
        let mut data = serde_json::json!({
            "call": id.to_string(),
            "route": route,
            "outcome": outcome,
            "data_classes": classes,
            "decisions": decisions.iter().map(|d| serde_json::json!({
                "endpoint": d.chosen, "rule": d.rule, "reason": d.reason,
            })).collect::<Vec<_>>(),
            "policy_hits": hits.iter().map(|(i, h)| serde_json::json!({
                "input": i, "policy": h.policy, "rule": h.rule, "outcome": h.outcome.as_str(),
            })).collect::<Vec<_>>(),
        });
        match routed {
            Ok(r) => {
                data["endpoint"] = r.endpoint.clone().into();
                data["model"] = r.response.model.clone().into();
                data["inputs"] = r.response.embeddings.as_ref().map_or(0, |v| v.len()).into();
                data["input_tokens"] = r.response.usage.input_tokens.into();
                data["cost_usd"] = r.cost_usd.into();
                data["attempts"] = r.attempts.into();
            }
            Err(e) => {
                data["error"] = e.message.clone().into();
                data["endpoint"] = e.endpoint.clone().into();
                data["cost_usd"] = e.cost_usd.into();
                data["attempts"] = e.attempts.into();
            }
        }
        Some(crate::audit::KeptRecord {
            kind: "embedding_call".into(),
            actor: Some(self.principal().label()),
            data,
        })
    }
}
