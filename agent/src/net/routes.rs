//! Watches Nodes: publishes this node's podCIDRs (assigned by the host's node
//! IPAM controller) to the bridge network, and keeps one route per other
//! node's podCIDR via that node's InternalIP of the same family. Routes the
//! agent owns carry [`ROUTE_PROTOCOL`](super::netlink::ROUTE_PROTOCOL); any
//! such route not wanted any more is deleted, no other route is touched.

use super::bridge::BridgeNetwork;
use super::cidr::Cidr;
use super::netlink::Route;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often routes are re-checked without a Node event (someone may have
/// removed one by hand).
const RESYNC: Duration = Duration::from_secs(30);

/// A node's podCIDRs (`spec.podCIDRs`, else `spec.podCIDR`); unparsable ones are skipped.
pub fn pod_cidrs(node: &Node) -> Vec<Cidr> {
    let spec = node.spec.as_ref();
    let list = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|l| !l.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default();
    list.iter().filter_map(|c| c.parse().ok()).collect()
}

/// A node's InternalIP addresses.
pub fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// The routes node `own` needs: each other node's podCIDRs via its
/// InternalIP of the same family (ranges without such an address, or
/// overlapping this node's own, are left out).
pub fn desired_routes<'a>(own: &str, nodes: impl IntoIterator<Item = &'a Node>) -> Vec<Route> {
    let nodes: Vec<&Node> = nodes.into_iter().collect();
    let mine: Vec<Cidr> = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(own))
        .map(|n| pod_cidrs(n))
        .unwrap_or_default();
    let mut out = BTreeSet::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(own) {
            continue;
        }
        let ips = internal_ips(n);
        for dest in pod_cidrs(n) {
            let overlaps = mine
                .iter()
                .any(|m| m.contains(dest.network()) || dest.contains(m.network()));
            let via = ips.iter().find(|ip| ip.is_ipv4() == dest.is_ipv4());
            if let (false, Some(via)) = (overlaps, via) {
                out.insert(Route { dest, via: *via });
            }
        }
    }
    out.into_iter().collect()
}

/// Bring the agent's routes to `want`: add or replace what is missing,
/// delete owned routes no longer wanted.
async fn sync_routes(net: &BridgeNetwork, want: &[Route]) -> Result<(), super::NetError> {
    let have = net.host().owned_routes().await?;
    for r in want {
        if !have.iter().any(|(h, _)| h == r) {
            net.host().replace_route(r).await?;
            tracing::info!(dest = %r.dest, via = %r.via, "route to another node's pods");
        }
    }
    for (h, msg) in have {
        if !want.contains(&h) {
            net.host().delete_route(msg).await?;
            tracing::info!(dest = %h.dest, via = %h.via, "route removed");
        }
    }
    Ok(())
}

/// Watch Nodes until the stream ends: publish this node's podCIDRs on
/// `cidrs`, set up the bridge once they are known, and keep routes to the
/// other nodes' pods.
pub async fn run(
    client: kube::Client,
    node_name: String,
    net: Arc<BridgeNetwork>,
    cidrs: watch::Sender<Vec<Cidr>>,
) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map_err(|e| tracing::warn!(error = %e, "node watch"))
        .boxed();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, Node>> = None;
    let mut tick = tokio::time::interval(RESYNC);
    let mut waiting_logged = false;
    // Until the first full list, an empty map would mean "delete every route".
    let mut listed = false;
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                None => return,
                Some(Err(())) => continue,
                Some(Ok(Event::Init)) => { listing = Some(BTreeMap::new()); continue; }
                Some(Ok(Event::InitApply(n))) => {
                    if let (Some(l), Some(name)) = (listing.as_mut(), n.metadata.name.clone()) {
                        l.insert(name, n);
                    }
                    continue;
                }
                Some(Ok(Event::InitDone)) => {
                    nodes = listing.take().unwrap_or_default();
                    listed = true;
                }
                Some(Ok(Event::Apply(n))) => {
                    if let Some(name) = n.metadata.name.clone() {
                        nodes.insert(name, n);
                    }
                }
                Some(Ok(Event::Delete(n))) => {
                    if let Some(name) = n.metadata.name.as_deref() {
                        nodes.remove(name);
                    }
                }
            },
            _ = tick.tick() => {}
        }
        if !listed {
            continue;
        }
        let mine = nodes.get(&node_name).map(pod_cidrs).unwrap_or_default();
        if mine.is_empty() {
            if !waiting_logged && !nodes.is_empty() {
                tracing::info!(node = %node_name, "waiting for the node's podCIDRs");
                waiting_logged = true;
            }
        } else {
            cidrs.send_if_modified(|c| {
                let changed = *c != mine;
                *c = mine.clone();
                changed
            });
            if let Err(e) = net.ensure_bridge(&mine).await {
                tracing::warn!(error = %e, "setting up the pod bridge");
            }
        }
        if let Err(e) = sync_routes(&net, &desired_routes(&node_name, nodes.values())).await {
            tracing::warn!(error = %e, "syncing routes to other nodes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Node {
        let addresses: Vec<_> = ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip}))
            .chain([json!({"type": "Hostname", "address": name})])
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDRs": cidrs},
            "status": {"addresses": addresses},
        }))
        .unwrap()
    }

    fn route(dest: &str, via: &str) -> Route {
        Route {
            dest: dest.parse().unwrap(),
            via: via.parse().unwrap(),
        }
    }

    #[test]
    fn routes_go_to_other_nodes_per_family() {
        let nodes = [
            node(
                "a",
                &["10.244.0.0/24", "fd00:244::/64"],
                &["10.0.0.1", "fd00::1"],
            ),
            node(
                "b",
                &["10.244.1.0/24", "fd00:244:0:1::/64"],
                &["10.0.0.2", "fd00::2"],
            ),
            // No IPv6 address: only its IPv4 range is reachable.
            node("c", &["10.244.2.0/24", "fd00:244:0:2::/64"], &["10.0.0.3"]),
            // No podCIDRs yet.
            node("d", &[], &["10.0.0.4"]),
        ];
        let got = desired_routes("a", &nodes);
        assert_eq!(
            got,
            vec![
                route("10.244.1.0/24", "10.0.0.2"),
                route("10.244.2.0/24", "10.0.0.3"),
                route("fd00:244:0:1::/64", "fd00::2"),
            ]
        );
        assert_eq!(pod_cidrs(&nodes[0]).len(), 2);
        assert_eq!(internal_ips(&nodes[0]).len(), 2);
    }

    #[test]
    fn overlapping_ranges_and_the_legacy_field() {
        let mut legacy = node("b", &[], &["10.0.0.2"]);
        legacy.spec.as_mut().unwrap().pod_cidr = Some("10.244.1.0/24".into());
        let nodes = [
            node("a", &["10.244.0.0/16"], &["10.0.0.1"]),
            legacy,
            node("c", &["10.245.0.0/24"], &["10.0.0.3"]),
        ];
        // b's range lies inside a's own: never routed away from the bridge.
        assert_eq!(
            desired_routes("a", &nodes),
            vec![route("10.245.0.0/24", "10.0.0.3")]
        );
        assert_eq!(pod_cidrs(&nodes[1]), vec!["10.244.1.0/24".parse().unwrap()]);
    }
}
