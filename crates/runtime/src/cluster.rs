//! `[cluster]`: this process as one node of several on one PostgreSQL
//! database (see docs/scaling.md).

use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

/// `[cluster]`: how this node joins the others on its database. Every
/// node on a database holds a row and a heartbeat there; one holds the
/// writer lease and owns every session and run, the others stand by,
/// forward calls to it, and take over when it dies, pauses past its lease
/// or leaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Stand by while another node holds the lease (forwarding calls to
    /// it) instead of refusing to start.
    pub enabled: bool,
    /// This node's id, unique on the database (default: the host name).
    pub node_id: Option<String>,
    /// Where the other nodes reach this node's gRPC port (`host:port`;
    /// default: the address `server.listen` bound, unless that is a
    /// wildcard).
    pub advertise: Option<String>,
    /// The same for its HTTP port (default: what `http.listen` bound).
    pub advertise_http: Option<String>,
    /// A holder not heard from for this long loses the lease, in ms.
    pub lease_ms: u64,
    /// How often nodes heartbeat and the holder renews, in ms.
    pub heartbeat_ms: u64,
    /// `"writer"` (the default): one node holds the writer lease and owns
    /// every session and run, the others stand by. `"sessions"`: every
    /// node serves, and each session is owned by the node that loaded it
    /// until it passivates; calls for it reach that node.
    pub ownership: Ownership,
    /// With `ownership = "sessions"` and `[server.tls]` or `[http.tls]`:
    /// PEM of the CA (or CAs) that signed the other nodes' server
    /// certificates, trusted when this node forwards a call to a session's
    /// owner.
    pub peer_ca_file: Option<std::path::PathBuf>,
    /// With `ownership = "sessions"` and mutual TLS on gRPC
    /// (`server.tls.client_ca_file`): the certificate (PEM) every node
    /// presents when it forwards a call to another, signed by a CA of the
    /// nodes' `client_ca_file`. A node takes a forwarded caller's
    /// certificate (`x-baton-client-cert-bin`) only on a connection that
    /// presents this certificate.
    pub peer_cert_file: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    pub peer_key_file: Option<std::path::PathBuf>,
}

/// How the nodes of a cluster share the sessions (`cluster.ownership`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    #[default]
    Writer,
    Sessions,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: None,
            advertise: None,
            advertise_http: None,
            lease_ms: 10_000,
            heartbeat_ms: 1_000,
            ownership: Ownership::Writer,
            peer_ca_file: None,
            peer_cert_file: None,
            peer_key_file: None,
        }
    }
}

impl ClusterConfig {
    /// This node as the store sees it; a bad value is named.
    pub fn node_options(
        &self,
    ) -> std::result::Result<baton_store::postgres::NodeOptions, ConfigError> {
        let id = match &self.node_id {
            Some(id) => {
                baton_store::postgres::check_node_id(id)
                    .map_err(|e| ConfigError::new("cluster.node_id", e))?;
                id.clone()
            }
            None => baton_store::postgres::default_node_id(),
        };
        if self.heartbeat_ms == 0 {
            return Err(ConfigError::new(
                "cluster.heartbeat_ms",
                "must be at least 1",
            ));
        }
        if self.lease_ms < self.heartbeat_ms.saturating_mul(3) {
            return Err(ConfigError::new(
                "cluster.lease_ms",
                format!(
                    "must be at least three heartbeats ({} ms), so that a holder renews \
                     before it expires",
                    self.heartbeat_ms.saturating_mul(3)
                ),
            ));
        }
        if self.ownership == Ownership::Sessions && !self.enabled {
            return Err(ConfigError::new(
                "cluster.ownership",
                "\"sessions\" is for the nodes of a cluster: set cluster.enabled = true",
            ));
        }
        Ok(baton_store::postgres::NodeOptions {
            id,
            grpc_addr: self.advertise.clone().unwrap_or_default(),
            http_addr: self.advertise_http.clone().unwrap_or_default(),
            lease: Duration::from_millis(self.lease_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            wait_for_lease: self.enabled,
            ownership: match self.ownership {
                Ownership::Writer => baton_store::postgres::Ownership::Writer,
                Ownership::Sessions => baton_store::postgres::Ownership::Sessions,
            },
        })
    }

    /// The address to advertise for a listener that bound `bound`: the
    /// configured one, or the bound one unless it is a wildcard.
    pub fn advertised(
        configured: Option<&str>,
        bound: std::net::SocketAddr,
        field: &str,
    ) -> std::result::Result<String, ConfigError> {
        if let Some(a) = configured {
            return Ok(a.to_string());
        }
        if bound.ip().is_unspecified() {
            return Err(ConfigError::new(
                field,
                format!(
                    "needed when the listener binds the wildcard address {bound}: the other \
                     nodes must know where to reach this one"
                ),
            ));
        }
        Ok(bound.to_string())
    }
}
