//! On-disk cache of compiled components, so a restart does not recompile.
//!
//! Layout: `<root>/<engine>/<digest>.cwasm`, where `<engine>` condenses
//! `Engine::precompile_compatibility_hash` (wasmtime version, compiler flags,
//! target) and `<digest>` is the sha256 of the component's bytes. An artifact
//! is therefore only ever loaded into an engine that can run it, and a
//! wasmtime upgrade starts a fresh directory instead of tripping over old files.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use super::PluginError;

/// Compiled artifacts for one engine configuration.
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    temp_seq: AtomicU64,
}

impl ArtifactCache {
    /// Opens (creating if needed) the cache for `engine` under `root`.
    pub(crate) fn open(root: &Path, engine: &Engine) -> Result<ArtifactCache, PluginError> {
        let dir = root.join(engine_key(engine));
        let io = |source| PluginError::Io {
            path: dir.display().to_string(),
            source,
        };
        // Only this process writes here; 0700 keeps other users out.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        // Loading an artifact runs its code, so refuse a directory that someone
        // else could write into (for example a pre-existing shared one).
        for d in [root, dir.as_path()] {
            let meta = fs::metadata(d).map_err(io)?;
            if meta.mode() & 0o022 != 0 {
                return Err(PluginError::Io {
                    path: d.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "cache directory is writable by group or others",
                    ),
                });
            }
        }
        Ok(ArtifactCache {
            dir,
            temp_seq: AtomicU64::new(0),
        })
    }

    fn path(&self, digest_hex: &str) -> PathBuf {
        self.dir.join(format!("{digest_hex}.cwasm"))
    }

    /// The cached compilation of `digest_hex`, if there is a usable one.
    pub(crate) fn load(&self, engine: &Engine, digest_hex: &str) -> Option<Component> {
        let path = self.path(digest_hex);
        if !path.is_file() {
            return None;
        }
        match deserialize(engine, &path) {
            Ok(component) => Some(component),
            Err(e) => {
                // Not fatal: the caller compiles again and overwrites the file.
                tracing::warn!(path = %path.display(), "ignoring unusable compiled plugin: {e:#}");
                None
            }
        }
    }

    /// Writes `component`'s compiled form for `digest_hex`, atomically.
    pub(crate) fn store(&self, component: &Component, digest_hex: &str) -> Result<(), PluginError> {
        let path = self.path(digest_hex);
        let bytes = component.serialize().map_err(|e| PluginError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(format!("{e:#}")),
        })?;
        // Write a private temporary file, fsync it, then rename: a reader sees
        // either no file or the whole file, never a torn one.
        let temp = self.dir.join(format!(
            ".{digest_hex}.{}.{}.tmp",
            std::process::id(),
            self.temp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| PluginError::Io { path: p, source }
        };
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&temp, &path)?;
            // Make the rename itself durable.
            File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.map_err(io(&path))
    }
}

/// Maps a compiled artifact that this process wrote earlier.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize_file` trusts the file to be wasmtime's own output,
    // because it maps and runs the machine code inside. That holds here: the
    // file was produced by `Component::serialize` in `ArtifactCache::store`,
    // by an engine with the same compatibility hash (it is part of the path),
    // in a directory that `open` created 0700 and refuses if group- or
    // world-writable, so only the server writes it; and it was written to a
    // temporary name, fsynced and renamed, so it is never seen half-written.
    // The file is mapped, so it must also not change while in use: `store`
    // never writes into an existing file, it renames a new one over the name,
    // which leaves the mapped inode untouched.
    // wasmtime still checks the header and engine compatibility and fails
    // cleanly on a mismatch, which `load` treats as a cache miss.
    unsafe { Component::deserialize_file(engine, path) }
}

/// A short, stable name for the engine's compatibility hash.
fn engine_key(engine: &Engine) -> String {
    // `Hash` only offers a `Hasher`; feeding sha256 through one gives a value
    // that is stable across processes, unlike `DefaultHasher`'s.
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0 // never used: the full digest is read below
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    format!("engine-{}", hex::encode(&digest[..8]))
}
