//! Per-endpoint circuit breakers, shared by every call on a router.
//!
//! Closed → open after `consecutive_failures` failures in a row, or when at
//! least `min_calls` of the last `window` outcomes are known and more than
//! `error_rate` of them were failures. Open for `open_ms`, then half-open:
//! `half_open_probes` calls are let through (others see the breaker as open);
//! when they all succeed it closes, when one fails it opens again. Only
//! transient failures and auth errors count as failures; a probe that ends
//! any other way (a client error, a cancel) frees its slot.

use std::collections::VecDeque;
use std::time::Duration;

use baton_metrics::{BreakerGauge, metrics};
use baton_models::BreakerConfig;
use serde::Serialize;
use tokio::time::Instant;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn gauge(self) -> BreakerGauge {
        match self {
            BreakerState::Closed => BreakerGauge::Closed,
            BreakerState::Open => BreakerGauge::Open,
            BreakerState::HalfOpen => BreakerGauge::HalfOpen,
        }
    }
}

/// A breaker as [`crate::Router::breakers`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerSnapshot {
    pub endpoint: String,
    pub state: BreakerState,
    pub consecutive_failures: u32,
    /// Failures among the outcomes in the window, in `[0, 1]`; 0 when empty.
    pub error_rate: f64,
    /// When it last opened, while it is open or half-open.
    pub opened_at_unix_ms: Option<u64>,
}

/// How a call was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The breaker was closed.
    Normal,
    /// A half-open probe.
    Probe,
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, successes: u32 },
}

#[derive(Debug)]
pub(crate) struct Breaker {
    endpoint: String,
    cfg: BreakerConfig,
    state: State,
    consecutive: u32,
    /// The last `window` outcomes of calls let through while closed; true = failure.
    outcomes: VecDeque<bool>,
    opened_at_unix_ms: Option<u64>,
}

impl Breaker {
    pub fn new(endpoint: impl Into<String>, cfg: BreakerConfig) -> Self {
        let b = Self {
            endpoint: endpoint.into(),
            cfg,
            state: State::Closed,
            consecutive: 0,
            outcomes: VecDeque::new(),
            opened_at_unix_ms: None,
        };
        metrics().breaker(&b.endpoint, BreakerGauge::Closed, false);
        b
    }

    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.refresh(now);
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn transition(&mut self, to: State) {
        self.state = to;
        let s = match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        tracing::info!(endpoint = %self.endpoint, state = s.as_str(), "circuit breaker changed state");
        metrics().breaker(&self.endpoint, s.gauge(), true);
    }

    /// Open → half-open once `open_ms` has passed.
    fn refresh(&mut self, now: Instant) {
        if let State::Open { until } = self.state
            && now >= until
        {
            self.transition(State::HalfOpen {
                admitted: 0,
                successes: 0,
            });
        }
    }

    /// Would a call be let through now? Changes nothing but the lazy
    /// open → half-open step.
    pub fn would_admit(&mut self, now: Instant) -> bool {
        self.refresh(now);
        match self.state {
            State::Closed => true,
            State::Open { .. } => false,
            State::HalfOpen { admitted, .. } => admitted < self.cfg.half_open_probes,
        }
    }

    /// Let a call through, if the state allows.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Admission> {
        self.refresh(now);
        match &mut self.state {
            State::Closed => Some(Admission::Normal),
            State::Open { .. } => None,
            State::HalfOpen { admitted, .. } => {
                if *admitted < self.cfg.half_open_probes {
                    *admitted += 1;
                    Some(Admission::Probe)
                } else {
                    None
                }
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.opened_at_unix_ms = Some(baton_types::now_unix_ms());
        self.consecutive = 0;
        self.outcomes.clear();
        self.transition(State::Open {
            until: now + Duration::from_millis(self.cfg.open_ms),
        });
    }

    fn record(&mut self, failed: bool) {
        let window = self.cfg.window.max(1) as usize;
        self.outcomes.push_back(failed);
        while self.outcomes.len() > window {
            self.outcomes.pop_front();
        }
    }

    fn error_rate(&self) -> f64 {
        if self.outcomes.is_empty() {
            return 0.0;
        }
        let failed = self.outcomes.iter().filter(|f| **f).count();
        failed as f64 / self.outcomes.len() as f64
    }

    pub fn on_success(&mut self, adm: Admission, now: Instant) {
        self.refresh(now);
        match (&mut self.state, adm) {
            (State::Closed, Admission::Normal) => {
                self.consecutive = 0;
                self.record(false);
            }
            (State::HalfOpen { successes, .. }, Admission::Probe) => {
                *successes += 1;
                if *successes >= self.cfg.half_open_probes {
                    self.consecutive = 0;
                    self.outcomes.clear();
                    self.opened_at_unix_ms = None;
                    self.transition(State::Closed);
                }
            }
            // A late result from before the last transition says nothing
            // about the endpoint's state now.
            _ => {}
        }
    }

    pub fn on_failure(&mut self, adm: Admission, now: Instant) {
        self.refresh(now);
        match (&self.state, adm) {
            (State::Closed, Admission::Normal) => {
                self.consecutive = self.consecutive.saturating_add(1);
                self.record(true);
                let by_count = self.consecutive >= self.cfg.consecutive_failures;
                let by_rate = self.outcomes.len() >= self.cfg.min_calls as usize
                    && self.error_rate() > self.cfg.error_rate;
                if by_count || by_rate {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        consecutive = self.consecutive,
                        error_rate = self.error_rate(),
                        "opening circuit breaker"
                    );
                    self.open(now);
                }
            }
            (State::HalfOpen { .. }, Admission::Probe) => {
                tracing::warn!(endpoint = %self.endpoint, "half-open probe failed, reopening circuit breaker");
                self.open(now);
            }
            _ => {}
        }
    }

