//! `POST /v1/responses` on the real binary, from the official OpenAI Python
//! SDK (`examples/python/openai_responses.py`) against a fake OpenAI
//! upstream over HTTP: conversations continued with `previous_response_id`
//! in place and branched, function tools, streaming (raw events and the
//! SDK's stream helper), `store: false`; then SIGKILL, and the conversation
//! continues after the restart with nothing lost and nothing re-run.

use baton::proto::v1;
use baton_testkit::fake_openai::{Behavior, ScriptedReply};
use baton_testkit::{BatonProcess, FakeOpenAi};
use baton_types::ToolCall;
use serde_json::{Value, json};

use crate::common::*;

fn sdk(http: &str, args: &[&str]) -> Vec<Value> {
    crate::python_clients::json_lines(
        "openai_responses.py",
        args,
        &[("BATON_HTTP", http.into()), ("BATON_MODEL", "fake".into())],
    )
}

/// The session and turn of a response id.
fn parts(id: &Value) -> (String, u64) {
    let (s, t) = id
        .as_str()
        .unwrap()
        .strip_prefix("resp_")
        .unwrap()
        .rsplit_once('_')
        .unwrap();
    (s.to_string(), t.parse().unwrap())
}

/// The (role, text) of each message the upstream was sent in request `n`.
fn sent(fake: &FakeOpenAi, n: usize) -> Vec<(String, String)> {
    fake.received()[n]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn texts_of(msgs: &[(String, String)]) -> Vec<&str> {
    msgs.iter().map(|(_, t)| t.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_continue_durable_sessions_from_the_python_sdk_across_sigkill() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_behavior(Behavior {
        chunk_chars: 4,
        ..Behavior::default()
    });
    for r in [
        ScriptedReply::Text("answer one".into()),
        ScriptedReply::Text("answer two".into()),
        ScriptedReply::ToolCalls(vec![ToolCall {
            id: "call_7".into(),
            name: "lookup".into(),
            arguments: r#"{"q":"life"}"#.into(),
        }]),
        ScriptedReply::Text("it is 42".into()),
        ScriptedReply::Text("streamed answer here".into()),
        ScriptedReply::Text("helper answer".into()),
        ScriptedReply::Text("branch answer".into()),
        ScriptedReply::Text("unstored answer".into()),
    ] {
        fake.push_reply(r);
    }
    let dir = tempfile::tempdir().unwrap();
    let toml = fake_model_toml(&fake.base_url(), true);
    let (baton, http, _) = serve_http(dir.path(), &toml).await;
    let steps = sdk(&http, &[]);
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {steps:#?}"))
            .clone()
    };

    // A new conversation, continued in place: one session, turns 1 and 2;
    // the upstream got the whole conversation from Baton.
    let first = step("first");
    assert_eq!(first["text"], "answer one");
    assert_eq!(first["status"], "completed");
    let (s1, t1) = parts(&first["id"]);
    assert_eq!(t1, 1);
    let in_place = step("in_place");
    assert_eq!(in_place["text"], "answer two");
    assert_eq!(parts(&in_place["id"]), (s1.clone(), 2));
    assert_eq!(
        texts_of(&sent(&fake, 1)),
        [
            "be brief",
            "first question",
            "answer one",
            "second question"
        ]
    );

    // Tools changed the settings: a new session holding the conversation;
    // the function call goes to the client, its output comes back in place.
    let call = step("tool_call");
    assert_eq!(call["name"], "lookup");
    assert_eq!(call["arguments"], r#"{"q":"life"}"#);
    assert_eq!(call["call_id"], "call_7");
    let (s2, t) = parts(&call["id"]);
    assert_ne!(s2, s1);
    assert_eq!(t, 1);
    assert_eq!(fake.received()[2]["tools"][0]["function"]["name"], "lookup");
    let result = step("tool_result");
    assert_eq!(result["text"], "it is 42");
    assert_eq!(parts(&result["id"]), (s2.clone(), 2));
    let last = fake.received()[3]["messages"].as_array().unwrap().clone();
    let tool_msg = last.iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(tool_msg["tool_call_id"], "call_7");
    assert_eq!(tool_msg["content"], "42");

    // Streaming: deltas as they came, then response.completed; the SDK's
    // stream helper assembles the same response.
    let stream = step("stream");
    assert_eq!(stream["first"], "response.created");
    assert_eq!(stream["last"], "response.completed");
    assert_eq!(stream["final"], "streamed answer here");
    let deltas: Vec<String> = serde_json::from_value(stream["deltas"].clone()).unwrap();
    assert!(deltas.len() > 2, "{deltas:?}");
    assert_eq!(deltas.concat(), "streamed answer here");
    assert_eq!(parts(&stream["id"]), (s2.clone(), 3));
    let helper = step("helper");
    assert_eq!(helper["text"], "helper answer");
    assert_eq!(parts(&helper["id"]), (s2.clone(), 4));

    // A branch from the first response: a new session with the first
    // exchange only.
    let branch = step("branch");
    let (s3, _) = parts(&branch["id"]);
    assert!(s3 != s1 && s3 != s2);
    assert_eq!(
        texts_of(&sent(&fake, 6)),
        [
            "be brief",
            "first question",
            "answer one",
            "branch question"
        ]
    );

    // store: false answers, then keeps nothing: continuing it is a 404 and
    // the session is gone.
    let unstored = step("unstored");
    assert_eq!(unstored["text"], "unstored answer");
    assert_eq!(unstored["store"], false);
    assert_eq!(
        step("unstored_gone"),
        json!({"step": "unstored_gone", "status": 404, "code": "previous_response_not_found"})
    );
    assert_eq!(step("bad")["param"], "input[0].type");
    let (s4, _) = parts(&unstored["id"]);
    let mut client = baton.client().await.unwrap();
    let e = client
        .get_session(v1::GetSessionRequest {
            session_id: s4.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // The sessions are inspectable like any other.
    let s = get(&mut client, &s2).await;
    assert_eq!(s.messages.len(), 12, "{:?}", texts(&s));
    assert_eq!(
        s.metadata["previous_response_id"],
        in_place["id"].as_str().unwrap()
    );

    // SIGKILL; after the restart nothing is re-run, and the conversation
    // continues in place from the helper's response.
    let before = fake.requests();
    baton.kill9().await.unwrap();
    let baton = BatonProcess::start(bin(), &dir.path().join("baton.toml"))
        .await
        .unwrap();
    let http = baton.http_url().unwrap();
    fake.push_reply(ScriptedReply::Text("after restart answer".into()));
    let helper_id = helper["id"].as_str().unwrap();
    let cont = sdk(&http, &["continue", helper_id]);
    assert_eq!(fake.requests(), before + 1, "one request, nothing re-run");
    assert_eq!(cont[0]["text"], "after restart answer");
    assert_eq!(parts(&cont[0]["id"]), (s2.clone(), 5));
    assert_eq!(cont[0]["previous"], helper_id);
    let after = sent(&fake, before);
    let conversation = texts_of(&after);
    assert_eq!(
        conversation,
        [
            "be brief",
            "first question",
            "answer one",
            "second question",
            "answer two",
            "look it up",
            "",
            "42",
            "it is 42",
            "stream this",
            "streamed answer here",
            "helper stream",
            "helper answer",
            "after restart"
        ]
    );
    // A continuation that declares a data class the conversation lacks is
    // not run in place under the session's labels: it branches, carrying
    // the class, and no endpoint here is certified for it.
    let before = fake.requests();
    let r = reqwest::Client::new()
        .post(format!("{http}/v1/responses"))
        .header("x-baton-data-classes", "phi")
        .json(
            &json!({"model": "fake", "instructions": "be brief", "input": "my diagnosis",
            "previous_response_id": cont[0]["id"],
            "tools": [{"type": "function", "name": "lookup", "description": "Look a fact up.",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                    "required": ["q"]}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
    assert_eq!(
        fake.requests(),
        before,
        "nothing reached the uncertified endpoint"
    );
    baton.terminate().await.unwrap();

    // The store: false call is in the audit trail (its answer and the
    // deletion), though its session is gone.
    let out = std::process::Command::new(bin())
        .args([
            "audit",
            "export",
            "--dir",
            dir.path().join("data/audit").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let log = String::from_utf8(out.stdout).unwrap();
    let about_s4: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["session_id"] == s4.as_str())
        .collect();
    assert!(
        about_s4.iter().any(|r| r["kind"] == "model_call"),
        "{about_s4:#?}"
    );
    assert!(
        about_s4
            .iter()
            .any(|r| r["kind"] == "admin_action" && r["data"]["action"] == "delete_session"),
        "{about_s4:#?}"
    );
}
