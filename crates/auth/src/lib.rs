//! Baton's authentication building blocks: pure functions and small types
//! that the server wires into its interceptors and listeners. Nothing here
//! stores keys or serves requests.
//!
//! - [`keys`]: Baton API keys, `bk_<id8>_<secret>`. [`keys::generate`] makes
//!   one (256 random bits); only its id and SHA-256 are stored.
//!   [`keys::bearer`] takes the token out of an `authorization` header,
//!   [`keys::classify`] tells an API key from a JWT, [`keys::parse`] checks
//!   and hashes a key and [`keys::hash_matches`] compares hashes in constant
//!   time.
//! - [`jwt`]: JWTs from an external identity provider. [`jwt::JwtVerifier`]
//!   loads the provider's JWKS (file or URL, refreshed), verifies signature,
//!   algorithm, issuer, audience and expiry, maps claims to a
//!   [`Principal`](baton_types::Principal), and caches verified tokens until
//!   they expire.
//! - [`tls`]: rustls and tonic server TLS configurations from PEM files,
//!   mutual TLS with a client CA, and principals from client certificates.
//! - [`error`]: [`AuthError`], whose variant tells the server the status to
//!   answer with (`Missing`, `Malformed`, `Invalid`: unauthenticated;
//!   `Config`: startup or internal; `Unavailable`: retry later).
//!
//! ```
//! use baton_auth::keys::{self, Credential};
//!
//! # fn main() -> Result<(), baton_auth::AuthError> {
//! // Issue a key: show `plaintext` once, store `id` and `hash`.
//! let issued = keys::generate()?;
//!
//! // A request comes in.
//! let header = format!("Bearer {}", issued.plaintext);
//! match keys::classify(keys::bearer(&header)?)? {
//!     Credential::ApiKey(presented) => {
//!         // Look the stored hash up by `presented.id`, then:
//!         assert!(keys::hash_matches(&issued.hash, &presented.hash));
//!     }
//!     Credential::Jwt(_jwt) => { /* jwt::JwtVerifier::verify(_jwt).await */ }
//! }
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod jwt;
pub mod keys;
pub mod tls;

pub use error::{AuthError, Result};
