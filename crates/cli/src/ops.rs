//! `baton backup` (online, through the running server) and `baton restore`
//! (offline, into a data dir the next `baton serve` starts on).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use baton_proto::v1::{self, inspect_client::InspectClient};
use baton_store::{Durability, Store, StoreOptions};

use crate::client::{Conn, rpc_error};
use crate::inspect::channel;

/// Ask the running server to erase a data subject by crypto-shredding.
pub async fn erase(conn: Conn, subject: String, tenant: String) -> anyhow::Result<()> {
    let mut client = InspectClient::new(channel(&conn).await?);
    let r = client
        .erase_subject(v1::EraseSubjectRequest {
            subject: subject.clone(),
            tenant,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if conn.json {
        println!(
            "{}",
            serde_json::json!({"subject": subject, "keys_destroyed": r.keys_destroyed,
                "sessions_deleted": r.sessions_deleted})
        );
    } else {
        println!(
            "erased    {subject}: keys {}, {} live session(s) deleted",
            if r.keys_destroyed {
                "destroyed"
            } else {
                "none left (erased before, or never used)"
            },
            r.sessions_deleted
        );
    }
    Ok(())
}

/// Ask the running server for a consistent backup into `to` (a directory on
/// the server's machine that must not exist yet).
pub async fn backup(conn: Conn, to: PathBuf) -> anyhow::Result<()> {
    // The server resolves paths itself: send an absolute one, so `--to
    // ./backups/x` means what it says when client and server share a machine.
    let to = std::path::absolute(&to)
        .with_context(|| format!("cannot make {} absolute", to.display()))?;
    let mut client = InspectClient::new(channel(&conn).await?);
    let r = client
        .backup(v1::BackupRequest {
            dest_path: to.display().to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if conn.json {
        println!(
            "{}",
            serde_json::json!({"path": r.path, "bytes": r.bytes, "files": r.files,
                "took_ms": r.took_ms, "sessions": r.sessions})
        );
    } else {
        println!("backup    {}", r.path);
        println!("sessions  {}", r.sessions);
        println!("size      {} in {} files", bytes(r.bytes), r.files);
        println!("took      {} ms", r.took_ms);
    }
    Ok(())
}

/// What a restore put in place.
struct Restored {
    sessions: u64,
    records: u64,
    files: u64,
    bytes: u64,
    audit: bool,
}

/// Copy the backup at `from` into `data_dir` and check that it opens.
///
/// The copy goes to a staging directory beside `data_dir` and is opened and
/// read there; only then does it take `data_dir`'s place, so a failed
/// restore leaves the old data dir as it was.
pub async fn restore(
    from: PathBuf,
    config: crate::settings::ConfigArgs,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    let data_dir = config.load()?.store.data_dir;
    if !from.join("CURRENT").is_file() {
        bail!(
            "{} is not a Baton backup (it has no RocksDB CURRENT file)",
            from.display()
        );
    }
    if config_store_is_postgres(&config)? {
        bail!(
            "the configured store is on PostgreSQL (store.backend = \"postgres\"): a backup \
             restores into a RocksDB data dir only; restore the database with its own tools \
             (pg_restore, point-in-time recovery)"
        );
    }
    let occupied = match std::fs::read_dir(&data_dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", data_dir.display())),
    };
    if occupied && !force {
        bail!(
            "data dir {} is not empty: restoring would replace it (pass --force to replace it)",
            data_dir.display()
        );
    }
    if occupied && data_dir.join("CURRENT").is_file() {
        // Refuse to pull a store out from under a running server: RocksDB's
        // lock file says whether one has it open.
        let dir = data_dir.clone();
        let opened = tokio::task::spawn_blocking(move || {
            Store::open(StoreOptions::new(dir, Durability::Sync)).map(|s| s.close())
        })
        .await?;
        if let Err(e) = opened {
            bail!(
                "cannot open the data dir {} to replace it (is a server running on it?): {e}",
                data_dir.display()
            );
        }
    }

    let name = data_dir
        .file_name()
        .with_context(|| format!("{} has no directory name", data_dir.display()))?
        .to_string_lossy()
        .into_owned();
    let pid = std::process::id();
    let staging = data_dir.with_file_name(format!(".{name}.restoring-{pid}"));
    let replaced = data_dir.with_file_name(format!(".{name}.replaced-{pid}"));

    let (src, dst) = (from.clone(), staging.clone());
    let copied = tokio::task::spawn_blocking(move || {
        if dst.exists() {
            std::fs::remove_dir_all(&dst)?;
        }
        baton_store::copy_dir(&src, &dst)
    })
    .await?;
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e)
            .with_context(|| format!("cannot copy {} to {}", from.display(), staging.display()));
    }

    let checked = check(&staging).await;
    let restored = match checked {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.context(format!("the backup at {} does not open", from.display())));
        }
    };

    // Swap the checked copy into place; the old data dir goes only after.
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let had_old = data_dir.exists();
    if had_old {
        std::fs::rename(&data_dir, &replaced)
            .with_context(|| format!("cannot move {} aside", data_dir.display()))?;
    }
    if let Err(e) = std::fs::rename(&staging, &data_dir) {
        if had_old {
            let _ = std::fs::rename(&replaced, &data_dir);
        }
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e)
            .with_context(|| format!("cannot move the restored copy to {}", data_dir.display()));
    }
    if had_old {
        std::fs::remove_dir_all(&replaced).with_context(|| {
            format!(
                "restored, but cannot remove the old data in {}",
                replaced.display()
            )
        })?;
    }

    if json {
        println!(
            "{}",
            serde_json::json!({"from": from.display().to_string(), "data_dir": data_dir.display().to_string(),
                "sessions": restored.sessions, "records": restored.records, "files": restored.files,
                "bytes": restored.bytes, "audit": restored.audit})
        );
    } else {
        println!("restored  {} into {}", from.display(), data_dir.display());
        println!(
            "sessions  {} ({} journal records)",
            restored.sessions, restored.records
        );
        println!(
            "size      {} in {} files{}",
            bytes(restored.bytes),
            restored.files,
            if restored.audit {
                ", with the audit log"
            } else {
                ""
            }
        );
        match (&config.config, &config.data_dir) {
            (_, Some(d)) => println!("start it with: baton serve --data-dir {}", d.display()),
            (Some(c), None) => println!("start it with: baton serve --config {}", c.display()),
            (None, None) => println!("start it with: baton serve"),
        }
    }
    Ok(())
}

