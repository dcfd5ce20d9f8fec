//! HTML for the console: escaping (the one way text reaches a page), the
//! page frame, and the security headers every console response carries.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_types::Principal;

use crate::console_session::ConsoleSignIn;

/// `s` with the five HTML-significant characters escaped: safe as element
/// text and inside a double-quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A Unix time in milliseconds as RFC 3339 (UTC, seconds); `—` for 0.
pub fn time(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "—".into();
    }
    let secs = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX);
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => t.to_string(),
        Err(_) => unix_ms.to_string(),
    }
}

/// JSON text pretty-printed when it parses, as it is otherwise.
pub fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string())
}

/// The hidden CSRF field of a state-changing form.
pub fn csrf_field(sign_in: &ConsoleSignIn) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&sign_in.csrf)
    )
}

/// Who is signed in, for the page header.
fn who_label(who: &Principal) -> String {
    format!("{} · tenant {}", who.label(), who.tenant)
}

/// A whole page: navigation, who is signed in (and sign out), `body`.
pub fn page(title: &str, sign_in: Option<&ConsoleSignIn>, body: &str) -> String {
    let header = match sign_in {
        Some(s) => format!(
            r#"<header class="top"><nav aria-label="Console"><a href="/ui/gates">Gates</a>{}</nav><div class="who"><span>{}</span><form method="post" action="/ui/logout">{}<button type="submit">Sign out</button></form></div></header>"#,
            if s.who.has(baton_types::AccessRole::Operator) {
                r#"<a href="/ui/sessions">Sessions</a><a href="/ui/runs">Runs</a><a href="/ui/routes">Routes</a><a href="/ui/audit">Audit</a>"#
            } else {
                ""
            },
            esc(&who_label(&s.who)),
            csrf_field(s)
        ),
        None => r#"<header class="top"><span class="brand">Baton console</span></header>"#.into(),
    };
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{} · Baton</title><link rel="stylesheet" href="/ui/assets/app.css"><script src="/ui/assets/app.js" defer></script></head>
<body><a class="skip" href="#main">Skip to content</a>{header}<main id="main">{body}</main></body></html>"##,
        esc(title)
    )
}

/// A conversation as a list: each message's role, text and tool calls.
pub fn messages(list: &[baton_types::Message]) -> String {
    if list.is_empty() {
        return "<p>No messages.</p>".into();
    }
    let mut out = String::from(r#"<ol class="conversation">"#);
    for m in list {
        out.push_str(&format!(
            r#"<li class="msg {role}"><span class="role">{role}</span>"#,
            role = m.role.as_str()
        ));
        if let Some(id) = &m.tool_call_id {
            out.push_str(&format!(r#"<span class="call">answers {}</span>"#, esc(id)));
        }
        if !m.content.is_empty() {
            out.push_str(&format!(r#"<div class="text">{}</div>"#, esc(&m.content)));
        }
        for c in &m.tool_calls {
            out.push_str(&format!(
                r#"<div class="tool">calls <code>{}</code> <pre>{}</pre></div>"#,
                esc(&c.name),
                esc(&pretty_json(&c.arguments))
            ));
        }
        out.push_str("</li>");
    }
    out.push_str("</ol>");
    out
}

/// `<option>`s of a select, (value, label) each, `selected` marked.
pub fn options<'a>(
    choices: impl IntoIterator<Item = (&'a str, &'a str)>,
    selected: &str,
) -> String {
    choices
        .into_iter()
        .map(|(v, label)| {
            format!(
                r#"<option value="{}"{}>{}</option>"#,
                esc(v),
                if v == selected { " selected" } else { "" },
                esc(label)
            )
        })
        .collect()
}

/// An error banner (announced to screen readers).
pub fn alert(message: &str) -> String {
    format!(r#"<p class="error" role="alert">{}</p>"#, esc(message))
}

/// `html` as a response with the console's headers: no caching, no
/// framing, no sniffing, and a content policy that runs only the
/// console's own script (so injected markup could not run code even if
/// escaping failed).
pub fn respond(status: StatusCode, html: String) -> Response {
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    r
}

/// The headers every console response carries.
pub fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A redirect after a form post (303: the browser follows with GET).
pub fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_stays_text() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'q'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;"
        );
        assert_eq!(time(0), "—");
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(pretty_json("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(pretty_json("not json"), "not json");
    }
}
