//! The HTTP server of the real `baton` binary: the OpenAI-compatible front
//! door (`/v1/chat/completions`, `/v1/models`), `/metrics` and `/healthz`,
//! with a fake OpenAI upstream over real HTTP and reqwest as the client.

use std::time::Duration;

use baton::proto::v1;
use baton::types::EventKind;
use baton_testkit::fake_openai::{Behavior, Fault, ScriptedReply};
use baton_testkit::{BatonProcess, FakeOpenAi};
use serde_json::{Value, json};

use crate::common::*;

/// The model the fake upstream says answered (not the route's name).
const UPSTREAM_MODEL: &str = "fake-upstream-2024-08-06";

struct FrontDoor {
    fake: FakeOpenAi,
    baton: BatonProcess,
    http: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn behavior(chunk_chars: usize) -> Behavior {
    Behavior {
        model: Some(UPSTREAM_MODEL.into()),
        chunk_chars,
        ..Behavior::default()
    }
}

/// `baton serve` with the route `fake` (the fake upstream, priced) and the
/// route `echo`; `extra` is more TOML, where `FAKE_BASE_URL` stands for the
/// fake's base URL.
async fn front_door(upstream_streams: bool, extra: &str) -> FrontDoor {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_behavior(behavior(0));
    let extra = extra.replace("FAKE_BASE_URL", &fake.base_url());
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"[sessions]
default_route = "fake"

[[models]]
name = "fake"
provider = "openai"
base_url = {base:?}
model = "fake-model"
stream = {upstream_streams}
timeout_ms = 120000
price_input_per_mtok = 1.0
price_output_per_mtok = 2.0
[models.retry]
initial_backoff_ms = 10
max_backoff_ms = 100

[[models]]
name = "echo"
provider = "echo"

{extra}
"#,
        base = fake.base_url(),
    );
    let (baton, http, client) = serve_http(dir.path(), &toml).await;
    FrontDoor {
        fake,
        baton,
        http,
        client,
        _dir: dir,
    }
}

