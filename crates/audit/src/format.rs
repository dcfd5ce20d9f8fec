//! The on-disk encoding: record lines, the signed head, hex, and the strict
//! checks that the writer, `verify` and `export` share.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::AuditEvent;

/// Name of the log file inside the audit directory.
pub const LOG_FILE: &str = "audit.log";
/// Name of the signed head file inside the audit directory.
pub const HEAD_FILE: &str = "audit.head";
/// `prev` of the first record: 32 zero bytes.
pub const GENESIS: [u8; 32] = [0; 32];

/// The JSON body of one record, in the field order in which it is written.
#[derive(Debug, Serialize)]
struct BodyOut<'a> {
    seq: u64,
    ts_unix_ms: u64,
    kind: &'a str,
    session_id: Option<&'a str>,
    actor: Option<&'a str>,
    data: &'a serde_json::value::RawValue,
    prev: String,
}

/// The fields of a body that readers look at; `data` is only checked to be
/// JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BodyIn {
    pub seq: u64,
    pub ts_unix_ms: u64,
    #[allow(dead_code)]
    pub kind: String,
    pub session_id: Option<String>,
    #[allow(dead_code)]
    pub actor: Option<String>,
    #[allow(dead_code)]
    pub data: serde::de::IgnoredAny,
    pub prev: String,
}

/// The JSON part of `audit.head`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
    pub bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadJson {
    seq: u64,
    hash: String,
    bytes: u64,
}

/// `sha256(prev || body)`.
pub(crate) fn record_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Strict lowercase hex of exactly `N` bytes: uppercase is rejected so that
/// every byte of a line has exactly one accepted value.
pub fn from_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Encodes record `seq` of `event` (whose `ts_unix_ms` the writer has
/// filled in) following a record whose hash is `prev`, signed on its own;
/// returns the line with its trailing newline, and its hash.
#[cfg(test)]
pub(crate) fn encode_record(
    key: &SigningKey,
    seq: u64,
    prev: &[u8; 32],
    ts_unix_ms: u64,
    event: &AuditEvent,
) -> Result<(Vec<u8>, [u8; 32]), serde_json::Error> {
    let (body, hash) = encode_body(seq, prev, ts_unix_ms, event)?;
    let sig = key.sign(&hash).to_bytes();
    Ok((finish_line(body, &hash, &sig, None), hash))
}

/// The body of record `seq` of `event` following a record whose hash is
/// `prev`, and its hash.
pub(crate) fn encode_body(
    seq: u64,
    prev: &[u8; 32],
    ts_unix_ms: u64,
    event: &AuditEvent,
) -> Result<(Vec<u8>, [u8; 32]), serde_json::Error> {
    let body = BodyOut {
        seq,
        ts_unix_ms,
        kind: &event.kind,
        session_id: event.session_id.as_deref(),
        actor: event.actor.as_deref(),
        data: &event.data,
        prev: to_hex(prev),
    };
    let body_bytes = serde_json::to_vec(&body)?;
    let hash = record_hash(prev, &body_bytes);
    Ok((body_bytes, hash))
}

/// A record's line: `<body>\t<hash>\t<sig>` and, for a record signed
/// with its batch, `\t<proof>`; with its trailing newline.
pub(crate) fn finish_line(
    body: Vec<u8>,
    hash: &[u8; 32],
    sig: &[u8; 64],
    proof: Option<&str>,
) -> Vec<u8> {
    let mut line = body;
    line.reserve(1 + 64 + 1 + 128 + 1 + proof.map_or(0, |p| p.len() + 1));
    line.push(b'\t');
    line.extend_from_slice(to_hex(hash).as_bytes());
    line.push(b'\t');
    line.extend_from_slice(to_hex(sig).as_bytes());
    if let Some(p) = proof {
        line.push(b'\t');
        line.extend_from_slice(p.as_bytes());
    }
    line.push(b'\n');
    line
}

/// Checks a record's signature: over its hash, or, with a proof, over the
/// root of its batch's tree that the proof leads to.
pub(crate) fn check_signature(
    hash: &[u8; 32],
    sig: &[u8; 64],
    proof: Option<&[u8]>,
    key: &VerifyingKey,
) -> Result<(), &'static str> {
    let sig = Signature::from_bytes(sig);
    let signed = match proof {
        None => key.verify_strict(hash, &sig),
        Some(p) => {
            let (index, count, path) = decode_proof(p)
                .ok_or("malformed proof: expected <index>/<count> and 64-hex sibling hashes")?;
            let root = crate::batch::root_of(index, count, hash, &path)
                .ok_or("proof does not fit its place in a batch (index, count or length)")?;
            key.verify_strict(&crate::batch::signed_message(&root), &sig)
        }
    };
    signed.map_err(|_| "signature invalid: forged, altered, or signed by another key")
}

