//! Baton's model layer: single attempts at language models.
//!
//! An [`Endpoint`] is one configured model (`[[models]]` in `baton.toml`): a
//! [`Provider`] that makes single attempts (an OpenAI-compatible HTTP API, the
//! Anthropic Messages API, the local `echo` model, or a `scripted` replay of
//! canned answers) plus the policy of one attempt — connect, first-token,
//! idle and total timeouts, and prompt cancellation
//! ([`Endpoint::attempt_once`]). A failed attempt is classified
//! ([`ProviderErrorKind`]: transient or not, with the provider's
//! `Retry-After`); what happens next — retries with exponential backoff and
//! full jitter, failover, breakers, budgets — is `baton-routing`'s, which
//! reads each endpoint's [`RetryConfig`]. An [`ExecutorHandle`] runs an
//! endpoint's attempts on a pool of ractor worker actors, `max_concurrency`
//! at a time with a bounded queue; a [`ModelRegistry`] holds the executors
//! of all endpoints by name.
//!
//! ```
//! use baton_models::{echo_default, Endpoint, ModelRequest};
//! use baton_types::Message;
//! use tokio_util::sync::CancellationToken;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let endpoint = Endpoint::from_config(echo_default()).unwrap();
//! let req = ModelRequest::new(vec![Message::user("hello there")]);
//! let resp = endpoint.attempt_once(&req, None, &CancellationToken::new()).await.unwrap();
//! assert_eq!(resp.message.content, "hello there");
//! assert_eq!(resp.usage.output_tokens, 2);
//! assert_eq!(resp.attempts, 1);
//! # });
//! ```

mod config;
mod endpoint;
mod error;
mod executor;
pub mod providers;

use baton_types::{FinishReason, Message, ToolDefinition, Usage};

pub use config::{
    BreakerConfig, Capability, Continuation, EchoConfig, EndpointConfig, ProviderKind, RetryConfig,
    echo_default,
};
pub use endpoint::Endpoint;
pub use error::{Error, ProviderError, ProviderErrorKind, Result};
pub use executor::{ExecutorHandle, ModelJob, ModelRegistry};

/// What to ask a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRequest {
    /// The conversation so far, system prompt first.
    pub messages: Vec<Message>,
    /// Output-token limit; the endpoint's `max_output_tokens` when `None`.
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Stop sequences; none when empty.
    pub stop: Vec<String>,
    /// Tools the model may call; none when empty.
    pub tools: Vec<ToolDefinition>,
    /// Whether and which tool the model must call (sent only with tools).
    pub tool_choice: baton_types::ToolChoice,
    /// Constrain the answer to this JSON Schema (structured output), when
    /// set. Providers pass it on (OpenAI `response_format` json_schema,
    /// Anthropic as a forced tool); routing treats it as needing the
    /// `json_schema` capability and cascade gates validate against it.
    pub json_schema: Option<serde_json::Value>,
    /// The credential to send instead of the endpoint's own key: a tenant's
    /// own provider key (bring your own key), set by the router for the one
    /// endpoint it belongs to. Never printed, never journaled.
    pub api_key: Option<ProviderKey>,
    /// The start of the answer, already written: the model is asked to
    /// continue it (the endpoint's [`Continuation`]) and answers with the
    /// rest only. Set by the router to resume a stream that broke after its
    /// text reached the caller; only for endpoints that can continue.
    pub continue_from: Option<String>,
    /// An embeddings request instead of a completion: the texts to embed
    /// (also in `messages`, one user message each, so that routing's token
    /// estimates and data-class rules see them). Routed like a completion
    /// to endpoints with the `embeddings` capability; the vectors come
    /// back in [`ModelResponse::embeddings`].
    pub embed: Option<std::sync::Arc<EmbedInput>>,
}

/// What an embeddings request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedInput {
    /// The texts, one vector each, in order.
    pub input: Vec<String>,
    /// The vectors' length, for models that can shorten them.
    pub dimensions: Option<u32>,
}

impl ModelRequest {
    /// An embeddings request for `input`.
    pub fn embeddings(input: Vec<String>, dimensions: Option<u32>) -> Self {
        let messages = input.iter().map(|t| Message::user(t.clone())).collect();
        Self {
            embed: Some(std::sync::Arc::new(EmbedInput { input, dimensions })),
            ..Self::new(messages)
        }
    }
}

