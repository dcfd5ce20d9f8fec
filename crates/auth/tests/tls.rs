//! TLS end to end: certificates made with rcgen, real handshakes over
//! loopback TCP with tokio-rustls (and tonic's server for its config).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_auth::AuthError;
use baton_auth::tls::{
    CertClient, TlsSettings, principal_from_cert, rustls_server_config, tonic_tls_config,
};
use baton_types::{AccessRole, AuthMethod, Principal};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A certificate authority that issues server and client certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// An issued certificate and its key.
struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn(Some(name));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    fn server(&self) -> Issued {
        self.issue(
            vec!["localhost".into()],
            Some("localhost"),
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, cn: Option<&str>) -> Issued {
        self.issue(Vec::new(), cn, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        names: Vec<String>,
        cn: Option<&str>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name = dn(cn);
        params.extended_key_usages = vec![usage];
        Issued {
            cert: params.signed_by(&key, &self.cert, &self.key).unwrap(),
            key,
        }
    }
}

fn dn(cn: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Baton tests");
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    dn
}

/// PEM files for a server, in a temp dir.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn settings(&self, server: &Issued, client_ca: Option<&Ca>) -> TlsSettings {
        TlsSettings {
            cert_file: self.write("server.pem", &server.cert.pem()),
            key_file: self.write("server.key", &server.key.serialize_pem()),
            client_ca_file: client_ca.map(|ca| self.write("client-ca.pem", &ca.cert.pem())),
        }
    }
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting `server_ca`, presenting `identity` if given.
fn client_config(server_ca: &Ca, identity: Option<&Issued>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.cert.der().clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![id.cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.serialize_der())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// What the server saw of one connection.
struct Accepted {
    peer_certificates: Vec<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
}

/// One TLS connection over loopback: the server's outcome, and whether the
/// client could exchange a message (TLS 1.3 clients finish the handshake
/// before the server has judged their certificate, so a refusal shows on
/// the first read).
async fn connect(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (Result<Accepted, String>, Result<(), String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, session) = tls.get_ref();
        let accepted = Accepted {
            peer_certificates: session
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
        };
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(accepted)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await.map_err(|e| e.to_string())?;
        if &pong != b"pong" {
            return Err("wrong reply".to_owned());
        }
        Ok(())
    }
    .await;
    (server_side.await.unwrap(), client_side)
}

fn clients() -> Vec<CertClient> {
    vec![CertClient {
        subject: "ci-runner".into(),
        tenant: "acme".into(),
        roles: vec![AccessRole::Client, AccessRole::Operator],
        groups: vec!["ops".into()],
    }]
}

#[tokio::test]
async fn mutual_tls_accepts_a_client_certificate_and_maps_it_to_a_principal() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let files = Files::new();
    let server = rustls_server_config(
        &files.settings(&server_ca.server(), Some(&client_ca)),
        &[b"h2"],
    )
    .unwrap();
    let runner = client_ca.client(Some("ci-runner"));
    let (accepted, client) = connect(server, client_config(&server_ca, Some(&runner))).await;
    client.unwrap();
    let accepted = accepted.unwrap();
    assert_eq!(accepted.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(accepted.peer_certificates.len(), 1);
    let principal = principal_from_cert(&accepted.peer_certificates[0], &clients()).unwrap();
    assert_eq!(
        principal,
        Principal {
            via: AuthMethod::Certificate,
            id: "CN=ci-runner".into(),
            tenant: "acme".into(),
            roles: vec![AccessRole::Client, AccessRole::Operator],
            groups: vec!["ops".into()],
        }
    );
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_or_from_another_ca() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let files = Files::new();
    let server =
        rustls_server_config(&files.settings(&server_ca.server(), Some(&client_ca)), &[]).unwrap();

    let (accepted, client) = connect(server.clone(), client_config(&server_ca, None)).await;
    let e = accepted.err().expect("no certificate: refused");
    assert!(e.contains("no certificate"), "{e}");
    assert!(client.is_err());

    let stranger = Ca::new("someone else's CA").client(Some("ci-runner"));
    let (accepted, client) = connect(server, client_config(&server_ca, Some(&stranger))).await;
    let e = accepted.err().expect("unknown issuer: refused");
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert!(client.is_err());
}

#[tokio::test]
async fn without_a_client_ca_clients_need_no_certificate() {
    let server_ca = Ca::new("server CA");
    let files = Files::new();
    let server = rustls_server_config(&files.settings(&server_ca.server(), None), &[]).unwrap();
    let (accepted, client) = connect(server, client_config(&server_ca, None)).await;
    client.unwrap();
    let accepted = accepted.unwrap();
    assert!(accepted.peer_certificates.is_empty());
    assert_eq!(accepted.alpn, None, "no ALPN configured");
}

