//! Manifests, tags and the catalog.

use super::index::{self, ManifestRecord, TagRecord};
use super::{Ctx, RegistryError};
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

/// Largest manifest accepted (distribution's own limit is 4 MiB).
const MAX_MANIFEST: usize = 4 * 1024 * 1024;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn is_digest(r: &str) -> bool {
    r.starts_with("sha256:")
}

fn check_tag(t: &str) -> Result<(), RegistryError> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(RegistryError::ManifestInvalid(format!("invalid tag {t:?}")))
    }
}

/// The manifest's digest and record for a tag or digest in `repo`.
fn resolve(
    ctx: &Ctx,
    repo: &str,
    reference: &str,
) -> Result<(String, ManifestRecord), RegistryError> {
    let store = ctx.state.store.as_ref();
    let digest = if is_digest(reference) {
        crate::blobs::check_digest(reference)?;
        reference.to_string()
    } else {
        index::get_tag(store, repo, reference)?
            .ok_or_else(|| RegistryError::ManifestUnknown(format!("{repo}:{reference}")))?
            .digest
    };
    let rec = index::manifest(store, repo, &digest)?
        .ok_or_else(|| RegistryError::ManifestUnknown(format!("{repo}@{digest}")))?;
    Ok((digest, rec))
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`.
pub(super) async fn get(
    ctx: &Ctx,
    repo: &str,
    reference: &str,
    head: bool,
) -> Result<Response, RegistryError> {
    let (digest, rec) = resolve(ctx, repo, reference)?;
    let body = if head {
        Body::empty()
    } else {
        let blobs = ctx.blobs.clone();
        let d = digest.clone();
        let bytes = tokio::task::spawn_blocking(move || blobs.get(&d))
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))??;
        Body::from(bytes)
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&rec.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(rec.size));
    if let Ok(v) = HeaderValue::from_str(&digest) {
        h.insert("Docker-Content-Digest", v);
    }
    Ok(resp)
}

/// The media type of a pushed manifest and the digests it references:
/// `(media type, blob digests, manifest digests)`.
fn inspect(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(String, Vec<String>, Vec<String>), RegistryError> {
    let invalid = |m: String| RegistryError::ManifestInvalid(m);
    let v: Value = serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
    if v.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return Err(invalid(
            "only schemaVersion 2 manifests are accepted".into(),
        ));
    }
    let known = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
    let declared = v.get("mediaType").and_then(Value::as_str);
    let header = content_type.filter(|c| known.contains(c));
    let is_index = v.get("manifests").is_some();
    let media_type = declared
        .or(header)
        .unwrap_or(if is_index { OCI_INDEX } else { OCI_MANIFEST })
        .to_string();
    if !known.contains(&media_type.as_str()) {
        return Err(invalid(format!(
            "unsupported manifest media type {media_type}"
        )));
    }
    let digests = |arr: Option<&Value>| -> Result<Vec<String>, RegistryError> {
        arr.and_then(Value::as_array)
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|d| {
                let s = d
                    .get("digest")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("descriptor without digest".into()))?;
                crate::blobs::check_digest(s)?;
                Ok(s.to_string())
            })
            .collect()
    };
    if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        Ok((media_type, Vec::new(), digests(v.get("manifests"))?))
    } else {
        let config = v
            .get("config")
            .ok_or_else(|| invalid("manifest without config".into()))?;
        let mut blobs = digests(Some(&Value::Array(vec![config.clone()])))?;
        blobs.extend(digests(v.get("layers"))?);
        Ok((media_type, blobs, Vec::new()))
    }
}

/// `PUT /v2/<name>/manifests/<reference>`.
pub(super) async fn put(
    ctx: &Ctx,
    repo: &str,
    name: &str,
    reference: &str,
    req: Request<Body>,
) -> Result<Response, RegistryError> {
    if !is_digest(reference) {
        check_tag(reference)?;
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
    let body = axum::body::to_bytes(req.into_body(), MAX_MANIFEST)
        .await
        .map_err(|_| {
            RegistryError::TooLarge(format!("manifests are limited to {MAX_MANIFEST} bytes"))
        })?;
    let (media_type, blob_refs, manifest_refs) = inspect(content_type.as_deref(), &body)?;
    let digest = crate::blobs::digest_of(&body);
    if is_digest(reference) && reference != digest {
        return Err(RegistryError::DigestInvalid(format!(
            "manifest hashes to {digest}, not {reference}"
        )));
    }
    let store = ctx.state.store.as_ref();
    let mut ops = Vec::new();
    for d in &manifest_refs {
        if index::manifest(store, repo, d)?.is_none() {
            return Err(RegistryError::ManifestBlobUnknown(d.clone()));
        }
    }
    for d in &blob_refs {
        if !index::has_blob(store, repo, d)? {
            // Present in the store (pushed to another repository): link it here.
            match ctx.blobs.open(d) {
                Ok((_, size)) => ops.push(index::link_blob(repo, d, size)),
                Err(_) => return Err(RegistryError::ManifestBlobUnknown(d.clone())),
            }
        }
    }
    let blobs = ctx.blobs.clone();
    let (d, b) = (digest.clone(), body.clone());
    tokio::task::spawn_blocking(move || blobs.put(&d, &b))
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))??;
    let rec = ManifestRecord {
        media_type: media_type.clone(),
        size: body.len() as u64,
    };
    ops.push(index::link_manifest(repo, &digest, &rec));
    if !is_digest(reference) {
        ops.push(index::tag(
            repo,
            reference,
            &TagRecord {
                digest: digest.clone(),
                media_type,
            },
        ));
    }
    ctx.state.store.txn(ops).await?;
    tracing::info!(repo, reference, %digest, "registry: manifest pushed");
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{name}/manifests/{digest}")) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest) {
        h.insert("Docker-Content-Digest", v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Ok(resp)
}

/// `DELETE /v2/<name>/manifests/<reference>`: a tag removes the tag; a digest
/// removes the manifest and every tag pointing at it. Blob content stays (no
/// garbage collection yet).
pub(super) async fn delete(
    ctx: &Ctx,
    repo: &str,
    reference: &str,
) -> Result<Response, RegistryError> {
    let store = ctx.state.store.as_ref();
    let mut ops = Vec::new();
    if is_digest(reference) {
        resolve(ctx, repo, reference)?;
        ops.push(index::unlink_manifest(repo, reference));
        for (t, rec) in index::tags(store, repo)? {
            if rec.digest == reference {
                ops.push(index::untag(repo, &t));
            }
        }
    } else {
        if index::get_tag(store, repo, reference)?.is_none() {
            return Err(RegistryError::ManifestUnknown(format!(
                "{repo}:{reference}"
            )));
        }
        ops.push(index::untag(repo, reference));
    }
    ctx.state.store.txn(ops).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `GET /v2/<name>/tags/list`.
pub(super) async fn tags(ctx: &Ctx, repo: &str, name: &str) -> Result<Response, RegistryError> {
    let tags: Vec<String> = index::tags(ctx.state.store.as_ref(), repo)?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    if tags.is_empty() {
        return Err(RegistryError::NameInvalid(format!(
            "repository {name} is not known"
        )));
    }
    Ok(axum::Json(serde_json::json!({"name": name, "tags": tags})).into_response())
}

/// `GET /v2/_catalog`.
pub(super) async fn catalog(ctx: &Ctx) -> Result<Response, RegistryError> {
    let mut repos: Vec<String> = index::all_tags(ctx.state.store.as_ref())?
        .into_iter()
        .map(|(r, _, _)| r)
        .collect();
    repos.dedup();
    Ok(axum::Json(serde_json::json!({"repositories": repos})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspects_manifests_and_indexes() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let m = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "x", "digest": d('a'), "size": 1},
            "layers": [{"mediaType": "y", "digest": d('b'), "size": 2}],
        });
        let (mt, blobs, manifests) =
            inspect(Some(DOCKER_MANIFEST), m.to_string().as_bytes()).unwrap();
        assert_eq!(mt, DOCKER_MANIFEST);
        assert_eq!(blobs, vec![d('a'), d('b')]);
        assert!(manifests.is_empty());
        let i = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": d('c'), "size": 3}]});
        let (mt, _, manifests) = inspect(None, i.to_string().as_bytes()).unwrap();
        assert_eq!(mt, OCI_INDEX);
        assert_eq!(manifests, vec![d('c')]);
        assert!(inspect(None, br#"{"schemaVersion":1}"#).is_err());
        assert!(inspect(None, b"nope").is_err());
    }
}
