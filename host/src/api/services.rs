//! Service address and port allocation: `spec.clusterIP(s)` from the service
//! CIDRs (one or two families, the first is the cluster's primary family),
//! `spec.ports[*].nodePort` and `spec.healthCheckNodePort` from the node-port
//! range, with Kubernetes' rules for `ipFamilies` / `ipFamilyPolicy`
//! (SingleStack, PreferDualStack, RequireDualStack), headless and
//! ExternalName services, and the transitions an update may make.
//!
//! **Durability**: the Service object *is* the record of its allocation; it is
//! written in the same store transaction as the object. The in-memory
//! allocators are a cache of the store: built from the stored Services on
//! first use (after a restart nothing else survives), reserved before the
//! write (so two concurrent requests never get the same address) and released
//! after the object is removed. Each allocated item remembers its owner (the
//! Service's key and uid), so a late release never frees an item somebody
//! else holds now. When a requested item is held by an owner that no longer
//! holds it in the store, or a range looks full, the allocators are rebuilt
//! from the store (keeping in-flight reservations) and the request retried once.
//!
//! The `default/kubernetes` Service and its EndpointSlice are made here too
//! ([`bootstrap_kubernetes`]).

use super::error::{ApiError, ApiResult, Cause};
use super::handlers::Target;
use super::object::meta_str;
use super::resources::{self, ResourceInfo};
use super::AppState;
use rand::Rng;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

// ---- Configuration -------------------------------------------------------

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The Kubernetes name (`IPv4`, `IPv6`).
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Parse a Kubernetes family name.
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// An IP network, `ADDRESS/PREFIX`, kept in its canonical (masked) form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `10.43.0.0/16` or `fd43::/112`; host bits are masked off.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("\"{s}\" is not a CIDR (expected ADDRESS/PREFIX)"))?;
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("\"{s}\": \"{addr}\" is not an IP address"))?;
        let family = Family::of(ip);
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| u32::from(*p) <= family.bits())
            .ok_or_else(|| {
                format!(
                    "\"{s}\": the prefix length must be a number from 0 to {}",
                    family.bits()
                )
            })?;
        let host = family.bits() - u32::from(prefix);
        let host_mask = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        let network = from_u128(family, to_u128(ip) & !host_mask);
        Ok(Cidr { network, prefix })
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(self.network)
    }

    /// Bits left for hosts.
    pub fn host_bits(&self) -> u32 {
        self.family().bits() - u32::from(self.prefix)
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family()
            && (self.host_bits() >= 128
                || (to_u128(ip) >> self.host_bits()) == (to_u128(self.network) >> self.host_bits()))
    }

    /// The address `n` places after the network address.
    pub fn nth(&self, n: u128) -> IpAddr {
        from_u128(self.family(), to_u128(self.network) + n)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An inclusive range of node ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Parse `30000-32767`, `30000+2767` (base and extra ports) or a single port.
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let s = s.trim();
        let num = |x: &str| -> Result<u16, String> {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("\"{s}\": \"{x}\" is not a port number from 1 to 65535"))
        };
        let (first, last) = if let Some((a, b)) = s.split_once('-') {
            (num(a)?, num(b)?)
        } else if let Some((a, b)) = s.split_once('+') {
            let first = num(a)?;
            let extra: u32 = b
                .trim()
                .parse()
                .map_err(|_| format!("\"{s}\": \"{b}\" is not a number"))?;
            let last = u32::from(first) + extra;
            if last > 65535 {
                return Err(format!("\"{s}\": the range ends past port 65535"));
            }
            (first, last as u16)
        } else {
            let p = num(s)?;
            (p, p)
        };
        if first > last {
            return Err(format!(
                "\"{s}\": the first port is larger than the last (expected FIRST-LAST)"
            ));
        }
        Ok(PortRange { first, last })
    }

    /// Number of ports.
    pub fn size(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: i64) -> bool {
        port >= i64::from(self.first) && port <= i64::from(self.last)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The largest service range: 2^20 addresses (kube-apiserver's limit).
const MAX_HOST_BITS: u32 = 20;

/// Service networking settings (`--service-cidr`, `--service-node-port-range`,
/// `--advertise-address`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// One or two service CIDRs of different families; the first is primary.
    pub cidrs: Vec<Cidr>,
    /// Where node ports come from.
    pub node_ports: PortRange,
    /// The address the `kubernetes` Service's endpoint points at (None: the
    /// listen address, or the machine's first non-loopback IPv4).
    pub advertise_address: Option<IpAddr>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig::parse("10.43.0.0/16,fd43::/112", "30000-32767")
            .expect("the default service settings are valid")
    }
}

impl ServiceConfig {
    /// Parse and check the flag values.
    pub fn parse(cidrs: &str, node_ports: &str) -> Result<ServiceConfig, String> {
        let list: Vec<Cidr> = cidrs
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Cidr::parse)
            .collect::<Result<_, _>>()?;
        match list.as_slice() {
            [] => return Err("at least one service CIDR is required".into()),
            [a, b] if a.family() == b.family() => {
                return Err(format!(
                    "\"{cidrs}\": two service CIDRs must be of different IP families (one IPv4, one IPv6)"
                ))
            }
            [_] | [_, _] => {}
            _ => {
                return Err(format!(
                    "\"{cidrs}\": at most two service CIDRs (one per IP family) may be given"
                ))
            }
        }
        for c in &list {
            if c.host_bits() > MAX_HOST_BITS {
                return Err(format!(
                    "service CIDR {c} is too large: the prefix length must be at least {} for {}",
                    c.family().bits() - MAX_HOST_BITS,
                    c.family().name()
                ));
            }
            if IpRange::usable(c) < 2 {
                return Err(format!(
                    "service CIDR {c} is too small: it must hold at least two usable addresses"
                ));
            }
        }
        Ok(ServiceConfig {
            cidrs: list,
            node_ports: PortRange::parse(node_ports)?,
            advertise_address: None,
        })
    }

    /// The cluster's primary service family (the first CIDR's).
    pub fn primary_family(&self) -> Family {
        self.cidrs[0].family()
    }

    /// The first usable address of the primary CIDR (the `kubernetes` Service's).
    pub fn first_ip(&self) -> IpAddr {
        self.cidrs[0].nth(1)
    }
}

// ---- Range allocators ----------------------------------------------------

/// Who holds an allocated item: a Service's store key and uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Store key of the Service.
    pub key: String,
    /// Its uid.
    pub uid: String,
}

/// One allocated thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Item {
    /// A cluster IP.
    Ip(IpAddr),
    /// A node port (node ports are unique across protocols).
    NodePort(u16),
}

/// A bitmap over `0..size` with owners, and Kubernetes' preference for
/// handing out dynamic values above a low band kept for static requests.
#[derive(Debug)]
struct Range {
    words: Vec<u64>,
    size: u32,
    band: u32,
    owners: HashMap<u32, Owner>,
}

impl Range {
    fn new(size: u32, band: u32) -> Range {
        Range {
            words: vec![0; size.div_ceil(64) as usize],
            size,
            band: band.min(size),
            owners: HashMap::new(),
        }
    }

    fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.owners.clear();
    }

    fn set(&mut self, i: u32, owner: Owner) {
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        self.owners.insert(i, owner);
    }

    fn clear(&mut self, i: u32) {
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
        self.owners.remove(&i);
    }

    fn used(&self) -> usize {
        self.owners.len()
    }

    /// The first free index in `from..to`.
    fn scan(&self, from: u32, to: u32) -> Option<u32> {
        let mut i = from;
        while i < to {
            let w = self.words[(i / 64) as usize];
            if w == u64::MAX {
                i = (i / 64 + 1) * 64;
                continue;
            }
            if w & (1 << (i % 64)) == 0 {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// A free index: a random start in the upper band, scanning forward and
    /// wrapping; then the low band the same way.
    fn next_free(&self) -> Option<u32> {
        let mut rng = rand::rng();
        for (a, b) in [(self.band, self.size), (0, self.band)] {
            if a >= b {
                continue;
            }
            let start = rng.random_range(a..b);
            if let Some(i) = self.scan(start, b).or_else(|| self.scan(a, start)) {
                return Some(i);
            }
        }
        None
    }
}

/// Kubernetes' static band: `clamp(size / step, min, max)`, none for tiny ranges.
fn band(size: u64, min: u64, max: u64, step: u64) -> u32 {
    if size < min {
        0
    } else {
        (size / step).clamp(min, max) as u32
    }
}

/// The addresses of one service CIDR: the network address (and for IPv4 the
/// broadcast address) are never handed out; IPv6 ranges use at most 65536
/// addresses, like Kubernetes' bitmap allocator.
#[derive(Debug)]
struct IpRange {
    cidr: Cidr,
    range: Range,
}

impl IpRange {
    fn usable(cidr: &Cidr) -> u32 {
        let total: u128 = 1u128 << cidr.host_bits().min(127);
        let n = match cidr.family() {
            Family::V4 => total.saturating_sub(2),
            Family::V6 => total.min(65536).saturating_sub(1),
        };
        n as u32
    }

    fn new(cidr: Cidr) -> IpRange {
        let size = Self::usable(&cidr);
        let total = 1u64 << cidr.host_bits().min(63);
        IpRange {
            cidr,
            range: Range::new(size, band(total, 16, 256, 16)),
        }
    }

    fn index(&self, ip: IpAddr) -> Option<u32> {
        if !self.cidr.contains(ip) {
            return None;
        }
        let off = to_u128(ip) - to_u128(self.cidr.network);
        (off >= 1 && off <= u128::from(self.range.size)).then(|| (off - 1) as u32)
    }

    fn ip(&self, i: u32) -> IpAddr {
        self.cidr.nth(u128::from(i) + 1)
    }
}

/// Why an item could not be taken.
#[derive(Debug)]
enum TakeError {
    NotInRange,
    Held(Owner),
}

/// All allocators of the cluster: one per service family and the node ports.
#[derive(Debug)]
pub struct Allocators {
    config: ServiceConfig,
    ips: Vec<IpRange>,
    ports: Range,
    pending: HashMap<u64, (Owner, Vec<Item>)>,
    next_id: u64,
}

/// The result of a successful allocation: what was newly reserved and what
/// the previous version of the Service held that the new one does not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Items reserved by this operation.
    pub reserved: Vec<Item>,
    /// Items to free once the write is committed.
    pub release: Vec<Item>,
}

/// A requested item someone else holds.
#[derive(Debug)]
pub struct Held {
    /// The item.
    pub item: Item,
    /// Who holds it.
    pub holder: Owner,
    /// The error to report.
    pub cause: Cause,
}

/// Why an allocation failed.
#[derive(Debug)]
pub enum Failure {
    /// The request is invalid (422).
    Invalid(Vec<Cause>),
    /// A requested item is held by someone else (422, unless stale).
    Held(Box<Held>),
    /// A range is exhausted (500, as Kubernetes).
    Full(String),
}

impl Failure {
    fn into_api(self, name: &str) -> ApiError {
        match self {
            Failure::Invalid(causes) => invalid(name, causes),
            Failure::Held(h) => invalid(name, vec![h.cause]),
            Failure::Full(m) => ApiError::Internal(m),
        }
    }
}

fn invalid(name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        group: String::new(),
        kind: "Service".into(),
        name: name.into(),
        causes,
    }
}

impl Allocators {
    /// Empty allocators for a configuration.
    pub fn new(config: &ServiceConfig) -> Allocators {
        let np = config.node_ports;
        Allocators {
            config: config.clone(),
            ips: config.cidrs.iter().map(|c| IpRange::new(*c)).collect(),
            ports: Range::new(np.size(), band(u64::from(np.size()), 16, 128, 32)),
            pending: HashMap::new(),
            next_id: 1,
        }
    }

    fn configured(&self, f: Family) -> bool {
        self.ips.iter().any(|r| r.cidr.family() == f)
    }

    fn slot(&mut self, item: Item) -> Option<(&mut Range, u32)> {
        match item {
            Item::Ip(ip) => self.ips.iter_mut().find_map(|r| {
                let i = r.index(ip)?;
                Some((&mut r.range, i))
            }),
            Item::NodePort(p) => {
                let np = self.config.node_ports;
                np.contains(i64::from(p))
                    .then(|| (&mut self.ports, u32::from(p - np.first)))
            }
        }
    }

    /// Who holds an item, if anyone.
    pub fn holder(&mut self, item: Item) -> Option<Owner> {
        let (r, i) = self.slot(item)?;
        r.owners.get(&i).cloned()
    }

    /// Take a specific item for `owner`. `Ok(true)` when newly taken,
    /// `Ok(false)` when the owner (same uid) already held it.
    fn take(&mut self, item: Item, owner: &Owner) -> Result<bool, TakeError> {
        let (r, i) = self.slot(item).ok_or(TakeError::NotInRange)?;
        match r.owners.get(&i) {
            Some(o) if o.uid == owner.uid => Ok(false),
            Some(o) => Err(TakeError::Held(o.clone())),
            None => {
                r.set(i, owner.clone());
                Ok(true)
            }
        }
    }

    fn take_next_ip(&mut self, family: Family, owner: &Owner) -> Option<IpAddr> {
        let r = self.ips.iter_mut().find(|r| r.cidr.family() == family)?;
        let i = r.range.next_free()?;
        r.range.set(i, owner.clone());
        Some(r.ip(i))
    }

    fn take_next_port(&mut self, owner: &Owner) -> Option<u16> {
        let i = self.ports.next_free()?;
        self.ports.set(i, owner.clone());
        Some(self.config.node_ports.first + i as u16)
    }

    /// Free an item if `uid` holds it.
    pub fn release(&mut self, item: Item, uid: &str) -> bool {
        match self.slot(item) {
            Some((r, i)) if r.owners.get(&i).is_some_and(|o| o.uid == uid) => {
                r.clear(i);
                true
            }
            _ => false,
        }
    }

    /// How many addresses of `family` and node ports are in use.
    pub fn used(&self, family: Family) -> (usize, usize) {
        let ips = self
            .ips
            .iter()
            .find(|r| r.cidr.family() == family)
            .map_or(0, |r| r.range.used());
        (ips, self.ports.used())
    }

