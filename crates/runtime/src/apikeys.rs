//! API key records: stored durably (the `indexes` column family, one
//! synced write each, so they survive a SIGKILL), held in memory for the
//! hot path, so that authenticating a call is a map lookup and a revocation
//! takes effect on the very next call.
//!
//! Only the SHA-256 of a key and its short visible id are ever stored; the
//! key itself is shown once, by whoever generated it (`baton keys create`).

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use baton_store::{Batch, Store};
use baton_types::{AccessRole, now_unix_ms};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::handle::RuntimeHandle;

/// A stored API key: who it is, never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// The visible id (`bk_3fa9c1d2`), the key's first characters.
    pub id: String,
    /// SHA-256 of the whole key, hex.
    pub hash: String,
    /// What it is for, free text (`billing service`, `alice`).
    #[serde(default)]
    pub name: String,
    pub tenant: String,
    pub roles: Vec<AccessRole>,
    /// The reviewer groups it decides gates for.
    #[serde(default)]
    pub groups: Vec<String>,
    pub created_at_unix_ms: u64,
    /// After this it is refused (0: never).
    #[serde(default)]
    pub expires_at_unix_ms: u64,
    /// When it was revoked (0: it is not).
    #[serde(default)]
    pub revoked_at_unix_ms: u64,
    /// The principal that created it.
    #[serde(default)]
    pub created_by: String,
    /// Set on a key made by rotating another: that key's id.
    #[serde(default)]
    pub rotated_from: String,
}

impl ApiKeyRecord {
    /// Whether it may be used at `now_unix_ms` (not revoked, not expired).
    pub fn usable_at(&self, now_unix_ms: u64) -> std::result::Result<(), String> {
        if self.revoked_at_unix_ms != 0 {
            return Err(format!("API key {} was revoked", self.id));
        }
        if self.expires_at_unix_ms != 0 && now_unix_ms >= self.expires_at_unix_ms {
            return Err(format!("API key {} has expired", self.id));
        }
        Ok(())
    }
}

/// The keys, in memory, in step with the store.
#[derive(Debug, Default)]
pub(crate) struct KeyRing {
    keys: RwLock<HashMap<String, ApiKeyRecord>>,
}

impl KeyRing {
    /// Every stored key.
    pub(crate) async fn load(store: &Store) -> Result<KeyRing> {
        let mut keys = HashMap::new();
        for (id, bytes) in store.api_keys().await? {
            let record: ApiKeyRecord = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Internal(format!("stored API key {id} cannot be read: {e}")))?;
            keys.insert(id, record);
        }
        Ok(KeyRing {
            keys: RwLock::new(keys),
        })
    }

    /// Read every stored key again: where several nodes serve at once
    /// (`cluster.ownership = "sessions"`), a key created, rotated or
    /// revoked through another node is known here from the next refresh.
    /// Records are never deleted (a revocation is a record), so one known
    /// here and not yet read back stays; and a revocation made here while
    /// the keys were being read is not undone by the older record read.
    pub(crate) async fn refresh(&self, store: &Store) -> Result<()> {
        let fresh = KeyRing::load(store).await?;
        let read = fresh
            .keys
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        for (id, record) in read {
            let undoes_revocation = keys.get(&id).is_some_and(|known| {
                known.revoked_at_unix_ms != 0 && record.revoked_at_unix_ms == 0
            });
            if !undoes_revocation {
                keys.insert(id, record);
            }
        }
        Ok(())
    }

    pub(crate) fn get(&self, id: &str) -> Option<ApiKeyRecord> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn all(&self) -> Vec<ApiKeyRecord> {
        let mut v: Vec<_> = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            a.created_at_unix_ms
                .cmp(&b.created_at_unix_ms)
                .then(a.id.cmp(&b.id))
        });
        v
    }

    fn put(&self, r: ApiKeyRecord) {
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(r.id.clone(), r);
    }
}

impl RuntimeHandle {
    /// The key record with this id, from memory (the authentication hot path).
    pub fn api_key(&self, id: &str) -> Option<ApiKeyRecord> {
        self.shared().keys.get(id)
    }

    /// Every key record (revoked and expired ones too), oldest first.
    pub fn api_keys(&self) -> Vec<ApiKeyRecord> {
        self.shared().keys.all()
    }

    /// Store a new key record; durable on return. Refused when the id is
    /// taken or a field is invalid.
    pub async fn add_api_key(&self, record: ApiKeyRecord, by: &str) -> Result<ApiKeyRecord> {
        if record.id.is_empty() || record.hash.len() != 64 {
            return Err(Error::InvalidArgument(
                "an API key record needs an id and a SHA-256 hash (64 hex digits)".into(),
            ));
        }
        if record.tenant.is_empty() {
            return Err(Error::InvalidArgument("tenant is required".into()));
        }
        if record.roles.is_empty() {
            return Err(Error::InvalidArgument(
                "roles: at least one of client, reviewer, operator, admin".into(),
            ));
        }
        if self.api_key(&record.id).is_some() {
            return Err(Error::AlreadyExists(format!(
                "API key {} already exists",
                record.id
            )));
        }
        self.write_key(&record).await?;
        self.audit_admin(
            "create_api_key",
            None,
            serde_json::json!({
                "key_id": record.id, "tenant": record.tenant, "roles": record.roles,
                "groups": record.groups, "expires_at_unix_ms": record.expires_at_unix_ms,
                "rotated_from": record.rotated_from,
            }),
            by,
        );
        Ok(record)
    }

    /// Revoke a key: refused from the next call on. Revoking a revoked key
    /// is a no-op that returns its record.
    pub async fn revoke_api_key(&self, id: &str, by: &str) -> Result<ApiKeyRecord> {
        let mut record = self
            .api_key(id)
            .ok_or_else(|| Error::NotFoundDetail(format!("API key {id} not found")))?;
        if record.revoked_at_unix_ms != 0 {
            return Ok(record);
        }
        record.revoked_at_unix_ms = now_unix_ms();
        self.write_key(&record).await?;
        self.audit_admin(
            "revoke_api_key",
            None,
            serde_json::json!({ "key_id": id, "tenant": record.tenant }),
            by,
        );
        Ok(record)
    }

    async fn write_key(&self, record: &ApiKeyRecord) -> Result<()> {
        let bytes = serde_json::to_vec(record)
            .map_err(|e| Error::Internal(format!("cannot encode API key record: {e}")))?;
        let mut batch = Batch::new();
        batch.put_api_key(&record.id, bytes);
        self.shared().store.write(batch).await?;
        // Memory after the store: a key is never usable before it is durable.
        self.shared().keys.put(record.clone());
        Ok(())
    }
}
