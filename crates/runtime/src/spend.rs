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
///
/// Where several nodes serve at once, each publishes its use every
/// heartbeat and adds the others' ([`exchange_tokens`]): a limit holds
/// across the cluster as of the last heartbeat.
#[derive(Debug, Default)]
pub(crate) struct TokenMeter {
    windows: Mutex<HashMap<String, std::collections::VecDeque<(std::time::Instant, u64)>>>,
    /// The other nodes' use in the last minute, by key, as last read.
    others: Mutex<HashMap<String, u64>>,
    /// This node's use, by key, as it last published it.
    published: Mutex<HashMap<String, u64>>,
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
            // Only the other nodes' use, if any: when it leaves their
            // windows is not known here.
            return (self.others(tenant), std::time::Duration::ZERO);
        };
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE)
        {
            q.pop_front();
        }
        let total: u64 = q.iter().map(|(_, n)| n).sum();
        let wait = q.front().map_or(std::time::Duration::ZERO, |(t, _)| {
            MINUTE.saturating_sub(now.duration_since(*t))
        });
        let others = self.others(tenant);
        (total + others, wait)
    }

    fn others(&self, key: &str) -> u64 {
        self.others
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// This node's use in the last minute of every key whose use changed
    /// since it was last published (0: none any more).
    fn changed(&self, now: std::time::Instant) -> Vec<(String, u64)> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        windows.retain(|key, q| {
            while q
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE)
            {
                q.pop_front();
            }
            let used: u64 = q.iter().map(|(_, n)| n).sum();
            if published.get(key).copied().unwrap_or(0) != used {
                out.push((key.clone(), used));
            }
            !q.is_empty()
        });
        // Keys whose window emptied and went away: published as none.
        for (key, used) in published.iter() {
            if *used > 0 && !windows.contains_key(key) && !out.iter().any(|(k, _)| k == key) {
                out.push((key.clone(), 0));
            }
        }
        for (key, used) in &out {
            if *used == 0 {
                published.remove(key);
            } else {
                published.insert(key.clone(), *used);
            }
        }
        out
    }
}

/// Where several nodes serve at once: this node's id and the others'
/// spend per route when it started (its ledger began from their sum).
#[derive(Debug, Clone)]
pub(crate) struct RouteBase {
    pub node: String,
    pub at_start: HashMap<String, f64>,
}

/// Where several nodes serve at once: read what the other nodes have
/// spent per route since this one started, and count it against the
/// routes' budgets here (each node writes its own part of a route's
/// spend; see the router's ledger). Every heartbeat.
pub(crate) async fn exchange_route_spend(
    store: &Store,
    base: &RouteBase,
    ledger: &baton_routing::BudgetLedger,
) -> Result<()> {
    let all = store.route_spends().await?;
    let mine = store.route_spends_of(&base.node).await?;
    for (route, total) in all {
        let others = total - mine.get(&route).copied().unwrap_or(0.0);
        let since = others - base.at_start.get(&route).copied().unwrap_or(0.0);
        ledger.set_spent_elsewhere(&route, since);
    }
    Ok(())
}

/// Where several nodes serve at once: publish this node's token use of
/// the last minute (tenants' and keys') where it changed, and read the
/// other nodes' (what a gone node published stops counting a minute
/// after it counted it). Every heartbeat, from one task.
pub(crate) async fn exchange_tokens(
    store: &Store,
    tenants: &TokenMeter,
    keys: &TokenMeter,
) -> Result<()> {
    let Some(me) = store
        .node_status()
        .filter(|_| store.claims())
        .map(|n| n.node_id)
    else {
        return Ok(());
    };
    let (now, now_ms) = (std::time::Instant::now(), baton_types::now_unix_ms());
    let mut batch = baton_store::Batch::unsynced();
    for (meter, m) in [(b't', tenants), (b'p', keys)] {
        for (key, used) in m.changed(now) {
            batch.put_node_tokens(&me, meter, &key, used, now_ms);
        }
    }
    if !batch.is_empty() {
        store.write(batch).await?;
    }
    let mut others: [HashMap<String, u64>; 2] = Default::default();
    for (node, meter, key, tokens, at) in store.node_tokens().await? {
        if node == me || now_ms.saturating_sub(at) >= MINUTE.as_millis() as u64 {
            continue;
        }
        let i = match meter {
            b't' => 0,
            b'p' => 1,
            _ => continue,
        };
        *others[i].entry(key).or_default() += tokens;
    }
    let [t, k] = others;
    *tenants
        .others
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = t;
    *keys.others.lock().unwrap_or_else(PoisonError::into_inner) = k;
    Ok(())
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
    fn a_meter_publishes_what_changed_and_adds_the_others_use() {
        let m = TokenMeter::default();
        let t0 = std::time::Instant::now();
        m.add("acme", 100, t0);
        assert_eq!(m.changed(t0), vec![("acme".to_string(), 100)]);
        assert!(m.changed(t0).is_empty(), "published already");
        m.others
            .lock()
            .unwrap()
            .extend([("acme".to_string(), 7), ("globex".to_string(), 3)]);
        assert_eq!(m.used("acme", t0).0, 107);
        assert_eq!(m.used("globex", t0).0, 3, "only the others' use");
        // The window empties: published as none, once.
        let later = t0 + std::time::Duration::from_secs(61);
        assert_eq!(m.changed(later), vec![("acme".to_string(), 0)]);
        assert!(m.changed(later).is_empty());
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
