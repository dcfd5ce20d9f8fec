//! The web console in a real browser: headless chromium over WebDriver
//! against the real binary (auth on, API keys per role and tenant) and a
//! fake model server. Screenshots of the main pages go to
//! `target/console-screenshots/` (docs/console.md shows them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton::proto::v1::{self, gates_client::GatesClient, inspect_client::InspectClient};
use baton::types::{EventKind, SessionEvent, ToolCall};
use baton_testkit::fake_openai::ScriptedReply;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};
use tonic::transport::Channel;

use crate::common::*;
use crate::webdriver::Browser;

const CONFIG: &str = r#"
[auth]
enabled = true

[tools.builtin]
calculator = true

[[gates.policies]]
name = "review_math"
kind = "before_tool"
tools = ["calculator"]
reviewers = "finance"

[[tenants]]
name = "acme"

[[tenants]]
name = "globex"
"#;

/// `baton keys create --offline` (the server is stopped); the secret.
fn key(config: &Path, tenant: &str, role: &str, group: &str) -> String {
    let mut cmd = std::process::Command::new(bin());
    cmd.args([
        "keys",
        "create",
        "--offline",
        "--json",
        "--tenant",
        tenant,
        "--role",
        role,
    ])
    .arg("--config")
    .arg(config);
    if !group.is_empty() {
        cmd.args(["--group", group]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["secret"].as_str().unwrap().to_string()
}

fn authed<T>(key: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

async fn channel(server: &BatonProcess) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn calc(id: &str, expression: &str) -> ScriptedReply {
    ScriptedReply::ToolCalls(vec![ToolCall {
        id: id.into(),
        name: "calculator".into(),
        arguments: format!(r#"{{"expression":"{expression}"}}"#),
    }])
}

/// Start a session as `key`, send `text`; the gate its turn opens.
async fn gated(server: &BatonProcess, key: &str, text: &str) -> (String, String) {
    let mut c = Client::new(channel(server).await);
    let id = c
        .start_session(authed(key, v1::StartSessionRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let mut s = c
        .send_message(authed(
            key,
            v1::SendMessageRequest {
                session_id: id.clone(),
                content: text.into(),
                review: false,
                images: Vec::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let events = read_until(&mut s, |e| e.kind.name() == "gate_opened" || e.ends_turn()).await;
    match events.last().map(|e| &e.kind) {
        Some(EventKind::GateOpened { gate_id, .. }) => (id, gate_id.to_string()),
        other => panic!("expected a gate, got {other:?}"),
    }
}

/// The session's journal to the end of its turn, read as `key`.
async fn turn_end(server: &BatonProcess, key: &str, id: &str) -> Vec<SessionEvent> {
    let mut c = Client::new(channel(server).await);
    let mut r = c
        .resume_session(authed(
            key,
            v1::ResumeSessionRequest {
                session_id: id.into(),
                after_seq: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    read_until(&mut r, |e| e.ends_turn()).await
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

/// Sign in through the form, by keyboard: focus, type, Enter.
async fn sign_in(b: &Browser, http: &str, secret: &str) {
    b.goto(&format!("{http}/ui/gates")).await.unwrap();
    assert!(
        b.url().await.unwrap().contains("/ui/login"),
        "not signed in: the login page"
    );
    b.run("document.getElementById('credential').focus(); return 1")
        .await
        .unwrap();
    b.keys(&format!("{secret}\u{E007}")).await.unwrap();
    b.wait_text("the gate queue", |t| {
        t.contains("Gates waiting for a decision")
    })
    .await
    .unwrap();
}

async fn sign_out(b: &Browser) {
    let out = b.find("header form button").await.unwrap();
    b.click(&out).await.unwrap();
    b.wait_text("the login page", |t| t.contains("API key or token"))
        .await
        .unwrap();
}

async fn gate_rows(b: &Browser) -> Vec<String> {
    let v = b
        .run("return [...document.querySelectorAll('#gate-rows tr[data-gate]')].map(r => r.dataset.gate)")
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

async fn wait_rows(b: &Browser, what: &str, want: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = gate_rows(b).await;
        if want(&rows) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: rows {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The prompt's markup shows on the page as text and never ran: no
/// script set its marker, no element came of it. The page's text.
async fn inert_markup(b: &Browser) -> String {
    let t = b.page_text().await.unwrap();
    assert!(t.contains("<script>window.__xss=1</script>"), "{t}");
    assert_eq!(
        b.run("return typeof window.__xss").await.unwrap(),
        "undefined"
    );
    assert!(
        b.find_all("main script, main img")
            .await
            .unwrap()
            .is_empty()
    );
    t
}

async fn decide_by_api(server: &BatonProcess, key: &str, gate: &str) {
    GatesClient::new(channel(server).await)
        .decide_gate(authed(
            key,
            v1::DecideGateRequest {
                gate_id: gate.into(),
                decision: v1::GateDecision::Approve as i32,
                reviewer: String::new(),
                reason: "by API".into(),
                edited_payload: String::new(),
            },
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_and_operators_work_in_a_real_browser_and_a_crash_loses_no_gate() {
    let fake = FakeOpenAi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flows_dir = dir.path().join("flows");
    std::fs::create_dir_all(&flows_dir).unwrap();
    std::fs::write(
        flows_dir.join("doubler.toml"),
        "name = \"doubler\"\n[[steps]]\nid = \"double\"\nkind = \"transform\"\nexpr = \".input.n * 2\"\n",
    )
    .unwrap();
    let toml = format!(
        "{}\n{CONFIG}\n[flows]\ndir = {:?}\n",
        fake_model_toml(&fake.base_url(), false),
        flows_dir.display().to_string()
    );
    let config = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let client = key(&config, "acme", "client", "");
    let finance = key(&config, "acme", "reviewer", "finance");
    let legal = key(&config, "acme", "reviewer", "legal");
    let operator = key(&config, "acme", "operator", "");
    let globex = key(&config, "globex", "reviewer", "finance");
    let globex_operator = key(&config, "globex", "operator", "");
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let http = server.http_url().unwrap();
    let b = Browser::start().await.unwrap();

    // A: a prompt carrying markup, its tool call held for finance.
    // (The fake answers in order: each continuation is scripted just
    // before the decision that lets it run.)
    fake.push_reply(calc("c1", "6*7"));
    let xss = r#"what is 6*7 <script>window.__xss=1</script><img src=x onerror="window.__xss=2">"#;
    let (a, gate_a) = gated(&server, &client, xss).await;

    // Signing in: a wrong key and a client's key are refused with the reason.
    b.goto(&format!("{http}/ui/gates")).await.unwrap();
    let url = b.url().await.unwrap();
    assert!(url.ends_with("/ui/login?next=/ui/gates"), "{url}");
    b.screenshot(&shots().join("login.png")).await.unwrap();
    for (secret, why) in [
        ("not-a-key", "neither a Baton API key"),
        (client.as_str(), "no console role"),
    ] {
        b.fill(&b.find("#credential").await.unwrap(), secret)
            .await
            .unwrap();
        b.click(&b.find("form button").await.unwrap())
            .await
            .unwrap();
        let t = b
            .wait_text("the refusal", |t| t.contains(why))
            .await
            .unwrap();
        assert!(t.contains("API key or token"), "{t}");
    }
    sign_in(&b, &http, &finance).await;
    let cookies = b.cookies().await.unwrap();
    let c = cookies
        .iter()
        .find(|c| c["name"] == "baton_console")
        .unwrap();
    assert_eq!(c["httpOnly"], true, "{c}");
    assert_eq!(c["sameSite"], "Strict", "{c}");
    assert_eq!(gate_rows(&b).await, vec![gate_a.clone()]);

    // B opens while the queue is on screen: it appears without a reload,
    // first (the newest, neither has a deadline).
    b.run("window.__marker = 7; return 1").await.unwrap();
    fake.push_reply(calc("c2", "2+2"));
    let (bs, gate_b) = gated(&server, &client, "add two and two").await;
    let rows = wait_rows(&b, "B appears", |r| r.len() == 2).await;
    assert_eq!(rows, vec![gate_b.clone(), gate_a.clone()]);
    assert_eq!(
        b.run("return window.__marker").await.unwrap(),
        7,
        "no reload"
    );
    b.screenshot(&shots().join("gates.png")).await.unwrap();

    // A's page: the markup is text, and inert.
    b.goto(&format!("{http}/ui/gates/{gate_a}")).await.unwrap();
    let t = inert_markup(&b).await;
    assert!(t.contains("review_math") && t.contains("calculator"), "{t}");
    b.screenshot(&shots().join("gate.png")).await.unwrap();

    // An edit that is not valid arguments: the error, the gate still pending.
    b.fill(&b.find("#edit-payload").await.unwrap(), "not json at all")
        .await
        .unwrap();
    b.click(&b.find("#edit").await.unwrap()).await.unwrap();
    let t = b
        .wait_text("the edit error", |t| t.contains("edited_payload"))
        .await
        .unwrap();
    assert!(!b.find_all("[role=alert]").await.unwrap().is_empty(), "{t}");
    assert_eq!(
        b.text(&b.find("#gate-status").await.unwrap())
            .await
            .unwrap(),
        "pending"
    );
    assert_eq!(
        b.run("return document.getElementById('edit-payload').value")
            .await
            .unwrap(),
        "not json at all",
        "the form keeps what was sent"
    );

    // Approve: the session continues to its answer.
    fake.push_reply(ScriptedReply::Text("The answer is 42.".into()));
    b.fill(&b.find("#approve-reason").await.unwrap(), "looks right")
        .await
        .unwrap();
    b.click(&b.find("#approve").await.unwrap()).await.unwrap();
    let t = b
        .wait_text("decided", |t| t.contains("Decision"))
        .await
        .unwrap();
    assert!(
        t.contains("approve") && t.contains("looks right") && t.contains("api_key:"),
        "{t}"
    );
    assert!(
        b.find_all("#approve").await.unwrap().is_empty(),
        "decided: no forms"
    );
    let events = turn_end(&server, &client, &a).await;
    assert_eq!(kinds(&events).last(), Some(&"turn_completed"));
    assert_eq!(answer(&events), "The answer is 42.");

    // Reject B: a reason is required; then the session is told.
    b.goto(&format!("{http}/ui/gates/{gate_b}")).await.unwrap();
    b.click(&b.find("#reject").await.unwrap()).await.unwrap();
    b.wait_text("the reason error", |t| {
        t.contains("a rejection needs a reason")
    })
    .await
    .unwrap();
    b.fill(&b.find("#reject-reason").await.unwrap(), "not today")
        .await
        .unwrap();
    fake.push_reply(ScriptedReply::Text("Could not do it.".into()));
    b.click(&b.find("#reject").await.unwrap()).await.unwrap();
    let t = b
        .wait_text("rejected", |t| t.contains("Decision"))
        .await
        .unwrap();
    assert!(t.contains("reject") && t.contains("not today"), "{t}");
    let events = turn_end(&server, &client, &bs).await;
    assert_eq!(answer(&events), "Could not do it.");
    let told = events.iter().any(|e| {
        matches!(&e.kind, EventKind::ToolResult { output, is_error: true, .. } if output.contains("not today"))
    });
    assert!(told, "{:?}", kinds(&events));

    // A gate decided through the API leaves the queue on screen.
    fake.push_reply(calc("c3", "3*3"));
    let (_, gate_c) = gated(&server, &client, "three squared").await;
    b.goto(&format!("{http}/ui/gates")).await.unwrap();
    b.run("window.__marker = 8; return 1").await.unwrap();
    wait_rows(&b, "C listed", |r| r == [gate_c.clone()]).await;
    fake.push_reply(ScriptedReply::Text("9.".into()));
    decide_by_api(&server, &finance, &gate_c).await;
    wait_rows(&b, "C gone", |r| r.is_empty()).await;
    assert_eq!(
        b.run("return window.__marker").await.unwrap(),
        8,
        "no reload"
    );

    // A gate page open while the API decides it: the decision shows at
    // once, and the form kept from before cannot decide it again.
    fake.push_reply(calc("c4", "4*4"));
    let (_, gate_d) = gated(&server, &client, "four squared").await;
    b.goto(&format!("{http}/ui/gates/{gate_d}")).await.unwrap();
    let csrf = b
        .run("return document.querySelector('input[name=csrf]').value")
        .await
        .unwrap();
    fake.push_reply(ScriptedReply::Text("16.".into()));
    decide_by_api(&server, &finance, &gate_d).await;
    let t = b
        .wait_text("decided elsewhere", |t| t.contains("Decision"))
        .await
        .unwrap();
    assert!(t.contains("by API"), "{t}");
    let again = b
        .run(&format!(
            "return fetch('/ui/gates/{gate_d}', {{method: 'POST', body: new URLSearchParams({{csrf: {csrf}, decision: 'approve'}})}}).then(r => r.text().then(t => [r.status, t]))"
        ))
        .await
        .unwrap();
    assert_eq!(again[0], 409, "{again}");
    assert!(
        again[1].as_str().unwrap().contains("already decided"),
        "{again}"
    );
    // And a post without the sign-in's CSRF token is refused.
    let forged = b
        .run(&format!(
            "return fetch('/ui/gates/{gate_d}', {{method: 'POST', body: new URLSearchParams({{csrf: 'x', decision: 'approve'}})}}).then(r => r.status)"
        ))
        .await
        .unwrap();
    assert_eq!(forged, 403);

    // E, for finance: a reviewer of another group, and one of another
    // tenant, see nothing of it.
    fake.push_reply(calc("c5", "5*5"));
    let (e, gate_e) = gated(&server, &client, "five squared").await;
    for other in [&legal, &globex] {
        sign_out(&b).await;
        sign_in(&b, &http, other).await;
        assert!(gate_rows(&b).await.is_empty());
        assert!(
            b.page_text()
                .await
                .unwrap()
                .contains("No gates are waiting for you")
        );
        b.goto(&format!("{http}/ui/gates/{gate_e}")).await.unwrap();
        let t = b.page_text().await.unwrap();
        assert!(
            t.contains("not found") && !t.contains("five squared"),
            "{t}"
        );
    }

    // The operator: sessions, A's timeline, and A's state at the seq its
    // gate opened, as the Inspect API has it.
    sign_out(&b).await;
    sign_in(&b, &http, &operator).await;
    b.goto(&format!("{http}/ui/sessions")).await.unwrap();
    let t = b.page_text().await.unwrap();
    assert!(t.contains(&a) && t.contains(&e), "{t}");
    b.goto(&format!("{http}/ui/sessions/{a}")).await.unwrap();
    let seq: u64 = b
        .run("return [...document.querySelectorAll('tbody tr')].find(r => r.querySelector('code')?.textContent === 'gate_opened').id.slice(4)")
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    b.click(&b.find(&format!("#seq-{seq} a")).await.unwrap())
        .await
        .unwrap();
    b.wait_text("time travel", |t| {
        t.contains(&format!("State at seq {seq} of"))
    })
    .await
    .unwrap();
    b.screenshot(&shots().join("session.png")).await.unwrap();
    let then = InspectClient::new(channel(&server).await)
        .get_state_at(authed(
            &operator,
            v1::GetStateAtRequest {
                session_id: a.clone(),
                seq,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let state: serde_json::Value = serde_json::from_str(&then.state_json).unwrap();
    let shown = b
        .text(&b.find("#state-messages").await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        shown,
        state["messages"].as_array().unwrap().len().to_string()
    );
    // A fork where the gate is pending is refused, with the reason.
    b.click(&b.find("#fork").await.unwrap()).await.unwrap();
    b.wait_text("the fork refused", |t| t.contains("has a gate pending"))
        .await
        .unwrap();
    assert!(!b.find_all("[role=alert]").await.unwrap().is_empty());
    b.goto(&format!("{http}/ui/sessions/{a}")).await.unwrap();
    let now = b
        .text(&b.find("#state-messages").await.unwrap())
        .await
        .unwrap();
    assert_ne!(
        now, shown,
        "the state now differs from the state at the gate"
    );
    // The prompt's markup is text here too, and inert.
    inert_markup(&b).await;
    // The timeline reads without opening the records: who decided the gate
    // and why, where the answer came from and what it said.
    let what = |kind: &str| {
        format!(
            "return [...document.querySelectorAll('tbody tr')].filter(r => r.querySelector('code')?.textContent === '{kind}').map(r => r.querySelector('td.what').textContent)"
        )
    };
    let decided = b.run(&what("gate_decided")).await.unwrap();
    let decided = decided[0].as_str().unwrap_or_default();
    assert!(
        decided.contains("approve by api_key:") && decided.contains("looks right"),
        "{decided}"
    );
    let answers = b.run(&what("assistant_message")).await.unwrap();
    let last = answers
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap();
    assert!(
        last.contains("assistant [fake/") && last.contains("The answer is 42."),
        "{last}"
    );
    b.run("document.getElementById('timeline').scrollIntoView(); return 1")
        .await
        .unwrap();
    b.screenshot(&shots().join("timeline.png")).await.unwrap();
    // Fork from now: a new session holding A's conversation.
    b.click(&b.find("#fork").await.unwrap()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let forked = loop {
        let url = b.url().await.unwrap();
        if !url.ends_with(&a) && url.contains("/ui/sessions/") {
            break url;
        }
        assert!(tokio::time::Instant::now() < deadline, "no fork: {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let forked = forked.rsplit('/').next().unwrap().to_string();
    assert_ne!(forked, a);
    assert_eq!(
        b.text(&b.find("#state-messages").await.unwrap())
            .await
            .unwrap(),
        now,
        "the fork holds A's messages"
    );
    let info = InspectClient::new(channel(&server).await)
        .get_session_state(authed(
            &operator,
            v1::GetSessionStateRequest {
                session_id: forked.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let state: serde_json::Value = serde_json::from_str(&info.state_json).unwrap();
    assert_eq!(state["messages"].as_array().unwrap().len().to_string(), now);
    b.goto(&format!("{http}/ui/sessions/{a}")).await.unwrap();

    // Replay A from its page: the report, as the Inspect API's replay has it.
    b.click(&b.find("#replay").await.unwrap()).await.unwrap();
    let t = b
        .wait_text("the replay report", |t| t.contains("Replay of"))
        .await
        .unwrap();
    let verdict = b
        .text(&b.find("#replay-verdict").await.unwrap())
        .await
        .unwrap();
    let report = InspectClient::new(channel(&server).await)
        .replay_session(authed(
            &operator,
            v1::ReplaySessionRequest {
                session_id: a.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        verdict.starts_with("Diverged"),
        report.diverged,
        "{verdict} vs {report:?}"
    );
    let compared = b
        .text(&b.find("#replay-compared").await.unwrap())
        .await
        .unwrap();
    assert_eq!(compared, report.compared.to_string(), "{t}");
    assert!(report.compared > 0);

    // Routes and models: the fake endpoint's breaker, its calls in the
    // last hour, and a chart of them.
    b.goto(&format!("{http}/ui/routes")).await.unwrap();
    let row = b.find(r#"tr[data-endpoint="fake"]"#).await.unwrap();
    let cells = b.text(&row).await.unwrap();
    assert!(cells.contains("closed"), "{cells}");
    let calls: u64 = b
        .run(r#"return document.querySelector('tr[data-endpoint="fake"] td:nth-child(4)').textContent"#)
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(calls >= 4, "A, B and their continuations at least: {calls}");
    let bars = b
        .run(
            r#"return document.querySelectorAll('tr[data-endpoint="fake"] svg rect.calls').length"#,
        )
        .await
        .unwrap();
    assert!(bars.as_u64().unwrap() >= 1, "{bars}");
    b.find(r#"tr[data-route="fake"]"#).await.unwrap();
    b.screenshot(&shots().join("routes.png")).await.unwrap();

    // Audit: verify the chain, then export A's records and check the file
    // offline with the public key the page shows.
    b.goto(&format!("{http}/ui/audit")).await.unwrap();
    b.wait_text("no verification yet", |t| t.contains("Not verified"))
        .await
        .unwrap();
    b.click(
        &b.find("form[action='/ui/audit/verify'] button")
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let t = b
        .wait_text("the chain verified", |t| t.contains("Intact:"))
        .await
        .unwrap();
    assert!(
        t.contains("Verified") && t.contains("by api_key:bk_"),
        "{t}"
    );
    b.screenshot(&shots().join("audit.png")).await.unwrap();
    let public_key = b.text(&b.find("#public-key").await.unwrap()).await.unwrap();
    let (status, disposition, jsonl) = b
        .fetch(&format!("/ui/audit/export?session={a}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{jsonl}");
    assert!(disposition.starts_with("attachment"), "{disposition}");
    let records: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() >= 3, "{jsonl}");
    assert!(
        records.iter().all(|r| r["session_id"] == a.as_str()),
        "{jsonl}"
    );
    let file = dir.path().join("a.jsonl");
    std::fs::write(&file, jsonl).unwrap();
    let out = std::process::Command::new(bin())
        .args(["audit", "verify", "--export"])
        .arg(&file)
        .args(["--public-key", &public_key])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad time is named.
    let (status, _, page) = b.fetch("/ui/audit/export?since=yesterday").await.unwrap();
    assert_eq!(status, 422, "{page}");
    assert!(page.contains("since"), "{page}");

    // A flow run: listed, its state at the end and at its first record,
    // and its replay.
    let run = v1::flows_client::FlowsClient::new(channel(&server).await)
        .start_run(authed(
            &client,
            v1::StartRunRequest {
                flow: "doubler".into(),
                input_json: "{\"n\": 21}".into(),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .run_id;
    b.goto(&format!("{http}/ui/runs?flow=doubler"))
        .await
        .unwrap();
    b.wait_text("the run listed", |t| t.contains(&run))
        .await
        .unwrap();
    for i in 0.. {
        b.goto(&format!("{http}/ui/runs/{run}")).await.unwrap();
        let status = b.text(&b.find("#run-status").await.unwrap()).await.unwrap();
        if status == "completed" {
            break;
        }
        assert!(i < 100, "the run did not complete: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let steps = b.text(&b.find("#run-steps").await.unwrap()).await.unwrap();
    assert!(
        steps.contains("\"double\"") && steps.contains("42"),
        "{steps}"
    );
    b.screenshot(&shots().join("run.png")).await.unwrap();
    b.click(&b.find("#seq-1 a").await.unwrap()).await.unwrap();
    b.wait_text("the run's first record", |t| t.contains("State at seq 1"))
        .await
        .unwrap();
    let steps = b.text(&b.find("#run-steps").await.unwrap()).await.unwrap();
    assert_eq!(steps, "none", "no step had run at seq 1");
    b.click(&b.find("#replay").await.unwrap()).await.unwrap();
    let t = b
        .wait_text("the run's replay", |t| t.contains("Replay of run"))
        .await
        .unwrap();
    assert!(
        t.contains("Same: the replay reproduced all 1 compared"),
        "{t}"
    );

    // Another tenant's operator exports nothing of acme's: A's records are
    // "not found", and its whole-trail export holds none of them.
    sign_out(&b).await;
    sign_in(&b, &http, &globex_operator).await;
    let (status, _, page) = b
        .fetch(&format!("/ui/audit/export?session={a}"))
        .await
        .unwrap();
    assert_eq!(status, 404, "{page}");
    let (status, _, all) = b.fetch("/ui/audit/export").await.unwrap();
    assert_eq!(status, 200, "{all}");
    assert!(!all.contains(&a) && !all.contains("acme"), "{all}");

    // SIGKILL with E pending: after the restart the browser signs in again
    // and E waits in the queue; approving it lets its session finish.
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let http = server.http_url().unwrap();
    sign_in(&b, &http, &finance).await;
    assert_eq!(gate_rows(&b).await, vec![gate_e.clone()]);
    b.goto(&format!("{http}/ui/gates/{gate_e}")).await.unwrap();
    fake.push_reply(ScriptedReply::Text("25.".into()));
    b.click(&b.find("#approve").await.unwrap()).await.unwrap();
    b.wait_text("E decided", |t| t.contains("Decision"))
        .await
        .unwrap();
    let events = turn_end(&server, &client, &e).await;
    assert_eq!(answer(&events), "25.");
    let calls = events
        .iter()
        .filter(|e| e.kind.name() == "tool_result")
        .count();
    assert_eq!(calls, 1, "the calculator ran once: {:?}", kinds(&events));
    server.terminate().await.unwrap();
}
