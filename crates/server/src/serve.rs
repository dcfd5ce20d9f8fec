//! Serving the gRPC services on a listener.

use std::future::Future;

use baton_flows::Lead;
use baton_proto::v1::admin_server::AdminServer;
use baton_proto::v1::flows_server::FlowsServer;
use baton_proto::v1::gates_server::GatesServer;
use baton_proto::v1::inspect_server::InspectServer;
use baton_proto::v1::sessions_server::SessionsServer;
use baton_runtime::RuntimeHandle;
use tokio::net::TcpListener;

use crate::admin::AdminService;
use crate::auth::{Authenticator, GrpcAuthLayer};
use crate::config::ServerSection;
use crate::flows::FlowsService;
use crate::gates::GatesService;
use crate::inspect::InspectService;
use crate::sessions::SessionsService;

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("http server: {0}")]
    Http(std::io::Error),
    #[error("{0}")]
    Tls(String),
}

/// Serve until `shutdown` resolves; in-flight streams are cut, the runtime is
/// left running (the caller shuts it down). No authentication: every caller
/// is the local admin — for loopback listeners (see [`serve_with`]).
pub async fn serve(
    runtime: RuntimeHandle,
    listener: TcpListener,
    section: ServerSection,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let auth = Authenticator::disabled(runtime.clone());
    serve_with(
        runtime,
        baton_flows::Lead::default(),
        listener,
        section,
        auth,
        shutdown,
    )
    .await
}

/// While new sessions and messages are refused (the data directory low on
/// space, or the audit trail failing under `audit.on_failure = block`),
/// Sessions (and Flows) report NOT_SERVING on the standard health service;
/// SERVING again once they are taken.
fn watch_audit_health(
    runtime: RuntimeHandle,
    health: tonic_health::server::HealthReporter,
    flows: bool,
) {
    tokio::spawn(async move {
        let mut serving = true;
        loop {
            // Often enough that a drain for a stop shows before it ends.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = runtime.refusing_work().is_none();
            if now == serving {
                continue;
            }
            serving = now;
            if serving {
                health
                    .set_serving::<SessionsServer<SessionsService>>()
                    .await;
                if flows {
                    health.set_serving::<FlowsServer<FlowsService>>().await;
                }
            } else {
                health
                    .set_not_serving::<SessionsServer<SessionsService>>()
                    .await;
                if flows {
                    health.set_not_serving::<FlowsServer<FlowsService>>().await;
                }
            }
        }
    });
}

/// [`serve`] with `auth` checking every call (see [`crate::auth`]), and
/// the `baton.v1.Flows` service when `flows` is given.
pub async fn serve_with(
    runtime: RuntimeHandle,
    flows: impl Into<Lead>,
    listener: TcpListener,
    section: ServerSection,
    auth: Authenticator,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SessionsServer<SessionsService>>()
        .await;
    health.set_serving::<GatesServer<GatesService>>().await;
    health.set_serving::<InspectServer<InspectService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let lead: Lead = flows.into();
    let flows_for_inspect = lead.clone();
    let flows = lead.serves().then(|| {
        FlowsServer::new(FlowsService::new(lead))
            .max_decoding_message_size(section.max_request_bytes)
    });
    if flows.is_some() {
        health.set_serving::<FlowsServer<FlowsService>>().await;
    }
    watch_audit_health(runtime.clone(), health.clone(), flows.is_some());
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let sessions = SessionsServer::new(SessionsService::new(runtime.clone()))
        .max_decoding_message_size(section.max_request_bytes);
    // Open gate watches would hold a graceful shutdown forever: end them
    // when it starts.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let inspect =
        InspectServer::new(InspectService::new(runtime.clone()).with_flows(flows_for_inspect))
            .max_decoding_message_size(section.max_request_bytes);
    let admin = AdminServer::new(AdminService::new(runtime.clone()))
        .max_decoding_message_size(section.max_request_bytes);
    let gates = GatesServer::new(GatesService::with_shutdown(runtime, stopping))
        .max_decoding_message_size(section.max_request_bytes);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &section.tls {
        let config = baton_auth::tls::tonic_tls_config(tls)
            .map_err(|e| Error::Tls(format!("server.{e}")))?;
        builder = builder.tls_config(config)?;
    }
    builder
        .max_concurrent_streams(Some(section.max_concurrent_streams))
        .http2_keepalive_interval(Some(std::time::Duration::from_millis(
            section.keepalive_interval_ms,
        )))
        .http2_keepalive_timeout(Some(std::time::Duration::from_millis(
            section.keepalive_timeout_ms,
        )))
        .layer(GrpcAuthLayer::new(auth))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(sessions)
        .add_service(gates)
        .add_service(inspect)
        .add_service(admin)
        .add_optional_service(flows)
        .serve_with_incoming_shutdown(
            // TCP_NODELAY: a turn's events are small writes; Nagle's algorithm
            // would hold each for milliseconds (measured in benches/load/).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
