//! The `baton.toml` file: defaults → TOML file → `BATON_*` environment.
//!
//! Environment overrides name a section and a field separated by a double
//! underscore: `BATON_STORE__DATA_DIR=/var/lib/baton`,
//! `BATON_SESSIONS__BUSY_POLICY=reject`, `BATON_SERVER__LISTEN=0.0.0.0:50051`,
//! `BATON_HTTP__LISTEN=0.0.0.0:8080`.

use std::path::{Path, PathBuf};

use baton_mcp::McpServerConfig;
use baton_models::EndpointConfig;
use baton_runtime::{RuntimeConfig, SessionsConfig, StoreConfig, SupervisionConfig, ToolsConfig};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// The `[server]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// gRPC listen address.
    pub listen: String,
    /// Largest gRPC request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Emit logs as JSON lines.
    pub json_logs: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            max_request_bytes: 4 * 1024 * 1024,
            json_logs: false,
        }
    }
}

/// The `[http]` section: the HTTP server (`/metrics`, `/healthz` and the
/// OpenAI-compatible front door).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// HTTP listen address.
    pub listen: String,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_request_bytes: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            max_request_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Everything in `baton.toml`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BatonConfig {
    pub server: ServerSection,
    pub http: HttpSection,
    pub store: StoreConfig,
    pub sessions: SessionsConfig,
    pub supervision: SupervisionConfig,
    pub models: Vec<EndpointConfig>,
    /// Routes over the endpoints (`[[routes]]`).
    pub routes: Vec<baton_routing::RouteConfig>,
    pub tools: ToolsConfig,
    pub mcp: Vec<McpServerConfig>,
    pub gates: baton_runtime::gates::GatesConfig,
    /// The signed audit trail (`[audit]`).
    pub audit: crate::audit::AuditSection,
    /// Logs, tracing spans and OTLP export (`[telemetry]`).
    pub telemetry: baton_telemetry::TelemetryConfig,
}

/// A config that could not be loaded; the message names the file and field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl BatonConfig {
    /// Load defaults, then `path` (when given; it must exist), then `BATON_*`
    /// environment variables, and validate the result.
    pub fn load(path: Option<&Path>) -> Result<BatonConfig, ConfigError> {
        Self::load_with_env(path, Env::prefixed("BATON_"))
    }

    fn load_with_env(path: Option<&Path>, env: Env) -> Result<BatonConfig, ConfigError> {
        let source = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".into());
        let mut fig = Figment::new();
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    p.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(p));
        }
        // Only section-qualified variables (BATON_SECTION__FIELD) are config;
        // others such as BATON_SERVER_URL belong to the CLI.
        fig = fig.merge(env.filter(|k| k.as_str().contains("__")).split("__"));
        let config: BatonConfig = fig
            .extract()
            .map_err(|e| ConfigError(format!("{source}: {}", flatten_figment(e))))?;
        config
            .runtime()
            .validate()
            .map_err(|e| ConfigError(format!("{source}: {e}")))?;
        config
            .server
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| {
                ConfigError(format!(
                    "{source}: server.listen: {:?} is not an address such as 127.0.0.1:50051",
                    config.server.listen
                ))
            })?;
        if config.server.max_request_bytes == 0 {
            return Err(ConfigError(format!(
                "{source}: server.max_request_bytes: must be greater than 0"
            )));
        }
        config
            .http
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| {
                ConfigError(format!(
                    "{source}: http.listen: {:?} is not an address such as 127.0.0.1:8080",
                    config.http.listen
                ))
            })?;
        if config.http.max_request_bytes == 0 {
            return Err(ConfigError(format!(
                "{source}: http.max_request_bytes: must be greater than 0"
            )));
        }
        config
            .telemetry
            .validate()
            .map_err(|e| ConfigError(format!("{source}: {e}")))?;
        if config
            .audit
            .key_file
            .as_ref()
            .is_some_and(|k| k.as_os_str().is_empty())
        {
            return Err(ConfigError(format!(
                "{source}: audit.key_file: must not be empty"
            )));
        }
        Ok(config)
    }

    /// The runtime's part of the config.
    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            store: self.store.clone(),
            sessions: self.sessions.clone(),
            supervision: self.supervision.clone(),
            models: self.models.clone(),
            routes: self.routes.clone(),
            tools: self.tools.clone(),
            mcp: self.mcp.clone(),
            gates: self.gates.clone(),
        }
    }

    /// Where the data lives.
    pub fn data_dir(&self) -> PathBuf {
        self.store.data_dir.clone()
    }
}

fn flatten_figment(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let field = e.path.join(".");
            let what = e.kind.to_string();
            if field.is_empty() {
                what
            } else {
                format!("{field}: {what}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("baton.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_shipped_default_config_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/baton.toml");
        // Not from the process environment, which another test changes.
        let c =
            BatonConfig::load_with_env(Some(&p), Env::prefixed("BATON_UNSET_IN_TESTS_")).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:50051");
        assert!(c.audit.enabled);
        assert!(c.telemetry.otlp_endpoint.is_none());
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert!(c.http.enabled);
        assert_eq!(c.sessions.default_route, "echo");
    }

    #[test]
    fn unknown_fields_are_named_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[sessions]\nbusy_polcy = \"reject\"\n");
        let err = BatonConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(
            err.contains("baton.toml") && err.contains("busy_polcy"),
            "{err}"
        );
    }

    #[test]
    fn validation_errors_name_field_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[sessions]\ndefault_route = \"gpt\"\n");
        let err = BatonConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(
            err.contains("baton.toml") && err.contains("sessions.default_route"),
            "{err}"
        );
        let p = write(dir.path(), "[server]\nlisten = \"nowhere\"\n");
        let err = BatonConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(err.contains("server.listen"), "{err}");
        let p = write(dir.path(), "[http]\nlisten = \"port 80\"\n");
        let err = BatonConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(
            err.contains("baton.toml") && err.contains("http.listen"),
            "{err}"
        );
        let p = write(dir.path(), "[http]\nenabled = \"yes\"\n");
        let err = BatonConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(err.contains("http.enabled"), "{err}");
        let p = write(dir.path(), "[http]\nmax_request_bytes = 0\n");
        let err = BatonConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(err.contains("http.max_request_bytes"), "{err}");
        let p = write(
            dir.path(),
            "[[models]]\nname = \"x\"\nprovider = \"openai\"\n[sessions]\ndefault_route = \"x\"\n",
        );
        let err = BatonConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(err.contains("models[x].base_url"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("baton.toml", "[sessions]\nbusy_policy = \"enqueue\"\n")?;
            jail.set_env("BATON_SESSIONS__BUSY_POLICY", "reject");
            jail.set_env("BATON_STORE__DATA_DIR", "/tmp/elsewhere");
            jail.set_env("BATON_SERVER_URL", "http://ignored");
            jail.set_env("BATON_HTTP__LISTEN", "0.0.0.0:9090");
            jail.set_env("BATON_HTTP__ENABLED", "false");
            let c = BatonConfig::load(Some(Path::new("baton.toml"))).map_err(|e| e.0)?;
            assert_eq!(c.http.listen, "0.0.0.0:9090");
            assert!(!c.http.enabled);
            assert_eq!(c.sessions.busy_policy, baton_runtime::BusyPolicy::Reject);
            assert_eq!(c.store.data_dir, PathBuf::from("/tmp/elsewhere"));
            Ok(())
        });
    }
}
