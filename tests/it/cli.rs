//! The `baton session …` client commands against a real server process.

use std::process::Output;

use baton_testkit::{BatonProcess, process::write_config};

use crate::common::bin;

async fn baton(server: &BatonProcess, args: &[&str]) -> Output {
    tokio::process::Command::new(bin())
        .arg("session")
        .args(args)
        .arg("--server")
        .arg(server.url())
        .output()
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_commands_print_readable_and_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        "[[models]]\nname = \"echo\"\nprovider = \"echo\"\nstream = true\n[models.echo]\nprefix = \"you said: \"\nchunk_chars = 3\n",
    )
    .unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();

    let out = baton(
        &server,
        &[
            "start",
            "--system-prompt",
            "be brief",
            "--meta",
            "team=support",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let id = stdout(&out).trim().to_string();
    assert!(
        id.parse::<baton::SessionId>().is_ok(),
        "prints the id: {id}"
    );

    let out = baton(&server, &["send", &id, "hello", "there"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("turn 1 accepted  user: hello there"),
        "{text}"
    );
    assert!(
        text.contains("… you said: hello there"),
        "deltas are printed inline: {text}"
    );
    assert!(text.contains("turn 1 assistant [echo/echo"), "{text}");
    assert!(text.contains("turn 1 completed"), "{text}");

    let out = baton(&server, &["get", &id, "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["status"], "idle");
    assert_eq!(v["metadata"]["team"], "support");
    assert_eq!(v["messages"][1]["content"], "you said: hello there");

    let out = baton(&server, &["resume", &id, "--after-seq", "0", "--json"]).await;
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.first().unwrap()["kind"]["type"], "session_started");
    assert_eq!(lines.last().unwrap()["kind"]["type"], "turn_completed");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    let out = baton(&server, &["list", "--status", "idle"]).await;
    assert!(stdout(&out).contains(&id), "{out:?}");

    // Errors: non-zero exit and a message naming the problem.
    let out = baton(&server, &["get", "nope"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("nope"),
        "{err}"
    );
    let out = baton(&server, &["list", "--status", "sleepy"]).await;
    assert!(!out.status.success());

    let out = baton(&server, &["delete", &id]).await;
    assert!(out.status.success());
    let out = baton(&server, &["get", &id]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}
