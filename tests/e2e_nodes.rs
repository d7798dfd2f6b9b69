//! End to end: node IPAM (podCIDRs per node, dual stack, kept across a
//! server restart, exhaustion reported as an Event) and node lifecycle (a
//! silent node goes Unknown within the grace, is tainted, its pods are
//! evicted and replaced elsewhere, daemons stay; heartbeats clear the taints;
//! deleting a Node force-deletes its pods). Real server process, simulated
//! kubelets (tests/sim).

mod common;
mod sim;

use common::Server;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use sim::{watch_until, Heartbeats, Kubelet, IMAGE_RUN};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const KUBECTL: &str = "/usr/bin/kubectl";

fn pod_cidrs(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
}

/// `(network, prefix)` of a CIDR string.
fn split(c: &str) -> (IpAddr, u8) {
    let (a, p) = c.split_once('/').unwrap();
    (a.parse().unwrap(), p.parse().unwrap())
}

/// Wait until every node in `names` has podCIDRs; returns them by node.
async fn cidrs_of(nodes: &Api<Node>, names: &[&str]) -> BTreeMap<String, Vec<String>> {
    let set = watch_until(
        nodes,
        None,
        Duration::from_secs(20),
        |_| {},
        |set| {
            names
                .iter()
                .all(|n| set.get(*n).is_some_and(|n| !pod_cidrs(n).is_empty()))
        },
    )
    .await;
    for n in names {
        let node = &set[*n];
        // podCIDR is podCIDRs[0], as Kubernetes keeps them.
        assert_eq!(
            node.spec.as_ref().unwrap().pod_cidr.as_deref(),
            Some(pod_cidrs(node)[0].as_str())
        );
    }
    names
        .iter()
        .map(|n| (n.to_string(), pod_cidrs(&set[*n])))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_dual_stack_pod_cidrs_that_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let s = Server::start_on(dir.path(), port, &[]);
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    sim::add_nodes(&client, &["n1", "n2", "n3"]).await;
    let before = cidrs_of(&nodes, &["n1", "n2", "n3"]).await;
    let mut seen = BTreeSet::new();
    for (name, cidrs) in &before {
        assert_eq!(cidrs.len(), 2, "{name}: {cidrs:?}");
        let (v4, p4) = split(&cidrs[0]);
        let (v6, p6) = split(&cidrs[1]);
        // IPv4 first, from the default 10.42.0.0/16 in /24s; IPv6 from fd42::/56 in /64s.
        assert!(
            matches!(v4, IpAddr::V4(a) if a.octets()[..2] == [10, 42] && a.octets()[3] == 0),
            "{cidrs:?}"
        );
        assert_eq!(p4, 24);
        assert!(
            matches!(v6, IpAddr::V6(a) if a.segments()[..3] == [0xfd42, 0, 0] && a.segments()[3] < 0x100),
            "{cidrs:?}"
        );
        assert_eq!(p6, 64);
        for c in cidrs {
            assert!(seen.insert(c.clone()), "{c} handed out twice");
        }
    }

    // A restart keeps every node's ranges, and a new node gets fresh ones.
    assert!(s.stop(), "server exits cleanly");
    let s = Server::start_on(dir.path(), port, &[]);
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    sim::add_nodes(&client, &["n4"]).await;
    let after = cidrs_of(&nodes, &["n1", "n2", "n3", "n4"]).await;
    for (name, cidrs) in &before {
        assert_eq!(&after[name], cidrs, "{name} kept its ranges");
    }
    for c in &after["n4"] {
        assert!(
            seen.insert(c.clone()),
            "{c} handed out twice after a restart"
        );
    }

    // A node that brings its own podCIDRs keeps them.
    let mut own = sim::node("n5", json!([]));
    own.spec.as_mut().unwrap().pod_cidr = Some("192.168.7.0/24".into());
    own.spec.as_mut().unwrap().pod_cidrs = Some(vec!["192.168.7.0/24".into()]);
    nodes.create(&PostParams::default(), &own).await.unwrap();
    sim::add_nodes(&client, &["n6"]).await;
    let last = cidrs_of(&nodes, &["n5", "n6"]).await;
    assert_eq!(last["n5"], vec!["192.168.7.0/24".to_string()]);
    for c in &last["n6"] {
        assert!(seen.insert(c.clone()), "{c} handed out twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_cluster_cidr_is_reported_and_freed_by_node_deletion() {
    let dir = tempfile::tempdir().unwrap();
    // Room for exactly two IPv4-only nodes.
    let s = Server::start_on(
        dir.path(),
        common::free_port(),
        &[
            "--cluster-cidr",
            "10.99.0.0/23",
            "--node-cidr-mask-size-ipv4",
            "24",
        ],
    );
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    sim::add_nodes(&client, &["a", "b"]).await;
    let got = cidrs_of(&nodes, &["a", "b"]).await;
    let all: BTreeSet<&String> = got.values().flatten().collect();
    assert_eq!(
        all,
        ["10.99.0.0/24".to_string(), "10.99.1.0/24".to_string()]
            .iter()
            .collect()
    );
    sim::add_nodes(&client, &["c"]).await;
    watch_until(
        &events,
        None,
        Duration::from_secs(20),
        |_| {},
        |set| {
            set.values().any(|e| {
                e.reason.as_deref() == Some("CIDRNotAvailable")
                    && e.involved_object.name.as_deref() == Some("c")
            })
        },
    )
    .await;
    assert!(pod_cidrs(&nodes.get("c").await.unwrap()).is_empty());
    // Deleting a node frees its range for the waiting one.
    nodes.delete("a", &DeleteParams::default()).await.unwrap();
    let c = cidrs_of(&nodes, &["c"]).await;
    assert_eq!(c["c"], got["a"]);
}

/// `kubectl get nodes` output.
fn kubectl_get_nodes(s: &Server) -> String {
    let out = Command::new(KUBECTL)
        .env("KUBECONFIG", &s.kubeconfig)
        .args(["get", "nodes"])
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node_line<'a>(table: &'a str, node: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or_else(|| panic!("no {node} in {table}"))
}

fn ready_of(n: &Node) -> Option<(String, Option<String>)> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn taints_of(n: &Node) -> Vec<(String, String)> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect()
}

fn node_of(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn pod_ready(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_goes_unknown_its_pods_move_and_heartbeats_clear_the_taint() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(3);
    let s = Server::start_on(
        dir.path(),
        common::free_port(),
        &[
            "--node-monitor-grace-period",
            "3s",
            "--default-unreachable-toleration-seconds",
            "2",
            "--default-not-ready-toleration-seconds",
            "2",
        ],
    );
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let names = ["n1", "n2", "n3"];
    sim::add_nodes(&client, &names).await;
    let hb = Heartbeats::start(client.clone(), &names, Duration::from_millis(300));
    let _kubelet = Kubelet::default().start_for(client.clone(), "default", &hb);

    // Pods get the default tolerations with the configured seconds.
    let web: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": IMAGE_RUN}]}}},
    }))
    .unwrap();
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &web)
        .await
        .unwrap();
    let ds: k8s_openapi::api::apps::v1::DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "daemon"},
        "spec": {"selector": {"matchLabels": {"app": "daemon"}},
            "template": {"metadata": {"labels": {"app": "daemon"}},
                "spec": {"containers": [{"name": "c", "image": IMAGE_RUN}]}}},
    }))
    .unwrap();
    Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let start = watch_until(
        &pods,
        None,
        Duration::from_secs(30),
        |_| {},
        |set| {
            let web = set
                .values()
                .filter(|p| p.metadata.name.as_deref().unwrap().starts_with("web-"))
                .filter(|p| running(p))
                .count();
            let daemons: BTreeSet<&str> = set
                .values()
                .filter(|p| p.metadata.name.as_deref().unwrap().starts_with("daemon-"))
                .filter(|p| running(p))
                .map(node_of)
                .collect();
            web == 6 && daemons.len() == 3
        },
    )
    .await;
    let web_pod = start
        .values()
        .find(|p| p.metadata.name.as_deref().unwrap().starts_with("web-"))
        .unwrap();
    let tols = web_pod.spec.as_ref().unwrap().tolerations.clone().unwrap();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let t = tols
            .iter()
            .find(|t| t.key.as_deref() == Some(key))
            .expect("default toleration");
        assert_eq!(t.toleration_seconds, Some(2));
        assert_eq!(t.effect.as_deref(), Some("NoExecute"));
    }
    // The node with the most web pods dies.
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in start
        .values()
        .filter(|p| p.metadata.name.as_deref().unwrap().starts_with("web-"))
    {
        *per_node.entry(node_of(p)).or_default() += 1;
    }
    let (victim, _) = per_node.iter().max_by_key(|(_, n)| **n).unwrap();
    let victim = victim.to_string();
    let victim_web: BTreeSet<String> = start
        .values()
        .filter(|p| p.metadata.name.as_deref().unwrap().starts_with("web-") && node_of(p) == victim)
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let victim_daemon = start
        .values()
        .find(|p| {
            p.metadata.name.as_deref().unwrap().starts_with("daemon-") && node_of(p) == victim
        })
        .unwrap()
        .metadata
        .uid
        .clone();

    let silenced = Instant::now();
    hb.stop(&victim);
    let set = watch_until(
        &nodes,
        None,
        grace + Duration::from_secs(10),
        |_| {},
        |set| {
            set.get(&victim).is_some_and(|n| {
                ready_of(n).map(|r| r.0).as_deref() == Some("Unknown") && taints_of(n).len() == 2
            })
        },
    )
    .await;
    let unknown_at = Instant::now();
    let elapsed = silenced.elapsed();
    // The last heartbeat was at most one period before the silence.
    assert!(
        elapsed <= grace + Duration::from_secs(3),
        "Unknown after {elapsed:?}, grace {grace:?}"
    );
    assert!(
        elapsed >= grace - Duration::from_millis(500),
        "Unknown too early: {elapsed:?}"
    );
    let n = &set[&victim];
    assert_eq!(ready_of(n).unwrap().1.as_deref(), Some("NodeStatusUnknown"));
    let mut taints = taints_of(n);
    taints.sort();
    assert_eq!(
        taints,
        vec![
            ("node.kubernetes.io/unreachable".into(), "NoExecute".into()),
            ("node.kubernetes.io/unreachable".into(), "NoSchedule".into()),
        ]
    );
    // The others are still fine.
    for other in names.iter().filter(|n| **n != victim) {
        assert_eq!(ready_of(&set[*other]).unwrap().0, "True");
        assert!(taints_of(&set[*other]).is_empty());
    }
    let table = kubectl_get_nodes(&s);
    assert!(node_line(&table, &victim).contains("NotReady"), "{table}");
    for other in names.iter().filter(|n| **n != victim) {
        let line = node_line(&table, other);
        assert!(
            line.contains(" Ready") && !line.contains("NotReady"),
            "{table}"
        );
    }

    // Its web pods are marked not ready, then evicted after the toleration's
    // 2 s, and the Deployment is whole again on the healthy nodes; the daemon
    // pod stays.
    let mut first_eviction: Option<Instant> = None;
    let end = watch_until(
        &pods,
        None,
        Duration::from_secs(30),
        |set| {
            let any = victim_web.iter().any(|n| {
                set.get(n)
                    .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            });
            if any && first_eviction.is_none() {
                first_eviction = Some(Instant::now());
            }
        },
        |set| {
            let healthy = set
                .values()
                .filter(|p| p.metadata.name.as_deref().unwrap().starts_with("web-"))
                .filter(|p| running(p) && node_of(p) != victim)
                .count();
            let evicted = victim_web.iter().all(|n| {
                set.get(n)
                    .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            });
            healthy == 6 && evicted
        },
    )
    .await;
    let waited = first_eviction.unwrap().duration_since(unknown_at);
    assert!(
        waited >= Duration::from_millis(1500),
        "evicted {waited:?} after the taint, before the 2 s toleration ran out"
    );
    for n in &victim_web {
        if let Some(p) = end.get(n) {
            // Nobody finishes the graceful deletion on a dead node; it was marked not ready.
            assert_eq!(pod_ready(p).as_deref(), Some("False"), "{n}");
        }
    }
    let daemon = end
        .values()
        .find(|p| p.metadata.uid == victim_daemon)
        .expect("the daemon pod on the silent node is not evicted");
    assert!(daemon.metadata.deletion_timestamp.is_none());
    // Past the eviction time of pods with the default toleration, with margin.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let daemon = pods
        .get(daemon.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert!(daemon.metadata.deletion_timestamp.is_none());

    // Heartbeats again: Ready, and the taints go.
    hb.resume(&victim);
    watch_until(
        &nodes,
        None,
        Duration::from_secs(15),
        |_| {},
        |set| {
            set.get(&victim).is_some_and(|n| {
                ready_of(n).map(|r| r.0).as_deref() == Some("True") && taints_of(n).is_empty()
            })
        },
    )
    .await;
    let table = kubectl_get_nodes(&s);
    assert!(!node_line(&table, &victim).contains("NotReady"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_node_force_deletes_its_pods() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    sim::add_nodes(&client, &["keep", "gone"]).await;
    let hb = Heartbeats::start(
        client.clone(),
        &["keep", "gone"],
        Duration::from_millis(300),
    );
    let _kubelet = Kubelet::default().start_for(client.clone(), "default", &hb);
    for (name, node) in [("p-keep", "keep"), ("p-gone", "gone")] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 3600,
                "containers": [{"name": "c", "image": IMAGE_RUN}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    watch_until(
        &pods,
        None,
        Duration::from_secs(20),
        |_| {},
        |set| set.len() == 2 && set.values().all(running),
    )
    .await;
    // The node's kubelet is gone too: nobody would finish a graceful deletion.
    hb.stop("gone");
    nodes
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    let end = watch_until(
        &pods,
        None,
        Duration::from_secs(20),
        |_| {},
        |set| !set.contains_key("p-gone"),
    )
    .await;
    assert!(end.get("p-keep").is_some_and(running));
}
