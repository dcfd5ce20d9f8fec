//! Baton API keys: `bk_<id8>_<secret>`.
//!
//! - `id8` is 8 random lowercase hex characters. `bk_<id8>` is the key id:
//!   not secret, shown in listings and logs, and the lookup key in storage.
//! - `secret` is 32 random bytes (256 bits, from the OS through `getrandom`)
//!   in lowercase base32 without padding (`a-z`, `2-7`): 52 characters, safe
//!   in URLs and headers, and without `_`, so a key splits unambiguously.
//!
//! Only the SHA-256 of the whole plaintext is stored. A fast hash is right
//! here, unlike for passwords: a slow hash (argon2, bcrypt) exists to make
//! guessing low-entropy secrets expensive, but a 256-bit random secret cannot
//! be guessed however fast the hash is, and a fast hash keeps authentication
//! to a microsecond or so per request. Hashes are compared in constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{AuthError, Result};

/// The prefix of every Baton API key.
pub const PREFIX: &str = "bk_";

/// Random bytes in a key's secret.
pub const SECRET_BYTES: usize = 32;

/// Characters of the visible id part (after `bk_`).
const ID_CHARS: usize = 8;

/// Characters of the encoded secret: ceil(256 / 5).
const SECRET_CHARS: usize = (SECRET_BYTES * 8).div_ceil(5);

/// Lowercase RFC 4648 base32 alphabet.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A freshly generated key. The plaintext is shown to its owner once and
/// never stored; `id` and `hash` are what is stored.
#[derive(Clone)]
pub struct NewKey {
    /// `bk_<id8>_<secret>`: give it to the caller once.
    pub plaintext: String,
    /// `bk_<id8>`: the non-secret key id.
    pub id: String,
    /// SHA-256 of `plaintext`.
    pub hash: [u8; 32],
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .field("plaintext", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A key as presented by a caller: its id, to find the stored hash, and the
/// hash of what was presented, to compare with [`hash_matches`].
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey {
    /// `bk_<id8>`.
    pub id: String,
    /// SHA-256 of the presented plaintext.
    pub hash: [u8; 32],
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Generates a new key from OS randomness.
///
/// Fails only when the OS has no randomness to give ([`AuthError::Unavailable`]);
/// no key is made from anything weaker.
pub fn generate() -> Result<NewKey> {
    let mut id_bytes = [0u8; ID_CHARS / 2];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut id_bytes)
        .and_then(|()| getrandom::fill(&mut secret))
        .map_err(|e| AuthError::Unavailable(format!("no OS randomness for a new API key: {e}")))?;
    let id8: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let plaintext = format!("{PREFIX}{id8}_{}", base32(&secret));
    Ok(NewKey {
        id: format!("{PREFIX}{id8}"),
        hash: sha256(&plaintext),
        plaintext,
    })
}

/// Checks the shape of a presented key and hashes it. The secret is never
/// part of an error message.
pub fn parse(token: &str) -> Result<PresentedKey> {
    let Some(rest) = token.strip_prefix(PREFIX) else {
        return Err(malformed(format!(
            "not a Baton API key: expected the prefix `{PREFIX}`"
        )));
    };
    let Some((id8, secret)) = rest.split_once('_') else {
        return Err(malformed(format!(
            "wrong shape: expected `{PREFIX}<id>_<secret>`"
        )));
    };
    if id8.len() != ID_CHARS
        || !id8
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(malformed(format!(
            "wrong shape: the key id after `{PREFIX}` must be {ID_CHARS} lowercase hex characters"
        )));
    }
    if secret.len() != SECRET_CHARS {
        return Err(malformed(format!(
            "bad length: the secret of key {PREFIX}{id8} has {} characters, expected {SECRET_CHARS}",
            secret.len()
        )));
    }
    if !secret.bytes().all(|b| BASE32.contains(&b)) {
        return Err(malformed(format!(
            "wrong shape: the secret of key {PREFIX}{id8} has characters outside a-z and 2-7"
        )));
    }
    Ok(PresentedKey {
        id: format!("{PREFIX}{id8}"),
        hash: sha256(token),
    })
}

/// Whether a presented key's hash equals the stored one, in constant time.
pub fn hash_matches(stored: &[u8; 32], presented: &[u8; 32]) -> bool {
    stored.ct_eq(presented).into()
}

/// The token of an `authorization` header value `Bearer <token>`. The scheme
/// is case-insensitive and may be followed by one space or more.
pub fn bearer(header_value: &str) -> Result<&str> {
    let value = header_value.trim();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let Some((scheme, token)) = value.split_once(|c: char| c.is_ascii_whitespace()) else {
        // One word: a bare token, or a scheme without a token. Never echo it:
        // it may be the secret itself.
        return Err(if value.eq_ignore_ascii_case("bearer") {
            malformed("empty bearer token".to_owned())
        } else {
            malformed(
                "the authorization header has no scheme: expected `Bearer <token>`".to_owned(),
            )
        });
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed(format!(
            "unsupported authorization scheme {}: expected `Bearer <token>`",
            scheme_name(scheme)
        )));
    }
    let token = token.trim_start();
    if token.is_empty() {
        return Err(malformed("empty bearer token".to_owned()));
    }
    if token.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(malformed("the bearer token contains whitespace".to_owned()));
    }
    Ok(token)
}

