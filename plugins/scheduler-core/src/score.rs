//! Scores: how good each feasible node is for the pod, 0..=100.
//!
//! Each score plugin is normalized across the nodes of one call, as
//! Kubernetes normalizes across the nodes that passed filtering, and the
//! policy's score is the equal-weight mean of the plugins that apply to the
//! pod. A plugin that cannot tell nodes apart for this pod (no preferred
//! affinity, no ScheduleAnyway constraint, no PreferNoSchedule taint to
//! avoid) is left out of the mean rather than adding a constant to every node.

use crate::candidate::Candidate;
use crate::config::ScoreStrategy;
use crate::selector;
use crate::taints;
use crate::topology;
use crate::view::{NodeEntry, View};

/// Highest score of a node.
pub const MAX_SCORE: i64 = 100;

/// `(allocatable - requested) * 100 / allocatable`; 0 when over-committed.
fn least_requested(requested: i64, allocatable: i64) -> i64 {
    if allocatable <= 0 || requested > allocatable {
        return 0;
    }
    (allocatable - requested) * MAX_SCORE / allocatable
}

/// `requested * 100 / allocatable`, capped at 100.
fn most_requested(requested: i64, allocatable: i64) -> i64 {
    if allocatable <= 0 {
        return 0;
    }
    requested.min(allocatable) * MAX_SCORE / allocatable
}

/// NodeResourcesFit scoring: cpu and memory with weight 1 each, counting the
/// node's pods and this pod with the scoring defaults (100m, 200Mi) for
/// containers that request nothing. A resource the node has none of is left
/// out, as Kubernetes does.
pub(crate) fn resource_score(
    pod: &Candidate,
    node: &NodeEntry,
    view: &View,
    strategy: ScoreStrategy,
) -> u32 {
    let used = &view.node_usage(node).non_zero;
    let pairs = [
        (
            used.milli_cpu + pod.non_zero.milli_cpu,
            node.allocatable.milli_cpu,
        ),
        (used.memory + pod.non_zero.memory, node.allocatable.memory),
    ];
    let (mut sum, mut weights) = (0, 0);
    for (requested, allocatable) in pairs {
        if allocatable == 0 {
            continue;
        }
        sum += match strategy {
            ScoreStrategy::LeastAllocated => least_requested(requested, allocatable),
            ScoreStrategy::MostAllocated => most_requested(requested, allocatable),
        };
        weights += 1;
    }
    if weights == 0 {
        0
    } else {
        (sum / weights) as u32
    }
}

/// Scale raw scores so the largest becomes 100 (`reverse`: so the largest
/// becomes 0 and zero becomes 100), as Kubernetes' default normalization.
fn normalize(raw: &[i64], reverse: bool) -> Vec<u32> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|&s| {
            if max <= 0 {
                return if reverse {
                    MAX_SCORE as u32
                } else {
                    s.max(0) as u32
                };
            }
            let scaled = MAX_SCORE * s / max;
            let scaled = if reverse { MAX_SCORE - scaled } else { scaled };
            scaled.clamp(0, MAX_SCORE) as u32
        })
        .collect()
}

/// Preferred node affinity: the sum of the weights of matching preferred
/// terms, normalized. `None` when the pod prefers nothing.
pub(crate) fn affinity_scores(pod: &Candidate, nodes: &[Option<&NodeEntry>]) -> Option<Vec<u32>> {
    if pod.preferred_terms.iter().all(|t| t.weight == 0) {
        return None;
    }
    let raw: Vec<i64> = nodes
        .iter()
        .map(|node| {
            node.map_or(0, |n| {
                pod.preferred_terms
                    .iter()
                    .filter(|t| t.weight != 0)
                    .filter(|t| selector::term_matches(&t.preference, &n.labels, &n.name))
                    .map(|t| i64::from(t.weight))
                    .sum()
            })
        })
        .collect();
    Some(normalize(&raw, false))
}

/// TaintToleration scoring: fewer untolerated PreferNoSchedule taints is
/// better. `None` when no node has such a taint for this pod.
pub(crate) fn taint_scores(pod: &Candidate, nodes: &[Option<&NodeEntry>]) -> Option<Vec<u32>> {
    let raw: Vec<i64> = nodes
        .iter()
        .map(|node| {
            node.map_or(0, |n| {
                taints::untolerated_soft(&n.taints, &pod.tolerations) as i64
            })
        })
        .collect();
    if raw.iter().all(|&r| r == 0) {
        return None;
    }
    let mut scores = normalize(&raw, true);
    for (score, node) in scores.iter_mut().zip(nodes) {
        if node.is_none() {
            *score = 0;
        }
    }
    Some(scores)
}

