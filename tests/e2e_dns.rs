//! End to end: cluster DNS served by the node agent (issue 6), on the lab of
//! tests/common/lab.rs: a server and one agent (bridge pod network), each in
//! a network namespace of its own.
//!
//! - A pod's /etc/resolv.conf (read with `kubectl exec`) names the DNS on its
//!   node's pod-bridge gateways (IPv4 and IPv6), the cluster search path and
//!   `ndots:5`; `dnsPolicy: None` with a `dnsConfig` gets exactly that.
//! - From inside the pod, busybox `nslookup` resolves a ClusterIP Service by
//!   its full name and by its short name (search path), over the IPv4 and
//!   the IPv6 gateway, a headless Service to its endpoint and a StatefulSet-
//!   style `<hostname>.<svc>` name, an SRV name, and a PTR of the ClusterIP;
//!   an unknown name is NXDOMAIN, and a name outside the cluster is REFUSED at
//!   once (the agent has no `--dns-upstream`).
//! - A Service created afterwards resolves within seconds (the watch), and
//!   stops resolving after it is deleted.
//!
//! Needs root, runc, nsenter, iproute2 and a static /bin/busybox; skips with a
//! message otherwise. Test traffic stays inside the lab's namespaces.

mod common;

use common::lab::{unsupported, Agents, Cluster, Lab};
use serde_json::json;
use std::time::{Duration, Instant};

const NODE: &str = "node-1";
const SERVER_V4: &str = "10.252.0.10";
const SERVER_V6: &str = "fd99:252::10";
const NODE_V4: &str = "10.252.0.11";
const NODE_V6: &str = "fd99:252::11";
const NS: &str = "dnstest";

/// `kubectl exec` in the pod; (success, stdout + stderr).
fn exec(cluster: &Cluster, pod: &str, cmd: &[&str]) -> (bool, String) {
    let mut args = vec!["-n", NS, "exec", pod, "--"];
    args.extend_from_slice(cmd);
    let out = cluster.kubectl(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `busybox nslookup` from inside the pod.
fn nslookup(cluster: &Cluster, pod: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = vec!["busybox", "nslookup"];
    cmd.extend_from_slice(args);
    exec(cluster, pod, &cmd)
}

fn sleeper(name: &str, extra_spec: serde_json::Value) -> serde_json::Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "c", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"]
            }]
        }
    });
    for (k, v) in extra_spec.as_object().unwrap() {
        p["spec"][k] = v.clone();
    }
    p
}

