//! Applying layer tarballs to an image root: OCI whiteouts (`.wh.<name>` and
//! the opaque `.wh..wh..opq`), modes, ownership, symlinks and hardlinks, and
//! refusing anything that would land outside the root.
//!
//! Paths are resolved inside the root the way a chroot would: symlinks met on
//! the way (absolute or relative) are followed relative to the root and can
//! never climb above it, so a layer cannot write through a link to the host.

use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Whiteout prefix: `.wh.<name>` deletes `<name>` from lower layers.
const WHITEOUT: &str = ".wh.";
/// Opaque marker: hides everything lower layers put in its directory.
const OPAQUE: &str = ".wh..wh..opq";
/// Symlinks followed while resolving one path before giving up.
const MAX_LINKS: usize = 255;

/// Errors applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry (or a hardlink target) would land outside the root.
    #[error("layer entry {0:?} escapes the image root")]
    Escape(String),
    /// Too many symlinks while resolving a path.
    #[error("too many levels of symbolic links resolving {0:?}")]
    Loop(String),
    /// Writing one entry failed.
    #[error("layer entry {path:?}: {source}")]
    Entry {
        /// The entry's path in the layer.
        path: String,
        /// What failed.
        source: io::Error,
    },
    /// Reading or decompressing the layer failed.
    #[error("reading layer: {0}")]
    Read(io::Error),
    /// The uncompressed layer does not match the config's diff ID.
    #[error("layer content hashes to {actual}, the image config says {expected}")]
    DiffId {
        /// From the config.
        expected: String,
        /// Computed.
        actual: String,
    },
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Detect compression from the first bytes (media types lie often enough, e.g.
/// Docker's "tar.gzip" type on uncompressed layers from some tools).
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        // A skippable frame (magic 0x184D2A5?) can open a zstd stream.
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
    {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A decompressing reader for a layer blob.
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let kind = sniff(r.fill_buf()?);
    Ok(match kind {
        Compression::None => Box::new(r),
        // Multi-member gzip (concatenated streams) is valid and occurs.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(ZstdFrames::new(r)),
    })
}

/// Decodes every zstd frame of a stream in turn, skipping skippable frames
/// (zstd:chunked layers carry their table of contents in one). Drives
/// ruzstd's `FrameDecoder` directly, as its `StreamingDecoder` does for one frame.
struct ZstdFrames<R: BufRead> {
    source: R,
    decoder: ruzstd::decoding::FrameDecoder,
    /// Whether `decoder` holds a started frame.
    active: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        ZstdFrames {
            source,
            decoder: ruzstd::decoding::FrameDecoder::new(),
            active: false,
        }
    }

    /// Start the next data frame; false at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.decoder.reset(&mut self.source) {
                Ok(()) => {
                    self.active = true;
                    return Ok(true);
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.active {
                let d = &mut self.decoder;
                while d.can_collect() < buf.len() && !d.is_finished() {
                    let want = buf.len() - d.can_collect();
                    d.decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(want))
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                }
                let n = d.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if d.is_finished() && d.can_collect() == 0 {
                    self.active = false;
                }
            }
            if !self.next_frame()? {
                return Ok(0);
            }
        }
    }
}

/// Hashes what passes through (the layer's diff ID).
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Normalize an entry path to components relative to the root, resolving `.`
/// and `..` lexically; an entry that climbs above the root is refused.
pub fn clean_path(raw: &[u8]) -> Result<Vec<OsString>, UnpackError> {
    let mut out: Vec<OsString> = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(UnpackError::Escape(
                        String::from_utf8_lossy(raw).into_owned(),
                    ));
                }
            }
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

