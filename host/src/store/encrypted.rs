//! Secrets encrypted at rest: a [`Store`] wrapper that seals the stored value
//! of every key under [`SECRETS_PREFIX`] with AES-256-GCM before it reaches
//! the inner store, and opens it on the way out.
//!
//! Everything the API server reads goes through the wrapper (get, list at any
//! revision, watch, transaction results and conflicts), so every reader sees
//! plaintext while the database file, including its change log (which holds
//! the values and previous values the wrapper handed down), holds only
//! ciphertext.
//!
//! Envelope: `k8s:enc:aesgcm:v1:<key id>:` + 12-byte random nonce +
//! ciphertext with its 16-byte tag; the additional authenticated data is the
//! object's key, so a sealed value moved to another key does not open.
//!
//! Keys live in a [`KeyRing`] file (see [`KeyRing::load_or_create`]); the
//! first key seals, every key opens. [`reencrypt`] rewrites every sealed
//! value under the first key, which is how rotation finishes.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::embedded::EmbeddedStore;
use super::{Event, KeyValue, ListResult, Op, Revision, Store, StoreError, TxnResult, WatchStream};

/// Store key prefix of Secrets (`ResourceInfo::prefix` of core/v1 secrets).
pub const SECRETS_PREFIX: &str = "/core/secrets/";

/// What every sealed value starts with, before the key id.
const ENVELOPE_PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";

/// Any Kubernetes-style envelope; a value starting so is never plaintext.
const ANY_ENVELOPE: &[u8] = b"k8s:enc:";

const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// The name of the key file under the PKI directory.
pub const KEY_FILE: &str = "secrets-encryption.key";

/// The `meta` counter recording which key last re-encrypted everything.
const REENCRYPTED_MARKER: &str = "secrets_reencrypted_with";

/// Errors of the key file and of sealing and opening values.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is malformed.
    #[error("{path}: line {line}: {reason}")]
    BadKeyFile {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A value names a key id the ring does not hold.
    #[error(
        "{key}: encrypted with key id `{id}`, which is not in the key file (put that key back)"
    )]
    UnknownKey {
        /// The object's store key.
        key: String,
        /// The key id in its envelope.
        id: String,
    },
    /// A value does not open: tampered, truncated, wrong key or wrong object key.
    #[error("{key}: stored value does not decrypt with key id `{id}` (corrupted or tampered)")]
    Corrupt {
        /// The object's store key.
        key: String,
        /// The key id in its envelope.
        id: String,
    },
    /// A value carries an envelope this server does not understand.
    #[error("{key}: stored value has an unknown encryption envelope")]
    UnknownEnvelope {
        /// The object's store key.
        key: String,
    },
    /// A key-ring change that would lose data or makes no sense.
    #[error("{0}")]
    Refused(String),
}

impl From<EncryptionError> for StoreError {
    fn from(e: EncryptionError) -> StoreError {
        StoreError::Backend(format!("secrets encryption: {e}"))
    }
}

/// One AES-256 key with its id.
#[derive(Clone)]
struct NamedKey {
    id: String,
    cipher: Aes256Gcm,
    material: [u8; KEY_LEN],
}

