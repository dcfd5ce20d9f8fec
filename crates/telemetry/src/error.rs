//! Errors of this crate.

/// What can go wrong setting telemetry up or tearing it down.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A `[telemetry]` field has a bad value.
    #[error("telemetry.{field}: {reason}")]
    InvalidConfig {
        /// The field, without the `telemetry.` prefix.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `RUST_LOG` is set but is not a valid filter.
    #[error("RUST_LOG: {0}")]
    EnvFilter(String),
    /// The OTLP exporter could not be built.
    #[error("telemetry.otlp_endpoint: cannot build the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// The exporter's I/O thread or runtime could not be started.
    #[error("cannot start the OTLP exporter thread")]
    Io(#[source] std::io::Error),
    /// A global tracing subscriber (or `log` logger) is already installed.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialized(#[source] tracing_subscriber::util::TryInitError),
    /// Flushing or shutting the exporter down failed; the spans not yet sent are lost.
    #[error("telemetry shutdown")]
    Shutdown(#[source] opentelemetry_sdk::error::OTelSdkError),
}

/// Result alias of this crate.
pub type Result<T, E = TelemetryError> = std::result::Result<T, E>;
