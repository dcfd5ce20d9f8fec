//! A provider stream that breaks after its text reached an OpenAI SDK
//! client (connection cut, stall past the idle timeout, malformed chunk),
//! through the front door of the real binary with fake OpenAI and
//! Anthropic upstreams over real HTTP: the client receives one complete
//! answer, nothing repeated and nothing missing, whether the next attempt
//! re-wrote the text sent (`prefix`) or continued it (`continuation`); only
//! an answer that does not begin with the text sent ends the stream with
//! `stream_retracted`. The journal says which happened, and still does
//! after a SIGKILL.

use std::time::Duration;

use baton::types::{EventKind, OutputResume, SessionEvent};
use baton_testkit::fake_anthropic::FakeAnthropic;
use baton_testkit::fake_openai::{Behavior, Fault, Reply};
use baton_testkit::{BatonProcess, FakeOpenAi};
use serde_json::{Value, json};

use crate::common::*;

/// What both upstreams answer, in chunks of `CHUNK` characters.
const ANSWER: &str = "The quick brown fox jumps over the lazy dog, then runs far away home";
const CHUNK: usize = 6;

struct Rig {
    oa: FakeOpenAi,
    an: FakeAnthropic,
    baton: BatonProcess,
    http: String,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

fn answering(text: &str) -> Behavior {
    Behavior {
        reply: Reply::Fixed(text.into()),
        chunk_chars: CHUNK,
        ..Behavior::default()
    }
}

/// One endpoint on `base` with a short idle timeout, fast retries, and a
/// breaker that does not open on the half of its calls the tests break.
fn endpoint(name: &str, provider: &str, base: &str, extra: &str) -> String {
    format!(
        r#"
[[models]]
name = "{name}"
provider = "{provider}"
base_url = "{base}"
model = "m-{name}"
idle_timeout_ms = 300
price_input_per_mtok = 1.0
price_output_per_mtok = 2.0
{extra}
[models.retry]
initial_backoff_ms = 5
max_backoff_ms = 20
{retry}
[models.breaker]
error_rate = 1.0
consecutive_failures = 1000
"#,
        retry = if name.ends_with("_once") {
            "max_attempts = 1"
        } else {
            ""
        },
    )
}

async fn rig() -> Rig {
    let oa = FakeOpenAi::start().await.unwrap();
    let an = FakeAnthropic::start().await.unwrap();
    oa.set_behavior(answering(ANSWER));
    an.set_behavior(answering(ANSWER));
    let (o, a) = (oa.base_url(), an.base_url());
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("anthropic.key");
    std::fs::write(&key, "test-key").unwrap();
    let key = format!("api_key_file = {:?}", key.display().to_string());
    let mut toml = String::from("[sessions]\ndefault_route = \"oa_none\"\n");
    for (name, provider, base, extra) in [
        ("oa_none", "openai", &o, String::new()),
        (
            "oa_vllm",
            "openai",
            &o,
            "continuation = \"continue_final_message\"".into(),
        ),
        (
            "oa_prefix",
            "openai",
            &o,
            "continuation = \"prefix\"".into(),
        ),
        ("oa_once", "openai", &o, String::new()),
        (
            "oa_json",
            "openai",
            &o,
            "continuation = \"prefix\"\nstream = false".into(),
        ),
        ("an_prefill", "anthropic", &a, key.clone()),
        (
            "an_none",
            "anthropic",
            &a,
            format!("{key}\ncontinuation = \"none\""),
        ),
    ] {
        toml.push_str(&endpoint(name, provider, base, &extra));
    }
    toml.push_str(
        r#"
[[routes]]
name = "oa_then_an"
strategy = "fallback"
endpoints = ["oa_once", "an_prefill"]

[[routes]]
name = "oa_then_other"
strategy = "fallback"
endpoints = ["oa_once", "an_none"]

[[routes]]
name = "oa_then_json"
strategy = "fallback"
endpoints = ["oa_once", "oa_json"]
"#,
    );
    let (baton, http, client) = serve_http(dir.path(), &toml).await;
    Rig {
        oa,
        an,
        baton,
        http,
        client,
        dir,
    }
}

/// What a client got: the text, whether the stream ended with `[DONE]`,
/// the error event's code if it ended with one, and the session.
#[derive(Debug)]
struct Got {
    text: String,
    done: bool,
    error: Option<String>,
    session: String,
}

impl Rig {
    async fn ask(&self, model: &str, stream: bool) -> Got {
        let r = self
            .client
            .post(format!("{}/v1/chat/completions", self.http))
            .json(&json!({
                "model": model,
                "stream": stream,
                "messages": [{"role": "user", "content": "tell me about the fox"}],
            }))
            .send()
            .await
            .unwrap();
        let session = r
            .headers()
            .get("x-baton-session-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if !stream {
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, 200, "{body}");
            return Got {
                text: body["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                done: true,
                error: None,
                session,
            };
        }
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        let data: Vec<&str> = body
            .split("\n\n")
            .filter_map(|f| f.trim().strip_prefix("data: "))
            .collect();
        let chunks: Vec<Value> = data
            .iter()
            .filter(|d| **d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        Got {
            text: chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect(),
            done: data.last() == Some(&"[DONE]"),
            error: chunks
                .last()
                .and_then(|c| c["error"]["code"].as_str())
                .map(str::to_string),
            session,
        }
    }

    async fn journal(&self, id: &str) -> Vec<SessionEvent> {
        to_turn_end(&mut self.baton.client().await.unwrap(), id).await
    }
}

/// The recorded answer's text and how its stream was resumed.
fn answer(journal: &[SessionEvent]) -> (String, OutputResume) {
    journal
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::AssistantMessage {
                message,
                output_resumed,
                ..
            } => Some((message.content.clone(), *output_resumed)),
            _ => None,
        })
        .unwrap()
}

