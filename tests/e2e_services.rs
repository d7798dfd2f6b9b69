//! End to end: Services through the agents' nftables proxy (DESIGN §7, §8),
//! on the multi-node lab of tests/common/lab.rs: a server and three agents
//! (node-1 and node-2 in zone-a, node-3 in zone-b), each in its own network
//! namespace, plus an outside host `ext` on the same switch.
//!
//! A 3-replica Deployment of busybox httpd pods answering with their pod
//! name (one per node by a topology spread constraint) behind a dual-stack
//! NodePort Service:
//! - a client pod on node-1 reaches it through both ClusterIPs (IPv4 and
//!   IPv6) and its DNS name (A and AAAA, the agent's cluster DNS), and `ext`
//!   through the NodePort of node-2; answers come from all three pods;
//! - a backend reaching its own service and sent to itself gets its answer
//!   (hairpin);
//! - a second Service with `trafficDistribution: PreferSameZone`: a client
//!   on node-3 (zone-b) reaches only the zone-b pod, one on node-1 only the
//!   zone-a pods;
//! - the zone-b pod turns unready (the test removes the file its readiness
//!   probe reads): it gets no new connections, and the zone-b client falls
//!   back to zone-a;
//! - scaled to 0, connections are refused at once (no timeout).
//! - the canary router plugin (`shoal plugin install --kind router`, chosen
//!   by the `routing.shoal.dev/router` annotation) sends 6–14% of 1,000
//!   connections to one canary pod next to three stable ones at 90/10, and
//!   42–58% after its config is changed to 50/50 (no restart).
//!
//! Needs root, runc, nsenter, iproute2, nftables and a static /bin/busybox;
//! skips with a message otherwise. Test traffic stays inside the lab.

mod common;

use common::lab::{has_flag, run, unsupported, Agents, Cluster, Lab, Proc};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const NODES: [(&str, &str); 3] = [
    ("node-1", "zone-a"),
    ("node-2", "zone-a"),
    ("node-3", "zone-b"),
];
const SERVER_V4: &str = "10.251.0.10";
const SERVER_V6: &str = "fd99:251::10";
const NS: &str = "svc-e2e";

fn node_v4(i: usize) -> String {
    format!("10.251.0.{}", 11 + i)
}

fn node_v6(i: usize) -> String {
    format!("fd99:251::{}", 11 + i)
}

/// A Deployment of httpd pods (label app=web, track=`track`) answering
/// with the pod name, ready while /tmp/ready exists.
fn deployment(name: &str, track: &str, replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web", "track": track}},
            "template": {
                "metadata": {"labels": {"app": "web", "track": track}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "web", "track": track}}
                    }],
                    "containers": [{
                        "name": "web", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c",
                            "mkdir -p /tmp/www && hostname > /tmp/www/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /tmp/www"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
                                           "periodSeconds": 1, "failureThreshold": 1}
                    }]
                }
            }
        }
    })
}

fn service(name: &str, extra: Value) -> Value {
    service_annotated(name, json!({}), extra)
}

fn service_annotated(name: &str, annotations: Value, extra: Value) -> Value {
    let mut s = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {
            "selector": {"app": "web"},
            "ipFamilyPolicy": "RequireDualStack",
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
        }
    });
    for (k, v) in extra.as_object().unwrap() {
        s["spec"][k] = v.clone();
    }
    s
}

fn client(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "100000"]}]
        }
    })
}

/// A shell loop making `n` HTTP/1.0 requests to `ip:port`, one answer
/// (the last line of the response: the pod name) or `ERR <message>` per line.
fn fetch_script(ip: &str, port: u16, n: usize) -> String {
    format!(
        "for i in $(seq 1 {n}); do r=$(printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port} 2>&1 | tail -n 1); echo \"${{r:-ERR empty}}\"; done"
    )
}

struct Test {
    cluster: Cluster,
    // Dropped before `cluster` (and so before the namespaces go).
    agents: Agents,
    _server: Proc,
    _tmp: tempfile::TempDir,
}

