//! The operators' pages: sessions page by page, one session's timeline
//! (every journal record), its state at any seq (time travel), and fork.

use axum::Form;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use baton_runtime::{ListQuery, RuntimeHandle};
use baton_types::{SessionEvent, SessionId, SessionStatus};
use serde::Deserialize;

use super::html::{self, esc, respond, see_other};
use super::{bad_csrf, csrf_ok, error_status};
use crate::console_session::{ConsoleSignIn, query_escape};

/// Sessions per list page.
const PAGE: u32 = 50;
/// Journal records per timeline page.
const TIMELINE: usize = 200;

const STATUSES: [SessionStatus; 4] = [
    SessionStatus::Idle,
    SessionStatus::Running,
    SessionStatus::Failed,
    SessionStatus::NeedsAttention,
];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ListParams {
    status: String,
    route: String,
    flow: String,
    /// Admins only: another tenant's sessions.
    tenant: String,
    page: String,
}

/// The session id of a path, or the page naming what is wrong with it.
fn session_id(sign_in: &ConsoleSignIn, id: &str) -> Result<SessionId, Box<Response>> {
    id.parse::<SessionId>().map_err(|e| {
        let e = baton_runtime::Error::InvalidArgument(format!("session id {id:?}: {e}"));
        Box::new(error_page(sign_in, &e))
    })
}

fn error_page(sign_in: &ConsoleSignIn, e: &baton_runtime::Error) -> Response {
    respond(
        error_status(e),
        html::page("Sessions", Some(sign_in), &html::alert(&e.to_string())),
    )
}

