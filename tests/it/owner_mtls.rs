//! Mutual TLS where nodes own sessions one by one (`[cluster] ownership =
//! "sessions"`, docs/scaling.md): a caller known by its client certificate
//! is forwarded to a session's owner with that certificate, which the
//! owner takes only from a connection presenting the nodes' own
//! certificate (`cluster.peer_cert_file`). The real binary twice on
//! loopback, a private PostgreSQL server, certificates from a generated CA.

use base64::Engine as _;
use baton::proto::v1::{self, sessions_client::SessionsClient};

use crate::cluster::skip;
use crate::common::*;
use crate::owners::{owner_of, owning_cluster};
use crate::tls_auth::{ca, leaf, tls_channel, write};

/// The DER of the first certificate in `pem`.
fn der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// A client known only by its certificate starts a session on n0 and
/// drives it through n1: forwarded with its certificate, it is the same
/// principal on n0. A caller that sends a certificate header itself, on a
/// connection that is not a node's, is refused; a node without the nodes'
/// certificate refuses to start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_known_by_its_certificate_is_forwarded_to_the_owner_as_itself() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let authority = ca("Baton Cluster CA");
    let (server_cert, server_key) = leaf(&authority, "baton", &["localhost", "127.0.0.1"]);
    let (node_cert, node_key) = leaf(&authority, "baton-node", &[]);
    let (client_cert, client_key) = leaf(&authority, "billing-svc", &[]);
    let (other_cert, other_key) = leaf(&authority, "nobody", &[]);
    let ca_pem = authority.cert.pem();
    let (sc, sk, a) = (
        write(d, "server.pem", &server_cert),
        write(d, "server.key", &server_key),
        write(d, "ca.pem", &ca_pem),
    );
    let toml = format!(
        "[[models]]\nname = \"echo\"\nprovider = \"echo\"\n\n\
         [server.tls]\ncert_file = {sc:?}\nkey_file = {sk:?}\nclient_ca_file = {a:?}\n\n\
         [auth]\nenabled = true\n\n\
         [[auth.mtls_clients]]\nsubject = \"billing-svc\"\ntenant = \"acme\"\nroles = [\"client\"]\n"
    );
    let mut cluster = owning_cluster(&toml);
    cluster.cluster_extra = format!("ownership = \"sessions\"\npeer_ca_file = {a:?}\n");
    let refused = crate::owners::refused_start(&cluster, "n9").await;
    assert!(refused.contains("cluster.peer_cert_file"), "{refused}");
    cluster.cluster_extra = format!(
        "ownership = \"sessions\"\npeer_ca_file = {a:?}\npeer_cert_file = {:?}\npeer_key_file = {:?}\n",
        write(d, "node.pem", &node_cert),
        write(d, "node.key", &node_key),
    );
    let n0 = cluster.start("n0", 2_000).await;
    let n1 = cluster.start("n1", 2_000).await;
    let client = |url: String, cert: String, key: String| {
        let ca_pem = ca_pem.clone();
        async move {
            SessionsClient::new(
                tls_channel(&url, &ca_pem, Some((&cert, &key)))
                    .await
                    .unwrap(),
            )
        }
    };
    let mut c0 = client(n0.url(), client_cert.clone(), client_key.clone()).await;
    let id = start(&mut c0, "").await;
    get(&mut c0, &id).await;
    assert_eq!(owner_of(&cluster, &id), "n0");
    let mut c1 = client(n1.url(), client_cert.clone(), client_key.clone()).await;
    let t = turn(&mut c1, &id, "known by my certificate").await;
    assert_eq!(answer(&t), "known by my certificate");
    let s = get(&mut c1, &id).await;
    assert_eq!(s.tenant, "acme", "the same principal on the owner");
    assert_eq!(owner_of(&cluster, &id), "n0", "forwarded, not moved");

    // Sending the header oneself, on a connection that is not a node's:
    // refused, whoever the certificate in it names.
    let mut spoof = client(n0.url(), other_cert, other_key).await;
    let mut req = tonic::Request::new(v1::GetSessionRequest {
        session_id: id.clone(),
    });
    req.metadata_mut().insert_bin(
        "x-baton-client-cert-bin",
        tonic::metadata::MetadataValue::from_bytes(&der(&client_cert)),
    );
    let err = spoof.get_session(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert!(err.message().contains("another Baton node"), "{err}");
    n0.terminate().await.unwrap();
    n1.terminate().await.unwrap();
}
