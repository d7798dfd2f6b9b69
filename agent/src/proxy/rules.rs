//! nftables rules, as text for `nft -f`, in the shape of kube-proxy's
//! nftables mode but driven by data. One table per family (`ip shoal-proxy`,
//! `ip6 shoal-proxy`) holds a fixed skeleton (base chains, verdict maps and
//! the endpoint maps) and, per service, a [`Fragment`]: the map elements,
//! chains and dynamic sets that service owns. A change is applied by
//! comparing a service's old and new fragment ([`diff_script`]), so the
//! transaction sent to the kernel grows with what changed, not with the
//! number of services.
//!
//! The common case (no ClientIP affinity, `externalTrafficPolicy: Cluster`)
//! needs no per-service chain: the weighted draw among a service port's
//! endpoints is a table of W buckets (W = the sum of the weights, reduced by
//! their gcd) in the `service-endpoints` map, keyed by cluster IP, protocol,
//! port and bucket, and looked up with `numgen random mod W` from a
//! load-balancing chain shared by every service port with the same W and
//! protocol (`lb-tcp-10`). Such chains, and the `hairpin` set's elements, are
//! [`Shared`]: created with their first user and deleted with their last.
//! Keeping per-service chains (and anonymous sets) out of the table matters
//! for speed: `nft` reads every chain and set of the table before each
//! transaction, and the kernel scans every set to name a new anonymous one,
//! so with a chain and an anonymous map per service a one-service change at
//! 10,000 services took ~200 ms; with elements only it costs a few ms.
//! Services with ClientIP affinity or `externalTrafficPolicy: Local` keep
//! kube-proxy's per-service chains (their rules cannot be expressed as map
//! lookups); they are expected to be few.
//!
//! ```text
//! nat-prerouting / nat-output (dstnat) → services:
//!     daddr . l4proto . dport vmap @service-ips      → goto lb-<proto>-<W> | svc-…
//!     fib daddr type local: l4proto . dport vmap @service-nodeports → goto nplb-<proto>-<W> | ext-…
//! lb-…:   masquerade-mark unless from a pod; dnat to daddr . l4proto . dport . numgen random mod W map @service-endpoints
//! nplb-…: masquerade-mark; dnat to l4proto . dport . numgen random mod W map @nodeport-endpoints
//! svc-…:  (affinity) masquerade-mark unless from a pod; affinity lookups; numgen random mod W vmap {ranges}
//! ext-…:  (Local) from the node itself: goto nplb-…; else only this node's endpoints, no mark
//! ep-…:   mark if hairpin (saddr == endpoint); update affinity set; dnat
//! filter-prerouting / filter-output (dstnat-10): new connections to a service
//!     without endpoints → @no-endpoint-services / @no-endpoint-nodeports → reject
//! nat-postrouting (srcnat): masquerade marked packets; hairpin (a DNATed
//!     connection from an endpoint to itself, @hairpin); pod traffic leaving the pod network
//! ```

use super::model::{Endpoint, ServicePort};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::net::IpAddr;

/// The name of our table in each family.
pub const TABLE: &str = "shoal-proxy";
/// The packet mark bit asking for masquerade (kube-proxy's 0x4000).
pub const MASQ_MARK: &str = "0x4000";

/// An address family, one table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `table ip`.
    V4,
    /// `table ip6`.
    V6,
}

impl Family {
    /// Both, in table order.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// nft family keyword (`ip`, `ip6`), also the address match keyword.
    pub fn kw(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1",
        }
    }
}

/// What one owner (a service, or the node itself) has in one family's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    /// Regular chains and their rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Dynamic sets (ClientIP affinity) and their declaration.
    pub sets: BTreeMap<String, String>,
    /// Elements of the skeleton's maps and sets: (map, key) → value ("" for sets).
    pub elements: BTreeMap<(&'static str, String), String>,
    /// Objects other owners may need too; not written from here but
    /// through [`SharedRefs`], which counts their users.
    pub shared: Shared,
}

/// Chains and elements several owners can use at once: the load-balancing
/// chains (one per protocol and bucket count) and the hairpin set's
/// elements (an endpoint may back several services).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shared {
    /// Chain name → rules (a name always has the same rules).
    pub chains: BTreeMap<String, Vec<String>>,
    /// (set, key) → value ("" for sets).
    pub elements: BTreeMap<(&'static str, String), String>,
}

impl Fragment {
    fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.sets.is_empty() && self.elements.is_empty()
    }
}

/// A fragment per family, indexed by [`Family`].
pub type Fragments = [Fragment; 2];

/// Short stable hash for names.
fn hash(s: &str) -> String {
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..5])
}

/// `s` with characters nft identifiers cannot hold replaced.
fn ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "/_.-".contains(c) {
                c
            } else {
                '.'
            }
        })
        .collect()
}

fn addr_port(e: &Endpoint) -> String {
    match e.addr {
        IpAddr::V4(a) => format!("{a}:{}", e.port),
        IpAddr::V6(a) => format!("[{a}]:{}", e.port),
    }
}

