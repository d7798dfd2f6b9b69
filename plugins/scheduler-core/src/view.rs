//! The policy's view of the cluster: nodes by handle and the pods bound to
//! them, kept up to date from object events.
//!
//! Filter and score look at a few hundred nodes per call, so reaching a
//! node's usage must be cheap: nodes are found by handle with a one-multiply
//! hash (handles are host-assigned counters, not user input), and each node
//! carries the index of its usage slot, so no node name is hashed or compared
//! per node per call. Usage is kept by node name in slots because pods name
//! their node and may arrive before it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::objects::{self, Labels, Taint};
use crate::resources::{self, Resources};

/// A node as the policy sees it.
#[derive(Debug, Clone)]
pub(crate) struct NodeEntry {
    pub name: String,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    /// Index of the node's usage slot (see [`View::node_usage`]).
    slot: usize,
}

/// A pod bound to a node, reduced to what scheduling others needs.
#[derive(Debug, Clone)]
pub(crate) struct BoundPod {
    pub namespace: String,
    pub labels: Labels,
    pub terminating: bool,
    /// Effective requests (`pods` = 1).
    pub requests: Resources,
    /// Requests with the scoring defaults for missing cpu/memory.
    pub non_zero: Resources,
}

/// Everything bound to one node name.
#[derive(Debug, Default)]
pub(crate) struct NodeUsage {
    /// Sum of the pods' effective requests; `pods` is their count.
    pub requested: Resources,
    /// Sum of the pods' requests with scoring defaults.
    pub non_zero: Resources,
    /// The pods, by pod key.
    pub pods: HashMap<String, BoundPod>,
}

/// The usage of one node name, referenced by the nodes of that name (by
/// index) and by the pods bound there; freed when neither is left.
#[derive(Debug, Default)]
struct UsageSlot {
    name: String,
    /// Node entries that point at this slot (normally 0 or 1).
    nodes: usize,
    usage: NodeUsage,
}

/// Hash for host handles: a multiply by an odd constant, enough for
/// sequential `u32` counters (hashbrown takes the bucket from the low bits,
/// which differ for consecutive handles, and its tag from the mixed top bits).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HandleHasher(u64);

const HANDLE_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for HandleHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(HANDLE_MUL);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(32) ^ u64::from(n)).wrapping_mul(HANDLE_MUL);
    }
}

/// A map keyed by host handle.
type HandleMap<V> = HashMap<u32, V, BuildHasherDefault<HandleHasher>>;

/// Nodes and bound pods, updated incrementally by [`View::apply`].
#[derive(Debug, Default)]
pub struct View {
    nodes: HandleMap<NodeEntry>,
    /// Node name → index into `slots`.
    slot_of: HashMap<String, usize>,
    slots: Vec<UsageSlot>,
    /// Indexes of unused `slots`, for reuse.
    free_slots: Vec<usize>,
    /// Pod key → its node's slot, for removal.
    pod_nodes: HashMap<String, usize>,
    /// Pod handle → pod key, so a delete finds the pod even if its key changed.
    pod_keys: HandleMap<String>,
}

impl View {
    /// An empty view.
    pub fn new() -> View {
        View::default()
    }

    /// Apply one object event. Kinds other than "Node" and "Pod" are ignored,
    /// and so is an object that does not parse (a pod that no longer parses
    /// leaves the view).
    pub fn apply(&mut self, kind: &str, handle: u32, deleted: bool, object: &str) {
        match kind {
            "Node" => self.apply_node(handle, deleted, object),
            "Pod" => self.apply_pod(handle, deleted, object),
            _ => {}
        }
    }

    fn apply_node(&mut self, handle: u32, deleted: bool, object: &str) {
        if deleted {
            if let Some(old) = self.nodes.remove(&handle) {
                self.release_node(old.slot);
            }
            return;
        }
        let Ok(node) = serde_json::from_str::<objects::Node>(object) else {
            return;
        };
        let slot = self.slot_for(&node.metadata.name);
        self.slots[slot].nodes += 1;
        let entry = NodeEntry {
            allocatable: resources::node_allocatable(&node.status),
            name: node.metadata.name,
            labels: node.metadata.labels,
            taints: node.spec.taints,
            unschedulable: node.spec.unschedulable,
            slot,
        };
        if let Some(old) = self.nodes.insert(handle, entry) {
            self.release_node(old.slot);
        }
    }

