//! baton-mcp against real MCP servers: the fixture binary as a child process
//! over stdio, and the same fixture served over streamable HTTP on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../src/bin/fixture/server.rs"]
mod fixture;

use std::{
    collections::BTreeMap,
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use baton_mcp::{Error, McpManager, McpServerConfig, McpServerStatus, McpTransport, RestartConfig};
use baton_tools::{ToolError, ToolRegistry};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const FIXTURE: &str = env!("CARGO_BIN_EXE_baton-mcp-fixture");
const WAIT: Duration = Duration::from_secs(30);

/// Everything logged by any test, so one test can check the stderr lines.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("baton_mcp=debug")
            .with_ansi(false)
            .with_writer(move || Capture(Arc::clone(&sink)))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn fixture(name: &str) -> McpServerConfig {
    let mut config = McpServerConfig::stdio(name, FIXTURE, Vec::new());
    config.restart = RestartConfig {
        initial_backoff_ms: 50,
        max_backoff_ms: 400,
    };
    config
}

async fn start(configs: Vec<McpServerConfig>) -> (McpManager, ToolRegistry) {
    captured_logs();
    let registry = ToolRegistry::default();
    let manager = McpManager::start(configs, registry.clone()).await.unwrap();
    (manager, registry)
}

/// Polls `check` until it holds, failing the test after [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status(manager: &McpManager) -> McpServerStatus {
    manager.status().remove(0)
}

async fn connected(manager: &McpManager) {
    eventually("the server to connect", || status(manager).connected).await;
}

async fn call(registry: &ToolRegistry, tool: &str, args: Value) -> Result<String, ToolError> {
    let tool = registry
        .get(tool)
        .unwrap_or_else(|| panic!("{tool} is not registered"));
    tool.call(args).await
}

#[tokio::test]
async fn lists_tools_namespaced_with_schemas_and_idempotency() {
    let mut config = fixture("fx");
    config.idempotent_tools = vec!["echo".into()];
    config.timeout_ms = 1_234;
    let (manager, registry) = start(vec![config]).await;
    connected(&manager).await;

    let names: Vec<String> = registry.specs().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "fx.add",
            "fx.add_tool",
            "fx.echo",
            "fx.env",
            "fx.exit",
            "fx.fail",
            "fx.pid",
            "fx.slow_append"
        ]
    );
    let spec = |name: &str| registry.get(name).unwrap().spec().clone();
    let add = spec("fx.add");
    assert_eq!(add.description, "Add two numbers");
    assert_eq!(add.parameters["properties"]["a"], json!({"type": "number"}));
    assert_eq!(add.parameters["required"], json!(["a", "b"]));
    assert_eq!(add.output_schema.unwrap()["required"], json!(["sum"]));
    assert!(add.idempotent, "idempotentHint: true");
    assert!(!spec("fx.slow_append").idempotent, "idempotentHint: false");
    assert!(!spec("fx.fail").idempotent, "no annotations");
    assert!(spec("fx.echo").idempotent, "listed in idempotent_tools");
    assert_eq!(add.timeout, Duration::from_millis(1_234));

    let s = status(&manager);
    assert_eq!((s.name.as_str(), s.tools, s.restarts), ("fx", 8, 0));
    assert_eq!(s.last_error, None);

    manager.stop().await;
    assert!(
        registry.specs().is_empty(),
        "stop removes the server's tools"
    );
    assert!(!status(&manager).connected);
}