impl FrontDoor {
    async fn post(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.http))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.http))
            .send()
            .await
            .unwrap()
    }
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|frame| frame.trim().strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The SSE chunks (everything but `[DONE]`) as JSON.
fn parse_chunks(data: &[String]) -> Vec<Value> {
    data.iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn content_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (status, body["error"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_completion_is_a_journaled_one_shot_session() {
    let fd = front_door(true, "").await;
    let question = "what is the capital of France?";
    let r = fd
        .post(&json!({
            "model": "fake",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": question}]},
            ],
            "temperature": 0.3,
            "user": "u-7",
            "metadata": {"team": "support"},
            "frequency_penalty": 0,
        }))
        .await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-baton-session-id").expect("the session id header");
    assert!(id.parse::<baton::SessionId>().is_ok(), "{id}");
    assert_eq!(header(&r, "x-baton-endpoint").as_deref(), Some("fake"));
    assert_eq!(header(&r, "x-baton-attempts").as_deref(), Some("1"));
    let cost: f64 = header(&r, "x-baton-cost-usd")
        .expect("a priced endpoint's cost")
        .parse()
        .unwrap();
    assert!(cost > 0.0, "{cost}");
    let body: Value = r.json().await.unwrap();
    let answer = format!("echo: {question}");
    assert_eq!(body["id"], format!("chatcmpl-{id}"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], UPSTREAM_MODEL, "the model that answered");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], answer.as_str());
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["message"].get("tool_calls").is_none());
    // The fake counts words: 2 + 1 + 1 + 6 in, 7 out.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17})
    );

    // The upstream saw the system prompt, the history and the question.
    let sent = &fd.fake.received()[0]["messages"];
    let roles: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(sent[0]["content"], "be brief");
    assert_eq!(sent[3]["content"], question);

    // The call's session left memory when its turn ended (the idle
    // timeout is minutes away).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&fd.baton, "baton_sessions_live").await > 0.0 {
        assert!(std::time::Instant::now() < deadline, "still live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The session is in Baton, with one completed turn.
    let mut client = fd.baton.client().await.unwrap();
    let s = get(&mut client, &id).await;
    assert_eq!(s.route, "fake");
    assert_eq!(s.system_prompt, "be brief");
    assert_eq!(s.turns_completed, 1);
    assert_eq!(s.metadata.get("user").map(String::as_str), Some("u-7"));
    assert_eq!(s.metadata.get("team").map(String::as_str), Some("support"));
    assert_eq!(texts(&s), ["hi", "hello", question, answer.as_str()]);
    // Its journal holds the user message and the answer.
    let mut events = client
        .resume_session(v1::ResumeSessionRequest {
            session_id: id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let journal = read_until(&mut events, |e| e.ends_turn()).await;
    let accepted: Vec<&str> = journal
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TurnAccepted { message, .. } => Some(message.content.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(accepted, [question]);
    let answers: Vec<(&str, &str)> = journal
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AssistantMessage { message, model, .. } => {
                Some((message.content.as_str(), model.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(answers, [(answer.as_str(), UPSTREAM_MODEL)]);
    assert_eq!(journal.last().unwrap().kind.name(), "turn_completed");
    assert_eq!(journal.first().unwrap().kind.name(), "session_started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_completion_sends_the_answer_in_chunks_then_done() {
    let fd = front_door(true, "").await;
    fd.fake.set_behavior(behavior(4));
    let question = "tell me a story please";
    let r = fd
        .post(&json!({
            "model": "fake",
            "messages": [{"role": "user", "content": question}],
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("text/event-stream")
    );
    let id = header(&r, "x-baton-session-id").expect("the session id header");
    let data = sse_data(&r.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks = parse_chunks(&data);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["id"], format!("chatcmpl-{id}"));
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let answer = format!("echo: {question}");
    assert_eq!(content_of(&chunks), answer);
    let pieces = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert!(pieces > 1, "the text arrives as it streams: {data:?}");
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "the usage chunk comes last");
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11})
    );
    assert_eq!(usage["model"], UPSTREAM_MODEL);

    // Without include_usage: no usage chunk.
    let r = fd
        .post(&json!({
            "model": "fake",
            "messages": [{"role": "user", "content": "again"}],
            "stream": true,
        }))
        .await;
    let data = sse_data(&r.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse_chunks(&data);
    assert_eq!(content_of(&chunks), "echo: again");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{data:?}");

    // The streamed call is a completed one-shot session too.
    let mut client = fd.baton.client().await.unwrap();
    let s = get(&mut client, &id).await;
    assert_eq!(s.turns_completed, 1);
    assert_eq!(texts(&s), [question, answer.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_are_returned_to_the_caller_not_run() {
    let fd = front_door(true, "").await;
    let call = baton::types::ToolCall {
        id: "call_42".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Paris"}"#.into(),
    };
    let tools = json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "the weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }]);
    fd.fake
        .push_reply(ScriptedReply::ToolCalls(vec![call.clone()]));
    let r = fd
        .post(&json!({
            "model": "fake",
            "messages": [{"role": "user", "content": "weather in Paris?"}],
            "tools": tools,
            "tool_choice": "auto",
        }))
        .await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-baton-session-id").unwrap();
    let body: Value = r.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{
            "id": "call_42",
            "type": "function",
            "function": {"name": "get_weather", "arguments": r#"{"city":"Paris"}"#},
        }])
    );
    // The tools were offered upstream; the call was not run or awaited.
    let offered = &fd.fake.received()[0]["tools"][0]["function"];
    assert_eq!(offered["name"], "get_weather");
    assert_eq!(
        offered["parameters"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(fd.fake.requests(), 1);
    let mut client = fd.baton.client().await.unwrap();
    let s = get(&mut client, &id).await;
    assert_eq!(s.turns_completed, 1);
    assert!(
        s.pending_tool_calls.is_empty(),
        "{:?}",
        s.pending_tool_calls
    );

    // Streamed: one chunk with the indexed calls, then finish_reason tool_calls.
    let second = baton::types::ToolCall {
        id: "call_43".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Rome"}"#.into(),
    };
    fd.fake
        .push_reply(ScriptedReply::ToolCalls(vec![call, second]));
    let r = fd
        .post(&json!({
            "model": "fake",
            "messages": [{"role": "user", "content": "weather in Paris and Rome?"}],
            "tools": tools,
            "stream": true,
        }))
        .await;
    assert_eq!(r.status(), 200);
    let data = sse_data(&r.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks = parse_chunks(&data);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls.len(), 1, "{data:?}");
    assert_eq!(calls[0][0]["index"], 0);
    assert_eq!(calls[0][0]["id"], "call_42");
    assert_eq!(calls[0][1]["index"], 1);
    assert_eq!(calls[0][1]["function"]["arguments"], r#"{"city":"Rome"}"#);
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
}

/// Sampling, limits, stop sequences, tool choice and structured output go
/// upstream as the caller set them, and are journaled with the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_parameters_reach_the_upstream_and_the_journal() {
    let fd = front_door(true, "").await;
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}},
                        "required": ["city"], "additionalProperties": false});
    // An answer in the shape asked for (any other would not be returned).
    fd.fake
        .push_reply(ScriptedReply::Text(r#"{"city": "Lyon"}"#.into()));
    let r = fd
        .post(&json!({
            "model": "fake",
            "messages": [{"role": "user", "content": "where?"}],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            "temperature": 0.2,
            "top_p": 0.9,
            "max_completion_tokens": 64,
            "stop": ["END", "STOP"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        }))
        .await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-baton-session-id").unwrap();
    let sent = &fd.fake.received()[0];
    assert_eq!(sent["temperature"].to_string(), "0.2");
    assert_eq!(sent["top_p"].to_string(), "0.9");
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["stop"], json!(["END", "STOP"]));
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "function": {"name": "lookup"}})
    );
    assert_eq!(sent["response_format"]["type"], "json_schema");
    assert_eq!(sent["response_format"]["json_schema"]["schema"], schema);

    // Without them, none is sent (the endpoint's defaults apply).
    let r = fd
        .post(&json!({"model": "fake", "messages": [{"role": "user", "content": "plain"}]}))
        .await;
    assert_eq!(r.status(), 200);
    let plain = &fd.fake.received()[1];
    for key in [
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "tool_choice",
        "response_format",
    ] {
        assert!(plain.get(key).is_none(), "{key} sent: {plain}");
    }

    // The settings are part of the journal's first record.
    let mut client = fd.baton.client().await.unwrap();
    let mut events = client
        .resume_session(v1::ResumeSessionRequest {
            session_id: id,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let journal = read_until(&mut events, |e| e.ends_turn()).await;
    let EventKind::SessionStarted { generation, .. } = &journal[0].kind else {
        panic!("{:?}", journal[0]);
    };
    assert_eq!(generation.temperature, Some(0.2));
    assert_eq!(generation.top_p, Some(0.9));
    assert_eq!(generation.max_output_tokens, Some(64));
    assert_eq!(generation.stop, ["END", "STOP"]);
    assert_eq!(
        generation.tool_choice,
        baton::types::ToolChoice::Tool("lookup".into())
    );
    let journaled: Value =
        serde_json::from_str(generation.json_schema.as_deref().unwrap()).unwrap();
    assert_eq!(journaled, schema);
}

/// The events of session `id`'s journal up to the end of its first turn.
async fn first_turn(baton: &BatonProcess, id: &str) -> Vec<baton::types::SessionEvent> {
    to_turn_end(&mut baton.client().await.unwrap(), id).await
}

/// `response_format: json_schema` holds on a plain fallback route: an
/// answer that does not match is never returned; each is journaled as a
/// failed attempt (`schema_violation`) and retried or failed over, the
/// accepted answer is journaled as validated, and when no endpoint answers
/// in shape the caller gets an error naming the violation. The journal's
/// record of it survives a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_is_enforced_on_every_route_and_journaled() {
    let second = FakeOpenAi::start().await.unwrap();
    second.set_behavior(behavior(0));
    let fd = front_door(
        false,
        &format!(
            r#"[[models]]
name = "second"
provider = "openai"
base_url = {:?}
model = "second-model"
[models.retry]
max_attempts = 1

[[routes]]
name = "plain"
endpoints = ["fake", "second"]
"#,
            second.base_url()
        ),
    )
    .await;
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}},
                        "required": ["city"], "additionalProperties": false});
    let ask = |stream: bool| {
        json!({
            "model": "plain",
            "stream": stream,
            "messages": [{"role": "user", "content": "where?"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        })
    };

    // The first endpoint answers prose ("echo: where?") on every attempt;
    // the second answers in shape.
    second.push_reply(ScriptedReply::Text(r#"{"city": "Lyon"}"#.into()));
    let r = fd.post(&ask(false)).await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-baton-session-id").unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        r#"{"city": "Lyon"}"#
    );
    let tries = fd.fake.requests();
    assert!(tries >= 1);
    let journal = first_turn(&fd.baton, &id).await;
    let violations = |journal: &[baton::types::SessionEvent]| {
        journal
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::AttemptFailed { failure, .. } if failure.kind == "schema_violation" => {
                    Some((failure.endpoint.clone(), failure.message.clone()))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let validated = |journal: &[baton::types::SessionEvent]| {
        journal
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::AssistantMessage {
                    endpoint,
                    schema_validated,
                    ..
                } => Some((endpoint.clone(), *schema_validated)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let seen = violations(&journal);
    assert_eq!(
        seen.len(),
        tries,
        "one journaled failure per answer: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|(ep, m)| ep == "fake" && m.contains("json_schema: the answer is not valid JSON"))
    );
    assert_eq!(validated(&journal), [("second".to_owned(), true)]);

    // Streaming: the stream carries only the validated answer (held until
    // it is known to match: the first endpoint's prose never streams).
    second.push_reply(ScriptedReply::Text(r#"{"city": "Nice"}"#.into()));
    let r = fd.post(&ask(true)).await;
    assert_eq!(r.status(), 200);
    let data = sse_data(&r.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert_eq!(content_of(&parse_chunks(&data)), r#"{"city": "Nice"}"#);

    // No endpoint answers in shape: an error naming the violation, both
    // streaming and not.
    let (status, err) = error_of(fd.post(&ask(false)).await).await;
    assert_eq!(status, 502, "{err}");
    assert_eq!(err["code"], "schema_violation");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("json_schema: the answer is not valid JSON"),
        "{message}"
    );
    let (status, err) = error_of(fd.post(&ask(true)).await).await;
    assert_eq!(status, 502, "{err}");
    assert_eq!(err["code"], "schema_violation");

    // The journal's account survives a SIGKILL, and nothing is re-run.
    let requests = (fd.fake.requests(), second.requests());
    let config = fd._dir.path().join("baton.toml");
    fd.baton.kill9().await.unwrap();
    let baton = BatonProcess::start(bin(), &config).await.unwrap();
    let journal = first_turn(&baton, &id).await;
    assert_eq!(violations(&journal), seen);
    assert_eq!(validated(&journal), [("second".to_owned(), true)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((fd.fake.requests(), second.requests()), requests);
}

/// A message with an image only goes to an endpoint with the `vision`
/// capability (the route's first endpoint lacks it), reaches it as image
/// parts, and is journaled with its images: they survive a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_route_to_vision_endpoints_and_are_journaled() {
    let fd = front_door(
        true,
        r#"[[models]]
name = "eyes"
provider = "openai"
base_url = "FAKE_BASE_URL"
model = "fake-vision"
capabilities = ["tools", "json_schema", "streaming", "vision"]

[[routes]]
name = "see"
strategy = "fallback"
endpoints = ["fake", "eyes"]
"#,
    )
    .await;
    let config = fd._dir.path().join("baton.toml");
    let FrontDoor {
        fake,
        baton,
        client: http,
        http: base,
        _dir,
    } = fd;
    let url = format!("{base}/v1/chat/completions");
    let png = "data:image/png;base64,iVBORw0KGgo=";

    let r = http
        .post(&url)
        .json(
            &json!({"model": "see", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is in it?"},
                {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
            ]}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-baton-endpoint").as_deref(), Some("eyes"));
    let id = header(&r, "x-baton-session-id").unwrap();
    let sent = fake.received().last().cloned().unwrap();
    assert_eq!(sent["model"], "fake-vision");
    assert_eq!(
        sent["messages"][0]["content"],
        json!([
            {"type": "text", "text": "what is in it?"},
            {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
        ])
    );
    // Without an image the route's first endpoint answers.
    let r = http
        .post(&url)
        .json(&json!({"model": "see", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-baton-endpoint").as_deref(), Some("fake"));

    // Over gRPC: SendMessage with an image; the decision notes the exclusion.
    let mut client = baton.client().await.unwrap();
    let grpc_id = start(&mut client, "see").await;
    let mut events = client
        .send_message(v1::SendMessageRequest {
            session_id: grpc_id.clone(),
            content: "and this one?".into(),
            review: false,
            images: vec![v1::Image {
                url: "https://example.com/b.jpg".into(),
                detail: String::new(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let turn = read_until(&mut events, |e| e.ends_turn()).await;
    assert_eq!(turn.last().unwrap().kind.name(), "turn_completed");
    let decision = turn
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::RoutingDecided { decision, .. } => Some(decision.clone()),
            _ => None,
        })
        .expect("a routing decision");
    assert_eq!(decision.chosen, "eyes");
    let fake_note = decision
        .candidates
        .iter()
        .find(|c| c.endpoint == "fake")
        .map(|c| c.note.clone())
        .unwrap_or_default();
    assert!(fake_note.contains("vision"), "{decision:?}");
    // A bad image is refused before anything is written.
    let e = client
        .send_message(v1::SendMessageRequest {
            session_id: grpc_id.clone(),
            content: "x".into(),
            review: false,
            images: vec![v1::Image {
                url: "file:///etc/passwd".into(),
                detail: String::new(),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("images[0]"), "{}", e.message());

    // The images are in the journal: they survive a SIGKILL.
    baton.kill9().await.unwrap();
    let baton = BatonProcess::start(bin(), &config).await.unwrap();
    let mut client = baton.client().await.unwrap();
    let s = get(&mut client, &id).await;
    assert_eq!(s.messages[0].images.len(), 1);
    assert_eq!(s.messages[0].images[0].url, png);
    assert_eq!(s.messages[0].images[0].detail, "low");
    let s = get(&mut client, &grpc_id).await;
    assert_eq!(s.turns_completed, 1, "no turn was added or re-run");
    assert_eq!(s.messages.len(), 2);
    assert_eq!(s.messages[0].images[0].url, "https://example.com/b.jpg");
    assert_eq!(fake.requests(), 3, "nothing re-run after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_ending_with_tool_results_continues() {
    let fd = front_door(false, "").await;
    fd.fake
        .push_reply(ScriptedReply::Text("It is sunny in Paris.".into()));
    let r = fd
        .post(&json!({"model": "fake", "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_7", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_7", "content": "sunny, 21C"},
        ], "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object"}}}],
           "tool_choice": "required"}))
        .await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-baton-session-id").unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "It is sunny in Paris."
    );
    // Upstream saw the call and its result, in order.
    let sent = &fd.fake.received()[0]["messages"];
    let roles: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["user", "assistant", "tool"], "{sent}");
    assert_eq!(sent[2]["tool_call_id"], "call_7");
    assert_eq!(sent[2]["content"], "sunny, 21C");
    // The caller runs the loop: its tool choice applies to this call too,
    // even though the conversation ends with a tool result.
    assert_eq!(fd.fake.received()[0]["tool_choice"], "required");
    let mut client = fd.baton.client().await.unwrap();
    assert_eq!(get(&mut client, &id).await.turns_completed, 1);
    // A tool message without its call id is refused before any model call.
    let (status, err) = error_of(
        fd.post(&json!({"model": "fake", "messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "content": "orphan"},
        ]}))
        .await,
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(fd.fake.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_every_route() {
    let fd = front_door(true, "").await;
    let r = fd.get("/v1/models").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"fake") && ids.contains(&"echo"), "{ids:?}");
    assert_eq!(
        body["data"][0],
        json!({"id": ids[0], "object": "model", "created": 0, "owned_by": "baton"})
    );
    let r = fd.get("/v1/models/echo").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "echo");
    let (status, err) = error_of(fd.get("/v1/models/gpt-5").await).await;
    assert_eq!(status, 404);
    assert_eq!(err["code"], "model_not_found");

    // The echo route answers through the front door too.
    let r = fd
        .post(&json!({"model": "echo", "messages": [{"role": "user", "content": "ping"}]}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-baton-endpoint").as_deref(), Some("echo"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_style_errors_and_reach_no_model() {
    let fd = front_door(true, "[http]\nmax_request_bytes = 65536\n").await;

    let (status, err) = error_of(
        fd.post(&json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}))
            .await,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        (&err["type"], &err["param"], &err["code"]),
        (
            &json!("invalid_request_error"),
            &json!("model"),
            &json!("model_not_found")
        )
    );
    assert!(err["message"].as_str().unwrap().contains("gpt-5"), "{err}");

    let r = fd
        .client
        .post(format!("{}/v1/chat/completions", fd.http))
        .header("content-type", "application/json")
        .body("{\"model\": \"fake\", \"messages\": [")
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(r).await;
    assert_eq!(status, 400);
    assert_eq!(err["type"], "invalid_request_error");
    assert!(
        err["message"].as_str().unwrap().contains("not valid JSON"),
        "{err}"
    );

    let cases = [
        (json!({"model": "fake"}), "messages"),
        (json!({"model": "fake", "messages": []}), "messages"),
        (
            json!({"model": "fake", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
            ]}]}),
            "messages[0].content[1].type",
        ),
        (
            json!({"model": "fake", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}},
            ]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"model": "fake", "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]}),
            "messages[1].role",
        ),
        (
            json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}],
                   "tools": [{"type": "code_interpreter"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}],
                   "temperature": 7}),
            "temperature",
        ),
        (
            json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}],
                   "tool_choice": {"type": "function", "function": {"name": "absent"}}}),
            "tool_choice.function.name",
        ),
        (
            json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}],
                   "response_format": {"type": "json_object"}}),
            "response_format.type",
        ),
    ];
    for (body, param) in cases {
        let (status, err) = error_of(fd.post(&body).await).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["type"], "invalid_request_error");
        assert_eq!(err["param"], param, "{body}: {err}");
    }

    let big = "x".repeat(100 * 1024);
    let (status, err) = error_of(
        fd.post(&json!({"model": "fake", "messages": [{"role": "user", "content": big}]}))
            .await,
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(err["code"], "request_too_large");

    let (status, err) = error_of(fd.get("/v1/audio/speech").await).await;
    assert_eq!(status, 404);
    assert_eq!(err["code"], "not_found");
    let r = fd.get("/v1/embeddings").await;
    assert_eq!(r.headers()["allow"], "POST");
    let (status, err) = error_of(r).await;
    assert_eq!(status, 405);
    assert_eq!(err["code"], "method_not_allowed");
    let r = fd.get("/healthz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");

    assert_eq!(fd.fake.requests(), 0, "no bad request reached the model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_turns_map_to_openai_errors() {
    let fd = front_door(false, "").await;

    // A session budget below the call's estimate: 429 insufficient_quota.
    let r = fd
        .client
        .post(format!("{}/v1/chat/completions", fd.http))
        .header("x-baton-budget-usd", "0.000000001")
        .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "x-baton-session-id").is_some());
    let (status, err) = error_of(r).await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["type"], "insufficient_quota");
    assert_eq!(fd.fake.requests(), 0, "refused before the call");

    // The provider's content filter: 400 with its reason.
    fd.fake.push_fault(Fault::ContentPolicy);
    let (status, err) = error_of(
        fd.post(&json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "content_policy_violation");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("content management policy"),
        "{err}"
    );

    // Streaming: a failure before any output is an HTTP error too.
    fd.fake.push_fault(Fault::ContentPolicy);
    let (status, err) = error_of(
        fd.post(&json!({"model": "fake", "stream": true,
                         "messages": [{"role": "user", "content": "hi"}]}))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "content_policy_violation");
}

