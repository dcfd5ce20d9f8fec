//! Baton's logs and traces.
//!
//! [`init`] installs the process-wide `tracing` subscriber from the `[telemetry]` section of
//! baton.toml ([`TelemetryConfig`]):
//!
//! - an `EnvFilter` (`log_filter`, or `RUST_LOG` when set) in front of everything below;
//! - a log layer on stderr: human-readable lines, or JSON lines (`json_logs`) that keep every
//!   structured field plus the current span and its parents;
//! - when `otlp_endpoint` is set, a `tracing-opentelemetry` layer that turns spans into
//!   OpenTelemetry spans, sampled by `sample_ratio` (parent-based), batched and exported over
//!   **OTLP/gRPC** (the collector's port 4317, plaintext HTTP/2, tonic). Resource attributes
//!   are `service.name` (`service_name`) and `service.version` (Baton's version);
//!   `OTEL_RESOURCE_ATTRIBUTES` adds more.
//!
//! Export never blocks Baton: a finished span is queued (2048 at most; more are dropped), a
//! background thread sends batches every 5 s or at 512 spans, and an export that fails is
//! retried within `export_timeout_ms`, then logged (target `opentelemetry_sdk`) and dropped.
//! The exporter runs its network I/O on its own single-threaded runtime (thread `baton-otlp`),
//! so it needs no Tokio context from the caller and keeps working while the application's
//! runtime shuts down. Spans and events of the exporter's own stack (targets `opentelemetry*`,
//! `tonic`, `h2`, `hyper*`, `tower`) are logged but never exported, which also keeps reqwest's
//! hyper internals out of the traces. The standard `OTEL_BSP_*` variables tune the batching and
//! `OTEL_EXPORTER_OTLP_HEADERS` adds gRPC metadata; the endpoint and timeout come from the config.
//!
//! The returned [`TelemetryGuard`] flushes queued spans and stops the exporter when dropped or
//! on [`TelemetryGuard::shutdown`], waiting at most `export_timeout_ms` plus
//! [`SHUTDOWN_GRACE`]. The wait blocks the calling thread (it never needs the caller's runtime,
//! so it cannot deadlock); from async code prefer `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! # fn main() -> Result<(), baton_telemetry::TelemetryError> {
//! let cfg = baton_telemetry::TelemetryConfig {
//!     otlp_endpoint: Some("http://127.0.0.1:4317".to_owned()),
//!     ..Default::default()
//! };
//! let telemetry = baton_telemetry::init(&cfg)?;
//! tracing::info!("baton serving");
//! // ... serve ...
//! telemetry.shutdown()?; // or let it drop
//! # Ok(())
//! # }
//! ```
//!
//! # Span conventions
//!
//! Baton emits these spans at `info` level. Field names are the OpenTelemetry attribute keys,
//! dots included: tracing accepts dotted names (`gen_ai.request.model = %model`), and
//! tracing-opentelemetry exports them unchanged. A key with a Rust keyword in it is written as a
//! string literal (`"error.type" = "timeout"`). Fields known only at the end are declared
//! `tracing::field::Empty` and filled with `Span::record`.
//!
//! | span | fields |
//! |---|---|
//! | `turn` | `baton.session.id`, `baton.turn`, `baton.route` |
//! | `route.call` | `gen_ai.operation.name` = `"chat"`, `baton.route`, `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `error.type` |
//! | `model.call` | `otel.kind` = `"client"`, `gen_ai.operation.name` = `"chat"`, `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `error.type`, `baton.endpoint`, `baton.attempt` |
//! | `tool.call` | `gen_ai.operation.name` = `"execute_tool"`, `gen_ai.tool.name`, `gen_ai.tool.call.id`, `error.type` |
//! | `gate` | `baton.gate.id`, `baton.gate.kind`, `baton.gate.decision` |
//!
//! `route.call` is the routed call (all attempts and backoff); each provider attempt is a child
//! `model.call`. `gen_ai.*` follow the OpenTelemetry GenAI semantic conventions;
//! `gen_ai.provider.name` is the provider kind (`"openai"`, `"anthropic"`, ...). `error.type` is
//! set only on failure, to a short low-cardinality kind (`"timeout"`, `"rate_limited"`, ...);
//! also set `otel.status_code = "error"` then. A span may be renamed for the exporter only with
//! `otel.name`.
//!
//! **Integers must be `i64`** (`baton.turn`, `baton.attempt`, token counts): tracing-opentelemetry
//! exports `i64`, `f64` and `bool` as typed attributes but a `u64` as its decimal *string*.
//! Convert with `i64::try_from(n).unwrap_or(i64::MAX)`.
//!
//! ```
//! let turn = tracing::info_span!(
//!     "turn",
//!     baton.session.id = "s-1",
//!     baton.turn = 3_i64,
//!     baton.route = "default",
//! );
//! let _in_turn = turn.enter();
//! let call = tracing::info_span!(
//!     "model.call",
//!     otel.kind = "client",
//!     gen_ai.operation.name = "chat",
//!     gen_ai.provider.name = "openai",
//!     gen_ai.request.model = "gpt-4o",
//!     gen_ai.response.model = tracing::field::Empty,
//!     gen_ai.usage.input_tokens = tracing::field::Empty,
//!     gen_ai.usage.output_tokens = tracing::field::Empty,
//!     "error.type" = tracing::field::Empty,
//!     baton.endpoint = "openai-main",
//!     baton.attempt = 1_i64,
//! );
//! call.record("gen_ai.response.model", "gpt-4o-2024-08-06");
//! call.record("gen_ai.usage.input_tokens", 120_i64);
//! call.record("gen_ai.usage.output_tokens", 42_i64);
//! ```

