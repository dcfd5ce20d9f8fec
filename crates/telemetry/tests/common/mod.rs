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

struct Service(
    mpsc::UnboundedSender<ExportTraceServiceRequest>,
    std::sync::Arc<std::sync::Mutex<Vec<tonic::metadata::MetadataMap>>>,
);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.1.lock().unwrap().push(request.metadata().clone());
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
    metadata: std::sync::Arc<std::sync::Mutex<Vec<tonic::metadata::MetadataMap>>>,
    _stop: oneshot::Sender<()>,
}

/// A test CA and a certificate it issued for `localhost`, as PEM.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// A client certificate the CA issued (for mutual TLS).
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl TestPki {
    pub fn generate() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "baton test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["baton".to_owned()])
            .unwrap()
            .signed_by(&client_key, &ca, &ca_key)
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }
}

impl FakeCollector {
    /// Serves plaintext on 127.0.0.1, port 0, on the current Tokio runtime until dropped.
    pub async fn start() -> Self {
        Self::serve(None, false).await
    }

    /// Serves TLS with `pki`'s certificate on 127.0.0.1 (`https://localhost:PORT`).
    pub async fn start_tls(pki: &TestPki) -> Self {
        Self::serve(Some(pki), false).await
    }

    /// Serves mutual TLS: clients must present a certificate `pki`'s CA issued.
    pub async fn start_mtls(pki: &TestPki) -> Self {
        Self::serve(Some(pki), true).await
    }

    async fn serve(pki: Option<&TestPki>, client_auth: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let metadata = std::sync::Arc::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let mut server = tonic::transport::Server::builder();
        if let Some(pki) = pki {
            let mut tls = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&pki.cert_pem, &pki.key_pem),
            );
            if client_auth {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(&pki.ca_pem));
            }
            server = server.tls_config(tls).unwrap();
        }
        tokio::spawn(
            server
                .add_service(TraceServiceServer::new(Service(
                    tx,
                    std::sync::Arc::clone(&metadata),
                )))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        let endpoint = match pki {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        Self {
            endpoint,
            requests,
            metadata,
            _stop: stop,
        }
    }

    /// The metadata of every export request received so far.
    pub fn metadata(&self) -> Vec<tonic::metadata::MetadataMap> {
        self.metadata.lock().unwrap().clone()
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
