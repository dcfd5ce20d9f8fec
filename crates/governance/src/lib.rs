//! Governance for Baton: what may reach a model, and in what form.
//!
//! - [`detect`]: built-in detectors for personal data, payment data and
//!   secrets (email, phone numbers via `phonenumber`, IBAN with its
//!   checksum, payment cards with Luhn, US SSN, UK NI numbers, IP
//!   addresses, key formats and high-entropy tokens), plus configured
//!   regexes and keyword lists, all in one `RegexSet` pass.
//! - [`policy`]: `[[policies]]`, named rule sets attached to tenants and
//!   routes and selected by session metadata, evaluated at a stage into a
//!   [`Verdict`] (what matched, what to block, redact or tag).
//! - [`check`]: what rules ask of a classifier (a model route, or one the
//!   embedder registers) or an evaluator route; the runtime makes the calls.
//! - [`pseudonym`]: reversible pseudonymisation with stable placeholders
//!   (`<EMAIL_1>`), restored in the answer, streamed or not.
//!
//! The runtime (`baton-runtime`) applies verdicts to sessions and journals
//! them; this crate knows nothing of sessions or storage.

pub mod check;
mod config;
pub mod detect;
mod error;
pub mod json;
pub mod policy;
pub mod pseudonym;

pub use check::{Answer, BoxFuture, Check, Classifier, Via};
pub use detect::{Builtin, CustomPattern, DetectorSet, Finding, Kind};
pub use error::{Error, Result};
pub use policy::{
    Blocked, GateSpec, GovernanceConfig, Held, NoEligibleGate, Outcome, Policies, PolicyConfig,
    PolicyHit, PolicyMatch, RuleConfig, Stage, Subject, Verdict,
};
pub use pseudonym::{Pseudonyms, StreamRestorer};