/// The encryption keys: the first seals, all open.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<NamedKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("KeyRing").field("ids", &self.ids()).finish()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EncryptionError + '_ {
    move |source| EncryptionError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl KeyRing {
    /// A ring holding one fresh random key named `id`.
    pub fn generate(id: &str) -> KeyRing {
        let mut ring = KeyRing { keys: Vec::new() };
        ring.push_front_new(id);
        ring
    }

    fn push_front_new(&mut self, id: &str) {
        let mut material = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut material);
        self.keys.insert(0, named(id.to_string(), material));
    }

    /// Key ids, the sealing one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// The id of the key that seals.
    pub fn primary(&self) -> &str {
        &self.keys[0].id
    }

    /// Parses the key file format: one `<id> <base64 of 32 bytes>` per line,
    /// the sealing key first; blank lines and `#` comments are skipped.
    pub fn parse(text: &str, path: &Path) -> Result<KeyRing, EncryptionError> {
        let bad = |line: usize, reason: String| EncryptionError::BadKeyFile {
            path: path.display().to_string(),
            line,
            reason,
        };
        let mut keys: Vec<NamedKey> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(b64), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(n + 1, "expected `<key id> <base64 key>`".into()));
            };
            if !valid_id(id) {
                return Err(bad(
                    n + 1,
                    format!("key id `{id}` must be 1-64 of [A-Za-z0-9._-]"),
                ));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(bad(n + 1, format!("key id `{id}` appears twice")));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| bad(n + 1, format!("key is not base64: {e}")))?;
            let material: [u8; KEY_LEN] = raw.try_into().map_err(|raw: Vec<u8>| {
                bad(
                    n + 1,
                    format!("key is {} bytes; AES-256 needs {KEY_LEN}", raw.len()),
                )
            })?;
            keys.push(named(id.to_string(), material));
        }
        if keys.is_empty() {
            return Err(bad(0, "no keys".into()));
        }
        Ok(KeyRing { keys })
    }

    /// The key file's text.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# Shoal Secrets encryption keys: `<id> <base64 AES-256 key>`.\n\
             # The first key encrypts; every key decrypts. Keep this file secret.\n",
        );
        for k in &self.keys {
            s.push_str(&k.id);
            s.push(' ');
            s.push_str(&base64::engine::general_purpose::STANDARD.encode(k.material));
            s.push('\n');
        }
        s
    }

    /// `<pki_dir>/secrets-encryption.key`.
    pub fn path(pki_dir: &Path) -> PathBuf {
        pki_dir.join(KEY_FILE)
    }

    /// Reads the key file, or creates it (mode 0600) with one new key `key1`.
    pub fn load_or_create(pki_dir: &Path) -> Result<KeyRing, EncryptionError> {
        let path = Self::path(pki_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(pki_dir).map_err(io_err(pki_dir))?;
                let ring = Self::generate("key1");
                ring.save(&path)?;
                Ok(ring)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Reads an existing key file.
    pub fn load(path: &Path) -> Result<KeyRing, EncryptionError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Self::parse(&text, path)
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), EncryptionError> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("key.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(self.render().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }

    /// Adds a new random sealing key in front and returns its id
    /// (`key<N+1>`, N the highest numbered id so far).
    pub fn rotate(&mut self) -> String {
        let next = self
            .keys
            .iter()
            .filter_map(|k| k.id.strip_prefix("key")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let mut id = format!("key{next}");
        while self.keys.iter().any(|k| k.id == id) {
            id.push('x');
        }
        self.push_front_new(&id);
        id
    }

    /// Removes a key that no longer seals anything; the sealing key cannot go.
    pub fn remove(&mut self, id: &str) -> Result<(), EncryptionError> {
        if self.primary() == id {
            return Err(EncryptionError::Refused(format!(
                "`{id}` is the key that encrypts; rotate to a new key first"
            )));
        }
        let before = self.keys.len();
        self.keys.retain(|k| k.id != id);
        if self.keys.len() == before {
            return Err(EncryptionError::Refused(format!(
                "no key `{id}` in the key file (keys: {})",
                self.ids().join(", ")
            )));
        }
        Ok(())
    }

    /// A fingerprint of the sealing key (id and material) for the store's
    /// "re-encrypted with" marker; never reveals the key.
    fn primary_fingerprint(&self) -> u64 {
        let k = &self.keys[0];
        let mut h = Sha256::new();
        h.update(b"shoal secrets key fingerprint\0");
        h.update(k.id.as_bytes());
        h.update([0]);
        h.update(k.material);
        u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
    }

    /// Seals `plaintext` stored at `key` with the sealing key.
    pub fn seal(&self, key: &str, plaintext: &[u8]) -> Vec<u8> {
        let k = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = k
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: key.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out =
            Vec::with_capacity(ENVELOPE_PREFIX.len() + k.id.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(ENVELOPE_PREFIX);
        out.extend_from_slice(k.id.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The key id a stored value was sealed with; `None` for plaintext
    /// (values written before encryption was turned on).
    pub fn sealed_with<'a>(
        &self,
        key: &str,
        stored: &'a [u8],
    ) -> Result<Option<&'a str>, EncryptionError> {
        if !stored.starts_with(ANY_ENVELOPE) {
            return Ok(None);
        }
        let unknown = || EncryptionError::UnknownEnvelope { key: key.into() };
        let rest = stored.strip_prefix(ENVELOPE_PREFIX).ok_or_else(unknown)?;
        let colon = rest
            .iter()
            .take(65)
            .position(|&b| b == b':')
            .ok_or_else(unknown)?;
        std::str::from_utf8(&rest[..colon])
            .map(Some)
            .map_err(|_| unknown())
    }

    /// Opens a value stored at `key`; plaintext passes through unchanged.
    pub fn open(&self, key: &str, stored: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let Some(id) = self.sealed_with(key, stored)? else {
            return Ok(stored.to_vec());
        };
        let k =
            self.keys
                .iter()
                .find(|k| k.id == id)
                .ok_or_else(|| EncryptionError::UnknownKey {
                    key: key.into(),
                    id: id.into(),
                })?;
        let corrupt = || EncryptionError::Corrupt {
            key: key.into(),
            id: id.into(),
        };
        let body = &stored[ENVELOPE_PREFIX.len() + id.len() + 1..];
        if body.len() < NONCE_LEN + 16 {
            return Err(corrupt());
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        k.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| corrupt())
    }
}

fn named(id: String, material: [u8; KEY_LEN]) -> NamedKey {
    NamedKey {
        cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&material)),
        id,
        material,
    }
}

/// Whether values at `key` are encrypted.
fn sealed_key(key: &str) -> bool {
    key.starts_with(SECRETS_PREFIX)
}

/// Re-encrypts, in the database file itself, every Secret value (objects and
/// change log) not sealed with the ring's first key: plaintext from before
/// encryption, or values sealed with an older key. Skipped when the store
/// records that it was already done with this key. Returns how many values
/// were rewritten. Call before the store serves requests.
pub fn reencrypt(store: &EmbeddedStore, ring: &KeyRing) -> Result<usize, StoreError> {
    let primary = ring.primary().to_string();
    store.rewrite_values(
        SECRETS_PREFIX,
        (REENCRYPTED_MARKER, ring.primary_fingerprint()),
        &|key, stored| {
            if ring.sealed_with(key, stored)? == Some(primary.as_str()) {
                return Ok(None);
            }
            let plain = ring.open(key, stored)?;
            Ok(Some(ring.seal(key, &plain)))
        },
    )
}

/// The server's store: loads (or creates) `<pki_dir>/secrets-encryption.key`,
/// re-encrypts what is not under its first key, and wraps `store`.
pub fn seal_secrets(store: EmbeddedStore, pki_dir: &Path) -> Result<EncryptedStore, StoreError> {
    let ring = KeyRing::load_or_create(pki_dir)?;
    let n = reencrypt(&store, &ring)?;
    if n > 0 {
        tracing::info!(
            key = ring.primary(),
            values = n,
            "re-encrypted stored Secrets with the first key of the key file"
        );
    }
    Ok(EncryptedStore::new(Arc::new(store), ring))
}

/// The [`Store`] wrapper that seals Secrets on the way in and opens them on
/// the way out.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    ring: Arc<KeyRing>,
}

