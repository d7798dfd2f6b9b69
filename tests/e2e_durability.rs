//! Durability: every create acknowledged before a SIGKILL is there after restart.

mod common;

use common::Server;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let port = s.port();
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let (first_acks_tx, mut first_acks_rx) = tokio::sync::mpsc::channel::<()>(1024);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let cms = cms.clone();
        let acked = acked.clone();
        let tx = first_acks_tx.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let name = format!("d-{w}-{i}");
                let cm: ConfigMap = serde_json::from_value(
                    serde_json::json!({"metadata": {"name": name}, "data": {"w": w.to_string()}}),
                )
                .unwrap();
                match cms.create(&PostParams::default(), &cm).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(name);
                        let _ = tx.try_send(());
                    }
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    drop(first_acks_tx);
    // Kill once plenty of creates have been acknowledged and more are in flight.
    let mut n = 0;
    while n < 500 {
        tokio::time::timeout(Duration::from_secs(30), first_acks_rx.recv())
            .await
            .unwrap()
            .unwrap();
        n += 1;
    }
    s.kill9();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 500);

    let s = Server::start_on(dir.path(), port, &[]);
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let stored: HashSet<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged creates lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(s.stop());
}
