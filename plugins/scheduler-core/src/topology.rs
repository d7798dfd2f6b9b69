//! PodTopologySpread: the DoNotSchedule filter and the ScheduleAnyway score.

use std::collections::HashMap;

use crate::candidate::{Candidate, Spread};
use crate::selector::Selector;
use crate::taints;
use crate::view::{NodeEntry, NodeUsage, View};

/// Well-known node label that names the node itself.
const HOSTNAME_KEY: &str = "kubernetes.io/hostname";

/// Rejection when a node's domain would exceed `maxSkew`.
pub(crate) const REASON_SKEW: &str = "node(s) didn't match pod topology spread constraints";
/// Rejection when a node lacks a constraint's topology key.
pub(crate) const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// Whether a node carries every constraint's topology key.
fn has_all_keys(node: &NodeEntry, constraints: &[Spread]) -> bool {
    constraints
        .iter()
        .all(|c| node.labels.contains_key(&c.topology_key))
}

/// Whether a node's pods count toward a constraint (its inclusion policies).
fn included(c: &Spread, pod: &Candidate, node: &NodeEntry) -> bool {
    (!c.honor_affinity || pod.matches_node_affinity(node))
        && (!c.honor_taints
            || taints::first_untolerated_hard(&node.taints, &pod.tolerations).is_none())
}

/// Pods on a node in `namespace` that the selector matches, not counting
/// terminating ones. A selector without requirements counts nothing, as in
/// Kubernetes.
fn count_matching(usage: &NodeUsage, selector: &Selector, namespace: &str) -> i64 {
    if selector.is_everything() {
        return 0;
    }
    usage
        .pods
        .values()
        .filter(|p| !p.terminating && p.namespace == namespace && selector.matches(&p.labels))
        .count() as i64
}

/// Matching pod counts per topology domain, for the filter.
pub(crate) struct SpreadFilter {
    /// Per hard constraint: domain value → matching pods.
    counts: Vec<HashMap<String, i64>>,
}

impl SpreadFilter {
    /// Count matching pods per domain over every node of the view.
    pub fn new(pod: &Candidate, view: &View) -> SpreadFilter {
        let constraints = &pod.hard_spread;
        let mut counts = vec![HashMap::new(); constraints.len()];
        if constraints.is_empty() {
            return SpreadFilter { counts };
        }
        for node in view.nodes() {
            if !has_all_keys(node, constraints) {
                continue;
            }
            let usage = view.node_usage(node);
            for (c, domains) in constraints.iter().zip(counts.iter_mut()) {
                if !included(c, pod, node) {
                    continue;
                }
                let n = count_matching(usage, &c.selector, &pod.namespace);
                *domains
                    .entry(node.labels[&c.topology_key].clone())
                    .or_insert(0) += n;
            }
        }
        SpreadFilter { counts }
    }

    /// The rejection reason for `node`, if placing the pod there would break
    /// a constraint: domain count + (1 if the pod matches itself) - the
    /// global minimum must not exceed `maxSkew`.
    pub fn check(&self, pod: &Candidate, node: &NodeEntry) -> Option<&'static str> {
        for (c, domains) in pod.hard_spread.iter().zip(&self.counts) {
            let Some(value) = node.labels.get(&c.topology_key) else {
                return Some(REASON_MISSING_LABEL);
            };
            // Fewer eligible domains than minDomains: the global minimum is 0.
            let min = if (domains.len() as i64) < i64::from(c.min_domains) {
                0
            } else {
                domains.values().copied().min().unwrap_or(0)
            };
            let own = i64::from(c.selector.matches(&pod.labels));
            let here = domains.get(value).copied().unwrap_or(0);
            if here + own - min > i64::from(c.max_skew) {
                return Some(REASON_SKEW);
            }
        }
        None
    }
}

