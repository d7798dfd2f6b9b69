//! End to end: the ReplicaSet and Deployment controllers against a real
//! `shoal server`, with simulated nodes. There is no node agent yet, so each
//! test runs a small kubelet stand-in that marks bound pods Running (and Ready,
//! or never Ready for some images) and finishes graceful deletions. Every wait
//! is on a watch, never on a sleep.

mod common;

use common::Server;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

const KUBECTL: &str = "/usr/bin/kubectl";
const NS: &str = "default";

fn have_kubectl() -> bool {
    if std::path::Path::new(KUBECTL).exists() {
        return true;
    }
    eprintln!("SKIP: {KUBECTL} is not installed; this test drives the real kubectl");
    false
}

/// Run kubectl against the server; (success, stdout, stderr).
async fn kubectl(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(KUBECTL)
        .env("KUBECONFIG", &s.kubeconfig)
        .args(["-n", NS, "--request-timeout=30s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(s: &Server, args: &[&str]) -> String {
    let (good, out, err) = kubectl(s, args).await;
    assert!(
        good,
        "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .unwrap()
}

/// A server with `n` simulated nodes and a kube client.
async fn cluster(dir: &std::path::Path, n: usize) -> (Server, kube::Client) {
    let s = Server::start(dir);
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..n {
        nodes
            .create(&PostParams::default(), &node(&format!("node-{i}")))
            .await
            .unwrap();
    }
    (s, client)
}

/// How the kubelet stand-in treats images.
#[derive(Clone)]
struct Kubelet {
    /// Images whose pods become Running and Ready.
    ready: HashSet<&'static str>,
    /// Images whose pods become Running but never Ready.
    never_ready: HashSet<&'static str>,
    /// Time from binding to Running (container start time, not synchronization).
    delay: Duration,
    /// Time a deleted pod takes to stop (graceful shutdown, not synchronization).
    stop_delay: Duration,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn running_status(pod: &Pod, ready: bool) -> Value {
    let t = now();
    let r = if ready { "True" } else { "False" };
    let containers: Vec<Value> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready, "started": true,
            "restartCount": 0, "state": {"running": {"startedAt": t}}})
        })
        .collect();
    json!({"status": {
        "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.1.0.1", "startTime": t,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
            {"type": "Initialized", "status": "True", "lastTransitionTime": t},
            {"type": "ContainersReady", "status": r, "lastTransitionTime": t},
            {"type": "Ready", "status": r, "lastTransitionTime": t},
        ],
        "containerStatuses": containers,
    }})
}

fn image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Run the kubelet stand-in for the namespace until the handle is aborted.
fn start_kubelet(client: kube::Client, k: Kubelet) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, NS);
        let mut started: HashSet<String> = HashSet::new();
        let mut finished: HashSet<String> = HashSet::new();
        let mut stream = watcher(pods.clone(), watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = stream.next().await {
            let pod = match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
                _ => continue,
            };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            if terminating(&pod) {
                // The containers are gone at once: finish the graceful deletion.
                if finished.insert(uid.clone()) {
                    let pods = pods.clone();
                    let stop_delay = k.stop_delay;
                    tokio::spawn(async move {
                        tokio::time::sleep(stop_delay).await;
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
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some();
            let pending = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Pending")
                == "Pending";
            if !bound || !pending || started.contains(&uid) {
                continue;
            }
            let img = image(&pod);
            let ready = if k.ready.contains(img.as_str()) {
                true
            } else if k.never_ready.contains(img.as_str()) {
                false
            } else {
                continue;
            };
            started.insert(uid);
            let pods = pods.clone();
            let delay = k.delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = pods
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(running_status(&pod, ready)),
                    )
                    .await;
            });
        }
    })
}

