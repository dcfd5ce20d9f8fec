//! The writer: a dedicated thread that owns `audit.log`, batches appended
//! events into one write, one fsync and one head update.

use std::convert::Infallible;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::{AuditError, Result};
use crate::event::AuditEvent;
use crate::format::{self, GENESIS, HEAD_FILE, Head, LOG_FILE};
use crate::keys;
use crate::verify::{self, Cursor, WalkError};

/// At most this many events go into one write; the rest wait for the next.
const MAX_BATCH: usize = 8192;
/// How long the writer lets events gather after the first of a batch: one
/// signature and one write for all of them, and one wake-up of this
/// thread, instead of one per event. A flush that comes meanwhile waits at
/// most this long.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);
/// Longest a written record waits for its fsync and the signed head when
/// nobody flushes (a flush anchors at once).
const ANCHOR_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Where the audit log lives and how it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory holding `audit.log` and `audit.head` (created if missing).
    pub path: PathBuf,
    /// The signing key (hex seed); generated if missing, with its public key
    /// in `<key_file>.pub`.
    pub key_file: PathBuf,
    /// fsync the log, the head and the directory when records are anchored
    /// (see the crate docs). Turn off only for tests: without it a machine
    /// crash can lose recent records.
    #[serde(default = "default_sync")]
    pub sync: bool,
}

fn default_sync() -> bool {
    true
}

impl AuditConfig {
    /// The defaults for a directory: the key in `<dir>/audit.key`, fsync on.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let path = dir.into();
        Self {
            key_file: path.join("audit.key"),
            path,
            sync: true,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

enum Msg {
    Event(AuditEvent),
    Flush(oneshot::Sender<std::result::Result<(), String>>),
    Shutdown,
}

/// A handle on an open audit log. Cheap to clone; the writer thread stops
/// (after writing everything queued) when the last handle is closed or
/// dropped.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    /// Events appended and not yet taken by the writer thread.
    queued: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<JoinHandle<std::result::Result<(), String>>>,
    public_key: VerifyingKey,
    dir: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.inner.dir)
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Asks the writer to finish and waits for it; returns the outcome of its
    /// last batch.
    fn stop(&mut self) -> std::result::Result<(), String> {
        // A send error means the thread already ended; join tells how.
        let _ = self.tx.send(Msg::Shutdown);
        match self.thread.take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err("audit writer thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(dir = %self.dir.display(), error = %e, "audit log: final write failed");
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the audit log described by `cfg` and starts its
    /// writer thread.
    ///
    /// Loads or generates the key, takes an exclusive lock on `audit.log`,
    /// and checks the tail: the record the signed head names must be intact,
    /// and every complete record after it must continue the chain. A partial
    /// last line after the head (a crash mid-write) is cut off with a warning
    /// and an `audit_recovered` record noting the dropped bytes is appended;
    /// any other damage fails the open with the verification error. Blocking.
    pub fn open(cfg: AuditConfig) -> Result<AuditLog> {
        let dir = cfg.path.clone();
        fs::create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, e))?;
        let key = keys::load_or_create(&cfg.key_file)?;
        let public_key = key.verifying_key();
        let log_path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(|e| io_err("open", &log_path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(AuditError::Locked { dir }),
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &log_path, e)),
        }
        let (cursor, dropped) = recover(&dir, &file, &public_key)?;
        let mut writer = Writer {
            dir: dir.clone(),
            file,
            key,
            cursor,
            anchored: cursor,
            sync: cfg.sync,
            poisoned: None,
            unreported: None,
        };
        // Anchor whatever valid tail the last run left unanchored.
        if writer.sync {
            writer
                .file
                .sync_data()
                .map_err(|e| io_err("fsync", &log_path, e))?;
        }
        writer.write_head()?;
        if dropped > 0 {
            let event = AuditEvent::new(
                "audit_recovered",
                serde_json::json!({
                    "dropped_bytes": dropped,
                    "reason": "partial last line after the signed head, left by a crash mid-write",
                }),
            );
            writer.write_batch(vec![event])?;
            writer.anchor()?;
        }
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let taken = queued.clone();
        let thread = std::thread::Builder::new()
            .name("baton-audit-writer".into())
            .spawn(move || writer.run(&rx, &taken))
            .map_err(|e| io_err("spawn the writer thread for", &dir, e))?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx,
                queued,
                thread: Some(thread),
                public_key,
                dir,
            }),
        })
    }

    /// Queues `event`; never blocks. `ts_unix_ms` defaults to now. If the
    /// writer has stopped the event is lost and an error is logged.
    pub fn append(&self, mut event: AuditEvent) {
        if event.ts_unix_ms.is_none() {
            event.ts_unix_ms = Some(now_ms());
        }
        let queued = &self.inner.queued;
        queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(mpsc::SendError(Msg::Event(lost))) = self.inner.tx.send(Msg::Event(event)) {
            queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                dir = %self.inner.dir.display(),
                kind = %lost.kind,
                "audit log writer has stopped; event lost"
            );
        }
    }

    /// Resolves when every event appended before this call is written,
    /// fsynced (when `sync`) and anchored by the head; an error if that
    /// failed or the writer has stopped.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Flush(tx))
            .map_err(|_| AuditError::WriterGone)?;
        rx.await
            .map_err(|_| AuditError::WriterGone)?
            .map_err(AuditError::Write)
    }

    /// Events appended and not yet taken by the writer: what callers
    /// check to refuse new work while the log falls behind.
    pub fn queued(&self) -> u64 {
        self.inner.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The public key that verifies this log, as 64 hex digits.
    pub fn public_key_hex(&self) -> String {
        format::to_hex(self.inner.public_key.as_bytes())
    }

    /// The public key that verifies this log.
    pub fn public_key(&self) -> VerifyingKey {
        self.inner.public_key
    }

    /// The directory holding `audit.log` and `audit.head`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Closes this handle. The last handle writes everything queued, waits
    /// for the writer thread and reports a failure of that last write; other
    /// handles just go away. Blocking (one fsync). Dropping does the same,
    /// logging instead of returning the error.
    pub fn close(self) -> Result<()> {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => inner.stop().map_err(AuditError::Write),
            Err(_) => Ok(()),
        }
    }
}

