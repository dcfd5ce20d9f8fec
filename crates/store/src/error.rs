use baton_types::{ErrorCode, SessionId};

/// Errors of the storage layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// RocksDB reported an error (I/O, corruption of its own files, ...).
    #[error("storage error: {0}")]
    Rocks(String),
    /// A journal record exists but cannot be decoded.
    #[error("journal record {seq} of session {session} cannot be decoded: {reason}")]
    CorruptRecord {
        session: SessionId,
        seq: u64,
        reason: String,
    },
    /// A session's metadata exists but cannot be decoded.
    #[error("metadata of session {session} cannot be decoded: {reason}")]
    CorruptMeta { session: SessionId, reason: String },
    /// A gate record exists but cannot be decoded.
    #[error("gate {gate} cannot be decoded: {reason}")]
    CorruptGate { gate: String, reason: String },
    /// A record refers to a payload that is missing.
    #[error("payload of journal record {seq} of session {session} is missing")]
    MissingPayload { session: SessionId, seq: u64 },
    /// The database cannot be reached now (connection refused or broken):
    /// a later try may succeed.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A write named a session another node owns (or nobody does): it was
    /// refused, and nothing of it landed. The session belongs elsewhere.
    #[error("not this node's session: {0}")]
    NotOwner(String),
    /// The store's configuration cannot be used (a bad URL, a schema
    /// newer than this build, an operation the backend does not offer).
    #[error("store configuration: {0}")]
    Config(String),
    /// The writer thread has stopped (the store is shutting down or crashed).
    #[error("the store is closed")]
    Closed,
    /// The snapshot codec failed.
    #[error("snapshot encoding failed: {0}")]
    Snapshot(String),
    /// Subject keys: a wrong master key, a value that does not open, a
    /// keystore that cannot be used.
    #[error("keys: {0}")]
    Keys(String),
    /// A sealed value, read by a store opened without the subject keys.
    #[error("a sealed value, and no keyring configured ([privacy] encryption)")]
    NoKeyring,
    /// The value was sealed under a subject key that was erased: it cannot
    /// be read again (crypto-shredding).
    #[error("the data was erased (its subject key {0} was destroyed)")]
    Erased(String),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Closed | Error::Unavailable(_) | Error::NotOwner(_) => ErrorCode::Unavailable,
            Error::Config(_) => ErrorCode::FailedPrecondition,
            Error::Erased(_) => ErrorCode::FailedPrecondition,
            _ => ErrorCode::Internal,
        }
    }

    /// True when the stored data itself is unreadable: retrying will not help.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::CorruptRecord { .. }
                | Error::CorruptMeta { .. }
                | Error::MissingPayload { .. }
                | Error::CorruptGate { .. }
                | Error::Erased(_)
        )
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Rocks(e.into_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
