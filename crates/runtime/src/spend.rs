//! Tenants' spend per UTC day and month, for their budget ceilings
//! (`daily_budget_usd`, `monthly_budget_usd`).
//!
//! Each session's spend in a period is written by its actor in the same
//! batch as the priced `AssistantMessage` record, under its own key, so the
//! totals survive SIGKILL exactly (a session's writes are ordered; the
//! sum over sessions needs no cross-session ordering). Read back at start.
//!
//! Where several nodes serve at once (`[cluster] ownership = "sessions"`)
//! each node also keeps its own part of each tenant's spend per period
//! (what it added), publishes it every heartbeat and reads the others'
//! ([`TenantSpend::exchange`]): a tenant's budget is checked against the
//! cluster's spend as of the last heartbeat, not one node's.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use baton_store::Store;
use baton_types::SessionId;

use crate::error::Result;

#[derive(Default)]
struct Period {
    total: f64,
    sessions: HashMap<SessionId, f64>,
}

/// A tenant's spend in a period split by node, where several serve.
#[derive(Default, Clone, Copy)]
struct Parts {
    /// What this node added (exact, in memory).
    mine: f64,
    /// What this node last wrote of `mine`.
    published: f64,
    /// The other nodes' parts, as last read.
    others: f64,
}

/// Spend by (tenant, period).
#[derive(Default)]
pub(crate) struct TenantSpend {
    periods: Mutex<HashMap<(String, String), Period>>,
    /// Where several nodes serve at once: this node's id.
    node: Option<String>,
    parts: Mutex<HashMap<(String, String), Parts>>,
}

impl std::fmt::Debug for TenantSpend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantSpend")
    }
}

/// The day (`d2026-12-03`) and month (`m2026-12`) of a time, UTC.
pub(crate) fn periods(unix_ms: u64) -> [String; 2] {
    let (year, month, day) = baton_types::utc_date(unix_ms);
    [
        format!("d{year:04}-{month:02}-{day:02}"),
        format!("m{year:04}-{month:02}"),
    ]
}

impl TenantSpend {
    pub(crate) async fn load(store: &Store) -> Result<TenantSpend> {
        let mut table: HashMap<(String, String), Period> = HashMap::new();
        for (tenant, period, session, usd) in store.tenant_spends().await? {
            let p = table.entry((tenant, period)).or_default();
            p.total += usd;
            p.sessions.insert(session, usd);
        }
        let node = store
            .node_status()
            .filter(|_| store.claims())
            .map(|n| n.node_id);
        let spend = TenantSpend {
            periods: Mutex::new(table),
            node,
            parts: Mutex::new(HashMap::new()),
        };
        if spend.node.is_some() {
            spend.exchange(store).await?;
        }
        Ok(spend)
    }

