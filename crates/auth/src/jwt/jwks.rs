//! The identity provider's public keys: a JWKS read from a file or fetched
//! from a URL, indexed by key id.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A JWKS larger than this is refused: real ones are a few kilobytes.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// How long one JWKS request may take.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the keys come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    File(PathBuf),
    Url(String),
}

impl Source {
    /// `auth.jwt.jwks_file /path` or `auth.jwt.jwks_url https://…`, for errors.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("auth.jwt.jwks_file {}", path.display()),
            Self::Url(url) => format!("auth.jwt.jwks_url {url}"),
        }
    }

    /// Reads or fetches the key set. The error names the source and the
    /// problem.
    pub(crate) async fn load(&self, http: Option<&reqwest::Client>) -> Result<KeySet, String> {
        let bytes = match (self, http) {
            (Self::File(path), _) => tokio::fs::read(path).await.map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => "file not found".to_owned(),
                _ => format!("cannot read: {e}"),
            }),
            (Self::Url(url), Some(http)) => fetch(http, url).await,
            (Self::Url(_), None) => Err("no HTTP client".to_owned()),
        };
        bytes
            .and_then(|bytes| KeySet::parse(&bytes))
            .map_err(|problem| format!("{}: {problem}", self.describe()))
    }
}

/// GETs a JWKS, refusing error statuses and oversized bodies.
async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("request failed: {}", error_chain(&e.without_url())))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the body failed: {}", error_chain(&e.without_url())))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its sources, `: `-separated (reqwest's own message is terse).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// One verification key.
pub(crate) struct Key {
    pub(crate) decoding: DecodingKey,
    /// The JWK's `alg`, when it pins one.
    pub(crate) algorithm: Option<Algorithm>,
}

impl Key {
    fn fits(&self, algorithm: Algorithm) -> bool {
        self.decoding.family() == algorithm.family()
            && self.algorithm.is_none_or(|pinned| pinned == algorithm)
    }
}

/// What [`KeySet::find`] found.
pub(crate) enum Lookup {
    Found(Arc<Key>),
    /// The token names a key id the set does not have.
    UnknownKid,
    /// The key exists but cannot verify this algorithm.
    WrongAlgorithm(String),
    /// The token names no key id and the set has no single fitting key.
    NoKid(String),
}

/// The usable signing keys of a JWKS.
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    without_kid: Vec<Arc<Key>>,
    /// SHA-256 of the keys' canonical JSON: tells a changed set from a
    /// refetched identical one.
    pub(crate) fingerprint: [u8; 32],
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys that can verify signatures
    /// (RSA, EC, OKP; not symmetric, not `use: enc`). A set without any is
    /// an error, naming why the keys were skipped.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawSet = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a JWKS document (expected {{\"keys\": [...]}}): {e}"))?;
        // serde_json's map is ordered by key: this encoding is canonical.
        let canonical = serde_json::to_vec(&raw.keys).map_err(|e| e.to_string())?;
        let mut set = Self {
            by_kid: HashMap::new(),
            without_kid: Vec::new(),
            fingerprint: Sha256::digest(&canonical).into(),
        };
        let mut skipped = Vec::new();
        for (index, value) in raw.keys.into_iter().enumerate() {
            match usable_key(value) {
                Ok((kid, key)) => match kid {
                    Some(kid) => {
                        set.by_kid.insert(kid, Arc::new(key));
                    }
                    None => set.without_kid.push(Arc::new(key)),
                },
                Err(reason) => skipped.push(format!("key {index}: {reason}")),
            }
        }
        if set.by_kid.is_empty() && set.without_kid.is_empty() {
            return Err(if skipped.is_empty() {
                "the key set is empty".to_owned()
            } else {
                format!("no usable signing key ({})", skipped.join("; "))
            });
        }
        Ok(set)
    }

    /// The key for a token's `kid` and `alg`.
    pub(crate) fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Lookup {
        if let Some(kid) = kid {
            return match self.by_kid.get(kid) {
                Some(key) if key.fits(algorithm) => Lookup::Found(key.clone()),
                Some(_) => Lookup::WrongAlgorithm(format!(
                    "key id {} cannot verify {algorithm:?} signatures",
                    printable(kid)
                )),
                None => Lookup::UnknownKid,
            };
        }
        let mut fitting = self
            .by_kid
            .values()
            .chain(&self.without_kid)
            .filter(|key| key.fits(algorithm));
        match (fitting.next(), fitting.next()) {
            (Some(key), None) => Lookup::Found(key.clone()),
            (None, _) => Lookup::NoKid(format!(
                "the token names no key id (kid) and no key can verify {algorithm:?} signatures"
            )),
            (Some(_), Some(_)) => Lookup::NoKid(format!(
                "the token names no key id (kid) and several keys can verify {algorithm:?} signatures"
            )),
        }
    }

    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
}

