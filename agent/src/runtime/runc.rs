//! The real runtime: `shoal pause` sandboxes, overlay mounts, and containers
//! run by `runc` under a `shoal shim` each.

use super::pause::process_start_time;
use super::{
    cgroups, read_exit, ContainerRuntime, ContainerState, ExitInfo, RuntimeError, SandboxInfo,
    Signal, StartRequest,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

/// Runs containers with runc.
pub struct RuncRuntime {
    runc: PathBuf,
    root: PathBuf,
    exe: PathBuf,
    /// Exit notifications from shims this process started (their parent is
    /// us, so their exit is the container's); adopted containers are polled.
    exits: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl RuncRuntime {
    /// `runc` binary, runc state root, and the `shoal` binary to re-exec as pause/shim.
    pub fn new(runc: PathBuf, root: PathBuf, exe: PathBuf) -> RuncRuntime {
        RuncRuntime {
            runc,
            root,
            exe,
            exits: Mutex::new(HashMap::new()),
        }
    }

    /// Whether runc can be run at all.
    pub fn available(&self) -> bool {
        std::process::Command::new(&self.runc)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// runc's version line, for the Node's containerRuntimeVersion.
    pub fn version(&self) -> Option<String> {
        let out = std::process::Command::new(&self.runc)
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v = text.lines().next()?.strip_prefix("runc version ")?.trim();
        Some(v.to_string())
    }

    fn runc(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.runc);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null());
        c
    }

    async fn runc_state(&self, id: &str) -> Option<(String, i32)> {
        let out = self.runc().args(["state", id]).output().await.ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some((
            v["status"].as_str()?.to_string(),
            v["pid"].as_i64().unwrap_or(0) as i32,
        ))
    }
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.to_string();
    move |e| RuntimeError::Io(what, e)
}

impl ContainerRuntime for RuncRuntime {
    fn start_sandbox<'a>(
        &'a self,
        dir: &'a Path,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<SandboxInfo, RuntimeError>> {
        async move {
            std::fs::create_dir_all(dir).map_err(io_err(dir.display()))?;
            let log = std::fs::File::create(dir.join("pause.log")).map_err(io_err("pause.log"))?;
            let mut child = tokio::process::Command::new(&self.exe)
                .arg0("shoal")
                .args(["pause", "--hostname", hostname])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .map_err(io_err(self.exe.display()))?;
            let pid = child.id().unwrap_or(0) as i32;
            let stdout = child.stdout.take().expect("piped stdout");
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            let read = reader.read_line(&mut line);
            let ok = tokio::time::timeout(Duration::from_secs(10), read).await;
            // Reap it whenever it ends (tokio also reaps dropped children).
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            match ok {
                Ok(Ok(_)) if line.trim() == "ready" => {}
                _ => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return Err(RuntimeError::Runc(format!(
                        "sandbox did not start: {}",
                        line.trim()
                    )));
                }
            }
            let start_time = process_start_time(pid).ok_or(RuntimeError::SandboxGone)?;
            Ok(SandboxInfo { pid, start_time })
        }
        .boxed()
    }

    fn sandbox_alive(&self, s: &SandboxInfo) -> bool {
        process_start_time(s.pid) == Some(s.start_time)
    }

    fn stop_sandbox(&self, s: &SandboxInfo) -> Result<(), RuntimeError> {
        if !self.sandbox_alive(s) {
            return Ok(());
        }
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(s.pid),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(RuntimeError::Sys("kill sandbox".into(), e)),
        }
    }

    fn mount_rootfs(
        &self,
        lower: &Path,
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<(), RuntimeError> {
        for d in [upper, work, target] {
            std::fs::create_dir_all(d).map_err(io_err(d.display()))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| RuntimeError::Sys(format!("mount overlay at {}", target.display()), e))
    }

    fn unmount_rootfs(&self, target: &Path) -> Result<(), RuntimeError> {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(RuntimeError::Sys(
                format!("unmount {}", target.display()),
                e,
            )),
        }
    }

    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<i32, RuntimeError>> {
        async move {
            let shim_log =
                std::fs::File::create(req.bundle.join("shim.log")).map_err(io_err("shim.log"))?;
            let mut child = tokio::process::Command::new(&self.exe)
                .arg0("shoal")
                .arg("shim")
                .arg("--id")
                .arg(&req.id)
                .arg("--bundle")
                .arg(&req.bundle)
                .arg("--runc")
                .arg(&self.runc)
                .arg("--root")
                .arg(&self.root)
                .arg("--log")
                .arg(&req.log_path)
                .arg("--cgroup-path")
                .arg(&req.cgroup_path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(shim_log))
                .spawn()
                .map_err(io_err(self.exe.display()))?;
            let stdout = child.stdout.take().expect("piped stdout");
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            let read = reader.read_line(&mut line);
            let read = tokio::time::timeout(Duration::from_secs(60), read).await;
            let (tx, rx) = watch::channel(false);
            self.exits
                .lock()
                .expect("exits lock")
                .insert(req.id.clone(), rx);
            tokio::spawn(async move {
                let _ = child.wait().await;
                let _ = tx.send(true);
            });
            match read {
                Ok(Ok(_)) => {}
                _ => return Err(RuntimeError::Runc("shim did not report".into())),
            }
            let line = line.trim();
            if let Some(pid) = line.strip_prefix("ok ") {
                pid.parse()
                    .map_err(|_| RuntimeError::Runc(format!("shim said {line:?}")))
            } else {
                Err(RuntimeError::Runc(
                    line.strip_prefix("err ").unwrap_or(line).to_string(),
                ))
            }
        }
        .boxed()
    }

    fn state<'a>(&'a self, id: &'a str, bundle: &'a Path) -> BoxFuture<'a, ContainerState> {
        async move {
            if let Some(exit) = read_exit(bundle) {
                return ContainerState::Exited(exit);
            }
            match self.runc_state(id).await {
                Some((status, pid)) if status == "running" || status == "paused" => {
                    ContainerState::Running(pid)
                }
                // Stopped with no exit record: the shim died with it; look again
                // in a moment in case it is writing the record right now.
                Some(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    read_exit(bundle)
                        .map(ContainerState::Exited)
                        .unwrap_or(ContainerState::Unknown)
                }
                None => ContainerState::Unknown,
            }
        }
        .boxed()
    }

    fn wait<'a>(&'a self, id: &'a str, bundle: &'a Path) -> BoxFuture<'a, ExitInfo> {
        async move {
            let rx = self.exits.lock().expect("exits lock").get(id).cloned();
            if let Some(mut rx) = rx {
                let _ = rx.wait_for(|done| *done).await;
                self.exits.lock().expect("exits lock").remove(id);
            }
            // Adopted containers (started by an earlier agent process) are not
            // our children: look at the exit record once a second, like
            // kubelet's relisting, and ask runc whether it is still running.
            let mut ticks = 0u32;
            loop {
                if let Some(exit) = read_exit(bundle) {
                    return exit;
                }
                ticks += 1;
                if ticks.is_multiple_of(10) {
                    if let ContainerState::Unknown = self.state(id, bundle).await {
                        return ExitInfo {
                            exit_code: 255,
                            signal: None,
                            finished_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                k8s_openapi::jiff::Timestamp::now(),
                            ),
                            oom_killed: false,
                            start_error: Some("container state lost".into()),
                        };
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        .boxed()
    }

    fn signal<'a>(
        &'a self,
        id: &'a str,
        signal: Signal,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            let out = self
                .runc()
                .args(["kill", id, signal.name()])
                .output()
                .await
                .map_err(io_err("runc kill"))?;
            if out.status.success() {
                return Ok(());
            }
            let msg = String::from_utf8_lossy(&out.stderr);
            // Already stopped or gone: nothing to signal.
            if msg.contains("not running") || msg.contains("does not exist") {
                return Ok(());
            }
            Err(RuntimeError::Runc(format!(
                "runc kill {id}: {}",
                msg.trim()
            )))
        }
        .boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            let out = self
                .runc()
                .args(["delete", "--force", id])
                .output()
                .await
                .map_err(io_err("runc delete"))?;
            let msg = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || msg.contains("does not exist") {
                Ok(())
            } else {
                Err(RuntimeError::Runc(format!(
                    "runc delete {id}: {}",
                    msg.trim()
                )))
            }
        }
        .boxed()
    }

    fn remove_pod_cgroup(&self, parent: &str) {
        cgroups::remove(parent);
    }

    fn exec_stream<'a>(
        &'a self,
        id: &'a str,
        argv: &'a [String],
        opts: super::stream::ExecStreamOptions,
    ) -> BoxFuture<'a, Result<super::stream::ExecSession, RuntimeError>> {
        super::stream::runc_exec_stream(&self.runc, &self.root, id, argv, opts).boxed()
    }

    fn exec_capture<'a>(
        &'a self,
        id: &'a str,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<super::ExecOutput, RuntimeError>> {
        async move {
            // `runc exec` takes the container's process spec (env, user, cwd,
            // capabilities) as the template and replaces the arguments.
            let dir = tempdir_for_exec(&self.root, id).map_err(io_err("exec pid file dir"))?;
            let pid_file = dir.join("pid");
            let mut child = self
                .runc()
                .arg("exec")
                .arg("--pid-file")
                .arg(&pid_file)
                .arg(id)
                .args(argv)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(io_err("runc exec"))?;
            let (out, err) = (child.stdout.take(), child.stderr.take());
            let output = std::sync::Arc::new(Mutex::new(Vec::new()));
            let collect = |r: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
                let output = output.clone();
                async move {
                    use tokio::io::AsyncReadExt;
                    let Some(mut r) = r else { return };
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut o = output.lock().expect("exec output lock");
                        let room = super::EXEC_CAPTURE_LIMIT.saturating_sub(o.len());
                        o.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            };
            let out = collect(out.map(|r| Box::new(r) as _));
            let err = collect(err.map(|r| Box::new(r) as _));
            let run = async {
                let (status, (), ()) = tokio::join!(child.wait(), out, err);
                status
            };
            let exit_code = match tokio::time::timeout(timeout, run).await {
                Ok(status) => {
                    let status = status.map_err(io_err("runc exec"))?;
                    use std::os::unix::process::ExitStatusExt;
                    Some(
                        status
                            .code()
                            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                    )
                }
                Err(_) => {
                    // Killing runc would leave the process running in the
                    // container: kill the process itself by its host pid.
                    if let Some(pid) = std::fs::read_to_string(&pid_file)
                        .ok()
                        .and_then(|p| p.trim().parse::<i32>().ok())
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    None
                }
            };
            let _ = std::fs::remove_dir_all(&dir);
            let output = std::mem::take(&mut *output.lock().expect("exec output lock"));
            Ok(super::ExecOutput { exit_code, output })
        }
        .boxed()
    }
}

/// A fresh directory for one exec's pid file, under the runc root's sibling.
fn tempdir_for_exec(root: &Path, id: &str) -> std::io::Result<PathBuf> {
    let dir = root
        .with_file_name("exec")
        .join(format!("{id}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
