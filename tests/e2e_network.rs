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

use common::lab::{has_flag, pod_ips, run, unsupported, Agents, Cluster, Lab};
use serde_json::{json, Value};

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
const SERVER_V4: &str = "10.250.0.10";
const SERVER_V6: &str = "fd99:250::10";

fn node_v4(i: usize) -> String {
    format!("10.250.0.{}", 11 + i)
}

fn node_v6(i: usize) -> String {
    format!("fd99:250::{}", 11 + i)
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

#[test]
fn pods_on_different_nodes_reach_each_other_over_ipv4_and_ipv6() {
    if let Some(why) = unsupported(&[]) {
        eprintln!("skipping: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("shoalnet");
    lab.add_host("server", SERVER_V4, SERVER_V6);
    for (i, n) in NODES.iter().enumerate() {
        lab.add_host(n, &node_v4(i), &node_v6(i));
    }

    // The server, in its namespace; a short grace so a dead node shows soon.
    let lifecycle = has_flag("server", "--node-monitor-grace-period");
    let grace: &[&str] = if lifecycle {
        &["--node-monitor-grace-period", "20s"]
    } else {
        &[]
    };
    let (cluster, server) = Cluster::start(lab, tmp.path(), SERVER_V4, grace);

    // The test image, built locally and imported into the server's registry.
    cluster.import_busybox(tmp.path());

    // Three agents, each in its namespace, with node identities.
    let mut agents = Agents {
        procs: Vec::new(),
        dirs: Vec::new(),
    };
    let start_agent = |n: &str| cluster.start_agent(n, tmp.path(), &["--pod-network", "bridge"]);
    for n in NODES {
        cluster.node_kubeconfig(n, tmp.path());
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
