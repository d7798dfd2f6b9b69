//! `shoal pause`: the pod sandbox process.
//!
//! A sandbox only has to hold the pod's network, IPC and UTS namespaces so its
//! containers can join them by `/proc/<pid>/ns/*`. Re-executing the agent's own
//! binary for that needs no pause image and no rootfs: the process calls
//! `unshare(2)` on itself, sets the pod's hostname, brings loopback up, prints
//! `ready` and then sleeps in `sigwait` until SIGTERM/SIGINT. It calls `setsid`
//! first so it outlives the agent (the agent adopts it after a restart by pid
//! and start time) and is not hit by signals aimed at the agent's process group.
//! It must run before any thread is started: namespaces belong to threads, and
//! `/proc/<pid>/ns` shows the main thread's.

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use std::io::Write;

/// Run the sandbox process; returns the process exit code.
pub fn run(hostname: &str) -> i32 {
    if let Err(e) = setup(hostname) {
        println!("error: {e}");
        return 1;
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return 1;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => return 0,
            // SIGCHLD: nothing to reap but the `ip` helper already waited for.
            Ok(_) | Err(_) => continue,
        }
    }
}

fn setup(hostname: &str) -> Result<(), String> {
    let _ = nix::unistd::setsid();
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| format!("unshare: {e}"))?;
    nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname: {e}"))?;
    // A new network namespace starts with loopback down; children inherit the
    // namespace, so `ip` run from here configures the pod's. Pod interfaces
    // (veth, addresses) are the network module's job.
    match std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("ip link set lo up: {s}")),
        Err(e) => Err(format!("ip link set lo up: {e} (is iproute2 installed?)")),
    }
}

/// Start time (clock ticks since boot) of a process, from `/proc/<pid>/stat`.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields
    // after the last ')' start at field 3, so starttime (22) is index 19.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}