/// The weighted ranges of a `numgen random mod W` draw over endpoints with
/// weight > 0, each with its target, or None when nobody takes connections.
fn draw(eps: &[(&Endpoint, String)]) -> Option<(u64, String)> {
    let mut ranges = Vec::new();
    let mut at: u64 = 0;
    for (e, target) in eps {
        if e.weight == 0 {
            continue;
        }
        let hi = at + u64::from(e.weight) - 1;
        let r = if hi == at {
            at.to_string()
        } else {
            format!("{at}-{hi}")
        };
        ranges.push(format!("{r} : {target}"));
        at = hi + 1;
    }
    (at > 0).then(|| (at, ranges.join(", ")))
}

/// The fragments of one service's ports.
pub fn service_fragments(ports: &[ServicePort]) -> Fragments {
    let mut out = Fragments::default();
    for sp in ports {
        for fam in Family::BOTH {
            port_fragment(sp, fam, &mut out[fam.index()]);
        }
    }
    out
}

/// The most buckets a draw gets unless it has more endpoints than that;
/// larger weight sums are scaled down to it (each endpoint keeps ≥ 1).
const MAX_BUCKETS: u64 = 4096;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The bucket table of a weighted draw among `eps`: entry `b` is the
/// endpoint `numgen random mod len` = b picks. Weights are reduced by their
/// gcd (so ten equal endpoints take ten buckets) and scaled down past
/// [`MAX_BUCKETS`]. Empty when no endpoint takes new connections.
fn buckets(eps: &[Endpoint]) -> Vec<&Endpoint> {
    let live: Vec<&Endpoint> = eps.iter().filter(|e| e.weight > 0).collect();
    let g = live.iter().fold(0, |g, e| gcd(g, u64::from(e.weight)));
    if g == 0 {
        return Vec::new();
    }
    let total: u64 = live.iter().map(|e| u64::from(e.weight) / g).sum();
    let cap = MAX_BUCKETS.max(live.len() as u64);
    let mut out = Vec::new();
    for e in live {
        let w = u64::from(e.weight) / g;
        let n = if total > cap {
            (w * cap / total).max(1)
        } else {
            w
        };
        out.extend(std::iter::repeat_n(e, n as usize));
    }
    out
}

/// The shared chain that draws among a service port's buckets (cluster IP
/// path), or among a NodePort's (`nodeport`).
fn lb_chain(fam: Family, proto: &str, total: usize, nodeport: bool, shared: &mut Shared) -> String {
    let kw = fam.kw();
    let (name, rules) = if nodeport {
        (
            format!("nplb-{proto}-{total}"),
            vec![
                "jump mark-for-masquerade".to_string(),
                format!("meta l4proto {proto} dnat {kw} to meta l4proto . th dport . numgen random mod {total} map @nodeport-endpoints"),
            ],
        )
    } else {
        (
            format!("lb-{proto}-{total}"),
            vec![
                format!("{kw} saddr != @pod-cidrs jump mark-for-masquerade"),
                format!("meta l4proto {proto} dnat {kw} to {kw} daddr . meta l4proto . th dport . numgen random mod {total} map @service-endpoints"),
            ],
        )
    };
    shared.chains.insert(name.clone(), rules);
    name
}

fn port_fragment(sp: &ServicePort, fam: Family, f: &mut Fragment) {
    let ips: Vec<&IpAddr> = sp
        .cluster_ips
        .iter()
        .filter(|ip| Family::of(ip) == fam)
        .collect();
    if ips.is_empty() {
        return;
    }
    let in_fam = |eps: &[Endpoint]| -> Vec<Endpoint> {
        eps.iter()
            .filter(|e| Family::of(&e.addr) == fam)
            .cloned()
            .collect()
    };
    let cluster = in_fam(&sp.cluster_endpoints);
    let local = in_fam(&sp.local_endpoints);
    if sp.affinity_timeout.is_some() {
        return chained_port_fragment(sp, fam, &ips, &cluster, &local, f);
    }
    let proto = sp.protocol.nft();
    let table = buckets(&cluster);
    let has_cluster = !table.is_empty();
    if has_cluster {
        let lb = lb_chain(fam, proto, table.len(), false, &mut f.shared);
        for ip in &ips {
            let key = format!("{ip} . {proto} . {}", sp.port);
            f.elements
                .insert(("service-ips", key.clone()), format!("goto {lb}"));
            for (b, e) in table.iter().enumerate() {
                f.elements.insert(
                    ("service-endpoints", format!("{key} . {b}")),
                    format!("{} . {}", e.addr, e.port),
                );
            }
        }
        for e in &table {
            // Hairpin: a backend reaching its own service may be sent to
            // itself; its reply must come back through us.
            f.shared
                .elements
                .insert(("hairpin", format!("{0} . {0}", e.addr)), String::new());
        }
    } else {
        no_endpoints(sp, &ips, f);
    }
    let Some(np) = sp.node_port else { return };
    let key = format!("{proto} . {np}");
    if has_cluster {
        for (b, e) in table.iter().enumerate() {
            f.elements.insert(
                ("nodeport-endpoints", format!("{key} . {b}")),
                format!("{} . {}", e.addr, e.port),
            );
        }
    }
    if !sp.external_local {
        if has_cluster {
            let lb = lb_chain(fam, proto, table.len(), true, &mut f.shared);
            f.elements
                .insert(("service-nodeports", key), format!("goto {lb}"));
        } else {
            f.elements
                .insert(("no-endpoint-nodeports", key), "goto reject-chain".into());
        }
        return;
    }
    // externalTrafficPolicy: Local: only this node's endpoints, without
    // masquerade; traffic from the node itself still goes anywhere.
    let ext_chain = format!("ext-{}-{}", hash(&sp.id), ident(&sp.id));
    let mut ext_rules = Vec::new();
    if has_cluster {
        let lb = lb_chain(fam, proto, table.len(), true, &mut f.shared);
        ext_rules.push(format!("fib saddr type local goto {lb}"));
    }
    if draw_rules(fam, proto, &local, &mut ext_rules) {
        f.chains.insert(ext_chain.clone(), ext_rules);
        f.elements
            .insert(("service-nodeports", key), format!("goto {ext_chain}"));
    } else {
        f.elements
            .insert(("no-endpoint-nodeports", key), "drop".into());
    }
}

