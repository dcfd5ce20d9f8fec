//! OpenAI's wire shapes, as serde types, split by purpose: the chat
//! completion request and response, the streamed chunk, tools, usage,
//! errors and models.

mod chat_completions;
mod error;
mod models;
mod streaming;
mod tool;
mod usage;

pub use chat_completions::{
    AssistantRole, ChatCompletion, ChatCompletionObject, Choice, FinishReason, ResponseMessage,
};
pub use error::{ErrorBody, ErrorObject};
pub use models::{ListObject, Model, ModelList, ModelObject};
pub use streaming::{ChatCompletionChunk, ChunkChoice, ChunkObject, Delta};
pub use tool::{FunctionCall, FunctionType, ToolCall, ToolCallDelta};
pub use usage::Usage;
