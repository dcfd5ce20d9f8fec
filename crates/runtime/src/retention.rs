//! Retention: sessions idle past their time-to-live are deleted by a
//! background job, in bounded batches.
//!
//! A session's TTL is the shortest that applies of `retention.session_ttl_secs`
//! (every session), `retention.routes` (its route) and its tenant's
//! `session_ttl_secs`; with none, it is kept. It expires when it is idle or
//! failed and its last change (`updated_at`) is older than the TTL; a
//! running session, or one waiting on a gate, is never deleted. Deleting
//! goes through the session's actor, as `DeleteSession` does (journal,
//! payloads, snapshot, indexes and gates).

use std::collections::BTreeMap;
use std::time::Duration;

use baton_types::{SessionStatus, now_unix_ms};
use serde::Deserialize;

use crate::handle::RuntimeHandle;

/// `[retention]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Time-to-live of every session, counted from its last change; none:
    /// kept until deleted.
    pub session_ttl_secs: Option<u64>,
    /// Time-to-live of the sessions of a route, by route name.
    pub routes: BTreeMap<String, u64>,
    /// How often the job looks for expired sessions.
    pub scan_interval_ms: u64,
    /// Sessions read (and at most deleted) per step of a scan.
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            session_ttl_secs: None,
            routes: BTreeMap::new(),
            scan_interval_ms: 60_000,
            batch: 256,
        }
    }
}

impl RetentionConfig {
    /// Whether any TTL is configured (here or on a tenant).
    fn any(&self, tenants: &[crate::access::TenantConfig]) -> bool {
        self.session_ttl_secs.is_some()
            || !self.routes.is_empty()
            || tenants.iter().any(|t| t.session_ttl_secs.is_some())
    }

    /// The TTL of a session of `tenant` on `route`, if any applies.
    pub(crate) fn ttl_secs(
        &self,
        tenants: &[crate::access::TenantConfig],
        tenant: &str,
        route: &str,
    ) -> Option<u64> {
        [
            self.session_ttl_secs,
            self.routes.get(route).copied(),
            tenants
                .iter()
                .find(|t| t.name == tenant)
                .and_then(|t| t.session_ttl_secs),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Checks `[retention]`: TTLs positive, routes known, sizes sane.
pub(crate) fn validate(
    r: &RetentionConfig,
    routes: &[String],
) -> std::result::Result<(), crate::ConfigError> {
    if r.session_ttl_secs == Some(0) {
        return Err(crate::ConfigError::new(
            "retention.session_ttl_secs",
            "must be at least 1",
        ));
    }
    for (route, ttl) in &r.routes {
        if !routes.contains(route) {
            return Err(crate::ConfigError::new(
                format!("retention.routes.{route}"),
                format!(
                    "{route:?} is not a route or model endpoint (have: {})",
                    routes.join(", ")
                ),
            ));
        }
        if *ttl == 0 {
            return Err(crate::ConfigError::new(
                format!("retention.routes.{route}"),
                "must be at least 1",
            ));
        }
    }
    if r.scan_interval_ms < 10 {
        return Err(crate::ConfigError::new(
            "retention.scan_interval_ms",
            "must be at least 10",
        ));
    }
    if !(1..=10_000).contains(&r.batch) {
        return Err(crate::ConfigError::new(
            "retention.batch",
            "must be 1 to 10000",
        ));
    }
    Ok(())
}

impl RuntimeHandle {
    /// Start the retention job when any TTL is configured.
    pub(crate) fn spawn_retention(&self) {
        let config = &self.shared().config;
        if !config.retention.any(&config.tenants) {
            return;
        }
        let weak = std::sync::Arc::downgrade(&self.inner);
        let period = Duration::from_millis(config.retention.scan_interval_ms);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { return };
                let handle = RuntimeHandle { inner };
                if handle.inner.stop.is_cancelled()
                    || handle.inner.supervisor.get_status() != ractor::ActorStatus::Running
                {
                    return;
                }
                match handle.expire_sessions().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(sessions = n, "retention: expired sessions deleted"),
                    Err(e) => tracing::warn!(error = %e, "retention scan failed"),
                }
            }
        });
    }

    /// One scan: delete every session past its TTL; how many were deleted.
    pub async fn expire_sessions(&self) -> crate::Result<u64> {
        let shared = self.shared();
        let config = &shared.config;
        let now = now_unix_ms();
        let mut after = None;
        let mut deleted = 0;
        loop {
            let page = shared
                .store
                .list_sessions(None, after, config.retention.batch)
                .await?;
            for (id, meta) in &page.sessions {
                let Some(ttl) =
                    config
                        .retention
                        .ttl_secs(&config.tenants, &meta.tenant, &meta.route)
                else {
                    continue;
                };
                let idle = matches!(meta.status, SessionStatus::Idle | SessionStatus::Failed);
                let expires = meta
                    .updated_at_unix_ms
                    .saturating_add(ttl.saturating_mul(1000));
                if idle && expires <= now {
                    match self.delete_uncompacted(*id, "retention").await {
                        Ok(()) => {
                            deleted += 1;
                            baton_metrics::metrics().session_expired();
                        }
                        // Deleted meanwhile, or it got work: next scan.
                        Err(e) => tracing::debug!(session = %id, error = %e, "not expired"),
                    }
                }
            }
            if deleted > 0 {
                // Deleted sessions' own keys leave the keystore's files.
                self.compact_keys().await?;
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(deleted),
            }
            // Bounded steps: other work runs between them.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_ttl_that_applies_wins_and_bad_values_are_named() {
        let r = RetentionConfig {
            session_ttl_secs: Some(86_400),
            routes: BTreeMap::from([("support".to_string(), 3_600)]),
            ..Default::default()
        };
        let tenants = vec![crate::access::TenantConfig {
            name: "acme".into(),
            session_ttl_secs: Some(600),
            ..Default::default()
        }];
        assert_eq!(r.ttl_secs(&tenants, "globex", "other"), Some(86_400));
        assert_eq!(r.ttl_secs(&tenants, "globex", "support"), Some(3_600));
        assert_eq!(r.ttl_secs(&tenants, "acme", "support"), Some(600));
        assert_eq!(RetentionConfig::default().ttl_secs(&[], "x", "y"), None);
        let routes = vec!["support".to_string()];
        assert!(validate(&r, &routes).is_ok());
        let bad = RetentionConfig {
            routes: BTreeMap::from([("nope".to_string(), 5)]),
            ..Default::default()
        };
        assert!(
            validate(&bad, &routes)
                .unwrap_err()
                .to_string()
                .starts_with("retention.routes.nope: \"nope\" is not a route")
        );
    }
}