#[tokio::test]
async fn tonic_requires_client_certificates_with_a_client_ca() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let files = Files::new();
    let config = tonic_tls_config(&files.settings(&server_ca.server(), Some(&client_ca))).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_, health) = tonic_health::server::health_reporter();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(config)
            .unwrap()
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let handshake = |identity: Option<&Issued>| {
        let connector = TlsConnector::from(client_config(&server_ca, identity));
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            // An HTTP/2 preface: the server answers with its SETTINGS frame.
            tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .await
                .map_err(|e| e.to_string())?;
            let mut frame = [0u8; 9];
            tls.read_exact(&mut frame)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u8, String>(frame[3])
        }
    };
    let runner = client_ca.client(Some("ci-runner"));
    assert_eq!(handshake(Some(&runner)).await, Ok(4), "a SETTINGS frame");
    assert!(
        handshake(None).await.is_err(),
        "no client certificate: refused"
    );
    serving.abort();
}

fn config_error(result: Result<impl std::fmt::Debug, AuthError>) -> String {
    match result {
        Err(AuthError::Config(m)) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn file_problems_are_named() {
    let ca = Ca::new("CA");
    let files = Files::new();
    let good = files.settings(&ca.server(), Some(&ca));

    let missing = TlsSettings {
        cert_file: files.dir.path().join("absent.pem"),
        ..good.clone()
    };
    assert_eq!(
        config_error(rustls_server_config(&missing, &[])),
        format!("tls.cert_file {}: file not found", show(&missing.cert_file))
    );
    assert_eq!(
        config_error(tonic_tls_config(&missing)),
        format!("tls.cert_file {}: file not found", show(&missing.cert_file))
    );

    // The certificate where the key should be.
    let no_key = TlsSettings {
        key_file: good.cert_file.clone(),
        ..good.clone()
    };
    let m = config_error(rustls_server_config(&no_key, &[]));
    assert!(
        m.starts_with(&format!(
            "tls.key_file {}: no private key in it",
            show(&good.cert_file)
        )),
        "{m}"
    );

    // The key where the certificate should be: the key never appears.
    let no_cert = TlsSettings {
        cert_file: good.key_file.clone(),
        ..good.clone()
    };
    let m = config_error(rustls_server_config(&no_cert, &[]));
    assert!(
        m.starts_with(&format!(
            "tls.cert_file {}: no certificate in it",
            show(&good.key_file)
        )),
        "{m}"
    );

    let other_key = files.write("other.key", &KeyPair::generate().unwrap().serialize_pem());
    let mismatched = TlsSettings {
        key_file: other_key.clone(),
        ..good.clone()
    };
    assert_eq!(
        config_error(rustls_server_config(&mismatched, &[])),
        format!(
            "tls.key_file {}: the key does not match the certificate in tls.cert_file {}",
            show(&other_key),
            show(&good.cert_file)
        )
    );
    assert!(config_error(tonic_tls_config(&mismatched)).contains("does not match"));

    let garbage = files.write("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    let bad_ca = TlsSettings {
        client_ca_file: Some(garbage.clone()),
        ..good.clone()
    };
    let m = config_error(rustls_server_config(&bad_ca, &[]));
    assert!(
        m.starts_with(&format!(
            "tls.client_ca_file {}: invalid PEM",
            show(&garbage)
        )),
        "{m}"
    );

    rustls_server_config(&good, &[]).unwrap();
    tonic_tls_config(&good).unwrap();
}

#[test]
fn settings_parse_with_unknown_fields_refused() {
    let s: TlsSettings =
        toml::from_str("cert_file = '/etc/baton/tls.pem'\nkey_file = '/etc/baton/tls.key'")
            .unwrap();
    assert_eq!(s.client_ca_file, None);
    let e = toml::from_str::<TlsSettings>("cert_file = 'a'\nkey_file = 'b'\nca_file = 'c'")
        .unwrap_err();
    assert!(e.to_string().contains("unknown field `ca_file`"), "{e}");
    let clients: Vec<CertClient> = toml::from_str::<toml::Table>(
        "[[clients]]\nsubject = 'ci'\ntenant = 'acme'\nroles = ['client']",
    )
    .unwrap()["clients"]
        .clone()
        .try_into()
        .unwrap();
    assert_eq!(clients[0].groups, Vec::<String>::new());
    let e = toml::from_str::<CertClient>("subject = 'ci'\ntenant = 'acme'\nroles = ['root']")
        .unwrap_err();
    assert!(e.to_string().contains("unknown role \"root\""), "{e}");
}

#[test]
fn unmapped_or_nameless_certificates_are_refused() {
    let ca = Ca::new("CA");
    let stranger = ca.client(Some("intruder"));
    let e = principal_from_cert(stranger.cert.der(), &clients()).unwrap_err();
    assert!(matches!(e, AuthError::Invalid(_)));
    assert_eq!(
        e.to_string(),
        "invalid credentials: client certificate CN=intruder is not mapped to a principal (auth.mtls.clients)"
    );
    let nameless = ca.client(None);
    let e = principal_from_cert(nameless.cert.der(), &clients()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid credentials: client certificate has no subject common name (CN)"
    );
    let e = principal_from_cert(b"not a certificate", &clients()).unwrap_err();
    assert!(
        matches!(&e, AuthError::Malformed(m) if m.starts_with("client certificate is not a DER X.509")),
        "{e}"
    );
}