/// Resolve `comps` inside `root`, following every symlink met as if `root` were
/// `/`. The result contains no symlinks (only real directories, the final
/// component, or names that do not exist yet) and never leaves the root.
pub fn resolve_in_root(root: &Path, comps: &[OsString]) -> Result<Vec<OsString>, UnpackError> {
    let mut out: Vec<OsString> = Vec::new();
    let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        if c.is_empty() || c == "." {
            continue;
        }
        if c == ".." {
            out.pop();
            continue;
        }
        let candidate = root.join(join(&out)).join(&c);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(UnpackError::Loop(join(comps).display().to_string()));
                }
                let target = fs::read_link(&candidate).map_err(|e| UnpackError::Entry {
                    path: join(comps).display().to_string(),
                    source: e,
                })?;
                let tb = target.as_os_str().as_bytes();
                if tb.starts_with(b"/") {
                    out.clear();
                }
                for part in tb.split(|&b| b == b'/').rev() {
                    queue.push_front(OsStr::from_bytes(part).to_os_string());
                }
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// What one layer did, for logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct LayerStats {
    /// Entries written.
    pub entries: u64,
    /// Whiteouts applied.
    pub whiteouts: u64,
    /// Entries skipped (device nodes, FIFOs, unknown types).
    pub skipped: u64,
}

/// Applies one layer's entries to a root.
struct Applier<'a> {
    root: &'a Path,
    /// Paths (relative, resolved) this layer wrote: whiteouts only hide lower layers.
    created: HashSet<PathBuf>,
    /// Ancestors of `created` paths.
    ancestors: HashSet<PathBuf>,
    /// Directory modes and times, applied last so read-only directories can be filled.
    dirs: Vec<(PathBuf, u32, u64)>,
    /// Whether chown can work (root); otherwise ownership is left to the unpacker.
    root_user: bool,
    stats: LayerStats,
}

fn entry_err(path: &[u8]) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Entry {
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    }
}

