//! Endpoint configuration: the `[[models]]` tables of `baton.toml`.

use std::path::PathBuf;

use serde::Deserialize;

use baton_types::Usage;

use crate::{Error, ModelRequest, Result};

/// Which provider implementation an endpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// An OpenAI-compatible Chat Completions API.
    Openai,
    /// A deterministic local model that echoes the last user message; needs
    /// no network and no key.
    Echo,
    /// Replays the answers of a script file (`script_file`), one step per
    /// assistant turn; for demos and tests of tool-using agents.
    Scripted,
    /// The Anthropic Messages API (`base_url` defaults to
    /// `https://api.anthropic.com/v1`).
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Echo => "echo",
            ProviderKind::Scripted => "scripted",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

/// One model endpoint: a provider plus the policy used to call it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Unique endpoint name, referenced by sessions ("route").
    pub name: String,
    pub provider: ProviderKind,
    /// Base URL of the API, e.g. `http://127.0.0.1:8080/v1`; required for
    /// `openai`, optional for `anthropic` (default `https://api.anthropic.com/v1`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Model name sent upstream (optional for `echo`).
    #[serde(default)]
    pub model: String,
    /// Environment variable holding the api key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the api key (surrounding whitespace is ignored).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Calls running at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Calls waiting beyond `max_concurrency`; more are refused as overloaded.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Time allowed for one attempt, start to end.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Time allowed to open a connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Use SSE streaming.
    #[serde(default = "default_stream")]
    pub stream: bool,
    /// Default output-token limit, when a request sets none.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub echo: EchoConfig,
    /// The script replayed by a `scripted` endpoint (a JSON array of steps);
    /// required for `scripted`, refused for other providers.
    #[serde(default)]
    pub script_file: Option<PathBuf>,
    /// Ask an `openai` endpoint for token log-probabilities (`"logprobs":
    /// true`), from which each response's `confidence` is computed.
    #[serde(default)]
    pub logprobs: bool,
    /// Price of input (prompt) tokens, in USD per million tokens.
    #[serde(default)]
    pub price_input_per_mtok: Option<f64>,
    /// Price of output (completion) tokens, in USD per million tokens.
    #[serde(default)]
    pub price_output_per_mtok: Option<f64>,
    /// What the endpoint can do; a request that needs a capability is only
    /// routed to endpoints that have it. Default: tools, json_schema, streaming.
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<Capability>,
    /// The model's context window in tokens (input + output); `None` = unknown,
    /// treated as unlimited by capability matching.
    #[serde(default)]
    pub context_window: Option<u32>,
    /// Data classes (e.g. `pii`, `phi`) this endpoint is certified to receive.
    /// A session or call labelled with a class only goes to endpoints listed
    /// for it.
    #[serde(default)]
    pub data_classes: Vec<String>,
    /// Time allowed from sending the request to the first streamed token (or
    /// to the response headers when not streaming).
    #[serde(default = "default_first_token_timeout_ms")]
    pub first_token_timeout_ms: u64,
    /// Longest silence allowed between two stream chunks: a stalled stream.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// The endpoint's circuit breaker, shared by every session.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// How the endpoint continues a partial answer, used when a stream broke
    /// after its text reached the caller (see [`Continuation`]). Default:
    /// `prefill` for `anthropic`, `none` otherwise.
    #[serde(default)]
    pub continuation: Option<Continuation>,
}

/// How an endpoint is asked to continue a partial answer: the text a
/// caller already received from an attempt whose stream broke goes to the
/// model as the start of its answer, and the model writes the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Continuation {
    /// It cannot: a retry is asked for the whole answer again.
    None,
    /// `anthropic`: the partial answer as a final assistant message (a
    /// prefill), sent without trailing whitespace as the API requires.
    Prefill,
    /// `openai`-compatible servers with vLLM's chat-template options: the
    /// partial answer as a final assistant message with
    /// `"continue_final_message": true, "add_generation_prompt": false`.
    ContinueFinalMessage,
    /// `openai`-compatible servers with a prefix-completion mode (DeepSeek,
    /// Mistral): the partial answer as a final assistant message with
    /// `"prefix": true`.
    Prefix,
}

