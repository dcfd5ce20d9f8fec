//! The signing key: loaded from, or generated into, a hex seed file, with the
//! public key beside it in `<key_file>.pub`.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::{AuditError, Result};
use crate::format::{from_hex, to_hex};

fn key_error(path: &Path, reason: impl Into<String>) -> AuditError {
    AuditError::Key {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_error(op: &'static str, path: &Path, error: io::Error) -> AuditError {
    AuditError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// `<key_file>.pub`: where the public key of `key_file` is written.
pub fn public_key_path(key_file: &Path) -> PathBuf {
    let mut s = OsString::from(key_file.as_os_str());
    s.push(".pub");
    PathBuf::from(s)
}

/// A public key as 64 lowercase hex digits, as `<key_file>.pub` holds it.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    to_hex(key.as_bytes())
}

/// Parses a public key given as 64 lowercase hex digits (surrounding
/// whitespace is ignored).
pub fn parse_public_key_hex(hex: &str) -> Result<VerifyingKey> {
    let bytes = from_hex::<32>(hex.trim().as_bytes())
        .ok_or_else(|| AuditError::PublicKey("expected 64 lowercase hex digits".into()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| AuditError::PublicKey("not a valid ed25519 public key".into()))
}

/// Reads a public key from a file: a `*.pub` file holds the hex public key;
/// any other file is taken to be a key file (hex seed) and the public key is
/// derived from it.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey> {
    if path.extension().is_some_and(|e| e == "pub") {
        let text = fs::read_to_string(path).map_err(|e| io_error("read", path, e))?;
        parse_public_key_hex(&text).map_err(|e| key_error(path, e.to_string()))
    } else {
        Ok(read_signing_key(path)?.verifying_key())
    }
}

/// Reads an existing key file (64 lowercase hex digits of seed, optionally
/// followed by a newline).
pub(crate) fn read_signing_key(path: &Path) -> Result<SigningKey> {
    let text = fs::read_to_string(path).map_err(|e| io_error("read", path, e))?;
    let seed = from_hex::<32>(text.trim_end_matches('\n').as_bytes()).ok_or_else(|| {
        key_error(
            path,
            "malformed key file: expected 64 lowercase hex digits (an ed25519 seed)",
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Loads the key in `path`, or generates one from OS randomness and writes it
/// (mode 0600, parent directories created) with its public key in
/// `<path>.pub`.
pub(crate) fn load_or_create(path: &Path) -> Result<SigningKey> {
    let key = match fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    key_file = %path.display(),
                    "audit key file is readable by group or others; it should be mode 0600"
                );
            }
            read_signing_key(path)?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(path)?,
        Err(e) => return Err(io_error("stat", path, e)),
    };
    write_public_key(path, &key.verifying_key())?;
    Ok(key)
}

fn create(path: &Path) -> Result<SigningKey> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| io_error("create directory", parent, e))?;
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| key_error(path, format!("cannot get OS randomness: {e}")))?;
    let key = SigningKey::from_bytes(&seed);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return read_signing_key(path),
        Err(e) => return Err(io_error("create", path, e)),
    };
    let mut text = to_hex(key.as_bytes());
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write", path, e))?;
    tracing::info!(
        key_file = %path.display(),
        public_key = %to_hex(key.verifying_key().as_bytes()),
        "generated a new audit signing key"
    );
    Ok(key)
}

/// Writes `<key_file>.pub` if it is missing; an existing one that names
/// another key is an error, since verifiers would trust the wrong key.
fn write_public_key(key_file: &Path, public: &VerifyingKey) -> Result<()> {
    let pub_path = public_key_path(key_file);
    let hex = to_hex(public.as_bytes());
    match fs::read_to_string(&pub_path) {
        Ok(existing) if existing.trim() == hex => Ok(()),
        Ok(_) => Err(key_error(
            &pub_path,
            format!(
                "holds a public key that does not belong to {}",
                key_file.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::write(&pub_path, format!("{hex}\n")).map_err(|e| io_error("write", &pub_path, e))
        }
        Err(e) => Err(io_error("read", &pub_path, e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/keys/audit.key");
        let a = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        let pub_path = public_key_path(&path);
        assert_eq!(pub_path.file_name().unwrap(), "audit.key.pub");
        assert_eq!(read_public_key(&pub_path).unwrap(), a.verifying_key());
        assert_eq!(read_public_key(&path).unwrap(), a.verifying_key());
        let other = load_or_create(&dir.path().join("other.key")).unwrap();
        assert_ne!(other.to_bytes(), a.to_bytes(), "keys come from randomness");
    }

    #[test]
    fn malformed_key_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "not hex\n").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("bad.key"), "{err}");
        assert!(err.contains("malformed key file"), "{err}");
    }

    #[test]
    fn mismatched_public_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        load_or_create(&path).unwrap();
        fs::write(public_key_path(&path), format!("{}\n", "11".repeat(32))).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("audit.key.pub"), "{err}");
    }

    #[test]
    fn public_key_hex_is_checked() {
        assert!(parse_public_key_hex("zz").is_err());
        let key = SigningKey::from_bytes(&[5; 32]).verifying_key();
        let hex = to_hex(key.as_bytes());
        assert_eq!(parse_public_key_hex(&format!(" {hex}\n")).unwrap(), key);
    }
}
