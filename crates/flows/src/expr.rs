//! Expressions and templates: jq, by the `jaq` crates.
//!
//! Every expression in a flow definition is a jq filter run over the run's
//! data (`{input, steps, item, index, attempt, signal}`): conditions
//! (`.steps.classify.confidence > 0.8`), mappings (`{id: .input.id, total:
//! (.steps.extract.lines | map(.amount) | add)}`), lists to map over.
//! Filters are compiled once, when the definition loads, so a syntax error
//! or an unknown function is an error naming the flow, step and field.
//!
//! A template is text with `{{ filter }}` holes: `"Classify: {{ .input.text }}"`.
//! A hole that yields a string is inserted as is, anything else as JSON.

use std::fmt;
use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde_json::Value;

type Filter = jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>;

/// A compiled jq filter and its source.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    filter: Arc<Filter>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Expr {
    /// Compile `source`; the error says what is wrong and where.
    pub fn parse(source: &str) -> Result<Expr, String> {
        if source.trim().is_empty() {
            return Err("the expression is empty".into());
        }
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(
                &arena,
                File {
                    code: source,
                    path: (),
                },
            )
            .map_err(|errs| load_error(source, errs))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                let names: Vec<String> = errs
                    .into_iter()
                    .flat_map(|(_, e)| e.into_iter().map(|(name, kind)| undefined(name, &kind)))
                    .collect();
                format!("jq: {}", names.join(", "))
            })?;
        Ok(Expr {
            source: source.into(),
            filter: Arc::new(filter),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every output of the filter over `data`.
    pub fn all(&self, data: &Value) -> Result<Vec<Value>, String> {
        let input: Val = serde_json::from_value(data.clone())
            .map_err(|e| format!("jq `{}`: input: {e}", self.source))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = Vec::new();
        for v in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            let v = v.map_err(|e| format!("jq `{}`: {e}", self.source))?;
            out.push(to_json(&v).map_err(|e| format!("jq `{}`: {e}", self.source))?);
            if out.len() > MAX_OUTPUTS {
                return Err(format!(
                    "jq `{}`: more than {MAX_OUTPUTS} outputs",
                    self.source
                ));
            }
        }
        Ok(out)
    }

    /// The filter's first output over `data` (an error when it has none).
    pub fn eval(&self, data: &Value) -> Result<Value, String> {
        self.all(data)?
            .into_iter()
            .next()
            .ok_or_else(|| format!("jq `{}` produced no value", self.source))
    }

    /// Whether the filter's first output is truthy (neither `false` nor
    /// `null`); no output is false.
    pub fn test(&self, data: &Value) -> Result<bool, String> {
        Ok(self
            .all(data)?
            .first()
            .is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false))))
    }
}

/// Most values one filter may produce.
const MAX_OUTPUTS: usize = 100_000;

fn to_json(v: &Val) -> Result<Value, String> {
    serde_json::from_str(&v.to_string()).map_err(|e| format!("a value that is not JSON: {e}"))
}

fn load_error(source: &str, errs: jaq_core::load::Errors<&str, ()>) -> String {
    let mut parts = Vec::new();
    for (_, e) in errs {
        match e {
            jaq_core::load::Error::Io(v) => {
                parts.extend(v.into_iter().map(|(path, msg)| format!("{path}: {msg}")))
            }
            jaq_core::load::Error::Lex(v) => parts.extend(v.into_iter().map(|(expect, rest)| {
                format!(
                    "expected {} at byte {}",
                    expect.as_str(),
                    source.len().saturating_sub(rest.len())
                )
            })),
            jaq_core::load::Error::Parse(v) => parts.extend(v.into_iter().map(|(expect, rest)| {
                format!(
                    "expected {} at byte {}",
                    expect.as_str(),
                    source.len().saturating_sub(rest.len())
                )
            })),
        }
    }
    format!("jq syntax: {}", parts.join("; "))
}

fn undefined(name: &str, kind: &jaq_core::compile::Undefined) -> String {
    match kind {
        jaq_core::compile::Undefined::Filter(arity) => format!("unknown function {name}/{arity}"),
        jaq_core::compile::Undefined::Var => format!("unknown variable ${name}"),
        _ => format!("undefined {name}"),
    }
}

/// Text with `{{ filter }}` holes.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Hole(Expr),
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| {
                format!(
                    "a `{{{{` at byte {} has no closing `}}}}`",
                    source.len() - rest.len() + start
                )
            })?;
            parts.push(Part::Hole(Expr::parse(after[..end].trim())?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text with every hole filled from `data`.
    pub fn render(&self, data: &Value) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Hole(e) => match e.eval(data)? {
                    Value::String(s) => out.push_str(&s),
                    Value::Null => {}
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_map_and_test_run_data() {
        let data = json!({"input": {"items": [{"p": 1.5}, {"p": 2}], "c": 0.7}});
        let e = Expr::parse("{total: (.input.items | map(.p) | add), n: (.input.items | length)}")
            .expect("parse");
        assert_eq!(e.eval(&data).expect("eval"), json!({"total": 3.5, "n": 2}));
        assert!(
            Expr::parse(".input.c > 0.5")
                .expect("parse")
                .test(&data)
                .expect("test")
        );
        assert!(
            !Expr::parse(".input.missing")
                .expect("parse")
                .test(&data)
                .expect("test")
        );
        assert_eq!(
            Expr::parse(".input.items[]")
                .expect("parse")
                .all(&data)
                .expect("all")
                .len(),
            2
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = Expr::parse(".a | (").expect_err("syntax");
        assert!(e.starts_with("jq syntax: expected"), "{e}");
        let e = Expr::parse("nosuchfn(1)").expect_err("unknown");
        assert_eq!(e, "jq: unknown function nosuchfn/1");
        let e = Expr::parse(".a | error(\"boom\")")
            .expect("parse")
            .eval(&json!({}))
            .expect_err("runtime");
        assert!(e.contains("boom"), "{e}");
        assert!(Expr::parse("  ").is_err());
    }

    #[test]
    fn templates_fill_holes_with_strings_raw_and_values_as_json() {
        let t =
            Template::parse("Hi {{ .name }}, you owe {{ .total }} {{ .none }}!").expect("parse");
        assert_eq!(
            t.render(&json!({"name": "Bo", "total": {"eur": 3}}))
                .expect("render"),
            "Hi Bo, you owe {\"eur\":3} !"
        );
        assert!(Template::parse("{{ .a ").is_err());
        assert!(Template::parse("{{ ( }}").is_err());
        assert_eq!(
            Template::parse("plain")
                .expect("parse")
                .render(&json!(null))
                .expect("render"),
            "plain"
        );
    }
}