mod config;
mod error;

use std::io::IsTerminal;
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};
use tokio::sync::oneshot;
use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use config::TelemetryConfig;
pub use error::{Result, TelemetryError};

/// Instrumentation scope name of Baton's spans.
pub const TRACER_NAME: &str = "baton";

/// How much longer than `export_timeout_ms` [`TelemetryGuard::shutdown`] waits, so that an
/// export that times out ends by its own deadline (and is logged) rather than being abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

/// Installs the global subscriber (and the `log` → `tracing` bridge) as described in the crate
/// docs. Fails if one is already installed. Keep the guard alive until the process is done.
pub fn init(cfg: &TelemetryConfig) -> Result<TelemetryGuard> {
    TelemetryBuilder::new(cfg.clone()).init()
}

/// Builds the subscriber without installing it: for tests and embedding, where a scoped
/// dispatcher (`tracing::dispatcher::with_default`) is needed or logs go somewhere else.
#[derive(Debug)]
pub struct TelemetryBuilder {
    cfg: TelemetryConfig,
    writer: Option<BoxMakeWriter>,
    honour_rust_log: bool,
}

impl TelemetryBuilder {
    /// Logs to stderr, `RUST_LOG` honoured.
    pub fn new(cfg: TelemetryConfig) -> Self {
        Self {
            cfg,
            writer: None,
            honour_rust_log: true,
        }
    }

    /// Writes log lines to `writer` instead of stderr (no ANSI colours).
    pub fn writer(mut self, writer: BoxMakeWriter) -> Self {
        self.writer = Some(writer);
        self
    }

    /// Uses `log_filter` even when `RUST_LOG` is set.
    pub fn ignore_rust_log(mut self) -> Self {
        self.honour_rust_log = false;
        self
    }

    /// Validates the config and builds the subscriber and, if `otlp_endpoint` is set, the
    /// exporter (which starts its I/O thread now).
    pub fn build(self) -> Result<(Dispatch, TelemetryGuard)> {
        self.cfg.validate()?;
        let filter = self.filter()?;
        let cfg = self.cfg;

        let (writer, ansi) = match self.writer {
            Some(writer) => (writer, false),
            None => (
                BoxMakeWriter::new(std::io::stderr),
                std::io::stderr().is_terminal(),
            ),
        };
        let fmt_layer = if cfg.json_logs {
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(writer)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(writer)
                .boxed()
        };

        let mut guard = TelemetryGuard {
            provider: None,
            io: None,
            timeout: cfg.export_timeout(),
        };
        let otel_layer = match &cfg.otlp_endpoint {
            Some(endpoint) => {
                let (provider, io) = otlp_provider(&cfg, endpoint)?;
                let tracer = provider.tracer(TRACER_NAME);
                guard.provider = Some(provider);
                guard.io = Some(io);
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(filter_fn(|meta| !is_exporter_internal(meta.target()))),
                )
            }
            None => None,
        };

