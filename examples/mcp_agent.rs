//! Run with: cargo run --example mcp_agent
//!
//! Connects Baton to an MCP server: starts the `mcp_server` example as a
//! child process (build it first: `cargo build --example mcp_server`),
//! registers its tools as `notes.<tool>`, lists them and calls a few.

use std::time::Duration;

use anyhow::{Context, bail};
use baton_mcp::{McpManager, McpServerConfig};
use baton_tools::ToolRegistry;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,baton_mcp=info".into()))
        .init();

    // Both examples land in target/<profile>/examples/.
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the example has no directory")?;
    let server = dir.join(format!("mcp_server{}", std::env::consts::EXE_SUFFIX));
    if !server.exists() {
        bail!(
            "{} not found: run `cargo build --example mcp_server` first",
            server.display()
        );
    }

    let registry = ToolRegistry::default();
    let mut config = McpServerConfig::stdio("notes", server.to_string_lossy(), Vec::new());
    config.timeout_ms = 5_000;
    let manager = McpManager::start(vec![config], registry.clone()).await?;

    // Connections happen in the background; wait (bounded) for this one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !manager.status().iter().all(|s| s.connected) {
        if tokio::time::Instant::now() > deadline {
            bail!("mcp server did not connect: {:?}", manager.status());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("tools:");
    for spec in registry.specs() {
        println!(
            "  {:<20} idempotent={:<5} {}",
            spec.name, spec.idempotent, spec.description
        );
    }

    for (name, args) in [
        ("notes.add", json!({"a": 2, "b": 40})),
        ("notes.echo", json!({"text": "hello from baton"})),
        ("notes.fail", json!({})),
    ] {
        let tool = registry.get(name).context("tool not registered")?;
        match tool.call(args).await {
            Ok(text) => println!("{name} -> {text}"),
            Err(error) => println!("{name} -> error: {error}"),
        }
    }
    println!("status: {:?}", manager.status());

    manager.stop().await;
    Ok(())
}
