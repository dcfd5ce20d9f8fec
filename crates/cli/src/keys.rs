//! `baton keys …`: API keys, over the Admin API of a running server (an
//! admin key), or `--offline` on a stopped server's data dir (how the first
//! admin key is made).

use anyhow::{Context, bail};
use baton_proto::v1::{self, admin_client::AdminClient};

use crate::client::Conn;
use crate::settings::ConfigArgs;

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create a key; prints it once (only its hash is kept).
    Create {
        /// The tenant the key acts in.
        #[arg(long, default_value = baton_types::DEFAULT_TENANT)]
        tenant: String,
        /// client, reviewer, operator or admin (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// A reviewer group it decides gates for (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// What it is for.
        #[arg(long, default_value = "")]
        name: String,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
        /// Write it into the data dir of a stopped server instead of calling
        /// a running one (the first admin key).
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List keys (ids, tenants, roles; never the keys).
    List {
        /// Only this tenant's keys.
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Revoke a key: refused from the next call on.
    Revoke { id: String },
    /// Replace a key with a new one (same tenant, roles and groups).
    Rotate {
        id: String,
        /// Keep the old key working (revoke it once clients have moved).
        #[arg(long)]
        keep_old: bool,
    },
}

fn print_key(k: &v1::ApiKey, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "id": k.id, "name": k.name, "tenant": k.tenant, "roles": k.roles,
                "groups": k.groups, "created_at_unix_ms": k.created_at_unix_ms,
                "expires_at_unix_ms": k.expires_at_unix_ms,
                "revoked_at_unix_ms": k.revoked_at_unix_ms, "created_by": k.created_by,
                "rotated_from": k.rotated_from,
            })
        );
        return;
    }
    let state = if k.revoked_at_unix_ms != 0 {
        "revoked"
    } else if k.expires_at_unix_ms != 0 && k.expires_at_unix_ms <= baton_types::now_unix_ms() {
        "expired"
    } else {
        "active"
    };
    println!(
        "{}  {state}  tenant={}  roles={}  groups={}  {}",
        k.id,
        k.tenant,
        k.roles.join(","),
        if k.groups.is_empty() {
            "-".into()
        } else {
            k.groups.join(",")
        },
        k.name
    );
}

fn print_created(c: &v1::CreatedKey, json: bool) {
    let Some(k) = &c.key else { return };
    if json {
        println!("{}", serde_json::json!({ "id": k.id, "secret": c.secret }));
    } else {
        println!("{}", c.secret);
        eprintln!(
            "key {} for tenant {} ({}): shown once, store it now",
            k.id,
            k.tenant,
            k.roles.join(",")
        );
    }
}

fn expiry(days: Option<u64>) -> u64 {
    days.map_or(0, |d| {
        baton_types::now_unix_ms().saturating_add(d.saturating_mul(86_400_000))
    })
}

pub async fn run(conn: Conn, cmd: KeyCommand) -> anyhow::Result<()> {
    let json = conn.json;
    if let KeyCommand::Create {
        tenant,
        roles,
        groups,
        name,
        expires_in_days,
        offline: true,
        config,
    } = cmd
    {
        return offline_create(
            config,
            tenant,
            roles,
            groups,
            name,
            expiry(expires_in_days),
            json,
        )
        .await;
    }
    let mut client = AdminClient::new(crate::client::connect(&conn).await?);
    let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    match cmd {
        KeyCommand::Create {
            tenant,
            roles,
            groups,
            name,
            expires_in_days,
            ..
        } => {
            let c = client
                .create_key(v1::CreateKeyRequest {
                    name,
                    tenant,
                    roles,
                    groups,
                    expires_at_unix_ms: expiry(expires_in_days),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_created(&c, json);
        }
        KeyCommand::List { tenant } => {
            let keys = client
                .list_keys(v1::ListKeysRequest { tenant })
                .await
                .map_err(status)?
                .into_inner()
                .keys;
            for k in &keys {
                print_key(k, json);
            }
        }
        KeyCommand::Revoke { id } => {
            let k = client
                .revoke_key(v1::RevokeKeyRequest { id })
                .await
                .map_err(status)?
                .into_inner();
            print_key(&k, json);
        }
        KeyCommand::Rotate { id, keep_old } => {
            let c = client
                .rotate_key(v1::RotateKeyRequest {
                    id,
                    keep_old,
                    expires_at_unix_ms: 0,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_created(&c, json);
        }
    }
    Ok(())
}

/// Create a key in the data dir of a stopped server.
async fn offline_create(
    config: ConfigArgs,
    tenant: String,
    roles: Vec<String>,
    groups: Vec<String>,
    name: String,
    expires_at_unix_ms: u64,
    json: bool,
) -> anyhow::Result<()> {
    let config = config.load()?;
    let roles = baton_server::parse_roles(&roles).map_err(anyhow::Error::msg)?;
    if tenant.trim().is_empty() {
        bail!("--tenant must not be empty");
    }
    let by = format!("cli:{}", whoami());
    let (record, secret) =
        baton_server::new_key(name, tenant, roles, groups, expires_at_unix_ms, by.clone())?;
    // The key's creation goes into the audit trail, as over the API.
    let mut builder = baton_runtime::Runtime::builder(config.runtime());
    let audit = if config.audit.enabled {
        let cfg = config.audit.resolve(&config.store.data_dir);
        let log = tokio::task::spawn_blocking(move || baton_audit::AuditLog::open(cfg))
            .await
            .context("audit log open task")?
            .context("cannot open the audit log")?;
        builder = builder.with_audit(std::sync::Arc::new(baton_server::audit::SignedAudit(
            log.clone(),
        )));
        Some(log)
    } else {
        None
    };
    let runtime = builder
        .start()
        .await
        .with_context(|| {
            format!(
                "cannot open the data dir {} (is a server running on it? stop it, or create the key over the API)",
                config.store.data_dir.display()
            )
        })?;
    let added = runtime.add_api_key(record, &by).await;
    runtime.shutdown().await;
    if let Some(log) = audit {
        log.flush().await.context("audit log flush")?;
    }
    let record = added?;
    print_created(
        &v1::CreatedKey {
            key: Some(baton_server::key_to_proto(&record)),
            secret,
        },
        json,
    );
    Ok(())
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}