/// Watch a kind until `done` holds for the current set of objects (by name).
async fn watch_until<K>(
    api: &Api<K>,
    cfg: watcher::Config,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&BTreeMap<String, K>) -> bool,
) -> BTreeMap<String, K>
where
    K: Resource
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let mut stream = watcher(api.clone(), cfg).default_backoff().boxed();
    let mut objects: BTreeMap<String, K> = BTreeMap::new();
    let mut init: BTreeMap<String, K> = BTreeMap::new();
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, stream.try_next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out after {limit:?} waiting for {what}; last state: {:?}",
                    objects.keys().collect::<Vec<_>>()
                )
            })
            .unwrap()
            .expect("watch ended");
        match ev {
            watcher::Event::Init => init.clear(),
            watcher::Event::InitApply(o) => {
                init.insert(o.meta().name.clone().unwrap_or_default(), o);
                continue;
            }
            watcher::Event::InitDone => objects = std::mem::take(&mut init),
            watcher::Event::Apply(o) => {
                objects.insert(o.meta().name.clone().unwrap_or_default(), o);
            }
            watcher::Event::Delete(o) => {
                objects.remove(&o.meta().name.clone().unwrap_or_default());
            }
        }
        if done(&objects) {
            return objects;
        }
    }
}

fn labelled(app: &str) -> watcher::Config {
    watcher::Config::default().labels(&format!("app={app}"))
}

fn deployment(
    name: &str,
    replicas: i32,
    image: &str,
    strategy: Value,
    extra_spec: Value,
) -> Deployment {
    let mut spec = json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "strategy": strategy,
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}},
    });
    for (k, v) in extra_spec.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn rolling(surge: Value, unavailable: Value) -> Value {
    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})
}

fn active_pods(pods: &BTreeMap<String, Pod>) -> Vec<&Pod> {
    pods.values().filter(|p| !terminating(p)).collect()
}

