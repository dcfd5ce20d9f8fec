//! Which node runs the flows. Where one node owns everything (RocksDB, or
//! PostgreSQL under the writer lease) that node does, and a [`Lead`] just
//! holds its [`Flows`]. Where nodes own sessions one by one (`[cluster]
//! ownership = "sessions"`), one node at a time runs them: the one that
//! claims the flows lease, an owner key in the database like a session's
//! ([`LEASE_KEY`]), held for as long as that node's own lease lives.
//!
//! That node runs every run (each claimed while its actor lives, so its
//! writes are fenced by the claim), every timer, schedule and queue
//! consumer, and starts the runs of webhooks: each fires once, and a
//! flow's `max_active_runs` holds across the cluster, because one node
//! counts. The others forward the Flows calls and webhook deliveries to it
//! (see the server's `owner` module), and try for the lease every
//! heartbeat: when its holder dies, pauses past its lease or stops, the
//! first to claim it starts the flows, which recovers the runs as a
//! restart does (completed steps not run again, recorded answers not asked
//! again). A flow gate decided on another node wakes its run through the
//! store ([`crate::index::wake_key`]), since the run's actor is not there.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_runtime::RuntimeHandle;
use baton_store::Batch;
use baton_store::owners::Claim;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::config::FlowsConfig;
use crate::def::Flow;
use crate::error::Result;
use crate::manager::Flows;

/// The owner key of the flows lease: never a session's (16 bytes), and
/// its first byte is neither a run's (`r`) nor a creation's (`i`).
pub const LEASE_KEY: &[u8] = b"baton-flows-lease";

/// Who runs the flows, as this node knows it.
#[derive(Debug, Clone)]
pub enum Holder {
    /// This node.
    Here(Flows),
    /// Another node, where calls are forwarded.
    Node {
        node_id: String,
        grpc_addr: String,
        http_addr: String,
    },
    /// Nobody at this moment (the holder is gone and no node claimed the
    /// lease yet): retry.
    Nobody(String),
}

/// Where the flows run (cheap to clone). `None` into it: this server
/// serves no flows.
#[derive(Clone, Default)]
pub struct Lead {
    state: Option<watch::Receiver<Holder>>,
    /// Where the lease is contended: who holds it, as this node says.
    tx: Option<Arc<watch::Sender<Holder>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Set where the lease is contended: given up at shutdown.
    rt: Option<RuntimeHandle>,
}

impl std::fmt::Debug for Lead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lead")
            .field("holder", &self.holder())
            .finish_non_exhaustive()
    }
}

impl From<Flows> for Lead {
    fn from(flows: Flows) -> Lead {
        let (_, state) = watch::channel(Holder::Here(flows));
        Lead {
            state: Some(state),
            ..Lead::default()
        }
    }
}

impl From<Option<Flows>> for Lead {
    fn from(flows: Option<Flows>) -> Lead {
        flows.map(Lead::from).unwrap_or_default()
    }
}

