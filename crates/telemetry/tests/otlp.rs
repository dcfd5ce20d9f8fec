//! OTLP/gRPC export against a fake collector speaking the real protocol on loopback.
//! Each test builds its own subscriber and uses it as a scoped dispatcher.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use baton_telemetry::{TelemetryBuilder, TelemetryConfig, TelemetryGuard};
use common::{FakeCollector, TestPki, int, named, string};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tracing::Dispatch;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

fn build(cfg: TelemetryConfig) -> (Dispatch, TelemetryGuard) {
    let (dispatch, guard) = TelemetryBuilder::new(cfg)
        .ignore_rust_log()
        .writer(BoxMakeWriter::new(std::io::sink))
        .build()
        .unwrap();
    assert!(guard.otlp_enabled());
    (dispatch, guard)
}

fn config(endpoint: &str) -> TelemetryConfig {
    TelemetryConfig {
        otlp_endpoint: Some(endpoint.to_owned()),
        service_name: "baton-test".to_owned(),
        export_timeout_ms: 2_000,
        ..TelemetryConfig::default()
    }
}

/// A turn with a failed-then-recorded model call and a tool call, as the runtime emits them,
/// plus spans that must not be exported: one below the filter, one from the exporter's stack.
fn emit_turn() {
    let turn = tracing::info_span!(
        "turn",
        baton.session.id = "s-1",
        baton.turn = 3_i64,
        baton.route = "default",
    );
    let _in_turn = turn.enter();
    {
        let call = tracing::info_span!(
            "model.call",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = "openai",
            gen_ai.request.model = "gpt-4o",
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
            baton.endpoint = "openai-main",
            baton.attempt = 2_i64,
        );
        let _in_call = call.enter();
        call.record("gen_ai.response.model", "gpt-4o-2024-08-06");
        call.record("gen_ai.usage.input_tokens", 120_i64);
        call.record("gen_ai.usage.output_tokens", 42_i64);
        call.record("error.type", "rate_limited");
        call.record("otel.status_code", "error");
    }
    {
        let _tool = tracing::info_span!(
            "tool.call",
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = "search",
            gen_ai.tool.call.id = "call_1",
        )
        .entered();
    }
    let _below_filter = tracing::debug_span!("debug.only").entered();
    let _internal = tracing::info_span!(target: "h2::proto", "h2.internal").entered();
}

