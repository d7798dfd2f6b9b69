//! `shoal shim`: the per-container monitor process, like containerd's shim or
//! CRI-O's conmon.
//!
//! Someone has to be the parent of a container's init process to learn its
//! exit code, and to keep draining its stdout/stderr into the log file, even
//! while the agent restarts. The shim makes itself a session leader (so it
//! outlives the agent) and a child subreaper, runs `runc run --detach` with
//! pipes as the container's stdio (runc's pass-through mode), so the container
//! init is reparented to it when runc exits. It prints `ok <pid>` (or
//! `err <reason>`) on stdout for the agent, copies output into the CRI log,
//! reaps children until the container init exits, and writes `exit.json` in
//! the bundle (after the log is flushed, so a reader that sees the exit sees
//! all output).

use super::{cgroups, write_atomic, ExitInfo};
use crate::logs;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nix::sys::wait::{wait, WaitStatus};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the shim is told on its command line.
#[derive(Debug, Clone)]
pub struct ShimArgs {
    /// runc container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// runc binary.
    pub runc: PathBuf,
    /// runc state root.
    pub root: PathBuf,
    /// CRI log file to append to.
    pub log: PathBuf,
    /// The container's cgroup path, for OOM detection.
    pub cgroup_path: String,
}

/// Run the shim; returns the process exit code.
pub fn run(args: ShimArgs) -> i32 {
    let _ = nix::unistd::setsid();
    let _ = nix::sys::prctl::set_child_subreaper(true);
    match start(&args) {
        Ok((pid, copiers)) => {
            report(&format!("ok {pid}"));
            let exit = wait_for(pid, &args);
            // Output is complete once every writer (the container's processes)
            // is gone; do not hang on a stray holder of the pipe.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for c in copiers {
                    let _ = c.join();
                }
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(2));
            write_exit(&args, &exit);
            0
        }
        Err(reason) => {
            let exit = ExitInfo {
                exit_code: 128,
                signal: None,
                finished_at: now(),
                oom_killed: false,
                start_error: Some(reason.clone()),
            };
            write_exit(&args, &exit);
            report(&format!("err {}", reason.replace('\n', " ")));
            1
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn report(line: &str) {
    // The agent may be gone (it restarted); a failed write is not an error.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn write_exit(args: &ShimArgs, exit: &ExitInfo) {
    if let Ok(bytes) = serde_json::to_vec(exit) {
        let _ = write_atomic(&args.bundle.join("exit.json"), &bytes);
    }
}

type Copiers = Vec<std::thread::JoinHandle<()>>;

fn start(args: &ShimArgs) -> Result<(i32, Copiers), String> {
    if let Some(dir) = args.log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .map_err(|e| format!("{}: {e}", args.log.display()))?;
    let log = Arc::new(Mutex::new(log));
    let (out_r, out_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let pid_file = args.bundle.join("container.pid");
    let runc_log = args.bundle.join("runc.log");
    let status = Command::new(&args.runc)
        .arg("--root")
        .arg(&args.root)
        .arg("--log")
        .arg(&runc_log)
        .args(["--log-format", "json", "run", "--detach", "--pid-file"])
        .arg(&pid_file)
        .arg("--bundle")
        .arg(&args.bundle)
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .map_err(|e| format!("{}: {e}", args.runc.display()))?;
    // The write ends moved into the Command and are closed now, so EOF on the
    // read ends means the container's processes are gone.
    let copiers = vec![
        copy_stream(File::from(out_r), "stdout", log.clone()),
        copy_stream(File::from(err_r), "stderr", log),
    ];
    if !status.success() {
        return Err(runc_error(&runc_log).unwrap_or_else(|| format!("runc run: {status}")));
    }
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("runc wrote no pid to {}", pid_file.display()))?;
    Ok((pid, copiers))
}

/// The last error runc logged (its JSON log has `level` and `msg`).
fn runc_error(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["level"] == "error" || v["level"] == "fatal")
            .then(|| v["msg"].as_str().map(str::to_string))
            .flatten()
    })
}

fn copy_stream(
    src: File,
    stream: &'static str,
    log: Arc<Mutex<File>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(64 * 1024, src);
        let mut line = Vec::new();
        loop {
            line.clear();
            // Read up to a newline, but never more than MAX_LINE at once.
            let n = match (&mut r)
                .take(logs::MAX_LINE as u64)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let partial = line.last() != Some(&b'\n');
            let text = if partial { &line[..n] } else { &line[..n - 1] };
            let rec = logs::format_record(&now().0.to_string(), stream, partial, text);
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&rec);
            }
        }
    })
}

fn wait_for(pid: i32, args: &ShimArgs) -> ExitInfo {
    let (code, signal) = loop {
        match wait() {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => break (code, None),
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                break (128 + sig as i32, Some(sig as i32))
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                // Not our descendant after all (should not happen with the
                // subreaper): watch /proc until it is gone; the code is unknown.
                while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                break (255, None);
            }
        }
    };
    let oom_killed = signal == Some(9) && cgroups::oom_killed(&args.cgroup_path);
    ExitInfo {
        exit_code: code,
        signal,
        finished_at: now(),
        oom_killed,
        start_error: None,
    }
}