    /// Rebuild from the stored Services, keeping in-flight reservations.
    pub fn load<'a>(&mut self, services: impl IntoIterator<Item = (Owner, &'a Value)>) {
        for r in &mut self.ips {
            r.range.clear_all();
        }
        self.ports.clear_all();
        for (owner, svc) in services {
            for item in items_of(svc) {
                match self.take(item, &owner) {
                    Ok(_) => {}
                    Err(TakeError::NotInRange) => {} // outside today's ranges: not ours to track
                    Err(TakeError::Held(o)) => tracing::warn!(
                        ?item, first = %o.key, second = %owner.key,
                        "two stored Services hold the same allocation"
                    ),
                }
            }
        }
        let pending: Vec<(Owner, Vec<Item>)> = self.pending.values().cloned().collect();
        for (owner, items) in pending {
            for item in items {
                let _ = self.take(item, &owner);
            }
        }
    }

    /// Allocate what `new` needs (create when `old` is None, else update from
    /// `old`, the stored object with the same uid), filling in its fields.
    /// On failure nothing stays reserved and `new` may be partly modified.
    pub fn allocate(
        &mut self,
        old: Option<&Value>,
        new: &mut Value,
        owner: &Owner,
    ) -> Result<Plan, Failure> {
        let mut svc = Svc::from(new);
        let old_svc = old.map(Svc::from);
        svc.default_traffic_fields();
        let causes = validate_fields(&svc);
        if !causes.is_empty() {
            return Err(Failure::Invalid(causes));
        }
        self.init_ip_family_fields(&mut svc, old_svc.as_ref())
            .map_err(Failure::Invalid)?;
        let kept: BTreeSet<Item> = old.map(items_of).unwrap_or_default().into_iter().collect();
        let mut reserved = Vec::new();
        let r = self.allocate_into(&mut svc, old_svc.as_ref(), &kept, owner, &mut reserved);
        if let Err(e) = r {
            for item in reserved {
                self.release(item, &owner.uid);
            }
            return Err(e);
        }
        svc.write(new);
        let now: BTreeSet<Item> = items_of(new).into_iter().collect();
        Ok(Plan {
            reserved,
            release: kept.difference(&now).copied().collect(),
        })
    }

    fn allocate_into(
        &mut self,
        svc: &mut Svc,
        old: Option<&Svc>,
        kept: &BTreeSet<Item>,
        owner: &Owner,
        reserved: &mut Vec<Item>,
    ) -> Result<(), Failure> {
        // Cluster IPs.
        let prefer_same = old.is_some_and(|o| matching_prefer_dual_stack(svc, o));
        if svc.ty != "ExternalName" && !svc.headless() && !prefer_same {
            while svc.cluster_ips.len() < svc.families.len() {
                svc.cluster_ips.push(String::new());
            }
            for i in 0..svc.families.len() {
                let family = Family::parse(&svc.families[i]).unwrap_or(Family::V4);
                let requested = svc.cluster_ips[i].clone();
                if requested.is_empty() {
                    let ip = self.take_next_ip(family, owner).ok_or_else(|| {
                        Failure::Full(format!(
                            "failed to allocate a serviceIP: range is full ({} service range is exhausted)",
                            family.name()
                        ))
                    })?;
                    reserved.push(Item::Ip(ip));
                    svc.cluster_ips[i] = ip.to_string();
                    continue;
                }
                let Ok(ip) = requested.parse::<IpAddr>() else {
                    continue; // validated before: cannot happen
                };
                if kept.contains(&Item::Ip(ip)) {
                    continue;
                }
                let list = go_list(&svc.cluster_ips);
                match self.take(Item::Ip(ip), owner) {
                    Ok(true) => reserved.push(Item::Ip(ip)),
                    Ok(false) => {}
                    Err(TakeError::NotInRange) => {
                        let range = self
                            .ips
                            .iter()
                            .find(|r| r.cidr.family() == family)
                            .map_or_else(String::new, |r| r.cidr.to_string());
                        return Err(Failure::Invalid(vec![Cause::invalid_raw(
                            "spec.clusterIPs",
                            &list,
                            format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"),
                        )]));
                    }
                    Err(TakeError::Held(holder)) => {
                        return Err(Failure::Held(Box::new(Held {
                            item: Item::Ip(ip),
                            holder,
                            cause: Cause::invalid_raw(
                                "spec.clusterIPs",
                                &list,
                                format!(
                                    "failed to allocate IP {ip}: provided IP is already allocated"
                                ),
                            ),
                        })))
                    }
                }
            }
            svc.cluster_ip = svc.cluster_ips.first().cloned().unwrap_or_default();
        }
        // Node ports.
        if svc.needs_node_port() {
            let allocate_new = svc.should_allocate_node_ports();
            let mut by_port: HashMap<i64, i64> = HashMap::new();
            for i in 0..svc.ports.len() {
                let p = svc.ports[i].clone();
                if p.node_port == 0 && !allocate_new {
                    continue;
                }
                if p.node_port == 0 {
                    // On create, ports with the same number (e.g. 53/TCP and
                    // 53/UDP) share one node port, as in Kubernetes.
                    let shared = if old.is_none() {
                        by_port.get(&p.port).copied().or_else(|| {
                            svc.ports
                                .iter()
                                .find(|q| q.port == p.port && q.node_port != 0)
                                .map(|q| q.node_port)
                        })
                    } else {
                        None
                    };
                    match shared {
                        Some(np) => {
                            self.take_port(np, i, owner, kept, reserved)?;
                            svc.ports[i].node_port = np;
                        }
                        None => {
                            let np = self.take_next_port(owner).ok_or_else(|| {
                                Failure::Full("failed to allocate a nodePort: range is full".into())
                            })?;
                            reserved.push(Item::NodePort(np));
                            svc.ports[i].node_port = i64::from(np);
                        }
                    }
                } else {
                    self.take_port(p.node_port, i, owner, kept, reserved)?;
                }
                by_port.insert(p.port, svc.ports[i].node_port);
            }
        }
        // Health-check node port (LoadBalancer with externalTrafficPolicy Local).
        if svc.needs_hc_node_port() {
            if svc.hc_node_port == 0 {
                let np = self.take_next_port(owner).ok_or_else(|| {
                    Failure::Full("failed to allocate a HealthCheck NodePort: range is full".into())
                })?;
                reserved.push(Item::NodePort(np));
                svc.hc_node_port = i64::from(np);
            } else {
                let np = svc.hc_node_port;
                self.take_port_at(np, "spec.healthCheckNodePort", owner, kept, reserved)?;
            }
        }
        Ok(())
    }

    fn take_port(
        &mut self,
        np: i64,
        index: usize,
        owner: &Owner,
        kept: &BTreeSet<Item>,
        reserved: &mut Vec<Item>,
    ) -> Result<(), Failure> {
        self.take_port_at(
            np,
            &format!("spec.ports[{index}].nodePort"),
            owner,
            kept,
            reserved,
        )
    }

    fn take_port_at(
        &mut self,
        np: i64,
        field: &str,
        owner: &Owner,
        kept: &BTreeSet<Item>,
        reserved: &mut Vec<Item>,
    ) -> Result<(), Failure> {
        let range = self.config.node_ports;
        let not_in_range = || {
            Failure::Invalid(vec![Cause::invalid_raw(
                field,
                np,
                format!(
                    "provided port is not in the valid range. The range of valid ports is {range}"
                ),
            )])
        };
        let Ok(port) = u16::try_from(np) else {
            return Err(not_in_range());
        };
        let item = Item::NodePort(port);
        if kept.contains(&item) || reserved.contains(&item) {
            return Ok(());
        }
        match self.take(item, owner) {
            Ok(true) => {
                reserved.push(item);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(TakeError::NotInRange) => Err(not_in_range()),
            Err(TakeError::Held(holder)) => Err(Failure::Held(Box::new(Held {
                item,
                holder,
                cause: Cause::invalid_raw(field, np, "provided port is already allocated"),
            }))),
        }
    }

    /// Kubernetes' `initIPFamilyFields`: default `ipFamilyPolicy` and
    /// `ipFamilies` from the request, the previous object and the cluster.
    fn init_ip_family_fields(&self, svc: &mut Svc, old: Option<&Svc>) -> Result<(), Vec<Cause>> {
        if svc.ty == "ExternalName" {
            return Ok(());
        }
        if old.is_some_and(|o| matching_prefer_dual_stack(svc, o)) {
            return Ok(());
        }
        if svc.policy.is_none() {
            svc.policy = Some(match old.and_then(|o| o.policy.clone()) {
                Some(p) => p,
                None if svc.headless() && !svc.has_selector => REQUIRE.into(),
                None => SINGLE.into(),
            });
        }
        let policy = svc.policy.clone().unwrap_or_default();
        let mut el = Vec::new();
        if let Some(old) = old {
            if policy == SINGLE {
                if old.cluster_ips == svc.cluster_ips && svc.cluster_ips.len() > 1 {
                    svc.cluster_ips.truncate(1);
                }
                if old.families == svc.families && svc.families.len() > 1 {
                    svc.families.truncate(1);
                }
            } else {
                if !svc.cluster_ips.is_empty() && svc.cluster_ips.len() < old.cluster_ips.len() {
                    el.push(Cause::invalid(
                        "spec.ipFamilyPolicy",
                        &policy,
                        "must be 'SingleStack' to release the secondary cluster IP",
                    ));
                }
                if !svc.families.is_empty() && svc.families.len() < old.families.len() {
                    el.push(Cause::invalid(
                        "spec.ipFamilyPolicy",
                        &policy,
                        "must be 'SingleStack' to release the secondary IP family",
                    ));
                }
            }
        }
        if policy == SINGLE {
            if svc.cluster_ips.len() == 2 {
                el.push(Cause::invalid(
                    "spec.ipFamilyPolicy",
                    &policy,
                    "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
                ));
            }
            if svc.families.len() == 2 {
                el.push(Cause::invalid(
                    "spec.ipFamilyPolicy",
                    &policy,
                    "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
                ));
            }
        }
        // Infer families from requested cluster IPs.
        for i in 0..svc.cluster_ips.len() {
            let ip = &svc.cluster_ips[i];
            if ip == "None" {
                break;
            }
            let Ok(addr) = ip.parse::<IpAddr>() else {
                continue;
            };
            let family = Family::of(addr);
            if i >= svc.families.len() {
                if self.configured(family) {
                    svc.families.push(family.name().into());
                } else {
                    el.push(Cause::invalid_raw(
                        format!("spec.clusterIPs[{i}]"),
                        go_list(&svc.cluster_ips),
                        format!("{} is not configured on this cluster", family.name()),
                    ));
                }
            }
        }
        if !el.is_empty() {
            return Err(el);
        }
        let primary = self.config.primary_family();
        if svc.headless() && !svc.has_selector {
            // Headless and selectorless: any families, even on a single-stack cluster.
            if svc.families.is_empty() {
                svc.families.push(primary.name().into());
            }
            if svc.families.len() < 2 && policy != SINGLE {
                let first = Family::parse(&svc.families[0]).unwrap_or(primary);
                svc.families.push(first.other().name().into());
            }
            return Ok(());
        }
        if policy == REQUIRE && self.ips.len() < 2 {
            el.push(Cause::invalid(
                "spec.ipFamilyPolicy",
                &policy,
                "this cluster is not configured for dual-stack services",
            ));
        }
        for (i, f) in svc.families.iter().enumerate() {
            if !Family::parse(f).is_some_and(|f| self.configured(f)) {
                el.push(Cause::invalid(
                    format!("spec.ipFamilies[{i}]"),
                    f,
                    "not configured on this cluster",
                ));
            }
        }
        if !el.is_empty() {
            return Err(el);
        }
        if svc.families.is_empty() {
            svc.families.push(primary.name().into());
        }
        if policy != SINGLE && svc.families.len() == 1 && self.ips.len() == 2 {
            let first = Family::parse(&svc.families[0]).unwrap_or(primary);
            svc.families.push(first.other().name().into());
        }
        Ok(())
    }
}

