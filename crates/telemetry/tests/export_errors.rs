//! A failed export is logged through the global subscriber (the exporter's thread has no
//! scoped dispatcher), so this binary installs one and has a single test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use baton_telemetry::{TelemetryBuilder, TelemetryConfig};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

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

#[test]
fn failed_export_is_logged_and_spans_dropped() {
    let endpoint = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let captured = Captured::default();
    let writer = captured.clone();
    let guard = TelemetryBuilder::new(TelemetryConfig {
        otlp_endpoint: Some(endpoint),
        json_logs: true,
        export_timeout_ms: 1_000,
        ..TelemetryConfig::default()
    })
    .ignore_rust_log()
    .writer(BoxMakeWriter::new(move || writer.clone()))
    .init()
    .unwrap();

    tracing::info_span!("turn", baton.session.id = "s-1").in_scope(|| {
        tracing::info!("working");
    });
    // The export fails within its deadline: logged and dropped, shutdown itself succeeds.
    guard.shutdown().unwrap();

    let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let errors: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["level"] == "ERROR")
        .collect();
    assert!(
        errors.iter().any(|line| line["target"]
            .as_str()
            .unwrap_or("")
            .starts_with("opentelemetry")),
        "the failed export is logged at error level by the exporter: {out}"
    );
}
