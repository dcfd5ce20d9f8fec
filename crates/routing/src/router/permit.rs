//! [`Permit`]: an attempt's admission by its endpoint's circuit breaker.

use std::sync::Arc;

use tokio::time::Instant;

use super::state::{Health, lock};
use crate::breaker::Admission;

/// A breaker admission; neutral when dropped without an outcome.
pub(super) struct Permit {
    pub(super) health: Arc<Health>,
    adm: Admission,
    done: bool,
}

impl Permit {
    /// Ask `health`'s breaker to admit an attempt now; `None` while it is
    /// open (or its half-open probes are taken).
    pub(super) fn acquire(health: &Arc<Health>) -> Option<Permit> {
        let adm = lock(&health.breaker).try_acquire(Instant::now())?;
        Some(Permit {
            health: health.clone(),
            adm,
            done: false,
        })
    }

    pub(super) fn success(mut self) {
        self.done = true;
        lock(&self.health.breaker).on_success(self.adm, Instant::now());
    }

    pub(super) fn failure(mut self) {
        self.done = true;
        lock(&self.health.breaker).on_failure(self.adm, Instant::now());
    }

    pub(super) fn neutral(mut self) {
        self.done = true;
        lock(&self.health.breaker).on_neutral(self.adm);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.health.breaker).on_neutral(self.adm);
        }
    }
}
