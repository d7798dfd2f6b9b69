//! The cluster DNS records, kept in memory and updated per watch event.
//!
//! Each Service (with its EndpointSlices) contributes a set of records; an
//! event recomputes only that Service's set and swaps the changed names in
//! the published map ([`Records`]), which the server reads on every query
//! with one hash look-up. Names that exist only because a deeper name exists
//! (`<ns>.svc.<domain>`, `_tcp.<svc>...`) are counted as empty non-terminals
//! so that they answer NODATA rather than NXDOMAIN, as RFC 8020 asks.

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

/// Record TTL in seconds (like CoreDNS's kubernetes plugin).
pub const TTL: u32 = 5;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service's identity: namespace and name.
pub type ServiceKey = (String, String);

/// An invalid cluster domain.
#[derive(Debug, thiserror::Error)]
#[error("invalid cluster domain {0:?}: {1}")]
pub struct DomainError(pub String, pub String);

/// The cluster zone: its apex name and SOA record.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The apex, e.g. `cluster.local.`.
    pub apex: Name,
    /// The apex, lowercased, for comparisons.
    pub lower: LowerName,
    /// The zone's SOA, sent in the authority section of negative answers.
    pub soa: Record,
}

impl Zone {
    /// The zone for a cluster domain such as `cluster.local`.
    pub fn new(domain: &str) -> Result<Zone, DomainError> {
        let d = domain.trim_end_matches('.');
        let bad = |why: &str| DomainError(domain.to_string(), why.to_string());
        if d.is_empty() {
            return Err(bad("empty"));
        }
        if !d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }) {
            return Err(bad("labels must be letters, digits and '-'"));
        }
        let apex = Name::from_ascii(format!("{d}.")).map_err(|e| bad(&e.to_string()))?;
        let mname = Name::from_ascii(format!("ns.dns.{d}.")).map_err(|e| bad(&e.to_string()))?;
        let rname =
            Name::from_ascii(format!("hostmaster.{d}.")).map_err(|e| bad(&e.to_string()))?;
        let soa = Record::from_rdata(
            apex.clone(),
            TTL,
            RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, TTL)),
        );
        Ok(Zone {
            lower: LowerName::new(&apex),
            apex,
            soa,
        })
    }

    /// `<svc>.<ns>.svc.<domain>.`
    fn service_name(&self, key: &ServiceKey) -> Option<Name> {
        Name::from_ascii(format!("{}.{}.svc.", key.1, key.0))
            .ok()?
            .append_domain(&self.apex)
            .ok()
    }
}

/// What a name holds, as the server sees it.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The name has records (of some types).
    Found(Arc<[Record]>),
    /// The name exists in the zone but holds no records (the apex, an empty non-terminal).
    Empty,
    /// The name is inside the cluster zone and does not exist.
    NxDomain,
    /// The name is outside the cluster zone (and not a known reverse name).
    Outside,
}

/// The published records: what queries read.
#[derive(Debug, Default)]
struct Published {
    records: HashMap<LowerName, Arc<[Record]>>,
    /// Names inside the zone that exist only as ancestors, with how many
    /// record-holding descendants keep them.
    non_terminals: HashMap<LowerName, u32>,
}

/// The read side of the index, shared with the server.
#[derive(Debug)]
pub struct Records {
    zone: Zone,
    published: RwLock<Published>,
}

impl Records {
    /// The zone this index serves.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Look a name up.
    pub fn lookup(&self, name: &LowerName) -> Lookup {
        let p = self.published.read().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = p.records.get(name) {
            return Lookup::Found(r.clone());
        }
        if !self.zone.lower.zone_of(name) {
            return Lookup::Outside;
        }
        if *name == self.zone.lower || p.non_terminals.contains_key(name) {
            Lookup::Empty
        } else if let Some(r) = self.pod_record(name) {
            Lookup::Found(Arc::from(vec![r]))
        } else {
            Lookup::NxDomain
        }
    }

    /// `<a-b-c-d>.<ns>.pod.<domain>`: the address spelled in the name
    /// (CoreDNS's `pods insecure`, the kubeadm default), A or AAAA by family.
    fn pod_record(&self, name: &LowerName) -> Option<Record> {
        let n = Name::from(name.clone());
        let labels: Vec<String> = n
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let zone_labels = self.zone.lower.num_labels() as usize;
        if labels.len() != zone_labels + 3 || labels[2] != "pod" {
            return None;
        }
        let dashed = &labels[0];
        let ip: IpAddr = dashed
            .replace('-', ".")
            .parse::<std::net::Ipv4Addr>()
            .map(IpAddr::V4)
            .or_else(|_| {
                dashed
                    .replace('-', ":")
                    .parse::<std::net::Ipv6Addr>()
                    .map(IpAddr::V6)
            })
            .ok()?;
        Some(addr_record(&n, ip))
    }

