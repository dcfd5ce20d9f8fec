//! `POST /v1/embeddings` on the real binary, from the official OpenAI
//! Python SDK and reqwest, against fake OpenAI upstreams over HTTP: routed
//! like chat (a chat-only endpoint is passed over, a failing one fails
//! over), priced, audited, and the tenant's spend kept across SIGKILL.

use baton_testkit::fake_openai::{Fault, fake_embedding};
use baton_testkit::{BatonProcess, FakeOpenAi};
use serde_json::{Value, json};

use crate::common::*;

fn toml(chat: &str, a: &str, b: &str) -> String {
    format!(
        r#"
[sessions]
default_route = "talk"

[[models]]
name = "chat"
provider = "openai"
base_url = {chat:?}
model = "chat-model"

[[models]]
name = "emb-a"
provider = "openai"
base_url = {a:?}
model = "emb-a-model"
capabilities = ["embeddings"]
price_input_per_mtok = 1000000.0
[models.retry]
max_attempts = 1

[[models]]
name = "emb-b"
provider = "openai"
base_url = {b:?}
model = "emb-b-model"
capabilities = ["embeddings"]
price_input_per_mtok = 1000000.0

[[routes]]
name = "embed"
strategy = "fallback"
endpoints = ["chat", "emb-a", "emb-b"]

[[routes]]
name = "talk"
strategy = "fallback"
endpoints = ["chat"]

[[tenants]]
name = "default"
daily_budget_usd = 12.0

[[policies]]
name = "pii"
stage = "input"
[[policies.rules]]
name = "contacts"
detect = ["email"]
outcome = "redact"
"#
    )
}

fn python_sdk(http: &str) -> Vec<Value> {
    crate::python_clients::json_lines(
        "openai_embeddings.py",
        &[],
        &[("BATON_HTTP", http.into()), ("BATON_MODEL", "embed".into())],
    )
}

