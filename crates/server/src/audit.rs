//! The `[audit]` section and the bridge from the runtime's [`AuditSink`] to
//! the signed, hash-chained log of `baton-audit`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use baton_audit::{AuditConfig, AuditEvent, AuditLog};
use baton_runtime::AuditSink;
use baton_types::SessionId;
use serde::Deserialize;

/// The `[audit]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Keep the audit trail at all.
    pub enabled: bool,
    /// Directory of `audit.log` and `audit.head`; default `<data_dir>/audit`.
    pub dir: Option<PathBuf>,
    /// The ed25519 signing key (hex seed), generated on first start if
    /// missing, its public key beside it in `<key_file>.pub`; default
    /// `<dir>/audit.key`. Keep it readable by Baton only (it is created 0600).
    pub key_file: Option<PathBuf>,
    /// fsync when records are anchored (default; every flush and at most
    /// 200 ms after a write). Off loses the last records on a machine crash
    /// (not on a process crash).
    pub sync: bool,
    /// While the trail cannot be written (disk full, I/O errors):
    /// `continue` (default) keeps serving and appends what it missed once it
    /// can; `block` refuses new sessions and messages meanwhile.
    pub on_failure: baton_runtime::AuditOnFailure,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            key_file: None,
            sync: true,
            on_failure: baton_runtime::AuditOnFailure::Continue,
        }
    }
}

impl AuditSection {
    /// The log's config for a server whose data dir is `data_dir`.
    pub fn resolve(&self, data_dir: &Path) -> AuditConfig {
        let dir = self.dir.clone().unwrap_or_else(|| data_dir.join("audit"));
        let mut cfg = AuditConfig::in_dir(&dir);
        if let Some(k) = &self.key_file {
            cfg.key_file = k.clone();
        }
        cfg.sync = self.sync;
        cfg
    }
}

/// [`AuditSink`] over a signed [`AuditLog`].
#[derive(Debug, Clone)]
pub struct SignedAudit(pub AuditLog);

impl AuditSink for SignedAudit {
    fn record(
        &self,
        kind: &str,
        session: Option<SessionId>,
        actor: Option<&str>,
        data: serde_json::Value,
    ) {
        // A value always serialises; were it not to, the record is still
        // appended, with null data (as `AuditEvent::new` does).
        let raw = serde_json::value::to_raw_value(&data)
            .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned());
        self.record_json(kind, session, actor, raw);
    }

    fn record_json(
        &self,
        kind: &str,
        session: Option<SessionId>,
        actor: Option<&str>,
        data: Box<serde_json::value::RawValue>,
    ) {
        let mut ev = AuditEvent::from_json(kind, data);
        if let Some(s) = session {
            ev = ev.session(s.to_string());
        }
        if let Some(a) = actor {
            ev = ev.actor(a);
        }
        self.0.append(ev);
    }

    fn flush(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.0.flush().await.map_err(|e| e.to_string()) })
    }

    fn queued(&self) -> u64 {
        self.0.queued()
    }
}
