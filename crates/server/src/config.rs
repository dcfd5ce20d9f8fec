//! The `baton.toml` file: defaults → TOML file → `BATON_*` environment.
//!
//! Environment overrides name a section and a field separated by a double
//! underscore: `BATON_STORE__DATA_DIR=/var/lib/baton`,
//! `BATON_SESSIONS__BUSY_POLICY=reject`, `BATON_SERVER__LISTEN=0.0.0.0:50051`,
//! `BATON_HTTP__LISTEN=0.0.0.0:8080`. Errors name where a bad value came
//! from: see [`ConfigError`].

use std::path::{Path, PathBuf};

use baton_mcp::McpServerConfig;
use baton_models::EndpointConfig;
use baton_runtime::{
    ConfigError as RuntimeConfigError, RuntimeConfig, SessionsConfig, StoreConfig,
    SupervisionConfig, ToolsConfig,
};
use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

use crate::config_origin::{BatonEnv, Located, Origins};

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
    /// TLS (`[server.tls]`: `cert_file`, `key_file`, and `client_ca_file`
    /// for mutual TLS, which then requires a client certificate signed by
    /// that CA on every connection).
    pub tls: Option<baton_auth::tls::TlsSettings>,
    /// Most concurrent streams (calls) on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Ping idle connections this often (ms) and drop them when a ping is
    /// not answered within `keepalive_timeout_ms`.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    /// On SIGTERM, how long (ms) the answers in progress may take to finish
    /// while new work is refused, before the server stops (0: at once).
    pub shutdown_grace_ms: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            max_request_bytes: 4 * 1024 * 1024,
            json_logs: false,
            tls: None,
            max_concurrent_streams: 256,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
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
    /// TLS (`[http.tls]`: `cert_file`, `key_file`).
    pub tls: Option<baton_auth::tls::TlsSettings>,
    /// A TLS handshake must finish within this (ms), so a client that
    /// opens connections and stalls cannot hold them.
    pub handshake_timeout_ms: u64,
    /// A request's headers must arrive within this (ms); a slower
    /// client's connection is closed.
    pub header_read_timeout_ms: u64,
    /// A request body may stall at most this long (ms) between two pieces;
    /// past it the request fails with 400.
    pub body_read_timeout_ms: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            max_request_bytes: 4 * 1024 * 1024,
            tls: None,
            handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
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
    /// Tenants and their limits (`[[tenants]]`).
    pub tenants: Vec<baton_runtime::TenantConfig>,
    /// Ceilings on what any request may ask (`[limits]`).
    pub limits: baton_runtime::LimitsConfig,
    /// Governance policies (`[[policies]]`), see docs/governance.md.
    pub policies: Vec<baton_governance::PolicyConfig>,
    /// Detector settings (`[governance]`).
    pub governance: baton_governance::GovernanceConfig,
    /// How long sessions are kept (`[retention]`).
    pub retention: baton_runtime::RetentionConfig,
    /// Quality scoring and drift alerts (`[quality]`).
    pub quality: baton_runtime::QualityConfig,
    /// Encryption at rest by data subject and erasure (`[privacy]`).
    pub privacy: baton_runtime::PrivacyConfig,
    /// Who may call (`[auth]`).
    pub auth: crate::auth::AuthSection,
    /// The signed audit trail (`[audit]`).
    pub audit: crate::audit::AuditSection,
    /// Logs, tracing spans and OTLP export (`[telemetry]`).
    pub telemetry: baton_telemetry::TelemetryConfig,
    /// Flow definitions and runs (`[flows]`), see docs/flows.md.
    pub flows: baton_flows::FlowsConfig,
    /// This node among several on one PostgreSQL database (`[cluster]`),
    /// see docs/scaling.md.
    pub cluster: baton_runtime::ClusterConfig,
}

/// A config that could not be loaded. Every message reads `ORIGIN: FIELD:
/// PROBLEM`, where ORIGIN is the file or the environment variable the bad
/// value came from and FIELD the key as in the file, arrays by index:
/// `config/baton.toml: models[1].base_url: required for provider openai
/// (endpoint "gpt")`, `BATON_SESSIONS__MAX_STEPS: sessions.max_steps:
/// expected u32, found "abc"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `--config` (or `BATON_CONFIG`) names a file that is not there.
    #[error("config file {} does not exist", .0.display())]
    NoFile(PathBuf),
    /// A value is invalid.
    #[error("{origin}: {field}: {problem}")]
    Invalid {
        /// The file, or the environment variable(s), the value came from.
        origin: String,
        /// The key as in the file, e.g. `models[1].base_url`.
        field: String,
        problem: String,
    },
    /// A source cannot be read at all, e.g. a TOML syntax error.
    #[error("{origin}: {problem}")]
    Unreadable { origin: String, problem: String },
}

