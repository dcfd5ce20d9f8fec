//! End-to-end tests of the audit log through its public API: writing across
//! reopen, tamper and truncation detection, torn-tail recovery, export, and
//! concurrent appends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use baton_audit::{
    AuditConfig, AuditError, AuditEvent, AuditLog, ExportFilter, HEAD_FILE, LOG_FILE, VerifyingKey,
    export, export_anchored, public_key_path, read_public_key, verify, verify_anchored,
};
use ed25519_dalek::{Signature, Verifier};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

fn config(dir: &Path) -> AuditConfig {
    AuditConfig::in_dir(dir.join("audit"))
}

fn event(i: u64) -> AuditEvent {
    let ev = AuditEvent::new(
        "tool_call",
        json!({"i": i, "tool": "search", "q": "tabs\tand\nnewlines"}),
    )
    .at(1_000 + i)
    .actor("agent");
    match i % 3 {
        0 => ev.session("a"),
        1 => ev.session("b"),
        _ => ev,
    }
}

/// A closed log of `n` records (events 0..n) in a new temp dir.
async fn build(n: u64) -> (TempDir, PathBuf, VerifyingKey) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let dir = cfg.path.clone();
    let log = AuditLog::open(cfg).unwrap();
    for i in 0..n {
        log.append(event(i));
    }
    log.flush().await.unwrap();
    let key = log.public_key();
    log.close().unwrap();
    (tmp, dir, key)
}

/// Copies the log and head of `dir` into a fresh temp dir.
fn copy_dir(dir: &Path) -> TempDir {
    let copy = tempfile::tempdir().unwrap();
    for name in [LOG_FILE, HEAD_FILE] {
        fs::copy(dir.join(name), copy.path().join(name)).unwrap();
    }
    copy
}

/// Start offsets of the lines of `log`, plus its length at the end.
fn line_starts(log: &[u8]) -> Vec<u64> {
    let mut starts = vec![0];
    for (i, b) in log.iter().enumerate() {
        if *b == b'\n' {
            starts.push(i as u64 + 1);
        }
    }
    starts
}

fn bodies(dir: &Path) -> Vec<(Value, String)> {
    fs::read_to_string(dir.join(LOG_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let mut parts = l.split('\t');
            let body: Value = serde_json::from_str(parts.next().unwrap()).unwrap();
            (body, parts.next().unwrap().to_string())
        })
        .collect()
}

fn rng() -> fastrand::Rng {
    const SEED: u64 = 0xA0D1_75EED;
    println!("rng seed: {SEED:#x}");
    fastrand::Rng::with_seed(SEED)
}

#[tokio::test]
async fn round_trip_across_reopen_continues_chain_with_same_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let dir = cfg.path.clone();

    let log = AuditLog::open(cfg.clone()).unwrap();
    let first_key = log.public_key_hex();
    for i in 0..20 {
        log.append(event(i));
    }
    log.flush().await.unwrap();
    // flush means written and anchored: verify sees it while still open.
    let report = verify(&dir, &log.public_key());
    assert!(report.ok(), "{report}");
    assert_eq!((report.records, report.head_seq), (20, Some(20)));
    log.close().unwrap();

    let log = AuditLog::open(cfg.clone()).unwrap();
    assert_eq!(log.public_key_hex(), first_key, "the key file is reused");
    for i in 20..35 {
        log.append(event(i));
    }
    log.close().unwrap();

    let key = read_public_key(&public_key_path(&cfg.key_file)).unwrap();
    let report = verify(&dir, &key);
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, 35);
    assert_eq!(report.head_seq, Some(35));
    assert_eq!(report.unanchored, 0);
    assert_eq!(
        report.to_string(),
        "ok: 35 records, chain and signatures valid, head at seq 35"
    );

    let records = bodies(&dir);
    assert_eq!(records.len(), 35);
    let mut prev = "0".repeat(64);
    for (n, (body, hash)) in records.iter().enumerate() {
        assert_eq!(body["seq"], json!(n as u64 + 1));
        assert_eq!(
            body["prev"],
            json!(prev),
            "record {} links to the one before",
            n + 1
        );
        assert_eq!(body["data"]["i"], json!(n as u64));
        assert_eq!(body["ts_unix_ms"], json!(1_000 + n as u64));
        assert_eq!(body["actor"], json!("agent"));
        prev.clone_from(hash);
    }
    assert_eq!(records[0].0["session_id"], json!("a"));
    assert_eq!(records[2].0["session_id"], Value::Null);
    assert_eq!(records[0].0["data"]["q"], json!("tabs\tand\nnewlines"));
}