    /// Where several nodes serve at once: write this node's parts of the
    /// current day's and month's spend that grew, and read the others'
    /// (every heartbeat, and at start, when this node's own parts written
    /// by its previous process are taken up). One task does it, so a
    /// part's writes land in order.
    pub(crate) async fn exchange(&self, store: &Store) -> Result<()> {
        let Some(me) = &self.node else {
            return Ok(());
        };
        let current = periods(baton_types::now_unix_ms());
        let mut batch = baton_store::Batch::unsynced();
        let mut wrote = Vec::new();
        {
            let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
            parts.retain(|(_, period), _| current.contains(period));
            for ((tenant, period), p) in parts.iter() {
                if p.mine > p.published {
                    batch.put_tenant_node_spend(period, tenant, me, p.mine);
                    wrote.push(((tenant.clone(), period.clone()), p.mine));
                }
            }
        }
        if !batch.is_empty() {
            store.write(batch).await?;
        }
        let mut read = Vec::new();
        for period in &current {
            read.push((period.clone(), store.tenant_node_spends(period).await?));
        }
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, usd) in wrote {
            if let Some(p) = parts.get_mut(&key) {
                p.published = p.published.max(usd);
            }
        }
        for p in parts.values_mut() {
            p.others = 0.0;
        }
        for (period, rows) in read {
            for (tenant, node, usd) in rows {
                let p = parts.entry((tenant, period.clone())).or_default();
                if node == *me {
                    // Written by this node's previous process (or by this
                    // one): never below what it recorded.
                    p.mine = p.mine.max(usd);
                    p.published = p.published.max(usd);
                } else {
                    p.others += usd;
                }
            }
        }
        Ok(())
    }

    /// Add `usd` spent by `session` of `tenant` at `unix_ms`; its new
    /// totals per period, to be written with the record.
    pub(crate) fn add(
        &self,
        tenant: &str,
        session: SessionId,
        usd: f64,
        unix_ms: u64,
    ) -> Vec<(String, f64)> {
        if self.node.is_some() {
            let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
            for period in periods(unix_ms) {
                parts.entry((tenant.to_string(), period)).or_default().mine += usd;
            }
        }
        let mut table = self.periods.lock().unwrap_or_else(PoisonError::into_inner);
        periods(unix_ms)
            .into_iter()
            .map(|period| {
                let p = table
                    .entry((tenant.to_string(), period.clone()))
                    .or_default();
                p.total += usd;
                let s = p.sessions.entry(session).or_default();
                *s += usd;
                (period, *s)
            })
            .collect()
    }

    /// `session`'s recorded spend in `period`, read when this node loads
    /// it: where nodes own sessions one by one, another node may have
    /// added to it since this one read it. The higher total is kept (a
    /// session's spend in a period only grows), so that this node's next
    /// write goes on from it rather than from a stale one.
    pub(crate) fn sync(&self, tenant: &str, period: &str, session: SessionId, usd: f64) {
        let mut table = self.periods.lock().unwrap_or_else(PoisonError::into_inner);
        let p = table
            .entry((tenant.to_string(), period.to_string()))
            .or_default();
        let s = p.sessions.entry(session).or_default();
        if usd > *s {
            p.total += usd - *s;
            *s = usd;
        }
    }

    /// What `tenant` spent in `period`: the sum of the sessions' spend
    /// this node knows of, or, where several nodes serve, the nodes' parts
    /// (its own exact, the others' as of the last heartbeat) when that is
    /// more.
    pub(crate) fn spent(&self, tenant: &str, period: &str) -> f64 {
        let key = (tenant.to_string(), period.to_string());
        let known = self
            .periods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .map_or(0.0, |p| p.total);
        let cluster = self
            .parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .map_or(0.0, |p| p.mine + p.others);
        known.max(cluster)
    }
}

/// Tokens (input and output) each tenant's model calls used in the last
/// minute, for `tokens_per_minute`. In memory: a restart forgets the last
/// minute, which costs at most one minute's allowance.
#[derive(Debug, Default)]
pub(crate) struct TokenMeter {
    windows: Mutex<HashMap<String, std::collections::VecDeque<(std::time::Instant, u64)>>>,
}

/// Seconds from `now_ms` until the period (`dYYYY-MM-DD` or `mYYYY-MM`,
/// UTC, see [`periods`]) it falls in ends; at least 1.
pub(crate) fn secs_until_next(period: &str, now_ms: u64) -> u64 {
    const DAY_MS: u64 = 86_400_000;
    let mut next = (now_ms / DAY_MS + 1) * DAY_MS;
    if period.starts_with('m') {
        // The next first of a month, at most 31 days on.
        while baton_types::utc_date(next).2 != 1 {
            next += DAY_MS;
        }
    }
    (next - now_ms).div_ceil(1000).max(1)
}

/// The [`TokenMeter`] key of a principal (by its label) in a tenant.
pub(crate) fn principal_meter_key(tenant: &str, label: &str) -> String {
    format!("{tenant}\0{label}")
}

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