const SINGLE: &str = "SingleStack";
const PREFER: &str = "PreferDualStack";
const REQUIRE: &str = "RequireDualStack";

/// Go's rendering of a string slice, as Kubernetes prints list values.
fn go_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[]string{{{}}}", items.join(", "))
}

impl Cause {
    /// An invalid value printed without quotes (numbers, lists), as Kubernetes does.
    fn invalid_raw(
        field: impl Into<String>,
        value: impl fmt::Display,
        msg: impl fmt::Display,
    ) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value}: {msg}"),
        }
    }
}

/// A PreferDualStack service whose IP fields did not change is not upgraded
/// or downgraded by an update, even if the cluster's families changed.
fn matching_prefer_dual_stack(new: &Svc, old: &Svc) -> bool {
    new.policy.is_some()
        && old.ty == new.ty
        && matches!(new.ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer")
        && new.policy.as_deref() == Some(PREFER)
        && old.policy.as_deref().is_none_or(|p| p == PREFER)
        && old.cluster_ips == new.cluster_ips
        && old.families == new.families
}

// ---- The Service fields this module reads and writes ---------------------

#[derive(Clone, Debug, Default, PartialEq)]
struct Port {
    name: String,
    port: i64,
    protocol: String,
    node_port: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Svc {
    ty: String,
    cluster_ip: String,
    cluster_ips: Vec<String>,
    families: Vec<String>,
    policy: Option<String>,
    has_selector: bool,
    ports: Vec<Port>,
    hc_node_port: i64,
    etp: String,
    allocate_lb_node_ports: Option<bool>,
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

impl Svc {
    fn from(obj: &Value) -> Svc {
        let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        let s = |k: &str| {
            spec.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let ty = match s("type") {
            t if t.is_empty() => "ClusterIP".to_string(),
            t => t,
        };
        Svc {
            ty,
            cluster_ip: s("clusterIP"),
            cluster_ips: strs(spec.get("clusterIPs")),
            families: strs(spec.get("ipFamilies")),
            policy: spec
                .get("ipFamilyPolicy")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
                .map(str::to_string),
            has_selector: spec
                .get("selector")
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty()),
            ports: spec
                .get("ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| Port {
                            name: p.get("name").and_then(Value::as_str).unwrap_or("").into(),
                            port: p.get("port").and_then(Value::as_i64).unwrap_or(0),
                            protocol: p
                                .get("protocol")
                                .and_then(Value::as_str)
                                .unwrap_or("TCP")
                                .into(),
                            node_port: p.get("nodePort").and_then(Value::as_i64).unwrap_or(0),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            hc_node_port: spec
                .get("healthCheckNodePort")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            etp: s("externalTrafficPolicy"),
            allocate_lb_node_ports: spec
                .get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool),
        }
    }

    /// Write the modelled fields back into the object's spec.
    fn write(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            obj["spec"] = json!({});
        }
        let spec = obj["spec"].as_object_mut().expect("spec is an object");
        let mut put = |k: &str, v: Option<Value>| match v {
            Some(v) => {
                spec.insert(k.into(), v);
            }
            None => {
                spec.remove(k);
            }
        };
        put(
            "clusterIP",
            (!self.cluster_ip.is_empty()).then(|| json!(self.cluster_ip)),
        );
        put(
            "clusterIPs",
            (!self.cluster_ips.is_empty()).then(|| json!(self.cluster_ips)),
        );
        put(
            "ipFamilies",
            (!self.families.is_empty()).then(|| json!(self.families)),
        );
        put("ipFamilyPolicy", self.policy.clone().map(Value::String));
        put(
            "healthCheckNodePort",
            (self.hc_node_port != 0).then(|| json!(self.hc_node_port)),
        );
        put(
            "externalTrafficPolicy",
            (!self.etp.is_empty()).then(|| json!(self.etp)),
        );
        put(
            "allocateLoadBalancerNodePorts",
            self.allocate_lb_node_ports.map(Value::Bool),
        );
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for (p, m) in ports.iter_mut().zip(&self.ports) {
                if let Some(o) = p.as_object_mut() {
                    if m.node_port != 0 {
                        o.insert("nodePort".into(), json!(m.node_port));
                    } else {
                        o.remove("nodePort");
                    }
                }
            }
        }
    }

    fn headless(&self) -> bool {
        self.cluster_ip == "None" || self.cluster_ips.first().is_some_and(|i| i == "None")
    }

    fn needs_cluster_ip(&self) -> bool {
        self.ty != "ExternalName"
    }

    fn needs_node_port(&self) -> bool {
        matches!(self.ty.as_str(), "NodePort" | "LoadBalancer")
    }

    fn should_allocate_node_ports(&self) -> bool {
        match self.ty.as_str() {
            "NodePort" => true,
            "LoadBalancer" => self.allocate_lb_node_ports.unwrap_or(true),
            _ => false,
        }
    }

    fn needs_hc_node_port(&self) -> bool {
        self.ty == "LoadBalancer" && self.etp == "Local"
    }

    /// Kubernetes' v1 defaults for the traffic fields of NodePort and
    /// LoadBalancer Services.
    fn default_traffic_fields(&mut self) {
        if self.needs_node_port() && self.etp.is_empty() {
            self.etp = "Cluster".into();
        }
        if self.ty == "LoadBalancer" && self.allocate_lb_node_ports.is_none() {
            self.allocate_lb_node_ports = Some(true);
        }
    }

    fn node_ports(&self) -> BTreeSet<i64> {
        self.ports
            .iter()
            .map(|p| p.node_port)
            .filter(|n| *n != 0)
            .collect()
    }
}

/// What a stored Service holds: its cluster IPs, node ports and health-check port.
pub fn items_of(obj: &Value) -> Vec<Item> {
    let svc = Svc::from(obj);
    let mut out = Vec::new();
    let ips = if svc.cluster_ips.is_empty() {
        vec![svc.cluster_ip.clone()]
    } else {
        svc.cluster_ips.clone()
    };
    for ip in ips {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            out.push(Item::Ip(ip));
        }
    }
    for p in &svc.ports {
        if let Ok(n) = u16::try_from(p.node_port) {
            if n != 0 && !out.contains(&Item::NodePort(n)) {
                out.push(Item::NodePort(n));
            }
        }
    }
    if let Ok(n) = u16::try_from(svc.hc_node_port) {
        if n != 0 && !out.contains(&Item::NodePort(n)) {
            out.push(Item::NodePort(n));
        }
    }
    out
}

