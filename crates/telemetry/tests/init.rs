//! The global subscriber: installed once per process, so this binary has a single test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use baton_telemetry::{TelemetryBuilder, TelemetryConfig, TelemetryError};
use common::{FakeCollector, named, string};
use tracing::Instrument as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_installs_the_global_subscriber_once() {
    let mut collector = FakeCollector::start().await;
    let cfg = TelemetryConfig {
        otlp_endpoint: Some(collector.endpoint.clone()),
        json_logs: true,
        ..TelemetryConfig::default()
    };
    let guard = TelemetryBuilder::new(cfg.clone())
        .ignore_rust_log()
        .init()
        .unwrap();

    // Spans from any thread reach the global subscriber, across an await in a spawned task.
    tokio::spawn(async {
        let gate = tracing::info_span!(
            "gate",
            baton.gate.id = "g-7",
            baton.gate.kind = "approval",
            baton.gate.decision = tracing::field::Empty,
        );
        async {
            tokio::task::yield_now().await;
            tracing::Span::current().record("baton.gate.decision", "approved");
        }
        .instrument(gate)
        .await;
    })
    .await
    .unwrap();

    match baton_telemetry::init(&cfg) {
        Err(TelemetryError::AlreadyInitialized(_)) => {}
        other => panic!("a second init must fail, got {other:?}"),
    }

    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap()
        .unwrap();
    let spans = collector.spans();
    let gate = named(&spans, "gate");
    assert_eq!(string(&gate.span.attributes, "baton.gate.id"), "g-7");
    assert_eq!(string(&gate.span.attributes, "baton.gate.kind"), "approval");
    assert_eq!(
        string(&gate.span.attributes, "baton.gate.decision"),
        "approved"
    );
    assert_eq!(string(&gate.resource.attributes, "service.name"), "baton");
}
