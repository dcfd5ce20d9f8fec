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
//!   `body_bytes` are the body exactly as written. `<sig>` is the lowercase
//!   hex of the ed25519 signature over the 32 raw hash bytes.
//!
//! * `audit.head` — one line, `<json> TAB <sig> LF`, where `<json>` is
//!   `{"seq":N,"hash":"<64 hex>","bytes":B}`: the seq and hash of the last
//!   durable record and the length of `audit.log` just after it (seq 0, 64
//!   zeros and 0 for an empty log). `<sig>` is the hex ed25519 signature over
//!   the JSON bytes. It is rewritten after every batch: temp file, fsync,
//!   rename, fsync of the directory.
//!
//! The key file ([`AuditConfig::key_file`], by default `<dir>/audit.key`)
//! holds the 32-byte ed25519 seed as 64 hex digits, mode 0600; `<key
//! file>.pub` holds the public key as 64 hex digits. A missing key is
//! generated from OS randomness on first open.
//!
//! # Verification
//!
//! [`verify`] reads the log line by line. A line must split on tabs into
//! exactly three fields; the hash and signature must be lowercase hex of the
//! right length (so each byte has exactly one accepted value); the body must
//! be a JSON object with exactly the members above; its `seq` must be the
//! previous one plus one and its `prev` the previous record's hash; the hash
//! recomputed over the exact bytes must match; the signature must verify
//! (strict ed25519). The last line must end in a newline. Then the head: its
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

mod format;
mod keys;
mod verify;
mod writer;

use std::path::PathBuf;

pub use ed25519_dalek::VerifyingKey;

pub use crate::format::{HEAD_FILE, LOG_FILE};
pub use crate::keys::{parse_public_key_hex, public_key_hex, public_key_path, read_public_key};
pub use crate::verify::{BadRecord, ExportFilter, VerifyReport, export, verify};
pub use crate::writer::{AuditConfig, AuditLog};

/// One thing that happened, to be appended to the log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// What kind of event: `model_call`, `tool_call`, `gate_decision`, …
    pub kind: String,
    /// The session it belongs to, if any.
    pub session_id: Option<String>,
    /// Who did it: an agent, a user, an admin, if known.
    pub actor: Option<String>,
    /// The details.
    pub data: serde_json::Value,
    /// When it happened; `None` means when it is appended.
    pub ts_unix_ms: Option<u64>,
}

impl AuditEvent {
    /// An event of `kind` with `data`, no session or actor, stamped when
    /// appended.
    pub fn new(kind: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            session_id: None,
            actor: None,
            data,
            ts_unix_ms: None,
        }
    }

    /// Sets the session.
    #[must_use]
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Sets the actor.
    #[must_use]
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the timestamp.
    #[must_use]
    pub fn at(mut self, ts_unix_ms: u64) -> Self {
        self.ts_unix_ms = Some(ts_unix_ms);
        self
    }
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which file.
        path: PathBuf,
        /// Why it failed (in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// The key file (or its `.pub`) is unusable.
    #[error("key file {}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A public key given as hex is not valid.
    #[error("invalid public key: {0}")]
    PublicKey(String),
    /// Another process (or another open handle) holds the log.
    #[error("audit log in {} is in use by another process", dir.display())]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
    /// The log failed verification.
    #[error("audit log in {} failed verification: {report}", dir.display())]
    Tampered {
        /// The log directory.
        dir: PathBuf,
        /// The verification outcome, naming the first bad record.
        report: String,
    },
    /// The writer thread has stopped.
    #[error("audit log writer has stopped")]
    WriterGone,
    /// The writer could not write a batch; its events are lost.
    #[error("audit log write failed: {0}")]
    Write(String),
    /// An event or head could not be encoded.
    #[error("cannot encode audit record: {0}")]
    Encode(serde_json::Error),
}

/// Result of this crate.
pub type Result<T, E = AuditError> = std::result::Result<T, E>;
