//! Persistent storage on this node: the local-path storage root (reported to
//! the host in a Node annotation so its provisioner knows where volumes go),
//! PVC-backed pod volumes (claim → volume → `hostPath` or `local` path), and
//! the cleanup of local-path volumes the host has released and deleted.
//!
//! Cleanup is gated by a finalizer the host's provisioner puts on every
//! local-path volume: once such a volume of this node is being deleted and
//! no longer bound, the agent removes its directory (reclaim policy Delete;
//! Retain keeps it) and then the finalizer, so the object never disappears
//! before the node has dealt with the data.

use crate::pods::cluster::ClusterApi;
use crate::pods::volumes::VolumePaths;
use crate::runtime::oci::Mount;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, PersistentVolume, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

// These names are the host's (`controllers::volume`); the agent does not
// depend on the host crate, so they are repeated here.
/// Node annotation carrying this node's local-path storage root.
pub const ANN_NODE_STORAGE_ROOT: &str = "storage.shoal.dev/local-path-root";
/// The built-in provisioner's name.
pub const LOCAL_PATH: &str = "shoal.dev/local-path";
/// Finalizer the agent removes once a local-path volume's directory is dealt with.
pub const LOCAL_PATH_FINALIZER: &str = "shoal.dev/local-path-cleanup";
const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Where this agent keeps local-path volumes: `<data dir>/storage`.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("storage")
}

/// Create the storage root and report it in the Node's annotations.
pub async fn announce(client: &kube::Client, node: &str, root: &Path) -> Result<(), String> {
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let patch = serde_json::json!({"metadata": {"annotations": {ANN_NODE_STORAGE_ROOT: root.display().to_string()}}});
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A pod's PVC-backed volumes, resolved to host paths.
#[derive(Debug, Default)]
pub struct ClaimVolumes {
    /// Host path per pod volume name.
    pub paths: VolumePaths,
    /// Volumes mounted read-only whatever the container asks
    /// (`persistentVolumeClaim.readOnly`).
    pub read_only: HashSet<String>,
}

impl ClaimVolumes {
    /// Make the mounts of read-only claims read-only. `mounts` starts with
    /// one entry per `volumeMounts` item, in order (as `volumes::mounts` makes them).
    pub fn apply_read_only(&self, c: &Container, mounts: &mut [Mount]) {
        for (m, vm) in mounts.iter_mut().zip(c.volume_mounts.iter().flatten()) {
            if self.read_only.contains(&vm.name) && !m.options.iter().any(|o| o == "ro") {
                m.options.push("ro".into());
            }
        }
    }
}

/// Resolve the pod's `persistentVolumeClaim` volumes: the claim must be
/// bound; its volume's `hostPath` or `local` path is used. Directories of
/// local-path volumes under `root` are created (world-writable, as k3s's
/// provisioner makes them) on first use. Errors are user-facing messages.
pub async fn claim_volumes(
    api: &dyn ClusterApi,
    pod: &Pod,
    root: &Path,
) -> Result<ClaimVolumes, String> {
    let mut out = ClaimVolumes::default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let Some(spec) = &pod.spec else {
        return Ok(out);
    };
    for v in spec.volumes.iter().flatten() {
        let Some(src) = &v.persistent_volume_claim else {
            continue;
        };
        let claim = api
            .claim(ns, &src.claim_name)
            .await
            .map_err(|e| e.0)?
            .ok_or_else(|| format!("persistentvolumeclaim {:?} not found", src.claim_name))?;
        let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let volume = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|v| bound && !v.is_empty())
            .ok_or_else(|| format!("persistentvolumeclaim {:?} is not bound", src.claim_name))?;
        let pv = api
            .volume(&volume)
            .await
            .map_err(|e| e.0)?
            .ok_or_else(|| format!("persistentvolume {volume:?} not found"))?;
        let path = volume_path(&pv, root)?;
        out.paths.insert(v.name.clone(), path);
        if src.read_only == Some(true) {
            out.read_only.insert(v.name.clone());
        }
    }
    Ok(out)
}

fn provisioned_here(pv: &PersistentVolume, root: &Path, path: &Path) -> bool {
    let by = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_PROVISIONED_BY));
    by.map(String::as_str) == Some(LOCAL_PATH)
        && path.parent() == Some(root)
        && path.file_name().and_then(|n| n.to_str()) == pv.metadata.name.as_deref()
}

/// The host path of a `hostPath` or `local` volume, prepared for mounting.
pub fn volume_path(pv: &PersistentVolume, root: &Path) -> Result<PathBuf, String> {
    let name = pv.metadata.name.as_deref().unwrap_or("");
    let spec = pv
        .spec
        .as_ref()
        .ok_or_else(|| format!("persistentvolume {name:?} has no spec"))?;
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err(format!(
            "persistentvolume {name:?}: volumeMode Block is not supported"
        ));
    }
    let (path, kind) = if let Some(hp) = &spec.host_path {
        (
            PathBuf::from(&hp.path),
            hp.type_.clone().unwrap_or_default(),
        )
    } else if let Some(l) = &spec.local {
        (PathBuf::from(&l.path), "local".to_string())
    } else {
        return Err(format!(
            "persistentvolume {name:?}: only hostPath and local volumes can be mounted on this node"
        ));
    };
    if provisioned_here(pv, root, &path) {
        if !path.exists() {
            std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        return Ok(path);
    }
    match kind.as_str() {
        "DirectoryOrCreate" => {
            std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        "Directory" if !path.is_dir() => {
            return Err(format!("hostPath {} is not a directory", path.display()))
        }
        "File" if !path.is_file() => {
            return Err(format!("hostPath {} is not a file", path.display()))
        }
        "local" if !path.exists() => {
            return Err(format!(
                "local volume path {} does not exist",
                path.display()
            ))
        }
        _ => {}
    }
    Ok(path)
}

/// Whether the volume's required node affinity names this node by hostname.
fn pinned_to(pv: &PersistentVolume, node: &str) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_some_and(|req| {
            req.node_selector_terms.iter().any(|t| {
                t.match_expressions.iter().flatten().any(|e| {
                    e.key == "kubernetes.io/hostname"
                        && e.operator == "In"
                        && e.values.iter().flatten().any(|v| v == node)
                })
            })
        })
}

