//! End to end: the scheduler with Wasm policies, swapping policies with the
//! `shoal plugin` CLI, and plugins that fail.

mod common;

use common::Server;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DynamicObject, PostParams, WatchEvent, WatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::await_condition;
use serde_json::{json, Value};
use shoal_host::plugin::artifacts;
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::Duration;

fn node(name: &str, cpu: &str, labels: Value, taints: Value) -> Node {
    let mut labels = labels;
    labels["kubernetes.io/hostname"] = json!(name);
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {
            "capacity": {"cpu": cpu, "memory": "64Gi", "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": "64Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .unwrap()
}

fn pod(name: &str, cpu: &str, spec_extra: Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": {"cpu": cpu}}}]});
    if let Some(m) = spec_extra.as_object() {
        for (k, v) in m {
            spec[k] = v.clone();
        }
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

async fn bound_node(pods: &Api<Pod>, name: &str) -> String {
    let cond = |p: Option<&Pod>| {
        p.and_then(|p| p.spec.as_ref())
            .and_then(|s| s.node_name.as_ref())
            .is_some()
    };
    let p = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(pods.clone(), name, cond),
    )
    .await
    .unwrap_or_else(|_| panic!("pod {name} was not scheduled within 30s"))
    .unwrap()
    .unwrap();
    p.spec.unwrap().node_name.unwrap()
}

async fn unschedulable_message(pods: &Api<Pod>, name: &str) -> String {
    let cond = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "PodScheduled" && c.status == "False")
            })
    };
    let p = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(pods.clone(), name, cond),
    )
    .await
    .unwrap_or_else(|_| panic!("pod {name} was not marked unschedulable within 30s"))
    .unwrap()
    .unwrap();
    assert!(p.spec.unwrap().node_name.is_none());
    let c = p
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
    c.message.unwrap_or_default()
}

fn shoal(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn plugins(client: kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("plugins.shoal.dev", "v1alpha1", "Plugin"),
        "plugins",
    );
    Api::all_with(client, &ar)
}

async fn plugin_state(api: &Api<DynamicObject>, name: &str, want: &str) -> DynamicObject {
    let w = want.to_string();
    let cond = move |o: Option<&DynamicObject>| {
        o.is_some_and(|o| {
            o.data.pointer("/status/state").and_then(Value::as_str) == Some(w.as_str())
        })
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api.clone(), name, cond),
    )
    .await
    .unwrap_or_else(|_| panic!("plugin {name} did not become {want}"))
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_respects_constraints_and_waits_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    nodes
        .create(&pp, &node("hdd", "2", json!({"disk": "hdd"}), json!([])))
        .await
        .unwrap();
    nodes
        .create(&pp, &node("ssd", "4", json!({"disk": "ssd"}), json!([])))
        .await
        .unwrap();
    nodes
        .create(
            &pp,
            &node(
                "gpu",
                "8",
                json!({}),
                json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
            ),
        )
        .await
        .unwrap();

    pods.create(
        &pp,
        &pod("sel", "1", json!({"nodeSelector": {"disk": "ssd"}})),
    )
    .await
    .unwrap();
    let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}]}}}});
    pods.create(&pp, &pod("aff", "1", affinity)).await.unwrap();
    let tolerates = json!({"nodeSelector": {"kubernetes.io/hostname": "gpu"}, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]});
    pods.create(&pp, &pod("tol", "1", tolerates)).await.unwrap();
    pods.create(
        &pp,
        &pod(
            "untol",
            "1",
            json!({"nodeSelector": {"kubernetes.io/hostname": "gpu"}}),
        ),
    )
    .await
    .unwrap();
    pods.create(
        &pp,
        &pod("huge", "6", json!({"nodeSelector": {"disk": "ssd"}})),
    )
    .await
    .unwrap();

    assert_eq!(bound_node(&pods, "sel").await, "ssd");
    assert_eq!(bound_node(&pods, "aff").await, "hdd");
    assert_eq!(bound_node(&pods, "tol").await, "gpu");
    let msg = unschedulable_message(&pods, "untol").await;
    assert!(
        msg.contains("0/3 nodes are available") && msg.contains("taint"),
        "{msg}"
    );
    let msg = unschedulable_message(&pods, "huge").await;
    assert!(msg.contains("Insufficient cpu"), "{msg}");
    // The reason is also an Event, as kubectl describe shows.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let evs = events.list(&Default::default()).await.unwrap();
    assert!(evs
        .items
        .iter()
        .any(|e| e.reason.as_deref() == Some("FailedScheduling")
            && e.involved_object.name.as_deref() == Some("huge")));

    // A node with room appears: the waiting pod is retried and lands there.
    nodes
        .create(&pp, &node("ssd2", "8", json!({"disk": "ssd"}), json!([])))
        .await
        .unwrap();
    assert_eq!(bound_node(&pods, "huge").await, "ssd2");
    assert!(s.stop());
}

