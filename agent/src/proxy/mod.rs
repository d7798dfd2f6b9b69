//! Service proxy (DESIGN §7, §8), in the style of kube-proxy's nftables
//! mode: Services and EndpointSlices (all namespaces) and this node's Node
//! are watched; a few milliseconds after a change the affected services'
//! rules are recomputed and applied to tables of our own (`ip shoal-proxy`,
//! `ip6 shoal-proxy`) as one nftables transaction holding only what
//! changed. The tables are deleted when the proxy stops cleanly.
//!
//! Layout: [`model`] chooses each service port's endpoints (pure);
//! [`rules`] turns them into per-service fragments of nft text and diffs
//! fragments (pure); [`proxier`] remembers what was applied and drives the
//! incremental sync; [`nft`] is the kernel seam (libnftables, or `nft -f -`); this module
//! runs the watches.

pub mod model;
pub mod nft;
pub mod proxier;
pub mod rules;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use model::NodeView;
use nft::{LibNft, Nft, NftCommand};
use proxier::{Proxier, Synced};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// How long to wait after a change for more changes, to batch them.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Which service proxy the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// nftables tables of our own.
    #[default]
    Nftables,
    /// No service proxy.
    None,
}

impl FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nftables" => Ok(ProxyMode::Nftables),
            "none" => Ok(ProxyMode::None),
            other => Err(format!(
                "unknown proxy {other:?} (expected \"nftables\" or \"none\")"
            )),
        }
    }
}

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `nft` is missing.
    #[error("the nftables service proxy needs the `nft` command (apt-get install nftables), or run with --proxy none")]
    NoNft,
}

