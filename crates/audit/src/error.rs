//! Errors of the audit log.

use std::path::PathBuf;

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
