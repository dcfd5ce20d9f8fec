//! The last hour in memory, for the web console's routes page: per
//! endpoint, route and tenant, one-minute buckets of calls, errors, cost
//! and a latency sketch (log-spaced buckets, each 12% wider than the last,
//! so a quantile read from it is at most 12% above the true value), and
//! the cost of the current UTC day.
//!
//! Fed by the same calls that feed the Prometheus registry
//! ([`crate::Metrics::model_attempt`], [`crate::Metrics::route_call`],
//! [`crate::Metrics::usage`], [`crate::Metrics::tenant_usage`]): one short
//! lock per event. A restart starts it empty (the registry does too);
//! history beyond an hour is Prometheus's job.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Minutes of history kept.
pub const MINUTES: usize = 60;
/// Latency buckets: bucket `i` holds latencies up to `BASE_MS * GROWTH^i`.
const SKETCH: usize = 128;
const BASE_MS: f64 = 0.1;
const GROWTH: f64 = 1.12;
const DAY_MS: u64 = 86_400_000;

/// What a series is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Endpoint,
    Route,
    Tenant,
}

#[derive(Debug, Clone, Default)]
struct Minute {
    /// Unix minute this bucket holds (a ring slot is reused after an hour).
    minute: u64,
    calls: u64,
    errors: u64,
    cost_usd: f64,
    /// Empty until a latency is recorded, then `SKETCH` counts.
    latency: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
struct Series {
    ring: Vec<Minute>,
    day: u64,
    cost_today_usd: f64,
}

impl Series {
    fn slot(&mut self, now_ms: u64) -> &mut Minute {
        if self.ring.is_empty() {
            self.ring = vec![Minute::default(); MINUTES];
        }
        let minute = now_ms / 60_000;
        let m = &mut self.ring[(minute % MINUTES as u64) as usize];
        if m.minute != minute {
            *m = Minute {
                minute,
                ..Default::default()
            };
        }
        m
    }
}

fn bucket_of(ms: f64) -> usize {
    if ms.is_nan() || ms <= BASE_MS {
        return 0;
    }
    let i = ((ms / BASE_MS).ln() / GROWTH.ln()).ceil();
    (i as usize).min(SKETCH - 1)
}

fn bucket_upper_ms(i: usize) -> f64 {
    BASE_MS * GROWTH.powi(i as i32)
}

/// The `q` quantile (0..1) of a sketch; none when it is empty.
fn quantile(sketch: &[u64], q: f64) -> Option<f64> {
    let total: u64 = sketch.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in sketch.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_upper_ms(i));
        }
    }
    Some(bucket_upper_ms(SKETCH - 1))
}

/// One minute of a series, as [`Live::snapshot`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct MinuteView {
    /// Start of the minute, Unix milliseconds.
    pub start_unix_ms: u64,
    pub calls: u64,
    pub errors: u64,
    pub cost_usd: f64,
    pub p95_ms: Option<f64>,
}

/// A series over the last hour.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesView {
    pub name: String,
    pub calls: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Spent since 00:00 UTC.
    pub cost_today_usd: f64,
    /// Oldest first, [`MINUTES`] of them, ending with the current minute.
    pub minutes: Vec<MinuteView>,
}

impl SeriesView {
    /// Errors per call over the hour, 0 without calls.
    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }
}

/// The last hour of calls, errors, latency and cost.
#[derive(Debug, Default)]
pub struct Live {
    series: Mutex<HashMap<(Kind, String), Series>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Live {
    fn with(&self, kind: Kind, name: &str, f: impl FnOnce(&mut Series, u64)) {
        let now = now_ms();
        let mut map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&(kind, name.to_string())) {
            Some(s) => f(s, now),
            None => {
                let mut s = Series::default();
                f(&mut s, now);
                map.insert((kind, name.to_string()), s);
            }
        }
    }

    /// A finished call (an attempt, or a routed call) and how long it took.
    pub fn call(&self, kind: Kind, name: &str, ok: bool, seconds: f64) {
        self.call_at(kind, name, ok, seconds, now_ms());
    }

    fn call_at(&self, kind: Kind, name: &str, ok: bool, seconds: f64, at_ms: u64) {
        self.with(kind, name, |s, _| {
            let m = s.slot(at_ms);
            m.calls += 1;
            if !ok {
                m.errors += 1;
            }
            if m.latency.is_empty() {
                m.latency = vec![0; SKETCH];
            }
            m.latency[bucket_of(seconds * 1000.0)] += 1;
        });
    }

