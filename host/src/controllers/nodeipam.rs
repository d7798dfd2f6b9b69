//! Node IPAM: gives every Node `spec.podCIDR` and `spec.podCIDRs` carved from
//! the cluster CIDRs (Kubernetes' range allocator). `podCIDRs[i]` comes from
//! cluster CIDR `i`, so with the default `10.42.0.0/16,fd42::/56` the IPv4
//! range is first, the IPv6 one second, and `podCIDR` is `podCIDRs[0]`.
//!
//! The allocator lives in memory. Before the first allocation it is rebuilt
//! from every existing Node's podCIDRs, so a restarted server never hands out
//! a range that is already in use; a Node's ranges are released when it is
//! deleted. Nodes that already have podCIDRs are left alone (their ranges are
//! only marked used). An exhausted range records a `CIDRNotAvailable` Event.

use super::events;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

const COMPONENT: &str = "node-ipam-controller";

/// Largest number of bits between a cluster CIDR's prefix and the node mask
/// (Kubernetes' limit too: at most 65536 node ranges per cluster CIDR).
const MAX_SUBNET_BITS: u8 = 16;

/// When a node that could not get a range is retried: 5 s, doubling up to a
/// minute (many waiting nodes must not keep the controller busy).
fn retry_after(attempts: u32) -> Duration {
    (Duration::from_secs(5) * 2u32.saturating_pow(attempts.saturating_sub(1).min(4)))
        .min(Duration::from_secs(60))
}

fn nodes() -> &'static ResourceInfo {
    resources::lookup("", "v1", "nodes").expect("nodes are served")
}

/// A CIDR block: a network address (host bits cleared) and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

/// Errors in IPAM settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    /// Not `address/prefix`.
    #[error("invalid CIDR {0:?}: expected address/prefix, e.g. 10.42.0.0/16")]
    BadCidr(String),
    /// More than one cluster CIDR of a family, or more than two.
    #[error("cluster CIDRs must be at most one IPv4 and one IPv6 range, got {0:?}")]
    BadFamilies(String),
    /// A node mask that does not fit its cluster CIDR.
    #[error("node CIDR mask size /{mask} does not fit cluster CIDR {cidr}: it must be between /{} and /{}", cidr.prefix, (cidr.prefix + MAX_SUBNET_BITS).min(cidr.bits()))]
    BadMask {
        /// The cluster CIDR.
        cidr: Cidr,
        /// The node mask size.
        mask: u8,
    },
}

impl Cidr {
    /// Address bits of the family (32 or 128).
    pub fn bits(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    fn base(&self) -> u128 {
        match self.addr {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn with_base(&self, base: u128, prefix: u8) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(base as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(base)),
        };
        Cidr { addr, prefix }
    }

    /// Whether `other` lies inside this block.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.bits() == other.bits()
            && other.prefix >= self.prefix
            && mask(other.base(), self.prefix, self.bits()) == self.base()
    }
}

/// Clear the host bits of `v` for a `prefix` in a `bits`-wide family.
fn mask(v: u128, prefix: u8, bits: u8) -> u128 {
    let host = bits - prefix;
    if host >= 128 {
        0
    } else {
        (v >> host) << host
    }
}

impl FromStr for Cidr {
    type Err = IpamError;

