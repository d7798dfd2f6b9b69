//! End to end with kube-rs: list, watch, resume after restart, and optimistic
//! concurrency under 32 concurrent writers.

mod common;

use common::Server;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use std::collections::BTreeMap;
use std::time::Duration;

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        // No scheduler serves this profile, so only the test changes these pods.
        "spec": {"schedulerName": "manual", "containers": [{"name": "c", "image": "busybox:1.36"}]},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_and_resume_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let port = s.port();
    let client = s.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("p{i}"), if i == 2 { "b" } else { "a" }),
        )
        .await
        .unwrap();
    }
    let list = pods
        .list(&ListParams::default().labels("app=a"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 2);
    // Paging with limit/continue gives every pod exactly once.
    let page1 = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page1.items.len(), 2);
    let token = page1.metadata.continue_.clone().expect("a continue token");
    let page2 = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(page2.items.len(), 1);
    assert!(page2.metadata.continue_.as_deref().unwrap_or("").is_empty());
    let rv = list.metadata.resource_version.clone().unwrap();

    // Watch from the list's resourceVersion sees a new pod.
    let mut w = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    pods.create(&PostParams::default(), &pod("p3", "a"))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let seen_rv = match ev {
        WatchEvent::Added(p) => {
            assert_eq!(p.metadata.name.as_deref(), Some("p3"));
            p.metadata.resource_version.unwrap()
        }
        other => panic!("unexpected {other:?}"),
    };
    drop(w);

    // Restart the server; changes made meanwhile are delivered on resume.
    assert!(s.stop());
    let s = Server::start_on(dir.path(), port, &[]);
    let client = s.client().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.delete("p0", &Default::default()).await.unwrap();
    let mut w = pods
        .watch(&WatchParams::default(), &seen_rv)
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Deleted(p) => assert_eq!(p.metadata.name.as_deref(), Some("p0")),
        other => panic!("unexpected {other:?}"),
    }
    // A label-selected watch turns a relabel into DELETED for that watcher.
    let mut sel = pods
        .watch(&WatchParams::default().labels("app=a"), &seen_rv)
        .await
        .unwrap()
        .boxed();
    let _ = tokio::time::timeout(Duration::from_secs(10), sel.try_next())
        .await
        .unwrap(); // p0 deletion
    let patch = serde_json::json!({"metadata": {"labels": {"app": "z"}}});
    pods.patch(
        "p1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), sel.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Deleted(p) => assert_eq!(p.metadata.name.as_deref(), Some("p1")),
        other => panic!("unexpected {other:?}"),
    }
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_past_history_gets_410() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(dir.path(), common::free_port(), &["--watch-history", "10"]);
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut cm: ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "hot"}, "data": {"n": "0"}}),
    )
    .unwrap();
    cm = cms.create(&PostParams::default(), &cm).await.unwrap();
    let first_rv = cm.metadata.resource_version.clone().unwrap();
    // Enough writes to compact the history past the first revision.
    for i in 0..1200 {
        cm.data = Some(BTreeMap::from([("n".to_string(), i.to_string())]));
        cm = cms
            .replace("hot", &PostParams::default(), &cm)
            .await
            .unwrap();
    }
    let mut w = cms
        .watch(&WatchParams::default(), &first_rv)
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Error(e) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_are_applied_or_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "counter"}, "data": {"writers": ""}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    // 32 writers each append their id with read-modify-write and retry on 409.
    let mut tasks = Vec::new();
    for id in 0..32 {
        let cms = cms.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for round in 0..5 {
                loop {
                    let mut cur = cms.get("counter").await.unwrap();
                    let data = cur.data.get_or_insert_with(Default::default);
                    let w = data.entry("writers".into()).or_default();
                    w.push_str(&format!("{id}.{round},"));
                    match cms.replace("counter", &PostParams::default(), &cur).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => conflicts += 1,
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let fin = cms.get("counter").await.unwrap();
    let writers = fin.data.unwrap()["writers"].clone();
    let entries: Vec<&str> = writers.split(',').filter(|e| !e.is_empty()).collect();
    // Every successful update is there exactly once: none lost, none doubled.
    assert_eq!(entries.len(), 32 * 5, "entries: {entries:?}");
    let mut uniq = entries.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 32 * 5);
    assert!(
        conflicts > 0,
        "32 concurrent writers must have collided at least once"
    );
    // A stale resourceVersion gets 409.
    let mut stale: ConfigMap = cms.get("counter").await.unwrap();
    stale.metadata.resource_version = Some("1".into());
    match cms.replace("counter", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409),
        other => panic!("expected 409, got {other:?}"),
    }
    assert!(s.stop());
}