/// A proof as written: `<index>/<count>` then `,<64 hex>` per sibling.
pub(crate) fn encode_proof(index: usize, count: usize, path: &[[u8; 32]]) -> String {
    let mut s = format!("{index}/{count}");
    for h in path {
        s.push(',');
        s.push_str(&to_hex(h));
    }
    s
}

/// A decimal without a sign or leading zeros.
fn number(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 3 || (s.len() > 1 && s[0] == b'0') {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Parses a proof strictly (every byte has one accepted value).
pub(crate) fn decode_proof(s: &[u8]) -> Option<(usize, usize, Vec<[u8; 32]>)> {
    let mut parts = s.split(|&b| b == b',');
    let place = parts.next()?;
    let slash = place.iter().position(|&b| b == b'/')?;
    let index = number(&place[..slash])?;
    let count = number(&place[slash + 1..])?;
    let path = parts
        .map(from_hex::<32>)
        .collect::<Option<Vec<[u8; 32]>>>()?;
    Some((index, count, path))
}

/// A record line that passed every check.
#[derive(Debug)]
pub(crate) struct GoodRecord<'a> {
    pub body_bytes: &'a [u8],
    pub body: BodyIn,
    pub hash: [u8; 32],
    pub sig_hex: &'a [u8],
    /// The inclusion proof of a record signed with its batch.
    pub proof: Option<&'a [u8]>,
}

/// Why a line failed, and the seq its body claims if it got that far.
#[derive(Debug)]
pub(crate) struct LineError {
    pub seq: Option<u64>,
    pub reason: String,
}

fn fail(seq: Option<u64>, reason: impl Into<String>) -> LineError {
    LineError {
        seq,
        reason: reason.into(),
    }
}

/// Checks one complete line (without its `\n`) as record `expected_seq`
/// following a record whose hash is `prev`.
pub(crate) fn check_line<'a>(
    line: &'a [u8],
    expected_seq: u64,
    prev: &[u8; 32],
    key: &VerifyingKey,
) -> Result<GoodRecord<'a>, LineError> {
    let mut parts = line.split(|&b| b == b'\t');
    let (Some(body_bytes), Some(hash_hex), Some(sig_hex), proof, None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(fail(
            None,
            "malformed line: expected exactly <body>\\t<hash>\\t<sig>[\\t<proof>]",
        ));
    };
    let Some(stored_hash) = from_hex::<32>(hash_hex) else {
        return Err(fail(None, "malformed hash: not 64 lowercase hex digits"));
    };
    let Some(sig_bytes) = from_hex::<64>(sig_hex) else {
        return Err(fail(
            None,
            "malformed signature: not 128 lowercase hex digits",
        ));
    };
    if body_bytes.first() != Some(&b'{') || body_bytes.last() != Some(&b'}') {
        return Err(fail(
            None,
            "body is not a JSON object without surrounding space",
        ));
    }
    let body: BodyIn = serde_json::from_slice(body_bytes)
        .map_err(|e| fail(None, format!("body is not a valid record: {e}")))?;
    let seq = Some(body.seq);
    if body.seq != expected_seq {
        return Err(fail(
            seq,
            format!(
                "seq is {}, expected {expected_seq}: records were removed, reordered or duplicated",
                body.seq
            ),
        ));
    }
    if body.prev.as_bytes() != to_hex(prev).as_bytes() {
        return Err(fail(
            seq,
            "prev does not match the previous record's hash: a record before it was removed, reordered or altered",
        ));
    }
    let hash = record_hash(prev, body_bytes);
    if hash != stored_hash {
        return Err(fail(seq, "hash mismatch: body or prev was altered"));
    }
    check_signature(&hash, &sig_bytes, proof, key).map_err(|reason| fail(seq, reason))?;
    Ok(GoodRecord {
        body_bytes,
        body,
        hash,
        sig_hex,
        proof,
    })
}

