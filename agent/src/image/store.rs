//! The agent's image store:
//!
//! ```text
//! <data>/images/blobs/sha256/<hex>   manifests, configs, layers (content-addressed)
//! <data>/images/refs.json            reference → top-level manifest digest
//! <data>/images/rootfs/<config hex>  unpacked root per image config (read-only by contract)
//! <data>/images/tmp/                 downloads and unpacks in progress
//! ```
//!
//! Everything below a reference is derived from blobs, so the only mutable
//! index is `refs.json` (rewritten atomically). A root is unpacked into `tmp/`
//! and renamed into place, so a root that exists is complete.

use super::archive::ImageArchive;
use super::auth::credentials_for;
use super::config::{Endpoint, RegistryConfig};
use super::distribution::{DistError, RegistryClient};
use super::manifest::{self, ConfigFile, Document, Manifest};
use super::reference::Reference;
use super::unpack;
use super::{digest_of, ImageError, ImageService, PreparedImage, PullPolicy, RegistryAuth};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Layers downloaded at once.
const PARALLEL_LAYERS: usize = 3;

/// The content-addressed image store of one agent.
pub struct ImageStore {
    dir: PathBuf,
    config: RegistryConfig,
    /// One lock per reference so concurrent pods share one pull.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes read-modify-write of refs.json.
    refs_lock: Mutex<()>,
    /// Clients by endpoint and credentials, so bearer tokens are reused.
    clients: Mutex<HashMap<String, Arc<RegistryClient>>>,
}

fn pull_err(e: DistError) -> ImageError {
    if e.is_not_found() {
        ImageError::NotFound(e.to_string())
    } else {
        ImageError::Pull(e.to_string())
    }
}

