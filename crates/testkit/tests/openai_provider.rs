//! The `openai` provider against the fake OpenAI server over real HTTP on
//! loopback: through single attempts of `Endpoint`, and, where a test is about
//! retries, through a `Router` over that one endpoint (`common::routed`), as
//! production calls it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use baton_models::{
    Delta, Endpoint, EndpointConfig, Error, ExecutorHandle, ModelRequest, ModelResponse,
    ProviderErrorKind, RetryConfig,
};
use baton_routing::RouteErrorKind;
use baton_testkit::fake_openai::{Behavior, FakeOpenAi, Fault, Reply, ScriptedReply};
use baton_types::{ErrorCode, FinishReason, Message, Role, ToolCall, ToolDefinition, Usage};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::routed;

fn config(server: &FakeOpenAi, stream: bool) -> EndpointConfig {
    let mut cfg = EndpointConfig::openai("fake", server.base_url(), "fake-model");
    cfg.stream = stream;
    cfg.timeout_ms = 5_000;
    cfg.retry = RetryConfig {
        max_attempts: 3,
        initial_backoff_ms: 10,
        max_backoff_ms: 50,
    };
    cfg
}

fn endpoint(server: &FakeOpenAi, stream: bool) -> Endpoint {
    Endpoint::from_config(config(server, stream)).unwrap()
}

fn request(text: &str) -> ModelRequest {
    ModelRequest::new(vec![Message::system("be brief"), Message::user(text)])
}

/// One attempt.
async fn once(ep: &Endpoint, req: &ModelRequest) -> Result<ModelResponse, Error> {
    ep.attempt_once(req, None, &CancellationToken::new()).await
}

/// One attempt with a delta sink; returns the result and every delta received.
async fn once_streaming(
    ep: &Endpoint,
    req: &ModelRequest,
) -> (Result<ModelResponse, Error>, Vec<Delta>) {
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

fn text_of(deltas: &[Delta]) -> String {
    deltas
        .iter()
        .map(|d| match d {
            Delta::Text(t) => t.as_str(),
            Delta::Restart => panic!("unexpected restart in {deltas:?}"),
        })
        .collect()
}

fn two_calls() -> Vec<ToolCall> {
    vec![
        ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris","unit":"celsius"}"#.into(),
        },
        ToolCall {
            id: "call_2".into(),
            name: "get_time".into(),
            arguments: r#"{"tz":"Europe/Paris"}"#.into(),
        },
    ]
}

#[tokio::test]
async fn non_streaming_text_with_usage_and_model() {
    let server = FakeOpenAi::start().await.unwrap();
    let ep = endpoint(&server, false);
    let resp = once(&ep, &request("hello big world")).await.unwrap();
    assert_eq!(resp.message, Message::assistant("echo: hello big world"));
    assert_eq!(resp.finish_reason, FinishReason::Stop);
    assert_eq!(resp.model, "fake-model");
    assert_eq!(resp.attempts, 1);
    // "be brief" + "hello big world" in, "echo: hello big world" out.
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 5,
            output_tokens: 4
        }
    );
    let body = &server.received()[0];
    assert_eq!(body["stream"], false);
    assert_eq!(body["model"], "fake-model");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "hello big world");
    assert_eq!(server.authorizations(), vec![None]);
}

