//! Server time of the web console's pages with 100,000 sessions and 10,000
//! pending gates (half with a deadline): the real runtime (sync
//! durability, the signed audit trail on), the real HTTP server on
//! loopback with authentication on, signed in through `POST /ui/login`
//! like a browser. Each page is fetched sequentially after a warm-up and
//! timed from request to the last byte of the body (so loopback and HTTP
//! parsing are included: the figure is an upper bound on server time).
//!
//! Flow runs too (`--runs`, half waiting on a one-hour timer, half
//! completed), for the runs pages.
//!
//! Run with: cargo bench --bench console -- [--sessions N] [--gates N] [--runs N] [--requests N]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_flows::{FlowBuilder, Flows, FlowsConfig, StartRun, StepBuilder};
use baton_runtime::{Durability, Runtime, RuntimeConfig, StartSession};
use baton_server::{AuthSection, Authenticator, new_key};
use baton_types::AccessRole;
use futures::StreamExt;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Args {
    sessions: usize,
    gates: usize,
    runs: usize,
    requests: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        sessions: 100_000,
        gates: 10_000,
        runs: 10_000,
        requests: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value =
            || -> Result<usize> { Ok(it.next().context("a value after the flag")?.parse()?) };
        match flag.as_str() {
            "--sessions" => a.sessions = value()?,
            "--gates" => a.gates = value()?,
            "--runs" => a.runs = value()?,
            "--requests" => a.requests = value()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    if a.gates > a.sessions {
        bail!("--gates must not exceed --sessions");
    }
    Ok(a)
}

fn config(dir: &std::path::Path) -> Result<RuntimeConfig> {
    let mut c = RuntimeConfig::with_data_dir(dir.join("data"));
    c.store.durability = Durability::Sync;
    // Never called: every message below is held by a gate before the model.
    c.models = vec![serde_json::from_value(serde_json::json!({
        "name": "m", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
    }))?];
    c.sessions.default_route = "m".into();
    c.gates.policies = vec![
        serde_json::from_value(serde_json::json!({
            "name": "due", "kind": "data_rule", "reviewers": "ops",
            "pattern": "HOLD-DUE", "applies_to": "input", "timeout_ms": 86_400_000,
        }))?,
        serde_json::from_value(serde_json::json!({
            "name": "open", "kind": "data_rule", "reviewers": "ops",
            "pattern": "HOLD-OPEN", "applies_to": "input",
        }))?,
        serde_json::from_value(serde_json::json!({
            "name": "legal", "kind": "data_rule", "reviewers": "legal",
            "pattern": "HOLD-LEGAL", "applies_to": "input",
        }))?,
    ];
    c.tenants = [baton_types::DEFAULT_TENANT, "globex"]
        .into_iter()
        .map(|name| {
            serde_json::from_value(serde_json::json!({
                "name": name, "key_requests_per_second": 1e9, "key_burst": 1000000,
                "requests_per_second": 1e9, "burst": 1000000,
            }))
        })
        .collect::<Result<_, _>>()?;
    Ok(c)
}

/// A signed-in console client: the sign-in cookie of `secret`.
async fn sign_in(web: &reqwest::Client, base: &str, secret: &str) -> Result<String> {
    let r = web
        .post(format!("{base}/ui/login"))
        .header("origin", base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "credential={}&next=%2Fui%2Fgates",
            secret
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                })
                .collect::<String>()
        ))
        .send()
        .await?;
    let cookie = r
        .headers()
        .get("set-cookie")
        .context("no sign-in cookie")?
        .to_str()?
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(cookie)
}

/// Time `n` sequential GETs of `path` (after 10 untimed); milliseconds,
/// sorted, and the size of the last body.
async fn time_page(
    web: &reqwest::Client,
    base: &str,
    cookie: &str,
    path: &str,
    n: usize,
) -> Result<(Vec<f64>, usize)> {
    let mut times = Vec::with_capacity(n);
    let mut size = 0;
    for i in 0..n + 10 {
        let t = Instant::now();
        let r = web
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if !status.is_success() {
            bail!(
                "GET {path}: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(400)])
            );
        }
        size = body.len();
        if i >= 10 {
            times.push(ms);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times, size))
}

/// Gates of the "legal" group (the oldest ones).
const LEGAL_GATES: usize = 10;

/// Send `text` to session `id` and wait for its gate to open.
async fn open_gate(
    h: &baton_runtime::RuntimeHandle,
    id: baton_types::SessionId,
    text: &str,
) -> Result<()> {
    let mut s = h.send_with(id, text.into(), false).await?;
    while let Some(e) = s.next().await {
        let e = e?;
        if e.kind.name() == "gate_opened" {
            return Ok(());
        }
    }
    bail!("session {id}: the turn ended without a gate")
}

