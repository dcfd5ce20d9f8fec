//! Run with: cargo run --example mcp_server
//!
//! A small MCP server over stdio, built with rmcp's server side. It speaks
//! JSON-RPC on stdin/stdout (so run it from an MCP client such as the
//! `mcp_agent` example rather than by hand) and logs to stderr. Tools:
//! - `add` {a, b}: idempotent (`idempotentHint: true`), structured output;
//! - `echo` {text};
//! - `slow_append` {path, line, delay_ms}: appends a line to a file after a
//!   delay; a side effect that must not be repeated (`idempotentHint: false`);
//! - `fail`: always answers with `isError: true`.

use std::time::Duration;

use rmcp::{
    ErrorData, Json, ServerHandler, ServiceExt,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig},
    schemars, tool, tool_handler, tool_router,
    transport::stdio,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

#[derive(Deserialize, schemars::JsonSchema)]
struct AddArgs {
    a: f64,
    b: f64,
}

#[derive(Serialize, schemars::JsonSchema)]
struct Sum {
    sum: f64,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct AppendArgs {
    /// File to append to (created if missing).
    path: String,
    line: String,
    /// Milliseconds to wait before writing.
    #[serde(default)]
    delay_ms: u64,
}

#[derive(Clone)]
struct Example {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Example {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Add two numbers", annotations(idempotent_hint = true))]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> Json<Sum> {
        Json(Sum { sum: a + b })
    }

    #[tool(description = "Echo the text back")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(
        description = "Append a line to a file after delay_ms milliseconds",
        annotations(idempotent_hint = false, destructive_hint = false)
    )]
    async fn slow_append(
        &self,
        Parameters(args): Parameters<AppendArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
        let written = async {
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args.path)
                .await?;
            file.write_all(format!("{}\n", args.line).as_bytes()).await
        };
        Ok(match written.await {
            Ok(()) => CallToolResult::success(vec![ContentBlock::text(format!(
                "appended to {}",
                args.path
            ))]),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!(
                "cannot append to {}: {e}",
                args.path
            ))]),
        })
    }

    #[tool(description = "Always fails")]
    fn fail(&self) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text("this tool always fails")])
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Example {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("a small example server for baton")
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    eprintln!("mcp_server: ready on stdio (pid {})", std::process::id());
    let service = Example::new().serve(stdio()).await?;
    service.waiting().await?;
    Ok(())
}