/// A failed attempt is invisible to a streaming client: one that failed
/// before output, here; one that broke after its text was sent is resumed
/// (tests/it/stream_resume.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_output_is_invisible_to_a_streaming_client() {
    let fd = front_door(true, "").await;
    fd.fake.set_behavior(behavior(3));
    // A failure before any output was sent is invisible to the client.
    fd.fake.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
        body: "busy".into(),
    });
    let r = fd
        .post(&json!({
            "model": "fake",
            "messages": [{"role": "user", "content": "retry me"}],
            "stream": true,
        }))
        .await;
    let data = sse_data(&r.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert_eq!(content_of(&parse_chunks(&data)), "echo: retry me");
}

/// The value of the first sample line that starts with `prefix` and
/// contains every one of `labels`.
fn sample(text: &str, prefix: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_attempts_turns_and_latency() {
    let fd = front_door(true, "").await;
    for i in 0..3 {
        let r = fd
            .post(&json!({"model": "fake", "messages": [{"role": "user", "content": format!("q{i}")}]}))
            .await;
        assert_eq!(r.status(), 200);
    }
    let r = fd.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let content_type = header(&r, "content-type").unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();
    let attempts = sample(
        &text,
        "baton_model_attempts_total{",
        &[r#"endpoint="fake""#],
    );
    assert!(attempts.is_some_and(|n| n >= 3.0), "{attempts:?}\n{text}");
    let turns = sample(&text, "baton_turns_total{", &[r#"outcome="completed""#]);
    assert!(turns.is_some_and(|n| n >= 3.0), "{turns:?}\n{text}");
    let count = sample(
        &text,
        "baton_model_attempt_duration_seconds_count{",
        &[r#"endpoint="fake""#],
    );
    assert!(count.is_some_and(|n| n >= 3.0), "{count:?}\n{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with("baton_model_attempt_duration_seconds_bucket{")
                && l.contains(r#"le="+Inf""#)
        ),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
}
