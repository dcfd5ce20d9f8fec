use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The text was not a valid id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError {
    /// What kind of id: `session`, `gate`.
    pub what: &'static str,
    /// What was given (truncated to 64 characters).
    pub input: String,
}

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed {} id {:?}: expected a UUID such as 0190f5c2-7a5e-7cc0-8000-000000000000",
            self.what, self.input
        )
    }
}

impl std::error::Error for ParseIdError {}

/// Declares a UUID v7 id type: time-ordered, printed and parsed as a UUID,
/// stored as its 16 bytes (and so encoded in snapshots).
macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(Uuid);

        impl $name {
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

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim()).map($name).map_err(|_| ParseIdError {
                    what: $what,
                    input: s.chars().take(64).collect(),
                })
            }
        }

        #[cfg(feature = "bincode")]
        impl bincode::Encode for $name {
            fn encode<E: bincode::enc::Encoder>(
                &self,
                encoder: &mut E,
            ) -> Result<(), bincode::error::EncodeError> {
                bincode::Encode::encode(self.as_bytes(), encoder)
            }
        }

        #[cfg(feature = "bincode")]
        impl<C> bincode::Decode<C> for $name {
            fn decode<D: bincode::de::Decoder<Context = C>>(
                decoder: &mut D,
            ) -> Result<Self, bincode::error::DecodeError> {
                Ok($name::from_bytes(bincode::Decode::decode(decoder)?))
            }
        }

        #[cfg(feature = "bincode")]
        bincode::impl_borrow_decode!($name);
    };
}

uuid_id!(
    /// Identifier of a session: a UUID v7, so ids sort by creation time.
    SessionId,
    "session"
);

uuid_id!(
    /// Identifier of a gate: a UUID v7, so gate ids sort by creation time.
    GateId,
    "gate"
);

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
