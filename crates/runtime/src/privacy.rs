//! Encryption at rest by data subject, and erasure by crypto-shredding
//! (`[privacy]`).
//!
//! With `encryption = true`, everything stored about a session's data
//! subject — journal records, their payloads, snapshots, gate records and
//! the contents of its audit records — is sealed under that subject's key
//! (see `baton_store::seal`). The subject is the session, or the value of
//! a metadata field (`subject_field`, e.g. a customer id spanning many
//! sessions). Subject keys live in `keys_dir`, wrapped by the master key,
//! outside the data dir, so a backup or a restore never carries them.
//! [`RuntimeHandle::erase_subject`] destroys the keys, then deletes the
//! subject's live sessions: whatever is left anywhere (backups, the audit
//! log, copies) cannot be read again, and the audit chain, which covers
//! the sealed bytes, still verifies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_store::seal::{Keyring, MasterKey, SealKey};
use baton_types::SessionId;
use serde::Deserialize;

use crate::error::{ConfigError, Error, Result};

/// `[privacy]`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Seal what is stored about each data subject under a key of its own.
    pub encryption: bool,
    /// The environment variable holding the master key (64 hex characters).
    pub master_key_env: Option<String>,
    /// A file holding the master key (64 hex characters).
    pub master_key_file: Option<PathBuf>,
    /// During a rotation: the previous master key; subject keys wrapped
    /// under it are wrapped again under the new one at start.
    pub previous_master_key_env: Option<String>,
    pub previous_master_key_file: Option<PathBuf>,
    /// The session metadata field that names the data subject (e.g.
    /// `customer_id`); unset, or absent from a session: the session itself.
    pub subject_field: Option<String>,
    /// Where subject keys are kept; default: next to the data dir
    /// (`<data_dir>.keys`). Never inside a backup.
    pub keys_dir: Option<PathBuf>,
    /// Which keystore: `dir` (a RocksDB of its own in `keys_dir`, the
    /// default) or `database` (the table `baton_keys` of the store's
    /// PostgreSQL database, shared by every node: what a cluster needs).
    pub keystore: Keystore,
}

/// `[privacy] keystore`.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Keystore {
    /// A RocksDB of its own in `keys_dir`, on the node.
    #[default]
    Dir,
    /// The store's PostgreSQL database.
    Database,
}

impl PrivacyConfig {
    /// The keystore's directory.
    pub fn keys_dir(&self, data_dir: &Path) -> PathBuf {
        self.keys_dir.clone().unwrap_or_else(|| {
            let mut name = data_dir
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "baton-data".into());
            name.push(".keys");
            data_dir.with_file_name(name)
        })
    }

    /// The data subject of a session.
    pub fn subject(&self, id: SessionId, metadata: &BTreeMap<String, String>) -> String {
        self.subject_field
            .as_ref()
            .and_then(|f| metadata.get(f))
            .filter(|v| !v.is_empty())
            .map(|v| format!("subject:{v}"))
            .unwrap_or_else(|| format!("session:{id}"))
    }

    /// The subject of a session of `tenant`: a customer id names a subject
    /// within its tenant only (two tenants' `cust-7` are two subjects).
    pub fn tenant_subject(
        &self,
        tenant: &str,
        id: SessionId,
        metadata: &BTreeMap<String, String>,
    ) -> String {
        in_tenant(tenant, self.subject(id, metadata))
    }

    /// The subject a caller names: a metadata value (`cust-7`), or a
    /// session (`session:<id>`).
    pub fn subject_named(&self, name: &str) -> String {
        if name.starts_with("session:") {
            name.to_string()
        } else {
            format!("subject:{name}")
        }
    }
}

/// A subject as its tenant knows it: a customer subject within its tenant
/// (the default tenant's are unprefixed); a session is its own.
fn in_tenant(tenant: &str, subject: String) -> String {
    if subject.starts_with("subject:")
        && !tenant.is_empty()
        && tenant != baton_types::DEFAULT_TENANT
    {
        format!("{tenant}/{subject}")
    } else {
        subject
    }
}

