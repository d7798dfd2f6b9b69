//! End to end: pod networking across nodes (DESIGN §7, §10). A "switch"
//! network namespace holds a bridge; the server and three agents each run in
//! a namespace of their own, wired to the switch by veth pairs with IPv4 and
//! IPv6 addresses from private test ranges. Nothing touches the machine's own
//! links, routes or sysctls: every link is created inside the test's
//! namespaces, and the processes enter them with `nsenter --net` (not `ip
//! netns exec`, which also remounts /sys and so hides the cgroup mounts runc
//! needs).
//!
//! The node IPAM controller gives each Node its podCIDRs; each agent builds
//! its bridge, pod veths and routes to the other nodes. One httpd pod runs on
//! each node, and a client pod on each node pings the other nodes' pods over
//! IPv4 and IPv6 and fetches a page from them over HTTP. Then one agent is
//! killed (SIGKILL) and its Node must turn NotReady.
//!
//! Needs root, runc, nsenter, iproute2 and a static /bin/busybox; skips with a
//! message otherwise. Everything (namespaces, processes, runc containers,
//! mounts, cgroups, data directories) is removed on drop, also on failure.

mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
const SERVER_V4: &str = "10.250.0.10";
const SERVER_V6: &str = "fd99:250::10";

fn node_v4(i: usize) -> String {
    format!("10.250.0.{}", 11 + i)
}

fn node_v6(i: usize) -> String {
    format!("fd99:250::{}", 11 + i)
}

