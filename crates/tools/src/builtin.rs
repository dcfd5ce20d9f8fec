//! Built-in tools: `current_time`, `calculator`, `http_get` and `http_post`.
//! Each is off unless enabled in [`BuiltinToolsConfig`]; the HTTP tools only
//! reach the hosts their config allows.

use std::sync::Arc;
use std::time::Duration;

use evalexpr::{ContextWithMutableVariables, DefaultNumericTypes, HashMapContext};
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Error, Result, Tool, ToolError, ToolSpec};

/// Where the built-in tools' config sits in Baton's config, for error messages.
const CONFIG_PATH: &str = "tools.builtin";
const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const MAX_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const MAX_TIMEOUT_MS: u64 = 600_000;
/// Longest calculator expression accepted.
const MAX_EXPRESSION_CHARS: usize = 1_000;
/// Deepest parenthesis nesting accepted (the parser recurses).
const MAX_EXPRESSION_NESTING: usize = 64;
const MAX_REDIRECTS: usize = 5;

/// `[tools.builtin]`: which built-in tools are enabled.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinToolsConfig {
    pub current_time: bool,
    pub calculator: bool,
    pub http_get: Option<HttpToolConfig>,
    pub http_post: Option<HttpToolConfig>,
}

/// Limits of one HTTP tool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolConfig {
    /// Hosts the tool may reach: `host` (any port) or `host:port`. Required, non-empty.
    pub allowed_hosts: Vec<String>,
    /// Response bodies are cut at this many bytes (and flagged truncated).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// The whole request, body included, must finish within this many milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_max_response_bytes() -> usize {
    DEFAULT_MAX_RESPONSE_BYTES
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl BuiltinToolsConfig {
    /// Check every value; errors name the field (`tools.builtin.http_get.allowed_hosts: ...`).
    pub fn validate(&self) -> Result<()> {
        for (name, http) in self.http_tools() {
            http.parse(name)?;
        }
        Ok(())
    }

    /// The enabled tools, ready to register.
    pub fn tools(&self) -> Result<Vec<Arc<dyn Tool>>> {
        self.validate()?;
        let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
        if self.current_time {
            tools.push(Arc::new(CurrentTime::new()));
        }
        if self.calculator {
            tools.push(Arc::new(Calculator::new()));
        }
        for (name, http) in self.http_tools() {
            let method = if name == "http_get" {
                HttpMethod::Get
            } else {
                HttpMethod::Post
            };
            tools.push(Arc::new(HttpTool::new(method, http.parse(name)?)?));
        }
        Ok(tools)
    }

    fn http_tools(&self) -> impl Iterator<Item = (&'static str, &HttpToolConfig)> {
        [("http_get", &self.http_get), ("http_post", &self.http_post)]
            .into_iter()
            .filter_map(|(name, config)| config.as_ref().map(|c| (name, c)))
    }
}

