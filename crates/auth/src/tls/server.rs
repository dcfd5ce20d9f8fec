//! The server's TLS configuration from PEM files: rustls for HTTP servers,
//! tonic's for gRPC.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{InconsistentKeys, RootCertStore, ServerConfig};
use serde::Deserialize;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::error::{AuthError, Result};

/// `[tls]`: the server's certificate and key, and optionally the CA whose
/// client certificates it requires (mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM: the server certificate, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: one CA certificate or more. When set, every client must present
    /// a certificate signed by one of them, or the handshake fails.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// The PEM files of a [`TlsSettings`], read.
struct PemFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl PemFiles {
    fn read(s: &TlsSettings) -> Result<Self> {
        Ok(Self {
            cert: read("cert_file", &s.cert_file)?,
            key: read("key_file", &s.key_file)?,
            client_ca: s
                .client_ca_file
                .as_deref()
                .map(|path| read("client_ca_file", path))
                .transpose()?,
        })
    }
}

/// A rustls server configuration with the ring provider (chosen here, not
/// taken from the process default), TLS 1.2 and 1.3, the given ALPN
/// protocols (e.g. `[b"h2", b"http/1.1"]`) and, with `client_ca_file`,
/// required client certificates verified against that CA.
///
/// Reads the files (blocking): call it at startup. Errors name the field,
/// the file and the problem.
pub fn rustls_server_config(s: &TlsSettings, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>> {
    let files = PemFiles::read(s)?;
    let mut config = server_config(s, &files)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// tonic's server TLS configuration from the same settings, with
/// `client_ca_root` (required client certificates) for mutual TLS.
///
/// The files are checked here as [`rustls_server_config`] checks them (so a
/// key that does not match fails at startup, not at the first handshake).
/// tonic builds its rustls configuration from the process-default crypto
/// provider: this installs ring as that default unless one is installed
/// already.
pub fn tonic_tls_config(s: &TlsSettings) -> Result<ServerTlsConfig> {
    let files = PemFiles::read(s)?;
    server_config(s, &files)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&files.cert, &files.key));
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(config)
}

fn server_config(s: &TlsSettings, files: &PemFiles) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates("cert_file", &s.cert_file, &files.cert)?;
    let key = private_key(&s.key_file, &files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Config(format!("tls: {e}")))?;
    let builder = match (&s.client_ca_file, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let verifier = client_verifier(path, pem, provider)?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
            AuthError::Config(format!(
                "tls.key_file {}: the key does not match the certificate in tls.cert_file {}",
                s.key_file.display(),
                s.cert_file.display()
            ))
        }
        other => AuthError::Config(format!(
            "tls.key_file {}: unusable private key or certificate: {other}",
            s.key_file.display()
        )),
    })
}

fn client_verifier(
    path: &Path,
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("client_ca_file", path, pem)? {
        roots.add(cert).map_err(|e| {
            file_error(
                "client_ca_file",
                path,
                &format!("not a usable CA certificate: {e}"),
            )
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| file_error("client_ca_file", path, &e.to_string()))
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        let problem = match e.kind() {
            io::ErrorKind::NotFound => "file not found".to_owned(),
            _ => format!("cannot read: {e}"),
        };
        file_error(field, path, &problem)
    })
}

fn certificates(field: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_error(field, path, &pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(file_error(
            field,
            path,
            "no certificate in it (expected a PEM `CERTIFICATE` block)",
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => "no private key in it (expected a PEM `PRIVATE KEY`, \
                `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)"
                .to_owned(),
            other => pem_problem(&other),
        };
        file_error("key_file", path, &problem)
    })
}

/// What is wrong with a PEM file, without quoting it (it may hold a key).
fn pem_problem(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { .. } => "invalid PEM: a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "invalid PEM: a malformed BEGIN line",
        pem::Error::Base64Decode(_) => "invalid PEM: a section is not valid base64",
        pem::Error::NoItemsFound => "nothing usable in it",
        pem::Error::SectionTooLarge => "invalid PEM: a section is too large",
        _ => "invalid PEM",
    }
    .to_owned()
}

fn file_error(field: &str, path: &Path, problem: &str) -> AuthError {
    AuthError::Config(format!("tls.{field} {}: {problem}", path.display()))
}
