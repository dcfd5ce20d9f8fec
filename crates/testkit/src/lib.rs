//! Test helpers shared by Baton's crates.
//!
//! [`fake_openai::FakeOpenAi`] is an OpenAI-compatible model server and
//! [`fake_anthropic::FakeAnthropic`] an Anthropic Messages API server, both
//! speaking real HTTP on loopback with the same scriptable replies, faults
//! and down switch ([`fake_model`]), so one provider test suite drives both.
//! [`server::TestServer`] boots the real gRPC server in-process on port 0 with
//! a temporary RocksDB dir; [`process::BatonProcess`] runs the real `baton`
//! binary as a child process, for crash tests that SIGKILL it.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let server = baton_testkit::fake_openai::FakeOpenAi::start().await.unwrap();
//! assert!(server.base_url().starts_with("http://127.0.0.1:"));
//! assert_eq!(server.requests(), 0);
//! # });
//! ```

pub mod fake_anthropic;
pub mod fake_model;
pub mod fake_openai;
pub mod process;
pub mod server;

pub use fake_anthropic::FakeAnthropic;
pub use fake_model::{Behavior, FakeServer, Fault, Reply, ScriptedReply};
pub use fake_openai::FakeOpenAi;
pub use process::BatonProcess;
pub use server::TestServer;
