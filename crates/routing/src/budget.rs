//! Spend limits: a route's budget (all sessions together) and a session's.
//!
//! Before each attempt the router reserves the attempt's estimated cost in
//! every scope that has a limit; the check `spent + reserved + amount <=
//! limit` and the reservation happen under one lock, so concurrent calls
//! cannot together overshoot. After the attempt the reservation is settled
//! with the actual cost (a failed attempt costs nothing), or released when
//! dropped. Amounts are kept as integer picodollars so that sums are exact.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// USD in integer picodollars.
type Pico = i128;

const PICO_PER_USD: f64 = 1e12;

fn to_pico(usd: f64) -> Pico {
    if usd.is_finite() {
        (usd * PICO_PER_USD).round() as Pico
    } else if usd > 0.0 {
        Pico::MAX / 4
    } else {
        0
    }
}

fn to_usd(p: Pico) -> f64 {
    p as f64 / PICO_PER_USD
}

/// Called with `(route, total spent)` after each settlement that changed a
/// route's spend, so that the runtime can persist it.
pub type OnSpend = Arc<dyn Fn(&str, f64) + Send + Sync>;

/// A session's spend limit, as the caller knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionBudget {
    /// The session id.
    pub scope: String,
    pub limit_usd: f64,
    /// Spent by the session before this call.
    pub spent_usd: f64,
}

/// Which budget refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    Route,
    Session,
}

impl BudgetScope {
    pub fn as_str(&self) -> &'static str {
        match self {
            BudgetScope::Route => "route",
            BudgetScope::Session => "session",
        }
    }
}

/// A reservation that did not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRejection {
    pub scope: BudgetScope,
    /// The route or session name.
    pub name: String,
    pub spent_usd: f64,
    pub reserved_usd: f64,
    pub amount_usd: f64,
    pub limit_usd: f64,
}

impl fmt::Display for BudgetRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "budget of {} {} exhausted: spent ${:.6} + reserved ${:.6} + this call's estimate ${:.6} > limit ${:.6}",
            self.scope.as_str(),
            self.name,
            self.spent_usd,
            self.reserved_usd,
            self.amount_usd,
            self.limit_usd
        )
    }
}

#[derive(Debug, Default)]
struct RouteSpend {
    spent: Pico,
    reserved: Pico,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, RouteSpend>,
    /// In-flight reservations per session; an entry goes when it reaches 0.
    sessions: HashMap<String, Pico>,
    /// Where several nodes serve at once: what the others spent per route
    /// beyond what this ledger started from, as last read.
    elsewhere: HashMap<String, Pico>,
}

struct Inner {
    state: Mutex<State>,
    on_change: Option<OnSpend>,
}

/// The spend of every route and the in-flight reservations of every
/// session. Cheap to clone; clones share the ledger.
#[derive(Clone)]
pub struct BudgetLedger {
    inner: Arc<Inner>,
}

impl fmt::Debug for BudgetLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        let mut d = f.debug_map();
        for (route, s) in &state.routes {
            d.entry(route, &(to_usd(s.spent), to_usd(s.reserved)));
        }
        d.finish()
    }
}

impl Default for BudgetLedger {
    fn default() -> Self {
        Self::new(HashMap::new(), None)
    }
}

/// What one reservation asks for.
#[derive(Debug, Clone, Copy)]
pub struct ReserveRequest<'a> {
    pub route: &'a str,
    /// The route's limit, when it has one.
    pub route_limit_usd: Option<f64>,
    pub session: Option<&'a SessionBudget>,
    /// Spent by the session within the current call and not yet in
    /// `session.spent_usd` (earlier cascade steps, evaluator calls).
    pub session_extra_usd: f64,
    pub amount_usd: f64,
}

