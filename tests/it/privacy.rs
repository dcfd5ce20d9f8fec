//! Encryption at rest by data subject and erasure by crypto-shredding, on
//! the real binary: no plaintext of a conversation anywhere on disk (data
//! dir, audit log, backup); an erasure interrupted by SIGKILL right after
//! the keys are destroyed, redone after the restart; the erased subject's
//! sessions gone, its content unreadable in a backup taken before (restored
//! next to the live keys), another subject untouched, and the audit chain
//! still verifying, with the erasure in it.

use baton::proto::v1;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};

use crate::common::*;

const MASTER: &str = "8f1d2c3b4a5968778695a4b3c2d1e0f000112233445566778899aabbccddeeff";

/// Every file under `dir` that contains `needle`.
fn files_with(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            hits.extend(files_with(&p, needle));
        } else if std::fs::read(&p)
            .unwrap_or_default()
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            hits.push(p.display().to_string());
        }
    }
    hits
}

fn baton(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("run baton")
}

/// `baton erase --subject SUBJECT --json` against `server`, which must
/// succeed: what it reports.
fn erased(server: &str, subject: &str) -> serde_json::Value {
    let out = baton(&["erase", "--subject", subject, "--json", "--server", server]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The server with erasures cut by a failpoint after the sessions are
/// deleted, and three sessions on it: two of customer 7 (`MARKER-7A`,
/// `MARKER-7B`), one of customer 9 (`MARKER-9`).
async fn start_with_three_sessions(
    config: &std::path::Path,
) -> (BatonProcess, Client, [String; 3]) {
    let server = BatonProcess::start_with_env(
        bin(),
        config,
        &[("BATON_FAILPOINT", "erase_after_sessions")],
    )
    .await
    .unwrap();
    let mut c = server.client().await.unwrap();
    let a = session(&mut c, "cust-7", "MARKER-7A my card is 4111").await;
    let b = session(&mut c, "cust-7", "MARKER-7B second visit").await;
    let other = session(&mut c, "cust-9", "MARKER-9 other customer").await;
    (server, c, [a, b, other])
}

async fn session(c: &mut Client, customer: &str, text: &str) -> String {
    let id = c
        .start_session(v1::StartSessionRequest {
            metadata: [("customer_id".to_string(), customer.to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let t = turn(c, &id, text).await;
    assert_eq!(kinds(&t).last(), Some(&"turn_completed"));
    id
}

async fn content(c: &mut Client, id: &str) -> Result<String, tonic::Status> {
    c.get_session(v1::GetSessionRequest {
        session_id: id.into(),
    })
    .await
    .map(|r| format!("{:?}", r.into_inner()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subject_is_unreadable_everywhere_and_erasure_survives_sigkill() {
    if rocksdb_only("it reads every file of the data dir and of an online backup for plaintext") {
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("data.keys");
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let master = dir.path().join("master.key");
    std::fs::write(&master, format!("{MASTER}\n")).unwrap();
    let privacy = format!(
        "[privacy]\nencryption = true\nmaster_key_file = {:?}\nsubject_field = \"customer_id\"\n",
        master.display().to_string()
    );
    let toml = format!(
        "backup_dir = {:?}\n{}\n{privacy}",
        backups.display().to_string(),
        fake_model_toml(&fake.base_url(), false),
    );
    let config = write_config(dir.path(), &data, &toml).unwrap();
    // Two sessions of customer 7, one of customer 9; the fake echoes the
    // message, so answers carry the markers too.
    let (server, mut c, [a, b, other]) = start_with_three_sessions(&config).await;
    // No customer: the session is its own subject, with a key of its own.
    let solo = c
        .start_session(v1::StartSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    turn(&mut c, &solo, "MARKER-S alone").await;
    // Its fork has a key of its own, and goes with it when it is erased.
    let mut inspect = baton::proto::v1::inspect_client::InspectClient::new(
        tonic::transport::Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let last = c
        .get_session(v1::GetSessionRequest {
            session_id: solo.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .last_seq;
    let fork = inspect
        .fork_session(v1::ForkSessionRequest {
            session_id: solo.clone(),
            at_seq: last,
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let doomed_by_delete = c
        .start_session(v1::StartSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    turn(&mut c, &doomed_by_delete, "MARKER-D deleted").await;
    assert!(content(&mut c, &a).await.unwrap().contains("MARKER-7A"));
    let out = baton(&[
        "backup",
        "--to",
        backups.join("before").to_str().unwrap(),
        "--server",
        &server.url(),
    ]);
    assert!(out.status.success(), "{out:?}");
    // Sealed at rest: no marker in any file of the data dir (audit log
    // included), the backup, or the keystore.
    for place in [&data, &backups, &keys] {
        assert_eq!(
            files_with(place, "MARKER-"),
            Vec::<String>::new(),
            "{}",
            place.display()
        );
    }

    // The erasure dies after deleting the sessions, before destroying the
    // keys (an abort, as a SIGKILL ends the process): the CLI sees the
    // connection go.
    let out = baton(&["erase", "--subject", "cust-7", "--server", &server.url()]);
    assert!(!out.status.success(), "{out:?}");
    drop(server);
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = server.client().await.unwrap();
    // The sessions are gone; the keys are not yet.
    for id in [&a, &b] {
        assert_eq!(
            content(&mut c, id).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
    // Redone: the keys go (nothing left to delete).
    let r = erased(&server.url(), "cust-7");
    assert_eq!(r["sessions_deleted"], 0, "{r}");
    assert_eq!(r["keys_destroyed"], true, "{r}");
    assert!(content(&mut c, &other).await.unwrap().contains("MARKER-9"));
    // A session that is its own subject, with its fork.
    assert!(content(&mut c, &fork).await.unwrap().contains("MARKER-S"));
    let r = erased(&server.url(), &format!("session:{solo}"));
    assert_eq!(r["sessions_deleted"], 2, "{r}");
    // Deleting a session that is its own subject destroys its key too.
    assert!(
        content(&mut c, &doomed_by_delete)
            .await
            .unwrap()
            .contains("MARKER-D")
    );
    c.delete_session(v1::DeleteSessionRequest {
        session_id: doomed_by_delete.clone(),
    })
    .await
    .unwrap();
    let t = turn(&mut c, &other, "MARKER-9 again").await;
    assert_eq!(kinds(&t).last(), Some(&"turn_completed"));
    server.terminate().await.unwrap();

    // The audit chain verifies, sealed records and all, with the erasure.
    let audit = data.join("audit");
    let out = baton(&["audit", "verify", "--dir", audit.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let log = std::fs::read_to_string(audit.join("audit.log")).unwrap();
    assert_eq!(
        log.matches("erase_subject").count(),
        2,
        "two completed erasures"
    );
    assert!(
        !log.contains("cust-7"),
        "the subject is named by its hash only"
    );

    // The backup taken before, restored next to the live keys: customer
    // 7's sessions are there and unreadable, customer 9's read.
    let restored = dir.path().join("restored");
    let out = baton(&[
        "restore",
        "--from",
        backups.join("before").to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    // (The signing key is never in a backup: the restored server signs
    // with the original one.)
    let toml2 = format!(
        "{}\n{privacy}keys_dir = {:?}\n\n[audit]\nkey_file = {:?}\n",
        fake_model_toml(&fake.base_url(), false),
        keys.display().to_string(),
        audit.join("audit.key").display().to_string()
    );
    let dir2 = tempfile::tempdir().unwrap();
    let config2 = write_config(dir2.path(), &restored, &toml2).unwrap();
    let server = BatonProcess::start(bin(), &config2).await.unwrap();
    let mut c = server.client().await.unwrap();
    for (id, marker) in [
        (&a, "MARKER-7A"),
        (&solo, "MARKER-S"),
        (&fork, "MARKER-S"),
        (&doomed_by_delete, "MARKER-D"),
    ] {
        let old = content(&mut c, id).await.unwrap();
        assert!(!old.contains(marker) && old.contains("erased"), "{old}");
    }
    assert!(content(&mut c, &other).await.unwrap().contains("MARKER-9"));
    server.terminate().await.unwrap();
    // Subject access (offline) opens what is sealed: the journal and the
    // audit records of customer 9; customer 7 has nothing left to export.
    let export = |customer: &str| {
        let out = baton(&[
            "export",
            "--subject",
            customer,
            "--field",
            "customer_id",
            "--config",
            config2.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let nine = export("cust-9");
    let s = &nine["sessions"][0];
    assert!(s["journal"].to_string().contains("MARKER-9"), "{s}");
    assert!(
        s["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["data"].to_string().contains("MARKER-9")),
        "{}",
        s["audit"]
    );
    for place in [&data, &backups, &keys, &restored] {
        assert_eq!(
            files_with(place, "MARKER-"),
            Vec::<String>::new(),
            "{}",
            place.display()
        );
    }
}

/// The same erasure with the subject keys in the store's PostgreSQL
/// database (`keystore = "database"`, as a cluster runs): nothing stored in
/// plaintext; an erasure cut by a crash after the sessions went is redone
/// after the restart, its keys then gone from the database; another
/// customer's session reads through a SIGKILL and a restart. Runs in the
/// PostgreSQL pass of the suite (its keys go in that pass's database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_in_the_database_an_erasure_cut_by_a_crash_is_redone() {
    if !baton_pgtest::on_postgres() {
        eprintln!("run in the PostgreSQL pass: its keys go in the store's database");
        return;
    }
    let fake = FakeOpenAi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let master = dir.path().join("master.key");
    std::fs::write(&master, format!("{MASTER}\n")).unwrap();
    let toml = format!(
        "{}\n[privacy]\nencryption = true\nkeystore = \"database\"\nmaster_key_file = {:?}\n\
         subject_field = \"customer_id\"\n",
        fake_model_toml(&fake.base_url(), false),
        master.display().to_string()
    );
    let config = write_config(dir.path(), &data, &toml).unwrap();
    let url = baton_pgtest::database_for(&data).unwrap().unwrap();
    let db = baton_pgtest::PgServer::database_name(&url);
    let sql = |q: &str| {
        baton_pgtest::shared()
            .unwrap()
            .psql_in(&db, q)
            .unwrap()
            .trim()
            .to_string()
    };
    let (server, _c, [a, b, other]) = start_with_three_sessions(&config).await;
    for table in ["baton_journal", "baton_snapshots", "baton_payloads"] {
        assert_eq!(
            sql(&format!(
                "SELECT count(*) FROM {table} \
                 WHERE position(convert_to('MARKER-', 'UTF8') in value) > 0"
            )),
            "0",
            "plaintext in {table}"
        );
    }
    let wrapped = "SELECT count(*) FROM baton_keys WHERE key >= 'k/'::bytea AND key < 'k0'::bytea";
    assert_eq!(sql(wrapped), "2", "one key per customer");

    // Cut after the sessions are deleted, before the keys go.
    let out = baton(&["erase", "--subject", "cust-7", "--server", &server.url()]);
    assert!(!out.status.success(), "{out:?}");
    drop(server);
    assert_eq!(sql(wrapped), "2", "the keys outlived the crash");
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = server.client().await.unwrap();
    for id in [&a, &b] {
        assert_eq!(
            content(&mut c, id).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
    let r = erased(&server.url(), "cust-7");
    assert_eq!(r["keys_destroyed"], true, "{r}");
    assert_eq!(sql(wrapped), "1", "only cust-9's key is left");
    let hash = "sha256(convert_to('subject:cust-7', 'UTF8'))";
    assert_eq!(
        sql(&format!(
            "SELECT count(*) FROM baton_keys WHERE key = convert_to('s/', 'UTF8') || {hash}"
        )),
        "0"
    );
    assert_eq!(
        sql(&format!(
            "SELECT count(*) FROM baton_keys WHERE key = convert_to('e/', 'UTF8') || {hash}"
        )),
        "1"
    );

    // Through a SIGKILL and a restart: customer 9 reads and goes on;
    // customer 7 comes back with a new key.
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = server.client().await.unwrap();
    assert!(content(&mut c, &other).await.unwrap().contains("MARKER-9"));
    let t = turn(&mut c, &other, "MARKER-9 again").await;
    assert_eq!(kinds(&t).last(), Some(&"turn_completed"));
    let back = session(&mut c, "cust-7", "MARKER-7C back").await;
    assert!(content(&mut c, &back).await.unwrap().contains("MARKER-7C"));
    assert_eq!(sql(wrapped), "2");
    server.terminate().await.unwrap();

    // The offline export opens the keys in the database too.
    let out = baton(&[
        "export",
        "--subject",
        "cust-9",
        "--field",
        "customer_id",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let journal = doc["sessions"][0]["journal"].to_string();
    assert!(journal.contains("MARKER-9 again"), "{doc}");
}