impl TokenMeter {
    pub(crate) fn add(&self, tenant: &str, tokens: u64, now: std::time::Instant) {
        let mut w = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let q = w.entry(tenant.to_string()).or_default();
        q.push_back((now, tokens));
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE)
        {
            q.pop_front();
        }
    }

    /// Tokens used in the last minute, and when the oldest of them leaves
    /// the window.
    pub(crate) fn used(&self, tenant: &str, now: std::time::Instant) -> (u64, std::time::Duration) {
        let mut w = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(q) = w.get_mut(tenant) else {
            return (0, std::time::Duration::ZERO);
        };
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE)
        {
            q.pop_front();
        }
        let total = q.iter().map(|(_, n)| n).sum();
        let wait = q.front().map_or(std::time::Duration::ZERO, |(t, _)| {
            MINUTE.saturating_sub(now.duration_since(*t))
        });
        (total, wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_and_months() {
        assert_eq!(periods(0), ["d1970-01-01".to_string(), "m1970-01".into()]);
        // 2024-02-29T23:59:59.999Z and the next millisecond.
        assert_eq!(periods(1_709_251_199_999)[0], "d2024-02-29");
        assert_eq!(
            periods(1_709_251_200_000),
            ["d2024-03-01".to_string(), "m2024-03".into()]
        );
        assert_eq!(periods(1_796_256_000_000)[0], "d2026-12-03");
    }

    #[test]
    fn periods_end_at_the_next_utc_midnight_or_first_of_the_month() {
        // 2024-02-29T23:00:00Z: an hour to the day's end and the month's.
        let t = 1_709_247_600_000;
        assert_eq!(secs_until_next("d2024-02-29", t), 3_600);
        assert_eq!(secs_until_next("m2024-02", t), 3_600);
        // 2024-02-01T00:00:00Z: a whole day, and 29 days (a leap year).
        let t = 1_706_745_600_000;
        assert_eq!(secs_until_next("d2024-02-01", t), 86_400);
        assert_eq!(secs_until_next("m2024-02", t), 29 * 86_400);
    }

    #[test]
    fn tokens_leave_the_window_after_a_minute() {
        let m = TokenMeter::default();
        let t0 = std::time::Instant::now();
        m.add("acme", 100, t0);
        m.add("acme", 50, t0 + std::time::Duration::from_secs(30));
        let (used, wait) = m.used("acme", t0 + std::time::Duration::from_secs(40));
        assert_eq!(used, 150);
        assert_eq!(wait, std::time::Duration::from_secs(20));
        assert_eq!(
            m.used("acme", t0 + std::time::Duration::from_secs(61)).0,
            50
        );
        assert_eq!(m.used("globex", t0).0, 0);
    }

    #[test]
    fn totals_add_up_per_tenant_and_period() {
        let s = TenantSpend::default();
        let (a, b) = (SessionId::new(), SessionId::new());
        let t = 1_796_256_000_000;
        assert_eq!(s.add("acme", a, 1.5, t)[0].1, 1.5);
        assert_eq!(s.add("acme", a, 1.0, t)[0].1, 2.5);
        assert_eq!(s.add("acme", b, 0.5, t)[0].1, 0.5);
        s.add("globex", b, 9.0, t);
        assert_eq!(s.spent("acme", "d2026-12-03"), 3.0);
        assert_eq!(s.spent("acme", "m2026-12"), 3.0);
        assert_eq!(s.spent("acme", "d2026-12-04"), 0.0);
    }

    #[test]
    fn a_session_priced_elsewhere_goes_on_from_the_higher_total() {
        let s = TenantSpend::default();
        let t = 1_764_720_000_000; // 2025-12-03
        let [day, _] = periods(t);
        let a = SessionId::new();
        s.add("acme", a, 1.0, t);
        // Another node took the session to 3.0; this node loads it again.
        s.sync("acme", &day, a, 3.0);
        assert_eq!(s.spent("acme", &day), 3.0);
        // A stale (lower) record changes nothing.
        s.sync("acme", &day, a, 2.0);
        assert_eq!(s.spent("acme", &day), 3.0);
        // The next write goes on from 3.0, not from 1.0.
        assert_eq!(s.add("acme", a, 0.5, t)[0], (day.clone(), 3.5));
        assert_eq!(s.spent("acme", &day), 3.5);
    }
}
