//! A runtime that records calls and simulates containers, for unit tests of
//! pod logic without root or runc.

use super::{
    ContainerRuntime, ContainerState, ExitInfo, RuntimeError, SandboxInfo, Signal, StartRequest,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// One recorded call.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// start_sandbox(hostname).
    StartSandbox(String),
    /// stop_sandbox(pid).
    StopSandbox(i32),
    /// mount_rootfs(target).
    Mount(PathBuf),
    /// unmount_rootfs(target).
    Unmount(PathBuf),
    /// start(id).
    Start(String),
    /// signal(id, signal).
    Signal(String, Signal),
    /// remove(id).
    Remove(String),
}

/// Records calls; containers run until [`RecordingRuntime::exit`] or a signal ends them.
#[derive(Default)]
pub struct RecordingRuntime {
    calls: Mutex<Vec<Call>>,
    running: Mutex<HashSet<String>>,
    exits: Mutex<HashMap<String, ExitInfo>>,
    changed: tokio::sync::Notify,
    next_pid: AtomicI32,
    ignore_term: bool,
    /// exec_capture calls (container id, argv) and the exit code they get.
    execs: Mutex<Vec<(String, Vec<String>)>>,
    exec_exit_code: AtomicI32,
}

impl RecordingRuntime {
    /// A runtime whose containers stop on SIGTERM.
    pub fn new() -> RecordingRuntime {
        RecordingRuntime::default()
    }

    /// A runtime whose containers ignore SIGTERM (like a shell as pid 1 without a trap).
    pub fn ignoring_term() -> RecordingRuntime {
        RecordingRuntime {
            ignore_term: true,
            ..RecordingRuntime::default()
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }

    /// Ids of started containers, in order.
    pub fn started(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Start(id) => Some(id),
                _ => None,
            })
            .collect()
    }

    /// Make a running container exit with `code`.
    pub fn exit(&self, id: &str, code: i32) {
        self.running.lock().expect("lock").remove(id);
        self.exits.lock().expect("lock").insert(
            id.to_string(),
            ExitInfo {
                exit_code: code,
                signal: (code > 128).then_some(code - 128),
                finished_at: Time(k8s_openapi::jiff::Timestamp::now()),
                oom_killed: false,
                start_error: None,
            },
        );
        self.changed.notify_waiters();
    }

    /// Whether a container is running.
    pub fn is_running(&self, id: &str) -> bool {
        self.running.lock().expect("lock").contains(id)
    }

    /// Make every later `exec_capture` exit with `code` (0 until set).
    pub fn set_exec_exit_code(&self, code: i32) {
        self.exec_exit_code.store(code, Ordering::SeqCst);
    }

    /// The `exec_capture` calls so far: (container id, argv).
    pub fn execs(&self) -> Vec<(String, Vec<String>)> {
        self.execs.lock().expect("lock").clone()
    }

    fn record(&self, c: Call) {
        self.calls.lock().expect("lock").push(c);
    }
}

impl ContainerRuntime for RecordingRuntime {
    fn start_sandbox<'a>(
        &'a self,
        _dir: &'a Path,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<SandboxInfo, RuntimeError>> {
        self.record(Call::StartSandbox(hostname.to_string()));
        let pid = 1000 + self.next_pid.fetch_add(1, Ordering::SeqCst);
        async move { Ok(SandboxInfo { pid, start_time: 1 }) }.boxed()
    }

    fn sandbox_alive(&self, _s: &SandboxInfo) -> bool {
        true
    }

    fn stop_sandbox(&self, s: &SandboxInfo) -> Result<(), RuntimeError> {
        self.record(Call::StopSandbox(s.pid));
        Ok(())
    }

    fn mount_rootfs(&self, _l: &Path, _u: &Path, _w: &Path, t: &Path) -> Result<(), RuntimeError> {
        self.record(Call::Mount(t.to_path_buf()));
        Ok(())
    }

    fn unmount_rootfs(&self, t: &Path) -> Result<(), RuntimeError> {
        self.record(Call::Unmount(t.to_path_buf()));
        Ok(())
    }

    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<i32, RuntimeError>> {
        self.record(Call::Start(req.id.clone()));
        self.running.lock().expect("lock").insert(req.id.clone());
        let pid = 2000 + self.next_pid.fetch_add(1, Ordering::SeqCst);
        async move { Ok(pid) }.boxed()
    }

    fn state<'a>(&'a self, id: &'a str, _b: &'a Path) -> BoxFuture<'a, ContainerState> {
        let s = if let Some(e) = self.exits.lock().expect("lock").get(id) {
            ContainerState::Exited(e.clone())
        } else if self.is_running(id) {
            ContainerState::Running(1)
        } else {
            ContainerState::Unknown
        };
        async move { s }.boxed()
    }

    fn wait<'a>(&'a self, id: &'a str, _b: &'a Path) -> BoxFuture<'a, ExitInfo> {
        async move {
            loop {
                let notified = self.changed.notified();
                if let Some(e) = self.exits.lock().expect("lock").get(id) {
                    return e.clone();
                }
                notified.await;
            }
        }
        .boxed()
    }

    fn signal<'a>(
        &'a self,
        id: &'a str,
        signal: Signal,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        self.record(Call::Signal(id.to_string(), signal));
        if self.is_running(id) && (signal == Signal::Kill || !self.ignore_term) {
            self.exit(id, if signal == Signal::Kill { 137 } else { 143 });
        }
        async move { Ok(()) }.boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        self.record(Call::Remove(id.to_string()));
        async move { Ok(()) }.boxed()
    }

    fn remove_pod_cgroup(&self, _parent: &str) {}

    fn exec_capture<'a>(
        &'a self,
        id: &'a str,
        argv: &'a [String],
        _timeout: std::time::Duration,
    ) -> BoxFuture<'a, Result<super::ExecOutput, RuntimeError>> {
        self.execs
            .lock()
            .expect("lock")
            .push((id.to_string(), argv.to_vec()));
        let running = self.is_running(id);
        let code = self.exec_exit_code.load(Ordering::SeqCst);
        async move {
            if !running {
                return Err(RuntimeError::Runc(format!("container {id} is not running")));
            }
            Ok(super::ExecOutput {
                exit_code: Some(code),
                output: format!("exit {code}\n").into_bytes(),
            })
        }
        .boxed()
    }
}