    /// Money spent.
    pub fn cost(&self, kind: Kind, name: &str, usd: f64) {
        if usd.is_nan() || usd <= 0.0 {
            return;
        }
        self.with(kind, name, |s, now| {
            let day = now / DAY_MS;
            if s.day != day {
                s.day = day;
                s.cost_today_usd = 0.0;
            }
            s.cost_today_usd += usd;
            s.slot(now).cost_usd += usd;
        });
    }

    /// Every series of `kind`, by name.
    pub fn snapshot(&self, kind: Kind) -> Vec<SeriesView> {
        self.snapshot_at(kind, now_ms())
    }

    fn snapshot_at(&self, kind: Kind, now: u64) -> Vec<SeriesView> {
        let map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let current = now / 60_000;
        let first = current + 1 - MINUTES as u64;
        let mut out: Vec<SeriesView> = map
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, name), s)| {
                let mut all = vec![0u64; SKETCH];
                let mut view = SeriesView {
                    name: name.clone(),
                    calls: 0,
                    errors: 0,
                    p50_ms: None,
                    p95_ms: None,
                    p99_ms: None,
                    cost_today_usd: if s.day == now / DAY_MS {
                        s.cost_today_usd
                    } else {
                        0.0
                    },
                    minutes: Vec::with_capacity(MINUTES),
                };
                for minute in first..=current {
                    let m = s
                        .ring
                        .get((minute % MINUTES as u64) as usize)
                        .filter(|m| m.minute == minute);
                    let mut one = MinuteView {
                        start_unix_ms: minute * 60_000,
                        calls: 0,
                        errors: 0,
                        cost_usd: 0.0,
                        p95_ms: None,
                    };
                    if let Some(m) = m {
                        one.calls = m.calls;
                        one.errors = m.errors;
                        one.cost_usd = m.cost_usd;
                        if !m.latency.is_empty() {
                            let counts: Vec<u64> =
                                m.latency.iter().map(|&n| u64::from(n)).collect();
                            one.p95_ms = quantile(&counts, 0.95);
                            for (a, b) in all.iter_mut().zip(counts) {
                                *a += b;
                            }
                        }
                        view.calls += m.calls;
                        view.errors += m.errors;
                    }
                    view.minutes.push(one);
                }
                view.p50_ms = quantile(&all, 0.50);
                view.p95_ms = quantile(&all, 0.95);
                view.p99_ms = quantile(&all, 0.99);
                view
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_bucket_of_the_truth() {
        let live = Live::default();
        let t = 1_700_000_000_000;
        // 1..=1000 ms, one call each.
        for ms in 1..=1000u64 {
            live.call_at(Kind::Endpoint, "a", ms % 10 != 0, ms as f64 / 1000.0, t);
        }
        let v = &live.snapshot_at(Kind::Endpoint, t)[0];
        assert_eq!((v.calls, v.errors), (1000, 100));
        for (got, want) in [(v.p50_ms, 500.0), (v.p95_ms, 950.0), (v.p99_ms, 990.0)] {
            let got = got.unwrap();
            assert!(got >= want && got <= want * GROWTH, "{got} vs {want}");
        }
        assert!((v.error_rate() - 0.1).abs() < 1e-9);
        assert_eq!(v.minutes.len(), MINUTES);
        assert_eq!(v.minutes.last().unwrap().calls, 1000);
    }

    #[test]
    fn minutes_roll_off_after_an_hour() {
        let live = Live::default();
        let t = 1_700_000_000_000;
        live.call_at(Kind::Route, "r", true, 0.01, t);
        live.call_at(Kind::Route, "r", false, 0.02, t + 30 * 60_000);
        let v = &live.snapshot_at(Kind::Route, t + 30 * 60_000)[0];
        assert_eq!((v.calls, v.errors), (2, 1));
        let v = &live.snapshot_at(Kind::Route, t + 61 * 60_000)[0];
        assert_eq!(
            (v.calls, v.errors),
            (1, 1),
            "the first call is over an hour old"
        );
        // A reused ring slot starts empty.
        live.call_at(Kind::Route, "r", true, 0.01, t + 60 * 60_000);
        let v = &live.snapshot_at(Kind::Route, t + 60 * 60_000)[0];
        assert_eq!(v.minutes.last().unwrap().calls, 1);
        assert!(live.snapshot_at(Kind::Tenant, t).is_empty());
    }
}
