//! Baton's tools: the [`Tool`] contract, the [`ToolRegistry`] that holds the
//! tools and validates the model's arguments against their JSON Schemas,
//! per-session allow-lists ([`ToolFilter`]), the [`ToolExecutor`] that runs
//! each call in its own supervised actor (panics and timeouts become tool
//! errors, never a hang), and safe built-in tools ([`BuiltinToolsConfig`]).
//!
//! ```
//! use baton_tools::{BuiltinToolsConfig, ToolExecutor, ToolFilter, ToolRegistry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = BuiltinToolsConfig { calculator: true, ..Default::default() };
//! let registry = ToolRegistry::new();
//! for tool in config.tools()? {
//!     registry.register(tool)?;
//! }
//! // What the model is offered in a session allowed `calc*`:
//! let offered = registry.definitions(&ToolFilter::new(&["calc*".to_owned()])?);
//! assert_eq!(offered[0].name, "calculator");
//!
//! // The model asks for a call: validate its arguments, then run it.
//! let arguments = registry.validate("calculator", r#"{"expression": "6 * 7"}"#)?;
//! let executor = ToolExecutor::spawn(registry.clone()).await?;
//! let result = executor.execute("calculator".into(), arguments).await?;
//! assert_eq!(result?, "42");
//! executor.stop().await;
//! # Ok(())
//! # }
//! ```

mod builtin;
mod contract;
mod error;
mod executor;
mod registry;

pub use builtin::{BuiltinToolsConfig, Calculator, CurrentTime, HttpTool, HttpToolConfig};
pub use contract::{Tool, ToolError, ToolSpec};
pub use error::{Error, Result};
pub use executor::ToolExecutor;
pub use registry::{ToolFilter, ToolRegistry};
