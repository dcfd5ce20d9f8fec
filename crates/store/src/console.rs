//! Sign-ins of the web console, where several nodes serve at once
//! (`[cluster] ownership = "sessions"`): kept in the database so that a
//! browser signed in through one node is signed in on every node, and a
//! console request forwarded to another node is recognised there. Keyed
//! by the SHA-256 of the cookie's token (the token itself is never
//! stored); the value is the server's own record of the sign-in (JSON).

use crate::{Batch, CF_INDEXES, Result, Store};

/// `indexes` key prefix of console sign-ins: `U` ++ SHA-256 of the token.
pub const SIGN_IN_PREFIX: u8 = b'U';

fn sign_in_key(digest: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(SIGN_IN_PREFIX);
    k.extend_from_slice(digest);
    k
}

impl Batch {
    /// Record a console sign-in under the digest of its token.
    pub fn put_console_sign_in(&mut self, digest: &[u8; 32], record: Vec<u8>) {
        self.push(crate::engine::Op::Put {
            cf: CF_INDEXES,
            key: sign_in_key(digest),
            value: record,
        });
    }

    /// Drop a console sign-in.
    pub fn delete_console_sign_in(&mut self, digest: &[u8; 32]) {
        self.push(crate::engine::Op::Delete {
            cf: CF_INDEXES,
            key: sign_in_key(digest),
        });
    }
}

impl Store {
    /// The console sign-in recorded under `digest`.
    pub async fn console_sign_in(&self, digest: [u8; 32]) -> Result<Option<Vec<u8>>> {
        self.blocking(move |db| db.get(CF_INDEXES, &sign_in_key(&digest)))
            .await
    }

    /// Every recorded console sign-in, as (digest, record).
    pub async fn console_sign_ins(&self) -> Result<Vec<([u8; 32], Vec<u8>)>> {
        self.blocking(|db| {
            let mut out = Vec::new();
            for item in db.walk_prefix(CF_INDEXES, &[SIGN_IN_PREFIX])? {
                let (k, v) = item?;
                if let Ok(d) = <[u8; 32]>::try_from(&k[1..]) {
                    out.push((d, v.to_vec()));
                }
            }
            Ok(out)
        })
        .await
    }
}