/// Node of each pod from a watch over the whole test, checking each pod is
/// bound exactly once and never moves.
async fn collect_bindings(pods: Api<Pod>, rv: String, expect: usize) -> BTreeMap<String, String> {
    let mut w = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut bound: BTreeMap<String, String> = BTreeMap::new();
    let mut binds: HashMap<String, usize> = HashMap::new();
    while bound.len() < expect {
        let ev = tokio::time::timeout(Duration::from_secs(60), w.try_next())
            .await
            .expect("pods keep getting bound")
            .unwrap()
            .unwrap();
        if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev {
            let name = p.metadata.name.clone().unwrap();
            if let Some(n) = p.spec.and_then(|s| s.node_name) {
                match bound.get(&name) {
                    Some(prev) => assert_eq!(prev, &n, "pod {name} moved from {prev} to {n}"),
                    None => {
                        *binds.entry(name.clone()).or_default() += 1;
                        bound.insert(name, n);
                    }
                }
            }
        }
    }
    assert!(binds.values().all(|c| *c == 1));
    bound
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_default_for_binpack_changes_placement() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    for i in 0..4 {
        nodes
            .create(&pp, &node(&format!("n{i}"), "32", json!({}), json!([])))
            .await
            .unwrap();
    }
    let rv = pods
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let watcher = tokio::spawn(collect_bindings(pods.clone(), rv, 8 + 16 + 6));

    // Spread with the default (least-allocated) policy: 2 pods per node.
    for i in 0..8 {
        pods.create(&pp, &pod(&format!("a{i}"), "1", json!({})))
            .await
            .unwrap();
    }
    let mut fill: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..8 {
        *fill
            .entry(bound_node(&pods, &format!("a{i}")).await)
            .or_default() += 1;
    }
    assert_eq!(
        fill.values().copied().collect::<Vec<_>>(),
        [2, 2, 2, 2],
        "default policy spreads: {fill:?}"
    );

    // Swap while pods are being created.
    let creator = {
        let pods = pods.clone();
        tokio::spawn(async move {
            for i in 0..16 {
                pods.create(
                    &PostParams::default(),
                    &pod(&format!("b{i}"), "1", json!({})),
                )
                .await
                .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let (ok, out, err) = shoal(
        &s,
        &[
            "plugin",
            "install",
            "--kind",
            "scheduler",
            "--name",
            "binpack",
            "--default",
            artifacts::BINPACK_PATH,
        ],
    );
    assert!(ok, "install failed: {out} {err}");
    assert!(out.contains("binpack") && out.contains("Ready"), "{out}");
    creator.await.unwrap();
    for i in 0..16 {
        bound_node(&pods, &format!("b{i}")).await;
    }

    // After the swap: the most-allocated node takes the next pods.
    let mut before: BTreeMap<String, usize> = BTreeMap::new();
    for p in pods.list(&Default::default()).await.unwrap().items {
        *before
            .entry(p.spec.unwrap().node_name.unwrap())
            .or_default() += 1;
    }
    let top = *before.values().max().unwrap();
    let mut after = Vec::new();
    for i in 0..6 {
        pods.create(&pp, &pod(&format!("c{i}"), "1", json!({})))
            .await
            .unwrap();
        after.push(bound_node(&pods, &format!("c{i}")).await);
    }
    after.dedup();
    assert_eq!(
        after.len(),
        1,
        "binpack packs the new pods onto one node: {after:?}"
    );
    assert_eq!(
        before.get(&after[0]).copied().unwrap_or(0),
        top,
        "onto the fullest node: {before:?} {after:?}"
    );

    let bound = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bound.len(), 30, "every pod bound exactly once");
    let (ok, out, _) = shoal(&s, &["plugin", "list"]);
    assert!(
        ok && out.contains("binpack") && out.contains("default-scheduler"),
        "{out}"
    );
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_plugins_fail_only_their_own_calls() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let plugs = plugins(client.clone());
    let pp = PostParams::default();
    nodes
        .create(&pp, &node("n0", "8", json!({}), json!([])))
        .await
        .unwrap();

    // The wrong world is refused at install, with a clear message.
    let (ok, _, err) = shoal(
        &s,
        &[
            "plugin",
            "install",
            "--kind",
            "scheduler",
            "--name",
            "bad",
            artifacts::FAULT_BAD_WORLD_PATH,
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("not a component of the `scheduler` world"),
        "{err}"
    );
    assert!(plugs.get_opt("bad").await.unwrap().is_none());

    let faults = [
        ("trap", artifacts::FAULT_TRAP_PATH, "trapped"),
        ("loop", artifacts::FAULT_LOOP_PATH, "timed out"),
        ("alloc", artifacts::FAULT_ALLOC_PATH, ""),
    ];
    for (i, (name, path, expect)) in faults.iter().enumerate() {
        // The faulty policy joins the default profile next to the default policy.
        let (ok, out, err) = shoal(
            &s,
            &[
                "plugin",
                "install",
                "--kind",
                "scheduler",
                "--name",
                name,
                "--profile",
                "default-scheduler",
                path,
            ],
        );
        assert!(ok, "{out} {err}");
        let p = format!("victim-{i}");
        pods.create(&pp, &pod(&p, "100m", json!({}))).await.unwrap();
        // The pod is still scheduled by the remaining policies...
        assert_eq!(bound_node(&pods, &p).await, "n0");
        // ...and the plugin shows Failed with the reason.
        let o = plugin_state(&plugs, name, "Failed").await;
        let reason = o
            .data
            .pointer("/status/reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        assert!(
            reason.contains(name) && reason.contains(expect),
            "{name}: {reason}"
        );
        if *name == "alloc" {
            assert!(
                reason.contains("limit") || reason.contains("memory") || reason.contains("trapped"),
                "{reason}"
            );
        }
    }
    // The server kept serving throughout.
    pods.create(&pp, &pod("after", "100m", json!({})))
        .await
        .unwrap();
    assert_eq!(bound_node(&pods, "after").await, "n0");
    assert!(s.stop());
}
