//! Reading image archives: OCI image layouts in a tar (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) and `docker save` tarballs (`manifest.json`
//! plus layer tars), which become OCI manifests.
//!
//! The archive is indexed once (entry → offset and size) and blobs are read
//! straight from their place in the file, so a multi-gigabyte archive is never
//! held in memory. A compressed archive is first decompressed to a temp file.

use super::manifest::{
    self, Descriptor, Document, Index, Manifest, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME,
    OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use super::reference::Reference;
use super::unpack::{sniff, Compression};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Largest JSON document (manifest, config, index) read from an archive.
const MAX_JSON: u64 = 16 * 1024 * 1024;

/// Errors reading an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the file failed.
    #[error("{0}: {1}")]
    Io(String, io::Error),
    /// The archive is neither an OCI layout nor a docker-save tarball, or is broken.
    #[error("{0}")]
    Invalid(String),
}

/// Where an entry's bytes are in the (uncompressed) archive file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Byte offset of the data.
    pub offset: u64,
    /// Length.
    pub size: u64,
}

/// One blob (config or layer) to copy out of the archive.
#[derive(Debug, Clone)]
pub struct ArchiveBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Where it is.
    pub region: Region,
}

/// A manifest or index document from the archive.
#[derive(Debug, Clone)]
pub struct ArchiveManifest {
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// Media type.
    pub media_type: String,
    /// The document.
    pub bytes: Bytes,
}

/// One image in an archive.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// Normalized references the archive names it by (may be empty).
    pub refs: Vec<Reference>,
    /// Tags given without a repository (an OCI `ref.name` like `1.36`).
    pub bare_tags: Vec<String>,
    /// Config and layer blobs.
    pub blobs: Vec<ArchiveBlob>,
    /// Manifests in upload order: children before the index that lists them; the
    /// last one is the image's top-level document, which the refs point at.
    pub manifests: Vec<ArchiveManifest>,
}

impl ArchiveImage {
    /// The top-level document (what tags point at).
    pub fn top(&self) -> &ArchiveManifest {
        self.manifests
            .last()
            .expect("an archive image has a manifest")
    }
}

/// An indexed image archive.
pub struct ImageArchive {
    file: PathBuf,
    /// A decompressed copy we made and remove on drop.
    temp: Option<PathBuf>,
    entries: HashMap<String, Region>,
    /// The images inside.
    pub images: Vec<ArchiveImage>,
}

impl Drop for ImageArchive {
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            let _ = std::fs::remove_file(t);
        }
    }
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> ArchiveError {
    let what = what.to_string();
    move |e| ArchiveError::Io(what, e)
}

fn invalid(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid(msg.into())
}