/// The Deployment's template image.
async fn template_image(deploys: &Api<Deployment>, name: &str) -> String {
    let d = deploys.get(name).await.unwrap();
    d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

/// (revision, change-cause) rows of `kubectl rollout history`.
fn history_rows(out: &str) -> Vec<(i64, String)> {
    out.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let rev = parts.next()?.parse().ok()?;
            Some((rev, parts.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_respects_surge_and_unavailable_at_every_moment() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = cluster(dir.path(), 4).await;
    let kubelet = start_kubelet(
        client.clone(),
        Kubelet {
            ready: HashSet::from(["web:1", "web:2"]),
            never_ready: HashSet::new(),
            delay: Duration::from_millis(150),
            stop_delay: Duration::ZERO,
        },
    );
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let started = Instant::now();
    deploys
        .create(
            &PostParams::default(),
            &deployment("web", 10, "web:1", rolling(json!(2), json!(1)), json!({})),
        )
        .await
        .unwrap();
    ok(
        &s,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )
    .await;
    let initial = started.elapsed();

    // The state now, then every change from a watch over the whole rollout.
    let list = pods
        .list(&kube::api::ListParams::default().labels("app=web"))
        .await
        .unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    let mut state: HashMap<String, Pod> = list
        .items
        .into_iter()
        .map(|p| (p.metadata.uid.clone().unwrap(), p))
        .collect();
    assert_eq!(
        state
            .values()
            .filter(|p| is_ready(p) && image(p) == "web:1")
            .count(),
        10
    );
    let mut w = pods
        .watch(&WatchParams::default().labels("app=web"), &rv)
        .await
        .unwrap()
        .boxed();

    let rolled = Instant::now();
    ok(&s, &["set", "image", "deployment/web", "c=web:2"]).await;
    let (mut min_ready, mut max_active, mut events, mut new_pods) =
        (usize::MAX, 0usize, 0usize, HashSet::new());
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(90), w.try_next())
            .await
            .expect("the rollout keeps moving")
            .unwrap()
            .expect("watch open");
        match ev {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                if image(&p) == "web:2" {
                    new_pods.insert(p.metadata.uid.clone().unwrap());
                }
                state.insert(p.metadata.uid.clone().unwrap(), p);
            }
            WatchEvent::Deleted(p) => {
                state.remove(&p.metadata.uid.clone().unwrap());
            }
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        }
        events += 1;
        let active: Vec<&Pod> = state.values().filter(|p| !terminating(p)).collect();
        let ready = active.iter().filter(|p| is_ready(p)).count();
        min_ready = min_ready.min(ready);
        max_active = max_active.max(active.len());
        assert!(
            ready >= 9,
            "only {ready} ready pods during the rollout (maxUnavailable 1)"
        );
        assert!(
            active.len() <= 12,
            "{} pods during the rollout (maxSurge 2)",
            active.len()
        );
        if active.len() == 10 && active.iter().all(|p| is_ready(p) && image(p) == "web:2") {
            break;
        }
    }
    let took = rolled.elapsed();
    ok(
        &s,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await;
    assert!(
        new_pods.len() >= 10,
        "the watch saw {} new pods",
        new_pods.len()
    );
    // The rollout used the room it had: above 10 pods, and below 10 ready.
    assert!(max_active > 10, "surge was never used");
    assert!(min_ready < 10, "unavailability was never used");
    let d = deploys.get("web").await.unwrap();
    let st = d.status.unwrap();
    assert_eq!(
        (
            st.replicas,
            st.updated_replicas,
            st.ready_replicas,
            st.available_replicas
        ),
        (Some(10), Some(10), Some(10), Some(10))
    );
    assert_eq!(
        d.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    let conds = st.conditions.unwrap();
    assert!(
        conds.iter().any(|c| c.type_ == "Progressing"
            && c.status == "True"
            && c.reason.as_deref() == Some("NewReplicaSetAvailable")),
        "{conds:?}"
    );
    assert!(conds.iter().any(|c| c.type_ == "Available"
        && c.status == "True"
        && c.reason.as_deref() == Some("MinimumReplicasAvailable")));
    // Two ReplicaSets named <deployment>-<pod-template-hash>; the old one is empty.
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let list = rss.list(&Default::default()).await.unwrap().items;
    assert_eq!(list.len(), 2);
    for rs in &list {
        let hash = rs.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
        assert_eq!(
            rs.metadata.name.as_deref(),
            Some(format!("web-{hash}").as_str())
        );
        assert_eq!(
            rs.spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .as_ref()
                .unwrap()["pod-template-hash"],
            hash
        );
        let owner = &rs.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Deployment", Some(true))
        );
    }
    // Events tell the story.
    let evs: Api<Event> = Api::namespaced(client.clone(), NS);
    let evs = evs.list(&Default::default()).await.unwrap().items;
    assert!(evs
        .iter()
        .any(|e| e.reason.as_deref() == Some("ScalingReplicaSet")));
    assert!(evs
        .iter()
        .any(|e| e.reason.as_deref() == Some("SuccessfulCreate")));
    eprintln!("timing: 10 replicas created and ready in {initial:?}; rolling update to a new image in {took:?} ({events} pod events)");
    kubelet.abort();
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_history_undo_restart_pause_and_scale() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = cluster(dir.path(), 2).await;
    let kubelet = start_kubelet(
        client.clone(),
        Kubelet {
            ready: HashSet::from(["app:1", "app:2", "app:3"]),
            never_ready: HashSet::new(),
            delay: Duration::ZERO,
            stop_delay: Duration::ZERO,
        },
    );
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    deploys
        .create(
            &PostParams::default(),
            &deployment(
                "app",
                3,
                "app:1",
                rolling(json!("25%"), json!("25%")),
                json!({}),
            ),
        )
        .await
        .unwrap();
    ok(
        &s,
        &["rollout", "status", "deployment/app", "--timeout=60s"],
    )
    .await;
    ok(&s, &["set", "image", "deployment/app", "c=app:2"]).await;
    ok(
        &s,
        &[
            "annotate",
            "deployment/app",
            "kubernetes.io/change-cause=move to app:2",
        ],
    )
    .await;
    ok(
        &s,
        &["rollout", "status", "deployment/app", "--timeout=60s"],
    )
    .await;

    let rows = history_rows(&ok(&s, &["rollout", "history", "deployment/app"]).await);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 2],
        "{rows:?}"
    );
    assert_eq!(rows[1].1, "move to app:2");

    // Undo goes back to the previous template, reusing its ReplicaSet under a new revision.
    let out = ok(&s, &["rollout", "undo", "deployment/app"]).await;
    assert!(out.contains("rolled back"), "{out}");
    ok(
        &s,
        &["rollout", "status", "deployment/app", "--timeout=60s"],
    )
    .await;
    assert_eq!(template_image(&deploys, "app").await, "app:1");
    let all = rss.list(&Default::default()).await.unwrap().items;
    assert_eq!(all.len(), 2, "undo reuses the old ReplicaSet");
    let rows = history_rows(&ok(&s, &["rollout", "history", "deployment/app"]).await);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![2, 3],
        "{rows:?}"
    );
    let reused = all
        .iter()
        .find(|rs| {
            rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"] == "3"
        })
        .unwrap();
    assert_eq!(
        reused.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision-history"],
        "1"
    );
    let running = watch_until(
        &pods,
        labelled("app"),
        Duration::from_secs(30),
        "app:1 pods",
        |m| {
            let a = active_pods(m);
            a.len() == 3 && a.iter().all(|p| image(p) == "app:1" && is_ready(p))
        },
    )
    .await;
    assert_eq!(active_pods(&running).len(), 3);

    // Undo to a given revision.
    ok(
        &s,
        &["rollout", "undo", "deployment/app", "--to-revision=2"],
    )
    .await;
    ok(
        &s,
        &["rollout", "status", "deployment/app", "--timeout=60s"],
    )
    .await;
    assert_eq!(template_image(&deploys, "app").await, "app:2");
    let d = deploys.get("app").await.unwrap();
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "4"
    );

    // Restart: a template annotation, so a new ReplicaSet and new pods of the same image.
    let before: HashSet<String> = active_pods(
        &watch_until(
            &pods,
            labelled("app"),
            Duration::from_secs(30),
            "app:2 pods",
            |m| active_pods(m).len() == 3,
        )
        .await,
    )
    .iter()
    .map(|p| p.metadata.name.clone().unwrap())
    .collect();
    ok(&s, &["rollout", "restart", "deployment/app"]).await;
    ok(
        &s,
        &["rollout", "status", "deployment/app", "--timeout=60s"],
    )
    .await;
    let after = watch_until(
        &pods,
        labelled("app"),
        Duration::from_secs(30),
        "restarted pods",
        |m| {
            let a = active_pods(m);
            a.len() == 3
                && a.iter()
                    .all(|p| is_ready(p) && !before.contains(p.metadata.name.as_ref().unwrap()))
        },
    )
    .await;
    assert!(active_pods(&after).iter().all(|p| image(p) == "app:2"
        && p.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("kubectl.kubernetes.io/restartedAt"))));
    assert_eq!(rss.list(&Default::default()).await.unwrap().items.len(), 3);

    // Paused: the new template is observed but not rolled out, until resumed.
    ok(&s, &["rollout", "pause", "deployment/app"]).await;
    ok(&s, &["set", "image", "deployment/app", "c=app:3"]).await;
    let observed = |d: Option<&Deployment>| {
        d.is_some_and(|d| {
            let st = d.status.as_ref();
            st.and_then(|s| s.observed_generation) == d.metadata.generation
                && st.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                    c.iter().any(|c| {
                        c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused")
                    })
                })
        })
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(deploys.clone(), "app", observed),
    )
    .await
    .expect("paused deployment observed")
    .unwrap();
    let images: Vec<String> = rss
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|rs| {
            rs.spec
                .as_ref()
                .unwrap()
                .template
                .as_ref()
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .image
                .clone()
                .unwrap()
        })
        .collect();
    assert!(
        !images.contains(&"app:3".to_string()),
        "a paused deployment rolled out: {images:?}"
    );
    ok(&s, &["rollout", "resume", "deployment/app"]).await;
    ok(
        &s,
        &["rollout", "status", "deployment/app", "--timeout=60s"],
    )
    .await;

    // kubectl scale goes through the scale subresource; the controller follows.
    ok(&s, &["scale", "deployment/app", "--replicas=5"]).await;
    ok(
        &s,
        &["rollout", "status", "deployment/app", "--timeout=60s"],
    )
    .await;
    watch_until(
        &pods,
        labelled("app"),
        Duration::from_secs(30),
        "5 app:3 pods",
        |m| {
            let a = active_pods(m);
            a.len() == 5 && a.iter().all(|p| image(p) == "app:3" && is_ready(p))
        },
    )
    .await;

    // revisionHistoryLimit: only the newest old ReplicaSet stays.
    deploys
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revisionHistoryLimit": 1}})),
        )
        .await
        .unwrap();
    let left = watch_until(
        &rss,
        watcher::Config::default(),
        Duration::from_secs(30),
        "old ReplicaSets cleaned up",
        |m| m.len() == 2,
    )
    .await;
    let revs: HashSet<String> = left
        .values()
        .map(|rs| {
            rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"].clone()
        })
        .collect();
    assert_eq!(revs, HashSet::from(["5".to_string(), "6".to_string()]));
    kubelet.abort();
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stuck_rollout_exceeds_its_deadline_and_old_pods_keep_serving() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = cluster(dir.path(), 2).await;
    let kubelet = start_kubelet(
        client.clone(),
        Kubelet {
            ready: HashSet::from(["good:1"]),
            never_ready: HashSet::from(["bad:1"]),
            delay: Duration::ZERO,
            stop_delay: Duration::ZERO,
        },
    );
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    deploys
        .create(
            &PostParams::default(),
            &deployment(
                "stuck",
                4,
                "good:1",
                rolling(json!(1), json!(1)),
                json!({"progressDeadlineSeconds": 5}),
            ),
        )
        .await
        .unwrap();
    ok(
        &s,
        &["rollout", "status", "deployment/stuck", "--timeout=60s"],
    )
    .await;
    ok(&s, &["set", "image", "deployment/stuck", "c=bad:1"]).await;
    let exceeded = |d: Option<&Deployment>| {
        d.and_then(|d| d.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "Progressing"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                })
            })
    };
    let started = Instant::now();
    let d = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(deploys.clone(), "stuck", exceeded),
    )
    .await
    .expect("deadline reported")
    .unwrap()
    .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "reported after {took:?}, before the 5 s deadline"
    );
    let (good, _, err) = kubectl(
        &s,
        &["rollout", "status", "deployment/stuck", "--timeout=30s"],
    )
    .await;
    assert!(
        !good && err.contains("exceeded its progress deadline"),
        "{err}"
    );

    // Old pods keep serving: at least replicas - maxUnavailable ready old pods.
    let list = pods
        .list(&kube::api::ListParams::default().labels("app=stuck"))
        .await
        .unwrap()
        .items;
    let old_ready = list
        .iter()
        .filter(|p| !terminating(p) && image(p) == "good:1" && is_ready(p))
        .count();
    let new = list
        .iter()
        .filter(|p| !terminating(p) && image(p) == "bad:1")
        .count();
    assert!(old_ready >= 3, "{old_ready} old pods ready");
    assert!(new >= 1 && list.iter().filter(|p| !terminating(p)).count() <= 5);
    let st = d.status.unwrap();
    assert!(st
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True"));
    assert_eq!(st.available_replicas, Some(3));
    eprintln!("timing: ProgressDeadlineExceeded (deadline 5 s) reported {took:?} after the update");
    kubelet.abort();
    assert!(s.stop());
}