    /// Parse `address/prefix`; host bits are cleared (as Go's `net.ParseCIDR` does).
    fn from_str(s: &str) -> Result<Cidr, IpamError> {
        let bad = || IpamError::BadCidr(s.to_string());
        let (a, p) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let c = Cidr { addr, prefix };
        if prefix > c.bits() {
            return Err(bad());
        }
        Ok(c.with_base(mask(c.base(), prefix, c.bits()), prefix))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPAM settings (`--cluster-cidr`, `--node-cidr-mask-size-ipv4|ipv6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// Cluster CIDRs, at most one per family; node ranges come in this order.
    pub cluster_cidrs: Vec<Cidr>,
    /// Prefix length of each node's IPv4 range.
    pub node_mask_v4: u8,
    /// Prefix length of each node's IPv6 range.
    pub node_mask_v6: u8,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig::parse("10.42.0.0/16,fd42::/56", 24, 64).expect("valid defaults")
    }
}

impl IpamConfig {
    /// Build and check settings from a comma-separated CIDR list and mask sizes.
    pub fn parse(cidrs: &str, node_mask_v4: u8, node_mask_v6: u8) -> Result<IpamConfig, IpamError> {
        let cluster_cidrs: Vec<Cidr> = cidrs
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let v4 = cluster_cidrs.iter().filter(|c| c.bits() == 32).count();
        let v6 = cluster_cidrs.len() - v4;
        if cluster_cidrs.is_empty() || v4 > 1 || v6 > 1 {
            return Err(IpamError::BadFamilies(cidrs.to_string()));
        }
        let cfg = IpamConfig {
            cluster_cidrs,
            node_mask_v4,
            node_mask_v6,
        };
        for c in &cfg.cluster_cidrs {
            let mask = cfg.mask_for(c);
            if mask < c.prefix || mask > c.bits() || mask - c.prefix > MAX_SUBNET_BITS {
                return Err(IpamError::BadMask { cidr: *c, mask });
            }
        }
        Ok(cfg)
    }

    fn mask_for(&self, c: &Cidr) -> u8 {
        if c.bits() == 32 {
            self.node_mask_v4
        } else {
            self.node_mask_v6
        }
    }
}

/// One cluster CIDR cut into node ranges, with the used ones.
#[derive(Debug)]
struct RangeSet {
    cluster: Cidr,
    node_mask: u8,
    used: BTreeSet<u64>,
    /// Where the next search starts, so released ranges are not reused at once.
    next: u64,
}

impl RangeSet {
    fn size(&self) -> u64 {
        1u64 << (self.node_mask - self.cluster.prefix)
    }

    fn nth(&self, i: u64) -> Cidr {
        let step = self.cluster.bits() - self.node_mask;
        let base = self.cluster.base() + ((i as u128) << step);
        self.cluster.with_base(base, self.node_mask)
    }

    /// The index of `c` if it is exactly one of this set's node ranges.
    fn index_of(&self, c: &Cidr) -> Option<u64> {
        if c.prefix != self.node_mask || !self.cluster.contains(c) {
            return None;
        }
        let step = self.cluster.bits() - self.node_mask;
        Some(((c.base() - self.cluster.base()) >> step) as u64)
    }

    fn allocate(&mut self) -> Option<Cidr> {
        let n = self.size();
        (0..n)
            .map(|k| (self.next + k) % n)
            .find(|i| !self.used.contains(i))
            .map(|i| {
                self.used.insert(i);
                self.next = (i + 1) % n;
                self.nth(i)
            })
    }
}

/// Hands out node ranges from the cluster CIDRs, one per family per node.
#[derive(Debug)]
pub struct Allocator {
    sets: Vec<RangeSet>,
}

/// Why a node could not get its ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted(pub Cidr);

impl Allocator {
    /// An empty allocator for `cfg`.
    pub fn new(cfg: &IpamConfig) -> Allocator {
        Allocator {
            sets: cfg
                .cluster_cidrs
                .iter()
                .map(|c| RangeSet {
                    cluster: *c,
                    node_mask: cfg.mask_for(c),
                    used: BTreeSet::new(),
                    next: 0,
                })
                .collect(),
        }
    }

    /// Mark a range as used (an existing node's); ranges outside the cluster
    /// CIDRs are ignored. Returns whether it was inside.
    pub fn occupy(&mut self, c: &Cidr) -> bool {
        for s in &mut self.sets {
            if let Some(i) = s.index_of(c) {
                s.used.insert(i);
                return true;
            }
        }
        false
    }

    /// Release a range.
    pub fn release(&mut self, c: &Cidr) {
        for s in &mut self.sets {
            if let Some(i) = s.index_of(c) {
                s.used.remove(&i);
            }
        }
    }

    /// One new range from every cluster CIDR, in their order; all or nothing.
    pub fn allocate(&mut self) -> Result<Vec<Cidr>, Exhausted> {
        let mut got = Vec::with_capacity(self.sets.len());
        for i in 0..self.sets.len() {
            match self.sets[i].allocate() {
                Some(c) => got.push(c),
                None => {
                    let cluster = self.sets[i].cluster;
                    for c in &got {
                        self.release(c);
                    }
                    return Err(Exhausted(cluster));
                }
            }
        }
        Ok(got)
    }
}

/// A node's podCIDRs as written (`spec.podCIDRs`, else `spec.podCIDR`).
fn pod_cidrs(node: &Value) -> Vec<String> {
    let list: Vec<String> = node
        .pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if !list.is_empty() {
        return list;
    }
    node.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|s| vec![s.to_string()])
        .unwrap_or_default()
}

#[derive(Debug)]
struct State {
    alloc: Allocator,
    /// Whether the used set has been rebuilt from the existing nodes.
    synced: bool,
    /// Ranges held per node name, with the node's uid.
    held: HashMap<String, (String, Vec<Cidr>)>,
    /// Nodes already told (by an Event) that no range is left, with their
    /// failed attempts (for the retry back-off).
    reported: HashMap<String, u32>,
}

impl State {
    /// Record `cidrs` as the ranges of node `name`; ranges it held before
    /// (a re-created node's old object, or a lost race with a writer) go back.
    fn hold(&mut self, name: &str, uid: &str, cidrs: Vec<Cidr>) {
        for c in &cidrs {
            self.alloc.occupy(c);
        }
        let old = self
            .held
            .insert(name.to_string(), (uid.to_string(), cidrs.clone()));
        for c in old.map(|(_, v)| v).unwrap_or_default() {
            if !cidrs.contains(&c) && !self.held.values().any(|(_, v)| v.contains(&c)) {
                self.alloc.release(&c);
            }
        }
    }
}

/// The node IPAM controller.
pub struct NodeIpamController {
    state: Mutex<State>,
}

impl NodeIpamController {
    /// A controller allocating from `cfg`.
    pub fn new(cfg: &IpamConfig) -> NodeIpamController {
        NodeIpamController {
            state: Mutex::new(State {
                alloc: Allocator::new(cfg),
                synced: false,
                held: HashMap::new(),
                reported: HashMap::new(),
            }),
        }
    }

    /// Mark every existing node's ranges used (once, before allocating).
    fn sync(&self, client: &LocalClient) -> Result<(), ApiError> {
        if self.state.lock().expect("ipam lock").synced {
            return Ok(());
        }
        let (all, _) = client.list(nodes(), None, None)?;
        let mut st = self.state.lock().expect("ipam lock");
        for n in &all {
            let cidrs: Vec<Cidr> = pod_cidrs(n).iter().filter_map(|s| s.parse().ok()).collect();
            if !cidrs.is_empty() {
                let name = object::meta_str(n, "name").unwrap_or("");
                let uid = object::meta_str(n, "uid").unwrap_or("");
                st.hold(name, uid, cidrs);
            }
        }
        st.synced = true;
        Ok(())
    }
}

impl Reconciler for NodeIpamController {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    fn watches(&self) -> Vec<Watch> {
        vec![Watch::primary(nodes())]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        self.sync(client)?;
        let Some(node) = client.get(nodes(), None, &key.name)? else {
            let mut st = self.state.lock().expect("ipam lock");
            st.reported.remove(&key.name);
            if let Some((_, cidrs)) = st.held.remove(&key.name) {
                for c in &cidrs {
                    st.alloc.release(c);
                }
                tracing::debug!(node = %key.name, ?cidrs, "released pod CIDRs");
            }
            return Ok(Action::AwaitChange);
        };
        let uid = object::meta_str(&node, "uid").unwrap_or("").to_string();
        let existing: Vec<Cidr> = pod_cidrs(&node)
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        if !existing.is_empty() {
            // Set already (by us before, or by the user): only remember it.
            self.state
                .lock()
                .expect("ipam lock")
                .hold(&key.name, &uid, existing);
            return Ok(Action::AwaitChange);
        }
        if object::meta_str(&node, "deletionTimestamp").is_some() {
            return Ok(Action::AwaitChange);
        }
        let got = {
            let mut st = self.state.lock().expect("ipam lock");
            // A previous attempt for this very node may have allocated but failed to write.
            match st.held.get(&key.name) {
                Some((u, c)) if *u == uid => Ok(c.clone()),
                _ => st.alloc.allocate().inspect(|c| {
                    st.held.insert(key.name.clone(), (uid.clone(), c.clone()));
                }),
            }
        };
        let cidrs = match got {
            Ok(c) => c,
            Err(Exhausted(cluster)) => {
                let attempts = {
                    let mut st = self.state.lock().expect("ipam lock");
                    let n = st.reported.entry(key.name.clone()).or_default();
                    *n += 1;
                    *n
                };
                if attempts == 1 {
                    events::record(
                        client,
                        COMPONENT,
                        &node,
                        "Normal",
                        "CIDRNotAvailable",
                        &format!(
                            "Node {} status is now: CIDRNotAvailable (no free node range left in {cluster})",
                            key.name
                        ),
                    )
                    .await;
                }
                return Ok(Action::Requeue(retry_after(attempts)));
            }
        };
        let strs: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
        let mut updated = node.clone();
        updated["spec"]["podCIDR"] = json!(strs[0]);
        updated["spec"]["podCIDRs"] = json!(strs);
        match client.update(nodes(), updated).await {
            Ok(_) => {
                self.state
                    .lock()
                    .expect("ipam lock")
                    .reported
                    .remove(&key.name);
                tracing::info!(node = %key.name, cidrs = ?strs, "allocated pod CIDRs");
                Ok(Action::AwaitChange)
            }
            Err(e) => {
                // Kept in `held` for the retry of this node; released if it is gone.
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_masks() {
        assert_eq!(c("10.42.7.9/16").to_string(), "10.42.0.0/16");
        assert_eq!(c("fd42::1/56").to_string(), "fd42::/56");
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
        assert!(c("10.42.0.0/16").contains(&c("10.42.3.0/24")));
        assert!(!c("10.42.0.0/16").contains(&c("10.43.0.0/24")));
        assert!(!c("10.42.0.0/16").contains(&c("fd42::/64")));
    }

    #[test]
    fn config_checks() {
        let d = IpamConfig::default();
        assert_eq!(d.cluster_cidrs, vec![c("10.42.0.0/16"), c("fd42::/56")]);
        assert!(matches!(
            IpamConfig::parse("10.0.0.0/8,10.1.0.0/16", 24, 64),
            Err(IpamError::BadFamilies(_))
        ));
        assert!(matches!(
            IpamConfig::parse("10.42.0.0/16", 8, 64),
            Err(IpamError::BadMask { mask: 8, .. })
        ));
        // More than 2^16 node ranges is refused, as Kubernetes does.
        assert!(matches!(
            IpamConfig::parse("fd42::/48", 24, 112),
            Err(IpamError::BadMask { mask: 112, .. })
        ));
        assert!(IpamConfig::parse("", 24, 64).is_err());
        let e = IpamConfig::parse("10.42.0.0/16", 33, 64).unwrap_err();
        assert!(e.to_string().contains("/33"), "{e}");
    }

    #[test]
    fn allocates_distinct_dual_stack_ranges_in_order() {
        let mut a = Allocator::new(&IpamConfig::default());
        let first = a.allocate().unwrap();
        assert_eq!(first, vec![c("10.42.0.0/24"), c("fd42::/64")]);
        let second = a.allocate().unwrap();
        assert_eq!(second, vec![c("10.42.1.0/24"), c("fd42:0:0:1::/64")]);
        let mut seen = BTreeSet::new();
        seen.extend(first);
        seen.extend(second);
        for _ in 0..254 {
            for r in a.allocate().unwrap() {
                assert!(seen.insert(r), "{r} handed out twice");
            }
        }
        assert_eq!(seen.len(), 512);
        // 256 /24s in a /16 and 256 /64s in a /56: all gone now.
        assert_eq!(a.allocate(), Err(Exhausted(c("10.42.0.0/16"))));
    }

    #[test]
    fn exhaustion_is_all_or_nothing_and_release_frees() {
        let cfg = IpamConfig::parse("10.0.0.0/23,fd00::/63", 24, 64).unwrap();
        let mut a = Allocator::new(&cfg);
        let x = a.allocate().unwrap();
        let y = a.allocate().unwrap();
        assert_ne!(x, y);
        assert!(a.allocate().is_err());
        a.release(&x[0]);
        // The IPv6 side of x is still held: nothing can be handed out yet.
        assert_eq!(a.allocate(), Err(Exhausted(c("fd00::/63"))));
        // ... and the failed attempt did not keep the IPv4 range it took.
        a.release(&x[1]);
        assert_eq!(a.allocate().unwrap(), x);
    }

    #[test]
    fn occupied_ranges_are_skipped_after_a_restart() {
        let cfg = IpamConfig::parse("10.0.0.0/22", 24, 64).unwrap();
        let mut a = Allocator::new(&cfg);
        assert!(a.occupy(&c("10.0.0.0/24")));
        assert!(a.occupy(&c("10.0.2.0/24")));
        // Outside the cluster CIDR, or of another size: not ours.
        assert!(!a.occupy(&c("192.168.0.0/24")));
        assert!(!a.occupy(&c("10.0.0.0/25")));
        assert_eq!(a.allocate().unwrap(), vec![c("10.0.1.0/24")]);
        assert_eq!(a.allocate().unwrap(), vec![c("10.0.3.0/24")]);
        assert!(a.allocate().is_err());
    }

    #[test]
    fn released_ranges_are_not_reused_at_once() {
        let cfg = IpamConfig::parse("10.0.0.0/22", 24, 64).unwrap();
        let mut a = Allocator::new(&cfg);
        let x = a.allocate().unwrap();
        a.release(&x[0]);
        assert_eq!(a.allocate().unwrap(), vec![c("10.0.1.0/24")]);
    }

    #[test]
    fn recreated_node_releases_the_old_objects_ranges() {
        let mut st = State {
            alloc: Allocator::new(&IpamConfig::parse("10.0.0.0/23", 24, 64).unwrap()),
            synced: true,
            held: HashMap::new(),
            reported: HashMap::new(),
        };
        let x = st.alloc.allocate().unwrap();
        st.hold("n", "uid-1", x.clone());
        let y = st.alloc.allocate().unwrap();
        st.hold("n", "uid-2", y);
        assert_eq!(st.alloc.allocate().unwrap(), x);
    }

    #[test]
    fn retries_back_off() {
        assert_eq!(retry_after(1), Duration::from_secs(5));
        assert_eq!(retry_after(2), Duration::from_secs(10));
        assert_eq!(retry_after(100), Duration::from_secs(60));
    }

    #[test]
    fn pod_cidrs_prefers_the_list() {
        let n =
            json!({"spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24", "fd00::/64"]}});
        assert_eq!(pod_cidrs(&n), vec!["10.0.0.0/24", "fd00::/64"]);
        let n = json!({"spec": {"podCIDR": "10.0.0.0/24"}});
        assert_eq!(pod_cidrs(&n), vec!["10.0.0.0/24"]);
        assert!(pod_cidrs(&json!({"spec": {}})).is_empty());
    }
}
