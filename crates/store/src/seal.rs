//! Encryption at rest by data subject, for erasure by crypto-shredding.
//!
//! Every value Baton stores about a data subject (journal records, their
//! out-of-line payloads, snapshots, gate records, audit record contents)
//! can be sealed with AES-256-GCM (`ring`) under a key of that subject's
//! own. Subject keys live in a store of their own (a small RocksDB in
//! `keys_dir`, never part of a backup), each wrapped by a master key that
//! comes from a file or an environment variable and is never stored.
//! Destroying a subject's keys ([`Keyring::erase`]) makes everything sealed
//! under them unreadable everywhere it was copied: the live store, forks,
//! backups taken before or after, the audit log.
//!
//! A sealed value is
//!
//! ```text
//! 0xB7 | key id (16 bytes) | nonce (12 bytes) | ciphertext + tag (16 bytes)
//! ```
//!
//! bound by the AEAD's associated data to where it is stored (its column
//! family and key), so a sealed value copied to another place does not
//! open. `0xB7` never starts a value Baton writes unsealed (protobuf
//! records and metadata start with a field tag, snapshots with their
//! version, payloads with UTF-8 text, which never starts with a
//! continuation byte).
//!
//! Nonces are random (96 bits, the system's CSPRNG): under one key, well
//! below 2^32 values are sealed in practice (a subject's own records).
//!
//! The keystore holds, per subject (by SHA-256 of its id, never the id):
//! `s/<hash>` → the subject's key ids, newest last; `k/<key id>` → the
//! subject hash, and the key wrapped under the master key (AES-256-GCM,
//! associated data: the key id); `e/<hash>` → when it was erased. Erasing
//! deletes `s/` and `k/` entries in one synced batch, then flushes and
//! compacts the keystore so no table file keeps the wrapped keys.
//!
//! The keystore is kept in one of two places:
//!
//! - [`Keyring::open`]: a RocksDB of its own in a directory on the node
//!   (the default), outside the data dir and so outside its backups;
//! - [`Keyring::in_database`]: the key space `keys` of the store's own
//!   PostgreSQL database (table `baton_keys`), so that every node sharing
//!   the database opens what another sealed. Its writes are fenced by the
//!   writer lease like every other write; erasing rewrites the table
//!   (`VACUUM FULL`) so no live data file keeps a wrapped key. The
//!   database's backups and WAL archive do keep them (wrapped): see
//!   docs/privacy.md for what that means for erasure.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rocksdb::{DB, Options, WriteBatch, WriteOptions};
use sha2::{Digest, Sha256};

use crate::engine::{Engine, Op};
use crate::{Error, Result};

/// The key space of a keystore kept in the store's database.
pub const KEYS_CF: &str = "keys";

/// The first byte of a sealed value.
pub const SEALED: u8 = 0xB7;
const KEY_ID_LEN: usize = 16;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// A subject key's id, as written in every value it sealed.
pub type KeyId = [u8; KEY_ID_LEN];

/// Whether `bytes` is a sealed value.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN + TAG_LEN && bytes[0] == SEALED
}

/// The id of the key a sealed value was sealed with.
pub fn key_id_of(bytes: &[u8]) -> Option<KeyId> {
    if !is_sealed(bytes) {
        return None;
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&bytes[1..1 + KEY_ID_LEN]);
    Some(id)
}

/// The master key: 32 bytes, given as 64 hex characters.
pub struct MasterKey(LessSafeKey);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// From its text form: 64 hex characters (surrounding whitespace
    /// ignored, so a file with a trailing newline reads).
    pub fn from_hex(text: &str) -> Result<MasterKey> {
        let text = text.trim();
        let bad = || Error::Keys("the master key must be 64 hex characters (32 bytes)".into());
        if text.len() != 64 {
            return Err(bad());
        }
        let mut raw = [0u8; 32];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        let key = aes_key(&raw);
        raw.fill(0);
        Ok(MasterKey(key?))
    }
}

fn aes_key(raw: &[u8; 32]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, raw)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Keys("cannot build an AES-256-GCM key".into()))
}