/// Check `[privacy]`; errors name the key.
pub(crate) fn validate(c: &PrivacyConfig, data_dir: &Path) -> Result<(), ConfigError> {
    let sources = |env: &Option<String>, file: &Option<PathBuf>| {
        usize::from(env.is_some()) + usize::from(file.is_some())
    };
    if c.encryption && sources(&c.master_key_env, &c.master_key_file) != 1 {
        return Err(ConfigError::new(
            "privacy.master_key_env",
            "encryption needs the master key from exactly one of master_key_env and master_key_file",
        ));
    }
    if sources(&c.previous_master_key_env, &c.previous_master_key_file) > 1 {
        return Err(ConfigError::new(
            "privacy.previous_master_key_env",
            "set at most one of previous_master_key_env and previous_master_key_file",
        ));
    }
    if c.subject_field
        .as_deref()
        .is_some_and(|f| f.trim().is_empty())
    {
        return Err(ConfigError::new(
            "privacy.subject_field",
            "must not be empty",
        ));
    }
    let keys = c.keys_dir(data_dir);
    if c.keystore == Keystore::Dir && keys.starts_with(data_dir) {
        return Err(ConfigError::new(
            "privacy.keys_dir",
            format!(
                "{} is inside the data dir {}: backups and restores would carry (or wipe) the keys",
                keys.display(),
                data_dir.display()
            ),
        ));
    }
    Ok(())
}

/// A master key from its env variable or file; errors name the field.
fn read_master(
    field: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<MasterKey>> {
    let text = match (env, file) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            Error::from(ConfigError::new(
                format!("privacy.{field}_env"),
                format!("the environment variable {var} is not set"),
            ))
        })?,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            Error::from(ConfigError::new(
                format!("privacy.{field}_file"),
                format!("cannot read {}: {e}", path.display()),
            ))
        })?,
        (None, None) => return Ok(None),
    };
    MasterKey::from_hex(&text).map(Some).map_err(|e| {
        Error::from(ConfigError::new(
            format!(
                "privacy.{field}_{}",
                if env.is_some() { "env" } else { "file" }
            ),
            e.to_string(),
        ))
    })
}

/// The keystore, when encryption is on: master keys read, keys wrapped
/// under a previous master key wrapped again. Offline tools open the store
/// with it to read sealed content.
pub fn open_keyring(c: &PrivacyConfig, data_dir: &Path) -> Result<Option<Arc<Keyring>>> {
    if !c.encryption {
        return Ok(None);
    }
    let master =
        read_master("master_key", &c.master_key_env, &c.master_key_file)?.ok_or_else(|| {
            Error::from(ConfigError::new(
                "privacy.master_key_env",
                "encryption needs a master key",
            ))
        })?;
    let previous = read_master(
        "previous_master_key",
        &c.previous_master_key_env,
        &c.previous_master_key_file,
    )?;
    if c.keystore == Keystore::Database {
        // Bound to the database when the store opens on it.
        return Ok(Some(Arc::new(Keyring::in_database(master, previous))));
    }
    let dir = c.keys_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::from(ConfigError::new(
            "privacy.keys_dir",
            format!("cannot create {}: {e}", dir.display()),
        ))
    })?;
    let ring = Keyring::open(&dir, master, previous).map_err(|e| {
        Error::from(ConfigError::new(
            "privacy.master_key_env",
            format!("the keystore at {} cannot be used: {e}", dir.display()),
        ))
    })?;
    Ok(Some(Arc::new(ring)))
}

/// The key a session's content is sealed with (none without encryption).
pub(crate) fn seal_key(
    store: &baton_store::Store,
    cfg: &PrivacyConfig,
    tenant: &str,
    id: SessionId,
    metadata: &BTreeMap<String, String>,
) -> Result<Option<Arc<SealKey>>> {
    match store.keyring() {
        Some(ring) => Ok(Some(
            ring.for_subject(&cfg.tenant_subject(tenant, id, metadata))?,
        )),
        None => Ok(None),
    }
}