impl EncryptedStore {
    /// Wraps `inner`, sealing with `ring`'s first key.
    pub fn new(inner: Arc<dyn Store>, ring: KeyRing) -> EncryptedStore {
        EncryptedStore {
            inner,
            ring: Arc::new(ring),
        }
    }
}

fn open_bytes(ring: &KeyRing, key: &str, value: Bytes) -> Result<Bytes, StoreError> {
    if !sealed_key(key) {
        return Ok(value);
    }
    Ok(Bytes::from(ring.open(key, &value)?))
}

fn open_kv(ring: &KeyRing, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
    kv.value = open_bytes(ring, &kv.key, kv.value)?;
    Ok(kv)
}

fn open_event(ring: &KeyRing, mut e: Event) -> Result<Event, StoreError> {
    if sealed_key(&e.key) {
        e.value = e.value.map(|v| open_bytes(ring, &e.key, v)).transpose()?;
        e.prev = e.prev.map(|v| open_bytes(ring, &e.key, v)).transpose()?;
    }
    Ok(e)
}

fn open_error(ring: &KeyRing, e: StoreError) -> StoreError {
    match e {
        StoreError::Conflict {
            key,
            current: Some(kv),
        } => match open_kv(ring, *kv) {
            Ok(kv) => StoreError::Conflict {
                key,
                current: Some(Box::new(kv)),
            },
            Err(e) => e,
        },
        e => e,
    }
}