/// `GET /ui/sessions`: the caller's tenant's sessions, newest first, 50 a
/// page, by status (and tenant, for admins).
pub(crate) async fn list(
    State(rt): State<RuntimeHandle>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Query(p): Query<ListParams>,
) -> Response {
    let status = match p.status.as_str() {
        "" => None,
        s => match SessionStatus::parse(s) {
            Some(s) => Some(s),
            None => {
                let e = baton_runtime::Error::InvalidArgument(format!(
                    "status: {s:?} is not idle, running, failed or needs_attention"
                ));
                return error_page(&sign_in, &e);
            }
        },
    };
    let caller = rt.as_caller(sign_in.who.clone());
    let list = caller
        .list(ListQuery {
            status,
            tenant: (!p.tenant.is_empty()).then(|| p.tenant.clone()),
            route: (!p.route.is_empty()).then(|| p.route.clone()),
            flow: (!p.flow.is_empty()).then(|| p.flow.clone()),
            newest_first: true,
            page_size: PAGE,
            page_token: (!p.page.is_empty()).then(|| p.page.clone()),
        })
        .await;
    let list = match list {
        Ok(l) => l,
        Err(e) => return error_page(&sign_in, &e),
    };
    let options = html::options(
        std::iter::once(("", "any")).chain(STATUSES.iter().map(|s| (s.as_str(), s.as_str()))),
        &p.status,
    );
    let tenant_filter = if sign_in.who.is_admin() {
        format!(
            r#"<label for="tenant">Tenant</label><input id="tenant" name="tenant" value="{}">"#,
            esc(&p.tenant)
        )
    } else {
        String::new()
    };
    let rows: String = if list.sessions.is_empty() {
        r#"<tr><td colspan="4" class="empty">No sessions.</td></tr>"#.into()
    } else {
        list.sessions
            .iter()
            .map(|s| {
                format!(
                    r#"<tr><td><a href="/ui/sessions/{id}">{id}</a></td><td>{status}{reason}</td><td>{route}</td><td>{created}</td></tr>"#,
                    id = esc(&s.id.to_string()),
                    status = s.status.as_str(),
                    reason = if s.status_reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", esc(&s.status_reason))
                    },
                    route = esc(&s.route),
                    created = esc(&html::time(s.created_at_unix_ms)),
                )
            })
            .collect()
    };
    let filters = format!(
        "status={}&amp;tenant={}&amp;route={}&amp;flow={}",
        query_escape(&p.status),
        query_escape(&p.tenant),
        query_escape(&p.route),
        query_escape(&p.flow)
    );
    let next = match &list.next_page_token {
        Some(t) => format!(
            r#"<a href="/ui/sessions?{filters}&amp;page={}" rel="next">Older sessions</a>"#,
            query_escape(t)
        ),
        None => String::new(),
    };
    let first = if p.page.is_empty() {
        String::new()
    } else {
        format!(r#"<a href="/ui/sessions?{filters}">Newest</a> "#)
    };
    let route = esc(&p.route);
    let flow = esc(&p.flow);
    let short = if list.next_page_token.is_some()
        && (list.sessions.len() as u32) < PAGE
        && !(p.route.is_empty() && p.flow.is_empty())
    {
        format!(
            " (this page stopped after reading {} sessions: the route and flow filters have no index; go on with older sessions)",
            baton_runtime::LIST_SCAN_CAP
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"<h1>Sessions</h1><form method="get" action="/ui/sessions" class="filters"><label for="status">Status</label><select id="status" name="status">{options}</select><label for="route">Route</label><input id="route" name="route" value="{route}" size="12"><label for="flow">Flow</label><input id="flow" name="flow" value="{flow}" size="12">{tenant_filter}<button type="submit">Filter</button></form><table class="list"><caption>Sessions, newest first{short}</caption><thead><tr><th scope="col">Session</th><th scope="col">Status</th><th scope="col">Route</th><th scope="col">Created</th></tr></thead><tbody>{rows}</tbody></table><nav class="pages" aria-label="Pages">{first}{next}</nav>"#
    );
    respond(
        StatusCode::OK,
        html::page("Sessions", Some(&sign_in), &body),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ShowParams {
    /// Show the state as of this seq (time travel); the live state without.
    at: Option<u64>,
    /// The timeline page: records after this seq.
    after: u64,
}

/// A record's class on the timeline (what kind of step it is).
fn category(e: &SessionEvent) -> &'static str {
    let n = e.kind.name();
    if n.starts_with("gate") {
        "gate"
    } else if n.starts_with("tool") {
        "tool"
    } else if n.contains("failed") || n.contains("retract") || n.contains("attempt") {
        "failure"
    } else if n.starts_with("model") || n.starts_with("routing") || n.contains("route") {
        "model"
    } else {
        "other"
    }
}

fn timeline(id: &str, events: &[SessionEvent], at: Option<u64>) -> String {
    events
        .iter()
        .map(|e| {
            let details = serde_json::to_string_pretty(&e.kind).unwrap_or_default();
            let here = at == Some(e.seq);
            format!(
                r#"<tr class="{cat}{cur}" id="seq-{seq}"><td><a href="/ui/sessions/{id}?at={seq}" aria-label="state at seq {seq}">{seq}</a></td><td>{time}</td><td>{turn}</td><td><code>{kind}</code></td><td class="what">{what}</td><td><details><summary>record</summary><pre>{details}</pre></details></td></tr>"#,
                cat = category(e),
                cur = if here { " here" } else { "" },
                seq = e.seq,
                id = esc(id),
                time = esc(&html::time(e.at_unix_ms)),
                turn = e.turn().map(|t| t.to_string()).unwrap_or_default(),
                kind = esc(e.kind.name()),
                what = esc(&e.kind.describe()),
                details = esc(&details),
            )
        })
        .collect()
}

/// `GET /ui/sessions/{id}`: the state (now, or `?at=` a seq) and the
/// timeline of journal records.
pub(crate) async fn show(
    State(rt): State<RuntimeHandle>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Path(id): Path<String>,
    Query(p): Query<ShowParams>,
) -> Response {
    let sid = match session_id(&sign_in, &id) {
        Ok(s) => s,
        Err(page) => return *page,
    };
    let caller = rt.as_caller(sign_in.who.clone());
    let state = match p.at {
        Some(seq) => caller.state_at(sid, seq).await,
        None => caller.session_state(sid).await,
    };
    let state = match state {
        Ok(s) => s,
        Err(e) => return error_page(&sign_in, &e),
    };
    let page = match caller.journal_page(sid, p.after, TIMELINE).await {
        Ok(j) => j,
        Err(e) => return error_page(&sign_in, &e),
    };
    let s = &state.state;
    let id = sid.to_string();
    let full = serde_json::to_string_pretty(s).unwrap_or_default();
    // Paging the timeline keeps the state shown (`at`).
    let at_param = p.at.map(|a| format!("&at={a}")).unwrap_or_default();
    let next = match page.next_after_seq {
        Some(n) => format!(
            r#"<a href="/ui/sessions/{}?after={n}{}" rel="next">Later records</a>"#,
            esc(&id),
            esc(&at_param)
        ),
        None => String::new(),
    };
    let at_value = p.at.unwrap_or(state.at_seq);
    let body = format!(
        r#"<p><a href="/ui/sessions">← Sessions</a></p><h1>Session <code>{eid}</code></h1>
<section aria-labelledby="state"><h2 id="state">State at seq <span id="state-seq">{at_seq}</span> of {last}{live}</h2>
<form method="get" action="/ui/sessions/{eid}" class="filters"><label for="at">Show the state at seq</label><input id="at" name="at" type="number" min="1" max="{last}" value="{at_value}"><button type="submit">Show</button>{now}</form>
<dl class="facts"><dt>Status</dt><dd id="state-status">{status}</dd><dt>Route</dt><dd>{route}</dd><dt>Tenant</dt><dd>{tenant}</dd><dt>Turns</dt><dd>{turns} accepted, {done} completed, {failed} failed, {cancelled} cancelled</dd><dt>Messages</dt><dd id="state-messages">{n_messages}</dd><dt>Tokens</dt><dd>{tin} in, {tout} out</dd><dt>Cost</dt><dd>${cost:.6}</dd></dl>
<h3>Conversation</h3>{conversation}
<details><summary>Full state</summary><pre>{full}</pre></details>
<form method="post" action="/ui/sessions/{eid}/fork" class="inline">{csrf}<input type="hidden" name="at_seq" value="{at_seq}"><button type="submit" id="fork">Fork a new session from seq {at_seq}</button></form> <form method="post" action="/ui/sessions/{eid}/replay" class="inline">{csrf}<button type="submit" id="replay">Replay against the recording</button></form></section>
<section aria-labelledby="timeline"><h2 id="timeline">Timeline</h2><table class="list timeline"><caption>Journal records in order; a seq shows the state there</caption><thead><tr><th scope="col">Seq</th><th scope="col">Time</th><th scope="col">Turn</th><th scope="col">Record</th><th scope="col">What</th><th scope="col">Details</th></tr></thead><tbody>{rows}</tbody></table><nav class="pages" aria-label="Pages">{next}</nav></section>"#,
        eid = esc(&id),
        at_seq = state.at_seq,
        last = page.last_seq,
        live = if state.live { " (live)" } else { "" },
        now = if p.at.is_some() {
            format!(r#" <a href="/ui/sessions/{}">Now</a>"#, esc(&id))
        } else {
            String::new()
        },
        status = state.status.as_str(),
        route = esc(&s.route),
        tenant = esc(&s.tenant),
        turns = s.last_turn,
        done = s.turns_completed,
        failed = s.turns_failed,
        cancelled = s.turns_cancelled,
        n_messages = s.messages.len(),
        tin = s.usage.input_tokens,
        tout = s.usage.output_tokens,
        cost = s.cost_usd,
        conversation = html::messages(&s.messages),
        full = esc(&full),
        csrf = html::csrf_field(&sign_in),
        rows = timeline(&id, &page.events, p.at),
    );
    respond(StatusCode::OK, html::page("Session", Some(&sign_in), &body))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ForkForm {
    csrf: String,
    at_seq: u64,
}

/// `POST /ui/sessions/{id}/fork`: a new session with the journal up to
/// `at_seq`; shows it.
pub(crate) async fn fork(
    State(rt): State<RuntimeHandle>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Path(id): Path<String>,
    Form(form): Form<ForkForm>,
) -> Response {
    if !csrf_ok(&sign_in, &form.csrf) {
        return bad_csrf();
    }
    let sid = match session_id(&sign_in, &id) {
        Ok(s) => s,
        Err(page) => return *page,
    };
    match rt
        .as_caller(sign_in.who.clone())
        .fork(sid, form.at_seq)
        .await
    {
        Ok(info) => see_other(&format!("/ui/sessions/{}", info.id)),
        Err(e) => error_page(&sign_in, &e),
    }
}

/// `POST /ui/sessions/{id}/replay`: re-run the session's turns with its
/// recorded model answers and tool results as a new session, and show the
/// report: records compared and the first divergence, if any.
pub(crate) async fn replay(
    State(rt): State<RuntimeHandle>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Path(id): Path<String>,
    Form(form): Form<super::CsrfForm>,
) -> Response {
    if !csrf_ok(&sign_in, &form.csrf) {
        return bad_csrf();
    }
    let sid = match session_id(&sign_in, &id) {
        Ok(s) => s,
        Err(page) => return *page,
    };
    let r = match rt.as_caller(sign_in.who.clone()).replay(sid).await {
        Ok(r) => r,
        Err(e) => return error_page(&sign_in, &e),
    };
    let verdict = match (&r.divergence, &r.stopped) {
        (None, None) => format!(
            r#"<p class="status ok" id="replay-verdict">Same: the replay reproduced all {} compared records of {} turns.</p>"#,
            r.compared, r.turns
        ),
        (None, Some(why)) => format!(
            r#"<p class="status unknown" id="replay-verdict">No divergence in {} compared records, but the replay stopped early: {}</p>"#,
            r.compared,
            esc(why)
        ),
        (Some(_), _) => r#"<p class="status bad" id="replay-verdict">Diverged: the replay differs from the recording.</p>"#.to_string(),
    };
    let divergence = match &r.divergence {
        Some(d) => format!(
            r#"<h2>First difference</h2><p>At compared record {} (recorded seq {}, replayed seq {}).</p><div class="decide"><div><h3>Recorded</h3><pre>{}</pre></div><div><h3>Replayed</h3><pre>{}</pre></div></div>"#,
            d.index,
            d.source_seq
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none: the replay produced more".into()),
            d.replay_seq
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none: the replay produced fewer".into()),
            esc(&html::pretty_json(&d.expected)),
            esc(&html::pretty_json(&d.actual)),
        ),
        None => String::new(),
    };
    let body = format!(
        r#"<p><a href="/ui/sessions/{src}">← Session {src}</a></p><h1>Replay of <code>{src}</code></h1>{verdict}<dl class="facts"><dt>Turns</dt><dd>{turns}</dd><dt>Records compared</dt><dd id="replay-compared">{compared}</dd><dt>Ran as session</dt><dd><a href="/ui/sessions/{rep}">{rep}</a></dd></dl>{divergence}"#,
        src = esc(&r.source.to_string()),
        rep = esc(&r.replay.to_string()),
        turns = r.turns,
        compared = r.compared,
    );
    respond(StatusCode::OK, html::page("Replay", Some(&sign_in), &body))
}
