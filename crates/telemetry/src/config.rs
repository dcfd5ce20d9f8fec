//! The `[telemetry]` section of baton.toml.

use std::time::Duration;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::error::TelemetryError;

/// Logging and tracing settings: the `[telemetry]` section of baton.toml.
///
/// ```toml
/// [telemetry]
/// log_filter = "info,baton_runtime=debug"   # RUST_LOG wins when set
/// json_logs = true                          # JSON lines on stderr
/// otlp_endpoint = "http://127.0.0.1:4317"   # OTLP/gRPC; unset = no span export; https = TLS
/// # otlp_ca_file = "/etc/baton/collector-ca.pem"   # https: trust this CA (PEM) too
/// # otlp_client_cert_file = "/etc/baton/otel-client.pem"   # https: mutual TLS
/// # otlp_client_key_file = "/etc/baton/otel-client.key"
/// # otlp_headers = { "x-api-key" = "..." }         # gRPC metadata on every export
/// service_name = "baton"
/// sample_ratio = 0.25                       # of new traces; children follow their parent
/// export_timeout_ms = 5000
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Log (and span) filter in `EnvFilter` syntax, e.g. `"info,baton_runtime=debug"`.
    /// The `RUST_LOG` environment variable replaces it when set and non-empty.
    /// It applies to the OTLP export as well: a span the filter disables is not exported.
    pub log_filter: String,
    /// Structured JSON lines on stderr instead of human-readable lines.
    pub json_logs: bool,
    /// OTLP/gRPC collector endpoint: `"http://127.0.0.1:4317"` (plaintext HTTP/2) or
    /// `"https://collector.example:4317"` (TLS, verified against the system's root
    /// certificates and `otlp_ca_file`). Span export is off when unset.
    pub otlp_endpoint: Option<String>,
    /// With an `https` endpoint: a PEM file of CA certificates to trust besides the system's
    /// (a private collector's CA).
    pub otlp_ca_file: Option<std::path::PathBuf>,
    /// With an `https` endpoint that wants mutual TLS: this client's certificate chain (PEM),
    /// with `otlp_client_key_file`.
    pub otlp_client_cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of `otlp_client_cert_file`.
    pub otlp_client_key_file: Option<std::path::PathBuf>,
    /// gRPC metadata sent with every export, e.g. an API key a hosted collector wants. Names
    /// are ASCII header names (case-insensitive; `-bin` binary entries are not supported);
    /// values visible ASCII. Values are never logged.
    pub otlp_headers: std::collections::BTreeMap<String, String>,
    /// `service.name` resource attribute of exported spans.
    pub service_name: String,
    /// Fraction of new traces (root spans) that are sampled, in `[0, 1]`. Child spans follow
    /// their parent's decision.
    pub sample_ratio: f64,
    /// Upper bound of one export (retries included) and of the flush at shutdown, in milliseconds.
    pub export_timeout_ms: u64,
}

/// Largest accepted `export_timeout_ms`: ten minutes.
const MAX_EXPORT_TIMEOUT_MS: u64 = 600_000;

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info".to_owned(),
            json_logs: false,
            otlp_endpoint: None,
            otlp_ca_file: None,
            otlp_client_cert_file: None,
            otlp_client_key_file: None,
            otlp_headers: Default::default(),
            service_name: "baton".to_owned(),
            sample_ratio: 1.0,
            export_timeout_ms: 5_000,
        }
    }
}

