//! OpenAI's wire shapes, as serde types, split by purpose: the chat
//! completion request and response, the streamed chunk, tools, usage,
//! errors and models. Request fields Baton reads are [`Lenient`], so that
//! the front door, not serde, says what is wrong with them.

mod chat_completions;
mod error;
mod lenient;
mod models;
mod streaming;
mod tool;
mod usage;

pub use chat_completions::{
    AssistantMessage, AssistantRole, ChatCompletion, ChatCompletionObject, ChatCompletionRequest,
    ChatMessage, Choice, ContentPart, FinishReason, ImageUrl, ImageUrlObject, ImageUrlPart,
    InstructionMessage, JsonSchema, JsonSchemaFormat, MessageContent, ResponseFormat,
    ResponseMessage, Stop, StreamOptions, TextPart, ToolMessage, UnsupportedMessage,
    UnsupportedPart, UserMessage,
};
pub use error::{ErrorBody, ErrorObject};
pub use lenient::{JsonKind, JsonShape, Lenient};
pub use models::{ListObject, Model, ModelList, ModelObject};
pub use streaming::{ChatCompletionChunk, ChunkChoice, ChunkObject, Delta};
pub use tool::{
    FunctionCall, FunctionCallParam, FunctionDefinition, FunctionName, FunctionType,
    NamedToolChoice, Tool, ToolCall, ToolCallDelta, ToolCallParam, ToolChoiceMode,
    ToolChoiceOption, ToolType,
};
pub use usage::Usage;
