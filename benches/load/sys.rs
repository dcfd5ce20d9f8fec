//! Machine and process facts (RSS, CPU time, data dir sizes) and the disk's
//! fsync floor.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, anyhow};

use crate::report::{FsyncFloor, Machine, hist, lat, record};

pub(crate) fn rss_kib() -> Result<u64> {
    proc_kib("/proc/self/status", "VmRSS:")
}

fn proc_kib(file: &str, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(file)?;
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .ok_or_else(|| anyhow!("{key} not found in {file}"))?;
    Ok(line
        .trim_start_matches(key)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

/// CPU time (user + system) of this whole process — client, Baton and
/// upstream alike — in microseconds, from /proc/self/stat (clock ticks of
/// 10 ms, which is fine over multi-second windows).
pub(crate) fn cpu_us() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    // Fields after the command: state is field 3; utime and stime are 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) * 10_000
}

pub(crate) fn machine(data_dir: &Path) -> Machine {
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mem_total_kib: proc_kib("/proc/meminfo", "MemTotal:").unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        data_dir: data_dir.display().to_string(),
    }
}

#[derive(Debug, Default)]
pub(crate) struct DirSize {
    pub(crate) bytes: u64,
    pub(crate) allocated: u64,
    pub(crate) wal: u64,
    pub(crate) sst: u64,
}

pub(crate) fn dir_size(dir: &Path) -> Result<DirSize> {
    use std::os::unix::fs::MetadataExt;
    let mut out = DirSize::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let md = entry.metadata()?;
            if md.is_dir() {
                stack.push(entry.path());
                continue;
            }
            out.bytes += md.len();
            out.allocated += md.blocks() * 512;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".log") {
                out.wal += md.len();
            } else if name.ends_with(".sst") {
                out.sst += md.len();
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// 1. fsync floor

pub(crate) fn fsync_floor(dir: &Path, iterations: usize) -> Result<FsyncFloor> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::Builder::new()
        .prefix("baton-fsync-")
        .tempdir_in(dir)?;
    let block = vec![0xA5u8; 4096];

    // (a) Overwrite 4 KiB at offset 0 of a preallocated (written, synced) file:
    // no size or extent change, so fdatasync writes data only.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("overwrite.bin"))?;
    let mib = vec![0u8; 1 << 20];
    for _ in 0..64 {
        f.write_all(&mib)?;
    }
    f.sync_all()?;
    let mut h = hist()?;
    for _ in 0..iterations {
        let t = Instant::now();
        f.write_all_at(&block, 0)?;
        f.sync_data()?;
        record(&mut h, t.elapsed());
    }
    let overwrite = lat(&h);

    // (b) Append 4 KiB to a growing file: fdatasync must also persist the
    // new size (a journal commit on ext4).
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("append.bin"))?;
    let mut h = hist()?;
    for _ in 0..iterations {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        record(&mut h, t.elapsed());
    }
    Ok(FsyncFloor {
        path: dir.path().display().to_string(),
        iterations,
        overwrite_4k_fdatasync: overwrite,
        append_4k_fdatasync: lat(&h),
    })
}