#[tokio::test]
async fn streaming_deltas_arrive_in_order_and_equal_the_final_text() {
    let server = FakeOpenAi::start().await.unwrap();
    let text = "The quick brown fox jumps over the lazy dog";
    server.set_behavior(Behavior {
        reply: Reply::Fixed(text.into()),
        chunk_chars: 3,
        chunk_delay: Duration::from_millis(1),
        ..Behavior::default()
    });
    let ep = endpoint(&server, true);
    let (resp, deltas) = once_streaming(&ep, &request("go")).await;
    let resp = resp.unwrap();
    assert_eq!(resp.message.content, text);
    assert_eq!(deltas.len(), text.len().div_ceil(3));
    assert_eq!(deltas[0], Delta::Text("The".into()));
    assert_eq!(text_of(&deltas), text);
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 3,
            output_tokens: 9
        }
    );
    assert_eq!(resp.finish_reason, FinishReason::Stop);
    assert_eq!(resp.model, "fake-model");
    let body = &server.received()[0];
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn several_tool_calls_in_one_response_streamed_or_not() {
    let server = FakeOpenAi::start().await.unwrap();
    for chunk_chars in [0, 4] {
        server.set_behavior(Behavior {
            reply: Reply::Fixed(String::new()),
            tool_calls: two_calls(),
            chunk_chars,
            ..Behavior::default()
        });
        for stream in [false, true] {
            let ep = endpoint(&server, stream);
            let (resp, deltas) = once_streaming(&ep, &request("weather?")).await;
            let resp = resp.unwrap();
            assert_eq!(resp.message.tool_calls, two_calls(), "stream={stream}");
            assert_eq!(resp.message.content, "");
            assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
            assert!(deltas.is_empty(), "{deltas:?}");
        }
    }
    // Text and tool calls together.
    server.set_behavior(Behavior {
        reply: Reply::Fixed("let me check".into()),
        tool_calls: two_calls()[..1].to_vec(),
        chunk_chars: 5,
        ..Behavior::default()
    });
    let (resp, deltas) = once_streaming(&endpoint(&server, true), &request("x")).await;
    let resp = resp.unwrap();
    assert_eq!(resp.message.content, "let me check");
    assert_eq!(text_of(&deltas), "let me check");
    assert_eq!(resp.message.tool_calls, two_calls()[..1].to_vec());
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_retried_after_the_wait() {
    let server = FakeOpenAi::start().await.unwrap();
    server.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(1),
        body: r#"{"error":{"message":"rate limit reached"}}"#.into(),
    });
    let mut cfg = config(&server, true);
    // Retry-After (1 s) is capped at max_backoff; jitter alone would stay under 10 ms.
    cfg.retry.max_backoff_ms = 300;
    let start = Instant::now();
    let r = routed(cfg, &request("hi")).await;
    assert_eq!(r.failures[0].kind, "rate_limited");
    assert_eq!(r.failures[0].retry_in_ms, Some(300));
    let routed = r.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(routed.attempts, 2);
    assert_eq!(routed.response.message.content, "echo: hi");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn server_error_then_success() {
    let server = FakeOpenAi::start().await.unwrap();
    for stream in [false, true] {
        server.push_fault(Fault::Status {
            status: 500,
            retry_after: None,
            body: "internal error".into(),
        });
        let r = routed(config(&server, stream), &request("hi")).await;
        assert_eq!(r.failure_kinds(), vec!["server"], "stream={stream}");
        assert_eq!(r.unwrap().attempts, 2, "stream={stream}");
    }
    assert_eq!(server.requests(), 4);
}

#[tokio::test]
async fn closed_connection_then_success() {
    let server = FakeOpenAi::start().await.unwrap();
    for stream in [false, true] {
        server.push_fault(Fault::CloseConnection);
        let r = routed(config(&server, stream), &request("hi")).await;
        assert_eq!(r.failure_kinds(), vec!["connection"], "stream={stream}");
        let routed = r.unwrap();
        assert_eq!(routed.attempts, 2, "stream={stream}");
        assert_eq!(routed.response.message.content, "echo: hi");
    }
}

#[tokio::test]
async fn closed_connection_is_a_connection_error() {
    let server = FakeOpenAi::start().await.unwrap();
    server.push_fault(Fault::CloseConnection);
    let err = once(&endpoint(&server, false), &request("hi"))
        .await
        .unwrap_err();
    assert_eq!(
        err.provider_error().unwrap().kind,
        ProviderErrorKind::Connection,
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::Unavailable);
}

