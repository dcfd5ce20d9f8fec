//! `baton export --subject`: everything Baton holds about a data subject,
//! as one JSON document (subject access), read offline from a stopped
//! server's data dir and audit log.
//!
//! The subject is a session id, or with `--field` a value of a session
//! metadata key (`--field customer_id --subject c-42`: every session whose
//! `metadata.customer_id` is `c-42`). For each session: its metadata, its
//! whole journal (messages, answers, tool calls and results, decisions,
//! policy evaluations), its gate records, and its records in the audit log,
//! verified while read.

use std::path::PathBuf;

use anyhow::Context;
use baton_store::{Durability, Store, StoreOptions};
use baton_types::SessionId;
use clap::Args;
use serde_json::{Value, json};

use crate::settings::ConfigArgs;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A session id, or with --field a value of that metadata key.
    #[arg(long)]
    subject: String,
    /// The session metadata key that names the subject (e.g. customer_id).
    #[arg(long)]
    field: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Write here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let audit = config.audit.resolve(&config.store.data_dir);
    let dir = config.store.data_dir.clone();
    // With [privacy] encryption, sealed content opens with the subject keys
    // (an erased subject's does not).
    let ring = baton_runtime::open_keyring(&config.privacy, &config.store.data_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let opener = ring.clone();
    // The configured store: the data dir's RocksDB, or the PostgreSQL
    // database of [store.postgres].
    let postgres = config.store.postgres_options()?;
    let store = tokio::task::spawn_blocking(move || {
        let mut opts = StoreOptions::new(dir, Durability::Sync);
        opts.keyring = opener;
        opts.postgres = postgres;
        Store::open(opts)
    })
    .await?
    .with_context(|| {
        format!(
            "cannot open the store in {} (stop the server that uses it first)",
            config.store.data_dir.display()
        )
    })?;
    let result = collect(&store, &args, &audit, ring.as_deref()).await;
    store.close();
    let doc = result?;
    let text = serde_json::to_string_pretty(&doc)?;
    match &args.out {
        Some(path) => std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

async fn collect(
    store: &Store,
    args: &ExportArgs,
    audit: &baton_audit::AuditConfig,
    ring: Option<&baton_store::seal::Keyring>,
) -> anyhow::Result<Value> {
    let ids = subject_sessions(store, args).await?;
    let key = baton_audit::read_public_key(&baton_audit::public_key_path(&audit.key_file)).ok();
    let mut sessions = Vec::new();
    for id in ids {
        let Some(meta) = store.load_meta(id).await? else {
            continue;
        };
        let mut journal = Vec::new();
        let mut after = 0;
        loop {
            let page = store.read_journal(id, after, 1000).await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            journal.extend(page.into_iter().map(|e| json!(e)));
            after = last;
        }
        let gates = store
            .list_gates(
                baton_store::gates::GateFilter {
                    session: Some(id),
                    ..Default::default()
                },
                None,
                usize::MAX,
            )
            .await?
            .gates;
        let audit_records = match &key {
            Some(key) if audit.path.join("audit.log").exists() => {
                let mut out = Vec::new();
                baton_audit::export(
                    &audit.path,
                    key,
                    &baton_audit::ExportFilter {
                        session_id: Some(id.to_string()),
                        ..Default::default()
                    },
                    &mut out,
                )
                .context("the audit log failed verification")?;
                String::from_utf8_lossy(&out)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .map(|r| open_audit(r, id, ring))
                    .collect()
            }
            _ => Vec::new(),
        };
        sessions.push(json!({
            "session_id": id.to_string(),
            "tenant": meta.tenant,
            "route": meta.route,
            "system_prompt": meta.system_prompt,
            "metadata": meta.metadata,
            "status": meta.status.as_str(),
            "created_at_unix_ms": meta.created_at_unix_ms,
            "updated_at_unix_ms": meta.updated_at_unix_ms,
            "journal": journal,
            "gates": gates,
            "audit": audit_records,
        }));
    }
    Ok(json!({
        "subject": args.subject,
        "field": args.field,
        "exported_at_unix_ms": baton_types::now_unix_ms(),
        "sessions": sessions,
    }))
}

/// An audit record whose data was sealed, opened with the subject's key;
/// `{"erased": true}` when the key was destroyed.
fn open_audit(
    mut record: Value,
    id: baton_types::SessionId,
    ring: Option<&baton_store::seal::Keyring>,
) -> Value {
    use base64::Engine;
    let (Some(ring), Some(sealed), Some(seq)) = (
        ring,
        record["data"]["sealed"].as_str().map(String::from),
        record["data"]["seq"].as_u64(),
    ) else {
        return record;
    };
    let opened = match base64::engine::general_purpose::STANDARD.decode(sealed) {
        Ok(b) => match ring.unseal(&baton_runtime::audit_aad(id, seq), &b) {
            Ok(plain) => serde_json::from_slice::<Value>(&plain)
                .unwrap_or_else(|e| json!({ "seq": seq, "unreadable": e.to_string() })),
            Err(baton_store::Error::Erased(_)) => json!({ "seq": seq, "erased": true }),
            Err(e) => json!({ "seq": seq, "unreadable": e.to_string() }),
        },
        Err(e) => json!({ "seq": seq, "unreadable": e.to_string() }),
    };
    record["data"] = opened;
    record
}

/// The sessions of the subject: the one named, or every session whose
/// metadata `field` has the subject's value.
async fn subject_sessions(store: &Store, args: &ExportArgs) -> anyhow::Result<Vec<SessionId>> {
    let Some(field) = &args.field else {
        let id: SessionId = args.subject.parse().with_context(|| {
            format!(
                "--subject {:?} is not a session id (use --field for a metadata value)",
                args.subject
            )
        })?;
        return Ok(vec![id]);
    };
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_sessions(None, after, 1000).await?;
        ids.extend(
            page.sessions
                .iter()
                .filter(|(_, m)| m.metadata.get(field) == Some(&args.subject))
                .map(|(id, _)| *id),
        );
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(ids),
        }
    }
}