/// ScheduleAnyway scores for `nodes` (unknown handles are `None`), already
/// normalized to 0..=100: fewer matching pods in a node's domains is better.
/// `None` when the pod has no ScheduleAnyway constraint.
pub(crate) fn spread_scores(
    pod: &Candidate,
    view: &View,
    nodes: &[Option<&NodeEntry>],
) -> Option<Vec<u32>> {
    let constraints = &pod.soft_spread;
    if constraints.is_empty() {
        return None;
    }
    // Nodes lacking a topology key are not scored (they get 0).
    let ignored: Vec<bool> = nodes
        .iter()
        .map(|n| n.is_none_or(|n| !has_all_keys(n, constraints)))
        .collect();
    let scored_nodes = ignored.iter().filter(|i| !**i).count();

    // Domains present among the candidates, per constraint (hostname domains
    // are counted per node instead).
    let mut domains: Vec<HashMap<&str, i64>> = vec![HashMap::new(); constraints.len()];
    for node in nodes
        .iter()
        .zip(&ignored)
        .filter(|(_, i)| !**i)
        .filter_map(|(n, _)| *n)
    {
        for (c, d) in constraints.iter().zip(domains.iter_mut()) {
            if c.topology_key != HOSTNAME_KEY {
                d.entry(node.labels[&c.topology_key].as_str()).or_insert(0);
            }
        }
    }
    // Smaller topologies weigh more: ln(domain count + 2).
    let weights: Vec<f64> = constraints
        .iter()
        .zip(&domains)
        .map(|(c, d)| {
            let size = if c.topology_key == HOSTNAME_KEY {
                scored_nodes
            } else {
                d.len()
            };
            ((size + 2) as f64).ln()
        })
        .collect();

    for node in view.nodes() {
        if !has_all_keys(node, constraints) {
            continue;
        }
        let usage = view.node_usage(node);
        for (c, d) in constraints.iter().zip(domains.iter_mut()) {
            if c.topology_key == HOSTNAME_KEY || !included(c, pod, node) {
                continue;
            }
            if let Some(count) = d.get_mut(node.labels[&c.topology_key].as_str()) {
                *count += count_matching(usage, &c.selector, &pod.namespace);
            }
        }
    }

    let raw: Vec<Option<i64>> = nodes
        .iter()
        .zip(&ignored)
        .map(|(node, ignored)| {
            let node = node.filter(|_| !ignored)?;
            let mut score = 0.0;
            for ((c, d), w) in constraints.iter().zip(&domains).zip(&weights) {
                let value = node.labels[&c.topology_key].as_str();
                let count = if c.topology_key == HOSTNAME_KEY {
                    count_matching(view.node_usage(node), &c.selector, &pod.namespace)
                } else {
                    d.get(value).copied().unwrap_or(0)
                };
                score += count as f64 * w + f64::from(c.max_skew - 1);
            }
            Some(score.round() as i64)
        })
        .collect();

    let min = raw.iter().flatten().copied().min().unwrap_or(0);
    let max = raw.iter().flatten().copied().max().unwrap_or(0).max(0);
    Some(
        raw.iter()
            .map(|s| match *s {
                None => 0,
                Some(_) if max == 0 => 100,
                Some(s) => (100 * (max + min - s) / max).clamp(0, 100) as u32,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bound_pod, candidate, labeled_node, pod, view_of};
    use serde_json::{json, Value};

    fn web(name: &str, node: &str) -> Value {
        bound_pod(name, node, "0", "0", json!({"app": "web"}))
    }

    fn spread_pod(constraint: Value, extra: Value) -> Value {
        let mut spec =
            json!({"containers": [{"name": "c"}], "topologySpreadConstraints": [constraint]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let mut p = pod("new", spec);
        p["metadata"]["labels"] = json!({"app": "web"});
        p
    }

    fn zone_constraint(when: &str) -> Value {
        json!({
            "maxSkew": 1,
            "topologyKey": "zone",
            "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": {"app": "web"}}
        })
    }

    /// Zones a (n1), b (n2), c (n3): 2, 1 and 0 matching pods.
    fn zones() -> View {
        view_of(
            &[
                labeled_node("n1", "4", "8Gi", json!({"zone": "a", "tier": "x"})),
                labeled_node("n2", "4", "8Gi", json!({"zone": "b", "tier": "x"})),
                labeled_node("n3", "4", "8Gi", json!({"zone": "c"})),
                labeled_node("n4", "4", "8Gi", json!({})),
            ],
            &[web("w1", "n1"), web("w2", "n1"), web("w3", "n2")],
        )
    }

    fn check_all(view: &View, p: &Value) -> Vec<Option<&'static str>> {
        let c = candidate(p);
        let f = SpreadFilter::new(&c, view);
        (1..=4)
            .map(|h| f.check(&c, view.node(h).unwrap()))
            .collect()
    }

    #[test]
    fn filter_keeps_skew_within_max() {
        let view = zones();
        let p = spread_pod(zone_constraint("DoNotSchedule"), json!({}));
        // a: 2+1-0 > 1, b: 1+1-0 > 1, c: 0+1-0 = 1, n4 has no zone label.
        assert_eq!(
            check_all(&view, &p),
            vec![
                Some(REASON_SKEW),
                Some(REASON_SKEW),
                None,
                Some(REASON_MISSING_LABEL)
            ]
        );
        let mut loose = zone_constraint("DoNotSchedule");
        loose["maxSkew"] = json!(2);
        let p = spread_pod(loose, json!({}));
        assert_eq!(check_all(&view, &p)[..3], [Some(REASON_SKEW), None, None]);
    }

    #[test]
    fn filter_counts_only_nodes_the_pod_could_use() {
        let view = zones();
        // With nodeSelector tier=x, zone c is not a domain: min is b's 1, so
        // a (2+1-1) is rejected and b (1+1-1) passes.
        let p = spread_pod(
            zone_constraint("DoNotSchedule"),
            json!({"nodeSelector": {"tier": "x"}}),
        );
        assert_eq!(check_all(&view, &p)[..2], [Some(REASON_SKEW), None]);
        // nodeAffinityPolicy Ignore counts zone c again: min 0, b rejected.
        let mut ignore = zone_constraint("DoNotSchedule");
        ignore["nodeAffinityPolicy"] = json!("Ignore");
        let p = spread_pod(ignore, json!({"nodeSelector": {"tier": "x"}}));
        assert_eq!(
            check_all(&view, &p)[..2],
            [Some(REASON_SKEW), Some(REASON_SKEW)]
        );
    }

    #[test]
    fn filter_honors_taints_policy() {
        let mut tainted = labeled_node("n3", "4", "8Gi", json!({"zone": "c"}));
        tainted["spec"] = json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]});
        let view = view_of(
            &[
                labeled_node("n1", "4", "8Gi", json!({"zone": "a"})),
                labeled_node("n2", "4", "8Gi", json!({"zone": "b"})),
                tainted,
            ],
            &[web("w1", "n1"), web("w2", "n2")],
        );
        let c = |policy: &str| {
            let mut k = zone_constraint("DoNotSchedule");
            k["nodeTaintsPolicy"] = json!(policy);
            candidate(&spread_pod(k, json!({})))
        };
        // Ignore (default): zone c counts with 0 pods, so a is rejected.
        let ignore = c("Ignore");
        let f = SpreadFilter::new(&ignore, &view);
        assert_eq!(f.check(&ignore, view.node(1).unwrap()), Some(REASON_SKEW));
        // Honor: the tainted zone c is not a domain, min is 1, a passes.
        let honor = c("Honor");
        let f = SpreadFilter::new(&honor, &view);
        assert_eq!(f.check(&honor, view.node(1).unwrap()), None);
    }

    #[test]
    fn filter_min_domains() {
        let view = view_of(
            &[
                labeled_node("n1", "4", "8Gi", json!({"zone": "a"})),
                labeled_node("n2", "4", "8Gi", json!({"zone": "b"})),
            ],
            &[web("w1", "n1"), web("w2", "n2")],
        );
        let p = spread_pod(zone_constraint("DoNotSchedule"), json!({}));
        let c = candidate(&p);
        let f = SpreadFilter::new(&c, &view);
        assert_eq!(f.check(&c, view.node(1).unwrap()), None, "1+1-1 = 1");
        // Two domains but minDomains 3: the global minimum counts as 0.
        let mut k = zone_constraint("DoNotSchedule");
        k["minDomains"] = json!(3);
        let c = candidate(&spread_pod(k, json!({})));
        let f = SpreadFilter::new(&c, &view);
        assert_eq!(f.check(&c, view.node(1).unwrap()), Some(REASON_SKEW));
    }

    #[test]
    fn filter_ignores_other_namespaces_terminating_pods_and_non_matching_self() {
        let mut other_ns = web("o1", "n1");
        other_ns["metadata"]["namespace"] = json!("other");
        let mut leaving = web("o2", "n1");
        leaving["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let view = view_of(
            &[
                labeled_node("n1", "4", "8Gi", json!({"zone": "a"})),
                labeled_node("n2", "4", "8Gi", json!({"zone": "b"})),
            ],
            &[other_ns, leaving, web("w1", "n1")],
        );
        let p = spread_pod(zone_constraint("DoNotSchedule"), json!({}));
        let c = candidate(&p);
        let f = SpreadFilter::new(&c, &view);
        // Only w1 counts: a is 1+1-0 = 2 > 1.
        assert_eq!(f.check(&c, view.node(1).unwrap()), Some(REASON_SKEW));
        // A pod its own selector does not match adds nothing: 1+0-0 = 1.
        let mut stranger = p.clone();
        stranger["metadata"]["labels"] = json!({"app": "db"});
        let c = candidate(&stranger);
        let f = SpreadFilter::new(&c, &view);
        assert_eq!(f.check(&c, view.node(1).unwrap()), None);
    }

    #[test]
    fn an_empty_selector_counts_no_pods() {
        // Kubernetes counts nothing for a selector without requirements, while
        // the pod still matches itself: every node has skew 1.
        let view = zones();
        let mut k = zone_constraint("DoNotSchedule");
        k["labelSelector"] = json!({});
        let p = spread_pod(k, json!({}));
        assert_eq!(check_all(&view, &p)[..3], [None, None, None]);
    }

    #[test]
    fn filter_match_label_keys_narrow_the_selector() {
        let mut v1 = web("w1", "n1");
        v1["metadata"]["labels"]["rev"] = json!("1");
        let view = view_of(
            &[
                labeled_node("n1", "4", "8Gi", json!({"zone": "a"})),
                labeled_node("n2", "4", "8Gi", json!({"zone": "b"})),
            ],
            &[v1],
        );
        let mut k = zone_constraint("DoNotSchedule");
        k["matchLabelKeys"] = json!(["rev"]);
        let mut p = spread_pod(k, json!({}));
        p["metadata"]["labels"]["rev"] = json!("2");
        let c = candidate(&p);
        let f = SpreadFilter::new(&c, &view);
        // The rev=1 pod is not counted for a rev=2 pod.
        assert_eq!(f.check(&c, view.node(1).unwrap()), None);
    }

    #[test]
    fn score_prefers_emptier_domains() {
        let view = zones();
        let p = spread_pod(zone_constraint("ScheduleAnyway"), json!({}));
        let c = candidate(&p);
        let nodes: Vec<_> = (1..=4).map(|h| view.node(h)).collect();
        // Weight ln(3 zones + 2) = 1.609: a = 3.2 -> 3, b = 1.6 -> 2, c = 0.
        // Normalized 100 * (max + min - s) / max with max 3, min 0; n4 lacks the key.
        assert_eq!(spread_scores(&c, &view, &nodes), Some(vec![0, 33, 100, 0]));
        let no_constraints = candidate(&pod("p", json!({"containers": [{"name": "c"}]})));
        assert_eq!(spread_scores(&no_constraints, &view, &nodes), None);
    }

    #[test]
    fn score_by_hostname_counts_per_node() {
        let view = zones();
        let mut k = zone_constraint("ScheduleAnyway");
        k["topologyKey"] = json!("kubernetes.io/hostname");
        let c = candidate(&spread_pod(k, json!({})));
        let nodes: Vec<_> = (1..=4).map(|h| view.node(h)).collect();
        // Weight ln(4 + 2) = 1.79: n1 = 3.6 -> 4, n2 = 1.8 -> 2, n3 and n4 = 0.
        assert_eq!(
            spread_scores(&c, &view, &nodes),
            Some(vec![0, 50, 100, 100])
        );
    }
}
