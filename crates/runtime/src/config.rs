//! Runtime configuration: serde structs with `deny_unknown_fields`, defaults
//! for everything, and [`RuntimeConfig::validate`] whose errors name the field.

use std::path::PathBuf;
use std::time::Duration;

use baton_mcp::McpServerConfig;
use baton_models::EndpointConfig;
use baton_store::Durability;
use baton_tools::BuiltinToolsConfig;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a `SendMessage` does while another turn of the same session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BusyPolicy {
    /// Accept the message durably and run it after the running turn.
    #[default]
    Enqueue,
    /// Refuse it with FAILED_PRECONDITION.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// RocksDB directory.
    pub data_dir: PathBuf,
    /// `sync` (fsync before acknowledging, group commit) or `buffered`
    /// (WAL written, not fsynced: survives a process crash, not a power loss).
    pub durability: Durability,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./baton-data"),
            durability: Durability::Sync,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Route (model endpoint) used when a session names none.
    pub default_route: String,
    pub busy_policy: BusyPolicy,
    /// Largest accepted user message, in bytes.
    pub max_message_bytes: usize,
    /// Most bytes of image URLs one message may carry (a base64 data URL
    /// counts in full). Images are journaled inline with their message, so
    /// the journal holds exactly what the model was shown.
    pub max_image_bytes: usize,
    /// Most images one message may carry.
    pub max_images: usize,
    /// Largest accepted system prompt, in bytes.
    pub max_system_prompt_bytes: usize,
    /// Most turns waiting behind a running one (enqueue policy).
    pub max_queued_turns: usize,
    /// A session with no activity for this long is passivated (its actor
    /// stops; its state stays on disk until the next message).
    pub passivate_after_ms: u64,
    /// Write a snapshot after this many journal records.
    pub snapshot_every: u64,
    /// Events a slow stream may fall behind before it is cut (the client
    /// then resumes from its last seq).
    pub subscriber_buffer: usize,
    /// How long an API call waits for a session actor's reply.
    pub request_timeout_ms: u64,
    /// Most model calls per turn (the agentic loop's steps) when a session
    /// sets none; a turn that needs more fails with `max_steps_exceeded`.
    pub max_steps: u32,
    /// Deadline of one turn's model calls (every call, retry and failover of
    /// the turn together), from the turn's first model call; none if unset.
    /// A turn past it fails with `deadline_exceeded`.
    pub turn_deadline_ms: Option<u64>,
    /// Budget (USD) of sessions that set none; none if unset.
    pub default_budget_usd: Option<f64>,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            default_route: "echo".into(),
            busy_policy: BusyPolicy::Enqueue,
            max_message_bytes: 256 * 1024,
            max_image_bytes: 3 * 1024 * 1024,
            max_images: 16,
            max_system_prompt_bytes: 64 * 1024,
            max_queued_turns: 32,
            passivate_after_ms: 300_000,
            snapshot_every: 256,
            subscriber_buffer: 1024,
            request_timeout_ms: 30_000,
            max_steps: 16,
            turn_deadline_ms: None,
            default_budget_usd: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// Restarts allowed within `restart_window_ms` before the session is
    /// marked `failed`.
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    /// First restart delay; doubles per restart up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            restart_window_ms: 60_000,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
        }
    }
}

/// Tools: built-ins, limits, defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// Built-in tools; each is off unless enabled here.
    pub builtin: BuiltinToolsConfig,
    /// Tool calls of one model response that run at the same time.
    pub max_parallel_calls: usize,
    /// How long a client-side tool call waits for SubmitToolResult before it
    /// becomes an error result the model sees.
    pub client_tool_timeout_ms: u64,
    /// Server-side tools a session may use when it names none (patterns).
    pub default_allowed: Vec<String>,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            builtin: BuiltinToolsConfig::default(),
            max_parallel_calls: 4,
            client_tool_timeout_ms: 600_000,
            default_allowed: vec!["*".into()],
        }
    }
}

/// Everything the runtime needs.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub store: StoreConfig,
    pub sessions: SessionsConfig,
    pub supervision: SupervisionConfig,
    /// Model endpoints. Empty means the built-in `echo` endpoint only.
    pub models: Vec<EndpointConfig>,
    /// Routes over the endpoints (`[[routes]]`); every endpoint is also a
    /// route of its own name.
    pub routes: Vec<baton_routing::RouteConfig>,
    pub tools: ToolsConfig,
    /// MCP servers whose tools are exposed as `<server>.<tool>`.
    pub mcp: Vec<McpServerConfig>,
    /// Human-in-the-loop gates: placement policies and defaults.
    pub gates: crate::gates::GatesConfig,
}

