//! The tool registry: which tools exist, their compiled argument schemas, and
//! per-session allow-lists ([`ToolFilter`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use baton_types::ToolDefinition;
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::{Error, Result, Tool, ToolError, ToolSpec};

/// At most this many schema violations are listed in an `InvalidArguments` reason.
const MAX_LISTED_VIOLATIONS: usize = 5;
/// Each listed violation message is cut to about this many characters (the
/// validator quotes the offending value, which may be large).
const MAX_VIOLATION_CHARS: usize = 200;

struct Entry {
    tool: Arc<dyn Tool>,
    validator: Arc<jsonschema::Validator>,
}

impl Entry {
    fn compile(tool: Arc<dyn Tool>) -> Result<Self> {
        let spec = tool.spec();
        let validator =
            jsonschema::validator_for(&spec.parameters).map_err(|e| Error::InvalidSchema {
                tool: spec.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            tool,
            validator: Arc::new(validator),
        })
    }
}

#[derive(Default)]
struct Inner {
    tools: RwLock<BTreeMap<String, Entry>>,
    invalid_arguments: AtomicU64,
}

/// All tools Baton can run, by name. Cheap to clone; clones share the same
/// tools. Tools can be added and removed at runtime (MCP servers come and go).
#[derive(Clone, Default)]
pub struct ToolRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.read(|tools| tools.keys().cloned().collect());
        f.debug_struct("ToolRegistry")
            .field("tools", &names)
            .finish()
    }
}

impl ToolRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn read<T>(&self, f: impl FnOnce(&BTreeMap<String, Entry>) -> T) -> T {
        // A panic while holding the lock cannot leave the map half-updated:
        // every write is a single insert/remove/retain, so a poisoned lock is safe to use.
        let guard = self
            .inner
            .tools
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&guard)
    }

    fn write<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Entry>) -> T) -> T {
        let mut guard = self
            .inner
            .tools
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// Add a tool. Fails if its name is taken or its parameters schema does not compile.
    pub fn register(&self, tool: Arc<dyn Tool>) -> Result<()> {
        let entry = Entry::compile(tool)?;
        let name = entry.tool.spec().name.clone();
        self.write(|tools| {
            if tools.contains_key(&name) {
                return Err(Error::DuplicateTool(name));
            }
            tools.insert(name, entry);
            Ok(())
        })
    }

    /// Atomically replace every tool whose name starts with `prefix` by
    /// `tools` (e.g. all of an MCP server's `server.` tools after it lists
    /// them again). Readers see either the old set or the new one, never a mix.
    ///
    /// All of `tools` must start with `prefix`, have distinct names and valid
    /// schemas; otherwise nothing changes and the first problem is returned.
    pub fn replace_prefix(&self, prefix: &str, tools: Vec<Arc<dyn Tool>>) -> Result<()> {
        let mut fresh = BTreeMap::new();
        for tool in tools {
            let name = tool.spec().name.clone();
            if !name.starts_with(prefix) {
                return Err(Error::OutsidePrefix {
                    tool: name,
                    prefix: prefix.to_owned(),
                });
            }
            if fresh.contains_key(&name) {
                return Err(Error::DuplicateTool(name));
            }
            fresh.insert(name, Entry::compile(tool)?);
        }
        self.write(|current| {
            current.retain(|name, _| !name.starts_with(prefix));
            current.append(&mut fresh);
        });
        Ok(())
    }

    /// Remove a tool; returns it if it was registered.
    pub fn unregister(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.write(|tools| tools.remove(name)).map(|e| e.tool)
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.read(|tools| tools.get(name).map(|e| Arc::clone(&e.tool)))
    }

    /// Every registered tool's spec, sorted by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.read(|tools| tools.values().map(|e| e.tool.spec().clone()).collect())
    }

    /// The definitions the model is offered: the tools `filter` allows, sorted by name.
    pub fn definitions(&self, filter: &ToolFilter) -> Vec<ToolDefinition> {
        self.read(|tools| {
            tools
                .values()
                .map(|e| e.tool.spec())
                .filter(|spec| filter.allows(&spec.name))
                .map(|spec| ToolDefinition {
                    name: spec.name.clone(),
                    description: spec.description.clone(),
                    parameters: spec.parameters.to_string(),
                })
                .collect()
        })
    }

    /// Parse the model's argument text and check it against the tool's
    /// parameters schema. Empty text (some models send it for tools without
    /// parameters) counts as `{}`.
    pub fn validate(&self, name: &str, arguments: &str) -> Result<serde_json::Value, ToolError> {
        let validator = self
            .read(|tools| tools.get(name).map(|e| Arc::clone(&e.validator)))
            .ok_or_else(|| ToolError::UnknownTool(name.to_owned()))?;
        let invalid = |reason: String| {
            self.inner.invalid_arguments.fetch_add(1, Ordering::Relaxed);
            ToolError::InvalidArguments {
                tool: name.to_owned(),
                reason,
            }
        };
        let value: serde_json::Value = if arguments.trim().is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_str(arguments)
                .map_err(|e| invalid(format!("arguments are not valid JSON: {e}")))?
        };
        let violations: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| {
                let path = e.instance_path().to_string();
                let path = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                format!("{path}: {}", shorten(&e.to_string(), MAX_VIOLATION_CHARS))
            })
            .collect();
        if violations.is_empty() {
            return Ok(value);
        }
        let mut reason = violations
            .iter()
            .take(MAX_LISTED_VIOLATIONS)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if violations.len() > MAX_LISTED_VIOLATIONS {
            reason.push_str(&format!(
                "; and {} more",
                violations.len() - MAX_LISTED_VIOLATIONS
            ));
        }
        Err(invalid(reason))
    }

    /// How many argument texts [`ToolRegistry::validate`] has rejected as
    /// invalid JSON or not matching the schema.
    pub fn invalid_arguments_total(&self) -> u64 {
        self.inner.invalid_arguments.load(Ordering::Relaxed)
    }
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A session's tool allow-list: glob patterns over tool names (`"*"`, an
/// exact name, `"server.*"`, `"calc*"`, `"{a,b}"`).
#[derive(Clone)]
pub struct ToolFilter {
    patterns: Vec<String>,
    set: GlobSet,
    everything: bool,
}