fn replica_set(name: &str, replicas: i32, image: &str) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}}},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_set_replaces_deleted_pods_and_scales_down_unready_first() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = cluster(dir.path(), 3).await;
    let kubelet = start_kubelet(
        client.clone(),
        Kubelet {
            ready: HashSet::from(["rs:1"]),
            never_ready: HashSet::new(),
            delay: Duration::ZERO,
            stop_delay: Duration::ZERO,
        },
    );
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    rss.create(&PostParams::default(), &replica_set("rs", 5, "rs:1"))
        .await
        .unwrap();
    let all_ready = |n: usize| {
        move |m: &BTreeMap<String, Pod>| {
            let a = active_pods(m);
            a.len() == n && a.iter().all(|p| is_ready(p))
        }
    };
    let first = watch_until(
        &pods,
        labelled("rs"),
        Duration::from_secs(30),
        "5 ready pods",
        all_ready(5),
    )
    .await;
    for p in first.values() {
        assert!(
            p.metadata.generate_name.as_deref() == Some("rs-")
                && p.metadata.name.as_ref().unwrap().starts_with("rs-")
        );
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("ReplicaSet", "rs", Some(true), Some(true))
        );
    }

    // Delete three pods: three new ones take their place.
    let doomed: Vec<String> = first.keys().take(3).cloned().collect();
    for n in &doomed {
        pods.delete(n, &DeleteParams::default()).await.unwrap();
    }
    let healed = watch_until(
        &pods,
        labelled("rs"),
        Duration::from_secs(30),
        "replacements",
        |m| all_ready(5)(m) && doomed.iter().all(|d| !m.contains_key(d)),
    )
    .await;
    let replacements = healed.keys().filter(|n| !first.contains_key(*n)).count();
    assert_eq!(replacements, 3);
    let rs_ready = |n: i32| {
        move |r: Option<&ReplicaSet>| {
            r.and_then(|r| r.status.as_ref()).is_some_and(|s| {
                s.replicas == 5 && s.ready_replicas == Some(n) && s.available_replicas == Some(n)
            })
        }
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(rss.clone(), "rs", rs_ready(5)),
    )
    .await
    .expect("status catches up")
    .unwrap();

    // Two pods turn unready (their probe fails); scaling to 3 removes exactly those.
    let unready: Vec<String> = healed.keys().skip(1).take(2).cloned().collect();
    for n in &unready {
        let t = now();
        let patch = json!({"status": {"conditions": [
            {"type": "ContainersReady", "status": "False", "lastTransitionTime": t},
            {"type": "Ready", "status": "False", "lastTransitionTime": t}]}});
        pods.patch_status(n, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(rss.clone(), "rs", rs_ready(3)),
    )
    .await
    .expect("unready pods observed")
    .unwrap();
    ok(&s, &["scale", "rs/rs", "--replicas=3"]).await;
    let scaled = watch_until(
        &pods,
        labelled("rs"),
        Duration::from_secs(30),
        "3 pods",
        |m| active_pods(m).len() == 3 && m.len() == 3,
    )
    .await;
    for n in &unready {
        assert!(
            !scaled.contains_key(n),
            "unready pod {n} survived the scale-down"
        );
    }
    assert!(scaled.values().all(is_ready));
    // The status is written after the deletions' events.
    let scaled_down = |r: Option<&ReplicaSet>| {
        r.and_then(|r| r.status.as_ref())
            .is_some_and(|s| s.replicas == 3 && s.ready_replicas == Some(3))
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(rss.clone(), "rs", scaled_down),
    )
    .await
    .expect("status after scale-down")
    .unwrap();
    let evs: Api<Event> = Api::namespaced(client.clone(), NS);
    let evs = evs.list(&Default::default()).await.unwrap().items;
    let count = |reason: &str| {
        evs.iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.involved_object.name.as_deref() == Some("rs")
            })
            .count()
    };
    assert_eq!(count("SuccessfulCreate"), 8);
    assert_eq!(count("SuccessfulDelete"), 2);
    kubelet.abort();
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_set_adopts_orphans_and_releases_relabelled_pods() {
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = cluster(dir.path(), 1).await;
    let kubelet = start_kubelet(
        client.clone(),
        Kubelet {
            ready: HashSet::from(["orphan:1"]),
            never_ready: HashSet::new(),
            delay: Duration::ZERO,
            stop_delay: Duration::ZERO,
        },
    );
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let orphan: Pod = serde_json::from_value(json!({"metadata": {"name": "stray", "labels": {"app": "adopt"}}, "spec": {"containers": [{"name": "c", "image": "orphan:1"}]}})).unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    let rs = rss
        .create(&PostParams::default(), &replica_set("adopt", 2, "orphan:1"))
        .await
        .unwrap();
    let rs_uid = rs.metadata.uid.clone().unwrap();
    let owned_by_rs = |p: &Pod| {
        p.metadata.owner_references.as_ref().is_some_and(|o| {
            o.iter()
                .any(|r| r.uid == rs_uid && r.controller == Some(true))
        })
    };
    let adopted = watch_until(
        &pods,
        labelled("adopt"),
        Duration::from_secs(30),
        "adoption",
        |m| m.len() == 2 && m.values().all(owned_by_rs),
    )
    .await;
    assert!(
        adopted.contains_key("stray"),
        "the orphan was adopted rather than a second pod created"
    );

    // Relabelled: released (ownerReference removed) and replaced.
    pods.patch(
        "stray",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "elsewhere"}}})),
    )
    .await
    .unwrap();
    watch_until(
        &pods,
        labelled("adopt"),
        Duration::from_secs(30),
        "a replacement",
        |m| m.len() == 2 && !m.contains_key("stray") && m.values().all(owned_by_rs),
    )
    .await;
    let stray = pods.get("stray").await.unwrap();
    assert!(
        stray
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty(),
        "released pod keeps no reference"
    );
    kubelet.abort();
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recreate_stops_old_pods_before_starting_new_ones() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = cluster(dir.path(), 2).await;
    let kubelet = start_kubelet(
        client.clone(),
        Kubelet {
            ready: HashSet::from(["re:1", "re:2"]),
            never_ready: HashSet::new(),
            delay: Duration::from_millis(50),
            // Old pods take a while to stop, so starting new ones early would show.
            stop_delay: Duration::from_millis(500),
        },
    );
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    deploys
        .create(
            &PostParams::default(),
            &deployment("re", 3, "re:1", json!({"type": "Recreate"}), json!({})),
        )
        .await
        .unwrap();
    ok(&s, &["rollout", "status", "deployment/re", "--timeout=60s"]).await;
    let list = pods
        .list(&kube::api::ListParams::default().labels("app=re"))
        .await
        .unwrap();
    let mut w = pods
        .watch(
            &WatchParams::default().labels("app=re"),
            list.metadata.resource_version.as_ref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    let mut state: HashMap<String, Pod> = list
        .items
        .into_iter()
        .map(|p| (p.metadata.uid.clone().unwrap(), p))
        .collect();
    ok(&s, &["set", "image", "deployment/re", "c=re:2"]).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), w.try_next())
            .await
            .expect("recreate keeps moving")
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                state.insert(p.metadata.uid.clone().unwrap(), p);
            }
            WatchEvent::Deleted(p) => {
                state.remove(&p.metadata.uid.clone().unwrap());
            }
            _ => continue,
        }
        let old = state.values().filter(|p| image(p) == "re:1").count();
        let new = state.values().filter(|p| image(p) == "re:2").count();
        // Old pods, terminating ones included, are all gone before any new one exists.
        assert!(old == 0 || new == 0, "{old} old and {new} new pods at once");
        if new == 3 && state.values().all(|p| is_ready(p) && !terminating(p)) {
            break;
        }
    }
    ok(&s, &["rollout", "status", "deployment/re", "--timeout=60s"]).await;
    kubelet.abort();
    assert!(s.stop());
}