/// Read an api key from the environment variable `env` or the file `file`
/// (trimmed; at most one of them is set), `None` when neither is. The error
/// names the field (`api_key_env` or `api_key_file`) and the problem; it
/// never contains the key.
pub fn read_key(
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> std::result::Result<Option<secrecy::SecretString>, (&'static str, String)> {
    if let Some(var) = env {
        let field = "api_key_env";
        let key = std::env::var(var)
            .map_err(|_| (field, format!("environment variable {var} is not set")))?;
        let key = key.trim();
        if key.is_empty() {
            return Err((field, format!("environment variable {var} is empty")));
        }
        return Ok(Some(secrecy::SecretString::from(key.to_string())));
    }
    if let Some(path) = file {
        let field = "api_key_file";
        let text = std::fs::read_to_string(path)
            .map_err(|e| (field, format!("cannot read {}: {e}", path.display())))?;
        let key = text.trim();
        if key.is_empty() {
            return Err((field, format!("{} is empty", path.display())));
        }
        return Ok(Some(secrecy::SecretString::from(key.to_string())));
    }
    Ok(None)
}

/// A provider api key handed to one call. Cheap to clone; its `Debug`
/// output never shows the secret, and two keys compare equal only when
/// they are the same key.
#[derive(Clone)]
pub struct ProviderKey(std::sync::Arc<secrecy::SecretString>);

impl ProviderKey {
    pub fn new(secret: secrecy::SecretString) -> Self {
        Self(std::sync::Arc::new(secret))
    }

    /// The secret, for the request header.
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&*self.0)
    }
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderKey([redacted])")
    }
}

impl PartialEq for ProviderKey {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.expose() == other.expose()
    }
}

/// Input tokens an image is estimated at (routing and budget estimates):
/// about what OpenAI bills a high-detail 1024×1024 image and Anthropic a
/// ~0.75-megapixel one. Usage reported by the provider is what is billed.
pub const TOKENS_PER_IMAGE: u64 = 1_000;

impl ModelRequest {
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            max_output_tokens: None,
            temperature: None,
            top_p: None,
            stop: Vec::new(),
            tools: Vec::new(),
            tool_choice: baton_types::ToolChoice::Auto,
            json_schema: None,
            api_key: None,
            continue_from: None,
            embed: None,
        }
    }

    /// Estimated input tokens: one per four characters (rounded up) of all
    /// message contents and tool-call arguments, plus 4 per message for the
    /// role and framing, plus [`TOKENS_PER_IMAGE`] per image; tool
    /// definitions are not counted.
    pub fn estimated_input_tokens(&self) -> u64 {
        let chars: u64 = self
            .messages
            .iter()
            .map(|m| {
                m.content.chars().count() as u64
                    + m.tool_calls
                        .iter()
                        .map(|c| c.arguments.chars().count() as u64)
                        .sum::<u64>()
            })
            .sum();
        let images: u64 = self.messages.iter().map(|m| m.images.len() as u64).sum();
        chars
            .div_ceil(4)
            .saturating_add((self.messages.len() as u64).saturating_mul(4))
            .saturating_add(images.saturating_mul(TOKENS_PER_IMAGE))
    }

    /// The same request, offering `tools` to the model.
    pub fn with_tools(mut self, tools: Vec<ToolDefinition>) -> Self {
        self.tools = tools;
        self
    }
}

/// A model's complete answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResponse {
    /// The answer, with role `Assistant`.
    pub message: Message,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    /// The model that answered, as the provider reported it.
    pub model: String,
    /// Attempts it took, this one included: 1 from an endpoint's single
    /// attempt; a router sets the count of its whole call.
    pub attempts: u32,
    /// How sure the model was of its answer, in `[0, 1]`, when the provider
    /// says: for `openai` endpoints with `logprobs = true`, the exponential
    /// of the mean token log-probability of the answer text (the geometric
    /// mean of its token probabilities); for `scripted`, the step's
    /// `confidence`. `None` when the provider gives nothing to go on.
    pub confidence: Option<f64>,
    /// The vectors of an embeddings request, one per input in order
    /// (`None` for completions).
    pub embeddings: Option<std::sync::Arc<Vec<Vec<f32>>>>,
}

/// A piece of streamed output.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// More answer text.
    Text(String),
    /// An attempt failed after emitting deltas and the call goes on (the
    /// router retries or fails over): the text deltas so far are void.
    Restart,
}

/// Where streamed deltas go.
pub type DeltaSink = tokio::sync::mpsc::UnboundedSender<Delta>;

/// One model provider: makes single attempts; [`Endpoint`] adds the policy.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Short provider name, e.g. `openai`.
    fn kind(&self) -> &'static str;

    /// One attempt. Streams text deltas into `deltas` when given and the
    /// endpoint streams. `attempts` of the response is set by the caller.
    async fn complete(
        &self,
        req: &ModelRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<ModelResponse, ProviderError>;

    /// One embeddings attempt for `req` (whose [`ModelRequest::embed`] is
    /// set): the vectors in [`ModelResponse::embeddings`], the input tokens
    /// in its usage. Providers without an embeddings API refuse.
    async fn embed(&self, req: &ModelRequest) -> Result<ModelResponse, ProviderError> {
        let _ = req;
        Err(ProviderError::new(
            ProviderErrorKind::InvalidRequest,
            format!("provider {} has no embeddings API", self.kind()),
        ))
    }
}

/// Whitespace-separated words of `text`: the token estimate used by `echo`
/// and the fake server.
pub fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}