    /// Number of names holding records (for tests and the benchmark).
    pub fn len(&self) -> usize {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .records
            .len()
    }

    /// Whether no name holds records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The write side: the Services and EndpointSlices seen, what each Service
/// contributed, and the shared [`Records`].
#[derive(Debug)]
pub struct Index {
    records: Arc<Records>,
    services: HashMap<ServiceKey, Service>,
    /// Slices per Service, by slice name.
    slices: HashMap<ServiceKey, BTreeMap<String, EndpointSlice>>,
    /// Which Service each slice (namespace, slice name) was filed under.
    slice_owner: HashMap<ServiceKey, ServiceKey>,
    /// The names each Service contributed records to.
    contributed: HashMap<ServiceKey, Vec<LowerName>>,
    /// Every name's records, by contributing Service.
    by_name: HashMap<LowerName, Vec<(ServiceKey, Record)>>,
}

impl Index {
    /// An empty index for `zone`.
    pub fn new(zone: Zone) -> Index {
        Index {
            records: Arc::new(Records {
                zone,
                published: RwLock::new(Published::default()),
            }),
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            contributed: HashMap::new(),
            by_name: HashMap::new(),
        }
    }

    /// The read side, for the server.
    pub fn records(&self) -> Arc<Records> {
        self.records.clone()
    }

    /// A Service was added or changed.
    pub fn apply_service(&mut self, svc: Service) {
        let Some(key) = key_of(&svc.metadata) else {
            return;
        };
        self.services.insert(key.clone(), svc);
        self.refresh(&key);
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        self.services.remove(&key);
        self.refresh(&key);
    }

    /// An EndpointSlice was added or changed.
    pub fn apply_slice(&mut self, slice: EndpointSlice) {
        let Some(slice_key) = key_of(&slice.metadata) else {
            return;
        };
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|s| (slice_key.0.clone(), s.clone()));
        // The label may have changed: take the slice away from its old Service.
        if let Some(old) = self.slice_owner.get(&slice_key).cloned() {
            if Some(&old) != owner.as_ref() {
                self.remove_slice(&slice_key);
            }
        }
        let Some(owner) = owner else {
            return;
        };
        self.slice_owner.insert(slice_key.clone(), owner.clone());
        self.slices
            .entry(owner.clone())
            .or_default()
            .insert(slice_key.1, slice);
        self.refresh(&owner);
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, ns: &str, name: &str) {
        self.remove_slice(&(ns.to_string(), name.to_string()));
    }

    fn remove_slice(&mut self, slice_key: &ServiceKey) {
        let Some(owner) = self.slice_owner.remove(slice_key) else {
            return;
        };
        if let Some(m) = self.slices.get_mut(&owner) {
            m.remove(&slice_key.1);
            if m.is_empty() {
                self.slices.remove(&owner);
            }
        }
        self.refresh(&owner);
    }

    /// Replace everything (a watch re-list).
    pub fn replace_all(&mut self, services: Vec<Service>, slices: Vec<EndpointSlice>) {
        let keys: HashSet<ServiceKey> = self
            .services
            .keys()
            .chain(self.slices.keys())
            .cloned()
            .collect();
        self.services.clear();
        self.slices.clear();
        self.slice_owner.clear();
        for s in services {
            if let Some(k) = key_of(&s.metadata) {
                self.services.insert(k, s);
            }
        }
        for s in slices {
            let (Some(sk), Some(svc)) = (
                key_of(&s.metadata),
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .cloned(),
            ) else {
                continue;
            };
            let owner = (sk.0.clone(), svc);
            self.slice_owner.insert(sk.clone(), owner.clone());
            self.slices.entry(owner).or_default().insert(sk.1, s);
        }
        let all: HashSet<ServiceKey> = keys
            .into_iter()
            .chain(self.services.keys().cloned())
            .collect();
        for k in all {
            self.refresh(&k);
        }
    }

    /// Replace all Services (a Service watch re-list), keeping the slices.
    pub fn replace_services(&mut self, services: Vec<Service>) {
        let slices = self.all_slices();
        self.replace_all(services, slices);
    }