#[tokio::test]
async fn client_error_is_not_retried_and_carries_the_provider_message() {
    let server = FakeOpenAi::start().await.unwrap();
    server.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
        body: r#"{"error":{"message":"The model `nope` does not exist","type":"invalid_request_error"}}"#
            .into(),
    });
    let err = once(&endpoint(&server, true), &request("hi"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("The model `nope` does not exist"),
        "{err}"
    );
    assert_eq!(
        err.provider_error().unwrap().kind,
        ProviderErrorKind::Client { status: 400 }
    );
    assert_eq!(err.code(), ErrorCode::InvalidArgument);

    // Routed with retries allowed: one attempt, the provider's message kept.
    server.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
        body: r#"{"error":{"message":"The model `nope` does not exist","type":"invalid_request_error"}}"#
            .into(),
    });
    let r = routed(config(&server, true), &request("hi")).await;
    assert_eq!(r.failure_kinds(), vec!["client"]);
    let err = r.unwrap_err();
    assert_eq!(
        (err.kind, err.attempts),
        (RouteErrorKind::InvalidRequest, 1)
    );
    assert_eq!(server.requests(), 2);
    assert!(
        err.message.contains("The model `nope` does not exist"),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn a_broken_stream_is_resumed_by_the_retry_without_repeating_text() {
    let server = FakeOpenAi::start().await.unwrap();
    server.set_behavior(Behavior {
        reply: Reply::Fixed("abcdefghij".into()),
        chunk_chars: 2,
        ..Behavior::default()
    });
    server.push_fault(Fault::BreakStreamAfter { chunks: 2 });
    let r = routed(config(&server, true), &request("x")).await;
    assert_eq!(r.failures[0].kind, "connection");
    assert!(r.failures[0].streamed);
    let deltas = r.deltas.clone();
    let routed = r.unwrap();
    assert_eq!(routed.attempts, 2);
    assert_eq!(routed.response.message.content, "abcdefghij");
    // The retry re-wrote "abcd" (held back), then streamed the rest: no
    // retraction, nothing repeated.
    assert!(!deltas.contains(&Delta::Restart), "{deltas:?}");
    assert_eq!(text_of(&deltas), "abcdefghij");
    assert_eq!(routed.output_resumed, baton_types::OutputResume::Prefix);
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn broken_stream_without_finish_reason_is_never_a_complete_answer() {
    let server = FakeOpenAi::start().await.unwrap();
    server.set_behavior(Behavior {
        reply: Reply::Fixed("abcdefghij".into()),
        chunk_chars: 2,
        ..Behavior::default()
    });
    server.push_fault(Fault::BreakStreamAfter { chunks: 3 });
    let err = once(&endpoint(&server, true), &request("x"))
        .await
        .unwrap_err();
    assert_eq!(
        err.provider_error().unwrap().kind,
        ProviderErrorKind::Connection,
        "{err}"
    );
}

#[tokio::test]
async fn stream_ending_after_finish_reason_without_done_is_complete() {
    let server = FakeOpenAi::start().await.unwrap();
    server.set_behavior(Behavior {
        reply: Reply::Fixed("abcdef".into()),
        chunk_chars: 2,
        ..Behavior::default()
    });
    // 3 text chunks + finish chunk + usage chunk, then a break instead of [DONE].
    server.push_fault(Fault::BreakStreamAfter { chunks: 5 });
    let resp = once(&endpoint(&server, true), &request("x")).await.unwrap();
    assert_eq!(resp.attempts, 1);
    assert_eq!(resp.message.content, "abcdef");
    assert_eq!(resp.usage.output_tokens, 1);
}

#[tokio::test]
async fn malformed_chunk_is_a_malformed_error_and_retried() {
    let server = FakeOpenAi::start().await.unwrap();
    for stream in [true, false] {
        server.push_fault(Fault::MalformedChunk);
        let err = once(&endpoint(&server, stream), &request("x"))
            .await
            .unwrap_err();
        assert_eq!(
            err.provider_error().unwrap().kind,
            ProviderErrorKind::Malformed,
            "stream={stream}: {err}"
        );

        // A garbled answer is a transport failure: the retry gets a good one.
        server.push_fault(Fault::MalformedChunk);
        let r = routed(config(&server, stream), &request("x")).await;
        assert_eq!(r.failure_kinds(), vec!["malformed"], "stream={stream}");
        let routed = r.unwrap();
        assert_eq!(routed.attempts, 2, "stream={stream}");
        assert_eq!(routed.response.message.content, "echo: x");
    }
}

#[tokio::test]
async fn exhausted_retries_report_max_attempts() {
    let server = FakeOpenAi::start().await.unwrap();
    for _ in 0..3 {
        server.push_fault(Fault::Status {
            status: 503,
            retry_after: None,
            body: r#"{"error":{"message":"overloaded"}}"#.into(),
        });
    }
    let r = routed(config(&server, true), &request("x")).await;
    assert_eq!(r.failure_kinds(), vec!["server", "server", "server"]);
    assert_eq!(r.failures[2].retry_in_ms, None, "no retry after the last");
    let err = r.unwrap_err();
    assert_eq!((err.kind, err.attempts), (RouteErrorKind::Exhausted, 3));
    assert_eq!(server.requests(), 3);
    assert!(
        err.message.contains("all 3 attempts failed") && err.message.contains("overloaded"),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::Unavailable);
}

#[tokio::test]
async fn a_hung_attempt_times_out_and_is_retried() {
    let server = FakeOpenAi::start().await.unwrap();
    let mut cfg = config(&server, true);
    cfg.timeout_ms = 300;
    server.push_fault(Fault::Hang);
    let start = Instant::now();
    let r = routed(cfg.clone(), &request("x")).await;
    assert_eq!(r.failure_kinds(), vec!["timeout"]);
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.unwrap().attempts, 2);

    server.push_fault(Fault::Hang);
    let err = once(&Endpoint::from_config(cfg).unwrap(), &request("x"))
        .await
        .unwrap_err();
    assert_eq!(
        err.provider_error().unwrap().kind,
        ProviderErrorKind::Timeout
    );
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded);
}