#[tokio::test]
async fn calls_return_text_structured_content_and_errors() {
    let (manager, registry) = start(vec![fixture("fx")]).await;
    connected(&manager).await;

    let sum: Value = serde_json::from_str(
        &call(&registry, "fx.add", json!({"a": 2, "b": 3}))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sum, json!({"sum": 5.0}));
    assert_eq!(
        call(&registry, "fx.echo", json!({"text": "héllo"}))
            .await
            .unwrap(),
        "héllo"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.txt");
    let args = json!({"path": path, "line": "one", "delay_ms": 0});
    call(&registry, "fx.slow_append", args).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");

    assert_eq!(
        call(&registry, "fx.fail", json!({})).await.unwrap_err(),
        ToolError::Failed("something went wrong".into())
    );
    let err = call(&registry, "fx.add", json!({"a": "x"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArguments { tool, reason } if tool == "fx.add" && reason.contains("must be numbers")),
        "{err:?}"
    );
    let err = call(&registry, "fx.echo", json!([1])).await.unwrap_err();
    assert!(matches!(err, ToolError::InvalidArguments { .. }), "{err:?}");

    // The server's stderr is logged line by line with the server's name.
    eventually("the fixture's stderr in the log", || {
        let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
        logs.lines()
            .any(|l| l.contains("fixture: starting") && l.contains("server=fx"))
    })
    .await;
    manager.stop().await;
}

/// A stdio server starts from an empty environment: Baton's own variables
/// (provider keys among them) reach it only when `pass_env` names them.
#[tokio::test]
async fn stdio_servers_get_only_the_environment_config_names() {
    let child_env = |config: McpServerConfig| async move {
        let name = config.name.clone();
        let (manager, registry) = start(vec![config]).await;
        connected(&manager).await;
        let text = call(&registry, &format!("{name}.env"), json!({}))
            .await
            .unwrap();
        manager.stop().await;
        serde_json::from_str::<BTreeMap<String, String>>(&text).unwrap()
    };
    let parent_path = std::env::var("PATH").expect("the test runs with a PATH");

    let mut bare = fixture("bare");
    let McpTransport::Stdio { env, .. } = &mut bare.transport else {
        unreachable!()
    };
    env.insert("NOTES_TOKEN".into(), SecretString::from("hunter2"));
    let seen = child_env(bare).await;
    assert_eq!(
        seen,
        BTreeMap::from([("NOTES_TOKEN".to_owned(), "hunter2".to_owned())]),
        "only the configured variable, nothing inherited"
    );

    let mut passing = fixture("passing");
    let McpTransport::Stdio { pass_env, .. } = &mut passing.transport else {
        unreachable!()
    };
    *pass_env = vec!["PATH".into(), "BATON_TEST_SURELY_UNSET_VARIABLE".into()];
    let seen = child_env(passing).await;
    assert_eq!(
        seen,
        BTreeMap::from([("PATH".to_owned(), parent_path)]),
        "a named variable passes through; a named but unset one is skipped"
    );
}

#[tokio::test]
async fn call_timeout_is_reported() {
    let mut config = fixture("fx");
    config.timeout_ms = 200;
    let (manager, registry) = start(vec![config]).await;
    connected(&manager).await;
    let dir = tempfile::tempdir().unwrap();
    let args = json!({"path": dir.path().join("x"), "line": "late", "delay_ms": 5_000});
    let err = call(&registry, "fx.slow_append", args).await.unwrap_err();
    assert_eq!(
        err,
        ToolError::Timeout {
            tool: "fx.slow_append".into(),
            after: Duration::from_millis(200)
        }
    );
    manager.stop().await;
}

#[tokio::test]
async fn dead_server_is_unavailable_then_restarted() {
    let (manager, registry) = start(vec![fixture("fx")]).await;
    connected(&manager).await;
    let first_pid = call(&registry, "fx.pid", json!({})).await.unwrap();

    // A non-idempotent call in flight when the server dies is not re-run.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("side-effect.txt");
    let slow = {
        let tool = registry.get("fx.slow_append").unwrap();
        let args = json!({"path": path, "line": "once", "delay_ms": 1_000});
        tokio::spawn(async move { tool.call(args).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = call(&registry, "fx.exit", json!({"code": 3}))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ToolError::Unavailable {
            tool: "fx.exit".into(),
            reason: "mcp server fx exited with status 3".into()
        }
    );
    let err = slow.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ToolError::Unavailable { tool, reason } if tool == "fx.slow_append" && reason.contains("exited with status 3")),
        "{err:?}"
    );

    eventually("the server to restart", || {
        let s = status(&manager);
        s.connected && s.restarts >= 1
    })
    .await;
    let s = status(&manager);
    assert_eq!(
        s.last_error.as_deref(),
        Some("mcp server fx exited with status 3")
    );
    let second_pid = call(&registry, "fx.pid", json!({})).await.unwrap();
    assert_ne!(first_pid, second_pid, "a new process");
    assert_eq!(
        call(&registry, "fx.echo", json!({"text": "back"}))
            .await
            .unwrap(),
        "back"
    );
    assert!(
        !path.exists(),
        "the interrupted side effect was not repeated"
    );

    // Killed from outside: calls made while it is down name the reason.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &second_pid])
        .status()
        .unwrap();
    assert!(killed.success());
    eventually("the kill to be noticed", || {
        status(&manager)
            .last_error
            .is_some_and(|e| e.contains("killed by signal 9"))
    })
    .await;
    eventually("the server to restart again", || {
        let s = status(&manager);
        s.connected && s.restarts >= 2
    })
    .await;
    let third_pid = call(&registry, "fx.pid", json!({})).await.unwrap();
    assert_ne!(second_pid, third_pid);
    manager.stop().await;
    assert!(registry.get("fx.pid").is_none());
}

#[tokio::test]
async fn stop_kills_the_child() {
    let (manager, registry) = start(vec![fixture("fx")]).await;
    connected(&manager).await;
    let pid = call(&registry, "fx.pid", json!({})).await.unwrap();
    let tool = registry.get("fx.echo").unwrap();
    manager.stop().await;
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid])
        .status()
        .unwrap();
    assert!(!alive.success(), "process {pid} still running after stop");
    let err = tool.call(json!({"text": "x"})).await.unwrap_err();
    assert_eq!(
        err,
        ToolError::Unavailable {
            tool: "fx.echo".into(),
            reason: "mcp server fx is stopped".into()
        }
    );
}

