//! Checking an exported file (JSONL from [`crate::export`]) without the log:
//! what a third party holding only the export and the public key can prove.
//!
//! Each line is a record's exact body bytes with `"hash"` and `"sig"` (and,
//! for a record signed with its batch, `"proof"`) appended as its last
//! members. For every line: the body is a valid record, `hash = sha256(prev
//! || body)`, and the signature over the hash (or over the root its proof
//! leads to) verifies with the key — so the record is unaltered and was
//! written by the key's holder. Across lines: seqs strictly increase, and where two records
//! are adjacent in the log (seq n and n + 1) the second's `prev` is the
//! first's hash. A filtered export (one session, a time range) leaves gaps
//! where other records were; those are counted, not refused. What an export
//! cannot prove: that records outside it (or after its last one) exist or
//! not — verify the log itself (`verify`) for completeness.

use std::fmt;
use std::io::BufRead;

use ed25519_dalek::VerifyingKey;

use crate::format::{self, BodyIn, from_hex};

/// The outcome of [`verify_export`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportReport {
    /// Records read and found valid before the first bad one.
    pub records: u64,
    /// The seqs of the first and last valid record.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Adjacent pairs (seq n, n + 1) whose chain link was checked.
    pub chained: u64,
    /// Places where records of the log are not in the export (seq jumps).
    pub gaps: u64,
    /// The first line that failed: (1-based line number, reason).
    pub first_bad: Option<(u64, String)>,
    /// The export could not be read.
    pub io_error: Option<String>,
}

impl ExportReport {
    /// True when every line checked.
    pub fn ok(&self) -> bool {
        self.first_bad.is_none() && self.io_error.is_none()
    }

    /// True when the export also starts at seq 1 and has no gaps: the whole
    /// log up to its last record (an unfiltered export).
    pub fn complete(&self) -> bool {
        self.ok() && self.gaps == 0 && self.first_seq.is_none_or(|s| s == 1)
    }
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.io_error {
            return write!(f, "FAILED: {e}");
        }
        if let Some((line, reason)) = &self.first_bad {
            return write!(f, "TAMPERED: line {line}: {reason}");
        }
        write!(
            f,
            "ok: {} records (seq {}..{}), every hash and signature valid; {} adjacent pairs chained, {} gaps",
            self.records,
            self.first_seq.unwrap_or(0),
            self.last_seq.unwrap_or(0),
            self.chained,
            self.gaps
        )?;
        if self.gaps > 0 {
            write!(f, " (records of the log not in this export)")?;
        }
        Ok(())
    }
}

/// `,"hash":"<64 hex>","sig":"<128 hex>"` — what export appends to every
/// record's body, then `,"proof":"<proof>"` for a record signed with its
/// batch, then the closing `}`.
const HASH_SIG_LEN: usize = 9 + 64 + 9 + 128;

/// One export line split into the record's body bytes, hash, signature
/// and, for a record signed with its batch, inclusion proof.
struct Exported {
    body: Vec<u8>,
    hash: [u8; 32],
    sig: [u8; 64],
    proof: Option<Vec<u8>>,
}

/// True for the bytes a proof is written with.
fn proof_byte(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b',' || b == b'/'
}

fn split_line(line: &[u8]) -> Result<Exported, String> {
    const MISSING: &str = "does not end with \"hash\" and \"sig\" members";
    let inner = line
        .strip_suffix(b"\"}".as_slice())
        .ok_or("does not end with a string member and }")?;
    // The last member's value: proof or signature bytes back to its quote
    // (neither contains a quote, so this is where the member starts).
    let start = inner.iter().rposition(|&b| !proof_byte(b)).ok_or(MISSING)?;
    let (before, value) = inner.split_at(start + 1);
    let (rest, proof) = match before.strip_suffix(b"\",\"proof\":\"".as_slice()) {
        Some(rest) => (rest, Some(value.to_vec())),
        None => (inner, None),
    };
    if rest.len() < HASH_SIG_LEN + 2 {
        return Err("too short to be an exported record".into());
    }
    let (head, suffix) = rest.split_at(rest.len() - HASH_SIG_LEN);
    let hash_hex = suffix
        .strip_prefix(b",\"hash\":\"".as_slice())
        .and_then(|s| s.get(..64))
        .ok_or(MISSING)?;
    let sig_hex = suffix[9 + 64..]
        .strip_prefix(b"\",\"sig\":\"".as_slice())
        .ok_or(MISSING)?;
    let hash = from_hex::<32>(hash_hex).ok_or("hash is not 64 lowercase hex digits")?;
    let sig = from_hex::<64>(sig_hex).ok_or("sig is not 128 lowercase hex digits")?;
    let mut body = head.to_vec();
    body.push(b'}');
    Ok(Exported {
        body,
        hash,
        sig,
        proof,
    })
}