/// What kind of credential a bearer token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A Baton API key, parsed and hashed.
    ApiKey(PresentedKey),
    /// A JWT, not yet verified.
    Jwt(&'a str),
}

/// Tells a Baton API key (`bk_` prefix) from a JWT (three non-empty
/// base64url segments separated by dots).
pub fn classify(token: &str) -> Result<Credential<'_>> {
    if token.starts_with(PREFIX) {
        return parse(token).map(Credential::ApiKey);
    }
    let mut segments = 0;
    let jwt_shaped = token.split('.').all(|segment| {
        segments += 1;
        !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if jwt_shaped && segments == 3 {
        Ok(Credential::Jwt(token))
    } else {
        Err(malformed(format!(
            "the bearer token is neither a Baton API key (`{PREFIX}…`) nor a JWT"
        )))
    }
}

fn malformed(message: String) -> AuthError {
    AuthError::Malformed(message)
}

/// A scheme name fit for an error message: a short token of letters, or
/// nothing that could be a secret.
fn scheme_name(scheme: &str) -> String {
    if scheme.len() <= 16 && scheme.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
        format!("`{scheme}`")
    } else {
        "(not shown)".to_owned()
    }
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Lowercase base32, no padding.
fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity((bytes.len() * 8).div_ceil(5));
    let mut buffer: u16 = 0;
    let mut bits = 0u32;
    for &byte in bytes {
        buffer = (buffer << 8) | u16::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[usize::from((buffer >> bits) & 0x1f)]));
        }
    }
    if bits > 0 {
        out.push(char::from(
            BASE32[usize::from((buffer << (5 - bits)) & 0x1f)],
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn malformed_message(result: Result<impl fmt::Debug>) -> String {
        match result {
            Err(AuthError::Malformed(m)) => m,
            other => panic!("expected a malformed error, got {other:?}"),
        }
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 §10, lowercased and unpadded.
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "my");
        assert_eq!(base32(b"fo"), "mzxq");
        assert_eq!(base32(b"foo"), "mzxw6");
        assert_eq!(base32(b"foob"), "mzxw6yq");
        assert_eq!(base32(b"fooba"), "mzxw6ytb");
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn generated_keys_parse_back_to_their_id_and_hash() {
        let mut ids = std::collections::HashSet::new();
        for _ in 0..200 {
            let key = generate().unwrap();
            assert_eq!(key.plaintext.len(), 3 + ID_CHARS + 1 + SECRET_CHARS);
            assert!(key.plaintext.starts_with(&format!("{}_", key.id)));
            assert_eq!(key.hash, sha256(&key.plaintext));
            let presented = parse(&key.plaintext).unwrap();
            assert_eq!(presented.id, key.id);
            assert!(hash_matches(&key.hash, &presented.hash));
            assert_eq!(
                classify(&key.plaintext).unwrap(),
                Credential::ApiKey(presented)
            );
            assert!(ids.insert(key.id.clone()), "duplicate key id {}", key.id);
        }
    }

    #[test]
    fn debug_never_shows_the_plaintext() {
        let key = generate().unwrap();
        let secret = key.plaintext.rsplit('_').next().unwrap().to_owned();
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.id), "{shown}");
        assert!(!shown.contains(&secret), "{shown}");
        let shown = format!("{:?}", parse(&key.plaintext).unwrap());
        assert!(!shown.contains(&secret), "{shown}");
    }

    #[test]
    fn parse_names_the_problem_without_the_secret() {
        let key = generate().unwrap();
        let secret = key.plaintext.rsplit('_').next().unwrap().to_owned();
        let id8 = &key.id[3..];

        let cases = [
            (format!("xk_{id8}_{secret}"), "expected the prefix `bk_`"),
            (format!("bk_{id8}{secret}"), "wrong shape"),
            (format!("bk_{}_{secret}", &id8[..7]), "8 lowercase hex"),
            // Upper case (a fixed id: a random one may be all digits).
            (format!("bk_ABCDEF12_{secret}"), "8 lowercase hex"),
            (
                format!("bk_{id8}_{}", &secret[1..]),
                "has 51 characters, expected 52",
            ),
            (
                format!("bk_{id8}_{secret}a"),
                "has 53 characters, expected 52",
            ),
            (format!("bk_{id8}_{}_", &secret[1..]), "outside a-z and 2-7"),
            (
                format!("bk_{id8}_{}", secret.to_uppercase()),
                "outside a-z and 2-7",
            ),
        ];
        for (token, expected) in cases {
            let message = malformed_message(parse(&token));
            assert!(message.contains(expected), "{token}: {message}");
            assert!(!message.contains(&secret[..20]), "{message}");
            assert!(!message.contains(&secret[1..21]), "{message}");
        }
    }

    #[test]
    fn a_different_key_with_the_same_id_does_not_match() {
        let key = generate().unwrap();
        let other = generate().unwrap();
        let forged = format!("{}_{}", key.id, other.plaintext.rsplit('_').next().unwrap());
        let presented = parse(&forged).unwrap();
        assert_eq!(presented.id, key.id);
        assert!(!hash_matches(&key.hash, &presented.hash));
        let mut one_bit_off = key.hash;
        one_bit_off[31] ^= 1;
        assert!(!hash_matches(&key.hash, &one_bit_off));
        assert!(hash_matches(&key.hash, &key.hash));
    }

    #[test]
    fn bearer_accepts_any_case_and_several_spaces() {
        assert_eq!(bearer("Bearer abc").unwrap(), "abc");
        assert_eq!(bearer("bearer abc").unwrap(), "abc");
        assert_eq!(bearer("BEARER    abc").unwrap(), "abc");
        assert_eq!(bearer("  Bearer abc  ").unwrap(), "abc");
    }

    #[test]
    fn bearer_refuses_what_is_not_a_bearer_token() {
        assert!(matches!(bearer(""), Err(AuthError::Missing)));
        assert!(matches!(bearer("   "), Err(AuthError::Missing)));
        let m = malformed_message(bearer("Basic dXNlcjpwYXNz"));
        assert!(
            m.contains("unsupported authorization scheme `Basic`"),
            "{m}"
        );
        assert!(!m.contains("dXNlcjpwYXNz"), "{m}");
        let m = malformed_message(bearer("bk_0123abcd_secretsecret"));
        assert!(m.contains("no scheme"), "{m}");
        assert!(!m.contains("secretsecret"), "{m}");
        let m = malformed_message(bearer("Bearer"));
        assert!(m.contains("empty bearer token"), "{m}");
        let m = malformed_message(bearer("Bearer    "));
        assert!(m.contains("empty bearer token"), "{m}");
        let m = malformed_message(bearer("Bearer a b"));
        assert!(m.contains("whitespace"), "{m}");
        let m = malformed_message(bearer("bk_0123abcd_secretsecretsecret abc"));
        assert!(m.contains("(not shown)"), "{m}");
        assert!(!m.contains("secretsecret"), "{m}");
    }

    #[test]
    fn classify_tells_keys_from_jwts() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-_";
        assert_eq!(classify(jwt).unwrap(), Credential::Jwt(jwt));

        // `bk_` but not a valid key: the key's error, not "neither".
        let m = malformed_message(classify("bk_nope"));
        assert!(m.contains("wrong shape"), "{m}");

        for token in [
            "opaque-token",
            "a.b",
            "a.b.c.d",
            "a..c",
            ".b.c",
            "a.b.",
            "a.b+/.c",
            "a.b=.c",
        ] {
            let m = malformed_message(classify(token));
            assert!(
                m.contains("neither a Baton API key (`bk_…`) nor a JWT"),
                "{token}: {m}"
            );
        }
    }
}