// ---- Validation (the IP and port fields) ---------------------------------

/// Kubernetes' checks of the fields this module allocates
/// (`ValidateServiceClusterIPsRelatedFields` and the type-dependent rules).
fn validate_fields(svc: &Svc) -> Vec<Cause> {
    let mut el = Vec::new();
    match svc.ty.as_str() {
        "ExternalName" => {
            if !svc.cluster_ip.is_empty() {
                el.push(Cause::forbidden(
                    "spec.clusterIP",
                    "may not be set for ExternalName services",
                ));
            }
            if !svc.cluster_ips.is_empty() {
                el.push(Cause::forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                ));
            }
            if !svc.families.is_empty() {
                el.push(Cause::forbidden(
                    "spec.ipFamilies",
                    "may not be set for ExternalName services",
                ));
            }
            if svc.policy.is_some() {
                el.push(Cause::forbidden(
                    "spec.ipFamilyPolicy",
                    "may not be set for ExternalName services",
                ));
            }
            return el;
        }
        t @ ("NodePort" | "LoadBalancer") if svc.headless() => {
            el.push(Cause::invalid(
                "spec.clusterIP",
                "None",
                format!("may not be set to 'None' for {t} services"),
            ));
        }
        "ClusterIP" => {
            for (i, p) in svc.ports.iter().enumerate() {
                if p.node_port != 0 {
                    el.push(Cause::forbidden(
                        format!("spec.ports[{i}].nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                }
            }
        }
        _ => {}
    }
    if !svc.cluster_ip.is_empty()
        && svc.cluster_ip != "None"
        && svc.cluster_ip.parse::<IpAddr>().is_err()
    {
        el.push(Cause::invalid(
            "spec.clusterIP",
            &svc.cluster_ip,
            "must be empty, 'None', or a valid IP address",
        ));
    }
    let list = go_list(&svc.cluster_ips);
    if !svc.cluster_ip.is_empty() {
        match svc.cluster_ips.first() {
            None => el.push(Cause::required("spec.clusterIPs")),
            Some(first) if *first != svc.cluster_ip => el.push(Cause::invalid_raw(
                "spec.clusterIPs",
                &list,
                "first value must match `clusterIP`",
            )),
            _ => {}
        }
    } else if !svc.cluster_ips.is_empty() {
        el.push(Cause::invalid_raw(
            "spec.clusterIPs",
            &list,
            "must be empty when `clusterIP` is not specified",
        ));
    }
    let mut seen = Vec::new();
    for (i, f) in svc.families.iter().enumerate() {
        if Family::parse(f).is_none() {
            el.push(Cause::not_supported(
                format!("spec.ipFamilies[{i}]"),
                f,
                &["IPv4", "IPv6"],
            ));
        }
        if seen.contains(f) {
            el.push(Cause::duplicate(format!("spec.ipFamilies[{i}]"), f));
        }
        seen.push(f.clone());
    }
    if let Some(p) = &svc.policy {
        if ![SINGLE, PREFER, REQUIRE].contains(&p.as_str()) {
            el.push(Cause::not_supported(
                "spec.ipFamilyPolicy",
                p,
                &[PREFER, REQUIRE, SINGLE],
            ));
        }
    }
    let mut bad_ip = false;
    for (i, ip) in svc.cluster_ips.iter().enumerate() {
        if i == 0 && ip == "None" {
            if svc.cluster_ips.len() > 1 {
                bad_ip = true;
                el.push(Cause::invalid_raw(
                    "spec.clusterIPs",
                    &list,
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        if ip.parse::<IpAddr>().is_err() {
            bad_ip = true;
            el.push(Cause::invalid(
                format!("spec.clusterIPs[{i}]"),
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    if svc.cluster_ips.len() > 2 {
        el.push(Cause::invalid_raw(
            "spec.clusterIPs",
            &list,
            "may only hold up to 2 values",
        ));
    }
    if bad_ip {
        return el;
    }
    if svc.cluster_ips.len() == 2 {
        let fams: Vec<Family> = svc
            .cluster_ips
            .iter()
            .filter_map(|s| s.parse().ok().map(Family::of))
            .collect();
        if fams.len() == 2 && fams[0] == fams[1] {
            el.push(Cause::invalid_raw(
                "spec.clusterIPs",
                &list,
                "may specify no more than one IP for each IP family",
            ));
        }
    }
    if !svc.headless() {
        for (i, (ip, f)) in svc.cluster_ips.iter().zip(&svc.families).enumerate() {
            let Ok(addr) = ip.parse::<IpAddr>() else {
                continue;
            };
            match (f.as_str(), Family::of(addr)) {
                ("IPv4", Family::V6) => el.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    ip,
                    format!("expected an IPv4 value as indicated by `ipFamilies[{i}]`"),
                )),
                ("IPv6", Family::V4) => el.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    ip,
                    format!("expected an IPv6 value as indicated by `ipFamilies[{i}]`"),
                )),
                _ => {}
            }
        }
    }
    let mut node_ports = Vec::new();
    for (i, p) in svc.ports.iter().enumerate() {
        if p.node_port == 0 {
            continue;
        }
        if !(1..=65535).contains(&p.node_port) {
            el.push(Cause::invalid_raw(
                format!("spec.ports[{i}].nodePort"),
                p.node_port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        let key = (p.protocol.clone(), p.node_port);
        if node_ports.contains(&key) {
            el.push(Cause::duplicate(
                format!("spec.ports[{i}].nodePort"),
                p.node_port,
            ));
        }
        node_ports.push(key);
    }
    if svc.hc_node_port != 0 && !svc.needs_hc_node_port() {
        el.push(Cause::invalid_raw(
            "spec.healthCheckNodePort",
            svc.hc_node_port,
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        ));
    }
    el
}

/// Update rules of the allocated fields (Kubernetes' `ValidateServiceUpdate`
/// for `clusterIP`, and the upgrade/downgrade rules of `clusterIPs` and
/// `ipFamilies`): the primary address and family never change; a secondary
/// may be added, or removed with `ipFamilyPolicy: SingleStack`; switching to
/// or from ExternalName may set or clear them.
pub fn validate_update(old: &Value, new: &Value) -> Vec<Cause> {
    let (o, n) = (Svc::from(old), Svc::from(new));
    let mut el = Vec::new();
    if n.ty != "ExternalName"
        && o.ty != "ExternalName"
        && !o.cluster_ip.is_empty()
        && n.cluster_ip != o.cluster_ip
    {
        el.push(Cause::invalid(
            "spec.clusterIP",
            &n.cluster_ip,
            "field is immutable",
        ));
    }
    if n.ty == "ExternalName" || o.ty == "ExternalName" {
        return el;
    }
    let list = go_list(&n.cluster_ips);
    if !(o.headless() && n.headless()) {
        let (ol, nl) = (o.cluster_ips.len(), n.cluster_ips.len());
        let changed0 = ol > 0 && nl > 0 && o.cluster_ips[0] != n.cluster_ips[0];
        if ol == nl {
            for i in 0..ol {
                if o.cluster_ips[i] != n.cluster_ips[i] {
                    el.push(Cause::invalid_raw(
                        format!("spec.clusterIPs[{i}]"),
                        &list,
                        "may not change once set",
                    ));
                }
            }
        } else if ol > nl {
            if nl == 0 {
                el.push(Cause::invalid_raw(
                    "spec.clusterIPs[0]",
                    &list,
                    "primary clusterIP can not be unset",
                ));
            }
            if changed0 {
                el.push(Cause::invalid_raw(
                    "spec.clusterIPs[0]",
                    &list,
                    "may not change once set",
                ));
            }
            if nl == 1 && n.policy.as_deref() != Some(SINGLE) {
                el.push(Cause::invalid(
                    "spec.ipFamilyPolicy",
                    n.policy.as_deref().unwrap_or(""),
                    "must be set to 'SingleStack' when releasing the secondary clusterIP",
                ));
            }
        } else if changed0 {
            el.push(Cause::invalid_raw(
                "spec.clusterIPs[0]",
                &list,
                "may not change once set",
            ));
        }
    }
    if o.headless() != n.headless() || n.headless() {
        return el;
    }
    let fams = go_list(&n.families);
    let (ol, nl) = (o.families.len(), n.families.len());
    let changed0 = ol > 0 && nl > 0 && o.families[0] != n.families[0];
    if ol == nl {
        if o.families != n.families {
            el.push(Cause::invalid_raw(
                "spec.ipFamilies[0]",
                &fams,
                "may not change once set",
            ));
        }
    } else if ol > nl {
        if changed0 {
            el.push(Cause::invalid_raw(
                "spec.ipFamilies[0]",
                &fams,
                "may not change once set",
            ));
        }
        if nl == 1 && n.policy.as_deref() != Some(SINGLE) {
            el.push(Cause::invalid(
                "spec.ipFamilyPolicy",
                n.policy.as_deref().unwrap_or(""),
                "must be set to 'SingleStack' when releasing the secondary ipFamily",
            ));
        }
    } else if changed0 {
        el.push(Cause::invalid_raw(
            "spec.ipFamilies[0]",
            &fams,
            "may not change once set",
        ));
    }
    el
}

// ---- Update preparation ----------------------------------------------------

/// Before an update of a Service is defaulted and validated: keep the values
/// the server allocated that the client left out (a re-applied manifest
/// without `clusterIP` or `nodePort` keeps them), sync `clusterIP` with
/// `clusterIPs`, and drop allocated fields the new type no longer uses when
/// the client did not change them (Kubernetes' `patchAllocatedValues`,
/// `normalizeClusterIPs`, `dropTypeDependentFields`).
pub fn prepare_update(info: &ResourceInfo, sub: Option<&str>, old: &Value, new: &mut Value) {
    if info.kind != "Service" || sub.is_some() {
        return;
    }
    let o = Svc::from(old);
    let mut n = Svc::from(new);
    let n_before = n.clone();
    // patchAllocatedValues
    if o.needs_cluster_ip() && n.needs_cluster_ip() {
        if n.cluster_ip.is_empty() {
            n.cluster_ip = o.cluster_ip.clone();
        }
        if n.cluster_ips.is_empty() && !o.cluster_ips.is_empty() {
            n.cluster_ips = o.cluster_ips.clone();
        }
    }
    if o.needs_node_port() && n.needs_node_port() {
        let used: BTreeSet<i64> = o
            .node_ports()
            .intersection(&n.node_ports())
            .copied()
            .collect();
        let by_name: HashMap<&str, i64> = o
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.node_port))
            .collect();
        for p in &mut n.ports {
            if p.node_port == 0 {
                let v = by_name.get(p.name.as_str()).copied().unwrap_or(0);
                if !used.contains(&v) {
                    p.node_port = v;
                }
            }
        }
    }
    if o.needs_hc_node_port() && n.needs_hc_node_port() && n.hc_node_port == 0 {
        n.hc_node_port = o.hc_node_port;
    }
    // normalizeClusterIPs (update)
    if !o.cluster_ips.is_empty() && n.cluster_ips.is_empty() && o.cluster_ip == n.cluster_ip {
        n.cluster_ips = o.cluster_ips.clone();
    }
    if o.cluster_ip != n.cluster_ip {
        if !o.cluster_ip.is_empty() && n.cluster_ip.is_empty() {
            if o.cluster_ips == n.cluster_ips {
                n.cluster_ips.clear();
            }
        } else if o.cluster_ips == n.cluster_ips {
            n.cluster_ips = vec![n.cluster_ip.clone()];
        }
    }
    // dropTypeDependentFields
    if o.needs_cluster_ip() && !n.needs_cluster_ip() {
        if o.cluster_ip == n.cluster_ip && o.cluster_ips == n.cluster_ips {
            n.cluster_ip.clear();
            n.cluster_ips.clear();
        }
        if o.families == n.families {
            n.families.clear();
        }
        if o.policy == n.policy {
            n.policy = None;
        }
    }
    if o.needs_node_port() && !n.needs_node_port() && n.node_ports().is_subset(&o.node_ports()) {
        for p in &mut n.ports {
            p.node_port = 0;
        }
    }
    if o.needs_hc_node_port() && !n.needs_hc_node_port() && o.hc_node_port == n.hc_node_port {
        n.hc_node_port = 0;
    }
    if o.needs_node_port() && !n.needs_node_port() && o.etp == n.etp {
        n.etp.clear();
    }
    if o.ty == "LoadBalancer"
        && n.ty != "LoadBalancer"
        && o.allocate_lb_node_ports.is_some()
        && o.allocate_lb_node_ports == n.allocate_lb_node_ports
    {
        n.allocate_lb_node_ports = None;
    }
    // trimFieldsForDualStackDowngrade
    let old_dual = matches!(o.policy.as_deref(), Some(PREFER) | Some(REQUIRE));
    if old_dual && n.policy.as_deref() == Some(SINGLE) {
        n.cluster_ips.truncate(1);
        n.families.truncate(1);
    }
    if n != n_before {
        n.write(new);
    }
}

// ---- The shared, lazily built allocator and its reservations --------------

/// The cluster's service allocators, built from the store on first use.
#[derive(Clone, Default)]
pub struct ServiceAllocator {
    inner: Arc<Mutex<Option<Allocators>>>,
}

impl fmt::Debug for ServiceAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceAllocator")
    }
}

fn services_info() -> &'static ResourceInfo {
    resources::lookup("", "v1", "services").expect("services are served")
}

/// Every stored Service with its owner identity.
fn stored_services(state: &AppState) -> ApiResult<Vec<(Owner, Value)>> {
    let page = state
        .store
        .list(&services_info().prefix(None), None, 0, None)?;
    let mut out = Vec::with_capacity(page.items.len());
    for kv in &page.items {
        let Ok(v) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let uid = meta_str(&v, "uid").unwrap_or("").to_string();
        out.push((
            Owner {
                key: kv.key.clone(),
                uid,
            },
            v,
        ));
    }
    Ok(out)
}

fn rebuild(state: &AppState, a: &mut Allocators) -> ApiResult<()> {
    let list = stored_services(state)?;
    a.load(list.iter().map(|(o, v)| (o.clone(), v)));
    Ok(())
}

/// Whether `holder` really holds `item`: an in-flight reservation, or the
/// stored object with the same uid still lists it.
fn genuinely_held(state: &AppState, a: &Allocators, holder: &Owner, item: Item) -> bool {
    if a.pending
        .values()
        .any(|(o, items)| o.uid == holder.uid && items.contains(&item))
    {
        return true;
    }
    match state.store.get(&holder.key) {
        Ok(Some(kv)) => serde_json::from_slice::<Value>(&kv.value).is_ok_and(|v| {
            meta_str(&v, "uid") == Some(holder.uid.as_str()) && items_of(&v).contains(&item)
        }),
        Ok(None) => false,
        Err(_) => true,
    }
}

impl ServiceAllocator {
    fn lock<'a>(
        &'a self,
        state: &AppState,
    ) -> ApiResult<std::sync::MutexGuard<'a, Option<Allocators>>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            let mut a = Allocators::new(&state.config.services);
            rebuild(state, &mut a)?;
            *g = Some(a);
        }
        Ok(g)
    }

    fn reserve(
        &self,
        state: &AppState,
        old: Option<&Value>,
        new: &mut Value,
        owner: Owner,
    ) -> ApiResult<Reservation> {
        let name = meta_str(new, "name").unwrap_or("").to_string();
        let mut g = self.lock(state)?;
        let a = g.as_mut().expect("initialized by lock");
        let input = new.clone();
        let plan = match a.allocate(old, new, &owner) {
            Ok(p) => p,
            Err(f) => {
                let retry = match &f {
                    Failure::Held(h) => !genuinely_held(state, a, &h.holder, h.item),
                    Failure::Full(_) => true,
                    Failure::Invalid(_) => false,
                };
                if !retry {
                    return Err(f.into_api(&name));
                }
                // The cache may be stale: rebuild from the store and try once more.
                rebuild(state, a)?;
                *new = input;
                a.allocate(old, new, &owner)
                    .map_err(|f| f.into_api(&name))?
            }
        };
        let id = a.next_id;
        a.next_id += 1;
        a.pending.insert(id, (owner.clone(), plan.reserved.clone()));
        Ok(Reservation {
            alloc: Some(self.clone()),
            id,
            uid: owner.uid,
            release: plan.release,
        })
    }

    fn release_object(&self, obj: &Value) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Not built yet: it will be built from the store, which no longer has it.
        let Some(a) = g.as_mut() else {
            return;
        };
        let uid = meta_str(obj, "uid").unwrap_or("");
        for item in items_of(obj) {
            a.release(item, uid);
        }
    }
}

/// Items reserved for a Service write that is not committed yet. Dropping it
/// without [`Reservation::commit`] frees them (a failed or dry-run write).
#[must_use = "commit the reservation after the store write succeeds"]
pub struct Reservation {
    alloc: Option<ServiceAllocator>,
    id: u64,
    uid: String,
    release: Vec<Item>,
}

impl Reservation {
    /// A reservation of nothing (objects other than Services).
    pub fn none() -> Reservation {
        Reservation {
            alloc: None,
            id: 0,
            uid: String::new(),
            release: Vec::new(),
        }
    }

    /// The write is in the store: keep the new items, free what the previous
    /// version held and this one does not.
    pub fn commit(mut self) {
        if let Some(alloc) = self.alloc.take() {
            let mut g = alloc.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(a) = g.as_mut() {
                a.pending.remove(&self.id);
                for item in std::mem::take(&mut self.release) {
                    a.release(item, &self.uid);
                }
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(alloc) = self.alloc.take() {
            let mut g = alloc.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(a) = g.as_mut() {
                if let Some((owner, items)) = a.pending.remove(&self.id) {
                    for item in items {
                        a.release(item, &owner.uid);
                    }
                }
            }
        }
    }
}

/// On create, after defaulting and validation and before the store write:
/// allocate the Service's cluster IPs and node ports into `obj`.
pub fn reserve_create(
    state: &AppState,
    info: &ResourceInfo,
    obj: &mut Value,
) -> ApiResult<Reservation> {
    if info.kind != "Service" {
        return Ok(Reservation::none());
    }
    // A client that sets only `clusterIP` (an older client) means `clusterIPs` too.
    let svc = Svc::from(obj);
    if !svc.cluster_ip.is_empty() && svc.cluster_ips.is_empty() {
        obj["spec"]["clusterIPs"] = json!([svc.cluster_ip]);
    }
    let owner = Owner {
        key: info.key(
            meta_str(obj, "namespace"),
            meta_str(obj, "name").unwrap_or(""),
        ),
        uid: meta_str(obj, "uid").unwrap_or("").to_string(),
    };
    state.hooks.services.reserve(state, None, obj, owner)
}

/// On update of the main resource, after validation and before the store
/// write: allocate what the new version needs that the old did not hold.
pub fn reserve_update(
    state: &AppState,
    t: &Target,
    old: &Value,
    new: &mut Value,
) -> ApiResult<Reservation> {
    if t.info.kind != "Service" || t.sub.is_some() {
        return Ok(Reservation::none());
    }
    let owner = Owner {
        key: t
            .info
            .key(t.namespace.as_deref(), t.name.as_deref().unwrap_or("")),
        uid: meta_str(old, "uid").unwrap_or("").to_string(),
    };
    state.hooks.services.reserve(state, Some(old), new, owner)
}

/// After a Service was removed from the store: free what it held.
pub fn released(state: &AppState, info: &ResourceInfo, obj: &Value) {
    if info.kind == "Service" {
        state.hooks.services.release_object(obj);
    }
}

// ---- The `kubernetes` Service ---------------------------------------------

/// The advertise address when none is configured: the listen address if it
/// is specific, else the machine's primary non-loopback IPv4 (the source
/// address of its default route, else its lowest local IPv4), else 127.0.0.1.
pub fn default_advertise_address(listen: IpAddr) -> IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    default_route_ipv4()
        .or_else(first_local_ipv4)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The source address the kernel picks towards a TEST-NET-1 address (a UDP
/// connect sends nothing; it only resolves the route).
fn default_route_ipv4() -> Option<IpAddr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// The lowest non-loopback local IPv4 (`/proc/net/fib_trie` lists each
/// local address followed by a `/32 host LOCAL` line).
fn first_local_ipv4() -> Option<IpAddr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    let mut last: Option<Ipv4Addr> = None;
    let mut local = BTreeSet::new();
    for line in trie.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Some(ip) = t
            .split_whitespace()
            .next()
            .and_then(|w| w.parse::<Ipv4Addr>().ok())
        {
            last = Some(ip);
        } else if t.contains("/32 host LOCAL") {
            if let Some(ip) = last.filter(|ip| !ip.is_loopback()) {
                local.insert(ip);
            }
        }
    }
    local.into_iter().next().map(IpAddr::V4)
}

/// Create the `default/kubernetes` Service if it is missing (cluster IP: the
/// first address of the primary service CIDR; port `https` 443 to the API
/// port) and write its EndpointSlice pointing at the advertise address, so
/// it is current at each start.
pub async fn bootstrap_kubernetes(state: &Arc<AppState>, api: SocketAddr) -> ApiResult<()> {
    let cfg = &state.config.services;
    let advertise = cfg
        .advertise_address
        .unwrap_or_else(|| default_advertise_address(api.ip()));
    let port = api.port();
    let client = super::client::LocalClient::new(state.clone());
    let svc_info = services_info();
    let ports = json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]);
    match client.get(svc_info, Some("default"), "kubernetes")? {
        None => {
            let svc = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": cfg.first_ip().to_string(),
                    "ipFamilyPolicy": SINGLE,
                    "sessionAffinity": "None",
                    "ports": ports,
                },
            });
            match client.create(svc_info, Some("default"), svc).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => tracing::warn!(
                    error = %e.status()["message"],
                    "could not create the default/kubernetes Service"
                ),
            }
        }
        Some(mut svc) => {
            if svc.pointer("/spec/ports") != Some(&ports) {
                svc["spec"]["ports"] = ports;
                if let Err(e) = client.update(svc_info, svc).await {
                    tracing::warn!(error = %e.status()["message"], "could not update the default/kubernetes Service");
                }
            }
        }
    }
    let slice_info = resources::lookup("discovery.k8s.io", "v1", "endpointslices")
        .expect("endpointslices are served");
    let address_type = Family::of(advertise).name();
    let mut labels = Map::new();
    labels.insert("kubernetes.io/service-name".into(), json!("kubernetes"));
    labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        json!("shoal-apiserver"),
    );
    let endpoints = json!([{"addresses": [advertise.to_string()],
        "conditions": {"ready": true, "serving": true, "terminating": false}}]);
    let slice_ports = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
    let desired = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": slice_ports,
    });
    match client.get(slice_info, Some("default"), "kubernetes")? {
        None => {
            client
                .create(slice_info, Some("default"), desired)
                .await
                .map(|_| ())
                .or_else(|e| match e {
                    ApiError::AlreadyExists { .. } => Ok(()),
                    e => Err(e),
                })?;
        }
        Some(cur) if cur.get("addressType").and_then(Value::as_str) != Some(address_type) => {
            // addressType is immutable: replace the slice.
            let t = Target {
                info: slice_info,
                namespace: Some("default".into()),
                name: Some("kubernetes".into()),
                sub: None,
            };
            super::handlers::delete(state, &t, &json!({}), &Default::default()).await?;
            client.create(slice_info, Some("default"), desired).await?;
        }
        Some(mut cur) => {
            let stale = cur.get("endpoints") != Some(&endpoints)
                || cur.get("ports") != Some(&slice_ports)
                || labels.iter().any(|(k, v)| {
                    cur.pointer(&format!("/metadata/labels/{}", k.replace('/', "~1"))) != Some(v)
                });
            if stale {
                cur["endpoints"] = endpoints;
                cur["ports"] = slice_ports;
                for (k, v) in labels {
                    cur["metadata"]["labels"][k] = v;
                }
                client.update(slice_info, cur).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
