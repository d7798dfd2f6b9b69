//! Blob downloads and uploads. An upload is a file in the blob store's staging
//! directory named by its id; its length is the upload's progress, so an
//! upload needs no other state (and survives a server restart).

use super::index;
use super::{Ctx, RegistryError};
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{header, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

fn content_digest(digest: &str) -> (&'static str, HeaderValue) {
    (
        "Docker-Content-Digest",
        HeaderValue::from_str(digest).unwrap_or(HeaderValue::from_static("")),
    )
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`: stream a blob from disk.
pub(super) async fn get(
    ctx: &Ctx,
    repo: &str,
    digest: &str,
    head: bool,
) -> Result<Response, RegistryError> {
    crate::blobs::check_digest(digest)?;
    if !index::has_blob(ctx.state.store.as_ref(), repo, digest)? {
        return Err(RegistryError::BlobUnknown(digest.to_string()));
    }
    let (file, len) = ctx.blobs.open(digest)?;
    let body = if head {
        Body::empty()
    } else {
        let f = tokio::fs::File::from_std(file);
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024))
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let (k, v) = content_digest(digest);
    h.insert(k, v);
    Ok(resp)
}

/// An upload session.
pub(super) struct Upload {
    id: String,
    path: PathBuf,
    /// The path as the client addressed it (without `ns`) for Location headers.
    location: String,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Append a request body to a file, returning the new length.
async fn append(path: &PathBuf, body: Body) -> Result<u64, RegistryError> {
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                RegistryError::UploadUnknown(path.display().to_string())
            }
            _ => e.into(),
        })?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| RegistryError::UploadInvalid(format!("reading upload: {e}")))?;
        f.write_all(&chunk).await?;
    }
    f.flush().await?;
    Ok(f.metadata().await?.len())
}

impl Upload {
    /// The session `id` of repository `name` (as addressed, with `ns`).
    pub(super) fn new(
        ctx: &Ctx,
        name: &str,
        ns: Option<&str>,
        id: &str,
    ) -> Result<Upload, RegistryError> {
        if !valid_id(id) {
            return Err(RegistryError::UploadUnknown(id.to_string()));
        }
        let mut location = format!("/v2/{name}/blobs/uploads/{id}");
        if let Some(ns) = ns {
            location.push_str("?ns=");
            location.push_str(&form_urlencoded::byte_serialize(ns.as_bytes()).collect::<String>());
        }
        Ok(Upload {
            id: id.to_string(),
            path: ctx.blobs.staging_dir().join(id),
            location,
        })
    }

    async fn len(&self) -> Result<u64, RegistryError> {
        match tokio::fs::metadata(&self.path).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RegistryError::UploadUnknown(self.id.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A 202/204 carrying the upload's location and progress.
    fn progress(&self, status: StatusCode, len: u64) -> Response {
        let mut resp = status.into_response();
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.location) {
            h.insert(header::LOCATION, v);
        }
        // Range is inclusive; an empty upload reports 0-0 as distribution does.
        let end = len.saturating_sub(1);
        if let Ok(v) = HeaderValue::from_str(&format!("0-{end}")) {
            h.insert(header::RANGE, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            h.insert("Docker-Upload-UUID", v);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        resp
    }

    /// `GET`: where the upload stands.
    pub(super) async fn status(&self) -> Result<Response, RegistryError> {
        let len = self.len().await?;
        Ok(self.progress(StatusCode::NO_CONTENT, len))
    }

    /// `PATCH`: append a chunk (checking `Content-Range` continues the upload).
    pub(super) async fn patch(&self, req: Request<Body>) -> Result<Response, RegistryError> {
        let len = self.len().await?;
        if let Some(range) = req
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
        {
            let start = range
                .trim_start_matches("bytes ")
                .split('-')
                .next()
                .and_then(|s| s.trim().parse::<u64>().ok());
            if start != Some(len) {
                return Err(RegistryError::RangeInvalid(format!(
                    "chunk starts at {range}, upload is at {len}"
                )));
            }
        }
        let len = append(&self.path, req.into_body()).await?;
        Ok(self.progress(StatusCode::ACCEPTED, len))
    }

    /// `PUT ?digest=`: append the last chunk, verify, and move the blob in.
    pub(super) async fn finish(
        &self,
        ctx: &Ctx,
        repo: &str,
        q: &HashMap<String, String>,
        req: Request<Body>,
    ) -> Result<Response, RegistryError> {
        let digest = q
            .get("digest")
            .ok_or_else(|| RegistryError::DigestInvalid("missing ?digest=".into()))?
            .clone();
        crate::blobs::check_digest(&digest)?;
        self.len().await?;
        append(&self.path, req.into_body()).await?;
        commit(ctx, repo, &digest, self.path.clone()).await
    }

    /// `DELETE`: abandon the upload.
    pub(super) async fn cancel(&self) -> Result<Response, RegistryError> {
        self.len().await?;
        tokio::fs::remove_file(&self.path).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

/// Move a finished upload into the blob store and link it to `repo`.
async fn commit(
    ctx: &Ctx,
    repo: &str,
    digest: &str,
    file: PathBuf,
) -> Result<Response, RegistryError> {
    let blobs = ctx.blobs.clone();
    let d = digest.to_string();
    let f = file.clone();
    let size = tokio::fs::metadata(&file).await?.len();
    let res = tokio::task::spawn_blocking(move || blobs.put_file(&d, &f))
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?;
    if let Err(e) = res {
        let _ = tokio::fs::remove_file(&file).await;
        return Err(e.into());
    }
    ctx.state
        .store
        .txn(vec![index::link_blob(repo, digest, size)])
        .await?;
    created(repo_location(repo, digest), digest)
}

fn repo_location(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

fn created(location: String, digest: &str) -> Result<Response, RegistryError> {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    let (k, v) = content_digest(digest);
    h.insert(k, v);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Ok(resp)
}

/// Uploads untouched this long are abandoned (a client died mid-push).
const STALE_UPLOAD: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Delete abandoned uploads; run when an upload starts, so no timer is needed.
async fn remove_stale_uploads(dir: &std::path::Path) {
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let stale = e
            .metadata()
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_UPLOAD);
        if stale {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}

/// `POST /v2/<name>/blobs/uploads/`: start an upload, or with `?digest=` take
/// the whole blob in this request, or with `?mount=&from=` link an existing blob.
pub(super) async fn start_upload(
    ctx: &Ctx,
    repo: &str,
    name: &str,
    ns: Option<&str>,
    q: &HashMap<String, String>,
    req: Request<Body>,
) -> Result<Response, RegistryError> {
    if let (Some(d), Some(from)) = (q.get("mount"), q.get("from")) {
        let from = super::repo_name(from, ns)?;
        if crate::blobs::check_digest(d).is_ok()
            && ctx.blobs.contains(d)
            && index::has_blob(ctx.state.store.as_ref(), &from, d)?
        {
            let size = ctx.blobs.open(d)?.1;
            ctx.state
                .store
                .txn(vec![index::link_blob(repo, d, size)])
                .await?;
            return created(repo_location(repo, d), d);
        }
        // Not mountable: fall through to a normal upload, as the spec says.
    }
    let dir = ctx.blobs.staging_dir();
    tokio::fs::create_dir_all(&dir).await?;
    remove_stale_uploads(&dir).await;
    let id = uuid::Uuid::new_v4().to_string();
    let up = Upload::new(ctx, name, ns, &id)?;
    tokio::fs::File::create(&up.path).await?;
    if let Some(d) = q.get("digest") {
        crate::blobs::check_digest(d)?;
        if let Err(e) = append(&up.path, req.into_body()).await {
            let _ = tokio::fs::remove_file(&up.path).await;
            return Err(e);
        }
        return commit(ctx, repo, d, up.path.clone()).await;
    }
    Ok(up.progress(StatusCode::ACCEPTED, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_cannot_name_other_files() {
        assert!(valid_id(&uuid::Uuid::new_v4().to_string()));
        for bad in ["", "../x", "a/b", "..", "x y"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