fn count(journal: &[SessionEvent], kind: &str) -> usize {
    kinds(journal).iter().filter(|k| **k == kind).count()
}

/// The failed attempts that had streamed, as (endpoint, kind).
fn streamed_failures(journal: &[SessionEvent]) -> Vec<(String, String)> {
    journal
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AttemptFailed { failure, .. } if failure.streamed => {
                Some((failure.endpoint.clone(), failure.kind.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The request bodies `n` back from the last one received by `server`.
fn last_bodies(bodies: Vec<Value>, n: usize) -> Vec<Value> {
    bodies[bodies.len() - n..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_reaches_the_client_as_one_complete_answer() {
    let rig = rig().await;
    // Cut after three text chunks, stalled after three, a malformed chunk
    // after three (the first event is the role or message start).
    let faults = [
        ("cut", Fault::BreakStreamAfter { chunks: 4 }, "connection"),
        ("stall", Fault::StallAfter { chunks: 4 }, "stream_stalled"),
        (
            "malformed",
            Fault::MalformedChunkAfter { chunks: 4 },
            "malformed",
        ),
    ];
    let mut sessions = Vec::new();
    for (model, want) in [
        ("oa_none", OutputResume::Prefix),
        ("oa_vllm", OutputResume::Continuation),
        ("oa_prefix", OutputResume::Continuation),
        ("an_none", OutputResume::Prefix),
        ("an_prefill", OutputResume::Continuation),
    ] {
        let upstream: &baton_testkit::fake_model::FakeServer = if model.starts_with("oa") {
            &rig.oa
        } else {
            &rig.an
        };
        for (what, fault, _) in &faults {
            for stream in [true, false] {
                let before = upstream.requests();
                upstream.push_fault(fault.clone());
                let got = rig.ask(model, stream).await;
                let case = format!("{model} {what} stream={stream}: {got:?}");
                assert_eq!(got.text, ANSWER, "{case}");
                assert!(got.done && got.error.is_none(), "{case}");
                assert_eq!(upstream.requests(), before + 2, "{case}");
                let journal = rig.journal(&got.session).await;
                assert_eq!(answer(&journal), (ANSWER.to_string(), want), "{case}");
                assert_eq!(count(&journal, "output_retracted"), 0, "{case}");
                let failed = streamed_failures(&journal);
                assert_eq!(failed.len(), 1, "{case}: {failed:?}");
                // What the retry was asked: the whole answer again, or to
                // continue the text the client had.
                let retry = &last_bodies(upstream.received(), 1)[0];
                let messages = retry["messages"].as_array().unwrap();
                let last = messages.last().unwrap();
                if want == OutputResume::Continuation {
                    assert_eq!(last["role"], "assistant", "{case}: {retry}");
                    let start = last["content"].as_str().unwrap();
                    assert!(
                        !start.is_empty() && ANSWER.starts_with(start.trim_end()),
                        "{case}: {retry}"
                    );
                    match model {
                        "oa_vllm" => {
                            assert_eq!(retry["continue_final_message"], true, "{case}");
                            assert_eq!(retry["add_generation_prompt"], false, "{case}");
                        }
                        "oa_prefix" => assert_eq!(last["prefix"], true, "{case}"),
                        // Anthropic refuses a prefill ending in whitespace.
                        _ => assert_eq!(start, start.trim_end(), "{case}"),
                    }
                } else {
                    assert_eq!(last["role"], "user", "{case}: {retry}");
                }
                if stream {
                    sessions.push((got.session, want));
                }
            }
        }
    }
    // Each kind of break is journaled as such.
    let journal = rig.journal(&sessions[1].0).await;
    assert_eq!(streamed_failures(&journal)[0].1, faults[1].2);

    // The journal's account survives a SIGKILL, and nothing is re-run.
    let (oa, an) = (rig.oa.requests(), rig.an.requests());
    let config = rig.dir.path().join("baton.toml");
    let Rig {
        baton,
        oa: oa_server,
        an: an_server,
        dir: _dir,
        ..
    } = rig;
    baton.kill9().await.unwrap();
    let baton = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = baton.client().await.unwrap();
    for (id, want) in &sessions {
        let journal = to_turn_end(&mut client, id).await;
        assert_eq!(answer(&journal), (ANSWER.to_string(), *want), "{id}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((oa_server.requests(), an_server.requests()), (oa, an));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_resumes_the_text_or_retracts_it() {
    let rig = rig().await;

    // The fallback endpoint continues what the first one streamed.
    for stream in [true, false] {
        rig.oa.push_fault(Fault::BreakStreamAfter { chunks: 5 });
        let got = rig.ask("oa_then_an", stream).await;
        assert_eq!(got.text, ANSWER, "{got:?}");
        assert!(got.done && got.error.is_none(), "{got:?}");
        let journal = rig.journal(&got.session).await;
        assert_eq!(
            answer(&journal),
            (ANSWER.to_string(), OutputResume::Continuation)
        );
        assert_eq!(
            streamed_failures(&journal),
            [("oa_once".to_string(), "connection".to_string())]
        );
        let prefill = &last_bodies(rig.an.received(), 1)[0];
        let last = prefill["messages"].as_array().unwrap().last().unwrap();
        assert_eq!(last["role"], "assistant", "{prefill}");
    }

    // A fallback that does not stream: the rest of the answer goes to the
    // client when it arrives.
    rig.oa.push_fault(Fault::BreakStreamAfter { chunks: 5 });
    let got = rig.ask("oa_then_json", true).await;
    assert_eq!(got.text, ANSWER, "{got:?}");
    assert!(got.done, "{got:?}");
    let journal = rig.journal(&got.session).await;
    assert_eq!(
        answer(&journal),
        (ANSWER.to_string(), OutputResume::Continuation)
    );
    let json = &last_bodies(rig.oa.received(), 1)[0];
    assert_eq!(json["stream"], false, "{json}");
    assert_eq!(
        json["messages"].as_array().unwrap().last().unwrap()["prefix"],
        true
    );

    // A fallback that says something else: the text sent is retracted.
    // The front door cannot take text back, so the stream ends with an
    // error; the turn completes in the journal with the fallback's answer.
    let other = "A completely different answer about a cat";
    rig.an.set_behavior(answering(other));
    rig.oa.push_fault(Fault::BreakStreamAfter { chunks: 5 });
    let got = rig.ask("oa_then_other", true).await;
    assert!(!got.done, "{got:?}");
    assert_eq!(got.error.as_deref(), Some("stream_retracted"), "{got:?}");
    assert!(ANSWER.starts_with(&got.text) && !got.text.is_empty());
    let journal = rig.journal(&got.session).await;
    assert_eq!(
        answer(&journal),
        (other.to_string(), OutputResume::Retracted)
    );
    assert_eq!(count(&journal, "output_retracted"), 1);

    // Without streaming the client gets the fallback's answer.
    rig.oa.push_fault(Fault::BreakStreamAfter { chunks: 5 });
    let got = rig.ask("oa_then_other", false).await;
    assert_eq!(got.text, other);

    // An endpoint that refuses the continuation is asked for the whole
    // answer again, within the same call.
    rig.an.set_behavior(answering(ANSWER));
    rig.an.push_fault(Fault::BreakStreamAfter { chunks: 5 });
    rig.an.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
        body: r#"{"type":"error","error":{"type":"invalid_request_error","message":"prefill is not supported"}}"#.into(),
    });
    let before = rig.an.requests();
    let got = rig.ask("an_prefill", true).await;
    assert_eq!(got.text, ANSWER, "{got:?}");
    assert!(got.done, "{got:?}");
    assert_eq!(rig.an.requests(), before + 3);
    let journal = rig.journal(&got.session).await;
    assert_eq!(answer(&journal), (ANSWER.to_string(), OutputResume::Prefix));
    let last = &last_bodies(rig.an.received(), 1)[0];
    assert_eq!(
        last["messages"].as_array().unwrap().last().unwrap()["role"],
        "user"
    );
}
