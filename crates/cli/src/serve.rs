use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use baton_runtime::{Durability, Runtime};
use baton_server::BatonConfig;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file. The default path is optional; an explicit one must exist.
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides server.listen); port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// RocksDB directory (overrides store.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `sync` or `buffered` (overrides store.durability).
    #[arg(long, value_parser = parse_durability)]
    durability: Option<Durability>,
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

const DEFAULT_CONFIG: &str = "config/baton.toml";

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let path = match args.config {
        Some(p) => Some(p),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG);
            p.exists().then_some(p)
        }
    };
    let mut config = BatonConfig::load(path.as_deref())?;
    if let Some(l) = args.listen {
        config.server.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.store.data_dir = d;
    }
    if let Some(d) = args.durability {
        config.store.durability = d;
    }
    init_logging(config.server.json_logs);

    let runtime = Runtime::builder(config.runtime()).start().await?;
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.store.data_dir.display(), durability = ?config.store.durability, routes = ?runtime.routes(), "baton serving");
    // Scripts and tests read this line to learn the port.
    println!("baton listening on {addr}");
    std::io::stdout().flush()?;

    // On SIGTERM/Ctrl-C the runtime stops first: live event streams then end
    // with UNAVAILABLE ("resume with after_seq = N"), so the server's graceful
    // drain does not wait forever on ResumeSession streams.
    let rt = runtime.clone();
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        rt.shutdown().await;
    };
    baton_server::serve(runtime, listener, config.server.clone(), shutdown).await?;
    tracing::info!("stopped");
    Ok(())
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

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
