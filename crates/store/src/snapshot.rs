//! Snapshot encoding: the one place Baton uses bincode.
//!
//! A snapshot is rebuildable data: the journal is the truth, and a snapshot
//! that cannot be decoded is ignored (the state is rebuilt from the journal).
//! The state is encoded with bincode's own derives (`bincode::Encode` /
//! `Decode`), not through serde: bincode is positional, and serde attributes
//! meant for JSON (`skip_serializing_if`) would silently drop bytes that
//! decoding then expects.
//!
//! Layout: `version (1) ++ seq (8, big-endian) ++ bincode(state)`, with
//! fixed-width integers, so every length prefix costs 8 bytes and decoded
//! memory is within a small factor of the encoded size. Decoding a garbage
//! or truncated snapshot never allocates from a bad length prefix: the
//! decoder runs with a limit (bincode's claim accounting, checked before
//! any container is allocated) of a few times the snapshot's own size, so
//! a length beyond what the bytes can hold fails before it is allocated.

use bincode::config::{Configuration, standard};

use crate::{Error, Result};

/// Bumped whenever the snapshot layout changes incompatibly (version 1 was
/// the serde encoding, which could not be read back; version 2 had no
/// tenant; version 3 did not record who sent each turn; version 4 had no
/// revision count; version 5 no output policy gate).
pub const SNAPSHOT_VERSION: u8 = 6;

const HEADER: usize = 9;

/// Decoded state may claim at most this many bytes per encoded byte (plus
/// [`LIMIT_SLACK`]). With fixed-width integers every element of every
/// container in a session state takes at least a fifth of its in-memory
/// size on the wire, so legitimate snapshots stay well inside it.
const LIMIT_FACTOR: usize = 8;
const LIMIT_SLACK: usize = 4096;

fn config()
-> Configuration<bincode::config::BigEndian, bincode::config::Fixint, bincode::config::NoLimit> {
    standard().with_big_endian().with_fixed_int_encoding()
}

/// `version ++ seq ++ bincode(state)`.
pub fn encode<T: bincode::Encode>(seq: u64, state: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    out.push(SNAPSHOT_VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    let body =
        bincode::encode_to_vec(state, config()).map_err(|e| Error::Snapshot(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode with a limit of `2^bits` bytes when the body needs at most that.
macro_rules! decode_within {
    ($body:expr, $need:expr, $($bits:literal),+) => {{
        $(
            if $need <= (1usize << $bits) {
                return bincode::decode_from_slice::<T, _>($body, config().with_limit::<{ 1usize << $bits }>())
                    .ok()
                    .filter(|(_, used)| *used == $body.len())
                    .map(|(state, _)| state);
            }
        )+
        None
    }};
}

/// Decode the state of a body: `None` when it is not exactly one encoded
/// `T` (or would need more memory than its size allows).
fn decode_body<T: bincode::Decode<()>>(body: &[u8]) -> Option<T> {
    let need = body
        .len()
        .checked_mul(LIMIT_FACTOR)?
        .checked_add(LIMIT_SLACK)?;
    // Limits in steps of 4x: an allocation from a bad length is bounded by
    // 4 * LIMIT_FACTOR times the snapshot's size.
    decode_within!(
        body, need, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38
    )
}

/// `None` when the snapshot was written by an incompatible build, or is
/// garbage or truncated (rebuild from the journal instead).
pub fn decode<T: bincode::Decode<()>>(bytes: &[u8]) -> Option<(u64, T)> {
    if bytes.len() < HEADER || bytes[0] != SNAPSHOT_VERSION {
        return None;
    }
    let seq = u64::from_be_bytes(bytes[1..HEADER].try_into().ok()?);
    decode_body(&bytes[HEADER..]).map(|state| (seq, state))
}

/// The seq a snapshot was taken at, without decoding its state.
pub fn seq_of(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER || bytes[0] != SNAPSHOT_VERSION {
        return None;
    }
    Some(u64::from_be_bytes(bytes[1..HEADER].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, bincode::Encode, bincode::Decode)]
    struct S {
        a: u64,
        b: String,
        c: Vec<Option<u32>>,
    }

    fn sample() -> S {
        S {
            a: 5,
            b: "x".into(),
            c: vec![Some(1), None],
        }
    }

    #[test]
    fn round_trips_and_rejects_other_versions() {
        let s = sample();
        let bytes = encode(77, &s).unwrap();
        assert_eq!(bytes[0], SNAPSHOT_VERSION);
        assert_eq!(seq_of(&bytes), Some(77));
        // golden: fixed-width big-endian integers and lengths
        assert_eq!(
            &bytes[HEADER..],
            &[
                0, 0, 0, 0, 0, 0, 0, 5, // a
                0, 0, 0, 0, 0, 0, 0, 1, b'x', // b
                0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 1, 0, // c
            ]
        );
        assert_eq!(decode::<S>(&bytes), Some((77, s)));
        let mut other = bytes.clone();
        other[0] = 1;
        assert_eq!(decode::<S>(&other), None);
        assert_eq!(decode::<S>(&bytes[..5]), None);
    }

    #[test]
    fn truncated_or_extended_snapshots_are_refused() {
        let bytes = encode(1, &sample()).unwrap();
        for n in 0..bytes.len() {
            assert_eq!(decode::<S>(&bytes[..n]), None, "truncated to {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode::<S>(&longer), None);
    }

    /// Every length prefix set to a huge value: refused without allocating
    /// from it (an allocation of 2^60 bytes would abort the test process).
    #[test]
    fn huge_length_prefixes_are_refused_before_allocation() {
        let bytes = encode(1, &sample()).unwrap();
        for at in HEADER..bytes.len().saturating_sub(7) {
            for huge in [u64::MAX, 1 << 60, 1 << 40, 1 << 31] {
                let mut bad = bytes.clone();
                bad[at..at + 8].copy_from_slice(&huge.to_be_bytes());
                // Decodes to something or nothing; it must not abort.
                let _ = decode::<S>(&bad);
            }
        }
        let mut bad = bytes.clone();
        bad[HEADER + 8..HEADER + 16].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(decode::<S>(&bad), None);
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400 {
            let mut bytes = vec![SNAPSHOT_VERSION];
            for _ in 0..len {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                bytes.push(rng as u8);
            }
            let _ = decode::<S>(&bytes);
        }
    }
}