/// One subject key: seals and opens that subject's values.
pub struct SealKey {
    id: KeyId,
    key: LessSafeKey,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", hex(&self.id))
    }
}

impl SealKey {
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Seal `plain`, bound to `aad` (where it is stored).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // The system CSPRNG does not fail on the platforms Baton runs on;
        // if it ever did, a zero nonce must not be used: fall back to a
        // nonce from the clock and a counter, still unique per process.
        if SystemRandom::new().fill(&mut nonce).is_err() {
            nonce = fallback_nonce();
        }
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.push(SEALED);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        // Sealing with a valid key and nonce only fails on inputs beyond
        // AES-GCM's size limit (64 GiB), far above any value Baton stores.
        if self
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .is_err()
        {
            body.clear();
        }
        out.extend_from_slice(&body);
        out
    }

    /// Open a value this key sealed, bound to `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if key_id_of(sealed) != Some(self.id) {
            return Err(Error::Keys("the value was sealed under another key".into()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1 + KEY_ID_LEN..HEADER_LEN]);
        let mut body = sealed[HEADER_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| {
                Error::Keys(
                    "a sealed value does not open: altered, or moved from where it was written"
                        .into(),
                )
            })?;
        let n = plain.len();
        body.truncate(n);
        Ok(body)
    }
}

fn fallback_nonce() -> [u8; NONCE_LEN] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut n = [0u8; NONCE_LEN];
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    n[..8].copy_from_slice(&t.to_le_bytes());
    n[8..].copy_from_slice(&(COUNTER.fetch_add(1, Ordering::Relaxed) as u32).to_le_bytes());
    n
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The keystore key of a subject: SHA-256 of its id.
pub fn subject_hash(subject: &str) -> [u8; 32] {
    Sha256::digest(subject.as_bytes()).into()
}

/// Where a keyring keeps its wrapped keys.
enum Place {
    /// A RocksDB of its own.
    Own(DB),
    /// The `keys` key space of the store's database, once a store is open
    /// on it ([`Keyring::attach`]); weak, so that closing the store closes
    /// the database (and gives up its lease) whoever still holds the ring.
    Database(Mutex<Option<Weak<dyn Engine>>>),
}

/// Subject keys, wrapped by the master key, in their own store.
pub struct Keyring {
    place: Place,
    master: MasterKey,
    /// A master key being rotated out, until the keys are wrapped again
    /// (at [`Keyring::attach`] for a keystore in the database).
    previous: Mutex<Option<MasterKey>>,
    by_id: Mutex<HashMap<KeyId, Option<Arc<SealKey>>>>,
    by_subject: Mutex<HashMap<[u8; 32], Arc<SealKey>>>,
    /// Held across a keystore read and the writes that depend on it
    /// (creating, forgetting, caching a key): two first uses of a subject
    /// create one key, and a key being forgotten is never cached again.
    keystore: Mutex<()>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.place {
            Place::Own(db) => write!(f, "Keyring({})", db.path().display()),
            Place::Database(_) => f.write_str("Keyring(the store's database)"),
        }
    }
}

fn subject_key(hash: &[u8; 32]) -> Vec<u8> {
    [b"s/".as_slice(), hash].concat()
}

fn id_key(id: &KeyId) -> Vec<u8> {
    [b"k/".as_slice(), id].concat()
}

fn erased_key(hash: &[u8; 32]) -> Vec<u8> {
    [b"e/".as_slice(), hash].concat()
}

