//! Pods on this node: a list+watch of the pods bound here (field selector
//! `spec.nodeName=<node>`, resuming by resourceVersion like kubelet) feeds one
//! [`worker::PodWorker`] task per pod uid. Pods with state on disk but no
//! longer in the API are torn down once the initial list is complete.

pub mod backoff;
pub mod cluster;
pub mod container_spec;
pub mod env;
pub mod probes;
pub mod projected;
pub mod pull_secrets;
pub mod quantity;
pub mod state;
pub mod status;
pub mod volumes;
pub mod worker;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use worker::{PodContext, PodWorker};

struct Workers {
    ctx: Arc<PodContext>,
    senders: HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    done: mpsc::UnboundedSender<String>,
}

impl Workers {
    fn spawn(&mut self, uid: &str, namespace: &str, name: &str, pod: Option<Arc<Pod>>) {
        let worker = PodWorker::new(self.ctx.clone(), uid, namespace, name);
        let (tx, rx) = watch::channel(pod);
        let done = self.done.clone();
        let uid_owned = uid.to_string();
        tokio::spawn(async move {
            worker.run(rx).await;
            let _ = done.send(uid_owned);
        });
        self.senders.insert(uid.to_string(), tx);
    }

    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let pod = Arc::new(pod);
        match self.senders.get(&uid) {
            Some(tx) => {
                let _ = tx.send(Some(pod));
            }
            None => {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                self.spawn(&uid, &ns, &name, Some(pod));
            }
        }
    }

    fn gone(&mut self, uid: &str) {
        match self.senders.get(uid) {
            Some(tx) => {
                let _ = tx.send(None);
            }
            None => {
                if state::pod_dir(&self.ctx.data_dir, uid).exists() {
                    self.spawn(uid, "", "", None);
                }
            }
        }
    }
}

/// Run the pod loop until `shutdown` resolves. Running containers are left
/// running on shutdown; the next agent adopts them.
pub async fn run(ctx: Arc<PodContext>, client: kube::Client, shutdown: impl Future<Output = ()>) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut workers = Workers {
        ctx: ctx.clone(),
        senders: HashMap::new(),
        done: done_tx,
    };
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut stream = watcher::watcher(api, cfg)
        .default_backoff()
        .map_err(|e| tracing::warn!(error = %e, "pod watch"))
        .boxed();
    let mut listing: Option<HashSet<String>> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(uid) = done_rx.recv() => {
                workers.senders.remove(&uid);
            }
            ev = stream.next() => match ev {
                None => break,
                Some(Err(())) => {}
                Some(Ok(Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(Event::InitApply(p))) => {
                    if let (Some(seen), Some(uid)) = (listing.as_mut(), p.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    workers.apply(p);
                }
                Some(Ok(Event::InitDone)) => {
                    let seen = listing.take().unwrap_or_default();
                    // Pods that vanished while we were not watching, including
                    // those only known from disk (deleted while the agent was down).
                    let mut stale: HashSet<String> = workers.senders.keys().cloned().collect();
                    stale.extend(state::list_pods(&ctx.data_dir));
                    for uid in stale.difference(&seen) {
                        workers.gone(uid);
                    }
                }
                Some(Ok(Event::Apply(p))) => workers.apply(p),
                Some(Ok(Event::Delete(p))) => {
                    if let Some(uid) = p.metadata.uid.as_deref() {
                        workers.gone(uid);
                    }
                }
            }
        }
    }
}
