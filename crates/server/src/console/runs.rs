//! The operators' flow run pages: runs by flow and status, one run's state
//! at any seq with its journal as a timeline, and replay with its report.

use axum::Form;
use axum::extract::{Extension, Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use baton_flows::{Holder, Lead, RunId, RunQuery, RunRecord, RunStatus};
use serde::Deserialize;

use super::html::{self, esc, respond};
use super::{CsrfForm, bad_csrf, csrf_ok};
use crate::console_session::{ConsoleSignIn, query_escape};

/// Runs per list page.
const PAGE: u32 = 50;
/// Journal records per timeline page.
const TIMELINE: usize = 200;

const STATUSES: [RunStatus; 6] = [
    RunStatus::Running,
    RunStatus::Waiting,
    RunStatus::NeedsAttention,
    RunStatus::Completed,
    RunStatus::Failed,
    RunStatus::Cancelled,
];

fn error_page(sign_in: &ConsoleSignIn, e: &baton_flows::Error) -> Response {
    respond(
        crate::status::http_status(e.code()),
        html::page("Runs", Some(sign_in), &html::alert(&e.to_string())),
    )
}

/// The page where this node does not run the flows: none served, or
/// another node runs them (nodes owning sessions one by one), where the
/// request is forwarded.
fn no_flows(sign_in: &ConsoleSignIn, lead: &Lead) -> Response {
    let (code, text) = match lead.holder() {
        Some(Holder::Node {
            node_id, http_addr, ..
        }) => {
            // Sent there (`crate::owner::forward_http`), the sign-in shared.
            let mut r = respond(
                StatusCode::SERVICE_UNAVAILABLE,
                html::page(
                    "Runs",
                    Some(sign_in),
                    &html::alert(&format!(
                        "the flows run on node {node_id} ({http_addr}), which cannot be reached; retry"
                    )),
                ),
            );
            if !http_addr.is_empty() {
                r.extensions_mut()
                    .insert(crate::owner::ForwardTo(http_addr));
            }
            return r;
        }
        Some(Holder::Nobody(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}; retry")),
        _ => (
            StatusCode::NOT_FOUND,
            "flows are not served by this server".to_string(),
        ),
    };
    respond(code, html::page("Runs", Some(sign_in), &html::alert(&text)))
}

fn parse_run(sign_in: &ConsoleSignIn, id: &str) -> Result<RunId, Box<Response>> {
    id.parse::<RunId>().map_err(|e| {
        Box::new(respond(
            StatusCode::BAD_REQUEST,
            html::page(
                "Runs",
                Some(sign_in),
                &html::alert(&format!("run id {id:?}: {e}")),
            ),
        ))
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ListParams {
    flow: String,
    status: String,
    page: String,
}

/// `GET /ui/runs`: the caller's tenant's runs, by flow and status.
pub(crate) async fn list(
    Extension(lead): Extension<Lead>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Query(p): Query<ListParams>,
) -> Response {
    let Some(flows) = lead.here() else {
        return no_flows(&sign_in, &lead);
    };
    let status = match p.status.as_str() {
        "" => None,
        s => match RunStatus::parse(s) {
            Some(s) => Some(s),
            None => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    html::page(
                        "Runs",
                        Some(&sign_in),
                        &html::alert(&format!("status: {s:?} is not a run status")),
                    ),
                );
            }
        },
    };
    let page = flows
        .list_runs(
            RunQuery {
                flow: (!p.flow.is_empty()).then(|| p.flow.clone()),
                status,
                page_size: PAGE,
                page_token: (!p.page.is_empty()).then(|| p.page.clone()),
            },
            &sign_in.who,
        )
        .await;
    let page = match page {
        Ok(p) => p,
        Err(e) => return error_page(&sign_in, &e),
    };
    let options = html::options(
        std::iter::once(("", "any")).chain(STATUSES.iter().map(|s| (s.as_str(), s.as_str()))),
        &p.status,
    );
    let names: Vec<String> = flows.list_flows().into_iter().map(|f| f.name).collect();
    let flow_options = html::options(
        std::iter::once(("", "any")).chain(names.iter().map(|n| (n.as_str(), n.as_str()))),
        &p.flow,
    );
    let rows: String = if page.runs.is_empty() {
        r#"<tr><td colspan="5" class="empty">No runs.</td></tr>"#.into()
    } else {
        page.runs
            .iter()
            .map(|r| {
                format!(
                    r#"<tr><td><a href="/ui/runs/{id}">{id}</a></td><td>{flow} <small>{version}</small></td><td>{status}{reason}</td><td>{by}</td><td>{created}</td></tr>"#,
                    id = esc(&r.id.to_string()),
                    flow = esc(&r.flow),
                    version = esc(&r.version),
                    status = r.status.as_str(),
                    reason = if r.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", esc(&r.reason))
                    },
                    by = esc(&r.by),
                    created = esc(&html::time(r.created_at_unix_ms)),
                )
            })
            .collect()
    };
    let filters = format!(
        "flow={}&amp;status={}",
        query_escape(&p.flow),
        query_escape(&p.status)
    );
    let next = match &page.next_page_token {
        Some(t) => format!(
            r#"<a href="/ui/runs?{filters}&amp;page={}" rel="next">Next page</a>"#,
            query_escape(t)
        ),
        None => String::new(),
    };
    let first = if p.page.is_empty() {
        String::new()
    } else {
        format!(r#"<a href="/ui/runs?{filters}">First page</a> "#)
    };
    let body = format!(
        r#"<h1>Flow runs</h1><form method="get" action="/ui/runs" class="filters"><label for="flow">Flow</label><select id="flow" name="flow">{flow_options}</select><label for="status">Status</label><select id="status" name="status">{options}</select><button type="submit">Filter</button></form><table class="list"><caption>Runs, oldest first</caption><thead><tr><th scope="col">Run</th><th scope="col">Flow</th><th scope="col">Status</th><th scope="col">Started by</th><th scope="col">Created</th></tr></thead><tbody>{rows}</tbody></table><nav class="pages" aria-label="Pages">{first}{next}</nav>"#
    );
    respond(StatusCode::OK, html::page("Runs", Some(&sign_in), &body))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ShowParams {
    at: Option<u64>,
    after: u64,
}

fn timeline(id: &str, records: &[RunRecord], at: Option<u64>) -> String {
    records
        .iter()
        .map(|r| {
            let details = serde_json::to_string_pretty(&r.event).unwrap_or_default();
            format!(
                r#"<tr class="{cls}" id="seq-{seq}"><td><a href="/ui/runs/{id}?at={seq}" aria-label="state at seq {seq}">{seq}</a></td><td>{time}</td><td><code>{kind}</code></td><td><details><summary>details</summary><pre>{details}</pre></details></td></tr>"#,
                cls = if at == Some(r.seq) { "here" } else { "" },
                seq = r.seq,
                id = esc(id),
                time = esc(&html::time(r.at_unix_ms)),
                kind = esc(r.event.type_name()),
                details = esc(&details),
            )
        })
        .collect()
}

fn json_list<V: serde::Serialize>(map: &std::collections::BTreeMap<String, V>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    format!(
        "<pre>{}</pre>",
        esc(&serde_json::to_string_pretty(map).unwrap_or_default())
    )
}

/// `GET /ui/runs/{id}`: the run's state (at the end, or `?at=` a seq) and
/// its journal.
pub(crate) async fn show(
    Extension(lead): Extension<Lead>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Path(id): Path<String>,
    Query(p): Query<ShowParams>,
) -> Response {
    let Some(flows) = lead.here() else {
        return no_flows(&sign_in, &lead);
    };
    let run = match parse_run(&sign_in, &id) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let view = match flows.get_run(run, p.at, &sign_in.who).await {
        Ok(v) => v,
        Err(e) => return error_page(&sign_in, &e),
    };
    let records = match flows
        .journal(run, p.after, TIMELINE + 1, &sign_in.who)
        .await
    {
        Ok(r) => r,
        Err(e) => return error_page(&sign_in, &e),
    };
    let more = records.len() > TIMELINE;
    let shown = &records[..records.len().min(TIMELINE)];
    let id = run.to_string();
    let next = match (more, shown.last()) {
        (true, Some(last)) => format!(
            r#"<a href="/ui/runs/{}?after={}" rel="next">Later records</a>"#,
            esc(&id),
            last.seq
        ),
        _ => String::new(),
    };
    let m = &view.meta;
    let body = format!(
        r#"<p><a href="/ui/runs">← Runs</a></p><h1>Run <code>{eid}</code></h1>
<section aria-labelledby="state"><h2 id="state">State at seq <span id="state-seq">{seq}</span></h2>
<form method="get" action="/ui/runs/{eid}" class="filters"><label for="at">Show the state at seq</label><input id="at" name="at" type="number" min="1" value="{seq}"><button type="submit">Show</button>{now}</form>
<dl class="facts"><dt>Flow</dt><dd>{flow} (version {version}) · <a href="/ui/sessions?flow={qflow}">its step sessions</a></dd><dt>Status</dt><dd id="run-status">{status}</dd><dt>Tenant</dt><dd>{tenant}</dd><dt>Started by</dt><dd>{by}</dd><dt>Input</dt><dd><pre>{input}</pre></dd><dt>Steps done</dt><dd id="run-steps">{steps}</dd><dt>In flight</dt><dd>{in_flight}</dd><dt>Timers</dt><dd>{timers}</dd><dt>Signals waiting</dt><dd>{signals}</dd></dl>
<form method="post" action="/ui/runs/{eid}/replay" class="inline">{csrf}<button type="submit" id="replay">Replay against the recording</button></form></section>
<section aria-labelledby="timeline"><h2 id="timeline">Timeline</h2><table class="list timeline"><caption>Run journal records in order; a seq shows the state there</caption><thead><tr><th scope="col">Seq</th><th scope="col">Time</th><th scope="col">Record</th><th scope="col">Details</th></tr></thead><tbody>{rows}</tbody></table><nav class="pages" aria-label="Pages">{next}</nav></section>"#,
        eid = esc(&id),
        seq = view.seq,
        now = if p.at.is_some() {
            format!(r#" <a href="/ui/runs/{}">Now</a>"#, esc(&id))
        } else {
            String::new()
        },
        flow = esc(&m.flow),
        qflow = esc(&query_escape(&m.flow)),
        version = esc(&m.version),
        status = view.status_at_seq.as_str(),
        tenant = esc(&m.tenant),
        by = esc(&m.by),
        input = esc(&serde_json::to_string_pretty(&view.input).unwrap_or_default()),
        steps = json_list(&view.steps),
        in_flight = json_list(&view.in_flight),
        timers = json_list(&view.timers),
        signals = if view.pending_signals.is_empty() {
            "none".into()
        } else {
            esc(&view
                .pending_signals
                .iter()
                .map(|(seq, name)| format!("{name} (seq {seq})"))
                .collect::<Vec<_>>()
                .join(", "))
        },
        csrf = html::csrf_field(&sign_in),
        rows = timeline(&id, shown, p.at),
    );
    respond(StatusCode::OK, html::page("Run", Some(&sign_in), &body))
}

/// `POST /ui/runs/{id}/replay`: re-run the recorded run over the version
/// it ran, with its recorded step results; the report.
pub(crate) async fn replay(
    Extension(lead): Extension<Lead>,
    Extension(sign_in): Extension<ConsoleSignIn>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&sign_in, &form.csrf) {
        return bad_csrf();
    }
    let Some(flows) = lead.here() else {
        return no_flows(&sign_in, &lead);
    };
    let run = match parse_run(&sign_in, &id) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let r = match flows.replay(run, false, &sign_in.who).await {
        Ok(r) => r,
        Err(e) => return error_page(&sign_in, &e),
    };
    let verdict = if r.diverged {
        format!(
            r#"<p class="status bad" id="replay-verdict">Diverged: {}</p>"#,
            esc(&r.divergence)
        )
    } else {
        format!(
            r#"<p class="status ok" id="replay-verdict">Same: the replay reproduced all {} compared step outputs.</p>"#,
            r.compared
        )
    };
    let body = format!(
        r#"<p><a href="/ui/runs/{eid}">← Run {eid}</a></p><h1>Replay of run <code>{eid}</code></h1>{verdict}<dl class="facts"><dt>Version</dt><dd>{version}</dd><dt>Step outputs compared</dt><dd id="replay-compared">{compared}</dd><dt>Ended</dt><dd>{status}</dd><dt>Output</dt><dd><pre>{output}</pre></dd></dl>"#,
        eid = esc(&run.to_string()),
        version = esc(&r.version),
        compared = r.compared,
        status = esc(&r.status),
        output = esc(&serde_json::to_string_pretty(&r.output).unwrap_or_default()),
    );
    respond(StatusCode::OK, html::page("Replay", Some(&sign_in), &body))
}
