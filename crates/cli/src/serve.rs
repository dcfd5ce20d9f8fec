use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use baton_runtime::{Durability, Runtime};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file. The default path is optional; an explicit one must exist.
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides server.listen); port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// HTTP listen address for /metrics, /healthz and the OpenAI-compatible
    /// API (overrides http.listen); port 0 picks a free port.
    #[arg(long)]
    http_listen: Option<String>,
    /// RocksDB directory (overrides store.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `sync` or `buffered` (overrides store.durability).
    #[arg(long, value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Serve without authentication on a non-loopback address (sets
    /// auth.allow_unauthenticated_remote). Anyone who reaches the port then
    /// controls everything: for isolated networks only.
    #[arg(long)]
    allow_unauthenticated: bool,
}

/// Without authentication only loopback addresses may be served: anyone
/// reaching another address would control everything.
fn check_exposure(config: &baton_server::BatonConfig) -> anyhow::Result<()> {
    if config.auth.enabled || config.auth.allow_unauthenticated_remote {
        return Ok(());
    }
    let mut listens = vec![("server.listen", config.server.listen.as_str())];
    if config.http.enabled {
        listens.push(("http.listen", config.http.listen.as_str()));
    }
    for (field, listen) in listens {
        let loopback = listen
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or(false);
        if !loopback {
            anyhow::bail!(
                "refusing to serve {listen} ({field}) without authentication: anyone who reaches it \
                 would control every session. Set [auth] enabled = true and create keys with \
                 `baton keys create` (see docs/security.md), or pass --allow-unauthenticated \
                 (auth.allow_unauthenticated_remote) on an isolated network"
            );
        }
    }
    Ok(())
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "sync" => Ok(Durability::Sync),
        "buffered" => Ok(Durability::Buffered),
        other => Err(format!(
            "unknown durability {other:?}: use sync or buffered"
        )),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = crate::settings::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        config.server.listen = l;
    }
    if let Some(l) = args.http_listen {
        config.http.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.store.data_dir = d;
    }
    if let Some(d) = args.durability {
        config.store.durability = d;
    }
    if config.server.json_logs {
        config.telemetry.json_logs = true;
    }
    if args.allow_unauthenticated {
        config.auth.allow_unauthenticated_remote = true;
    }
    check_exposure(&config)?;
    let telemetry = baton_telemetry::init(&config.telemetry).context("telemetry")?;

    // A node of a cluster listens (forwarding to the lease holder) before
    // it holds the lease; it may wait there for as long as the holder lives.
    let cluster =
        config.store.backend == baton_runtime::StoreBackend::Postgres && config.cluster.enabled;
    // Nodes owning sessions one by one all serve: none stands by.
    let owning = cluster && config.cluster.ownership == baton_runtime::ClusterOwnership::Sessions;
    if owning {
        baton_server::owner::configure(peers(&config)?);
    }
    let mut bound = None;
    let mut standby = None;
    if owning {
        // Bound first, to advertise the ports in the node's row; calls
        // wait in the listen queue until the runtime serves them.
        let (listener, http_listener) = bind(&config).await?;
        config.cluster.advertise = Some(baton_runtime::ClusterConfig::advertised(
            config.cluster.advertise.as_deref(),
            listener.local_addr()?,
            "cluster.advertise",
        )?);
        if let Some(h) = &http_listener {
            config.cluster.advertise_http = Some(baton_runtime::ClusterConfig::advertised(
                config.cluster.advertise_http.as_deref(),
                h.local_addr()?,
                "cluster.advertise_http",
            )?);
        }
        bound = Some((listener, http_listener));
    } else if cluster {
        let (listener, http_listener) = bind(&config).await?;
        let (addr, http_addr) = (
            listener.local_addr()?,
            http_listener.as_ref().map(|l| l.local_addr()).transpose()?,
        );
        config.cluster.advertise = Some(baton_runtime::ClusterConfig::advertised(
            config.cluster.advertise.as_deref(),
            addr,
            "cluster.advertise",
        )?);
        if let Some(h) = http_addr {
            config.cluster.advertise_http = Some(baton_runtime::ClusterConfig::advertised(
                config.cluster.advertise_http.as_deref(),
                h,
                "cluster.advertise_http",
            )?);
        }
        let pg = config
            .runtime()
            .postgres_options()?
            .context("[store] backend = \"postgres\" needs [store.postgres]")?;
        let node = pg.node.clone();
        let mut ports = vec![(baton_server::forward::Port::Grpc, listener)];
        if let Some(h) = http_listener {
            ports.push((baton_server::forward::Port::Http, h));
        }
        standby = Some(baton_server::forward::Standby::start(
            pg,
            node.id.clone(),
            ports,
            node.heartbeat,
        ));
        tracing::info!(node = %node.id, %addr, "joining the cluster: forwarding to the lease holder until this node holds the lease");
        if let Some(a) = http_addr {
            println!("baton http listening on {a}");
        }
        println!("baton listening on {addr}");
        std::io::stdout().flush()?;
    }
    let mut builder = Runtime::builder(config.runtime());
    let audit = if config.audit.enabled {
        let cfg = config.audit.resolve(&config.store.data_dir);
        let dir = cfg.path.clone();
        let log = tokio::task::spawn_blocking(move || baton_audit::AuditLog::open(cfg))
            .await
            .context("audit log open task")?
            .with_context(|| format!("cannot open the audit log in {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), public_key = %log.public_key_hex(), "audit trail on");
        let sink = baton_server::audit::SignedAudit(log.clone());
        builder = builder
            .with_audit(std::sync::Arc::new(sink))
            .audit_on_failure(config.audit.on_failure);
        Some(log)
    } else {
        None
    };
    let runtime = if cluster {
        tokio::select! {
            r = builder.start() => r?,
            _ = shutdown_signal() => {
                // Still waiting for the lease (in a blocking open): nothing
                // of this node's to drain or flush.
                tracing::info!("stopped while standing by");
                std::process::exit(0);
            }
        }
    } else {
        builder.start().await?
    };
    if let Some(standby) = standby.take() {
        let mut ports = standby.stop().await;
        let http = ports
            .iter()
            .position(|(p, _)| *p == baton_server::forward::Port::Http)
            .map(|i| ports.remove(i).1);
        let grpc = ports.pop().map(|p| p.1).context("the gRPC listener")?;
        bound = Some((grpc, http));
        println!("baton holding the writer lease");
        std::io::stdout().flush()?;
    }
    if let Some(status) = runtime.node_status() {
        if owning {
            tracing::info!(node = %status.node_id, epoch = status.epoch, "this node owns the sessions it loads (cluster.ownership = \"sessions\")");
        } else {
            tracing::info!(node = %status.node_id, epoch = status.epoch, "this node holds the database's writer lease");
        }
        watch_lease(runtime.clone());
    }
    if let Some(log) = &audit {
        log.append(
            baton_audit::AuditEvent::new(
                "admin_action",
                serde_json::json!({
                    "action": "server_started",
                    "routes": runtime.routes(),
                    "public_key": log.public_key_hex(),
                }),
            )
            .actor("server"),
        );
    }
    // Where nodes own sessions one by one, one node at a time runs the
    // flows (the one holding the flows lease); the others forward their
    // calls and webhook deliveries to it and take the lease over when it
    // is gone (baton_flows::Lead).
    let started = if owning {
        baton_flows::Lead::contend(runtime.clone(), config.flows.clone(), Vec::new()).await
    } else {
        baton_flows::Flows::start(runtime.clone(), config.flows.clone(), Vec::new())
            .await
            .map(baton_flows::Lead::from)
    };
    let flows = match started {
        Ok(f) => f,
        Err(e) => {
            runtime.shutdown().await;
            anyhow::bail!("flows: {e}");
        }
    };
    let auth = match baton_server::Authenticator::new(runtime.clone(), &config.auth).await {
        Ok(a) => a,
        Err(e) => {
            runtime.shutdown().await;
            anyhow::bail!(e);
        }
    };
    let announce = bound.is_none() || owning;
    let (listener, http_listener) = match bound {
        Some(b) => b,
        None => match bind(&config).await {
            Ok(b) => b,
            Err(e) => {
                runtime.shutdown().await;
                return Err(e);
            }
        },
    };
    let addr = listener.local_addr()?;
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    tracing::info!(auth = auth.enabled(), %addr, http = ?http_addr, data_dir = %config.store.data_dir.display(), durability = ?config.store.durability, routes = ?runtime.routes(), "baton serving");
    // Scripts and tests read these lines to learn the ports; the gRPC line
    // comes last. (A node of a cluster said them when it began forwarding.)
    if announce {
        if let Some(a) = http_addr {
            println!("baton http listening on {a}");
        }
        println!("baton listening on {addr}");
        std::io::stdout().flush()?;
    }

    // On SIGTERM/Ctrl-C the runtime drains first: new work is refused and
    // health says not serving, while the answers clients wait for (a
    // SendMessage stream, a front-door call) finish, for up to
    // server.shutdown_grace_ms (a second signal cuts it short). Then the
    // runtime stops: live event streams end with UNAVAILABLE ("resume with
    // after_seq = N"), so the servers' graceful drain does not wait forever
    // on ResumeSession streams or SSE streams.
    let rt = runtime.clone();
    let fl = flows.clone();
    let grace = std::time::Duration::from_millis(config.server.shutdown_grace_ms);
    let (stopped_tx, mut stopped_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        tokio::select! {
            _ = rt.drain(grace) => {}
            _ = shutdown_signal() => tracing::warn!("second signal: stopping without finishing the answers in progress"),
        }
        fl.shutdown().await;
        rt.shutdown().await;
        let _ = stopped_tx.send(true);
    };
    let grpc = async {
        baton_server::serve_with(
            runtime.clone(),
            flows.clone(),
            listener,
            config.server.clone(),
            auth.clone(),
            shutdown,
        )
        .await
        .context("grpc server")
    };
    let http = async {
        match http_listener {
            Some(l) => {
                let stopped = async move {
                    let _ = stopped_rx.wait_for(|s| *s).await;
                };
                baton_server::serve_http(
                    runtime.clone(),
                    flows.clone(),
                    l,
                    config.http.clone(),
                    auth.clone(),
                    audit.clone(),
                    stopped,
                )
                .await
                .context("http server")
            }
            None => Ok(()),
        }
    };
    let served = tokio::try_join!(grpc, http);
    if served.is_err() {
        flows.shutdown().await;
        runtime.shutdown().await;
    }
    drop(flows);
    drop(runtime);
    if let Some(log) = audit {
        log.append(
            baton_audit::AuditEvent::new(
                "admin_action",
                serde_json::json!({ "action": "server_stopped" }),
            )
            .actor("server"),
        );
        if let Err(e) = log.flush().await {
            tracing::error!(error = %e, "audit log flush at shutdown failed");
        }
    }
    tracing::info!("stopped");
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    served.map(|_| ())
}

/// Bind the gRPC listener, and the HTTP one when it is on.
async fn bind(
    config: &baton_server::BatonConfig,
) -> anyhow::Result<(tokio::net::TcpListener, Option<tokio::net::TcpListener>)> {
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let http = if config.http.enabled {
        Some(
            tokio::net::TcpListener::bind(&config.http.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on {} (http.listen)", config.http.listen)
                })?,
        )
    } else {
        None
    };
    Ok((listener, http))
}

