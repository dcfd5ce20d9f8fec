//! The real `baton` binary as a child process, for crash tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use baton_proto::v1::sessions_client::SessionsClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// A running `baton serve` child process.
pub struct BatonProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The HTTP server's address (`/metrics`, the OpenAI-compatible API),
    /// when `[http]` is enabled.
    http_addr: Option<SocketAddr>,
    stderr_path: PathBuf,
}

impl BatonProcess {
    /// Run `bin serve --config <config> --listen 127.0.0.1:0 --http-listen
    /// 127.0.0.1:0` and wait until it prints its addresses. stderr goes to `<config dir>/baton-<n>.log`.
    pub async fn start(bin: &Path, config: &Path) -> anyhow::Result<BatonProcess> {
        Self::start_with_env(bin, config, &[]).await
    }

    /// [`Self::start`] with extra environment variables (a failpoint, a
    /// master key).
    pub async fn start_with_env(
        bin: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<BatonProcess> {
        let dir = config.parent().unwrap_or(Path::new("."));
        let stderr_path = (0..)
            .map(|n| dir.join(format!("baton-{n}.log")))
            .find(|p| !p.exists())
            .context("no log file name")?;
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info,baton=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // The HTTP address, when served, is printed before the gRPC one.
        let mut http_addr = None;
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.strip_prefix("baton http listening on ") {
                    http_addr = Some(a.trim().parse::<SocketAddr>()?);
                }
                if let Some(a) = line.strip_prefix("baton listening on ") {
                    return Ok::<_, anyhow::Error>(Some(a.trim().parse::<SocketAddr>()?));
                }
            }
            Ok(None)
        })
        .await;
        let addr = match addr {
            Ok(Ok(Some(a))) => a,
            other => {
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                bail!("baton did not start ({other:?}); its log:\n{log}");
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(BatonProcess {
            child,
            addr,
            http_addr,
            stderr_path,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The HTTP server's address, when `[http]` is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// `http://ADDR` of the HTTP server (`/metrics`, `/v1/...`).
    pub fn http_url(&self) -> anyhow::Result<String> {
        let addr = self
            .http_addr
            .context("the HTTP server is not enabled ([http] enabled = false)")?;
        Ok(format!("http://{addr}"))
    }

    pub async fn client(&self) -> anyhow::Result<SessionsClient<Channel>> {
        let channel = Channel::from_shared(self.url())?.connect().await?;
        Ok(SessionsClient::new(channel))
    }

    /// SIGKILL the process and reap it: no shutdown code runs.
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        let status = self.child.wait().await?;
        anyhow::ensure!(
            !status.success(),
            "baton exited cleanly instead of being killed"
        );
        Ok(())
    }

    /// SIGTERM the process and wait for a graceful exit.
    pub async fn terminate(self) -> anyhow::Result<std::process::ExitStatus> {
        self.sigterm().await?;
        self.wait_exit(Duration::from_secs(30)).await
    }

    /// Send SIGTERM and return at once (the process drains, then exits).
    pub async fn sigterm(&self) -> anyhow::Result<()> {
        let pid = self.child.id().context("process already gone")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }

    /// Wait for the process to exit, for at most `within`.
    pub async fn wait_exit(mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(within, self.child.wait()).await??)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// Write a config file for a child process: a data dir and model endpoints
/// as TOML text (for example `[[models]]` tables). With
/// `BATON_TEST_STORE=postgres` the store goes on a private PostgreSQL
/// server's database instead (see `baton_pgtest::database_for`).
pub fn write_config(dir: &Path, data_dir: &Path, extra_toml: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("baton.toml");
    // With BATON_TEST_STORE=postgres, the store is the PostgreSQL database
    // standing for the data dir (the same one when a test restarts on it).
    let backend = match baton_pgtest::database_for(data_dir) {
        Some(url) => format!(
            "backend = \"postgres\"\npostgres = {{ url = {:?} }}\n",
            url.map_err(anyhow::Error::msg)?
        ),
        None => String::new(),
    };
    let text = format!(
        "[store]\ndata_dir = {:?}\n{backend}\n{extra_toml}\n",
        data_dir.display().to_string()
    );
    std::fs::write(&path, text)?;
    Ok(path)
}