/// The policy's score for each node, in the order given; unknown handles 0.
pub(crate) fn score(
    pod: &Candidate,
    view: &View,
    handles: &[u32],
    strategy: ScoreStrategy,
) -> Vec<u32> {
    let nodes: Vec<Option<&NodeEntry>> = handles.iter().map(|&h| view.node(h)).collect();
    let resources: Vec<u32> = nodes
        .iter()
        .map(|n| n.map_or(0, |n| resource_score(pod, n, view, strategy)))
        .collect();
    let parts: Vec<Vec<u32>> = [
        Some(resources),
        affinity_scores(pod, &nodes),
        taint_scores(pod, &nodes),
        topology::spread_scores(pod, view, &nodes),
    ]
    .into_iter()
    .flatten()
    .collect();
    let count = parts.len() as u32;
    (0..nodes.len())
        .map(|i| match nodes[i] {
            None => 0,
            Some(_) => {
                let sum: u32 = parts.iter().map(|p| p[i]).sum();
                (sum + count / 2) / count
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bound_pod, candidate, labeled_node, node, pod, view_of};
    use serde_json::{json, Value};

    fn wants(cpu: &str, mem: &str) -> Value {
        pod(
            "p",
            json!({"containers": [
                {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}
            ]}),
        )
    }

    fn resource_scores(view: &View, p: &Value, strategy: ScoreStrategy) -> Vec<u32> {
        let c = candidate(p);
        (1..=view.node_count() as u32)
            .map(|h| resource_score(&c, view.node(h).unwrap(), view, strategy))
            .collect()
    }

    fn two_nodes_one_busy() -> View {
        view_of(
            &[node("n1", "4", "8Gi", "110"), node("n2", "4", "8Gi", "110")],
            &[bound_pod("busy", "n1", "2", "2Gi", json!({}))],
        )
    }

    #[test]
    fn least_allocated_prefers_free_nodes() {
        let view = two_nodes_one_busy();
        // n1: cpu (4-3)/4 = 25, memory (8-4)/8 = 50 -> 37; n2: 75 and 75.
        assert_eq!(
            resource_scores(&view, &wants("1", "2Gi"), ScoreStrategy::LeastAllocated),
            vec![37, 75]
        );
        // More than the node has scores 0.
        assert_eq!(
            resource_scores(&view, &wants("3", "2Gi"), ScoreStrategy::LeastAllocated),
            vec![25, 50]
        );
    }

    #[test]
    fn most_allocated_prefers_full_nodes() {
        let view = two_nodes_one_busy();
        // n1: cpu 3/4 = 75, memory 4/8 = 50 -> 62; n2: 25 and 25.
        assert_eq!(
            resource_scores(&view, &wants("1", "2Gi"), ScoreStrategy::MostAllocated),
            vec![62, 25]
        );
        // Over-commit is capped at 100 per resource.
        assert_eq!(
            resource_scores(&view, &wants("8", "2Gi"), ScoreStrategy::MostAllocated),
            vec![75, 62]
        );
    }

    #[test]
    fn missing_requests_count_as_defaults_when_scoring() {
        let view = view_of(&[node("n1", "1", "1Gi", "110")], &[]);
        let best_effort = pod("p", json!({"containers": [{"name": "c"}]}));
        // 100m of 1000m -> 90; 200Mi of 1024Mi -> 80.
        assert_eq!(
            resource_scores(&view, &best_effort, ScoreStrategy::LeastAllocated),
            vec![85]
        );
        // A node with no memory at all is scored on cpu alone.
        let view = view_of(&[node("n1", "1", "0", "110")], &[]);
        assert_eq!(
            resource_scores(&view, &best_effort, ScoreStrategy::LeastAllocated),
            vec![90]
        );
    }

    #[test]
    fn preferred_affinity_is_normalized_weight() {
        let view = view_of(
            &[
                labeled_node("n1", "4", "8Gi", json!({"disk": "ssd", "zone": "a"})),
                labeled_node("n2", "4", "8Gi", json!({"zone": "a"})),
                labeled_node("n3", "4", "8Gi", json!({})),
            ],
            &[],
        );
        let mut p = wants("1", "1Gi");
        p["spec"]["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 60, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
            {"weight": 20, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}
        ]}});
        let c = candidate(&p);
        let nodes: Vec<_> = (1..=3).map(|h| view.node(h)).collect();
        // Raw 80, 20, 0; the best becomes 100.
        assert_eq!(affinity_scores(&c, &nodes), Some(vec![100, 25, 0]));
        // Combined with the (equal) resource score of 81: mean.
        assert_eq!(
            score(&c, &view, &[1, 2, 3], ScoreStrategy::LeastAllocated),
            vec![91, 53, 41]
        );
        assert_eq!(
            affinity_scores(&candidate(&wants("1", "1Gi")), &nodes),
            None
        );
    }

    #[test]
    fn fewer_untolerated_prefer_no_schedule_taints_score_higher() {
        let taints = |list: Value| {
            let mut n = node("n", "4", "8Gi", "110");
            n["spec"] = json!({ "taints": list });
            n
        };
        let view = view_of(
            &[
                taints(json!([
                    {"key": "a", "value": "1", "effect": "PreferNoSchedule"},
                    {"key": "b", "value": "1", "effect": "PreferNoSchedule"}
                ])),
                taints(json!([{"key": "a", "value": "1", "effect": "PreferNoSchedule"}])),
                taints(json!([{"key": "c", "value": "1", "effect": "NoSchedule"}])),
            ],
            &[],
        );
        let nodes: Vec<_> = (1..=3).map(|h| view.node(h)).collect();
        let plain = candidate(&wants("1", "1Gi"));
        assert_eq!(taint_scores(&plain, &nodes), Some(vec![0, 50, 100]));
        let mut tolerant = wants("1", "1Gi");
        tolerant["spec"]["tolerations"] = json!([{"key": "b", "operator": "Exists"}]);
        assert_eq!(
            taint_scores(&candidate(&tolerant), &nodes),
            Some(vec![0, 0, 100])
        );
        tolerant["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
        assert_eq!(
            taint_scores(&candidate(&tolerant), &nodes),
            None,
            "nothing to avoid"
        );
    }

    #[test]
    fn unknown_nodes_score_zero() {
        let view = view_of(&[node("n1", "4", "8Gi", "110")], &[]);
        let c = candidate(&wants("1", "1Gi"));
        assert_eq!(
            score(&c, &view, &[7, 1], ScoreStrategy::LeastAllocated),
            vec![0, 81]
        );
    }
}
