use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifier of a session: a UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id's 16 bytes, as used in storage keys.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuild an id from its 16 storage bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The underlying UUID.
    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

/// The text was not a valid session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError {
    /// What was given (truncated to 64 characters).
    pub input: String,
}

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed session id {:?}: expected a UUID such as 0190f5c2-7a5e-7cc0-8000-000000000000",
            self.input
        )
    }
}

impl std::error::Error for ParseIdError {}

impl FromStr for SessionId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(SessionId)
            .map_err(|_| ParseIdError {
                input: s.chars().take(64).collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_creation() {
        let a = SessionId::new();
        let b = SessionId::new();
        assert!(a < b, "v7 ids must sort by creation time");
        assert_eq!(a, a.to_string().parse().unwrap());
        assert_eq!(a, SessionId::from_bytes(*a.as_bytes()));
    }

    #[test]
    fn malformed_ids_are_named_in_the_error() {
        let err = "not-a-uuid".parse::<SessionId>().unwrap_err();
        assert!(err.to_string().contains("not-a-uuid"));
    }
}

#[cfg(feature = "bincode")]
impl bincode::Encode for SessionId {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        bincode::Encode::encode(self.as_bytes(), encoder)
    }
}

#[cfg(feature = "bincode")]
impl<C> bincode::Decode<C> for SessionId {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Ok(SessionId::from_bytes(bincode::Decode::decode(decoder)?))
    }
}

#[cfg(feature = "bincode")]
bincode::impl_borrow_decode!(SessionId);
