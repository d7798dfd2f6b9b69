//! Test hosts in network namespaces for multi-node end-to-end tests: a
//! "switch" namespace holds a bridge; each host (server, agents, outside
//! clients) gets a namespace of its own with `eth0` on that bridge and IPv4
//! and IPv6 addresses from private test ranges. Nothing touches the
//! machine's own links, routes, sysctls or nftables: every link is created
//! inside the test's namespaces, and processes enter them with `nsenter
//! --net` (not `ip netns exec`, which also remounts /sys and so hides the
//! cgroup mounts runc needs). Everything is removed on drop, also on failure.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Why a lab test cannot run here, if it cannot (root, runc, nsenter,
/// iproute2, a static /bin/busybox, plus `extra_tools` as (program, version flag)).
pub fn unsupported(extra_tools: &[(&str, &str)]) -> Option<String> {
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Some("not running as root".into());
    }
    let base = [
        ("runc", "--version"),
        ("nsenter", "--version"),
        ("ip", "-V"),
    ];
    for (tool, arg) in base.iter().chain(extra_tools) {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

/// Run a command that must succeed.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The test's network namespaces: a switch and one per host. Dropping it
/// deletes them, and with them every link, address, route and nftables table inside.
pub struct Lab {
    tag: String,
    made: Vec<String>,
    /// Host names added with [`Lab::add_host`], in order.
    pub hosts: Vec<String>,
}

impl Lab {
    /// A lab whose namespaces are named `<prefix><pid>-<host>`.
    pub fn new(prefix: &str) -> Lab {
        let mut lab = Lab {
            tag: format!("{prefix}{}", std::process::id()),
            made: Vec::new(),
            hosts: Vec::new(),
        };
        let sw = lab.add_ns("sw");
        run(Command::new("ip").args(["-n", &sw, "link", "add", "br0", "type", "bridge"]));
        run(Command::new("ip").args(["-n", &sw, "link", "set", "br0", "up"]));
        lab
    }

    /// The namespace name of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    fn add_ns(&mut self, host: &str) -> String {
        let name = self.ns(host);
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]));
        self.made.push(name.clone());
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        name
    }

    /// A host namespace with `eth0` on the switch, addressed `v4`/24 and
    /// `v6`/64 (without duplicate address detection, so usable at once).
    pub fn add_host(&mut self, host: &str, v4: &str, v6: &str) {
        let ns = self.add_ns(host);
        self.hosts.push(host.to_string());
        let sw = self.ns("sw");
        let port = format!("p-{host}");
        // Both ends are created inside the test's namespaces, never in the machine's.
        run(Command::new("ip").args([
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]));
        run(Command::new("ip").args(["-n", &sw, "link", "set", &port, "master", "br0", "up"]));
        run(Command::new("ip").args([
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            "eth0",
        ]));
        run(Command::new("ip").args([
            "-n",
            &ns,
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]));
        run(Command::new("ip").args(["-n", &ns, "link", "set", "eth0", "up"]));
    }

    /// A command run inside `host`'s network namespace.
    pub fn cmd(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns(host)))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// A child process killed (by PID) on drop.
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.kill9();
        }
    }
}

/// Wait for a line containing `ready` on a child's stdout.
pub fn wait_ready(child: &mut Child, what: &str) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("ready") {
                let _ = tx.send(());
            }
            line.clear();
        }
    });
    rx.recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| panic!("{what} printed no ready line"));
}

/// The agents: killed and cleaned up on drop (before the namespaces go).
pub struct Agents {
    /// One per node; None once killed by the test.
    pub procs: Vec<Option<Proc>>,
    /// Their data directories.
    pub dirs: Vec<PathBuf>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            p.kill9();
        }
        for d in &self.dirs {
            super::clean_node(d);
        }
    }
}

/// The `shoal` binary under test.
const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// The lab and the server's admin kubeconfig.
pub struct Cluster {
    /// The namespaces.
    pub lab: Lab,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The server's data directory (its CA issues node identities).
    pub server_dir: PathBuf,
    /// The server's URL as the agents reach it.
    pub server_url: String,
}