    /// Replace all EndpointSlices (a slice watch re-list), keeping the Services.
    pub fn replace_slices(&mut self, slices: Vec<EndpointSlice>) {
        let services = self.services.values().cloned().collect();
        self.replace_all(services, slices);
    }

    fn all_slices(&self) -> Vec<EndpointSlice> {
        self.slices
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// Recompute one Service's records and publish the names that changed.
    fn refresh(&mut self, key: &ServiceKey) {
        let new = match self.services.get(key) {
            Some(svc) => service_records(
                &self.records.zone,
                key,
                svc,
                self.slices.get(key).into_iter().flat_map(|m| m.values()),
            ),
            None => Vec::new(),
        };
        let old_names = self.contributed.remove(key).unwrap_or_default();
        let mut touched: HashSet<LowerName> = HashSet::new();
        for n in old_names {
            if let Some(list) = self.by_name.get_mut(&n) {
                list.retain(|(k, _)| k != key);
            }
            touched.insert(n);
        }
        let mut names = Vec::new();
        for r in new {
            let n = LowerName::new(&r.name);
            if !names.contains(&n) {
                names.push(n.clone());
            }
            let list = self.by_name.entry(n.clone()).or_default();
            if !list.iter().any(|(_, x)| *x == r) {
                list.push((key.clone(), r));
            }
            touched.insert(n);
        }
        if !names.is_empty() {
            self.contributed.insert(key.clone(), names);
        }
        let zone = self.records.zone.lower.clone();
        let mut p = self
            .records
            .published
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for n in touched {
            let list = self.by_name.get(&n).filter(|l| !l.is_empty());
            let had = p.records.contains_key(&n);
            match list {
                Some(l) => {
                    let recs: Arc<[Record]> = l.iter().map(|(_, r)| r.clone()).collect();
                    p.records.insert(n.clone(), recs);
                    if !had {
                        adjust_ancestors(&mut p.non_terminals, &zone, &n, true);
                    }
                }
                None => {
                    self.by_name.remove(&n);
                    if had {
                        p.records.remove(&n);
                        adjust_ancestors(&mut p.non_terminals, &zone, &n, false);
                    }
                }
            }
        }
    }
}

/// Count `name`'s ancestors strictly between it and the apex as existing (or not any more).
fn adjust_ancestors(
    nt: &mut HashMap<LowerName, u32>,
    zone: &LowerName,
    name: &LowerName,
    add: bool,
) {
    if !zone.zone_of(name) {
        return;
    }
    let mut cur = name.base_name();
    while cur.num_labels() > zone.num_labels() {
        if add {
            *nt.entry(cur.clone()).or_insert(0) += 1;
        } else if let Some(c) = nt.get_mut(&cur) {
            *c -= 1;
            if *c == 0 {
                nt.remove(&cur);
            }
        }
        cur = cur.base_name();
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ServiceKey> {
    Some((
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone()?,
    ))
}

fn addr_record(name: &Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    };
    Record::from_rdata(name.clone(), TTL, data)
}

fn ptr_record(ip: IpAddr, target: &Name) -> Record {
    Record::from_rdata(Name::from(ip), TTL, RData::PTR(PTR(target.clone())))
}

/// `_<port>._<proto>.<base>`
fn srv_name(port: &str, proto: &str, base: &Name) -> Option<Name> {
    Name::from_ascii(format!("_{port}._{}", proto.to_ascii_lowercase()))
        .ok()?
        .append_name(base)
        .ok()
}

/// The leading label for a headless endpoint: its hostname, or its address
/// with dashes (`10-244-1-5`, `fd00--5`) like CoreDNS.
fn endpoint_label(hostname: Option<&str>, ip: IpAddr) -> String {
    match hostname.filter(|h| !h.is_empty()) {
        Some(h) => h.to_ascii_lowercase(),
        None => ip.to_string().replace(['.', ':'], "-"),
    }
}

/// Every record Service `key` contributes, given its EndpointSlices.
pub fn service_records<'a>(
    zone: &Zone,
    key: &ServiceKey,
    svc: &Service,
    slices: impl Iterator<Item = &'a EndpointSlice>,
) -> Vec<Record> {
    let Some(name) = zone.service_name(key) else {
        return Vec::new();
    };
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if spec.type_.as_deref() == Some("ExternalName") {
        if let Some(target) = spec
            .external_name
            .as_deref()
            .and_then(|t| Name::from_ascii(format!("{}.", t.trim_end_matches('.'))).ok())
        {
            out.push(Record::from_rdata(name, TTL, RData::CNAME(CNAME(target))));
        }
        return out;
    }
    let ips: Vec<String> = spec
        .cluster_ips
        .clone()
        .filter(|l| !l.is_empty())
        .or_else(|| spec.cluster_ip.clone().map(|c| vec![c]))
        .unwrap_or_default();
    let headless = ips.iter().any(|i| i == "None");
    let ports = spec.ports.as_deref().unwrap_or_default();
    if !headless {
        for ip in ips.iter().filter_map(|i| i.parse::<IpAddr>().ok()) {
            out.push(addr_record(&name, ip));
            out.push(ptr_record(ip, &name));
        }
        for p in ports {
            let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            if let (Some(sn), Ok(port)) = (srv_name(pn, proto, &name), u16::try_from(p.port)) {
                out.push(Record::from_rdata(
                    sn,
                    TTL,
                    RData::SRV(SRV::new(0, 100, port, name.clone())),
                ));
            }
        }
        return out;
    }
    // Headless: the endpoints' own addresses.
    let publish_all = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut srv: Vec<(Name, u16, Name)> = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !publish_all {
                continue;
            }
            for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                let label = endpoint_label(ep.hostname.as_deref(), ip);
                let Some(ep_name) = Name::from_ascii(&label)
                    .ok()
                    .and_then(|l| l.append_name(&name).ok())
                else {
                    continue;
                };
                out.push(addr_record(&name, ip));
                out.push(addr_record(&ep_name, ip));
                out.push(ptr_record(ip, &ep_name));
                for p in slice.ports.iter().flatten() {
                    let (Some(pn), Some(port)) = (
                        p.name.as_deref().filter(|n| !n.is_empty()),
                        p.port.and_then(|x| u16::try_from(x).ok()),
                    ) else {
                        continue;
                    };
                    let proto = p.protocol.as_deref().unwrap_or("TCP");
                    if let Some(sn) = srv_name(pn, proto, &name) {
                        srv.push((sn, port, ep_name.clone()));
                    }
                }
            }
        }
    }
    // Equal weights summing to about 100 per SRV name, like CoreDNS.
    let mut per_name: HashMap<Name, u16> = HashMap::new();
    for (n, _, _) in &srv {
        *per_name.entry(n.clone()).or_insert(0) += 1;
    }
    for (n, port, target) in srv {
        let w = (100 / per_name[&n].max(1)).max(1);
        out.push(Record::from_rdata(
            n,
            TTL,
            RData::SRV(SRV::new(0, w, port, target)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::rr::RecordType;
    use serde_json::json;

    fn zone() -> Zone {
        Zone::new("cluster.local").unwrap()
    }

    fn lname(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).unwrap())
    }

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn types(l: &Lookup) -> Vec<RecordType> {
        match l {
            Lookup::Found(r) => r.iter().map(|r| r.record_type()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn domains_are_checked() {
        assert!(Zone::new("cluster.local").is_ok());
        assert!(Zone::new("cluster.local.").is_ok());
        assert!(Zone::new("").is_err());
        assert!(Zone::new("a..b").is_err());
        assert!(Zone::new("bad_label.local").is_err());
    }

    #[test]
    fn events_update_names_and_non_terminals() {
        let mut idx = Index::new(zone());
        let rec = idx.records();
        idx.apply_service(svc(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::a"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        })));
        let web = rec.lookup(&lname("web.shop.svc.cluster.local."));
        let mut t = types(&web);
        t.sort();
        assert_eq!(t, vec![RecordType::A, RecordType::AAAA]);
        assert!(matches!(
            rec.lookup(&lname("shop.svc.cluster.local.")),
            Lookup::Empty
        ));
        assert!(matches!(
            rec.lookup(&lname("svc.cluster.local.")),
            Lookup::Empty
        ));
        assert!(matches!(
            rec.lookup(&lname("cluster.local.")),
            Lookup::Empty
        ));
        assert!(matches!(
            rec.lookup(&lname("_tcp.web.shop.svc.cluster.local.")),
            Lookup::Empty
        ));
        assert_eq!(
            types(&rec.lookup(&lname("_http._tcp.web.shop.svc.cluster.local."))),
            vec![RecordType::SRV]
        );
        assert!(matches!(
            rec.lookup(&lname("nope.shop.svc.cluster.local.")),
            Lookup::NxDomain
        ));
        assert!(matches!(
            rec.lookup(&lname("example.com.")),
            Lookup::Outside
        ));
        // Pod names spell their address.
        let Lookup::Found(pod) = rec.lookup(&lname("10-244-1-5.shop.pod.cluster.local.")) else {
            panic!("no pod record");
        };
        assert_eq!(pod[0].data.to_string(), "10.244.1.5");
        let Lookup::Found(pod6) = rec.lookup(&lname("fd00--5.shop.pod.cluster.local.")) else {
            panic!("no pod record");
        };
        assert_eq!(pod6[0].data.to_string(), "fd00::5");
        assert!(matches!(
            rec.lookup(&lname("x-y.shop.pod.cluster.local.")),
            Lookup::NxDomain
        ));
        assert_eq!(
            types(&rec.lookup(&lname("10.0.96.10.in-addr.arpa."))),
            vec![RecordType::PTR]
        );
        // Delete: everything it contributed goes, ancestors too.
        idx.delete_service("shop", "web");
        assert!(matches!(
            rec.lookup(&lname("web.shop.svc.cluster.local.")),
            Lookup::NxDomain
        ));
        assert!(matches!(
            rec.lookup(&lname("shop.svc.cluster.local.")),
            Lookup::NxDomain
        ));
        assert!(matches!(
            rec.lookup(&lname("10.0.96.10.in-addr.arpa.")),
            Lookup::Outside
        ));
        assert!(rec.is_empty());
    }

    #[test]
    fn headless_services_list_ready_endpoints_and_hostnames() {
        let mut idx = Index::new(zone());
        let rec = idx.records();
        // The slice may arrive before its Service.
        idx.apply_slice(slice(json!({
            "metadata": {"name": "db-abc", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.7"], "hostname": "db-2", "conditions": {"ready": false}},
            ]
        })));
        assert!(rec.is_empty());
        idx.apply_service(svc(json!({
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
        })));
        let Lookup::Found(all) = rec.lookup(&lname("db.ns.svc.cluster.local.")) else {
            panic!("no records");
        };
        let mut ips: Vec<String> = all.iter().map(|r| r.data.to_string()).collect();
        ips.sort();
        assert_eq!(ips, vec!["10.244.1.5", "10.244.1.6"]);
        assert_eq!(
            types(&rec.lookup(&lname("db-0.db.ns.svc.cluster.local."))),
            vec![RecordType::A]
        );
        assert_eq!(
            types(&rec.lookup(&lname("10-244-1-6.db.ns.svc.cluster.local."))),
            vec![RecordType::A]
        );
        assert!(matches!(
            rec.lookup(&lname("db-2.db.ns.svc.cluster.local.")),
            Lookup::NxDomain
        ));
        let Lookup::Found(srv) = rec.lookup(&lname("_pg._tcp.db.ns.svc.cluster.local.")) else {
            panic!("no SRV");
        };
        let mut targets: Vec<String> = srv.iter().map(|r| r.data.to_string()).collect();
        targets.sort();
        assert_eq!(
            targets,
            vec![
                "0 50 5432 10-244-1-6.db.ns.svc.cluster.local.",
                "0 50 5432 db-0.db.ns.svc.cluster.local."
            ]
        );
        let Lookup::Found(ptr) = rec.lookup(&lname("5.1.244.10.in-addr.arpa.")) else {
            panic!("no PTR");
        };
        assert_eq!(ptr[0].data.to_string(), "db-0.db.ns.svc.cluster.local.");
        // The slice moves to another service: db loses its endpoints.
        idx.apply_slice(slice(json!({
            "metadata": {"name": "db-abc", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "other"}},
            "addressType": "IPv4", "endpoints": []
        })));
        assert!(matches!(
            rec.lookup(&lname("db.ns.svc.cluster.local.")),
            Lookup::NxDomain
        ));
        assert!(rec.is_empty());
    }

    #[test]
    fn external_names_are_cnames_and_relists_replace() {
        let mut idx = Index::new(zone());
        let rec = idx.records();
        idx.apply_service(svc(json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}
        })));
        let Lookup::Found(r) = rec.lookup(&lname("ext.default.svc.cluster.local.")) else {
            panic!("no CNAME");
        };
        assert_eq!(r[0].data.to_string(), "example.org.");
        idx.replace_services(vec![svc(json!({
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1"}
        }))]);
        assert!(matches!(
            rec.lookup(&lname("ext.default.svc.cluster.local.")),
            Lookup::NxDomain
        ));
        assert!(matches!(
            rec.lookup(&lname("a.default.svc.cluster.local.")),
            Lookup::Found(_)
        ));
    }
}
