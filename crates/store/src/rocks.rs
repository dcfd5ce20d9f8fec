//! The embedded backend: RocksDB in the data directory, one column family
//! per key space, one block cache and one memtable budget for all of them.

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};

use crate::engine::{Dir, Engine, Op, Seek, Walk};
use crate::{COLUMN_FAMILIES, Error, Result, StoreMemory};

/// A RocksDB database as a [`Engine`].
pub struct RocksEngine {
    db: DB,
    /// The block cache every column family shares.
    cache: rocksdb::Cache,
    path: PathBuf,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine")
            .field("path", &self.path)
            .finish()
    }
}

impl RocksEngine {
    /// Open (or create) the database at `path`, with one shared block cache
    /// of `cache_bytes` and `memtable_bytes` of memtables in all.
    pub fn open(path: &Path, cache_bytes: usize, memtable_bytes: usize) -> Result<RocksEngine> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // Reuse WAL files: an fsync of a preallocated, recycled file does not
        // also have to persist file-size metadata.
        db_opts.set_recycle_log_file_num(4);
        db_opts.set_keep_log_file_num(8);
        db_opts.increase_parallelism(2);
        // One memory budget, whatever the data's size or the number of
        // column families: by default each column family would get its own
        // block cache and two 64 MiB memtables, and index blocks would live
        // outside any cache, so memory grew with the store.
        let cache = rocksdb::Cache::new_lru_cache(cache_bytes);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        db_opts.set_block_based_table_factory(&table);
        db_opts.set_db_write_buffer_size(memtable_bytes);
        let cfs = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        Ok(RocksEngine {
            db,
            cache,
            path: path.to_path_buf(),
        })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Rocks(format!("column family {name} is missing")))
    }
}

impl Engine for RocksEngine {
    fn backend(&self) -> &'static str {
        "rocksdb"
    }

    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf)?, key)?)
    }

    fn walk<'a>(&'a self, cf: &'static str, from: Seek<'a>) -> Result<Walk<'a>> {
        let mode = match from {
            Seek::First => IteratorMode::Start,
            Seek::Last => IteratorMode::End,
            Seek::At(k, Dir::Forward) => IteratorMode::From(k, Direction::Forward),
            Seek::At(k, Dir::Reverse) => IteratorMode::From(k, Direction::Reverse),
        };
        let iter = self.db.iterator_cf(self.cf(cf)?, mode);
        Ok(Box::new(iter.map(|item| item.map_err(Error::from))))
    }

    fn write(&self, groups: &[&[Op]], sync: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        for ops in groups {
            for op in ops.iter() {
                match op {
                    Op::Put { cf, key, value } => batch.put_cf(self.cf(cf)?, key, value),
                    Op::Delete { cf, key } => batch.delete_cf(self.cf(cf)?, key),
                    Op::DeleteRange { cf, from, to } => {
                        batch.delete_range_cf(self.cf(cf)?, from, to)
                    }
                    Op::Owned { .. } => {}
                }
            }
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    fn memory(&self) -> StoreMemory {
        let mut m = StoreMemory {
            cache_bytes: self.cache.get_usage() as u64,
            ..Default::default()
        };
        for name in COLUMN_FAMILIES.iter().copied().chain(["default"]) {
            let Some(cf) = self.db.cf_handle(name) else {
                continue;
            };
            let prop = |p: &str| {
                self.db
                    .property_int_value_cf(cf, p)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            m.memtable_bytes += prop("rocksdb.cur-size-all-mem-tables");
            m.table_readers_bytes += prop("rocksdb.estimate-table-readers-mem");
        }
        m
    }

    fn checkpoint(&self, dir: &Path) -> Result<()> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        cp.create_checkpoint(dir)?;
        Ok(())
    }
}