impl ImageStore {
    /// A store under `<data_dir>/images` using `config` for registries.
    pub fn new(data_dir: &Path, config: RegistryConfig) -> Result<ImageStore, ImageError> {
        let dir = data_dir.join("images");
        for sub in ["blobs/sha256", "rootfs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // Leftovers of interrupted pulls or unpacks.
        if let Ok(rd) = std::fs::read_dir(dir.join("tmp")) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        Ok(ImageStore {
            dir,
            config,
            locks: Mutex::new(HashMap::new()),
            refs_lock: Mutex::new(()),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The registry configuration in use.
    pub fn registry_config(&self) -> &RegistryConfig {
        &self.config
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        super::reference::check_digest(digest).map_err(ImageError::Invalid)?;
        Ok(self.dir.join("blobs/sha256").join(&digest[7..]))
    }

    fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        Ok(std::fs::read(self.blob_path(digest)?)?)
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        self.dir
            .join("tmp")
            .join(format!("{what}-{}", uuid::Uuid::new_v4()))
    }

    /// Store bytes as a blob (after checking they hash to `digest`).
    fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let path = self.blob_path(digest)?;
        if digest_of(bytes) != digest {
            return Err(ImageError::Pull(format!("content does not match {digest}")));
        }
        if path.exists() {
            return Ok(());
        }
        let tmp = self.tmp_path("blob");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn read_refs(&self) -> BTreeMap<String, String> {
        std::fs::read(self.dir.join("refs.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn set_ref(&self, reference: &str, digest: &str) -> Result<(), ImageError> {
        let _g = self.refs_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut refs = self.read_refs();
        if refs.get(reference).map(String::as_str) == Some(digest) {
            return Ok(());
        }
        refs.insert(reference.to_string(), digest.to_string());
        let tmp = self.tmp_path("refs");
        let bytes = serde_json::to_vec_pretty(&refs).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("refs.json"))?;
        Ok(())
    }

    /// References known locally with their manifest digests.
    pub fn list(&self) -> BTreeMap<String, String> {
        self.read_refs()
    }

    /// The top-level digest a reference resolves to locally, if its manifest is here.
    fn local_top(&self, r: &Reference) -> Option<String> {
        let d = match &r.digest {
            Some(d) => d.clone(),
            None => self.read_refs().get(&r.to_string())?.clone(),
        };
        self.has_blob(&d).then_some(d)
    }

    /// From a top-level digest (manifest or index) to this platform's manifest.
    fn platform_manifest(&self, top: &str) -> Result<Manifest, ImageError> {
        let bytes = self.read_blob(top)?;
        let (_, doc) = manifest::parse_document(None, &bytes).map_err(ImageError::Pull)?;
        match doc {
            Document::Manifest(m) => Ok(m),
            Document::Index(idx) => {
                let d = manifest::select_platform(&idx, &manifest::host_platform()).ok_or_else(
                    || {
                        ImageError::NotFound(format!(
                            "image index {top} has no manifest for this platform"
                        ))
                    },
                )?;
                let bytes = self.read_blob(&d.digest)?;
                match manifest::parse_document(None, &bytes)
                    .map_err(ImageError::Pull)?
                    .1
                {
                    Document::Manifest(m) => Ok(m),
                    Document::Index(_) => Err(ImageError::Pull(format!(
                        "nested index {} is not supported",
                        d.digest
                    ))),
                }
            }
        }
    }

    /// Build the image from local blobs: unpack its root if needed.
    async fn materialize(&self, r: &Reference, top: &str) -> Result<PreparedImage, ImageError> {
        let m = self.platform_manifest(top)?;
        let missing: Vec<&str> = std::iter::once(&m.config)
            .chain(m.layers.iter())
            .map(|d| d.digest.as_str())
            .filter(|d| !self.has_blob(d))
            .collect();
        if !missing.is_empty() {
            return Err(ImageError::NotPresent(format!(
                "{r} (blobs missing locally: {})",
                missing.join(", ")
            )));
        }
        let cfg: ConfigFile = serde_json::from_slice(&self.read_blob(&m.config.digest)?)
            .map_err(|e| ImageError::Pull(format!("image config {}: {e}", m.config.digest)))?;
        if cfg.rootfs.diff_ids.len() != m.layers.len() {
            return Err(ImageError::Pull(format!(
                "image config {} lists {} diff_ids for {} layers",
                m.config.digest,
                cfg.rootfs.diff_ids.len(),
                m.layers.len()
            )));
        }
        let rootfs = self.dir.join("rootfs").join(&m.config.digest[7..]);
        if !rootfs.exists() {
            let layers: Vec<(PathBuf, String)> = m
                .layers
                .iter()
                .zip(cfg.rootfs.diff_ids.iter())
                .map(|(l, d)| Ok((self.blob_path(&l.digest)?, d.clone())))
                .collect::<Result<_, ImageError>>()?;
            let tmp = self.tmp_path("rootfs");
            let dest = rootfs.clone();
            let started = std::time::Instant::now();
            tokio::task::spawn_blocking(move || unpack_all(&tmp, &dest, &layers))
                .await
                .map_err(|e| ImageError::Io(std::io::Error::other(e)))??;
            tracing::info!(image = %r, layers = m.layers.len(), elapsed = ?started.elapsed(), "unpacked image");
        }
        Ok(PreparedImage {
            reference: r.to_string(),
            digest: top.to_string(),
            rootfs,
            config: cfg.image_config(),
        })
    }

    fn client(
        &self,
        ep: &Endpoint,
        r: &Reference,
        auth: &[RegistryAuth],
    ) -> Result<Arc<RegistryClient>, ImageError> {
        let creds = credentials_for(&self.config, auth, &r.registry, &ep.host, ep.mirror);
        let ns = ep.mirror.then(|| r.registry.clone());
        let key = format!("{}|{ns:?}|{}", ep.base, cred_key(&creds));
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let tls = self
            .config
            .host_config(&ep.host)
            .and_then(|h| h.tls.as_ref());
        let c = Arc::new(
            RegistryClient::new(&ep.base, tls, creds, ns)
                .map_err(|e| ImageError::Pull(format!("{}: {e}", ep.base)))?,
        );
        clients.insert(key, c.clone());
        Ok(c)
    }

    /// Fetch a blob into the store unless it is there.
    async fn fetch(&self, c: &RegistryClient, repo: &str, digest: &str) -> Result<(), ImageError> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        let tmp = self.tmp_path("blob");
        let res = c.fetch_blob(repo, digest, &tmp).await;
        match res {
            Ok(_) => {
                std::fs::rename(&tmp, &path)?;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(pull_err(e))
            }
        }
    }

    /// Pull from one endpoint: manifests, config and layers into the store.
    async fn pull_from(&self, c: &RegistryClient, r: &Reference) -> Result<String, ImageError> {
        let repo = &r.repository;
        let (bytes, media_type, top) = c
            .get_manifest(repo, r.manifest_ref())
            .await
            .map_err(pull_err)?;
        let (_, doc) =
            manifest::parse_document(Some(&media_type), &bytes).map_err(ImageError::Pull)?;
        self.put_blob(&top, &bytes)?;
        let m = match doc {
            Document::Manifest(m) => m,
            Document::Index(idx) => {
                let want = manifest::host_platform();
                let d = manifest::select_platform(&idx, &want).ok_or_else(|| {
                    ImageError::NotFound(format!(
                        "{r}: no manifest for {}/{} in the image index",
                        want.os, want.architecture
                    ))
                })?;
                // Content-addressed: a platform manifest we have needs no request.
                let (b, mt) = if self.has_blob(&d.digest) {
                    (self.read_blob(&d.digest)?.into(), d.media_type.clone())
                } else {
                    let (b, mt, digest) =
                        c.get_manifest(repo, &d.digest).await.map_err(pull_err)?;
                    self.put_blob(&digest, &b)?;
                    (b, mt)
                };
                match manifest::parse_document(Some(&mt), &b)
                    .map_err(ImageError::Pull)?
                    .1
                {
                    Document::Manifest(m) => m,
                    Document::Index(_) => {
                        return Err(ImageError::Pull(format!("{r}: nested image index")))
                    }
                }
            }
        };
        if let Some(foreign) = m.layers.iter().find(|l| {
            l.urls.as_ref().is_some_and(|u| !u.is_empty()) && l.media_type.contains("foreign")
        }) {
            tracing::warn!(layer = %foreign.digest, "foreign layer: fetching from the registry anyway");
        }
        self.fetch(c, repo, &m.config.digest).await?;
        // Boxed so the stream's item type names no closure lifetimes (which the
        // `Send` check of the returned future cannot see through).
        let fetches: Vec<BoxFuture<'_, Result<(), ImageError>>> = m
            .layers
            .iter()
            .map(|l| Box::pin(self.fetch(c, repo, &l.digest)) as BoxFuture<'_, _>)
            .collect();
        futures::stream::iter(fetches)
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(top)
    }

    /// Pull `r`, trying each endpoint (mirrors first) in turn.
    async fn pull(&self, r: &Reference, auth: &[RegistryAuth]) -> Result<String, ImageError> {
        let endpoints = self.config.endpoints(r);
        let mut errors: Vec<ImageError> = Vec::new();
        for ep in &endpoints {
            let c = match self.client(ep, r, auth) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match self.pull_from(&c, r).await {
                Ok(top) => {
                    tracing::info!(image = %r, endpoint = %ep.base, digest = %top, "pulled image");
                    return Ok(top);
                }
                Err(e) => {
                    tracing::debug!(image = %r, endpoint = %ep.base, error = %e, "pull attempt failed");
                    errors.push(e);
                }
            }
        }
        // "Not found" wins when an endpoint said so and none succeeded: the image
        // is missing rather than the network being down.
        let not_found = errors.iter().any(|e| matches!(e, ImageError::NotFound(_)));
        let msg = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let msg = format!("{r}: {msg}");
        Err(if not_found {
            ImageError::NotFound(msg)
        } else if errors.is_empty() {
            ImageError::Pull(format!("{r}: no registry endpoint configured"))
        } else {
            ImageError::Pull(msg)
        })
    }

    async fn prepare_inner(
        &self,
        image: &str,
        policy: PullPolicy,
        auth: &[RegistryAuth],
    ) -> Result<PreparedImage, ImageError> {
        let r = Reference::parse(image).map_err(|e| ImageError::Invalid(e.to_string()))?;
        let key = r.to_string();
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(key.clone()).or_default().clone()
        };
        let _g = lock.lock().await;
        let local = self.local_top(&r);
        // A digest names immutable content: with it present, Always has nothing to ask.
        let use_local = match policy {
            PullPolicy::Never | PullPolicy::IfNotPresent => local.is_some(),
            PullPolicy::Always => local.is_some() && r.digest.is_some(),
        };
        if use_local {
            let top = local.expect("checked");
            match self.materialize(&r, &top).await {
                Ok(p) => return Ok(p),
                Err(ImageError::NotPresent(why)) if policy != PullPolicy::Never => {
                    tracing::info!(image = %r, %why, "local image incomplete; pulling");
                }
                Err(e) => return Err(e),
            }
        } else if policy == PullPolicy::Never {
            return Err(ImageError::NotPresent(key));
        }
        let top = self.pull(&r, auth).await?;
        if r.digest.is_none() {
            self.set_ref(&key, &top)?;
        }
        self.materialize(&r, &top).await
    }

    /// Import every image of an archive (OCI layout or docker save) into this
    /// store without a registry, as k3s agents preload images. Returns the
    /// references imported.
    pub fn import_archive(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        let a = ImageArchive::open(path).map_err(|e| ImageError::Invalid(e.to_string()))?;
        let mut names = Vec::new();
        for img in &a.images {
            for b in &img.blobs {
                let dest = self.blob_path(&b.digest)?;
                if dest.exists() {
                    continue;
                }
                let tmp = self.tmp_path("blob");
                let mut rd = a
                    .reader(b.region)
                    .map_err(|e| ImageError::Invalid(e.to_string()))?;
                let mut f = std::fs::File::create(&tmp)?;
                let mut h = HashingWriter::new(&mut f);
                std::io::copy(&mut rd, &mut h)?;
                let actual = h.digest();
                if actual != b.digest {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(ImageError::Invalid(format!(
                        "blob {} in {} hashes to {actual}",
                        b.digest,
                        path.display()
                    )));
                }
                f.sync_all()?;
                std::fs::rename(&tmp, &dest)?;
            }
            for m in &img.manifests {
                self.put_blob(&m.digest, &m.bytes)?;
            }
            for r in &img.refs {
                self.set_ref(&r.to_string(), &img.top().digest)?;
                names.push(r.to_string());
            }
        }
        Ok(names)
    }
}

/// Credentials part of a client cache key (kept in memory only).
fn cred_key(c: &Option<super::auth::Credentials>) -> String {
    use super::auth::Credentials;
    match c {
        None => String::new(),
        Some(Credentials::Basic { username, password }) => {
            digest_of(format!("{username}\0{password}").as_bytes())
        }
        Some(Credentials::Bearer(t)) => digest_of(t.as_bytes()),
    }
}

struct HashingWriter<'a, W: std::io::Write> {
    inner: &'a mut W,
    hasher: sha2::Sha256,
}

impl<'a, W: std::io::Write> HashingWriter<'a, W> {
    fn new(inner: &'a mut W) -> Self {
        use sha2::Digest;
        HashingWriter {
            inner,
            hasher: sha2::Sha256::new(),
        }
    }
    fn digest(self) -> String {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Apply layers into `tmp`, then move the finished root to `dest`.
fn unpack_all(tmp: &Path, dest: &Path, layers: &[(PathBuf, String)]) -> Result<(), ImageError> {
    std::fs::create_dir_all(tmp)?;
    let result = (|| {
        for (blob, diff_id) in layers {
            let f = std::fs::File::open(blob)?;
            unpack::apply_layer(tmp, f, Some(diff_id))
                .map_err(|e| ImageError::Pull(format!("layer {}: {e}", blob.display())))?;
        }
        std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        match std::fs::rename(tmp, dest) {
            Ok(()) => Ok(()),
            // Someone else finished the same root first.
            Err(_) if dest.exists() => {
                let _ = std::fs::remove_dir_all(tmp);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    result
}

impl ImageService for ImageStore {
    fn prepare(
        &self,
        image: &str,
        policy: PullPolicy,
        auth: &[RegistryAuth],
    ) -> BoxFuture<'_, Result<PreparedImage, ImageError>> {
        let image = image.to_string();
        let auth = auth.to_vec();
        Box::pin(async move { self.prepare_inner(&image, policy, &auth).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busybox_like_archive(dir: &Path) -> PathBuf {
        let mut lb = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        lb.append_data(&mut h, "bin/", std::io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(4);
        lb.append_data(&mut h, "bin/tool", &b"tool"[..]).unwrap();
        let layer = lb.into_inner().unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/tool"], "Env": ["A=1"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer)]},
        }))
        .unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in [
            ("c.json", &config),
            ("l/layer.tar", &layer),
            (
                "manifest.json",
                &br#"[{"Config":"c.json","RepoTags":["tool:1"],"Layers":["l/layer.tar"]}]"#
                    .to_vec(),
            ),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(d.len() as u64);
            b.append_data(&mut h, p, &d[..]).unwrap();
        }
        let p = dir.join("img.tar");
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        p
    }

    #[tokio::test]
    async fn imported_images_prepare_without_a_registry() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path(), RegistryConfig::default()).unwrap();
        let names = store
            .import_archive(&busybox_like_archive(dir.path()))
            .unwrap();
        assert_eq!(names, vec!["docker.io/library/tool:1"]);
        let p = store
            .prepare("tool:1", PullPolicy::Never, &[])
            .await
            .unwrap();
        assert_eq!(p.reference, "docker.io/library/tool:1");
        assert_eq!(p.config.entrypoint, vec!["/bin/tool"]);
        assert_eq!(p.config.env, vec!["A=1"]);
        assert_eq!(std::fs::read(p.rootfs.join("bin/tool")).unwrap(), b"tool");
        // Pinning the digest finds the same image.
        let pinned = format!("tool@{}", p.digest);
        let q = store
            .prepare(&pinned, PullPolicy::Always, &[])
            .await
            .unwrap();
        assert_eq!(q.rootfs, p.rootfs);
        let e = store
            .prepare("tool:2", PullPolicy::Never, &[])
            .await
            .unwrap_err();
        assert!(matches!(e, ImageError::NotPresent(_)), "{e}");
        assert_eq!(e.reason(), "ErrImageNeverPull");
        let e = store
            .prepare("Bad Name", PullPolicy::IfNotPresent, &[])
            .await
            .unwrap_err();
        assert!(matches!(e, ImageError::Invalid(_)));
    }
}