/// Why this test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Some("not running as root".into());
    }
    for (tool, arg) in [
        ("runc", "--version"),
        ("nsenter", "--version"),
        ("ip", "-V"),
    ] {
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

fn run(cmd: &mut Command) -> Output {
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
/// deletes them, and with them every link, address and route inside.
struct Lab {
    tag: String,
    made: Vec<String>,
}

impl Lab {
    fn new() -> Lab {
        let mut lab = Lab {
            tag: format!("shoalnet{}", std::process::id()),
            made: Vec::new(),
        };
        let sw = lab.add_ns("sw");
        run(Command::new("ip").args(["-n", &sw, "link", "add", "br0", "type", "bridge"]));
        run(Command::new("ip").args(["-n", &sw, "link", "set", "br0", "up"]));
        lab
    }

    fn ns(&self, host: &str) -> String {
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
    fn add_host(&mut self, host: &str, v4: &str, v6: &str) {
        let ns = self.add_ns(host);
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
    fn cmd(&self, host: &str, program: &str) -> Command {
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
struct Proc(Child);

impl Proc {
    fn kill9(&mut self) {
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
fn wait_ready(child: &mut Child, what: &str) {
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
struct Agents {
    procs: Vec<Option<Proc>>,
    dirs: Vec<PathBuf>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            p.kill9();
        }
        for d in &self.dirs {
            common::clean_node(d);
        }
    }
}

struct Cluster {
    lab: Lab,
    kubeconfig: PathBuf,
}

impl Cluster {
    /// kubectl (the real one) against the server, from the server's namespace.
    fn kubectl(&self, args: &[&str]) -> Output {
        let mut c = self.lab.cmd("server", "kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        c.output().expect("kubectl runs")
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, obj: &Value) {
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

    /// Every node's addresses and routes, for failure messages.
    fn net_state(&self) -> String {
        let mut out = String::new();
        for n in NODES {
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

    fn get(&self, kind: &str, name: &str) -> Value {
        serde_json::from_str(&self.kubectl_ok(&["get", kind, name, "-o", "json"])).unwrap()
    }

    /// `kubectl wait` (a watch) for `cond` on `what`, with a timeout; the
    /// object's YAML in the panic message if it does not come.
    fn wait(&self, what: &str, cond: &str, secs: u32) {
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

fn pod(name: &str, node: &str, script: &str, restart: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "c", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
            }]
        }
    })
}

/// A pod's `status.podIPs`.
fn pod_ips(p: &Value) -> Vec<String> {
    p["status"]["podIPs"]
        .as_array()
        .unwrap_or_else(|| panic!("no podIPs: {}", p["status"]))
        .iter()
        .map(|x| x["ip"].as_str().unwrap().to_string())
        .collect()
}

/// A pod on node `i` that pings every other node's web pod over IPv4 and
/// IPv6 and fetches its page over HTTP, writing one line per check into its
/// termination message.
fn client_pod(name: &str, i: usize, ips: &[(String, String)]) -> Value {
    let mut script = String::from("{\n");
    for (j, (v4, v6)) in ips.iter().enumerate() {
        if j == i {
            continue;
        }
        // The HTTP fetch is a plain HTTP/1.0 GET through nc: Debian's
        // busybox-static wget crashes (static glibc), nc does not.
        for (fam, ip) in [("v4", v4), ("v6", v6)] {
            script.push_str(&format!(
                "r=FAIL; for t in 1 2 3 4 5; do ping -c 1 -W 2 {ip} >/dev/null 2>&1 && r=ok && break; sleep 1; done; echo ping-{fam}-{j} $r\n\
                 b=; for t in 1 2 3 4 5; do b=$(printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080 | grep hello-from) && break; sleep 1; done; echo http-{fam}-{j} $b\n"
            ));
        }
    }
    script.push_str("} > /dev/termination-log 2>&1\n");
    pod(name, NODES[i], &script, "Never")
}

/// Wait for a client pod to finish and assert every check passed; returns its IPs.
fn check_client(cluster: &Cluster, name: &str, i: usize) -> Vec<String> {
    cluster.wait(
        &format!("pod/{name}"),
        "jsonpath={.status.phase}=Succeeded",
        180,
    );
    let p = cluster.get("pod", name);
    let msg = p["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for (j, target) in NODES.iter().enumerate() {
        if j == i {
            continue;
        }
        for fam in ["v4", "v6"] {
            assert!(
                msg.contains(&format!("ping-{fam}-{j} ok")),
                "{name}: ping {fam} to {target}'s pod failed:\n{msg}\n{}",
                cluster.net_state()
            );
            assert!(
                msg.contains(&format!("http-{fam}-{j} hello-from-{target}")),
                "{name}: HTTP over {fam} to {target}'s pod failed:\n{msg}\n{}",
                cluster.net_state()
            );
        }
    }
    pod_ips(&p)
}

fn has_flag(sub: &str, flag: &str) -> bool {
    Command::new(SHOAL)
        .args([sub, "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

#[test]
fn pods_on_different_nodes_reach_each_other_over_ipv4_and_ipv6() {
    if let Some(why) = unsupported() {
        eprintln!("skipping: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = Lab::new();
    lab.add_host("server", SERVER_V4, SERVER_V6);
    for (i, n) in NODES.iter().enumerate() {
        lab.add_host(n, &node_v4(i), &node_v6(i));
    }

    // The server, in its namespace; a short grace so a dead node shows soon.
    let server_dir = tmp.path().join("server");
    let mut server_args: Vec<String> = vec![
        "server".into(),
        "--data-dir".into(),
        server_dir.display().to_string(),
        "--listen".into(),
        format!("{SERVER_V4}:6443"),
    ];
    let lifecycle = has_flag("server", "--node-monitor-grace-period");
    if lifecycle {
        server_args.extend(["--node-monitor-grace-period".into(), "20s".into()]);
    }
    let mut server = Proc(
        lab.cmd("server", SHOAL)
            .args(&server_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(tmp.path().join("server.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
    );
    wait_ready(&mut server.0, "shoal server");
    let cluster = Cluster {
        kubeconfig: server_dir.join("admin.kubeconfig"),
        lab,
    };

    // The test image, built locally and imported into the server's registry.
    let tar = tmp.path().join("busybox.tar");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/build-busybox-image.sh"
    );
    run(Command::new("bash")
        .arg(script)
        .arg(&tar)
        .stdout(Stdio::null()));
    run(cluster
        .lab
        .cmd("server", SHOAL)
        .args(["image", "import", "--kubeconfig"])
        .arg(&cluster.kubeconfig)
        .arg(&tar));

    // Three agents, each in its namespace, with node identities.
    let mut agents = Agents {
        procs: Vec::new(),
        dirs: Vec::new(),
    };
    let start_agent = |n: &str| {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(tmp.path().join(format!("{n}.log")))
            .unwrap();
        let mut child = cluster
            .lab
            .cmd(n, SHOAL)
            .arg("agent")
            .arg("--kubeconfig")
            .arg(tmp.path().join(format!("{n}.kubeconfig")))
            .args(["--node-name", n, "--data-dir"])
            .arg(tmp.path().join(n))
            .args(["--pod-network", "bridge"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_ready(&mut child, n);
        Proc(child)
    };
    for n in NODES {
        let out = run(Command::new(SHOAL)
            .args(["kubeconfig", "node", n, "--data-dir"])
            .arg(&server_dir)
            .args(["--server", &format!("https://{SERVER_V4}:6443")]));
        std::fs::write(tmp.path().join(format!("{n}.kubeconfig")), &out.stdout).unwrap();
        agents.dirs.push(tmp.path().join(n));
        agents.procs.push(Some(start_agent(n)));
    }

    // Each Node gets its podCIDRs (node IPAM) and reports both InternalIPs.
    let mut cidrs = Vec::new();
    for (i, n) in NODES.iter().enumerate() {
        cluster.wait(&format!("node/{n}"), "jsonpath={.spec.podCIDRs[1]}", 60);
        let node = cluster.get("node", n);
        let c: Vec<String> = serde_json::from_value(node["spec"]["podCIDRs"].clone()).unwrap();
        let internal: Vec<&str> = node["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == "InternalIP")
            .filter_map(|a| a["address"].as_str())
            .collect();
        assert_eq!(internal, vec![node_v4(i), node_v6(i)], "{n}");
        cidrs.push(c);
    }

    // One web server per node.
    for n in NODES {
        let script = "mkdir -p /tmp/www && echo hello-from-$NODE > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www";
        cluster.apply(&pod(&format!("web-{n}"), n, script, "Always"));
    }
    let mut ips: Vec<(String, String)> = Vec::new();
    for (i, n) in NODES.iter().enumerate() {
        cluster.wait(&format!("pod/web-{n}"), "condition=Ready", 120);
        let p = cluster.get("pod", &format!("web-{n}"));
        let got = pod_ips(&p);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(p["status"]["podIP"], got[0]);
        // Addresses come from this node's ranges, IPv4 first.
        for (ip, cidr) in got.iter().zip(&cidrs[i]) {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let c: shoal_agent::net::cidr::Cidr = cidr.parse().unwrap();
            assert!(c.contains(ip), "{ip} not in {cidr}");
        }
        ips.push((got[0].clone(), got[1].clone()));
    }

    // From each node, a client pod pings and fetches from the other nodes' pods.
    for (i, n) in NODES.iter().enumerate() {
        cluster.apply(&client_pod(&format!("client-{n}"), i, &ips));
    }
    for (i, n) in NODES.iter().enumerate() {
        check_client(&cluster, &format!("client-{n}"), i);
    }

    // Restarting an agent: its pods keep their addresses, the bridge and
    // routes are adopted, and a new pod gets a fresh address.
    if let Some(mut p) = agents.procs[0].take() {
        p.kill9();
    }
    agents.procs[0] = Some(start_agent(NODES[0]));
    cluster.apply(&client_pod("again-node-1", 0, &ips));
    let again = check_client(&cluster, "again-node-1", 0);
    let web1 = pod_ips(&cluster.get("pod", "web-node-1"));
    assert_eq!(web1, vec![ips[0].0.clone(), ips[0].1.clone()]);
    assert!(
        again.iter().all(|ip| !web1.contains(ip)),
        "address handed out twice: {again:?} {web1:?}"
    );

    // Deleting a running pod removes its veth from the node and frees its addresses.
    let veth = shoal_agent::net::veth_name(
        cluster.get("pod", "web-node-1")["metadata"]["uid"]
            .as_str()
            .unwrap(),
    );
    let links = |host: &str| {
        let out = run(cluster.lab.cmd(host, "ip").args(["-o", "link", "show"]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for name in ["shoal0", veth.as_str()] {
        assert!(
            links("node-1").contains(name),
            "{name}: {}",
            links("node-1")
        );
    }
    cluster.kubectl_ok(&[
        "delete",
        "pod",
        "web-node-1",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(
        !links("node-1").contains(&veth),
        "veth {veth} left behind:\n{}",
        links("node-1")
    );
    let ipam = std::fs::read_to_string(agents.dirs[0].join("net/ipam.json")).unwrap();
    assert!(!ipam.contains(&ips[0].0), "address not released: {ipam}");

    // Killing an agent: its Node goes NotReady (node lifecycle controller).
    if lifecycle {
        if let Some(mut p) = agents.procs[2].take() {
            p.kill9();
        }
        cluster.wait("node/node-3", "condition=Ready=Unknown", 120);
        let node = cluster.get("node", "node-3");
        let taints = node["spec"]["taints"].to_string();
        assert!(
            taints.contains("node.kubernetes.io/unreachable"),
            "{taints}"
        );
    } else {
        eprintln!("node lifecycle controller not present; skipping the NotReady check");
    }
    drop(agents);
    drop(server);
    drop(cluster);
}
