//! Model Context Protocol servers as Baton tools.
//!
//! Each configured server gets a supervising task that connects to it (a
//! child process over stdio, or streamable HTTP), lists its tools and
//! registers them in the [`ToolRegistry`](baton_tools::ToolRegistry) as
//! `<server>.<tool>` ([`McpTool`]). When the server announces
//! `notifications/tools/list_changed` the tools are listed again and swapped
//! atomically. When it dies, its tools answer
//! [`ToolError::Unavailable`](baton_tools::ToolError::Unavailable) with the
//! reason while the supervisor restarts it with exponential backoff; once it
//! is back the same tool names work again.
//!
//! The MCP client is [rmcp](https://docs.rs/rmcp), the official Rust SDK.
//!
//! ```no_run
//! use baton_mcp::{McpManager, McpServerConfig};
//! use baton_tools::ToolRegistry;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = ToolRegistry::default();
//! let notes = McpServerConfig::stdio("notes", "notes-mcp", vec!["--dir".into(), "/tmp".into()]);
//! let manager = McpManager::start(vec![notes], registry.clone()).await?;
//! // ...later, once manager.status()[0].connected:
//! if let Some(tool) = registry.get("notes.search") {
//!     let text = tool.call(serde_json::json!({"query": "rust"})).await?;
//!     println!("{text}");
//! }
//! manager.stop().await;
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod manager;
mod tool;

pub use config::{McpServerConfig, McpTransport, RestartConfig};
pub use error::{Error, Result};
pub use manager::{McpManager, McpServerStatus};
pub use tool::McpTool;
