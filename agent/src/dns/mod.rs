//! Cluster DNS, served by every node agent for the pods on its node
//! (node-local DNS; DESIGN §7, issue 6).
//!
//! Layout: [`index`] keeps the records (A/AAAA/SRV/PTR/CNAME for
//! `<svc>.<ns>.svc.<domain>` and headless endpoints) in memory, updated per
//! Service and EndpointSlice watch event; [`server`] answers queries from it
//! with hickory-server over UDP and TCP, forwarding other names upstream or
//! refusing them; [`resolv`] writes pods' `/etc/resolv.conf` and `/etc/hosts`.
//!
//! Where it listens: on the pod bridge's gateway addresses (the first host
//! of each of the node's podCIDRs), port 53, so every pod reaches the DNS of
//! its own node at its default gateway; and optionally on `--dns-listen`.

pub mod index;
pub mod resolv;
pub mod server;
#[cfg(test)]
mod server_tests;

use futures::{StreamExt, TryStreamExt};
use index::Index;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use server::{DnsHandler, Forwarder};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::watch;

/// The DNS port pods use.
pub const DNS_PORT: u16 = 53;

/// How the agent's DNS runs (from the CLI flags).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The cluster domain (`--cluster-domain`, default `cluster.local`).
    pub cluster_domain: String,
    /// Upstream servers for other names (`--dns-upstream`); none: REFUSED.
    pub upstreams: Vec<SocketAddr>,
    /// An extra listen address (`--dns-listen`), e.g. `127.0.0.1:0` for tests.
    pub listen: Option<SocketAddr>,
    /// Whether to serve on the pod bridge's gateways (bridge network only).
    pub on_gateways: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            cluster_domain: "cluster.local".into(),
            upstreams: Vec::new(),
            listen: None,
            on_gateways: true,
        }
    }
}

/// Parse `--dns-upstream`: `ADDR[:PORT][,ADDR[:PORT]...]` (port 53 by default;
/// IPv6 with a port as `[ADDR]:PORT`).
pub fn parse_upstreams(s: &str) -> Result<Vec<SocketAddr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<SocketAddr>()
                .or_else(|_| p.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DNS_PORT)))
                .map_err(|_| format!("invalid DNS upstream {p:?}: expected ADDR or ADDR:PORT"))
        })
        .collect()
}

/// The parsed `--dns-upstream` flag (one value holding the list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams(pub Vec<SocketAddr>);

/// [`parse_upstreams`] as a CLI value parser.
pub fn upstreams_flag(s: &str) -> Result<Upstreams, String> {
    parse_upstreams(s).map(Upstreams)
}

/// What pod workers need to write a pod's resolv.conf.
#[derive(Debug, Clone)]
pub struct PodDns {
    /// The cluster domain.
    pub cluster_domain: String,
    /// The node-local DNS addresses pods use (the bridge gateways); empty
    /// without a pod network, in which case ClusterFirst falls back to the
    /// node's resolv.conf, as kubelet does without a cluster DNS.
    pub nameservers: watch::Receiver<Vec<IpAddr>>,
}

impl PodDns {
    /// No cluster DNS for pods (tests, `--pod-network none`).
    pub fn disabled(cluster_domain: &str) -> PodDns {
        PodDns {
            cluster_domain: cluster_domain.into(),
            nameservers: watch::channel(Vec::new()).1,
        }
    }

    /// The nameservers, waiting up to `wait` for the pod network to know
    /// them when `expect` says it will.
    pub async fn nameservers(&self, expect: bool, wait: Duration) -> Vec<IpAddr> {
        let mut rx = self.nameservers.clone();
        if expect {
            let _ = tokio::time::timeout(wait, rx.wait_for(|v| !v.is_empty())).await;
        }
        let v = rx.borrow().clone();
        v
    }
}

/// The gateway (first host) of each of a node's podCIDRs.
pub fn gateways(node: &Node) -> Vec<IpAddr> {
    crate::net::routes::pod_cidrs(node)
        .iter()
        .filter_map(|c| c.host(1))
        .collect()
}

/// Start cluster DNS: the Service/EndpointSlice watch feeding the index, the
/// `--dns-listen` server if any, and (bridge network) a Node watch that
/// serves on the gateways once the podCIDRs are known. Returns what pods
/// need and the task running it all.
pub fn start(
    cfg: &DnsConfig,
    client: kube::Client,
    node_name: &str,
) -> Result<(PodDns, tokio::task::JoinHandle<()>), server::DnsError> {
    let zone = index::Zone::new(&cfg.cluster_domain)
        .map_err(|e| server::DnsError::Bind(([0, 0, 0, 0], 0).into(), std::io::Error::other(e)))?;
    let mut index = Index::new(zone);
    let records = index.records();
    let forwarder = (!cfg.upstreams.is_empty())
        .then(|| Forwarder::new(cfg.upstreams.clone(), server::FORWARD_TIMEOUT));
    let handler = move || DnsHandler::new(records.clone(), forwarder.clone());
    let extra = match cfg.listen {
        Some(a) => {
            let s = server::serve(handler(), &[a], false)?;
            tracing::info!(addrs = ?s.addrs, "cluster DNS listening");
            Some(s)
        }
        None => None,
    };
    let (ns_tx, ns_rx) = watch::channel(Vec::new());
    let pod_dns = PodDns {
        cluster_domain: cfg.cluster_domain.trim_end_matches('.').to_string(),
        nameservers: ns_rx,
    };
    let on_gateways = cfg.on_gateways;
    let node_name = node_name.to_string();
    let task = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(s) = extra {
            tasks.spawn(s.run());
        }
        if on_gateways {
            let (client, handler) = (client.clone(), move || handler());
            tasks.spawn(serve_on_gateways(client, node_name, ns_tx, handler));
        }
        tasks.spawn(async move { watch_objects(client, &mut index).await });
        while tasks.join_next().await.is_some() {}
    });
    Ok((pod_dns, task))
}

