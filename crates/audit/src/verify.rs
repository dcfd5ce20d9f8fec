//! Reading a log back: `verify` checks every record and the signed head;
//! `export` does the same while writing the matching records as JSONL.

use std::convert::Infallible;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use ed25519_dalek::VerifyingKey;

use crate::error::{AuditError, Result};
use crate::format::{self, GENESIS, GoodRecord, HEAD_FILE, Head, LOG_FILE};

/// The first record that failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// 1-based line number in `audit.log`; record `n` is on line `n`.
    pub line: u64,
    /// Offset of the start of that line in `audit.log`.
    pub byte_offset: u64,
    /// The seq the line's body claims, when it could be parsed.
    pub seq: Option<u64>,
    /// What is wrong, for people.
    pub reason: String,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} (line {}, byte {}): {}",
            self.line, self.line, self.byte_offset, self.reason
        )
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Records read and found valid before the first bad one (all of them
    /// when the log is intact).
    pub records: u64,
    /// The seq the signed head anchors, when the head is present and valid.
    pub head_seq: Option<u64>,
    /// Valid records after the head's seq: written, but the process stopped
    /// before the head was updated. They are part of a valid log.
    pub unanchored: u64,
    /// The first record (or missing record, or partial line) that failed.
    pub first_bad: Option<BadRecord>,
    /// A problem with `audit.head` itself: missing, malformed, bad signature.
    pub head_error: Option<String>,
    /// The log or head could not be read at all.
    pub io_error: Option<String>,
}

impl VerifyReport {
    /// True when every record, the chain, every signature and the head are
    /// valid and the log reaches the head.
    pub fn ok(&self) -> bool {
        self.first_bad.is_none() && self.head_error.is_none() && self.io_error.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.io_error {
            return write!(f, "FAILED: {e}");
        }
        if let Some(bad) = &self.first_bad {
            return write!(f, "TAMPERED: {bad}");
        }
        if let Some(e) = &self.head_error {
            return write!(f, "TAMPERED: {e}");
        }
        write!(
            f,
            "ok: {} records, chain and signatures valid, head at seq {}",
            self.records,
            self.head_seq.unwrap_or(0)
        )?;
        if self.unanchored > 0 {
            write!(
                f,
                " ({} valid unanchored records after the head)",
                self.unanchored
            )?;
        }
        Ok(())
    }
}

/// Where a walk is: the last good record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor {
    /// Seq (= line number) of the last good record, 0 before the first.
    pub seq: u64,
    /// Its hash ([`GENESIS`] before the first).
    pub hash: [u8; 32],
    /// Byte offset just after it.
    pub offset: u64,
}

impl Cursor {
    pub(crate) const START: Cursor = Cursor {
        seq: 0,
        hash: GENESIS,
        offset: 0,
    };
}

pub(crate) enum WalkError<E> {
    Read(io::Error),
    Sink(E),
}

