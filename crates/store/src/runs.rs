//! Flow runs' storage: run records, run journals and run indexes.
//!
//! The store keeps these as bytes; their encoding belongs to `baton-flows`,
//! which owns the run model. What the store owns is the key layout:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `runs` | run id (16 bytes) | the run's record |
//! | `run_journal` | run id (16 bytes) + seq (u64, big-endian) | one journal record |
//! | `run_index` | any bytes chosen by the caller (prefix-scanned) | any bytes |
//!
//! Journal keys sort by run then seq, so one run's journal is one range
//! scan and deleting a run is one range delete.

use crate::engine::{Dir, Engine, Op, Seek};
use crate::{Batch, Result, Store};

/// Run records, keyed by run id.
pub const CF_RUNS: &str = "runs";
/// Run journals, keyed by run id and seq.
pub const CF_RUN_JOURNAL: &str = "run_journal";
/// Run indexes (by status, flow, timer, idempotency key, trigger delivery).
pub const CF_RUN_INDEX: &str = "run_index";

fn journal_key(run: &[u8; 16], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(run);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// What a run is claimed and fenced under where nodes own sessions and
/// runs one by one ([`crate::owners`]): `r` and its id, 17 bytes, so that
/// it never equals a session id (16).
pub fn owner_key(run: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'r');
    k.extend_from_slice(run);
    k
}

impl Batch {
    /// Put run `run`'s record.
    pub fn put_run(&mut self, run: &[u8; 16], record: Vec<u8>) {
        self.own_key(&owner_key(run));
        self.push(Op::Put {
            cf: CF_RUNS,
            key: run.to_vec(),
            value: record,
        });
    }

    /// Append record `seq` to run `run`'s journal.
    pub fn append_run(&mut self, run: &[u8; 16], seq: u64, record: Vec<u8>) {
        self.own_key(&owner_key(run));
        self.push(Op::Put {
            cf: CF_RUN_JOURNAL,
            key: journal_key(run, seq),
            value: record,
        });
    }

    /// Set a run index entry.
    pub fn put_run_index(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.push(Op::Put {
            cf: CF_RUN_INDEX,
            key,
            value,
        });
    }

    /// Remove a run index entry.
    pub fn delete_run_index(&mut self, key: Vec<u8>) {
        self.push(Op::Delete {
            cf: CF_RUN_INDEX,
            key,
        });
    }

    /// Remove run `run`'s record and journal (its index entries are the
    /// caller's to remove).
    pub fn delete_run(&mut self, run: &[u8; 16]) {
        self.own_key(&owner_key(run));
        self.push(Op::Delete {
            cf: CF_RUNS,
            key: run.to_vec(),
        });
        self.push(Op::DeleteRange {
            cf: CF_RUN_JOURNAL,
            from: journal_key(run, 0),
            to: journal_key(run, u64::MAX),
        });
    }
}

impl Store {
    /// Claim run `run` for this node before working on it (as
    /// [`Store::claim`] a session).
    pub async fn claim_run(&self, run: [u8; 16]) -> Result<crate::owners::Claim> {
        self.claim_owner_key(owner_key(&run)).await
    }

    /// Give run `run` up (finished, or waiting with no actor).
    pub async fn release_run(&self, run: [u8; 16]) -> Result<()> {
        self.release_owner_key(owner_key(&run)).await
    }

    /// Run `run`'s record.
    pub async fn load_run(&self, run: [u8; 16]) -> Result<Option<Vec<u8>>> {
        self.blocking(move |db| db.get(CF_RUNS, &run)).await
    }

    /// Run `run`'s journal records with `after_seq < seq`, at most `limit`,
    /// as `(seq, record)`.
    pub async fn read_run_journal(
        &self,
        run: [u8; 16],
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        self.blocking(move |db| read_run_journal_blocking(db, run, after_seq, limit))
            .await
    }

    /// One run index entry.
    pub async fn get_run_index(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.blocking(move |db| db.get(CF_RUN_INDEX, &key)).await
    }

    /// Run index entries whose key starts with `prefix`, in key order,
    /// after `after` (exclusive; `None`: from the start), at most `limit`.
    pub async fn scan_run_index(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.blocking(move |db| scan_blocking(db, CF_RUN_INDEX, &prefix, after, limit))
            .await
    }

    /// Every run record, in run id order, after `after`, at most `limit`.
    pub async fn scan_runs(
        &self,
        after: Option<[u8; 16]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.blocking(move |db| scan_blocking(db, CF_RUNS, &[], after.map(|a| a.to_vec()), limit))
            .await
    }
}

fn read_run_journal_blocking(
    db: &dyn Engine,
    run: [u8; 16],
    after_seq: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let from = journal_key(&run, after_seq.saturating_add(1));
    let mut out = Vec::new();
    for item in db.walk(CF_RUN_JOURNAL, Seek::At(&from, Dir::Forward))? {
        let (k, v) = item?;
        if k.len() != 24 || k[..16] != run {
            break;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&k[16..]);
        out.push((u64::from_be_bytes(seq), v.into_vec()));
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

fn scan_blocking(
    db: &dyn Engine,
    cf: &'static str,
    prefix: &[u8],
    after: Option<Vec<u8>>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let start = match &after {
        Some(a) => {
            // The first key after `a`: `a` followed by a zero byte.
            let mut s = a.clone();
            s.push(0);
            s
        }
        None => prefix.to_vec(),
    };
    let mut out = Vec::new();
    for item in db.walk(cf, Seek::At(&start, Dir::Forward))? {
        let (k, v) = item?;
        if !k.starts_with(prefix) {
            break;
        }
        out.push((k.into_vec(), v.into_vec()));
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, StoreOptions};

    #[tokio::test]
    async fn journal_ranges_and_index_scans_stay_within_their_run_and_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreOptions::new(dir.path(), Durability::Sync)).expect("open");
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let mut batch = Batch::new();
        batch.put_run(&a, b"a".to_vec());
        for seq in 1..=3 {
            batch.append_run(&a, seq, vec![seq as u8]);
            batch.append_run(&b, seq, vec![10 + seq as u8]);
        }
        batch.put_run_index(b"t/1/a".to_vec(), vec![]);
        batch.put_run_index(b"t/2/b".to_vec(), vec![]);
        batch.put_run_index(b"u/1".to_vec(), vec![]);
        store.write(batch).await.expect("write");

        let j = store.read_run_journal(a, 1, 10).await.expect("read");
        assert_eq!(j, vec![(2, vec![2]), (3, vec![3])]);
        assert_eq!(
            store.read_run_journal(b, 0, 1).await.expect("read").len(),
            1
        );
        let scan = store
            .scan_run_index(b"t/".to_vec(), None, 10)
            .await
            .expect("scan");
        assert_eq!(scan.len(), 2);
        let after = store
            .scan_run_index(b"t/".to_vec(), Some(b"t/1/a".to_vec()), 10)
            .await
            .expect("scan");
        assert_eq!(after, vec![(b"t/2/b".to_vec(), vec![])]);

        let mut del = Batch::new();
        del.delete_run(&a);
        store.write(del).await.expect("delete");
        assert!(
            store
                .read_run_journal(a, 0, 10)
                .await
                .expect("read")
                .is_empty()
        );
        assert_eq!(
            store.read_run_journal(b, 0, 10).await.expect("read").len(),
            3
        );
        assert!(store.load_run(a).await.expect("load").is_none());
    }
}
