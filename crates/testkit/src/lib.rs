//! Test helpers shared by Baton's crates.
//!
//! [`fake_openai::FakeOpenAi`] is an OpenAI-compatible model server speaking
//! real HTTP on loopback, with scriptable replies and faults.
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

pub mod fake_openai;
pub mod process;
pub mod server;

pub use fake_openai::FakeOpenAi;
pub use process::BatonProcess;
pub use server::TestServer;
