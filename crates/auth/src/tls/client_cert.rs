//! Principals from client certificates (mutual TLS): the leaf certificate's
//! subject common name, looked up in a configured table.

use baton_types::{AccessRole, AuthMethod, Principal};
use serde::Deserialize;
use x509_cert::Certificate;
use x509_cert::der::Decode;
use x509_cert::der::oid::db::rfc4519::COMMON_NAME;

use crate::error::{AuthError, Result};

/// One row of `auth.mtls.clients`: who a certificate's subject is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertClient {
    /// The certificate's subject common name (CN), matched exactly.
    pub subject: String,
    /// The tenant it acts in.
    pub tenant: String,
    /// What it may do.
    pub roles: Vec<AccessRole>,
    /// The reviewer groups it decides gates for.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The principal of a client certificate (DER, the leaf the TLS handshake
/// verified): `CN=<common name>`, with the tenant, roles and groups of the
/// matching [`CertClient`].
///
/// The certificate must already be verified against the client CA (as the
/// mutual-TLS handshake does); this only reads its subject. A subject with
/// no common name, or with several, is refused.
pub fn principal_from_cert(der: &[u8], clients: &[CertClient]) -> Result<Principal> {
    let cn = common_name(der)?;
    let client = clients.iter().find(|c| c.subject == cn).ok_or_else(|| {
        AuthError::Invalid(format!(
            "client certificate CN={cn} is not mapped to a principal (auth.mtls.clients)"
        ))
    })?;
    Ok(Principal {
        via: AuthMethod::Certificate,
        id: format!("CN={cn}"),
        tenant: client.tenant.clone(),
        roles: client.roles.clone(),
        groups: client.groups.clone(),
    })
}

/// The subject CN of a DER certificate.
fn common_name(der: &[u8]) -> Result<String> {
    let cert = Certificate::from_der(der).map_err(|e| {
        AuthError::Malformed(format!(
            "client certificate is not a DER X.509 certificate: {e}"
        ))
    })?;
    let subject = cert.tbs_certificate().subject();
    let cn = subject
        .common_name()
        .map_err(|e| {
            AuthError::Malformed(format!(
                "client certificate subject common name is not a string: {e}"
            ))
        })?
        .ok_or_else(|| {
            AuthError::Invalid("client certificate has no subject common name (CN)".into())
        })?;
    if subject.iter().filter(|atv| atv.oid == COMMON_NAME).count() > 1 {
        return Err(AuthError::Invalid(
            "client certificate has several subject common names (CN)".into(),
        ));
    }
    Ok(cn.value().into_owned())
}