#[tokio::test]
async fn default_timestamp_is_append_time() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let dir = cfg.path.clone();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let log = AuditLog::open(cfg).unwrap();
    log.append(AuditEvent::new("admin_action", json!(null)));
    log.close().unwrap();
    let ts = bodies(&dir)[0].0["ts_unix_ms"].as_u64().unwrap();
    assert!(ts >= before && ts < before + 60_000, "{ts} vs {before}");
}

#[tokio::test]
async fn every_random_byte_change_is_detected_at_its_record() {
    let (_tmp, dir, key) = build(50).await;
    let original = fs::read(dir.join(LOG_FILE)).unwrap();
    let starts = line_starts(&original);
    let mut rng = rng();
    for iteration in 0..300 {
        let copy = copy_dir(&dir);
        let mut bytes = original.clone();
        let pos = rng.usize(..bytes.len());
        let old = bytes[pos];
        bytes[pos] = if rng.bool() {
            old ^ (1 << rng.u8(..8))
        } else {
            loop {
                let b = rng.u8(..);
                if b != old {
                    break b;
                }
            }
        };
        fs::write(copy.path().join(LOG_FILE), &bytes).unwrap();
        let report = verify(copy.path(), &key);
        let ctx = format!(
            "iteration {iteration}: byte {pos} {old:#04x} -> {:#04x}: {report}",
            bytes[pos]
        );
        assert!(!report.ok(), "{ctx}");
        let bad = report.first_bad.as_ref().unwrap_or_else(|| panic!("{ctx}"));
        // The first bad record is exactly the line that holds the change.
        let line = starts.iter().filter(|&&s| s <= pos as u64).count() as u64;
        assert_eq!(bad.line, line, "{ctx}");
        assert_eq!(bad.byte_offset, starts[line as usize - 1], "{ctx}");
        assert_eq!(report.records, line - 1, "{ctx}");
        assert!(
            report.to_string().starts_with(&format!(
                "TAMPERED: record {line} (line {line}, byte {})",
                bad.byte_offset
            )),
            "{ctx}"
        );
    }
}

#[tokio::test]
async fn truncation_at_any_offset_is_detected() {
    let (_tmp, dir, key) = build(50).await;
    let original = fs::read(dir.join(LOG_FILE)).unwrap();
    let starts = line_starts(&original);
    let mut rng = rng();
    // Every record boundary (cutting off 50, 49, ... 1 whole records) and
    // random offsets inside lines.
    let mut cuts: Vec<u64> = starts[..starts.len() - 1].to_vec();
    cuts.extend((0..100).map(|_| rng.u64(..original.len() as u64)));
    for cut in cuts {
        let copy = copy_dir(&dir);
        fs::write(copy.path().join(LOG_FILE), &original[..cut as usize]).unwrap();
        let report = verify(copy.path(), &key);
        assert!(!report.ok(), "cut at {cut}: {report}");
        let bad = report.first_bad.as_ref().expect("a first bad record");
        if let Some(k) = starts.iter().position(|&s| s == cut) {
            assert_eq!(bad.line, k as u64 + 1, "cut at {cut}: {report}");
            assert!(bad.reason.contains("truncated"), "cut at {cut}: {report}");
        } else {
            assert!(
                bad.reason.contains("partial line"),
                "cut at {cut}: {report}"
            );
        }
    }
    // A deleted log is not a valid empty one.
    let copy = copy_dir(&dir);
    fs::remove_file(copy.path().join(LOG_FILE)).unwrap();
    assert!(!verify(copy.path(), &key).ok());
}

