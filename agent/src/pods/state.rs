//! What the agent keeps on disk per pod, so a restarted agent adopts its pods
//! instead of killing them: `<data-dir>/pods/<uid>/pod.json` (sandbox pid and
//! start time, terminal phase) and `containers/<id>/meta.json` per container
//! attempt, next to that attempt's bundle and the shim's `exit.json`.

use crate::runtime::{write_atomic, SandboxInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The pod-level record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// Pod uid.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The running sandbox, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxInfo>,
    /// When the agent accepted the pod (status.startTime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// `Succeeded` or `Failed` once the pod is done (never restarted again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// One container attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    /// runc container id.
    pub id: String,
    /// Container name in the pod spec.
    pub name: String,
    /// Whether it is an init container.
    pub init: bool,
    /// 0 for the first run, then one more per restart.
    pub attempt: u32,
    /// Image reference as resolved.
    pub image_ref: String,
    /// Image digest.
    pub image_id: String,
    /// When the bundle was created.
    pub created_at: Time,
    /// When its process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Its cgroup path.
    pub cgroup_path: String,
}

/// Directory of all pods.
pub fn pods_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pods")
}

/// Directory of one pod.
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    pods_dir(data_dir).join(uid)
}

/// Bundle directory of one container attempt.
pub fn container_dir(pod_dir: &Path, id: &str) -> PathBuf {
    pod_dir.join("containers").join(id)
}

/// Uids of pods with state on disk.
pub fn list_pods(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(pods_dir(data_dir))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("pod.json").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Load a pod's records (None if it has none).
pub fn load(pod_dir: &Path) -> Option<(PodRecord, Vec<ContainerRecord>)> {
    let pod: PodRecord =
        serde_json::from_slice(&std::fs::read(pod_dir.join("pod.json")).ok()?).ok()?;
    let mut containers: Vec<ContainerRecord> = std::fs::read_dir(pod_dir.join("containers"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let bytes = std::fs::read(e.path().join("meta.json")).ok()?;
                    serde_json::from_slice(&bytes).ok()
                })
                .collect()
        })
        .unwrap_or_default();
    containers.sort_by(|a, b| (a.init, &a.name, a.attempt).cmp(&(b.init, &b.name, b.attempt)));
    Some((pod, containers))
}

/// Save the pod record.
pub fn save_pod(pod_dir: &Path, rec: &PodRecord) -> std::io::Result<()> {
    std::fs::create_dir_all(pod_dir)?;
    write_atomic(&pod_dir.join("pod.json"), &serde_json::to_vec_pretty(rec)?)
}

/// Save a container record into its bundle directory.
pub fn save_container(pod_dir: &Path, rec: &ContainerRecord) -> std::io::Result<()> {
    let dir = container_dir(pod_dir, &rec.id);
    std::fs::create_dir_all(&dir)?;
    write_atomic(&dir.join("meta.json"), &serde_json::to_vec_pretty(rec)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pd = pod_dir(dir.path(), "u1");
        let rec = PodRecord {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "p".into(),
            sandbox: Some(SandboxInfo {
                pid: 10,
                start_time: 99,
            }),
            ..Default::default()
        };
        save_pod(&pd, &rec).unwrap();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for attempt in [1, 0] {
            save_container(
                &pd,
                &ContainerRecord {
                    id: format!("c{attempt}"),
                    name: "app".into(),
                    init: false,
                    attempt,
                    image_ref: "busybox".into(),
                    image_id: "sha256:1".into(),
                    created_at: now.clone(),
                    started_at: None,
                    cgroup_path: "/shoal/podu1/c".into(),
                },
            )
            .unwrap();
        }
        let (p, cs) = load(&pd).unwrap();
        assert_eq!(p, rec);
        assert_eq!(cs.iter().map(|c| c.attempt).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(list_pods(dir.path()), vec!["u1".to_string()]);
    }
}
