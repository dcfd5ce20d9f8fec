//! The gate API of the handle: list, read and decide gates, watch them,
//! and the deadline scanner that applies timeout actions.

use std::time::Instant;

use baton_types::{GateId, GateRecord, Message, now_unix_ms};

use crate::error::{Error, Result};
use crate::gates::{GateDecision, GateList, GateQuery, already_decided, parse_gate_id};
use crate::handle::RuntimeHandle;
use crate::paging::{page_size, page_token};
use crate::session::SessionMsg;

impl RuntimeHandle {
    /// A page of gates (by status, session, policy), from the gate indexes.
    pub async fn list_gates(&self, q: GateQuery) -> Result<GateList> {
        let size = page_size(q.page_size)?;
        let after = page_token(q.page_token.as_deref(), |t| t.parse::<GateId>().ok())?;
        let filter = baton_store::gates::GateFilter {
            status: q.status,
            session: q.session,
            policy: q.policy.filter(|p| !p.is_empty()),
        };
        let store = &self.shared().store;
        if q.tenant.is_none() && q.groups.is_none() {
            let page = store.list_gates(filter, after, size).await?;
            return Ok(GateList {
                gates: page.gates,
                next_page_token: page.next_after.map(|a| a.to_string()),
            });
        }
        // Filtered by tenant or group: read pages until this one is full.
        let mut tenants: std::collections::HashMap<baton_types::SessionId, bool> =
            Default::default();
        let mut gates = Vec::new();
        let mut cursor = after;
        let next = loop {
            let page = store.list_gates(filter.clone(), cursor, size).await?;
            let mut last = None;
            for g in page.gates {
                last = Some(g.gate_id);
                if gates.len() == size {
                    break;
                }
                let group_ok = q
                    .groups
                    .as_ref()
                    .is_none_or(|gs| g.reviewers.is_empty() || gs.contains(&g.reviewers));
                let tenant_ok = match &q.tenant {
                    None => true,
                    Some(t) => match tenants.get(&g.session) {
                        Some(ok) => *ok,
                        None => {
                            let ok = store
                                .load_meta(g.session)
                                .await?
                                .is_some_and(|m| &m.tenant == t);
                            tenants.insert(g.session, ok);
                            ok
                        }
                    },
                };
                if group_ok && tenant_ok {
                    gates.push(g);
                }
            }
            if gates.len() == size {
                break gates.last().map(|g| g.gate_id);
            }
            match page.next_after {
                Some(n) => cursor = Some(last.unwrap_or(n)),
                None => break None,
            }
        };
        Ok(GateList {
            gates,
            next_page_token: next.map(|a| a.to_string()),
        })
    }

    /// One gate, and the session's recent conversation for the reviewer.
    pub async fn get_gate(&self, gate_id: &str) -> Result<(GateRecord, Vec<Message>)> {
        let id = parse_gate_id(gate_id)?;
        let store = &self.shared().store;
        let gate = store
            .get_gate(id)
            .await?
            .ok_or_else(|| Error::NotFoundDetail(format!("gate {id} not found")))?;
        let context = match store.load_meta(gate.session).await? {
            Some(_) => {
                let view = self.get(gate.session).await?;
                let skip = view.messages.len().saturating_sub(20);
                view.messages.into_iter().skip(skip).collect()
            }
            None => Vec::new(),
        };
        Ok((gate, context))
    }

    /// Decide a gate, once. The decision is durable on return; a second
    /// decision gets FAILED_PRECONDITION naming the first (decision,
    /// reviewer and reason).
    pub async fn decide_gate(
        &self,
        gate_id: &str,
        decision: GateDecision,
        reviewer: String,
        reason: String,
    ) -> Result<GateRecord> {
        let id = parse_gate_id(gate_id)?;
        if reviewer.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "reviewer is required: decisions are recorded with who made them".into(),
            ));
        }
        let gate = self
            .shared()
            .store
            .get_gate(id)
            .await?
            .ok_or_else(|| Error::NotFoundDetail(format!("gate {id} not found")))?;
        if let Some(o) = &gate.outcome {
            return Err(already_decided(id, o));
        }
        self.ask(gate.session, |reply| SessionMsg::DecideGate {
            gate_id: id,
            decision,
            reviewer,
            reason,
            reply,
        })
        .await
    }

    /// Gates as they open, escalate and are decided (after they are durable).
    pub fn watch_gates(&self) -> tokio::sync::broadcast::Receiver<GateRecord> {
        self.shared().gate_events.subscribe()
    }

    /// Look for gates whose deadline passed and hand each to its session
    /// (which applies the timeout action). Gates wait on disk, not in
    /// memory: a passivated session is woken only when it has to act.
    pub(crate) fn spawn_gate_timeouts(&self) {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let period = std::time::Duration::from_millis(self.config().gates.timeout_scan_ms);
        tokio::spawn(async move {
            // (gate, deadline) pairs handed over lately: a session takes a
            // moment to act; an escalated gate has a new deadline.
            let mut recently: std::collections::HashMap<(GateId, u64), Instant> =
                Default::default();
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { return };
                let handle = RuntimeHandle { inner };
                if handle.inner.supervisor.get_status() != ractor::ActorStatus::Running {
                    return;
                }
                let due = match handle.shared().store.due_gates(now_unix_ms(), 512).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot scan gate deadlines");
                        continue;
                    }
                };
                recently.retain(|_, at| at.elapsed() < std::time::Duration::from_secs(5));
                for g in due {
                    if recently
                        .insert((g.gate_id, g.deadline_unix_ms), Instant::now())
                        .is_none()
                    {
                        let _ =
                            handle.route(g.session, SessionMsg::GateTimeout { gate_id: g.gate_id });
                    }
                }
            }
        });
    }
}
