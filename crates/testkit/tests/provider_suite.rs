//! One provider test suite, run against every HTTP provider: `openai` against
//! the fake OpenAI server and `anthropic` against the fake Anthropic server,
//! both over real HTTP on loopback, through single attempts of
//! `baton_models::Endpoint` — and, where a scenario is about what is retried,
//! through a `Router` over that one endpoint (`common::routed`), as
//! production calls it. Each scenario is an `async fn(Kind)`;
//! `provider_suite!` makes a test of it per provider (`openai::<scenario>`,
//! `anthropic::<scenario>`).
//!
//! Timeouts are short (hundreds of ms) to keep the suite fast; upper bounds
//! on elapsed time are generous, to stay clear of a loaded machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ops::Deref;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_models::{
    Delta, Endpoint, EndpointConfig, Error, ModelRequest, ModelResponse, ProviderError,
    ProviderErrorKind, ProviderKind, RetryConfig,
};
use baton_routing::RouteErrorKind;
use baton_testkit::fake_model::FakeServer;
use baton_testkit::{
    Behavior, FakeAnthropic, FakeOpenAi, Fault, Reply, ScriptedReply, fake_anthropic, fake_openai,
};
use baton_types::{FinishReason, Message, Role, ToolCall, ToolDefinition, Usage};
use common::routed;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which provider a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OpenAi,
    Anthropic,
}

macro_rules! provider_suite {
    ($($scenario:ident),* $(,)?) => {
        mod openai {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Kind::OpenAi).await;
                }
            )*
        }
        mod anthropic {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Kind::Anthropic).await;
                }
            )*
        }
    };
}

provider_suite!(
    plain_answer_with_usage_and_reported_model,
    tool_call_round_trip,
    json_schema_request_shape,
    rate_limits_with_and_without_retry_after,
    server_errors_are_transient,
    connection_resets_and_a_down_provider,
    connect_failure_is_a_connection_error,
    silent_upstream_is_a_first_token_timeout,
    slow_first_token_below_and_above_the_limit,
    broken_stream_is_an_error_never_an_answer,
    stalled_stream_is_stream_stalled,
    malformed_chunk_is_malformed,
    no_terminator_finishes_promptly_with_usage,
    context_length_is_not_transient,
    content_policy_carries_the_provider_reason,
    auth_failure_is_not_retried,
    api_key_is_sent_and_never_shown,
    retries_resume_the_streamed_text,
);

const SECRET: &str = "sk-suite-secret-do-not-leak-9137";
const MODEL: &str = "fake-model";

enum Fake {
    OpenAi(FakeOpenAi),
    Anthropic(FakeAnthropic),
}

impl Deref for Fake {
    type Target = FakeServer;

    fn deref(&self) -> &FakeServer {
        match self {
            Fake::OpenAi(f) => f,
            Fake::Anthropic(f) => f,
        }
    }
}

/// A fake server of one kind and endpoints pointed at it, with an api key.
struct Harness {
    kind: Kind,
    fake: Fake,
    _dir: tempfile::TempDir,
    key_file: PathBuf,
}

impl Deref for Harness {
    type Target = FakeServer;

    fn deref(&self) -> &FakeServer {
        &self.fake
    }
}

impl Harness {
    async fn start(kind: Kind) -> Harness {
        let fake = match kind {
            Kind::OpenAi => Fake::OpenAi(FakeOpenAi::start().await.unwrap()),
            Kind::Anthropic => Fake::Anthropic(FakeAnthropic::start().await.unwrap()),
        };
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, format!("{SECRET}\n")).unwrap();
        Harness {
            kind,
            fake,
            _dir: dir,
            key_file,
        }
    }

    /// Short phase timeouts; no retries when routed.
    fn config(&self, stream: bool) -> EndpointConfig {
        let mut cfg = match self.kind {
            Kind::OpenAi => EndpointConfig::openai("fake", self.base_url(), MODEL),
            Kind::Anthropic => {
                let mut cfg = EndpointConfig::new("fake", ProviderKind::Anthropic);
                cfg.base_url = Some(self.base_url());
                cfg.model = MODEL.into();
                cfg
            }
        };
        cfg.stream = stream;
        cfg.api_key_file = Some(self.key_file.clone());
        cfg.timeout_ms = 10_000;
        cfg.connect_timeout_ms = 1_000;
        cfg.first_token_timeout_ms = 2_000;
        cfg.idle_timeout_ms = 2_000;
        cfg.retry = RetryConfig {
            max_attempts: 1,
            initial_backoff_ms: 10,
            max_backoff_ms: 50,
        };
        cfg
    }

    fn endpoint(&self, stream: bool) -> Endpoint {
        Endpoint::from_config(self.config(stream)).unwrap()
    }

    fn endpoint_with(&self, stream: bool, f: impl FnOnce(&mut EndpointConfig)) -> Endpoint {
        Endpoint::from_config(self.config_with(stream, f)).unwrap()
    }

    fn config_with(&self, stream: bool, f: impl FnOnce(&mut EndpointConfig)) -> EndpointConfig {
        let mut cfg = self.config(stream);
        f(&mut cfg);
        cfg
    }

    fn last_received(&self) -> Value {
        self.received().pop().unwrap()
    }
}