/// `shutdown` blocks until the flush is done; run it off the runtime the collector serves on.
async fn shutdown(
    guard: TelemetryGuard,
) -> (Result<(), baton_telemetry::TelemetryError>, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let result = guard.shutdown();
        (result, started.elapsed())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_turn_with_child_spans_and_genai_attributes() {
    let mut collector = FakeCollector::start().await;
    let (dispatch, guard) = build(config(&collector.endpoint));

    tracing::dispatcher::with_default(&dispatch, emit_turn);
    let (result, _) = shutdown(guard).await;
    result.unwrap();

    let spans = collector.spans();
    let mut names: Vec<&str> = spans.iter().map(|r| r.span.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["model.call", "tool.call", "turn"], "{spans:#?}");

    let turn = named(&spans, "turn");
    let call = named(&spans, "model.call");
    let tool = named(&spans, "tool.call");

    // Parent/child: one trace, the turn is the root and the parent of both calls.
    assert!(turn.span.parent_span_id.is_empty(), "turn is a root span");
    assert_eq!(turn.span.trace_id.len(), 16);
    assert_eq!(turn.span.span_id.len(), 8);
    for child in [call, tool] {
        assert_eq!(child.span.trace_id, turn.span.trace_id);
        assert_eq!(child.span.parent_span_id, turn.span.span_id);
        assert_ne!(child.span.span_id, turn.span.span_id);
    }

    // Dotted field names arrive as attribute keys unchanged, with their types.
    let attrs = &turn.span.attributes;
    assert_eq!(string(attrs, "baton.session.id"), "s-1");
    assert_eq!(int(attrs, "baton.turn"), 3);
    assert_eq!(string(attrs, "baton.route"), "default");

    let attrs = &call.span.attributes;
    assert_eq!(call.span.kind, SpanKind::Client as i32);
    assert_eq!(
        call.span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_ne!(
        turn.span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(string(attrs, "gen_ai.operation.name"), "chat");
    assert_eq!(string(attrs, "gen_ai.provider.name"), "openai");
    assert_eq!(string(attrs, "gen_ai.request.model"), "gpt-4o");
    assert_eq!(string(attrs, "gen_ai.response.model"), "gpt-4o-2024-08-06");
    assert_eq!(int(attrs, "gen_ai.usage.input_tokens"), 120);
    assert_eq!(int(attrs, "gen_ai.usage.output_tokens"), 42);
    assert_eq!(string(attrs, "error.type"), "rate_limited");
    assert_eq!(string(attrs, "baton.endpoint"), "openai-main");
    assert_eq!(int(attrs, "baton.attempt"), 2);
    assert!(
        common::value(attrs, "otel.kind").is_none()
            && common::value(attrs, "otel.status_code").is_none(),
        "otel.* fields configure the span, they are not attributes"
    );

    let attrs = &tool.span.attributes;
    assert_eq!(string(attrs, "gen_ai.operation.name"), "execute_tool");
    assert_eq!(string(attrs, "gen_ai.tool.name"), "search");
    assert_eq!(string(attrs, "gen_ai.tool.call.id"), "call_1");

    // Resource and scope.
    for received in [turn, call, tool] {
        let resource = &received.resource.attributes;
        assert_eq!(string(resource, "service.name"), "baton-test");
        assert_eq!(
            string(resource, "service.version"),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(received.scope.name, baton_telemetry::TRACER_NAME);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ratio_zero_exports_nothing() {
    let mut collector = FakeCollector::start().await;
    let (dispatch, guard) = build(TelemetryConfig {
        sample_ratio: 0.0,
        ..config(&collector.endpoint)
    });
    tracing::dispatcher::with_default(&dispatch, emit_turn);
    let (result, _) = shutdown(guard).await;
    result.unwrap();
    assert!(collector.spans().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_collector_does_not_block_shutdown() {
    // A port that was just free: nothing listens, connections are refused.
    let endpoint = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let timeout_ms = 1_000;
    let (dispatch, guard) = build(TelemetryConfig {
        export_timeout_ms: timeout_ms,
        ..config(&endpoint)
    });
    let started = Instant::now();
    tracing::dispatcher::with_default(&dispatch, emit_turn);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "emitting spans never waits on export"
    );

    let (result, elapsed) = shutdown(guard).await;
    eprintln!("refused collector: shutdown took {elapsed:?}");
    // The export failed within its deadline; that is logged, not a shutdown error.
    result.unwrap();
    assert!(
        elapsed < Duration::from_millis(timeout_ms + 2_000),
        "shutdown took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_collector_does_not_block_shutdown() {
    // Accepts connections and never answers: the export can only end by its timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let timeout_ms = 1_000;
    let (dispatch, guard) = build(TelemetryConfig {
        export_timeout_ms: timeout_ms,
        ..config(&endpoint)
    });
    tracing::dispatcher::with_default(&dispatch, emit_turn);

    // The export ends by its own deadline (logged, spans dropped), inside the shutdown's wait.
    let (_result, elapsed) = shutdown(guard).await;
    eprintln!("silent collector: shutdown took {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(timeout_ms / 2),
        "the export was attempted and waited for: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(timeout_ms + 2_000),
        "shutdown took {elapsed:?}"
    );
    accepting.abort();
}

/// An https collector with a private CA: spans arrive over TLS when the CA
/// is trusted through `otlp_ca_file`, with the configured metadata; without
/// it the certificate is refused and nothing is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_tls_to_a_collector_with_a_private_ca_and_sends_headers() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    let mut collector = FakeCollector::start_tls(&pki).await;
    assert!(collector.endpoint.starts_with("https://localhost:"));
    let mut cfg = config(&collector.endpoint);
    cfg.otlp_ca_file = Some(ca_file.clone());
    cfg.otlp_headers = [("x-api-key".to_owned(), "k-123".to_owned())].into();
    let (dispatch, guard) = build(cfg);
    tracing::dispatcher::with_default(&dispatch, emit_turn);
    let (result, _) = shutdown(guard).await;
    result.unwrap();
    let spans = collector.spans();
    assert!(
        spans.iter().any(|r| r.span.name == "turn"),
        "the turn span arrived over TLS: {spans:#?}"
    );
    let metadata = collector.metadata();
    assert!(!metadata.is_empty());
    assert!(
        metadata
            .iter()
            .all(|m| m.get("x-api-key").and_then(|v| v.to_str().ok()) == Some("k-123")),
        "{metadata:?}"
    );

    // The same collector, its CA not trusted: the handshake fails, nothing is
    // exported, and shutdown still returns within the export timeout.
    let mut untrusted = FakeCollector::start_tls(&pki).await;
    let (dispatch, guard) = build(config(&untrusted.endpoint));
    tracing::dispatcher::with_default(&dispatch, emit_turn);
    let (_, took) = shutdown(guard).await;
    assert!(
        untrusted.spans().is_empty(),
        "no span crosses an unverified TLS connection"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// A collector that requires client certificates receives spans only from
/// a client configured with one its CA issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_configured_client_certificate() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca = write("ca.pem", &pki.ca_pem);
    let cert = write("client.pem", &pki.client_cert_pem);
    let key = write("client.key", &pki.client_key_pem);

    let mut collector = FakeCollector::start_mtls(&pki).await;
    let mut cfg = config(&collector.endpoint);
    cfg.otlp_ca_file = Some(ca.clone());
    cfg.otlp_client_cert_file = Some(cert);
    cfg.otlp_client_key_file = Some(key);
    let (dispatch, guard) = build(cfg);
    tracing::dispatcher::with_default(&dispatch, emit_turn);
    let (result, _) = shutdown(guard).await;
    result.unwrap();
    let spans = collector.spans();
    assert!(spans.iter().any(|r| r.span.name == "turn"), "{spans:#?}");

    // Without the client certificate the collector refuses the connection.
    let mut refused = FakeCollector::start_mtls(&pki).await;
    let mut cfg = config(&refused.endpoint);
    cfg.otlp_ca_file = Some(ca);
    let (dispatch, guard) = build(cfg);
    tracing::dispatcher::with_default(&dispatch, emit_turn);
    let (_, took) = shutdown(guard).await;
    assert!(
        refused.spans().is_empty(),
        "no client certificate, no export"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn an_unreadable_or_empty_ca_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    for path in [dir.path().join("missing.pem"), empty] {
        let mut cfg = config("https://localhost:4317");
        cfg.otlp_ca_file = Some(path.clone());
        let built = TelemetryBuilder::new(cfg)
            .ignore_rust_log()
            .writer(BoxMakeWriter::new(std::io::sink))
            .build();
        let Err(err) = built else {
            panic!("a bad CA file is refused");
        };
        let err = err.to_string();
        assert!(err.starts_with("telemetry.otlp_ca_file: "), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
