//! Where a configuration value came from, and how an error about it reads.
//!
//! Every config error reads `ORIGIN: FIELD: PROBLEM`:
//! * `ORIGIN` is the file the value was read from, or the environment
//!   variable that set it (`BATON_SESSIONS__MAX_STEPS`). figment tags each
//!   value with the provider it came from; the provider's [`Metadata`] names
//!   it (a file's path as its source; for the environment, [`BatonEnv`]'s
//!   interpolater turns a key path back into the variable's name).
//! * `FIELD` is the key as written in the file, arrays by index:
//!   `models[1].base_url` ([`field_path`] is the one place figment's
//!   `models.1.base_url` becomes that).
//! * `PROBLEM` says what is wrong, in our words rather than serde's
//!   (`unknown value "bogus": expected sync or buffered`).

use figment::error::{Actual, Kind};
use figment::providers::Env;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

/// A located config error, before it becomes the crate's `ConfigError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    /// The file or environment variable(s) the bad value came from.
    pub origin: String,
    /// The key as in the file, e.g. `models[1].base_url`; empty when the
    /// whole source is unreadable (a TOML syntax error).
    pub field: String,
    pub problem: String,
}

/// `BATON_<SECTION>__<KEY>` environment variables (a double underscore
/// between keys), as a figment provider whose metadata renders a key path
/// as the variable that sets it: `["sessions", "max_steps"]` →
/// `BATON_SESSIONS__MAX_STEPS`. Variables without a double underscore (such
/// as `BATON_SERVER_URL`, which the CLI reads) are not config.
pub(crate) struct BatonEnv {
    prefix: String,
}

