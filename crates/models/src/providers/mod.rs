//! Provider implementations, one module each.

pub mod echo;
pub mod openai;

pub use echo::EchoProvider;
pub use openai::OpenAiProvider;
