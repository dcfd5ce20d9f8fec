//! Configuration of one MCP server.
//!
//! TOML shape (one table per server):
//!
//! ```toml
//! [[mcp]]
//! name = "notes"                 # tools appear as "notes.<tool>"
//! transport = "stdio"
//! command = "notes-mcp"
//! args = ["--dir", "/var/notes"]
//! env = { NOTES_TOKEN = "..." }  # values are secrets: never logged
//! pass_env = ["HOME"]            # names passed through from Baton's environment
//! cwd = "/var/notes"
//! timeout_ms = 30000             # per tool call
//! idempotent_tools = ["search"]
//! restart = { initial_backoff_ms = 200, max_backoff_ms = 10000 }
//!
//! [[mcp]]
//! name = "search"
//! transport = "http"             # streamable HTTP
//! url = "https://mcp.example.com/mcp"
//! ```

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use secrecy::SecretString;
use serde::Deserialize;

use crate::{Error, Result};

const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// One MCP server whose tools Baton exposes as `<name>.<tool>`.
///
/// Deserializes from the flat TOML shape in the [module docs](self): the
/// transport-specific keys are checked against `transport` while parsing,
/// and unknown keys are rejected.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawMcpServerConfig")]
pub struct McpServerConfig {
    /// Namespace of the server's tools: they appear as `<name>.<tool>`.
    pub name: String,
    pub transport: McpTransport,
    /// Longest a single tool call may take.
    pub timeout_ms: u64,
    /// Tools to treat as idempotent in addition to those whose MCP
    /// annotations say `idempotentHint: true`. Names without the namespace.
    pub idempotent_tools: Vec<String>,
    pub restart: RestartConfig,
}

/// How Baton reaches the server.
#[derive(Clone)]
pub enum McpTransport {
    /// Spawn `command` and speak MCP over its stdin/stdout; its stderr is logged.
    Stdio {
        command: String,
        args: Vec<String>,
        /// The child's environment besides `pass_env`. Values are secrets.
        env: BTreeMap<String, SecretString>,
        /// Names of Baton's own environment variables the child also gets.
        /// The child starts from an empty environment: nothing else of
        /// Baton's (provider keys included) reaches it.
        pass_env: Vec<String>,
        cwd: Option<PathBuf>,
    },
    /// Streamable HTTP at `url`.
    Http { url: String },
}

impl fmt::Debug for McpTransport {
    // Hand-written so env values never reach a log line; only their names do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            McpTransport::Stdio {
                command,
                args,
                env,
                pass_env,
                cwd,
            } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", &env.keys().collect::<Vec<_>>())
                .field("pass_env", pass_env)
                .field("cwd", cwd)
                .finish(),
            McpTransport::Http { url } => f.debug_struct("Http").field("url", url).finish(),
        }
    }
}

/// Backoff between reconnection attempts: doubles from `initial_backoff_ms`
/// up to `max_backoff_ms`, and starts over once a connection has stayed up
/// for `max_backoff_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            initial_backoff_ms: 200,
            max_backoff_ms: 10_000,
        }
    }
}

impl RestartConfig {
    pub(crate) fn initial(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }

    pub(crate) fn max(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }
}

impl McpServerConfig {
    /// A stdio server with default timeout, idempotency and restart settings.
    pub fn stdio(name: impl Into<String>, command: impl Into<String>, args: Vec<String>) -> Self {
        Self::with_transport(
            name,
            McpTransport::Stdio {
                command: command.into(),
                args,
                env: BTreeMap::new(),
                pass_env: Vec::new(),
                cwd: None,
            },
        )
    }

    /// A streamable HTTP server with default settings.
    pub fn http(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self::with_transport(name, McpTransport::Http { url: url.into() })
    }

    fn with_transport(name: impl Into<String>, transport: McpTransport) -> Self {
        McpServerConfig {
            name: name.into(),
            transport,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            idempotent_tools: Vec::new(),
            restart: RestartConfig::default(),
        }
    }

