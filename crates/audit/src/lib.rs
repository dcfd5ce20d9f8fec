//! A signed, hash-chained, append-only audit log.
//!
//! Every model call, tool call, gate decision, routing decision, policy
//! decision and admin action of the runtime is appended here as an
//! [`AuditEvent`]. Each record is chained to the one before it by a SHA-256
//! hash and signed with an ed25519 key, and a signed head file records how far
//! the log reached, so that [`verify`] detects any change, reordering,
//! deletion or truncation, and [`export`] hands records to a third party in a
//! form they can re-check.
//!
//! ```no_run
//! use baton_audit::{AuditConfig, AuditEvent, AuditLog};
//! # async fn run() -> Result<(), baton_audit::AuditError> {
//! let log = AuditLog::open(AuditConfig::in_dir("./baton-data/audit"))?;
//! log.append(AuditEvent::new("tool_call", serde_json::json!({"tool": "search"}))
//!     .session("s-1")
//!     .actor("agent"));
//! log.flush().await?; // written, fsynced and anchored by the head
//! let key = log.public_key();
//! log.close()?;
//! let report = baton_audit::verify("./baton-data/audit".as_ref(), &key);
//! assert!(report.ok(), "{report}");
//! # Ok(()) }
//! ```
//!
//! # Files
//!
//! The log directory ([`AuditConfig::path`]) holds:
//!
//! * `audit.log` — one record per line:
//!
//!   ```text
//!   <body> TAB <hash> TAB <sig> LF
//!   <body> TAB <hash> TAB <sig> TAB <proof> LF
//!   ```
//!
//!   `<body>` is compact JSON (no spaces, so never a raw tab or newline) with
//!   exactly these members in this order:
//!
//!   ```text
//!   {"seq":1,"ts_unix_ms":1700000000000,"kind":"tool_call","session_id":"s-1"|null,
//!    "actor":"agent"|null,"data":<any JSON>,"prev":"<64 hex>"}
//!   ```
//!
//!   `seq` starts at 1 and goes up by one per record with no gaps. `prev` is
//!   the `<hash>` of the previous record (64 zeros for seq 1).
//!   `<hash>` is the lowercase hex of `sha256(prev_hash_bytes || body_bytes)`,
//!   where `prev_hash_bytes` are the 32 raw bytes of the previous hash and
//!   `body_bytes` are the body exactly as written. A record written alone
//!   has three fields: `<sig>` is the lowercase hex of the ed25519
//!   signature over the 32 raw hash bytes. Records written together (up to
//!   256) share one signature and have four: `<sig>` is over
//!   `"baton-audit-batch\0" || root`, the root of a Merkle tree over their
//!   hashes (RFC 9162 §2.1.1), and `<proof>` is `<index>/<count>` then
//!   `,<64 hex>` per sibling hash from the record's leaf up — its inclusion
//!   proof, so each record verifies on its own (see the `batch` module).
//!
//! * `audit.head` — one line, `<json> TAB <sig> LF`, where `<json>` is
//!   `{"seq":N,"hash":"<64 hex>","bytes":B}`: the seq and hash of the last
//!   durable record and the length of `audit.log` just after it (seq 0, 64
//!   zeros and 0 for an empty log). `<sig>` is the hex ed25519 signature over
//!   the JSON bytes. Records are written in batches as they come; the log
//!   is fsynced and the head rewritten (temp file, fsync, rename, fsync of
//!   the directory) on every [`AuditLog::flush`], at shutdown, and at most
//!   200 ms after a record was written — one fsync and one head per
//!   interval, not per batch. Records after the head's seq are valid but
//!   not yet anchored.
//!
//! The key file ([`AuditConfig::key_file`], by default `<dir>/audit.key`)
//! holds the 32-byte ed25519 seed as 64 hex digits, mode 0600; `<key
//! file>.pub` holds the public key as 64 hex digits. A missing key is
//! generated from OS randomness on first open.
//!
//! # Verification
//!
//! [`verify`] reads the log line by line. A line must split on tabs into
//! three fields, or four with a proof; the hash and signature must be lowercase hex of the
//! right length (so each byte has exactly one accepted value); the body must
//! be a JSON object with exactly the members above; its `seq` must be the
//! previous one plus one and its `prev` the previous record's hash; the hash
//! recomputed over the exact bytes must match; the signature must verify
//! (strict ed25519; for a four-field line, over the root its proof leads
//! to). The last line must end in a newline. Then the head: its
//! signature must verify, the log must reach its seq, and the record at that
//! seq must have its hash and end at its byte length. Valid records after the
//! head's seq (a crash between the log's fsync and the head's rename) are
//! accepted and counted as [`VerifyReport::unanchored`]. Timestamps are not
//! checked. The first failure is named by line, byte offset and reason.
//!
//! # Threat model
//!
//! Detected, given the public key from a trusted place: any modification of
//! any byte of the log or head, records inserted, removed, duplicated or
//! reordered, the log truncated (at a record boundary or mid-line) or
//! deleted, and a head swapped for another log's.
//!
//! Not detected: anyone holding the private key, who can write a whole new
//! valid log; and a rollback that replaces both `audit.log` and `audit.head`
//! with an older complete copy of themselves, which is a valid log of fewer
//! records. The second is mitigated by periodically exporting the head (its
//! seq and hash) somewhere the runtime's host cannot rewrite, and checking
//! that the log still reaches it. Nor does the log prove that the runtime
//! appended every event it should have: it records what it was given.
//!
//! A log that is being written may be read mid-write; `verify` then reports a
//! partial last line. Verify a closed log, or rerun.

mod batch;
mod error;
mod event;
mod export_check;
mod format;
mod keys;
mod verify;
mod writer;

pub use ed25519_dalek::VerifyingKey;

pub use crate::error::{AuditError, Result};
pub use crate::event::AuditEvent;
pub use crate::export_check::{ExportReport, verify_export};
pub use crate::format::{HEAD_FILE, LOG_FILE};
pub use crate::keys::{parse_public_key_hex, public_key_hex, public_key_path, read_public_key};
pub use crate::verify::{
    BadRecord, ExportFilter, VerifyReport, export, export_anchored, verify, verify_anchored,
};
pub use crate::writer::{AuditConfig, AuditLog};
