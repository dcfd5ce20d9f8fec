//! Connections to PostgreSQL: options, TLS, the settings every
//! connection gets, and how database errors map onto the store's.

use std::time::Duration;

use postgres::Client;

use crate::{Error, Result};

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq-style URL or key=value string
    /// (`postgresql://user:password@host:5432/db`).
    pub url: String,
    /// Most connections reads use at once (the writer has its own).
    pub pool_size: usize,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// A PEM file of certificate authorities the database's certificate
    /// is checked against, besides the system's (a private CA). TLS itself
    /// is asked for in the URL: `sslmode=require` (refuse a plain
    /// connection), `prefer` (the default: TLS when the server offers it),
    /// `disable`. The certificate and host name are always verified when
    /// TLS is used.
    pub ca_file: Option<std::path::PathBuf>,
    /// This process as a node of the database's cluster.
    pub node: NodeOptions,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PgOptions")
            .field("pool_size", &self.pool_size)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            ca_file: None,
            node: NodeOptions::default(),
        }
    }
}

/// This process as a member of the database's cluster (see
/// [`crate::member`]): every node that opens a store on the database
/// joins under its id, heartbeats, and writes only while it holds the
/// writer lease.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Unique among the nodes on one database (letters, digits, `-`, `_`,
    /// `.`; at most 64). A second live process with the same id is refused.
    pub id: String,
    /// Where other nodes forward gRPC calls for the sessions this node owns
    /// (`host:port`; empty: not reachable).
    pub grpc_addr: String,
    /// The same for HTTP (the front door, the console, webhooks).
    pub http_addr: String,
    /// How long the writer lease lasts without a renewal: a node paused or
    /// cut off for longer loses it, and another node may take over.
    pub lease: Duration,
    /// How often a node heartbeats (and the holder renews the lease).
    pub heartbeat: Duration,
    /// Wait for the lease as long as it takes (a standby); otherwise give
    /// up after the connect timeout, naming the node that holds it.
    pub wait_for_lease: bool,
    /// What this node owns: the whole database under the writer lease, or
    /// the sessions it claims one by one (see [`crate::owners`]).
    pub ownership: Ownership,
}

/// How the nodes on one database share its sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ownership {
    /// One node at a time holds the writer lease and with it every session
    /// and run; the others stand by.
    #[default]
    Writer,
    /// Every node holds a lease of its own and owns the sessions it
    /// claimed; every write names its sessions and is refused unless this
    /// node owns each of them at its epoch.
    Sessions,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            id: default_node_id(),
            grpc_addr: String::new(),
            http_addr: String::new(),
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(1),
            wait_for_lease: false,
            ownership: Ownership::Writer,
        }
    }
}

/// The machine's host name, the id of a node not given one.
pub fn default_node_id() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    if name.is_empty() {
        "baton".into()
    } else {
        name
    }
}

/// Why `id` cannot be a node id, if it cannot.
pub fn check_node_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("node id {id:?} must be 1 to 64 characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "node id {id:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// The TLS connector of a connection: the system's roots, and the CA
/// file's when one is set.
fn tls(options: &PgOptions) -> Result<postgres_native_tls::MakeTlsConnector> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "[store.postgres] ca_file: cannot read {}: {e}",
                path.display()
            ))
        })?;
        let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| {
            Error::Config(format!(
                "[store.postgres] ca_file: {} is not a PEM certificate: {e}",
                path.display()
            ))
        })?;
        builder.add_root_certificate(cert);
    }
    let connector = builder
        .build()
        .map_err(|e| Error::Config(format!("[store.postgres] TLS: {e}")))?;
    Ok(postgres_native_tls::MakeTlsConnector::new(connector))
}

/// Open a connection with the settings every connection of the store has.
pub(crate) fn connect(options: &PgOptions) -> Result<Client> {
    let mut config: postgres::Config = options
        .url
        .parse()
        .map_err(|e| Error::Config(format!("[store] url: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("baton");
    }
    // A database that stops answering (a hung server, a partition) must
    // fail calls rather than hang them: TCP keepalives and a bound on
    // unacknowledged data on our side; on the server's side, keepalives
    // for this session (so that it drops a node that vanished, and the
    // node lock with it, in about 25 s) and a statement timeout.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30));
    let mut client = config.connect(tls(options)?).map_err(db_error)?;
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                 SET tcp_keepalives_count = 3; SET statement_timeout = '60s'",
        )
        .map_err(db_error)?;
    Ok(client)
}

/// The SQLSTATE `baton_fence` raises when the node writing does not hold
/// the writer lease at the epoch it names.
pub(crate) const FENCED: &str = "BF001";

/// The SQLSTATE `baton_fence_owned` raises when a write names a session
/// this node does not own.
pub(crate) const NOT_OWNER: &str = "BF002";

/// A database error as the store's: `Unavailable` when a later try may
/// succeed — the connection is gone or cannot be made, the server is
/// shutting down, starting, out of resources (53xxx: disk full, memory,
/// connections), read-only (a standby after a failover), the
/// transaction lost a serialization race or deadlock, or a lock wait timed
/// out — else a storage
/// error with the server's message and SQLSTATE.
pub(crate) fn db_error(e: postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            if code == FENCED {
                return Error::Unavailable(format!(
                    "fenced: {} (another node took over this database's sessions; this node \
                     must stop)",
                    db.message()
                ));
            }
            if code == NOT_OWNER {
                return Error::NotOwner(db.message().to_string());
            }
            let text = format!("postgres: {} {code}: {}", db.severity(), db.message());
            let retryable = code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code.starts_with("40")
                || code == "25006"
                // A lock wait timed out (lock_timeout).
                || code == "55P03";
            if retryable {
                Error::Unavailable(text)
            } else {
                Error::Rocks(text)
            }
        }
        None => {
            let io = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
            // The client's message with its causes ("error performing TLS
            // handshake: … certificate verify failed").
            let mut text = format!("postgres: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            if e.is_closed() || io || text.contains("timed out") {
                Error::Unavailable(text)
            } else {
                Error::Rocks(text)
            }
        }
    }
}
