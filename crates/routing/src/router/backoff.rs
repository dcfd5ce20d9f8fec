//! The waits between attempts: exponential backoff with full jitter, or
//! exactly the provider's `Retry-After`, both capped by the endpoint's
//! `retry.max_backoff_ms`; and a wait that a cancellation cuts short.

use std::time::Duration;

use baton_models::RetryConfig;
use tokio_util::sync::CancellationToken;

/// The wait before retrying after failed attempt number `attempt` (1-based).
///
/// With a `Retry-After`, exactly that, capped at `max_backoff_ms`. Otherwise
/// full jitter: uniform in `[0, min(max_backoff, initial_backoff * 2^(attempt-1))]`.
pub(super) fn backoff_delay(
    retry: &RetryConfig,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let max = Duration::from_millis(retry.max_backoff_ms);
    if let Some(ra) = retry_after {
        return ra.min(max);
    }
    let exp = attempt.saturating_sub(1).min(63);
    let ceiling = retry
        .initial_backoff_ms
        .saturating_mul(1u64.checked_shl(exp).unwrap_or(u64::MAX))
        .min(retry.max_backoff_ms);
    Duration::from_millis(fastrand::u64(0..=ceiling))
}

/// Wait `d`; `false` if `cancel` fired first (or had already).
pub(super) async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    if d.is_zero() {
        return !cancel.is_cancelled();
    }
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(max_attempts: u32, initial: u64, max: u64) -> RetryConfig {
        RetryConfig {
            max_attempts,
            initial_backoff_ms: initial,
            max_backoff_ms: max,
        }
    }

    #[test]
    fn full_jitter_stays_within_the_exponential_ceiling() {
        let r = retry(10, 100, 1_000);
        for (attempt, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..500 {
                let d = backoff_delay(&r, attempt, None);
                assert!(
                    d <= Duration::from_millis(ceiling),
                    "attempt {attempt}: {d:?}"
                );
                seen.insert(d);
            }
            // Full jitter spreads the delays; a fixed delay would be a bug.
            assert!(
                seen.len() > 10,
                "attempt {attempt}: only {} values",
                seen.len()
            );
        }
        let huge = retry(u32::MAX, u64::MAX / 2, u64::MAX);
        let _ = backoff_delay(&huge, u32::MAX, None); // no overflow panic
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let r = retry(3, 100, 2_000);
        assert_eq!(
            backoff_delay(&r, 1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            backoff_delay(&r, 1, Some(Duration::from_secs(30))),
            Duration::from_secs(2)
        );
    }
}