impl Lead {
    /// Contend for the flows lease (see the module): check `config` and
    /// the flows of `code` (refusing what could not run, on every node),
    /// try once now (starting the flows here on success, or failing as
    /// [`Flows::start`] would), then again every heartbeat while another
    /// node holds it.
    pub async fn contend(rt: RuntimeHandle, config: FlowsConfig, code: Vec<Flow>) -> Result<Lead> {
        crate::prepare::prepare(&config, code.clone())?;
        let (tx, state) = watch::channel(Holder::Nobody(
            "no node holds the flows lease at this moment".into(),
        ));
        let tx = Arc::new(tx);
        try_hold(&rt, &config, &code, &tx).await?;
        let period = Duration::from_millis(rt.config().cluster.heartbeat_ms.max(10));
        let (held, sender) = (rt.clone(), tx.clone());
        let contend = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let here = match &*sender.borrow() {
                    Holder::Here(f) => Some(f.clone()),
                    _ => None,
                };
                match here {
                    // Held for as long as this node's lease lives; runs a
                    // gone node left claimed (its actors stopped without
                    // giving them up) are activated here, which takes them.
                    Some(flows) => activate_orphans(&held, &flows).await,
                    None => {
                        if let Err(e) = try_hold(&held, &config, &code, &sender).await {
                            tracing::warn!(error = %e, "cannot take the flows lease");
                        }
                    }
                }
            }
        });
        let wakes = tokio::spawn(wake_through_store(
            rt.watch_gates(),
            rt.store().clone(),
            state.clone(),
        ));
        Ok(Lead {
            state: Some(state),
            tx: Some(tx),
            tasks: Arc::new(Mutex::new(vec![contend, wakes])),
            rt: Some(rt),
        })
    }

    /// The flows, when this node runs them.
    pub fn here(&self) -> Option<Flows> {
        match &*self.state.as_ref()?.borrow() {
            Holder::Here(f) => Some(f.clone()),
            _ => None,
        }
    }

    /// Who runs the flows; `None`: this server serves none.
    pub fn holder(&self) -> Option<Holder> {
        self.state.as_ref().map(|s| s.borrow().clone())
    }

    /// Whether this server serves flows (here or by forwarding).
    pub fn serves(&self) -> bool {
        self.state.is_some()
    }

    /// Stop contending, stop the flows if they run here (their runs go on
    /// at the next holder), and give the lease up.
    pub async fn shutdown(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
        if let Some(flows) = self.here() {
            // Calls are no longer taken here: they are answered "retry"
            // until another node holds the lease.
            if let Some(tx) = &self.tx {
                tx.send_replace(Holder::Nobody("the flows' node is stopping".into()));
            }
            flows.shutdown().await;
            if let Some(rt) = &self.rt
                && let Err(e) = rt.store().release_owner_key(LEASE_KEY.to_vec()).await
            {
                tracing::warn!(error = %e, "cannot give the flows lease up");
            }
        }
    }
}

/// Claim the flows lease: start the flows here when it is this node's,
/// or learn which node holds it.
async fn try_hold(
    rt: &RuntimeHandle,
    config: &FlowsConfig,
    code: &[Flow],
    tx: &watch::Sender<Holder>,
) -> Result<()> {
    match rt.store().claim_owner_key(LEASE_KEY.to_vec()).await? {
        Claim::Ours => match Flows::start_held(rt.clone(), config.clone(), code.to_vec()).await {
            Ok(flows) => {
                tracing::info!("this node runs the flows (it holds the flows lease)");
                tx.send_replace(Holder::Here(flows));
                Ok(())
            }
            Err(e) => {
                // Another node may do better (its definitions directory).
                let _ = rt.store().release_owner_key(LEASE_KEY.to_vec()).await;
                Err(e)
            }
        },
        Claim::Owned(o) => {
            let changed =
                !matches!(&*tx.borrow(), Holder::Node { node_id, .. } if *node_id == o.node_id);
            if changed {
                tracing::info!(node = %o.node_id, "the flows run on another node: their calls are forwarded there");
            }
            tx.send_replace(Holder::Node {
                node_id: o.node_id,
                grpc_addr: o.grpc_addr,
                http_addr: o.http_addr,
            });
            Ok(())
        }
    }
}

/// Activate the runs whose claims a gone node left (orphaned `r` owner
/// keys): their actors claim them here and go on.
async fn activate_orphans(rt: &RuntimeHandle, flows: &Flows) {
    let keys = match rt.store().orphaned(1024).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for runs a gone node left");
            return;
        }
    };
    for k in keys {
        if k.len() == 17
            && k[0] == b'r'
            && let Some(run) = crate::record::RunId::from_bytes(&k[1..])
        {
            flows.activate(run);
        }
    }
}

/// On a node that does not run the flows: a flow gate decided here wakes
/// its run on the node that does, through the store.
async fn wake_through_store(
    mut gates: tokio::sync::broadcast::Receiver<baton_types::GateRecord>,
    store: baton_store::Store,
    state: watch::Receiver<Holder>,
) {
    loop {
        match gates.recv().await {
            Ok(g) if g.outcome.is_some() && g.kind == baton_types::GateKind::Flow => {
                if matches!(*state.borrow(), Holder::Here(_)) {
                    // Its actor is here: woken by the flows themselves.
                    continue;
                }
                let Some(run) = crate::effects::gate_run(&g.policy) else {
                    continue;
                };
                let mut batch = Batch::new();
                batch.put_run_index(crate::index::wake_key(run), Vec::new());
                if let Err(e) = store.write(batch).await {
                    tracing::warn!(run = %run, error = %e, "cannot ask for a flow run's wake-up");
                }
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}
