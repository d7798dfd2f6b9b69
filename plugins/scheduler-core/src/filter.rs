//! Filters: whether a node can run the pod at all.
//!
//! They run in Kubernetes' default order (NodeUnschedulable, NodeName,
//! TaintToleration, NodeAffinity, NodeResourcesFit, PodTopologySpread) and the
//! first that fails gives the node's reason, as Kubernetes stops at the first
//! failing filter.

use crate::candidate::Candidate;
use crate::objects::Taint;
use crate::taints;
use crate::topology::SpreadFilter;
use crate::view::{NodeEntry, View};

/// Reason for a node marked `spec.unschedulable`.
pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
/// Reason for a node other than the one in `spec.nodeName`.
pub const REASON_NODE_NAME: &str = "node(s) didn't match the requested node name";
/// Reason for a node outside the pod's node selector or required affinity.
pub const REASON_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
/// Reason for a handle the policy has not seen in a Node event.
pub const REASON_UNKNOWN_NODE: &str = "node(s) not in the scheduler's view";

/// NodeUnschedulable: an unschedulable node is off limits unless the pod
/// tolerates the `node.kubernetes.io/unschedulable:NoSchedule` taint.
fn node_unschedulable(pod: &Candidate, node: &NodeEntry) -> Option<String> {
    if !node.unschedulable {
        // The common case, without building the taint for every node.
        return None;
    }
    let taint = Taint {
        key: taints::UNSCHEDULABLE_KEY.to_owned(),
        value: String::new(),
        effect: "NoSchedule".to_owned(),
    };
    (!taints::tolerated(&pod.tolerations, &taint)).then(|| REASON_UNSCHEDULABLE.to_owned())
}

/// NodeName: a pod that already names a node fits only there.
fn node_name(pod: &Candidate, node: &NodeEntry) -> Option<String> {
    (!pod.node_name.is_empty() && pod.node_name != node.name).then(|| REASON_NODE_NAME.to_owned())
}

/// TaintToleration: every NoSchedule and NoExecute taint must be tolerated.
fn taint_toleration(pod: &Candidate, node: &NodeEntry) -> Option<String> {
    taints::first_untolerated_hard(&node.taints, &pod.tolerations)
        .map(|t| format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value))
}

/// NodeAffinity: `spec.nodeSelector` and required node affinity.
fn node_affinity(pod: &Candidate, node: &NodeEntry) -> Option<String> {
    (!pod.matches_node_affinity(node)).then(|| REASON_AFFINITY.to_owned())
}

/// NodeResourcesFit: the pod count, and cpu and memory requests against
/// allocatable minus what the node's pods already request. Several shortages
/// are reported together.
fn resources_fit(pod: &Candidate, node: &NodeEntry, view: &View) -> Option<String> {
    let used = &view.node_usage(node).requested;
    let alloc = &node.allocatable;
    let mut reasons = Vec::new();
    if used.pods + 1 > alloc.pods {
        reasons.push("Too many pods");
    }
    let want = &pod.requests;
    if want.milli_cpu > 0 && want.milli_cpu > alloc.milli_cpu - used.milli_cpu {
        reasons.push("Insufficient cpu");
    }
    if want.memory > 0 && want.memory > alloc.memory - used.memory {
        reasons.push("Insufficient memory");
    }
    (!reasons.is_empty()).then(|| reasons.join(", "))
}