fn audit_export(dir: &std::path::Path) -> Vec<Value> {
    let audit = dir.join("data").join("audit");
    let out = std::process::Command::new(bin())
        .args(["audit", "verify", "--dir", audit.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(bin())
        .args(["audit", "export", "--dir", audit.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "embedding_call")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_routed_priced_audited_and_their_spend_survives_sigkill() {
    let (chat, a, b) = (
        FakeOpenAi::start().await.unwrap(),
        FakeOpenAi::start().await.unwrap(),
        FakeOpenAi::start().await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = toml(&chat.base_url(), &a.base_url(), &b.base_url());
    let (baton, http, client) = serve_http(dir.path(), &config).await;

    // The SDK, with emb-a failing once: the chat-only endpoint is passed
    // over, emb-a's 503 fails over to emb-b.
    a.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
        body: "busy".into(),
    });
    let lines = python_sdk(&http);
    let want = |t: &str, d: Option<u64>| {
        fake_embedding(t, d)
            .into_iter()
            .map(f64::from)
            .collect::<Vec<_>>()
    };
    let default: Vec<Vec<f64>> = serde_json::from_value(lines[0]["default"].clone()).unwrap();
    assert_eq!(
        default,
        vec![want("hello world", None), want("a b c", None)],
        "base64 vectors, in input order"
    );
    assert_eq!(lines[0]["model"], "emb-b-model");
    assert_eq!(lines[0]["tokens"], 5);
    let floats: Vec<Vec<f64>> = serde_json::from_value(lines[1]["float"].clone()).unwrap();
    assert_eq!(floats, vec![want("one two three", Some(3))]);
    assert_eq!(lines[2], json!({"refused": 400, "param": "input"}));
    assert_eq!(chat.requests(), 0, "the chat-only endpoint was never asked");
    // emb-a: the failed request, then the second call (it answers again).
    assert_eq!((a.requests(), b.requests()), (2, 1));
    let sent = b.received()[0].clone();
    assert_eq!(sent["input"], json!(["hello world", "a b c"]));
    assert_eq!(sent["model"], "emb-b-model");
    assert_eq!(a.received()[1]["dimensions"], 3);

    // Headers: the endpoint, the cost (a dollar a token), the call's id.
    let r = client
        .post(format!("{http}/v1/embeddings"))
        .json(&json!({"model": "embed", "input": "x y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-baton-endpoint"], "emb-a");
    assert_eq!(r.headers()["x-baton-cost-usd"], "2.00000000");
    let call_id = r.headers()["x-baton-call-id"].to_str().unwrap().to_string();
    // Spent: 5 + 3 + 2 = $10 of the day's $12.

    // Refusals name the problem: a route without embedding endpoints, an
    // unknown route, a token array.
    for (body, status, needle) in [
        (
            json!({"model": "talk", "input": "x"}),
            503,
            "lacks capability embeddings",
        ),
        (json!({"model": "nope", "input": "x"}), 404, "nope"),
        (
            json!({"model": "embed", "input": [[1, 2]]}),
            400,
            "token arrays",
        ),
    ] {
        let r = client
            .post(format!("{http}/v1/embeddings"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
        let text = r.text().await.unwrap();
        assert!(text.contains(needle), "{body}: {text}");
    }
    assert_eq!(chat.requests(), 0);

    // $3 more passes the budget (an email is removed before the text
    // leaves); SIGKILL; after the restart the spend is still there and the
    // next call is refused.
    let r = client
        .post(format!("{http}/v1/embeddings"))
        .json(&json!({"model": "embed", "input": "p jane@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        a.received().last().unwrap()["input"],
        json!(["p [removed: email]"])
    );
    baton.kill9().await.unwrap();
    let config_path = dir.path().join("baton.toml");
    let baton = BatonProcess::start(bin(), &config_path).await.unwrap();
    let http = baton.http_url().unwrap();
    let before = (a.requests(), b.requests());
    let r = client
        .post(format!("{http}/v1/embeddings"))
        .json(&json!({"model": "embed", "input": "r s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("daily_budget_usd"));
    assert_eq!((a.requests(), b.requests()), before, "nothing was sent");
    baton.terminate().await.unwrap();

    // One signed audit record per call that reached the router, with who,
    // where, tokens and cost — never the texts. The last call before the
    // SIGKILL is there even if the trail had not written it yet: its record
    // was kept with its spend and appended again at the restart (marked
    // recovered; at least once, so a copy may follow one written in time).
    let records = audit_export(dir.path());
    let mut ok: Vec<&Value> = Vec::new();
    for r in records.iter().filter(|r| r["data"]["outcome"] == "ok") {
        if ok.iter().any(|o| o["data"]["call"] == r["data"]["call"]) {
            assert_eq!(
                r["data"]["recovered"], true,
                "a copy is a recovered one: {r}"
            );
        } else {
            ok.push(r);
        }
    }
    assert_eq!(ok.len(), 4, "{records:#?}");
    assert_eq!(ok[0]["data"]["endpoint"], "emb-b");
    assert_eq!(ok[0]["data"]["attempts"], 2);
    assert_eq!(ok[0]["data"]["input_tokens"], 5);
    assert_eq!(ok[0]["data"]["cost_usd"], 5.0);
    assert_eq!(ok[0]["data"]["decisions"][1]["rule"], "failover");
    assert_eq!(ok[2]["data"]["call"], call_id);
    assert_eq!(ok[3]["data"]["policy_hits"][0]["outcome"], "redact");
    assert_eq!(ok[3]["data"]["cost_usd"], 3.0);
    assert!(ok.iter().all(|r| r["actor"].is_string()));
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains("hello world"),
        "the texts stay out of the trail"
    );
    let failed: std::collections::BTreeSet<String> = records
        .iter()
        .filter(|r| r["data"]["outcome"] == "no_eligible_endpoint")
        .map(|r| r["data"]["call"].to_string())
        .collect();
    assert_eq!(failed.len(), 1, "{records:#?}");
}
