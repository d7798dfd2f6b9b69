//! The bridge pod network: per-pod veth setup and teardown behind
//! [`PodNetwork`], given the node's podCIDRs (from [`super::routes`]).

use super::cidr::Cidr;
use super::ipam::Ipam;
use super::netlink::Netlink;
use super::{bridge_mac, veth_name, NetError, PodNetwork};
use crate::runtime::SandboxInfo;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{watch, Mutex};

/// The pod's interface name.
pub const POD_IFACE: &str = "eth0";

/// How long a pod setup waits for the node's podCIDRs before failing (the
/// pod worker retries).
const CIDR_WAIT: Duration = Duration::from_secs(10);

/// The bridge network of one node.
pub struct BridgeNetwork {
    bridge: String,
    node_name: String,
    ipam: Ipam,
    host: Netlink,
    cidrs: watch::Receiver<Vec<Cidr>>,
    /// The bridge's index and the ranges its addresses were set for.
    ready: Mutex<Option<(Vec<Cidr>, u32)>>,
}

impl BridgeNetwork {
    /// A network on bridge `bridge`, with allocations kept under
    /// `data_dir/net`; `cidrs` tells the node's podCIDRs as they become known.
    pub fn new(
        bridge: &str,
        node_name: &str,
        data_dir: &Path,
        cidrs: watch::Receiver<Vec<Cidr>>,
    ) -> Result<BridgeNetwork, NetError> {
        Ok(BridgeNetwork {
            bridge: bridge.into(),
            node_name: node_name.into(),
            ipam: Ipam::open(&data_dir.join("net").join("ipam.json"))?,
            host: Netlink::current()?,
            cidrs,
            ready: Mutex::new(None),
        })
    }

    /// The agent's own namespace.
    pub fn host(&self) -> &Netlink {
        &self.host
    }

    /// The node's podCIDRs, waiting up to [`CIDR_WAIT`] for them to appear.
    async fn pod_cidrs(&self) -> Result<Vec<Cidr>, NetError> {
        let mut rx = self.cidrs.clone();
        let got = tokio::time::timeout(CIDR_WAIT, rx.wait_for(|c| !c.is_empty())).await;
        match got {
            Ok(Ok(c)) => Ok(c.clone()),
            _ => Err(NetError::NoPodCidrs),
        }
    }

    /// Make sure the bridge exists with a gateway address in each of `cidrs`;
    /// returns its index.
    pub async fn ensure_bridge(&self, cidrs: &[Cidr]) -> Result<u32, NetError> {
        let mut ready = self.ready.lock().await;
        if let Some((c, index)) = ready.as_ref() {
            if c == cidrs {
                return Ok(*index);
            }
        }
        let gateways: Vec<(IpAddr, u8)> = cidrs
            .iter()
            .filter_map(|c| c.host(1).map(|g| (g, c.prefix())))
            .collect();
        let index = self
            .host
            .ensure_bridge(&self.bridge, bridge_mac(&self.node_name), &gateways)
            .await?;
        tracing::info!(bridge = %self.bridge, ?gateways, "pod bridge ready");
        *ready = Some((cidrs.to_vec(), index));
        Ok(index)
    }

    async fn setup_pod(&self, uid: &str, sandbox: &SandboxInfo) -> Result<Vec<IpAddr>, NetError> {
        let cidrs = self.pod_cidrs().await?;
        let bridge = match self.ensure_bridge(&cidrs).await {
            Ok(i) => i,
            Err(e) => {
                // Look again next time rather than trusting a stale index.
                *self.ready.lock().await = None;
                return Err(e);
            }
        };
        let ips = self.ipam.allocate(uid, &cidrs)?;
        let ns_path = sandbox.ns_path("net");
        let ns = std::fs::File::open(&ns_path).map_err(|e| NetError::Io(ns_path.clone(), e))?;
        let ns2 = ns
            .try_clone()
            .map_err(|e| NetError::Io(ns_path.clone(), e))?;
        let pod = Netlink::in_namespace(ns2).await?;
        let host_name = veth_name(uid);
        if pod.link(POD_IFACE).await?.is_none() {
            // A leftover host end belongs to a namespace that is gone (or going).
            self.host.delete_link(&host_name).await?;
            self.host.add_veth_into(&host_name, POD_IFACE, &ns).await?;
        }
        let (host_index, _) = self
            .host
            .link(&host_name)
            .await?
            .ok_or_else(|| NetError::Other(format!("veth {host_name} is missing")))?;
        self.host.attach(host_index, bridge).await?;

        if let Some((lo, _)) = pod.link("lo").await? {
            pod.set_up(lo).await?;
        }
        let (eth0, _) = pod
            .link(POD_IFACE)
            .await?
            .ok_or_else(|| NetError::Other(format!("{POD_IFACE} is missing in the pod")))?;
        let addrs: Vec<(IpAddr, u8)> = ips
            .iter()
            .zip(&cidrs)
            .map(|(ip, c)| (*ip, c.prefix()))
            .collect();
        pod.ensure_addresses(eth0, &addrs, true).await?;
        pod.set_up(eth0).await?;
        for c in &cidrs {
            if let Some(gw) = c.host(1) {
                pod.default_route(gw, eth0).await?;
            }
        }
        Ok(ips)
    }
}

impl PodNetwork for BridgeNetwork {
    fn setup<'a>(
        &'a self,
        uid: &'a str,
        sandbox: &'a SandboxInfo,
    ) -> BoxFuture<'a, Result<Vec<IpAddr>, NetError>> {
        async move {
            let ips = self.setup_pod(uid, sandbox).await?;
            tracing::debug!(%uid, ?ips, veth = %veth_name(uid), "pod network set up");
            Ok(ips)
        }
        .boxed()
    }

    fn teardown<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<(), NetError>> {
        async move {
            self.host.delete_link(&veth_name(uid)).await?;
            self.ipam.release(uid)?;
            Ok(())
        }
        .boxed()
    }
}
