//! What is appended to the log.

use serde_json::value::RawValue;

/// One thing that happened, to be appended to the log.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// What kind of event: `model_call`, `tool_call`, `gate_decision`, …
    pub kind: String,
    /// The session it belongs to, if any.
    pub session_id: Option<String>,
    /// Who did it: an agent, a user, an admin, if known.
    pub actor: Option<String>,
    /// The details, as compact JSON text (see [`AuditEvent::from_json`]).
    pub data: Box<RawValue>,
    /// When it happened; `None` means when it is appended.
    pub ts_unix_ms: Option<u64>,
}

impl PartialEq for AuditEvent {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.session_id == other.session_id
            && self.actor == other.actor
            && self.data.get() == other.data.get()
            && self.ts_unix_ms == other.ts_unix_ms
    }
}

impl AuditEvent {
    /// An event of `kind` with `data`, no session or actor, stamped when
    /// appended.
    pub fn new(kind: impl Into<String>, data: serde_json::Value) -> Self {
        // serde_json writes compact text: nothing to check.
        let data = serde_json::value::to_raw_value(&data).unwrap_or_else(|_| null());
        Self::compact(kind, data)
    }

    /// An event whose data is JSON text already (serialised once by the
    /// caller, with no tree of values built). Text with whitespace outside
    /// its strings is made compact first: a record's body holds no raw tab
    /// or newline.
    pub fn from_json(kind: impl Into<String>, data: Box<RawValue>) -> Self {
        let data = if is_compact(data.get()) {
            data
        } else {
            serde_json::from_str::<serde_json::Value>(data.get())
                .and_then(|v| serde_json::value::to_raw_value(&v))
                .unwrap_or_else(|_| null())
        };
        Self::compact(kind, data)
    }

    /// An event whose data is known to be compact.
    fn compact(kind: impl Into<String>, data: Box<RawValue>) -> Self {
        Self {
            kind: kind.into(),
            session_id: None,
            actor: None,
            data,
            ts_unix_ms: None,
        }
    }

    /// Sets the session.
    #[must_use]
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Sets the actor.
    #[must_use]
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the timestamp.
    #[must_use]
    pub fn at(mut self, ts_unix_ms: u64) -> Self {
        self.ts_unix_ms = Some(ts_unix_ms);
        self
    }
}

fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// No whitespace outside strings (valid JSON has none inside them but the
/// space itself: control characters there are escaped).
fn is_compact(json: &str) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b' ' | b'\t' | b'\n' | b'\r' => return false,
                _ => {}
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_kept_compact_whatever_text_it_was_given() {
        let raw = |s: &str| RawValue::from_string(s.into()).unwrap();
        let e = AuditEvent::from_json("k", raw("{\"a\":\"x y\\n\",\"b\":[1,2]}"));
        assert_eq!(e.data.get(), "{\"a\":\"x y\\n\",\"b\":[1,2]}");
        let e = AuditEvent::from_json("k", raw("{ \"b\" :\n [1, 2],\t\"a\": \"x y\" }"));
        assert_eq!(e.data.get(), "{\"a\":\"x y\",\"b\":[1,2]}");
        let e = AuditEvent::new("k", serde_json::json!({"z": 1, "a": "q"}));
        assert_eq!(e.data.get(), "{\"a\":\"q\",\"z\":1}");
        assert!(is_compact("\"a \\\" b\""));
        assert!(!is_compact("[1, 2]"));
    }
}
