//! Controllers that run inside the host, in kube-runtime's reconcile/requeue
//! style: each one lists and watches the kinds it cares about, maps changes
//! to keys of its primary objects, and reconciles keys from its own work
//! queue with rate-limited retries. They talk to the store only through the
//! same API semantics a remote controller would use ([`LocalClient`]).

pub mod events;
pub mod namespace;
pub mod runtime;

pub use runtime::{Action, ObjectKey, Reconciler, Watch};

use crate::api::client::LocalClient;
use crate::api::AppState;
use std::sync::Arc;
use tokio::sync::Notify;

/// Start every in-process controller; notify the returned handle to stop them.
pub fn spawn(state: Arc<AppState>) -> Arc<Notify> {
    let stop = Arc::new(Notify::new());
    let client = LocalClient::new(state.clone());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(namespace::run(state.clone())));
    // Controllers built on the runtime are registered here.
    let _ = &client;
    let s = stop.clone();
    tokio::spawn(async move {
        s.notified().await;
        for t in tasks {
            t.abort();
        }
    });
    stop
}
