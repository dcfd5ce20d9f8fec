//! [`McpManager`]: one supervising task per server that connects, lists the
//! server's tools into the [`ToolRegistry`], follows `tools/list_changed`, and
//! reconnects with exponential backoff when the server dies.

use std::{
    collections::HashSet,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use baton_tools::{Tool, ToolRegistry};
use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{ClientCapabilities, ClientConfig, Implementation, PaginatedRequestParams},
    service::{MaybeSendFuture, NotificationContext, Peer, RunningService},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use secrecy::ExposeSecret;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, ChildStderr, Command},
    sync::{Notify, oneshot, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    Error, McpServerConfig, McpTransport, Result,
    tool::{Link, McpTool, ServerLink},
};

/// Longest stderr line logged as one record; longer lines are split.
const MAX_STDERR_LINE: u64 = 8 * 1024;
/// How long to wait for a child to exit after its connection closed, to
/// report its exit status.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(2);
/// How long `stop` waits for a connection to close and a child to die.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Least time allowed for connecting and listing tools, whatever the
/// (per-call) `timeout_ms`: starting a server can be slower than a call.
const MIN_SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A server that pages `tools/list` more than this is treated as broken.
const MAX_TOOL_PAGES: usize = 1_000;

/// A snapshot of one server's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerStatus {
    pub name: String,
    pub connected: bool,
    /// Tools currently registered for the server.
    pub tools: usize,
    /// Reconnection attempts since start.
    pub restarts: u64,
    /// Why the last connection or connection attempt failed, if one did.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Stats {
    connected: bool,
    tools: usize,
    restarts: u64,
    last_error: Option<String>,
}

struct Server {
    link: Arc<ServerLink>,
    stats: Mutex<Stats>,
}

impl Server {
    fn stats<T>(&self, f: impl FnOnce(&mut Stats) -> T) -> T {
        // Stats are plain counters; a poisoned lock still holds usable values.
        let mut guard = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    fn name(&self) -> &str {
        &self.link.name
    }
}

struct Inner {
    servers: Vec<Arc<Server>>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: supervisors shut down and kill their children.
        self.cancel.cancel();
    }
}

/// Handle to the supervised MCP servers. Cheap to clone; dropping the last
/// clone stops the servers like [`McpManager::stop`] (without waiting).
#[derive(Clone)]
pub struct McpManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for McpManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpManager")
            .field("servers", &self.status())
            .finish()
    }
}