impl Keyring {
    /// Open (or create) the keystore at `dir`. Keys wrapped under
    /// `previous` (a master key being rotated out) are wrapped again under
    /// `master`, in one synced batch, before it is used.
    pub fn open(dir: &Path, master: MasterKey, previous: Option<MasterKey>) -> Result<Keyring> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // No WAL kept beyond what recovery needs: erased keys leave no
        // archived log behind.
        opts.set_wal_ttl_seconds(0);
        opts.set_wal_size_limit_mb(0);
        let db = DB::open(&opts, dir)?;
        let ring = Keyring::with_place(Place::Own(db), master, previous);
        ring.check_and_rewrap()?;
        Ok(ring)
    }

    /// A keystore in the key space `keys` of the store's database: usable
    /// once a store on PostgreSQL is opened with it, which checks every
    /// key against the master key (and wraps again those under
    /// `previous`) before the store reads anything.
    pub fn in_database(master: MasterKey, previous: Option<MasterKey>) -> Keyring {
        Keyring::with_place(Place::Database(Mutex::new(None)), master, previous)
    }

    fn with_place(place: Place, master: MasterKey, previous: Option<MasterKey>) -> Keyring {
        Keyring {
            place,
            master,
            previous: Mutex::new(previous),
            by_id: Mutex::new(HashMap::new()),
            by_subject: Mutex::new(HashMap::new()),
            keystore: Mutex::new(()),
        }
    }

    /// Bind a keystore kept in the database to the store opened on
    /// `engine`; a keystore of its own is left as it is.
    pub(crate) fn attach(&self, engine: &Arc<dyn Engine>) -> Result<()> {
        let Place::Database(slot) = &self.place else {
            return Ok(());
        };
        if engine.backend() != "postgres" {
            return Err(Error::Config(format!(
                "subject keys kept in the database need the store on PostgreSQL, not {}: \
                 a RocksDB store keeps them in a keys directory of their own",
                engine.backend()
            )));
        }
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::downgrade(engine));
        let _held = self.keystore.lock().unwrap_or_else(PoisonError::into_inner);
        self.check_and_rewrap()
    }

    /// The database of a keystore kept there.
    fn engine(slot: &Mutex<Option<Weak<dyn Engine>>>) -> Result<Arc<dyn Engine>> {
        slot.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(Weak::upgrade)
            .ok_or_else(|| {
                Error::Keys(
                    "the keystore is in the store's database, and no store is open on it".into(),
                )
            })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match &self.place {
            Place::Own(db) => Ok(db.get(key)?),
            Place::Database(slot) => crate::blocking(|| Keyring::engine(slot)?.get(KEYS_CF, key)),
        }
    }

    /// Every wrapped key: `(k/<id>, wrapped)`.
    fn wrapped_keys(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        match &self.place {
            Place::Own(db) => {
                for item in db.prefix_iterator(b"k/") {
                    let (k, v) = item?;
                    if !k.starts_with(b"k/") {
                        break;
                    }
                    out.push((k.to_vec(), v.to_vec()));
                }
            }
            Place::Database(slot) => crate::blocking(|| {
                let engine = Keyring::engine(slot)?;
                for item in engine.walk_prefix(KEYS_CF, b"k/")? {
                    let (k, v) = item?;
                    out.push((k.into_vec(), v.into_vec()));
                }
                Ok(())
            })?,
        }
        Ok(out)
    }

    /// Apply puts (`Some`) and deletes (`None`) at once, durably.
    fn write_synced(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        match &self.place {
            Place::Own(db) => {
                let mut batch = WriteBatch::default();
                for (k, v) in writes {
                    match v {
                        Some(v) => batch.put(k, v),
                        None => batch.delete(k),
                    }
                }
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.write_opt(batch, &wo)?;
            }
            Place::Database(slot) => {
                let ops: Vec<Op> = writes
                    .into_iter()
                    .map(|(key, v)| match v {
                        Some(value) => Op::Put {
                            cf: KEYS_CF,
                            key,
                            value,
                        },
                        None => Op::Delete { cf: KEYS_CF, key },
                    })
                    .collect();
                crate::blocking(|| Keyring::engine(slot)?.write(&[&ops], true))?;
            }
        }
        Ok(())
    }

    /// Every wrapped key opens under the master key; those that open only
    /// under the previous one are wrapped again.
    fn check_and_rewrap(&self) -> Result<()> {
        let previous = self.previous.lock().unwrap_or_else(PoisonError::into_inner);
        let mut writes = Vec::new();
        for (k, v) in self.wrapped_keys()? {
            let id: KeyId = k[2..]
                .try_into()
                .map_err(|_| Error::Keys("a keystore entry has a malformed key id".into()))?;
            if unwrap_key(&self.master, &id, &v).is_ok() {
                continue;
            }
            let Some(prev) = previous.as_ref() else {
                return Err(Error::Keys(format!(
                    "subject key {} does not open under the master key (a wrong master key, or a rotation without the previous one)",
                    hex(&id)
                )));
            };
            let raw = unwrap_key(prev, &id, &v).map_err(|_| {
                Error::Keys(format!(
                    "subject key {} opens under neither the master key nor the previous one",
                    hex(&id)
                ))
            })?;
            let hash = v
                .get(..32)
                .ok_or_else(|| Error::Keys(format!("subject key {} is malformed", hex(&id))))?;
            writes.push((k.clone(), Some(wrap_key(&self.master, &id, hash, &raw)?)));
        }
        let rewrapped = writes.len();
        if rewrapped > 0 {
            self.write_synced(writes)?;
            tracing::info!(
                keys = rewrapped,
                "subject keys wrapped under the new master key"
            );
        }
        Ok(())
    }

    /// The current key of `subject`, created (durably) on first use.
    pub fn for_subject(&self, subject: &str) -> Result<Arc<SealKey>> {
        let hash = subject_hash(subject);
        if let Some(k) = self
            .by_subject
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash)
        {
            return Ok(k.clone());
        }
        let _held = self.keystore.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = self
            .by_subject
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash)
        {
            return Ok(k.clone());
        }
        let ids = self.get(&subject_key(&hash))?.unwrap_or_default();
        let key = match ids.chunks_exact(KEY_ID_LEN).last() {
            Some(last) => {
                let mut id = [0u8; KEY_ID_LEN];
                id.copy_from_slice(last);
                self.load_id(&id)?.ok_or_else(|| {
                    Error::Keys(format!("subject key {} is listed but missing", hex(&id)))
                })?
            }
            None => self.create(&hash, &ids)?,
        };
        self.by_subject
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hash, key.clone());
        Ok(key)
    }

    fn create(&self, hash: &[u8; 32], ids: &[u8]) -> Result<Arc<SealKey>> {
        let rng = SystemRandom::new();
        let mut id = [0u8; KEY_ID_LEN];
        let mut raw = [0u8; 32];
        rng.fill(&mut id)
            .and_then(|()| rng.fill(&mut raw))
            .map_err(|_| Error::Keys("the system's random source failed".into()))?;
        self.write_synced(vec![
            (id_key(&id), Some(wrap_key(&self.master, &id, hash, &raw)?)),
            (subject_key(hash), Some([ids, id.as_slice()].concat())),
            (erased_key(hash), None),
        ])?;
        let key = Arc::new(SealKey {
            id,
            key: aes_key(&raw)?,
        });
        raw.fill(0);
        self.by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Some(key.clone()));
        Ok(key)
    }

    /// The key with this id; `None` once it is erased.
    pub fn by_id(&self, id: &KeyId) -> Result<Option<Arc<SealKey>>> {
        if let Some(k) = self
            .by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return Ok(k.clone());
        }
        let _held = self.keystore.lock().unwrap_or_else(PoisonError::into_inner);
        self.load_id(id)
    }

    /// [`Self::by_id`] from the keystore, with the keystore lock held.
    fn load_id(&self, id: &KeyId) -> Result<Option<Arc<SealKey>>> {
        let key = match self.get(&id_key(id))? {
            Some(v) => {
                let mut raw = unwrap_key(&self.master, id, &v)?;
                let key = Arc::new(SealKey {
                    id: *id,
                    key: aes_key(&raw)?,
                });
                raw.fill(0);
                Some(key)
            }
            None => None,
        };
        self.by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*id, key.clone());
        Ok(key)
    }

    /// Open a sealed value, whichever subject key sealed it.
    pub fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let id = key_id_of(sealed).ok_or_else(|| Error::Keys("not a sealed value".into()))?;
        match self.by_id(&id)? {
            Some(k) => k.open(aad, sealed),
            None => Err(Error::Erased(hex(&id))),
        }
    }

    /// Destroy every key `subject` ever had: what they sealed cannot be
    /// read again. Durable when it returns; true when there was a key.
    pub fn erase(&self, subject: &str) -> Result<bool> {
        let had = self.forget(subject)?;
        self.compact()?;
        Ok(had)
    }

    /// [`Self::erase`] without the compaction: the keys are gone for
    /// Baton at once, and from the keystore's files at the next
    /// [`Self::compact`] (many erasures, one compaction).
    pub fn forget(&self, subject: &str) -> Result<bool> {
        let _held = self.keystore.lock().unwrap_or_else(PoisonError::into_inner);
        let hash = subject_hash(subject);
        let ids = self.get(&subject_key(&hash))?.unwrap_or_default();
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = ids
            .chunks_exact(KEY_ID_LEN)
            .map(|id| ([b"k/".as_slice(), id].concat(), None))
            .collect();
        writes.push((subject_key(&hash), None));
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        writes.push((erased_key(&hash), Some(at.to_le_bytes().to_vec())));
        self.write_synced(writes)?;
        {
            let mut by_id = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
            for id in ids.chunks_exact(KEY_ID_LEN) {
                let mut k = [0u8; KEY_ID_LEN];
                k.copy_from_slice(id);
                by_id.insert(k, None);
            }
        }
        self.by_subject
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&hash);
        Ok(!ids.is_empty())
    }

    /// Flush and compact the keystore: no table file keeps deleted keys
    /// (in the database: the table rewritten, its old file removed).
    pub fn compact(&self) -> Result<()> {
        match &self.place {
            Place::Own(db) => {
                db.flush()?;
                db.compact_range::<&[u8], &[u8]>(None, None);
                Ok(())
            }
            Place::Database(slot) => crate::blocking(|| Keyring::engine(slot)?.compact(KEYS_CF)),
        }
    }

    /// Whether `subject` was erased (and has no key since).
    pub fn is_erased(&self, subject: &str) -> Result<bool> {
        Ok(self.get(&erased_key(&subject_hash(subject)))?.is_some())
    }
}