#[tokio::test]
async fn cancellation_aborts_the_call_promptly() {
    let server = FakeOpenAi::start().await.unwrap();
    let ep = endpoint(&server, true);

    // While waiting for headers.
    server.push_fault(Fault::Hang);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    let start = Instant::now();
    let err = ep
        .attempt_once(&request("x"), None, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(err.code(), ErrorCode::Cancelled);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    // Mid-stream, after the first delta.
    server.set_behavior(Behavior {
        reply: Reply::Fixed("a b c d e f g h".into()),
        chunk_chars: 2,
        chunk_delay: Duration::from_millis(500),
        ..Behavior::default()
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let task = {
        let ep = ep.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { ep.attempt_once(&request("x"), Some(&tx), &cancel).await })
    };
    assert_eq!(rx.recv().await, Some(Delta::Text("a ".into())));
    let start = Instant::now();
    cancel.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    // No further deltas once cancelled.
    assert_eq!(rx.recv().await, None);
}

#[tokio::test]
async fn api_key_is_sent_as_bearer_and_never_shown() {
    let server = FakeOpenAi::start().await.unwrap();
    let secret = "sk-test-do-not-leak-4242";
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{secret}\n")).unwrap();
    let mut cfg = config(&server, false);
    cfg.api_key_file = Some(key_file);
    let ep = Endpoint::from_config(cfg).unwrap();

    once(&ep, &request("x")).await.unwrap();
    assert_eq!(
        server.authorizations(),
        vec![Some(format!("Bearer {secret}"))]
    );

    let debug = format!("{ep:?}");
    assert!(!debug.contains(secret), "{debug}");
    assert!(!format!("{:?}", ep.config()).contains(secret));

    // Auth failures do not echo the key either, and are not retried.
    let unauthorized = || Fault::Status {
        status: 401,
        retry_after: None,
        body: r#"{"error":{"message":"invalid api key"}}"#.into(),
    };
    server.push_fault(unauthorized());
    let err = once(&ep, &request("x")).await.unwrap_err();
    assert_eq!(err.provider_error().unwrap().kind, ProviderErrorKind::Auth);
    assert!(!err.to_string().contains(secret) && !format!("{err:?}").contains(secret));
    server.push_fault(unauthorized());
    let before = server.requests();
    let r = routed(ep.config().clone(), &request("x")).await;
    assert_eq!(r.failure_kinds(), vec!["auth"]);
    assert!(!format!("{:?}", r.failures).contains(secret));
    let err = r.unwrap_err();
    assert_eq!(err.attempts, 1);
    assert_eq!(server.requests(), before + 1);
    assert!(!err.to_string().contains(secret) && !format!("{err:?}").contains(secret));
}

#[tokio::test]
async fn the_executor_serves_real_http_calls() {
    let server = FakeOpenAi::start().await.unwrap();
    server.set_behavior(Behavior {
        delay: Duration::from_millis(50),
        ..Behavior::default()
    });
    let mut cfg = config(&server, true);
    cfg.max_concurrency = 2;
    let ex = ExecutorHandle::spawn(Endpoint::from_config(cfg).unwrap())
        .await
        .unwrap();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let ex = ex.clone();
            tokio::spawn(async move {
                ex.call(request(&format!("m{i}")), None, CancellationToken::new())
                    .await
            })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(
            c.await.unwrap().unwrap().message.content,
            format!("echo: m{i}")
        );
    }
    assert_eq!(server.requests(), 6);
    ex.stop().await;
}

const CALCULATOR_SCHEMA: &str =
    r#"{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}"#;

fn tools() -> Vec<ToolDefinition> {
    vec![
        ToolDefinition {
            name: "calculator".into(),
            description: "Evaluates an arithmetic expression".into(),
            parameters: CALCULATOR_SCHEMA.into(),
        },
        ToolDefinition {
            name: "clock".into(),
            description: "The current time".into(),
            parameters: "{}".into(),
        },
    ]
}

fn calculator_call() -> ToolCall {
    ToolCall {
        id: "call_calc".into(),
        name: "calculator".into(),
        arguments: r#"{"expression":"2+2"}"#.into(),
    }
}

#[tokio::test]
async fn tools_are_sent_as_functions_and_omitted_when_there_are_none() {
    let server = FakeOpenAi::start().await.unwrap();
    for stream in [false, true] {
        let ep = endpoint(&server, stream);
        once(&ep, &request("2+2?").with_tools(tools()))
            .await
            .unwrap();
        once(&ep, &request("2+2?")).await.unwrap();
    }
    let received = server.received();
    assert_eq!(received.len(), 4);
    let expected = json!([
        {"type": "function", "function": {
            "name": "calculator",
            "description": "Evaluates an arithmetic expression",
            "parameters": serde_json::from_str::<Value>(CALCULATOR_SCHEMA).unwrap(),
        }},
        {"type": "function", "function": {
            "name": "clock", "description": "The current time", "parameters": {},
        }},
    ]);
    for (i, body) in received.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(body["tools"], expected, "request {i}");
        } else {
            assert!(body.get("tools").is_none(), "request {i}: {body}");
        }
    }
}

