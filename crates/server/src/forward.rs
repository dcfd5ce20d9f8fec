//! A standby node's listeners: while another node holds the database's
//! writer lease (and with it every session and run), each connection to
//! this node is forwarded byte for byte to the holder's advertised
//! address: gRPC calls and their streams, the front door, the console,
//! webhooks, TLS included (the holder terminates it and authenticates the
//! caller). Clients need not know which node holds the lease; a client
//! whose forwarded connection ends with the holder resumes its streams
//! with `after_seq` on any node.
//!
//! When this node takes the lease, [`Standby::stop`] ends the accept loops
//! and gives the listeners back, still bound, for the node's own servers:
//! connections arriving meanwhile wait in the listen queue.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_store::member::{Directory, Holder};
use baton_store::postgres::PgOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which of the holder's addresses a listener forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Grpc,
    Http,
}

/// The accept loops of a standby node (see the module docs).
#[derive(Debug)]
pub struct Standby {
    stop: watch::Sender<bool>,
    loops: Vec<(Port, JoinHandle<TcpListener>)>,
    refresh: JoinHandle<()>,
}

/// How long a connection waits for a holder to forward to (none holds the
/// lease, or the one known is this node's previous process) before it is
/// closed.
const WAIT_FOR_HOLDER: Duration = Duration::from_secs(10);

impl Standby {
    /// Forward every connection `listeners` accept to the lease holder,
    /// looked up in the database every `refresh`; `own_id` is this node's
    /// (once the lease is held under it, this node is taking over: the
    /// loops stop accepting, and leave new connections to its own
    /// servers).
    pub fn start(
        options: PgOptions,
        own_id: String,
        listeners: Vec<(Port, TcpListener)>,
        refresh: Duration,
    ) -> Standby {
        let (stop, stopped) = watch::channel(false);
        let (known_tx, known) = watch::channel::<Option<Holder>>(None);
        let directory = Arc::new(Mutex::new(Directory::new(options)));
        let refresh = {
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                loop {
                    let dir = directory.clone();
                    let found = tokio::task::spawn_blocking(move || {
                        dir.lock().unwrap_or_else(PoisonError::into_inner).holder()
                    })
                    .await;
                    match found {
                        Ok(Ok(h)) => {
                            known_tx.send_if_modified(|k| {
                                let id = |h: &Option<Holder>| h.as_ref().map(|h| (h.node_id.clone(), h.epoch));
                                let changed = id(k) != id(&h);
                                if changed {
                                    tracing::info!(holder = ?h.as_ref().map(|h| &h.node_id), "forwarding to the writer lease's holder");
                                }
                                *k = h;
                                changed
                            });
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot look up the lease holder"),
                        Err(_) => {}
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(refresh) => {}
                        _ = until_stopped(&mut stopped) => return,
                    }
                }
            })
        };
        let loops = listeners
            .into_iter()
            .map(|(port, listener)| {
                let stopped = stopped.clone();
                let known = known.clone();
                (
                    port,
                    tokio::spawn(accept_loop(port, listener, known, stopped, own_id.clone())),
                )
            })
            .collect();
        Standby {
            stop,
            loops,
            refresh,
        }
    }

    /// Stop forwarding new connections (those forwarded go on until they
    /// end) and give the listeners back.
    pub async fn stop(self) -> Vec<(Port, TcpListener)> {
        let _ = self.stop.send(true);
        self.refresh.abort();
        let mut out = Vec::new();
        for (port, task) in self.loops {
            if let Ok(l) = task.await {
                out.push((port, l));
            }
        }
        out
    }
}

/// Accept and forward until stopped. Once the holder is this node (it
/// took the lease and is recovering), stop accepting: connections wait in
/// the listen queue for the node's own servers.
async fn accept_loop(
    port: Port,
    listener: TcpListener,
    mut known: watch::Receiver<Option<Holder>>,
    mut stopped: watch::Receiver<bool>,
    own_id: String,
) -> TcpListener {
    let own_addr = listener.local_addr().ok();
    loop {
        let ours = known.borrow().as_ref().is_some_and(|h| h.node_id == own_id);
        if ours {
            until_stopped(&mut stopped).await;
            return listener;
        }
        let accepted = tokio::select! {
            biased;
            _ = until_stopped(&mut stopped) => return listener,
            changed = known.changed() => {
                if changed.is_err() {
                    // The lookups ended: only a stop does that.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
            a = listener.accept() => a,
        };
        let Ok((conn, from)) = accepted else {
            // Out of descriptors and the like: let it pass.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let known = known.clone();
        let own_id = own_id.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(port, conn, known, &own_id, own_addr).await {
                tracing::debug!(%from, error = %e, "forwarded connection ended");
            }
        });
    }
}

async fn forward(
    port: Port,
    mut conn: TcpStream,
    mut known: watch::Receiver<Option<Holder>>,
    own_id: &str,
    own_addr: Option<std::net::SocketAddr>,
) -> std::io::Result<()> {
    let holder = match tokio::time::timeout(WAIT_FOR_HOLDER, known.wait_for(|h| h.is_some())).await
    {
        Ok(Ok(h)) => h.clone(),
        // The lookups ended while this connection waited: the standby
        // stops only once this node holds the lease and its servers run,
        // so the connection is theirs.
        Ok(Err(_)) => None,
        Err(_) => return Err(std::io::Error::other("no node holds the writer lease")),
    };
    // Accepted just before this node took the lease: into its own listen
    // queue, for its own servers.
    let holder_id = holder
        .as_ref()
        .map_or_else(|| own_id.to_string(), |h| h.node_id.clone());
    let to = match (port, &holder, own_addr) {
        (_, None, Some(a)) => a.to_string(),
        (_, Some(h), Some(a)) if h.node_id == own_id => a.to_string(),
        (_, None, None) => {
            return Err(std::io::Error::other(
                "this node took the writer lease, and its own address is unknown",
            ));
        }
        (Port::Grpc, Some(h), _) => h.grpc_addr.clone(),
        (Port::Http, Some(h), _) => h.http_addr.clone(),
    };
    if to.is_empty() {
        return Err(std::io::Error::other(format!(
            "node {holder_id} advertises no address for this port"
        )));
    }
    let mut upstream = TcpStream::connect(&to).await?;
    let _ = upstream.set_nodelay(true);
    let _ = conn.set_nodelay(true);
    // Once another node holds the lease, the old holder is dead or fenced
    // (a paused one keeps its sockets open): cut the connection, so that
    // the client reconnects and reaches the new holder.
    let moved = async {
        loop {
            if known.changed().await.is_err() {
                // This node stopped forwarding; what it forwarded goes on.
                std::future::pending::<()>().await;
            }
            let now = known.borrow().as_ref().map(|h| h.node_id.clone());
            if now.as_deref() != Some(holder_id.as_str()) {
                return now;
            }
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => {
            copied?;
        }
        now = moved => {
            tracing::info!(from = %holder_id, to = ?now, "the lease moved: cutting a connection forwarded to its former holder");
        }
    }
    Ok(())
}

/// Resolves once the stop is signalled (or can no longer be).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    if let Ok(r) = stopped.wait_for(|s| *s).await {
        drop(r);
    }
}