#[test]
fn pods_resolve_services_through_the_node_local_dns() {
    if let Some(why) = unsupported(&[]) {
        eprintln!("skipping: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("shoaldns");
    lab.add_host("server", SERVER_V4, SERVER_V6);
    lab.add_host(NODE, NODE_V4, NODE_V6);

    let (cluster, server) = Cluster::start(lab, tmp.path(), SERVER_V4, &[]);
    cluster.import_busybox(tmp.path());
    cluster.node_kubeconfig(NODE, tmp.path());
    let mut agents = Agents {
        procs: Vec::new(),
        dirs: vec![tmp.path().join(NODE)],
    };
    let agent = cluster.start_agent(
        NODE,
        tmp.path(),
        &["--pod-network", "bridge", "--proxy", "none"],
    );
    agents.procs.push(Some(agent));
    let agent_log =
        || std::fs::read_to_string(tmp.path().join(format!("{NODE}.log"))).unwrap_or_default();

    // The node's gateways: the first address of each podCIDR.
    cluster.wait(&format!("node/{NODE}"), "jsonpath={.spec.podCIDRs[1]}", 60);
    let node = cluster.get("node", NODE);
    let gateways: Vec<String> = node["spec"]["podCIDRs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let c: shoal_agent::net::cidr::Cidr = c.as_str().unwrap().parse().unwrap();
            c.host(1).unwrap().to_string()
        })
        .collect();

    cluster.kubectl_ok(&["create", "namespace", NS]);
    // A ClusterIP Service (dual-stack if the cluster allocates both), a
    // headless one without a selector and its hand-made EndpointSlice.
    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"ipFamilyPolicy": "PreferDualStack", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }));
    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
    }));
    cluster.apply(&json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "db-manual", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.99.0.7"], "hostname": "db-0", "conditions": {"ready": true}}]
    }));
    let web: serde_json::Value = serde_json::from_str(
        &cluster.kubectl_ok(&["-n", NS, "get", "service", "web", "-o", "json"]),
    )
    .unwrap();
    let cluster_ips: Vec<String> = web["spec"]["clusterIPs"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    assert!(!cluster_ips.is_empty(), "service has no ClusterIP: {web}");

    // resolv.conf of a ClusterFirst pod and of a dnsPolicy None pod.
    cluster.apply(&sleeper("client", json!({})));
    cluster.apply(&sleeper(
        "custom",
        json!({"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["192.0.2.53"], "searches": ["corp.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}),
    ));
    for p in ["client", "custom"] {
        let out = cluster.kubectl(&[
            "-n",
            NS,
            "wait",
            &format!("pod/{p}"),
            "--for=condition=Ready",
            "--timeout=120s",
        ]);
        assert!(
            out.status.success(),
            "pod {p} not ready: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.kubectl_ok(&["-n", NS, "get", "pod", p, "-o", "yaml"])
        );
    }
    let (ok, resolv) = exec(&cluster, "client", &["cat", "/etc/resolv.conf"]);
    assert!(ok, "{resolv}");
    let lines: Vec<&str> = resolv.lines().collect();
    assert_eq!(
        lines[..2],
        [
            format!("nameserver {}", gateways[0]),
            format!("nameserver {}", gateways[1])
        ],
        "{resolv}"
    );
    let search = lines
        .iter()
        .find(|l| l.starts_with("search "))
        .expect("a search line");
    assert!(
        search.starts_with(&format!(
            "search {NS}.svc.cluster.local svc.cluster.local cluster.local"
        )),
        "{resolv}"
    );
    assert!(lines.contains(&"options ndots:5"), "{resolv}");
    let (ok, custom) = exec(&cluster, "custom", &["cat", "/etc/resolv.conf"]);
    assert!(ok, "{custom}");
    assert_eq!(
        custom,
        "nameserver 192.0.2.53\nsearch corp.example\noptions ndots:2 edns0\n"
    );
    let (ok, hosts) = exec(&cluster, "client", &["cat", "/etc/hosts"]);
    assert!(ok && hosts.contains("\tclient"), "{hosts}");

    // Lookups from inside the pod.
    let fqdn = format!("web.{NS}.svc.cluster.local");
    let (ok, out) = nslookup(&cluster, "client", &[&fqdn]);
    assert!(ok, "{out}\n{}", agent_log());
    for ip in &cluster_ips {
        assert!(out.contains(ip.as_str()), "{ip} missing:\n{out}");
    }
    // Over each gateway explicitly: IPv4 and IPv6.
    for gw in &gateways {
        let (ok, out) = nslookup(&cluster, "client", &["-type=a", &fqdn, gw]);
        assert!(
            ok && out.contains(cluster_ips[0].as_str()),
            "via {gw}:\n{out}"
        );
    }
    // The short name, through the search path. (busybox's nslookup tries
    // every search domain and exits 1 when any of them is NXDOMAIN, so only
    // the answer for the first domain is checked.)
    let (_, out) = nslookup(&cluster, "client", &["web"]);
    assert!(
        out.contains(&format!("Name:\t{fqdn}\nAddress: {}", cluster_ips[0])),
        "short name:\n{out}"
    );
    // Headless: the endpoint, and its hostname record.
    let (ok, out) = nslookup(&cluster, "client", &[&format!("db.{NS}.svc.cluster.local")]);
    assert!(ok && out.contains("10.99.0.7"), "headless:\n{out}");
    let (ok, out) = nslookup(
        &cluster,
        "client",
        &[&format!("db-0.db.{NS}.svc.cluster.local")],
    );
    assert!(ok && out.contains("10.99.0.7"), "hostname:\n{out}");
    // SRV and PTR.
    let (ok, out) = nslookup(
        &cluster,
        "client",
        &[
            "-type=srv",
            &format!("_http._tcp.web.{NS}.svc.cluster.local"),
        ],
    );
    assert!(
        ok && out.contains(&format!("80 web.{NS}.svc.cluster.local")),
        "SRV:\n{out}"
    );
    let (ok, out) = nslookup(&cluster, "client", &[&cluster_ips[0]]);
    assert!(ok && out.contains(&fqdn), "PTR:\n{out}");
    // Unknown and outside names.
    let (ok, out) = nslookup(
        &cluster,
        "client",
        &[&format!("nope.{NS}.svc.cluster.local")],
    );
    assert!(!ok && out.contains("NXDOMAIN"), "unknown name:\n{out}");
    let started = Instant::now();
    let (ok, out) = nslookup(&cluster, "client", &["example.com."]);
    assert!(!ok && out.contains("REFUSED"), "outside name:\n{out}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "REFUSED took {:?}",
        started.elapsed()
    );

    // A new Service resolves within seconds; a deleted one stops resolving.
    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "late", "namespace": NS},
        "spec": {"selector": {"app": "late"}, "ports": [{"port": 81}]}
    }));
    let late = format!("late.{NS}.svc.cluster.local");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, out) = nslookup(&cluster, "client", &[&late]);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new service never resolved:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    cluster.kubectl_ok(&["-n", NS, "delete", "service", "late"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, out) = nslookup(&cluster, "client", &[&late]);
        if !ok && out.contains("NXDOMAIN") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deleted service still resolves:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    drop(agents);
    drop(server);
    drop(cluster);
}
