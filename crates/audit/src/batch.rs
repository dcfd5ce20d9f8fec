//! One signature for a batch of records: a Merkle tree over their hashes.
//!
//! Signing every record costs an ed25519 signature each (tens of
//! microseconds), which under load was most of what the trail cost. The
//! writer signs each run of up to [`MAX_TREE`] records written together
//! once instead: the signature is over the root of a Merkle tree whose
//! leaves are the records' chain hashes, and each record's line carries
//! the signature and its inclusion proof (the sibling hashes from its leaf
//! to the root), so every record still verifies on its own — in the log
//! and in an export of any subset of it.
//!
//! The tree is the one of RFC 9162 (Certificate Transparency) §2.1.1:
//! leaf = SHA-256(0x00 ‖ hash), node = SHA-256(0x01 ‖ left ‖ right), the
//! left subtree of `n` leaves holding the largest power of two below `n`.
//! The signed message is `"baton-audit-batch\0"` ‖ root, which no
//! single-record signature (over a bare 32-byte hash) can be.

use sha2::{Digest, Sha256};

/// Most records under one signature; bounds a proof to 8 hashes.
pub const MAX_TREE: usize = 256;

/// Prefix of the message a batch signature signs.
const DOMAIN: &[u8] = b"baton-audit-batch\0";

/// `SHA-256(0x00 ‖ hash)`.
fn leaf(hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(hash);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two below `n` (`n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The message a batch signature is over.
pub(crate) fn signed_message(root: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 32);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(root);
    m
}

/// The root over records' `hashes` (at least one), and each record's
/// proof: the siblings from its leaf up.
pub(crate) fn tree(hashes: &[[u8; 32]]) -> ([u8; 32], Vec<Vec<[u8; 32]>>) {
    let leaves: Vec<[u8; 32]> = hashes.iter().map(leaf).collect();
    let mut proofs = vec![Vec::new(); leaves.len()];
    let root = build(&leaves, &mut proofs);
    (root, proofs)
}

fn build(leaves: &[[u8; 32]], proofs: &mut [Vec<[u8; 32]>]) -> [u8; 32] {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = split(leaves.len());
    let (lp, rp) = proofs.split_at_mut(k);
    let left = build(&leaves[..k], lp);
    let right = build(&leaves[k..], rp);
    for p in lp {
        p.push(right);
    }
    for p in rp {
        p.push(left);
    }
    node(&left, &right)
}

/// The root a record's proof leads to: record `index` of `count`, whose
/// chain hash is `hash`, with the siblings `path` from its leaf up. `None`
/// when the path has the wrong length for its place.
pub(crate) fn root_of(
    index: usize,
    count: usize,
    hash: &[u8; 32],
    path: &[[u8; 32]],
) -> Option<[u8; 32]> {
    fn walk(m: usize, n: usize, leaf: [u8; 32], path: &[[u8; 32]]) -> Option<[u8; 32]> {
        if n == 1 {
            return path.is_empty().then_some(leaf);
        }
        let (top, rest) = path.split_last()?;
        let k = split(n);
        Some(if m < k {
            node(&walk(m, k, leaf, rest)?, top)
        } else {
            node(top, &walk(m - k, n - k, leaf, rest)?)
        })
    }
    if count < 2 || index >= count || count > MAX_TREE {
        return None;
    }
    walk(index, count, leaf(hash), path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn hashes(n: usize) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| Sha256::digest(i.to_le_bytes()).into())
            .collect()
    }

    #[test]
    fn every_proof_leads_to_the_root_and_nothing_else_does() {
        for n in [1, 2, 3, 5, 8, 13, 64, 255, 256] {
            let hs = hashes(n);
            let (root, proofs) = tree(&hs);
            for (i, (h, p)) in hs.iter().zip(&proofs).enumerate() {
                assert!(p.len() <= 8);
                if n == 1 {
                    assert_eq!(root, leaf(h));
                    continue;
                }
                assert_eq!(root_of(i, n, h, p), Some(root), "n {n} index {i}");
                // Another record's hash, place or path leads elsewhere.
                let other = hs[(i + 1) % n];
                assert_ne!(root_of(i, n, &other, p), Some(root));
                if n > 2 {
                    assert_ne!(root_of((i + 1) % n, n, h, p), Some(root));
                }
                let mut bent = p.clone();
                bent[0][0] ^= 1;
                assert_ne!(root_of(i, n, h, &bent), Some(root));
                assert_eq!(root_of(i, n, h, &p[1..]), None);
            }
        }
    }
}