impl BudgetLedger {
    /// A ledger starting from the routes' persisted spend.
    pub fn new(initial_route_spend: HashMap<String, f64>, on_change: Option<OnSpend>) -> Self {
        let routes = initial_route_spend
            .into_iter()
            .map(|(route, usd)| {
                (
                    route,
                    RouteSpend {
                        spent: to_pico(usd.max(0.0)),
                        reserved: 0,
                    },
                )
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    routes,
                    sessions: HashMap::new(),
                    elsewhere: HashMap::new(),
                }),
                on_change,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What `route` has spent so far.
    pub fn route_spent_usd(&self, route: &str) -> f64 {
        to_usd(self.lock().routes.get(route).map_or(0, |s| s.spent))
    }

    /// What in-flight attempts on `route` have reserved.
    pub fn route_reserved_usd(&self, route: &str) -> f64 {
        to_usd(self.lock().routes.get(route).map_or(0, |s| s.reserved))
    }

    /// Where several nodes serve at once: the other nodes spent `usd` on
    /// `route` beyond what this ledger started from. Counted against the
    /// route's limit, never recorded as this node's spend.
    pub fn set_spent_elsewhere(&self, route: &str, usd: f64) {
        let mut state = self.lock();
        let pico = to_pico(usd.max(0.0));
        if pico == 0 {
            state.elsewhere.remove(route);
        } else {
            state.elsewhere.insert(route.to_string(), pico);
        }
    }

    /// What the other nodes spent on `route` beyond this ledger's start.
    pub fn route_spent_elsewhere_usd(&self, route: &str) -> f64 {
        to_usd(self.lock().elsewhere.get(route).copied().unwrap_or(0))
    }

    /// Check without reserving.
    pub fn check(&self, req: &ReserveRequest<'_>) -> Result<(), BudgetRejection> {
        let state = self.lock();
        Self::fits(&state, req)
    }

    fn fits(state: &State, req: &ReserveRequest<'_>) -> Result<(), BudgetRejection> {
        let amount = to_pico(req.amount_usd.max(0.0));
        if let Some(limit) = req.route_limit_usd {
            let s = state.routes.get(req.route);
            let (spent, reserved) = s.map_or((0, 0), |s| (s.spent, s.reserved));
            let spent = spent + state.elsewhere.get(req.route).copied().unwrap_or(0);
            if spent + reserved + amount > to_pico(limit) {
                return Err(BudgetRejection {
                    scope: BudgetScope::Route,
                    name: req.route.to_string(),
                    spent_usd: to_usd(spent),
                    reserved_usd: to_usd(reserved),
                    amount_usd: to_usd(amount),
                    limit_usd: limit,
                });
            }
        }
        if let Some(sb) = req.session {
            let spent = to_pico(sb.spent_usd.max(0.0)) + to_pico(req.session_extra_usd.max(0.0));
            let reserved = state.sessions.get(&sb.scope).copied().unwrap_or(0);
            if spent + reserved + amount > to_pico(sb.limit_usd) {
                return Err(BudgetRejection {
                    scope: BudgetScope::Session,
                    name: sb.scope.clone(),
                    spent_usd: to_usd(spent),
                    reserved_usd: to_usd(reserved),
                    amount_usd: to_usd(amount),
                    limit_usd: sb.limit_usd,
                });
            }
        }
        Ok(())
    }

    /// Reserve `amount_usd` in the route and the session scope, atomically,
    /// or refuse when either would overshoot its limit.
    pub fn reserve(&self, req: &ReserveRequest<'_>) -> Result<Reservation, BudgetRejection> {
        let amount = to_pico(req.amount_usd.max(0.0));
        let mut state = self.lock();
        Self::fits(&state, req)?;
        state
            .routes
            .entry(req.route.to_string())
            .or_default()
            .reserved += amount;
        if let Some(sb) = req.session {
            *state.sessions.entry(sb.scope.clone()).or_default() += amount;
        }
        Ok(Reservation {
            ledger: self.clone(),
            route: req.route.to_string(),
            session: req.session.map(|s| s.scope.clone()),
            amount,
            done: false,
        })
    }

    fn release(&self, route: &str, session: Option<&str>, amount: Pico, actual: Option<Pico>) {
        let total = {
            let mut state = self.lock();
            let total = if let Some(s) = state.routes.get_mut(route) {
                s.reserved = (s.reserved - amount).max(0);
                if let Some(a) = actual {
                    s.spent += a;
                }
                s.spent
            } else {
                0
            };
            if let Some(session) = session
                && let Some(r) = state.sessions.get_mut(session)
            {
                *r = (*r - amount).max(0);
                if *r == 0 {
                    state.sessions.remove(session);
                }
            }
            total
        };
        if let (Some(a), Some(cb)) = (actual, &self.inner.on_change)
            && a > 0
        {
            cb(route, to_usd(total));
        }
    }
}

/// Reserved spend of one attempt; released when dropped unless settled.
#[derive(Debug)]
pub struct Reservation {
    ledger: BudgetLedger,
    route: String,
    session: Option<String>,
    amount: Pico,
    done: bool,
}

impl Reservation {
    /// The amount reserved.
    pub fn amount_usd(&self) -> f64 {
        to_usd(self.amount)
    }