    fn apply_pod(&mut self, handle: u32, deleted: bool, object: &str) {
        if let Some(old_key) = self.pod_keys.remove(&handle) {
            self.remove_pod(&old_key);
        }
        let Ok(pod) = serde_json::from_str::<objects::Pod>(object) else {
            return;
        };
        let key = pod_key(&pod.metadata);
        self.remove_pod(&key);
        let finished = matches!(pod.status.phase.as_str(), "Succeeded" | "Failed");
        if deleted || finished || pod.spec.node_name.is_empty() {
            return;
        }
        let bound = BoundPod {
            requests: resources::pod_requests(&pod.spec, false),
            non_zero: resources::pod_requests(&pod.spec, true),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            namespace: pod.metadata.namespace,
            labels: pod.metadata.labels,
        };
        let slot = self.slot_for(&pod.spec.node_name);
        let usage = &mut self.slots[slot].usage;
        usage.requested.add(&bound.requests);
        usage.non_zero.add(&bound.non_zero);
        usage.pods.insert(key.clone(), bound);
        self.pod_nodes.insert(key.clone(), slot);
        self.pod_keys.insert(handle, key);
    }

    fn remove_pod(&mut self, key: &str) {
        let Some(slot) = self.pod_nodes.remove(key) else {
            return;
        };
        let usage = &mut self.slots[slot].usage;
        if let Some(pod) = usage.pods.remove(key) {
            usage.requested.sub(&pod.requests);
            usage.non_zero.sub(&pod.non_zero);
        }
        self.free_if_unused(slot);
    }

    /// The slot of node name `name`, allocated if there is none.
    fn slot_for(&mut self, name: &str) -> usize {
        if let Some(&slot) = self.slot_of.get(name) {
            return slot;
        }
        let fresh = UsageSlot {
            name: name.to_owned(),
            ..UsageSlot::default()
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot] = fresh;
                slot
            }
            None => {
                self.slots.push(fresh);
                self.slots.len() - 1
            }
        };
        self.slot_of.insert(name.to_owned(), slot);
        slot
    }

    /// A node entry pointing at `slot` went away.
    fn release_node(&mut self, slot: usize) {
        self.slots[slot].nodes -= 1;
        self.free_if_unused(slot);
    }

    /// Frees `slot` once no node and no pod refers to it.
    fn free_if_unused(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if s.nodes > 0 || !s.usage.pods.is_empty() {
            return;
        }
        let name = std::mem::take(&mut s.name);
        s.usage = NodeUsage::default();
        self.slot_of.remove(&name);
        self.free_slots.push(slot);
    }

    pub(crate) fn node(&self, handle: u32) -> Option<&NodeEntry> {
        self.nodes.get(&handle)
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// What is bound to the node's name (no name is hashed: the entry
    /// holds its slot).
    pub(crate) fn node_usage(&self, node: &NodeEntry) -> &NodeUsage {
        &self.slots[node.slot].usage
    }

    /// Number of nodes in the view.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of bound pods in the view.
    pub fn pod_count(&self) -> usize {
        self.pod_nodes.len()
    }

    /// The allocatable resources of the node with `handle`.
    pub fn allocatable(&self, handle: u32) -> Option<Resources> {
        self.node(handle).map(|n| n.allocatable)
    }

    /// The summed requests (and pod count) of the pods bound to `handle`.
    pub fn requested(&self, handle: u32) -> Option<Resources> {
        self.node(handle).map(|n| self.node_usage(n).requested)
    }

    /// Allocatable minus requested for the node with `handle`.
    pub fn free(&self, handle: u32) -> Option<Resources> {
        let mut free = self.allocatable(handle)?;
        free.sub(&self.requested(handle)?);
        Some(free)
    }
}

