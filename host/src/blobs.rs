//! A content-addressed blob store for plugin modules: `<dir>/sha256/<hex>`.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors from the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The digest is not `sha256:<64 hex>`.
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex characters>")]
    BadDigest(String),
    /// The content does not hash to the digest it was uploaded under.
    #[error("content hashes to {actual}, not {expected}")]
    Mismatch { expected: String, actual: String },
    /// No blob with that digest.
    #[error("blob {0} not found")]
    NotFound(String),
    /// Filesystem failure.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// The digest string of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex_part(digest: &str) -> Result<&str, BlobError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| BlobError::BadDigest(digest.into()))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(BlobError::BadDigest(digest.into()));
    }
    Ok(hex)
}

/// Check a digest string's form.
pub fn check_digest(digest: &str) -> Result<(), BlobError> {
    hex_part(digest).map(|_| ())
}

/// Blobs on disk, keyed by sha256 digest.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// A store rooted at `dir` (created on first write).
    pub fn new(dir: &Path) -> BlobStore {
        BlobStore {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        Ok(self.dir.join("sha256").join(hex_part(digest)?))
    }

    /// Store bytes under `digest` after checking they hash to it. Idempotent.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.path(digest)?;
        let actual = digest_of(bytes);
        if actual != digest {
            return Err(BlobError::Mismatch {
                expected: digest.into(),
                actual,
            });
        }
        if path.exists() {
            return Ok(());
        }
        let parent = path.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Read a blob.
    pub fn get(&self, digest: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path(digest)?;
        match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(digest.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a blob exists.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.exists())
    }

    /// A directory for uploads in progress, on the blobs' filesystem so that
    /// finishing one is a rename (used by the built-in registry).
    pub fn staging_dir(&self) -> PathBuf {
        self.dir.join("uploads")
    }

    /// Move a finished file into the store after checking, by streaming it
    /// through the hash, that it hashes to `digest`. The file is consumed.
    pub fn put_file(&self, digest: &str, file: &Path) -> Result<(), BlobError> {
        let path = self.path(digest)?;
        let mut hasher = Sha256::new();
        let mut f = std::fs::File::open(file)?;
        std::io::copy(&mut f, &mut hasher)?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(BlobError::Mismatch {
                expected: digest.into(),
                actual,
            });
        }
        if path.exists() {
            std::fs::remove_file(file)?;
            return Ok(());
        }
        f.sync_all()?;
        std::fs::create_dir_all(path.parent().expect("blob paths have a parent"))?;
        std::fs::rename(file, &path)?;
        Ok(())
    }

    /// Open a blob for streaming reads; returns the file and its length.
    pub fn open(&self, digest: &str) -> Result<(std::fs::File, u64), BlobError> {
        let path = self.path(digest)?;
        match std::fs::File::open(&path) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok((f, len))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(digest.into()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_checks_digest_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::new(dir.path());
        let d = digest_of(b"hello");
        s.put(&d, b"hello").unwrap();
        assert_eq!(s.get(&d).unwrap(), b"hello");
        assert!(matches!(
            s.put(&d, b"other"),
            Err(BlobError::Mismatch { .. })
        ));
        assert!(matches!(s.get("sha256:zz"), Err(BlobError::BadDigest(_))));
        assert!(matches!(
            s.get(&digest_of(b"x")),
            Err(BlobError::NotFound(_))
        ));
    }

    #[test]
    fn put_file_moves_verified_uploads_in() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::new(dir.path());
        std::fs::create_dir_all(s.staging_dir()).unwrap();
        let up = s.staging_dir().join("u1");
        std::fs::write(&up, b"layer").unwrap();
        let d = digest_of(b"layer");
        assert!(matches!(
            s.put_file(&digest_of(b"other"), &up),
            Err(BlobError::Mismatch { .. })
        ));
        s.put_file(&d, &up).unwrap();
        assert!(!up.exists());
        let (_, len) = s.open(&d).unwrap();
        assert_eq!(len, 5);
        assert!(matches!(
            s.open(&digest_of(b"x")),
            Err(BlobError::NotFound(_))
        ));
    }
}
