//! Run with: cargo bench -p baton-auth --bench verify
//!
//! The cost authentication adds to a request: a Baton API key (parse, hash,
//! constant-time compare), a JWT the verifier has already seen (the cache
//! hit every request after a client's first pays), and a JWT seen for the
//! first time (signature verification), against the floor of hashing the
//! token once. Medians of 11 rounds, nanoseconds per call.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Instant;

use baton_auth::jwt::{JwtSettings, JwtVerifier};
use baton_auth::keys;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};

const ROUNDS: usize = 11;

/// Median nanoseconds per call of `run(n)`, which makes `n` calls.
fn median_ns(n: usize, mut run: impl FnMut(usize)) -> f64 {
    run(n.min(100)); // warm up
    let mut samples: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            run(n);
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[ROUNDS / 2]
}

fn es256_key() -> EncodingKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    EncodingKey::from_ec_der(&key.serialize_der())
}

fn ed25519_key() -> EncodingKey {
    // PKCS#8 v1 (RFC 8410) around a random seed.
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    pkcs8.extend_from_slice(&seed);
    EncodingKey::from_ed_der(&pkcs8)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys_in_set = [
        ("es", Algorithm::ES256, es256_key()),
        ("ed", Algorithm::EdDSA, ed25519_key()),
    ];
    let mut set = JwkSet { keys: Vec::new() };
    for (kid, alg, key) in &keys_in_set {
        let mut jwk = Jwk::from_encoding_key(key, *alg).unwrap();
        jwk.common.key_id = Some((*kid).to_owned());
        set.keys.push(jwk);
    }
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, serde_json::to_vec(&set).unwrap()).unwrap();
    let mut settings = JwtSettings::new("https://idp.bench", "baton");
    settings.jwks_file = Some(path);
    let verifier = runtime.block_on(JwtVerifier::new(settings)).unwrap();

    let now = jsonwebtoken::get_current_timestamp();
    let sign = |(kid, alg, key): &(&str, Algorithm, EncodingKey), jti: usize| {
        let mut header = Header::new(*alg);
        header.kid = Some((*kid).to_owned());
        let claims = serde_json::json!({
            "iss": "https://idp.bench", "aud": "baton", "sub": "user-1234", "tenant": "acme",
            "roles": ["client", "reviewer"], "groups": ["finance", "legal"],
            "exp": now + 3600, "iat": now, "jti": jti,
        });
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let token = sign(&keys_in_set[0], 0);

    let floor = median_ns(100_000, |n| {
        for _ in 0..n {
            black_box(Sha256::digest(black_box(token.as_bytes())));
        }
    });
    let api_key = keys::generate().unwrap();
    let header = format!("Bearer {}", api_key.plaintext);
    let key_ns = median_ns(100_000, |n| {
        for _ in 0..n {
            let token = keys::bearer(black_box(&header)).unwrap();
            let keys::Credential::ApiKey(presented) = keys::classify(token).unwrap() else {
                panic!("not a key");
            };
            assert!(keys::hash_matches(&api_key.hash, &presented.hash));
        }
    });
    let cached = median_ns(100_000, |n| {
        runtime.block_on(async {
            for _ in 0..n {
                black_box(verifier.verify(black_box(&token)).await.unwrap());
            }
        });
    });
    let mut uncached = Vec::new();
    for (index, key) in keys_in_set.iter().enumerate() {
        // Distinct tokens, so each call misses the cache (the cache keeps
        // 10,000; each round uses fresh ones).
        let per_round = 200;
        let tokens: Vec<String> = (0..(ROUNDS + 1) * per_round)
            .map(|i| sign(key, 1_000_000 * (index + 1) + i))
            .collect();
        let mut next = tokens.iter();
        let ns = median_ns(per_round, |n| {
            runtime.block_on(async {
                for token in next.by_ref().take(n) {
                    black_box(verifier.verify(token).await.unwrap());
                }
            });
        });
        uncached.push((key.1, ns));
    }

    println!("token: {} bytes", token.len());
    println!("{:<40} {:>10} {:>8}", "per call", "median ns", "× floor");
    let row = |name: &str, ns: f64| println!("{name:<40} {ns:>10.0} {:>8.1}", ns / floor);
    row("sha-256 of the token (floor)", floor);
    row("api key: bearer + classify + compare", key_ns);
    row("jwt, cached (every call after the first)", cached);
    for (alg, ns) in uncached {
        row(&format!("jwt {alg:?}, first call (signature)"), ns);
    }
}