/// Remove whatever is at `path` (without following a final symlink).
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl<'a> Applier<'a> {
    fn mark(&mut self, rel: &Path) {
        self.created.insert(rel.to_path_buf());
        let mut p = rel.parent();
        while let Some(a) = p {
            if a.as_os_str().is_empty() || !self.ancestors.insert(a.to_path_buf()) {
                break;
            }
            p = a.parent();
        }
    }

    /// Delete what lower layers left under `dir` (relative), keeping this layer's entries.
    fn clear_lower(&self, dir: &Path) -> io::Result<()> {
        let abs = self.root.join(dir);
        let entries = match fs::read_dir(&abs) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let rel = dir.join(e.file_name());
            let ours = self.created.contains(&rel) || self.ancestors.contains(&rel);
            if !ours {
                remove_any(&e.path())?;
            } else if e.file_type()?.is_dir() {
                self.clear_lower(&rel)?;
            }
        }
        Ok(())
    }

    fn own(&self, path: &Path, uid: u64, gid: u64) -> io::Result<()> {
        if !self.root_user {
            return Ok(());
        }
        let (uid, gid) = (
            u32::try_from(uid).unwrap_or(u32::MAX - 1),
            u32::try_from(gid).unwrap_or(u32::MAX - 1),
        );
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let comps = clean_path(&raw)?;
        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./"): nothing to create.
            return Ok(());
        };
        let parent_rel = join(&resolve_in_root(self.root, parent)?);
        let parent_abs = self.root.join(&parent_rel);
        let name_bytes = name.as_bytes();

        if name_bytes == OPAQUE.as_bytes() {
            self.stats.whiteouts += 1;
            return self.clear_lower(&parent_rel).map_err(entry_err(&raw));
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT.as_bytes()) {
            self.stats.whiteouts += 1;
            let rel = parent_rel.join(OsStr::from_bytes(hidden));
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(UnpackError::Escape(
                    String::from_utf8_lossy(&raw).into_owned(),
                ));
            }
            if !self.created.contains(&rel) {
                remove_any(&self.root.join(&rel)).map_err(entry_err(&raw))?;
            }
            return Ok(());
        }

        let rel = parent_rel.join(name);
        let path = self.root.join(&rel);
        let header = entry.header().clone();
        let kind = header.entry_type();
        // Some writers leave numeric fields blank; read those as tar does: zero
        // owner, and a plain mode.
        let mode =
            header
                .mode()
                .map(|m| m & 0o7777)
                .unwrap_or(if kind == tar::EntryType::Directory {
                    0o755
                } else {
                    0o644
                });
        let (mut uid, mut gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        // PAX records override the header's (small) numeric fields.
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let v = ext.value().ok().and_then(|v| v.parse::<u64>().ok());
                match (ext.key().ok(), v) {
                    (Some("uid"), Some(v)) => uid = v,
                    (Some("gid"), Some(v)) => gid = v,
                    _ => {}
                }
            }
        }
        let mtime = header.mtime().unwrap_or(0);
        if !parent_abs.exists() {
            fs::create_dir_all(&parent_abs).map_err(entry_err(&raw))?;
        }
        let err = entry_err(&raw);
        match kind {
            tar::EntryType::Directory => {
                let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                if !is_dir {
                    remove_any(&path).map_err(err)?;
                    fs::create_dir(&path).map_err(entry_err(&raw))?;
                }
                self.own(&path, uid, gid).map_err(entry_err(&raw))?;
                self.dirs.push((path.clone(), mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_any(&path).map_err(err)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(entry_err(&raw))?;
                io::copy(&mut entry, &mut f).map_err(UnpackError::Read)?;
                drop(f);
                self.own(&path, uid, gid).map_err(entry_err(&raw))?;
                // After chown, which clears set-id bits.
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(entry_err(&raw))?;
                let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
                filetime::set_file_times(&path, t, t).map_err(entry_err(&raw))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::Read(io::Error::other("symlink without target")))?
                    .into_owned();
                remove_any(&path).map_err(err)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(entry_err(&raw))?;
                self.own(&path, uid, gid).map_err(entry_err(&raw))?;
                let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
                filetime::set_symlink_file_times(&path, t, t).map_err(entry_err(&raw))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::Read(io::Error::other("hardlink without target")))?
                    .into_owned();
                let tcomps = clean_path(&target)?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(UnpackError::Escape(
                        String::from_utf8_lossy(&target).into_owned(),
                    ));
                };
                let src = self
                    .root
                    .join(join(&resolve_in_root(self.root, tparent)?))
                    .join(tname);
                if src == path {
                    return Ok(());
                }
                remove_any(&path).map_err(err)?;
                fs::hard_link(&src, &path).map_err(entry_err(&raw))?;
            }
            other => {
                // Device nodes and FIFOs: the runtime provides /dev, and creating
                // nodes from images is a privilege we do not grant images.
                tracing::debug!(path = %String::from_utf8_lossy(&raw), kind = ?other, "skipping layer entry");
                self.stats.skipped += 1;
                return Ok(());
            }
        }
        self.mark(&rel);
        self.stats.entries += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UnpackError> {
        // Deepest first, so setting a parent's time is not undone by its children.
        self.dirs
            .sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (path, mode, mtime) in self.dirs.drain(..) {
            let err = |source| UnpackError::Entry {
                path: path.display().to_string(),
                source,
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(err)?;
            let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
            filetime::set_file_times(&path, t, t).map_err(|source| UnpackError::Entry {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }
}

fn running_as_root() -> bool {
    // /proc/self belongs to our effective uid; this avoids a libc call.
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Apply one (possibly compressed) layer to `root`; when `diff_id` is given, the
/// uncompressed stream must hash to it.
pub fn apply_layer(
    root: &Path,
    blob: impl Read,
    diff_id: Option<&str>,
) -> Result<LayerStats, UnpackError> {
    let reader = decompress(blob).map_err(UnpackError::Read)?;
    let mut hashing = HashingReader {
        inner: reader,
        hasher: Sha256::new(),
    };
    let mut applier = Applier {
        root,
        created: HashSet::new(),
        ancestors: HashSet::new(),
        dirs: Vec::new(),
        root_user: running_as_root(),
        stats: LayerStats::default(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        for entry in archive.entries().map_err(UnpackError::Read)? {
            let entry = entry.map_err(UnpackError::Read)?;
            applier.apply(entry)?;
        }
    }
    // The tar end marker may be followed by padding; the diff ID covers it all.
    io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Read)?;
    applier.finish()?;
    if let Some(expected) = diff_id {
        let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
        if actual != expected {
            return Err(UnpackError::DiffId {
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(applier.stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A tar layer from (path, kind) items.
    enum Item<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a [u8], u32),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    fn layer(items: &[Item<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for it in items {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match it {
                Item::Dir(p, m) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*m);
                    h.set_size(0);
                    b.append_data(&mut h, p, io::empty()).unwrap();
                }
                Item::File(p, data, m) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*m);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, *data).unwrap();
                }
                Item::Symlink(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
                Item::Hardlink(p, t) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// A raw tar entry with an arbitrary (possibly hostile) name, bypassing the
    /// builder's own path checks.
    fn raw_entry(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        {
            let bytes = h.as_mut_bytes();
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            bytes[157..157 + link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn clean_path_refuses_escapes() {
        assert_eq!(
            clean_path(b"./a/./b/../c").unwrap(),
            vec![OsString::from("a"), OsString::from("c")]
        );
        assert_eq!(clean_path(b"/etc/passwd").unwrap().len(), 2);
        assert!(matches!(clean_path(b"../x"), Err(UnpackError::Escape(_))));
        assert!(matches!(
            clean_path(b"a/../../x"),
            Err(UnpackError::Escape(_))
        ));
    }

    #[test]
    fn files_dirs_links_and_modes() {
        let root = tempfile::tempdir().unwrap();
        let l = layer(&[
            Item::Dir("bin/", 0o755),
            Item::File("bin/busybox", b"#!bb", 0o4755),
            Item::Symlink("bin/sh", "busybox"),
            Item::Symlink("bin/abs", "/bin/busybox"),
            Item::Hardlink("bin/hl", "bin/busybox"),
            Item::Dir("ro/", 0o555),
            Item::File("ro/f", b"x", 0o444),
        ]);
        let st = apply_layer(root.path(), &l[..], None).unwrap();
        assert_eq!(st.entries, 7);
        let r = root.path();
        let m = fs::metadata(r.join("bin/busybox")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4755);
        assert_eq!(
            fs::read_link(r.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(fs::read(r.join("bin/sh")).unwrap(), b"#!bb");
        assert_eq!(m.ino(), fs::metadata(r.join("bin/hl")).unwrap().ino());
        assert_eq!(m.mtime(), 1_700_000_000);
        assert_eq!(fs::metadata(r.join("ro")).unwrap().mode() & 0o777, 0o555);
    }

    #[test]
    fn ownership_is_applied_when_root() {
        if !running_as_root() {
            eprintln!("skipping: chown needs root");
            return;
        }
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, uid) in [
            ("home/", tar::EntryType::Directory, 1000),
            ("home/f", tar::EntryType::Regular, 1001),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o4750);
            h.set_uid(uid);
            h.set_gid(uid + 1);
            h.set_size(0);
            b.append_data(&mut h, path, io::empty()).unwrap();
        }
        let root = tempfile::tempdir().unwrap();
        apply_layer(root.path(), &b.into_inner().unwrap()[..], None).unwrap();
        let d = fs::metadata(root.path().join("home")).unwrap();
        assert_eq!((d.uid(), d.gid()), (1000, 1001));
        let f = fs::metadata(root.path().join("home/f")).unwrap();
        assert_eq!((f.uid(), f.gid()), (1001, 1002));
        // chown clears set-uid, so the mode must be applied after it.
        assert_eq!(f.mode() & 0o7777, 0o4750);
    }

    #[test]
    fn whiteouts_and_opaque_directories() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let lower = layer(&[
            Item::Dir("etc/", 0o755),
            Item::File("etc/a", b"a", 0o644),
            Item::File("etc/b", b"b", 0o644),
            Item::Dir("data/", 0o755),
            Item::Dir("data/sub/", 0o755),
            Item::File("data/old", b"o", 0o644),
            Item::File("data/sub/old", b"o", 0o644),
        ]);
        apply_layer(r, &lower[..], None).unwrap();
        let upper = layer(&[
            Item::File("etc/.wh.a", b"", 0o644),
            // This layer's own file comes before the opaque marker and must survive it.
            Item::File("data/new", b"n", 0o644),
            Item::File("data/.wh..wh..opq", b"", 0o644),
            Item::File("data/sub/mine", b"m", 0o644),
        ]);
        let st = apply_layer(r, &upper[..], None).unwrap();
        assert_eq!(st.whiteouts, 2);
        assert!(!r.join("etc/a").exists());
        assert!(r.join("etc/b").exists());
        assert!(!r.join("etc/.wh.a").exists());
        assert!(r.join("data/new").exists());
        assert!(!r.join("data/old").exists());
        assert!(r.join("data/sub/mine").exists());
        assert!(!r.join("data/sub/old").exists());
        assert!(!r.join("data/.wh..wh..opq").exists());
    }

    #[test]
    fn writes_through_symlinks_stay_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let target = outside.path().display().to_string();
        // An absolute link to a host directory: inside the image it means <root><target>.
        let l1 = layer(&[
            Item::Symlink("escape", &target),
            Item::Symlink("up", "../../.."),
        ]);
        apply_layer(r, &l1[..], None).unwrap();
        let l2 = layer(&[
            Item::File("escape/pwned", b"x", 0o644),
            Item::File("up/pwned2", b"x", 0o644),
        ]);
        apply_layer(r, &l2[..], None).unwrap();
        assert!(!outside.path().join("pwned").exists());
        assert!(r
            .join(target.trim_start_matches('/'))
            .join("pwned")
            .exists());
        // `up` resolves to the root itself.
        assert!(r.join("pwned2").exists());
    }

    #[test]
    fn hostile_entries_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let l = raw_entry("../evil", tar::EntryType::Regular, "", b"x");
        let r = apply_layer(root.path(), &l[..], None);
        assert!(matches!(r, Err(UnpackError::Escape(_))), "{r:?}");
        let l = raw_entry("hl", tar::EntryType::Link, "../../etc/passwd", b"");
        assert!(matches!(
            apply_layer(root.path(), &l[..], None),
            Err(UnpackError::Escape(_))
        ));
        let l = raw_entry(".wh...", tar::EntryType::Regular, "", b"");
        assert!(apply_layer(root.path(), &l[..], None).is_err());
    }

    #[test]
    fn compressed_layers_and_diff_ids() {
        use std::io::Write;
        let plain = layer(&[Item::File("f", b"hello", 0o644)]);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&plain)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let root = tempfile::tempdir().unwrap();
        apply_layer(root.path(), &gz[..], Some(&diff_id)).unwrap();
        assert_eq!(fs::read(root.path().join("f")).unwrap(), b"hello");
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            apply_layer(root.path(), &plain[..], Some(&wrong)),
            Err(UnpackError::DiffId { .. })
        ));
        // zstd, written by hand with stored blocks (no encoder is a dependency).
        let z = zstd_raw_frame(&plain);
        let root = tempfile::tempdir().unwrap();
        apply_layer(root.path(), &z[..], Some(&diff_id)).unwrap();
        assert_eq!(fs::read(root.path().join("f")).unwrap(), b"hello");
    }

    /// A skippable frame then a zstd frame holding `data` in raw (stored) blocks.
    fn zstd_raw_frame(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        // Skippable frame (magic 0x184D2A50, 4 bytes of payload).
        out.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(b"skip");
        out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
        // Frame header descriptor: FCS field 4 bytes (flag 2), single segment.
        out.push(0b1010_0000);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let mut chunks = data.chunks(100_000).peekable();
        while let Some(c) = chunks.next() {
            let last = u32::from(chunks.peek().is_none());
            // Block header: last flag, type 0 (raw), size.
            let h = last | ((c.len() as u32) << 3);
            out.extend_from_slice(&h.to_le_bytes()[..3]);
            out.extend_from_slice(c);
        }
        out
    }
}
