//! The [`Router`] and the state its clones share: the compiled routes, the
//! model registry, the budget ledger and each endpoint's [`Health`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use baton_models::ModelRegistry;

use crate::breaker::Breaker;
use crate::budget::BudgetLedger;
use crate::config::Route;

/// Breaker and latency of one endpoint, shared by every call.
#[derive(Debug)]
pub(super) struct Health {
    pub(super) breaker: Mutex<Breaker>,
    pub(super) ewma_ms: Mutex<Option<f64>>,
}

impl Health {
    pub(super) fn new(breaker: Breaker) -> Self {
        Self {
            breaker: Mutex::new(breaker),
            ewma_ms: Mutex::new(None),
        }
    }

    /// Fold a successful attempt's latency into the EWMA.
    pub(super) fn record_latency(&self, ms: f64, alpha: f64) {
        let mut ewma = lock(&self.ewma_ms);
        *ewma = Some(match *ewma {
            Some(prev) => alpha * ms + (1.0 - alpha) * prev,
            None => ms,
        });
    }
}

/// A poisoned lock still holds consistent data here (every critical section
/// is a few assignments), so poisoning is ignored.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) struct Inner {
    pub(super) routes: HashMap<String, Arc<Route>>,
    /// Explicit routes in config order, then implicit ones by name.
    pub(super) order: Vec<Arc<Route>>,
    pub(super) models: ModelRegistry,
    pub(super) budgets: BudgetLedger,
    pub(super) health: HashMap<String, Arc<Health>>,
    /// Told of every settled attempt (quality monitoring), once set.
    pub(super) observer: std::sync::OnceLock<super::types::AttemptObserver>,
}

/// Routes model calls over endpoints. Cheap to clone; clones share
/// breakers, latency statistics and budgets.
#[derive(Clone)]
pub struct Router {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field(
                "routes",
                &self
                    .inner
                    .order
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>(),
            )
            .field("budgets", &self.inner.budgets)
            .finish_non_exhaustive()
    }
}
