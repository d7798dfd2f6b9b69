//! Pod volumes on the node: emptyDir directories, ConfigMap and Secret files
//! written under the pod's directory (honouring `items`, `defaultMode` and
//! per-item modes), hostPath checks, and the bind mounts a container gets.

use super::env::Sources;
use crate::runtime::oci::Mount;
use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Host paths of a pod's volumes, by volume name.
pub type VolumePaths = HashMap<String, PathBuf>;

/// The ConfigMaps and Secrets a pod's volumes and environment refer to.
pub fn referenced_sources(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    let Some(spec) = &pod.spec else {
        return (cms, secrets);
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            cms.push(cm.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(s);
        }
    }
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &f.secret_ref {
                secrets.push(r.name.clone());
            }
        }
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    cms.push(r.name.clone());
                }
                if let Some(r) = &from.secret_key_ref {
                    secrets.push(r.name.clone());
                }
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

fn write_files(
    dir: &Path,
    entries: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
) -> Result<(), String> {
    // Rewrite from scratch so removed keys disappear.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files: Vec<(String, &Vec<u8>, u32)> = match items {
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                let v = entries
                    .get(&it.key)
                    .ok_or_else(|| format!("{what}: key {:?} not found", it.key))?;
                out.push((
                    it.path.clone(),
                    v,
                    it.mode.map(|m| m as u32).unwrap_or(default_mode),
                ));
            }
            out
        }
        None => entries
            .iter()
            .map(|(k, v)| (k.clone(), v, default_mode))
            .collect(),
    };
    for (rel, bytes, mode) in files {
        if !safe_relative(&rel) {
            return Err(format!("{what}: invalid path {rel:?}"));
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Create or refresh every volume of the pod under `pod_dir/volumes`.
/// Errors are user-facing messages (the container waits with
/// `CreateContainerConfigError`).
pub fn prepare(pod: &Pod, pod_dir: &Path, sources: &Sources) -> Result<VolumePaths, String> {
    let mut out = VolumePaths::new();
    let Some(spec) = &pod.spec else {
        return Ok(out);
    };
    for v in spec.volumes.iter().flatten() {
        let path = if v.empty_dir.is_some() {
            let p = pod_dir.join("volumes/empty-dir").join(&v.name);
            std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            // emptyDir is world-writable, as in Kubernetes, so any user can use it.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("{}: {e}", p.display()))?;
            p
        } else if let Some(cm) = &v.config_map {
            let p = pod_dir.join("volumes/configmap").join(&v.name);
            match sources.config_map_entries(&cm.name) {
                Some(entries) => write_files(
                    &p,
                    &entries,
                    cm.items.as_ref(),
                    cm.default_mode.unwrap_or(0o644) as u32,
                    &format!("configmap {:?}", cm.name),
                )?,
                None if cm.optional == Some(true) => {
                    write_files(&p, &BTreeMap::new(), None, 0o644, "configmap")?
                }
                None => return Err(format!("configmap {:?} not found", cm.name)),
            }
            p
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let p = pod_dir.join("volumes/secret").join(&v.name);
            match sources.secret_entries(&name) {
                Some(entries) => write_files(
                    &p,
                    &entries,
                    s.items.as_ref(),
                    s.default_mode.unwrap_or(0o644) as u32,
                    &format!("secret {name:?}"),
                )?,
                None if s.optional == Some(true) => {
                    write_files(&p, &BTreeMap::new(), None, 0o644, "secret")?
                }
                None => return Err(format!("secret {name:?} not found")),
            }
            p
        } else if let Some(hp) = &v.host_path {
            let p = PathBuf::from(&hp.path);
            match hp.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&p)
                    .map_err(|e| format!("hostPath {}: {e}", p.display()))?,
                "Directory" if !p.is_dir() => {
                    return Err(format!("hostPath {} is not a directory", p.display()))
                }
                "FileOrCreate" if !p.exists() => {
                    if let Some(parent) = p.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    std::fs::write(&p, b"").map_err(|e| format!("hostPath {}: {e}", p.display()))?
                }
                "File" if !p.is_file() => {
                    return Err(format!("hostPath {} is not a file", p.display()))
                }
                _ => {}
            }
            p
        } else {
            // Projected, downwardAPI, PVC and others are not supported yet;
            // containers that mount them fail with a clear message.
            continue;
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// The bind mounts for a container's `volumeMounts`.
pub fn mounts(container: &Container, volumes: &VolumePaths) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let base = volumes
            .get(&vm.name)
            .ok_or_else(|| format!("volume {:?} is not supported or not defined", vm.name))?;
        let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if safe_relative(sub) => {
                let p = base.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                }
                p
            }
            Some(sub) => return Err(format!("invalid subPath {sub:?}")),
            None => base.clone(),
        };
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if vm.read_only == Some(true) {
            options.push("ro".into());
        }
        out.push(Mount {
            destination: vm.mount_path.clone(),
            kind: "bind".into(),
            source: source.display().to_string(),
            options,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_config_map_and_secret_files_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true},
                {"name": "sec", "mountPath": "/etc/sec"},
                {"name": "scratch", "mountPath": "/scratch", "subPath": "a"}
            ]}],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cm", "items": [{"key": "k1", "path": "sub/one.txt", "mode": 0o600}]}},
                {"name": "sec", "secret": {"secretName": "s", "defaultMode": 0o400}},
                {"name": "scratch", "emptyDir": {}}
            ]}
        }))
        .unwrap();
        let mut sources = Sources::default();
        sources.config_maps.insert(
            "cm".into(),
            Some(
                serde_json::from_value(
                    json!({"metadata": {"name": "cm"}, "data": {"k1": "v1", "k2": "v2"}}),
                )
                .unwrap(),
            ),
        );
        sources.secrets.insert(
            "s".into(),
            Some(
                serde_json::from_value(
                    json!({"metadata": {"name": "s"}, "data": {"token": "dG9r"}}),
                )
                .unwrap(),
            ),
        );
        let paths = prepare(&pod, dir.path(), &sources).unwrap();
        let one = paths["cfg"].join("sub/one.txt");
        assert_eq!(std::fs::read_to_string(&one).unwrap(), "v1");
        assert_eq!(std::fs::metadata(&one).unwrap().mode() & 0o777, 0o600);
        assert!(!paths["cfg"].join("k2").exists(), "items select keys");
        let tok = paths["sec"].join("token");
        assert_eq!(std::fs::read_to_string(&tok).unwrap(), "tok");
        assert_eq!(std::fs::metadata(&tok).unwrap().mode() & 0o777, 0o400);

        let c = &pod.spec.as_ref().unwrap().containers[0];
        let m = mounts(c, &paths).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].destination, "/etc/cfg");
        assert!(m[0].options.contains(&"ro".to_string()));
        assert!(!m[1].options.contains(&"ro".to_string()));
        assert!(m[2].source.ends_with("volumes/empty-dir/scratch/a"));

        sources.config_maps.insert("cm".into(), None);
        assert!(prepare(&pod, dir.path(), &sources)
            .unwrap_err()
            .contains("not found"));
    }
}
