//! Controllers that run inside the host, in kube-runtime's reconcile/requeue
//! style: each one lists and watches the kinds it cares about, maps changes
//! to keys of its primary objects, and reconciles keys from its own work
//! queue with rate-limited retries. They talk to the store only through the
//! same API semantics a remote controller would use ([`LocalClient`]).

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod events;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod ownership;
pub mod pod_state;
pub mod pods;
pub mod rbac_aggregation;
pub mod replicaset;
pub mod resourcequota;
pub mod rootca;
pub mod runtime;
pub mod serviceaccount;
pub mod statefulset;
pub mod template_hash;
pub mod volume;

pub use runtime::{Action, ObjectKey, Reconciler, Watch};

use crate::api::client::LocalClient;
use crate::api::AppState;
use std::sync::Arc;
use tokio::sync::Notify;

/// Start every in-process controller; notify the returned handle to stop them.
pub fn spawn(state: Arc<AppState>) -> Arc<Notify> {
    let stop = Arc::new(Notify::new());
    let client = LocalClient::new(state.clone());
    let mut tasks = vec![tokio::spawn(namespace::run(state.clone()))];
    // Controllers built on the runtime are registered here.
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(replicaset::ReplicaSetReconciler::default()),
        client.clone(),
    )));
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(deployment::DeploymentReconciler::default()),
        client.clone(),
    )));
    tasks.push(tokio::spawn(gc::run(client.clone())));
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(resourcequota::ResourceQuotaController),
        client.clone(),
    )));
    tasks.push(tokio::spawn(rbac_aggregation::run(state.clone())));
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(nodeipam::NodeIpamController::new(&state.config.ipam)),
        client.clone(),
    )));
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(nodelifecycle::NodeLifecycleController::new(
            state.config.node_lifecycle.clone(),
        )),
        client.clone(),
    )));
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(job::JobController::default()),
        client.clone(),
    )));
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(cronjob::CronJobController),
        client.clone(),
    )));
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(daemonset::DaemonSetController),
        client.clone(),
    )));
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(statefulset::StatefulSetController::default()),
        client.clone(),
    )));
    let tokens = state
        .hooks
        .pki_dir
        .clone()
        .map(serviceaccount::TokenController::new)
        .unwrap_or_default();
    tasks.push(tokio::spawn(runtime::run(Arc::new(tokens), client.clone())));
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(rootca::RootCaPublisher::new(state.hooks.pki_dir.clone())),
        client.clone(),
    )));
    tasks.push(tokio::spawn(volume::run(client.clone())));
    tasks.push(tokio::spawn(runtime::run(
        Arc::new(hpa::HpaController::new(
            Arc::new(hpa::ReportedMetrics(state.clone())),
            state.config.hpa_sync_period,
        )),
        client.clone(),
    )));
    let s = stop.clone();
    tokio::spawn(async move {
        s.notified().await;
        for t in tasks {
            t.abort();
        }
    });
    stop
}

/// Start the EndpointSlice controller, which routes services with the router
/// plugins published on `plugins`; abort the handle to stop it.
pub fn spawn_endpointslices(
    state: Arc<AppState>,
    plugins: tokio::sync::watch::Receiver<Arc<crate::plugin_objects::PluginSet>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(runtime::run(
        Arc::new(endpointslice::EndpointSliceController::new(plugins)),
        LocalClient::new(state),
    ))
}
