//! Lenient parsing of the request fields Baton reads.
//!
//! serde's error for a field of the wrong type names neither the parameter
//! (inside tagged and untagged enums it cannot even say where it is) nor,
//! in OpenAI's words, the problem. So each field Baton reads is a
//! [`Lenient`]: the body always parses, and the front door then checks each
//! field, naming it (`messages[2].content[0].image_url.url: must be a
//! non-empty string`).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A field as given: absent (missing or `null`), a value of its type, or a
/// value of another JSON kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Lenient<T> {
    #[default]
    Absent,
    Valid(T),
    /// A value of a kind `T` is not parsed from, or that `T` refused (a
    /// negative number for a `u64`).
    Invalid(JsonKind),
}

impl<T> Lenient<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }

    /// `Ok(None)` when absent, the value, or the kind given instead.
    pub fn get(&self) -> Result<Option<&T>, JsonKind> {
        match self {
            Self::Absent => Ok(None),
            Self::Valid(v) => Ok(Some(v)),
            Self::Invalid(kind) => Err(*kind),
        }
    }

    /// The kind of JSON given when it is not a `T` (`null` when absent).
    pub fn kind(&self) -> Option<JsonKind> {
        match self {
            Self::Absent => Some(JsonKind::Null),
            Self::Valid(_) => None,
            Self::Invalid(kind) => Some(*kind),
        }
    }
}

impl<T> From<T> for Lenient<T> {
    fn from(v: T) -> Self {
        Self::Valid(v)
    }
}

/// The kinds of JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl JsonKind {
    pub fn of(v: &Value) -> Self {
        match v {
            Value::Null => Self::Null,
            Value::Bool(_) => Self::Bool,
            Value::Number(_) => Self::Number,
            Value::String(_) => Self::String,
            Value::Array(_) => Self::Array,
            Value::Object(_) => Self::Object,
        }
    }
}

/// As in "must be a string, not a number".
impl fmt::Display for JsonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Array => "an array",
            Self::Object => "an object",
        })
    }
}

/// The kinds of JSON a type is parsed from. A [`Lenient`] value of another
/// kind is [`Lenient::Invalid`] without being tried: serde would otherwise
/// take a struct from an array, field by position.
pub trait JsonShape {
    const KINDS: &'static [JsonKind];
}

impl JsonShape for String {
    const KINDS: &'static [JsonKind] = &[JsonKind::String];
}

impl JsonShape for bool {
    const KINDS: &'static [JsonKind] = &[JsonKind::Bool];
}

impl JsonShape for u64 {
    const KINDS: &'static [JsonKind] = &[JsonKind::Number];
}

impl JsonShape for f64 {
    const KINDS: &'static [JsonKind] = &[JsonKind::Number];
}

impl<T> JsonShape for Vec<T> {
    const KINDS: &'static [JsonKind] = &[JsonKind::Array];
}

impl<V> JsonShape for BTreeMap<String, V> {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl JsonShape for Map<String, Value> {
    const KINDS: &'static [JsonKind] = &[JsonKind::Object];
}

impl<'de, T: DeserializeOwned + JsonShape> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let kind = JsonKind::of(&value);
        if kind == JsonKind::Null {
            return Ok(Self::Absent);
        }
        if !T::KINDS.contains(&kind) {
            return Ok(Self::Invalid(kind));
        }
        Ok(T::deserialize(value).map_or(Self::Invalid(kind), Self::Valid))
    }
}

/// Absent as `null` (skip it with `skip_serializing_if`); an invalid value
/// cannot be serialized: only what was understood is.
impl<T: Serialize> Serialize for Lenient<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Absent => s.serialize_none(),
            Self::Valid(v) => v.serialize(s),
            Self::Invalid(kind) => Err(S::Error::custom(format!(
                "a field given as {kind}, of the wrong kind, cannot be serialized"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Point {
        x: Lenient<u64>,
        y: Lenient<u64>,
    }

    impl JsonShape for Point {
        const KINDS: &'static [JsonKind] = &[JsonKind::Object];
    }

    fn parse<T: DeserializeOwned + JsonShape>(v: Value) -> Lenient<T> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn fields_of_the_wrong_kind_are_kept_as_their_kind() {
        assert_eq!(parse::<String>(json!("a")), Lenient::Valid("a".into()));
        assert_eq!(parse::<String>(json!(null)), Lenient::Absent);
        assert_eq!(
            parse::<String>(json!(1)),
            Lenient::Invalid(JsonKind::Number)
        );
        assert_eq!(parse::<u64>(json!(-5)), Lenient::Invalid(JsonKind::Number));
        assert_eq!(parse::<u64>(json!(2.5)), Lenient::Invalid(JsonKind::Number));
        assert_eq!(parse::<f64>(json!(2)), Lenient::Valid(2.0));
        assert_eq!(
            parse::<bool>(json!("yes")),
            Lenient::Invalid(JsonKind::String)
        );
        // A struct is not taken from an array, as serde would by position.
        assert_eq!(
            parse::<Point>(json!([1, 2])),
            Lenient::Invalid(JsonKind::Array)
        );
        let p = parse::<Point>(json!({"x": 1, "y": "2", "z": 3}));
        assert_eq!(
            p,
            Lenient::Valid(Point {
                x: Lenient::Valid(1),
                y: Lenient::Invalid(JsonKind::String),
            })
        );
        assert_eq!(parse::<Point>(json!({})), Lenient::Valid(Point::default()));
    }

    #[test]
    fn only_what_was_understood_serializes() {
        let p = Point {
            x: Lenient::Valid(1),
            y: Lenient::Absent,
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"x": 1, "y": null})
        );
        let p = Point {
            x: Lenient::Invalid(JsonKind::String),
            ..Point::default()
        };
        assert!(serde_json::to_value(&p).is_err());
        assert_eq!(Lenient::<u64>::Absent.kind(), Some(JsonKind::Null));
        assert_eq!(JsonKind::Object.to_string(), "an object");
    }
}