impl TelemetryConfig {
    /// Checks every field; the error names the first bad one (`telemetry.<field>: ...`).
    pub fn validate(&self) -> Result<(), TelemetryError> {
        parse_filter(&self.log_filter).map_err(|reason| invalid("log_filter", reason))?;
        if let Some(endpoint) = &self.otlp_endpoint {
            validate_endpoint(endpoint).map_err(|reason| invalid("otlp_endpoint", reason))?;
        }
        let https = self
            .otlp_endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("https://"));
        for (field, file) in [
            ("otlp_ca_file", &self.otlp_ca_file),
            ("otlp_client_cert_file", &self.otlp_client_cert_file),
            ("otlp_client_key_file", &self.otlp_client_key_file),
        ] {
            if let Some(file) = file
                && !https
            {
                return Err(invalid(
                    field,
                    format!(
                        "{} is set, but otlp_endpoint is not an https endpoint",
                        file.display()
                    ),
                ));
            }
        }
        match (&self.otlp_client_cert_file, &self.otlp_client_key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "otlp_client_key_file",
                    "is required with otlp_client_cert_file",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "otlp_client_cert_file",
                    "is required with otlp_client_key_file",
                ));
            }
            _ => {}
        }
        for (name, value) in &self.otlp_headers {
            if tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(name.as_bytes())
                .is_err()
                || name.ends_with("-bin")
            {
                return Err(invalid(
                    "otlp_headers",
                    format!(
                        "{name:?} is not a valid gRPC metadata name (an ASCII header name, not -bin)"
                    ),
                ));
            }
            if tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value.as_str())
                .is_err()
            {
                // The value may be a secret: name the header, not the value.
                return Err(invalid(
                    "otlp_headers",
                    format!("the value of {name:?} is not visible ASCII"),
                ));
            }
        }
        if self.service_name.trim().is_empty() {
            return Err(invalid("service_name", "must not be empty"));
        }
        if !(self.sample_ratio.is_finite() && (0.0..=1.0).contains(&self.sample_ratio)) {
            return Err(invalid(
                "sample_ratio",
                format!("must be between 0 and 1, got {}", self.sample_ratio),
            ));
        }
        if self.export_timeout_ms == 0 || self.export_timeout_ms > MAX_EXPORT_TIMEOUT_MS {
            return Err(invalid(
                "export_timeout_ms",
                format!(
                    "must be between 1 and {MAX_EXPORT_TIMEOUT_MS}, got {}",
                    self.export_timeout_ms
                ),
            ));
        }
        Ok(())
    }

    /// `export_timeout_ms` as a [`Duration`].
    pub fn export_timeout(&self) -> Duration {
        Duration::from_millis(self.export_timeout_ms)
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TelemetryError {
    TelemetryError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

/// Parses `EnvFilter` directives strictly (an invalid directive is an error, not skipped).
pub(crate) fn parse_filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("invalid filter {directives:?}: {e}"))
}