#[tokio::test]
async fn tampered_or_foreign_head_is_detected() {
    let (_tmp, dir, key) = build(10).await;
    let head = fs::read(dir.join(HEAD_FILE)).unwrap();
    let mut rng = rng();
    for _ in 0..100 {
        let copy = copy_dir(&dir);
        let mut bytes = head.clone();
        let pos = rng.usize(..bytes.len());
        bytes[pos] ^= 1 << rng.u8(..8);
        fs::write(copy.path().join(HEAD_FILE), &bytes).unwrap();
        let report = verify(copy.path(), &key);
        assert!(!report.ok(), "head byte {pos}: {report}");
        assert!(report.to_string().starts_with("TAMPERED"), "{report}");
    }

    let copy = copy_dir(&dir);
    fs::remove_file(copy.path().join(HEAD_FILE)).unwrap();
    let report = verify(copy.path(), &key);
    assert!(!report.ok());
    assert!(report.head_error.unwrap().contains("missing"));

    // A head signed by the same key for a different log of the same length.
    let other_tmp = tempfile::tempdir().unwrap();
    let other_dir = other_tmp.path().join("audit");
    let other_cfg = AuditConfig {
        key_file: dir.join("audit.key"),
        ..AuditConfig::in_dir(&other_dir)
    };
    let other = AuditLog::open(other_cfg).unwrap();
    for i in 0..10 {
        other.append(event(i + 1000));
    }
    other.close().unwrap();
    let copy = copy_dir(&dir);
    fs::copy(other_dir.join(HEAD_FILE), copy.path().join(HEAD_FILE)).unwrap();
    let report = verify(copy.path(), &key);
    assert!(!report.ok(), "{report}");
    assert_eq!(report.first_bad.unwrap().line, 10);
}

#[tokio::test]
async fn wrong_public_key_fails_at_record_1() {
    let (_tmp, dir, _key) = build(5).await;
    let (_other, _, wrong) = build(1).await;
    let report = verify(&dir, &wrong);
    assert!(!report.ok());
    let bad = report.first_bad.clone().unwrap();
    assert_eq!((bad.line, bad.byte_offset, bad.seq), (1, 0, Some(1)));
    assert!(bad.reason.contains("signature invalid"), "{report}");
    assert!(
        report
            .to_string()
            .starts_with("TAMPERED: record 1 (line 1, byte 0)"),
        "{report}"
    );
}

#[tokio::test]
async fn removed_and_reordered_records_are_named() {
    let (_tmp, dir, key) = build(10).await;
    let text = fs::read_to_string(dir.join(LOG_FILE)).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();

    let copy = copy_dir(&dir);
    let without_4: String = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, l)| *l)
        .collect();
    fs::write(copy.path().join(LOG_FILE), without_4).unwrap();
    let report = verify(copy.path(), &key);
    let bad = report.first_bad.unwrap();
    assert_eq!((bad.line, bad.seq), (4, Some(5)), "{}", bad);
    assert!(bad.reason.contains("expected 4"), "{bad}");

    let copy = copy_dir(&dir);
    let mut swapped = lines.clone();
    swapped.swap(6, 7);
    fs::write(copy.path().join(LOG_FILE), swapped.concat()).unwrap();
    let bad = verify(copy.path(), &key).first_bad.unwrap();
    assert_eq!((bad.line, bad.seq), (7, Some(8)), "{bad}");
}

#[tokio::test]
async fn torn_tail_beyond_head_is_reported_then_repaired_on_open() {
    let (tmp, dir, key) = build(10).await;
    let line_3 = fs::read_to_string(dir.join(LOG_FILE))
        .unwrap()
        .lines()
        .nth(2)
        .unwrap()
        .to_string();
    let mut log = fs::read(dir.join(LOG_FILE)).unwrap();
    let clean_len = log.len() as u64;
    log.extend_from_slice(&line_3.as_bytes()[..100]);
    fs::write(dir.join(LOG_FILE), &log).unwrap();

    let report = verify(&dir, &key);
    assert!(!report.ok());
    let bad = report.first_bad.unwrap();
    assert_eq!((bad.line, bad.byte_offset), (11, clean_len));
    assert!(
        bad.reason.contains("partial line of 100 bytes"),
        "{}",
        bad.reason
    );

    let log = AuditLog::open(config(tmp.path())).unwrap();
    log.append(event(99));
    log.close().unwrap();
    let report = verify(&dir, &key);
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, 12);
    let records = bodies(&dir);
    assert_eq!(records[10].0["kind"], json!("audit_recovered"));
    assert_eq!(records[10].0["data"]["dropped_bytes"], json!(100));
    assert_eq!(records[11].0["data"]["i"], json!(99));
}