/// Reads lines from `reader` (positioned at `start.offset`) and checks each
/// as the record after `start`, calling `on_record` for each good one, until
/// the end or the first bad line. When a record reaches `head.seq` it must
/// match the head's hash and byte length.
pub(crate) fn walk<R: BufRead, E>(
    mut reader: R,
    key: &VerifyingKey,
    start: Cursor,
    head: Option<&Head>,
    mut on_record: impl FnMut(&GoodRecord<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(Cursor, Option<BadRecord>), WalkError<E>> {
    let mut cur = start;
    let mut buf = Vec::with_capacity(512);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(WalkError::Read)?;
        if n == 0 {
            return Ok((cur, None));
        }
        let bad = |seq, reason: String| BadRecord {
            line: cur.seq + 1,
            byte_offset: cur.offset,
            seq,
            reason,
        };
        let Some(content) = buf.strip_suffix(b"\n") else {
            let reason = format!(
                "partial line of {n} bytes without a newline at the end of the log: a torn write or truncation"
            );
            return Ok((cur, Some(bad(None, reason))));
        };
        let good = match format::check_line(content, cur.seq + 1, &cur.hash, key) {
            Ok(good) => good,
            Err(e) => return Ok((cur, Some(bad(e.seq, e.reason)))),
        };
        let end = cur.offset + n as u64;
        if let Some(head) = head.filter(|h| h.seq == good.body.seq)
            && (head.hash != good.hash || head.bytes != end)
        {
            let reason = "valid record, but it differs from the one the signed head names: the log or the head was replaced".to_string();
            return Ok((cur, Some(bad(Some(good.body.seq), reason))));
        }
        on_record(&good).map_err(WalkError::Sink)?;
        cur = Cursor {
            seq: good.body.seq,
            hash: good.hash,
            offset: end,
        };
    }
}

/// Verifies the log in `dir` against `public_key`: every line's format, seq,
/// chain link, hash and signature, then that the log reaches the signed head.
pub fn verify(dir: &Path, public_key: &VerifyingKey) -> VerifyReport {
    match scan(dir, public_key, Reach::All, |_| Ok::<(), Infallible>(())) {
        Ok(report) => report,
        Err(never) => match never {},
    }
}

/// As [`verify`], but only up to the record the signed head names: for the
/// log of a running server, whose records after the head may be half
/// written at this moment. Records after the head are not read (flush the
/// log first to anchor everything appended so far).
pub fn verify_anchored(dir: &Path, public_key: &VerifyingKey) -> VerifyReport {
    match scan(dir, public_key, Reach::Head, |_| Ok::<(), Infallible>(())) {
        Ok(report) => report,
        Err(never) => match never {},
    }
}

/// How much of the log a scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// To the end of the file.
    All,
    /// To the end of the record the signed head names (all of it without a
    /// valid head).
    Head,
}

