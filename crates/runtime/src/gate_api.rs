//! The gate API of the handle: list, read and decide gates, watch them,
//! and the deadline scanner that applies timeout actions.

use std::time::Instant;

use baton_store::gates::{QueuePos, QueueScope};
use baton_types::{GateId, GateRecord, GateStatus, Message, now_unix_ms};

use crate::error::{Error, Result};
use crate::gates::{GateDecision, GateList, GateOrder, GateQuery, already_decided, parse_gate_id};
use crate::handle::RuntimeHandle;
use crate::paging::{page_size, page_token};
use crate::session::SessionMsg;

impl RuntimeHandle {
    /// A page of gates (by status, session, policy), from the gate indexes,
    /// in the order `q.order` asks for.
    pub async fn list_gates(&self, q: GateQuery) -> Result<GateList> {
        let size = page_size(q.page_size)?;
        let filter = baton_store::gates::GateFilter {
            status: q.status,
            session: q.session,
            policy: q.policy.clone().filter(|p| !p.is_empty()),
        };
        let mut cursor = match q.order {
            GateOrder::Opened => {
                Cursor::Opened(page_token(q.page_token.as_deref(), |t| t.parse().ok())?)
            }
            GateOrder::Queue => {
                if filter.status.is_some_and(|s| s != GateStatus::Pending)
                    || filter.session.is_some()
                    || filter.policy.is_some()
                {
                    return Err(Error::InvalidArgument(
                        "the queue order lists pending gates only, with no session or policy filter"
                            .into(),
                    ));
                }
                let after = page_token(q.page_token.as_deref(), QueuePos::parse)?;
                // A tenant's or a reviewer's queue: from its own index
                // entries, whatever other tenants and groups have pending.
                if let Some(tenant) = &q.tenant {
                    let scopes = match &q.groups {
                        None => vec![QueueScope::Tenant(tenant.clone())],
                        Some(groups) => {
                            let mut g: Vec<&str> = groups.iter().map(String::as_str).collect();
                            g.push("");
                            g.sort_unstable();
                            g.dedup();
                            g.into_iter()
                                .map(|group| QueueScope::Group {
                                    tenant: tenant.clone(),
                                    group: group.to_string(),
                                })
                                .collect()
                        }
                    };
                    return self.scoped_queue(scopes, after, size).await;
                }
                Cursor::Queue(after)
            }
        };
        // Filtered by tenant or group: read pages until this one is full.
        let mut tenants: std::collections::HashMap<baton_types::SessionId, bool> =
            Default::default();
        let mut gates = Vec::new();
        let next = loop {
            let (page, more) = self.gate_page(&filter, cursor, size).await?;
            let mut last = None;
            let mut left_over = false;
            for g in page {
                if gates.len() == size {
                    left_over = true;
                    break;
                }
                last = Some(cursor.at(&g));
                let group_ok = q
                    .groups
                    .as_ref()
                    .is_none_or(|gs| g.reviewers.is_empty() || gs.contains(&g.reviewers));
                let tenant_ok = match &q.tenant {
                    None => true,
                    Some(t) if !g.tenant.is_empty() => &g.tenant == t,
                    Some(t) => match tenants.get(&g.session) {
                        Some(ok) => *ok,
                        None => {
                            let ok = self
                                .shared()
                                .store
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
                break (left_over || more)
                    .then(|| gates.last().map(|g| cursor.at(g)))
                    .flatten();
            }
            match (more, last) {
                (true, Some(l)) => cursor = l,
                _ => break None,
            }
        };
        Ok(GateList {
            gates,
            next_page_token: next.map(|c| c.token()).filter(|t| !t.is_empty()),
        })
    }

    /// A page of the queue of `scopes`.
    async fn scoped_queue(
        &self,
        scopes: Vec<QueueScope>,
        after: Option<QueuePos>,
        size: usize,
    ) -> Result<GateList> {
        let page = self.shared().store.gate_queue(scopes, after, size).await?;
        Ok(GateList {
            gates: page.gates,
            next_page_token: page.next_after.map(QueuePos::to_token),
        })
    }

    /// One page of the store's gates after `cursor`, and whether more follow.
    async fn gate_page(
        &self,
        filter: &baton_store::gates::GateFilter,
        cursor: Cursor,
        size: usize,
    ) -> Result<(Vec<GateRecord>, bool)> {
        let store = &self.shared().store;
        Ok(match cursor {
            Cursor::Opened(after) => {
                let p = store.list_gates(filter.clone(), after, size).await?;
                let more = p.next_after.is_some();
                (p.gates, more)
            }
            Cursor::Queue(after) => {
                let p = store.gate_queue(vec![QueueScope::All], after, size).await?;
                let more = p.next_after.is_some();
                (p.gates, more)
            }
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

/// Where a walk of the gate indexes stands, in one of the two orders.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    Opened(Option<GateId>),
    Queue(Option<QueuePos>),
}

impl Cursor {
    /// The place of `gate` in this cursor's order.
    fn at(self, gate: &GateRecord) -> Cursor {
        match self {
            Cursor::Opened(_) => Cursor::Opened(Some(gate.gate_id)),
            Cursor::Queue(_) => Cursor::Queue(Some(QueuePos::of(gate))),
        }
    }

    fn token(self) -> String {
        match self {
            Cursor::Opened(a) => a.map(|a| a.to_string()).unwrap_or_default(),
            Cursor::Queue(a) => a.map(QueuePos::to_token).unwrap_or_default(),
        }
    }
}
