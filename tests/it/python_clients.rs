//! The OpenAI Python SDK and Python's grpcio, with Baton API keys, against
//! the real binary: the examples in examples/python run as they are.
//! Their Python environment is made by `./dev setup` (target/pyenv);
//! `BATON_TEST_PYTHON` names another interpreter.

use std::path::PathBuf;

use baton_testkit::{BatonProcess, process::write_config};

use crate::access::{create_key_for, offline_key};
use crate::common::bin;

pub(crate) fn python() -> PathBuf {
    let p = std::env::var_os("BATON_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/pyenv/bin/python"
            ))
        });
    assert!(
        p.exists(),
        "{} is missing: run ./dev setup (it makes the Python environment the client tests use)",
        p.display()
    );
    p
}

/// Run `examples/python/<script>` with `args` and `envs`: its stdout (it
/// must succeed).
pub(crate) fn run_with(script: &str, args: &[&str], envs: &[(&str, String)]) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/").to_string() + script;
    let out = std::process::Command::new(python())
        .arg(&path)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn run(script: &str, envs: &[(&str, String)]) -> String {
    run_with(script, &[], envs)
}

/// [`run_with`], its output read as one JSON value a line.
pub(crate) fn json_lines(
    script: &str,
    args: &[&str],
    envs: &[(&str, String)],
) -> Vec<serde_json::Value> {
    run_with(script, args, envs)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_and_grpcio_work_with_api_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        "[auth]\nenabled = true\n",
    )
    .unwrap();
    let (_, admin) = offline_key(&config, "default", &["admin"]);
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let key = create_key_for(&server, &admin, "acme", &["client"]).await;
    let http = server.http_url().unwrap();
    let grpc = server.url().replace("http://", "");

    let text = run(
        "openai_client.py",
        &[("BATON_HTTP", http), ("BATON_API_KEY", key.clone())],
    );
    assert!(text.contains("answer: hello from the OpenAI SDK"), "{text}");
    assert!(text.contains("wrong key refused: 401"), "{text}");

    let text = run(
        "grpc_client.py",
        &[("BATON_GRPC", grpc), ("BATON_API_KEY", key)],
    );
    assert!(text.contains("answer: hello from grpcio"), "{text}");
    assert!(text.contains("no key refused: UNAUTHENTICATED"), "{text}");
    server.terminate().await.unwrap();
}
