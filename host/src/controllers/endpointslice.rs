//! The EndpointSlice controller: for every Service with a selector, keeps
//! `discovery.k8s.io/v1` EndpointSlices of the pods it selects, one set per
//! address family, and writes into them what the Service's router plugin
//! decided (hints and weights).
//!
//! - Endpoints: pods in the namespace matching the selector, not finished,
//!   with an IP of the slice's family. `ready` = pod Ready and not
//!   terminating (or `publishNotReadyAddresses`), `serving` = pod Ready,
//!   `terminating` = deletionTimestamp set; nodeName, zone (the node's
//!   `topology.kubernetes.io/zone`), targetRef, hostname (spec.hostname with
//!   spec.subdomain naming the service).
//! - Ports: each service port resolved per pod (number, or a named container
//!   port); pods that resolve to different numbers land in different slices.
//! - Churn: at most 100 endpoints per slice; endpoints stay in the slice they
//!   are in, new ones fill slices with room before new slices are made; a
//!   slice is written only when its content changed; slices no longer needed
//!   are deleted. A service with no endpoints keeps one empty placeholder.
//! - Routing: the Plugin named by the `routing.shoal.dev/router` annotation
//!   (kind router, Ready), else `default-router`, turns each family's
//!   endpoints into routes; they become `hints.forZones` / `hints.forNodes`
//!   and the `routing.shoal.dev/weights` annotation (absent = all weights 1).
//!   A router that fails is logged and the service gets no hints and equal
//!   weights.
//!
//! Slices of services without a selector are not touched: users write them.