/// The key of an existing session (loading it, failing it, recovering its
/// audit records): [`seal_key`], except that an erased subject gets no new
/// key (what is written for it then carries no content: a failure record).
pub(crate) fn existing_seal_key(
    store: &baton_store::Store,
    cfg: &PrivacyConfig,
    tenant: &str,
    id: SessionId,
    metadata: &BTreeMap<String, String>,
) -> Result<Option<Arc<SealKey>>> {
    match store.keyring() {
        Some(ring) if ring.is_erased(&cfg.tenant_subject(tenant, id, metadata))? => Ok(None),
        _ => seal_key(store, cfg, tenant, id, metadata),
    }
}

/// An audit record's data, sealed under the session's key: only `seq`
/// stays readable. Bound to the session and seq.
pub(crate) fn seal_audit(
    key: &SealKey,
    session: SessionId,
    seq: u64,
    data: &serde_json::value::RawValue,
) -> Box<serde_json::value::RawValue> {
    use base64::Engine;
    let aad = audit_aad(session, seq);
    let sealed = key.seal(&aad, data.get().as_bytes());
    serde_json::value::to_raw_value(&serde_json::json!({
        "seq": seq,
        "sealed": base64::engine::general_purpose::STANDARD.encode(sealed),
    }))
    .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
}

/// What a sealed audit record's data is bound to.
pub fn audit_aad(session: SessionId, seq: u64) -> Vec<u8> {
    [
        b"audit\0".as_slice(),
        session.as_bytes(),
        &seq.to_be_bytes(),
    ]
    .concat()
}

/// One pass of an erasure where sessions may be live on other nodes.
#[derive(Debug)]
pub struct ErasurePass {
    /// Sessions deleted by this pass.
    pub sessions_deleted: u64,
    /// Sessions of the subject live on other nodes, left to them.
    pub elsewhere: Vec<(SessionId, baton_store::owners::Owner)>,
    /// The erasure, once no session was left elsewhere (keys destroyed).
    pub erasure: Option<Erasure>,
}

/// What an erasure did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    /// The subject's keys existed and are destroyed now.
    pub keys_destroyed: bool,
    /// Live sessions of the subject deleted.
    pub sessions_deleted: u64,
}

impl crate::handle::RuntimeHandle {
    /// Erase a data subject (a `subject_field` value, or `session:<id>`):
    /// its keys are destroyed (durably, first), then its live sessions
    /// deleted. Idempotent: after a crash midway, erase again.
    pub async fn erase_subject(&self, name: &str) -> Result<Erasure> {
        self.erase_subject_by(baton_types::DEFAULT_TENANT, name, "embedded")
            .await
    }

    /// [`Self::erase_subject`] of a subject of `tenant` (a customer id
    /// names a subject within its tenant), by principal `by`. A session of
    /// it live on another node is named as [`Error::OwnedElsewhere`]
    /// (delete it there, then erase again).
    pub(crate) async fn erase_subject_by(
        &self,
        tenant: &str,
        name: &str,
        by: &str,
    ) -> Result<Erasure> {
        let pass = self.erase_subject_pass(tenant, name, by).await?;
        match (pass.erasure, pass.elsewhere.into_iter().next()) {
            (Some(e), _) => Ok(e),
            (None, Some((session, owner))) => Err(Error::OwnedElsewhere { session, owner }),
            (None, None) => Err(Error::Internal("an erasure pass ended with nothing".into())),
        }
    }