/// How a node owning sessions reaches the others to forward calls: over
/// TLS where its own ports speak it, trusting `cluster.peer_ca_file`. With
/// mutual TLS (`client_ca_file`) it presents `cluster.peer_cert_file` to
/// the others, which then take the caller's certificate it forwards.
fn peers(config: &baton_server::BatonConfig) -> anyhow::Result<baton_server::owner::Peers> {
    let node_id = config.cluster.node_options()?.id;
    let mut ca = None;
    let mut mutual = None;
    for (section, tls) in [
        ("server.tls", &config.server.tls),
        ("http.tls", &config.http.tls),
    ] {
        let Some(tls) = tls else { continue };
        if tls.client_ca_file.is_some() && mutual.is_none() {
            mutual = Some(section);
        }
        if ca.is_none() {
            let Some(path) = &config.cluster.peer_ca_file else {
                anyhow::bail!(
                    "cluster.peer_ca_file is needed with [{section}] and cluster.ownership = \
                     \"sessions\": the CA that signed the other nodes' certificates, which this \
                     node trusts when it forwards a call to a session's owner"
                );
            };
            ca = Some(std::fs::read(path).with_context(|| {
                format!("cluster.peer_ca_file: cannot read {}", path.display())
            })?);
        }
    }
    let identity = match (
        mutual,
        &config.cluster.peer_cert_file,
        &config.cluster.peer_key_file,
    ) {
        (None, _, _) => None,
        (Some(_), Some(cert), Some(key)) => {
            let read = |field: &str, p: &std::path::Path| {
                std::fs::read(p)
                    .with_context(|| format!("cluster.{field}: cannot read {}", p.display()))
            };
            Some(
                baton_server::owner::PeerIdentity::from_pem(
                    read("peer_cert_file", cert)?,
                    read("peer_key_file", key)?,
                )
                .map_err(anyhow::Error::msg)?,
            )
        }
        (Some(section), _, _) => anyhow::bail!(
            "cluster.peer_cert_file and cluster.peer_key_file are needed with \
             {section}.client_ca_file and cluster.ownership = \"sessions\": the certificate \
             (signed by a CA of client_ca_file) every node presents when it forwards a call, \
             with the caller's certificate, to a session's owner"
        ),
    };
    Ok(baton_server::owner::Peers {
        node_id,
        grpc_ca: config.server.tls.as_ref().and(ca.clone()),
        http_ca: config.http.tls.as_ref().and(ca),
        identity,
    })
}

/// A node that lost its writer lease to another node may no longer write
/// anything: it stops at once (exit status 75), so that its supervisor
/// starts it again as a standby.
fn watch_lease(runtime: baton_runtime::RuntimeHandle) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if let Some(lost) = runtime.node_status().and_then(|s| s.lost) {
                tracing::error!(%lost, "fenced: stopping this node");
                eprintln!("baton: fenced: {lost}; stopping (start it again to stand by)");
                std::process::exit(75);
            }
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