/// Open the store at `dir` and read every session's metadata and the last
/// record of its journal.
async fn check(dir: &Path) -> anyhow::Result<Restored> {
    let path = dir.to_path_buf();
    let store =
        tokio::task::spawn_blocking(move || Store::open(StoreOptions::new(path, Durability::Sync)))
            .await?
            .context("cannot open the store")?;
    let result = async {
        let sessions = store.count_sessions().await?;
        let mut records = 0;
        let mut after = None;
        loop {
            let page = store.list_sessions(None, after, 1000).await?;
            for (id, _meta) in &page.sessions {
                let last = store.last_seq(*id).await?;
                if last > 0 {
                    match store.read_journal(*id, last - 1, 1).await {
                        Ok(tail) => anyhow::ensure!(
                            tail.first().map(|e| e.seq) == Some(last),
                            "session {id}: journal record {last} is missing"
                        ),
                        // Sealed ([privacy] encryption): the record is there
                        // (its key was read); the server opens it with the
                        // subject keys, which are never in a backup.
                        Err(baton_store::Error::NoKeyring | baton_store::Error::Erased(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                records += last;
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok::<_, anyhow::Error>((sessions, records))
    }
    .await;
    store.close();
    drop(store);
    let (sessions, records) = result?;
    let d = dir.to_path_buf();
    let (files, bytes) = tokio::task::spawn_blocking(move || baton_store::dir_size(&d)).await?;
    Ok(Restored {
        sessions,
        records,
        files,
        bytes,
        audit: dir.join("audit").is_dir(),
    })
}

/// `baton migrate-store`: the data dir's RocksDB store copied into the
/// configured PostgreSQL database, checked key space by key space.
pub async fn migrate_store(
    from: Option<PathBuf>,
    config: crate::settings::ConfigArgs,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = config.load()?;
    let from = from.unwrap_or_else(|| cfg.store.data_dir.clone());
    let mut store_cfg = cfg.store.clone();
    store_cfg.backend = baton_runtime::StoreBackend::Postgres;
    let pg = store_cfg
        .postgres_options()?
        .context("no database configured")?;
    if !from.join("CURRENT").is_file() {
        bail!("{} holds no RocksDB store", from.display());
    }
    // Sealed content moves with its subject keys when they are to be kept
    // in the database: the keystore of the source's keys_dir is copied too.
    let keystore = (cfg.privacy.encryption
        && cfg.privacy.keystore == baton_runtime::Keystore::Database)
        .then(|| cfg.privacy.keys_dir(&from));
    if let Some(dir) = &keystore
        && !dir.join("CURRENT").is_file()
    {
        bail!(
            "privacy.keystore is \"database\", but {} holds no keystore to copy (set \
             privacy.keys_dir to the source's)",
            dir.display()
        );
    }
    let (copied, keys) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let source = baton_store::rocks::RocksEngine::open(
            &from,
            baton_store::DEFAULT_CACHE_BYTES,
            baton_store::DEFAULT_MEMTABLE_BYTES,
        )
        .with_context(|| {
            format!(
                "cannot open {} (is a server running on it?)",
                from.display()
            )
        })?;
        let dest = baton_store::postgres::PgEngine::open(pg).context("cannot open the database")?;
        let copied = baton_store::migrate::copy_store(&source, &dest, |cf, keys, b| {
            if !json {
                println!("{cf:<12} {keys:>10} keys  {}", bytes(b));
            }
        })?;
        let keys = match &keystore {
            Some(dir) => {
                let n = baton_store::seal::copy_keystore(dir, &dest)
                    .with_context(|| format!("cannot copy the keystore {}", dir.display()))?;
                if !json {
                    println!(
                        "{:<12} {n:>10} keys  (from {})",
                        "subject keys",
                        dir.display()
                    );
                }
                Some(n)
            }
            None => None,
        };
        Ok((copied, keys))
    })
    .await??;
    if json {
        let spaces: serde_json::Map<String, serde_json::Value> = copied
            .key_spaces
            .iter()
            .map(|(cf, k, b)| {
                (
                    (*cf).to_string(),
                    serde_json::json!({"keys": k, "bytes": b}),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"keys": copied.keys(), "bytes": copied.bytes(), "key_spaces": spaces, "subject_keys": keys})
        );
    } else {
        println!(
            "copied {} keys ({}); now set store.backend = \"postgres\" and start the server",
            copied.keys(),
            bytes(copied.bytes())
        );
    }
    Ok(())
}

/// Whether the config puts the store on PostgreSQL.
fn config_store_is_postgres(config: &crate::settings::ConfigArgs) -> anyhow::Result<bool> {
    Ok(config.load()?.store.backend == baton_runtime::StoreBackend::Postgres)
}

/// `512 B`, `3.4 KiB`, `12.0 MiB`, `1.2 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_readable() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 + 400), "3.4 KiB");
        assert_eq!(bytes(12 * 1024 * 1024), "12.0 MiB");
    }

    fn into(data_dir: PathBuf) -> crate::settings::ConfigArgs {
        crate::settings::ConfigArgs {
            config: None,
            data_dir: Some(data_dir),
        }
    }

    #[tokio::test]
    async fn restore_refuses_a_non_empty_target_and_a_non_backup() {
        let dir = tempfile::tempdir().unwrap();
        let not_backup = dir.path().join("nb");
        std::fs::create_dir_all(&not_backup).unwrap();
        let e = restore(not_backup.clone(), into(dir.path().join("t")), false, false)
            .await
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("is not a Baton backup")));

        std::fs::write(not_backup.join("CURRENT"), "MANIFEST-000001\n").unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("keep"), "x").unwrap();
        let e = restore(not_backup, into(target.clone()), false, false)
            .await
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("--force")));
        assert_eq!(std::fs::read_to_string(target.join("keep")).unwrap(), "x");
    }
}