/// The `prev` a line's body claims, if it parses that far; recovery uses it
/// to check the record the head points at without reading the one before.
pub(crate) fn claimed_prev(line: &[u8]) -> Option<[u8; 32]> {
    let body_bytes = line.split(|&b| b == b'\t').next()?;
    let body: BodyIn = serde_json::from_slice(body_bytes).ok()?;
    from_hex::<32>(body.prev.as_bytes())
}

/// Encodes `audit.head`: `<json>\t<sig>\n`, the signature over the JSON bytes.
pub(crate) fn encode_head(key: &SigningKey, head: &Head) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(&HeadJson {
        seq: head.seq,
        hash: to_hex(&head.hash),
        bytes: head.bytes,
    })?;
    let sig = key.sign(&json);
    let mut out = json;
    out.push(b'\t');
    out.extend_from_slice(to_hex(&sig.to_bytes()).as_bytes());
    out.push(b'\n');
    Ok(out)
}

/// Parses and checks `audit.head`; the error is a reason for a report.
pub(crate) fn decode_head(raw: &[u8], key: &VerifyingKey) -> Result<Head, String> {
    let Some(content) = raw.strip_suffix(b"\n") else {
        return Err("audit.head is malformed: no trailing newline".into());
    };
    let mut parts = content.split(|&b| b == b'\t');
    let (Some(json), Some(sig_hex), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("audit.head is malformed: expected <json>\\t<sig>".into());
    };
    let Some(sig_bytes) = from_hex::<64>(sig_hex) else {
        return Err("audit.head is malformed: signature is not 128 lowercase hex digits".into());
    };
    if key
        .verify_strict(json, &Signature::from_bytes(&sig_bytes))
        .is_err()
    {
        return Err("audit.head signature invalid: altered, or signed by another key".into());
    }
    let parsed: HeadJson =
        serde_json::from_slice(json).map_err(|e| format!("audit.head is malformed: {e}"))?;
    let Some(hash) = from_hex::<32>(parsed.hash.as_bytes()) else {
        return Err("audit.head is malformed: hash is not 64 lowercase hex digits".into());
    };
    Ok(Head {
        seq: parsed.seq,
        hash,
        bytes: parsed.bytes,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn hex_round_trip_is_strict() {
        let bytes = [0x00, 0xab, 0xff, 0x10];
        let s = to_hex(&bytes);
        assert_eq!(s, "00abff10");
        assert_eq!(from_hex::<4>(s.as_bytes()), Some(bytes));
        assert_eq!(from_hex::<4>(b"00ABff10"), None, "uppercase is rejected");
        assert_eq!(from_hex::<4>(b"00abff1"), None);
        assert_eq!(from_hex::<4>(b"00abff1g"), None);
    }

    #[test]
    fn encoded_record_checks_and_any_change_fails() {
        let event = AuditEvent {
            kind: "tool_call".into(),
            session_id: Some("s1".into()),
            actor: None,
            data: serde_json::value::to_raw_value(&serde_json::json!({"tool": "search", "n": 3}))
                .unwrap(),
            ts_unix_ms: None,
        };
        let (line, hash) = encode_record(&key(), 1, &GENESIS, 42, &event).unwrap();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.starts_with(
            r#"{"seq":1,"ts_unix_ms":42,"kind":"tool_call","session_id":"s1","actor":null,"data":{"n":3,"tool":"search"},"prev":"0000"#
        ));
        let vk = key().verifying_key();
        let content = &line[..line.len() - 1];
        let good = check_line(content, 1, &GENESIS, &vk).unwrap();
        assert_eq!(good.hash, hash);
        assert!(check_line(content, 2, &GENESIS, &vk).is_err());
        assert!(check_line(content, 1, &[1; 32], &vk).is_err());
        for i in 0..content.len() {
            let mut bad = content.to_vec();
            bad[i] ^= 0x01;
            assert!(check_line(&bad, 1, &GENESIS, &vk).is_err(), "byte {i}");
        }
    }

    #[test]
    fn batch_signed_records_check_on_their_own_and_any_change_fails() {
        let vk = key().verifying_key();
        let mut prev = GENESIS;
        let mut records = Vec::new();
        for i in 1..=3u64 {
            let event = AuditEvent::new("tool_call", serde_json::json!({ "i": i }));
            let (body, hash) = encode_body(i, &prev, 42, &event).unwrap();
            records.push((body, hash, prev));
            prev = hash;
        }
        let hashes: Vec<[u8; 32]> = records.iter().map(|r| r.1).collect();
        let (root, proofs) = crate::batch::tree(&hashes);
        let sig = key().sign(&crate::batch::signed_message(&root)).to_bytes();
        let lines: Vec<Vec<u8>> = records
            .iter()
            .zip(&proofs)
            .enumerate()
            .map(|(i, ((body, hash, _), path))| {
                let proof = encode_proof(i, 3, path);
                finish_line(body.clone(), hash, &sig, Some(&proof))
            })
            .collect();
        for (i, (line, (_, hash, prev))) in lines.iter().zip(&records).enumerate() {
            let content = &line[..line.len() - 1];
            let good = check_line(content, i as u64 + 1, prev, &vk).unwrap();
            assert_eq!(good.hash, *hash);
            assert!(good.proof.is_some());
        }
        // The second record, every byte flipped in turn (its proof too).
        let content = &lines[1][..lines[1].len() - 1];
        for i in 0..content.len() {
            let mut bad = content.to_vec();
            bad[i] ^= 0x01;
            assert!(check_line(&bad, 2, &records[1].2, &vk).is_err(), "byte {i}");
        }
        // Another record's proof, or the batch signature as a record's own.
        let mut swapped = records[1].0.clone();
        swapped.push(b'\t');
        swapped.extend_from_slice(to_hex(&records[1].1).as_bytes());
        swapped.push(b'\t');
        swapped.extend_from_slice(to_hex(&sig).as_bytes());
        assert!(check_line(&swapped, 2, &records[1].2, &vk).is_err());
        let other = encode_proof(0, 3, &proofs[0]);
        swapped.push(b'\t');
        swapped.extend_from_slice(other.as_bytes());
        assert!(check_line(&swapped, 2, &records[1].2, &vk).is_err());
    }

    #[test]
    fn proofs_parse_strictly() {
        let h = to_hex(&[0xab; 32]);
        assert!(decode_proof(format!("1/2,{h}").as_bytes()).is_some());
        for bad in [
            format!("01/2,{h}"),
            format!("1/02,{h}"),
            format!("1-2,{h}"),
            format!("1/2,{}", h.to_uppercase()),
            format!("1/2,{h},"),
            format!("/2,{h}"),
            format!("1/2;{h}"),
        ] {
            assert!(decode_proof(bad.as_bytes()).is_none(), "{bad}");
        }
        assert_eq!(crate::batch::root_of(2, 2, &[0; 32], &[[0; 32]]), None);
        assert_eq!(crate::batch::root_of(0, 1, &[0; 32], &[]), None);
        assert_eq!(
            crate::batch::root_of(0, crate::batch::MAX_TREE + 1, &[0; 32], &[[0; 32]; 9]),
            None
        );
    }

    #[test]
    fn proofs_round_trip() {
        let path = [[1u8; 32], [0xcd; 32]];
        let text = encode_proof(3, 17, &path);
        assert_eq!(decode_proof(text.as_bytes()), Some((3, 17, path.to_vec())));
    }

    #[test]
    fn head_round_trip_and_tamper() {
        let head = Head {
            seq: 9,
            hash: [3; 32],
            bytes: 1234,
        };
        let raw = encode_head(&key(), &head).unwrap();
        let vk = key().verifying_key();
        assert_eq!(decode_head(&raw, &vk).unwrap(), head);
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x04;
            assert!(decode_head(&bad, &vk).is_err(), "byte {i}");
        }
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(decode_head(&raw, &other).is_err());
    }
}