/// kube-proxy: no endpoints at all → reject; none local under a Local
/// policy → drop.
fn no_endpoints(sp: &ServicePort, ips: &[&IpAddr], f: &mut Fragment) {
    let verdict = if sp.internal_local {
        "drop"
    } else {
        "goto reject-chain"
    };
    for ip in ips {
        let key = format!("{ip} . {} . {}", sp.protocol.nft(), sp.port);
        f.elements
            .insert(("no-endpoint-services", key), verdict.into());
    }
}

/// Rules for a weighted draw among `eps` inside a per-service chain:
/// hairpin marks by source, then one DNAT through an anonymous `map`.
/// False when nobody takes new connections.
fn draw_rules(fam: Family, proto: &str, eps: &[Endpoint], rules: &mut Vec<String>) -> bool {
    let kw = fam.kw();
    let targets: Vec<(&Endpoint, String)> = eps
        .iter()
        .map(|e| (e, format!("{} . {}", e.addr, e.port)))
        .collect();
    let Some((total, ranges)) = draw(&targets) else {
        return false;
    };
    let mut seen = std::collections::BTreeSet::new();
    for e in eps.iter().filter(|e| e.weight > 0) {
        if seen.insert(e.addr) {
            rules.push(format!("{kw} saddr {} jump mark-for-masquerade", e.addr));
        }
    }
    rules.push(format!(
        "meta l4proto {proto} dnat {kw} to numgen random mod {total} map {{ {ranges} }}"
    ));
    true
}

/// A service port with ClientIP affinity, in kube-proxy's shape: a chain
/// per endpoint (affinity set, hairpin mark, DNAT), and a service chain
/// with the affinity lookups, then a weighted `vmap` draw among them.
fn chained_port_fragment(
    sp: &ServicePort,
    fam: Family,
    ips: &[&IpAddr],
    cluster: &[Endpoint],
    local: &[Endpoint],
    f: &mut Fragment,
) {
    let kw = fam.kw();
    let proto = sp.protocol.nft();
    let h = hash(&sp.id);
    let tag = ident(&sp.id);
    let svc_chain = format!("svc-{h}-{tag}");
    let ext_chain = format!("ext-{h}-{tag}");
    let endpoint_chain = |f: &mut Fragment, e: &Endpoint| -> (String, Option<String>) {
        let eh = hash(&format!("{}|{}", sp.id, addr_port(e)));
        let chain = format!("ep-{eh}-{tag}__{}/{}", ident(&e.addr.to_string()), e.port);
        let set = sp.affinity_timeout.map(|t| format!("aff-{eh}-{t}"));
        if !f.chains.contains_key(&chain) {
            let mut rules = vec![format!("{kw} saddr {} jump mark-for-masquerade", e.addr)];
            if let (Some(set), Some(t)) = (&set, sp.affinity_timeout) {
                f.sets.insert(
                    set.clone(),
                    format!(
                        "type {}; flags dynamic,timeout; timeout {t}s;",
                        fam.addr_type()
                    ),
                );
                rules.push(format!("update @{set} {{ {kw} saddr }}"));
            }
            rules.push(format!("meta l4proto {proto} dnat to {}", addr_port(e)));
            f.chains.insert(chain.clone(), rules);
        }
        (chain, set)
    };
    let pick = |f: &mut Fragment, eps: &[Endpoint], rules: &mut Vec<String>| -> bool {
        let named: Vec<(&Endpoint, String, Option<String>)> = eps
            .iter()
            .map(|e| {
                let (c, s) = endpoint_chain(f, e);
                (e, c, s)
            })
            .collect();
        let targets: Vec<(&Endpoint, String)> = named
            .iter()
            .map(|(e, c, _)| (*e, format!("goto {c}")))
            .collect();
        let Some((total, ranges)) = draw(&targets) else {
            return false;
        };
        for (_, c, s) in &named {
            if let Some(s) = s {
                rules.push(format!("{kw} saddr @{s} goto {c}"));
            }
        }
        rules.push(format!("numgen random mod {total} vmap {{ {ranges} }}"));
        true
    };

    let mut svc_rules = vec![format!("{kw} saddr != @pod-cidrs jump mark-for-masquerade")];
    let has_cluster = pick(f, cluster, &mut svc_rules);
    if has_cluster {
        f.chains.insert(svc_chain.clone(), svc_rules);
        for ip in ips {
            let key = format!("{ip} . {proto} . {}", sp.port);
            f.elements
                .insert(("service-ips", key), format!("goto {svc_chain}"));
        }
    } else {
        no_endpoints(sp, ips, f);
    }
    let Some(np) = sp.node_port else { return };
    let key = format!("{proto} . {np}");
    let mut ext_rules = Vec::new();
    let has_ext = if sp.external_local {
        // Traffic from the node itself still goes anywhere (and is masqueraded).
        if has_cluster {
            ext_rules.push("fib saddr type local jump mark-for-masquerade".to_string());
            ext_rules.push(format!("fib saddr type local goto {svc_chain}"));
        }
        pick(f, local, &mut ext_rules)
    } else if has_cluster {
        ext_rules.push("jump mark-for-masquerade".into());
        ext_rules.push(format!("goto {svc_chain}"));
        true
    } else {
        false
    };
    if has_ext {
        f.chains.insert(ext_chain.clone(), ext_rules);
        f.elements
            .insert(("service-nodeports", key), format!("goto {ext_chain}"));
    } else {
        let verdict = if sp.external_local {
            "drop"
        } else {
            "goto reject-chain"
        };
        f.elements
            .insert(("no-endpoint-nodeports", key), verdict.into());
    }
}

