//! Input policies against the real binary and fake OpenAI servers that
//! record every request body: redaction with pseudonyms restored for the
//! client (streamed in pieces that split placeholders), data classes found
//! in flight steering routing, blocks that send nothing upstream, rules
//! selected by session metadata, the OpenAI front door on the same path,
//! and a SIGKILL mid-call whose re-issued request is redacted too.

use std::collections::HashMap;
use std::time::Duration;

use baton::proto::v1;
use baton::types::{EventKind, PolicyOutcome, PolicyStage, SessionEvent};
use baton_testkit::fake_openai::{Behavior, FakeOpenAi, Fault, Reply};
use baton_testkit::{BatonProcess, process::write_config};

use crate::common::*;

const EMAIL: &str = "jane.doe@example.com";
const PHONE: &str = "+44 20 7946 0958";
const IBAN: &str = "GB82WEST12345698765432";
const SECRET: &str = "AKIAIOSFODNN7EXAMPLE";

fn config(fake: &FakeOpenAi, vault: &FakeOpenAi) -> String {
    format!(
        r#"
[sessions]
default_route = "main"

[[models]]
name = "fake"
provider = "openai"
base_url = {fake:?}
model = "fake-model"
data_classes = ["pii"]
timeout_ms = 120000

[[models]]
name = "vault"
provider = "openai"
base_url = {vault:?}
model = "vault-model"
data_classes = ["pii", "financial"]
timeout_ms = 120000

[[routes]]
name = "main"
endpoints = ["fake"]

[[routes]]
name = "secure"
endpoints = ["fake", "vault"]

[[policies]]
name = "pii"
stage = "input"
[[policies.rules]]
name = "contacts"
detect = ["email", "phone"]
outcome = "redact"
[[policies.rules]]
name = "money"
detect = ["iban"]
outcome = "tag"
[[policies.rules]]
name = "keys"
detect = ["secret"]
outcome = "block"

[[policies]]
name = "guests"
stage = "input"
when = {{ tier = "guest" }}
[[policies.rules]]
name = "short"
max_chars = 60
outcome = "block"
message = "guests may send at most 60 characters"
"#,
        fake = fake.base_url(),
        vault = vault.base_url(),
    )
}