fn request(text: &str) -> ModelRequest {
    ModelRequest::new(vec![Message::system("be brief"), Message::user(text)])
}

/// One attempt with a delta sink: the result and every delta received.
async fn once(ep: &Endpoint, req: &ModelRequest) -> (Result<ModelResponse, Error>, Vec<Delta>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let result = ep
        .attempt_once(req, Some(&tx), &CancellationToken::new())
        .await;
    drop(tx);
    let mut deltas = Vec::new();
    while let Some(d) = rx.recv().await {
        deltas.push(d);
    }
    (result, deltas)
}

/// A failing attempt's provider error, checked never to show the key.
async fn fail(ep: &Endpoint, req: &ModelRequest) -> ProviderError {
    let (r, _) = once(ep, req).await;
    let err = match r {
        Ok(resp) => panic!("expected an error, got {resp:?}"),
        Err(e) => e,
    };
    assert!(
        !err.to_string().contains(SECRET) && !format!("{err:?}").contains(SECRET),
        "{err:?}"
    );
    err.provider_error()
        .unwrap_or_else(|| panic!("not a provider error: {err}"))
        .clone()
}

fn text_of(deltas: &[Delta]) -> String {
    deltas
        .iter()
        .map(|d| match d {
            Delta::Text(t) => t.as_str(),
            Delta::Restart => panic!("unexpected restart in {deltas:?}"),
        })
        .collect()
}

async fn plain_answer_with_usage_and_reported_model(kind: Kind) {
    let h = Harness::start(kind).await;
    for stream in [false, true] {
        // The model named in the answer wins over the configured one.
        h.set_behavior(Behavior {
            chunk_chars: 4,
            model: Some("fake-model-2025-01-01".into()),
            ..Behavior::default()
        });
        let (resp, deltas) = once(&h.endpoint(stream), &request("hello big world")).await;
        let resp = resp.unwrap();
        assert_eq!(resp.message, Message::assistant("echo: hello big world"));
        assert_eq!(resp.finish_reason, FinishReason::Stop);
        assert_eq!(resp.model, "fake-model-2025-01-01", "stream={stream}");
        assert_eq!(resp.attempts, 1);
        // "be brief" + "hello big world" in, "echo: hello big world" out.
        assert_eq!(
            resp.usage,
            Usage {
                input_tokens: 5,
                output_tokens: 4
            },
            "stream={stream}"
        );
        if stream {
            assert_eq!(text_of(&deltas), "echo: hello big world");
            assert!(deltas.len() > 1, "{deltas:?}");
        } else {
            assert!(deltas.is_empty(), "{deltas:?}");
        }
        let body = h.last_received();
        assert_eq!(body["model"], MODEL);
        assert_eq!(body["stream"], stream);
        match kind {
            Kind::OpenAi => {
                assert_eq!(
                    body["messages"][0],
                    json!({"role": "system", "content": "be brief"})
                );
                if stream {
                    assert_eq!(body["stream_options"], json!({"include_usage": true}));
                } else {
                    assert!(body.get("stream_options").is_none(), "{body}");
                }
            }
            Kind::Anthropic => {
                assert_eq!(body["system"], "be brief");
                assert_eq!(
                    body["messages"],
                    json!([{"role": "user", "content": "hello big world"}])
                );
                assert_eq!(body["max_tokens"], 4096);
            }
        }
    }
    // The output limit is sent and honoured: "length".
    h.set_behavior(Behavior::default());
    let mut req = request("one two three four five");
    req.max_output_tokens = Some(3);
    let (resp, _) = once(&h.endpoint(true), &req).await;
    let resp = resp.unwrap();
    assert_eq!(resp.finish_reason, FinishReason::Length);
    assert_eq!(resp.message.content, "echo: one two");
    assert_eq!(resp.model, MODEL, "fallback: the configured model");
}