#[tokio::test]
async fn damage_at_or_before_head_fails_open_and_is_not_repaired() {
    let (tmp, dir, _key) = build(10).await;
    let original = fs::read(dir.join(LOG_FILE)).unwrap();

    // Torn inside the record the head names.
    let cut = &original[..original.len() - 30];
    fs::write(dir.join(LOG_FILE), cut).unwrap();
    let err = AuditLog::open(config(tmp.path())).unwrap_err();
    assert!(matches!(err, AuditError::Tampered { .. }), "{err}");
    assert!(err.to_string().contains("partial line"), "{err}");
    assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), cut, "not repaired");

    // Truncated at a record boundary.
    let starts = line_starts(&original);
    fs::write(dir.join(LOG_FILE), &original[..starts[9] as usize]).unwrap();
    let err = AuditLog::open(config(tmp.path())).unwrap_err();
    assert!(err.to_string().contains("record 10"), "{err}");

    // A changed byte in the record the head names.
    let mut changed = original.clone();
    let at = starts[9] as usize + 20;
    changed[at] ^= 1;
    fs::write(dir.join(LOG_FILE), &changed).unwrap();
    let err = AuditLog::open(config(tmp.path())).unwrap_err();
    assert!(err.to_string().contains("record 10 (line 10"), "{err}");

    // A complete but bogus line after the head is not a torn write.
    let mut extra = original.clone();
    extra.extend_from_slice(b"{\"seq\":11}\tnot\tvalid\n");
    fs::write(dir.join(LOG_FILE), &extra).unwrap();
    let err = AuditLog::open(config(tmp.path())).unwrap_err();
    assert!(err.to_string().contains("record 11"), "{err}");
    assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), extra, "not repaired");
}

#[tokio::test]
async fn unanchored_valid_tail_is_accepted_and_anchored_on_open() {
    let (tmp, dir, key) = build(10).await;
    let old_head = fs::read(dir.join(HEAD_FILE)).unwrap();
    let log = AuditLog::open(config(tmp.path())).unwrap();
    for i in 10..15 {
        log.append(event(i));
    }
    log.close().unwrap();
    // As if the process died after the log's fsync, before the head update.
    fs::write(dir.join(HEAD_FILE), &old_head).unwrap();
    let report = verify(&dir, &key);
    assert!(report.ok(), "{report}");
    assert_eq!(
        (report.records, report.head_seq, report.unanchored),
        (15, Some(10), 5)
    );
    assert!(report.to_string().contains("5 valid unanchored records"));

    AuditLog::open(config(tmp.path())).unwrap().close().unwrap();
    let report = verify(&dir, &key);
    assert_eq!(
        (report.records, report.head_seq, report.unanchored),
        (15, Some(15), 0)
    );
    assert!(
        bodies(&dir)
            .iter()
            .all(|(b, _)| b["kind"] != json!("audit_recovered"))
    );
}

#[tokio::test]
async fn second_open_of_a_live_log_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(config(tmp.path())).unwrap();
    let err = AuditLog::open(config(tmp.path())).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err}");
    log.close().unwrap();
    AuditLog::open(config(tmp.path())).unwrap();
}

#[tokio::test]
async fn malformed_key_file_fails_open_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    fs::create_dir_all(&cfg.path).unwrap();
    fs::write(&cfg.key_file, "00112233\n").unwrap();
    let err = AuditLog::open(cfg.clone()).unwrap_err().to_string();
    assert!(err.contains(&cfg.key_file.display().to_string()), "{err}");
    assert!(
        !err.contains("00112233"),
        "the key's content is not echoed: {err}"
    );
}