/// Run every filter on each node; returns the rejected nodes with reasons.
pub(crate) fn filter(pod: &Candidate, view: &View, nodes: &[u32]) -> Vec<(u32, String)> {
    let spread = SpreadFilter::new(pod, view);
    let mut rejected = Vec::new();
    for &handle in nodes {
        let Some(node) = view.node(handle) else {
            rejected.push((handle, REASON_UNKNOWN_NODE.to_owned()));
            continue;
        };
        let reason = node_unschedulable(pod, node)
            .or_else(|| node_name(pod, node))
            .or_else(|| taint_toleration(pod, node))
            .or_else(|| node_affinity(pod, node))
            .or_else(|| resources_fit(pod, node, view))
            .or_else(|| spread.check(pod, node).map(str::to_owned));
        if let Some(reason) = reason {
            rejected.push((handle, reason));
        }
    }
    rejected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bound_pod, candidate, labeled_node, node, pod, view_of};
    use serde_json::{json, Value};

    /// Reasons for handles 1..=n, `None` for nodes that pass.
    fn reasons(view: &View, p: &Value) -> Vec<Option<String>> {
        let handles: Vec<u32> = (1..=view.node_count() as u32).collect();
        let rejected = filter(&candidate(p), view, &handles);
        handles
            .iter()
            .map(|h| {
                rejected
                    .iter()
                    .find(|(n, _)| n == h)
                    .map(|(_, r)| r.clone())
            })
            .collect()
    }

    fn small_pod(spec_extra: Value) -> Value {
        let mut spec =
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]});
        for (k, v) in spec_extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        pod("p", spec)
    }

    #[test]
    fn node_unschedulable() {
        let mut cordoned = node("n2", "4", "8Gi", "110");
        cordoned["spec"] = json!({"unschedulable": true});
        let view = view_of(&[node("n1", "4", "8Gi", "110"), cordoned], &[]);
        assert_eq!(
            reasons(&view, &small_pod(json!({}))),
            vec![None, Some(REASON_UNSCHEDULABLE.to_owned())]
        );
        let tolerant = small_pod(json!({"tolerations": [
            {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
        ]}));
        assert_eq!(reasons(&view, &tolerant), vec![None, None]);
    }

    #[test]
    fn node_name() {
        let view = view_of(
            &[node("n1", "4", "8Gi", "110"), node("n2", "4", "8Gi", "110")],
            &[],
        );
        let pinned = small_pod(json!({"nodeName": "n2"}));
        assert_eq!(
            reasons(&view, &pinned),
            vec![Some(REASON_NODE_NAME.to_owned()), None]
        );
    }

    #[test]
    fn taint_toleration() {
        let tainted = |effect: &str| {
            let mut n = node("t", "4", "8Gi", "110");
            n["spec"] = json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": effect}]});
            n
        };
        let view = view_of(
            &[
                tainted("NoSchedule"),
                tainted("NoExecute"),
                tainted("PreferNoSchedule"),
            ],
            &[],
        );
        let reason = Some("node(s) had untolerated taint {dedicated: gpu}".to_owned());
        assert_eq!(
            reasons(&view, &small_pod(json!({}))),
            vec![reason.clone(), reason.clone(), None]
        );
        let tolerates_equal = small_pod(json!({"tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
        ]}));
        assert_eq!(reasons(&view, &tolerates_equal), vec![None, reason, None]);
        let tolerates_all = small_pod(json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(reasons(&view, &tolerates_all), vec![None, None, None]);
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let view = view_of(
            &[
                labeled_node("n1", "4", "8Gi", json!({"zone": "a", "disk": "ssd"})),
                labeled_node("n2", "4", "8Gi", json!({"zone": "b"})),
                labeled_node("n3", "4", "8Gi", json!({"zone": "c", "disk": "hdd"})),
            ],
            &[],
        );
        let no = Some(REASON_AFFINITY.to_owned());
        let by_selector = small_pod(json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(
            reasons(&view, &by_selector),
            vec![None, no.clone(), no.clone()]
        );

        // Terms are OR'ed; expressions within a term AND'ed.
        let by_terms = small_pod(json!({"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a", "c"]},
                    {"key": "disk", "operator": "NotIn", "values": ["ssd"]}
                ]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}
            ]}
        }}}));
        assert_eq!(reasons(&view, &by_terms), vec![no.clone(), None, None]);

        // The selector and the affinity must both hold.
        let mut both = by_terms.clone();
        both["spec"]["nodeSelector"] = json!({"zone": "c"});
        assert_eq!(reasons(&view, &both), vec![no.clone(), no.clone(), None]);

        let no_terms = small_pod(json!({"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}
        }}}));
        assert_eq!(reasons(&view, &no_terms), vec![no.clone(), no.clone(), no]);
    }

    #[test]
    fn resources_fit() {
        let view = view_of(
            &[
                node("n1", "2", "4Gi", "110"),
                node("n2", "4", "1Gi", "110"),
                node("n3", "4", "8Gi", "1"),
            ],
            &[
                bound_pod("used1", "n1", "1500m", "1Gi", json!({})),
                bound_pod("used3", "n3", "0", "0", json!({})),
            ],
        );
        let want = |cpu: &str, mem: &str| {
            pod(
                "p",
                json!({"containers": [
                    {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}
                ]}),
            )
        };
        // n1 has 500m and 3Gi free; n2 4 cpus but 1Gi; n3 is out of pod slots.
        assert_eq!(
            reasons(&view, &want("1", "2Gi")),
            vec![
                Some("Insufficient cpu".to_owned()),
                Some("Insufficient memory".to_owned()),
                Some("Too many pods".to_owned())
            ]
        );
        // Exactly the free amount fits.
        assert_eq!(reasons(&view, &want("500m", "3Gi"))[0], None);
        assert_eq!(
            reasons(&view, &want("501m", "3073Mi"))[0].as_deref(),
            Some("Insufficient cpu, Insufficient memory")
        );
        // An init container's larger request is what counts.
        let init_heavy = pod(
            "p",
            json!({
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}],
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "600m"}}}]
            }),
        );
        assert_eq!(
            reasons(&view, &init_heavy)[0].as_deref(),
            Some("Insufficient cpu")
        );
        // A pod that requests nothing only needs a pod slot.
        let empty = pod("p", json!({"containers": [{"name": "c"}]}));
        assert_eq!(
            reasons(&view, &empty),
            vec![None, None, Some("Too many pods".to_owned())]
        );
    }

    #[test]
    fn first_failing_filter_gives_the_reason() {
        let mut n = node("n1", "1", "1Gi", "110");
        n["spec"] = json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]});
        let view = view_of(&[n], &[]);
        let big = pod(
            "p",
            json!({"containers": [
                {"name": "c", "resources": {"requests": {"cpu": "8"}}}
            ]}),
        );
        assert_eq!(
            reasons(&view, &big),
            vec![Some("node(s) had untolerated taint {k: v}".to_owned())]
        );
    }

    #[test]
    fn unknown_handles_are_rejected() {
        let view = view_of(&[node("n1", "1", "1Gi", "110")], &[]);
        let rejected = filter(&candidate(&small_pod(json!({}))), &view, &[1, 42]);
        assert_eq!(rejected, vec![(42, REASON_UNKNOWN_NODE.to_owned())]);
    }
}
