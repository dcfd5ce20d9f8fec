//! The audit page: the chain's verification status (verified on demand,
//! off the request path) and exports of the signed records for a session
//! or a time range, streamed as the JSONL `baton audit export` writes.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Form;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_audit::{AuditLog, ExportFilter, VerifyReport};
use baton_runtime::{ListQuery, RuntimeHandle};
use baton_types::{SessionId, now_unix_ms};
use serde::Deserialize;

use super::html::{self, esc, respond, see_other};
use super::{CsrfForm, bad_csrf, csrf_ok, error_status};
use crate::console_session::ConsoleSignIn;

/// The audit trail as the console sees it (none when `[audit]` is off).
#[derive(Debug, Clone, Default)]
pub struct ConsoleAudit(Option<Arc<Trail>>);

impl ConsoleAudit {
    pub fn new(log: Option<AuditLog>) -> Self {
        ConsoleAudit(log.map(|log| {
            Arc::new(Trail {
                log,
                last: Mutex::new(None),
                running: tokio::sync::Mutex::new(()),
            })
        }))
    }
}

#[derive(Debug)]
pub struct Trail {
    log: AuditLog,
    last: Mutex<Option<Check>>,
    /// Held while a verification runs: one at a time.
    running: tokio::sync::Mutex<()>,
}

/// The last verification: when, by whom, how long, what it found.
#[derive(Debug, Clone)]
struct Check {
    at_unix_ms: u64,
    by: String,
    took_ms: u128,
    report: VerifyReport,
}

fn off_page(sign_in: &ConsoleSignIn) -> Response {
    respond(
        StatusCode::NOT_FOUND,
        html::page(
            "Audit",
            Some(sign_in),
            &html::alert("the audit trail is off on this server ([audit] enabled = false)"),
        ),
    )
}

fn status_html(check: Option<&Check>) -> String {
    let Some(c) = check else {
        return r#"<p class="status unknown" id="chain-status">Not verified since the server started.</p>"#.into();
    };
    let r = &c.report;
    let verdict = if r.ok() {
        format!(
            r#"<p class="status ok" id="chain-status">Intact: {} records, every hash link and signature valid, the signed head at seq {}.</p>"#,
            r.records,
            r.head_seq.unwrap_or(0)
        )
    } else {
        format!(
            r#"<p class="status bad" id="chain-status" role="alert">FAILED: {}</p>"#,
            esc(&r.to_string())
        )
    };
    format!(
        r#"{verdict}<p class="meta">Verified {} by {} in {} ms.</p>"#,
        esc(&html::time(c.at_unix_ms)),
        esc(&c.by),
        c.took_ms
    )
}

/// `GET /ui/audit`: the chain's last verification, the public key, and
/// the export form.
pub(crate) async fn page(
    State(rt): State<RuntimeHandle>,
    Extension(trail): Extension<ConsoleAudit>,
    Extension(sign_in): Extension<ConsoleSignIn>,
) -> Response {
    let Some(t) = &trail.0 else {
        return off_page(&sign_in);
    };
    let last = t.last.lock().ok().and_then(|l| l.clone());
    let failing = match rt.audit_failing() {
        Some(why) => html::alert(&format!("the audit trail cannot be written: {why}")),
        None => String::new(),
    };
    let scope = if sign_in.who.is_admin() {
        "every tenant's records and the server's own"
    } else {
        "your tenant's sessions' records"
    };
    let body = format!(
        r#"<h1>Audit trail</h1>{failing}<section aria-labelledby="chain"><h2 id="chain">Chain</h2>{status}<form method="post" action="/ui/audit/verify">{csrf}<button type="submit">Verify the chain now</button></form><p>Public key (ed25519), to check exports elsewhere with <code>baton audit verify --export FILE --public-key KEY</code>: <code id="public-key">{key}</code></p></section>
<section aria-labelledby="export"><h2 id="export">Export</h2><p>Signed records as JSON lines, each with its hash and signature, from the log's start up to its signed head ({scope}).</p><form method="get" action="/ui/audit/export" class="stack"><label for="session">Session id (empty: all)</label><input id="session" name="session" autocomplete="off"><label for="since">From (UTC)</label><input id="since" name="since" type="datetime-local" step="1"><label for="until">Until (UTC, not included)</label><input id="until" name="until" type="datetime-local" step="1"><button type="submit">Export</button></form></section>"#,
        status = status_html(last.as_ref()),
        csrf = html::csrf_field(&sign_in),
        key = esc(&t.log.public_key_hex()),
    );
    respond(StatusCode::OK, html::page("Audit", Some(&sign_in), &body))
}

