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
    /// Read the value; the error names the secret.
    pub fn resolve(&self, name: &str) -> Result<SecretString> {
        let v = match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                Error::InvalidArgument(format!(
                    "flows.secrets.{name}: environment variable {var} is not set"
                ))
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    Error::InvalidArgument(format!(
                        "flows.secrets.{name}: cannot read {}: {e}",
                        path.display()
                    ))
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "flows.secrets.{name}: set exactly one of env and file"
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