/// Normalize a path inside the archive: no leading `./` or `/`.
fn norm(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// Parse a reference name from an archive, accepting short Docker forms.
fn parse_ref(s: &str) -> Option<Reference> {
    Reference::parse(s).ok()
}

impl ImageArchive {
    /// Open and index an archive (plain, gzip or zstd tar).
    pub fn open(path: &Path) -> Result<ImageArchive, ArchiveError> {
        let shown = path.display().to_string();
        let mut f = File::open(path).map_err(io_err(&shown))?;
        let mut head = [0u8; 4];
        let n = f.read(&mut head).map_err(io_err(&shown))?;
        let (file, temp) = match sniff(&head[..n]) {
            Compression::None => (path.to_path_buf(), None),
            _ => {
                f.seek(SeekFrom::Start(0)).map_err(io_err(&shown))?;
                let tmp = std::env::temp_dir()
                    .join(format!("shoal-archive-{}.tar", uuid::Uuid::new_v4()));
                let mut out = File::create(&tmp).map_err(io_err(tmp.display()))?;
                let mut r = super::unpack::decompress(f).map_err(io_err(&shown))?;
                if let Err(e) = io::copy(&mut r, &mut out) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(ArchiveError::Io(format!("decompressing {shown}"), e));
                }
                (tmp.clone(), Some(tmp))
            }
        };
        let mut a = ImageArchive {
            file,
            temp,
            entries: HashMap::new(),
            images: Vec::new(),
        };
        a.index()?;
        if a.entries.contains_key("index.json") && a.entries.contains_key("oci-layout") {
            a.images = a.read_oci()?;
        } else if a.entries.contains_key("manifest.json") {
            a.images = a.read_docker()?;
        } else {
            return Err(invalid(format!(
                "{shown} is neither an OCI image layout (oci-layout, index.json) nor a docker save tarball (manifest.json)"
            )));
        }
        if a.images.is_empty() {
            return Err(invalid(format!("{shown} contains no images")));
        }
        Ok(a)
    }

    fn index(&mut self) -> Result<(), ArchiveError> {
        let shown = self.file.display().to_string();
        let f = File::open(&self.file).map_err(io_err(&shown))?;
        let mut ar = tar::Archive::new(f);
        let mut links: Vec<(String, String)> = Vec::new();
        let not_tar = |e: io::Error| invalid(format!("{shown} is not a valid tar archive: {e}"));
        for e in ar.entries_with_seek().map_err(not_tar)? {
            let e = e.map_err(not_tar)?;
            let path = norm(&String::from_utf8_lossy(&e.path_bytes()));
            match e.header().entry_type() {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = e
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    // Symlinks are relative to their directory; hardlinks to the archive root.
                    let target = if e.header().entry_type() == tar::EntryType::Symlink {
                        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                        norm(&format!("{dir}/{target}"))
                    } else {
                        norm(&target)
                    };
                    links.push((path, target));
                }
                t if t.is_file() => {
                    self.entries.insert(
                        path,
                        Region {
                            offset: e.raw_file_position(),
                            size: e.size(),
                        },
                    );
                }
                _ => {}
            }
        }
        // Old docker save output links duplicate layers to the first copy.
        for _ in 0..8 {
            for (path, target) in &links {
                if let Some(r) = self.entries.get(target).copied() {
                    self.entries.entry(path.clone()).or_insert(r);
                }
            }
        }
        Ok(())
    }

    /// Read a region.
    pub fn read_region(&self, r: Region) -> Result<Vec<u8>, ArchiveError> {
        let mut out = Vec::new();
        self.reader(r)?
            .read_to_end(&mut out)
            .map_err(io_err(self.file.display()))?;
        Ok(out)
    }

    /// A reader over a region.
    pub fn reader(&self, r: Region) -> Result<impl Read, ArchiveError> {
        let mut f = File::open(&self.file).map_err(io_err(self.file.display()))?;
        f.seek(SeekFrom::Start(r.offset))
            .map_err(io_err(self.file.display()))?;
        Ok(f.take(r.size))
    }

    /// An async reader over a region (for uploads).
    pub async fn async_reader(
        &self,
        r: Region,
    ) -> Result<impl tokio::io::AsyncRead + Unpin + Send, ArchiveError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut f = tokio::fs::File::open(&self.file)
            .await
            .map_err(io_err(self.file.display()))?;
        f.seek(SeekFrom::Start(r.offset))
            .await
            .map_err(io_err(self.file.display()))?;
        Ok(f.take(r.size))
    }

    fn entry(&self, path: &str) -> Result<Region, ArchiveError> {
        self.entries
            .get(&norm(path))
            .copied()
            .ok_or_else(|| invalid(format!("archive has no entry {path:?}")))
    }

    fn read_json_entry(&self, path: &str) -> Result<Vec<u8>, ArchiveError> {
        let r = self.entry(path)?;
        if r.size > MAX_JSON {
            return Err(invalid(format!("{path} is too large ({} bytes)", r.size)));
        }
        self.read_region(r)
    }

    fn blob_path(digest: &str) -> Result<String, ArchiveError> {
        let (alg, hex) = digest
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad digest {digest:?}")))?;
        super::reference::check_digest(digest).map_err(invalid)?;
        Ok(format!("blobs/{alg}/{hex}"))
    }

    fn hash_region(&self, r: Region) -> Result<String, ArchiveError> {
        let mut h = Sha256::new();
        let mut rd = self.reader(r)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = rd.read(&mut buf).map_err(io_err(self.file.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// An OCI layout: every entry of index.json is an image.
    fn read_oci(&self) -> Result<Vec<ArchiveImage>, ArchiveError> {
        let idx: Index = serde_json::from_slice(&self.read_json_entry("index.json")?)
            .map_err(|e| invalid(format!("index.json: {e}")))?;
        let mut out: Vec<ArchiveImage> = Vec::new();
        for d in &idx.manifests {
            let mut img = ArchiveImage {
                refs: Vec::new(),
                bare_tags: Vec::new(),
                blobs: Vec::new(),
                manifests: Vec::new(),
            };
            let ann = d.annotations.clone().unwrap_or_default();
            if let Some(r) = ann
                .get(ANNOTATION_CONTAINERD_NAME)
                .and_then(|s| parse_ref(s))
            {
                img.refs.push(r);
            } else if let Some(name) = ann.get(ANNOTATION_REF_NAME) {
                // The OCI spec makes ref.name a tag; many tools write a full name.
                if name.contains('/') || name.contains(':') {
                    if let Some(r) = parse_ref(name) {
                        img.refs.push(r);
                    }
                } else {
                    img.bare_tags.push(name.clone());
                }
            }
            self.walk_oci(d, &mut img)?;
            // Several index.json entries for one digest (one per tag) are one image.
            if let Some(prev) = out.iter_mut().find(|p| p.top().digest == img.top().digest) {
                prev.refs.extend(img.refs);
                prev.bare_tags.extend(img.bare_tags);
            } else {
                out.push(img);
            }
        }
        Ok(out)
    }

    fn walk_oci(&self, d: &Descriptor, img: &mut ArchiveImage) -> Result<(), ArchiveError> {
        let bytes = Bytes::from(self.read_json_entry(&Self::blob_path(&d.digest)?)?);
        let actual = super::digest_of(&bytes);
        if actual != d.digest {
            return Err(invalid(format!(
                "manifest {} in the archive hashes to {actual}",
                d.digest
            )));
        }
        let (media_type, doc) =
            manifest::parse_document(Some(&d.media_type), &bytes).map_err(invalid)?;
        match doc {
            Document::Index(idx) => {
                let present: Vec<&Descriptor> = idx
                    .manifests
                    .iter()
                    .filter(|c| {
                        Self::blob_path(&c.digest).is_ok_and(|p| self.entries.contains_key(&p))
                    })
                    .collect();
                if present.len() == idx.manifests.len() {
                    for c in &idx.manifests {
                        self.walk_oci(c, img)?;
                    }
                } else {
                    // Archives saved for one platform keep the full index but only
                    // that platform's blobs; import that platform's manifest itself.
                    let host = manifest::host_platform();
                    let pick = manifest::select_platform(
                        &Index {
                            manifests: present.into_iter().cloned().collect(),
                            ..idx.clone()
                        },
                        &host,
                    )
                    .cloned()
                    .ok_or_else(|| {
                        invalid(format!(
                            "image index {} has no {}/{} manifest in the archive",
                            d.digest, host.os, host.architecture
                        ))
                    })?;
                    tracing::info!(index = %d.digest, manifest = %pick.digest,
                        "archive holds only some platforms of an index; importing this platform's manifest");
                    return self.walk_oci(&pick, img);
                }
            }
            Document::Manifest(m) => {
                for b in std::iter::once(&m.config).chain(m.layers.iter()) {
                    if img.blobs.iter().any(|x| x.digest == b.digest) {
                        continue;
                    }
                    let region = self.entry(&Self::blob_path(&b.digest)?)?;
                    img.blobs.push(ArchiveBlob {
                        digest: b.digest.clone(),
                        size: region.size,
                        region,
                    });
                }
            }
        }
        if !img.manifests.iter().any(|m| m.digest == d.digest) {
            img.manifests.push(ArchiveManifest {
                digest: d.digest.clone(),
                media_type,
                bytes,
            });
        }
        Ok(())
    }

    /// A docker save tarball: build an OCI manifest per image from manifest.json.
    fn read_docker(&self) -> Result<Vec<ArchiveImage>, ArchiveError> {
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(rename = "Config")]
            config: String,
            #[serde(rename = "RepoTags", default)]
            repo_tags: Option<Vec<String>>,
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = serde_json::from_slice(&self.read_json_entry("manifest.json")?)
            .map_err(|e| invalid(format!("manifest.json: {e}")))?;
        let mut digests: BTreeMap<String, String> = BTreeMap::new();
        let mut out = Vec::new();
        for e in entries {
            let config = Bytes::from(self.read_json_entry(&e.config)?);
            let config_digest = super::digest_of(&config);
            let cfg: manifest::ConfigFile = serde_json::from_slice(&config)
                .map_err(|err| invalid(format!("{}: {err}", e.config)))?;
            if cfg.rootfs.diff_ids.len() != e.layers.len() {
                return Err(invalid(format!(
                    "{}: {} layers but {} diff_ids",
                    e.config,
                    e.layers.len(),
                    cfg.rootfs.diff_ids.len()
                )));
            }
            let config_region = self.entry(&e.config)?;
            let mut blobs = vec![ArchiveBlob {
                digest: config_digest.clone(),
                size: config_region.size,
                region: config_region,
            }];
            let mut layers = Vec::new();
            for path in &e.layers {
                let region = self.entry(path)?;
                let digest = match digests.get(path) {
                    Some(d) => d.clone(),
                    None => {
                        let d = self.hash_region(region)?;
                        digests.insert(path.clone(), d.clone());
                        d
                    }
                };
                let mut head = [0u8; 4];
                let n = self.reader(region)?.read(&mut head).unwrap_or(0);
                let media_type = match sniff(&head[..n]) {
                    Compression::None => OCI_LAYER,
                    Compression::Gzip => OCI_LAYER_GZIP,
                    Compression::Zstd => OCI_LAYER_ZSTD,
                };
                layers.push(Descriptor {
                    media_type: media_type.into(),
                    digest: digest.clone(),
                    size: region.size,
                    platform: None,
                    annotations: None,
                    urls: None,
                });
                if !blobs.iter().any(|b| b.digest == digest) {
                    blobs.push(ArchiveBlob {
                        digest,
                        size: region.size,
                        region,
                    });
                }
            }
            let m = Manifest {
                schema_version: 2,
                media_type: Some(OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: OCI_CONFIG.into(),
                    digest: config_digest,
                    size: config.len() as u64,
                    platform: None,
                    annotations: None,
                    urls: None,
                },
                layers,
                annotations: None,
            };
            let bytes = Bytes::from(
                serde_json::to_vec(&m).map_err(|e| invalid(format!("encoding manifest: {e}")))?,
            );
            let mut refs = Vec::new();
            for t in e.repo_tags.unwrap_or_default() {
                match parse_ref(&t) {
                    Some(r) => refs.push(r),
                    None => tracing::warn!(tag = %t, "skipping unparsable RepoTag"),
                }
            }
            out.push(ArchiveImage {
                refs,
                bare_tags: Vec::new(),
                blobs,
                manifests: vec![ArchiveManifest {
                    digest: super::digest_of(&bytes),
                    media_type: OCI_MANIFEST.into(),
                    bytes,
                }],
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn layer() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "hello", b"world");
        b.into_inner().unwrap()
    }

    fn config(layer: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [super::super::digest_of(layer)]},
        }))
        .unwrap()
    }

    #[test]
    fn reads_docker_save_tarballs() {
        let l = layer();
        let c = config(&l);
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "abc.json", &c);
        add(&mut b, "0123/layer.tar", &l);
        // A duplicate layer stored as a symlink, as old docker versions write.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "4567/layer.tar", "../0123/layer.tar")
            .unwrap();
        add(
            &mut b,
            "manifest.json",
            br#"[{"Config":"abc.json","RepoTags":["busybox:latest","example.com:5000/x/y:1"],"Layers":["0123/layer.tar"]}]"#,
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        let a = ImageArchive::open(&p).unwrap();
        assert_eq!(a.images.len(), 1);
        let img = &a.images[0];
        assert_eq!(
            img.refs.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            vec!["docker.io/library/busybox:latest", "example.com:5000/x/y:1"]
        );
        assert_eq!(img.blobs.len(), 2);
        assert_eq!(img.blobs[1].digest, super::super::digest_of(&l));
        assert_eq!(a.read_region(img.blobs[1].region).unwrap(), l);
        let (_, doc) = manifest::parse_document(None, &img.top().bytes).unwrap();
        let Document::Manifest(m) = doc else {
            panic!("expected a manifest")
        };
        assert_eq!(m.layers[0].media_type, OCI_LAYER);
        assert_eq!(m.config.digest, super::super::digest_of(&c));
        assert_eq!(
            a.entry("4567/layer.tar").unwrap(),
            a.entry("0123/layer.tar").unwrap()
        );
    }

    #[test]
    fn reads_oci_layouts_with_tags() {
        let l = layer();
        let c = config(&l);
        let ld = super::super::digest_of(&l);
        let cd = super::super::digest_of(&c);
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": c.len()},
            "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": l.len()}],
        }))
        .unwrap();
        let md = super::super::digest_of(&m);
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": md, "size": m.len(),
                 "annotations": {ANNOTATION_REF_NAME: "busybox:1.36"}},
                {"mediaType": OCI_MANIFEST, "digest": md, "size": m.len(),
                 "annotations": {ANNOTATION_REF_NAME: "stable"}},
            ]
        }))
        .unwrap();
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add(&mut b, "index.json", &index);
        for (d, data) in [(&md, &m), (&cd, &c), (&ld, &l)] {
            add(&mut b, &format!("blobs/sha256/{}", &d[7..]), data);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        let a = ImageArchive::open(&p).unwrap();
        assert_eq!(a.images.len(), 1);
        let img = &a.images[0];
        assert_eq!(img.refs[0].to_string(), "docker.io/library/busybox:1.36");
        assert_eq!(img.bare_tags, vec!["stable".to_string()]);
        assert_eq!(img.top().digest, md);
        assert_eq!(img.blobs.len(), 2);
    }

    #[test]
    fn rejects_other_tarballs() {
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "README", b"hi");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        assert!(matches!(
            ImageArchive::open(&p),
            Err(ArchiveError::Invalid(_))
        ));
    }
}