/// What the node must do for a volume now.
#[derive(Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Nothing (not ours, not deleted, or still bound).
    None,
    /// Remove the directory, then the finalizer.
    RemoveData(PathBuf),
    /// Keep the data (Retain); remove the finalizer.
    Release,
}

/// Decide what to do for a volume on this node.
pub fn cleanup_for(pv: &PersistentVolume, node: &str, root: &Path) -> Cleanup {
    let ours = pv
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == LOCAL_PATH_FINALIZER);
    let bound = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if !ours || pv.metadata.deletion_timestamp.is_none() || bound || !pinned_to(pv, node) {
        return Cleanup::None;
    }
    let spec = pv.spec.as_ref();
    if spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) != Some("Delete") {
        return Cleanup::Release;
    }
    let path = spec
        .and_then(|s| {
            s.host_path
                .as_ref()
                .map(|h| h.path.clone())
                .or_else(|| s.local.as_ref().map(|l| l.path.clone()))
        })
        .map(PathBuf::from);
    match path {
        // Only ever remove a directory this agent made for this volume.
        Some(p) if provisioned_here(pv, root, &p) => Cleanup::RemoveData(p),
        _ => Cleanup::Release,
    }
}

async fn clean_one(
    api: &Api<PersistentVolume>,
    name: &str,
    node: &str,
    root: &Path,
) -> Result<(), String> {
    for _ in 0..8 {
        let Some(mut pv) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        match cleanup_for(&pv, node, root) {
            Cleanup::None => return Ok(()),
            Cleanup::RemoveData(p) => match std::fs::remove_dir_all(&p) {
                Ok(()) => {
                    tracing::info!(volume = %name, path = %p.display(), "removed local-path volume data")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", p.display())),
            },
            Cleanup::Release => {}
        }
        if let Some(f) = pv.metadata.finalizers.as_mut() {
            f.retain(|x| x != LOCAL_PATH_FINALIZER);
        }
        match api.replace(name, &PostParams::default(), &pv).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("kept conflicting".into())
}

/// Watch volumes and clean up this node's deleted local-path volumes.
pub async fn run(client: kube::Client, node: String, root: PathBuf) {
    let api: Api<PersistentVolume> = Api::all(client);
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(ev) = stream.next().await {
        let Ok(pv) = ev else { continue };
        if cleanup_for(&pv, &node, &root) == Cleanup::None {
            continue;
        }
        let name = pv.metadata.name.clone().unwrap_or_default();
        let (api, node, root) = (api.clone(), node.clone(), root.clone());
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            for _ in 0..10 {
                match clean_one(&api, &name, &node, &root).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(volume = %name, error = %e, "cleaning up local-path volume")
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(extra: serde_json::Value) -> PersistentVolume {
        let mut v = json!({
            "metadata": {"name": "pvc-1", "finalizers": [LOCAL_PATH_FINALIZER],
                "annotations": {ANN_PROVISIONED_BY: LOCAL_PATH},
                "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"hostPath": {"path": "/data/storage/pvc-1"}, "persistentVolumeReclaimPolicy": "Delete",
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}},
            "status": {"phase": "Released"}
        });
        json_patch_merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn json_patch_merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    json_patch_merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn only_deleted_unbound_local_path_volumes_of_this_node_are_cleaned() {
        let root = Path::new("/data/storage");
        assert_eq!(
            cleanup_for(&pv(json!({})), "n1", root),
            Cleanup::RemoveData("/data/storage/pvc-1".into())
        );
        assert_eq!(cleanup_for(&pv(json!({})), "n2", root), Cleanup::None);
        assert_eq!(
            cleanup_for(&pv(json!({"status": {"phase": "Bound"}})), "n1", root),
            Cleanup::None
        );
        assert_eq!(
            cleanup_for(
                &pv(json!({"metadata": {"deletionTimestamp": null}})),
                "n1",
                root
            ),
            Cleanup::None
        );
        assert_eq!(
            cleanup_for(
                &pv(json!({"spec": {"persistentVolumeReclaimPolicy": "Retain"}})),
                "n1",
                root
            ),
            Cleanup::Release
        );
        // A path outside this agent's root is never removed.
        assert_eq!(
            cleanup_for(
                &pv(json!({"spec": {"hostPath": {"path": "/etc"}}})),
                "n1",
                root
            ),
            Cleanup::Release
        );
    }

    #[test]
    fn local_path_directories_are_created_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        std::fs::create_dir_all(&root).unwrap();
        let mut v = pv(json!({"metadata": {"deletionTimestamp": null}}));
        v.spec.as_mut().unwrap().host_path.as_mut().unwrap().path =
            root.join("pvc-1").display().to_string();
        let p = volume_path(&v, &root).unwrap();
        assert!(p.is_dir());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o777);
        let local: PersistentVolume = serde_json::from_value(json!({"metadata": {"name": "l"},
            "spec": {"local": {"path": dir.path().join("missing").display().to_string()}}}))
        .unwrap();
        assert!(volume_path(&local, &root)
            .unwrap_err()
            .contains("does not exist"));
    }
}