impl HttpToolConfig {
    fn parse(&self, tool: &str) -> Result<HttpLimits> {
        let field = |name: &str| format!("{CONFIG_PATH}.{tool}.{name}");
        let config_error = |name: &str, reason: String| Error::Config {
            field: field(name),
            reason,
        };
        if self.allowed_hosts.is_empty() {
            return Err(config_error(
                "allowed_hosts",
                "must list at least one host".to_owned(),
            ));
        }
        let allowed_hosts = self
            .allowed_hosts
            .iter()
            .map(|entry| {
                AllowedHost::parse(entry).map_err(|reason| {
                    config_error(
                        "allowed_hosts",
                        format!("invalid entry {entry:?}: {reason}"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if self.max_response_bytes == 0 || self.max_response_bytes > MAX_MAX_RESPONSE_BYTES {
            return Err(config_error(
                "max_response_bytes",
                format!(
                    "must be between 1 and {MAX_MAX_RESPONSE_BYTES}, got {}",
                    self.max_response_bytes
                ),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(config_error(
                "timeout_ms",
                format!(
                    "must be between 1 and {MAX_TIMEOUT_MS}, got {}",
                    self.timeout_ms
                ),
            ));
        }
        Ok(HttpLimits {
            allowed_hosts,
            max_response_bytes: self.max_response_bytes,
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

fn spec(name: &str, description: &str, parameters: Value, idempotent: bool) -> ToolSpec {
    ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters,
        output_schema: None,
        idempotent,
        timeout: Duration::from_secs(5),
    }
}

fn string_arg<'a>(arguments: &'a Value, name: &str) -> Result<&'a str, ToolError> {
    arguments
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::Failed(format!("argument {name:?} must be a string")))
}

fn optional_string_arg<'a>(arguments: &'a Value, name: &str) -> Result<Option<&'a str>, ToolError> {
    match arguments.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string_arg(arguments, name).map(Some),
    }
}

// ---------------------------------------------------------------- current_time

/// `current_time {timezone?}`: the current time as RFC 3339 and Unix seconds.
#[derive(Debug)]
pub struct CurrentTime {
    spec: ToolSpec,
}

impl CurrentTime {
    pub fn new() -> Self {
        Self {
            spec: spec(
                "current_time",
                "Get the current date and time: RFC 3339 in UTC and, when a time zone is \
                 given, in that zone, plus Unix seconds.",
                json!({
                    "type": "object",
                    "properties": {
                        "timezone": {
                            "type": "string",
                            "description": "IANA time zone name such as \"Europe/Paris\" or \"UTC\"; defaults to UTC"
                        }
                    },
                    "additionalProperties": false
                }),
                true,
            ),
        }
    }
}

impl Default for CurrentTime {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Tool for CurrentTime {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value) -> Result<String, ToolError> {
        let zone_name = optional_string_arg(&arguments, "timezone")?.unwrap_or("UTC");
        let zone = jiff::tz::TimeZone::get(zone_name)
            .map_err(|_| ToolError::Failed(format!("unknown time zone {zone_name:?}")))?;
        let now = jiff::Timestamp::now();
        let now = jiff::Timestamp::from_second(now.as_second())
            .map_err(|e| ToolError::Failed(format!("cannot read the clock: {e}")))?;
        let offset = zone.to_offset(now);
        Ok(json!({
            "utc": now.to_string(),
            "unix_seconds": now.as_second(),
            "timezone": zone_name,
            "local": now.display_with_offset(offset).to_string(),
            "utc_offset_seconds": offset.seconds(),
        })
        .to_string())
    }
}

// ---------------------------------------------------------------- calculator

/// `calculator {expression}`: arithmetic via `evalexpr`, without variables.
#[derive(Debug)]
pub struct Calculator {
    spec: ToolSpec,
}

impl Calculator {
    pub fn new() -> Self {
        Self {
            spec: spec(
                "calculator",
                "Evaluate an arithmetic expression and return the number. Supports + - * / % ^ \
                 (power), parentheses, comparisons, the constants pi and e, and functions such as \
                 math::sqrt, math::ln, math::sin, floor, round, min, max, abs. Integer arithmetic \
                 is exact and / on two integers truncates (7 / 2 = 3); write 7.0 / 2 for 3.5.",
                json!({
                    "type": "object",
                    "properties": {
                        "expression": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_EXPRESSION_CHARS,
                            "description": "e.g. \"(2 + 3) * 4.5\" or \"math::sqrt(2)\""
                        }
                    },
                    "required": ["expression"],
                    "additionalProperties": false
                }),
                true,
            ),
        }
    }
}

impl Default for Calculator {
    fn default() -> Self {
        Self::new()
    }
}

/// Evaluate `expression` as pure arithmetic: the context is read-only, so
/// assignments fail, and only the constants `pi` and `e` are defined.
pub(crate) fn evaluate(expression: &str) -> Result<Value, ToolError> {
    if expression.chars().count() > MAX_EXPRESSION_CHARS {
        return Err(ToolError::Failed(format!(
            "expression is longer than {MAX_EXPRESSION_CHARS} characters"
        )));
    }
    let mut depth = 0usize;
    for c in expression.chars() {
        match c {
            '(' => {
                depth += 1;
                if depth > MAX_EXPRESSION_NESTING {
                    return Err(ToolError::Failed(format!(
                        "expression nests parentheses deeper than {MAX_EXPRESSION_NESTING}"
                    )));
                }
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let mut context = HashMapContext::<DefaultNumericTypes>::new();
    for (name, value) in [("pi", std::f64::consts::PI), ("e", std::f64::consts::E)] {
        context
            .set_value(name.to_owned(), evalexpr::Value::Float(value))
            .map_err(|e| ToolError::Failed(format!("calculator setup: {e}")))?;
    }
    let value = evalexpr::eval_with_context(expression, &context)
        .map_err(|e| ToolError::Failed(format!("cannot evaluate expression: {e}")))?;
    match value {
        evalexpr::Value::Int(i) => Ok(json!(i)),
        evalexpr::Value::Float(f) if f.is_finite() => Ok(json!(f)),
        evalexpr::Value::Float(f) => Err(ToolError::Failed(format!(
            "the result is not a finite number: {f}"
        ))),
        other => Err(ToolError::Failed(format!(
            "the expression evaluates to {other}, not a number"
        ))),
    }
}

#[async_trait::async_trait]
impl Tool for Calculator {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value) -> Result<String, ToolError> {
        let expression = string_arg(&arguments, "expression")?;
        evaluate(expression).map(|v| v.to_string())
    }
}

// ---------------------------------------------------------------- http

#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    /// Normalised as `Url::host_str` gives it: lowercase, IPv6 in brackets.
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

impl AllowedHost {
    fn parse(entry: &str) -> std::result::Result<Self, String> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if entry.contains("://") {
            return Err("give a host or host:port, without a scheme".to_owned());
        }
        if entry.contains(['/', '@', '?', '#', '*']) || entry.chars().any(char::is_whitespace) {
            return Err("give a host or host:port, without path, user or wildcard".to_owned());
        }
        let (host, port) = match entry.rsplit_once(':') {
            // `host:port` or `[v6]:port`; a bare IPv6 address has several colons and no brackets.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("invalid port {port:?}"))?;
                (host, Some(port))
            }
            _ => (entry, None),
        };
        let url = Url::parse(&format!("http://{host}/")).map_err(|e| e.to_string())?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| "missing host".to_owned())?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    fn allows(&self, url: &Url) -> bool {
        url.host_str() == Some(self.host.as_str())
            && self
                .port
                .is_none_or(|port| url.port_or_known_default() == Some(port))
    }
}

#[derive(Debug, Clone)]
struct HttpLimits {
    allowed_hosts: Vec<AllowedHost>,
    max_response_bytes: usize,
    timeout: Duration,
}

impl HttpLimits {
    fn is_allowed(&self, url: &Url) -> bool {
        self.allowed_hosts.iter().any(|h| h.allows(url))
    }

    /// Parse a URL the model gave and refuse it (before any connection) unless
    /// it is http(s) to an allowed host.
    fn check_url(&self, raw: &str) -> Result<Url, ToolError> {
        let url = Url::parse(raw).map_err(|e| ToolError::Failed(format!("invalid url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ToolError::Failed(format!(
                "url scheme {:?} is not allowed: use http or https",
                url.scheme()
            )));
        }
        if !self.is_allowed(&url) {
            return Err(ToolError::Failed(format!(
                "host {} is not in the allowed hosts",
                host_and_port(&url)
            )));
        }
        Ok(url)
    }
}

fn host_and_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpMethod {
    Get,
    Post,
}

/// `http_get {url, headers?}` and `http_post {url, body, content_type?, headers?}`.
#[derive(Debug)]
pub struct HttpTool {
    spec: ToolSpec,
    method: HttpMethod,
    limits: Arc<HttpLimits>,
    client: reqwest::Client,
}

/// Headers the model may not set: they would change where or how the request
/// is framed rather than what it says.
const FORBIDDEN_HEADERS: &[&str] = &["host", "content-length", "transfer-encoding", "connection"];

impl HttpTool {
    fn new(method: HttpMethod, limits: HttpLimits) -> Result<Self> {
        let limits = Arc::new(limits);
        let redirect_limits = Arc::clone(&limits);
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if redirect_limits.is_allowed(attempt.url()) {
                attempt.follow()
            } else {
                let message = format!(
                    "redirect to host {} is not allowed",
                    host_and_port(attempt.url())
                );
                attempt.error(message)
            }
        });
        let client = reqwest::Client::builder()
            .timeout(limits.timeout)
            .redirect(policy)
            .user_agent(concat!("baton-tools/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config {
                field: CONFIG_PATH.to_owned(),
                reason: format!("cannot build the http client: {e}"),
            })?;
        let hosts: Vec<String> = limits
            .allowed_hosts
            .iter()
            .map(|h| match h.port {
                Some(port) => format!("{}:{port}", h.host),
                None => h.host.clone(),
            })
            .collect();
        let headers_schema = json!({
            "type": "object",
            "description": "extra request headers",
            "additionalProperties": {"type": "string"}
        });
        let (name, description, parameters, idempotent) = match method {
            HttpMethod::Get => (
                "http_get",
                format!(
                    "HTTP GET a URL on one of these hosts: {}. Returns JSON with status, \
                     content_type, body (cut at {} bytes; truncated says so) and the final url.",
                    hosts.join(", "),
                    limits.max_response_bytes
                ),
                json!({
                    "type": "object",
                    "properties": {
                        "url": {"type": "string", "description": "http or https URL"},
                        "headers": headers_schema,
                    },
                    "required": ["url"],
                    "additionalProperties": false
                }),
                true,
            ),
            HttpMethod::Post => (
                "http_post",
                format!(
                    "HTTP POST a body to a URL on one of these hosts: {}. Not retried \
                     automatically. Returns JSON with status, content_type, body (cut at {} \
                     bytes; truncated says so) and the final url.",
                    hosts.join(", "),
                    limits.max_response_bytes
                ),
                json!({
                    "type": "object",
                    "properties": {
                        "url": {"type": "string", "description": "http or https URL"},
                        "body": {"type": "string", "description": "request body"},
                        "content_type": {
                            "type": "string",
                            "description": "defaults to application/json when body is JSON, else text/plain; charset=utf-8"
                        },
                        "headers": headers_schema,
                    },
                    "required": ["url", "body"],
                    "additionalProperties": false
                }),
                false,
            ),
        };
        Ok(Self {
            spec: ToolSpec {
                name: name.to_owned(),
                description,
                parameters,
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {
                        "status": {"type": "integer"},
                        "content_type": {"type": ["string", "null"]},
                        "body": {"type": "string"},
                        "truncated": {"type": "boolean"},
                        "url": {"type": "string"}
                    },
                    "required": ["status", "body", "truncated", "url"]
                })),
                idempotent,
                // The client's own timeout fires first and says more.
                timeout: limits.timeout + Duration::from_secs(1),
            },
            method,
            limits,
            client,
        })
    }

    fn headers(arguments: &Value) -> Result<HeaderMap, ToolError> {
        let mut map = HeaderMap::new();
        let Some(headers) = arguments.get("headers") else {
            return Ok(map);
        };
        let headers = headers
            .as_object()
            .ok_or_else(|| ToolError::Failed("headers must be an object".to_owned()))?;
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ToolError::Failed(format!("invalid header name {name:?}")))?;
            if FORBIDDEN_HEADERS.contains(&header.as_str()) {
                return Err(ToolError::Failed(format!("header {name:?} may not be set")));
            }
            let value = value
                .as_str()
                .and_then(|v| HeaderValue::from_str(v).ok())
                .ok_or_else(|| ToolError::Failed(format!("invalid value for header {name:?}")))?;
            map.append(header, value);
        }
        Ok(map)
    }

    fn request_error(&self, url: &Url, e: &reqwest::Error) -> ToolError {
        if e.is_timeout() {
            return ToolError::Timeout {
                tool: self.spec.name.clone(),
                after: self.limits.timeout,
            };
        }
        let mut message = format!("request to {} failed", host_and_port(url));
        let mut source: Option<&dyn std::error::Error> = Some(e);
        while let Some(err) = source {
            let text = err.to_string();
            if !message.ends_with(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = err.source();
        }
        ToolError::Failed(message)
    }
}

