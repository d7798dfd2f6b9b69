//! cgroup paths: finding a container's cgroup directories under v1 (one
//! hierarchy per controller) or v2 (one unified tree), reading OOM kills, and
//! removing a pod's parent. runc applies the limits itself from the spec.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Whether the machine runs cgroup v2 only (no v1 controllers mounted).
pub fn is_unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// Every hierarchy root a cgroup path exists under: the v1 controller mounts
/// (named once each; `cpu,cpuacct` style symlinks are skipped) and the v2 tree.
pub fn hierarchies() -> Vec<PathBuf> {
    if is_unified() {
        return vec![PathBuf::from(ROOT)];
    }
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(ROOT) {
        for e in entries.flatten() {
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The directory of `cgroup_path` for the memory controller.
pub fn memory_dir(cgroup_path: &str) -> PathBuf {
    let rel = cgroup_path.trim_start_matches('/');
    if is_unified() {
        Path::new(ROOT).join(rel)
    } else {
        Path::new(ROOT).join("memory").join(rel)
    }
}

/// The memory limit in bytes set on a cgroup (None if unlimited or absent).
pub fn memory_limit(cgroup_path: &str) -> Option<u64> {
    let dir = memory_dir(cgroup_path);
    let text = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(dir.join("memory.max")))
        .ok()?;
    text.trim().parse().ok()
}

/// Whether the kernel's OOM killer killed a process in this cgroup
/// (`oom_kill` in v1 `memory.oom_control` or v2 `memory.events`).
pub fn oom_killed(cgroup_path: &str) -> bool {
    let dir = memory_dir(cgroup_path);
    for file in ["memory.oom_control", "memory.events"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            if let Some(n) = text.lines().find_map(|l| l.strip_prefix("oom_kill ")) {
                return n.trim().parse::<u64>().unwrap_or(0) > 0;
            }
        }
    }
    false
}

/// Remove a (now empty) cgroup directory from every hierarchy; errors are
/// ignored because a controller may never have created it.
pub fn remove(cgroup_path: &str) {
    let rel = cgroup_path.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    for h in hierarchies() {
        let _ = std::fs::remove_dir(h.join(rel));
    }
}
