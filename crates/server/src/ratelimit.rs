//! Request rate limits per tenant and per principal (token buckets), checked
//! by the access layer after authentication, so every gRPC method and HTTP
//! route counts. A refused call gets RESOURCE_EXHAUSTED / HTTP 429 with a
//! `retry-after` (seconds) saying when a request would be admitted.
//!
//! Buckets live in memory: a restart refills them (a window of a second
//! or so is not worth a disk write per call).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use baton_runtime::RuntimeHandle;
use baton_types::Principal;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets by tenant and by principal.
#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets idle this long are full again and are dropped (bounded memory).
const IDLE: Duration = Duration::from_secs(600);

impl Limiter {
    /// Take one request from `key`'s bucket (`rate` per second, at most
    /// `burst` saved up); when empty, how long until one is available.
    fn take(&self, key: &str, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.at) < IDLE);
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// Admit one request of `who` under its tenant's limits, or say why
    /// not and when to retry.
    pub fn admit(
        &self,
        runtime: &RuntimeHandle,
        who: &Principal,
    ) -> Result<(), (String, Duration)> {
        let config = runtime.config();
        let Some(t) = config.tenants.iter().find(|t| t.name == who.tenant) else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some(rate) = t.key_requests_per_second.filter(|r| *r > 0.0) {
            let burst = f64::from(t.key_burst.unwrap_or(1).max(1)).max(1.0);
            self.take(&format!("p\0{}", who.label()), rate, burst, now)
                .map_err(|wait| {
                    (
                        format!(
                            "{} is over its rate limit of {rate} requests/s (tenants {:?}: key_requests_per_second)",
                            who.label(),
                            t.name
                        ),
                        wait,
                    )
                })?;
        }
        if let Some(rate) = t.requests_per_second.filter(|r| *r > 0.0) {
            let burst = f64::from(t.burst.unwrap_or(1).max(1));
            self.take(&format!("t\0{}", t.name), rate, burst, now)
                .map_err(|wait| {
                    (
                        format!(
                            "tenant {:?} is over its rate limit of {rate} requests/s (requests_per_second)",
                            t.name
                        ),
                        wait,
                    )
                })?;
        }
        Ok(())
    }
}

/// Whole seconds to wait, at least 1 (the `retry-after` header's unit).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_burst_then_one_per_interval() {
        let l = Limiter::default();
        let t0 = Instant::now();
        assert!(l.take("k", 2.0, 3.0, t0).is_ok());
        assert!(l.take("k", 2.0, 3.0, t0).is_ok());
        assert!(l.take("k", 2.0, 3.0, t0).is_ok());
        let wait = l.take("k", 2.0, 3.0, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(
            l.take("k", 2.0, 3.0, t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(l.take("other", 2.0, 3.0, t0).is_ok());
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
    }
}
