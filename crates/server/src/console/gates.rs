//! The reviewers' pages: the queue of pending gates (live), one gate with
//! its subject, context and why it fired, and the decision forms.

use std::convert::Infallible;
use std::time::Duration;

use axum::Form;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_runtime::gates::{GateDecision, GateOrder, GateQuery, GateRecord, GateStatus};
use baton_runtime::{Caller, RuntimeHandle};
use baton_types::{AccessRole, now_unix_ms};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::html::{self, esc, respond, see_other};
use super::{bad_csrf, csrf_ok, error_status};
use crate::console_session::ConsoleSignIn;

/// Pending gates one queue page lists.
const QUEUE_PAGE: u32 = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct QueueQuery {
    /// `rows`: only the table's rows (the live refresh).
    fragment: String,
    /// Where the page starts (a token of the previous page).
    after: String,
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

fn rows(gates: &[GateRecord]) -> String {
    if gates.is_empty() {
        return r#"<tr><td colspan="6" class="empty">No gates are waiting for you.</td></tr>"#
            .into();
    }
    let now = now_unix_ms();
    gates
        .iter()
        .map(|g| {
            let overdue = g.deadline_unix_ms != 0 && g.deadline_unix_ms <= now;
            format!(
                r#"<tr data-gate="{id}"><td><a href="/ui/gates/{id}">{policy}</a></td><td>{kind}</td><td>{reviewers}</td><td>{reason}</td><td>{opened}</td><td{cls}>{deadline}</td></tr>"#,
                id = esc(&g.gate_id.to_string()),
                policy = esc(&g.policy),
                kind = esc(g.kind.as_str()),
                reviewers = esc(if g.reviewers.is_empty() { "anyone" } else { &g.reviewers }),
                reason = esc(&short(&g.reason, 120)),
                opened = esc(&html::time(g.opened_at_unix_ms)),
                cls = if overdue { r#" class="overdue""# } else { "" },
                deadline = esc(&html::time(g.deadline_unix_ms)),
            )
        })
        .collect()
}

/// `GET /ui/gates`: the caller's pending gates (a reviewer's groups, an
/// operator's tenant), nearest deadline and newest first.
pub(crate) async fn queue(
    State(rt): State<RuntimeHandle>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Query(q): Query<QueueQuery>,
) -> Response {
    let caller = rt.as_caller(sign_in.who.clone());
    let list = caller
        .list_gates(GateQuery {
            status: Some(GateStatus::Pending),
            page_size: QUEUE_PAGE,
            page_token: (!q.after.is_empty()).then(|| q.after.clone()),
            order: GateOrder::Queue,
            ..Default::default()
        })
        .await;
    let (gates, next) = match list {
        Ok(l) => (l.gates, l.next_page_token),
        Err(e) => {
            return respond(
                error_status(&e),
                html::page("Gates", Some(&sign_in), &html::alert(&e.to_string())),
            );
        }
    };
    let body = rows(&gates);
    if q.fragment == "rows" {
        return respond(StatusCode::OK, body);
    }
    let here = if q.after.is_empty() {
        String::new()
    } else {
        esc(&format!(
            "&after={}",
            crate::console_session::query_escape(&q.after)
        ))
    };
    let more = match next {
        Some(t) => format!(
            r#"<nav class="pager" aria-label="Pages"><a href="/ui/gates">First page</a> <a href="/ui/gates?after={}" rel="next">Next {QUEUE_PAGE}</a></nav>"#,
            esc(&crate::console_session::query_escape(&t))
        ),
        None if !q.after.is_empty() => {
            r#"<nav class="pager" aria-label="Pages"><a href="/ui/gates">First page</a></nav>"#
                .to_string()
        }
        None => String::new(),
    };
    let page = format!(
        r#"<h1>Gates waiting for a decision</h1><p id="live" class="live" aria-live="polite">Updates as gates open and are decided.</p><table class="list"><caption>Pending gates, nearest deadline first, then newest</caption><thead><tr><th scope="col">Policy</th><th scope="col">Kind</th><th scope="col">Reviewers</th><th scope="col">Why</th><th scope="col">Opened</th><th scope="col">Deadline</th></tr></thead><tbody id="gate-rows" data-live-gates="/ui/gates?fragment=rows{here}">{body}</tbody></table>{more}"#
    );
    respond(StatusCode::OK, html::page("Gates", Some(&sign_in), &page))
}

/// What the decision forms held, shown again with an error.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DecideForm {
    csrf: String,
    decision: String,
    reason: String,
    payload: String,
}

/// The payload an edit starts from: a tool call's arguments, a held
/// answer's draft, or the subject itself.
fn edit_start(subject: &str) -> String {
    let v: serde_json::Value = match serde_json::from_str(subject) {
        Ok(v) => v,
        Err(_) => return subject.to_string(),
    };
    if let Some(args) = v.get("arguments") {
        return serde_json::to_string_pretty(args).unwrap_or_default();
    }
    if let Some(d) = v.get("draft").and_then(|d| d.as_str()) {
        return d.to_string();
    }
    subject.to_string()
}

fn decision_html(g: &GateRecord) -> String {
    let Some(o) = &g.outcome else {
        return String::new();
    };
    format!(
        r#"<section aria-labelledby="decided"><h2 id="decided">Decision</h2><dl class="facts"><dt>Decision</dt><dd class="decision">{}</dd><dt>By</dt><dd>{}</dd><dt>Reason</dt><dd>{}</dd><dt>At</dt><dd>{}</dd>{}</dl></section>"#,
        esc(&format!("{:?}", o.decision).to_lowercase()),
        esc(if o.by_timeout {
            "the gate's timeout"
        } else {
            &o.reviewer
        }),
        esc(if o.reason.is_empty() {
            "—"
        } else {
            &o.reason
        }),
        esc(&html::time(o.decided_at_unix_ms)),
        if o.edited.is_empty() {
            String::new()
        } else {
            format!("<dt>Edited to</dt><dd><pre>{}</pre></dd>", esc(&o.edited))
        },
    )
}

fn forms(g: &GateRecord, sign_in: &ConsoleSignIn, form: &DecideForm) -> String {
    let id = esc(&g.gate_id.to_string());
    let csrf = html::csrf_field(sign_in);
    let payload = if form.decision == "edit" {
        form.payload.clone()
    } else {
        edit_start(&g.subject)
    };
    let reason = |d: &str| {
        if form.decision == d {
            esc(&form.reason)
        } else {
            String::new()
        }
    };
    format!(
        r#"<section aria-labelledby="decide" data-watch-gate="{id}"><h2 id="decide">Decide</h2><div class="decide">
<form method="post" action="/ui/gates/{id}" class="stack" aria-label="Approve">{csrf}<input type="hidden" name="decision" value="approve"><label for="approve-reason">Reason (optional)</label><input id="approve-reason" name="reason" value="{ra}"><button type="submit" id="approve">Approve</button></form>
<form method="post" action="/ui/gates/{id}" class="stack" aria-label="Reject">{csrf}<input type="hidden" name="decision" value="reject"><label for="reject-reason">Reason (required)</label><textarea id="reject-reason" name="reason" rows="3">{rr}</textarea><button type="submit" id="reject">Reject</button></form>
<form method="post" action="/ui/gates/{id}" class="stack" aria-label="Edit">{csrf}<input type="hidden" name="decision" value="edit"><label for="edit-payload">Edited payload</label><textarea id="edit-payload" name="payload" rows="8">{payload}</textarea><label for="edit-reason">Reason (optional)</label><input id="edit-reason" name="reason" value="{re}"><button type="submit" id="edit">Approve with this edit</button></form>
</div></section>"#,
        ra = reason("approve"),
        rr = reason("reject"),
        re = reason("edit"),
        payload = esc(&payload),
    )
}

async fn render(
    caller: &Caller,
    sign_in: &ConsoleSignIn,
    id: &str,
    error: Option<(StatusCode, String)>,
    form: &DecideForm,
) -> Response {
    let (g, context) = match caller.get_gate(id).await {
        Ok(found) => found,
        Err(e) => {
            let mut page = respond(
                error_status(&e),
                html::page("Gate", Some(sign_in), &html::alert(&e.to_string())),
            );
            // The gate's session is live on another node (nodes owning
            // sessions one by one): the request is sent there
            // (`crate::owner::forward_http`), the sign-in shared.
            if let Some(to) = crate::owner::http_owner(&e) {
                page.extensions_mut().insert(to);
            }
            return page;
        }
    };
    let status = error.as_ref().map(|(s, _)| *s).unwrap_or(StatusCode::OK);
    let banner = error.map(|(_, m)| html::alert(&m)).unwrap_or_default();
    let pending = g.outcome.is_none();
    let session = if sign_in.who.has(AccessRole::Operator) {
        format!(
            r#"<a href="/ui/sessions/{s}">{s}</a>"#,
            s = esc(&g.session.to_string())
        )
    } else {
        esc(&g.session.to_string())
    };
    let decide = if pending && sign_in.who.has(AccessRole::Reviewer) {
        forms(&g, sign_in, form)
    } else if pending {
        // Watched all the same: a decision taken elsewhere shows at once.
        format!(
            r#"<p data-watch-gate="{}">Only a reviewer of this gate's group can decide it.</p>"#,
            esc(&g.gate_id.to_string())
        )
    } else {
        decision_html(&g)
    };
    let body = format!(
        r#"<p><a href="/ui/gates">← All pending gates</a></p><h1>Gate <code>{id}</code></h1>{banner}<dl class="facts"><dt>Status</dt><dd id="gate-status">{status}</dd><dt>Policy</dt><dd>{policy}</dd><dt>Why it fired</dt><dd>{reason}</dd><dt>Kind</dt><dd>{kind} at {point}</dd><dt>Reviewers</dt><dd>{reviewers}</dd><dt>Opened</dt><dd>{opened}</dd><dt>Deadline</dt><dd>{deadline}{esc_n}</dd><dt>Session</dt><dd>{session}, turn {turn}</dd></dl>
<section aria-labelledby="subject"><h2 id="subject">What waits for the decision</h2><pre class="subject">{subject}</pre></section>
{decide}
<section aria-labelledby="context"><h2 id="context">Conversation</h2>{conversation}</section>"#,
        id = esc(&g.gate_id.to_string()),
        status = if pending { "pending" } else { "decided" },
        policy = esc(&g.policy),
        reason = esc(&g.reason),
        kind = esc(g.kind.as_str()),
        point = esc(g.point.as_str()),
        reviewers = esc(if g.reviewers.is_empty() {
            "anyone"
        } else {
            &g.reviewers
        }),
        opened = esc(&html::time(g.opened_at_unix_ms)),
        deadline = if g.deadline_unix_ms == 0 {
            "none".to_string()
        } else {
            format!(
                "{} (then {})",
                esc(&html::time(g.deadline_unix_ms)),
                esc(g.on_timeout.as_str())
            )
        },
        esc_n = if g.escalations > 0 {
            format!(", escalated {} times", g.escalations)
        } else {
            String::new()
        },
        turn = g.turn,
        subject = esc(&html::pretty_json(&g.subject)),
        conversation = html::messages(&context),
    );
    respond(status, html::page("Gate", Some(sign_in), &body))
}

/// `GET /ui/gates/{id}`.
pub(crate) async fn show(
    State(rt): State<RuntimeHandle>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Path(id): Path<String>,
) -> Response {
    let caller = rt.as_caller(sign_in.who.clone());
    render(&caller, &sign_in, &id, None, &DecideForm::default()).await
}

/// `POST /ui/gates/{id}`: approve, reject (with a reason) or edit; a
/// refused decision shows the gate again with the reason and the form as
/// it was sent.
pub(crate) async fn decide(
    State(rt): State<RuntimeHandle>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Path(id): Path<String>,
    Form(form): Form<DecideForm>,
) -> Response {
    if !csrf_ok(&sign_in, &form.csrf) {
        return bad_csrf();
    }
    let caller = rt.as_caller(sign_in.who.clone());
    let decision = match form.decision.as_str() {
        "approve" => GateDecision::Approve,
        "reject" if form.reason.trim().is_empty() => {
            let m = "a rejection needs a reason: it is recorded and the session is told";
            return render(
                &caller,
                &sign_in,
                &id,
                Some((StatusCode::UNPROCESSABLE_ENTITY, m.into())),
                &form,
            )
            .await;
        }
        "reject" => GateDecision::Reject,
        "edit" => GateDecision::Edit(form.payload.clone()),
        other => {
            let m = format!("decision: {other:?} is not approve, reject or edit");
            return render(
                &caller,
                &sign_in,
                &id,
                Some((StatusCode::UNPROCESSABLE_ENTITY, m)),
                &form,
            )
            .await;
        }
    };
    match caller
        .decide_gate(&id, decision, form.reason.trim().to_string())
        .await
    {
        Ok(g) => see_other(&format!("/ui/gates/{}", g.gate_id)),
        Err(e) => {
            // A decision on a gate decided meanwhile: 409; a payload or
            // reason that does not pass: 422.
            let status = match e.code() {
                baton_types::ErrorCode::FailedPrecondition => StatusCode::CONFLICT,
                baton_types::ErrorCode::InvalidArgument => StatusCode::UNPROCESSABLE_ENTITY,
                _ => error_status(&e),
            };
            let forward = crate::owner::http_owner(&e);
            let mut page =
                render(&caller, &sign_in, &id, Some((status, e.to_string())), &form).await;
            // The gate's session is live on another node: the decision
            // goes there (as the page does, in `render`).
            if let Some(to) = forward {
                page.extensions_mut().insert(to);
            }
            page
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct EventsQuery {
    /// Only this gate's changes.
    gate: String,
}

/// `GET /ui/gates/events`: server-sent events, one `gate` event per gate
/// the caller may see as it opens, escalates or is decided; a comment
/// every 15 s finds clients that left. Ends when the runtime stops.
pub(crate) async fn events(
    State(rt): State<RuntimeHandle>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let caller = rt.as_caller(sign_in.who.clone());
    let rx = rt.watch_gates();
    let stopped = Box::pin(rt.stopped());
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    ping.reset();
    let first = futures::stream::once(async {
        Ok::<_, Infallible>(Bytes::from_static(b"retry: 2000\n\n"))
    });
    let rest = futures::stream::unfold(
        (rx, stopped, ping, caller, q.gate),
        |(mut rx, mut stopped, mut ping, caller, only)| async move {
            loop {
                let item = tokio::select! {
                    item = rx.recv() => item,
                    _ = ping.tick() => {
                        return Some((Ok(Bytes::from_static(b": ping\n\n")), (rx, stopped, ping, caller, only)));
                    }
                    () = &mut stopped => return None,
                };
                match item {
                    Ok(g) => {
                        let id = g.gate_id.to_string();
                        if (!only.is_empty() && only != id) || !caller.sees_gate(&g).await {
                            continue;
                        }
                        let data = serde_json::json!({
                            "gate_id": id,
                            "status": if g.outcome.is_some() { "decided" } else { "pending" },
                        });
                        let frame = format!("event: gate\ndata: {data}\n\n");
                        return Some((Ok(Bytes::from(frame)), (rx, stopped, ping, caller, only)));
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Missed some: have the page refresh anyway.
                        let frame = "event: gate\ndata: {\"lagged\":true}\n\n";
                        return Some((Ok(Bytes::from(frame)), (rx, stopped, ping, caller, only)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let mut r = Body::from_stream(futures::StreamExt::chain(first, rest)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    html::secure_headers(h);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_starts_from_the_arguments_or_the_draft() {
        assert_eq!(
            edit_start(r#"{"tool":"t","call_id":"c","arguments":{"a":1}}"#),
            "{\n  \"a\": 1\n}"
        );
        assert_eq!(edit_start(r#"{"draft":"hello","confidence":0.5}"#), "hello");
        assert_eq!(edit_start("plain"), "plain");
        assert_eq!(short("abcdef", 3), "abc…");
    }
}
