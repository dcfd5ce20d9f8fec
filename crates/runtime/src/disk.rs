//! The data directory's free space, watched so that the journal never runs
//! out of room under Baton's own load.
//!
//! A disk that fills up under RocksDB makes its writes and syncs fail; the
//! session whose write failed restarts from the journal (nothing it had
//! acknowledged is lost), but the database then refuses writes until it is
//! reopened, and a RocksDB built with assertions may abort. So Baton stops
//! taking new work *before* the disk is full:
//!
//! - every `store.disk_check_ms` it reads the free space of the data
//!   directory's filesystem (`statvfs`, the space an unprivileged writer
//!   may use);
//! - below `store.min_free_bytes`, new sessions and messages are refused
//!   with UNAVAILABLE naming the directory, the free space and the setting;
//!   health reports not serving; and the **ballast** — a file of
//!   `store.ballast_bytes` allocated in the data directory at start — is
//!   deleted, so that the work already running, RocksDB's flushes and
//!   compactions have room to finish whatever fills the disk;
//! - once at least `min_free_bytes + ballast_bytes` are free again, the
//!   ballast is allocated again and new work is taken: recovery needs
//!   nobody.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// The ballast's file name in the data directory.
pub const BALLAST_FILE: &str = "BATON_BALLAST";

/// The data directory's free-space watch.
#[derive(Debug)]
pub(crate) struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    ballast: u64,
    /// Why new work is refused, while it is.
    low: Mutex<Option<String>>,
    /// The filesystem cannot allocate the ballast (no `fallocate`): the
    /// floor still holds, without one.
    no_ballast: std::sync::atomic::AtomicBool,
}

/// Bytes of `dir`'s filesystem an unprivileged writer may still use.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Allocate `len` bytes for `path` (real blocks, not a sparse file).
fn allocate(path: &Path, len: u64) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    if let Err(e) = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    file.sync_all()
}

impl DiskGuard {
    /// Watch `dir`: allocate the ballast if there is room for it (checked
    /// at once: a server that starts on a full disk refuses work at once).
    pub(crate) fn new(dir: &Path, min_free: u64, ballast: u64) -> Self {
        let guard = Self {
            dir: dir.to_path_buf(),
            min_free,
            ballast,
            low: Mutex::new(None),
            no_ballast: std::sync::atomic::AtomicBool::new(false),
        };
        guard.check();
        guard
    }

    fn ballast_path(&self) -> PathBuf {
        self.dir.join(BALLAST_FILE)
    }

    fn ballast_size(&self) -> u64 {
        std::fs::metadata(self.ballast_path()).map_or(0, |m| m.len())
    }

    /// Why new work is refused, while the disk is low.
    pub(crate) fn low(&self) -> Option<String> {
        self.low
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_low(&self, why: Option<String>) {
        *self.low.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    /// Read the free space and act on it (see the module docs).
    pub(crate) fn check(&self) {
        if self.min_free == 0 && self.ballast == 0 {
            return;
        }
        let free = match free_bytes(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the data directory's free space");
                return;
            }
        };
        let was_low = self.low().is_some();
        let has_ballast = self.ballast_size() >= self.ballast
            || self.no_ballast.load(std::sync::atomic::Ordering::Relaxed);
        if free < self.min_free {
            if has_ballast || !was_low {
                // Room for what is running to finish.
                if let Err(e) = std::fs::remove_file(self.ballast_path())
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, "cannot delete the disk ballast");
                }
            }
            let why = format!(
                "the data directory {} has {free} bytes free, below store.min_free_bytes ({}): new sessions and messages are refused until space returns",
                self.dir.display(),
                self.min_free
            );
            if !was_low {
                tracing::error!("{why}");
                baton_metrics::metrics().disk_low(true);
            }
            self.set_low(Some(why));
            return;
        }
        if has_ballast {
            // Without a ballast to take back, the same margin keeps the
            // floor from flapping.
            let margin = self.ballast.max(self.min_free / 8);
            if was_low && free >= self.min_free.saturating_add(margin) {
                self.recovered(free);
            }
            return;
        }
        // The ballast is missing (first start, or released): allocate it
        // when that leaves at least min_free.
        let needed = self.ballast - self.ballast_size().min(self.ballast);
        if free >= self.min_free.saturating_add(needed) {
            match allocate(&self.ballast_path(), self.ballast) {
                Ok(()) => {
                    if was_low {
                        self.recovered(free);
                    }
                }
                Err(e) if e.kind() != std::io::ErrorKind::Unsupported => {
                    tracing::warn!(error = %e, "cannot allocate the disk ballast yet");
                }
                Err(e) => {
                    tracing::warn!(error = %e, dir = %self.dir.display(), "cannot allocate the disk ballast; the free-space floor holds without one");
                    self.no_ballast
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    if was_low {
                        self.recovered(free);
                    }
                }
            }
        } else if !was_low {
            let why = format!(
                "the data directory {} has {free} bytes free, too little for store.min_free_bytes ({}) and store.ballast_bytes ({}): new sessions and messages are refused until space returns",
                self.dir.display(),
                self.min_free,
                self.ballast
            );
            tracing::error!("{why}");
            baton_metrics::metrics().disk_low(true);
            self.set_low(Some(why));
        }
    }

    fn recovered(&self, free: u64) {
        tracing::info!(
            dir = %self.dir.display(),
            free,
            "the data directory has room again: taking new work"
        );
        baton_metrics::metrics().disk_low(false);
        self.set_low(None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_ballast_is_allocated_and_free_space_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let before = free_bytes(dir.path()).unwrap();
        assert!(before > 0);
        let g = DiskGuard::new(dir.path(), 1, 1 << 20);
        assert_eq!(g.ballast_size(), 1 << 20);
        assert!(g.low().is_none());
        // A guard that asks for more than the disk has refuses work at once
        // and holds no ballast.
        let dir2 = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(dir2.path(), u64::MAX / 2, 1 << 20);
        let why = g.low().unwrap();
        assert!(why.contains("store.min_free_bytes"), "{why}");
        assert_eq!(g.ballast_size(), 0);
        assert!(free_bytes(Path::new("/no/such/dir")).is_err());
    }
}
