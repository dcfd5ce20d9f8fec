//! JWT bearer tokens from an external identity provider (OIDC and the like).
//!
//! [`JwtSettings`] name the issuer, the audience, where the provider
//! publishes its keys (a JWKS file or URL) and which claims hold the
//! subject, tenant, roles and groups. [`JwtVerifier::verify`] checks a token
//! (signature with an allow-listed asymmetric algorithm, `exp`, `nbf`, `iss`,
//! `aud`, with leeway) and maps it to a [`baton_types::Principal`].
//!
//! Verified tokens are cached until they expire (bounded, keyed by the
//! token's SHA-256), so a client reusing its token pays for the signature
//! once; see the `cache` module. Built on `jsonwebtoken` with its pure-Rust
//! RustCrypto backend.

mod cache;
mod claims;
mod jwks;
mod settings;
mod verifier;

pub use settings::{JwtSettings, SUPPORTED_ALGORITHMS};
pub use verifier::{JwtVerifier, UNKNOWN_KID_REFETCH_INTERVAL};

#[cfg(test)]
mod tests;
