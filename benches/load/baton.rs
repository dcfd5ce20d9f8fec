//! A Baton instance: runtime + gRPC server on loopback.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use baton_proto::v1::sessions_client::SessionsClient;
use baton_runtime::{Durability, Runtime, RuntimeConfig, RuntimeHandle};
use tonic::transport::Channel;

use crate::traffic::Target;
use crate::upstream::upstream_endpoint;

pub(crate) struct Baton {
    pub(crate) handle: RuntimeHandle,
    addr: std::net::SocketAddr,
    /// The HTTP server's (the OpenAI front door's) address.
    http: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    /// The signed audit trail, when the bench runs with `--audit`.
    audit: Option<baton_audit::AuditLog>,
    dir: tempfile::TempDir,
}

/// With `--postgres`: the private PostgreSQL server every instance gets a
/// database of its own on (synchronous commit, fsync on).
pub(crate) static POSTGRES: std::sync::OnceLock<baton_pgtest::PgServer> =
    std::sync::OnceLock::new();
/// With `--pg-delay-us`: the port of the delay line in front of it.
pub(crate) static PG_VIA: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// With `--owning`: every instance is a node owning its sessions one by one.
pub(crate) static OWNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn data_dir(parent: &Path, what: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("baton-load-{what}-"))
        .tempdir_in(parent)?)
}

impl Baton {
    pub(crate) async fn start(
        parent: &Path,
        durability: Durability,
        upstream: std::net::SocketAddr,
        server_nodelay: bool,
        audit: bool,
    ) -> Result<Baton> {
        let dir = data_dir(parent, durability_name(durability))?;
        let mut cfg = RuntimeConfig::with_data_dir(dir.path());
        cfg.store.durability = durability;
        if let Some(pg) = POSTGRES.get() {
            cfg.store.backend = baton_runtime::StoreBackend::Postgres;
            let mut url = pg.database().map_err(anyhow::Error::msg)?;
            if let Some(via) = PG_VIA.get() {
                url = url.replace(
                    &format!("127.0.0.1:{}/", pg.port()),
                    &format!("127.0.0.1:{via}/"),
                );
            }
            cfg.store.postgres.url = Some(url);
            if OWNING.load(std::sync::atomic::Ordering::Relaxed) {
                cfg.cluster.enabled = true;
                cfg.cluster.node_id = Some("bench".into());
                cfg.cluster.ownership = baton_runtime::ClusterOwnership::Sessions;
            }
        }
        cfg.models = vec![upstream_endpoint(upstream)];
        cfg.sessions.default_route = "upstream".into();
        cfg.sessions.passivate_after_ms = 3_600_000;
        let mut builder = Runtime::builder(cfg);
        let audit = if audit {
            // The signed audit trail, as `baton serve` runs it with
            // `[audit] dir` set: every record hash-chained and signed.
            let log = baton_audit::AuditLog::open(baton_audit::AuditConfig::in_dir(
                dir.path().join("audit"),
            ))?;
            builder = builder.with_audit(Arc::new(baton_server::audit::SignedAudit(log.clone())));
            Some(log)
        } else {
            None
        };
        let handle = builder.start().await?;
        let listener = if server_nodelay {
            // Linux copies TCP_NODELAY from a listening socket to the sockets
            // it accepts: the server then writes without Nagle's delay.
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_nodelay(true)?;
            socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
            socket.listen(1024)?
        } else {
            tokio::net::TcpListener::bind("127.0.0.1:0").await?
        };
        let addr = listener.local_addr()?;
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http = http_listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let handle = handle.clone();
            async move {
                let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
                let front = tokio::spawn(baton_server::serve_http(
                    handle.clone(),
                    None,
                    http_listener,
                    Default::default(),
                    baton_server::Authenticator::disabled(handle.clone()),
                    None,
                    async {
                        let _ = http_stopped.await;
                    },
                ));
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(e) =
                    baton_server::serve(handle, listener, Default::default(), shutdown).await
                {
                    eprintln!("gRPC server stopped: {e}");
                }
                let _ = http_stop.send(());
                let _ = front.await;
            }
        });
        Ok(Baton {
            handle,
            addr,
            http,
            stop: Some(stop),
            server,
            audit,
            dir,
        })
    }

    /// gRPC clients over `n` HTTP/2 connections; workers use them round-robin.
    pub(crate) async fn grpc(&self, n: usize) -> Result<Target> {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let ch = Channel::from_shared(format!("http://{}", self.addr))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            clients.push(SessionsClient::new(ch));
        }
        Ok(Target::Grpc {
            clients: Arc::new(clients),
        })
    }

    /// The OpenAI front door, to the route of the upstream endpoint.
    pub(crate) fn front_door(&self) -> Result<Target> {
        Ok(Target::FrontDoor {
            client: reqwest::Client::builder().tcp_nodelay(true).build()?,
            url: format!("http://{}/v1/chat/completions", self.http).into(),
            model: "upstream".into(),
        })
    }

    pub(crate) async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.server).await;
        self.handle.shutdown().await;
        if let Some(audit) = self.audit.take() {
            audit.close()?;
        }
        Ok(())
    }

    /// The data dir (the store, and the audit log under `audit/`).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

pub(crate) fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Sync => "sync",
        Durability::Buffered => "buffered",
    }
}