impl Continuation {
    pub fn as_str(&self) -> &'static str {
        match self {
            Continuation::None => "none",
            Continuation::Prefill => "prefill",
            Continuation::ContinueFinalMessage => "continue_final_message",
            Continuation::Prefix => "prefix",
        }
    }
}

/// Something an endpoint can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Function / tool calling.
    Tools,
    /// Image input.
    Vision,
    /// Output constrained to a JSON Schema.
    JsonSchema,
    /// Streamed output.
    Streaming,
    /// Text embeddings (`POST /v1/embeddings`); `openai` and `echo`
    /// endpoints only, and not among the defaults: an embedding model is
    /// declared as one.
    Embeddings,
}

impl Capability {
    pub fn as_str(&self) -> &'static str {
        match self {
            Capability::Tools => "tools",
            Capability::Vision => "vision",
            Capability::JsonSchema => "json_schema",
            Capability::Streaming => "streaming",
            Capability::Embeddings => "embeddings",
        }
    }
}

fn default_capabilities() -> Vec<Capability> {
    vec![
        Capability::Tools,
        Capability::JsonSchema,
        Capability::Streaming,
    ]
}
fn default_first_token_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    30_000
}

/// A circuit breaker: closed -> open after `consecutive_failures` failures in
/// a row, or when at least `min_calls` of the last `window` calls were made
/// and more than `error_rate` of them failed; open for `open_ms`, then
/// half-open, letting `half_open_probes` calls through; closed again when
/// they all succeed, open again when one fails.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_error_rate")]
    pub error_rate: f64,
    #[serde(default = "default_window")]
    pub window: u32,
    #[serde(default = "default_min_calls")]
    pub min_calls: u32,
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
    #[serde(default = "default_half_open_probes")]
    pub half_open_probes: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_error_rate() -> f64 {
    0.5
}
fn default_window() -> u32 {
    20
}
fn default_min_calls() -> u32 {
    10
}
fn default_open_ms() -> u64 {
    30_000
}
fn default_half_open_probes() -> u32 {
    1
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            error_rate: default_error_rate(),
            window: default_window(),
            min_calls: default_min_calls(),
            open_ms: default_open_ms(),
            half_open_probes: default_half_open_probes(),
        }
    }
}

/// Output tokens assumed by [`EndpointConfig::estimate_cost_usd`] when
/// neither the request nor the endpoint sets a limit.
const DEFAULT_ESTIMATED_OUTPUT_TOKENS: u32 = 1024;

fn default_max_concurrency() -> usize {
    16
}
fn default_max_queue() -> usize {
    4096
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_stream() -> bool {
    true
}

/// Retries of transient failures: exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1 = no retries).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Upper bound of the first backoff; doubles per attempt.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Cap of any backoff, `Retry-After` included.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_initial_backoff_ms() -> u64 {
    200
}
fn default_max_backoff_ms() -> u64 {
    5000
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

/// Settings of the `echo` provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    /// Delay before answering.
    #[serde(default)]
    pub delay_ms: u64,
    /// Text put before the echoed message.
    #[serde(default)]
    pub prefix: String,
    /// Characters per streamed delta; 0 streams the answer as one delta.
    #[serde(default)]
    pub chunk_chars: usize,
}

impl EndpointConfig {
    /// A config with the given name and provider and every other field at its default.
    pub fn new(name: impl Into<String>, provider: ProviderKind) -> Self {
        Self {
            name: name.into(),
            provider,
            base_url: None,
            model: String::new(),
            api_key_env: None,
            api_key_file: None,
            max_concurrency: default_max_concurrency(),
            max_queue: default_max_queue(),
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            stream: default_stream(),
            max_output_tokens: None,
            retry: RetryConfig::default(),
            echo: EchoConfig::default(),
            script_file: None,
            logprobs: false,
            price_input_per_mtok: None,
            price_output_per_mtok: None,
            capabilities: default_capabilities(),
            context_window: None,
            data_classes: Vec::new(),
            first_token_timeout_ms: default_first_token_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            breaker: BreakerConfig::default(),
            continuation: None,
        }
    }

