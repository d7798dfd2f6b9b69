//! HTTP access to the blob store: `PUT /shoal/v1/blobs/<digest>` uploads a
//! plugin module (the content must hash to the digest), `GET`/`HEAD` read it.

use super::error::ApiError;
use super::AppState;
use crate::auth::Identity;
use crate::blobs::BlobError;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use std::sync::Arc;

/// Largest module accepted.
const MAX_BLOB: usize = 64 * 1024 * 1024;

fn to_api(e: BlobError) -> ApiError {
    match e {
        BlobError::BadDigest(_) | BlobError::Mismatch { .. } => ApiError::BadRequest(e.to_string()),
        BlobError::NotFound(_) => ApiError::PathNotFound(e.to_string()),
        BlobError::Io(e) => ApiError::Internal(e.to_string()),
    }
}

fn authorize(req: &Request) -> Result<(), ApiError> {
    match req.extensions().get::<Identity>() {
        None => Err(ApiError::Unauthorized),
        // Until RBAC is enforced, only cluster admins may upload modules.
        Some(id) if id.is_master() => Ok(()),
        Some(id) => Err(ApiError::Forbidden(format!(
            "user \"{}\" cannot upload plugin modules",
            id.user
        ))),
    }
}

/// Upload a blob.
pub async fn put_blob(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
    req: Request<Body>,
) -> Response {
    let result = async {
        authorize(&req)?;
        let blobs = state
            .hooks
            .blobs
            .clone()
            .ok_or_else(|| ApiError::PathNotFound("no blob store".into()))?;
        let body = axum::body::to_bytes(req.into_body(), MAX_BLOB)
            .await
            .map_err(|_| ApiError::TooLarge(format!("modules are limited to {MAX_BLOB} bytes")))?;
        tokio::task::spawn_blocking(move || blobs.put(&digest, &body))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(to_api)?;
        Ok::<_, ApiError>(StatusCode::CREATED.into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Download a blob.
pub async fn get_blob(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
    req: Request<Body>,
) -> Response {
    let result = (|| {
        authorize(&req)?;
        let blobs = state
            .hooks
            .blobs
            .as_ref()
            .ok_or_else(|| ApiError::PathNotFound("no blob store".into()))?;
        let bytes = blobs.get(&digest).map_err(to_api)?;
        Ok::<_, ApiError>(
            ([(http::header::CONTENT_TYPE, "application/wasm")], bytes).into_response(),
        )
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Whether a blob exists.
pub async fn head_blob(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
    req: Request<Body>,
) -> Response {
    if let Err(e) = authorize(&req) {
        return e.into_response();
    }
    match &state.hooks.blobs {
        Some(b) if b.contains(&digest) => StatusCode::OK.into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