        let subscriber = Registry::default()
            .with(filter)
            .with(fmt_layer)
            .with(otel_layer);
        Ok((Dispatch::new(subscriber), guard))
    }

    /// [`build`](Self::build), then installs the subscriber globally.
    pub fn init(self) -> Result<TelemetryGuard> {
        let (dispatch, guard) = self.build()?;
        dispatch
            .try_init()
            .map_err(TelemetryError::AlreadyInitialized)?;
        Ok(guard)
    }

    fn filter(&self) -> Result<EnvFilter> {
        if self.honour_rust_log
            && let Ok(directives) = std::env::var(EnvFilter::DEFAULT_ENV)
            && !directives.trim().is_empty()
        {
            return config::parse_filter(&directives).map_err(TelemetryError::EnvFilter);
        }
        config::parse_filter(&self.cfg.log_filter).map_err(|reason| TelemetryError::InvalidConfig {
            field: "log_filter",
            reason,
        })
    }
}

/// Spans and events from the exporter's own stack. They are logged but never exported: a span
/// of the export's gRPC call would be exported by the next export, and so on for ever.
fn is_exporter_internal(target: &str) -> bool {
    ["opentelemetry", "tonic", "h2", "hyper", "tower"]
        .iter()
        .any(|prefix| target.starts_with(prefix))
}

