//! Webhook triggers: verifying a delivery (HMAC-SHA256 signature over
//! `<timestamp>.<body>`, the timestamp within a tolerance, a delivery id)
//! and turning it into a run start, at most one per delivery id.

use ring::hmac;
use serde_json::{Value, json};

use crate::config::WebhookConfig;
use crate::error::{Error, Result};
use crate::expr::Expr;

/// A webhook, checked at start.
pub struct Hook {
    pub config: WebhookConfig,
    key: hmac::Key,
    input: Expr,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("name", &self.config.name)
            .finish()
    }
}

/// A delivery that checks: the run's input and its delivery id.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub input: Value,
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The signature header value for `body` sent at `timestamp` (for senders
/// and tests).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut msg = format!("{timestamp}.").into_bytes();
    msg.extend_from_slice(body);
    format!("sha256={}", hex(hmac::sign(&key, &msg).as_ref()))
}

impl Hook {
    pub fn new(config: WebhookConfig, secret: &[u8]) -> Result<Hook> {
        let field = |f: &str| format!("flows.webhooks[{}].{f}", config.name);
        crate::def::check_name(&config.name)
            .map_err(|p| Error::InvalidArgument(format!("{}: {p}", field("name"))))?;
        if secret.len() < 16 {
            return Err(Error::InvalidArgument(format!(
                "{}: at least 16 bytes",
                field("secret")
            )));
        }
        let input = Expr::parse(config.input.as_deref().unwrap_or(".body"))
            .map_err(|p| Error::InvalidArgument(format!("{}: {p}", field("input"))))?;
        Ok(Hook {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            input,
            config,
        })
    }

    /// Check a delivery received at `now_secs`; nothing is started here.
    pub fn verify(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        now_secs: u64,
    ) -> Result<Delivery> {
        let c = &self.config;
        let sig = header(headers, &c.signature_header).ok_or_else(|| {
            Error::Unauthenticated(format!("the {} header is missing", c.signature_header))
        })?;
        let ts_text = header(headers, &c.timestamp_header).ok_or_else(|| {
            Error::Unauthenticated(format!("the {} header is missing", c.timestamp_header))
        })?;
        let ts: u64 = ts_text.parse().map_err(|_| {
            Error::Unauthenticated(format!(
                "{}: {ts_text:?} is not a Unix time in seconds",
                c.timestamp_header
            ))
        })?;
        let tag = sig.strip_prefix("sha256=").and_then(unhex).ok_or_else(|| {
            Error::Unauthenticated(format!("{}: expected sha256=<hex>", c.signature_header))
        })?;
        let mut msg = format!("{ts}.").into_bytes();
        msg.extend_from_slice(body);
        hmac::verify(&self.key, &msg, &tag)
            .map_err(|_| Error::Unauthenticated("the signature does not match".into()))?;
        // Checked after the signature, so the time cannot be forged.
        if now_secs.abs_diff(ts) > c.tolerance_secs {
            return Err(Error::Unauthenticated(format!(
                "{}: {ts} is more than {} s from now ({now_secs}): a replay or a wrong clock",
                c.timestamp_header, c.tolerance_secs
            )));
        }
        let id = header(headers, &c.delivery_header)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("the {} header is missing", c.delivery_header))
            })?
            .to_string();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .map_err(|e| Error::InvalidArgument(format!("the body is not JSON: {e}")))?
        };
        let mut hs = serde_json::Map::new();
        for (k, v) in headers {
            if let Ok(v) = v.to_str() {
                hs.insert(k.as_str().to_string(), Value::String(v.to_string()));
            }
        }
        let input = self
            .input
            .eval(&json!({ "body": body, "headers": hs }))
            .map_err(|e| Error::InvalidArgument(format!("input: {e}")))?;
        Ok(Delivery { id, input })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;

    fn hook() -> Hook {
        Hook::new(
            WebhookConfig {
                name: "orders".into(),
                flow: "f".into(),
                secret: SecretSource {
                    env: None,
                    file: None,
                },
                signature_header: "x-baton-signature".into(),
                timestamp_header: "x-baton-timestamp".into(),
                delivery_header: "x-baton-delivery".into(),
                tolerance_secs: 300,
                tenant: "default".into(),
                input: Some("{order: .body.id}".into()),
            },
            b"0123456789abcdef-secret",
        )
        .expect("hook")
    }

    fn headers(sig: &str, ts: u64, delivery: &str) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-baton-signature", sig.parse().expect("value"));
        h.insert("x-baton-timestamp", ts.to_string().parse().expect("value"));
        if !delivery.is_empty() {
            h.insert("x-baton-delivery", delivery.parse().expect("value"));
        }
        h
    }

    #[test]
    fn a_signed_fresh_delivery_checks_and_maps_its_input() {
        let h = hook();
        let body = br#"{"id": 7}"#;
        let sig = sign(b"0123456789abcdef-secret", 1000, body);
        let d = h
            .verify(&headers(&sig, 1000, "d-1"), body, 1100)
            .expect("ok");
        assert_eq!(
            d,
            Delivery {
                id: "d-1".into(),
                input: json!({"order": 7})
            }
        );
    }

    #[test]
    fn bad_signatures_stale_times_and_missing_ids_are_refused() {
        let h = hook();
        let body = br#"{"id": 7}"#;
        let good = sign(b"0123456789abcdef-secret", 1000, body);
        let wrong_key = sign(b"another-secret-of-16+", 1000, body);
        let e = h
            .verify(&headers(&wrong_key, 1000, "d"), body, 1000)
            .expect_err("key");
        assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        // The body changed after signing.
        let e = h
            .verify(&headers(&good, 1000, "d"), br#"{"id": 8}"#, 1000)
            .expect_err("body");
        assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        // The timestamp changed (a replay with a fresh time does not check).
        let e = h
            .verify(&headers(&good, 2000, "d"), body, 2000)
            .expect_err("ts");
        assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        // A genuine but old delivery.
        let e = h
            .verify(&headers(&good, 1000, "d"), body, 1000 + 301)
            .expect_err("stale");
        assert!(e.to_string().contains("replay"), "{e}");
        let e = h
            .verify(&headers("sha256=zz", 1000, "d"), body, 1000)
            .expect_err("hex");
        assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        let e = h
            .verify(&headers(&good, 1000, ""), body, 1000)
            .expect_err("id");
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
}
