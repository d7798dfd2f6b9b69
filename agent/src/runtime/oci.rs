//! The subset of the OCI runtime spec (config.json) that Shoal writes.
//! Hand-written rather than a crate's builder types: it is a few structs, and
//! keeping them plain makes the spec generation easy to read and test.

use serde::{Deserialize, Serialize};

/// An OCI runtime spec (`config.json` of a bundle).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// Spec version.
    pub oci_version: String,
    /// The container process.
    pub process: Process,
    /// The root filesystem.
    pub root: Root,
    /// Hostname (only with a private UTS namespace; containers join the sandbox's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Mounts, in order.
    pub mounts: Vec<Mount>,
    /// Linux-specific settings.
    pub linux: Linux,
}

/// The process to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Whether to allocate a terminal (never: output goes to the log pipes).
    pub terminal: bool,
    /// User and groups.
    pub user: User,
    /// argv.
    pub args: Vec<String>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Capability sets.
    pub capabilities: Capabilities,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// Set no_new_privs.
    pub no_new_privileges: bool,
}

/// Numeric user and groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

/// Linux capability sets (names like `CAP_KILL`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Bounding set.
    pub bounding: Vec<String>,
    /// Effective set.
    pub effective: Vec<String>,
    /// Permitted set.
    pub permitted: Vec<String>,
}

/// One rlimit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rlimit {
    /// e.g. `RLIMIT_NOFILE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Hard limit.
    pub hard: u64,
    /// Soft limit.
    pub soft: u64,
}

/// The root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Root {
    /// Path, relative to the bundle.
    pub path: String,
    /// Mount it read-only.
    pub readonly: bool,
}

/// A mount.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    /// Path inside the container.
    pub destination: String,
    /// Filesystem type (`bind`, `proc`, `tmpfs`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Source path or device.
    pub source: String,
    /// Mount options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Linux settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    /// cgroup limits.
    pub resources: Resources,
    /// cgroup path (absolute: under the agent's cgroup parent).
    pub cgroups_path: String,
    /// Namespaces to create (no path) or join (path).
    pub namespaces: Vec<Namespace>,
    /// Paths masked from the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    /// Paths made read-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
}

/// A namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    /// `pid`, `network`, `ipc`, `uts`, `mount`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Join the namespace at this path instead of creating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// cgroup resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Device rules (deny all but the defaults runc adds).
    pub devices: Vec<DeviceRule>,
    /// Memory limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// CPU limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
}

/// A device cgroup rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// Allow or deny.
    pub allow: bool,
    /// `rwm` subset.
    pub access: String,
}

/// Memory limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Hard limit in bytes.
    pub limit: i64,
}

/// CPU shares and quota.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Relative weight (cgroup v1 shares; runc maps it to v2 weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    /// CFS quota in µs per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    /// CFS period in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
}