#[tokio::test]
async fn a_tool_with_invalid_parameters_is_refused_before_sending() {
    let server = FakeOpenAi::start().await.unwrap();
    let mut bad = tools();
    bad[1].parameters = "{not json".into();
    let err = once(&endpoint(&server, true), &request("x").with_tools(bad))
        .await
        .unwrap_err();
    let source = err.provider_error().unwrap();
    assert_eq!(source.kind, ProviderErrorKind::InvalidRequest, "{err}");
    assert!(source.message.contains("\"clock\""), "{err}");
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn an_agentic_round_trip_sends_tool_calls_and_results_in_openai_shape() {
    let server = FakeOpenAi::start().await.unwrap();
    server.push_reply(ScriptedReply::ToolCalls(vec![calculator_call()]));
    server.push_reply(ScriptedReply::Text("2 + 2 = 4".into()));
    for stream in [false, true] {
        let ep = endpoint(&server, stream);
        let first = request("what is 2+2?").with_tools(tools());
        let (resp, deltas) = once_streaming(&ep, &first).await;
        let resp = resp.unwrap();
        assert_eq!(
            resp.finish_reason,
            FinishReason::ToolCalls,
            "stream={stream}"
        );
        assert_eq!(resp.message.tool_calls, vec![calculator_call()]);
        assert!(deltas.is_empty(), "{deltas:?}");

        // The loop appends the assistant's call and the tool's result.
        let mut second = first.clone();
        second.messages.push(resp.message);
        second.messages.push(Message {
            role: Role::Tool,
            content: "4".into(),
            tool_calls: vec![],
            tool_call_id: Some("call_calc".into()),
            images: Vec::new(),
        });
        let (resp, deltas) = once_streaming(&ep, &second).await;
        let resp = resp.unwrap();
        assert_eq!(resp.finish_reason, FinishReason::Stop);
        assert_eq!(resp.message, Message::assistant("2 + 2 = 4"));
        let streamed = if stream { "2 + 2 = 4" } else { "" };
        assert_eq!(text_of(&deltas), streamed);

        let body = server.received().pop().unwrap();
        assert_eq!(body["tools"].as_array().unwrap().len(), 2);
        assert_eq!(
            body["messages"][2],
            json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": "call_calc",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": r#"{"expression":"2+2"}"#},
                }],
            })
        );
        assert_eq!(
            body["messages"][3],
            json!({"role": "tool", "content": "4", "tool_call_id": "call_calc"})
        );
        // Queue the replies again for the streaming round.
        server.push_reply(ScriptedReply::ToolCalls(vec![calculator_call()]));
        server.push_reply(ScriptedReply::Text("2 + 2 = 4".into()));
    }
}

