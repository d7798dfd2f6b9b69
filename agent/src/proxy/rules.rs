//! nftables rules, as text for `nft -f`, in the shape of kube-proxy's
//! nftables mode. One table per family (`ip shoal-proxy`, `ip6
//! shoal-proxy`) holds a fixed skeleton (base chains and the verdict maps)
//! and, per service, a [`Fragment`]: the chains, dynamic sets and map
//! elements that service owns. A change is applied by comparing a
//! service's old and new fragment ([`diff_script`]), so the transaction
//! sent to the kernel grows with what changed, not with the number of
//! services.
//!
//! ```text
//! nat-prerouting / nat-output (dstnat) → services:
//!     daddr . l4proto . dport vmap @service-ips      → goto svc-…  (cluster IP)
//!     fib daddr type local: l4proto . dport vmap @service-nodeports → goto ext-…
//! svc-…: masquerade-mark unless from a pod; ClientIP affinity; numgen random mod W vmap {ranges}
//! ext-…: (Cluster) mark, goto svc-…   (Local) only this node's endpoints, no mark
//! ep-…:  mark if hairpin (saddr == endpoint); update affinity set; dnat
//! filter-prerouting / filter-output (dstnat-10): new connections to a service
//!     without endpoints → @no-endpoint-services / @no-endpoint-nodeports → reject
//! nat-postrouting (srcnat): masquerade marked packets; pod traffic leaving the pod network
//! ```

use super::model::{Endpoint, ServicePort};
use sha2::Digest;
use std::collections::BTreeMap;
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

fn port_fragment(sp: &ServicePort, fam: Family, f: &mut Fragment) {
    let ips: Vec<&IpAddr> = sp
        .cluster_ips
        .iter()
        .filter(|ip| Family::of(ip) == fam)
        .collect();
    if ips.is_empty() {
        return;
    }
    let kw = fam.kw();
    let proto = sp.protocol.nft();
    let h = hash(&sp.id);
    let tag = ident(&sp.id);
    let svc_chain = format!("svc-{h}-{tag}");
    let ext_chain = format!("ext-{h}-{tag}");
    let in_fam = |eps: &[Endpoint]| -> Vec<Endpoint> {
        eps.iter()
            .filter(|e| Family::of(&e.addr) == fam)
            .cloned()
            .collect()
    };
    let cluster = in_fam(&sp.cluster_endpoints);
    let local = in_fam(&sp.local_endpoints);
    // Endpoint chain (and affinity set) names, shared by the cluster and external paths.
    let names = |e: &Endpoint| {
        let eh = hash(&format!("{}|{}", sp.id, addr_port(e)));
        let chain = format!("ep-{eh}-{tag}__{}/{}", ident(&e.addr.to_string()), e.port);
        let set = sp.affinity_timeout.map(|t| format!("aff-{eh}-{t}"));
        (chain, set)
    };
    let endpoint_chain = |f: &mut Fragment, e: &Endpoint| -> (String, Option<String>) {
        let (chain, set) = names(e);
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
    // The rules that pick one of `eps`: affinity first, then the weighted draw.
    // The rules that pick one of `eps`. With ClientIP affinity, kube-proxy's
    // shape: a chain per endpoint (affinity set, hairpin mark, DNAT), the
    // affinity lookups, then a weighted `vmap` draw among the chains.
    // Without, no per-endpoint chains: hairpin marks by source and one DNAT
    // through a weighted `map` draw, so the table has one chain per service
    // port (nft reads every chain of the table on each run; see docs).
    let pick = |f: &mut Fragment, eps: &[Endpoint], rules: &mut Vec<String>| -> bool {
        if sp.affinity_timeout.is_none() {
            let targets: Vec<(&Endpoint, String)> = eps
                .iter()
                .map(|e| {
                    let a = e.addr.to_string();
                    (e, format!("{a} . {}", e.port))
                })
                .collect();
            let Some((total, ranges)) = draw(&targets) else {
                return false;
            };
            let mut seen = std::collections::BTreeSet::new();
            for e in eps.iter().filter(|e| e.weight > 0) {
                if seen.insert(e.addr) {
                    // Hairpin: a backend reaching its own service may be
                    // sent to itself; its reply must come back through us.
                    rules.push(format!("{kw} saddr {} jump mark-for-masquerade", e.addr));
                }
            }
            rules.push(format!(
                "meta l4proto {proto} dnat {kw} to numgen random mod {total} map {{ {ranges} }}"
            ));
            return true;
        }
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
    let has_cluster = pick(f, &cluster, &mut svc_rules);
    if has_cluster {
        f.chains.insert(svc_chain.clone(), svc_rules);
    }
    for ip in &ips {
        let key = format!("{ip} . {proto} . {}", sp.port);
        if has_cluster {
            f.elements
                .insert(("service-ips", key), format!("goto {svc_chain}"));
        } else {
            // kube-proxy: no endpoints at all → reject; none local under a
            // Local policy → drop.
            let verdict = if sp.internal_local {
                "drop"
            } else {
                "goto reject-chain"
            };
            f.elements
                .insert(("no-endpoint-services", key), verdict.into());
        }
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
        pick(f, &local, &mut ext_rules)
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
    {kw} saddr @pod-cidrs {kw} daddr != @pod-cidrs masquerade fully-random
  }}
  chain filter-prerouting {{ type filter hook prerouting priority -110; policy accept; ct state new jump endpoints-check; }}
  chain filter-output {{ type filter hook output priority -110; policy accept; ct state new jump endpoints-check; }}
}}
"
    )
}