impl fmt::Debug for ToolFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ToolFilter").field(&self.patterns).finish()
    }
}

impl Default for ToolFilter {
    /// Allows nothing: tools must be granted explicitly.
    fn default() -> Self {
        Self::none()
    }
}

impl ToolFilter {
    /// Build a filter allowing every name that matches one of `patterns`.
    pub fn new(patterns: &[String]) -> Result<Self> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let invalid = |reason: String| Error::InvalidPattern {
                pattern: pattern.clone(),
                reason,
            };
            if pattern.trim().is_empty() {
                return Err(invalid("must not be empty".to_owned()));
            }
            if pattern.chars().any(char::is_whitespace) {
                return Err(invalid("must not contain whitespace".to_owned()));
            }
            let glob = Glob::new(pattern).map_err(|e| invalid(e.kind().to_string()))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| Error::InvalidPattern {
            pattern: e.glob().unwrap_or_default().to_owned(),
            reason: e.kind().to_string(),
        })?;
        Ok(Self {
            patterns: patterns.to_vec(),
            set,
            everything: false,
        })
    }

    /// Allows every tool.
    pub fn all() -> Self {
        Self {
            patterns: vec!["*".to_owned()],
            set: GlobSet::empty(),
            everything: true,
        }
    }

    /// Allows no tool.
    pub fn none() -> Self {
        Self {
            patterns: Vec::new(),
            set: GlobSet::empty(),
            everything: false,
        }
    }

    pub fn allows(&self, name: &str) -> bool {
        self.everything || self.set.is_match(name)
    }

    /// The patterns this filter was built from.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    #[derive(Debug)]
    struct Fake {
        spec: ToolSpec,
        answer: &'static str,
    }

    #[async_trait::async_trait]
    impl Tool for Fake {
        fn spec(&self) -> &ToolSpec {
            &self.spec
        }
        async fn call(&self, _arguments: serde_json::Value) -> Result<String, ToolError> {
            Ok(self.answer.to_owned())
        }
    }

    fn tool_with(name: &str, answer: &'static str, parameters: serde_json::Value) -> Arc<dyn Tool> {
        Arc::new(Fake {
            spec: ToolSpec {
                name: name.to_owned(),
                description: format!("{name} tool"),
                parameters,
                output_schema: None,
                idempotent: true,
                timeout: Duration::from_secs(1),
            },
            answer,
        })
    }

    fn tool(name: &str) -> Arc<dyn Tool> {
        tool_with(name, "", json!({"type": "object"}))
    }

    fn names(registry: &ToolRegistry) -> Vec<String> {
        registry.specs().into_iter().map(|s| s.name).collect()
    }

    fn weather() -> Arc<dyn Tool> {
        tool_with(
            "weather",
            "sunny",
            json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer", "minimum": 1}
                },
                "required": ["city"],
                "additionalProperties": false
            }),
        )
    }

    #[test]
    fn register_rejects_duplicates_and_specs_are_sorted() {
        let registry = ToolRegistry::new();
        registry.register(tool("zeta")).unwrap();
        registry.register(tool("alpha")).unwrap();
        registry.register(tool("mid")).unwrap();
        let err = registry.register(tool("alpha")).unwrap_err();
        assert_eq!(err, Error::DuplicateTool("alpha".into()));
        assert_eq!(names(&registry), ["alpha", "mid", "zeta"]);
    }

    #[test]
    fn register_rejects_an_invalid_schema_naming_the_tool() {
        let registry = ToolRegistry::new();
        let err = registry
            .register(tool_with("broken", "", json!({"type": "no-such-type"})))
            .unwrap_err();
        assert!(matches!(&err, Error::InvalidSchema { tool, .. } if tool == "broken"));
        assert!(err.to_string().contains("broken"), "{err}");
        assert!(registry.get("broken").is_none());
    }

    #[test]
    fn get_and_unregister() {
        let registry = ToolRegistry::new();
        registry.register(tool("a")).unwrap();
        assert_eq!(registry.get("a").unwrap().spec().name, "a");
        assert!(registry.unregister("a").is_some());
        assert!(registry.get("a").is_none());
        assert!(registry.unregister("a").is_none());
        // The name is free again.
        registry.register(tool("a")).unwrap();
    }

    #[test]
    fn replace_prefix_swaps_only_that_namespace() {
        let registry = ToolRegistry::new();
        for name in ["fs.read", "fs.write", "fsx.other", "calculator"] {
            registry.register(tool(name)).unwrap();
        }
        registry
            .replace_prefix("fs.", vec![tool("fs.list"), tool("fs.read")])
            .unwrap();
        assert_eq!(
            names(&registry),
            ["calculator", "fs.list", "fs.read", "fsx.other"]
        );
        registry.replace_prefix("fs.", Vec::new()).unwrap();
        assert_eq!(names(&registry), ["calculator", "fsx.other"]);
    }

    #[test]
    fn replace_prefix_changes_nothing_when_one_tool_is_bad() {
        let registry = ToolRegistry::new();
        registry.register(tool("fs.read")).unwrap();
        let bad = tool_with("fs.bad", "", json!({"type": 7}));
        let err = registry
            .replace_prefix("fs.", vec![tool("fs.list"), bad])
            .unwrap_err();
        assert!(matches!(err, Error::InvalidSchema { .. }), "{err}");
        let err = registry
            .replace_prefix("fs.", vec![tool("fs.list"), tool("calculator")])
            .unwrap_err();
        assert!(matches!(err, Error::OutsidePrefix { .. }), "{err}");
        let err = registry
            .replace_prefix("fs.", vec![tool("fs.a"), tool("fs.a")])
            .unwrap_err();
        assert_eq!(err, Error::DuplicateTool("fs.a".into()));
        assert_eq!(names(&registry), ["fs.read"]);
    }

    #[test]
    fn replace_prefix_is_atomic_for_concurrent_readers() {
        let registry = ToolRegistry::new();
        let old = || vec![tool("s.a1"), tool("s.a2"), tool("s.a3")];
        let new = || vec![tool("s.b1"), tool("s.b2"), tool("s.b3")];
        registry.replace_prefix("s.", old()).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let registry = registry.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) || reads == 0 {
                    let names = names(&registry);
                    let olds = names.iter().filter(|n| n.starts_with("s.a")).count();
                    let news = names.iter().filter(|n| n.starts_with("s.b")).count();
                    assert!(
                        (olds, news) == (3, 0) || (olds, news) == (0, 3),
                        "saw a mix: {names:?}"
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..2_000 {
            registry
                .replace_prefix("s.", if i % 2 == 0 { new() } else { old() })
                .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn definitions_follow_the_filter() {
        let registry = ToolRegistry::new();
        registry.register(weather()).unwrap();
        registry.register(tool("fs.read")).unwrap();
        let defs = registry.definitions(&ToolFilter::new(&["weather".into()]).unwrap());
        assert_eq!(defs.len(), 1);
        assert_eq!(defs[0].name, "weather");
        assert_eq!(defs[0].description, "weather tool");
        let params: serde_json::Value = serde_json::from_str(&defs[0].parameters).unwrap();
        assert_eq!(params["required"], json!(["city"]));
        assert_eq!(registry.definitions(&ToolFilter::all()).len(), 2);
        assert!(registry.definitions(&ToolFilter::none()).is_empty());
    }

    #[test]
    fn validate_accepts_matching_arguments() {
        let registry = ToolRegistry::new();
        registry.register(weather()).unwrap();
        let value = registry
            .validate("weather", r#"{"city": "Oslo", "days": 2}"#)
            .unwrap();
        assert_eq!(value, json!({"city": "Oslo", "days": 2}));
        assert_eq!(registry.invalid_arguments_total(), 0);
    }

    #[test]
    fn validate_reports_a_missing_required_field() {
        let registry = ToolRegistry::new();
        registry.register(weather()).unwrap();
        let err = registry.validate("weather", r#"{"days": 2}"#).unwrap_err();
        let ToolError::InvalidArguments { tool, reason } = &err else {
            panic!("expected InvalidArguments, got {err:?}");
        };
        assert_eq!(tool, "weather");
        assert!(
            reason.contains("\"city\" is a required property"),
            "{reason}"
        );
        assert!(reason.starts_with("/:"), "{reason}");
        assert_eq!(registry.invalid_arguments_total(), 1);
    }

    #[test]
    fn validate_reports_wrong_types_with_their_paths() {
        let registry = ToolRegistry::new();
        registry.register(weather()).unwrap();
        let err = registry
            .validate("weather", r#"{"city": 5, "days": "two", "extra": true}"#)
            .unwrap_err();
        let reason = match &err {
            ToolError::InvalidArguments { reason, .. } => reason.clone(),
            other => panic!("expected InvalidArguments, got {other:?}"),
        };
        assert!(
            reason.contains("/city: 5 is not of type \"string\""),
            "{reason}"
        );
        assert!(
            reason.contains("/days: \"two\" is not of type \"integer\""),
            "{reason}"
        );
        assert!(reason.contains("extra"), "{reason}");
        assert!(
            err.to_string()
                .starts_with("invalid arguments for weather: ")
        );
        assert_eq!(registry.invalid_arguments_total(), 1);
    }

    #[test]
    fn validate_keeps_the_reason_concise() {
        let registry = ToolRegistry::new();
        let props: serde_json::Map<String, serde_json::Value> = (0..10)
            .map(|i| (format!("f{i}"), json!({"type": "integer"})))
            .collect();
        registry
            .register(tool_with(
                "many",
                "",
                json!({"type": "object", "properties": props}),
            ))
            .unwrap();
        let long = "x".repeat(5_000);
        let args: serde_json::Map<String, serde_json::Value> =
            (0..10).map(|i| (format!("f{i}"), json!(long))).collect();
        let err = registry
            .validate("many", &serde_json::Value::Object(args).to_string())
            .unwrap_err();
        let ToolError::InvalidArguments { reason, .. } = err else {
            panic!("expected InvalidArguments");
        };
        assert!(reason.ends_with("; and 5 more"), "{reason}");
        assert!(reason.len() < 2_000, "{} chars", reason.len());
    }

    #[test]
    fn validate_rejects_bad_json() {
        let registry = ToolRegistry::new();
        registry.register(weather()).unwrap();
        let err = registry
            .validate("weather", r#"{"city": "Oslo""#)
            .unwrap_err();
        let ToolError::InvalidArguments { reason, .. } = &err else {
            panic!("expected InvalidArguments, got {err:?}");
        };
        assert!(
            reason.starts_with("arguments are not valid JSON"),
            "{reason}"
        );
        assert_eq!(registry.invalid_arguments_total(), 1);
        registry.validate("weather", "[1,").unwrap_err();
        assert_eq!(registry.invalid_arguments_total(), 2);
    }

    #[test]
    fn validate_treats_empty_text_as_an_empty_object() {
        let registry = ToolRegistry::new();
        registry.register(tool("noargs")).unwrap();
        assert_eq!(registry.validate("noargs", " ").unwrap(), json!({}));
        // ...which still has to satisfy the schema.
        registry.register(weather()).unwrap();
        assert!(registry.validate("weather", "").is_err());
    }

    #[test]
    fn validate_unknown_tool() {
        let registry = ToolRegistry::new();
        let err = registry.validate("nope", "{}").unwrap_err();
        assert_eq!(err, ToolError::UnknownTool("nope".into()));
        assert_eq!(registry.invalid_arguments_total(), 0);
    }

    fn filter(patterns: &[&str]) -> ToolFilter {
        ToolFilter::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn filter_patterns() {
        let f = filter(&["calculator", "fs.*", "web*"]);
        assert!(f.allows("calculator"));
        assert!(!f.allows("calculator2"));
        assert!(!f.allows("calc"));
        assert!(f.allows("fs.read"));
        assert!(f.allows("fs."));
        assert!(!f.allows("fs"));
        assert!(!f.allows("fsx.read"));
        assert!(f.allows("web"));
        assert!(f.allows("websearch"));
        assert!(!f.allows("the_web"));

        let star = filter(&["*"]);
        assert!(star.allows("anything.at.all"));
        assert!(ToolFilter::all().allows("x.y"));
        assert!(!ToolFilter::none().allows("x"));
        assert!(!filter(&[]).allows("x"));
        assert!(!ToolFilter::default().allows("x"));
    }

    #[test]
    fn filter_rejects_bad_patterns_naming_them() {
        for bad in ["", "  ", "fs.[", "a b", "{a,b"] {
            let err = ToolFilter::new(&["ok".into(), bad.into()]).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidPattern { pattern, .. } if pattern == bad),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