/// Re-checks an exported line the way a third party would.
fn recheck_exported(line: &str, key: &VerifyingKey) -> Value {
    let obj: Value = serde_json::from_str(line).unwrap();
    let hash = obj["hash"].as_str().unwrap();
    let sig = obj["sig"].as_str().unwrap();
    let proof = obj.get("proof").and_then(Value::as_str);
    let suffix = match proof {
        Some(p) => format!(",\"hash\":\"{hash}\",\"sig\":\"{sig}\",\"proof\":\"{p}\"}}"),
        None => format!(",\"hash\":\"{hash}\",\"sig\":\"{sig}\"}}"),
    };
    let body = format!("{}}}", line.strip_suffix(&suffix).unwrap());
    let prev = obj["prev"].as_str().unwrap();
    let mut h = Sha256::new();
    h.update(decode_hex(prev));
    h.update(body.as_bytes());
    let digest: [u8; 32] = h.finalize().into();
    assert_eq!(decode_hex(hash), digest);
    let sig = Signature::from_slice(&decode_hex(sig)).unwrap();
    match proof {
        None => key.verify(&digest, &sig).unwrap(),
        Some(p) => {
            let mut message = b"baton-audit-batch\0".to_vec();
            message.extend_from_slice(&inclusion_root(p, &digest));
            key.verify(&message, &sig).unwrap();
        }
    }
    obj
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The root an inclusion proof `<index>/<count>,<hex>...` leads to, by
/// the iterative algorithm of RFC 9162 §2.1.3.2 (the writer builds the tree
/// recursively: two formulations that must agree).
fn inclusion_root(proof: &str, record_hash: &[u8; 32]) -> [u8; 32] {
    let mut parts = proof.split(',');
    let (index, count) = parts.next().unwrap().split_once('/').unwrap();
    let (index, count): (u64, u64) = (index.parse().unwrap(), count.parse().unwrap());
    assert!(index < count);
    let (mut f, mut s) = (index, count - 1);
    let mut r = sha256(&[&[0], record_hash]);
    for p in parts {
        let p = decode_hex(p);
        assert_ne!(s, 0, "proof too long");
        if f & 1 == 1 || f == s {
            r = sha256(&[&[1], &p, &r]);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = sha256(&[&[1], &r, &p]);
        }
        f >>= 1;
        s >>= 1;
    }
    assert_eq!(s, 0, "proof too short");
    r
}

fn decode_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn run_export(dir: &Path, key: &VerifyingKey, filter: ExportFilter) -> (u64, Vec<Value>) {
    let mut out = Vec::new();
    let n = export(dir, key, &filter, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let objs: Vec<Value> = text.lines().map(|l| recheck_exported(l, key)).collect();
    assert_eq!(objs.len() as u64, n);
    (n, objs)
}

#[tokio::test]
async fn export_filters_by_session_and_time_and_can_be_reverified() {
    let (_tmp, dir, key) = build(30).await;

    let (n, all) = run_export(&dir, &key, ExportFilter::default());
    assert_eq!(n, 30);
    // Records appended together are signed together, each with its proof.
    assert!(all.iter().any(|o| o.get("proof").is_some()));
    assert_eq!(all[4]["seq"], json!(5));
    assert_eq!(all[4]["kind"], json!("tool_call"));

    let (n, a) = run_export(
        &dir,
        &key,
        ExportFilter {
            session_id: Some("a".into()),
            ..Default::default()
        },
    );
    assert_eq!(n, 10);
    assert!(a.iter().all(|o| o["session_id"] == json!("a")));

    let (n, window) = run_export(
        &dir,
        &key,
        ExportFilter {
            since_ms: Some(1_010),
            until_ms: Some(1_020),
            ..Default::default()
        },
    );
    assert_eq!(n, 10);
    let ts: Vec<u64> = window
        .iter()
        .map(|o| o["ts_unix_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(ts, (1_010..1_020).collect::<Vec<_>>());

    let (n, both) = run_export(
        &dir,
        &key,
        ExportFilter {
            session_id: Some("b".into()),
            since_ms: Some(1_010),
            until_ms: None,
        },
    );
    // i in 10..30 with i % 3 == 1: 10, 13, ..., 28.
    assert_eq!(n, 7);
    assert_eq!(both[0]["data"]["i"], json!(10));
}

#[tokio::test]
async fn export_of_a_tampered_log_fails_naming_the_record() {
    let (_tmp, dir, key) = build(30).await;
    let mut bytes = fs::read(dir.join(LOG_FILE)).unwrap();
    let starts = line_starts(&bytes);
    bytes[starts[19] as usize + 5] ^= 0x02;
    fs::write(dir.join(LOG_FILE), &bytes).unwrap();
    let err = export(&dir, &key, &ExportFilter::default(), &mut Vec::new()).unwrap_err();
    assert!(matches!(err, AuditError::Tampered { .. }), "{err}");
    assert!(err.to_string().contains("record 20 (line 20"), "{err}");

    // Truncation is refused too, even though every remaining record is fine.
    fs::write(
        dir.join(LOG_FILE),
        &fs::read(dir.join(LOG_FILE)).unwrap()[..starts[10] as usize],
    )
    .unwrap();
    let err = export(&dir, &key, &ExportFilter::default(), &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_8_tasks_are_gap_free() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let dir = cfg.path.clone();
    let log = AuditLog::open(cfg).unwrap();
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..1000u64 {
                    log.append(AuditEvent::new("model_call", json!({"task": t, "i": i})));
                    if i % 250 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                log.flush().await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    log.flush().await.unwrap();
    let key = log.public_key();
    log.close().unwrap();

    let report = verify(&dir, &key);
    assert!(report.ok(), "{report}");
    assert_eq!((report.records, report.head_seq), (8000, Some(8000)));
    let mut seen = HashSet::new();
    let mut last_i = [None::<u64>; 8];
    for (n, (body, _)) in bodies(&dir).iter().enumerate() {
        assert_eq!(body["seq"], json!(n as u64 + 1));
        let t = body["data"]["task"].as_u64().unwrap();
        let i = body["data"]["i"].as_u64().unwrap();
        assert!(seen.insert((t, i)), "({t}, {i}) twice");
        let slot = &mut last_i[t as usize];
        assert!(slot.is_none_or(|prev| prev < i), "task {t} out of order");
        *slot = Some(i);
    }
    assert_eq!(seen.len(), 8000);
}

/// A running server's log: the record being written after the head is not
/// read by the anchored walks, which still catch tampering before it, and
/// the anchored export keeps only what `keep` admits.
#[tokio::test]
async fn anchored_walks_stop_at_the_head_of_a_live_log() {
    let (_tmp, dir, key) = build(30).await;
    let log_path = dir.join(LOG_FILE);
    let mut torn = fs::read(&log_path).unwrap();
    torn.extend_from_slice(b"{\"seq\":31,\"ts_unix_ms\":5,\"kind\":\"tool_c");
    fs::write(&log_path, &torn).unwrap();
    assert!(!verify(&dir, &key).ok(), "the whole file has a torn tail");
    let report = verify_anchored(&dir, &key);
    assert!(report.ok(), "{report}");
    assert_eq!((report.records, report.head_seq), (30, Some(30)));

    let mut out = Vec::new();
    let n = export_anchored(
        &dir,
        &key,
        &ExportFilter::default(),
        |s| s == Some("a"),
        &mut out,
    )
    .unwrap();
    assert_eq!(n, 10, "events 0, 3, …, 27 are session a's");
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert!(lines.iter().all(|l| l["session_id"] == "a"));

    // A changed byte inside the anchored part is still found.
    let starts = line_starts(&torn);
    let at = starts[4] as usize + 20;
    torn[at] ^= 1;
    fs::write(&log_path, &torn).unwrap();
    let report = verify_anchored(&dir, &key);
    assert_eq!(
        report.first_bad.map(|b| b.line),
        Some(5),
        "{:?}",
        report.head_seq
    );
    assert!(
        export_anchored(
            &dir,
            &key,
            &ExportFilter::default(),
            |_| true,
            &mut Vec::new()
        )
        .is_err()
    );
}

#[tokio::test]
async fn records_are_anchored_within_the_interval_without_a_flush() {
    let (tmp, dir, key) = build(3).await;
    let log = AuditLog::open(config(tmp.path())).unwrap();
    for i in 3..8 {
        log.append(event(i));
    }
    // Nobody flushes: the writer anchors them by itself (fsync and signed
    // head) at most 200 ms after the first was written.
    let mut anchored = None;
    for _ in 0..100 {
        let report = verify(&dir, &key);
        if report.head_seq == Some(8) {
            anchored = Some(report);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let report = anchored.expect("the head reached the last record without a flush");
    assert!(report.ok(), "{report}");
    assert_eq!((report.records, report.unanchored), (8, 0));
    log.close().unwrap();
}
