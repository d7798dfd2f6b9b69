//! The container runtime seam: a narrow trait over what the pod logic needs
//! from the OS (sandboxes, rootfs mounts, runc), with the real implementation
//! in [`runc`] and a recording one in [`recording`] for unit tests, like
//! youki's `Syscall` trait.

pub mod cgroups;
pub mod oci;
pub mod pause;
pub mod recording;
pub mod runc;
pub mod shim;
pub mod stream;

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors from the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A filesystem or process-spawning failure.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(String, nix::Error),
    /// runc (or the shim) reported a failure.
    #[error("{0}")]
    Runc(String),
    /// The sandbox process is gone.
    #[error("sandbox is not running")]
    SandboxGone,
}

/// A running pod sandbox: the `shoal pause` process holding the pod's
/// network, IPC and UTS namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    /// Its pid.
    pub pid: i32,
    /// Its start time in clock ticks since boot (field 22 of /proc/pid/stat),
    /// so a recycled pid is never mistaken for the sandbox.
    pub start_time: u64,
}

impl SandboxInfo {
    /// `/proc/<pid>/ns/<kind>` of the sandbox.
    pub fn ns_path(&self, kind: &str) -> String {
        format!("/proc/{}/ns/{kind}", self.pid)
    }
}

/// What starting a container needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    /// runc container id.
    pub id: String,
    /// Bundle directory (holds config.json; the shim writes exit.json here).
    pub bundle: PathBuf,
    /// File the container's stdout and stderr go to (CRI log format).
    pub log_path: PathBuf,
    /// The container's cgroup path (as in the spec), to detect OOM kills.
    pub cgroup_path: String,
}

/// How a container ended, written by the shim to `<bundle>/exit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    /// Exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// When it ended.
    pub finished_at: Time,
    /// Killed by the kernel's OOM killer in its memory cgroup.
    #[serde(default)]
    pub oom_killed: bool,
    /// The process never started; runc's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_error: Option<String>,
}

/// A container's state as the runtime sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerState {
    /// Running with this host pid.
    Running(i32),
    /// Ended.
    Exited(ExitInfo),
    /// runc does not know it and there is no exit record.
    Unknown,
}

/// Signals the agent sends to containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Polite stop.
    Term,
    /// Forced stop.
    Kill,
}

impl Signal {
    /// runc's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

/// The operations pod logic needs from the machine.
pub trait ContainerRuntime: Send + Sync {
    /// Start a sandbox for a pod whose hostname is `hostname`; `dir` is the pod's directory.
    fn start_sandbox<'a>(
        &'a self,
        dir: &'a Path,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<SandboxInfo, RuntimeError>>;
    /// Whether the sandbox process still runs.
    fn sandbox_alive(&self, sandbox: &SandboxInfo) -> bool;
    /// Kill the sandbox (its namespaces go away with the last member).
    fn stop_sandbox(&self, sandbox: &SandboxInfo) -> Result<(), RuntimeError>;
    /// Mount an overlay at `target` with `lower` read-only and `upper`/`work` for writes.
    fn mount_rootfs(
        &self,
        lower: &Path,
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<(), RuntimeError>;
    /// Unmount a container root (no error if it is not mounted).
    fn unmount_rootfs(&self, target: &Path) -> Result<(), RuntimeError>;
    /// Create and start the container of a prepared bundle; returns its host pid.
    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<i32, RuntimeError>>;
    /// Current state of a container.
    fn state<'a>(&'a self, id: &'a str, bundle: &'a Path) -> BoxFuture<'a, ContainerState>;
    /// Resolve when the container has exited.
    fn wait<'a>(&'a self, id: &'a str, bundle: &'a Path) -> BoxFuture<'a, ExitInfo>;
    /// Send a signal to the container's init process.
    fn signal<'a>(&'a self, id: &'a str, signal: Signal)
        -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Forget a container (runc delete --force), no error if unknown.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Remove a pod's cgroup parent once its containers are gone.
    fn remove_pod_cgroup(&self, parent: &str);
    /// Run `argv` in running container `id` without a terminal or stdin,
    /// capturing stdout and stderr (interleaved, capped at
    /// [`EXEC_CAPTURE_LIMIT`]); the process is killed after `timeout`. For
    /// exec probes; interactive exec is separate.
    fn exec_capture<'a>(
        &'a self,
        id: &'a str,
        argv: &'a [String],
        timeout: std::time::Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, RuntimeError>>;
    /// Start `argv` in running container `id` with its stdio streamed to the
    /// caller (`kubectl exec`, see [`stream`]); runtimes without it refuse.
    fn exec_stream<'a>(
        &'a self,
        id: &'a str,
        argv: &'a [String],
        opts: stream::ExecStreamOptions,
    ) -> BoxFuture<'a, Result<stream::ExecSession, RuntimeError>> {
        let _ = (id, argv, opts);
        stream::unsupported()
    }
}

/// How much output [`ContainerRuntime::exec_capture`] keeps (kubelet keeps 10 KiB of probe output).
pub const EXEC_CAPTURE_LIMIT: usize = 10 * 1024;

/// What a non-interactive exec produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's exit code (None if it timed out and was killed).
    pub exit_code: Option<i32>,
    /// Its stdout and stderr, truncated to [`EXEC_CAPTURE_LIMIT`].
    pub output: Vec<u8>,
}

/// Read an exit record written by the shim.
pub fn read_exit(bundle: &Path) -> Option<ExitInfo> {
    let bytes = std::fs::read(bundle.join("exit.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Write a file atomically (temp file + rename), so readers never see half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
