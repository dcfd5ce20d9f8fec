//! Provider implementations, one module each; `http` holds what the HTTP
//! providers share (timeouts, SSE reading, error helpers).

pub mod anthropic;
pub mod echo;
mod embeddings;
mod http;
pub mod openai;
mod openai_wire;
pub mod scripted;

pub use anthropic::AnthropicProvider;
pub use echo::EchoProvider;
pub use openai::OpenAiProvider;
pub use scripted::{ScriptStep, ScriptedProvider};