impl Test {
    /// Answers to `n` requests from pod `from` to `ip:port`.
    fn fetch_from_pod(&self, from: &str, ip: &str, port: u16, n: usize) -> Vec<String> {
        let out = self.cluster.kubectl(&[
            "exec",
            "-n",
            NS,
            from,
            "--",
            "sh",
            "-c",
            &fetch_script(ip, port, n),
        ]);
        assert!(
            out.status.success(),
            "exec in {from}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    }

    /// Answers to `n` requests from lab host `host` (the machine's busybox) to `ip:port`.
    fn fetch_from_host(&self, host: &str, ip: &str, port: u16, n: usize) -> Vec<String> {
        let out = run(self.cluster.lab.cmd(host, "/bin/busybox").args([
            "sh",
            "-c",
            &fetch_script(ip, port, n),
        ]));
        lines(&out.stdout)
    }

    fn pods_by_node(&self) -> Vec<(String, String)> {
        self.pods_by_node_of("app=web")
    }

    /// (node, pod name) of the pods matching `selector` that are not being deleted.
    fn pods_by_node_of(&self, selector: &str) -> Vec<(String, String)> {
        let list: Value = serde_json::from_str(
            &self
                .cluster
                .kubectl_ok(&["get", "pods", "-n", NS, "-l", selector, "-o", "json"]),
        )
        .unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                (
                    p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Poll (with a deadline; the proxy has no watch a test can join) until
    /// `n` answers from `from` to `ip:port` come exactly from `want`.
    fn until_answers(&self, from: &str, ip: &str, port: u16, want: &BTreeSet<String>, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got: BTreeSet<String> = self
                .fetch_from_pod(from, ip, port, 30)
                .into_iter()
                .collect();
            if &got == want {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: answers {got:?}, want {want:?}\n{}",
                    self.nft_state()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn nft_state(&self) -> String {
        let mut out = String::new();
        for (n, _) in NODES {
            if let Ok(o) = self
                .cluster
                .lab
                .cmd(n, "nft")
                .args(["list", "table", "ip", "shoal-proxy"])
                .output()
            {
                out.push_str(&format!(
                    "--- {n}\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
        }
        out.push_str(&String::from_utf8_lossy(
            &self
                .cluster
                .kubectl(&["get", "endpointslices", "-n", NS, "-o", "yaml"])
                .stdout,
        ));
        out
    }
}

fn lines(b: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(b)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn boot() -> Test {
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("shoalsvc");
    lab.add_host("server", SERVER_V4, SERVER_V6);
    for (i, (n, _)) in NODES.iter().enumerate() {
        lab.add_host(n, &node_v4(i), &node_v6(i));
    }
    lab.add_host("ext", "10.251.0.50", "fd99:251::50");
    let (cluster, server) = Cluster::start(lab, tmp.path(), SERVER_V4, &[]);
    let images = common::build_images(tmp.path(), &[]);
    let images = images.to_str().unwrap();
    let mut agents = Agents {
        procs: Vec::new(),
        dirs: Vec::new(),
    };
    for (n, zone) in NODES {
        cluster.node_kubeconfig(n, tmp.path());
        let agent = cluster.start_agent(
            n,
            tmp.path(),
            &[
                "--zone",
                zone,
                "--image-dir",
                images,
                "--pod-network",
                "bridge",
                "--proxy",
                "nftables",
            ],
        );
        agents.dirs.push(tmp.path().join(n));
        agents.procs.push(Some(agent));
    }
    for (n, _) in NODES {
        cluster.wait(&format!("node/{n}"), "jsonpath={.spec.podCIDRs[1]}", 60);
    }
    Test {
        cluster,
        agents,
        _server: server,
        _tmp: tmp,
    }
}

#[test]
fn services_reach_pods_across_nodes_through_nftables() {
    if let Some(why) = unsupported(&[("nft", "--version")]) {
        eprintln!("skipping: {why}");
        return;
    }
    if !has_flag("agent", "--proxy") {
        eprintln!("skipping: `shoal agent` has no --proxy flag");
        return;
    }
    let t = boot();
    let c = &t.cluster;
    c.kubectl_ok(&["create", "namespace", NS]);
    // The test's kubeconfig defaults to the test's namespace (for `kubectl wait`).
    c.kubectl_ok(&[
        "config",
        "set-context",
        "--current",
        &format!("--namespace={NS}"),
    ]);
    c.apply(&deployment("web", "stable", 3));
    c.apply(&service("web", json!({"type": "NodePort"})));
    c.apply(&service(
        "zonal",
        json!({"trafficDistribution": "PreferSameZone"}),
    ));
    c.apply(&client("client-a", "node-1"));
    c.apply(&client("client-b", "node-3"));
    c.wait("deployment/web", "condition=Available", 180);
    for p in ["client-a", "client-b"] {
        c.wait(&format!("pod/{p}"), "condition=Ready", 120);
    }
    let by_node = t.pods_by_node();
    let nodes: BTreeSet<&str> = by_node.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one web pod per node: {by_node:?}");
    let all: BTreeSet<String> = by_node.iter().map(|(_, p)| p.clone()).collect();
    let pod_on = |node: &str| by_node.iter().find(|(n, _)| n == node).unwrap().1.clone();

    let svc: Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "service", "web", "-n", NS, "-o", "json"]))
            .unwrap();
    let ips: Vec<String> =
        serde_json::from_value(svc["spec"]["clusterIPs"].clone()).unwrap_or_default();
    assert_eq!(ips.len(), 2, "dual-stack cluster IPs: {}", svc["spec"]);
    let (v4, v6) = (ips[0].clone(), ips[1].clone());
    assert!(v6.contains(':'), "{ips:?}");
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort") as u16;

    // ClusterIP over IPv4 and IPv6 from another node: every backend answers.
    t.until_answers("client-a", &v4, 80, &all, "ClusterIP over IPv4");
    t.until_answers("client-a", &v6, 80, &all, "ClusterIP over IPv6");
    // Hairpin: a backend reaching its own service, sent to itself, gets its
    // answer (the proxy masquerades it). Without that, the reply would go
    // from the pod to itself directly and the connection would hang.
    let own = pod_on("node-1");
    let got = t.fetch_from_pod(&own, &v4, 80, 24);
    assert!(
        got.iter().all(|a| all.contains(a)),
        "every request from a backend answered: {got:?}\n{}",
        t.nft_state()
    );
    assert!(
        got.contains(&own),
        "24 tries over 3 backends should reach the asking pod {own} itself: {got:?}\n{}",
        t.nft_state()
    );
    // By DNS name (the node's cluster DNS, A and AAAA): the name resolves to
    // the cluster IPs, and a fetch through the resolved address answers.
    // (busybox nslookup has its own resolver; nc cannot resolve names in a
    // static-glibc busybox.)
    let name = format!("web.{NS}.svc.cluster.local");
    for (qtype, ip) in [("a", &v4), ("aaaa", &v6)] {
        let script = format!(
            "ip=$(nslookup -type={qtype} {name} | awk '/^Name:/{{n=1}} n && /^Address/{{print $2; exit}}'); echo \"resolved $ip\"; {}",
            fetch_script("$ip", 80, 1)
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = c.kubectl(&["exec", "-n", NS, "client-a", "--", "sh", "-c", &script]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let resolved = text.lines().any(|l| l.trim() == format!("resolved {ip}"));
            let answered = lines(&out.stdout).iter().any(|l| all.contains(l));
            if resolved && answered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} ({qtype}) should resolve to {ip} and answer: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // NodePort from an outside host, through node-2.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeSet<String> = t
            .fetch_from_host("ext", &node_v4(1), node_port, 30)
            .into_iter()
            .collect();
        if got == all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "NodePort {node_port} via node-2: {got:?}\n{}",
            t.nft_state()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // PreferSameZone: zone-b's client reaches only the zone-b pod, zone-a's only zone-a pods.
    let zonal: Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "service", "zonal", "-n", NS, "-o", "json"]))
            .unwrap();
    let zonal_ip = zonal["spec"]["clusterIPs"][0].as_str().unwrap().to_string();
    let zone_a: BTreeSet<String> = [pod_on("node-1"), pod_on("node-2")].into();
    let zone_b: BTreeSet<String> = [pod_on("node-3")].into();
    t.until_answers(
        "client-b",
        &zonal_ip,
        80,
        &zone_b,
        "PreferSameZone from zone-b",
    );
    t.until_answers(
        "client-a",
        &zonal_ip,
        80,
        &zone_a,
        "PreferSameZone from zone-a",
    );

    // The zone-b pod turns unready: no new connections to it; zone-b falls back.
    let b = pod_on("node-3");
    c.kubectl_ok(&["exec", "-n", NS, &b, "--", "rm", "/tmp/ready"]);
    c.wait(&format!("pod/{b}"), "condition=Ready=false", 60);
    let ready: BTreeSet<String> = all.iter().filter(|p| **p != b).cloned().collect();
    t.until_answers("client-a", &v4, 80, &ready, "after a pod turned unready");
    t.until_answers(
        "client-b",
        &zonal_ip,
        80,
        &zone_a,
        "PreferSameZone fallback from zone-b",
    );

    // Scaled to 0: refused at once, not a timeout.
    c.kubectl_ok(&["scale", "-n", NS, "deployment/web", "--replicas=0"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = Instant::now();
        let got = t.fetch_from_pod("client-a", &v4, 80, 1);
        let took = started.elapsed();
        let refused = got.iter().all(|l| l.contains("refused"));
        if refused {
            assert!(
                took < Duration::from_secs(2),
                "refusal took {took:?}: {got:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after scaling to 0: {got:?}\n{}",
            t.nft_state()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The canary router: 90/10 between track=stable (3 pods) and
    // track=canary (1 pod), then 50/50 by changing the Plugin's config.
    let install = |weights: &str| {
        let out = c
            .lab
            .cmd("server", SHOAL)
            .args(["plugin", "install", "--kubeconfig"])
            .arg(&c.kubeconfig)
            .args(["--kind", "router", "--name", "canary", "--config"])
            .arg(format!(r#"{{"label": "track", "weights": {weights}}}"#))
            .arg(shoal_host::plugin::artifacts::ROUTER_CANARY_PATH)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "plugin install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install(r#"{"stable": 90, "canary": 10}"#);
    c.kubectl_ok(&["scale", "-n", NS, "deployment/web", "--replicas=3"]);
    c.apply(&deployment("web-canary", "canary", 1));
    c.apply(&service_annotated(
        "split",
        json!({"routing.shoal.dev/router": "canary"}),
        json!({}),
    ));
    c.wait("deployment/web", "jsonpath={.status.readyReplicas}=3", 180);
    c.wait(
        "deployment/web-canary",
        "jsonpath={.status.readyReplicas}=1",
        180,
    );
    let canary: BTreeSet<String> = t
        .pods_by_node_of("track=canary")
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let stable: BTreeSet<String> = t
        .pods_by_node_of("track=stable")
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!((canary.len(), stable.len()), (1, 3));
    let split: Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "service", "split", "-n", NS, "-o", "json"]))
            .unwrap();
    let split_ip = split["spec"]["clusterIPs"][0].as_str().unwrap().to_string();
    // Share of 1,000 connections that reach the canary, once every pod answers.
    let share = |what: &str, lo: f64, hi: f64| -> f64 {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let answers = t.fetch_from_pod("client-a", &split_ip, 80, 1000);
            let to_canary = answers.iter().filter(|a| canary.contains(*a)).count();
            let to_stable = answers.iter().filter(|a| stable.contains(*a)).count();
            let share = to_canary as f64 / answers.len().max(1) as f64;
            if to_canary + to_stable == 1000 && (lo..=hi).contains(&share) {
                return share;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {to_canary} of {} answers from the canary, {to_stable} from stable ({} others)\n{}",
                answers.len(),
                answers.len() - to_canary - to_stable,
                t.nft_state()
            );
        }
    };
    let s10 = share("90/10 canary split", 0.06, 0.14);
    install(r#"{"stable": 50, "canary": 50}"#);
    let s50 = share("50/50 split after the config change", 0.42, 0.58);
    eprintln!("canary share: {s10:.3} at 90/10, {s50:.3} at 50/50");

    // A clean agent shutdown (SIGTERM) removes the proxy's tables, and only them.
    let mut t = t;
    let mut node1 = t.agents.procs[0].take().unwrap();
    run(Command::new("kill").args(["-TERM", &node1.0.id().to_string()]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while node1.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "node-1's agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ruleset = run(t.cluster.lab.cmd("node-1", "nft").args(["list", "ruleset"]));
    let ruleset = String::from_utf8_lossy(&ruleset.stdout);
    assert!(
        !ruleset.contains("shoal-proxy"),
        "tables left after shutdown:\n{ruleset}"
    );
    let other = run(t.cluster.lab.cmd("node-2", "nft").args(["list", "tables"]));
    let other = String::from_utf8_lossy(&other.stdout);
    assert!(
        other.contains("table ip shoal-proxy") && other.contains("table ip6 shoal-proxy"),
        "{other}"
    );
}
