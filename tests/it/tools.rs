//! The agentic loop over gRPC against the fake OpenAI server returning tool calls.

use std::sync::Arc;
use std::time::Duration;

use baton::RuntimeConfig;
use baton::proto::v1;
use baton::types::{EventKind, SessionEvent, ToolCall};
use baton_testkit::fake_openai::{Behavior, ScriptedReply};
use baton_testkit::server::openai_endpoint;
use baton_testkit::{FakeOpenAi, TestServer};
use baton_tools::{Tool, ToolError, ToolSpec};
use serde_json::json;

use crate::common::*;

fn call(id: &str, name: &str, args: serde_json::Value) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.to_string(),
    }
}

fn config(fake: &FakeOpenAi) -> RuntimeConfig {
    let mut c = RuntimeConfig {
        models: vec![openai_endpoint("fake", &fake.base_url(), false)],
        ..Default::default()
    };
    c.sessions.default_route = "fake".into();
    c.tools.builtin.calculator = true;
    c.tools.builtin.current_time = true;
    c
}

fn results(events: &[SessionEvent]) -> Vec<(String, String, bool)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ToolResult {
                call_id,
                output,
                is_error,
                ..
            } => Some((call_id.clone(), output.clone(), *is_error)),
            _ => None,
        })
        .collect()
}