/// Verifies while handing each good record to `on_record`; an error from
/// `on_record` stops the scan.
fn scan<E>(
    dir: &Path,
    key: &VerifyingKey,
    reach: Reach,
    on_record: impl FnMut(&GoodRecord<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<VerifyReport, E> {
    let mut report = VerifyReport::default();
    let head_path = dir.join(HEAD_FILE);
    let head = match std::fs::read(&head_path) {
        Ok(raw) => match format::decode_head(&raw, key) {
            Ok(head) => Some(head),
            Err(e) => {
                report.head_error = Some(e);
                None
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report.head_error =
                Some("audit.head is missing: truncation cannot be ruled out".into());
            None
        }
        Err(e) => {
            report.io_error = Some(format!("cannot read {}: {e}", head_path.display()));
            return Ok(report);
        }
    };
    if let Some(h) = &head
        && h.seq == 0
        && (h.hash != GENESIS || h.bytes != 0)
    {
        report.head_error = Some("audit.head is at seq 0 but names a record".into());
    }
    let log_path = dir.join(LOG_FILE);
    let file = match File::open(&log_path) {
        Ok(f) => f,
        Err(e) => {
            report.io_error = Some(format!("cannot open {}: {e}", log_path.display()));
            return Ok(report);
        }
    };
    let limit = match (&head, reach) {
        (Some(h), Reach::Head) => h.bytes,
        _ => u64::MAX,
    };
    let (cur, first_bad) = match walk(
        BufReader::with_capacity(1 << 16, file.take(limit)),
        key,
        Cursor::START,
        head.as_ref(),
        on_record,
    ) {
        Ok(end) => end,
        Err(WalkError::Sink(e)) => return Err(e),
        Err(WalkError::Read(e)) => {
            report.io_error = Some(format!("cannot read {}: {e}", log_path.display()));
            return Ok(report);
        }
    };
    report.records = cur.seq;
    report.first_bad = first_bad;
    if let Some(head) = head {
        report.head_seq = Some(head.seq);
        if report.first_bad.is_none() && cur.seq < head.seq {
            report.first_bad = Some(BadRecord {
                line: cur.seq + 1,
                byte_offset: cur.offset,
                seq: None,
                reason: format!(
                    "missing: the log ends after record {} but the signed head is at seq {}: truncated",
                    cur.seq, head.seq
                ),
            });
        }
        report.unanchored = cur.seq.saturating_sub(head.seq);
    }
    Ok(report)
}

/// Which records [`export`] writes. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportFilter {
    /// Only records of this session.
    pub session_id: Option<String>,
    /// Only records with `ts_unix_ms >= since_ms`.
    pub since_ms: Option<u64>,
    /// Only records with `ts_unix_ms < until_ms`.
    pub until_ms: Option<u64>,
}

impl ExportFilter {
    fn matches(&self, rec: &GoodRecord<'_>) -> bool {
        let b = &rec.body;
        self.session_id
            .as_deref()
            .is_none_or(|s| b.session_id.as_deref() == Some(s))
            && self.since_ms.is_none_or(|t| b.ts_unix_ms >= t)
            && self.until_ms.is_none_or(|t| b.ts_unix_ms < t)
    }
}

/// Writes the records of the log in `dir` that match `filter` to `out` as
/// JSONL and returns how many it wrote.
///
/// Each line is the record's body with `"hash"` and `"sig"` appended as its
/// last two members: the body bytes are kept exactly, so a third party
/// recovers them by cutting the fixed-length suffix
/// `,"hash":"<64 hex>","sig":"<128 hex>"}` and appending `}`, and re-checks
/// `hash = sha256(prev || body)` and the signature over the hash.
///
/// The whole log is verified while it is read (as [`verify`] does); if it is
/// not intact the export fails naming the first bad record, after having
/// written the records before it — discard the output then.
pub fn export(
    dir: &Path,
    public_key: &VerifyingKey,
    filter: &ExportFilter,
    out: &mut impl Write,
) -> Result<u64> {
    export_scan(dir, public_key, filter, Reach::All, |_| true, out)
}

/// As [`export`], for the log of a running server: only up to the signed
/// head (as [`verify_anchored`]), and only records for which `keep` (given
/// the record's session id, if any) says yes — e.g. one tenant's sessions.
pub fn export_anchored(
    dir: &Path,
    public_key: &VerifyingKey,
    filter: &ExportFilter,
    keep: impl FnMut(Option<&str>) -> bool,
    out: &mut impl Write,
) -> Result<u64> {
    export_scan(dir, public_key, filter, Reach::Head, keep, out)
}

fn export_scan(
    dir: &Path,
    public_key: &VerifyingKey,
    filter: &ExportFilter,
    reach: Reach,
    mut keep: impl FnMut(Option<&str>) -> bool,
    out: &mut impl Write,
) -> Result<u64> {
    let mut count = 0u64;
    let report = scan(dir, public_key, reach, |rec| {
        if !filter.matches(rec) || !keep(rec.body.session_id.as_deref()) {
            return Ok(());
        }
        let open = rec.body_bytes.strip_suffix(b"}").unwrap_or(rec.body_bytes);
        out.write_all(open)?;
        out.write_all(b",\"hash\":\"")?;
        out.write_all(format::to_hex(&rec.hash).as_bytes())?;
        out.write_all(b"\",\"sig\":\"")?;
        out.write_all(rec.sig_hex)?;
        if let Some(proof) = rec.proof {
            out.write_all(b"\",\"proof\":\"")?;
            out.write_all(proof)?;
        }
        out.write_all(b"\"}\n")?;
        count += 1;
        Ok(())
    })
    .map_err(|error| AuditError::Io {
        op: "write",
        path: "export output".into(),
        error,
    })?;
    if !report.ok() {
        return Err(AuditError::Tampered {
            dir: dir.to_path_buf(),
            report: report.to_string(),
        });
    }
    out.flush().map_err(|error| AuditError::Io {
        op: "write",
        path: "export output".into(),
        error,
    })?;
    Ok(count)
}