    /// The call ended in a way that says nothing about the endpoint's
    /// health: free a probe slot.
    pub fn on_neutral(&mut self, adm: Admission) {
        if let (State::HalfOpen { admitted, .. }, Admission::Probe) = (&mut self.state, adm) {
            *admitted = admitted.saturating_sub(1);
        }
    }

    pub fn snapshot(&mut self, now: Instant) -> BreakerSnapshot {
        let state = self.state(now);
        BreakerSnapshot {
            endpoint: self.endpoint.clone(),
            state,
            consecutive_failures: self.consecutive,
            error_rate: self.error_rate(),
            opened_at_unix_ms: if state == BreakerState::Closed {
                None
            } else {
                self.opened_at_unix_ms
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn cfg(consecutive: u32, rate: f64, window: u32, min_calls: u32, probes: u32) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: consecutive,
            error_rate: rate,
            window,
            min_calls,
            open_ms: 1_000,
            half_open_probes: probes,
        }
    }

    fn fail(b: &mut Breaker) {
        let adm = b.try_acquire(Instant::now()).expect("admitted");
        b.on_failure(adm, Instant::now());
    }

    fn succeed(b: &mut Breaker) {
        let adm = b.try_acquire(Instant::now()).expect("admitted");
        b.on_success(adm, Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let mut b = Breaker::new("bt-consecutive", cfg(3, 1.0, 100, 1000, 1));
        fail(&mut b);
        fail(&mut b);
        succeed(&mut b);
        fail(&mut b);
        fail(&mut b);
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        assert_eq!(b.snapshot(Instant::now()).consecutive_failures, 2);
        fail(&mut b);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        assert!(b.try_acquire(Instant::now()).is_none());
        assert!(!b.would_admit(Instant::now()));
        let snap = b.snapshot(Instant::now());
        assert!(snap.opened_at_unix_ms.is_some());
        // Still open just before open_ms.
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_rate_only_after_min_calls() {
        // 50% allowed; never 3 failures in a row.
        let mut b = Breaker::new("bt-rate", cfg(3, 0.5, 10, 6, 1));
        for _ in 0..2 {
            fail(&mut b);
            fail(&mut b);
            succeed(&mut b);
        }
        // 6 outcomes, 4 failed = 0.67 > 0.5 — but the check runs on failures;
        // the last outcome was a success.
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        assert!((b.snapshot(Instant::now()).error_rate - 4.0 / 6.0).abs() < 1e-9);
        fail(&mut b);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);

        // Below min_calls the rate does not matter.
        let mut b = Breaker::new("bt-rate-min", cfg(3, 0.5, 10, 6, 1));
        fail(&mut b);
        succeed(&mut b);
        fail(&mut b);
        fail(&mut b);
        succeed(&mut b);
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);

        // The window slides: old failures fall out.
        let mut b = Breaker::new("bt-window", cfg(100, 0.5, 4, 4, 1));
        fail(&mut b);
        fail(&mut b);
        succeed(&mut b);
        succeed(&mut b);
        succeed(&mut b); // window: F S S S
        fail(&mut b); // window: S S S F = 0.25
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_only_the_probes_through_and_closes_when_they_succeed() {
        let mut b = Breaker::new("bt-probes", cfg(1, 1.0, 10, 100, 2));
        fail(&mut b);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        let now = Instant::now();
        let p1 = b.try_acquire(now).unwrap();
        let p2 = b.try_acquire(now).unwrap();
        assert_eq!((p1, p2), (Admission::Probe, Admission::Probe));
        assert!(b.try_acquire(now).is_none(), "a third call is not a probe");
        assert!(!b.would_admit(now));
        // A probe that ends neutrally frees its slot.
        b.on_neutral(p1);
        let p3 = b.try_acquire(now).unwrap();
        b.on_success(p2, now);
        assert_eq!(b.state(now), BreakerState::HalfOpen);
        b.on_success(p3, now);
        assert_eq!(b.state(now), BreakerState::Closed);
        let snap = b.snapshot(now);
        assert_eq!(snap.opened_at_unix_ms, None);
        assert_eq!(snap.consecutive_failures, 0);
        succeed(&mut b);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_another_open_period() {
        let mut b = Breaker::new("bt-reopen", cfg(2, 1.0, 10, 100, 1));
        fail(&mut b);
        fail(&mut b);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let probe = b.try_acquire(Instant::now()).unwrap();
        b.on_failure(probe, Instant::now());
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(b.try_acquire(Instant::now()).is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = b.try_acquire(Instant::now()).unwrap();
        b.on_success(probe, Instant::now());
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn late_results_from_before_a_transition_are_ignored() {
        let mut b = Breaker::new("bt-late", cfg(1, 1.0, 10, 100, 1));
        let old = b.try_acquire(Instant::now()).unwrap();
        fail(&mut b);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        // A call admitted while closed finishes successfully: still open.
        b.on_success(old, Instant::now());
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
    }
}
