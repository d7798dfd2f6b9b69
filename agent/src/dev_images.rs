//! A directory of already unpacked images, for tests and development until
//! the image store (`image/`) serves real ones: image `busybox`,
//! `busybox:1.36` or `docker.io/library/busybox:latest` is looked up as
//! `<dir>/<repository name>/rootfs` with an optional `config.json` beside it
//! (`{"entrypoint": [...], "cmd": [...], "env": [...], "workingDir": "...", "user": "..."}`).

use crate::image::{
    ImageConfig, ImageError, ImageService, PreparedImage, PullPolicy, RegistryAuth,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use std::path::PathBuf;

/// Serves images from a directory.
pub struct DirImages {
    dir: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ConfigFile {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
}

impl DirImages {
    /// Images under `dir`.
    pub fn new(dir: PathBuf) -> DirImages {
        DirImages { dir }
    }

    /// The repository's last path segment without tag or digest.
    fn name(reference: &str) -> &str {
        let no_digest = reference.split('@').next().unwrap_or(reference);
        let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
        last.split(':').next().unwrap_or(last)
    }
}

impl ImageService for DirImages {
    fn prepare(
        &self,
        image: &str,
        _policy: PullPolicy,
        _auth: &[RegistryAuth],
    ) -> BoxFuture<'_, Result<PreparedImage, ImageError>> {
        let image = image.to_string();
        async move {
            let name = Self::name(&image);
            if name.is_empty() {
                return Err(ImageError::Invalid(image));
            }
            let dir = self.dir.join(name);
            let rootfs = dir.join("rootfs");
            if !rootfs.is_dir() {
                return Err(ImageError::NotFound(image));
            }
            let cfg: ConfigFile = match std::fs::read(dir.join("config.json")) {
                Ok(b) => serde_json::from_slice(&b)
                    .map_err(|e| ImageError::Invalid(format!("{name}/config.json: {e}")))?,
                Err(_) => ConfigFile::default(),
            };
            Ok(PreparedImage {
                reference: image.clone(),
                digest: format!("dir:{name}"),
                rootfs,
                config: ImageConfig {
                    entrypoint: cfg.entrypoint,
                    cmd: cfg.cmd,
                    env: cfg.env,
                    working_dir: cfg.working_dir,
                    user: cfg.user,
                },
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_images_by_repository_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("busybox/rootfs")).unwrap();
        std::fs::write(dir.path().join("busybox/config.json"), r#"{"cmd": ["sh"]}"#).unwrap();
        let images = DirImages::new(dir.path().into());
        let p = images
            .prepare(
                "docker.io/library/busybox:latest",
                PullPolicy::IfNotPresent,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(p.config.cmd, vec!["sh"]);
        assert!(p.rootfs.ends_with("busybox/rootfs"));
        let e = images
            .prepare("nginx", PullPolicy::Always, &[])
            .await
            .unwrap_err();
        assert!(matches!(e, ImageError::NotFound(_)));
    }
}