/// The node's own fragment: the pod CIDRs (for masquerade decisions).
pub fn node_fragments(pod_cidrs: &[String]) -> Fragments {
    let mut out = Fragments::default();
    for c in pod_cidrs {
        let fam = if c.contains(':') {
            Family::V6
        } else {
            Family::V4
        };
        out[fam.index()]
            .elements
            .insert(("pod-cidrs", c.clone()), String::new());
    }
    out
}

/// The fixed part of a family's table, as an nft block.
fn skeleton(fam: Family) -> String {
    let (kw, t, lo) = (fam.kw(), fam.addr_type(), fam.loopback());
    format!(
        "table {kw} {TABLE} {{
  comment \"shoal service proxy; managed by the shoal agent\"
  set pod-cidrs {{ type {t}; flags interval; }}
  map service-ips {{ type {t} . inet_proto . inet_service : verdict; }}
  map service-nodeports {{ type inet_proto . inet_service : verdict; }}
  map no-endpoint-services {{ type {t} . inet_proto . inet_service : verdict; }}
  map no-endpoint-nodeports {{ type inet_proto . inet_service : verdict; }}
  map service-endpoints {{ typeof {kw} daddr . meta l4proto . th dport . numgen random mod 1 : {kw} daddr . th dport; }}
  map nodeport-endpoints {{ typeof meta l4proto . th dport . numgen random mod 1 : {kw} daddr . th dport; }}
  set hairpin {{ type {t} . {t}; }}
  chain mark-for-masquerade {{ meta mark set meta mark | {MASQ_MARK}; }}
  chain masquerading {{
    meta mark & {MASQ_MARK} == 0 return
    meta mark set meta mark ^ {MASQ_MARK}
    masquerade fully-random
  }}
  chain services {{
    {kw} daddr . meta l4proto . th dport vmap @service-ips
    fib daddr type local {kw} daddr != {lo} meta l4proto . th dport vmap @service-nodeports
  }}
  chain endpoints-check {{
    {kw} daddr . meta l4proto . th dport vmap @no-endpoint-services
    fib daddr type local {kw} daddr != {lo} meta l4proto . th dport vmap @no-endpoint-nodeports
  }}
  chain reject-chain {{ reject; }}
  chain nat-prerouting {{ type nat hook prerouting priority -100; policy accept; jump services; }}
  chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
  chain nat-postrouting {{
    type nat hook postrouting priority 100; policy accept;
    jump masquerading
    ct status dnat {kw} saddr . {kw} daddr @hairpin masquerade fully-random
    {kw} saddr @pod-cidrs {kw} daddr != @pod-cidrs masquerade fully-random
  }}
  chain filter-prerouting {{ type filter hook prerouting priority -110; policy accept; ct state new jump endpoints-check; }}
  chain filter-output {{ type filter hook output priority -110; policy accept; ct state new jump endpoints-check; }}
}}
"
    )
}

/// Most elements in one `add element`/`delete element` command.
const ELEMENTS_PER_COMMAND: usize = 2048;

/// Element commands, one per (family, map) and verb, keyed for a stable order.
type ElementBatch<'a> = BTreeMap<(usize, &'static str), Vec<(&'a str, &'a str)>>;

fn write_elements(out: &mut String, verb: &str, batch: &ElementBatch<'_>) {
    for ((fam, map), items) in batch {
        let kw = Family::BOTH[*fam].kw();
        for chunk in items.chunks(ELEMENTS_PER_COMMAND) {
            let _ = write!(out, "{verb} element {kw} {TABLE} {map} {{ ");
            for (i, (key, value)) in chunk.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(key);
                if !value.is_empty() {
                    out.push_str(" : ");
                    out.push_str(value);
                }
            }
            out.push_str(" }\n");
        }
    }
}

/// One transaction that replaces both tables with the skeleton plus `fragments`.
pub fn full_script<'a>(fragments: impl IntoIterator<Item = &'a Fragments>) -> String {
    let empty = Fragment::default();
    let all: Vec<&Fragments> = fragments.into_iter().collect();
    let mut out = String::new();
    for fam in Family::BOTH {
        let kw = fam.kw();
        // `add` first so `delete` cannot fail on a missing table.
        let _ = writeln!(out, "add table {kw} {TABLE}\ndelete table {kw} {TABLE}");
        out.push_str(&skeleton(fam));
    }
    let mut changes: Vec<[(&Fragment, &Fragment); 2]> = Vec::with_capacity(all.len());
    for f in &all {
        changes.push([(&empty, &f[0]), (&empty, &f[1])]);
    }
    write_changes(&mut out, &changes);
    out
}

