//! Claims of a creation: where nodes own sessions one by one
//! ([`crate::postgres::Ownership::Sessions`]), a node starting a session
//! under an idempotency key first claims the key, as it would a session,
//! so that two nodes cannot both create one for it; it releases the key
//! once the session and its key's index entry are written, and any node
//! then finds that session. Everywhere else a claim is always this node's
//! and asks nothing of the database.

use sha2::{Digest, Sha256};

use crate::owners::Claim;
use crate::{Result, Store};

/// The owner key of a creation: `i` and 16 bytes of the key's SHA-256
/// (17 bytes, like a run's `r` key, so never a session's 16).
pub fn creation_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'i');
    k.extend_from_slice(&Sha256::digest(key.as_bytes())[..16]);
    k
}

/// Whether an owner key (from [`Store::orphaned`]) is a creation's.
pub fn is_creation_key(k: &[u8]) -> bool {
    k.len() == 17 && k[0] == b'i'
}

impl Store {
    /// Claim the creation of what idempotency key `key` names (see the
    /// module docs).
    pub async fn claim_creation(&self, key: &str) -> Result<Claim> {
        self.claim_owner_key(creation_key(key)).await
    }

    /// Give the creation of `key` up (the session written, or not to be).
    pub async fn release_creation(&self, key: &str) -> Result<()> {
        self.release_owner_key(creation_key(key)).await
    }

    /// Give up an owner key as it is (a session's, a run's, a creation's):
    /// every write handed to the writer before it lands first. Nothing is
    /// asked of the database where one node owns everything.
    pub async fn release_owner_key(&self, k: Vec<u8>) -> Result<()> {
        if !self.inner.db.claims() {
            return Ok(());
        }
        self.barrier().await?;
        self.blocking(move |db| db.release(&k)).await
    }

    /// Claim an owner key as it is; where one node owns everything, always
    /// this node's.
    pub async fn claim_owner_key(&self, k: Vec<u8>) -> Result<Claim> {
        if !self.inner.db.claims() {
            return Ok(Claim::Ours);
        }
        self.blocking(move |db| db.claim(&k)).await
    }
}