#[tokio::test]
async fn an_assistant_message_with_text_and_tool_calls_keeps_its_text() {
    let server = FakeOpenAi::start().await.unwrap();
    let mut assistant = Message::assistant("let me compute");
    assistant.tool_calls = vec![calculator_call()];
    let mut req = request("2+2?");
    req.messages.push(assistant);
    once(&endpoint(&server, false), &req).await.unwrap();
    let body = &server.received()[0];
    assert_eq!(body["messages"][2]["content"], "let me compute");
    assert_eq!(body["messages"][2]["tool_calls"][0]["id"], "call_calc");
    assert!(body["messages"][2].get("tool_call_id").is_none());
}

#[tokio::test]
async fn scripted_replies_come_first_in_order_and_survive_faults() {
    let server = FakeOpenAi::start().await.unwrap();
    server.set_behavior(Behavior {
        reply: Reply::Fixed("from behavior".into()),
        tool_calls: two_calls(),
        chunk_chars: 3,
        ..Behavior::default()
    });
    server.push_reply(ScriptedReply::ToolCalls(vec![calculator_call()]));
    server.push_reply(ScriptedReply::Text("first text".into()));
    server.push_reply(ScriptedReply::Text("second text".into()));
    assert_eq!(server.replies_left(), 3);
    let ep = endpoint(&server, true);

    let (resp, _) = once_streaming(&ep, &request("x")).await;
    let resp = resp.unwrap();
    assert_eq!(resp.message.tool_calls, vec![calculator_call()]);
    assert_eq!(resp.message.content, "");
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);

    // A fault does not consume the next reply: the retry gets it.
    server.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
        body: "busy".into(),
    });
    let r = routed(config(&server, true), &request("x")).await;
    let deltas = r.deltas.clone();
    let resp = r.unwrap().response;
    assert_eq!(resp.attempts, 2);
    assert_eq!(resp.message, Message::assistant("first text"));
    assert_eq!(resp.finish_reason, FinishReason::Stop);
    assert_eq!(text_of(&deltas), "first text");

    // Nor does a stream broken halfway: the attempt sent part of it, the
    // retry all of it, and the caller got the rest once.
    server.push_fault(Fault::BreakStreamAfter { chunks: 2 });
    let r = routed(config(&server, true), &request("x")).await;
    let deltas = r.deltas.clone();
    let resp = r.unwrap().response;
    assert_eq!(resp.attempts, 2);
    assert_eq!(resp.message.content, "second text");
    assert!(!deltas.contains(&Delta::Restart), "{deltas:?}");
    assert_eq!(text_of(&deltas), "second text");
    assert_eq!(server.replies_left(), 0);

    // Then the behaviour again.
    let resp = once(&ep, &request("x")).await.unwrap();
    assert_eq!(resp.message.content, "from behavior");
    assert_eq!(resp.message.tool_calls, two_calls());
    assert_eq!(server.requests(), 6);
}