/// The tool messages the model received in request `n`, as (tool_call_id, content).
fn tool_messages(fake: &FakeOpenAi, n: usize) -> Vec<(String, String)> {
    fake.received()[n]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_parallel_tool_calls_run_and_return_in_call_order() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::ToolCalls(vec![call(
        "a",
        "calculator",
        json!({"expression": "2 + 2"}),
    )]));
    fake.push_reply(ScriptedReply::ToolCalls(vec![
        call("b", "calculator", json!({"expression": "6 * 7"})),
        call("c", "calculator", json!({"expression": "1 + 1"})),
    ]));
    fake.push_reply(ScriptedReply::Text("the answers are 4, 42 and 2".into()));
    let server = TestServer::start(config(&fake)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let events = turn(&mut client, &id, "compute things").await;

    let names = kinds(&events);
    assert_eq!(names.last(), Some(&"turn_completed"), "{names:?}");
    assert_eq!(
        names.iter().filter(|k| **k == "model_call_started").count(),
        3
    );
    let r = results(&events);
    assert_eq!(r.len(), 3);
    assert!(
        r.iter().all(|(_, out, err)| !err && !out.is_empty()),
        "{r:?}"
    );
    assert!(
        r.iter().any(|(id, out, _)| id == "b" && out.contains("42")),
        "{r:?}"
    );
    // The model saw the tools it may call…
    let received = fake.received();
    let offered: Vec<&str> = received[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(
        offered.contains(&"calculator") && offered.contains(&"current_time"),
        "{offered:?}"
    );
    // …and the parallel results in the model's call order.
    let third = tool_messages(&fake, 2);
    assert_eq!(
        third.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b", "c"]
    );
    let s = get(&mut client, &id).await;
    let roles: Vec<i32> = s.messages.iter().map(|m| m.role).collect();
    use v1::Role::*;
    assert_eq!(
        roles,
        vec![
            User as i32,
            Assistant as i32,
            Tool as i32,
            Assistant as i32,
            Tool as i32,
            Tool as i32,
            Assistant as i32
        ]
    );
    assert_eq!(
        s.messages.last().unwrap().content,
        "the answers are 4, 42 and 2"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_and_unknown_tools_become_errors_the_model_can_correct() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::ToolCalls(vec![
        call("bad", "calculator", json!({"expr": 2})),
        call("ghost", "launch_rockets", json!({})),
        call("denied", "current_time", json!({})),
    ]));
    fake.push_reply(ScriptedReply::ToolCalls(vec![call(
        "fixed",
        "calculator",
        json!({"expression": "3 - 1"}),
    )]));
    fake.push_reply(ScriptedReply::Text("ok".into()));
    let server = TestServer::start(config(&fake)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = client
        .start_session(v1::StartSessionRequest {
            allowed_tools: vec!["calc*".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let events = turn(&mut client, &id, "go").await;
    assert_eq!(kinds(&events).last(), Some(&"turn_completed"));
    let r = results(&events);
    let by_id = |id: &str| r.iter().find(|(c, _, _)| c == id).unwrap().clone();
    let (_, bad, is_err) = by_id("bad");
    assert!(
        is_err && bad.contains("invalid arguments for calculator"),
        "{bad}"
    );
    let (_, ghost, is_err) = by_id("ghost");
    assert!(
        is_err && ghost.contains("unknown tool \"launch_rockets\""),
        "{ghost}"
    );
    let (_, denied, is_err) = by_id("denied");
    assert!(
        is_err && denied.contains("unknown tool"),
        "not on the allow-list: {denied}"
    );
    assert!(!by_id("fixed").2);
    // Only allowed tools were offered, and the model saw the errors.
    let offered = fake.received()[0]["tools"].as_array().unwrap().len();
    assert_eq!(offered, 1);
    let seen = tool_messages(&fake, 1);
    assert!(
        seen.iter()
            .any(|(id, c)| id == "bad" && c.contains("invalid arguments"))
    );
    assert!(
        !events.iter().any(
            |e| matches!(&e.kind, EventKind::ToolCallStarted { call_id, .. } if call_id != "fixed")
        ),
        "invalid calls never start"
    );
    server.stop().await;
}

#[derive(Debug)]
struct Misbehaving {
    spec: ToolSpec,
}

impl Misbehaving {
    fn tool(name: &str, timeout: Duration) -> Arc<dyn Tool> {
        Arc::new(Misbehaving {
            spec: ToolSpec {
                name: name.into(),
                description: format!("a tool that {name}"),
                parameters: json!({"type": "object"}),
                output_schema: None,
                idempotent: true,
                timeout,
            },
        })
    }
}

#[async_trait::async_trait]
impl Tool for Misbehaving {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    async fn call(&self, _: serde_json::Value) -> Result<String, ToolError> {
        match self.spec.name.as_str() {
            "panics" => panic!("tool bug"),
            "hangs" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok("never".into())
            }
            _ => Err(ToolError::Failed("the tool reported a failure".into())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_hanging_and_failing_tools_give_error_results_and_the_session_goes_on() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::ToolCalls(vec![
        call("p", "panics", json!({})),
        call("h", "hangs", json!({})),
        call("f", "fails", json!({})),
    ]));
    fake.push_reply(ScriptedReply::Text("recovered".into()));
    let tools = vec![
        Misbehaving::tool("panics", Duration::from_secs(5)),
        Misbehaving::tool("hangs", Duration::from_millis(200)),
        Misbehaving::tool("fails", Duration::from_secs(5)),
    ];
    let server = TestServer::start_with_tools(config(&fake), tools)
        .await
        .unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let events = turn(&mut client, &id, "try the tools").await;
    assert_eq!(kinds(&events).last(), Some(&"turn_completed"));
    let r = results(&events);
    let out = |id: &str| {
        r.iter()
            .find(|(c, _, _)| c == id)
            .map(|(_, o, e)| (o.clone(), *e))
            .unwrap()
    };
    assert!(
        out("p").1 && out("p").0.contains("crashed"),
        "{:?}",
        out("p")
    );
    assert!(
        out("h").1 && out("h").0.contains("timed out after 200 ms"),
        "{:?}",
        out("h")
    );
    assert!(
        out("f").1 && out("f").0.contains("reported a failure"),
        "{:?}",
        out("f")
    );
    // The same session and another one keep working.
    fake.push_reply(ScriptedReply::Text("still here".into()));
    let again = turn(&mut client, &id, "again").await;
    assert_eq!(kinds(&again).last(), Some(&"turn_completed"));
    let other = start(&mut client, "").await;
    fake.push_reply(ScriptedReply::Text("hello".into()));
    assert_eq!(
        kinds(&turn(&mut client, &other, "hi").await).last(),
        Some(&"turn_completed")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_keeps_calling_tools_stops_at_max_steps() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_behavior(Behavior {
        tool_calls: vec![call("", "current_time", json!({}))],
        ..Behavior::default()
    });
    let server = TestServer::start(config(&fake)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = client
        .start_session(v1::StartSessionRequest {
            max_steps: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let events = turn(&mut client, &id, "loop forever").await;
    match &events.last().unwrap().kind {
        EventKind::TurnFailed { code, reason, .. } => {
            assert_eq!(code.as_str(), "max_steps_exceeded");
            assert!(reason.contains("max_steps = 3"), "{reason}");
        }
        other => panic!("expected max_steps_exceeded, got {other:?}"),
    }
    assert_eq!(fake.requests(), 3, "exactly max_steps model calls");
    assert_eq!(results(&events).len(), 3);
    let s = get(&mut client, &id).await;
    assert_eq!(s.status, v1::SessionStatus::Idle as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_tools_round_trip_and_bad_submissions_are_refused() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::ToolCalls(vec![call(
        "q1",
        "lookup_order",
        json!({"order": 7}),
    )]));
    fake.push_reply(ScriptedReply::Text("order 7 has shipped".into()));
    let server = TestServer::start(config(&fake)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = client
        .start_session(v1::StartSessionRequest {
            client_tools: vec![v1::ToolDefinition {
                name: "lookup_order".into(),
                description: "look an order up in our own database".into(),
                parameters_json:
                    json!({"type": "object", "properties": {"order": {"type": "integer"}}})
                        .to_string(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let mut stream = send(&mut client, &id, "where is order 7?").await;
    let first = read_until(&mut stream, |e| e.kind.name() == "tool_call_requested").await;
    match &first.last().unwrap().kind {
        EventKind::ToolCallRequested {
            call_id,
            name,
            client_side,
            ..
        } => {
            assert_eq!(
                (call_id.as_str(), name.as_str(), *client_side),
                ("q1", "lookup_order", true)
            );
        }
        other => panic!("{other:?}"),
    }
    let s = get(&mut client, &id).await;
    assert_eq!(s.pending_tool_calls.len(), 1);
    assert!(s.pending_tool_calls[0].client_side);
    let submit = |call_id: &str, out: &str| v1::SubmitToolResultRequest {
        session_id: id.clone(),
        call_id: call_id.into(),
        outcome: Some(v1::submit_tool_result_request::Outcome::Output(out.into())),
    };
    let e = client
        .submit_tool_result(submit("nope", "x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("nope"));
    let r = client
        .submit_tool_result(submit("q1", "{\"status\":\"shipped\"}"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.seq > 0);
    let e = client
        .submit_tool_result(submit("q1", "again"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("already has a result"),
        "{}",
        e.message()
    );
    let rest = read_until(&mut stream, |e| e.ends_turn()).await;
    assert_eq!(kinds(&rest).last(), Some(&"turn_completed"));
    assert_eq!(
        tool_messages(&fake, 1),
        vec![("q1".to_string(), "{\"status\":\"shipped\"}".to_string())]
    );
    // Bad declarations are refused at start.
    let e = client
        .start_session(v1::StartSessionRequest {
            client_tools: vec![v1::ToolDefinition {
                name: "calculator".into(),
                description: String::new(),
                parameters_json: "{}".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("already a server-side tool"),
        "{}",
        e.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_client_tool_times_out_into_an_error_result() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::ToolCalls(vec![call(
        "q",
        "ask_human",
        json!({}),
    )]));
    fake.push_reply(ScriptedReply::Text("never mind".into()));
    let mut cfg = config(&fake);
    cfg.tools.client_tool_timeout_ms = 300;
    let server = TestServer::start(cfg).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = client
        .start_session(v1::StartSessionRequest {
            client_tools: vec![v1::ToolDefinition {
                name: "ask_human".into(),
                description: String::new(),
                parameters_json: "{}".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let events = turn(&mut client, &id, "hello").await;
    let r = results(&events);
    assert!(
        r[0].2 && r[0].1.contains("did not submit a result"),
        "{r:?}"
    );
    assert_eq!(kinds(&events).last(), Some(&"turn_completed"));
    server.stop().await;
}

/// The example MCP server binary (`cargo test` builds examples next to the
/// test binary's directory).
fn example_mcp_server() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join("mcp_server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_stdio_servers_tools_work_in_the_loop() {
    let server_bin = example_mcp_server();
    assert!(
        server_bin.exists(),
        "build the examples first: {}",
        server_bin.display()
    );
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::ToolCalls(vec![
        call("m1", "notes.add", json!({"a": 2, "b": 3})),
        call("m2", "notes.fail", json!({})),
    ]));
    fake.push_reply(ScriptedReply::Text("2 + 3 = 5".into()));
    let mut cfg = config(&fake);
    cfg.mcp = vec![baton_mcp::McpServerConfig::stdio(
        "notes",
        server_bin.display().to_string(),
        Vec::new(),
    )];
    let server = TestServer::start(cfg).await.unwrap();
    for _ in 0..500 {
        if server.runtime.tools().iter().any(|t| t.name == "notes.add") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let specs = server.runtime.tools();
    let add = specs
        .iter()
        .find(|t| t.name == "notes.add")
        .expect("the MCP server's tools are registered");
    assert!(
        add.idempotent,
        "from the server's idempotentHint annotation"
    );
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let events = turn(&mut client, &id, "add 2 and 3").await;
    assert_eq!(kinds(&events).last(), Some(&"turn_completed"));
    let r = results(&events);
    let (_, sum, err) = r.iter().find(|(c, _, _)| c == "m1").unwrap();
    assert!(!err && sum.contains('5'), "{sum}");
    let (_, fail, err) = r.iter().find(|(c, _, _)| c == "m2").unwrap();
    assert!(
        *err,
        "an MCP isError result reaches the model as an error: {fail}"
    );
    let offered = fake.received()[0]["tools"].as_array().unwrap().len();
    assert!(
        offered >= 6,
        "MCP tools are offered next to built-ins ({offered})"
    );
    server.stop().await;
}

/// A session's generation settings apply to each of its model calls; a
/// required tool binds only a turn's first call, so the loop can finish.
/// Bad settings are refused with INVALID_ARGUMENT naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_settings_apply_to_every_call_and_a_forced_tool_only_to_the_first() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.push_reply(ScriptedReply::ToolCalls(vec![call(
        "a",
        "calculator",
        json!({"expression": "2 + 2"}),
    )]));
    fake.push_reply(ScriptedReply::Text("4".into()));
    let server = TestServer::start(config(&fake)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let generation = v1::Generation {
        temperature: Some(0.3),
        max_output_tokens: Some(100),
        stop: vec!["END".into()],
        tool_choice: "tool".into(),
        tool_name: "calculator".into(),
        ..Default::default()
    };
    let id = client
        .start_session(v1::StartSessionRequest {
            generation: Some(generation.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let events = turn(&mut client, &id, "2 + 2?").await;
    assert_eq!(kinds(&events).last(), Some(&"turn_completed"));
    let received = fake.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0]["tool_choice"],
        json!({"type": "function", "function": {"name": "calculator"}})
    );
    assert!(
        received[1].get("tool_choice").is_none(),
        "the call after the tool results is free to answer: {}",
        received[1]
    );
    for r in &received {
        assert_eq!(r["temperature"].to_string(), "0.3");
        assert_eq!(r["max_tokens"], 100);
        assert_eq!(r["stop"], json!(["END"]));
    }

    let before = fake.requests();
    let bad = [
        (
            v1::Generation {
                temperature: Some(3.0),
                ..Default::default()
            },
            "generation.temperature",
        ),
        (
            v1::Generation {
                tool_choice: "sometimes".into(),
                ..Default::default()
            },
            "generation.tool_choice",
        ),
        (
            v1::Generation {
                tool_choice: "tool".into(),
                tool_name: "no_such_tool".into(),
                ..Default::default()
            },
            "generation.tool_choice",
        ),
        (
            v1::Generation {
                tool_name: "calculator".into(),
                ..Default::default()
            },
            "generation.tool_name",
        ),
        (
            v1::Generation {
                json_schema: "[1]".into(),
                ..Default::default()
            },
            "generation.json_schema",
        ),
        (
            v1::Generation {
                max_output_tokens: Some(0),
                ..Default::default()
            },
            "generation.max_output_tokens",
        ),
    ];
    let listed = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.list_sessions(v1::ListSessionsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .sessions
                .len()
        }
    };
    let sessions = listed(&mut client).await;
    for (g, field) in bad {
        let e = client
            .start_session(v1::StartSessionRequest {
                generation: Some(g.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{g:?}");
        assert!(e.message().contains(field), "{g:?}: {}", e.message());
    }
    assert_eq!(
        listed(&mut client).await,
        sessions,
        "no session was created"
    );
    assert_eq!(fake.requests(), before);
    server.stop().await;
}