fn element(out: &mut String, verb: &str, fam: Family, map: &str, key: &str, value: Option<&str>) {
    let kw = fam.kw();
    let _ = match value {
        Some(v) if !v.is_empty() => {
            writeln!(out, "{verb} element {kw} {TABLE} {map} {{ {key} : {v} }}")
        }
        _ => writeln!(out, "{verb} element {kw} {TABLE} {map} {{ {key} }}"),
    };
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
    // 3. Map and set elements: removed and changed out, new and changed in.
    each(&mut |fam, o, n| {
        for ((map, key), v) in &o.elements {
            if n.elements.get(&(*map, key.clone())) != Some(v) {
                element(out, "delete", fam, map, key, None);
            }
        }
    });
    each(&mut |fam, o, n| {
        for ((map, key), v) in &n.elements {
            if o.elements.get(&(*map, key.clone())) != Some(v) {
                element(out, "add", fam, map, key, Some(v));
            }
        }
    });
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
        let rules = svc_chain(&f[0]);
        assert_eq!(rules[0], "ip saddr != @pod-cidrs jump mark-for-masquerade");
        assert_eq!(
            rules[1], "ip saddr 10.1.0.2 jump mark-for-masquerade",
            "hairpin"
        );
        assert_eq!(rules[2], "ip saddr 10.1.0.3 jump mark-for-masquerade");
        assert_eq!(
            rules[3],
            "meta l4proto tcp dnat ip to numgen random mod 10 map { 0-8 : 10.1.0.2 . 8080, 9 : 10.1.0.3 . 8080 }",
            "weight 0 gets no share"
        );
        assert_eq!(rules.len(), 4);
        assert_eq!(
            f[0].chains.len(),
            1,
            "no per-endpoint chains without affinity"
        );
        let key = ("service-ips", "10.96.0.10 . tcp . 80".to_string());
        assert!(f[0].elements[&key].starts_with("goto svc-"));
        // The IPv6 cluster IP and endpoint go to the ip6 table only.
        let rules6 = svc_chain(&f[1]);
        assert!(rules6[0].starts_with("ip6 saddr != @pod-cidrs"));
        assert_eq!(
            rules6[2],
            "meta l4proto tcp dnat ip6 to numgen random mod 1 map { 0 : fd00:1::2 . 8080 }"
        );
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
        let np = &f[0].elements[&("service-nodeports", "tcp . 30080".into())];
        let ext = &f[0].chains[np.strip_prefix("goto ").unwrap()];
        assert_eq!(ext[0], "jump mark-for-masquerade");
        let mut p = sp(&[("10.1.0.2", 1), ("10.1.0.3", 1)], Some(30080));
        p.external_local = true;
        p.local_endpoints.truncate(1);
        let f = service_fragments(&[p]);
        let np = &f[0].elements[&("service-nodeports", "tcp . 30080".into())];
        let ext = &f[0].chains[np.strip_prefix("goto ").unwrap()];
        assert!(ext.iter().all(|r| !r.starts_with("jump mark")), "{ext:?}");
        assert_eq!(
            ext.last().unwrap(),
            "meta l4proto tcp dnat ip to numgen random mod 1 map { 0 : 10.1.0.2 . 8080 }",
            "only this node's endpoint: {ext:?}"
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
        let lines: Vec<&str> = s.lines().collect();
        assert!(
            lines[0].starts_with("flush chain ip shoal-proxy svc-"),
            "{s}"
        );
        assert!(s.contains("10.1.0.4 . 8080") && lines.len() == 5, "{s}");
        assert!(!s.contains(" ip6 "), "ip6 unchanged: {s}");
        assert!(!s.contains("element"), "map element unchanged: {s}");
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
}
