//! Registry errors and the one place they become distribution-API error
//! responses (`{"errors":[{"code":…,"message":…}]}`), not Kubernetes Status
//! bodies: registry clients read this format.

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};

/// Errors from the built-in registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No client certificate.
    #[error("authentication required")]
    Unauthorized,
    /// Authenticated but not allowed.
    #[error("{0}")]
    Denied(String),
    /// Unknown repository path or malformed name.
    #[error("{0}")]
    NameInvalid(String),
    /// No such blob in this repository.
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    /// No such upload session.
    #[error("blob upload unknown: {0}")]
    UploadUnknown(String),
    /// Upload out of order or malformed.
    #[error("{0}")]
    UploadInvalid(String),
    /// A chunk does not continue the upload where it stands.
    #[error("{0}")]
    RangeInvalid(String),
    /// Digest malformed or content does not match it.
    #[error("{0}")]
    DigestInvalid(String),
    /// No such manifest.
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    /// Manifest malformed.
    #[error("{0}")]
    ManifestInvalid(String),
    /// A manifest references a blob the repository lacks.
    #[error("manifest references unknown blob {0}")]
    ManifestBlobUnknown(String),
    /// Body too large.
    #[error("{0}")]
    TooLarge(String),
    /// Method not supported at that path.
    #[error("{0}")]
    Unsupported(String),
    /// Storage failure.
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    fn code(&self) -> (StatusCode, &'static str) {
        use RegistryError::*;
        match self {
            Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            UploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            UploadInvalid(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            RangeInvalid(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }
}

impl From<crate::store::StoreError> for RegistryError {
    fn from(e: crate::store::StoreError) -> Self {
        RegistryError::Internal(e.to_string())
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        RegistryError::Internal(e.to_string())
    }
}

impl From<crate::blobs::BlobError> for RegistryError {
    fn from(e: crate::blobs::BlobError) -> Self {
        use crate::blobs::BlobError;
        match e {
            BlobError::BadDigest(_) | BlobError::Mismatch { .. } => {
                RegistryError::DigestInvalid(e.to_string())
            }
            BlobError::NotFound(d) => RegistryError::BlobUnknown(d),
            BlobError::Io(e) => RegistryError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "registry request failed");
        }
        let body = serde_json::json!({"errors": [{"code": code, "message": self.to_string()}]});
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            // Clients authenticate with the cluster's client certificates; the
            // challenge tells distribution clients that credentials are needed.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"shoal\""),
            );
        }
        resp.headers_mut().insert(
            "Docker-Distribution-API-Version",
            http::HeaderValue::from_static("registry/2.0"),
        );
        resp
    }
}
