//! The policy's view of the cluster: nodes by handle and the pods bound to
//! them, kept up to date from object events.

use std::collections::HashMap;

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

/// Nodes and bound pods, updated incrementally by [`View::apply`].
#[derive(Debug, Default)]
pub struct View {
    nodes: HashMap<u32, NodeEntry>,
    /// Usage by node name: pods name their node, and may arrive before it.
    usage: HashMap<String, NodeUsage>,
    /// Pod key → node name, for removal.
    pod_nodes: HashMap<String, String>,
    /// Pod handle → pod key, so a delete finds the pod even if its key changed.
    pod_keys: HashMap<u32, String>,
    /// Returned for a node with nothing bound.
    no_usage: NodeUsage,
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
            self.nodes.remove(&handle);
            return;
        }
        let Ok(node) = serde_json::from_str::<objects::Node>(object) else {
            return;
        };
        let entry = NodeEntry {
            allocatable: resources::node_allocatable(&node.status),
            name: node.metadata.name,
            labels: node.metadata.labels,
            taints: node.spec.taints,
            unschedulable: node.spec.unschedulable,
        };
        self.nodes.insert(handle, entry);
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
        let node_name = pod.spec.node_name;
        let usage = self.usage.entry(node_name.clone()).or_default();
        usage.requested.add(&bound.requests);
        usage.non_zero.add(&bound.non_zero);
        usage.pods.insert(key.clone(), bound);
        self.pod_nodes.insert(key.clone(), node_name);
        self.pod_keys.insert(handle, key);
    }

    fn remove_pod(&mut self, key: &str) {
        let Some(node_name) = self.pod_nodes.remove(key) else {
            return;
        };
        let Some(usage) = self.usage.get_mut(&node_name) else {
            return;
        };
        if let Some(pod) = usage.pods.remove(key) {
            usage.requested.sub(&pod.requests);
            usage.non_zero.sub(&pod.non_zero);
        }
        if usage.pods.is_empty() {
            self.usage.remove(&node_name);
        }
    }

    pub(crate) fn node(&self, handle: u32) -> Option<&NodeEntry> {
        self.nodes.get(&handle)
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// What is bound to the node named `name` (empty if nothing).
    pub(crate) fn usage(&self, name: &str) -> &NodeUsage {
        self.usage.get(name).unwrap_or(&self.no_usage)
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
        self.node(handle).map(|n| self.usage(&n.name).requested)
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
