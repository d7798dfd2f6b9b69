//! Finding a pod and its containers from what the agent keeps on disk
//! (`pods::state`), so the API needs nothing from the pod workers.

use crate::pods::state::{self, ContainerRecord, PodRecord};
use std::path::{Path, PathBuf};

/// A pod the agent has state for.
#[derive(Debug, Clone)]
pub struct PodOnDisk {
    /// Its state directory.
    pub dir: PathBuf,
    /// The pod record.
    pub record: PodRecord,
    /// Its container attempts, sorted by (init, name, attempt).
    pub containers: Vec<ContainerRecord>,
}

impl PodOnDisk {
    /// The latest attempt of container `name`.
    pub fn latest(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers
            .iter()
            .filter(|c| c.name == name)
            .max_by_key(|c| c.attempt)
    }

    /// The attempt `attempt` of container `name`.
    pub fn attempt(&self, name: &str, attempt: u32) -> Option<&ContainerRecord> {
        self.containers
            .iter()
            .find(|c| c.name == name && c.attempt == attempt)
    }

    /// The bundle directory of a container attempt.
    pub fn bundle(&self, c: &ContainerRecord) -> PathBuf {
        state::container_dir(&self.dir, &c.id)
    }
}

/// Find pod `namespace/name` (with `uid` if given; otherwise the most
/// recently started one of that name).
pub fn find_pod(
    data_dir: &Path,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
) -> Option<PodOnDisk> {
    let uids = match uid {
        Some(u) => vec![u.to_string()],
        None => state::list_pods(data_dir),
    };
    uids.into_iter()
        .filter_map(|u| {
            let dir = state::pod_dir(data_dir, &u);
            let (record, containers) = state::load(&dir)?;
            (record.namespace == namespace && record.name == name).then_some(PodOnDisk {
                dir,
                record,
                containers,
            })
        })
        .max_by(|a, b| {
            let t = |p: &PodOnDisk| p.record.start_time.as_ref().map(|t| t.0);
            t(a).cmp(&t(b))
        })
}