fn validate_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("invalid URI {endpoint:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "{endpoint:?}: unsupported scheme {other:?}, use http or https"
            ));
        }
        None => {
            return Err(format!(
                "{endpoint:?} has no scheme, e.g. http://127.0.0.1:4317"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{endpoint:?} has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn err_of(cfg: &TelemetryConfig) -> String {
        cfg.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid_and_export_is_off() {
        let cfg = TelemetryConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.log_filter, "info");
        assert_eq!(cfg.service_name, "baton");
        assert_eq!(cfg.sample_ratio, 1.0);
        assert!(cfg.otlp_endpoint.is_none());
        assert!(!cfg.json_logs);
    }

    #[test]
    fn parses_toml_section_with_defaults_for_missing_fields() {
        let cfg: TelemetryConfig = toml::from_str(
            r#"
            json_logs = true
            otlp_endpoint = "http://127.0.0.1:4317"
            sample_ratio = 0.25
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert!(cfg.json_logs);
        assert_eq!(cfg.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(cfg.sample_ratio, 0.25);
        assert_eq!(cfg.log_filter, "info");
        assert_eq!(cfg.export_timeout_ms, 5_000);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = toml::from_str::<TelemetryConfig>("otlp_endpiont = \"http://x:4317\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("otlp_endpiont"), "{err}");
    }

    #[test]
    fn sample_ratio_out_of_range_names_the_field() {
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let cfg = TelemetryConfig {
                sample_ratio: bad,
                ..TelemetryConfig::default()
            };
            let err = err_of(&cfg);
            assert!(err.starts_with("telemetry.sample_ratio: "), "{err}");
        }
        for good in [0.0, 0.5, 1.0] {
            let cfg = TelemetryConfig {
                sample_ratio: good,
                ..TelemetryConfig::default()
            };
            cfg.validate().unwrap();
        }
    }

    #[test]
    fn bad_endpoints_name_the_field() {
        for bad in [
            "127.0.0.1:4317",
            "ftp://127.0.0.1:4317",
            "http://",
            "not a uri",
            "",
        ] {
            let cfg = TelemetryConfig {
                otlp_endpoint: Some(bad.to_owned()),
                ..TelemetryConfig::default()
            };
            let err = err_of(&cfg);
            assert!(err.starts_with("telemetry.otlp_endpoint: "), "{bad}: {err}");
        }
        for good in ["http://localhost:4317", "https://collector.example:4317"] {
            let cfg = TelemetryConfig {
                otlp_endpoint: Some(good.to_owned()),
                ..TelemetryConfig::default()
            };
            cfg.validate().unwrap();
        }
    }

    #[test]
    fn tls_and_header_settings_are_checked() {
        let with = |endpoint: &str, ca: Option<&str>, header: (&str, &str)| TelemetryConfig {
            otlp_endpoint: Some(endpoint.to_owned()),
            otlp_ca_file: ca.map(std::path::PathBuf::from),
            otlp_headers: [(header.0.to_owned(), header.1.to_owned())].into(),
            ..TelemetryConfig::default()
        };
        with("https://c:4317", Some("/ca.pem"), ("x-api-key", "k"))
            .validate()
            .unwrap();
        let err = err_of(&with("http://c:4317", Some("/ca.pem"), ("x-api-key", "k")));
        assert!(err.starts_with("telemetry.otlp_ca_file: "), "{err}");
        let mut half = with("https://c:4317", None, ("x-api-key", "k"));
        half.otlp_client_cert_file = Some("/client.pem".into());
        let err = err_of(&half);
        assert!(err.starts_with("telemetry.otlp_client_key_file: "), "{err}");
        half.otlp_client_key_file = Some("/client.key".into());
        half.validate().unwrap();
        half.otlp_endpoint = Some("http://c:4317".into());
        let err = err_of(&half);
        assert!(
            err.starts_with("telemetry.otlp_client_cert_file: "),
            "{err}"
        );
        for (name, value) in [("x key", "k"), ("x-bin", "k"), ("", "k")] {
            let err = err_of(&with("https://c:4317", None, (name, value)));
            assert!(err.starts_with("telemetry.otlp_headers: "), "{err}");
        }
        let err = err_of(&with(
            "https://c:4317",
            None,
            ("x-api-key", "secret\nvalue"),
        ));
        assert!(err.starts_with("telemetry.otlp_headers: "), "{err}");
        assert!(
            !err.contains("secret"),
            "a header value is never shown: {err}"
        );
    }

    #[test]
    fn bad_filter_names_the_field() {
        let cfg = TelemetryConfig {
            log_filter: "info,baton=loud".to_owned(),
            ..TelemetryConfig::default()
        };
        let err = err_of(&cfg);
        assert!(err.starts_with("telemetry.log_filter: "), "{err}");
    }

    #[test]
    fn empty_service_name_and_zero_timeout_are_rejected() {
        let cfg = TelemetryConfig {
            service_name: " ".to_owned(),
            ..TelemetryConfig::default()
        };
        assert!(err_of(&cfg).starts_with("telemetry.service_name: "));
        let cfg = TelemetryConfig {
            export_timeout_ms: 0,
            ..TelemetryConfig::default()
        };
        assert!(err_of(&cfg).starts_with("telemetry.export_timeout_ms: "));
    }
}
