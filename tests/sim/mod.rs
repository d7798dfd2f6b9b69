//! Test support for workload controllers: simulated nodes, a simulated
//! kubelet that runs bound pods by writing their status, and waiting on the
//! state a watch shows (never on sleeps).
#![allow(dead_code)]

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Image convention: pods with this image succeed after [`Kubelet::run_for`].
pub const IMAGE_OK: &str = "test/ok";
/// Pods with this image fail after [`Kubelet::run_for`].
pub const IMAGE_FAIL: &str = "test/fail";
/// Pods with any other image (say this one) keep running.
pub const IMAGE_RUN: &str = "test/run";
/// Pods with this image keep running but never become Ready.
pub const IMAGE_UNREADY: &str = "test/unready";

/// A Ready node with room for many pods.
pub fn node(name: &str, taints: Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints},
        "status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .unwrap()
}

/// Create simulated nodes.
pub async fn add_nodes(client: &kube::Client, names: &[&str]) {
    let nodes: Api<Node> = Api::all(client.clone());
    for n in names {
        nodes
            .create(&PostParams::default(), &node(n, json!([])))
            .await
            .unwrap();
    }
}

/// RFC 3339 UTC now, second precision.
fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .unwrap()
        .to_string()
}

/// Plays the node agent for every pod bound to a node in one namespace:
/// marks it Running and Ready, then Succeeded or Failed by image, and
/// finishes graceful deletions (a delete with grace 0) after `delete_after`.
pub struct Kubelet {
    /// How long `test/ok` and `test/fail` containers run.
    pub run_for: Duration,
    /// How long a graceful deletion takes.
    pub delete_after: Duration,
}

impl Default for Kubelet {
    fn default() -> Self {
        Kubelet {
            run_for: Duration::from_millis(300),
            delete_after: Duration::from_millis(100),
        }
    }
}

impl Kubelet {
    /// Start in the background; the task ends with the test's runtime.
    pub fn start(self, client: kube::Client, ns: &str) -> tokio::task::JoinHandle<()> {
        self.start_with(client, ns, None)
    }

    /// Like [`Kubelet::start`], but pods on nodes whose [`Heartbeats`] are
    /// stopped are left alone, as a dead kubelet would.
    pub fn start_for(
        self,
        client: kube::Client,
        ns: &str,
        heartbeats: &Heartbeats,
    ) -> tokio::task::JoinHandle<()> {
        self.start_with(client, ns, Some(heartbeats.stopped.clone()))
    }

    fn start_with(
        self,
        client: kube::Client,
        ns: &str,
        dead: Option<Arc<Mutex<HashSet<String>>>>,
    ) -> tokio::task::JoinHandle<()> {
        let pods: Api<Pod> = Api::namespaced(client, ns);
        let started = Arc::new(Mutex::new(HashSet::<String>::new()));
        let deleting = Arc::new(Mutex::new(HashSet::<String>::new()));
        tokio::spawn(async move {
            let mut stream = watcher(pods.clone(), watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Ok(Some(p)) = stream.try_next().await {
                // Only pods bound to a node are the kubelet's.
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
                    continue;
                }
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                if let (Some(d), Some(n)) = (&dead, &node) {
                    if d.lock().unwrap().contains(n) {
                        continue;
                    }
                }
                let name = p.metadata.name.clone().unwrap();
                let uid = p.metadata.uid.clone().unwrap();
                if p.metadata.deletion_timestamp.is_some() {
                    if deleting.lock().unwrap().insert(uid.clone()) {
                        let pods = pods.clone();
                        let wait = self.delete_after;
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let dp = DeleteParams {
                                grace_period_seconds: Some(0),
                                preconditions: Some(kube::api::Preconditions {
                                    uid: Some(uid),
                                    resource_version: None,
                                }),
                                ..Default::default()
                            };
                            let _ = pods.delete(&name, &dp).await;
                        });
                    }
                    continue;
                }
                let phase = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                if phase != "Pending" || !started.lock().unwrap().insert(uid) {
                    continue;
                }
                let spec = p.spec.clone().unwrap();
                let image = spec.containers[0].image.clone().unwrap_or_default();
                let containers: Vec<String> =
                    spec.containers.iter().map(|c| c.name.clone()).collect();
                let pods = pods.clone();
                let run_for = self.run_for;
                tokio::spawn(async move {
                    let t0 = now();
                    let statuses: Vec<Value> = containers
                        .iter()
                        .map(|c| json!({"name": c, "image": image, "imageID": "", "ready": image != IMAGE_UNREADY, "restartCount": 0, "started": true, "state": {"running": {"startedAt": t0}}}))
                        .collect();
                    let running = json!({"status": {"phase": "Running", "hostIP": "10.0.0.1", "startTime": t0,
                        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t0},
                                       {"type": "Ready", "status": if image == IMAGE_UNREADY { "False" } else { "True" }, "lastTransitionTime": t0}],
                        "containerStatuses": statuses}});
                    if pods
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&running))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let (phase, code, reason) = match image.as_str() {
                        IMAGE_OK => ("Succeeded", 0, "Completed"),
                        IMAGE_FAIL => ("Failed", 1, "Error"),
                        _ => return,
                    };
                    tokio::time::sleep(run_for).await;
                    let t1 = now();
                    let statuses: Vec<Value> = containers
                        .iter()
                        .map(|c| json!({"name": c, "image": image, "imageID": "", "ready": false, "restartCount": 0, "started": false,
                            "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": t0, "finishedAt": t1}}}))
                        .collect();
                    let done = json!({"status": {"phase": phase,
                        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t0},
                                       {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": t1}],
                        "containerStatuses": statuses}});
                    let _ = pods
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&done))
                        .await;
                });
            }
        })
    }
}

