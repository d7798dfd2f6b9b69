//! Pod networking (DESIGN §7): a Linux bridge per node whose addresses are
//! the first host of each of the node's podCIDRs, one veth pair per pod (the
//! host end on the bridge, the other end `eth0` in the pod's network
//! namespace) with an IPv4 and an IPv6 address from those ranges and default
//! routes via the bridge, and routes to every other node's podCIDRs via that
//! node's InternalIP (host-gw style: nodes share a link, no encapsulation).
//!
//! Layout: [`cidr`] and [`ipam`] are address arithmetic and allocation (no
//! I/O but a state file); [`netlink`] is the real kernel seam (rtnetlink);
//! [`bridge`] is the per-pod setup and teardown behind the [`PodNetwork`]
//! trait the pod workers use; [`routes`] watches Nodes for this node's
//! podCIDRs and the routes to the others; [`sysctl`] turns on forwarding.

pub mod bridge;
pub mod cidr;
pub mod ipam;
pub mod netlink;
pub mod routes;
pub mod sysctl;

use crate::runtime::SandboxInfo;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

/// Errors setting up pod networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("netlink: {what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's (or the library's) answer.
        source: rtnetlink::Error,
    },
    /// A local file or system call failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Address allocation failed.
    #[error(transparent)]
    Ipam(#[from] ipam::IpamError),
    /// The node has no podCIDRs yet (the host's node IPAM controller assigns them).
    #[error("node has no podCIDRs yet")]
    NoPodCidrs,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Which pod network the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodNetworkMode {
    /// A bridge with veths, addresses from the node's podCIDRs, routes to other nodes.
    #[default]
    Bridge,
    /// Loopback only: pods share nothing with the node or each other.
    None,
}

impl FromStr for PodNetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" => Ok(PodNetworkMode::Bridge),
            "none" => Ok(PodNetworkMode::None),
            other => Err(format!(
                "unknown pod network {other:?} (expected \"bridge\" or \"none\")"
            )),
        }
    }
}

/// What the pod workers need from the pod network.
pub trait PodNetwork: Send + Sync {
    /// Give pod `uid`, whose sandbox is `sandbox`, its interface and
    /// addresses (idempotent: an already configured pod keeps what it has).
    /// Returns the pod's IPs, IPv4 first when the node has both.
    fn setup<'a>(
        &'a self,
        uid: &'a str,
        sandbox: &'a SandboxInfo,
    ) -> BoxFuture<'a, Result<Vec<IpAddr>, NetError>>;
    /// Remove the pod's interface (if its namespace still exists) and release
    /// its addresses.
    fn teardown<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<(), NetError>>;
}

/// `--pod-network none`: pods have loopback only.
pub struct NoNetwork;

impl PodNetwork for NoNetwork {
    fn setup<'a>(
        &'a self,
        _uid: &'a str,
        _sandbox: &'a SandboxInfo,
    ) -> BoxFuture<'a, Result<Vec<IpAddr>, NetError>> {
        async { Ok(vec![]) }.boxed()
    }
    fn teardown<'a>(&'a self, _uid: &'a str) -> BoxFuture<'a, Result<(), NetError>> {
        async { Ok(()) }.boxed()
    }
}

/// A started pod network and its Node watch task (none for `none`).
pub type Started = (Arc<dyn PodNetwork>, Option<tokio::task::JoinHandle<()>>);

/// Start the pod network `cfg` asks for: for the bridge, turn on forwarding
/// in the agent's namespace and start watching Nodes (this node's podCIDRs,
/// routes to the others). Returns the network and the watch task, if any.
pub fn start(cfg: &crate::AgentConfig, client: kube::Client) -> Result<Started, NetError> {
    match cfg.pod_network {
        PodNetworkMode::None => Ok((Arc::new(NoNetwork), None)),
        PodNetworkMode::Bridge => {
            sysctl::enable_forwarding()?;
            let (tx, rx) = tokio::sync::watch::channel(Vec::new());
            let net = Arc::new(bridge::BridgeNetwork::new(
                &cfg.bridge_name,
                &cfg.node_name,
                &cfg.data_dir,
                rx,
            )?);
            let task = tokio::spawn(routes::run(client, cfg.node_name.clone(), net.clone(), tx));
            Ok((net, Some(task)))
        }
    }
}

/// The node's address of the other family on the interface holding `ip`, if any.
pub async fn dual_stack_address(ip: IpAddr) -> Option<IpAddr> {
    let nl = netlink::Netlink::current().ok()?;
    nl.other_family_address(ip).await.ok().flatten()
}

/// Check a network interface name (at most 15 bytes, no '/', ':' or
/// whitespace), for the bridge name flag.
pub fn link_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid interface name {s:?}: 1 to 15 characters, no '/', ':' or spaces"
        ))
    }
}

/// The host-side veth name of a pod: stable per uid (so a restarted agent
/// finds it) and within the kernel's 15-character limit.
pub fn veth_name(uid: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(uid.as_bytes());
    format!("shv{}", &hex::encode(digest)[..12])
}

/// A stable, locally administered MAC address for the node's bridge.
pub fn bridge_mac(node_name: &str) -> [u8; 6] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(node_name.as_bytes());
    [0x02, d[0], d[1], d[2], d[3], d[4]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = veth_name("0b6f1c2e-1111-4d3c-9a55-000000000001");
        assert_eq!(a, veth_name("0b6f1c2e-1111-4d3c-9a55-000000000001"));
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, veth_name("0b6f1c2e-1111-4d3c-9a55-000000000002"));
        let mac = bridge_mac("node-1");
        assert_eq!(mac[0], 0x02, "locally administered unicast");
    }

    #[test]
    fn modes_parse_with_a_clear_error() {
        assert_eq!("bridge".parse(), Ok(PodNetworkMode::Bridge));
        assert_eq!("none".parse(), Ok(PodNetworkMode::None));
        let e = "flannel".parse::<PodNetworkMode>().unwrap_err();
        assert!(e.contains("expected"), "{e}");
        assert_eq!(link_name("shoal0").as_deref(), Ok("shoal0"));
        for bad in ["", "a/b", "a b", "0123456789abcdef", "..", "a:1"] {
            assert!(link_name(bad).is_err(), "{bad}");
        }
    }
}