use super::events;
use super::pods;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use crate::plugin::{Endpoint as RouterEndpoint, PluginKind, Route};
use crate::plugin_objects::{self, PluginSet, DEFAULT_ROUTER};
use crate::routing::{self, NodeView, RouterFailure, Routers};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const COMPONENT: &str = "endpointslice-controller";

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`] (Kubernetes' own, as kube-proxy expects).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Service annotation naming its router Plugin.
pub const ROUTER_ANNOTATION: &str = "routing.shoal.dev/router";
/// Slice annotation: JSON object of endpoint address to weight; absent when
/// every endpoint of the slice has weight 1.
pub const WEIGHTS_ANNOTATION: &str = "routing.shoal.dev/weights";
/// Node label carrying the zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Most endpoints in one slice (Kubernetes' default maxEndpointsPerSlice).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// How soon to look again while the published plugin set lags its objects.
const UNSETTLED_RETRY: Duration = Duration::from_millis(500);

fn svc_info() -> &'static ResourceInfo {
    resources::lookup("", "v1", "services").expect("services are served")
}

fn pod_info() -> &'static ResourceInfo {
    resources::lookup("", "v1", "pods").expect("pods are served")
}

fn node_info() -> &'static ResourceInfo {
    resources::lookup("", "v1", "nodes").expect("nodes are served")
}

fn slice_info() -> &'static ResourceInfo {
    resources::lookup("discovery.k8s.io", "v1", "endpointslices")
        .expect("endpointslices are served")
}

fn plugin_info() -> &'static ResourceInfo {
    resources::lookup("plugins.shoal.dev", "v1alpha1", "plugins").expect("plugins are served")
}

/// An address family, as EndpointSlice `addressType` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// `addressType` value.
    pub fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn of_ip(ip: &str) -> Option<Family> {
        match ip.parse::<IpAddr>().ok()? {
            IpAddr::V4(_) => Some(Family::V4),
            IpAddr::V6(_) => Some(Family::V6),
        }
    }

    fn of_name(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }
}

/// The pod IPs (`status.podIPs`, else `status.podIP`).
fn pod_ips(pod: &Value) -> Vec<&str> {
    let mut ips: Vec<&str> = pod
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p["ip"].as_str())
        .collect();
    if ips.is_empty() {
        ips.extend(pod.pointer("/status/podIP").and_then(Value::as_str));
    }
    ips.retain(|ip| !ip.is_empty());
    ips
}

/// The service's selector, if it has a non-empty one and is not ExternalName.
pub fn selector_of(svc: &Value) -> Option<BTreeMap<String, String>> {
    if svc.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        return None;
    }
    let sel: BTreeMap<String, String> = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    (!sel.is_empty()).then_some(sel)
}

fn selects(selector: &BTreeMap<String, String>, pod: &Value) -> bool {
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)).and_then(Value::as_str) == Some(v))
}

/// The families the service's slices carry: `spec.ipFamilies`, else the
/// families of `spec.clusterIPs`, else (headless without families) every
/// family the selected pods have.
pub fn families(svc: &Value, pods: &[&Value]) -> Vec<Family> {
    let named: Vec<Family> = svc
        .pointer("/spec/ipFamilies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().and_then(Family::of_name))
        .collect();
    let mut out = if named.is_empty() {
        svc.pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.as_str().and_then(Family::of_ip))
            .collect()
    } else {
        named
    };
    if out.is_empty() {
        let have: BTreeSet<Family> = pods
            .iter()
            .flat_map(|p| pod_ips(p))
            .filter_map(Family::of_ip)
            .collect();
        out = have.into_iter().collect();
    }
    let mut seen = HashSet::new();
    out.retain(|f| seen.insert(*f));
    out
}

/// One resolved port of a slice, serialized as the slice stores it.
fn port_json(svc_port: &Value, number: i64) -> Value {
    let mut p = json!({
        "name": svc_port.get("name").and_then(Value::as_str).unwrap_or(""),
        "port": number,
        "protocol": svc_port.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
    });
    if let Some(a) = svc_port.get("appProtocol").and_then(Value::as_str) {
        p["appProtocol"] = json!(a);
    }
    p
}

/// The service's ports resolved for one pod: a numeric (or unset) targetPort
/// as is, a named one through the pod's container ports of that name and
/// protocol. Ports a pod cannot resolve are left out for that pod.
pub fn resolve_ports(svc: &Value, pod: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for sp in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let protocol = sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        let number = match sp.get("targetPort") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(name)) => match name.parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => named_container_port(pod, name, protocol),
            },
            _ => sp.get("port").and_then(Value::as_i64),
        };
        if let Some(n) = number.filter(|n| *n > 0) {
            out.push(port_json(sp, n));
        }
    }
    out
}

fn named_container_port(pod: &Value, name: &str, protocol: &str) -> Option<i64> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)?
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|p| {
            p.get("name").and_then(Value::as_str) == Some(name)
                && p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == protocol
        })
        .and_then(|p| p.get("containerPort").and_then(Value::as_i64))
}

/// One endpoint of the service: a pod's address in one family.
#[derive(Debug, Clone, PartialEq)]
pub struct PodEndpoint {
    /// The address.
    pub address: String,
    /// Its family.
    pub family: Family,
    /// Conditions.
    pub ready: bool,
    /// Pod Ready, terminating or not.
    pub serving: bool,
    /// deletionTimestamp set.
    pub terminating: bool,
    /// Node the pod runs on.
    pub node: Option<String>,
    /// Zone of that node.
    pub zone: Option<String>,
    /// DNS hostname (spec.hostname when spec.subdomain is the service).
    pub hostname: Option<String>,
    /// The pod (for targetRef).
    pub pod_name: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The pod's labels (for routers).
    pub labels: Vec<(String, String)>,
    /// The service's ports resolved for this pod.
    pub ports: Vec<Value>,
}

/// The endpoints of `svc` from the pods it selects, for `families`.
pub fn endpoints(
    svc: &Value,
    pods: &[&Value],
    families: &[Family],
    zones: &HashMap<String, String>,
) -> Vec<PodEndpoint> {
    let publish_not_ready = svc
        .pointer("/spec/publishNotReadyAddresses")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let svc_name = object::meta_str(svc, "name").unwrap_or("");
    let mut out = Vec::new();
    for pod in pods {
        if pods::is_terminal(pod) {
            continue;
        }
        let pod_ready = pods::is_ready(pod);
        let terminating = pods::is_deleting(pod);
        let node = pods::node_name(pod).map(str::to_string);
        let zone = node.as_ref().and_then(|n| zones.get(n)).cloned();
        let hostname = pod
            .pointer("/spec/hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .filter(|_| pod.pointer("/spec/subdomain").and_then(Value::as_str) == Some(svc_name))
            .map(str::to_string);
        let labels: Vec<(String, String)> = pod
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        let ports = resolve_ports(svc, pod);
        for ip in pod_ips(pod) {
            let Some(family) = Family::of_ip(ip).filter(|f| families.contains(f)) else {
                continue;
            };
            out.push(PodEndpoint {
                address: ip.to_string(),
                family,
                ready: publish_not_ready || (pod_ready && !terminating),
                serving: publish_not_ready || pod_ready,
                terminating,
                node: node.clone(),
                zone: zone.clone(),
                hostname: hostname.clone(),
                pod_name: object::meta_str(pod, "name").unwrap_or("").to_string(),
                pod_uid: object::meta_str(pod, "uid").unwrap_or("").to_string(),
                labels: labels.clone(),
                ports: ports.clone(),
            });
        }
    }
    // Two pods cannot share an address; if they seem to (a stale status),
    // the first one listed wins.
    let mut seen = HashSet::new();
    out.retain(|e| seen.insert(e.address.clone()));
    out
}

impl PodEndpoint {
    /// As the router world sees it.
    pub fn for_router(&self) -> RouterEndpoint {
        RouterEndpoint {
            address: self.address.clone(),
            node: self.node.clone(),
            zone: self.zone.clone(),
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
            labels: self.labels.clone(),
        }
    }

    /// The slice endpoint, with the route's hints.
    pub fn to_json(&self, ns: &str, route: Option<&Route>) -> Value {
        let mut e = json!({
            "addresses": [self.address],
            "conditions": {"ready": self.ready, "serving": self.serving, "terminating": self.terminating},
            "targetRef": {"kind": "Pod", "namespace": ns, "name": self.pod_name, "uid": self.pod_uid},
        });
        if let Some(n) = &self.node {
            e["nodeName"] = json!(n);
        }
        if let Some(z) = &self.zone {
            e["zone"] = json!(z);
        }
        if let Some(h) = &self.hostname {
            e["hostname"] = json!(h);
        }
        if let Some(r) = route {
            let mut hints = Map::new();
            if !r.for_zones.is_empty() {
                hints.insert(
                    "forZones".into(),
                    r.for_zones.iter().map(|z| json!({"name": z})).collect(),
                );
            }
            if !r.for_nodes.is_empty() {
                hints.insert(
                    "forNodes".into(),
                    r.for_nodes.iter().map(|n| json!({"name": n})).collect(),
                );
            }
            if !hints.is_empty() {
                e["hints"] = Value::Object(hints);
            }
        }
        e
    }
}

/// An endpoint as a slice holds it, with its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceEndpoint {
    /// The endpoint JSON.
    pub json: Value,
    /// Its routed weight.
    pub weight: u32,
}

/// Slices are grouped by (addressType, ports as JSON text).
pub type GroupKey = (String, String);

/// Desired endpoints by group, then address.
pub type Desired = BTreeMap<GroupKey, BTreeMap<String, SliceEndpoint>>;

/// Group the endpoints, applying `routes` (by address; missing = weight 1, no hints).
pub fn desired(ns: &str, eps: &[PodEndpoint], routes: &HashMap<String, Route>) -> Desired {
    let mut out = Desired::new();
    for e in eps {
        let key = (
            e.family.address_type().to_string(),
            Value::Array(e.ports.clone()).to_string(),
        );
        let route = routes.get(&e.address);
        out.entry(key).or_default().insert(
            e.address.clone(),
            SliceEndpoint {
                json: e.to_json(ns, route),
                weight: route.map_or(1, |r| r.weight),
            },
        );
    }
    out
}

fn slice_key(slice: &Value) -> GroupKey {
    let ports = slice.get("ports").cloned().unwrap_or_else(|| json!([]));
    let ports = if ports.is_null() { json!([]) } else { ports };
    (
        slice
            .get("addressType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        ports.to_string(),
    )
}

fn first_address(ep: &Value) -> Option<&str> {
    ep.pointer("/addresses/0").and_then(Value::as_str)
}

/// What one reconcile writes.
#[derive(Debug, Default)]
pub struct Plan {
    /// New slices (with generateName).
    pub create: Vec<Value>,
    /// Changed slices (with their resourceVersion).
    pub update: Vec<Value>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

struct Work<'a> {
    existing: Option<&'a Value>,
    key: GroupKey,
    addrs: BTreeSet<String>,
}

/// Decide the writes that turn `existing` (this service's managed slices)
/// into `desired`, moving as few endpoints as possible: an endpoint stays in
/// the slice that has it, new endpoints fill slices of their group with room
/// before a new slice is made, and only slices whose content differs are
/// written. With no endpoints at all, one empty slice of `placeholder`
/// family stays (Kubernetes' placeholder).
pub fn plan(svc: &Value, existing: &[Value], desired: &Desired, placeholder: Family) -> Plan {
    let mut existing: Vec<&Value> = existing.iter().collect();
    existing.sort_by_key(|s| object::meta_str(s, "name").unwrap_or("").to_string());
    let mut placed: HashSet<(GroupKey, String)> = HashSet::new();
    let mut work: Vec<Work> = Vec::new();
    for s in &existing {
        let key = slice_key(s);
        let mut addrs = BTreeSet::new();
        if let Some(want) = desired.get(&key) {
            for ep in s
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(a) = first_address(ep) else { continue };
                if addrs.len() < MAX_ENDPOINTS_PER_SLICE
                    && want.contains_key(a)
                    && placed.insert((key.clone(), a.to_string()))
                {
                    addrs.insert(a.to_string());
                }
            }
        }
        work.push(Work {
            existing: Some(s),
            key,
            addrs,
        });
    }
    for (key, want) in desired {
        let mut rest = want
            .keys()
            .filter(|a| !placed.contains(&(key.clone(), (*a).clone())))
            .cloned()
            .peekable();
        for w in work
            .iter_mut()
            .filter(|w| &w.key == key && !w.addrs.is_empty())
        {
            while w.addrs.len() < MAX_ENDPOINTS_PER_SLICE {
                match rest.next() {
                    Some(a) => {
                        w.addrs.insert(a);
                    }
                    None => break,
                }
            }
        }
        while rest.peek().is_some() {
            let addrs: BTreeSet<String> = rest.by_ref().take(MAX_ENDPOINTS_PER_SLICE).collect();
            work.push(Work {
                existing: None,
                key: key.clone(),
                addrs,
            });
        }
    }
    let mut out = Plan::default();
    let mut keep_placeholder = desired.values().all(|m| m.is_empty());
    for w in work {
        let (key, eps) = if w.addrs.is_empty() {
            if !keep_placeholder {
                if let Some(s) = w.existing {
                    out.delete
                        .push(object::meta_str(s, "name").unwrap_or("").to_string());
                }
                continue;
            }
            keep_placeholder = false;
            (
                (placeholder.address_type().to_string(), String::new()),
                Vec::new(),
            )
        } else {
            let want = &desired[&w.key];
            let eps: Vec<&SliceEndpoint> = w.addrs.iter().map(|a| &want[a]).collect();
            (w.key.clone(), eps)
        };
        let obj = slice_object(svc, w.existing, &key, &eps);
        match w.existing {
            None => out.create.push(obj),
            Some(s) if differs(s, &obj) => out.update.push(obj),
            Some(_) => {}
        }
    }
    if keep_placeholder {
        let key = (placeholder.address_type().to_string(), String::new());
        out.create.push(slice_object(svc, None, &key, &[]));
    }
    out
}

/// The slice for `key` holding `eps`, built on `existing` when reusing one.
fn slice_object(
    svc: &Value,
    existing: Option<&Value>,
    key: &GroupKey,
    eps: &[&SliceEndpoint],
) -> Value {
    let ns = object::meta_str(svc, "namespace").unwrap_or("default");
    let name = object::meta_str(svc, "name").unwrap_or("");
    let mut obj = existing.cloned().unwrap_or_else(|| {
        let prefix: String = name.chars().take(57).collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"generateName": format!("{prefix}-"), "namespace": ns},
        })
    });
    let meta = &mut obj["metadata"];
    let mut labels = meta
        .get("labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), json!(name));
    labels.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
    if svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None") {
        labels.insert("service.kubernetes.io/headless".into(), json!(""));
    } else {
        labels.remove("service.kubernetes.io/headless");
    }
    meta["labels"] = Value::Object(labels);
    let mut annotations = meta
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    annotations.remove(WEIGHTS_ANNOTATION);
    if eps.iter().any(|e| e.weight != 1) {
        let weights: BTreeMap<&str, u32> = eps
            .iter()
            .filter_map(|e| Some((first_address(&e.json)?, e.weight)))
            .collect();
        annotations.insert(
            WEIGHTS_ANNOTATION.into(),
            json!(serde_json::to_string(&weights).expect("a map serializes")),
        );
    }
    if annotations.is_empty() {
        if let Some(m) = meta.as_object_mut() {
            m.remove("annotations");
        }
    } else {
        meta["annotations"] = Value::Object(annotations);
    }
    meta["ownerReferences"] = json!([pods::controller_ref(svc)]);
    obj["addressType"] = json!(key.0);
    obj["endpoints"] = Value::Array(eps.iter().map(|e| e.json.clone()).collect());
    if key.1.is_empty() {
        if let Some(m) = obj.as_object_mut() {
            m.remove("ports");
        }
    } else {
        obj["ports"] = serde_json::from_str(&key.1).unwrap_or_else(|_| json!([]));
    }
    // Compare in the form the API stores (the typed codec drops what it does not know).
    (slice_info().codec)(obj.clone()).unwrap_or(obj)
}

fn differs(old: &Value, new: &Value) -> bool {
    let empty = json!([]);
    let arr = |v: &Value, k: &str| -> Value {
        match v.get(k) {
            None | Some(Value::Null) => empty.clone(),
            Some(x) => x.clone(),
        }
    };
    old.get("addressType") != new.get("addressType")
        || arr(old, "endpoints") != arr(new, "endpoints")
        || arr(old, "ports") != arr(new, "ports")
        || old.pointer("/metadata/labels") != new.pointer("/metadata/labels")
        || old.pointer("/metadata/annotations") != new.pointer("/metadata/annotations")
        || old.pointer("/metadata/ownerReferences") != new.pointer("/metadata/ownerReferences")
}

fn endpoints_info() -> &'static ResourceInfo {
    resources::lookup("", "v1", "endpoints").expect("endpoints are served")
}

/// The legacy core/v1 `Endpoints` of the service: one subset per distinct
/// port set, ready addresses and (not terminating) not-ready ones, as
/// Kubernetes' endpoints controller keeps it for older clients.
pub fn legacy_endpoints(svc: &Value, eps: &[PodEndpoint]) -> Value {
    let ns = object::meta_str(svc, "namespace").unwrap_or("default");
    let name = object::meta_str(svc, "name").unwrap_or("");
    let mut subsets: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut sorted: Vec<&PodEndpoint> = eps.iter().collect();
    sorted.sort_by(|a, b| a.address.cmp(&b.address));
    for e in sorted {
        if e.terminating && !e.ready {
            continue;
        }
        let mut a = json!({
            "ip": e.address,
            "targetRef": {"kind": "Pod", "namespace": ns, "name": e.pod_name, "uid": e.pod_uid},
        });
        if let Some(n) = &e.node {
            a["nodeName"] = json!(n);
        }
        if let Some(h) = &e.hostname {
            a["hostname"] = json!(h);
        }
        let entry = subsets
            .entry(Value::Array(e.ports.clone()).to_string())
            .or_default();
        if e.ready {
            entry.0.push(a);
        } else {
            entry.1.push(a);
        }
    }
    let subsets: Vec<Value> = subsets
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let mut s =
                json!({"ports": serde_json::from_str::<Value>(&ports).unwrap_or(json!([]))});
            if !ready.is_empty() {
                s["addresses"] = Value::Array(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = Value::Array(not_ready);
            }
            s
        })
        .collect();
    let obj = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"endpoints.kubernetes.io/managed-by": "endpoint-controller"},
            "ownerReferences": [pods::controller_ref(svc)]},
        "subsets": subsets,
    });
    (endpoints_info().codec)(obj.clone()).unwrap_or(obj)
}

/// What the controller remembers about a service, for mapping events.
#[derive(Clone)]
struct Indexed {
    selector: BTreeMap<String, String>,
    router: Option<String>,
}

/// Services by namespace and name.
type ServiceIndex = Mutex<HashMap<String, HashMap<String, Indexed>>>;
/// Node name → (resourceVersion, zone label).
type NodeZones = Mutex<HashMap<String, (u64, Option<String>)>>;

/// Routers and the node view they are fed from, behind one lock: calls run
/// one at a time under `spawn_blocking`.
#[derive(Default)]
struct RouterHost {
    routers: Routers,
    nodes: NodeView,
}

/// The EndpointSlice controller.
pub struct EndpointSliceController {
    index: Arc<ServiceIndex>,
    /// Zones from the node watch.
    zones: Arc<NodeZones>,
    nodes_dirty: Arc<AtomicBool>,
    host: Arc<Mutex<RouterHost>>,
    plugins: watch::Receiver<Arc<PluginSet>>,
}

impl EndpointSliceController {
    /// A controller that routes with the plugins published on `plugins`.
    pub fn new(plugins: watch::Receiver<Arc<PluginSet>>) -> EndpointSliceController {
        EndpointSliceController {
            index: Default::default(),
            zones: Default::default(),
            nodes_dirty: Arc::new(AtomicBool::new(true)),
            host: Default::default(),
            plugins,
        }
    }

    fn keys_where(index: &ServiceIndex, pick: impl Fn(&str, &Indexed) -> bool) -> Vec<ObjectKey> {
        let m = index.lock().expect("index lock");
        let mut out = Vec::new();
        for (ns, svcs) in m.iter() {
            for (name, i) in svcs {
                if pick(ns, i) {
                    out.push(ObjectKey {
                        namespace: Some(ns.clone()),
                        name: name.clone(),
                    });
                }
            }
        }
        out
    }

    fn set_index(&self, ns: &str, name: &str, entry: Option<Indexed>) {
        let mut m = self.index.lock().expect("index lock");
        match entry {
            Some(e) => {
                m.entry(ns.to_string())
                    .or_default()
                    .insert(name.to_string(), e);
            }
            None => {
                if let Some(svcs) = m.get_mut(ns) {
                    svcs.remove(name);
                    if svcs.is_empty() {
                        m.remove(ns);
                    }
                }
            }
        }
    }

    /// The router Plugin for `svc`, and whether the published set agrees
    /// with the Plugin objects (if not, the controller looks again soon: a
    /// change is on its way).
    fn choose_router(
        &self,
        client: &LocalClient,
        svc: &Value,
    ) -> Result<(Option<plugin_objects::PluginEntry>, bool), ApiError> {
        let set = self.plugins.borrow().clone();
        let wanted = svc
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ROUTER_ANNOTATION))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_ROUTER);
        let mut settled = true;
        let mut candidates = vec![wanted];
        if wanted != DEFAULT_ROUTER {
            candidates.push(DEFAULT_ROUTER);
        }
        for name in candidates {
            let obj = client.get(plugin_info(), None, name)?;
            let generation = obj
                .as_ref()
                .and_then(|o| o.pointer("/metadata/generation"))
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let usable = obj.as_ref().is_some_and(|o| {
                let failed = o.pointer("/status/state").and_then(Value::as_str) == Some("Failed")
                    && o.pointer("/status/observedGeneration")
                        .and_then(Value::as_i64)
                        == Some(generation);
                o.pointer("/spec/kind").and_then(Value::as_str) == Some("router")
                    && !pods::is_deleting(o)
                    && !failed
            });
            let live = set.get(name).filter(|e| e.kind == PluginKind::Router);
            match (usable, live) {
                (true, Some(e)) if e.generation == generation => {
                    return Ok((Some(e.clone()), settled))
                }
                (false, None) => {}
                _ => settled = false,
            }
        }
        Ok((None, settled))
    }

    /// Rebuild the routers' node view if nodes changed since the last one.
    fn refresh_nodes(&self, client: &LocalClient) -> Result<(), ApiError> {
        if !self.nodes_dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let listed = match client.list(node_info(), None, None) {
            Ok((l, _)) => l,
            Err(e) => {
                self.nodes_dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        let nodes = listed
            .iter()
            .map(|n| {
                (
                    object::meta_str(n, "name").unwrap_or("").to_string(),
                    object::meta_str(n, "resourceVersion")
                        .unwrap_or("")
                        .to_string(),
                    n.to_string(),
                )
            })
            .collect();
        self.host.lock().expect("router lock").nodes.replace(nodes);
        Ok(())
    }

    /// Route every family's endpoints with `entry`; a failure falls back
    /// to no hints and equal weights.
    async fn route(
        &self,
        client: &LocalClient,
        svc: &Value,
        entry: Option<plugin_objects::PluginEntry>,
        eps: &[PodEndpoint],
        families: &[Family],
    ) -> HashMap<String, Route> {
        let live: HashSet<String> = self.plugins.borrow().keys().cloned().collect();
        let Some(entry) = entry else {
            self.host
                .lock()
                .expect("router lock")
                .routers
                .retain(|n| live.contains(n));
            return HashMap::new();
        };
        if let Err(e) = self.refresh_nodes(client) {
            tracing::debug!(error = ?e.status()["message"], "endpointslices: listing nodes failed");
        }
        let per_family: Vec<Vec<RouterEndpoint>> = families
            .iter()
            .map(|f| {
                eps.iter()
                    .filter(|e| e.family == *f)
                    .map(PodEndpoint::for_router)
                    .collect()
            })
            .collect();
        let host = self.host.clone();
        let svc_json = svc.to_string();
        let e2 = routing::RouterPlugin::from(&entry);
        let result = tokio::task::spawn_blocking(move || {
            let mut h = host.lock().expect("router lock");
            let RouterHost { routers, nodes } = &mut *h;
            routers.retain(|n| live.contains(n));
            let mut out = Vec::new();
            for fam in per_family.iter().filter(|f| !f.is_empty()) {
                out.push(routers.routes(&e2, nodes, &svc_json, fam)?);
            }
            Ok::<_, RouterFailure>(out)
        })
        .await;
        let routes = match result {
            Ok(Ok(r)) => r.into_iter().flatten().collect::<Vec<_>>(),
            Ok(Err(failure)) => {
                let msg = format!(
                    "router {} failed: {failure}; using no hints and equal weights",
                    entry.name
                );
                tracing::warn!(service = ?object::meta_str(svc, "name"), "{msg}");
                events::record(client, COMPONENT, svc, "Warning", "RouterFailed", &msg).await;
                if let RouterFailure::Setup(e) = &failure {
                    let _ = plugin_objects::set_status(
                        client.state(),
                        &entry.name,
                        "Failed",
                        &e.to_string(),
                        Some(entry.generation),
                    )
                    .await;
                }
                let all: Vec<RouterEndpoint> = eps.iter().map(PodEndpoint::for_router).collect();
                routing::fallback(&all)
            }
            Err(e) => {
                tracing::warn!(error = %e, "endpointslices: router task failed");
                Vec::new()
            }
        };
        routes.into_iter().map(|r| (r.address.clone(), r)).collect()
    }

    async fn apply(&self, client: &LocalClient, ns: &str, plan: Plan) -> Result<(), ApiError> {
        for name in plan.delete {
            client
                .delete(slice_info(), Some(ns), &name, &json!({}))
                .await?;
        }
        for obj in plan.update {
            client.update(slice_info(), obj).await?;
        }
        for obj in plan.create {
            client.create(slice_info(), Some(ns), obj).await?;
        }
        Ok(())
    }

    /// Create or update the service's legacy Endpoints when it changed; an
    /// Endpoints object someone else made (no owner reference to this
    /// service) is left alone.
    async fn write_legacy(
        &self,
        client: &LocalClient,
        svc: &Value,
        eps: &[PodEndpoint],
    ) -> Result<(), ApiError> {
        let ns = object::meta_str(svc, "namespace");
        let name = object::meta_str(svc, "name").unwrap_or("");
        let want = legacy_endpoints(svc, eps);
        match client.get(endpoints_info(), ns, name)? {
            None => match client.create(endpoints_info(), ns, want).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            },
            Some(cur) => {
                let ours = pods::controller_of(&cur).and_then(|r| r.get("uid"))
                    == svc.pointer("/metadata/uid");
                let empty = json!([]);
                let subsets = |v: &Value| {
                    v.get("subsets")
                        .filter(|s| !s.is_null())
                        .unwrap_or(&empty)
                        .clone()
                };
                let label = "/metadata/labels/endpoints.kubernetes.io~1managed-by";
                if !ours
                    || (subsets(&cur) == subsets(&want)
                        && cur.pointer(label) == want.pointer(label))
                {
                    return Ok(());
                }
                let mut next = cur.clone();
                next["subsets"] = want["subsets"].clone();
                let mut labels = cur
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                labels.insert(
                    "endpoints.kubernetes.io/managed-by".into(),
                    json!("endpoint-controller"),
                );
                next["metadata"]["labels"] = Value::Object(labels);
                client.update(endpoints_info(), next).await.map(|_| ())
            }
        }
    }

    fn managed_slices(
        &self,
        client: &LocalClient,
        ns: &str,
        svc: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let (all, _) = client.list(slice_info(), Some(ns), None)?;
        Ok(all
            .into_iter()
            .filter(|s| {
                let l = s.pointer("/metadata/labels");
                l.and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .and_then(Value::as_str)
                    == Some(svc)
                    && l.and_then(|l| l.get(MANAGED_BY_LABEL))
                        .and_then(Value::as_str)
                        == Some(MANAGED_BY)
            })
            .collect())
    }
}

fn rv_of(o: &Value) -> u64 {
    object::meta_str(o, "resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

impl Reconciler for EndpointSliceController {
    fn name(&self) -> &'static str {
        "endpointslice"
    }

    fn watches(&self) -> Vec<Watch> {
        let pod_index = self.index.clone();
        let node_index = self.index.clone();
        let plugin_index = self.index.clone();
        let zones = self.zones.clone();
        let dirty = self.nodes_dirty.clone();
        vec![
            Watch::primary(svc_info()),
            Watch {
                resource: pod_info(),
                map: Arc::new(move |pod| {
                    let ns = object::meta_str(pod, "namespace").unwrap_or("");
                    let m = pod_index.lock().expect("index lock");
                    m.get(ns)
                        .into_iter()
                        .flatten()
                        .filter(|(_, i)| selects(&i.selector, pod))
                        .map(|(name, _)| ObjectKey {
                            namespace: Some(ns.to_string()),
                            name: name.clone(),
                        })
                        .collect()
                }),
            },
            Watch {
                resource: slice_info(),
                map: Arc::new(|s| {
                    let l = s.pointer("/metadata/labels");
                    let managed = l
                        .and_then(|l| l.get(MANAGED_BY_LABEL))
                        .and_then(Value::as_str)
                        == Some(MANAGED_BY);
                    l.and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .and_then(Value::as_str)
                        .filter(|_| managed)
                        .map(|svc| ObjectKey {
                            namespace: object::meta_str(s, "namespace").map(str::to_string),
                            name: svc.to_string(),
                        })
                        .into_iter()
                        .collect()
                }),
            },
            Watch {
                resource: node_info(),
                // Old and new versions both come through: the resourceVersion
                // tells which is current. A zone change re-routes everything.
                map: Arc::new(move |n| {
                    let Some(name) = object::meta_str(n, "name") else {
                        return Vec::new();
                    };
                    let rv = rv_of(n);
                    let zone = n
                        .pointer("/metadata/labels")
                        .and_then(|l| l.get(ZONE_LABEL))
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    let mut z = zones.lock().expect("zones lock");
                    if z.get(name).is_some_and(|(r, _)| *r >= rv) {
                        return Vec::new();
                    }
                    let old = z.insert(name.to_string(), (rv, zone.clone()));
                    drop(z);
                    dirty.store(true, Ordering::SeqCst);
                    let was = old.and_then(|(_, z)| z);
                    if was == zone {
                        return Vec::new();
                    }
                    Self::keys_where(&node_index, |_, _| true)
                }),
            },
            Watch {
                resource: plugin_info(),
                map: Arc::new(move |p| {
                    let Some(name) = object::meta_str(p, "name") else {
                        return Vec::new();
                    };
                    let name = name.to_string();
                    Self::keys_where(&plugin_index, |_, i| {
                        name == DEFAULT_ROUTER || i.router.as_deref() == Some(name.as_str())
                    })
                }),
            },
        ]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let ns = key.namespace.clone().unwrap_or_default();
        let Some(svc) = client.get(svc_info(), Some(&ns), &key.name)? else {
            // Garbage collection deletes the slices through their owner reference.
            self.set_index(&ns, &key.name, None);
            return Ok(Action::AwaitChange);
        };
        let Some(selector) = selector_of(&svc) else {
            // No selector (any more): its slices are the user's, ours go.
            self.set_index(&ns, &key.name, None);
            let plan = Plan {
                delete: self
                    .managed_slices(client, &ns, &key.name)?
                    .iter()
                    .filter_map(|s| object::meta_str(s, "name").map(str::to_string))
                    .collect(),
                ..Plan::default()
            };
            self.apply(client, &ns, plan).await?;
            if let Some(ep) = client.get(endpoints_info(), Some(&ns), &key.name)? {
                if pods::controller_of(&ep).and_then(|r| r.get("uid"))
                    == svc.pointer("/metadata/uid")
                {
                    let opts = json!({"preconditions": {"uid": object::meta_str(&ep, "uid")}});
                    match client
                        .delete(endpoints_info(), Some(&ns), &key.name, &opts)
                        .await
                    {
                        Ok(_) | Err(ApiError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            return Ok(Action::AwaitChange);
        };
        if pods::is_deleting(&svc) {
            return Ok(Action::AwaitChange);
        }
        let router_name = svc
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ROUTER_ANNOTATION))
            .and_then(Value::as_str)
            .map(str::to_string);
        self.set_index(
            &ns,
            &key.name,
            Some(Indexed {
                selector: selector.clone(),
                router: router_name,
            }),
        );
        let (all_pods, _) = client.list(pod_info(), Some(&ns), None)?;
        let selected: Vec<&Value> = all_pods.iter().filter(|p| selects(&selector, p)).collect();
        let fams = families(&svc, &selected);
        let zones: HashMap<String, String> = self
            .zones
            .lock()
            .expect("zones lock")
            .iter()
            .filter_map(|(n, (_, z))| Some((n.clone(), z.clone()?)))
            .collect();
        let eps = endpoints(&svc, &selected, &fams, &zones);
        let (entry, settled) = self.choose_router(client, &svc)?;
        let existing = self.managed_slices(client, &ns, &key.name)?;
        if entry.is_none() && !settled && !existing.is_empty() {
            // No router is live yet (the server is starting and the plugins
            // are compiling): keep the slices' hints and weights as they are
            // rather than flapping them to the fallback and back.
            return Ok(Action::Requeue(UNSETTLED_RETRY));
        }
        let routes = if eps.is_empty() {
            HashMap::new()
        } else {
            self.route(client, &svc, entry, &eps, &fams).await
        };
        let want = desired(&ns, &eps, &routes);
        let placeholder = fams.first().copied().unwrap_or(Family::V4);
        let plan = plan(&svc, &existing, &want, placeholder);
        self.apply(client, &ns, plan).await?;
        self.write_legacy(client, &svc, &eps).await?;
        Ok(if settled {
            Action::AwaitChange
        } else {
            Action::Requeue(UNSETTLED_RETRY)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(extra: Value) -> Value {
        let mut s = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "d", "uid": "svc-uid"},
            "spec": {"selector": {"app": "web"}, "ipFamilies": ["IPv4"],
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]},
        });
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                s["spec"][k] = v.clone();
            }
        }
        s
    }

    fn pod(name: &str, ips: &[&str], ready: bool, http_port: i64) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "d", "uid": format!("uid-{name}"), "labels": {"app": "web", "track": "stable"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": http_port}]}]},
            "status": {"phase": "Running", "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>(),
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    fn zones() -> HashMap<String, String> {
        HashMap::from([("n1".to_string(), "zone-a".to_string())])
    }

    #[test]
    fn selector_and_type_decide_management() {
        assert!(selector_of(&svc(json!({}))).is_some());
        assert!(selector_of(&svc(json!({"selector": {}}))).is_none());
        assert!(selector_of(&svc(json!({"selector": null}))).is_none());
        assert!(selector_of(&svc(json!({"type": "ExternalName"}))).is_none());
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let ready = pod("a", &["10.0.0.1"], true, 8080);
        let unready = pod("b", &["10.0.0.2"], false, 8080);
        let mut terminating = pod("c", &["10.0.0.3"], true, 8080);
        terminating["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let mut done = pod("d", &["10.0.0.4"], false, 8080);
        done["status"]["phase"] = json!("Succeeded");
        let no_ip = pod("e", &[], true, 8080);
        let s = svc(json!({}));
        let pods = [&ready, &unready, &terminating, &done, &no_ip];
        let eps = endpoints(&s, &pods, &[Family::V4], &zones());
        let c: Vec<_> = eps
            .iter()
            .map(|e| (e.address.as_str(), e.ready, e.serving, e.terminating))
            .collect();
        assert_eq!(
            c,
            [
                ("10.0.0.1", true, true, false),
                ("10.0.0.2", false, false, false),
                ("10.0.0.3", false, true, true),
            ]
        );
        assert_eq!(eps[0].zone.as_deref(), Some("zone-a"));
        assert_eq!(eps[0].node.as_deref(), Some("n1"));
        // publishNotReadyAddresses: always ready.
        let s = svc(json!({"publishNotReadyAddresses": true}));
        let eps = endpoints(&s, &pods, &[Family::V4], &zones());
        assert!(eps.iter().all(|e| e.ready && e.serving));
        let j = eps[2].to_json("d", None);
        assert_eq!(
            j["conditions"],
            json!({"ready": true, "serving": true, "terminating": true})
        );
        assert_eq!(j["targetRef"]["name"], "c");
        assert_eq!(j["zone"], "zone-a");
    }

    #[test]
    fn named_ports_resolve_per_pod_and_split_slices() {
        let s = svc(json!({}));
        let a = pod("a", &["10.0.0.1"], true, 8080);
        let b = pod("b", &["10.0.0.2"], true, 9090);
        let mut c = pod("c", &["10.0.0.3"], true, 8080);
        c["spec"]["containers"][0]["ports"] = json!([]);
        assert_eq!(
            resolve_ports(&s, &a),
            vec![
                json!({"name": "http", "port": 8080, "protocol": "TCP"}),
                json!({"name": "dns", "port": 5353, "protocol": "UDP"})
            ]
        );
        assert_eq!(
            resolve_ports(&s, &c),
            vec![json!({"name": "dns", "port": 5353, "protocol": "UDP"})]
        );
        let eps = endpoints(&s, &[&a, &b, &c], &[Family::V4], &zones());
        let want = desired("d", &eps, &HashMap::new());
        assert_eq!(want.len(), 3, "three distinct port sets: {:?}", want.keys());
        let p = plan(&s, &[], &want, Family::V4);
        assert_eq!(p.create.len(), 3);
        let ports: BTreeSet<String> = p.create.iter().map(|s| s["ports"].to_string()).collect();
        assert!(ports.iter().any(|p| p.contains("9090")));
        for s in &p.create {
            assert_eq!(s["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
            assert_eq!(s["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
            assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
            assert_eq!(s["metadata"]["ownerReferences"][0]["controller"], true);
            assert_eq!(s["addressType"], "IPv4");
        }
    }

    #[test]
    fn families_follow_the_service_or_the_pods() {
        let dual = pod("a", &["10.0.0.1", "fd00::1"], true, 8080);
        let v6 = pod("b", &["fd00::2"], true, 8080);
        let s = svc(json!({}));
        assert_eq!(families(&s, &[&dual]), [Family::V4]);
        let s6 = svc(json!({"ipFamilies": ["IPv6", "IPv4"]}));
        assert_eq!(families(&s6, &[&dual]), [Family::V6, Family::V4]);
        let headless = svc(json!({"ipFamilies": null, "clusterIP": "None"}));
        assert_eq!(families(&headless, &[&dual, &v6]), [Family::V4, Family::V6]);
        let eps = endpoints(&s6, &[&dual, &v6], &[Family::V6, Family::V4], &zones());
        let want = desired("d", &eps, &HashMap::new());
        let types: BTreeSet<&str> = want.keys().map(|k| k.0.as_str()).collect();
        assert_eq!(types, BTreeSet::from(["IPv4", "IPv6"]));
        let p = plan(&headless, &[], &want, Family::V4);
        assert!(p
            .create
            .iter()
            .all(|s| s["metadata"]["labels"]["service.kubernetes.io/headless"] == ""));
    }

    #[test]
    fn legacy_endpoints_group_by_ports() {
        let s = svc(json!({}));
        let a = pod("a", &["10.0.0.1"], true, 8080);
        let b = pod("b", &["10.0.0.2"], false, 8080);
        let c = pod("c", &["10.0.0.3"], true, 9090);
        let mut gone = pod("d", &["10.0.0.4"], true, 8080);
        gone["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let eps = endpoints(&s, &[&a, &b, &c, &gone], &[Family::V4], &zones());
        let e = legacy_endpoints(&s, &eps);
        let subsets = e["subsets"].as_array().unwrap();
        assert_eq!(subsets.len(), 2, "{subsets:?}");
        let p8080 = subsets
            .iter()
            .find(|s| s["ports"][0]["port"] == 8080)
            .unwrap();
        assert_eq!(p8080["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(p8080["notReadyAddresses"][0]["ip"], "10.0.0.2");
        assert_eq!(
            p8080["addresses"].as_array().unwrap().len(),
            1,
            "terminating pods are left out"
        );
        assert_eq!(e["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
    }

    #[test]
    fn hostname_for_pods_in_the_services_subdomain() {
        let s = svc(json!({}));
        let mut p = pod("a", &["10.0.0.1"], true, 8080);
        p["spec"]["hostname"] = json!("a-0");
        assert!(endpoints(&s, &[&p], &[Family::V4], &zones())[0]
            .hostname
            .is_none());
        p["spec"]["subdomain"] = json!("web");
        let e = &endpoints(&s, &[&p], &[Family::V4], &zones())[0];
        assert_eq!(e.to_json("d", None)["hostname"], "a-0");
    }

    /// Pretend the API stored what the plan wrote.
    fn store(p: &Plan, existing: Vec<Value>, next: &mut usize) -> Vec<Value> {
        let mut out: Vec<Value> = existing
            .into_iter()
            .filter(|s| {
                !p.delete
                    .contains(&s["metadata"]["name"].as_str().unwrap().to_string())
            })
            .map(|s| {
                p.update
                    .iter()
                    .find(|u| u["metadata"]["name"] == s["metadata"]["name"])
                    .cloned()
                    .unwrap_or(s)
            })
            .collect();
        for c in &p.create {
            let mut c = c.clone();
            *next += 1;
            c["metadata"]["name"] = json!(format!("web-{next:03}"));
            out.push(c);
        }
        out
    }

    fn many(n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &[&format!("10.0.{}.{}", i / 200, i % 200)],
                    true,
                    8080,
                )
            })
            .collect()
    }

    #[test]
    fn slices_hold_at_most_100_and_churn_is_minimal() {
        let s = svc(json!({}));
        let pods = many(250);
        let refs: Vec<&Value> = pods.iter().collect();
        let eps = endpoints(&s, &refs, &[Family::V4], &zones());
        let want = desired("d", &eps, &HashMap::new());
        let p = plan(&s, &[], &want, Family::V4);
        assert_eq!(p.create.len(), 3);
        let sizes: Vec<usize> = p
            .create
            .iter()
            .map(|s| s["endpoints"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        let mut n = 0;
        let stored = store(&p, Vec::new(), &mut n);

        // Same input: nothing to write.
        let p = plan(&s, &stored, &want, Family::V4);
        assert!(
            p.create.is_empty() && p.update.is_empty() && p.delete.is_empty(),
            "{p:?}"
        );

        // One pod turns unready: exactly one slice is rewritten.
        let mut pods2 = pods.clone();
        pods2[120]["status"]["conditions"][0]["status"] = json!("False");
        let refs: Vec<&Value> = pods2.iter().collect();
        let eps = endpoints(&s, &refs, &[Family::V4], &zones());
        let want2 = desired("d", &eps, &HashMap::new());
        let p = plan(&s, &stored, &want2, Family::V4);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));

        // One pod goes, one comes: the newcomer fills the slice with room, one update each.
        let mut pods3 = pods.clone();
        pods3.remove(5);
        pods3.push(pod("new", &["10.9.9.9"], true, 8080));
        let refs: Vec<&Value> = pods3.iter().collect();
        let eps = endpoints(&s, &refs, &[Family::V4], &zones());
        let want3 = desired("d", &eps, &HashMap::new());
        let p = plan(&s, &stored, &want3, Family::V4);
        assert_eq!(p.create.len(), 0);
        assert_eq!(p.update.len(), 1, "the newcomer takes the freed place");
        let stored3 = store(&p, stored.clone(), &mut n);
        let total: usize = stored3
            .iter()
            .map(|s| s["endpoints"].as_array().unwrap().len())
            .sum();
        assert_eq!(total, 250);
        assert!(stored3
            .iter()
            .all(|s| s["endpoints"].as_array().unwrap().len() <= MAX_ENDPOINTS_PER_SLICE));

        // Scale to 120: surplus slices go, the rest stay where they were.
        let refs: Vec<&Value> = pods.iter().take(120).collect();
        let eps = endpoints(&s, &refs, &[Family::V4], &zones());
        let want4 = desired("d", &eps, &HashMap::new());
        let p = plan(&s, &stored, &want4, Family::V4);
        assert_eq!(p.delete.len(), 1, "{p:?}");
        assert_eq!(p.create.len(), 0);
        let stored4 = store(&p, stored.clone(), &mut n);
        let total: usize = stored4
            .iter()
            .map(|s| s["endpoints"].as_array().unwrap().len())
            .sum();
        assert_eq!(total, 120);

        // Scale to 0: one empty placeholder remains.
        let p = plan(&s, &stored4, &Desired::new(), Family::V4);
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.update.len(), 1);
        let ph = &p.update[0];
        assert_eq!(ph["endpoints"], json!([]));
        assert!(ph.get("ports").is_none());
        let p = plan(&s, &[], &Desired::new(), Family::V6);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0]["addressType"], "IPv6");
    }

    #[test]
    fn routes_become_hints_and_weights() {
        let s = svc(json!({}));
        let pods = many(3);
        let refs: Vec<&Value> = pods.iter().collect();
        let eps = endpoints(&s, &refs, &[Family::V4], &zones());
        let route = |a: &str, w: u32, zones: &[&str], nodes: &[&str]| Route {
            address: a.into(),
            weight: w,
            for_zones: zones.iter().map(|z| z.to_string()).collect(),
            for_nodes: nodes.iter().map(|z| z.to_string()).collect(),
        };
        let routes: HashMap<String, Route> = [
            route("10.0.0.0", 1, &["zone-a"], &["n1"]),
            route("10.0.0.1", 1, &[], &[]),
            route("10.0.0.2", 1, &["zone-a"], &[]),
        ]
        .into_iter()
        .map(|r| (r.address.clone(), r))
        .collect();
        let p = plan(&s, &[], &desired("d", &eps, &routes), Family::V4);
        let slice = &p.create[0];
        assert!(
            slice.pointer("/metadata/annotations").is_none(),
            "all weights 1"
        );
        let eps_json = slice["endpoints"].as_array().unwrap();
        assert_eq!(
            eps_json[0]["hints"],
            json!({"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "n1"}]})
        );
        assert!(eps_json[1].get("hints").is_none());
        assert_eq!(
            eps_json[2]["hints"],
            json!({"forZones": [{"name": "zone-a"}]})
        );

        let mut weighted = routes.clone();
        weighted.get_mut("10.0.0.1").unwrap().weight = 9;
        weighted.get_mut("10.0.0.2").unwrap().weight = 0;
        let mut n = 0;
        let stored = store(
            &plan(&s, &[], &desired("d", &eps, &routes), Family::V4),
            Vec::new(),
            &mut n,
        );
        let p = plan(&s, &stored, &desired("d", &eps, &weighted), Family::V4);
        assert_eq!(p.update.len(), 1);
        let w: Value = serde_json::from_str(
            p.update[0]["metadata"]["annotations"][WEIGHTS_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(w, json!({"10.0.0.0": 1, "10.0.0.1": 9, "10.0.0.2": 0}));
        // Back to equal weights: the annotation goes again.
        let stored = store(&p, stored, &mut n);
        let p = plan(&s, &stored, &desired("d", &eps, &routes), Family::V4);
        assert_eq!(p.update.len(), 1);
        assert!(p.update[0].pointer("/metadata/annotations").is_none());
    }
}
