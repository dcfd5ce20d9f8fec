//! A fake OTLP/gRPC collector on loopback: the real `TraceService/Export` over tonic.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::TcpListenerStream;

struct Service(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One exported span with the resource and scope it came under.
#[derive(Debug, Clone)]
pub struct Received {
    pub resource: Resource,
    pub scope: InstrumentationScope,
    pub span: Span,
}

pub struct FakeCollector {
    pub endpoint: String,
    requests: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    _stop: oneshot::Sender<()>,
}

impl FakeCollector {
    /// Serves on 127.0.0.1, port 0, on the current Tokio runtime until dropped.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Service(tx)))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            endpoint: format!("http://{addr}"),
            requests,
            _stop: stop,
        }
    }

    /// Every span received so far.
    pub fn spans(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(request) = self.requests.try_recv() {
            for resource_spans in request.resource_spans {
                let resource = resource_spans.resource.unwrap_or_default();
                for scope_spans in resource_spans.scope_spans {
                    let scope = scope_spans.scope.unwrap_or_default();
                    for span in scope_spans.spans {
                        out.push(Received {
                            resource: resource.clone(),
                            scope: scope.clone(),
                            span,
                        });
                    }
                }
            }
        }
        out
    }
}

pub fn value<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn string(attributes: &[KeyValue], key: &str) -> String {
    match value(attributes, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key}: expected a string, got {other:?} in {attributes:?}"),
    }
}

pub fn int(attributes: &[KeyValue], key: &str) -> i64 {
    match value(attributes, key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("{key}: expected an int, got {other:?} in {attributes:?}"),
    }
}

/// The one span named `name`.
pub fn named<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    let matching: Vec<&Received> = spans.iter().filter(|r| r.span.name == name).collect();
    assert_eq!(matching.len(), 1, "spans named {name}: {spans:#?}");
    matching[0]
}