#[tokio::test]
async fn tools_list_changed_updates_the_registry() {
    let (manager, registry) = start(vec![fixture("fx")]).await;
    connected(&manager).await;
    assert!(registry.get("fx.extra").is_none());
    assert_eq!(
        call(&registry, "fx.add_tool", json!({"name": "extra"}))
            .await
            .unwrap(),
        "added extra"
    );
    eventually("fx.extra to be registered", || {
        registry.get("fx.extra").is_some()
    })
    .await;
    assert_eq!(
        call(&registry, "fx.extra", json!({})).await.unwrap(),
        "dynamic extra"
    );
    assert_eq!(status(&manager).tools, 9);
    manager.stop().await;
}

#[tokio::test]
async fn unstartable_command_is_retried_with_backoff() {
    let mut config = McpServerConfig::stdio("ghost", "/nonexistent/baton-mcp-server", Vec::new());
    config.restart = RestartConfig {
        initial_backoff_ms: 10,
        max_backoff_ms: 40,
    };
    let (manager, registry) = start(vec![config]).await;
    eventually("a few restarts", || status(&manager).restarts >= 3).await;
    let s = status(&manager);
    assert!(!s.connected);
    let error = s.last_error.unwrap();
    assert!(
        error.starts_with("mcp server ghost could not be started"),
        "{error}"
    );
    assert!(registry.specs().is_empty());
    manager.stop().await;
}

#[tokio::test]
async fn invalid_configs_are_rejected_naming_the_field() {
    let registry = ToolRegistry::default();
    let err = McpManager::start(
        vec![McpServerConfig::http("web", "localhost:80")],
        registry.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "mcp[0].url: must be an http:// or https:// url (server \"web\")"
    );

    let err = McpManager::start(vec![fixture("a"), fixture("a")], registry.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateServer { index: 1, server } if server == "a"),
        "{err}"
    );

    let err = toml::from_str::<McpServerConfig>("name = \"notes\"\ntransport = \"stdio\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("command: required for transport stdio (server \"notes\")"),
        "{err}"
    );
}

#[tokio::test]
async fn streamable_http_server() {
    let ct = CancellationToken::new();
    let service: StreamableHttpService<fixture::FixtureServer, LocalSessionManager> =
        StreamableHttpService::new(
            || Ok(fixture::FixtureServer::new()),
            Default::default(),
            StreamableHttpServerConfig::default().with_cancellation_token(ct.child_token()),
        );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn({
        let ct = ct.clone();
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { ct.cancelled_owned().await })
                .await
        }
    });

    let (manager, registry) = start(vec![McpServerConfig::http(
        "web",
        format!("http://{addr}/mcp"),
    )])
    .await;
    connected(&manager).await;
    assert_eq!(status(&manager).tools, 8);
    let sum: Value = serde_json::from_str(
        &call(&registry, "web.add", json!({"a": 1, "b": 2}))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sum, json!({"sum": 3.0}));
    assert_eq!(
        call(&registry, "web.fail", json!({})).await.unwrap_err(),
        ToolError::Failed("something went wrong".into())
    );
    call(&registry, "web.add_tool", json!({"name": "late"}))
        .await
        .unwrap();
    eventually("web.late to be registered", || {
        registry.get("web.late").is_some()
    })
    .await;
    assert_eq!(
        call(&registry, "web.late", json!({})).await.unwrap(),
        "dynamic late"
    );

    manager.stop().await;
    assert!(registry.specs().is_empty());
    ct.cancel();
    server.await.unwrap().unwrap();
}