    /// Replace the reservation by the actual cost.
    pub fn settle(mut self, actual_usd: f64) {
        self.done = true;
        self.ledger.release(
            &self.route,
            self.session.as_deref(),
            self.amount,
            Some(to_pico(actual_usd.max(0.0))),
        );
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            self.ledger
                .release(&self.route, self.session.as_deref(), self.amount, None);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn req<'a>(route: &'a str, limit: Option<f64>, amount: f64) -> ReserveRequest<'a> {
        ReserveRequest {
            route,
            route_limit_usd: limit,
            session: None,
            session_extra_usd: 0.0,
            amount_usd: amount,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reservations_never_overshoot_and_exactly_the_affordable_succeed() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let last = Arc::new(Mutex::new(0.0f64));
        let last2 = last.clone();
        let ledger = BudgetLedger::new(
            HashMap::new(),
            Some(Arc::new(move |route: &str, total: f64| {
                assert_eq!(route, "r");
                seen.fetch_add(1, Ordering::SeqCst);
                let mut l = last2.lock().unwrap();
                *l = l.max(total);
            })),
        );
        // 0.1 is not exact in binary; 37 of them must still fit into 3.7.
        let amount = 0.1;
        let limit = 3.7;
        let barrier = Arc::new(tokio::sync::Barrier::new(200));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let ledger = ledger.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                match ledger.reserve(&req("r", Some(limit), amount)) {
                    Ok(r) => {
                        // Hold some reservations across a yield so that
                        // settled and reserved amounts interleave.
                        if i % 2 == 0 {
                            tokio::task::yield_now().await;
                        }
                        let spent = ledger.route_spent_usd("r");
                        assert!(spent <= limit + 1e-9, "{spent}");
                        r.settle(amount);
                        true
                    }
                    Err(rej) => {
                        assert!(rej.to_string().starts_with("budget of route r exhausted"));
                        false
                    }
                }
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap() {
                ok += 1;
            }
        }
        assert_eq!(ok, 37);
        assert!((ledger.route_spent_usd("r") - 3.7).abs() < 1e-9);
        assert_eq!(ledger.route_reserved_usd("r"), 0.0);
        assert_eq!(calls.load(Ordering::SeqCst), 37);
        assert!((*last.lock().unwrap() - 3.7).abs() < 1e-9);
    }

    #[test]
    fn failed_attempts_are_not_billed_and_reservations_count_until_released() {
        let ledger = BudgetLedger::new(HashMap::from([("r".to_string(), 0.5)]), None);
        assert_eq!(ledger.route_spent_usd("r"), 0.5);
        let a = ledger.reserve(&req("r", Some(1.0), 0.3)).unwrap();
        let rej = ledger.reserve(&req("r", Some(1.0), 0.3)).unwrap_err();
        assert_eq!(rej.scope, BudgetScope::Route);
        assert_eq!(
            rej.to_string(),
            "budget of route r exhausted: spent $0.500000 + reserved $0.300000 + this call's estimate $0.300000 > limit $1.000000"
        );
        drop(a); // failed attempt: released, not billed
        assert_eq!(ledger.route_spent_usd("r"), 0.5);
        let b = ledger.reserve(&req("r", Some(1.0), 0.3)).unwrap();
        b.settle(0.1); // cheaper than estimated
        assert!((ledger.route_spent_usd("r") - 0.6).abs() < 1e-12);
        // Routes without a limit are tracked but never refused.
        ledger.reserve(&req("r", None, 1e6)).unwrap().settle(2.0);
        assert!((ledger.route_spent_usd("r") - 2.6).abs() < 1e-12);
    }

    #[test]
    fn a_session_limit_counts_its_spend_and_in_flight_reservations() {
        let ledger = BudgetLedger::default();
        let sb = SessionBudget {
            scope: "s1".into(),
            limit_usd: 1.0,
            spent_usd: 0.4,
        };
        let r = |extra: f64, amount: f64| ReserveRequest {
            route: "r",
            route_limit_usd: None,
            session: Some(&sb),
            session_extra_usd: extra,
            amount_usd: amount,
        };
        let held = ledger.reserve(&r(0.0, 0.5)).unwrap();
        let rej = ledger.reserve(&r(0.0, 0.2)).unwrap_err();
        assert_eq!(rej.scope, BudgetScope::Session);
        assert!(
            rej.to_string()
                .starts_with("budget of session s1 exhausted"),
            "{rej}"
        );
        drop(held);
        ledger.check(&r(0.0, 0.6)).unwrap();
        assert!(ledger.check(&r(0.1, 0.6)).is_err());
        assert!(
            ledger.lock().sessions.is_empty(),
            "entries go with their reservations"
        );
    }

    #[test]
    fn other_nodes_spend_counts_against_the_limit_but_is_not_reported_as_ours() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let cb: OnSpend = Arc::new(move |route: &str, total: f64| {
            s.lock().unwrap().push((route.to_string(), total));
        });
        let ledger = BudgetLedger::new(HashMap::from([("r".to_string(), 1.0)]), Some(cb));
        let req = |amount_usd| ReserveRequest {
            route: "r",
            route_limit_usd: Some(5.0),
            session: None,
            session_extra_usd: 0.0,
            amount_usd,
        };
        assert!(ledger.check(&req(3.5)).is_ok());
        ledger.set_spent_elsewhere("r", 1.0);
        let refused = ledger.check(&req(3.5)).unwrap_err();
        assert_eq!(refused.spent_usd, 2.0, "ours and the others'");
        assert_eq!(ledger.route_spent_elsewhere_usd("r"), 1.0);
        ledger.reserve(&req(1.0)).unwrap().settle(1.0);
        assert_eq!(
            seen.lock().unwrap().last().cloned(),
            Some(("r".to_string(), 2.0)),
            "what this node writes leaves the others' out"
        );
        ledger.set_spent_elsewhere("r", 0.0);
        assert!(ledger.check(&req(3.0)).is_ok());
    }
}