impl From<Located> for ConfigError {
    fn from(l: Located) -> Self {
        if l.field.is_empty() {
            ConfigError::Unreadable {
                origin: l.origin,
                problem: l.problem,
            }
        } else {
            ConfigError::Invalid {
                origin: l.origin,
                field: l.field,
                problem: l.problem,
            }
        }
    }
}

impl BatonConfig {
    /// Load defaults, then `path` (when given; it must exist), then `BATON_*`
    /// environment variables, and validate the result as the runtime will
    /// when it starts. Errors name where the bad value came from (the file
    /// or the variable) and the field.
    pub fn load(path: Option<&Path>) -> Result<BatonConfig, ConfigError> {
        Self::load_with_env(path, "BATON_")
    }

    fn load_with_env(path: Option<&Path>, env_prefix: &str) -> Result<BatonConfig, ConfigError> {
        let mut fig = Figment::new();
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::NoFile(p.to_path_buf()));
            }
            fig = fig.merge(Toml::file_exact(p));
        }
        fig = fig.merge(BatonEnv::prefixed(env_prefix));
        let origins = Origins {
            fig: &fig,
            file: path.map(|p| p.display().to_string()),
        };
        let config: BatonConfig = fig
            .extract()
            .map_err(|e| ConfigError::from(origins.figment_error(e)))?;
        config.validate().map_err(|e| {
            ConfigError::from(origins.locate(&e.field, &e.problem, e.related.as_deref()))
        })?;
        Ok(config)
    }

    /// Check what serde cannot: the runtime's checks
    /// ([`RuntimeConfig::validate`]: models, routes, gate policies, MCP
    /// servers, the default route), then the server's own sections. Errors
    /// name the field, not yet where its value came from.
    fn validate(&self) -> Result<(), RuntimeConfigError> {
        self.runtime().validate()?;
        let address = |field: &str, value: &str, example: &str| {
            value
                .parse::<std::net::SocketAddr>()
                .map(|_| ())
                .map_err(|_| {
                    RuntimeConfigError::new(
                        field,
                        format!("{value:?} is not an address such as {example}"),
                    )
                })
        };
        address("server.listen", &self.server.listen, "127.0.0.1:50051")?;
        if self.server.max_request_bytes == 0 {
            return Err(RuntimeConfigError::new(
                "server.max_request_bytes",
                "must be greater than 0",
            ));
        }
        if self.server.shutdown_grace_ms > 3_600_000 {
            return Err(RuntimeConfigError::new(
                "server.shutdown_grace_ms",
                format!(
                    "{} ms is more than an hour; a stop that long is not a graceful one",
                    self.server.shutdown_grace_ms
                ),
            ));
        }
        address("http.listen", &self.http.listen, "127.0.0.1:8080")?;
        if self.http.max_request_bytes == 0 {
            return Err(RuntimeConfigError::new(
                "http.max_request_bytes",
                "must be greater than 0",
            ));
        }
        self.telemetry.validate().map_err(|e| match e {
            baton_telemetry::TelemetryError::InvalidConfig { field, reason } => {
                RuntimeConfigError::new(format!("telemetry.{field}"), reason)
            }
            other => RuntimeConfigError::new("telemetry", other.to_string()),
        })?;
        if self
            .audit
            .key_file
            .as_ref()
            .is_some_and(|k| k.as_os_str().is_empty())
        {
            return Err(RuntimeConfigError::new(
                "audit.key_file",
                "must not be empty",
            ));
        }
        Ok(())
    }

    /// The runtime's part of the config.
    pub fn runtime(&self) -> RuntimeConfig {
        let audit = self.audit.resolve(&self.store.data_dir);
        let mut store = self.store.clone();
        store.audit_dir = Some(audit.path);
        store.audit_key_file = Some(audit.key_file);
        RuntimeConfig {
            store,
            sessions: self.sessions.clone(),
            supervision: self.supervision.clone(),
            models: self.models.clone(),
            routes: self.routes.clone(),
            tools: self.tools.clone(),
            mcp: self.mcp.clone(),
            gates: self.gates.clone(),
            tenants: self.tenants.clone(),
            limits: self.limits.clone(),
            policies: self.policies.clone(),
            governance: self.governance.clone(),
            retention: self.retention.clone(),
            quality: self.quality.clone(),
            privacy: self.privacy.clone(),
            cluster: self.cluster.clone(),
        }
    }

    /// Where the data lives.
    pub fn data_dir(&self) -> PathBuf {
        self.store.data_dir.clone()
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's own signature
mod tests {
    use super::*;

    /// Variables no test sets: for tests that must not see the process
    /// environment, which the Jail tests change.
    const NO_ENV: &str = "BATON_UNSET_IN_TESTS_";

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("baton.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The error of loading `text` as a file, with the file's path shown as
    /// `baton.toml`.
    fn file_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), text);
        let err = BatonConfig::load_with_env(Some(&p), NO_ENV)
            .unwrap_err()
            .to_string();
        err.replace(&p.display().to_string(), "baton.toml")
    }

    /// The error of loading `file` (may be empty) with `env` set, in a Jail.
    fn jailed_error(file: &str, env: &[(&str, &str)]) -> String {
        let mut out = String::new();
        figment::Jail::expect_with(|jail| {
            jail.create_file("baton.toml", file)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = match BatonConfig::load(Some(Path::new("baton.toml"))) {
                Ok(_) => "loaded".into(),
                Err(e) => e.to_string(),
            };
            Ok(())
        });
        out
    }

    #[test]
    fn the_shipped_default_config_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/baton.toml");
        let c = BatonConfig::load_with_env(Some(&p), NO_ENV).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:50051");
        assert!(c.audit.enabled);
        assert!(c.telemetry.otlp_endpoint.is_none());
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert!(c.http.enabled);
        // Not set in the file: its one endpoint, echo.
        assert_eq!(c.sessions.default_route, "");
        assert_eq!(c.runtime().resolve_default_route().unwrap(), "echo");
    }

    #[test]
    fn unknown_fields_are_named_with_the_file() {
        let err = file_error("[sessions]\nbusy_polcy = \"reject\"\n");
        assert!(
            err.starts_with("baton.toml: sessions.busy_polcy: unknown field: expected "),
            "{err}"
        );
    }

    #[test]
    fn validation_errors_name_field_and_file() {
        for (text, expected) in [
            (
                "[sessions]\ndefault_route = \"gpt\"\n",
                "baton.toml: sessions.default_route: \"gpt\" is not a configured route or model endpoint (have: echo)",
            ),
            (
                "[server]\nlisten = \"nowhere\"\n",
                "baton.toml: server.listen: \"nowhere\" is not an address such as 127.0.0.1:50051",
            ),
            (
                "[http]\nlisten = \"port 80\"\n",
                "baton.toml: http.listen: \"port 80\" is not an address such as 127.0.0.1:8080",
            ),
            (
                "[http]\nenabled = \"yes\"\n",
                "baton.toml: http.enabled: expected a boolean, found \"yes\"",
            ),
            (
                "[http]\nmax_request_bytes = 0\n",
                "baton.toml: http.max_request_bytes: must be greater than 0",
            ),
            (
                "[sessions]\nmax_steps = -1\n",
                "baton.toml: sessions.max_steps: invalid value -1: expected u32",
            ),
        ] {
            assert_eq!(file_error(text), expected);
        }
    }

    // 1. A bad value from the environment names the variable.
    #[test]
    fn bad_environment_values_name_the_variable() {
        assert_eq!(
            jailed_error("", &[("BATON_STORE__DURABILITY", "bogus")]),
            "BATON_STORE__DURABILITY: store.durability: unknown value \"bogus\": expected sync or buffered"
        );
        // The variable overrides a good value from the file: the variable
        // is named, not the file.
        assert_eq!(
            jailed_error(
                "[sessions]\nmax_steps = 8\n",
                &[("BATON_SESSIONS__MAX_STEPS", "abc")]
            ),
            "BATON_SESSIONS__MAX_STEPS: sessions.max_steps: expected u32, found \"abc\""
        );
        // Values that parse but fail validation, too.
        assert_eq!(
            jailed_error(
                "[sessions]\nmax_steps = 8\n",
                &[("BATON_SESSIONS__MAX_STEPS", "0")]
            ),
            "BATON_SESSIONS__MAX_STEPS: sessions.max_steps: must be greater than 0"
        );
        assert!(
            jailed_error(
                "[sessions]\nbusy_policy = \"reject\"\n",
                &[("BATON_SESSIONS__BUSY_POLCY", "reject")]
            )
            .starts_with(
                "BATON_SESSIONS__BUSY_POLCY: sessions.busy_polcy: unknown field: expected "
            )
        );
        // A default made invalid by a variable names that variable.
        assert_eq!(
            jailed_error("", &[("BATON_SUPERVISION__MAX_BACKOFF_MS", "10")]),
            "BATON_SUPERVISION__MAX_BACKOFF_MS: supervision.initial_backoff_ms: must not exceed supervision.max_backoff_ms"
        );
        // The same bad value in the file names the file.
        assert_eq!(
            jailed_error("[store]\ndurability = \"bogus\"\n", &[]),
            "baton.toml: store.durability: unknown value \"bogus\": expected sync or buffered"
        );
    }

    // 2. Models, routes and gate policies are checked when the config is
    //    loaded, and the errors name the file and the field.
    #[test]
    fn entries_are_checked_at_load_naming_the_file_and_the_entry() {
        assert_eq!(
            file_error(
                "[sessions]\ndefault_route = \"echo\"\n\
                 [[models]]\nname = \"echo\"\nprovider = \"echo\"\n\
                 [[models]]\nname = \"gpt\"\nprovider = \"openai\"\n"
            ),
            "baton.toml: models[1].base_url: required for provider openai (endpoint \"gpt\")"
        );
        assert_eq!(
            file_error(
                "[sessions]\ndefault_route = \"main\"\n\
                 [[routes]]\nname = \"main\"\nendpoints = [\"echo\"]\n\
                 [[routes]]\nname = \"fast\"\nendpoints = [\"gtp\"]\n"
            ),
            "baton.toml: routes[1].endpoints: unknown endpoint \"gtp\" (known: echo) (route \"fast\")"
        );
        assert_eq!(
            file_error(
                "[[gates.policies]]\nname = \"pii\"\nkind = \"data_rule\"\n\
                 reviewers = \"privacy\"\nclassifier = \"pii_detector\"\n"
            ),
            "baton.toml: gates.policies[0].classifier: no classifier named \"pii_detector\" is registered (policy \"pii\")"
        );
        assert_eq!(
            file_error(
                "[[gates.policies]]\nname = \"ok\"\nkind = \"final_answer\"\nreviewers = \"a\"\n\
                 [[gates.policies]]\nname = \"pay\"\nkind = \"before_tool\"\nreviewers = \"a\"\n"
            ),
            "baton.toml: gates.policies[1].tools: required for kind before_tool (policy \"pay\")"
        );
        // Arrays cannot come from the environment; a variable that tries
        // is named.
        assert_eq!(
            jailed_error("", &[("BATON_MODELS__0__NAME", "gpt")]),
            "BATON_MODELS__0__NAME: models: expected a sequence, found a table"
        );
    }

    // 3. One path form: figment's `models.0.provider` reads `models[0].provider`.
    #[test]
    fn array_entries_are_named_by_index_in_brackets() {
        assert_eq!(
            file_error("[[models]]\nname = \"x\"\n"),
            "baton.toml: models[0].provider: required, but not set"
        );
        assert_eq!(
            file_error(
                "[[models]]\nname = \"a\"\nprovider = \"echo\"\n\
                 [[models]]\nname = \"b\"\nprovider = \"bard\"\n"
            ),
            "baton.toml: models[1].provider: unknown value \"bard\": expected openai, echo, scripted or anthropic"
        );
        assert_eq!(
            file_error(
                "[[models]]\nname = \"a\"\nprovider = \"echo\"\n[models.retry]\nattempts = 2\n"
            ),
            "baton.toml: models[0].retry.attempts: unknown field: expected max_attempts, initial_backoff_ms or max_backoff_ms"
        );
        // [[mcp]] entries are checked as they are parsed.
        assert_eq!(
            file_error("[[mcp]]\nname = \"notes\"\ntransport = \"stdio\"\n"),
            "baton.toml: mcp[0].command: required for transport stdio (server \"notes\")"
        );
    }

    // 4. Enum errors read naturally: no doubled backticks.
    #[test]
    fn enum_errors_list_the_values_plainly() {
        let err = file_error("[store]\ndurability = \"bogus\"\n");
        assert_eq!(
            err,
            "baton.toml: store.durability: unknown value \"bogus\": expected sync or buffered"
        );
        assert!(!err.contains('`'), "{err}");
        assert_eq!(
            file_error("[sessions]\nbusy_policy = \"drop\"\n"),
            "baton.toml: sessions.busy_policy: unknown value \"drop\": expected enqueue or reject"
        );
    }

    // 5. An unset default route is the only route or endpoint; with several,
    //    the error says which key to set.
    #[test]
    fn the_default_route_defaults_to_the_only_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[[models]]\nname = \"gpt\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\n",
        );
        let c = BatonConfig::load_with_env(Some(&p), NO_ENV).unwrap();
        assert_eq!(c.runtime().resolve_default_route().unwrap(), "gpt");
        assert_eq!(
            file_error(
                "[[models]]\nname = \"fast\"\nprovider = \"echo\"\n\
                 [[models]]\nname = \"smart\"\nprovider = \"echo\"\n\
                 [[routes]]\nname = \"chain\"\nendpoints = [\"fast\", \"smart\"]\n"
            ),
            "baton.toml: sessions.default_route: not set, and there are 3 routes and endpoints (fast, smart, chain): set it to the one sessions that name none should use"
        );
    }

    // 6. Gate policies must name their reviewers.
    #[test]
    fn gate_policies_require_reviewers() {
        assert_eq!(
            file_error("[[gates.policies]]\nname = \"pay\"\nkind = \"final_answer\"\n"),
            "baton.toml: gates.policies[0].reviewers: required, but not set"
        );
        // The built-in gates keep their default.
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[gates.explicit]\ntimeout_ms = 1000\n");
        let c = BatonConfig::load_with_env(Some(&p), NO_ENV).unwrap();
        assert_eq!(c.gates.explicit.reviewers, "reviewers");
    }

    #[test]
    fn a_missing_or_unparsable_file_is_named() {
        let err = BatonConfig::load_with_env(Some(Path::new("/nonexistent/baton.toml")), NO_ENV)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/baton.toml does not exist"
        );
        let err = file_error("[sessions\n");
        assert!(err.starts_with("baton.toml: "), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("baton.toml", "[sessions]\nbusy_policy = \"enqueue\"\n")?;
            jail.set_env("BATON_SESSIONS__BUSY_POLICY", "reject");
            jail.set_env("BATON_STORE__DATA_DIR", "/tmp/elsewhere");
            jail.set_env("BATON_SERVER_URL", "http://ignored");
            jail.set_env("BATON_HTTP__LISTEN", "0.0.0.0:9090");
            jail.set_env("BATON_HTTP__ENABLED", "false");
            let c = BatonConfig::load(Some(Path::new("baton.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.http.listen, "0.0.0.0:9090");
            assert!(!c.http.enabled);
            assert_eq!(c.sessions.busy_policy, baton_runtime::BusyPolicy::Reject);
            assert_eq!(c.store.data_dir, PathBuf::from("/tmp/elsewhere"));
            Ok(())
        });
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Config files with known sections and keys holding any value:
        /// loaded or refused with an error, never a panic.
        #[test]
        fn generated_config_files_load_or_fail_cleanly(
            lines in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::strategy::Just("[server]"), proptest::strategy::Just("[http]"),
                        proptest::strategy::Just("[sessions]"), proptest::strategy::Just("[store]"),
                        proptest::strategy::Just("[audit]"), proptest::strategy::Just("[[models]]"),
                        proptest::strategy::Just("[[routes]]"), proptest::strategy::Just("[limits]"),
                        proptest::strategy::Just("[privacy]"), proptest::strategy::Just("[flows]"),
                        proptest::strategy::Just(""),
                    ],
                    proptest::prop_oneof![
                        proptest::strategy::Just("name"), proptest::strategy::Just("listen"),
                        proptest::strategy::Just("provider"), proptest::strategy::Just("endpoints"),
                        proptest::strategy::Just("strategy"), proptest::strategy::Just("max_attempts"),
                        proptest::strategy::Just("timeout_ms"), proptest::strategy::Just("hedge_after_ms"),
                        proptest::strategy::Just("default_route"), proptest::strategy::Just("on_failure"),
                        proptest::strategy::Just("base_url"), proptest::strategy::Just("weights"),
                    ],
                    proptest::prop_oneof![
                        proptest::num::i64::ANY.prop_map(|n| n.to_string()),
                        "\\PC{0,10}".prop_map(|s| format!("{s:?}")),
                        proptest::strategy::Just("true".to_owned()),
                        proptest::strategy::Just("[1, 2, 0]".to_owned()),
                        proptest::strategy::Just("[\"a\", \"b\"]".to_owned()),
                        proptest::strategy::Just("1e400".to_owned()),
                        proptest::strategy::Just("-0.5".to_owned()),
                        "[ -~]{0,8}",
                    ],
                ),
                0..10,
            ),
        ) {
            let text: String = lines
                .iter()
                .map(|(section, key, value)| format!("{section}\n{key} = {value}\n"))
                .collect();
            let dir = tempfile::tempdir().unwrap();
            let p = write(dir.path(), &text);
            let _ = BatonConfig::load_with_env(Some(&p), NO_ENV);
        }
    }
}
