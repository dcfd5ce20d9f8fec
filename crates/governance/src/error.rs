//! The crate's errors.

/// Errors of governance configuration. Messages name the policy, rule and
/// field where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A configured value is invalid: `field` as in the file
    /// (`policies[0].rules[1].regex`), and what is wrong with it.
    #[error("{field}: {problem}")]
    Config { field: String, problem: String },
    /// A detector could not be built (a bad pattern or region).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