impl BatonEnv {
    pub fn prefixed(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    fn env(&self) -> Env {
        Env::prefixed(&self.prefix)
            .filter(|k| k.as_str().contains("__"))
            .split("__")
    }
}

/// The variable that sets `keys`.
fn env_var(prefix: &str, keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
    format!("{}{}", prefix.to_ascii_uppercase(), keys.join("__"))
}

impl Provider for BatonEnv {
    fn metadata(&self) -> Metadata {
        let prefix = self.prefix.clone();
        Metadata::named("environment variable")
            .interpolater(move |_: &Profile, keys: &[&str]| env_var(&prefix, keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.env().data()
    }
}

/// `["models", "1", "base_url"]` → `models[1].base_url`.
pub(crate) fn field_path<S: AsRef<str>>(segments: &[S]) -> String {
    let mut out = String::new();
    for s in segments {
        let s = s.as_ref();
        if s.parse::<usize>().is_ok() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    out
}

/// `models[1].base_url` → `["models", "1", "base_url"]`.
fn segments(field: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next()
            && !key.is_empty()
        {
            out.push(key.to_string());
        }
        for index in pieces {
            out.push(index.trim_end_matches(']').to_string());
        }
    }
    out
}

/// A message of the form `key.path: problem`, as our own validators write
/// them when they run during deserialization (an `[[mcp]]` entry is checked
/// as it is parsed): the key path, relative to where the error occurred, and
/// the problem.
fn keyed_message(msg: &str) -> Option<(&str, &str)> {
    let (key, problem) = msg.split_once(": ")?;
    let is_key = !key.is_empty()
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '[' | ']')
        });
    is_key.then_some((key, problem))
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names {
        [] => "nothing".to_string(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// A value as the user wrote it: `"abc"`, `-1`, `true`.
fn actual(a: &Actual) -> String {
    match a {
        Actual::Bool(v) => v.to_string(),
        Actual::Unsigned(v) => v.to_string(),
        Actual::Signed(v) => v.to_string(),
        Actual::Float(v) => v.to_string(),
        Actual::Char(v) => format!("{v:?}"),
        Actual::Str(v) => format!("{v:?}"),
        Actual::Seq => "an array".to_string(),
        Actual::Map => "a table".to_string(),
        other => other.to_string(),
    }
}

/// The key path of a figment error (extended by the field an unknown- or
/// missing-field error is about) and its problem, in our words.
fn describe(e: &figment::Error) -> (Vec<String>, String) {
    let mut path = e.path.clone();
    let problem = match &e.kind {
        Kind::UnknownVariant(v, expected) => {
            format!("unknown value {v:?}: expected {}", one_of(expected))
        }
        // figment's path already ends with the unknown (or repeated) key.
        Kind::UnknownField(_, expected) => {
            format!("unknown field: expected {}", one_of(expected))
        }
        Kind::MissingField(f) => {
            path.push(f.to_string());
            "required, but not set".to_string()
        }
        Kind::DuplicateField(_) => "set twice".to_string(),
        Kind::InvalidType(found, expected) => {
            format!("expected {expected}, found {}", actual(found))
        }
        Kind::InvalidValue(found, expected) => {
            format!("invalid value {}: expected {expected}", actual(found))
        }
        Kind::InvalidLength(n, expected) => format!("{n} elements: expected {expected}"),
        Kind::Message(msg) => match keyed_message(msg) {
            Some((key, problem)) => {
                path.extend(segments(key));
                problem.to_string()
            }
            None => msg.clone(),
        },
        other => other.to_string(),
    };
    (path, problem)
}

/// The providers of a loaded figment, to say where a value came from.
pub(crate) struct Origins<'a> {
    pub fig: &'a Figment,
    /// Named when nothing else is known, e.g. for a default made invalid by
    /// other values; `None` without a file.
    pub file: Option<String>,
}

impl Origins<'_> {
    /// The provider that set `meta`'s value at `keys`, by name: a file's
    /// path as it was given, or what the provider's interpolater makes of
    /// the keys (for [`BatonEnv`], the variable).
    fn render(&self, meta: &Metadata, profile: &Profile, keys: &[String]) -> String {
        match &meta.source {
            Some(Source::File(path)) => path.display().to_string(),
            _ => meta.interpolate(profile, keys),
        }
    }

    /// The value at `keys`, or the deepest value on the way there, with the
    /// number of keys it took.
    fn find(&self, keys: &[String]) -> Option<(Value, usize)> {
        let first = keys.first()?;
        let mut at = self.fig.find_value(first).ok()?;
        let mut depth = 1;
        for key in &keys[1..] {
            let next = match &at {
                Value::Dict(_, d) => d.get(key).cloned(),
                Value::Array(_, a) => key.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
                _ => None,
            };
            match next {
                Some(v) => {
                    at = v;
                    depth += 1;
                }
                None => break,
            }
        }
        Some((at, depth))
    }

    /// Where each value under `value` (at `keys`) came from, once each.
    fn leaf_origins(&self, value: &Value, keys: &mut Vec<String>, out: &mut Vec<String>) {
        match value {
            Value::Dict(_, d) => {
                for (k, v) in d {
                    keys.push(k.clone());
                    self.leaf_origins(v, keys, out);
                    keys.pop();
                }
            }
            _ => {
                if let Some(meta) = self.fig.get_metadata(value.tag()) {
                    let o = self.render(meta, &Profile::Default, keys);
                    if !out.contains(&o) {
                        out.push(o);
                    }
                }
            }
        }
    }

    /// Where the value at `keys` came from. When it is not set (a default,
    /// or a missing key), the values around it: the table or array entry it
    /// belongs to. A table (which several providers may have contributed
    /// to) is named by the providers of the values in it.
    fn origin(&self, keys: &[String]) -> Option<String> {
        let (value, depth) = self.find(keys)?;
        let found = &keys[..depth];
        if let Value::Dict(..) = value {
            let mut out = Vec::new();
            self.leaf_origins(&value, &mut found.to_vec(), &mut out);
            return (!out.is_empty()).then(|| out.join(", "));
        }
        let meta = self.fig.get_metadata(value.tag())?;
        Some(self.render(meta, &Profile::Default, found))
    }

    fn fallback(&self) -> String {
        self.file
            .clone()
            .unwrap_or_else(|| "<defaults>".to_string())
    }

    /// A validation error on `field`, located; `related` is the key whose
    /// value caused it when `field` itself is not set.
    pub fn locate(&self, field: &str, problem: &str, related: Option<&str>) -> Located {
        let keys = segments(field);
        let set = self.find(&keys).is_some_and(|(_, d)| d == keys.len());
        let origin = if set {
            self.origin(&keys)
        } else {
            related
                .and_then(|r| self.origin(&segments(r)))
                .or_else(|| self.origin(&keys))
        };
        Located {
            origin: origin.unwrap_or_else(|| self.fallback()),
            field: field.to_string(),
            problem: problem.to_string(),
        }
    }

    /// figment's error, located. serde stops at the first bad value, so
    /// there is usually one; should figment chain more, they follow it.
    pub fn figment_error(&self, error: figment::Error) -> Located {
        let mut all = self.figment_errors(error).into_iter();
        let Some(mut first) = all.next() else {
            return Located {
                origin: self.fallback(),
                field: String::new(),
                problem: "cannot be read".to_string(),
            };
        };
        for more in all {
            first.problem = format!(
                "{}; {}: {}: {}",
                first.problem, more.origin, more.field, more.problem
            );
        }
        first
    }

    fn figment_errors(&self, error: figment::Error) -> Vec<Located> {
        error
            .into_iter()
            .map(|e| {
                let (keys, problem) = describe(&e);
                let origin = self
                    .find(&keys)
                    .filter(|(_, d)| *d == keys.len())
                    .and_then(|_| self.origin(&keys))
                    .or_else(|| {
                        let meta = e.metadata.as_ref()?;
                        let profile = e.profile.clone().unwrap_or_default();
                        Some(self.render(meta, &profile, &e.path))
                    })
                    .or_else(|| self.origin(&keys))
                    .unwrap_or_else(|| self.fallback());
                Located {
                    origin,
                    field: field_path(&keys),
                    problem,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_use_brackets_for_indices_both_ways() {
        assert_eq!(
            field_path(&["models", "0", "provider"]),
            "models[0].provider"
        );
        assert_eq!(
            field_path(&["routes", "2", "complexity", "signals", "0", "pattern"]),
            "routes[2].complexity.signals[0].pattern"
        );
        assert_eq!(field_path(&["sessions", "max_steps"]), "sessions.max_steps");
        assert_eq!(
            segments("routes[2].complexity.signals[0].pattern"),
            ["routes", "2", "complexity", "signals", "0", "pattern"]
        );
        assert_eq!(segments("sessions.max_steps"), ["sessions", "max_steps"]);
    }

    #[test]
    fn env_var_names_come_back_from_key_paths() {
        assert_eq!(
            env_var("BATON_", &["sessions", "max_steps"]),
            "BATON_SESSIONS__MAX_STEPS"
        );
        assert_eq!(
            env_var("BATON_", &["models", "0", "name"]),
            "BATON_MODELS__0__NAME"
        );
    }

    #[test]
    fn keyed_messages_and_lists_read_naturally() {
        assert_eq!(
            keyed_message("command: required for transport stdio (server \"n\")"),
            Some(("command", "required for transport stdio (server \"n\")"))
        );
        assert_eq!(keyed_message("invalid type: found map"), None);
        assert_eq!(keyed_message("TOML parse error: x"), None);
        assert_eq!(one_of(&["sync", "buffered"]), "sync or buffered");
        assert_eq!(one_of(&["a", "b", "c"]), "a, b or c");
    }
}