const CALC_SCHEMA: &str =
    r#"{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}"#;

fn tools() -> Vec<ToolDefinition> {
    vec![
        ToolDefinition {
            name: "calculator".into(),
            description: "Evaluates an arithmetic expression".into(),
            parameters: CALC_SCHEMA.into(),
        },
        ToolDefinition {
            name: "clock".into(),
            description: "The current time".into(),
            parameters: r#"{"type":"object"}"#.into(),
        },
    ]
}

fn calls() -> Vec<ToolCall> {
    vec![
        ToolCall {
            id: "call_calc_1".into(),
            name: "calculator".into(),
            arguments: r#"{"expression":"2+2"}"#.into(),
        },
        ToolCall {
            id: "call_clock_2".into(),
            name: "clock".into(),
            arguments: "{}".into(),
        },
    ]
}

fn tool_result(id: &str, content: &str) -> Message {
    Message {
        role: Role::Tool,
        content: content.into(),
        tool_calls: vec![],
        tool_call_id: Some(id.into()),
        images: Vec::new(),
    }
}

async fn tool_call_round_trip(kind: Kind) {
    let h = Harness::start(kind).await;
    for stream in [false, true] {
        h.set_behavior(Behavior {
            chunk_chars: 5,
            ..Behavior::default()
        });
        h.push_reply(ScriptedReply::ToolCalls(calls()));
        h.push_reply(ScriptedReply::Text("2 + 2 = 4, it is noon".into()));
        let ep = h.endpoint(stream);
        let first = request("what is 2+2, and the time?").with_tools(tools());
        let (resp, deltas) = once(&ep, &first).await;
        let resp = resp.unwrap();
        assert_eq!(
            resp.finish_reason,
            FinishReason::ToolCalls,
            "stream={stream}"
        );
        assert_eq!(resp.message.tool_calls, calls(), "stream={stream}");
        assert_eq!(resp.message.content, "");
        assert!(deltas.is_empty(), "{deltas:?}");
        let body = h.last_received();
        match kind {
            Kind::OpenAi => assert_eq!(
                body["tools"][0],
                json!({"type": "function", "function": {
                    "name": "calculator",
                    "description": "Evaluates an arithmetic expression",
                    "parameters": serde_json::from_str::<Value>(CALC_SCHEMA).unwrap(),
                }})
            ),
            Kind::Anthropic => assert_eq!(
                body["tools"],
                json!([
                    {"name": "calculator", "description": "Evaluates an arithmetic expression",
                     "input_schema": serde_json::from_str::<Value>(CALC_SCHEMA).unwrap()},
                    {"name": "clock", "description": "The current time",
                     "input_schema": {"type": "object"}},
                ])
            ),
        }

        // The agent loop appends the call and the results, in order.
        let mut second = first.clone();
        second.messages.push(resp.message);
        second.messages.push(tool_result("call_calc_1", "4"));
        second.messages.push(tool_result("call_clock_2", "12:00"));
        let (resp, deltas) = once(&ep, &second).await;
        let resp = resp.unwrap();
        assert_eq!(resp.finish_reason, FinishReason::Stop);
        assert_eq!(resp.message, Message::assistant("2 + 2 = 4, it is noon"));
        if stream {
            assert_eq!(text_of(&deltas), "2 + 2 = 4, it is noon");
        }
        let body = h.last_received();
        match kind {
            Kind::OpenAi => {
                assert_eq!(
                    body["messages"][2],
                    json!({"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_calc_1", "type": "function",
                         "function": {"name": "calculator", "arguments": r#"{"expression":"2+2"}"#}},
                        {"id": "call_clock_2", "type": "function",
                         "function": {"name": "clock", "arguments": "{}"}},
                    ]})
                );
                assert_eq!(
                    body["messages"][3],
                    json!({"role": "tool", "content": "4", "tool_call_id": "call_calc_1"})
                );
                assert_eq!(
                    body["messages"][4],
                    json!({"role": "tool", "content": "12:00", "tool_call_id": "call_clock_2"})
                );
            }
            Kind::Anthropic => {
                // The fake also refuses calls without results, like the real API.
                assert_eq!(
                    body["messages"],
                    json!([
                        {"role": "user", "content": "what is 2+2, and the time?"},
                        {"role": "assistant", "content": [
                            {"type": "tool_use", "id": "call_calc_1", "name": "calculator",
                             "input": {"expression": "2+2"}},
                            {"type": "tool_use", "id": "call_clock_2", "name": "clock", "input": {}},
                        ]},
                        {"role": "user", "content": [
                            {"type": "tool_result", "tool_use_id": "call_calc_1", "content": "4"},
                            {"type": "tool_result", "tool_use_id": "call_clock_2", "content": "12:00"},
                        ]},
                    ])
                );
            }
        }
    }
    assert_eq!(h.replies_left(), 0);
}

