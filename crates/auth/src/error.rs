//! Errors of this crate.

/// Why a caller could not be authenticated, or why authentication could not
/// be set up. The variant tells the server which status to answer with; the
/// message names the problem and never contains a secret (no key, no token).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request carries no credentials at all (unauthenticated).
    #[error("no credentials: expected an `authorization: Bearer <token>` header")]
    Missing,
    /// Credentials are present but not of a shape we accept (unauthenticated).
    #[error("malformed credentials: {0}")]
    Malformed(String),
    /// Well-formed credentials that do not authenticate anyone: bad
    /// signature, unknown key, expired, wrong issuer or audience, revoked,
    /// unmapped certificate (unauthenticated).
    #[error("invalid credentials: {0}")]
    Invalid(String),
    /// Settings or files are wrong (a startup error, or internal at request
    /// time).
    #[error("auth configuration: {0}")]
    Config(String),
    /// Something authentication depends on is not there right now: the
    /// identity provider's key set could not be fetched, the OS has no
    /// randomness (unavailable; worth a retry).
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// Result alias of this crate.
pub type Result<T, E = AuthError> = std::result::Result<T, E>;
