//! Output checks over an answer's text: JSON Schema (the answer as JSON,
//! or JSON in one Markdown code fence) and links to hosts outside an
//! allow-list.

use serde_json::Value;

use crate::detect::{Finding, Kind};

/// The answer text as JSON: the whole text, or the inside of one Markdown
/// code fence around it.
pub fn answer_json(text: &str) -> Option<Value> {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str(t) {
        return Some(v);
    }
    let inner = t.strip_prefix("```")?.strip_suffix("```")?;
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    serde_json::from_str(inner.trim()).ok()
}

/// Whether the answer parses as JSON and satisfies `schema`; the error
/// names up to three violations by JSON pointer.
pub fn schema_check(schema: &jsonschema::Validator, text: &str) -> Result<(), String> {
    let Some(v) = answer_json(text) else {
        return Err("json_schema: the answer is not valid JSON".to_string());
    };
    let errors: Vec<String> = schema
        .iter_errors(&v)
        .take(3)
        .map(|e| {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() { "/".into() } else { path };
            format!("{path}: {e}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "json_schema: the answer does not match the schema: {}",
            errors.join("; ")
        ))
    }
}

static LINK: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"(?i)https?://([a-z0-9.-]+)(?::[0-9]+)?(?:[/?#][^\s)\]>]*)?").ok()
});

/// Each `http(s)` link in `text` whose host is not one of `allowed` or a
/// subdomain of one.
pub fn foreign_links(text: &str, allowed: &[String]) -> Vec<Finding> {
    let Some(link) = LINK.as_ref() else {
        return Vec::new();
    };
    link.captures_iter(text)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let host = c
                .get(1)?
                .as_str()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let ok = allowed
                .iter()
                .any(|d| host == *d || host.ends_with(&format!(".{d}")));
            (!ok).then(|| Finding {
                kind: Kind::Custom("link_domain".into()),
                start: whole.start(),
                end: whole.end(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_json_with_or_without_a_fence() {
        assert_eq!(answer_json(" {\"a\": 1} ").unwrap()["a"], 1);
        assert_eq!(answer_json("```json\n{\"a\": 2}\n```").unwrap()["a"], 2);
        assert!(answer_json("the answer is {\"a\": 1}").is_none());
        let schema = jsonschema::validator_for(&serde_json::json!({
            "type": "object",
            "properties": {"discount": {"type": "number", "maximum": 15}},
            "required": ["discount"]
        }))
        .unwrap();
        assert!(schema_check(&schema, r#"{"discount": 10}"#).is_ok());
        let e = schema_check(&schema, r#"{"discount": 25}"#).unwrap_err();
        assert!(e.contains("/discount") && e.contains("15"), "{e}");
        assert!(
            schema_check(&schema, "no")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn links_outside_the_allowed_domains() {
        let allowed = vec!["example.com".to_string()];
        let text =
            "see https://example.com/a, https://docs.example.com/b and http://evil.test/x?y=1.";
        let found = foreign_links(text, &allowed);
        assert_eq!(found.len(), 1);
        assert_eq!(
            &text[found[0].start..found[0].end],
            "http://evil.test/x?y=1."
        );
        // A look-alike is not a subdomain.
        assert_eq!(foreign_links("https://notexample.com", &allowed).len(), 1);
    }
}
