//! TLS for Baton's servers, and who a client certificate is.
//!
//! [`rustls_server_config`] and [`tonic_tls_config`] build the server side
//! from [`TlsSettings`] (PEM files); a `client_ca_file` turns on mutual TLS,
//! where every client must present a certificate signed by that CA.
//! [`principal_from_cert`] maps a verified client certificate's subject
//! common name to a principal through the [`CertClient`] table
//! (`auth.mtls.clients`).

mod client_cert;
mod server;

pub use client_cert::{CertClient, principal_from_cert};
pub use server::{TlsSettings, rustls_server_config, tonic_tls_config};