impl McpManager {
    /// Validates `configs` and starts one supervisor per server. Returns at
    /// once: servers connect in the background and their tools appear in
    /// `registry` as `<name>.<tool>` when they are up (see [`Self::status`]).
    pub async fn start(
        configs: Vec<McpServerConfig>,
        registry: ToolRegistry,
    ) -> Result<McpManager> {
        let mut names = HashSet::new();
        for (index, config) in configs.iter().enumerate() {
            config.validate().map_err(|e| e.at_index(index))?;
            if !names.insert(config.name.clone()) {
                return Err(Error::DuplicateServer {
                    index,
                    server: config.name.clone(),
                });
            }
        }
        let cancel = CancellationToken::new();
        let mut servers = Vec::with_capacity(configs.len());
        let mut tasks = Vec::with_capacity(configs.len());
        for config in configs {
            let (link, _) = watch::channel(Link::Down {
                reason: format!("mcp server {} is starting", config.name),
            });
            let server = Arc::new(Server {
                link: Arc::new(ServerLink {
                    name: config.name.clone(),
                    link,
                }),
                stats: Mutex::new(Stats::default()),
            });
            let supervisor = Supervisor {
                config,
                server: Arc::clone(&server),
                registry: registry.clone(),
                cancel: cancel.child_token(),
            };
            tasks.push(tokio::spawn(supervisor.run()));
            servers.push(server);
        }
        Ok(McpManager {
            inner: Arc::new(Inner {
                servers,
                cancel,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// One entry per configured server, in configuration order.
    pub fn status(&self) -> Vec<McpServerStatus> {
        self.inner
            .servers
            .iter()
            .map(|server| {
                server.stats(|stats| McpServerStatus {
                    name: server.name().to_owned(),
                    connected: stats.connected,
                    tools: stats.tools,
                    restarts: stats.restarts,
                    last_error: stats.last_error.clone(),
                })
            })
            .collect()
    }

    /// Disconnects every server, kills the child processes (waiting for them
    /// to exit) and removes the servers' tools from the registry.
    pub async fn stop(&self) {
        self.inner.cancel.cancel();
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, "mcp supervisor ended abnormally");
            }
        }
    }
}

/// Receives server notifications for one connection.
#[derive(Clone)]
struct Handler {
    server: String,
    tools_changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
        tracing::debug!(server = %self.server, "mcp server says its tools changed");
        // A stored permit coalesces bursts into one re-list.
        self.tools_changed.notify_one();
        std::future::ready(())
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("baton", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// A spawned stdio server. Dropping it kills the process.
struct ChildGuard {
    name: String,
    pid: Option<u32>,
    kill: Option<oneshot::Sender<()>>,
    exit: Option<oneshot::Receiver<String>>,
    exited: Option<String>,
}

impl ChildGuard {
    /// Hands `child` to a task that reaps it and reports how it ended.
    fn watch(name: &str, mut child: Child) -> ChildGuard {
        let pid = child.id();
        let (kill, kill_rx) = oneshot::channel::<()>();
        let (exit_tx, exit) = oneshot::channel();
        let task_name = name.to_owned();
        tokio::spawn(async move {
            let name = task_name;
            let status = tokio::select! {
                status = child.wait() => status,
                // A kill request, or the guard was dropped.
                _ = kill_rx => {
                    if let Err(error) = child.start_kill() {
                        tracing::debug!(server = %name, %error, "killing mcp server failed");
                    }
                    child.wait().await
                }
            };
            let description = match status {
                Ok(status) => describe_exit(&name, status),
                Err(error) => format!("mcp server {name} could not be waited for: {error}"),
            };
            let _ = exit_tx.send(description);
        });
        ChildGuard {
            name: name.to_owned(),
            pid,
            kill: Some(kill),
            exit: Some(exit),
            exited: None,
        }
    }

    /// Resolves once the process has exited, with how it ended. Cancel-safe,
    /// and may be called again after it resolved.
    async fn wait_exit(&mut self) -> String {
        if let Some(exit) = self.exit.as_mut() {
            let description = exit
                .await
                .unwrap_or_else(|_| format!("mcp server {} exited", self.name));
            self.exit = None;
            self.exited = Some(description);
        }
        self.exited.clone().unwrap_or_default()
    }

    /// Kills the process and waits (bounded) until it is gone.
    async fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.wait_exit()).await;
    }
}

/// The program to start for `command`: a bare name is looked up on Baton's
/// own PATH (the child's environment may have none); a path, or a name not
/// found, is used as given and fails at spawn with the OS's reason.
fn resolve_program(command: &str) -> std::path::PathBuf {
    let as_given = std::path::PathBuf::from(command);
    if command.contains('/') {
        return as_given;
    }
    let Some(path) = std::env::var_os("PATH") else {
        return as_given;
    };
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
        .unwrap_or(as_given)
}

fn is_executable(path: &std::path::Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

fn describe_exit(name: &str, status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("mcp server {name} exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("mcp server {name} was killed by signal {signal}");
        }
    }
    format!("mcp server {name} exited ({status})")
}

/// Logs the child's stderr line by line, tagged with the server name.
fn log_stderr(name: String, stderr: ChildStderr) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut reader)
                .take(MAX_STDERR_LINE)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']);
                    if !text.is_empty() {
                        tracing::info!(target: "baton_mcp::stderr", server = %name, "{text}");
                    }
                }
                Err(error) => {
                    tracing::debug!(server = %name, %error, "reading mcp server stderr failed");
                    break;
                }
            }
        }
    });
}