/// TLS for an `https` endpoint: the system's roots, plus `otlp_ca_file`; a client identity
/// for mutual TLS when `otlp_client_cert_file` and `otlp_client_key_file` are set.
fn tls_config(cfg: &TelemetryConfig) -> Result<tonic::transport::ClientTlsConfig> {
    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
    if let Some(path) = &cfg.otlp_ca_file {
        let pem = std::fs::read(path).map_err(|e| TelemetryError::InvalidConfig {
            field: "otlp_ca_file",
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(TelemetryError::InvalidConfig {
                field: "otlp_ca_file",
                reason: format!("{} holds no PEM certificate", path.display()),
            });
        }
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
    }
    if let (Some(cert), Some(key)) = (&cfg.otlp_client_cert_file, &cfg.otlp_client_key_file) {
        let read = |field: &'static str, path: &std::path::Path, marker: &str| {
            let pem = std::fs::read(path).map_err(|e| TelemetryError::InvalidConfig {
                field,
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            if !String::from_utf8_lossy(&pem).contains(marker) {
                return Err(TelemetryError::InvalidConfig {
                    field,
                    reason: format!(
                        "{} holds no PEM {}",
                        path.display(),
                        marker.trim_matches('-')
                    ),
                });
            }
            Ok(pem)
        };
        let cert = read("otlp_client_cert_file", cert, "-----BEGIN CERTIFICATE-----")?;
        let key = read("otlp_client_key_file", key, "PRIVATE KEY-----")?;
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// `otlp_headers` as gRPC metadata (checked by `TelemetryConfig::validate`).
fn metadata(cfg: &TelemetryConfig) -> Result<tonic::metadata::MetadataMap> {
    let mut map = tonic::metadata::MetadataMap::new();
    for (name, value) in &cfg.otlp_headers {
        let bad = || TelemetryError::InvalidConfig {
            field: "otlp_headers",
            reason: format!("{name:?} is not a valid gRPC metadata entry"),
        };
        let key = tonic::metadata::MetadataKey::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let value = tonic::metadata::MetadataValue::try_from(value.as_str()).map_err(|_| bad())?;
        map.insert(key, value);
    }
    Ok(map)
}

fn otlp_provider(cfg: &TelemetryConfig, endpoint: &str) -> Result<(SdkTracerProvider, IoThread)> {
    // tonic's channel spawns its connection tasks on the runtime current at build time; give it
    // one of its own, driven by a dedicated thread until the guard stops it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TelemetryError::Io)?;
    let exporter = {
        let _in_runtime = runtime.enter();
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(cfg.export_timeout());
        if endpoint.starts_with("https://") {
            builder = builder.with_tls_config(tls_config(cfg)?);
        }
        if !cfg.otlp_headers.is_empty() {
            builder = builder.with_metadata(metadata(cfg)?);
        }
        builder.build().map_err(TelemetryError::Exporter)?
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("baton-otlp".to_owned())
        .spawn(move || {
            runtime.block_on(async {
                // Err only if the guard vanished without stopping us: stop as well.
                let _ = stopped.await;
            });
            runtime.shutdown_timeout(Duration::from_millis(200));
        })
        .map_err(TelemetryError::Io)?;

    let resource = Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    Ok((
        provider,
        IoThread {
            stop,
            thread: Some(thread),
        },
    ))
}

/// Keeps the exporter alive; flushes queued spans and stops it on drop or [`shutdown`].
///
/// [`shutdown`]: TelemetryGuard::shutdown
#[derive(Debug)]
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    io: Option<IoThread>,
    timeout: Duration,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn otlp_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the queued spans and stops the exporter, waiting at most `export_timeout_ms`
    /// plus [`SHUTDOWN_GRACE`] (and up to 200 ms to stop the I/O thread).
    ///
    /// A failed export is logged by the exporter (target `opentelemetry_sdk`, level error) and
    /// its spans dropped; it is not returned here. The error is for a flush that did not finish
    /// in time. Blocking: call it from `spawn_blocking` in async code. The subscriber stays
    /// installed; spans ended afterwards are not exported.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let flushed = match self.provider.take() {
            Some(provider) => provider
                .shutdown_with_timeout(self.timeout + SHUTDOWN_GRACE)
                .map_err(TelemetryError::Shutdown),
            None => Ok(()),
        };
        if let Some(io) = self.io.take() {
            io.stop();
        }
        flushed
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(error = %ErrorChain(&error), "telemetry shutdown failed; spans dropped");
        }
    }
}

/// The exporter's I/O runtime thread.
#[derive(Debug)]
struct IoThread {
    stop: oneshot::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl IoThread {
    fn stop(mut self) {
        // The receiver is gone only if the thread already ended.
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the OTLP exporter thread panicked");
        }
    }
}

/// Displays an error with its sources, `a: b: c`.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the fmt layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(cfg: TelemetryConfig) -> (Dispatch, TelemetryGuard, Captured) {
        let captured = Captured::default();
        let writer = captured.clone();
        let (dispatch, guard) = TelemetryBuilder::new(cfg)
            .ignore_rust_log()
            .writer(BoxMakeWriter::new(move || writer.clone()))
            .build()
            .unwrap();
        (dispatch, guard, captured)
    }

    #[test]
    fn json_logs_keep_structured_fields_and_span() {
        let cfg = TelemetryConfig {
            json_logs: true,
            ..TelemetryConfig::default()
        };
        let (dispatch, guard, captured) = capture(cfg);
        assert!(!guard.otlp_enabled());
        tracing::dispatcher::with_default(&dispatch, || {
            let turn = tracing::info_span!("turn", baton.session.id = "s-1", baton.turn = 3_u64);
            let _in_turn = turn.enter();
            tracing::info!(
                gen_ai.request.model = "gpt-4o",
                tokens = 42_u64,
                "model answered"
            );
            tracing::debug!("filtered out at info");
        });
        let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["message"], "model answered");
        assert_eq!(line["fields"]["gen_ai.request.model"], "gpt-4o");
        assert_eq!(line["fields"]["tokens"], 42);
        assert_eq!(line["span"]["name"], "turn");
        assert_eq!(line["span"]["baton.session.id"], "s-1");
        assert_eq!(line["span"]["baton.turn"], 3);
        guard.shutdown().unwrap();
    }

    #[test]
    fn human_logs_honour_the_filter() {
        let cfg = TelemetryConfig {
            log_filter: "warn,chatty=debug".to_owned(),
            ..TelemetryConfig::default()
        };
        let (dispatch, _guard, captured) = capture(cfg);
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("quiet info");
            tracing::warn!(baton.route = "default", "loud warning");
            tracing::debug!(target: "chatty", "chatty debug");
        });
        let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(!out.contains("quiet info"), "{out}");
        assert!(out.contains("loud warning"), "{out}");
        assert!(out.contains("baton.route=\"default\""), "{out}");
        assert!(out.contains("chatty debug"), "{out}");
        assert!(
            !out.contains('\u{1b}'),
            "no ANSI escapes in a custom writer: {out}"
        );
    }

    #[test]
    fn build_rejects_an_invalid_config() {
        let cfg = TelemetryConfig {
            sample_ratio: 2.0,
            ..TelemetryConfig::default()
        };
        let err = TelemetryBuilder::new(cfg).build().unwrap_err().to_string();
        assert!(err.starts_with("telemetry.sample_ratio: "), "{err}");
    }

    #[test]
    fn exporter_internals_are_not_exported() {
        for target in [
            "opentelemetry_sdk",
            "opentelemetry-otlp",
            "tonic::transport",
            "h2::proto",
            "hyper_util::client",
        ] {
            assert!(is_exporter_internal(target), "{target}");
        }
        for target in ["baton_runtime::session", "baton_models", "reqwest::connect"] {
            assert!(!is_exporter_internal(target), "{target}");
        }
    }
}