impl Store for EncryptedStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner
            .get(key)?
            .map(|kv| open_kv(&self.ring, kv))
            .transpose()
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: Option<Revision>,
    ) -> Result<ListResult, StoreError> {
        let mut res = self.inner.list(prefix, start_after, limit, at)?;
        res.items = std::mem::take(&mut res.items)
            .into_iter()
            .map(|kv| open_kv(&self.ring, kv))
            .collect::<Result<_, _>>()?;
        Ok(res)
    }

    fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        self.inner.count(prefix)
    }

    fn txn(&self, ops: Vec<Op>) -> BoxFuture<'static, Result<TxnResult, StoreError>> {
        let ops = ops
            .into_iter()
            .map(|op| match op {
                Op::Put {
                    key,
                    value,
                    precondition,
                } if sealed_key(&key) => Op::Put {
                    value: Bytes::from(self.ring.seal(&key, &value)),
                    key,
                    precondition,
                },
                op => op,
            })
            .collect();
        let ring = self.ring.clone();
        let fut = self.inner.txn(ops);
        Box::pin(async move {
            let mut res = fut.await.map_err(|e| open_error(&ring, e))?;
            res.prev = std::mem::take(&mut res.prev)
                .into_iter()
                .map(|kv| kv.map(|kv| open_kv(&ring, kv)).transpose())
                .collect::<Result<_, _>>()?;
            Ok(res)
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let ring = self.ring.clone();
        let stream = self.inner.watch(prefix, after)?;
        Ok(stream
            .map(move |batch| {
                batch.and_then(|events| {
                    events
                        .into_iter()
                        .map(|e| open_event(&ring, e))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .boxed())
    }

    fn current_revision(&self) -> Revision {
        self.inner.current_revision()
    }

    fn oldest_revision(&self) -> Revision {
        self.inner.oldest_revision()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedOptions;
    use crate::store::{EventKind, Precondition};

    const KEY: &str = "/core/secrets/default/db";
    const SECRET: &[u8] = br#"{"data":{"password":"aHVudGVyMg=="},"kind":"Secret"}"#;

    fn put(key: &str, value: &[u8], precondition: Precondition) -> Op {
        Op::Put {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
            precondition,
        }
    }

    #[test]
    fn seal_and_open_round_trip_with_fresh_nonces() {
        let ring = KeyRing::generate("key1");
        let a = ring.seal(KEY, SECRET);
        let b = ring.seal(KEY, SECRET);
        assert!(a.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert_ne!(a, b, "every write gets a fresh nonce");
        assert_eq!(ring.open(KEY, &a).unwrap(), SECRET);
        assert_eq!(ring.open(KEY, &b).unwrap(), SECRET);
        assert_eq!(ring.sealed_with(KEY, &a).unwrap(), Some("key1"));
        // Values from before encryption pass through.
        assert_eq!(ring.open(KEY, SECRET).unwrap(), SECRET);
        assert_eq!(ring.sealed_with(KEY, SECRET).unwrap(), None);
    }

    #[test]
    fn tampering_fails_to_open() {
        let ring = KeyRing::generate("key1");
        let sealed = ring.seal(KEY, SECRET);
        for at in [sealed.len() - 1, sealed.len() - 20, 23] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(
                matches!(ring.open(KEY, &bad), Err(EncryptionError::Corrupt { .. })),
                "flipped byte {at}"
            );
        }
        assert!(matches!(
            ring.open(KEY, &sealed[..sealed.len() - 5]),
            Err(EncryptionError::Corrupt { .. })
        ));
        assert!(matches!(
            ring.open(KEY, b"k8s:enc:aesgcm:v1:key1:short"),
            Err(EncryptionError::Corrupt { .. })
        ));
        // The key is authenticated: a value copied to another Secret does not open.
        assert!(matches!(
            ring.open("/core/secrets/default/other", &sealed),
            Err(EncryptionError::Corrupt { .. })
        ));
        assert!(matches!(
            ring.open(KEY, b"k8s:enc:kms:v2:x:abc"),
            Err(EncryptionError::UnknownEnvelope { .. })
        ));
    }

    #[test]
    fn wrong_or_unknown_key_id_fails() {
        let one = KeyRing::generate("key1");
        let other = KeyRing::generate("key1");
        let sealed = one.seal(KEY, SECRET);
        // Same id, different material: does not open.
        assert!(matches!(
            other.open(KEY, &sealed),
            Err(EncryptionError::Corrupt { .. })
        ));
        // An id the ring does not hold names the missing key.
        let two = KeyRing::generate("key2");
        let err = two.open(KEY, &sealed).unwrap_err();
        assert!(matches!(&err, EncryptionError::UnknownKey { id, .. } if id == "key1"));
        assert!(err.to_string().contains("key id `key1`"), "{err}");
    }

    #[test]
    fn key_file_parses_renders_rotates_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::load_or_create(dir.path()).unwrap();
        let path = KeyRing::path(dir.path());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ring.ids(), ["key1"]);
        let sealed = ring.seal(KEY, SECRET);
        // The same file gives the same key.
        let again = KeyRing::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open(KEY, &sealed).unwrap(), SECRET);

        assert_eq!(ring.rotate(), "key2");
        assert_eq!(ring.ids(), ["key2", "key1"]);
        ring.save(&path).unwrap();
        let ring = KeyRing::load(&path).unwrap();
        assert_eq!(ring.primary(), "key2");
        assert_eq!(
            ring.open(KEY, &sealed).unwrap(),
            SECRET,
            "old keys still open"
        );
        assert_eq!(
            ring.sealed_with(KEY, &ring.seal(KEY, b"x")).unwrap(),
            Some("key2")
        );

        let mut r = ring.clone();
        assert!(matches!(r.remove("key2"), Err(EncryptionError::Refused(_))));
        assert!(matches!(r.remove("nope"), Err(EncryptionError::Refused(_))));
        r.remove("key1").unwrap();
        assert_eq!(r.ids(), ["key2"]);

        for (bad, says) in [
            ("", "no keys"),
            ("key1\n", "expected"),
            ("key:1 AAAA\n", "key id"),
            ("key1 !!!\n", "not base64"),
            ("key1 AAAA\n", "AES-256 needs 32"),
        ] {
            let err = KeyRing::parse(bad, &path).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        let twice = format!("{}{}", ring.render(), ring.render().lines().last().unwrap());
        assert!(KeyRing::parse(&twice, &path)
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        assert!(!format!("{ring:?}").contains(&ring.render().lines().nth(2).unwrap()[5..]));
    }

    fn open_store(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(&dir.join("db.redb"), EmbeddedOptions::default(), None).unwrap()
    }

    /// Every byte of the database file, to look for plaintext in.
    fn file_contains(dir: &Path, needle: &[u8]) -> bool {
        let raw = std::fs::read(dir.join("db.redb")).unwrap();
        raw.windows(needle.len()).any(|w| w == needle)
    }

    #[tokio::test]
    async fn wrapper_seals_secrets_only_and_every_read_path_opens_them() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(open_store(dir.path()));
        let ring = KeyRing::generate("key1");
        let store = EncryptedStore::new(inner.clone(), ring.clone());
        let mut watch = store.watch("/", 0).unwrap();

        let cm = "/core/configmaps/default/c";
        let r1 = store
            .txn(vec![
                put(KEY, SECRET, Precondition::Absent),
                put(cm, b"{}", Precondition::None),
            ])
            .await
            .unwrap();
        let updated = br#"{"data":{"password":"c3dvcmRmaXNo"},"kind":"Secret"}"#;
        let r2 = store
            .txn(vec![put(
                KEY,
                updated,
                Precondition::ModRevision(r1.revision),
            )])
            .await
            .unwrap();
        assert_eq!(r2.prev[0].as_ref().unwrap().value.as_ref(), SECRET);

        // Stored sealed (Secrets only), read back plain.
        let raw = inner.get(KEY).unwrap().unwrap();
        assert!(raw.value.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert_eq!(inner.get(cm).unwrap().unwrap().value.as_ref(), b"{}");
        assert_eq!(store.get(KEY).unwrap().unwrap().value.as_ref(), updated);
        let now = store.list("/core/secrets/", None, 0, None).unwrap();
        assert_eq!(now.items[0].value.as_ref(), updated);
        let then = store.list("/core/", None, 0, Some(r1.revision)).unwrap();
        assert_eq!(then.items.len(), 2);
        assert_eq!(then.items[1].value.as_ref(), SECRET);

        // A stale write's conflict carries the current value, opened.
        match store
            .txn(vec![put(
                KEY,
                b"{}",
                Precondition::ModRevision(r1.revision),
            )])
            .await
        {
            Err(StoreError::Conflict { current, .. }) => {
                assert_eq!(current.unwrap().value.as_ref(), updated)
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        let deleted = store
            .txn(vec![Op::Delete {
                key: KEY.into(),
                precondition: Precondition::Present,
            }])
            .await
            .unwrap();

        // Live watch and a watch replayed from the log both see plaintext.
        let mut live = Vec::new();
        while live.len() < 4 {
            live.extend(watch.next().await.unwrap().unwrap());
        }
        let replayed: Vec<Event> = {
            let mut w = store.watch("/core/secrets/", 0).unwrap();
            let mut evs = Vec::new();
            while evs.len() < 3 {
                evs.extend(w.next().await.unwrap().unwrap());
            }
            evs
        };
        for evs in [&live[..], &replayed[..]] {
            let secret: Vec<&Event> = evs.iter().filter(|e| e.key == KEY).collect();
            assert_eq!(secret[0].value.as_deref(), Some(SECRET));
            assert_eq!(secret[1].value.as_deref(), Some(&updated[..]));
            assert_eq!(secret[1].prev.as_deref(), Some(SECRET));
            assert_eq!(secret[2].kind, EventKind::Delete);
            assert_eq!(secret[2].revision, deleted.revision);
            assert_eq!(secret[2].prev.as_deref(), Some(&updated[..]));
        }

        drop((watch, store));
        drop(inner);
        assert!(!file_contains(dir.path(), b"aHVudGVyMg=="));
        assert!(!file_contains(dir.path(), b"c3dvcmRmaXNo"));
        assert!(file_contains(dir.path(), b"k8s:enc:aesgcm:v1:key1:"));
    }

    #[tokio::test]
    async fn reencrypt_moves_plaintext_and_old_keys_to_the_first_key() {
        let dir = tempfile::tempdir().unwrap();
        let old_plain = br#"{"data":{"token":"cGxhaW50ZXh0LWJlZm9yZQ=="}}"#;
        let first = br#"{"data":{"token":"Zmlyc3Qta2V5"}}"#;
        let second = br#"{"data":{"token":"c2Vjb25kLWtleQ=="}}"#;
        let mut ring = KeyRing::generate("key1");
        {
            // A store from before encryption: plaintext objects and log.
            let inner: Arc<dyn Store> = Arc::new(open_store(dir.path()));
            inner
                .txn(vec![put(KEY, old_plain, Precondition::None)])
                .await
                .unwrap();
            // Then encryption with key1 for another Secret and an update.
            let store = EncryptedStore::new(inner, ring.clone());
            store
                .txn(vec![put(
                    "/core/secrets/default/b",
                    first,
                    Precondition::None,
                )])
                .await
                .unwrap();
            store
                .txn(vec![put(
                    "/core/secrets/default/b",
                    second,
                    Precondition::None,
                )])
                .await
                .unwrap();
        }
        assert!(file_contains(dir.path(), b"cGxhaW50ZXh0LWJlZm9yZQ=="));

        // Rotate, re-encrypt: nothing is left under key1 or in plaintext.
        ring.rotate();
        let inner = open_store(dir.path());
        // Two objects; in the log a's put and b's two puts (an update's
        // previous value is a reference to the earlier put, not a copy).
        assert_eq!(reencrypt(&inner, &ring).unwrap(), 5);
        assert_eq!(reencrypt(&inner, &ring).unwrap(), 0, "done once per key");
        let inner: Arc<dyn Store> = Arc::new(inner);
        let mut only_new = ring.clone();
        only_new.remove("key1").unwrap();
        let store = EncryptedStore::new(inner.clone(), only_new);
        assert_eq!(store.get(KEY).unwrap().unwrap().value.as_ref(), old_plain);
        let b = store.get("/core/secrets/default/b").unwrap().unwrap();
        assert_eq!(b.value.as_ref(), second);
        let mut w = store.watch("/core/secrets/", 0).unwrap();
        let mut evs = Vec::new();
        while evs.len() < 3 {
            evs.extend(w.next().await.unwrap().unwrap());
        }
        assert_eq!(evs[1].value.as_deref(), Some(&first[..]));
        assert_eq!(evs[2].prev.as_deref(), Some(&first[..]));
        for kv in inner.list("/core/secrets/", None, 0, None).unwrap().items {
            assert!(kv.value.starts_with(b"k8s:enc:aesgcm:v1:key2:"));
        }
    }

    #[test]
    fn prefix_matches_the_secrets_resource() {
        let info = crate::api::resources::lookup("", "v1", "secrets").unwrap();
        assert_eq!(info.prefix(None), SECRETS_PREFIX);
    }
}
