//! The proxy's memory: Services and EndpointSlices by key, the node's view,
//! and the fragments last applied. Changes mark services dirty; [`Proxier::sync`]
//! recomputes only those, diffs them against what was applied and sends one
//! transaction. The first sync, and the one after a failed transaction,
//! rewrites both tables whole.

use super::model::{self, NodeView};
use super::nft::{Nft, NftError};
use super::rules::{self, Fragments, SharedPlan, SharedRefs};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// Nothing changed.
    Nothing,
    /// An incremental transaction for this many services.
    Changed(usize),
    /// Both tables rewritten.
    Full,
}

/// Desired and applied proxy state.
#[derive(Default)]
pub struct Proxier {
    node: NodeView,
    pod_cidrs: Vec<String>,
    services: HashMap<String, Arc<Service>>,
    /// slice `namespace/name` → (service key, slice).
    slices: HashMap<String, (String, Arc<EndpointSlice>)>,
    /// service key → its slices' keys.
    by_service: HashMap<String, BTreeSet<String>>,
    applied: HashMap<String, Fragments>,
    applied_node: Fragments,
    /// Users of the shared chains and elements, as applied.
    shared: SharedRefs,
    dirty: HashSet<String>,
    node_dirty: bool,
    full: bool,
}

fn object_key(ns: Option<&str>, name: Option<&str>) -> String {
    format!("{}/{}", ns.unwrap_or("default"), name.unwrap_or_default())
}

impl Proxier {
    /// An empty proxier for node `node`; the first sync is a full one.
    pub fn new(node: NodeView) -> Proxier {
        Proxier {
            node,
            full: true,
            node_dirty: true,
            ..Default::default()
        }
    }

    /// Whether a sync has work to do.
    pub fn pending(&self) -> bool {
        self.full || self.node_dirty || !self.dirty.is_empty()
    }