/// `POST /ui/audit/verify`: anchor what was appended so far, then verify
/// the whole chain up to the signed head on a blocking thread.
pub(crate) async fn verify(
    Extension(trail): Extension<ConsoleAudit>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&sign_in, &form.csrf) {
        return bad_csrf();
    }
    let Some(t) = trail.0.clone() else {
        return off_page(&sign_in);
    };
    let Ok(_running) = t.running.try_lock() else {
        return respond(
            StatusCode::CONFLICT,
            html::page(
                "Audit",
                Some(&sign_in),
                &html::alert("a verification is running already: reload this page in a moment"),
            ),
        );
    };
    let started = Instant::now();
    if let Err(e) = t.log.flush().await {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            html::page(
                "Audit",
                Some(&sign_in),
                &html::alert(&format!("the audit trail cannot be flushed: {e}")),
            ),
        );
    }
    let dir = t.log.dir().to_path_buf();
    let key = t.log.public_key();
    let report =
        match tokio::task::spawn_blocking(move || baton_audit::verify_anchored(&dir, &key)).await {
            Ok(r) => r,
            Err(e) => VerifyReport {
                io_error: Some(format!("verification stopped: {e}")),
                ..Default::default()
            },
        };
    let check = Check {
        at_unix_ms: now_unix_ms(),
        by: sign_in.who.label(),
        took_ms: started.elapsed().as_millis(),
        report,
    };
    if check.report.ok() {
        tracing::info!(by = %check.by, report = %check.report, "audit trail verified from the console");
    } else {
        tracing::error!(by = %check.by, report = %check.report, "audit trail FAILED verification");
    }
    if let Ok(mut last) = t.last.lock() {
        *last = Some(check);
    }
    see_other("/ui/audit")
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ExportParams {
    session: String,
    since: String,
    until: String,
}

/// A time from the form: RFC 3339, a `datetime-local` value (read as
/// UTC), or Unix milliseconds.
fn parse_time(field: &str, s: &str) -> Result<Option<u64>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Some(ms));
    }
    let ts = s.parse::<jiff::Timestamp>().ok().or_else(|| {
        s.parse::<jiff::civil::DateTime>()
            .ok()
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp())
    });
    match ts {
        Some(t) if t.as_millisecond() >= 0 => Ok(Some(t.as_millisecond() as u64)),
        _ => Err(format!(
            "{field}: {s:?} is not a time (use 2026-12-05T09:30:00Z, a local date and time read as UTC, or Unix milliseconds)"
        )),
    }
}

/// Bytes handed to the response body in pieces of about 64 KiB.
struct BodyWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl BodyWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for BodyWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 64 * 1024 {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// `GET /ui/audit/export`: the signed records of a session or a time range
/// (an operator: only its tenant's sessions), streamed. The log is
/// verified while it is read; if it is not intact the download fails
/// rather than end as if complete.
pub(crate) async fn export(
    State(rt): State<RuntimeHandle>,
    Extension(trail): Extension<ConsoleAudit>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Query(p): Query<ExportParams>,
) -> Response {
    let Some(t) = trail.0.clone() else {
        return off_page(&sign_in);
    };
    let bad = |status: StatusCode, m: &str| {
        respond(status, html::page("Audit", Some(&sign_in), &html::alert(m)))
    };
    let (since_ms, until_ms) = match (parse_time("since", &p.since), parse_time("until", &p.until))
    {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return bad(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let caller = rt.as_caller(sign_in.who.clone());
    let session = match p.session.trim() {
        "" => None,
        s => match s.parse::<SessionId>() {
            Ok(id) => {
                if let Err(e) = caller.check_inspect(id).await {
                    return bad(error_status(&e), &e.to_string());
                }
                Some(id)
            }
            Err(e) => return bad(StatusCode::UNPROCESSABLE_ENTITY, &format!("session: {e}")),
        },
    };
    // An operator's export of a time range: only its tenant's sessions.
    let tenant_sessions: Option<HashSet<String>> = if sign_in.who.is_admin() || session.is_some() {
        None
    } else {
        let mut ids = HashSet::new();
        let mut token = None;
        loop {
            let page = caller
                .list(ListQuery {
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => return bad(error_status(&e), &e.to_string()),
            };
            ids.extend(page.sessions.iter().map(|s| s.id.to_string()));
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Some(ids)
    };
    if let Err(e) = t.log.flush().await {
        return bad(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the audit trail cannot be flushed: {e}"),
        );
    }
    let filter = ExportFilter {
        session_id: session.map(|s| s.to_string()),
        since_ms,
        until_ms,
    };
    let name = match session {
        Some(s) => format!("baton-audit-{s}.jsonl"),
        None => format!("baton-audit-{}.jsonl", now_unix_ms()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let dir = t.log.dir().to_path_buf();
    let key = t.log.public_key();
    tokio::task::spawn_blocking(move || {
        let mut out = BodyWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        let keep = |s: Option<&str>| match &tenant_sessions {
            None => true,
            Some(ids) => s.is_some_and(|s| ids.contains(s)),
        };
        if let Err(e) = baton_audit::export_anchored(&dir, &key, &filter, keep, &mut out) {
            tracing::error!(error = %e, "audit export from the console failed");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut r = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let h = r.headers_mut();
    html::secure_headers(h);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_times_take_three_forms() {
        assert_eq!(parse_time("since", ""), Ok(None));
        assert_eq!(
            parse_time("since", "1700000000123"),
            Ok(Some(1_700_000_000_123))
        );
        assert_eq!(
            parse_time("since", "2023-11-14T22:13:20Z"),
            Ok(Some(1_700_000_000_000))
        );
        assert_eq!(
            parse_time("since", "2023-11-14T22:13:20"),
            Ok(Some(1_700_000_000_000))
        );
        assert_eq!(
            parse_time("since", "2023-11-14T22:13"),
            Ok(Some(1_699_999_980_000))
        );
        let e = parse_time("until", "yesterday").unwrap_err();
        assert!(e.starts_with("until:"), "{e}");
    }
}
