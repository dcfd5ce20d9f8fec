//! Provider implementations, one module each.

pub mod echo;
pub mod openai;
pub mod scripted;

pub use echo::EchoProvider;
pub use openai::OpenAiProvider;
pub use scripted::{ScriptStep, ScriptedProvider};