/// Read a watch until every named object has been deleted; their deletion revisions.
async fn deletions<K: Resource>(
    w: &mut futures::stream::BoxStream<'static, kube::Result<WatchEvent<K>>>,
    names: &HashSet<String>,
) -> BTreeMap<String, u64> {
    let mut gone = BTreeMap::new();
    while gone.len() < names.len() {
        let ev = tokio::time::timeout(Duration::from_secs(30), w.try_next())
            .await
            .expect("deletion events")
            .unwrap()
            .expect("watch open");
        if let WatchEvent::Deleted(o) = ev {
            let name = o.meta().name.clone().unwrap_or_default();
            if names.contains(&name) {
                gone.insert(
                    name,
                    o.meta()
                        .resource_version
                        .as_deref()
                        .unwrap_or("0")
                        .parse()
                        .unwrap(),
                );
            }
        }
    }
    gone
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreground_deletion_of_a_deployment_waits_for_its_pods() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = cluster(dir.path(), 2).await;
    let kubelet = start_kubelet(
        client.clone(),
        Kubelet {
            ready: HashSet::from(["fg:1"]),
            never_ready: HashSet::new(),
            delay: Duration::ZERO,
            stop_delay: Duration::ZERO,
        },
    );
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    deploys
        .create(
            &PostParams::default(),
            &deployment("fg", 3, "fg:1", rolling(json!(1), json!(0)), json!({})),
        )
        .await
        .unwrap();
    ok(&s, &["rollout", "status", "deployment/fg", "--timeout=60s"]).await;

    // Watches from one revision: resourceVersions are store revisions, so
    // deletion events order pods, ReplicaSet and Deployment.
    let list = pods
        .list(&kube::api::ListParams::default().labels("app=fg"))
        .await
        .unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    let pod_names: HashSet<String> = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(pod_names.len(), 3);
    let rs_names: HashSet<String> = rss
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    let mut pod_watch = pods
        .watch(&WatchParams::default().labels("app=fg"), &rv)
        .await
        .unwrap()
        .boxed();
    let mut rs_watch = rss
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut d_watch = deploys
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();

    // kubectl waits for the object to be gone.
    let (good, out, err) = kubectl(
        &s,
        &[
            "delete",
            "deployment",
            "fg",
            "--cascade=foreground",
            "--timeout=60s",
        ],
    )
    .await;
    assert!(good, "delete failed: {out} {err}");
    let mut saw_finalizer = false;
    let deploy_gone = loop {
        match tokio::time::timeout(Duration::from_secs(60), d_watch.try_next())
            .await
            .expect("deployment deleted")
            .unwrap()
            .unwrap()
        {
            WatchEvent::Deleted(d) => {
                break d.metadata.resource_version.unwrap().parse::<u64>().unwrap()
            }
            WatchEvent::Modified(d) => {
                saw_finalizer |= d.metadata.deletion_timestamp.is_some()
                    && d.metadata
                        .finalizers
                        .as_ref()
                        .is_some_and(|f| f.iter().any(|f| f == "foregroundDeletion"))
            }
            _ => {}
        }
    };
    assert!(
        saw_finalizer,
        "the deployment waited with the foregroundDeletion finalizer"
    );
    let pods_gone = deletions(&mut pod_watch, &pod_names).await;
    let rs_gone = deletions(&mut rs_watch, &rs_names).await;
    for (n, at) in pods_gone.iter().chain(rs_gone.iter()) {
        assert!(
            *at < deploy_gone,
            "{n} was deleted (revision {at}) after the deployment (revision {deploy_gone})"
        );
    }
    assert!(pods
        .list(&kube::api::ListParams::default().labels("app=fg"))
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(rss
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    kubelet.abort();
    assert!(s.stop());
}
