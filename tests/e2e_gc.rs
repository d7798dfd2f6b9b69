//! End to end: the garbage collector's background, orphan and foreground
//! propagation over ownerReferences, across kinds and scopes.

mod common;
mod sim;

use common::Server;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use kube::Resource;
use serde_json::{json, Value};
use sim::{watch_until, Kubelet, IMAGE_RUN};
use std::collections::BTreeMap;
use std::time::Duration;

/// An ownerReference to `owner`.
fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K, block: bool) -> Value {
    json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "name": owner.meta().name, "uid": owner.meta().uid, "blockOwnerDeletion": block,
    })
}

async fn config_map(api: &Api<ConfigMap>, name: &str, owners: Vec<Value>) -> ConfigMap {
    let cm = serde_json::from_value(
        json!({"metadata": {"name": name, "ownerReferences": owners}, "data": {"k": "v"}}),
    )
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap()
}

async fn secret(api: &Api<Secret>, name: &str, owners: Vec<Value>) -> Secret {
    let s = serde_json::from_value(
        json!({"metadata": {"name": name, "ownerReferences": owners}, "stringData": {"k": "v"}}),
    )
    .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap()
}

fn owner_uids(cm: &ConfigMap) -> Vec<String> {
    cm.metadata
        .owner_references
        .iter()
        .flatten()
        .map(|r| r.uid.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_deletion_removes_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());

    let owner = config_map(&cms, "bg-owner", vec![]).await;
    let other = config_map(&cms, "bg-other", vec![]).await;
    config_map(&cms, "bg-a", vec![owner_ref(&owner, true)]).await;
    secret(&secrets, "bg-b", vec![owner_ref(&owner, false)]).await;
    config_map(
        &cms,
        "bg-shared",
        vec![owner_ref(&owner, true), owner_ref(&other, true)],
    )
    .await;
    // A cluster-scoped owner of a namespaced dependent.
    let node = nodes
        .create(&PostParams::default(), &sim::node("gc-node", json!([])))
        .await
        .unwrap();
    config_map(&cms, "bg-node-dep", vec![owner_ref(&node, false)]).await;
    // A dependent whose owner never existed is collected too.
    config_map(&cms, "bg-dangling", vec![json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"})]).await;

    cms.delete("bg-owner", &DeleteParams::background())
        .await
        .unwrap();
    nodes
        .delete("gc-node", &DeleteParams::default())
        .await
        .unwrap();
    let other_uid = other.metadata.uid.clone().unwrap();
    let set = watch_until(
        &cms,
        None,
        Duration::from_secs(30),
        |_| {},
        |set: &BTreeMap<String, ConfigMap>| {
            !set.contains_key("bg-a")
                && !set.contains_key("bg-node-dep")
                && !set.contains_key("bg-dangling")
                && set
                    .get("bg-shared")
                    .is_some_and(|c| owner_uids(c) == vec![other_uid.clone()])
        },
    )
    .await;
    assert!(set.contains_key("bg-other"));
    watch_until(
        &secrets,
        None,
        Duration::from_secs(30),
        |_| {},
        |set| !set.contains_key("bg-b"),
    )
    .await;
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_deletion_keeps_dependents_without_references() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = config_map(&cms, "or-owner", vec![]).await;
    let other = config_map(&cms, "or-other", vec![]).await;
    config_map(&cms, "or-a", vec![owner_ref(&owner, true)]).await;
    config_map(
        &cms,
        "or-b",
        vec![owner_ref(&owner, true), owner_ref(&other, true)],
    )
    .await;

    cms.delete("or-owner", &DeleteParams::orphan())
        .await
        .unwrap();
    // The owner goes only after its dependents were released, so the first
    // state without it must already show them unowned.
    let set = watch_until(
        &cms,
        None,
        Duration::from_secs(30),
        |_| {},
        |set| !set.contains_key("or-owner"),
    )
    .await;
    assert!(
        owner_uids(&set["or-a"]).is_empty(),
        "{:?}",
        set["or-a"].metadata.owner_references
    );
    assert_eq!(
        owner_uids(&set["or-b"]),
        vec![other.metadata.uid.clone().unwrap()]
    );
    // And nothing collects them afterwards.
    let a = cms.get("or-a").await.unwrap();
    assert!(a.metadata.deletion_timestamp.is_none());
    assert!(s.stop());
}

/// Deletion resourceVersions by name, from a watch started at `rv`, until `last` is deleted.
async fn deletion_order<K>(api: Api<K>, rv: String, last: &'static str) -> BTreeMap<String, u64>
where
    K: Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let mut w = Box::pin(api.watch(&WatchParams::default(), &rv).await.unwrap());
    let mut out = BTreeMap::new();
    let mut saw_waiting = false;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), w.try_next())
            .await
            .unwrap_or_else(|_| {
                panic!("{last} was not deleted within 60s; deleted so far: {out:?}")
            })
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Deleted(o) => {
                let name = o.meta().name.clone().unwrap();
                out.insert(
                    name.clone(),
                    o.meta().resource_version.clone().unwrap().parse().unwrap(),
                );
                if name == last {
                    assert!(
                        saw_waiting || last != "fg-owner",
                        "the owner never waited with the foregroundDeletion finalizer"
                    );
                    return out;
                }
            }
            WatchEvent::Modified(o) if o.meta().name.as_deref() == Some(last) => {
                let m = o.meta();
                if m.deletion_timestamp.is_some()
                    && m.finalizers
                        .iter()
                        .flatten()
                        .any(|f| f == "foregroundDeletion")
                {
                    saw_waiting = true;
                }
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_finishes_after_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    sim::add_nodes(&client, &["n1"]).await;
    // A slow graceful deletion, so the owner visibly waits for the pod.
    let _kubelet = Kubelet {
        delete_after: Duration::from_millis(1500),
        ..Default::default()
    }
    .start(client.clone(), "default");

    let owner = config_map(&cms, "fg-owner", vec![]).await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "fg-pod", "ownerReferences": [owner_ref(&owner, true)]},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": IMAGE_RUN}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    // A chain: the owner's dependent has a dependent of its own.
    let mid = config_map(&cms, "fg-mid", vec![owner_ref(&owner, true)]).await;
    config_map(&cms, "fg-leaf", vec![owner_ref(&mid, true)]).await;
    // A non-blocking dependent is deleted but not waited for.
    secret(&secrets, "fg-loose", vec![owner_ref(&owner, false)]).await;
    watch_until(
        &pods,
        None,
        Duration::from_secs(30),
        |_| {},
        |set| {
            set.get("fg-pod")
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some("Running")
        },
    )
    .await;

    let rv = cms
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let cm_order = tokio::spawn(deletion_order(cms.clone(), rv.clone(), "fg-owner"));
    let pod_order = tokio::spawn(deletion_order(pods.clone(), rv, "fg-pod"));
    cms.delete("fg-owner", &DeleteParams::foreground())
        .await
        .unwrap();
    let cm_order = cm_order.await.unwrap();
    let pod_order = pod_order.await.unwrap();

    let owner_gone = cm_order["fg-owner"];
    assert!(
        pod_order["fg-pod"] < owner_gone,
        "the owner went before its pod: {pod_order:?} {cm_order:?}"
    );
    assert!(cm_order["fg-mid"] < owner_gone, "{cm_order:?}");
    assert!(
        cm_order["fg-leaf"] < cm_order["fg-mid"],
        "the chain is deleted leaf first: {cm_order:?}"
    );
    assert!(pods.get_opt("fg-pod").await.unwrap().is_none());
    watch_until(
        &secrets,
        None,
        Duration::from_secs(30),
        |_| {},
        |set| !set.contains_key("fg-loose"),
    )
    .await;
    assert!(s.stop());
}
