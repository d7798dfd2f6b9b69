//! Helpers for end-to-end tests: start and stop a real `shoal server` process.
#![allow(dead_code)]

pub mod kubectl;
pub mod lab;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Flags every test that runs `shoal agent` or `shoal up` in the machine's
/// own network namespace passes, so no test creates bridges, veths or
/// routes there (tests/e2e_network.rs runs agents in namespaces of its own).
pub const NO_POD_NETWORK: [&str; 2] = ["--pod-network", "none"];

/// A running `shoal server` child process.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub url: String,
}

/// A free loopback port, picked below the kernel's ephemeral range
/// (32768 and up by default): a port the kernel hands out for an outgoing
/// connection (a kubectl, an agent, a watch) can be taken again before the
/// server binds it, so ports from `127.0.0.1:0` race with every connection
/// the parallel tests make.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Ports already handed out in this process: the bind check below
    // releases the port at once, so without this two parallel tests could
    // be given the same one before either server binds it.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 20);
    for _ in 0..1000 {
        let n = seed.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed));
        let port = 20_000 + (n % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000");
}

impl Server {
    /// Start a server on `port` with `data_dir`, waiting for its ready line.
    pub fn start_on(data_dir: &Path, port: u16, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shoal server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("ready") {
                    let _ = tx.send(line.clone());
                }
                line.clear();
            }
        });
        let started = Instant::now();
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not print a ready line within {:?}",
                    started.elapsed()
                );
            }
        }
        Server {
            child,
            data_dir: data_dir.to_path_buf(),
            kubeconfig: data_dir.join("admin.kubeconfig"),
            url: format!("https://127.0.0.1:{port}"),
        }
    }

    /// Start on a fresh port.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_on(data_dir, free_port(), &[])
    }

    /// The port this server listens on.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        send_signal(&self.child, libc::SIGTERM);
        let status = wait_timeout(&mut self.child, Duration::from_secs(20));
        status.is_some_and(|s| s.success())
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        send_signal(&self.child, libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// A kube-rs client for this server's admin kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(&self.child, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn send_signal(child: &Child, sig: i32) {
    // Signal our own child by PID (never by name).
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

fn wait_timeout(child: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < d {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Remove what an agent (stopped or killed) left on the machine under its
/// data dir: runc containers, the pods' sandbox processes (checked by start
/// time before the kill), rootfs mounts and pod cgroups.
pub fn clean_node(agent_dir: &Path) {
    let runc_root = agent_dir.join("runc");
    for e in std::fs::read_dir(&runc_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force"])
            .arg(e.file_name())
            .stderr(Stdio::null())
            .status();
    }
    for uid in std::fs::read_dir(agent_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let rec: serde_json::Value = std::fs::read(uid.path().join("pod.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        if let (Some(pid), Some(start)) = (
            rec["sandbox"]["pid"].as_i64(),
            rec["sandbox"]["startTime"].as_u64(),
        ) {
            if shoal_agent::runtime::pause::process_start_time(pid as i32) == Some(start) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
        for c in std::fs::read_dir(uid.path().join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(c.path().join("rootfs"))
                .stderr(Stdio::null())
                .status();
        }
        if let Some(name) = uid.file_name().to_str() {
            shoal_agent::runtime::cgroups::remove(&format!("/shoal/pod{name}"));
        }
    }
}

/// Whether a 64-bit ELF file names a program interpreter (is dynamically
/// linked): such a busybox cannot run in an image holding nothing but itself.
pub fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return true;
    }
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let o = phoff + i * size;
        elf.get(o..o + 4) == Some(&3u32.to_le_bytes()[..]) // PT_INTERP
    })
}

/// An image directory for the agent's `--image-dir`: `busybox` with a root
/// made from the machine's static /bin/busybox and its applet links, plus
/// `extra_dirs` at the root.
pub fn build_images(dir: &Path, extra_dirs: &[&str]) -> PathBuf {
    let images = dir.join("images");
    let root = images.join("busybox/rootfs");
    let dirs = ["bin", "etc", "tmp", "proc", "sys", "dev", "root"];
    for d in dirs.iter().chain(extra_dirs) {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(images.join("busybox/config.json"), r#"{"cmd": ["sh"]}"#).unwrap();
    images
}
