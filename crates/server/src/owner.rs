//! Calls for a session that another live node owns (`[cluster] ownership
//! = "sessions"`) are forwarded to that node over gRPC, streams included:
//! clients need not know which node owns which session.
//!
//! The runtime answers such a call with
//! [`baton_runtime::Error::OwnedElsewhere`], naming the owner and its
//! advertised gRPC address; the service sends the same request there with
//! the caller's `authorization` header, and the owner authenticates and
//! authorizes it again. A forwarded call carries `x-baton-forwarded-by`
//! (this node's id): a node that finds the session owned elsewhere again
//! (ownership moved meanwhile) answers UNAVAILABLE instead of forwarding a
//! second time, and the client retries. An event stream forwarded from an
//! owner that dies ends with an error; the client resumes it with
//! `after_seq` on any node, which by then owns the session or forwards to
//! the node that took it over.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use baton_proto::v1::gates_client::GatesClient;
use baton_proto::v1::sessions_client::SessionsClient;
use baton_runtime::Error;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::status::status;

/// The metadata key marking a forwarded call, with the forwarding node's id.
pub const FORWARDED_BY: &str = "x-baton-forwarded-by";

/// Headers that travel with a forwarded call: who calls, and the call's
/// deadline.
const KEPT: [&str; 2] = ["authorization", "grpc-timeout"];

/// What a service keeps of a call to send it on to the owner if need be.
pub(crate) struct Onward {
    metadata: MetadataMap,
}

impl Onward {
    pub(crate) fn of<T>(req: &Request<T>) -> Self {
        let mut metadata = MetadataMap::new();
        for key in KEPT {
            if let Some(v) = req.metadata().get(key) {
                metadata.insert(key, v.clone());
            }
        }
        if let Some(v) = req.metadata().get(FORWARDED_BY) {
            metadata.insert(FORWARDED_BY, v.clone());
        }
        Onward { metadata }
    }

    /// The owner to send the call to, or the error to answer: anything but
    /// "owned elsewhere", or a call that was forwarded here already.
    pub(crate) fn owner(&self, err: Error) -> Result<String, Status> {
        match &err {
            Error::OwnedElsewhere { owner, .. }
                if !owner.grpc_addr.is_empty() && self.metadata.get(FORWARDED_BY).is_none() =>
            {
                Ok(owner.grpc_addr.clone())
            }
            _ => Err(status(&err)),
        }
    }

    /// `msg` as a call to the owner, from this node.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        for key in KEPT {
            if let Some(v) = self.metadata.get(key) {
                req.metadata_mut().insert(key, v.clone());
            }
        }
        let me = node_id();
        if let Ok(v) = MetadataValue::try_from(me.as_str()) {
            req.metadata_mut().insert(FORWARDED_BY, v);
        }
        req
    }
}

/// This node's id as forwarded calls name it.
fn node_id() -> String {
    NODE.get().cloned().unwrap_or_default()
}

static NODE: OnceLock<String> = OnceLock::new();

/// Set this node's id, named by the calls it forwards (once, at start).
pub fn set_node_id(id: &str) {
    let _ = NODE.set(id.to_string());
}

/// One connection (HTTP/2, multiplexed) per owner address, made on first
/// use and kept.
fn channel(addr: &str) -> Result<Channel, Status> {
    static CHANNELS: OnceLock<Mutex<HashMap<String, Channel>>> = OnceLock::new();
    let channels = CHANNELS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = channels.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = map.get(addr) {
        return Ok(c.clone());
    }
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
        Status::unavailable(format!(
            "the owning node's address {addr:?} is not usable: {e}"
        ))
    })?;
    let c = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_lazy();
    map.insert(addr.to_string(), c.clone());
    Ok(c)
}

/// A Sessions client of the node at `addr`.
pub(crate) fn sessions(addr: &str) -> Result<SessionsClient<Channel>, Status> {
    Ok(SessionsClient::new(channel(addr)?))
}

/// A Gates client of the node at `addr`.
pub(crate) fn gates(addr: &str) -> Result<GatesClient<Channel>, Status> {
    Ok(GatesClient::new(channel(addr)?))
}

/// A forwarded call's failure to reach the owner, said as such.
pub(crate) fn unreachable(addr: &str, s: Status) -> Status {
    if s.code() == tonic::Code::Unavailable && s.message().contains("transport") {
        Status::unavailable(format!(
            "the session's owner at {addr} cannot be reached ({}); retry: once it is \
             gone, another node takes the session over",
            s.message()
        ))
    } else {
        s
    }
}
