//! Verified tokens, so a token's signature is checked once rather than on
//! every request.
//!
//! Signature verification is far over the 20 µs an authentication may add:
//! in release builds here about 60 µs for EdDSA and 450 µs for ES256
//! (RustCrypto's P-256; RSA not measured), more in debug builds; a client
//! sends the same token with every request until it expires. Entries are
//! keyed by the SHA-256 of the whole token (a hit means the very same bytes
//! were verified), hold the principal and the token's `exp`, and are served
//! only until `exp` (plus the configured leeway, as verification allows). A
//! hit costs one SHA-256 of the token, a read lock and a clone of the
//! principal: about 0.6 µs (`cargo bench -p baton-auth --bench verify`).
//!
//! The cache is bounded: at capacity the oldest insertions are evicted
//! first. It is cleared whenever the key set changes, so a key the identity
//! provider withdraws stops authenticating cached tokens too.

use std::collections::{HashMap, VecDeque};
use std::sync::{PoisonError, RwLock};

use baton_types::Principal;
use sha2::{Digest, Sha256};

/// Entries kept at most.
pub(crate) const CAPACITY: usize = 10_000;

/// The cache key of a token.
pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// What the cache knows about a token.
#[derive(Debug, PartialEq)]
pub(crate) enum Hit {
    /// Verified and not expired.
    Fresh(Principal),
    /// Verified once, expired since (and now dropped).
    Expired,
    /// Not cached.
    Miss,
}

pub(crate) struct Cache {
    capacity: usize,
    entries: RwLock<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<TokenDigest, Entry>,
    /// Insertion order, for eviction. A `(digest, seq)` whose entry was
    /// removed or replaced since is stale and skipped.
    order: VecDeque<(TokenDigest, u64)>,
    next_seq: u64,
}

struct Entry {
    principal: Principal,
    exp: u64,
    seq: u64,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: RwLock::default(),
        }
    }

    /// Looks a token up at `now` (Unix seconds): fresh while
    /// `now <= exp + leeway`.
    pub(crate) fn get(&self, key: &TokenDigest, now: u64, leeway: u64) -> Hit {
        {
            let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            match entries.map.get(key) {
                None => return Hit::Miss,
                Some(entry) if entry.exp >= now.saturating_sub(leeway) => {
                    return Hit::Fresh(entry.principal.clone());
                }
                Some(_) => {}
            }
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.map.remove(key);
        Hit::Expired
    }

    /// Remembers a verified token until `exp` (Unix seconds).
    pub(crate) fn insert(&self, key: TokenDigest, principal: Principal, exp: u64) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let entries = &mut *entries;
        while entries.map.len() >= self.capacity && !entries.map.contains_key(&key) {
            let Some((old, seq)) = entries.order.pop_front() else {
                break;
            };
            if entries.map.get(&old).is_some_and(|e| e.seq == seq) {
                entries.map.remove(&old);
            }
        }
        let seq = entries.next_seq;
        entries.next_seq += 1;
        entries.map.insert(
            key,
            Entry {
                principal,
                exp,
                seq,
            },
        );
        entries.order.push_back((key, seq));
        // Expired and replaced entries leave stale order records behind:
        // drop them before they outnumber the live ones.
        if entries.order.len() > 2 * self.capacity {
            let map = &entries.map;
            entries
                .order
                .retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    pub(crate) fn clear(&self) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.map.clear();
        entries.order.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    #[cfg(test)]
    fn order_len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .order
            .len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use baton_types::{AccessRole, AuthMethod};

    use super::*;

    fn principal(id: &str) -> Principal {
        Principal {
            via: AuthMethod::Jwt,
            id: id.into(),
            tenant: "acme".into(),
            roles: vec![AccessRole::Client],
            groups: Vec::new(),
        }
    }

    #[test]
    fn entries_are_served_until_exp_plus_leeway_then_dropped() {
        let cache = Cache::new(10);
        let key = digest("token");
        assert_eq!(cache.get(&key, 1000, 30), Hit::Miss);
        cache.insert(key, principal("a"), 1000);
        assert_eq!(cache.get(&key, 1000, 30), Hit::Fresh(principal("a")));
        assert_eq!(cache.get(&key, 1030, 30), Hit::Fresh(principal("a")));
        assert_eq!(cache.get(&key, 1031, 30), Hit::Expired);
        assert_eq!(
            cache.get(&key, 1000, 30),
            Hit::Miss,
            "an expired entry is dropped"
        );
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn it_never_holds_more_than_its_capacity_and_evicts_the_oldest() {
        let cache = Cache::new(3);
        for i in 0..5 {
            cache.insert(
                digest(&format!("t{i}")),
                principal(&format!("p{i}")),
                u64::MAX,
            );
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&digest("t0"), 0, 0), Hit::Miss);
        assert_eq!(cache.get(&digest("t1"), 0, 0), Hit::Miss);
        assert_eq!(cache.get(&digest("t4"), 0, 0), Hit::Fresh(principal("p4")));
        // Replacing an entry at capacity evicts nothing.
        cache.insert(digest("t4"), principal("p4b"), u64::MAX);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&digest("t2"), 0, 0), Hit::Fresh(principal("p2")));
        assert_eq!(cache.get(&digest("t4"), 0, 0), Hit::Fresh(principal("p4b")));
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn stale_order_records_stay_bounded() {
        let cache = Cache::new(4);
        for i in 0..1000 {
            let key = digest(&format!("t{i}"));
            cache.insert(key, principal("p"), 10);
            // Expire it right away: its order record goes stale.
            assert_eq!(cache.get(&key, 100, 0), Hit::Expired);
            assert!(
                cache.order_len() <= 8,
                "order grew to {}",
                cache.order_len()
            );
        }
        assert_eq!(cache.len(), 0);
    }
}