    /// How the endpoint continues a partial answer: as configured, else
    /// `prefill` for `anthropic` and `none` for the others.
    pub fn continuation(&self) -> Continuation {
        self.continuation.unwrap_or(match self.provider {
            ProviderKind::Anthropic => Continuation::Prefill,
            _ => Continuation::None,
        })
    }

    /// True when the endpoint has `cap`.
    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }

    /// A config for an OpenAI-compatible endpoint.
    pub fn openai(
        name: impl Into<String>,
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        Self {
            base_url: Some(base_url.into()),
            model: model.into(),
            ..Self::new(name, ProviderKind::Openai)
        }
    }

    /// A config for a `scripted` endpoint replaying `script_file`.
    pub fn scripted(name: impl Into<String>, script_file: impl Into<PathBuf>) -> Self {
        Self {
            script_file: Some(script_file.into()),
            ..Self::new(name, ProviderKind::Scripted)
        }
    }

    /// What `usage` costs at this endpoint's prices, in USD: input tokens at
    /// `price_input_per_mtok` plus output tokens at `price_output_per_mtok`.
    /// `None` when neither price is set; when only one is, the other counts
    /// as zero.
    pub fn cost_usd(&self, usage: Usage) -> Option<f64> {
        if self.price_input_per_mtok.is_none() && self.price_output_per_mtok.is_none() {
            return None;
        }
        let per_token = |price: Option<f64>| price.unwrap_or(0.0) / 1_000_000.0;
        Some(
            usage.input_tokens as f64 * per_token(self.price_input_per_mtok)
                + usage.output_tokens as f64 * per_token(self.price_output_per_mtok),
        )
    }

    /// A worst-case estimate of what `req` will cost, in USD, before it is
    /// sent; `None` when neither price is set (see [`Self::cost_usd`]).
    ///
    /// Input tokens are [`ModelRequest::estimated_input_tokens`]. Output tokens
    /// are the most the model may produce: the request's
    /// `max_output_tokens`, else the endpoint's, else 1024.
    pub fn estimate_cost_usd(&self, req: &ModelRequest) -> Option<f64> {
        self.estimate_cost_usd_for(req.estimated_input_tokens(), req)
    }

    /// [`Self::estimate_cost_usd`] with the input tokens already estimated
    /// (a router pricing one request at many endpoints counts them once).
    pub fn estimate_cost_usd_for(&self, input_tokens: u64, req: &ModelRequest) -> Option<f64> {
        if req.embed.is_some() {
            // Embeddings are billed for their input only.
            return self.cost_usd(Usage {
                input_tokens,
                output_tokens: 0,
            });
        }
        let output_tokens = req
            .max_output_tokens
            .or(self.max_output_tokens)
            .unwrap_or(DEFAULT_ESTIMATED_OUTPUT_TOKENS);
        self.cost_usd(Usage {
            input_tokens,
            output_tokens: u64::from(output_tokens),
        })
    }

    /// A config error on `field` of this endpoint.
    pub(crate) fn invalid(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::config(&self.name, field, reason)
    }

    /// Check the values serde cannot. Errors name the key inside the entry
    /// and the endpoint; [`Error::at_index`] places them in `[[models]]`.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::config("", "name", "must not be empty"));
        }
        if self.name.chars().any(|c| c.is_control()) {
            return Err(Error::config(
                "",
                "name",
                format!("{:?} contains control characters", self.name),
            ));
        }
        match self.provider {
            ProviderKind::Openai => {
                let Some(url) = &self.base_url else {
                    return Err(self.invalid("base_url", "required for provider openai"));
                };
                check_base_url(url).map_err(|reason| self.invalid("base_url", reason))?;
                if self.model.trim().is_empty() {
                    return Err(self.invalid("model", "required for provider openai"));
                }
            }
            ProviderKind::Anthropic => {
                if let Some(url) = &self.base_url {
                    check_base_url(url).map_err(|reason| self.invalid("base_url", reason))?;
                }
                if self.model.trim().is_empty() {
                    return Err(self.invalid("model", "required for provider anthropic"));
                }
            }
            ProviderKind::Echo => {}
            ProviderKind::Scripted => {
                if self.script_file.is_none() {
                    return Err(self.invalid("script_file", "required for provider scripted"));
                }
            }
        }
        if self.capabilities.contains(&Capability::Embeddings)
            && !matches!(self.provider, ProviderKind::Openai | ProviderKind::Echo)
        {
            return Err(self.invalid(
                "capabilities",
                format!(
                    "embeddings needs provider openai or echo; provider {} has no embeddings API",
                    self.provider.as_str()
                ),
            ));
        }
        if self.script_file.is_some() && self.provider != ProviderKind::Scripted {
            return Err(self.invalid(
                "script_file",
                format!(
                    "only used by provider scripted, not {}",
                    self.provider.as_str()
                ),
            ));
        }
        let fits = match (self.continuation(), self.provider) {
            (Continuation::None, _) => true,
            (Continuation::Prefill, p) => p == ProviderKind::Anthropic,
            (Continuation::ContinueFinalMessage | Continuation::Prefix, p) => {
                p == ProviderKind::Openai
            }
        };
        if !fits {
            let allowed = match self.provider {
                ProviderKind::Anthropic => "none or prefill",
                ProviderKind::Openai => "none, continue_final_message or prefix",
                _ => "none",
            };
            return Err(self.invalid(
                "continuation",
                format!(
                    "{} is not available for provider {} (use {allowed})",
                    self.continuation().as_str(),
                    self.provider.as_str()
                ),
            ));
        }
        if self.logprobs && self.provider != ProviderKind::Openai {
            return Err(self.invalid(
                "logprobs",
                format!(
                    "only used by provider openai, not {}",
                    self.provider.as_str()
                ),
            ));
        }
        if self.api_key_env.is_some() && self.api_key_file.is_some() {
            return Err(self.invalid(
                "api_key_env",
                "set either api_key_env or api_key_file, not both",
            ));
        }
        if self.max_concurrency == 0 {
            return Err(self.invalid("max_concurrency", "must be at least 1"));
        }
        if self.timeout_ms == 0 {
            return Err(self.invalid("timeout_ms", "must be at least 1"));
        }
        for (name, v) in [
            ("first_token_timeout_ms", self.first_token_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("breaker.open_ms", self.breaker.open_ms),
            (
                "breaker.consecutive_failures",
                u64::from(self.breaker.consecutive_failures),
            ),
            ("breaker.window", u64::from(self.breaker.window)),
            (
                "breaker.half_open_probes",
                u64::from(self.breaker.half_open_probes),
            ),
        ] {
            if v == 0 {
                return Err(self.invalid(name, "must be at least 1"));
            }
        }
        if !(self.breaker.error_rate > 0.0 && self.breaker.error_rate <= 1.0) {
            return Err(self.invalid("breaker.error_rate", "must be in (0, 1]"));
        }
        if self.context_window == Some(0) {
            return Err(self.invalid("context_window", "must be at least 1"));
        }
        if self.connect_timeout_ms == 0 {
            return Err(self.invalid("connect_timeout_ms", "must be at least 1"));
        }
        if self.max_output_tokens == Some(0) {
            return Err(self.invalid("max_output_tokens", "must be at least 1"));
        }
        if self.retry.max_attempts == 0 {
            return Err(self.invalid("retry.max_attempts", "must be at least 1"));
        }
        if self.retry.initial_backoff_ms > self.retry.max_backoff_ms {
            return Err(self.invalid(
                "retry.initial_backoff_ms",
                "must not exceed retry.max_backoff_ms",
            ));
        }
        for (name, price) in [
            ("price_input_per_mtok", self.price_input_per_mtok),
            ("price_output_per_mtok", self.price_output_per_mtok),
        ] {
            if let Some(p) = price
                && !(p.is_finite() && p >= 0.0)
            {
                return Err(self.invalid(name, "must be a non-negative number"));
            }
        }
        Ok(())
    }
}