async fn get_text(web: &reqwest::Client, url: &str, cookie: &str) -> Result<String> {
    Ok(web
        .get(url)
        .header("cookie", cookie)
        .send()
        .await?
        .text()
        .await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let audit_cfg = baton_audit::AuditConfig::in_dir(dir.path().join("audit"));
    let audit = baton_audit::AuditLog::open(audit_cfg)?;
    let runtime = Runtime::builder(config(dir.path())?)
        .with_audit(std::sync::Arc::new(baton_server::audit::SignedAudit(
            audit.clone(),
        )))
        .start()
        .await?;

    // The sessions, then the gated messages (half with a deadline).
    let t = Instant::now();
    // In chunks, the audit trail flushed between them (it refuses new work
    // once 100,000 records wait: store.max_audit_backlog).
    let mut ids = Vec::with_capacity(a.sessions);
    while ids.len() < a.sessions {
        let n = (a.sessions - ids.len()).min(10_000);
        let chunk = futures::stream::iter(0..n)
            .map(|_| {
                let h = runtime.clone();
                async move { h.start_session(StartSession::default()).await }
            })
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        ids.extend(chunk.into_iter().map(|s| s.id));
        audit.flush().await?;
    }
    ids.sort();
    println!(
        "{} sessions created in {:.2} s",
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let gated: Vec<_> = ids
        .iter()
        .step_by(a.sessions / a.gates.max(1))
        .take(a.gates)
        .copied()
        .collect();
    // The oldest few gates are for another group ("legal", no deadline):
    // last in the queue, so its reviewer's first page reads past every
    // other pending gate (the worst case of a group-filtered queue).
    let legal = LEGAL_GATES.min(gated.len());
    for id in &gated[..legal] {
        open_gate(&runtime, *id, "please HOLD-LEGAL this").await?;
    }
    futures::stream::iter(gated.iter().enumerate().skip(legal))
        .map(|(i, id)| {
            let h = runtime.clone();
            let text = if i % 2 == 0 {
                "please HOLD-DUE this"
            } else {
                "please HOLD-OPEN this"
            };
            async move { open_gate(&h, *id, text).await }
        })
        .buffer_unordered(256)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    println!(
        "{} gates opened in {:.2} s",
        gated.len(),
        t.elapsed().as_secs_f64()
    );

    // Flow runs: half wait on a timer, half complete at once.
    let t = Instant::now();
    let flows = Flows::start(
        runtime.clone(),
        FlowsConfig {
            inline_wait_ms: 0,
            ..FlowsConfig::default()
        },
        vec![
            FlowBuilder::new("later")
                .step(StepBuilder::wait_for("pause", "1h"))
                .build()?,
            FlowBuilder::new("double")
                .step(StepBuilder::transform("d", ".input.n * 2"))
                .build()?,
        ],
    )
    .await?;
    let by = baton_types::Principal::embedded();
    let runs = futures::stream::iter(0..a.runs)
        .map(|i| {
            let (flows, by) = (flows.clone(), by.clone());
            async move {
                let started = flows
                    .start_run(
                        StartRun {
                            flow: if i % 2 == 0 { "later" } else { "double" }.into(),
                            input: serde_json::json!({ "n": i }),
                            ..StartRun::default()
                        },
                        &by,
                    )
                    .await?;
                anyhow::Ok(started.id)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    audit.flush().await?;
    println!(
        "{} flow runs started in {:.2} s",
        runs.len(),
        t.elapsed().as_secs_f64()
    );
    let run = runs.first().map(|r| r.to_string()).unwrap_or_default();

    // Keys, the HTTP server, sign-ins.
    let mut secrets = Vec::new();
    for (name, tenant, role, groups) in [
        (
            "operator",
            baton_types::DEFAULT_TENANT,
            AccessRole::Operator,
            vec![],
        ),
        (
            "reviewer",
            baton_types::DEFAULT_TENANT,
            AccessRole::Reviewer,
            vec!["ops".to_string()],
        ),
        (
            "legal",
            baton_types::DEFAULT_TENANT,
            AccessRole::Reviewer,
            vec!["legal".to_string()],
        ),
        ("globex", "globex", AccessRole::Operator, vec![]),
    ] {
        let (record, secret) = new_key(
            name.into(),
            tenant.into(),
            vec![role],
            groups,
            0,
            "bench".into(),
        )?;
        runtime.add_api_key(record, "bench").await?;
        secrets.push(secret);
    }
    let section: AuthSection = serde_json::from_value(serde_json::json!({ "enabled": true }))?;
    let auth = Authenticator::new(runtime.clone(), &section)
        .await
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(baton_server::serve_http(
        runtime.clone(),
        Some(flows.clone()),
        listener,
        Default::default(),
        auth,
        Some(audit.clone()),
        async {
            let _ = stopped.await;
        },
    ));
    let web = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()?;
    let operator = sign_in(&web, &base, &secrets[0]).await?;
    let reviewer = sign_in(&web, &base, &secrets[1]).await?;
    let legal_reviewer = sign_in(&web, &base, &secrets[2]).await?;
    let globex = sign_in(&web, &base, &secrets[3]).await?;

    // Tokens for pages deep in the lists: the queue after its first 1,000
    // gates (page 11 of 100), the sessions list at its middle.
    // (And the whole queue, as a check: every gate once, in queue order.)
    let mut pending = 0;
    let mut token = None;
    let mut deep_gate_token = String::new();
    let mut gate = String::new();
    loop {
        let page = runtime
            .list_gates(baton_runtime::GateQuery {
                status: Some(baton_runtime::GateStatus::Pending),
                page_size: 1000,
                page_token: token,
                order: baton_runtime::GateOrder::Queue,
                ..Default::default()
            })
            .await?;
        if gate.is_empty() {
            gate = page
                .gates
                .first()
                .map(|g| g.gate_id.to_string())
                .unwrap_or_default();
        }
        pending += page.gates.len();
        token = page.next_page_token;
        if deep_gate_token.is_empty() {
            deep_gate_token = token.clone().unwrap_or_default();
        }
        if token.is_none() {
            break;
        }
    }
    if pending != gated.len() {
        bail!("{pending} gates in the queue, {} opened", gated.len());
    }
    let session = gated.first().map(|s| s.to_string()).unwrap_or_default();
    let deep_session = ids[ids.len() / 2].to_string();

    let pages: Vec<(&str, &str, String)> = vec![
        ("gate queue, first page", &reviewer, "/ui/gates".into()),
        (
            "gate queue, live refresh",
            &reviewer,
            "/ui/gates?fragment=rows".into(),
        ),
        (
            "gate queue, after 1000",
            &reviewer,
            format!("/ui/gates?after={deep_gate_token}"),
        ),
        ("gate page", &reviewer, format!("/ui/gates/{gate}")),
        (
            "gate queue, group of 10 gates",
            &legal_reviewer,
            "/ui/gates".into(),
        ),
        ("gate queue, another tenant", &globex, "/ui/gates".into()),
        ("sessions, another tenant", &globex, "/ui/sessions".into()),
        ("sessions, first page", &operator, "/ui/sessions".into()),
        (
            "sessions, by status",
            &operator,
            "/ui/sessions?status=idle".into(),
        ),
        (
            "sessions, page at 50,000",
            &operator,
            format!("/ui/sessions?page={deep_session}"),
        ),
        (
            "sessions, route matching none",
            &operator,
            "/ui/sessions?route=none".into(),
        ),
        (
            "session timeline",
            &operator,
            format!("/ui/sessions/{session}"),
        ),
        (
            "session at seq 1",
            &operator,
            format!("/ui/sessions/{session}?at=1"),
        ),
        ("runs, first page", &operator, "/ui/runs".into()),
        ("runs of a flow", &operator, "/ui/runs?flow=double".into()),
        (
            "runs by status",
            &operator,
            "/ui/runs?status=waiting".into(),
        ),
        ("a run's page", &operator, format!("/ui/runs/{run}")),
        ("routes and models", &operator, "/ui/routes".into()),
        ("audit", &operator, "/ui/audit".into()),
    ];
    println!(
        "\n{} sessions, {pending} pending gates; {} timed requests a page (sequential, after 10 untimed)\n",
        ids.len(),
        a.requests
    );
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "page", "p50 ms", "p95 ms", "p99 ms", "max ms", "bytes"
    );
    let mut worst: f64 = 0.0;
    for (name, cookie, path) in &pages {
        let (t, size) = time_page(&web, &base, cookie, path, a.requests).await?;
        worst = worst.max(percentile(&t, 0.99));
        println!(
            "{name:<32} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {size:>10}",
            percentile(&t, 0.5),
            percentile(&t, 0.95),
            percentile(&t, 0.99),
            t.last().copied().unwrap_or_default(),
        );
    }
    println!(
        "\nworst p99: {worst:.2} ms (target: every page <= 100 ms: {})",
        if worst <= 100.0 { "MET" } else { "NOT MET" }
    );

    // Off the page path: verifying the whole chain, and exports.
    let page = get_text(&web, &format!("{base}/ui/audit"), &operator).await?;
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("no CSRF token on the audit page")?
        .to_string();
    let t = Instant::now();
    let r = web
        .post(format!("{base}/ui/audit/verify"))
        .header("cookie", &operator)
        .header("origin", &base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await?;
    let verify_ms = t.elapsed().as_secs_f64() * 1000.0;
    let page = get_text(&web, &format!("{base}/ui/audit"), &operator).await?;
    let verdict = page
        .split(r#"id="chain-status">"#)
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or("?");
    println!(
        "audit verify (POST, {}): {verify_ms:.0} ms: {verdict}",
        r.status()
    );
    for (what, path) in [
        (
            "export of one session",
            format!("/ui/audit/export?session={session}"),
        ),
        (
            "export of the tenant's whole trail",
            "/ui/audit/export".to_string(),
        ),
    ] {
        let t = Instant::now();
        let body = web
            .get(format!("{base}{path}"))
            .header("cookie", &operator)
            .send()
            .await?
            .bytes()
            .await?;
        println!(
            "{what}: {:.0} ms, {} records, {} bytes",
            t.elapsed().as_secs_f64() * 1000.0,
            body.iter().filter(|b| **b == b'\n').count(),
            body.len()
        );
    }
    flows.shutdown().await;
    runtime.shutdown().await;
    let _ = stop.send(());
    let _ = server.await;
    audit.close()?;
    Ok(())
}