impl Cluster {
    /// Start `shoal server` in the lab's `server` host, listening on
    /// `listen_v4:6443` with `extra` flags, its data in `dir/server` and its
    /// log in `dir/server.log`; returns once it is ready.
    pub fn start(lab: Lab, dir: &Path, listen_v4: &str, extra: &[&str]) -> (Cluster, Proc) {
        let server_dir = dir.join("server");
        let listen = format!("{listen_v4}:6443");
        let mut server = Proc(
            lab.cmd("server", SHOAL)
                .args(["server", "--data-dir"])
                .arg(&server_dir)
                .args(["--listen", &listen])
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.join("server.log")).unwrap(),
                ))
                .spawn()
                .unwrap(),
        );
        wait_ready(&mut server.0, "shoal server");
        let cluster = Cluster {
            kubeconfig: server_dir.join("admin.kubeconfig"),
            server_dir,
            server_url: format!("https://{listen}"),
            lab,
        };
        (cluster, server)
    }

    /// Build the busybox test image (examples/build-busybox-image.sh) in
    /// `dir` and import it into the server's registry.
    pub fn import_busybox(&self, dir: &Path) {
        let tar = dir.join("busybox.tar");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/build-busybox-image.sh"
        );
        run(Command::new("bash")
            .arg(script)
            .arg(&tar)
            .stdout(Stdio::null()));
        run(self
            .lab
            .cmd("server", SHOAL)
            .args(["image", "import", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .arg(&tar));
    }

    /// Node `name`'s identity (`system:node:NAME`), issued by the server's CA
    /// and written to `dir/<name>.kubeconfig`.
    pub fn node_kubeconfig(&self, name: &str, dir: &Path) -> PathBuf {
        let out = run(Command::new(SHOAL)
            .args(["kubeconfig", "node", name, "--data-dir"])
            .arg(&self.server_dir)
            .args(["--server", &self.server_url]));
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }

    /// Start `shoal agent` for node `name` in its host with the kubeconfig
    /// from [`Cluster::node_kubeconfig`], its data in `dir/<name>`, its log
    /// appended to `dir/<name>.log` (a restarted agent keeps the earlier
    /// lines) and `extra` flags; returns once it is ready.
    pub fn start_agent(&self, name: &str, dir: &Path, extra: &[&str]) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .unwrap();
        let mut child = self
            .lab
            .cmd(name, SHOAL)
            .arg("agent")
            .arg("--kubeconfig")
            .arg(dir.join(format!("{name}.kubeconfig")))
            .args(["--node-name", name, "--data-dir"])
            .arg(dir.join(name))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_ready(&mut child, name);
        Proc(child)
    }

    /// kubectl (the real one) against the server, from the server's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let mut c = self.lab.cmd("server", "kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        c.output().expect("kubectl runs")
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of one object.
    pub fn apply(&self, obj: &Value) {
        let mut c = self.lab.cmd("server", "kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(obj.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every host's addresses and routes, for failure messages.
    pub fn net_state(&self) -> String {
        let mut out = String::new();
        for n in self.lab.hosts.iter().filter(|h| *h != "server") {
            for args in [&["-br", "addr"][..], &["-4", "route"], &["-6", "route"]] {
                if let Ok(o) = self.lab.cmd(n, "ip").args(args).output() {
                    out.push_str(&format!(
                        "--- {n}: ip {args:?}\n{}",
                        String::from_utf8_lossy(&o.stdout)
                    ));
                }
            }
        }
        out
    }

    /// An object as JSON.
    pub fn get(&self, kind: &str, name: &str) -> Value {
        serde_json::from_str(&self.kubectl_ok(&["get", kind, name, "-o", "json"])).unwrap()
    }

    /// `kubectl wait` (a watch) for `cond` on `what`, with a timeout; the
    /// object's YAML in the panic message if it does not come.
    pub fn wait(&self, what: &str, cond: &str, secs: u32) {
        let out = self.kubectl(&[
            "wait",
            what,
            &format!("--for={cond}"),
            &format!("--timeout={secs}s"),
        ]);
        if !out.status.success() {
            let state = self.kubectl(&["get", what, "-o", "yaml"]);
            panic!(
                "{what}: {cond} not reached in {secs}s: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&state.stdout)
            );
        }
    }
}

/// Whether `shoal <sub> --help` mentions `flag`.
pub fn has_flag(sub: &str, flag: &str) -> bool {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([sub, "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

/// A pod's `status.podIPs`.
pub fn pod_ips(p: &Value) -> Vec<String> {
    p["status"]["podIPs"]
        .as_array()
        .unwrap_or_else(|| panic!("no podIPs: {}", p["status"]))
        .iter()
        .map(|x| x["ip"].as_str().unwrap().to_string())
        .collect()
}
