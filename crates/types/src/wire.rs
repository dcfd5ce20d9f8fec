//! Fixed sets of values that travel as strings (journal records, the API,
//! JSON, config), each mapped to and from its wire string in exactly one
//! place: the [`wire_enum!`] invocation that declares it. Serde, `Display`,
//! `FromStr`, the journal and the API all go through that one table.

use std::fmt;

/// A value that is not one of an enum's wire strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    /// What the value is, e.g. `gate point`.
    pub what: &'static str,
    /// The string that was given (truncated to 64 characters).
    pub value: String,
    /// The strings that are accepted.
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expected: Vec<String> = self
            .expected
            .iter()
            .map(|s| {
                if s.is_empty() {
                    "\"\"".into()
                } else {
                    (*s).to_string()
                }
            })
            .collect();
        write!(
            f,
            "unknown {} {:?}: expected one of {}",
            self.what,
            self.value,
            expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownValue {}

/// Implemented by every enum declared with [`wire_enum!`].
pub trait WireEnum: Sized + Copy + 'static {
    /// What the value is, for error messages (e.g. `gate point`).
    const WHAT: &'static str;
    /// Every value, in declaration order.
    const ALL: &'static [Self];
    /// The wire string.
    fn as_str(&self) -> &'static str;
    /// From the wire string.
    fn parse(s: &str) -> Result<Self, UnknownValue>;
}

/// Declares a fieldless enum with its wire strings:
///
/// ```text
/// wire_enum! {
///     /// Where a turn waits.
///     pub enum GatePoint: "gate point" {
///         /// Before a tool call runs.
///         ToolCall = "tool_call",
///     }
/// }
/// ```
///
/// and derives from that one table `as_str`, `parse`, `FromStr`,
/// `Display`, serde (as the string) and, with the `bincode` feature, the
/// snapshot encoding.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "bincode", derive(bincode::Encode, bincode::Decode))]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $crate::wire::WireEnum for $name {
            const WHAT: &'static str = $what;
            const ALL: &'static [Self] = &[$($name::$variant),+];

            fn as_str(&self) -> &'static str {
                match self {
                    $( $name::$variant => $wire ),+
                }
            }

            fn parse(s: &str) -> Result<Self, $crate::wire::UnknownValue> {
                match s {
                    $( $wire => Ok($name::$variant), )+
                    other => Err($crate::wire::UnknownValue {
                        what: $what,
                        value: other.chars().take(64).collect(),
                        expected: &[$($wire),+],
                    }),
                }
            }
        }

        impl $name {
            /// The wire string.
            pub fn as_str(&self) -> &'static str {
                <Self as $crate::wire::WireEnum>::as_str(self)
            }

            /// From the wire string; the error names the value and what is accepted.
            pub fn parse(s: &str) -> Result<Self, $crate::wire::UnknownValue> {
                <Self as $crate::wire::WireEnum>::parse(s)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::wire::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                Self::parse(&s).map_err(::serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use wire_enum;