/// Copy the keystore at `dir` (a RocksDB of its own, not in use) into the
/// key space `keys` of `to`, which must hold none: the wrapped keys move
/// as they are (the same master key opens them). Checked key by key
/// afterwards; returns how many entries were copied.
pub fn copy_keystore(dir: &Path, to: &dyn Engine) -> Result<u64> {
    if let Some(item) = to.walk(KEYS_CF, crate::engine::Seek::First)?.next() {
        item?;
        return Err(Error::Config(
            "the destination already holds subject keys: copy into an empty database".into(),
        ));
    }
    let db = DB::open_for_read_only(&Options::default(), dir, false)?;
    let source = || {
        db.iterator(rocksdb::IteratorMode::Start)
            .map(|item| item.map_err(Error::from))
    };
    let (keys, _) = crate::migrate::copy_entries(source(), to, KEYS_CF)?;
    let copied = to.walk(KEYS_CF, crate::engine::Seek::First)?;
    if let Some(key) = crate::migrate::first_difference(source(), copied)? {
        return Err(Error::Config(format!(
            "the copied keystore does not match its source at key {key:02x?}"
        )));
    }
    Ok(keys)
}

/// `subject hash (32) | nonce (12) | AES-256-GCM(master, key) + tag`, the
/// key id as associated data.
fn wrap_key(
    master: &MasterKey,
    id: &KeyId,
    subject_hash: &[u8],
    raw: &[u8; 32],
) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| Error::Keys("the system's random source failed".into()))?;
    let mut body = raw.to_vec();
    master
        .0
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id),
            &mut body,
        )
        .map_err(|_| Error::Keys("cannot wrap a subject key".into()))?;
    Ok([subject_hash, nonce.as_slice(), &body].concat())
}