async fn start_with(c: &mut Client, route: &str, metadata: &[(&str, &str)]) -> String {
    c.start_session(v1::StartSessionRequest {
        route: route.into(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .session_id
}

/// Everything every request to `fake` carried, as one string.
fn sent(fake: &FakeOpenAi) -> String {
    fake.received()
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn failure(events: &[SessionEvent]) -> (String, String) {
    match events.last().map(|e| &e.kind) {
        Some(EventKind::TurnFailed { reason, code, .. }) => {
            (code.as_str().to_string(), reason.clone())
        }
        other => panic!("expected a failed turn, got {other:?}"),
    }
}

fn policy_records(events: &[SessionEvent]) -> Vec<&EventKind> {
    events
        .iter()
        .map(|e| &e.kind)
        .filter(|k| matches!(k, EventKind::PolicyEvaluated { .. }))
        .collect()
}

/// Wait until `fake` has seen `requests` requests (the last one hanging),
/// SIGKILL the server, and start it again on the same config.
async fn kill_once_hung(
    server: BatonProcess,
    fake: &FakeOpenAi,
    requests: usize,
    stream: tonic::Streaming<v1::SessionEvent>,
    path: &std::path::Path,
    before_restart: impl FnOnce(),
) -> (BatonProcess, Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fake.requests() < requests {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call reached the fake"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The records that started the call are written while the call runs
    // (the write overlaps it, see docs/architecture.md); what this test
    // checks holds once they are written, which a commit on PostgreSQL
    // takes a few milliseconds longer than RocksDB's WAL append: let them
    // land before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9().await.unwrap();
    drop(stream);
    // Script what the re-issued calls get before the restart re-issues
    // them (recovery does not wait for the test).
    before_restart();
    let server = BatonProcess::start(bin(), path).await.unwrap();
    let client = server.client().await.unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_policies_redact_tag_and_block_on_every_path_and_through_sigkill() {
    let fake = FakeOpenAi::start().await.unwrap();
    let vault = FakeOpenAi::start().await.unwrap();
    // Streamed three characters at a time: placeholders arrive split.
    for f in [&fake, &vault] {
        f.set_behavior(Behavior {
            reply: Reply::Echo {
                prefix: "noted: ".into(),
            },
            chunk_chars: 3,
            ..Behavior::default()
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &dir.path().join("data"), &config(&fake, &vault)).unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();

    // Redact: the model sees placeholders, the client the values.
    let a = start_with(&mut c, "main", &[]).await;
    let text = format!("Contact {EMAIL} or {PHONE} please");
    let t = turn(&mut c, &a, &text).await;
    assert_eq!(answer(&t), format!("noted: {text}"), "{:?}", kinds(&t));
    assert_eq!(
        streamed(&t),
        answer(&t),
        "the deltas add up to the restored answer"
    );
    let upstream = sent(&fake);
    assert!(
        upstream.contains("Contact <EMAIL_1> or <PHONE_1> please"),
        "{upstream}"
    );
    let records = policy_records(&t);
    assert_eq!(records.len(), 1, "{records:?}");
    let EventKind::PolicyEvaluated { stage, hits, .. } = records[0] else {
        unreachable!()
    };
    assert_eq!(*stage, PolicyStage::Input);
    assert_eq!(
        (hits[0].policy.as_str(), hits[0].rule.as_str()),
        ("pii", "contacts")
    );
    assert_eq!(hits[0].outcome, PolicyOutcome::Redact);
    let kinds_found: Vec<&str> = hits[0].matches.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(kinds_found, ["email", "phone"]);
    assert!(
        !format!("{records:?}").contains("jane"),
        "no matched text in the record"
    );
    // The next call sends the whole conversation: still no value leaves.
    let t = turn(&mut c, &a, &format!("and my email is {EMAIL}, right?")).await;
    assert_eq!(
        answer(&t),
        format!("noted: and my email is {EMAIL}, right?")
    );
    let upstream = sent(&fake);
    for value in [EMAIL, PHONE, "7946"] {
        assert!(
            !upstream.contains(value),
            "{value} reached the model: {upstream}"
        );
    }

    // Tag: an IBAN makes the call financial; "fake" is not certified.
    let before = fake.requests();
    let t = turn(&mut c, &a, &format!("refund to {IBAN}")).await;
    let (code, reason) = failure(&t);
    assert_eq!(code, "no_eligible_endpoint", "{reason}");
    assert!(
        reason.contains("financial") && reason.contains("fake"),
        "{reason}"
    );
    assert_eq!(fake.requests(), before, "nothing was sent");
    let s = start_with(&mut c, "secure", &[]).await;
    let t = turn(&mut c, &s, &format!("refund to {IBAN}")).await;
    assert_eq!(answer(&t), format!("noted: refund to {IBAN}"));
    assert_eq!(
        fake.requests(),
        before,
        "the uncertified endpoint was passed over"
    );
    assert_eq!(vault.requests(), 1);

    // Block: a secret never leaves, and never joins the conversation.
    let b = start_with(&mut c, "main", &[]).await;
    let before = fake.requests();
    let t = turn(&mut c, &b, &format!("my key is {SECRET}")).await;
    let (code, reason) = failure(&t);
    assert_eq!(code, "policy_blocked");
    assert_eq!(
        reason,
        "policy \"pii\" rule \"keys\" blocked the message: secret at 10..30"
    );
    assert_eq!(fake.requests(), before);
    let t = turn(&mut c, &b, "hello again").await;
    assert_eq!(answer(&t), "noted: hello again");
    assert!(!sent(&fake).contains(SECRET));
    assert!(
        !texts(&get(&mut c, &b).await)
            .iter()
            .any(|m| m.contains("AKIA"))
    );

    // Rules chosen by metadata: guests are held to 60 characters.
    let long = "a question that runs on for quite a bit longer than sixty characters";
    let g = start_with(&mut c, "main", &[("tier", "guest")]).await;
    let (code, reason) = failure(&turn(&mut c, &g, long).await);
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("policy_blocked", "guests may send at most 60 characters")
    );
    let p = start_with(&mut c, "main", &[("tier", "platinum")]).await;
    assert_eq!(
        answer(&turn(&mut c, &p, long).await),
        format!("noted: {long}")
    );

    // The OpenAI front door takes the same path.
    let http = server.http_url().unwrap();
    let post = |content: String| {
        reqwest::Client::new()
            .post(format!("{http}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "main",
                "messages": [{"role": "user", "content": content}],
            }))
            .send()
    };
    let r = post(format!("write to {EMAIL}")).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        format!("noted: write to {EMAIL}")
    );
    assert!(!sent(&fake).contains(EMAIL));
    let r = post(format!("key {SECRET}")).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "policy_blocked", "{body}");

    // SIGKILL while the model holds a redacted call: the re-issued request
    // is redacted too, the answer restored, the evaluation recorded once.
    let k = start_with(&mut c, "main", &[]).await;
    fake.push_fault(Fault::Hang);
    let hung = fake.requests() + 1;
    let s = send(&mut c, &k, format!("call me on {PHONE}")).await;
    let (server, mut c) = kill_once_hung(server, &fake, hung, s, &path, || {}).await;
    let all = to_turn_end(&mut c, &k).await;
    assert_eq!(answer(&all), format!("noted: call me on {PHONE}"));
    assert_eq!(policy_records(&all).len(), 1, "{:?}", kinds(&all));
    assert_eq!(
        fake.requests(),
        hung + 1,
        "asked once more after the restart"
    );
    assert!(!sent(&fake).contains("7946"));
    server.terminate().await.unwrap();
}

/// Output policies: an answer breaking a rule is withheld and revised (at
/// most `max_revisions` times, a count that survives SIGKILL), blocked when
/// its JSON breaks a numeric limit, and stripped of links to other hosts;
/// no withheld text is ever streamed, on gRPC or the front door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_policies_revise_block_and_mask_and_hold_through_sigkill() {
    use baton_testkit::fake_openai::ScriptedReply;

    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_behavior(Behavior {
        chunk_chars: 4,
        ..Behavior::default()
    });
    let toml = format!(
        r#"
[sessions]
default_route = "fake"

[[models]]
name = "fake"
provider = "openai"
base_url = {url:?}
model = "fake-model"
timeout_ms = 120000

[governance]
max_revisions = 1

[[policies]]
name = "sales"
stage = "output"
[[policies.rules]]
name = "no-guarantees"
keywords = ["we guarantee"]
outcome = "revise"
message = "Do not promise guarantees."
[[policies.rules]]
name = "links"
allowed_domains = ["example.com"]
outcome = "redact"

[[policies]]
name = "quotes"
stage = "output"
when = {{ kind = "quote" }}
[[policies.rules]]
name = "margin"
json_schema = {{ type = "object", properties = {{ discount = {{ type = "number", maximum = 15 }} }}, required = ["discount"] }}
outcome = "block"
"#,
        url = fake.base_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    let said = |events: &[SessionEvent]| format!("{events:?}");

    // Revised once, then released; the draft never reaches the client.
    let a = start_with(&mut c, "fake", &[]).await;
    fake.push_reply(ScriptedReply::Text("We guarantee a refund.".into()));
    fake.push_reply(ScriptedReply::Text(
        "Refunds are possible within 30 days.".into(),
    ));
    let t = turn(&mut c, &a, "can I get a refund?").await;
    assert_eq!(answer(&t), "Refunds are possible within 30 days.");
    assert_eq!(streamed(&t), "", "held answers are not streamed");
    assert!(!said(&t).to_lowercase().contains("we guarantee"), "{t:?}");
    let revised = fake.received().last().unwrap().to_string();
    assert!(
        revised.contains("[policy] Do not promise guarantees. Revise your answer.")
            && revised.contains("[answer withheld by policy sales/no-guarantees]")
            && !revised.contains("We guarantee a refund"),
        "{revised}"
    );
    let outputs: Vec<_> = policy_records(&t);
    assert_eq!(outputs.len(), 1);

    // Still breaking the rule after max_revisions: blocked.
    fake.push_reply(ScriptedReply::Text("We guarantee it.".into()));
    fake.push_reply(ScriptedReply::Text("We guarantee it, truly.".into()));
    let t = turn(&mut c, &a, "promise?").await;
    let (code, reason) = failure(&t);
    assert_eq!(code, "policy_blocked");
    assert_eq!(
        reason,
        "Do not promise guarantees. (still after 1 revisions)"
    );
    assert!(!said(&t).to_lowercase().contains("we guarantee"));

    // Links to other hosts are removed from a released answer.
    fake.push_reply(ScriptedReply::Text(
        "See https://evil.test/offer and https://example.com/terms".into(),
    ));
    let t = turn(&mut c, &a, "links?").await;
    assert_eq!(
        answer(&t),
        "See [removed: link_domain] and https://example.com/terms"
    );

    // A quote over the margin limit is blocked, naming the violation.
    let q = start_with(&mut c, "fake", &[("kind", "quote")]).await;
    fake.push_reply(ScriptedReply::Text(r#"{"discount": 25}"#.into()));
    let (code, reason) = failure(&turn(&mut c, &q, "quote me").await);
    assert_eq!(code, "policy_blocked");
    assert!(
        reason.contains("/discount") && reason.contains("15"),
        "{reason}"
    );
    fake.push_reply(ScriptedReply::Text(r#"{"discount": 10}"#.into()));
    assert_eq!(
        answer(&turn(&mut c, &q, "again").await),
        r#"{"discount": 10}"#
    );

    // The front door, streaming: only the released answer arrives.
    fake.push_reply(ScriptedReply::Text("We guarantee delivery.".into()));
    fake.push_reply(ScriptedReply::Text("Delivery takes 3 days.".into()));
    let sse = reqwest::Client::new()
        .post(format!(
            "{}/v1/chat/completions",
            server.http_url().unwrap()
        ))
        .json(&serde_json::json!({
            "model": "fake", "stream": true,
            "messages": [{"role": "user", "content": "delivery?"}],
        }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let content: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "Delivery takes 3 days.", "{sse}");

    // SIGKILL while the revision call is out: the revision already made
    // is durable, so the next breach blocks instead of revising again.
    let k = start_with(&mut c, "fake", &[]).await;
    fake.push_reply(ScriptedReply::Text("We guarantee it.".into()));
    fake.push_fault(Fault::SlowFirstToken(Duration::from_millis(1)));
    fake.push_fault(Fault::Hang);
    let before = fake.requests();
    let s = send(&mut c, &k, "sure?").await;
    let (server, mut c) = kill_once_hung(server, &fake, before + 2, s, &path, || {}).await;
    let all = to_turn_end(&mut c, &k).await;
    let (code, reason) = failure(&all);
    assert_eq!(code, "policy_blocked", "{:?}", kinds(&all));
    assert!(reason.contains("still after 1 revisions"), "{reason}");
    assert_eq!(
        fake.requests(),
        before + 3,
        "one re-issued call after the restart"
    );
    assert_eq!(policy_records(&all).len(), 2, "{:?}", kinds(&all));
    server.terminate().await.unwrap();
}

/// Tool stages: a call whose arguments break a rule never runs (the model
/// gets an error naming the policy), and a client's tool result is masked
/// before the model sees it; the records survive a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_policies_block_arguments_and_mask_results_through_sigkill() {
    use baton::types::ToolCall;
    use baton_testkit::fake_openai::ScriptedReply;

    let fake = FakeOpenAi::start().await.unwrap();
    let toml = format!(
        "{}\n[tools.builtin]\ncalculator = true\n\n\
         [[policies]]\nname = \"tool-guard\"\nstage = \"tool_arguments\"\ntools = [\"calc*\"]\n\
         [[policies.rules]]\nname = \"no-huge\"\nregex = \"9{{6,}}\"\noutcome = \"block\"\n\n\
         [[policies]]\nname = \"results\"\nstage = \"tool_result\"\n\
         [[policies.rules]]\nname = \"emails\"\ndetect = [\"email\"]\noutcome = \"redact\"\n",
        fake_model_toml(&fake.base_url(), false)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    let call = |id: &str, name: &str, args: &str| ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.into(),
    };

    // Blocked arguments: the calculator never runs.
    let a = start_with(&mut c, "fake", &[]).await;
    fake.push_reply(ScriptedReply::ToolCalls(vec![call(
        "c1",
        "calculator",
        r#"{"expression":"9999999*2"}"#,
    )]));
    fake.push_reply(ScriptedReply::Text("I cannot compute that.".into()));
    let t = turn(&mut c, &a, "compute").await;
    assert_eq!(answer(&t), "I cannot compute that.");
    assert!(!kinds(&t).contains(&"tool_call_started"), "{:?}", kinds(&t));
    let result = t
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::ToolResult {
                output, is_error, ..
            } => Some((output.clone(), *is_error)),
            _ => None,
        })
        .unwrap();
    assert!(result.1, "an error result");
    assert!(
        result
            .0
            .starts_with("the call was not run: policy \"tool-guard\" rule \"no-huge\""),
        "{}",
        result.0
    );
    let sent_back = fake.received().last().unwrap().to_string();
    assert!(sent_back.contains("the call was not run"), "{sent_back}");

    // A client's result is masked before the model sees it.
    let b = c
        .start_session(v1::StartSessionRequest {
            route: "fake".into(),
            client_tools: vec![v1::ToolDefinition {
                name: "lookup".into(),
                description: "look a customer up".into(),
                parameters_json: r#"{"type":"object"}"#.into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    fake.push_reply(ScriptedReply::ToolCalls(vec![call("q1", "lookup", "{}")]));
    fake.push_reply(ScriptedReply::Text("Found them.".into()));
    let mut s = send(&mut c, &b, "who is it?").await;
    read_until(&mut s, |e| e.kind.name() == "tool_call_requested").await;
    c.submit_tool_result(v1::SubmitToolResultRequest {
        session_id: b.clone(),
        call_id: "q1".into(),
        outcome: Some(v1::submit_tool_result_request::Outcome::Output(format!(
            "customer {EMAIL}, gold tier"
        ))),
    })
    .await
    .unwrap();
    let t = read_until(&mut s, |e| e.ends_turn()).await;
    assert_eq!(answer(&t), "Found them.");
    assert!(!sent(&fake).contains(EMAIL));
    assert!(sent(&fake).contains("customer [removed: email], gold tier"));

    // The front door hands tool calls to its client: blocked arguments
    // fail the request instead, and the call never reaches the client.
    fake.push_reply(ScriptedReply::ToolCalls(vec![call(
        "f1",
        "calc_client",
        r#"{"expression":"9999999*2"}"#,
    )]));
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/chat/completions",
            server.http_url().unwrap()
        ))
        .json(&serde_json::json!({
            "model": "fake",
            "messages": [{"role": "user", "content": "compute"}],
            "tools": [{"type": "function", "function": {"name": "calc_client", "parameters": {"type": "object"}}}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("policy_blocked") && body.contains("tool-guard") && !body.contains("9999999"),
        "{body}"
    );

    // Both sessions' records survive a SIGKILL, policy records included.
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    for (id, stage) in [
        (&a, PolicyStage::ToolArguments),
        (&b, PolicyStage::ToolResult),
    ] {
        let all = to_turn_end(&mut c, id).await;
        let stages: Vec<PolicyStage> = all
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::PolicyEvaluated { stage, .. } => Some(*stage),
                _ => None,
            })
            .collect();
        assert_eq!(stages, [stage]);
        assert!(!format!("{all:?}").contains(EMAIL));
    }
    server.terminate().await.unwrap();
}

/// Classifier and evaluator routes, refusals and gates, on a real binary
/// with a fake main model and a fake "judge" model (both record what they
/// got): an off-purpose message is refused without reaching the main model
/// and its label is cached by content; the classifier sees pseudonyms, not
/// values; an evaluator's FAIL sends the answer back with its reason; gate
/// rules hold the input, the answer and a tool call for a reviewer; a
/// SIGKILL while the classifier is out re-asks it and calls the main model
/// once, and a gate pending at a SIGKILL is still there to be decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifiers_evaluators_refusals_and_gates_through_sigkill() {
    use baton::types::ToolCall;
    use baton_testkit::fake_openai::ScriptedReply;

    let fake = FakeOpenAi::start().await.unwrap();
    let judge = FakeOpenAi::start().await.unwrap();
    let toml = format!(
        r#"
[sessions]
default_route = "main"

[tools.builtin]
calculator = true

[[models]]
name = "fake"
provider = "openai"
base_url = {fake:?}
model = "fake-model"
timeout_ms = 120000

[[models]]
name = "judge"
provider = "openai"
base_url = {judge:?}
model = "judge-model"
timeout_ms = 120000
price_input_per_mtok = 1000.0
price_output_per_mtok = 1000.0

[[routes]]
name = "main"
endpoints = ["fake"]

[[policies]]
name = "pii"
stage = "input"
[[policies.rules]]
name = "contacts"
detect = ["email"]
outcome = "redact"

[[policies]]
name = "purpose"
stage = "input"
[[policies.rules]]
name = "intent"
classifier_route = "judge"
labels = ["billing", "orders", "other"]
instructions = "billing: invoices and payments; orders: deliveries."
allowed_labels = ["billing", "orders"]
outcome = "refuse"
message = "I can only help with billing and orders."
[[policies.rules]]
name = "legal"
keywords = ["lawsuit"]
outcome = "gate"
reviewers = "legal"

[[policies]]
name = "grounding"
stage = "output"
[[policies.rules]]
name = "judged"
evaluator_route = "judge"
outcome = "revise"

[[policies]]
name = "guests"
stage = "output"
when = {{ tier = "guest" }}
[[policies.rules]]
name = "refunds"
keywords = ["refund"]
outcome = "gate"
reviewers = "support"

[[policies]]
name = "big-sums"
stage = "tool_arguments"
tools = ["calculator"]
[[policies.rules]]
name = "millions"
regex = "[0-9]{{7,}}"
outcome = "gate"
reviewers = "finance"
"#,
        fake = fake.base_url(),
        judge = judge.base_url(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    let approve = |gate_id: String| v1::DecideGateRequest {
        gate_id,
        decision: v1::GateDecision::Approve as i32,
        reviewer: "rev".into(),
        reason: String::new(),
        edited_payload: String::new(),
    };
    let gate_of = |events: &[SessionEvent]| -> (String, String, String) {
        match events.last().map(|e| &e.kind) {
            Some(EventKind::GateOpened {
                gate_id,
                reviewers,
                reason,
                ..
            }) => (gate_id.to_string(), reviewers.clone(), reason.clone()),
            other => panic!("expected a gate, got {other:?}"),
        }
    };
    let until_gate = |events: &SessionEvent| e_is_gate(events);

    // On purpose: the classifier sees the placeholder, the evaluator
    // passes the answer, and the checks' cost is journaled.
    let a = start_with(&mut c, "main", &[]).await;
    judge.push_reply(ScriptedReply::Text("billing".into()));
    fake.push_reply(ScriptedReply::Text("Your invoice is paid.".into()));
    judge.push_reply(ScriptedReply::Text("PASS".into()));
    let t = turn(&mut c, &a, &format!("I am {EMAIL}; is my invoice paid?")).await;
    assert_eq!(answer(&t), "Your invoice is paid.");
    let asked = judge.received();
    assert_eq!(asked.len(), 2, "one classifier and one evaluator call");
    assert!(!sent(&judge).contains(EMAIL), "{}", sent(&judge));
    assert!(asked[0].to_string().contains("<EMAIL_1>"), "{}", asked[0]);
    assert!(
        asked[0].to_string().contains("billing, orders, other"),
        "{}",
        asked[0]
    );
    let cost: f64 = t
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::PolicyEvaluated { cost_usd, .. } => *cost_usd,
            _ => None,
        })
        .sum();
    assert!(cost > 0.0, "{:?}", kinds(&t));

    // Off purpose: refused, the main model never asked; the same text in
    // another session is labelled from the cache.
    let main_calls = fake.requests();
    judge.push_reply(ScriptedReply::Text("other".into()));
    let t = turn(&mut c, &a, "what is the weather in Paris?").await;
    assert_eq!(answer(&t), "I can only help with billing and orders.");
    assert_eq!(kinds(&t).last(), Some(&"turn_completed"));
    assert_eq!(fake.requests(), main_calls);
    let judged = judge.requests();
    let b = start_with(&mut c, "main", &[]).await;
    let t = turn(&mut c, &b, "what is the weather in Paris?").await;
    assert_eq!(answer(&t), "I can only help with billing and orders.");
    assert_eq!(judge.requests(), judged, "labelled from the cache");
    assert_eq!(fake.requests(), main_calls);
    let hit = policy_records(&t)
        .into_iter()
        .find_map(|k| match k {
            EventKind::PolicyEvaluated { hits, .. } => hits.first().cloned(),
            _ => None,
        })
        .unwrap();
    assert_eq!(hit.outcome, PolicyOutcome::Refuse);
    assert_eq!(hit.matches[0].kind, "classifier_route:judge");

    // The evaluator fails the first answer: it is sent back with the reason.
    judge.push_reply(ScriptedReply::Text("orders".into()));
    fake.push_reply(ScriptedReply::Text("It shipped yesterday.".into()));
    judge.push_reply(ScriptedReply::Text(
        "FAIL: no shipping date is in the context".into(),
    ));
    fake.push_reply(ScriptedReply::Text("I cannot see a shipping date.".into()));
    judge.push_reply(ScriptedReply::Text("PASS".into()));
    let t = turn(&mut c, &a, "when did my order ship?").await;
    assert_eq!(answer(&t), "I cannot see a shipping date.");
    let revised = fake.received().last().unwrap().to_string();
    assert!(
        revised.contains("no shipping date is in the context")
            && !revised.contains("It shipped yesterday"),
        "{revised}"
    );

    // An input gate: nothing reaches the main model until approved.
    let mut gates = gates_client(&server).await;
    let main_calls = fake.requests();
    judge.push_reply(ScriptedReply::Text("billing".into()));
    let mut s = send(&mut c, &a, "is the lawsuit about my invoice?").await;
    let (gate, reviewers, reason) = gate_of(&read_until(&mut s, until_gate).await);
    assert_eq!(reviewers, "legal");
    assert!(reason.contains("\"purpose\" rule \"legal\""), "{reason}");
    assert_eq!(fake.requests(), main_calls);
    fake.push_reply(ScriptedReply::Text("No lawsuit concerns it.".into()));
    judge.push_reply(ScriptedReply::Text("PASS".into()));
    gates.decide_gate(approve(gate)).await.unwrap();
    let t = read_until(&mut s, |e| e.ends_turn()).await;
    assert_eq!(answer(&t), "No lawsuit concerns it.");

    // An output gate for guests, pending through a SIGKILL.
    let g = start_with(&mut c, "main", &[("tier", "guest")]).await;
    judge.push_reply(ScriptedReply::Text("billing".into()));
    fake.push_reply(ScriptedReply::Text("You will get a refund.".into()));
    judge.push_reply(ScriptedReply::Text("PASS".into()));
    let mut s = send(&mut c, &g, "money back for my invoice?").await;
    let (_, reviewers, _) = gate_of(&read_until(&mut s, until_gate).await);
    assert_eq!(reviewers, "support");

    // A tool call over the limit waits for finance.
    let tc = start_with(&mut c, "main", &[]).await;
    judge.push_reply(ScriptedReply::Text("billing".into()));
    fake.push_reply(ScriptedReply::ToolCalls(vec![ToolCall {
        id: "t1".into(),
        name: "calculator".into(),
        arguments: r#"{"expression":"12000000*2"}"#.into(),
    }]));
    let mut s2 = send(&mut c, &tc, "double my invoice total").await;
    let (_, reviewers, _) = gate_of(&read_until(&mut s2, until_gate).await);
    assert_eq!(reviewers, "finance");

    // SIGKILL while the classifier is out, with both gates pending.
    let judged = judge.requests();
    judge.push_fault(Fault::Hang);
    let k = start_with(&mut c, "main", &[]).await;
    let s3 = send(&mut c, &k, "where is my order?").await;
    drop(s);
    drop(s2);
    let main_calls = fake.requests();
    let (server, mut c) = kill_once_hung(server, &judge, judged + 1, s3, &path, || {
        judge.push_reply(ScriptedReply::Text("orders".into()));
        fake.push_reply(ScriptedReply::Text("It is on its way.".into()));
        judge.push_reply(ScriptedReply::Text("PASS".into()));
    })
    .await;
    let mut gates = gates_client(&server).await;
    // (Seen once in ~10 runs under the full suite's load: this turn not
    // ending in time. What the server said, to find out why.)
    let all = match tokio::time::timeout(Duration::from_secs(25), to_turn_end(&mut c, &k)).await {
        Ok(a) => a,
        Err(_) => panic!(
            "the interrupted turn did not end within 25 s (judge asked {} times, the main model {}); the server's log:\n{}",
            judge.requests(),
            fake.requests(),
            server.log()
        ),
    };
    assert_eq!(answer(&all), "It is on its way.");
    assert_eq!(fake.requests(), main_calls + 1, "the main model asked once");
    // The gates survived: approve both; the held answer is released as
    // it was, and the calculator runs.
    let pending: Vec<v1::Gate> = pending_gates(&mut gates).await;
    assert_eq!(pending.len(), 2, "{pending:?}");
    fake.push_reply(ScriptedReply::Text("It is 24000000.".into()));
    judge.push_reply(ScriptedReply::Text("PASS".into()));
    for p in pending {
        gates.decide_gate(approve(p.gate_id)).await.unwrap();
    }
    let t = to_turn_end(&mut c, &g).await;
    assert_eq!(answer(&t), "You will get a refund.");
    assert_eq!(kinds(&t).last(), Some(&"turn_completed"));
    let t = to_turn_end(&mut c, &tc).await;
    assert!(kinds(&t).contains(&"tool_call_started"), "{:?}", kinds(&t));
    assert_eq!(answer(&t), "It is 24000000.");
    server.terminate().await.unwrap();
}

fn e_is_gate(e: &SessionEvent) -> bool {
    e.kind.name() == "gate_opened" || e.ends_turn()
}

/// `[governance.no_eligible_gate]`: a message whose content carries a data
/// class no endpoint is certified for waits for a reviewer instead of
/// failing; the gate survives a SIGKILL; approval sends it (without the
/// class), rejection fails the turn; nothing reaches the model before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_eligible_endpoint_can_wait_for_a_reviewer_through_sigkill() {
    use baton_testkit::fake_openai::ScriptedReply;

    let fake = FakeOpenAi::start().await.unwrap();
    let toml = format!(
        "{}\n[governance.no_eligible_gate]\nreviewers = \"privacy\"\n\n\
         [[policies]]\nname = \"money\"\nstage = \"input\"\n\
         [[policies.rules]]\nname = \"iban\"\ndetect = [\"iban\"]\noutcome = \"tag\"\n",
        fake_model_toml(&fake.base_url(), false)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    let decide = |gate_id: String, decision: v1::GateDecision| v1::DecideGateRequest {
        gate_id,
        decision: decision as i32,
        reviewer: "dpo".into(),
        reason: "checked".into(),
        edited_payload: String::new(),
    };
    let msg = format!("refund to {IBAN} please");

    let a = start_with(&mut c, "fake", &[]).await;
    let mut s = send(&mut c, &a, &msg).await;
    let t = read_until(&mut s, |e| e.kind.name() == "gate_opened" || e.ends_turn()).await;
    match &t.last().unwrap().kind {
        EventKind::GateOpened {
            reviewers,
            reason,
            policy,
            ..
        } => {
            assert_eq!(reviewers, "privacy");
            assert_eq!(policy, "no_eligible_endpoint");
            assert!(reason.contains("financial"), "{reason}");
        }
        other => panic!("expected a gate, got {other:?}"),
    }
    assert_eq!(fake.requests(), 0, "nothing sent before a decision");

    // The gate survives a SIGKILL; approved, the call goes out once.
    drop(s);
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    let mut g = gates_client(&server).await;
    let pending = pending_gates(&mut g).await;
    assert_eq!(pending.len(), 1);
    fake.push_reply(ScriptedReply::Text("Refund queued.".into()));
    g.decide_gate(decide(
        pending[0].gate_id.clone(),
        v1::GateDecision::Approve,
    ))
    .await
    .unwrap();
    let t = to_turn_end(&mut c, &a).await;
    assert_eq!(answer(&t), "Refund queued.");
    assert_eq!(fake.requests(), 1);

    // Rejected: the turn fails, nothing sent.
    let b = start_with(&mut c, "fake", &[]).await;
    let mut s = send(&mut c, &b, &msg).await;
    let opened = read_until(&mut s, |e| e.kind.name() == "gate_opened").await;
    let EventKind::GateOpened { gate_id, .. } = &opened.last().unwrap().kind else {
        panic!("no gate");
    };
    g.decide_gate(decide(gate_id.to_string(), v1::GateDecision::Reject))
        .await
        .unwrap();
    let t = read_until(&mut s, |e| e.ends_turn()).await;
    assert_eq!(failure(&t).0, "gate_rejected");
    assert_eq!(fake.requests(), 1);
    server.terminate().await.unwrap();
}

/// A `gate` rule at the tool_result stage: the model sees a flagged tool
/// result only once a reviewer approves; the hold survives a SIGKILL; an
/// edit is refused (approve or reject).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagged_tool_result_waits_for_a_reviewer_through_sigkill() {
    use baton::types::ToolCall;
    use baton_testkit::fake_openai::ScriptedReply;

    let fake = FakeOpenAi::start().await.unwrap();
    let toml = format!(
        "{}\n[[policies]]\nname = \"results\"\nstage = \"tool_result\"\n\
         [[policies.rules]]\nname = \"confidential\"\nkeywords = [\"confidential\"]\n\
         outcome = \"gate\"\nreviewers = \"ops\"\n",
        fake_model_toml(&fake.base_url(), false)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    let id = c
        .start_session(v1::StartSessionRequest {
            route: "fake".into(),
            client_tools: vec![v1::ToolDefinition {
                name: "lookup".into(),
                description: "look a record up".into(),
                parameters_json: r#"{"type":"object"}"#.into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    fake.push_reply(ScriptedReply::ToolCalls(vec![ToolCall {
        id: "q1".into(),
        name: "lookup".into(),
        arguments: "{}".into(),
    }]));
    let mut s = send(&mut c, &id, "what does the record say?").await;
    read_until(&mut s, |e| e.kind.name() == "tool_call_requested").await;
    c.submit_tool_result(v1::SubmitToolResultRequest {
        session_id: id.clone(),
        call_id: "q1".into(),
        outcome: Some(v1::submit_tool_result_request::Outcome::Output(
            "CONFIDENTIAL: merger planned".into(),
        )),
    })
    .await
    .unwrap();
    let t = read_until(&mut s, |e| e.kind.name() == "gate_opened" || e.ends_turn()).await;
    let EventKind::GateOpened {
        reviewers, point, ..
    } = &t.last().unwrap().kind
    else {
        panic!("expected a gate: {:?}", kinds(&t));
    };
    assert_eq!(reviewers, "ops");
    assert_eq!(point.as_str(), "model_call");
    assert_eq!(fake.requests(), 1, "the model has not seen the result");

    drop(s);
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    let mut g = gates_client(&server).await;
    let pending = pending_gates(&mut g).await;
    assert_eq!(pending.len(), 1);
    let decide = |decision: v1::GateDecision, edited: &str| v1::DecideGateRequest {
        gate_id: pending[0].gate_id.clone(),
        decision: decision as i32,
        reviewer: "ops-lead".into(),
        reason: String::new(),
        edited_payload: edited.into(),
    };
    let err = g
        .decide_gate(decide(v1::GateDecision::Edit, "something else"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    fake.push_reply(ScriptedReply::Text("A merger is planned.".into()));
    g.decide_gate(decide(v1::GateDecision::Approve, ""))
        .await
        .unwrap();
    let t = to_turn_end(&mut c, &id).await;
    assert_eq!(answer(&t), "A merger is planned.");
    assert_eq!(fake.requests(), 2);
    assert!(
        fake.received()[1]
            .to_string()
            .contains("CONFIDENTIAL: merger planned")
    );
    server.terminate().await.unwrap();
}

/// A conversation's earlier messages sent by the client (the front door's
/// history, StartSession.history) are new to the policies on the first
/// turn: a secret in an earlier message is blocked as in the last one, and
/// a client's tool result is screened by the tool_result rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_history_is_screened_on_the_first_turn() {
    let fake = FakeOpenAi::start().await.unwrap();
    let vault = FakeOpenAi::start().await.unwrap();
    let toml = format!(
        "{}\n[[policies]]\nname = \"results\"\nstage = \"tool_result\"\n\
         [[policies.rules]]\nname = \"emails\"\ndetect = [\"email\"]\noutcome = \"redact\"\n",
        config(&fake, &vault)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.http_url().unwrap());
    let r = http
        .post(&url)
        .json(&serde_json::json!({
            "model": "main",
            "messages": [
                {"role": "user", "content": format!("my key is {SECRET}")},
                {"role": "assistant", "content": "noted"},
                {"role": "user", "content": "go on"},
            ],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "policy_blocked", "{body}");
    assert_eq!(fake.requests(), 0, "nothing sent upstream");

    // A tool result in the history: masked before the model sees it.
    let r = http
        .post(&url)
        .json(&serde_json::json!({
            "model": "main",
            "messages": [
                {"role": "user", "content": "who is it?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": format!("customer {EMAIL}")},
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert!(!sent(&fake).contains(EMAIL), "{}", sent(&fake));
    assert!(sent(&fake).contains("[removed: email]"), "{}", sent(&fake));
    server.terminate().await.unwrap();
}
