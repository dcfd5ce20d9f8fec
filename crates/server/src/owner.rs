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

use baton_proto::v1::flows_client::FlowsClient;
use baton_proto::v1::gates_client::GatesClient;
use baton_proto::v1::inspect_client::InspectClient;
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
        // A caller known by its client certificate (mutual TLS, checked
        // by this node's TLS): the certificate goes along, for the owner
        // to take from this node (see `is_peer`).
        if metadata.get("authorization").is_none()
            && let Some(certs) = req.peer_certs()
            && let Some(leaf) = certs.first()
        {
            metadata.insert_bin(
                CLIENT_CERT,
                tonic::metadata::MetadataValue::from_bytes(leaf.as_ref()),
            );
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

    /// Whether the call was forwarded here by another node.
    pub(crate) fn forwarded(&self) -> bool {
        self.metadata.get(FORWARDED_BY).is_some()
    }

    /// `msg` as a call to the owner, from this node.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        for key in KEPT {
            if let Some(v) = self.metadata.get(key) {
                req.metadata_mut().insert(key, v.clone());
            }
        }
        if let Some(v) = self.metadata.get_bin(CLIENT_CERT) {
            req.metadata_mut().insert_bin(CLIENT_CERT, v.clone());
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
    PEERS.get().map(|p| p.node_id.clone()).unwrap_or_default()
}

/// How this node reaches the others.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// This node's id, named by the calls it forwards.
    pub node_id: String,
    /// The nodes' gRPC ports speak TLS (`[server.tls]`): PEM of the CA
    /// that signed their certificates.
    pub grpc_ca: Option<Vec<u8>>,
    /// The same for their HTTP ports (`[http.tls]`).
    pub http_ca: Option<Vec<u8>>,
    /// With mutual TLS: the certificate every node presents to the others
    /// (`cluster.peer_cert_file`).
    pub identity: Option<PeerIdentity>,
}

/// The certificate and key the nodes present to each other when mutual
/// TLS is on; a node takes a forwarded caller's certificate
/// ([`CLIENT_CERT`]) only on a connection that presents this certificate.
#[derive(Clone)]
pub struct PeerIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// The leaf certificate, DER.
    leaf: Vec<u8>,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerIdentity")
    }
}

impl PeerIdentity {
    /// From the PEM of a certificate (its chain, leaf first) and its key.
    pub fn from_pem(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Self, String> {
        use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
        let leaf = CertificateDer::pem_slice_iter(&cert_pem)
            .next()
            .ok_or("cluster.peer_cert_file: no certificate in it (a PEM CERTIFICATE block)")?
            .map_err(|e| format!("cluster.peer_cert_file: {e}"))?
            .as_ref()
            .to_vec();
        if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY") {
            return Err("cluster.peer_key_file: no PEM private key in it".into());
        }
        Ok(PeerIdentity {
            cert_pem,
            key_pem,
            leaf,
        })
    }
}

/// The metadata key of a forwarded caller's client certificate (DER), sent
/// by the node that took the call over mutual TLS.
pub const CLIENT_CERT: &str = "x-baton-client-cert-bin";

/// Whether a connection's client certificate is the nodes' own
/// (`cluster.peer_cert_file`): only then is a forwarded caller's
/// certificate taken.
pub(crate) fn is_peer(cert_der: &[u8]) -> bool {
    PEERS
        .get()
        .and_then(|p| p.identity.as_ref())
        .is_some_and(|i| i.leaf == cert_der)
}

static PEERS: OnceLock<Peers> = OnceLock::new();

/// Set how this node reaches the others (once, at start, before serving).
pub fn configure(peers: Peers) {
    let _ = PEERS.set(peers);
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
    let unusable = |e: &dyn std::fmt::Display| {
        Status::unavailable(format!(
            "the owning node's address {addr:?} is not usable: {e}"
        ))
    };
    let ca = PEERS.get().and_then(|p| p.grpc_ca.clone());
    let scheme = if ca.is_some() { "https" } else { "http" };
    let mut endpoint =
        Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| unusable(&e))?;
    if let Some(ca) = ca {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        if let Some(i) = PEERS.get().and_then(|p| p.identity.as_ref()) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                &i.cert_pem,
                &i.key_pem,
            ));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| unusable(&e))?;
    }
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

/// The gRPC address of the node owning `session` where that is not this
/// node (nodes owning sessions one by one; the call not forwarded here
/// already): for calls that read a session without loading it.
pub(crate) async fn owner_elsewhere(
    runtime: &baton_runtime::RuntimeHandle,
    session: baton_types::SessionId,
    onward: &Onward,
) -> Option<String> {
    let store = runtime.store();
    if !store.claims() || onward.forwarded() {
        return None;
    }
    let owner = store.owner(session).await.ok()??;
    (owner.node_id != node_id() && !owner.grpc_addr.is_empty()).then_some(owner.grpc_addr)
}