    /// Number of services known.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The node's name or zone changed: every service may select differently.
    pub fn set_node(&mut self, node: NodeView) {
        if node != self.node {
            self.node = node;
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    /// The pod network's ranges (all nodes' podCIDRs).
    pub fn set_pod_cidrs(&mut self, mut cidrs: Vec<String>) {
        cidrs.sort();
        cidrs.dedup();
        if cidrs != self.pod_cidrs {
            self.pod_cidrs = cidrs;
            self.node_dirty = true;
        }
    }

    /// A Service was added or changed.
    pub fn apply_service(&mut self, svc: Service) {
        let key = model::service_key(&svc);
        self.dirty.insert(key.clone());
        self.services.insert(key, Arc::new(svc));
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, svc: &Service) {
        let key = model::service_key(svc);
        self.services.remove(&key);
        self.dirty.insert(key);
    }

    /// An EndpointSlice was added or changed.
    pub fn apply_slice(&mut self, slice: EndpointSlice) {
        let key = object_key(
            slice.metadata.namespace.as_deref(),
            slice.metadata.name.as_deref(),
        );
        self.forget_slice(&key);
        let Some(svc) = model::slice_service_key(&slice) else {
            return;
        };
        self.by_service
            .entry(svc.clone())
            .or_default()
            .insert(key.clone());
        self.dirty.insert(svc.clone());
        self.slices.insert(key, (svc, Arc::new(slice)));
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        let key = object_key(
            slice.metadata.namespace.as_deref(),
            slice.metadata.name.as_deref(),
        );
        self.forget_slice(&key);
    }

    fn forget_slice(&mut self, key: &str) {
        if let Some((svc, _)) = self.slices.remove(key) {
            if let Some(set) = self.by_service.get_mut(&svc) {
                set.remove(key);
                if set.is_empty() {
                    self.by_service.remove(&svc);
                }
            }
            self.dirty.insert(svc);
        }
    }

    /// Replace all Services (after a watch relist).
    pub fn replace_services(&mut self, list: Vec<Service>) {
        self.dirty.extend(self.services.keys().cloned());
        self.services.clear();
        for s in list {
            self.apply_service(s);
        }
    }

    /// Replace all EndpointSlices (after a watch relist).
    pub fn replace_slices(&mut self, list: Vec<EndpointSlice>) {
        self.dirty.extend(self.by_service.keys().cloned());
        self.slices.clear();
        self.by_service.clear();
        for s in list {
            self.apply_slice(s);
        }
    }

    /// Rewrite both tables at the next sync.
    pub fn force_full(&mut self) {
        self.full = true;
    }

    fn fragments_for(&self, key: &str) -> Fragments {
        let Some(svc) = self.services.get(key) else {
            return Fragments::default();
        };
        let slices: Vec<&EndpointSlice> = self
            .by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .map(|(_, s)| s.as_ref())
            .collect();
        rules::service_fragments(&model::service_ports(svc, &slices, &self.node))
    }

    /// The script the next sync would send (without sending it), and
    /// the state to commit if it succeeds.
    fn plan(&mut self) -> Plan {
        let node = rules::node_fragments(&self.pod_cidrs);
        let empty = Fragments::default();
        if self.full {
            let computed: Vec<(String, Fragments)> = self
                .services
                .keys()
                .map(|k| (k.clone(), self.fragments_for(k)))
                .collect();
            let pairs: Vec<(&Fragments, &Fragments)> =
                computed.iter().map(|(_, f)| (&empty, f)).collect();
            let shared = SharedRefs::default().plan(&pairs);
            let script = rules::full_script(
                [&node, &shared.created]
                    .into_iter()
                    .chain(computed.iter().map(|(_, f)| f)),
            );
            return Plan {
                script: Some(script),
                kind: Synced::Full,
                computed,
                node,
                shared,
            };
        }
        let computed: Vec<(String, Fragments)> = self
            .dirty
            .iter()
            .map(|k| (k.clone(), self.fragments_for(k)))
            .collect();
        let mut pairs: Vec<(&Fragments, &Fragments)> = computed
            .iter()
            .map(|(k, f)| (self.applied.get(k).unwrap_or(&empty), f))
            .collect();
        let shared = self.shared.plan(&pairs);
        pairs.push((&self.applied_node, &node));
        let changed = pairs.iter().filter(|(o, n)| o != n).count();
        pairs.push((&shared.removed, &shared.created));
        let script = rules::diff_script(&pairs);
        let kind = if script.is_some() {
            Synced::Changed(changed)
        } else {
            Synced::Nothing
        };
        Plan {
            script,
            kind,
            computed,
            node,
            shared,
        }
    }

    /// Bring the kernel's tables up to date with one transaction. On
    /// failure nothing was applied and the next sync is a full one.
    pub fn sync(&mut self, nft: &dyn Nft) -> Result<Synced, NftError> {
        if !self.pending() {
            return Ok(Synced::Nothing);
        }
        let plan = self.plan();
        if let Some(script) = &plan.script {
            if let Err(e) = nft.apply(script) {
                self.full = true;
                return Err(e);
            }
        }
        if plan.kind == Synced::Full {
            self.applied.clear();
            self.shared = SharedRefs::default();
        }
        self.shared.commit(plan.shared);
        for (k, f) in plan.computed {
            if f == Fragments::default() {
                self.applied.remove(&k);
            } else {
                self.applied.insert(k, f);
            }
        }
        self.applied_node = plan.node;
        self.dirty.clear();
        self.node_dirty = false;
        self.full = false;
        Ok(plan.kind)
    }
}

/// One sync's transaction and the state it leads to.
struct Plan {
    script: Option<String>,
    kind: Synced,
    computed: Vec<(String, Fragments)>,
    node: Fragments,
    shared: SharedPlan,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::nft::RecordingNft;
    use serde_json::json;

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns1"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap()
    }

    fn slice(svc: &str, ips: &[&str]) -> EndpointSlice {
        let eps: Vec<_> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": "ns1",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps
        }))
        .unwrap()
    }

    fn last(nft: &RecordingNft) -> String {
        nft.scripts
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn full_then_incremental_then_full_after_failure() {
        let nft = RecordingNft::default();
        let mut p = Proxier::new(NodeView {
            name: "n1".into(),
            zone: None,
        });
        for i in 0..50 {
            p.apply_service(svc(&format!("s{i}"), &format!("10.96.0.{}", i + 1)));
            p.apply_slice(slice(&format!("s{i}"), &["10.1.0.2", "10.1.0.3"]));
        }
        assert_eq!(p.sync(&nft).unwrap(), Synced::Full);
        assert!(last(&nft).contains("delete table ip shoal-proxy"));
        assert_eq!(p.sync(&nft).unwrap(), Synced::Nothing);
        assert_eq!(nft.scripts.lock().unwrap().len(), 1);

        // One endpoint change touches one service only.
        p.apply_slice(slice("s7", &["10.1.0.2", "10.1.0.9"]));
        assert_eq!(p.sync(&nft).unwrap(), Synced::Changed(1));
        let s = last(&nft);
        assert!(s.contains("10.1.0.9") && !s.contains("table"), "{s}");
        assert!(
            s.contains("service-endpoints { 10.96.0.8 . tcp . 80 . 1 }") && !s.contains("chain"),
            "the service's one changed bucket only: {s}"
        );
        assert!(
            s.contains("add element ip shoal-proxy hairpin { 10.1.0.9 . 10.1.0.9 }"),
            "a new endpoint's hairpin element: {s}"
        );
        assert!(
            !s.contains("delete element ip shoal-proxy hairpin"),
            "10.1.0.3 still backs 49 other services: {s}"
        );
        // The same object again: nothing to do.
        p.apply_slice(slice("s7", &["10.1.0.2", "10.1.0.9"]));
        assert_eq!(p.sync(&nft).unwrap(), Synced::Nothing);

        // Deleting the slice leaves the service without endpoints: reject.
        p.delete_slice(&slice("s7", &[]));
        p.sync(&nft).unwrap();
        assert!(last(&nft).contains("add element ip shoal-proxy no-endpoint-services { 10.96.0.8 . tcp . 80 : goto reject-chain }"));

        // A failed transaction: the next sync rewrites everything.
        *nft.fail_next.lock().unwrap() = true;
        p.delete_service(&svc("s3", "10.96.0.4"));
        assert!(p.sync(&nft).is_err());
        assert_eq!(p.sync(&nft).unwrap(), Synced::Full);
        assert!(
            !last(&nft).contains("10.96.0.4 "),
            "deleted service still there"
        );

        // Zone change re-evaluates every service (here: no difference).
        p.set_node(NodeView {
            name: "n1".into(),
            zone: Some("a".into()),
        });
        assert_eq!(p.sync(&nft).unwrap(), Synced::Nothing);
        p.set_pod_cidrs(vec!["10.1.0.0/24".into(), "fd00:1::/64".into()]);
        assert_eq!(p.sync(&nft).unwrap(), Synced::Changed(1));
        assert!(last(&nft).contains("add element ip6 shoal-proxy pod-cidrs { fd00:1::/64 }"));
    }
}