fn unwrap_key(master: &MasterKey, id: &KeyId, wrapped: &[u8]) -> Result<[u8; 32]> {
    if wrapped.len() != 32 + NONCE_LEN + 32 + TAG_LEN {
        return Err(Error::Keys(format!("subject key {} is malformed", hex(id))));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&wrapped[32..32 + NONCE_LEN]);
    let mut body = wrapped[32 + NONCE_LEN..].to_vec();
    let plain = master
        .0
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id),
            &mut body,
        )
        .map_err(|_| {
            Error::Keys(format!(
                "subject key {} does not open under the master key",
                hex(id)
            ))
        })?;
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&plain[..32]);
    body.fill(0);
    Ok(raw)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const M1: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const M2: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn master(hex: &str) -> MasterKey {
        MasterKey::from_hex(hex).unwrap()
    }

    #[test]
    fn sealed_values_open_only_where_they_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path(), master(M1), None).unwrap();
        let k = ring.for_subject("cust-1").unwrap();
        assert_eq!(
            ring.for_subject("cust-1").unwrap().id(),
            k.id(),
            "one key per subject"
        );
        assert_ne!(ring.for_subject("cust-2").unwrap().id(), k.id());
        let sealed = k.seal(b"journal\0a", b"MARKER secret text");
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(6).any(|w| w == b"MARKER"));
        assert_eq!(
            ring.unseal(b"journal\0a", &sealed).unwrap(),
            b"MARKER secret text"
        );
        // Moved elsewhere, or altered: it does not open.
        assert!(matches!(
            ring.unseal(b"journal\0b", &sealed),
            Err(Error::Keys(_))
        ));
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(ring.unseal(b"journal\0a", &bad).is_err());
        // Keys survive a reopen; a wrong master key is refused at open.
        drop(ring);
        let ring = Keyring::open(dir.path(), master(M1), None).unwrap();
        assert_eq!(
            ring.unseal(b"journal\0a", &sealed).unwrap(),
            b"MARKER secret text"
        );
        drop(ring);
        let err = Keyring::open(dir.path(), master(M2), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not open under the master key"),
            "{err}"
        );
        assert!(MasterKey::from_hex("abc").is_err());
    }

    #[test]
    fn erasure_destroys_every_key_of_the_subject_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path(), master(M1), None).unwrap();
        let old = ring.for_subject("cust-1").unwrap();
        let other = ring.for_subject("cust-2").unwrap();
        let a = old.seal(b"x", b"one");
        let b = other.seal(b"x", b"two");
        assert!(ring.erase("cust-1").unwrap());
        assert!(ring.is_erased("cust-1").unwrap());
        assert!(matches!(ring.unseal(b"x", &a), Err(Error::Erased(_))));
        assert_eq!(ring.unseal(b"x", &b).unwrap(), b"two");
        // A new key afterwards; the old values stay unreadable, also after
        // a reopen.
        let new = ring.for_subject("cust-1").unwrap();
        assert_ne!(new.id(), old.id());
        assert!(!ring.is_erased("cust-1").unwrap());
        drop(ring);
        let ring = Keyring::open(dir.path(), master(M1), None).unwrap();
        assert!(matches!(ring.unseal(b"x", &a), Err(Error::Erased(_))));
        // Erasing again is harmless (a redo after a crash).
        assert!(ring.erase("cust-1").unwrap());
        assert!(!ring.erase("nobody").unwrap());
    }

    #[test]
    fn a_master_key_is_rotated_by_naming_the_previous_one_once() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path(), master(M1), None).unwrap();
        let sealed = ring.for_subject("cust-1").unwrap().seal(b"x", b"kept");
        drop(ring);
        let ring = Keyring::open(dir.path(), master(M2), Some(master(M1))).unwrap();
        assert_eq!(ring.unseal(b"x", &sealed).unwrap(), b"kept");
        drop(ring);
        // Rewrapped: the new master alone opens them; the old one no longer.
        let ring = Keyring::open(dir.path(), master(M2), None).unwrap();
        assert_eq!(ring.unseal(b"x", &sealed).unwrap(), b"kept");
        drop(ring);
        assert!(Keyring::open(dir.path(), master(M1), None).is_err());
    }
}
