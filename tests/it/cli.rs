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

/// `baton migrate-store`: a RocksDB data dir a server wrote, sealed
/// (`[privacy] encryption`), is copied into PostgreSQL with its keystore
/// (`keystore = "database"`); a server on the database then opens and
/// serves the same sessions and goes on with them; a second copy into the
/// now non-empty database is refused, naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_migrates_into_postgres_and_the_server_goes_on_there() {
    use crate::common::{get, start, turn};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Written by hand (not write_config, which may put the store on the
    // shared database): the source must be RocksDB.
    let master = dir.path().join("master.key");
    std::fs::write(
        &master,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .unwrap();
    let privacy = format!(
        "[privacy]\nencryption = true\nmaster_key_file = {:?}\n",
        master.display().to_string()
    );
    let models = format!("[[models]]\nname = \"echo\"\nprovider = \"echo\"\n\n{privacy}");
    let rocks = dir.path().join("rocks.toml");
    std::fs::write(
        &rocks,
        format!(
            "[store]\ndata_dir = {:?}\n\n{models}",
            data.display().to_string()
        ),
    )
    .unwrap();
    let server = BatonProcess::start(bin(), &rocks).await.unwrap();
    let mut c = server.client().await.unwrap();
    let a = start(&mut c, "echo").await;
    turn(&mut c, &a, "before the move").await;
    let b = start(&mut c, "echo").await;
    server.terminate().await.unwrap();

    let pg = baton_pgtest::PgServer::start().unwrap();
    let url = pg.database().unwrap();
    let on_pg = dir.path().join("pg.toml");
    std::fs::write(
        &on_pg,
        format!(
            "[store]\ndata_dir = {:?}\nbackend = \"postgres\"\npostgres = {{ url_env = \"MIGRATE_TEST_DB_URL\" }}\n\n{models}keystore = \"database\"\n",
            dir.path().join("node").display().to_string()
        ),
    )
    .unwrap();
    let migrate = || {
        std::process::Command::new(bin())
            .args(["migrate-store", "--json", "--from"])
            .arg(&data)
            .arg("--config")
            .arg(&on_pg)
            .env("MIGRATE_TEST_DB_URL", &url)
            .output()
            .unwrap()
    };
    let out = migrate();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["key_spaces"]["sessions"]["keys"], 2, "{v}");
    assert!(
        v["key_spaces"]["journal"]["keys"].as_u64().unwrap() >= 5,
        "{v}"
    );
    // Two subjects (each session its own): a key list and a key each.
    assert_eq!(v["subject_keys"], 4, "{v}");
    let again = migrate();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{again:?}"
    );

    let server = BatonProcess::start_with_env(bin(), &on_pg, &[("MIGRATE_TEST_DB_URL", &url)])
        .await
        .unwrap();
    let mut c = server.client().await.unwrap();
    let s = get(&mut c, &a).await;
    let texts: Vec<&str> = s.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, vec!["before the move", "before the move"]);
    turn(&mut c, &b, "after the move").await;
    let s = get(&mut c, &b).await;
    assert_eq!(s.messages.len(), 2);
    server.terminate().await.unwrap();
}