/// The endpoint a server uses when none is configured: `echo`, which needs no
/// key and no network.
pub fn echo_default() -> EndpointConfig {
    EndpointConfig::new("echo", ProviderKind::Echo)
}

/// A base URL a provider can be sent to: http(s) and parseable. The value is
/// named in the reason only without user info or query (it may hold a key).
fn check_base_url(url: &str) -> std::result::Result<(), String> {
    let shown = baton_types::redact_url(url);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "must start with http:// or https://, got {shown:?}"
        ));
    }
    reqwest::Url::parse(url)
        .map(drop)
        .map_err(|e| format!("{shown:?} is not a valid URL: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> std::result::Result<EndpointConfig, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn defaults_apply_and_unknown_fields_are_refused() {
        let cfg = parse(serde_json::json!({"name": "e", "provider": "echo"})).unwrap();
        assert_eq!(cfg.max_concurrency, 16);
        assert_eq!(cfg.max_queue, 4096);
        assert_eq!(cfg.timeout_ms, 60_000);
        assert_eq!(cfg.connect_timeout_ms, 10_000);
        assert!(cfg.stream);
        assert_eq!(cfg.retry, RetryConfig::default());
        assert_eq!(cfg.retry.max_attempts, 3);
        cfg.validate().unwrap();

        let err = parse(serde_json::json!({"name": "e", "provider": "echo", "api_key": "x"}))
            .unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
        let err = parse(serde_json::json!({
            "name": "e", "provider": "echo", "retry": {"attempts": 2}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("attempts"), "{err}");
        assert!(parse(serde_json::json!({"name": "e", "provider": "bard"})).is_err());
    }

    #[test]
    fn only_openai_and_echo_endpoints_may_declare_embeddings() {
        for (provider, extra, ok) in [
            ("echo", serde_json::json!({}), true),
            (
                "openai",
                serde_json::json!({"base_url": "http://x/v1", "model": "m"}),
                true,
            ),
            ("anthropic", serde_json::json!({"model": "m"}), false),
        ] {
            let mut v = serde_json::json!({"name": "e", "provider": provider,
                "capabilities": ["embeddings"]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            let r = parse(v).unwrap().validate();
            assert_eq!(r.is_ok(), ok, "{provider}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("capabilities"), "{e}");
                assert!(e.to_string().contains("no embeddings API"), "{e}");
            }
        }
        let defaults = parse(serde_json::json!({"name": "e", "provider": "echo"})).unwrap();
        assert!(!defaults.capabilities.contains(&Capability::Embeddings));
    }

    #[test]
    fn anthropic_needs_a_model_and_an_http_base_url_when_set() {
        let cfg = parse(serde_json::json!({"name": "claude", "provider": "anthropic"})).unwrap();
        assert_eq!(cfg.provider, ProviderKind::Anthropic);
        assert_eq!(cfg.provider.as_str(), "anthropic");
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "model: required for provider anthropic (endpoint \"claude\")"
        );
        let mut cfg = parse(serde_json::json!({
            "name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5",
            "api_key_env": "ANTHROPIC_API_KEY",
        }))
        .unwrap();
        cfg.validate().unwrap(); // no base_url: the default API
        cfg.base_url = Some("api.anthropic.com/v1".into());
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .starts_with("base_url: must start with http")
        );
        cfg.base_url = Some("http://127.0.0.1:8080/v1".into());
        cfg.validate().unwrap();
        cfg.logprobs = true;
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "logprobs: only used by provider openai, not anthropic (endpoint \"claude\")"
        );
    }

    #[test]
    fn validation_errors_name_the_field() {
        let mut cfg = EndpointConfig::new("gpt", ProviderKind::Openai);
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "base_url: required for provider openai (endpoint \"gpt\")"
        );
        cfg.base_url = Some("127.0.0.1:8080".into());
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .starts_with("base_url:")
        );
        // A rejected URL is named without its credentials or query.
        for bad in [
            "user:s3cret@api.example.com/v1?key=s3cret",
            "http://user:s3cret@[::1/v1?key=s3cret",
        ] {
            cfg.base_url = Some(bad.into());
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.starts_with("base_url:"), "{e}");
            assert!(!e.contains("s3cret"), "credential echoed: {e}");
        }
        cfg.base_url = Some("http://127.0.0.1:8080/v1".into());
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .starts_with("model:")
        );
        cfg.model = "m".into();
        cfg.validate().unwrap();
        cfg.max_concurrency = 0;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .starts_with("max_concurrency:")
        );
        cfg.max_concurrency = 1;
        cfg.retry.max_attempts = 0;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .starts_with("retry.max_attempts:")
        );
    }

    #[test]
    fn errors_placed_in_the_models_array_name_the_index_and_the_endpoint() {
        let cfg = EndpointConfig::new("gpt", ProviderKind::Openai);
        assert_eq!(
            cfg.validate().unwrap_err().at_index(1).to_string(),
            "models[1].base_url: required for provider openai (endpoint \"gpt\")"
        );
        let cfg = EndpointConfig::new(" ", ProviderKind::Echo);
        assert_eq!(
            cfg.validate().unwrap_err().at_index(0).to_string(),
            "models[0].name: must not be empty"
        );
    }

    #[test]
    fn scripted_needs_a_script_file_and_only_scripted_takes_one() {
        let cfg = parse(serde_json::json!({
            "name": "demo", "provider": "scripted", "script_file": "demo.json"
        }))
        .unwrap();
        assert_eq!(cfg.provider, ProviderKind::Scripted);
        assert_eq!(cfg.script_file, Some(PathBuf::from("demo.json")));
        cfg.validate().unwrap();

        let cfg = EndpointConfig::new("demo", ProviderKind::Scripted);
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "script_file: required for provider scripted (endpoint \"demo\")"
        );
        let mut cfg = echo_default();
        cfg.script_file = Some("demo.json".into());
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "script_file: only used by provider scripted, not echo (endpoint \"echo\")"
        );
    }

    #[test]
    fn echo_default_is_valid_and_needs_nothing() {
        let cfg = echo_default();
        assert_eq!(cfg.name, "echo");
        assert_eq!(cfg.provider, ProviderKind::Echo);
        assert!(cfg.base_url.is_none() && cfg.api_key_env.is_none());
        cfg.validate().unwrap();
    }

    #[test]
    fn logprobs_and_prices_parse_and_default_to_off() {
        let cfg = parse(serde_json::json!({"name": "e", "provider": "echo"})).unwrap();
        assert!(!cfg.logprobs);
        assert_eq!(cfg.price_input_per_mtok, None);
        assert_eq!(cfg.price_output_per_mtok, None);
        assert_eq!(
            cfg.cost_usd(Usage {
                input_tokens: 10,
                output_tokens: 10
            }),
            None
        );
        assert_eq!(cfg.estimate_cost_usd(&ModelRequest::default()), None);

        let cfg = parse(serde_json::json!({
            "name": "gpt", "provider": "openai", "base_url": "http://127.0.0.1:1/v1",
            "model": "m", "logprobs": true,
            "price_input_per_mtok": 2.5, "price_output_per_mtok": 10,
        }))
        .unwrap();
        cfg.validate().unwrap();
        assert!(cfg.logprobs);
        assert_eq!(cfg.price_input_per_mtok, Some(2.5));
        assert_eq!(cfg.price_output_per_mtok, Some(10.0));

        let mut echo = echo_default();
        echo.logprobs = true;
        assert_eq!(
            echo.validate().unwrap_err().to_string(),
            "logprobs: only used by provider openai, not echo (endpoint \"echo\")"
        );
    }

    #[test]
    fn prices_must_be_non_negative_finite_numbers() {
        let mut cfg = echo_default();
        cfg.price_input_per_mtok = Some(0.0);
        cfg.price_output_per_mtok = Some(0.0);
        cfg.validate().unwrap();
        for bad in [-0.01, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut cfg = echo_default();
            cfg.price_input_per_mtok = Some(bad);
            assert_eq!(
                cfg.validate().unwrap_err().to_string(),
                "price_input_per_mtok: must be a non-negative number (endpoint \"echo\")",
                "{bad}"
            );
            let mut cfg = echo_default();
            cfg.price_input_per_mtok = Some(1.0);
            cfg.price_output_per_mtok = Some(bad);
            assert_eq!(
                cfg.validate().unwrap_err().to_string(),
                "price_output_per_mtok: must be a non-negative number (endpoint \"echo\")",
                "{bad}"
            );
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn cost_is_tokens_times_price_per_million() {
        let mut cfg = echo_default();
        cfg.price_input_per_mtok = Some(3.0);
        cfg.price_output_per_mtok = Some(15.0);
        let usage = Usage {
            input_tokens: 2_000,
            output_tokens: 500,
        };
        // 2000 * 3 / 1e6 + 500 * 15 / 1e6 = 0.006 + 0.0075
        assert!(
            close(cfg.cost_usd(usage), 0.0135),
            "{:?}",
            cfg.cost_usd(usage)
        );
        assert!(close(cfg.cost_usd(Usage::default()), 0.0));
        // One price alone: the other counts as zero.
        cfg.price_input_per_mtok = None;
        assert!(close(cfg.cost_usd(usage), 0.0075));
        cfg.price_input_per_mtok = Some(3.0);
        cfg.price_output_per_mtok = None;
        assert!(close(cfg.cost_usd(usage), 0.006));
    }

    #[test]
    fn estimated_cost_counts_characters_messages_and_the_output_limit() {
        use baton_types::{Message, ToolCall};
        let mut cfg = echo_default();
        cfg.price_input_per_mtok = Some(1_000_000.0); // $1 per input token
        cfg.price_output_per_mtok = Some(0.0);
        let mut call = Message::assistant("héllo"); // 5 chars
        call.tool_calls = vec![ToolCall {
            id: "c".into(),
            name: "ignored_name".into(),
            arguments: "{\"a\":1}".into(), // 7 chars
        }];
        let mut req = ModelRequest::new(vec![
            Message::system("abcd"), // 4 chars
            call,
        ]);
        // ceil(16 / 4) + 2 * 4 = 12 input tokens.
        assert!(
            close(cfg.estimate_cost_usd(&req), 12.0),
            "{:?}",
            cfg.estimate_cost_usd(&req)
        );
        req.messages.push(Message::user("x")); // 17 chars: ceil → 5, + 12
        assert!(close(cfg.estimate_cost_usd(&req), 17.0));
        assert!(close(cfg.estimate_cost_usd(&ModelRequest::default()), 0.0));

        // Output: the request's limit, else the endpoint's, else 1024.
        cfg.price_input_per_mtok = Some(0.0);
        cfg.price_output_per_mtok = Some(1_000_000.0);
        assert!(close(cfg.estimate_cost_usd(&req), 1024.0));
        cfg.max_output_tokens = Some(300);
        assert!(close(cfg.estimate_cost_usd(&req), 300.0));
        req.max_output_tokens = Some(20);
        assert!(close(cfg.estimate_cost_usd(&req), 20.0));
    }
}