impl RuntimeConfig {
    /// A config with a data dir and defaults for everything else.
    pub fn with_data_dir(dir: impl Into<PathBuf>) -> Self {
        let mut c = Self::default();
        c.store.data_dir = dir.into();
        c
    }

    /// The model endpoints, with the built-in echo endpoint when none are configured.
    pub fn effective_models(&self) -> Vec<EndpointConfig> {
        if self.models.is_empty() {
            vec![baton_models::echo_default()]
        } else {
            self.models.clone()
        }
    }

    /// Check the config; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let s = &self.sessions;
        let positive = [
            ("sessions.max_message_bytes", s.max_message_bytes as u64),
            ("sessions.max_image_bytes", s.max_image_bytes as u64),
            ("sessions.max_images", s.max_images as u64),
            (
                "sessions.max_system_prompt_bytes",
                s.max_system_prompt_bytes as u64,
            ),
            ("sessions.passivate_after_ms", s.passivate_after_ms),
            ("sessions.snapshot_every", s.snapshot_every),
            ("sessions.subscriber_buffer", s.subscriber_buffer as u64),
            ("sessions.request_timeout_ms", s.request_timeout_ms),
            ("sessions.max_steps", s.max_steps as u64),
            (
                "tools.max_parallel_calls",
                self.tools.max_parallel_calls as u64,
            ),
            (
                "tools.client_tool_timeout_ms",
                self.tools.client_tool_timeout_ms,
            ),
            (
                "supervision.restart_window_ms",
                self.supervision.restart_window_ms,
            ),
            (
                "supervision.max_backoff_ms",
                self.supervision.max_backoff_ms,
            ),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::Config(format!("{field}: must be greater than 0")));
            }
        }
        if self.supervision.initial_backoff_ms > self.supervision.max_backoff_ms {
            return Err(Error::Config(
                "supervision.initial_backoff_ms: must not exceed supervision.max_backoff_ms".into(),
            ));
        }
        if self.store.data_dir.as_os_str().is_empty() {
            return Err(Error::Config("store.data_dir: must not be empty".into()));
        }
        self.tools
            .builtin
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        baton_tools::ToolFilter::new(&self.tools.default_allowed)
            .map_err(|e| Error::Config(format!("tools.default_allowed: {e}")))?;
        let mut servers = std::collections::HashSet::new();
        for m in &self.mcp {
            m.validate().map_err(|e| Error::Config(e.to_string()))?;
            if !servers.insert(m.name.as_str()) {
                return Err(Error::Config(format!(
                    "mcp[{}].name: duplicate server name",
                    m.name
                )));
            }
        }
        if self.gates.timeout_scan_ms == 0 {
            return Err(Error::Config(
                "gates.timeout_scan_ms: must be greater than 0".into(),
            ));
        }
        let models = self.effective_models();
        let mut names = std::collections::HashSet::new();
        for m in &models {
            m.validate().map_err(|e| Error::Config(e.to_string()))?;
            if !names.insert(m.name.as_str()) {
                return Err(Error::Config(format!(
                    "models[{}].name: duplicate endpoint name",
                    m.name
                )));
            }
        }
        if !names.contains(s.default_route.as_str())
            && !self.routes.iter().any(|r| r.name == s.default_route)
        {
            let mut have: Vec<&str> = self.routes.iter().map(|r| r.name.as_str()).collect();
            have.extend(models.iter().map(|m| m.name.as_str()));
            return Err(Error::Config(format!(
                "sessions.default_route: {:?} is not a configured route or model endpoint (have: {})",
                s.default_route,
                have.join(", ")
            )));
        }
        if let Some(b) = s.default_budget_usd
            && !(b.is_finite() && b >= 0.0)
        {
            return Err(Error::Config(
                "sessions.default_budget_usd: must be a non-negative number".into(),
            ));
        }
        if s.turn_deadline_ms == Some(0) {
            return Err(Error::Config(
                "sessions.turn_deadline_ms: must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn passivate_after(&self) -> Duration {
        Duration::from_millis(self.sessions.passivate_after_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.sessions.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_use_echo() {
        let c = RuntimeConfig::default();
        c.validate().unwrap();
        assert_eq!(c.effective_models()[0].name, "echo");
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = RuntimeConfig::default();
        c.sessions.max_message_bytes = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sessions.max_message_bytes")
        );
        let mut c = RuntimeConfig::default();
        c.sessions.default_route = "nope".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sessions.default_route")
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            toml::from_str::<RuntimeConfig>("[sessions]\nbusy_polcy = \"reject\"\n").unwrap_err();
        assert!(err.to_string().contains("busy_polcy"), "{err}");
        let ok: RuntimeConfig = toml::from_str("[sessions]\nbusy_policy = \"reject\"\n").unwrap();
        assert_eq!(ok.sessions.busy_policy, BusyPolicy::Reject);
    }
}