/// A pod's identity in the view: its uid, or namespace/name without one.
fn pod_key(meta: &objects::ObjectMeta) -> String {
    if meta.uid.is_empty() {
        format!("{}/{}", meta.namespace, meta.name)
    } else {
        meta.uid.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};
    use serde_json::json;

    fn bound(name: &str, node_name: &str, cpu: &str, mem: &str) -> String {
        let mut p = pod(
            name,
            json!({"containers": [
                {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}
            ]}),
        );
        p["spec"]["nodeName"] = json!(node_name);
        p.to_string()
    }

    fn free(view: &View, handle: u32) -> (i64, i64, i64) {
        let f = view.free(handle).unwrap();
        (f.milli_cpu, f.memory, f.pods)
    }

    #[test]
    fn binding_a_pod_uses_the_nodes_resources_and_removal_restores_them() {
        let mut view = View::new();
        view.apply("Node", 1, false, &node("n1", "4", "8Gi", "10").to_string());
        assert_eq!(free(&view, 1), (4000, 8 << 30, 10));

        let p = bound("a", "n1", "1500m", "1Gi");
        view.apply("Pod", 7, false, &p);
        assert_eq!(free(&view, 1), (2500, 7 << 30, 9));
        assert_eq!(view.pod_count(), 1);

        // An update of the same pod replaces its contribution.
        view.apply("Pod", 7, false, &bound("a", "n1", "500m", "1Gi"));
        assert_eq!(free(&view, 1), (3500, 7 << 30, 9));

        view.apply("Pod", 7, true, &p);
        assert_eq!(free(&view, 1), (4000, 8 << 30, 10));
        assert_eq!(view.pod_count(), 0);
    }

    #[test]
    fn removing_one_of_several_pods_subtracts_only_it() {
        let mut view = View::new();
        view.apply("Node", 1, false, &node("n1", "4", "8Gi", "10").to_string());
        view.apply("Pod", 1, false, &bound("a", "n1", "1", "1Gi"));
        view.apply("Pod", 2, false, &bound("b", "n1", "2", "2Gi"));
        assert_eq!(free(&view, 1), (1000, 5 << 30, 8));
        view.apply("Pod", 1, true, &bound("a", "n1", "1", "1Gi"));
        assert_eq!(free(&view, 1), (2000, 6 << 30, 9));
        let requested = view.requested(1).unwrap();
        assert_eq!((requested.milli_cpu, requested.pods), (2000, 1));
    }

    #[test]
    fn pods_may_arrive_before_their_node() {
        let mut view = View::new();
        view.apply("Pod", 1, false, &bound("a", "n1", "1", "1Gi"));
        view.apply("Node", 9, false, &node("n1", "2", "2Gi", "5").to_string());
        assert_eq!(free(&view, 9), (1000, 1 << 30, 4));
    }

    #[test]
    fn unbound_and_finished_pods_are_not_counted() {
        let mut view = View::new();
        view.apply("Node", 1, false, &node("n1", "2", "2Gi", "5").to_string());
        let unbound = pod(
            "u",
            json!({"containers": [
                {"name": "c", "resources": {"requests": {"cpu": "1"}}}
            ]}),
        );
        view.apply("Pod", 2, false, &unbound.to_string());
        let mut done: serde_json::Value =
            serde_json::from_str(&bound("d", "n1", "1", "0")).unwrap();
        done["status"] = json!({"phase": "Succeeded"});
        view.apply("Pod", 3, false, &done.to_string());
        assert_eq!(free(&view, 1), (2000, 2 << 30, 5));

        // A running pod that then finishes gives its resources back.
        view.apply("Pod", 4, false, &bound("r", "n1", "1", "0"));
        assert_eq!(free(&view, 1).0, 1000);
        let mut finished: serde_json::Value =
            serde_json::from_str(&bound("r", "n1", "1", "0")).unwrap();
        finished["status"] = json!({"phase": "Failed"});
        view.apply("Pod", 4, false, &finished.to_string());
        assert_eq!(free(&view, 1).0, 2000);
    }

    #[test]
    fn usage_follows_the_node_name_through_renames_deletes_and_reuse() {
        let mut view = View::new();
        view.apply("Pod", 1, false, &bound("a", "n1", "1", "0"));
        view.apply("Node", 9, false, &node("n1", "4", "2Gi", "5").to_string());
        // The same handle renamed: it no longer sees n1's pod.
        view.apply("Node", 9, false, &node("n2", "4", "2Gi", "5").to_string());
        assert_eq!(free(&view, 9).0, 4000);
        view.apply("Pod", 2, false, &bound("b", "n2", "2", "0"));
        assert_eq!(free(&view, 9).0, 2000);
        // Deleting the node keeps its pods' usage for when it comes back.
        view.apply("Node", 9, true, "{}");
        view.apply("Node", 3, false, &node("n2", "4", "2Gi", "5").to_string());
        assert_eq!(free(&view, 3).0, 2000);
        // n1 lost its last pod and has no node: its slot is reused by n3,
        // which starts empty.
        view.apply("Pod", 1, true, "");
        view.apply("Node", 4, false, &node("n3", "4", "2Gi", "5").to_string());
        assert_eq!(free(&view, 4), (4000, 2 << 30, 5));
        assert_eq!(free(&view, 3).0, 2000);
        view.apply("Node", 5, false, &node("n1", "8", "2Gi", "5").to_string());
        assert_eq!(free(&view, 5).0, 8000);
        assert_eq!(view.pod_count(), 1);
    }

    #[test]
    fn node_updates_and_deletes() {
        let mut view = View::new();
        view.apply("Node", 1, false, &node("n1", "2", "2Gi", "5").to_string());
        view.apply("Node", 1, false, &node("n1", "4", "2Gi", "5").to_string());
        assert_eq!(view.allocatable(1).unwrap().milli_cpu, 4000);
        view.apply("Node", 1, true, "{}");
        assert!(view.allocatable(1).is_none());
        assert_eq!(view.node_count(), 0);
        view.apply("Secret", 1, false, "{}");
        assert_eq!(view.node_count(), 0);
    }

    #[test]
    fn delete_by_handle_even_with_unreadable_object() {
        let mut view = View::new();
        view.apply("Node", 1, false, &node("n1", "2", "2Gi", "5").to_string());
        view.apply("Pod", 5, false, &bound("a", "n1", "1", "0"));
        view.apply("Pod", 5, true, "not json");
        assert_eq!(free(&view, 1).0, 2000);
    }
}