/// An Inspect client of the node at `addr`.
pub(crate) fn inspect(addr: &str) -> Result<InspectClient<Channel>, Status> {
    Ok(InspectClient::new(channel(addr)?))
}

/// A Flows client of the node at `addr`.
pub(crate) fn flows(addr: &str) -> Result<FlowsClient<Channel>, Status> {
    Ok(FlowsClient::new(channel(addr)?))
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

/// A response extension: the call belongs to the node at this HTTP
/// address (set where an HTTP handler's runtime call answered
/// [`Error::OwnedElsewhere`]); [`forward_http`] sends the request there.
#[derive(Debug, Clone)]
pub(crate) struct ForwardTo(pub String);

/// The owner's HTTP address in `err`, when the request may go there.
pub(crate) fn http_owner(err: &Error) -> Option<ForwardTo> {
    match err {
        Error::OwnedElsewhere { owner, .. } if !owner.http_addr.is_empty() => {
            Some(ForwardTo(owner.http_addr.clone()))
        }
        _ => None,
    }
}

/// Request headers that do not travel with a forwarded HTTP request
/// (hop by hop, or made again for the new connection).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "host",
    "content-length",
];

/// HTTP middleware (where nodes own sessions one by one), for `POST
/// /v1/responses`, webhook deliveries (`POST /hooks/…`, for the node
/// running the flows) and the console's gate and run pages: the request's body is kept (up to `max_bytes`, as the routes allow), and when the
/// handler's answer says another node owns the session
/// ([`ForwardTo`]), the same request goes there with the caller's
/// headers, and its answer, streamed, is this one. A request that was
/// forwarded already is answered here, whatever it says.
pub(crate) async fn forward_http(
    axum::extract::State(max_bytes): axum::extract::State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Only a Responses call continues a session that may be live on
    // another node (the other front-door calls make sessions of their
    // own); no other body is held here, before authentication.
    // A webhook delivery goes to the node that runs the flows; a console
    // page or form to the node owning its session or running the flows
    // (console sign-ins are shared by the nodes in this mode).
    let path = req.uri().path();
    let post = req.method() == axum::http::Method::POST;
    let console =
        path.starts_with("/ui/gates/") || path == "/ui/runs" || path.starts_with("/ui/runs/");
    if req.headers().contains_key(FORWARDED_BY)
        || !(console || (post && (path == "/v1/responses" || path.starts_with("/hooks/"))))
    {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, max_bytes).await {
        Ok(b) => b,
        Err(e) => {
            return (
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body cannot be read: {e}"),
            )
                .into_response();
        }
    };
    let (method, uri, headers) = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    let resp = next
        .run(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(bytes.clone()),
        ))
        .await;
    let Some(ForwardTo(addr)) = resp.extensions().get::<ForwardTo>().cloned() else {
        return resp;
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let scheme = if PEERS.get().is_some_and(|p| p.http_ca.is_some()) {
        "https"
    } else {
        "http"
    };
    let mut out = http_client()
        .request(method, format!("{scheme}://{addr}{path}"))
        .body(bytes);
    for (name, value) in &headers {
        // The Host the caller named goes too: the console checks a form's
        // Origin against it.
        if !HOP_BY_HOP.contains(&name.as_str()) || name == axum::http::header::HOST {
            out = out.header(name, value);
        }
    }
    out = out.header(FORWARDED_BY, node_id());
    match out.send().await {
        Ok(answer) => {
            let mut back = axum::response::Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if !HOP_BY_HOP.contains(&name.as_str()) {
                    back = back.header(name, value);
                }
            }
            back.body(axum::body::Body::from_stream(answer.bytes_stream()))
                .unwrap_or(resp)
        }
        Err(e) => {
            tracing::warn!(owner = %addr, error = %e, "cannot forward an HTTP request to the session's owner");
            // The handler's own answer: 503, naming the owner.
            resp
        }
    }
}

/// One HTTP client for every forwarded request (connections kept per owner).
fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        // The owner's answer goes back as it is: a redirect included.
        let mut b = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = PEERS.get().and_then(|p| p.http_ca.as_deref()) {
            match reqwest::Certificate::from_pem(ca) {
                Ok(c) => b = b.add_root_certificate(c),
                Err(e) => {
                    tracing::error!(error = %e, "cluster.peer_ca_file is not a PEM certificate")
                }
            }
            // With mutual TLS on the HTTP port, the nodes' certificate.
            if let Some(i) = PEERS.get().and_then(|p| p.identity.as_ref()) {
                match reqwest::Identity::from_pkcs8_pem(&i.cert_pem, &i.key_pem) {
                    Ok(id) => b = b.identity(id),
                    Err(e) => {
                        tracing::error!(error = %e, "cluster.peer_cert_file / peer_key_file unusable")
                    }
                }
            }
        }
        b.build().unwrap_or_default()
    })
}