#[async_trait::async_trait]
impl Tool for HttpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value) -> Result<String, ToolError> {
        let url = self.limits.check_url(string_arg(&arguments, "url")?)?;
        let headers = Self::headers(&arguments)?;
        let request = match self.method {
            HttpMethod::Get => self.client.get(url.clone()),
            HttpMethod::Post => {
                let body = string_arg(&arguments, "body")?.to_owned();
                let content_type = match optional_string_arg(&arguments, "content_type")? {
                    Some(ct) => ct.to_owned(),
                    None if serde_json::from_str::<Value>(&body).is_ok() => {
                        "application/json".to_owned()
                    }
                    None => "text/plain; charset=utf-8".to_owned(),
                };
                let content_type = HeaderValue::from_str(&content_type).map_err(|_| {
                    ToolError::Failed(format!("invalid content_type {content_type:?}"))
                })?;
                self.client
                    .post(url.clone())
                    .header(CONTENT_TYPE, content_type)
                    .body(body)
            }
        };
        let mut response = request
            .headers(headers)
            .send()
            .await
            .map_err(|e| self.request_error(&url, &e))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let final_url = response.url().to_string();
        let limit = self.limits.max_response_bytes;
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.request_error(&url, &e))?
        {
            let room = limit - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(json!({
            "status": status,
            "content_type": content_type,
            "body": String::from_utf8_lossy(&body),
            "truncated": truncated,
            "url": final_url,
        })
        .to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::HeaderMap as AxumHeaders;
    use axum::routing::{get, post};

    use super::*;
    use crate::ToolRegistry;

    fn config(json: Value) -> std::result::Result<BuiltinToolsConfig, serde_json::Error> {
        serde_json::from_value(json)
    }

    fn http(hosts: &[&str]) -> HttpToolConfig {
        HttpToolConfig {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    fn config_err(c: &BuiltinToolsConfig) -> String {
        c.validate().unwrap_err().to_string()
    }

    // ------------------------------------------------------------ config

    #[test]
    fn everything_is_off_by_default() {
        let c = config(json!({})).unwrap();
        c.validate().unwrap();
        assert!(c.tools().unwrap().is_empty());
    }

    #[test]
    fn config_defaults_and_enabled_tools() {
        let c = config(json!({
            "current_time": true,
            "calculator": true,
            "http_get": {"allowed_hosts": ["example.com"]},
            "http_post": {"allowed_hosts": ["hooks.example.com:8443"], "timeout_ms": 500}
        }))
        .unwrap();
        let get = c.http_get.as_ref().unwrap();
        assert_eq!(get.max_response_bytes, 1024 * 1024);
        assert_eq!(get.timeout_ms, 10_000);
        let tools = c.tools().unwrap();
        let registry = ToolRegistry::new();
        for tool in tools {
            registry.register(tool).unwrap();
        }
        let specs = registry.specs();
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["calculator", "current_time", "http_get", "http_post"]
        );
        let by_name = |n: &str| specs.iter().find(|s| s.name == n).unwrap().clone();
        assert!(by_name("calculator").idempotent);
        assert!(by_name("current_time").idempotent);
        assert!(by_name("http_get").idempotent);
        assert!(!by_name("http_post").idempotent);
        assert_eq!(by_name("http_post").timeout, Duration::from_millis(1_500));
        assert!(
            by_name("http_post")
                .description
                .contains("hooks.example.com:8443")
        );
        for spec in &specs {
            assert_eq!(
                spec.parameters["additionalProperties"],
                json!(false),
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn config_rejects_unknown_fields_naming_them() {
        let err = config(json!({"calculater": true})).unwrap_err().to_string();
        assert!(err.contains("unknown field `calculater`"), "{err}");
        let err = config(json!({"http_get": {"allowed_hosts": ["a"], "max_bytes": 1}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `max_bytes`"), "{err}");
        let err = config(json!({"http_get": {}})).unwrap_err().to_string();
        assert!(err.contains("missing field `allowed_hosts`"), "{err}");
    }

    #[test]
    fn config_validation_names_the_field() {
        let mut c = BuiltinToolsConfig {
            http_get: Some(http(&[])),
            ..Default::default()
        };
        assert_eq!(
            config_err(&c),
            "tools.builtin.http_get.allowed_hosts: must list at least one host"
        );
        assert!(c.tools().is_err());

        c.http_get = None;
        c.http_post = Some(http(&["https://example.com"]));
        let err = config_err(&c);
        assert!(
            err.starts_with(
                "tools.builtin.http_post.allowed_hosts: invalid entry \"https://example.com\""
            ),
            "{err}"
        );
        for bad in [
            "",
            "example.com/path",
            "*.example.com",
            "example.com:0",
            "example.com:http",
            "user@example.com",
        ] {
            c.http_post = Some(http(&["ok.example.com", bad]));
            let err = config_err(&c);
            assert!(
                err.starts_with("tools.builtin.http_post.allowed_hosts: invalid entry"),
                "{bad:?}: {err}"
            );
        }

        let mut h = http(&["example.com"]);
        h.max_response_bytes = 0;
        c.http_post = Some(h.clone());
        assert!(
            config_err(&c)
                .starts_with("tools.builtin.http_post.max_response_bytes: must be between 1 and")
        );
        h.max_response_bytes = 10;
        h.timeout_ms = 0;
        c.http_post = Some(h);
        assert!(
            config_err(&c).starts_with("tools.builtin.http_post.timeout_ms: must be between 1 and")
        );
    }

    #[test]
    fn allowed_host_entries() {
        let h = AllowedHost::parse("Example.COM").unwrap();
        assert_eq!(
            h,
            AllowedHost {
                host: "example.com".into(),
                port: None
            }
        );
        let h = AllowedHost::parse("127.0.0.1:8080").unwrap();
        assert_eq!(
            h,
            AllowedHost {
                host: "127.0.0.1".into(),
                port: Some(8080)
            }
        );
        let h = AllowedHost::parse("[::1]:80").unwrap();
        assert_eq!(
            h,
            AllowedHost {
                host: "[::1]".into(),
                port: Some(80)
            }
        );
        let h = AllowedHost::parse("[::1]").unwrap();
        assert_eq!(
            h,
            AllowedHost {
                host: "[::1]".into(),
                port: None
            }
        );

        let limits = HttpLimits {
            allowed_hosts: vec![
                AllowedHost::parse("example.com").unwrap(),
                AllowedHost::parse("api.example.com:443").unwrap(),
            ],
            max_response_bytes: 10,
            timeout: Duration::from_secs(1),
        };
        for ok in [
            "http://example.com/x",
            "https://EXAMPLE.com:8443/",
            "https://api.example.com/v1",
            "http://api.example.com:443/",
        ] {
            limits.check_url(ok).unwrap();
        }
        for (bad, why) in [
            (
                "http://evil.com/",
                "host evil.com is not in the allowed hosts",
            ),
            (
                "http://example.com.evil.com/",
                "host example.com.evil.com is not",
            ),
            ("http://api.example.com/", "host api.example.com is not"),
            (
                "https://api.example.com:8443/",
                "host api.example.com:8443 is not",
            ),
            ("ftp://example.com/", "url scheme \"ftp\" is not allowed"),
            ("file:///etc/passwd", "url scheme \"file\" is not allowed"),
            ("not a url", "invalid url"),
        ] {
            let err = limits.check_url(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    // ------------------------------------------------------------ calculator

    async fn calc(expression: &str) -> Result<String, ToolError> {
        Calculator::new()
            .call(json!({"expression": expression}))
            .await
    }

    #[tokio::test]
    async fn calculator_does_math() {
        assert_eq!(calc("1 + 2 * 3").await.unwrap(), "7");
        assert_eq!(calc("(1 + 2) * 3").await.unwrap(), "9");
        assert_eq!(calc("7.0 / 2").await.unwrap(), "3.5");
        assert_eq!(calc("2 ^ 10").await.unwrap(), "1024.0");
        assert_eq!(calc("math::sqrt(16)").await.unwrap(), "4.0");
        assert_eq!(calc("-5 % 3").await.unwrap(), "-2");
        let pi: f64 = calc("pi").await.unwrap().parse().unwrap();
        assert!((pi - std::f64::consts::PI).abs() < 1e-12);
    }

    #[tokio::test]
    async fn calculator_errors() {
        let err = calc("1 +").await.unwrap_err();
        assert!(
            matches!(&err, ToolError::Failed(m) if m.starts_with("cannot evaluate expression: ")),
            "{err:?}"
        );
        let err = calc("1 / 0").await.unwrap_err().to_string();
        assert!(err.contains("cannot evaluate expression"), "{err}");
        // No variables, no assignment side effects.
        let err = calc("x = 5").await.unwrap_err().to_string();
        assert!(err.contains("cannot evaluate expression"), "{err}");
        let err = calc("x + 1").await.unwrap_err().to_string();
        assert!(err.contains("cannot evaluate expression"), "{err}");
        let err = calc("\"abc\"").await.unwrap_err().to_string();
        assert!(err.contains("not a number"), "{err}");
        let err = calc("1.0 / 0").await.unwrap_err().to_string();
        assert!(err.contains("not a finite number"), "{err}");
        let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        let err = calc(&deep).await.unwrap_err().to_string();
        assert!(err.contains("nests parentheses deeper than 64"), "{err}");
        let err = Calculator::new()
            .call(json!({}))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"expression\" must be a string"), "{err}");
    }

    #[test]
    fn calculator_schema_rejects_bad_arguments() {
        let registry = ToolRegistry::new();
        registry.register(Arc::new(Calculator::new())).unwrap();
        registry
            .validate("calculator", r#"{"expression": "1+1"}"#)
            .unwrap();
        assert!(registry.validate("calculator", r#"{}"#).is_err());
        assert!(
            registry
                .validate("calculator", r#"{"expression": 1}"#)
                .is_err()
        );
        assert!(
            registry
                .validate("calculator", r#"{"expression": "1", "x": 1}"#)
                .is_err()
        );
        let long = format!(
            r#"{{"expression": "{}"}}"#,
            "1".repeat(MAX_EXPRESSION_CHARS + 1)
        );
        assert!(registry.validate("calculator", &long).is_err());
    }

    // ------------------------------------------------------------ current_time

    #[tokio::test]
    async fn current_time_in_utc() {
        let before = jiff::Timestamp::now().as_second();
        let out: Value =
            serde_json::from_str(&CurrentTime::new().call(json!({})).await.unwrap()).unwrap();
        let after = jiff::Timestamp::now().as_second();
        let unix = out["unix_seconds"].as_i64().unwrap();
        assert!(before <= unix && unix <= after);
        let utc = out["utc"].as_str().unwrap();
        assert!(utc.ends_with('Z'), "{utc}");
        let parsed: jiff::Timestamp = utc.parse().unwrap();
        assert_eq!(parsed.as_second(), unix);
        assert_eq!(out["timezone"], "UTC");
        assert_eq!(out["utc_offset_seconds"], 0);
    }

    #[tokio::test]
    async fn current_time_in_a_zone() {
        let out: Value = serde_json::from_str(
            &CurrentTime::new()
                .call(json!({"timezone": "Asia/Kolkata"}))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(out["utc_offset_seconds"], 5 * 3600 + 1800);
        let local = out["local"].as_str().unwrap();
        assert!(local.ends_with("+05:30"), "{local}");
        let parsed: jiff::Timestamp = local.parse().unwrap();
        assert_eq!(parsed.as_second(), out["unix_seconds"].as_i64().unwrap());

        let err = CurrentTime::new()
            .call(json!({"timezone": "Mars/Olympus"}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ToolError::Failed("unknown time zone \"Mars/Olympus\"".into())
        );
    }

    // ------------------------------------------------------------ http

    struct Server {
        addr: SocketAddr,
        hits: Arc<AtomicUsize>,
    }

    async fn server() -> Server {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = |hits: &Arc<AtomicUsize>| {
            let hits = Arc::clone(hits);
            move || {
                hits.fetch_add(1, Ordering::SeqCst);
            }
        };
        let (h1, h2, h3, h4, h5) = (
            counted(&hits),
            counted(&hits),
            counted(&hits),
            counted(&hits),
            counted(&hits),
        );
        let app = Router::new()
            .route(
                "/hello",
                get(move |headers: AxumHeaders| async move {
                    h1();
                    let who = headers
                        .get("x-who")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("world")
                        .to_owned();
                    ([("content-type", "text/plain")], format!("hello {who}"))
                }),
            )
            .route(
                "/big",
                get(move || async move {
                    h2();
                    "x".repeat(10_000)
                }),
            )
            .route(
                "/slow",
                get(move || async move {
                    h3();
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/hook",
                post(move |headers: AxumHeaders, body: String| async move {
                    h4();
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    (axum::http::StatusCode::CREATED, format!("{ct}|{body}"))
                }),
            )
            .route(
                "/redirect-away",
                get(move || async move {
                    h5();
                    (
                        axum::http::StatusCode::FOUND,
                        [("location", "http://localhost:1/elsewhere")],
                        "",
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server { addr, hits }
    }

    fn http_tool(method: HttpMethod, hosts: &[String], max: usize, timeout_ms: u64) -> HttpTool {
        let config = HttpToolConfig {
            allowed_hosts: hosts.to_vec(),
            max_response_bytes: max,
            timeout_ms,
        };
        HttpTool::new(method, config.parse("test").unwrap()).unwrap()
    }

    fn parse(out: &str) -> Value {
        serde_json::from_str(out).unwrap()
    }

    #[tokio::test]
    async fn http_get_an_allowed_host() {
        let s = server().await;
        let tool = http_tool(HttpMethod::Get, &[s.addr.to_string()], 1024, 5_000);
        let url = format!("http://{}/hello", s.addr);
        let out = parse(
            &tool
                .call(json!({"url": url, "headers": {"X-Who": "baton"}}))
                .await
                .unwrap(),
        );
        assert_eq!(out["status"], 200);
        assert_eq!(out["body"], "hello baton");
        assert_eq!(out["content_type"], "text/plain");
        assert_eq!(out["truncated"], false);
        assert_eq!(out["url"], url);
        let out = parse(
            &tool
                .call(json!({"url": format!("http://{}/missing", s.addr)}))
                .await
                .unwrap(),
        );
        assert_eq!(out["status"], 404);
        assert_eq!(s.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn http_get_refuses_other_hosts_and_ports_without_connecting() {
        let s = server().await;
        // Allowed: 127.0.0.1 on some other port only.
        let other_port = if s.addr.port() == 65535 {
            65534
        } else {
            s.addr.port() + 1
        };
        let tool = http_tool(
            HttpMethod::Get,
            &[format!("127.0.0.1:{other_port}")],
            1024,
            5_000,
        );
        let err = tool
            .call(json!({"url": format!("http://{}/hello", s.addr)}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ToolError::Failed(format!(
                "host 127.0.0.1:{} is not in the allowed hosts",
                s.addr.port()
            ))
        );
        let err = tool
            .call(json!({"url": format!("http://localhost:{}/hello", s.addr.port())}))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("host localhost:"), "{err}");
        assert_eq!(
            s.hits.load(Ordering::SeqCst),
            0,
            "a refused request reached the server"
        );
    }

    #[tokio::test]
    async fn http_get_refuses_redirects_to_other_hosts() {
        let s = server().await;
        let tool = http_tool(HttpMethod::Get, &[s.addr.to_string()], 1024, 5_000);
        let err = tool
            .call(json!({"url": format!("http://{}/redirect-away", s.addr)}))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redirect to host localhost:1 is not allowed"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn http_get_caps_the_body() {
        let s = server().await;
        let tool = http_tool(HttpMethod::Get, &["127.0.0.1".into()], 100, 5_000);
        let out = parse(
            &tool
                .call(json!({"url": format!("http://{}/big", s.addr)}))
                .await
                .unwrap(),
        );
        assert_eq!(out["body"], "x".repeat(100));
        assert_eq!(out["truncated"], true);
        let tool = http_tool(HttpMethod::Get, &["127.0.0.1".into()], 10_000, 5_000);
        let out = parse(
            &tool
                .call(json!({"url": format!("http://{}/big", s.addr)}))
                .await
                .unwrap(),
        );
        assert_eq!(out["body"].as_str().unwrap().len(), 10_000);
        assert_eq!(out["truncated"], false);
    }

    #[tokio::test]
    async fn http_get_times_out() {
        let s = server().await;
        let tool = http_tool(HttpMethod::Get, &[s.addr.to_string()], 1024, 50);
        let started = std::time::Instant::now();
        let err = tool
            .call(json!({"url": format!("http://{}/slow", s.addr)}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ToolError::Timeout {
                tool: "http_get".into(),
                after: Duration::from_millis(50)
            }
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn http_get_rejects_forbidden_headers() {
        let s = server().await;
        let tool = http_tool(HttpMethod::Get, &[s.addr.to_string()], 1024, 5_000);
        let err = tool
            .call(
                json!({"url": format!("http://{}/hello", s.addr), "headers": {"Host": "evil.com"}}),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ToolError::Failed("header \"Host\" may not be set".into())
        );
        assert_eq!(s.hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn http_post_sends_the_body() {
        let s = server().await;
        let tool = http_tool(HttpMethod::Post, &[s.addr.to_string()], 1024, 5_000);
        let url = format!("http://{}/hook", s.addr);
        let out = parse(
            &tool
                .call(json!({"url": url, "body": "{\"a\":1}"}))
                .await
                .unwrap(),
        );
        assert_eq!(out["status"], 201);
        assert_eq!(out["body"], "application/json|{\"a\":1}");
        let out = parse(
            &tool
                .call(json!({"url": url, "body": "hi", "content_type": "text/csv"}))
                .await
                .unwrap(),
        );
        assert_eq!(out["body"], "text/csv|hi");
        let out = parse(
            &tool
                .call(json!({"url": url, "body": "plain"}))
                .await
                .unwrap(),
        );
        assert_eq!(out["body"], "text/plain; charset=utf-8|plain");
        assert_eq!(s.hits.load(Ordering::SeqCst), 3);

        let err = tool
            .call(json!({"url": "http://example.com/hook", "body": "x"}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ToolError::Failed("host example.com is not in the allowed hosts".into())
        );
        assert_eq!(s.hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn http_post_caps_the_body() {
        let s = server().await;
        let tool = http_tool(HttpMethod::Post, &[s.addr.to_string()], 5, 5_000);
        let out = parse(
            &tool
                .call(json!({"url": format!("http://{}/hook", s.addr), "body": "abcdefgh"}))
                .await
                .unwrap(),
        );
        assert_eq!(out["truncated"], true);
        assert_eq!(out["body"].as_str().unwrap().len(), 5);
    }
}