/// Checks an exported file against `public_key` (see the module docs).
pub fn verify_export(reader: impl BufRead, public_key: &VerifyingKey) -> ExportReport {
    let mut report = ExportReport::default();
    let mut last: Option<(u64, [u8; 32])> = None;
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i as u64 + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                report.io_error = Some(format!("cannot read the export: {e}"));
                return report;
            }
        };
        let checked = split_line(&line).and_then(
            |Exported {
                 body: body_bytes,
                 hash,
                 sig,
                 proof,
             }| {
                let body: BodyIn = serde_json::from_slice(&body_bytes)
                    .map_err(|e| format!("body is not a valid record: {e}"))?;
                let prev = from_hex::<32>(body.prev.as_bytes())
                    .ok_or("prev is not 64 lowercase hex digits")?;
                if format::record_hash(&prev, &body_bytes) != hash {
                    return Err("hash mismatch: body or prev was altered".into());
                }
                format::check_signature(&hash, &sig, proof.as_deref(), public_key)?;
                Ok((body.seq, prev, hash))
            },
        );
        let (seq, prev, hash) = match checked {
            Ok(c) => c,
            Err(reason) => {
                report.first_bad = Some((n, reason));
                return report;
            }
        };
        match last {
            Some((last_seq, _)) if seq <= last_seq => {
                report.first_bad = Some((
                    n,
                    format!("seq {seq} after seq {last_seq}: records were reordered or duplicated"),
                ));
                return report;
            }
            Some((last_seq, last_hash)) if seq == last_seq + 1 => {
                if prev != last_hash {
                    report.first_bad = Some((
                        n,
                        format!(
                            "prev of seq {seq} is not the hash of seq {last_seq}: a record was altered or replaced"
                        ),
                    ));
                    return report;
                }
                report.chained += 1;
            }
            Some(_) => report.gaps += 1,
            None => {
                if seq == 1 && prev != format::GENESIS {
                    report.first_bad = Some((n, "seq 1 does not chain from genesis".into()));
                    return report;
                }
                report.first_seq = Some(seq);
            }
        }
        report.records += 1;
        report.last_seq = Some(seq);
        last = Some((seq, hash));
    }
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::{AuditConfig, AuditEvent, AuditLog, ExportFilter, export};

    fn log_with(n: u64) -> (tempfile::TempDir, std::path::PathBuf, VerifyingKey) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let log = AuditLog::open(AuditConfig::in_dir(&dir)).unwrap();
        for i in 0..n {
            let session = if i % 3 == 0 { "a" } else { "b" };
            log.append(
                AuditEvent::new("tool_call", serde_json::json!({ "i": i })).session(session),
            );
        }
        let key = crate::parse_public_key_hex(&log.public_key_hex()).unwrap();
        log.close().unwrap();
        (tmp, dir, key)
    }

    fn exported(dir: &std::path::Path, key: &VerifyingKey, filter: ExportFilter) -> Vec<u8> {
        let mut out = Vec::new();
        export(dir, key, &filter, &mut out).unwrap();
        out
    }

    #[test]
    fn a_full_export_verifies_and_is_complete() {
        let (_tmp, dir, key) = log_with(9);
        let out = exported(&dir, &key, ExportFilter::default());
        let r = verify_export(out.as_slice(), &key);
        assert!(r.complete(), "{r}");
        assert_eq!((r.records, r.chained, r.gaps), (9, 8, 0));
        assert_eq!((r.first_seq, r.last_seq), (Some(1), Some(9)));
    }

    #[test]
    fn a_filtered_export_verifies_with_gaps_but_is_not_complete() {
        let (_tmp, dir, key) = log_with(9);
        let filter = ExportFilter {
            session_id: Some("a".into()),
            ..Default::default()
        };
        let r = verify_export(exported(&dir, &key, filter).as_slice(), &key);
        assert!(r.ok(), "{r}");
        assert!(!r.complete());
        assert_eq!((r.records, r.gaps), (3, 2));
    }

    #[test]
    fn every_flipped_byte_a_wrong_key_and_reordering_are_caught() {
        let (_tmp, dir, key) = log_with(4);
        let out = exported(&dir, &key, ExportFilter::default());
        for i in 0..out.len() {
            if out[i] == b'\n' {
                continue;
            }
            let mut bad = out.clone();
            bad[i] ^= 0x01;
            let r = verify_export(bad.as_slice(), &key);
            assert!(!r.ok(), "byte {i} flipped: {r}");
        }
        let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
        assert!(!verify_export(out.as_slice(), &other).ok());
        let lines: Vec<&[u8]> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let swapped = [lines[1], lines[0], lines[2], lines[3]].join(&b'\n');
        assert!(!verify_export(swapped.as_slice(), &key).ok());
        // A record removed from a full export shows as a gap.
        let removed = [lines[0], lines[2], lines[3]].join(&b'\n');
        let r = verify_export(removed.as_slice(), &key);
        assert!(r.ok() && !r.complete(), "{r}");
    }
}