async fn json_schema_request_shape(kind: Kind) {
    let h = Harness::start(kind).await;
    h.set_behavior(Behavior {
        reply: Reply::Fixed(r#"{"answer":42}"#.into()),
        chunk_chars: 3,
        ..Behavior::default()
    });
    let schema = json!({
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": false,
    });
    for stream in [false, true] {
        let mut req = request("the answer?");
        req.json_schema = Some(schema.clone());
        let (resp, deltas) = once(&h.endpoint(stream), &req).await;
        let resp = resp.unwrap();
        let answer: Value = serde_json::from_str(&resp.message.content).unwrap();
        assert_eq!(answer, json!({"answer": 42}), "stream={stream}");
        assert_eq!(resp.finish_reason, FinishReason::Stop);
        assert!(resp.message.tool_calls.is_empty());
        if stream {
            assert_eq!(text_of(&deltas), resp.message.content);
        }
        let body = h.last_received();
        match kind {
            Kind::OpenAi => assert_eq!(
                body["response_format"],
                json!({"type": "json_schema",
                       "json_schema": {"name": "output", "schema": schema, "strict": true}})
            ),
            Kind::Anthropic => {
                assert_eq!(
                    body["tool_choice"],
                    json!({"type": "tool", "name": "output"})
                );
                let tools = body["tools"].as_array().unwrap();
                assert_eq!(tools.len(), 1);
                assert_eq!(tools[0]["name"], "output");
                assert_eq!(tools[0]["input_schema"], schema);
            }
        }
    }
}

fn error_body(kind: Kind, error_type: &str, message: &str) -> String {
    match kind {
        Kind::OpenAi => json!({"error": {"message": message, "type": error_type}}),
        Kind::Anthropic => {
            json!({"type": "error", "error": {"type": error_type, "message": message}})
        }
    }
    .to_string()
}

async fn rate_limits_with_and_without_retry_after(kind: Kind) {
    let h = Harness::start(kind).await;
    for stream in [false, true] {
        let ep = h.endpoint(stream);
        for retry_after in [Some(7), None] {
            h.push_fault(Fault::Status {
                status: 429,
                retry_after,
                body: error_body(kind, "rate_limit_error", "rate limit reached for requests"),
            });
            let err = fail(&ep, &request("x")).await;
            let want = retry_after.map(Duration::from_secs);
            assert_eq!(
                err.kind,
                ProviderErrorKind::RateLimited { retry_after: want },
                "stream={stream}"
            );
            assert_eq!(err.retry_after(), want);
            assert!(err.is_transient());
            assert!(
                err.message.contains("rate limit reached for requests"),
                "{err}"
            );
        }
    }
}

async fn server_errors_are_transient(kind: Kind) {
    let h = Harness::start(kind).await;
    let mut statuses = vec![500, 502, 503];
    if kind == Kind::Anthropic {
        statuses.push(529); // overloaded
    }
    for stream in [false, true] {
        for &status in &statuses {
            h.push_fault(Fault::Status {
                status,
                retry_after: None,
                body: error_body(kind, "api_error", "upstream trouble"),
            });
            let err = fail(&h.endpoint(stream), &request("x")).await;
            assert_eq!(
                err.kind,
                ProviderErrorKind::Server { status },
                "stream={stream}"
            );
            assert!(err.is_transient());
            assert!(err.message.contains("upstream trouble"), "{err}");
        }
    }
}

async fn connection_resets_and_a_down_provider(kind: Kind) {
    let h = Harness::start(kind).await;
    for stream in [false, true] {
        let ep = h.endpoint(stream);
        h.push_fault(Fault::CloseConnection);
        let err = fail(&ep, &request("x")).await;
        assert_eq!(
            err.kind,
            ProviderErrorKind::Connection,
            "stream={stream}: {err}"
        );
        assert!(err.is_transient());
    }
    // Down: every request is dropped, and counted, until it comes back.
    let ep = h.endpoint(true);
    let before = h.requests();
    h.set_down(true);
    for _ in 0..2 {
        let err = fail(&ep, &request("x")).await;
        assert_eq!(err.kind, ProviderErrorKind::Connection, "{err}");
    }
    assert_eq!(h.requests(), before + 2);
    h.set_down(false);
    let (resp, _) = once(&ep, &request("back")).await;
    assert_eq!(resp.unwrap().message.content, "echo: back");
}

async fn connect_failure_is_a_connection_error(kind: Kind) {
    let h = Harness::start(kind).await;
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ep = h.endpoint_with(true, |cfg| {
        cfg.base_url = Some(format!("http://127.0.0.1:{port}/v1"));
    });
    let start = Instant::now();
    let err = fail(&ep, &request("x")).await;
    assert_eq!(err.kind, ProviderErrorKind::Connection, "{err}");
    assert!(err.message.contains("cannot connect"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

async fn silent_upstream_is_a_first_token_timeout(kind: Kind) {
    let h = Harness::start(kind).await;
    for stream in [false, true] {
        let ep = h.endpoint_with(stream, |cfg| cfg.first_token_timeout_ms = 300);
        h.push_fault(Fault::Hang);
        let start = Instant::now();
        let err = fail(&ep, &request("x")).await;
        let took = start.elapsed();
        assert_eq!(
            err.kind,
            ProviderErrorKind::FirstTokenTimeout,
            "stream={stream}: {err}"
        );
        assert!(err.is_transient());
        assert!(err.message.contains("300 ms"), "{err}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}

async fn slow_first_token_below_and_above_the_limit(kind: Kind) {
    let h = Harness::start(kind).await;
    for stream in [false, true] {
        let ep = h.endpoint_with(stream, |cfg| cfg.first_token_timeout_ms = 500);
        h.push_fault(Fault::SlowFirstToken(Duration::from_millis(50)));
        let (resp, _) = once(&ep, &request("slow")).await;
        assert_eq!(
            resp.unwrap().message.content,
            "echo: slow",
            "stream={stream}"
        );

        h.push_fault(Fault::SlowFirstToken(Duration::from_secs(3)));
        let start = Instant::now();
        let err = fail(&ep, &request("slower")).await;
        assert_eq!(
            err.kind,
            ProviderErrorKind::FirstTokenTimeout,
            "stream={stream}: {err}"
        );
        assert!(
            start.elapsed() < Duration::from_millis(2_500),
            "{:?}",
            start.elapsed()
        );
    }
}

fn chunky(h: &Harness) {
    h.set_behavior(Behavior {
        reply: Reply::Fixed("abcdefghijklmnop".into()),
        chunk_chars: 2,
        ..Behavior::default()
    });
}

async fn broken_stream_is_an_error_never_an_answer(kind: Kind) {
    let h = Harness::start(kind).await;
    chunky(&h);
    for stream in [false, true] {
        h.push_fault(Fault::BreakStreamAfter { chunks: 4 });
        let (r, deltas) = once(&h.endpoint(stream), &request("x")).await;
        let err = r.unwrap_err();
        let err = err.provider_error().unwrap();
        assert_eq!(
            err.kind,
            ProviderErrorKind::Connection,
            "stream={stream}: {err}"
        );
        assert!(err.is_transient());
        if stream {
            // Part of the answer went out before the break; it is never final.
            assert!(!text_of(&deltas).is_empty());
            assert!(err.message.contains("after"), "{err}");
        }
    }
}

async fn stalled_stream_is_stream_stalled(kind: Kind) {
    let h = Harness::start(kind).await;
    chunky(&h);
    for stream in [false, true] {
        let ep = h.endpoint_with(stream, |cfg| cfg.idle_timeout_ms = 300);
        h.push_fault(Fault::StallAfter { chunks: 4 });
        let start = Instant::now();
        let err = fail(&ep, &request("x")).await;
        let took = start.elapsed();
        assert_eq!(
            err.kind,
            ProviderErrorKind::StreamStalled,
            "stream={stream}: {err}"
        );
        assert!(err.is_transient());
        if stream {
            assert_eq!(
                err.message,
                "stream stalled: no data for 300 ms after 4 chunks"
            );
        }
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}

async fn malformed_chunk_is_malformed(kind: Kind) {
    let h = Harness::start(kind).await;
    for stream in [false, true] {
        h.push_fault(Fault::MalformedChunk);
        let err = fail(&h.endpoint(stream), &request("x")).await;
        assert_eq!(
            err.kind,
            ProviderErrorKind::Malformed,
            "stream={stream}: {err}"
        );
        assert!(err.is_transient());
        if stream {
            assert!(err.message.contains("malformed stream chunk"), "{err}");
        }
    }
}

async fn no_terminator_finishes_promptly_with_usage(kind: Kind) {
    let h = Harness::start(kind).await;
    chunky(&h);
    let idle = Duration::from_secs(5);
    let ep = h.endpoint_with(true, |cfg| cfg.idle_timeout_ms = idle.as_millis() as u64);
    h.push_fault(Fault::NoTerminator);
    let start = Instant::now();
    let (resp, deltas) = once(&ep, &request("x")).await;
    let took = start.elapsed();
    let resp = resp.unwrap();
    assert_eq!(resp.message.content, "abcdefghijklmnop");
    assert_eq!(text_of(&deltas), "abcdefghijklmnop");
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 3,
            output_tokens: 1
        }
    );
    assert_eq!(resp.finish_reason, FinishReason::Stop);
    assert!(
        took < Duration::from_secs(1),
        "{took:?} (idle timeout {idle:?})"
    );
}

async fn context_length_is_not_transient(kind: Kind) {
    let h = Harness::start(kind).await;
    let want = match kind {
        Kind::OpenAi => fake_openai::CONTEXT_LENGTH_MESSAGE,
        Kind::Anthropic => fake_anthropic::CONTEXT_LENGTH_MESSAGE,
    };
    for stream in [false, true] {
        h.push_fault(Fault::ContextLength);
        let err = fail(&h.endpoint(stream), &request("x")).await;
        assert_eq!(
            err.kind,
            ProviderErrorKind::ContextLength,
            "stream={stream}: {err}"
        );
        assert!(!err.is_transient());
        assert!(err.message.contains(want), "{err}");

        // Routed with retries allowed: still a single attempt.
        h.push_fault(Fault::ContextLength);
        let before = h.requests();
        let cfg = h.config_with(stream, |cfg| cfg.retry.max_attempts = 3);
        let r = routed(cfg, &request("x")).await;
        assert_eq!(r.failure_kinds(), vec!["context_length"], "stream={stream}");
        let err = r.unwrap_err();
        assert_eq!((err.kind, err.attempts), (RouteErrorKind::ContextLength, 1));
        assert_eq!(h.requests(), before + 1);
        assert!(err.message.contains(want), "{err}");
    }
}

async fn content_policy_carries_the_provider_reason(kind: Kind) {
    let h = Harness::start(kind).await;
    let want = match kind {
        Kind::OpenAi => fake_openai::CONTENT_POLICY_MESSAGE,
        Kind::Anthropic => fake_anthropic::CONTENT_POLICY_MESSAGE,
    };
    for stream in [false, true] {
        let ep = h.endpoint(stream);
        h.push_fault(Fault::ContentPolicy);
        let err = fail(&ep, &request("x")).await;
        assert_eq!(
            err.kind,
            ProviderErrorKind::ContentPolicy,
            "stream={stream}: {err}"
        );
        assert!(!err.is_transient());
        assert!(err.message.contains(want), "{err}");

        // Routed with retries allowed: propagated at once, with the reason.
        h.push_fault(Fault::ContentPolicy);
        let before = h.requests();
        let cfg = h.config_with(stream, |cfg| cfg.retry.max_attempts = 3);
        let err = routed(cfg, &request("x")).await.unwrap_err();
        assert_eq!((err.kind, err.attempts), (RouteErrorKind::ContentPolicy, 1));
        assert_eq!(h.requests(), before + 1);
        assert!(err.message.contains(want), "{err}");

        // A 200 answer cut by the filter is no answer either.
        h.push_fault(Fault::Refusal);
        let err = fail(&ep, &request("x")).await;
        assert_eq!(
            err.kind,
            ProviderErrorKind::ContentPolicy,
            "stream={stream}: {err}"
        );
    }
}

async fn auth_failure_is_not_retried(kind: Kind) {
    let h = Harness::start(kind).await;
    let unauthorized = || Fault::Status {
        status: 401,
        retry_after: None,
        body: error_body(kind, "authentication_error", "invalid x-api-key"),
    };
    for stream in [false, true] {
        h.push_fault(unauthorized());
        let err = fail(&h.endpoint(stream), &request("x")).await;
        assert_eq!(err.kind, ProviderErrorKind::Auth, "stream={stream}");
        assert!(!err.is_transient());
        assert!(err.message.contains("invalid x-api-key"), "{err}");

        // Routed with retries allowed: one attempt, the endpoint excluded.
        h.push_fault(unauthorized());
        let before = h.requests();
        let cfg = h.config_with(stream, |cfg| cfg.retry.max_attempts = 3);
        let r = routed(cfg, &request("x")).await;
        assert_eq!(r.failure_kinds(), vec!["auth"], "stream={stream}");
        assert_eq!(r.failures[0].retry_in_ms, None);
        let err = r.unwrap_err();
        assert_eq!((err.kind, err.attempts), (RouteErrorKind::Exhausted, 1));
        assert_eq!(h.requests(), before + 1);
        assert!(err.message.contains("invalid x-api-key"), "{err}");
        assert!(!err.to_string().contains(SECRET) && !format!("{err:?}").contains(SECRET));
    }
}

async fn api_key_is_sent_and_never_shown(kind: Kind) {
    let h = Harness::start(kind).await;
    let ep = h.endpoint(true);
    once(&ep, &request("x")).await.0.unwrap();
    match &h.fake {
        Fake::OpenAi(f) => {
            assert_eq!(f.authorizations(), vec![Some(format!("Bearer {SECRET}"))]);
        }
        Fake::Anthropic(f) => {
            assert_eq!(f.api_keys(), vec![Some(SECRET.to_string())]);
            assert_eq!(f.versions(), vec![Some("2023-06-01".to_string())]);
            assert!(h.header_values("authorization")[0].is_none());
        }
    }
    let debug = format!("{ep:?} {:?} {:?}", ep.config(), ep.provider());
    assert!(!debug.contains(SECRET), "{debug}");
    // Nor in any error: `fail` checks each one.
    for fault in [
        Fault::Status {
            status: 403,
            retry_after: None,
            body: "forbidden".into(),
        },
        Fault::CloseConnection,
        Fault::MalformedChunk,
        Fault::ContentPolicy,
    ] {
        h.push_fault(fault);
        fail(&ep, &request("x")).await;
    }
}

async fn retries_resume_the_streamed_text(kind: Kind) {
    let h = Harness::start(kind).await;
    chunky(&h);
    let cfg = h.config_with(true, |cfg| {
        cfg.retry.max_attempts = 4;
        cfg.idle_timeout_ms = 300;
    });
    h.push_fault(Fault::BreakStreamAfter { chunks: 5 });
    h.push_fault(Fault::StallAfter { chunks: 5 });
    h.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
        body: "busy".into(),
    });
    let before = h.requests();
    let r = routed(cfg, &request("x")).await;
    let kinds = r.failure_kinds();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    for k in ["connection", "stream_stalled", "server"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    let deltas = r.deltas.clone();
    let routed = r.unwrap();
    assert_eq!((routed.attempts, routed.response.attempts), (4, 4));
    assert_eq!(routed.response.message.content, "abcdefghijklmnop");
    assert_eq!(h.requests(), before + 4);
    // Two attempts streamed text before failing; each next attempt resumed
    // it (OpenAI: asked again, the text re-written held back; Anthropic: a
    // prefill continued): the caller got the answer once, nothing retracted.
    assert!(!deltas.contains(&Delta::Restart), "{deltas:?}");
    assert_eq!(text_of(&deltas), "abcdefghijklmnop");
    let want = match kind {
        Kind::OpenAi => baton_types::OutputResume::Prefix,
        Kind::Anthropic => baton_types::OutputResume::Continuation,
    };
    assert_eq!(routed.output_resumed, want);
}