fn io_err(op: &'static str, path: &Path, error: io::Error) -> AuditError {
    AuditError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

fn tampered(dir: &Path, key: &VerifyingKey, fallback: String) -> AuditError {
    let report = verify::verify(dir, key);
    AuditError::Tampered {
        dir: dir.to_path_buf(),
        report: if report.ok() {
            fallback
        } else {
            report.to_string()
        },
    }
}

/// Checks the tail of an existing log and returns the last record's cursor
/// and how many bytes of a torn last line were cut off.
fn recover(dir: &Path, file: &File, key: &VerifyingKey) -> Result<(Cursor, u64)> {
    let log_path = dir.join(LOG_FILE);
    let head_path = dir.join(HEAD_FILE);
    let len = file
        .metadata()
        .map_err(|e| io_err("stat", &log_path, e))?
        .len();
    let head = match fs::read(&head_path) {
        Ok(raw) => format::decode_head(&raw, key).map_err(|e| tampered(dir, key, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound && len == 0 => Head {
            seq: 0,
            hash: GENESIS,
            bytes: 0,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(tampered(
                dir,
                key,
                "audit.head is missing but audit.log is not empty".into(),
            ));
        }
        Err(e) => return Err(io_err("read", &head_path, e)),
    };
    // The record the head names must be there, intact, ending at head.bytes.
    if head.bytes > len {
        return Err(tampered(
            dir,
            key,
            format!(
                "audit.log is {len} bytes but the signed head is at byte {}",
                head.bytes
            ),
        ));
    }
    if head.seq == 0 {
        if head.bytes != 0 || head.hash != GENESIS {
            return Err(tampered(
                dir,
                key,
                "audit.head is at seq 0 but names a record".into(),
            ));
        }
    } else {
        let (_, line) =
            line_ending_at(file, head.bytes).map_err(|e| io_err("read", &log_path, e))?;
        let content = line.strip_suffix(b"\n").unwrap_or(&[]);
        let intact = format::claimed_prev(content)
            .and_then(|prev| format::check_line(content, head.seq, &prev, key).ok())
            .is_some_and(|good| good.hash == head.hash);
        if !intact {
            return Err(tampered(
                dir,
                key,
                format!(
                    "the record at the signed head (seq {}) is not intact",
                    head.seq
                ),
            ));
        }
    }
    // Every complete line after the head must continue the chain.
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(head.bytes))
        .map_err(|e| io_err("seek", &log_path, e))?;
    let start = Cursor {
        seq: head.seq,
        hash: head.hash,
        offset: head.bytes,
    };
    let (cursor, bad) = match verify::walk(reader, key, start, None, |_| Ok::<(), Infallible>(())) {
        Ok(end) => end,
        Err(WalkError::Read(e)) => return Err(io_err("read", &log_path, e)),
        Err(WalkError::Sink(never)) => match never {},
    };
    let Some(bad) = bad else {
        return Ok((cursor, 0));
    };
    if bad.byte_offset >= len || !is_torn_tail(file, bad.byte_offset, len)? {
        return Err(AuditError::Tampered {
            dir: dir.to_path_buf(),
            report: format!("TAMPERED: {bad}"),
        });
    }
    let dropped = len - bad.byte_offset;
    tracing::warn!(
        log = %log_path.display(),
        dropped_bytes = dropped,
        at_byte = bad.byte_offset,
        "audit log ends with a partial line after the signed head (a crash mid-write); cutting it off"
    );
    file.set_len(bad.byte_offset)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err("truncate", &log_path, e))?;
    Ok((cursor, dropped))
}

/// True when the bytes from `from` to the end hold no newline: a torn last
/// line rather than a damaged complete one.
fn is_torn_tail(file: &File, from: u64, len: u64) -> Result<bool> {
    let size =
        usize::try_from(len - from).map_err(|_| AuditError::Write("tail too large".into()))?;
    let mut tail = vec![0u8; size];
    file.read_exact_at(&mut tail, from)
        .map_err(|e| io_err("read", Path::new(LOG_FILE), e))?;
    Ok(!tail.contains(&b'\n'))
}

/// The line that ends at `end` (newline included): its start offset and
/// bytes. Reads backwards in chunks, so it costs one line, not the file.
fn line_ending_at(file: &File, end: u64) -> io::Result<(u64, Vec<u8>)> {
    const CHUNK: u64 = 4096;
    let mut line: Vec<u8> = Vec::new();
    let mut pos = end;
    while pos > 0 {
        let n = CHUNK.min(pos);
        let mut chunk = vec![0u8; usize::try_from(n).unwrap_or(4096)];
        file.read_exact_at(&mut chunk, pos - n)?;
        // The line's own trailing newline is not its start.
        let search = if pos == end {
            chunk.len().saturating_sub(1)
        } else {
            chunk.len()
        };
        if let Some(i) = chunk[..search].iter().rposition(|&b| b == b'\n') {
            let start = pos - n + i as u64 + 1;
            chunk.drain(..=i);
            chunk.extend_from_slice(&line);
            return Ok((start, chunk));
        }
        chunk.extend_from_slice(&line);
        line = chunk;
        pos -= n;
    }
    Ok((0, line))
}

struct Writer {
    dir: PathBuf,
    file: File,
    key: SigningKey,
    /// The last record written.
    cursor: Cursor,
    /// The last record anchored: fsynced (when `sync`) and named by the
    /// signed head.
    anchored: Cursor,
    sync: bool,
    /// Set when the log may no longer match `cursor` (a failed fsync or a
    /// failed rollback): every later batch fails with this.
    poisoned: Option<String>,
    /// The first write failure since the last flush was answered: the next
    /// flush reports it, so a batch lost between two flushes is never
    /// confirmed as written.
    unreported: Option<String>,
}

impl Writer {
    fn run(
        mut self,
        rx: &mpsc::Receiver<Msg>,
        queued: &std::sync::atomic::AtomicU64,
    ) -> std::result::Result<(), String> {
        // When the records written since the last anchor (none: all are
        // anchored) were first left unanchored.
        let mut unanchored_since: Option<Instant> = None;
        loop {
            let mut events = Vec::new();
            let mut flushes = Vec::new();
            let mut shutdown = false;
            let mut next = match unanchored_since {
                None => rx.recv().ok(),
                // Wake to anchor them in time even if nothing else comes.
                Some(since) => {
                    match rx.recv_timeout(ANCHOR_EVERY.saturating_sub(since.elapsed())) {
                        Ok(m) => Some(m),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            shutdown = true;
                            None
                        }
                    }
                }
            };
            if next.is_none() && unanchored_since.is_none() {
                shutdown = true; // every handle is gone
            }
            if matches!(next, Some(Msg::Event(_))) {
                // Let the events that follow gather: they are written, and
                // signed, together (records are anchored later anyway),
                // and senders meanwhile wake nobody.
                std::thread::sleep(GATHER);
            }
            while let Some(msg) = next {
                match msg {
                    Msg::Event(e) => events.push(e),
                    Msg::Flush(reply) => flushes.push(reply),
                    Msg::Shutdown => shutdown = true,
                }
                if events.len() >= MAX_BATCH {
                    break;
                }
                next = match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        shutdown = true;
                        None
                    }
                };
            }
            queued.fetch_sub(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let mut result = if events.is_empty() {
                self.poisoned.clone().map_or(Ok(()), Err)
            } else {
                let count = events.len();
                self.write_batch(events).map_err(|e| {
                    let msg = e.to_string();
                    tracing::error!(
                        dir = %self.dir.display(),
                        lost = count,
                        error = %msg,
                        "audit log write failed; the batch was not written (the next flush reports it)"
                    );
                    msg
                })
            };
            if result.is_ok() && self.cursor.seq != self.anchored.seq {
                unanchored_since.get_or_insert_with(Instant::now);
            }
            // Anchor (fsync, signed head) for a flush, at shutdown, and at
            // most ANCHOR_EVERY after a record was written: one fsync of the
            // log and one head per interval instead of per batch.
            if let Some(since) = unanchored_since
                && (!flushes.is_empty() || shutdown || since.elapsed() >= ANCHOR_EVERY)
            {
                let anchored = self.anchor().map_err(|e| {
                    let msg = e.to_string();
                    tracing::error!(dir = %self.dir.display(), error = %msg, "audit log: anchoring the records written failed (the next flush reports it)");
                    msg
                });
                match anchored {
                    Ok(()) => unanchored_since = None,
                    // Tried again at the next interval or flush.
                    Err(e) => {
                        unanchored_since = Some(Instant::now());
                        result = Err(e);
                    }
                }
            }
            if let Err(e) = &result {
                self.unreported.get_or_insert_with(|| e.clone());
            }
            if !flushes.is_empty()
                && let Some(e) = self.unreported.take()
            {
                result = Err(e);
            }
            for reply in flushes {
                // The flusher may have stopped waiting.
                let _ = reply.send(result.clone());
            }
            if shutdown {
                return result;
            }
        }
    }

    /// Writes `events` as one write (anchored later, by [`Self::anchor`]).
    /// On a failed write the file is cut back to the last record written,
    /// so the log stays valid and the batch is lost.
    fn write_batch(&mut self, events: Vec<AuditEvent>) -> Result<()> {
        if let Some(p) = &self.poisoned {
            return Err(AuditError::Write(p.clone()));
        }
        let mut cur = self.cursor;
        let mut records = Vec::with_capacity(events.len());
        for event in &events {
            let ts = event.ts_unix_ms.unwrap_or_else(now_ms);
            match format::encode_body(cur.seq + 1, &cur.hash, ts, event) {
                Ok((body, hash)) => {
                    cur.seq += 1;
                    cur.hash = hash;
                    records.push((body, hash));
                }
                Err(e) => {
                    tracing::error!(kind = %event.kind, error = %e, "audit event not encodable; skipped")
                }
            }
        }
        // One signature per run of records (see crate::batch); a record
        // written alone is signed on its own.
        let mut buf = Vec::with_capacity(events.len() * 600);
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(crate::batch::MAX_TREE));
            let run = std::mem::replace(&mut records, rest);
            let n = run.len();
            if n == 1 {
                for (body, hash) in run {
                    let sig = self.key.sign(&hash).to_bytes();
                    buf.extend_from_slice(&format::finish_line(body, &hash, &sig, None));
                }
                continue;
            }
            let hashes: Vec<[u8; 32]> = run.iter().map(|(_, h)| *h).collect();
            let (root, proofs) = crate::batch::tree(&hashes);
            let sig = self
                .key
                .sign(&crate::batch::signed_message(&root))
                .to_bytes();
            for (i, ((body, hash), path)) in run.into_iter().zip(&proofs).enumerate() {
                let proof = format::encode_proof(i, n, path);
                buf.extend_from_slice(&format::finish_line(body, &hash, &sig, Some(&proof)));
            }
        }
        cur.offset += buf.len() as u64;
        let log_path = self.dir.join(LOG_FILE);
        if let Err(e) = self.file.write_all(&buf) {
            if let Err(e2) = self.file.set_len(self.cursor.offset) {
                self.poisoned = Some(format!(
                    "write to {} failed ({e}) and cutting back the partial batch failed too ({e2})",
                    log_path.display()
                ));
            }
            return Err(io_err("write", &log_path, e));
        }
        self.cursor = cur;
        Ok(())
    }

    /// Makes every record written durable (fsync, when `sync`) and anchors
    /// it with the signed head.
    fn anchor(&mut self) -> Result<()> {
        if let Some(p) = &self.poisoned {
            return Err(AuditError::Write(p.clone()));
        }
        if self.sync
            && let Err(e) = self.file.sync_data()
        {
            // After a failed fsync the kernel may have dropped the pages:
            // nothing written since the last good fsync can be trusted.
            let log_path = self.dir.join(LOG_FILE);
            self.poisoned = Some(format!("fsync of {} failed: {e}", log_path.display()));
            return Err(io_err("fsync", &log_path, e));
        }
        self.write_head()?;
        self.anchored = self.cursor;
        Ok(())
    }

    /// Writes the signed head for `cursor`: temp file, fsync, rename, fsync
    /// of the directory.
    fn write_head(&mut self) -> Result<()> {
        let head = Head {
            seq: self.cursor.seq,
            hash: self.cursor.hash,
            bytes: self.cursor.offset,
        };
        let raw = format::encode_head(&self.key, &head).map_err(AuditError::Encode)?;
        let tmp = self.dir.join("audit.head.tmp");
        let path = self.dir.join(HEAD_FILE);
        let mut f = File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        f.write_all(&raw).map_err(|e| io_err("write", &tmp, e))?;
        if self.sync {
            f.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
        }
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| io_err("rename", &tmp, e))?;
        if self.sync {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("fsync", &self.dir, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn handle_is_cheap_to_share() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<AuditLog>();
    }

    #[test]
    fn line_ending_at_finds_lines_longer_than_a_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let long = "x".repeat(10_000);
        fs::write(&path, format!("a\n{long}\nbc\n")).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(line_ending_at(&file, 2).unwrap(), (0, b"a\n".to_vec()));
        let (start, line) = line_ending_at(&file, 10_003).unwrap();
        assert_eq!(start, 2);
        assert_eq!(line, format!("{long}\n").into_bytes());
        assert_eq!(
            line_ending_at(&file, 10_006).unwrap(),
            (10_003, b"bc\n".to_vec())
        );
    }
}