/// Watch this Node for its podCIDRs; serve on their gateways (rebinding if
/// they change) and publish them for pods' resolv.conf.
async fn serve_on_gateways(
    client: kube::Client,
    node_name: String,
    published: watch::Sender<Vec<IpAddr>>,
    handler: impl Fn() -> DnsHandler + Send + 'static,
) {
    let api: Api<Node> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut stream = watcher::watcher(api, cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut current: Option<(Vec<IpAddr>, tokio::task::JoinHandle<()>)> = None;
    while let Some(ev) = stream.next().await {
        let Ok(node) = ev else { continue };
        let gws = gateways(&node);
        if gws.is_empty() || current.as_ref().is_some_and(|(g, _)| *g == gws) {
            continue;
        }
        if let Some((_, t)) = current.take() {
            t.abort();
        }
        let addrs: Vec<SocketAddr> = gws
            .iter()
            .map(|ip| SocketAddr::new(*ip, DNS_PORT))
            .collect();
        match server::serve(handler(), &addrs, true) {
            Ok(s) => {
                tracing::info!(addrs = ?s.addrs, "cluster DNS listening on the pod gateways");
                current = Some((gws.clone(), tokio::spawn(s.run())));
                published.send_replace(gws);
            }
            Err(e) => tracing::warn!(error = %e, "cluster DNS on the pod gateways"),
        }
    }
    if let Some((_, t)) = current {
        t.abort();
    }
}

/// Keep `index` in step with all Services and EndpointSlices.
pub async fn watch_objects(client: kube::Client, index: &mut Index) {
    let svc_api: Api<Service> = Api::all(client.clone());
    let slice_api: Api<EndpointSlice> = Api::all(client);
    let mut services = watcher::watcher(svc_api, watcher::Config::default())
        .default_backoff()
        .map_err(|e| tracing::warn!(error = %e, "dns: service watch"))
        .boxed();
    let mut slices = watcher::watcher(slice_api, watcher::Config::default())
        .default_backoff()
        .map_err(|e| tracing::warn!(error = %e, "dns: endpointslice watch"))
        .boxed();
    let mut svc_list: Option<Vec<Service>> = None;
    let mut slice_list: Option<Vec<EndpointSlice>> = None;
    let ns_name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (
            m.namespace.clone().unwrap_or_else(|| "default".into()),
            m.name.clone().unwrap_or_default(),
        )
    };
    loop {
        tokio::select! {
            ev = services.next() => match ev {
                None => return,
                Some(Err(())) => {}
                Some(Ok(Event::Init)) => svc_list = Some(Vec::new()),
                Some(Ok(Event::InitApply(s))) => svc_list.get_or_insert_with(Vec::new).push(s),
                Some(Ok(Event::InitDone)) => index.replace_services(svc_list.take().unwrap_or_default()),
                Some(Ok(Event::Apply(s))) => index.apply_service(s),
                Some(Ok(Event::Delete(s))) => {
                    let (ns, n) = ns_name(&s.metadata);
                    index.delete_service(&ns, &n);
                }
            },
            ev = slices.next() => match ev {
                None => return,
                Some(Err(())) => {}
                Some(Ok(Event::Init)) => slice_list = Some(Vec::new()),
                Some(Ok(Event::InitApply(s))) => slice_list.get_or_insert_with(Vec::new).push(s),
                Some(Ok(Event::InitDone)) => index.replace_slices(slice_list.take().unwrap_or_default()),
                Some(Ok(Event::Apply(s))) => index.apply_slice(s),
                Some(Ok(Event::Delete(s))) => {
                    let (ns, n) = ns_name(&s.metadata);
                    index.delete_slice(&ns, &n);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse_with_default_port() {
        let u = parse_upstreams("10.0.0.2, [fd00::1]:5353,127.0.0.1:53").unwrap();
        assert_eq!(
            u,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fd00::1]:5353".parse().unwrap(),
                "127.0.0.1:53".parse().unwrap()
            ]
        );
        assert!(parse_upstreams("dns.example")
            .unwrap_err()
            .contains("invalid DNS upstream"));
    }
}
