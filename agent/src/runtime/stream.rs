//! Interactive exec: `runc exec` with the process's stdio handed to the
//! caller as streams (what `kubectl exec` needs), with or without a terminal.
//!
//! Without a terminal, runc passes its own stdin/stdout/stderr pipes through
//! to the process. With one (`runc exec --tty`, in the foreground), runc
//! makes a pty inside the container and copies between it and its own
//! stdio, which must itself be a terminal for runc to put it in raw mode and
//! follow its size: so the agent opens a pty pair, gives runc the slave as
//! stdin/stdout/stderr and keeps the master. A resize sets the master's
//! window size and sends runc `SIGWINCH`, on which runc copies the size to
//! the container's pty. (runc's `--console-socket` would hand over the
//! container's pty master directly, but only with `--detach`, after which
//! the process is no longer runc's child and its exit code is lost.)

use super::RuntimeError;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// What an interactive exec asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecStreamOptions {
    /// The caller sends input.
    pub stdin: bool,
    /// Run the process on a terminal (stdout and stderr merged on it).
    pub tty: bool,
}

/// Sets a terminal's size (columns, rows).
pub type Resizer = Arc<dyn Fn(u16, u16) + Send + Sync>;

/// A running interactive exec.
pub struct ExecSession {
    /// The process's input, if requested.
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Its output (with a terminal: everything it prints).
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Its error output (None with a terminal).
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Resizes the terminal (only with `tty`).
    pub resize: Option<Resizer>,
    /// Resolves to the exit code (128 + signal when killed by one).
    pub wait: BoxFuture<'static, Result<i32, RuntimeError>>,
    /// Kills the process (when the caller goes away before it ends).
    pub kill: Box<dyn FnOnce() + Send>,
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Io(what.to_string(), e)
}

/// A private directory for one exec's pid file.
fn exec_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("shoal-exec-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// Start `argv` in container `id` under `runc --root root`.
pub async fn runc_exec_stream(
    runc: &Path,
    root: &Path,
    id: &str,
    argv: &[String],
    opts: ExecStreamOptions,
) -> Result<ExecSession, RuntimeError> {
    if argv.is_empty() {
        return Err(RuntimeError::Runc("no command given".into()));
    }
    let dir = exec_dir().map_err(io_err("exec directory"))?;
    let pid_file = dir.join("pid");
    let mut cmd = tokio::process::Command::new(runc);
    cmd.arg("--root").arg(root).arg("exec");
    cmd.arg("--pid-file").arg(&pid_file);
    let pty = if opts.tty {
        cmd.arg("--tty");
        let (master, slave) = open_pty()?;
        let (out, err) = (
            slave.try_clone().map_err(io_err("pty"))?,
            slave.try_clone().map_err(io_err("pty"))?,
        );
        cmd.stdin(Stdio::from(slave))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        Some(master)
    } else {
        cmd.stdin(if opts.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        None
    };
    cmd.arg(id).args(argv);
    let mut child = cmd.spawn().map_err(io_err("runc exec"))?;
    // Our copies of the pty slave must go, or its master never reports the end.
    drop(cmd);
    let kill_dir = dir.clone();
    let kill: Box<dyn FnOnce() + Send> = Box::new(move || {
        // Killing runc would leave the process running in the container:
        // signal the process itself, by the pid runc recorded.
        if let Some(pid) = std::fs::read_to_string(kill_dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let mut session = ExecSession {
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        wait: async { Ok(0) }.boxed(),
        kill,
    };
    if let Some(master) = pty {
        let reader = master;
        let writer = reader.try_clone().map_err(io_err("pty"))?;
        let sizer = reader.try_clone().map_err(io_err("pty"))?;
        session.stdout = Some(Box::new(PtyReader(tokio::fs::File::from_std(reader))));
        if opts.stdin {
            session.stdin = Some(Box::new(tokio::fs::File::from_std(writer)));
        }
        let runc_pid = child.id().map(|p| p as i32);
        session.resize = Some(Arc::new(move |cols: u16, rows: u16| {
            let ws = rustix::termios::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            if rustix::termios::tcsetwinsize(&sizer, ws).is_ok() {
                if let Some(pid) = runc_pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGWINCH,
                    );
                }
            }
        }));
    } else {
        session.stdin = child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>);
        session.stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>);
        session.stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>);
    }
    session.wait = async move {
        let status = child.wait().await.map_err(io_err("runc exec"));
        let _ = std::fs::remove_dir_all(&dir);
        use std::os::unix::process::ExitStatusExt;
        let status = status?;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
    .boxed();
    Ok(session)
}

/// A new pty pair: (master, slave), neither our controlling terminal.
fn open_pty() -> Result<(std::fs::File, std::fs::File), RuntimeError> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let sys = |e: rustix::io::Errno| RuntimeError::Io("pty".into(), e.into());
    let master =
        openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).map_err(sys)?;
    grantpt(&master).map_err(sys)?;
    unlockpt(&master).map_err(sys)?;
    let name = ptsname(&master, Vec::new()).map_err(sys)?;
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name.as_bytes()));
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(&path)
        .map_err(io_err("pty slave"))?;
    Ok((std::fs::File::from(master), slave))
}

/// Reads a pty master, ending at EIO (which is how a pty reports that the
/// other side has closed).
struct PtyReader(tokio::fs::File);

impl AsyncRead for PtyReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// The default for runtimes that cannot stream an exec.
pub fn unsupported<'a>() -> BoxFuture<'a, Result<ExecSession, RuntimeError>> {
    async {
        Err(RuntimeError::Runc(
            "interactive exec is not supported by this runtime".into(),
        ))
    }
    .boxed()
}
