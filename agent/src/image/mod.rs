//! Images for the agent: a content-addressed local store, pulls over the OCI
//! distribution API (mirrors, token and basic auth), archive import, and
//! unpacking layers into read-only image roots. [`ImageService`] is what the
//! pod runtime uses; [`ImageStore`] implements it.

pub mod archive;
pub mod auth;
pub mod config;
pub mod distribution;
pub mod manifest;
pub mod push;
pub mod reference;
mod store;
pub mod unpack;

pub use config::{RegistryConfig, TlsConfig};
pub use reference::Reference;
pub use store::ImageStore;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// The digest string (`sha256:<hex>`) of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The parts of an image's configuration a container needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// Image ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// Image CMD.
    pub cmd: Vec<String>,
    /// Image environment, `KEY=value`.
    pub env: Vec<String>,
    /// Image working directory.
    pub working_dir: Option<String>,
    /// Image user (`uid`, `uid:gid`, `name` or `name:group`).
    pub user: Option<String>,
}

/// An image ready to run.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// The reference as resolved (e.g. `docker.io/library/busybox:latest`).
    pub reference: String,
    /// Digest of the image (manifest or config), reported as the imageID.
    pub digest: String,
    /// Read-only unpacked image root; containers must not write into it.
    pub rootfs: PathBuf,
    /// The image configuration.
    pub config: ImageConfig,
}

/// When to contact a registry (the pod's `imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always resolve the reference with the registry.
    Always,
    /// Use a local image if there is one.
    IfNotPresent,
    /// Never pull; fail if absent.
    Never,
}

/// Registry credentials from imagePullSecrets (dockerconfigjson).
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    /// Registry host.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

/// Errors preparing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image does not exist in the registry (kubelet's `ErrImagePull`, "not found").
    #[error("image not found: {0}")]
    NotFound(String),
    /// The image is not present locally and the policy is `Never` (`ErrImageNeverPull`).
    #[error("image {0} is not present with pull policy Never")]
    NotPresent(String),
    /// Pulling failed.
    #[error("pull failed: {0}")]
    Pull(String),
    /// The image or reference is malformed.
    #[error("invalid image: {0}")]
    Invalid(String),
    /// Local filesystem failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ImageError {
    /// The kubelet-style reason for a container's waiting state.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::NotPresent(_) => "ErrImageNeverPull",
            ImageError::Invalid(_) => "InvalidImageName",
            _ => "ErrImagePull",
        }
    }
}

/// Resolves image references to unpacked roots.
pub trait ImageService: Send + Sync {
    /// Make `image` available locally per `policy` and return its root and config.
    fn prepare(
        &self,
        image: &str,
        policy: PullPolicy,
        auth: &[RegistryAuth],
    ) -> BoxFuture<'_, Result<PreparedImage, ImageError>>;
}
