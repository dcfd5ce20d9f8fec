//! Snapshot encoding: the one place Baton uses bincode.
//!
//! bincode 2.0.1 is its final release and is no longer maintained, so it is
//! kept behind this module and used only for rebuildable data: a snapshot that
//! cannot be decoded (a new build changed the state's shape) is ignored and the
//! state is rebuilt from the journal, which is the truth.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Bumped whenever the snapshot layout changes incompatibly.
pub const SNAPSHOT_VERSION: u8 = 1;

/// `version (1) ++ seq (8, big-endian) ++ bincode(state)`.
pub fn encode<T: Serialize>(seq: u64, state: &T) -> Result<Vec<u8>> {
    let body = bincode::serde::encode_to_vec(state, bincode::config::standard())
        .map_err(|e| Error::Snapshot(e.to_string()))?;
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(SNAPSHOT_VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// `None` when the snapshot was written by an incompatible build (rebuild from
/// the journal instead).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<(u64, T)> {
    if bytes.len() < 9 || bytes[0] != SNAPSHOT_VERSION {
        return None;
    }
    let seq = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
    let (state, used) =
        bincode::serde::decode_from_slice(&bytes[9..], bincode::config::standard()).ok()?;
    (used == bytes.len() - 9).then_some((seq, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct S {
        a: u64,
        b: String,
        c: Vec<Option<u32>>,
    }

    #[test]
    fn round_trips_and_rejects_other_versions() {
        let s = S {
            a: 5,
            b: "x".into(),
            c: vec![Some(1), None],
        };
        let bytes = encode(77, &s).unwrap();
        assert_eq!(bytes[0], SNAPSHOT_VERSION);
        // golden: standard config uses varints
        assert_eq!(&bytes[9..], &[5, 1, b'x', 2, 1, 1, 0]);
        assert_eq!(decode::<S>(&bytes), Some((77, s)));
        let mut other = bytes.clone();
        other[0] = 2;
        assert_eq!(decode::<S>(&other), None);
        assert_eq!(decode::<S>(&bytes[..5]), None);
    }
}