/// One transaction turning each `(old, new)` pair of fragments into the
/// new one, or None when nothing changed.
pub fn diff_script(changes: &[(&Fragments, &Fragments)]) -> Option<String> {
    let changes: Vec<[(&Fragment, &Fragment); 2]> = changes
        .iter()
        .filter(|(o, n)| o != n)
        .map(|(o, n)| [(&o[0], &n[0]), (&o[1], &n[1])])
        .collect();
    if changes.is_empty() {
        return None;
    }
    let mut out = String::new();
    write_changes(&mut out, &changes);
    Some(out)
}

/// How many applied owners use each [`Shared`] object, per family.
#[derive(Debug, Default)]
pub struct SharedRefs {
    chains: [HashMap<String, usize>; 2],
    elements: [HashMap<(&'static str, String), usize>; 2],
}

/// What a set of owner changes does to the shared objects.
#[derive(Debug, Default)]
pub struct SharedPlan {
    /// Objects whose last user goes, as a fragment to remove.
    pub removed: Fragments,
    /// Objects that get their first user, as a fragment to add.
    pub created: Fragments,
    chain_deltas: [HashMap<String, isize>; 2],
    element_deltas: [HashMap<(&'static str, String), isize>; 2],
}

impl SharedRefs {
    /// The shared objects to create and remove for `changes` (old, new
    /// fragment pairs), given the users counted so far.
    pub fn plan(&self, changes: &[(&Fragments, &Fragments)]) -> SharedPlan {
        let mut chains: [Delta<'_, String, Vec<String>>; 2] = Default::default();
        let mut elements: [Delta<'_, (&'static str, String), String>; 2] = Default::default();
        for (o, n) in changes {
            for fam in Family::BOTH {
                let i = fam.index();
                let (o, n) = (&o[i].shared, &n[i].shared);
                if o != n {
                    count_users(&mut chains[i], &o.chains, &n.chains);
                    count_users(&mut elements[i], &o.elements, &n.elements);
                }
            }
        }
        let mut plan = SharedPlan::default();
        for i in 0..2 {
            let [created, removed] = [&mut plan.created[i], &mut plan.removed[i]];
            plan.chain_deltas[i] = transitions(
                &self.chains[i],
                std::mem::take(&mut chains[i]),
                &mut created.chains,
                &mut removed.chains,
            );
            plan.element_deltas[i] = transitions(
                &self.elements[i],
                std::mem::take(&mut elements[i]),
                &mut created.elements,
                &mut removed.elements,
            );
        }
        plan
    }

    /// Count the users as `plan` changed them (after its transaction applied).
    pub fn commit(&mut self, plan: SharedPlan) {
        fn apply<K: std::hash::Hash + Eq>(
            counts: &mut HashMap<K, usize>,
            deltas: HashMap<K, isize>,
        ) {
            for (k, d) in deltas {
                let n = counts.get(&k).copied().unwrap_or(0) as isize + d;
                if n > 0 {
                    counts.insert(k, n as usize);
                } else {
                    counts.remove(&k);
                }
            }
        }
        let [c0, c1] = plan.chain_deltas;
        let [e0, e1] = plan.element_deltas;
        apply(&mut self.chains[0], c0);
        apply(&mut self.chains[1], c1);
        apply(&mut self.elements[0], e0);
        apply(&mut self.elements[1], e1);
    }
}

/// Per shared object: the change in its number of users, and its content.
type Delta<'a, K, V> = HashMap<K, (isize, &'a V)>;

/// One owner's change: +1 user for each object only in `new`, -1 for each
/// object only in `old`.
fn count_users<'a, K: Clone + Ord + std::hash::Hash, V>(
    delta: &mut Delta<'a, K, V>,
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) {
    for (side, other, step) in [(new, old, 1), (old, new, -1)] {
        for (key, v) in side {
            if !other.contains_key(key) {
                delta.entry(key.clone()).or_insert((0, v)).0 += step;
            }
        }
    }
}

/// Objects whose user count goes from zero (into `created`) or to zero (into
/// `removed`) under `delta`, given the current `counts`; returns the deltas
/// alone, for [`SharedRefs::commit`].
fn transitions<K: Clone + Ord + std::hash::Hash, V: Clone>(
    counts: &HashMap<K, usize>,
    delta: Delta<'_, K, V>,
    created: &mut BTreeMap<K, V>,
    removed: &mut BTreeMap<K, V>,
) -> HashMap<K, isize> {
    let mut deltas = HashMap::with_capacity(delta.len());
    for (key, (d, v)) in delta {
        let before = counts.get(&key).copied().unwrap_or(0) as isize;
        match (before, before + d) {
            (0, after) if after > 0 => {
                created.insert(key.clone(), v.clone());
            }
            (b, 0) if b > 0 => {
                removed.insert(key.clone(), v.clone());
            }
            _ => {}
        }
        deltas.insert(key, d);
    }
    deltas
}

/// Phases keep references valid inside the transaction: sets and chains
/// exist before rules and elements point at them; rules and elements that
/// point at a chain are gone before the chain is deleted.
fn write_changes(out: &mut String, changes: &[[(&Fragment, &Fragment); 2]]) {
    let each = |f: &mut dyn FnMut(Family, &Fragment, &Fragment)| {
        for c in changes {
            for fam in Family::BOTH {
                let (o, n) = c[fam.index()];
                if !(o.is_empty() && n.is_empty()) && o != n {
                    f(fam, o, n);
                }
            }
        }
    };
    // 1. New sets and chains.
    each(&mut |fam, o, n| {
        for (name, decl) in &n.sets {
            if !o.sets.contains_key(name) {
                let _ = writeln!(out, "add set {} {TABLE} {name} {{ {decl} }}", fam.kw());
            }
        }
        for name in n.chains.keys() {
            if !o.chains.contains_key(name) {
                let _ = writeln!(out, "add chain {} {TABLE} {name}", fam.kw());
            }
        }
    });
    // 2. Empty changed and removed chains; fill new and changed ones.
    each(&mut |fam, o, n| {
        for (name, rules) in &o.chains {
            if n.chains.get(name) != Some(rules) {
                let _ = writeln!(out, "flush chain {} {TABLE} {name}", fam.kw());
            }
        }
        for (name, rules) in &n.chains {
            if o.chains.get(name) != Some(rules) {
                for r in rules {
                    let _ = writeln!(out, "add rule {} {TABLE} {name} {r}", fam.kw());
                }
            }
        }
    });
    // 3. Map and set elements: removed and changed out, new and changed in,
    //    batched per map.
    let mut gone: ElementBatch<'_> = BTreeMap::new();
    let mut added: ElementBatch<'_> = BTreeMap::new();
    for c in changes {
        for fam in Family::BOTH {
            let (o, n) = c[fam.index()];
            if o == n {
                continue;
            }
            for ((map, key), v) in &o.elements {
                if n.elements.get(&(*map, key.clone())) != Some(v) {
                    gone.entry((fam.index(), *map))
                        .or_default()
                        .push((key.as_str(), ""));
                }
            }
            for ((map, key), v) in &n.elements {
                if o.elements.get(&(*map, key.clone())) != Some(v) {
                    added
                        .entry((fam.index(), *map))
                        .or_default()
                        .push((key.as_str(), v.as_str()));
                }
            }
        }
    }
    write_elements(out, "delete", &gone);
    write_elements(out, "add", &added);
    // 4. Chains and sets nobody points at any more.
    each(&mut |fam, o, n| {
        for name in o.chains.keys() {
            if !n.chains.contains_key(name) {
                let _ = writeln!(out, "delete chain {} {TABLE} {name}", fam.kw());
            }
        }
        for name in o.sets.keys() {
            if !n.sets.contains_key(name) {
                let _ = writeln!(out, "delete set {} {TABLE} {name}", fam.kw());
            }
        }
    });
}

/// Removes both tables (clean shutdown).
pub fn delete_script() -> String {
    let mut out = String::new();
    for fam in Family::BOTH {
        let kw = fam.kw();
        let _ = writeln!(out, "add table {kw} {TABLE}\ndelete table {kw} {TABLE}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::Protocol;

    fn sp(eps: &[(&str, u32)], node_port: Option<u16>) -> ServicePort {
        let eps: Vec<Endpoint> = eps
            .iter()
            .map(|(a, w)| Endpoint {
                addr: a.parse().unwrap(),
                port: 8080,
                weight: *w,
            })
            .collect();
        ServicePort {
            id: "ns1/web/tcp/http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ips: vec![
                "10.96.0.10".parse().unwrap(),
                "fd00:96::10".parse().unwrap(),
            ],
            node_port,
            affinity_timeout: None,
            internal_local: false,
            external_local: false,
            cluster_endpoints: eps.clone(),
            local_endpoints: eps,
        }
    }

    fn svc_chain(f: &Fragment) -> &Vec<String> {
        f.chains
            .iter()
            .find(|(k, _)| k.starts_with("svc-"))
            .unwrap()
            .1
    }

    fn endpoints_of<'a>(f: &'a Fragment, key: &str) -> Vec<&'a str> {
        f.elements
            .range(("service-endpoints", format!("{key} . "))..)
            .take_while(|((m, k), _)| *m == "service-endpoints" && k.starts_with(key))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn weighted_draw_and_both_families() {
        let f = service_fragments(&[sp(
            &[
                ("10.1.0.2", 9),
                ("10.1.0.3", 1),
                ("10.1.0.4", 0),
                ("fd00:1::2", 1),
            ],
            None,
        )]);
        let key = ("service-ips", "10.96.0.10 . tcp . 80".to_string());
        assert_eq!(f[0].elements[&key], "goto lb-tcp-10");
        assert!(f[0].chains.is_empty(), "no per-service chains: {f:?}");
        // Ten buckets: nine to .2, one to .3, none to the weight-0 endpoint.
        let buckets = endpoints_of(&f[0], "10.96.0.10 . tcp . 80");
        assert_eq!(buckets.len(), 10, "{buckets:?}");
        assert_eq!(
            buckets.iter().filter(|v| **v == "10.1.0.2 . 8080").count(),
            9
        );
        assert_eq!(
            f[0].elements[&("service-endpoints", "10.96.0.10 . tcp . 80 . 9".into())],
            "10.1.0.3 . 8080"
        );
        assert_eq!(
            f[0].shared.chains["lb-tcp-10"],
            [
                "ip saddr != @pod-cidrs jump mark-for-masquerade",
                "meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 10 map @service-endpoints",
            ]
        );
        let hairpin: Vec<&str> = f[0]
            .shared
            .elements
            .keys()
            .map(|(_, k)| k.as_str())
            .collect();
        assert_eq!(hairpin, ["10.1.0.2 . 10.1.0.2", "10.1.0.3 . 10.1.0.3"]);
        // The IPv6 cluster IP and endpoint go to the ip6 table only.
        assert_eq!(
            f[1].elements[&("service-ips", "fd00:96::10 . tcp . 80".into())],
            "goto lb-tcp-1"
        );
        assert_eq!(
            endpoints_of(&f[1], "fd00:96::10 . tcp . 80"),
            ["fd00:1::2 . 8080"]
        );
        assert!(
            f[1].shared.chains["lb-tcp-1"][1].starts_with("meta l4proto tcp dnat ip6 to ip6 daddr")
        );
    }

    #[test]
    fn buckets_reduce_and_cap_weights() {
        let eps = |ws: &[u32]| -> Vec<Endpoint> {
            ws.iter()
                .enumerate()
                .map(|(i, w)| Endpoint {
                    addr: format!("10.1.{}.{}", i / 256, i % 256).parse().unwrap(),
                    port: 80,
                    weight: *w,
                })
                .collect()
        };
        assert_eq!(buckets(&eps(&[90, 10])).len(), 10, "gcd 10");
        assert_eq!(buckets(&eps(&[5, 5, 5])).len(), 3);
        assert!(buckets(&eps(&[0, 0])).is_empty());
        let big = eps(&[100_000, 1]);
        let b = buckets(&big);
        assert_eq!(b.len(), 4096, "scaled to the cap, each keeps one");
        assert_eq!(b.iter().filter(|e| e.weight == 1).count(), 1);
        // More endpoints than the cap: one bucket each.
        assert_eq!(buckets(&eps(&vec![1; 5000])).len(), 5000);
    }

    #[test]
    fn no_endpoints_reject_and_local_policy_drops() {
        let f = service_fragments(&[sp(&[], Some(30080))]);
        let key = ("no-endpoint-services", "10.96.0.10 . tcp . 80".to_string());
        assert_eq!(f[0].elements[&key], "goto reject-chain");
        assert_eq!(
            f[0].elements[&("no-endpoint-nodeports", "tcp . 30080".into())],
            "goto reject-chain"
        );
        assert!(f[0].chains.is_empty());
        // Only weight-0 endpoints: no new connections either.
        let f = service_fragments(&[sp(&[("10.1.0.2", 0)], None)]);
        assert!(f[0].elements.contains_key(&key));
        let mut p = sp(&[], None);
        p.internal_local = true;
        assert_eq!(service_fragments(&[p])[0].elements[&key], "drop");
    }

    #[test]
    fn nodeport_cluster_and_local_policies() {
        let f = service_fragments(&[sp(&[("10.1.0.2", 1)], Some(30080))]);
        assert_eq!(
            f[0].elements[&("service-nodeports", "tcp . 30080".into())],
            "goto nplb-tcp-1"
        );
        assert_eq!(
            f[0].elements[&("nodeport-endpoints", "tcp . 30080 . 0".into())],
            "10.1.0.2 . 8080"
        );
        assert_eq!(
            f[0].shared.chains["nplb-tcp-1"][0],
            "jump mark-for-masquerade"
        );
        let mut p = sp(&[("10.1.0.2", 1), ("10.1.0.3", 1)], Some(30080));
        p.external_local = true;
        p.local_endpoints.truncate(1);
        let f = service_fragments(&[p]);
        let np = &f[0].elements[&("service-nodeports", "tcp . 30080".into())];
        let ext = &f[0].chains[np.strip_prefix("goto ").unwrap()];
        assert_eq!(
            ext[0], "fib saddr type local goto nplb-tcp-2",
            "from the node itself: any endpoint, masqueraded"
        );
        assert!(
            ext[1..].iter().all(|r| !r.starts_with("jump mark")),
            "{ext:?}"
        );
        assert_eq!(
            ext.last().unwrap(),
            "meta l4proto tcp dnat ip to numgen random mod 1 map { 0 : 10.1.0.2 . 8080 }",
            "only this node's endpoint: {ext:?}"
        );
        // No local endpoint: dropped.
        let mut p = sp(&[("10.1.0.2", 1)], Some(30080));
        p.external_local = true;
        p.local_endpoints.clear();
        let f = service_fragments(&[p]);
        assert_eq!(
            f[0].elements[&("no-endpoint-nodeports", "tcp . 30080".into())],
            "drop"
        );
    }

    #[test]
    fn affinity_sets_per_endpoint() {
        let mut p = sp(&[("10.1.0.2", 1), ("10.1.0.3", 1)], None);
        p.affinity_timeout = Some(60);
        let f = service_fragments(&[p]);
        assert_eq!(f[0].sets.len(), 2);
        let decl = f[0].sets.values().next().unwrap();
        assert_eq!(decl, "type ipv4_addr; flags dynamic,timeout; timeout 60s;");
        let rules = svc_chain(&f[0]);
        assert!(
            rules[1].starts_with("ip saddr @aff-") && rules[1].contains(" goto ep-"),
            "{rules:?}"
        );
        assert!(rules[3].starts_with("numgen"));
        let ep = f[0]
            .chains
            .values()
            .find(|r| r[0].contains("10.1.0.2"))
            .unwrap();
        assert!(ep[1].starts_with("update @aff-") && ep[1].ends_with("{ ip saddr }"));
    }

    #[test]
    fn diff_touches_only_what_changed() {
        let a = service_fragments(&[sp(&[("10.1.0.2", 1), ("10.1.0.3", 1)], None)]);
        let b = service_fragments(&[sp(&[("10.1.0.2", 1), ("10.1.0.4", 1)], None)]);
        let s = diff_script(&[(&a, &b)]).unwrap();
        assert_eq!(
            s,
            "delete element ip shoal-proxy service-endpoints { 10.96.0.10 . tcp . 80 . 1 }\n\
             add element ip shoal-proxy service-endpoints { 10.96.0.10 . tcp . 80 . 1 : 10.1.0.4 . 8080 }\n",
            "one bucket changes hands, nothing else"
        );
        assert_eq!(diff_script(&[(&a, &a)]), None);

        // With affinity: endpoint chains come and go, in a safe order.
        let aff = |eps: &[(&str, u32)]| {
            let mut p = sp(eps, None);
            p.affinity_timeout = Some(60);
            service_fragments(&[p])
        };
        let a = aff(&[("10.1.0.2", 1), ("10.1.0.3", 1)]);
        let b = aff(&[("10.1.0.2", 1), ("10.1.0.4", 1)]);
        let s = diff_script(&[(&a, &b)]).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[0].starts_with("add set ip shoal-proxy aff-"), "{s}");
        assert!(lines[1].starts_with("add chain ip shoal-proxy ep-"), "{s}");
        assert!(
            lines.iter().any(|l| l.starts_with("delete chain ip shoal-proxy ep-") && l.contains("10.1.0.3")),
            "{s}"
        );
        assert!(
            !s.contains("10.1.0.2 jump"),
            "unchanged endpoint chain rewritten: {s}"
        );
        let delete_at = lines
            .iter()
            .position(|l| l.starts_with("delete chain"))
            .unwrap();
        let flush_at = lines
            .iter()
            .position(|l| l.starts_with("flush chain ip shoal-proxy svc-"))
            .unwrap();
        assert!(flush_at < delete_at);
        assert!(
            lines
                .last()
                .unwrap()
                .starts_with("delete set ip shoal-proxy aff-"),
            "{s}"
        );

        // Gone service: elements out before chains.
        let gone = Fragments::default();
        let s = diff_script(&[(&a, &gone)]).unwrap();
        let el = s
            .find("delete element ip shoal-proxy service-ips { 10.96.0.10 . tcp . 80 }")
            .unwrap();
        assert!(el < s.find("delete chain").unwrap(), "{s}");
        // Full sync recreates the tables in the same transaction.
        let full = full_script([&a, &node_fragments(&["10.1.0.0/24".into()])]);
        assert!(full.starts_with(
            "add table ip shoal-proxy\ndelete table ip shoal-proxy\ntable ip shoal-proxy {"
        ));
        assert!(full.contains("add element ip shoal-proxy pod-cidrs { 10.1.0.0/24 }"));
    }

    #[test]
    fn shared_objects_follow_their_users() {
        let one = |id: &str, eps: &[(&str, u32)]| {
            let mut p = sp(eps, None);
            p.id = id.into();
            p.cluster_ips = vec![format!("10.96.0.{}", id.len()).parse().unwrap()];
            service_fragments(&[p])
        };
        let none = Fragments::default();
        let a = one("a", &[("10.1.0.2", 1), ("10.1.0.3", 1)]);
        let b = one("bb", &[("10.1.0.2", 1), ("10.1.0.5", 1)]);
        let mut refs = SharedRefs::default();
        let plan = refs.plan(&[(&none, &a), (&none, &b)]);
        assert_eq!(plan.created[0].chains.len(), 1, "lb-tcp-2 once for both");
        assert_eq!(
            plan.created[0].elements.len(),
            3,
            "three distinct endpoints"
        );
        assert_eq!(plan.removed, Fragments::default());
        refs.commit(plan);

        // `a` goes: its own endpoint's hairpin element goes, the shared ones stay.
        let plan = refs.plan(&[(&a, &none)]);
        assert_eq!(plan.created, Fragments::default());
        let gone: Vec<&str> = plan.removed[0]
            .elements
            .keys()
            .map(|(_, k)| k.as_str())
            .collect();
        assert_eq!(gone, ["10.1.0.3 . 10.1.0.3"]);
        assert!(plan.removed[0].chains.is_empty(), "b still uses lb-tcp-2");
        refs.commit(plan);

        // `b` goes too: the chain goes, after the element pointing at it.
        let plan = refs.plan(&[(&b, &none)]);
        assert!(plan.removed[0].chains.contains_key("lb-tcp-2"));
        let s = diff_script(&[(&b, &none), (&plan.removed, &plan.created)]).unwrap();
        let el = s.find("delete element ip shoal-proxy service-ips").unwrap();
        let ch = s.find("delete chain ip shoal-proxy lb-tcp-2").unwrap();
        assert!(el < ch, "{s}");
        refs.commit(plan);
        assert!(refs.chains[0].is_empty() && refs.elements[0].is_empty());
    }
}
