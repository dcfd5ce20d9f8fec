//! Copying a store from one database to another: a RocksDB data dir into
//! PostgreSQL when one machine is no longer enough.
//!
//! Every key space is walked in key order and written in batches; the
//! destination must be empty (nothing is merged or overwritten), and the
//! copy is checked afterwards by walking both sides again side by side,
//! key by key and value by value.

use crate::engine::{Engine, Entry, Op, Seek};
use crate::{COLUMN_FAMILIES, Error, Result};

/// Most bytes of keys and values one batch of a copy writes.
const BATCH_BYTES: u64 = 4 << 20;
/// Most keys one batch of a copy writes.
const BATCH_KEYS: usize = 2000;

/// What a copy moved, per key space: (name, keys, bytes of keys and values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub key_spaces: Vec<(&'static str, u64, u64)>,
}

impl Copied {
    pub fn keys(&self) -> u64 {
        self.key_spaces.iter().map(|k| k.1).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.key_spaces.iter().map(|k| k.2).sum()
    }
}

/// Walk two key orders together: the first key whose presence or value
/// differs, if any.
pub(crate) fn first_difference(
    mut left: impl Iterator<Item = Result<Entry>>,
    mut right: impl Iterator<Item = Result<Entry>>,
) -> Result<Option<Vec<u8>>> {
    loop {
        match (left.next().transpose()?, right.next().transpose()?) {
            (None, None) => return Ok(None),
            (Some((k, v)), Some((k2, v2))) => {
                if k != k2 || v != v2 {
                    return Ok(Some(k.min(k2).into_vec()));
                }
            }
            (Some((k, _)), None) | (None, Some((k, _))) => return Ok(Some(k.into_vec())),
        }
    }
}

/// Copy every key of `from` into `to`, which must hold none. Both must be
/// idle (no server on either). `progress` hears each key space's counts
/// once it is copied.
pub fn copy_store(
    from: &dyn Engine,
    to: &dyn Engine,
    mut progress: impl FnMut(&'static str, u64, u64),
) -> Result<Copied> {
    for cf in COLUMN_FAMILIES {
        if let Some(item) = to.walk(cf, Seek::First)?.next() {
            item?;
            return Err(Error::Config(format!(
                "the destination ({}) is not empty: its key space {cf} holds data; copy into \
                 an empty database",
                to.backend()
            )));
        }
    }
    let mut copied = Copied::default();
    for cf in COLUMN_FAMILIES {
        let (keys, bytes) = copy_entries(from.walk(cf, Seek::First)?, to, cf)?;
        if let Some(key) = first_difference(from.walk(cf, Seek::First)?, to.walk(cf, Seek::First)?)?
        {
            return Err(Error::Config(format!(
                "the copy of key space {cf} does not match the source at key {key:02x?}"
            )));
        }
        progress(cf, keys, bytes);
        copied.key_spaces.push((cf, keys, bytes));
    }
    Ok(copied)
}

/// Write `entries`, in key order, into key space `cf` of `to` in synced
/// batches: how many keys, and their bytes of keys and values.
pub(crate) fn copy_entries(
    entries: impl Iterator<Item = Result<Entry>>,
    to: &dyn Engine,
    cf: &'static str,
) -> Result<(u64, u64)> {
    let (mut keys, mut bytes) = (0u64, 0u64);
    let mut ops = Vec::new();
    let mut batch_bytes = 0u64;
    for item in entries {
        let (k, v) = item?;
        let op = Op::Put {
            cf,
            key: k.into_vec(),
            value: v.into_vec(),
        };
        keys += 1;
        bytes += op.bytes();
        batch_bytes += op.bytes();
        ops.push(op);
        if ops.len() >= BATCH_KEYS || batch_bytes >= BATCH_BYTES {
            to.write(&[&ops], true)?;
            ops.clear();
            batch_bytes = 0;
        }
    }
    if !ops.is_empty() {
        to.write(&[&ops], true)?;
    }
    Ok((keys, bytes))
}