/// A running proxy; [`ProxyHandle::stop`] removes its tables.
pub struct ProxyHandle {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ProxyHandle {
    /// Stop watching and delete the proxy's tables.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Start the proxy `mode` asks for on node `node_name`, applying rules
/// through libnftables (or, where it cannot be loaded, `nft -f -`) in the
/// agent's network namespace.
pub fn start(
    mode: ProxyMode,
    client: kube::Client,
    node_name: &str,
) -> Result<Option<ProxyHandle>, ProxyError> {
    if mode == ProxyMode::None {
        return Ok(None);
    }
    let nft: Arc<dyn Nft> = match LibNft::open() {
        Ok(lib) => Arc::new(lib),
        Err(why) => {
            let cmd = NftCommand::default();
            if !cmd.available() {
                return Err(ProxyError::NoNft);
            }
            tracing::warn!("service proxy: libnftables not usable ({why}); running `nft -f -` per change instead");
            Arc::new(cmd)
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run(client, node_name.to_string(), nft, stopped));
    Ok(Some(ProxyHandle { stop, task }))
}

/// Apply pending changes on a blocking thread (nft is a child process).
async fn sync(p: Proxier, nft: &Arc<dyn Nft>) -> (Proxier, Result<Synced, nft::NftError>) {
    let nft = nft.clone();
    let mut p = p;
    match tokio::task::spawn_blocking(move || {
        let r = p.sync(&*nft);
        (p, r)
    })
    .await
    {
        Ok(x) => x,
        Err(e) => panic!("proxy sync thread: {e}"),
    }
}

/// Watch Services, EndpointSlices and Nodes and keep the tables in step
/// until `stop` fires; then delete the tables.
pub async fn run(
    client: kube::Client,
    node_name: String,
    nft: Arc<dyn Nft>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let watch =
        |e: &'static str| move |err: watcher::Error| tracing::warn!(error = %err, "{e} watch");
    let mut services = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map_err(watch("service"))
    .boxed();
    let mut slices = watcher::watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map_err(watch("endpointslice"))
    .boxed();
    let mut nodes = watcher::watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .map_err(watch("node"))
        .boxed();
    let mut p = Proxier::new(NodeView {
        name: node_name.clone(),
        zone: None,
    });
    let mut svc_list: Option<Vec<Service>> = None;
    let mut slice_list: Option<Vec<EndpointSlice>> = None;
    let mut node_list: Option<Vec<Node>> = None;
    let mut all_nodes: std::collections::BTreeMap<String, Node> = Default::default();
    // Nothing is programmed until every kind has been listed once, so a
    // half-known world never replaces working rules.
    let mut listed = [false; 3];
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut retry = Duration::from_millis(500);
    loop {
        let mut node_changed = false;
        tokio::select! {
            _ = &mut stop => break,
            ev = services.next() => match ev {
                None => break,
                Some(Err(())) => continue,
                Some(Ok(Event::Init)) => svc_list = Some(Vec::new()),
                Some(Ok(Event::InitApply(s))) => svc_list.get_or_insert_with(Vec::new).push(s),
                Some(Ok(Event::InitDone)) => {
                    p.replace_services(svc_list.take().unwrap_or_default());
                    listed[0] = true;
                }
                Some(Ok(Event::Apply(s))) => p.apply_service(s),
                Some(Ok(Event::Delete(s))) => p.delete_service(&s),
            },
            ev = slices.next() => match ev {
                None => break,
                Some(Err(())) => continue,
                Some(Ok(Event::Init)) => slice_list = Some(Vec::new()),
                Some(Ok(Event::InitApply(s))) => slice_list.get_or_insert_with(Vec::new).push(s),
                Some(Ok(Event::InitDone)) => {
                    p.replace_slices(slice_list.take().unwrap_or_default());
                    listed[1] = true;
                }
                Some(Ok(Event::Apply(s))) => p.apply_slice(s),
                Some(Ok(Event::Delete(s))) => p.delete_slice(&s),
            },
            ev = nodes.next() => match ev {
                None => break,
                Some(Err(())) => continue,
                Some(Ok(Event::Init)) => node_list = Some(Vec::new()),
                Some(Ok(Event::InitApply(n))) => node_list.get_or_insert_with(Vec::new).push(n),
                Some(Ok(Event::InitDone)) => {
                    all_nodes = node_list.take().unwrap_or_default().into_iter()
                        .filter_map(|n| Some((n.metadata.name.clone()?, n))).collect();
                    listed[2] = true;
                    node_changed = true;
                }
                Some(Ok(Event::Apply(n))) => {
                    if let Some(name) = n.metadata.name.clone() { all_nodes.insert(name, n); }
                    node_changed = true;
                }
                Some(Ok(Event::Delete(n))) => {
                    if let Some(name) = &n.metadata.name { all_nodes.remove(name); }
                    node_changed = true;
                }
            },
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                if deadline.is_some() && listed.iter().all(|l| *l) => {
                deadline = None;
                let (back, r) = sync(p, &nft).await;
                p = back;
                match r {
                    Ok(Synced::Nothing) => {}
                    Ok(kind) => {
                        tracing::debug!(?kind, services = p.service_count(), "service proxy rules applied");
                        retry = Duration::from_millis(500);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?retry, "service proxy: applying rules failed; next sync rewrites the tables");
                        deadline = Some(tokio::time::Instant::now() + retry);
                        retry = (retry * 2).min(Duration::from_secs(30));
                    }
                }
                continue;
            }
        }
        if node_changed {
            let zone = all_nodes
                .get(&node_name)
                .and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned());
            p.set_node(NodeView {
                name: node_name.clone(),
                zone,
            });
            p.set_pod_cidrs(
                all_nodes
                    .values()
                    .flat_map(crate::net::routes::pod_cidrs)
                    .map(|c| c.to_string())
                    .collect(),
            );
        }
        if p.pending() && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + DEBOUNCE);
        }
    }
    let nft2 = nft.clone();
    let r = tokio::task::spawn_blocking(move || nft2.apply(&rules::delete_script())).await;
    match r {
        Ok(Ok(())) => tracing::info!("service proxy stopped; its tables are removed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "removing the service proxy's tables"),
        Err(e) => tracing::warn!(error = %e, "removing the service proxy's tables"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_with_a_clear_error() {
        assert_eq!("nftables".parse(), Ok(ProxyMode::Nftables));
        assert_eq!("none".parse(), Ok(ProxyMode::None));
        assert!("iptables"
            .parse::<ProxyMode>()
            .unwrap_err()
            .contains("expected"));
    }
}