/// One live connection.
struct Connection {
    service: RunningService<RoleClient, Handler>,
    child: Option<ChildGuard>,
    tools_changed: Arc<Notify>,
}

/// How a connection ended.
enum Ended {
    Stopped,
    Lost(String),
}

struct Supervisor {
    config: McpServerConfig,
    server: Arc<Server>,
    registry: ToolRegistry,
    cancel: CancellationToken,
}

impl Supervisor {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn prefix(&self) -> String {
        format!("{}.", self.config.name)
    }

    async fn run(self) {
        let initial = self.config.restart.initial();
        let max = self.config.restart.max();
        let mut backoff = initial;
        let mut generation = 0u64;
        loop {
            generation += 1;
            let started = Instant::now();
            let connected = tokio::select! {
                _ = self.cancel.cancelled() => break,
                connected = self.connect() => connected,
            };
            let reason = match connected {
                Ok(connection) => match self.serve(connection, generation).await {
                    Ended::Stopped => break,
                    Ended::Lost(reason) => reason,
                },
                Err(reason) => reason,
            };
            tracing::warn!(server = %self.name(), %reason, retry_in_ms = backoff.as_millis() as u64, "mcp server is down");
            self.server.link.link.send_replace(Link::Down {
                reason: reason.clone(),
            });
            self.server.stats(|stats| {
                stats.connected = false;
                stats.last_error = Some(reason);
            });
            if started.elapsed() >= max {
                // It was up for a while: this is a fresh failure, not a crash loop.
                backoff = initial;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max);
            self.server.stats(|stats| stats.restarts += 1);
        }
        self.server.link.link.send_replace(Link::Down {
            reason: format!("mcp server {} is stopped", self.name()),
        });
        self.server.stats(|stats| {
            stats.connected = false;
            stats.tools = 0;
        });
        if let Err(error) = self.registry.replace_prefix(&self.prefix(), Vec::new()) {
            tracing::warn!(server = %self.name(), %error, "removing mcp tools failed");
        }
    }

