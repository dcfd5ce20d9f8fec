//! The waits between attempts: a wait that a cancellation cuts short.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

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