fn usable_key(value: serde_json::Value) -> Result<(Option<String>, Key), String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use: enc)".to_owned());
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_)
        | AlgorithmParameters::EllipticCurve(_)
        | AlgorithmParameters::OctetKeyPair(_) => {}
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key (kty oct) is never accepted".to_owned());
        }
        _ => return Err("an unsupported key type".to_owned()),
    }
    let algorithm = jwk
        .common
        .key_algorithm
        .map(|alg| Algorithm::try_from(alg).map_err(|_| format!("an unsupported algorithm {alg}")))
        .transpose()?;
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("an invalid key: {e}"))?;
    Ok((
        jwk.common.key_id,
        Key {
            decoding,
            algorithm,
        },
    ))
}

/// A name from a token, fit for an error message: quoted, escaped, at most
/// 64 characters.
pub(crate) fn printable(text: &str) -> String {
    let short: String = text.chars().take(64).collect();
    format!("{short:?}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const EC_KEY: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec1","alg":"ES256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    const OKP_KEY: &str = r#"{"kty":"OKP","crv":"Ed25519",
        "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

    fn set(keys: &[&str]) -> Result<KeySet, String> {
        KeySet::parse(format!("{{\"keys\": [{}]}}", keys.join(",")).as_bytes())
    }

    #[test]
    fn keys_are_found_by_kid_and_algorithm() {
        let set = set(&[EC_KEY, OKP_KEY]).unwrap();
        assert!(matches!(
            set.find(Some("ec1"), Algorithm::ES256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("ec1"), Algorithm::EdDSA),
            Lookup::WrongAlgorithm(m) if m.contains("\"ec1\" cannot verify EdDSA")
        ));
        assert!(matches!(
            set.find(Some("nope"), Algorithm::ES256),
            Lookup::UnknownKid
        ));
        // Without a kid: the one key that fits.
        assert!(matches!(set.find(None, Algorithm::EdDSA), Lookup::Found(_)));
        assert!(
            matches!(set.find(None, Algorithm::RS256), Lookup::NoKid(m) if m.contains("no key can verify RS256"))
        );
        let two = self::set(&[OKP_KEY, OKP_KEY]).unwrap();
        assert!(
            matches!(two.find(None, Algorithm::EdDSA), Lookup::NoKid(m) if m.contains("several keys"))
        );
    }

    #[test]
    fn unusable_keys_are_skipped_and_a_set_without_any_is_refused() {
        let oct = r#"{"kty":"oct","kid":"h","k":"c2VjcmV0"}"#;
        let enc = r#"{"kty":"EC","crv":"P-256","kid":"e","use":"enc",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let set = set(&[oct, enc, EC_KEY]).unwrap();
        assert!(set.has_kid("ec1") && !set.has_kid("h") && !set.has_kid("e"));
        let e = self::set(&[oct, enc]).err().unwrap();
        assert!(e.contains("no usable signing key"), "{e}");
        assert!(e.contains("key 0: a symmetric key (kty oct)"), "{e}");
        assert!(e.contains("key 1: an encryption key (use: enc)"), "{e}");
        assert_eq!(self::set(&[]).err().unwrap(), "the key set is empty");
        let e = KeySet::parse(b"[1, 2]").err().unwrap();
        assert!(e.starts_with("not a JWKS document"), "{e}");
    }

    #[test]
    fn the_fingerprint_ignores_layout_but_not_content() {
        let a = set(&[EC_KEY]).unwrap().fingerprint;
        let b = KeySet::parse(
            format!("{{ \"keys\" : [ {} ] }}\n", EC_KEY.replace('\n', "")).as_bytes(),
        )
        .unwrap()
        .fingerprint;
        assert_eq!(a, b);
        assert_ne!(a, set(&[EC_KEY, OKP_KEY]).unwrap().fingerprint);
    }

    #[test]
    fn printable_quotes_escapes_and_truncates() {
        assert_eq!(printable("k1"), "\"k1\"");
        assert_eq!(printable("a\nb"), "\"a\\nb\"");
        assert_eq!(printable(&"x".repeat(100)).len(), 66);
    }
}