    /// Connects and initializes; the error is the reason to report.
    async fn connect(&self) -> std::result::Result<Connection, String> {
        let name = self.name().to_owned();
        let tools_changed = Arc::new(Notify::new());
        let handler = Handler {
            server: name.clone(),
            tools_changed: Arc::clone(&tools_changed),
        };
        let handshake = self.config.timeout().max(MIN_SETUP_TIMEOUT);
        let timed_out = || {
            format!(
                "mcp server {name} did not finish initializing within {} ms",
                handshake.as_millis()
            )
        };
        match &self.config.transport {
            McpTransport::Stdio {
                command,
                args,
                env,
                pass_env,
                cwd,
            } => {
                // The child starts from an empty environment: only the named
                // variables of Baton's own and the configured ones reach it,
                // so no provider key leaks into a tool server. The program is
                // still found on Baton's PATH.
                let mut cmd = Command::new(resolve_program(command));
                cmd.args(args)
                    .env_clear()
                    .envs(
                        pass_env
                            .iter()
                            .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
                    )
                    .envs(env.iter().map(|(k, v)| (k, v.expose_secret())))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                if let Some(cwd) = cwd {
                    cmd.current_dir(cwd);
                }
                // Its own process group: a Ctrl-C meant for Baton does not hit
                // the server directly; the supervisor decides when it stops.
                #[cfg(unix)]
                cmd.process_group(0);
                let mut child = cmd.spawn().map_err(|e| {
                    format!("mcp server {name} could not be started ({command}): {e}")
                })?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(format!("mcp server {name} has no stdio pipes"));
                };
                if let Some(stderr) = child.stderr.take() {
                    log_stderr(name.clone(), stderr);
                }
                let mut guard = ChildGuard::watch(&name, child);
                tracing::info!(server = %name, pid = ?guard.pid, %command, "started mcp server");
                match tokio::time::timeout(handshake, handler.serve((stdout, stdin))).await {
                    Ok(Ok(service)) => Ok(Connection {
                        service,
                        child: Some(guard),
                        tools_changed,
                    }),
                    Ok(Err(error)) => {
                        // Most often the process died; its exit status says more.
                        let reason = match tokio::time::timeout(EXIT_STATUS_WAIT, guard.wait_exit())
                            .await
                        {
                            Ok(exit) => format!("{exit} during initialization"),
                            Err(_) => format!("mcp server {name} failed to initialize: {error}"),
                        };
                        guard.kill().await;
                        Err(reason)
                    }
                    Err(_) => {
                        guard.kill().await;
                        Err(timed_out())
                    }
                }
            }
            McpTransport::Http { url } => {
                let transport = StreamableHttpClientTransport::from_config(
                    StreamableHttpClientTransportConfig::with_uri(url.as_str()),
                );
                match tokio::time::timeout(handshake, handler.serve(transport)).await {
                    Ok(Ok(service)) => Ok(Connection {
                        service,
                        child: None,
                        tools_changed,
                    }),
                    Ok(Err(error)) => Err(format!(
                        "mcp server {name} at {} failed to initialize: {}",
                        baton_types::redact_url(url),
                        baton_types::redact_url_in(&error.to_string(), url)
                    )),
                    Err(_) => Err(timed_out()),
                }
            }
        }
    }

    /// Lists the tools, registers them, and watches the connection until it
    /// is lost or the manager stops.
    async fn serve(&self, connection: Connection, generation: u64) -> Ended {
        let Connection {
            service,
            mut child,
            tools_changed,
        } = connection;
        let name = self.name().to_owned();
        if let Some(info) = service.peer_info() {
            let (server_name, version) = info
                .server_info
                .as_ref()
                .map(|i| (i.name.as_str(), i.version.as_str()))
                .unwrap_or_default();
            tracing::info!(server = %name, remote = %server_name, %version, protocol = %info.protocol_version, "connected to mcp server");
        }
        let peer = service.peer().clone();
        let close = service.cancellation_token();
        let quit = service.waiting();
        tokio::pin!(quit);
        // `quit` must not be polled again once it has completed.
        let mut quit_done = false;

        // The first listing must work, or the connection is useless.
        let listed = tokio::select! {
            listed = self.list_and_register(&peer) => listed,
            _ = &mut quit => {
                quit_done = true;
                Err(format!("mcp server {name} closed the connection while listing tools"))
            }
        };
        if let Err(reason) = listed {
            close.cancel();
            if !quit_done {
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, &mut quit).await;
            }
            let reason = match child.take() {
                Some(mut guard) => {
                    let exit = tokio::time::timeout(EXIT_STATUS_WAIT, guard.wait_exit()).await;
                    guard.kill().await;
                    exit.unwrap_or(reason)
                }
                None => reason,
            };
            return Ended::Lost(reason);
        }
        self.server.link.link.send_replace(Link::Up {
            peer: peer.clone(),
            generation,
        });
        self.server.stats(|stats| stats.connected = true);

        let reason = loop {
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    self.server.link.link.send_replace(Link::Down {
                        reason: format!("mcp server {name} is stopping"),
                    });
                    close.cancel();
                    let _ = tokio::time::timeout(SHUTDOWN_WAIT, &mut quit).await;
                    if let Some(guard) = child.take() {
                        guard.kill().await;
                    }
                    tracing::info!(server = %name, "stopped mcp server");
                    return Ended::Stopped;
                }
                _ = tools_changed.notified() => {
                    if let Err(reason) = self.list_and_register(&peer).await {
                        tracing::warn!(server = %name, %reason, "re-listing mcp tools failed");
                        self.server.stats(|stats| stats.last_error = Some(reason));
                    }
                }
                exit = async {
                    match child.as_mut() {
                        Some(guard) => guard.wait_exit().await,
                        None => std::future::pending().await,
                    }
                } => break exit,
                _ = &mut quit => {
                    quit_done = true;
                    // The transport closed; a dying child usually explains why.
                    let exit = match child.as_mut() {
                        Some(guard) => tokio::time::timeout(EXIT_STATUS_WAIT, guard.wait_exit()).await.ok(),
                        None => None,
                    };
                    break exit.unwrap_or_else(|| format!("mcp server {name} closed the connection"));
                }
            }
        };
        // Tell callers first, then tear down what is left of the connection.
        self.server.link.link.send_replace(Link::Down {
            reason: reason.clone(),
        });
        close.cancel();
        if !quit_done {
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, &mut quit).await;
        }
        if let Some(guard) = child {
            guard.kill().await;
        }
        Ended::Lost(reason)
    }

    /// `tools/list` (every page) and swap the server's tools in the registry.
    async fn list_and_register(&self, peer: &Peer<RoleClient>) -> std::result::Result<(), String> {
        let name = self.name();
        let limit = self.config.timeout().max(MIN_SETUP_TIMEOUT);
        let listed = tokio::time::timeout(limit, list_all_tools(peer))
            .await
            .map_err(|_| {
                format!(
                    "mcp server {name} did not list its tools within {} ms",
                    limit.as_millis()
                )
            })?
            .map_err(|e| format!("mcp server {name} failed to list its tools: {e}"))?;
        let mut seen = HashSet::new();
        let mut tools: Vec<Arc<McpTool>> = Vec::with_capacity(listed.len());
        for tool in listed {
            let remote = tool.name.to_string();
            match McpTool::new(&self.config, Arc::clone(&self.server.link), tool) {
                Some(tool) if seen.insert(remote.clone()) => tools.push(Arc::new(tool)),
                Some(_) => {
                    tracing::warn!(server = %name, tool = %remote, "mcp server listed a tool twice; keeping the first");
                }
                None => {
                    tracing::warn!(server = %name, "mcp server listed a tool without a name; skipped")
                }
            }
        }
        // The registry takes all or nothing; drop what it refuses (e.g. a
        // schema it cannot compile) rather than losing the whole server.
        let prefix = self.prefix();
        loop {
            let batch: Vec<Arc<dyn Tool>> = tools
                .iter()
                .map(|t| Arc::clone(t) as Arc<dyn Tool>)
                .collect();
            match self.registry.replace_prefix(&prefix, batch) {
                Ok(()) => break,
                Err(
                    baton_tools::Error::InvalidSchema { tool, .. }
                    | baton_tools::Error::DuplicateTool(tool),
                ) if tools.iter().any(|t| t.spec().name == tool) => {
                    tracing::warn!(server = %name, %tool, "tool refused by the registry; skipped");
                    tools.retain(|t| t.spec().name != tool);
                }
                Err(error) => {
                    return Err(Error::Registry {
                        server: name.to_owned(),
                        reason: error.to_string(),
                    }
                    .to_string());
                }
            }
        }
        let names: Vec<&str> = tools.iter().map(|t| t.spec().name.as_str()).collect();
        tracing::info!(server = %name, tools = ?names, "registered mcp tools");
        self.server.stats(|stats| stats.tools = tools.len());
        Ok(())
    }
}

/// Every page of `tools/list`, refusing cursors that loop or never end.
async fn list_all_tools(
    peer: &Peer<RoleClient>,
) -> std::result::Result<Vec<rmcp::model::Tool>, String> {
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    let mut seen_cursors: HashSet<String> = HashSet::new();
    for _ in 0..MAX_TOOL_PAGES {
        let params = PaginatedRequestParams::default().with_cursor(cursor.clone());
        let page = peer
            .list_tools(Some(params))
            .await
            .map_err(|e| e.to_string())?;
        tools.extend(page.tools);
        match page.next_cursor {
            None => return Ok(tools),
            Some(next) => {
                if !seen_cursors.insert(next.clone()) {
                    return Err(format!("tools/list repeated the cursor {next:?}"));
                }
                cursor = Some(next);
            }
        }
    }
    Err(format!(
        "tools/list returned more than {MAX_TOOL_PAGES} pages"
    ))
}