    /// One pass of an erasure: every session of the subject this node can
    /// delete is deleted; when none is left elsewhere, the keys are
    /// destroyed too ([`ErasurePass::erasure`]).
    pub(crate) async fn erase_subject_pass(
        &self,
        tenant: &str,
        name: &str,
        by: &str,
    ) -> Result<ErasurePass> {
        let shared = self.inner.shared.clone();
        let Some(ring) = shared.store.keyring().cloned() else {
            return Err(Error::FailedPrecondition(
                "erasure by crypto-shredding needs [privacy] encryption = true (without it, delete the sessions; copies in backups and the audit log stay readable)".into(),
            ));
        };
        if name.trim().is_empty() {
            return Err(Error::InvalidArgument("subject: must not be empty".into()));
        }
        let cfg = &shared.config.privacy;
        let subject = in_tenant(tenant, cfg.subject_named(name));
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(subject.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // The subject's sessions, found by their metadata; a session that
        // is its own subject brings its forks and replays (which have keys
        // of their own), and theirs, along.
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = shared.store.list_sessions(None, after, 512).await?;
            all.extend(
                page.sessions
                    .iter()
                    .map(|(id, m)| (*id, m.tenant.clone(), m.metadata.clone())),
            );
            match page.next_after {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let mut doomed: Vec<SessionId> = all
            .iter()
            .filter(|(id, t, m)| cfg.tenant_subject(t, *id, m) == subject)
            .map(|(id, _, _)| *id)
            .collect();
        let mut subjects = vec![subject.clone()];
        // Only a session that is its own subject: one that names a subject
        // (a customer) is erased with that subject, not by its id.
        if let Some(root) = subject.strip_prefix("session:")
            && !doomed.is_empty()
        {
            let own = |id: SessionId, m: &BTreeMap<String, String>| {
                cfg.subject(id, m) == format!("session:{id}")
            };
            let mut family = vec![root.to_string()];
            while let Some(parent) = family.pop() {
                for (id, _, m) in &all {
                    let child = m
                        .get("forked_from")
                        .is_some_and(|f| f.split('@').next() == Some(parent.as_str()))
                        || m.get("replay_of").is_some_and(|r| *r == parent);
                    if child && own(*id, m) && !doomed.contains(id) {
                        doomed.push(*id);
                        family.push(id.to_string());
                        subjects.push(format!("session:{id}"));
                    }
                }
            }
        }
        // The sessions first, as DeleteSession deletes them (their gates
        // and indexes with them, while their records still read), then
        // the keys: everything left anywhere (backups, the audit log)
        // becomes unreadable. A crash in between leaves the erasure to be
        // redone: the sessions are gone, the keys not yet.
        let mut sessions_deleted = 0;
        let mut elsewhere = Vec::new();
        for id in doomed {
            match self.delete_uncompacted(id, by).await {
                Ok(()) => sessions_deleted += 1,
                Err(Error::SessionNotFound(_) | Error::NotFoundDetail(_)) => {}
                // Live on another node (nodes owning sessions one by one):
                // deleted there, then the erasure goes on (its keys are
                // destroyed once no session is left).
                Err(Error::OwnedElsewhere { session, owner }) => elsewhere.push((session, owner)),
                Err(e) => return Err(e),
            }
        }
        if !elsewhere.is_empty() {
            return Ok(ErasurePass {
                sessions_deleted,
                elsewhere,
                erasure: None,
            });
        }
        crate::failpoint("erase_after_sessions");
        let r = ring.clone();
        let forgotten = subjects.clone();
        let keys_destroyed = tokio::task::spawn_blocking(move || {
            let mut any = false;
            for s in &forgotten {
                any |= r.forget(s)?;
            }
            r.compact()?;
            Ok::<bool, baton_store::Error>(any)
        })
        .await
        .map_err(|e| Error::Internal(format!("erasure task failed: {e}")))??;
        self.audit_admin(
            "erase_subject",
            None,
            serde_json::json!({
                "subject_sha256": hash,
                "keys_destroyed": keys_destroyed,
                "sessions_deleted": sessions_deleted,
            }),
            by,
        );
        tracing::info!(subject_sha256 = %hash, keys_destroyed, sessions_deleted, "data subject erased");
        Ok(ErasurePass {
            sessions_deleted,
            elsewhere,
            erasure: Some(Erasure {
                keys_destroyed,
                sessions_deleted,
            }),
        })
    }
}