/// Simulated node heartbeats, as an agent sends them: each node's Lease in
/// `kube-node-lease` is renewed every `every`, and a node whose Ready
/// condition is not True (say, Unknown after a silence) posts Ready=True
/// with a fresh `lastHeartbeatTime`. [`Heartbeats::stop`] silences a node.
pub struct Heartbeats {
    stopped: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeats {
    /// Start heartbeats for `nodes` (which must exist).
    pub fn start(client: kube::Client, nodes: &[&str], every: Duration) -> Heartbeats {
        use k8s_openapi::api::coordination::v1::Lease;
        let stopped = Arc::new(Mutex::new(HashSet::<String>::new()));
        let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        let s = stopped.clone();
        let task = tokio::spawn(async move {
            let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
            let node_api: Api<Node> = Api::all(client);
            loop {
                for n in &names {
                    if s.lock().unwrap().contains(n) {
                        continue;
                    }
                    let renew = k8s_openapi::jiff::Timestamp::now().to_string();
                    let spec = json!({"spec": {"holderIdentity": n, "leaseDurationSeconds": 40, "renewTime": renew}});
                    if leases
                        .patch(n, &PatchParams::default(), &Patch::Merge(&spec))
                        .await
                        .is_err()
                    {
                        let mut body: Value =
                            json!({"metadata": {"name": n, "namespace": "kube-node-lease"}});
                        body["spec"] = spec["spec"].clone();
                        let _ = leases
                            .create(
                                &PostParams::default(),
                                &serde_json::from_value(body).unwrap(),
                            )
                            .await;
                    }
                    let Ok(node) = node_api.get(n).await else {
                        continue;
                    };
                    let ready = node
                        .status
                        .and_then(|st| st.conditions)
                        .unwrap_or_default()
                        .into_iter()
                        .find(|c| c.type_ == "Ready")
                        .map(|c| c.status);
                    if ready.as_deref() != Some("True") {
                        let t = now();
                        let st = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                            "reason": "KubeletReady", "message": "simulated kubelet is posting ready status",
                            "lastHeartbeatTime": t, "lastTransitionTime": t}]}});
                        let _ = node_api
                            .patch_status(n, &PatchParams::default(), &Patch::Strategic(&st))
                            .await;
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        Heartbeats { stopped, task }
    }

    /// Silence `node`: no more Lease renewals or status, and its pods are
    /// left alone by a kubelet started with [`Kubelet::start_for`].
    pub fn stop(&self, node: &str) {
        self.stopped.lock().unwrap().insert(node.to_string());
    }

    /// Let `node` heartbeat again.
    pub fn resume(&self, node: &str) {
        self.stopped.lock().unwrap().remove(node);
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch `api` (optionally by label selector) until `done` holds for the
/// current set of objects (by name), calling `each` on every intermediate set.
pub async fn watch_until<K>(
    api: &Api<K>,
    labels: Option<&str>,
    timeout: Duration,
    mut each: impl FnMut(&BTreeMap<String, K>),
    mut done: impl FnMut(&BTreeMap<String, K>) -> bool,
) -> BTreeMap<String, K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut cfg = watcher::Config::default();
    if let Some(l) = labels {
        cfg = cfg.labels(l);
    }
    let mut stream = watcher(api.clone(), cfg).boxed();
    let mut set: BTreeMap<String, K> = BTreeMap::new();
    let mut init: BTreeMap<String, K> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.try_next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "condition not reached within {timeout:?}; last state: {:?}",
                    set.keys().collect::<Vec<_>>()
                )
            })
            .expect("watch failed")
            .expect("watch ended");
        match ev {
            watcher::Event::Apply(o) => {
                set.insert(o.meta().name.clone().unwrap(), o);
            }
            watcher::Event::Delete(o) => {
                set.remove(o.meta().name.as_deref().unwrap());
            }
            watcher::Event::Init => {
                init.clear();
                continue;
            }
            watcher::Event::InitApply(o) => {
                init.insert(o.meta().name.clone().unwrap(), o);
                continue;
            }
            watcher::Event::InitDone => set = std::mem::take(&mut init),
        }
        each(&set);
        if done(&set) {
            return set;
        }
    }
}
