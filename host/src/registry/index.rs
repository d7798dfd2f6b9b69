//! The registry's index, kept in the API store:
//!
//! ```text
//! /shoal.registry/blobs/<repo>@<digest>      → {"size": n}                 blob is in repo
//! /shoal.registry/manifests/<repo>@<digest>  → {"mediaType": …, "size": n} manifest is in repo
//! /shoal.registry/tags/<repo>@<tag>          → {"digest": …, "mediaType": …}
//! ```
//!
//! `@` cannot occur in repository names, tags or digests' hex, so one repo's
//! keys are exactly a prefix range. The content itself is in the blob store;
//! these records say which repository may serve what (so the registry does not
//! hand out arbitrary blobs, such as plugin modules, to anyone who names a digest).

use super::RegistryError;
use crate::store::{Op, Precondition, Store};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

const BLOBS: &str = "/shoal.registry/blobs/";
const MANIFESTS: &str = "/shoal.registry/manifests/";
const TAGS: &str = "/shoal.registry/tags/";

/// A manifest's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRecord {
    /// Media type it was pushed with.
    pub media_type: String,
    /// Size in bytes.
    pub size: u64,
}

/// A tag's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagRecord {
    /// Manifest digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
}

fn put(key: String, value: &impl Serialize) -> Op {
    Op::Put {
        key,
        value: Bytes::from(serde_json::to_vec(value).expect("records serialize")),
        precondition: Precondition::None,
    }
}

/// Op recording that `repo` has blob `digest`.
pub fn link_blob(repo: &str, digest: &str, size: u64) -> Op {
    put(
        format!("{BLOBS}{repo}@{digest}"),
        &serde_json::json!({"size": size}),
    )
}

/// Op recording a manifest in `repo`.
pub fn link_manifest(repo: &str, digest: &str, rec: &ManifestRecord) -> Op {
    put(format!("{MANIFESTS}{repo}@{digest}"), rec)
}

/// Op pointing a tag at a manifest.
pub fn tag(repo: &str, tag: &str, rec: &TagRecord) -> Op {
    put(format!("{TAGS}{repo}@{tag}"), rec)
}

/// Op removing a tag.
pub fn untag(repo: &str, tag: &str) -> Op {
    Op::Delete {
        key: format!("{TAGS}{repo}@{tag}"),
        precondition: Precondition::None,
    }
}

/// Op removing a manifest from a repository.
pub fn unlink_manifest(repo: &str, digest: &str) -> Op {
    Op::Delete {
        key: format!("{MANIFESTS}{repo}@{digest}"),
        precondition: Precondition::None,
    }
}

/// Whether `repo` has blob `digest`.
pub fn has_blob(store: &dyn Store, repo: &str, digest: &str) -> Result<bool, RegistryError> {
    Ok(store.get(&format!("{BLOBS}{repo}@{digest}"))?.is_some())
}

/// A manifest's record in `repo`.
pub fn manifest(
    store: &dyn Store,
    repo: &str,
    digest: &str,
) -> Result<Option<ManifestRecord>, RegistryError> {
    let Some(kv) = store.get(&format!("{MANIFESTS}{repo}@{digest}"))? else {
        return Ok(None);
    };
    serde_json::from_slice(&kv.value)
        .map(Some)
        .map_err(|e| RegistryError::Internal(format!("manifest record: {e}")))
}

/// A tag's record.
pub fn get_tag(
    store: &dyn Store,
    repo: &str,
    tag: &str,
) -> Result<Option<TagRecord>, RegistryError> {
    let Some(kv) = store.get(&format!("{TAGS}{repo}@{tag}"))? else {
        return Ok(None);
    };
    serde_json::from_slice(&kv.value)
        .map(Some)
        .map_err(|e| RegistryError::Internal(format!("tag record: {e}")))
}

/// Tags of a repository with their records, sorted.
pub fn tags(store: &dyn Store, repo: &str) -> Result<Vec<(String, TagRecord)>, RegistryError> {
    let prefix = format!("{TAGS}{repo}@");
    let list = store.list(&prefix, None, 0, None)?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|kv| {
            let tag = kv.key.strip_prefix(&prefix)?.to_string();
            let rec: TagRecord = serde_json::from_slice(&kv.value).ok()?;
            Some((tag, rec))
        })
        .collect())
}

/// Every (repository, tag, record), sorted by repository then tag.
pub fn all_tags(store: &dyn Store) -> Result<Vec<(String, String, TagRecord)>, RegistryError> {
    let list = store.list(TAGS, None, 0, None)?;
    let mut out: Vec<(String, String, TagRecord)> = list
        .items
        .into_iter()
        .filter_map(|kv| {
            let (repo, tag) = kv.key.strip_prefix(TAGS)?.rsplit_once('@')?;
            let rec: TagRecord = serde_json::from_slice(&kv.value).ok()?;
            Some((repo.to_string(), tag.to_string(), rec))
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Ok(out)
}