    /// Per-call timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks every field; the error names the first bad one, as
    /// `<field>: <reason> (server "<name>")` ([`Error::at_index`] places it
    /// in `[[mcp]]`).
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &'static str, reason: &str| Error::InvalidConfig {
            index: None,
            server: self.name.clone(),
            field,
            reason: reason.to_owned(),
        };
        if self.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "name",
                "may contain only ascii letters, digits, '_' and '-'",
            ));
        }
        match &self.transport {
            McpTransport::Stdio {
                command,
                env,
                pass_env,
                ..
            } => {
                if command.trim().is_empty() {
                    return Err(invalid("command", "must not be empty"));
                }
                let bad_name = |k: &String| k.is_empty() || k.contains('=') || k.contains('\0');
                if env.keys().any(bad_name) {
                    return Err(invalid(
                        "env",
                        "variable names must be non-empty and contain no '=' or NUL",
                    ));
                }
                if pass_env.iter().any(bad_name) {
                    return Err(invalid(
                        "pass_env",
                        "variable names must be non-empty and contain no '=' or NUL",
                    ));
                }
            }
            McpTransport::Http { url } => {
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                match rest {
                    Some(host) if !host.is_empty() && !host.starts_with('/') => {}
                    _ => return Err(invalid("url", "must be an http:// or https:// url")),
                }
            }
        }
        if self.timeout_ms == 0 {
            return Err(invalid("timeout_ms", "must be greater than 0"));
        }
        if self.idempotent_tools.iter().any(|t| t.is_empty()) {
            return Err(invalid("idempotent_tools", "names must not be empty"));
        }
        if self.restart.initial_backoff_ms == 0 {
            return Err(invalid(
                "restart.initial_backoff_ms",
                "must be greater than 0",
            ));
        }
        if self.restart.max_backoff_ms < self.restart.initial_backoff_ms {
            return Err(invalid(
                "restart.max_backoff_ms",
                "must be at least restart.initial_backoff_ms",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TransportKind {
    Stdio,
    Http,
}

/// The flat on-disk shape; [`McpServerConfig`] is built from it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcpServerConfig {
    name: String,
    transport: TransportKind,
    command: Option<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, SecretString>>,
    pass_env: Option<Vec<String>>,
    cwd: Option<PathBuf>,
    url: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    idempotent_tools: Vec<String>,
    #[serde(default)]
    restart: RestartConfig,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl TryFrom<RawMcpServerConfig> for McpServerConfig {
    type Error = Error;

    fn try_from(raw: RawMcpServerConfig) -> Result<Self> {
        let name = raw.name;
        let not_for = |field: &'static str, transport: &str| Error::InvalidConfig {
            index: None,
            server: name.clone(),
            field,
            reason: format!("not allowed for transport {transport}"),
        };
        let transport = match raw.transport {
            TransportKind::Stdio => {
                if raw.url.is_some() {
                    return Err(not_for("url", "stdio"));
                }
                let Some(command) = raw.command else {
                    return Err(Error::InvalidConfig {
                        index: None,
                        server: name,
                        field: "command",
                        reason: "required for transport stdio".to_owned(),
                    });
                };
                McpTransport::Stdio {
                    command,
                    args: raw.args.unwrap_or_default(),
                    env: raw.env.unwrap_or_default(),
                    pass_env: raw.pass_env.unwrap_or_default(),
                    cwd: raw.cwd,
                }
            }
            TransportKind::Http => {
                for (field, present) in [
                    ("command", raw.command.is_some()),
                    ("args", raw.args.is_some()),
                    ("env", raw.env.is_some()),
                    ("pass_env", raw.pass_env.is_some()),
                    ("cwd", raw.cwd.is_some()),
                ] {
                    if present {
                        return Err(not_for(field, "http"));
                    }
                }
                let Some(url) = raw.url else {
                    return Err(Error::InvalidConfig {
                        index: None,
                        server: name,
                        field: "url",
                        reason: "required for transport http".to_owned(),
                    });
                };
                McpTransport::Http { url }
            }
        };
        let config = McpServerConfig {
            name,
            transport,
            timeout_ms: raw.timeout_ms,
            idempotent_tools: raw.idempotent_tools,
            restart: raw.restart,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn parse(toml_text: &str) -> std::result::Result<McpServerConfig, String> {
        toml::from_str::<McpServerConfig>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn stdio_with_defaults() {
        let config = parse(
            r#"
            name = "notes"
            transport = "stdio"
            command = "notes-mcp"
            args = ["--dir", "/tmp"]
            env = { NOTES_TOKEN = "hunter2" }
            "#,
        )
        .unwrap();
        assert_eq!(config.name, "notes");
        assert_eq!(config.timeout_ms, 30_000);
        assert_eq!(config.restart, RestartConfig::default());
        assert!(config.idempotent_tools.is_empty());
        let McpTransport::Stdio {
            command, args, env, ..
        } = &config.transport
        else {
            panic!("expected stdio, got {:?}", config.transport);
        };
        assert_eq!(command, "notes-mcp");
        assert_eq!(args, &["--dir", "/tmp"]);
        assert_eq!(env["NOTES_TOKEN"].expose_secret(), "hunter2");
        let debug = format!("{config:?}");
        assert!(debug.contains("NOTES_TOKEN"), "{debug}");
        assert!(!debug.contains("hunter2"), "secret leaked: {debug}");
    }

    #[test]
    fn http_with_overrides() {
        let config = parse(
            r#"
            name = "search"
            transport = "http"
            url = "http://127.0.0.1:8080/mcp"
            timeout_ms = 500
            idempotent_tools = ["find"]
            restart = { initial_backoff_ms = 50, max_backoff_ms = 1000 }
            "#,
        )
        .unwrap();
        assert!(
            matches!(&config.transport, McpTransport::Http { url } if url == "http://127.0.0.1:8080/mcp")
        );
        assert_eq!(config.timeout(), Duration::from_millis(500));
        assert_eq!(config.idempotent_tools, ["find"]);
        assert_eq!(config.restart.initial(), Duration::from_millis(50));
        assert_eq!(config.restart.max(), Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "name = \"notes\"\ntransport = \"stdio\"",
                "command: required for transport stdio",
            ),
            (
                "name = \"web\"\ntransport = \"http\"",
                "url: required for transport http",
            ),
            (
                "name = \"web\"\ntransport = \"http\"\nurl = \"http://x\"\ncommand = \"y\"",
                "command: not allowed for transport http",
            ),
            (
                "name = \"n\"\ntransport = \"stdio\"\ncommand = \"c\"\nurl = \"http://x\"",
                "url: not allowed for transport stdio",
            ),
            (
                "name = \"web\"\ntransport = \"http\"\nurl = \"ftp://x\"",
                "url: must be an http:// or https:// url",
            ),
            (
                "name = \"a.b\"\ntransport = \"stdio\"\ncommand = \"c\"",
                "name: may contain only",
            ),
            (
                "name = \"n\"\ntransport = \"stdio\"\ncommand = \"c\"\ntimeout_ms = 0",
                "timeout_ms: must be greater than 0",
            ),
            (
                "name = \"n\"\ntransport = \"stdio\"\ncommand = \"c\"\nrestart = { initial_backoff_ms = 500, max_backoff_ms = 100 }",
                "restart.max_backoff_ms: must be at least",
            ),
            (
                "name = \"n\"\ntransport = \"stdio\"\ncommand = \"c\"\ncomand = \"typo\"",
                "unknown field `comand`",
            ),
            (
                "name = \"n\"\ntransport = \"stdio\"\ncommand = \"c\"\nrestart = { initial = 1 }",
                "unknown field `initial`",
            ),
            (
                "name = \"n\"\ntransport = \"websocket\"\ncommand = \"c\"",
                "unknown variant `websocket`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn validate_checks_programmatic_configs() {
        assert!(
            McpServerConfig::stdio("ok", "cmd", vec![])
                .validate()
                .is_ok()
        );
        let err = McpServerConfig::stdio("ok", " ", vec![])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "command: must not be empty (server \"ok\")"
        );
        let err = McpServerConfig::http("", "http://x")
            .validate()
            .unwrap_err();
        assert_eq!(err.to_string(), "name: must not be empty");
        let mut config = McpServerConfig::stdio("ok", "cmd", vec![]);
        config.restart.initial_backoff_ms = 0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "restart.initial_backoff_ms: must be greater than 0 (server \"ok\")"
        );
    }
}
