//! Run with: cargo run --example tool_agent
//!
//! A tool-using agent, end to end and offline:
//! * an in-process Baton server (gRPC on a free loopback port) with the
//!   built-in `current_time` and `calculator` tools enabled and the
//!   `scripted` model replaying `examples/scripts/tool_agent.json`;
//! * a small Rust gRPC client that declares a client-side tool,
//!   `lookup_order`, and answers it with `SubmitToolResult` when the model
//!   calls it — this is how a backend lets its own code act inside an agent.
//!
//! Point the `[[models]]` entry at a real OpenAI-compatible endpoint to run
//! the same flow against a real model.

use baton::proto::convert;
use baton::proto::v1::{self, sessions_client::SessionsClient};
use baton::types::EventKind;
use baton::{Runtime, RuntimeConfig};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = RuntimeConfig::with_data_dir(dir.path().join("data"));
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scripts/tool_agent.json");
    config.models = vec![baton::models::EndpointConfig::scripted("agent", script)];
    config.sessions.default_route = "agent".into();
    config.tools.builtin.current_time = true;
    config.tools.builtin.calculator = true;
    let runtime = Runtime::builder(config).start().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(baton::server::serve(
        runtime.clone(),
        listener,
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));

    // --- the client side: a backend service talking gRPC ---
    let mut client = SessionsClient::connect(format!("http://{addr}")).await?;
    let session = client
        .start_session(v1::StartSessionRequest {
            system_prompt: "You are a shop assistant.".into(),
            allowed_tools: vec!["current_time".into(), "calculator".into()],
            client_tools: vec![v1::ToolDefinition {
                name: "lookup_order".into(),
                description: "Look an order up in the shop's database".into(),
                parameters_json: r#"{"type":"object","properties":{"order":{"type":"integer"}},"required":["order"]}"#.into(),
            }],
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("session {}", session.session_id);
    let mut events = client
        .send_message(v1::SendMessageRequest {
            session_id: session.session_id.clone(),
            content: "What do three items at 19.99 cost, and where is order 7?".into(),
            review: false,
            images: Vec::new(),
        })
        .await?
        .into_inner();
    while let Some(event) = events.next().await {
        let Some(event) = convert::event_from_proto(event?) else {
            continue;
        };
        match &event.kind {
            EventKind::ToolCallRequested {
                call_id,
                name,
                arguments,
                client_side: true,
                ..
            } => {
                println!("  client runs {name}({arguments})");
                // Our own code acts inside the agent's loop:
                let output = r#"{"order": 7, "status": "shipped", "carrier": "DHL"}"#;
                client
                    .submit_tool_result(v1::SubmitToolResultRequest {
                        session_id: session.session_id.clone(),
                        call_id: call_id.clone(),
                        outcome: Some(v1::submit_tool_result_request::Outcome::Output(
                            output.into(),
                        )),
                    })
                    .await?;
            }
            EventKind::ToolCallRequested {
                name, arguments, ..
            } => println!("  server runs {name}({arguments})"),
            EventKind::ToolResult { name, output, .. } => println!("  {name} → {output}"),
            EventKind::AssistantMessage { message, .. } if !message.content.is_empty() => {
                println!("assistant: {}", message.content)
            }
            EventKind::TurnCompleted { usage, .. } => {
                println!("turn completed ({} tokens)", usage.total())
            }
            EventKind::TurnFailed { reason, .. } => println!("turn failed: {reason}"),
            _ => {}
        }
    }
    let _ = stop.send(());
    runtime.shutdown().await;
    server.await??;
    Ok(())
}
