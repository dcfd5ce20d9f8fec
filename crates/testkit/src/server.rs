//! The real gRPC server, in-process, on an ephemeral loopback port.

use std::net::SocketAddr;

use baton_models::EndpointConfig;
use baton_proto::v1::sessions_client::SessionsClient;
use baton_runtime::{Runtime, RuntimeConfig, RuntimeHandle};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A running server with its own temporary data dir (removed on drop).
pub struct TestServer {
    pub addr: SocketAddr,
    pub runtime: RuntimeHandle,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Start with `config`; its data dir is replaced by a fresh temporary one.
    pub async fn start(mut config: RuntimeConfig) -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        config.store.data_dir = dir.path().join("data");
        Self::start_in(config, Some(dir)).await
    }

    /// Start with `config` and extra server-side tools implemented in code.
    pub async fn start_with_tools(
        mut config: RuntimeConfig,
        tools: Vec<std::sync::Arc<dyn baton_tools::Tool>>,
    ) -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        config.store.data_dir = dir.path().join("data");
        Self::start_inner(config, tools, Some(dir)).await
    }

    /// Start with `config` as given (its data dir is kept).
    pub async fn start_in(
        config: RuntimeConfig,
        dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<TestServer> {
        Self::start_inner(config, Vec::new(), dir).await
    }

    async fn start_inner(
        mut config: RuntimeConfig,
        tools: Vec<std::sync::Arc<dyn baton_tools::Tool>>,
        dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<TestServer> {
        // With BATON_TEST_STORE=postgres, the store is the PostgreSQL
        // database standing for the data dir (as for child processes).
        if let Some(url) = baton_pgtest::database_for(&config.store.data_dir) {
            config.store.backend = baton_runtime::StoreBackend::Postgres;
            config.store.postgres.url = Some(url.map_err(anyhow::Error::msg)?);
        }
        let mut builder = Runtime::builder(config);
        for t in tools {
            builder = builder.with_tool(t);
        }
        let runtime = builder.start().await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let rt = runtime.clone();
        let served = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = baton_server::serve(rt, listener, Default::default(), shutdown).await {
                tracing::error!(error = %e, "test server stopped");
            }
        });
        Ok(TestServer {
            addr,
            runtime,
            shutdown: Some(tx),
            served: Some(served),
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.url())?.connect().await?)
    }

    /// A Sessions client connected to this server.
    pub async fn client(&self) -> anyhow::Result<SessionsClient<Channel>> {
        Ok(SessionsClient::new(self.channel().await?))
    }

    /// Stop serving and shut the runtime down.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Stopping the runtime ends open event streams, so the drain finishes.
        self.runtime.shutdown().await;
        if let Some(h) = self.served.take() {
            let _ = h.await;
        }
    }
}

/// A non-streaming OpenAI-compatible endpoint pointing at `base_url`.
pub fn openai_endpoint(name: &str, base_url: &str, stream: bool) -> EndpointConfig {
    let mut c = EndpointConfig::openai(name, base_url, "fake-model");
    c.stream = stream;
    c.retry.initial_backoff_ms = 10;
    c.retry.max_backoff_ms = 100;
    c
}
