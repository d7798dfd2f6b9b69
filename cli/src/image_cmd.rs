//! `shoal image …`: load image archives into the cluster's built-in registry
//! and list what it holds, finding the cluster the way kubectl does
//! (`--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`).
//!
//! Requests go through kube-rs's client, so every kubeconfig authentication
//! form works; blobs are pushed in chunks, so memory stays at one chunk.

use anyhow::{bail, Context};
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use kube::config::{KubeConfigOptions, Kubeconfig};
use shoal_agent::image::archive::ImageArchive;
use shoal_agent::image::distribution::{Bytes, DistError, Transport};
use shoal_agent::image::push::Pusher;
use shoal_agent::image::reference::DOCKER_HUB;
use shoal_agent::image::Reference;
use std::path::{Path, PathBuf};

/// `shoal image` subcommands.
#[derive(clap::Subcommand)]
pub enum ImageCmd {
    /// Upload the images of an OCI archive or `docker save` tarball into the
    /// cluster's registry (which mirrors docker.io for the nodes).
    Import {
        /// The archive (.tar, optionally gzip- or zstd-compressed).
        file: PathBuf,
        /// Extra references for the image (the archive must hold exactly one),
        /// e.g. `--tag myapp:1.0`; repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// List the images in the cluster's registry.
    List {
        /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig ($KUBECONFIG or ~/.kube/config)")?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Distribution requests over the kubeconfig's client.
struct KubeTransport(kube::Client);

impl Transport for KubeTransport {
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, DistError>> {
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            // Upload Locations may be absolute; the client adds the cluster URL itself.
            if parts.uri.scheme().is_some() {
                let pq = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                parts.uri = pq
                    .parse()
                    .map_err(|e| DistError::Protocol(format!("{pq}: {e}")))?;
            }
            let what = format!("{} {}", parts.method, parts.uri);
            let req = Request::from_parts(parts, kube::client::Body::from(body.to_vec()));
            let resp = self
                .0
                .send(req)
                .await
                .map_err(|e| DistError::Transport(format!("{what}: {e}")))?;
            let (parts, body) = resp.into_parts();
            let bytes = body
                .collect_bytes()
                .await
                .map_err(|e| DistError::Transport(format!("{what}: {e}")))?;
            Ok(Response::from_parts(parts, bytes))
        })
    }
}

/// The repository path and `ns` a reference is stored under in the built-in
/// registry (docker.io images without `ns`, as the mirror is asked for them).
fn registry_location(r: &Reference) -> (String, Option<String>) {
    let ns = (r.registry != DOCKER_HUB).then(|| r.registry.clone());
    (r.repository.clone(), ns)
}

/// How the registry's repository names read as image names.
fn display_name(repo: &str) -> String {
    let first = repo.split('/').next().unwrap_or("");
    if first.contains('.') || first.contains(':') || first == "localhost" {
        repo.to_string()
    } else {
        format!("{DOCKER_HUB}/{repo}")
    }
}

/// Run a `shoal image` subcommand.
pub async fn run(cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Import {
            file,
            tags,
            kubeconfig,
        } => import(&file, &tags, kubeconfig.as_deref()).await,
        ImageCmd::List { kubeconfig } => list(kubeconfig.as_deref()).await,
    }
}

async fn import(file: &Path, tags: &[String], kubeconfig: Option<&Path>) -> anyhow::Result<()> {
    let path = file.to_path_buf();
    // The archive's errors name the file already.
    let archive = tokio::task::spawn_blocking(move || ImageArchive::open(&path)).await??;
    let extra: Vec<Reference> = tags
        .iter()
        .map(|t| Reference::parse(t).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<_>>()?;
    if !extra.is_empty() && archive.images.len() != 1 {
        bail!(
            "--tag needs an archive with one image; {} has {}",
            file.display(),
            archive.images.len()
        );
    }
    let t = KubeTransport(client(kubeconfig).await?);
    for img in &archive.images {
        let top = img.top();
        let mut refs = img.refs.clone();
        refs.extend(extra.iter().cloned());
        for tag in &img.bare_tags {
            eprintln!(
                "note: {} is tagged {tag:?} without a repository; name it with --tag",
                top.digest
            );
        }
        if refs.is_empty() {
            eprintln!(
                "note: image {} has no name in the archive; pushing it untagged (pull it by digest)",
                top.digest
            );
            refs.push(Reference::parse(&format!(
                "shoal-import/untagged@{}",
                top.digest
            ))?);
        }
        // Blobs and manifests go into each repository the image is named in.
        let mut repos: Vec<(String, Option<String>)> = refs.iter().map(registry_location).collect();
        repos.sort();
        repos.dedup();
        for (repo, ns) in &repos {
            let p = Pusher::new(&t, repo, ns.as_deref());
            let mut sent = 0u64;
            for b in &img.blobs {
                let reader = archive.async_reader(b.region).await?;
                if p.push_blob(&b.digest, b.size, reader)
                    .await
                    .with_context(|| format!("uploading blob {}", b.digest))?
                {
                    sent += b.size;
                }
            }
            for m in &img.manifests {
                p.push_manifest(&m.digest, &m.media_type, m.bytes.clone())
                    .await
                    .with_context(|| format!("uploading manifest {}", m.digest))?;
            }
            tracing::debug!(repo, bytes = sent, "pushed image content");
        }
        for r in &refs {
            let (repo, ns) = registry_location(r);
            let p = Pusher::new(&t, &repo, ns.as_deref());
            if let Some(tag) = &r.tag {
                p.push_manifest(tag, &top.media_type, top.bytes.clone())
                    .await
                    .with_context(|| format!("tagging {r}"))?;
            }
            println!("imported {r} ({})", top.digest);
        }
    }
    Ok(())
}

async fn get_json(t: &KubeTransport, uri: &str) -> anyhow::Result<serde_json::Value> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(Bytes::new())?;
    let resp = t.send(req).await?;
    if !resp.status().is_success() {
        bail!(
            "GET {uri}: {} {}",
            resp.status(),
            String::from_utf8_lossy(resp.body())
        );
    }
    Ok(serde_json::from_slice(resp.body())?)
}

async fn list(kubeconfig: Option<&Path>) -> anyhow::Result<()> {
    let t = KubeTransport(client(kubeconfig).await?);
    let catalog = get_json(&t, "/v2/_catalog").await?;
    println!("{:<50} {:<20} DIGEST", "IMAGE", "TAG");
    let repos = catalog["repositories"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for repo in repos.iter().filter_map(|r| r.as_str()) {
        let tags = get_json(&t, &format!("/v2/{repo}/tags/list")).await?;
        for tag in tags["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
        {
            let req = Request::builder()
                .method(Method::HEAD)
                .uri(format!("/v2/{repo}/manifests/{tag}"))
                .body(Bytes::new())?;
            let resp = t.send(req).await?;
            let digest = resp
                .headers()
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            println!("{:<50} {:<20} {digest}", display_name(repo), tag);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_images_live_without_ns() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(registry_location(&r), ("library/busybox".into(), None));
        let r = Reference::parse("ghcr.io/org/app:1").unwrap();
        assert_eq!(
            registry_location(&r),
            ("org/app".into(), Some("ghcr.io".into()))
        );
        assert_eq!(display_name("library/busybox"), "docker.io/library/busybox");
        assert_eq!(display_name("ghcr.io/org/app"), "ghcr.io/org/app");
    }
}
