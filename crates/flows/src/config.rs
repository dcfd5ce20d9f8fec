//! The `[flows]` section of `baton.toml`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use crate::error::{Error, Result};

/// `[flows]`: where definitions live and how runs behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    /// Directory of flow definitions (`*.toml`, `*.yaml`, `*.yml`); none:
    /// only flows registered in code.
    pub dir: Option<PathBuf>,
    /// How often the directory is checked for changes (ms; 0: never).
    pub reload_interval_ms: u64,
    /// A wait shorter than this (ms) sleeps in memory; a longer one
    /// passivates the run until its timer fires.
    pub inline_wait_ms: u64,
    /// How often due timers are looked for (ms).
    pub timer_poll_ms: u64,
    /// Most items one `map` step takes.
    pub max_map_items: usize,
    /// Most runs activated at once after a restart or by due timers.
    pub max_activations: usize,
    pub http: FlowHttpConfig,
    /// Secrets `http` steps may send as headers (`secret_headers`), by name.
    pub secrets: BTreeMap<String, SecretSource>,
    /// Deployment values every expression sees as `.vars` (an ERP's base
    /// URL, a margin floor): the same definition runs in every deployment.
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Webhooks that start runs (`[[flows.webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
    /// Cron schedules that start runs (`[[flows.schedules]]`).
    pub schedules: Vec<ScheduleConfig>,
    /// Queues: consumed to start runs, and targets of `emit` steps
    /// (`[[flows.queues]]`).
    pub queues: Vec<QueueConfig>,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            dir: None,
            reload_interval_ms: 2_000,
            inline_wait_ms: 2_000,
            timer_poll_ms: 200,
            max_map_items: 10_000,
            max_activations: 256,
            http: FlowHttpConfig::default(),
            secrets: BTreeMap::new(),
            vars: BTreeMap::new(),
            webhooks: Vec::new(),
            schedules: Vec::new(),
            queues: Vec::new(),
        }
    }
}

/// `[flows.http]`: what `http` steps and webhook emits may reach.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowHttpConfig {
    /// Hosts (`erp.internal`, `127.0.0.1:8080`, `*.example.com`) steps may
    /// call; empty: none.
    pub allowed_hosts: Vec<String>,
    /// Default timeout of one request (ms).
    pub timeout_ms: u64,
    /// Default largest response body (bytes).
    pub max_response_bytes: u64,
}

impl Default for FlowHttpConfig {
    fn default() -> Self {
        FlowHttpConfig {
            allowed_hosts: Vec::new(),
            timeout_ms: 30_000,
            max_response_bytes: 1024 * 1024,
        }
    }
}

fn default_tenant() -> String {
    baton_types::DEFAULT_TENANT.to_string()
}

/// `[[flows.webhooks]]`: `POST /hooks/<name>` starts a run of `flow`.
///
/// The sender signs `<timestamp>.<body>` with HMAC-SHA256 under `secret`
/// and sends `sha256=<hex>` in `signature_header`, the Unix time in
/// seconds in `timestamp_header`, and a unique id in `delivery_header`: a
/// bad or missing signature, or a time off by more than `tolerance_secs`,
/// is refused (401) and starts nothing; a delivery id seen before answers
/// with the run it started.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub flow: String,
    pub secret: SecretSource,
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    #[serde(default = "default_timestamp_header")]
    pub timestamp_header: String,
    #[serde(default = "default_delivery_header")]
    pub delivery_header: String,
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: u64,
    /// The tenant its runs belong to.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// jq over `{body, headers}` giving the run's input (default `.body`).
    #[serde(default)]
    pub input: Option<String>,
}

fn default_signature_header() -> String {
    "x-baton-signature".into()
}
fn default_timestamp_header() -> String {
    "x-baton-timestamp".into()
}
fn default_delivery_header() -> String {
    "x-baton-delivery".into()
}
fn default_tolerance() -> u64 {
    300
}

/// What a schedule does about fires missed while the server was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Nothing: the next fire is the next one from now.
    #[default]
    Skip,
    /// One run, for the latest missed fire.
    RunOnce,
}

/// `[[flows.schedules]]`: a run of `flow` at every fire of `cron`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub name: String,
    pub flow: String,
    /// Five fields (minute hour day month weekday), or six with seconds first.
    pub cron: String,
    /// An IANA time zone (`Europe/Paris`); default UTC.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// The runs' input (`.input.fired_at` is added when it is an object).
    #[serde(default)]
    pub input: serde_json::Value,
    #[serde(default)]
    pub missed: Missed,
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

fn default_timezone() -> String {
    "UTC".into()
}

/// `[[flows.queues]]`: a Redis stream, consumed in a consumer group when
/// `flow` is set, and a target of `emit` steps (`to.queue = "<name>"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub name: String,
    /// `redis://host:port/db`.
    pub url: String,
    pub stream: String,
    /// Start a run of this flow for every message.
    #[serde(default)]
    pub flow: Option<String>,
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default = "default_group")]
    pub consumer: String,
    /// jq over `{id, fields, payload}` giving the run's input (default
    /// `.payload`: the `payload` field, as JSON when it parses).
    #[serde(default)]
    pub input: Option<String>,
    /// Most messages read at once.
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

fn default_group() -> String {
    "baton".into()
}
fn default_batch() -> usize {
    16
}

/// Where a secret's value comes from (exactly one).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// An environment variable holding it.
    #[serde(default)]
    pub env: Option<String>,
    /// A file holding it (trailing newline trimmed).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// Read the value; errors name `field` (e.g. `flows.secrets.erp`).
    pub fn resolve(&self, field: &str) -> Result<SecretString> {
        let v = match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                Error::InvalidArgument(format!("{field}: environment variable {var} is not set"))
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    Error::InvalidArgument(format!("{field}: cannot read {}: {e}", path.display()))
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{field}: set exactly one of env and file"
                )));
            }
        };
        Ok(SecretString::from(v))
    }
}

/// Whether `host` (with `:port` when the URL has one) is allowed.
pub(crate) fn host_allowed(allowed: &[String], host: &str, port: Option<u16>) -> bool {
    let with_port = port.map(|p| format!("{host}:{p}"));
    allowed.iter().any(|a| {
        if let Some(suffix) = a.strip_prefix("*.") {
            host.ends_with(&format!(".{suffix}"))
        } else {
            a == host || with_port.as_deref() == Some(a.as_str())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_exactly_with_port_or_by_wildcard() {
        let allowed = vec![
            "erp.internal".to_string(),
            "127.0.0.1:8080".into(),
            "*.example.com".into(),
        ];
        assert!(host_allowed(&allowed, "erp.internal", Some(443)));
        assert!(host_allowed(&allowed, "127.0.0.1", Some(8080)));
        assert!(!host_allowed(&allowed, "127.0.0.1", Some(8081)));
        assert!(host_allowed(&allowed, "api.example.com", None));
        assert!(!host_allowed(&allowed, "example.com", None));
        assert!(!host_allowed(&allowed, "evil-example.com", None));
    }
}