fn assert_confidence(resp: &ModelResponse, want: f64) {
    let got = resp
        .confidence
        .unwrap_or_else(|| panic!("no confidence in {resp:?}"));
    assert!((got - want).abs() < 1e-9, "confidence {got}, want {want}");
}

#[tokio::test]
async fn logprobs_give_a_confidence_streamed_or_not() {
    let server = FakeOpenAi::start().await.unwrap();
    server.set_behavior(Behavior {
        reply: Reply::Fixed("four words of text".into()),
        chunk_chars: 3,
        logprob: Some(-0.25),
        ..Behavior::default()
    });
    for stream in [false, true] {
        let mut cfg = config(&server, stream);
        cfg.logprobs = true;
        let ep = Endpoint::from_config(cfg).unwrap();
        let (resp, deltas) = once_streaming(&ep, &request("go")).await;
        let resp = resp.unwrap();
        assert_eq!(
            resp.message.content, "four words of text",
            "stream={stream}"
        );
        if stream {
            assert_eq!(text_of(&deltas), "four words of text");
        }
        assert_confidence(&resp, (-0.25f64).exp());
        let body = server.received().pop().unwrap();
        assert_eq!(body["logprobs"], true, "stream={stream}");
        assert_eq!(body["stream"], stream);

        // Not asked for: not sent, and no confidence.
        let ep = endpoint(&server, stream);
        let resp = once(&ep, &request("go")).await.unwrap();
        assert_eq!(resp.confidence, None, "stream={stream}");
        assert!(server.received().pop().unwrap().get("logprobs").is_none());
    }
    assert_eq!(server.requests(), 4);
}

#[tokio::test]
async fn a_confidence_is_none_when_the_provider_sends_no_usable_logprobs() {
    let server = FakeOpenAi::start().await.unwrap();
    for (reply, tool_calls, logprob) in [
        // Asked for, but the server sends none.
        ("some text", vec![], None),
        // Non-finite logprobs arrive as null: skipped, not fatal.
        ("some text", vec![], Some(f64::NAN)),
        // No content tokens at all.
        ("", two_calls(), Some(-0.5)),
    ] {
        server.set_behavior(Behavior {
            reply: Reply::Fixed(reply.into()),
            tool_calls: tool_calls.clone(),
            logprob,
            ..Behavior::default()
        });
        for stream in [false, true] {
            let mut cfg = config(&server, stream);
            cfg.logprobs = true;
            let ep = Endpoint::from_config(cfg).unwrap();
            let resp = once(&ep, &request("go")).await.unwrap();
            assert_eq!(resp.message.content, reply);
            assert_eq!(resp.message.tool_calls, tool_calls);
            assert_eq!(resp.confidence, None, "stream={stream} logprob={logprob:?}");
        }
    }
}
