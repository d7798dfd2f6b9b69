//! The pod being scheduled, parsed once per call into what the plugins read.

use crate::objects::{Labels, NodeSelectorTerm, Pod, PreferredSchedulingTerm, Toleration};
use crate::resources::{self, Resources};
use crate::selector::{self, Selector};
use crate::view::NodeEntry;

/// One topology spread constraint, with its selector compiled.
#[derive(Debug)]
pub(crate) struct Spread {
    pub max_skew: i32,
    pub topology_key: String,
    pub selector: Selector,
    pub min_domains: i32,
    /// `nodeAffinityPolicy: Honor` (the default): count only nodes that match
    /// the pod's node affinity and selector.
    pub honor_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default Ignore): count only nodes whose
    /// NoSchedule/NoExecute taints the pod tolerates.
    pub honor_taints: bool,
}

/// A pod to place.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub namespace: String,
    pub labels: Labels,
    pub node_name: String,
    pub node_selector: Labels,
    /// Required node affinity terms (`None` when the pod has none).
    pub required_terms: Option<Vec<NodeSelectorTerm>>,
    pub preferred_terms: Vec<PreferredSchedulingTerm>,
    pub tolerations: Vec<Toleration>,
    pub requests: Resources,
    pub non_zero: Resources,
    /// `whenUnsatisfiable: DoNotSchedule` constraints (filter).
    pub hard_spread: Vec<Spread>,
    /// `whenUnsatisfiable: ScheduleAnyway` constraints (score).
    pub soft_spread: Vec<Spread>,
}

impl Candidate {
    /// Parse pod JSON; an error names what is wrong with it.
    pub fn parse(json: &str) -> Result<Candidate, String> {
        let pod: Pod = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let requests = resources::pod_requests(&pod.spec, false);
        let non_zero = resources::pod_requests(&pod.spec, true);
        let mut hard_spread = Vec::new();
        let mut soft_spread = Vec::new();
        for c in &pod.spec.topology_spread_constraints {
            let target = match c.when_unsatisfiable.as_str() {
                "DoNotSchedule" => &mut hard_spread,
                "ScheduleAnyway" => &mut soft_spread,
                // Kubernetes acts only on the two actions it knows.
                _ => continue,
            };
            let mut selector = Selector::compile(c.label_selector.as_ref())
                .map_err(|e| format!("topology spread labelSelector: {e}"))?;
            for key in &c.match_label_keys {
                if let Some(value) = pod.metadata.labels.get(key) {
                    selector.and_equal(key, value);
                }
            }
            target.push(Spread {
                max_skew: c.max_skew,
                topology_key: c.topology_key.clone(),
                selector,
                min_domains: c.min_domains.unwrap_or(1),
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            });
        }
        let node_affinity = pod.spec.affinity.and_then(|a| a.node_affinity);
        let (required_terms, preferred_terms) = match node_affinity {
            Some(na) => (
                na.required_during_scheduling_ignored_during_execution
                    .map(|s| s.node_selector_terms),
                na.preferred_during_scheduling_ignored_during_execution,
            ),
            None => (None, Vec::new()),
        };
        Ok(Candidate {
            namespace: pod.metadata.namespace,
            labels: pod.metadata.labels,
            node_name: pod.spec.node_name,
            node_selector: pod.spec.node_selector,
            required_terms,
            preferred_terms,
            tolerations: pod.spec.tolerations,
            requests,
            non_zero,
            hard_spread,
            soft_spread,
        })
    }

    /// Whether `node` satisfies `spec.nodeSelector` and the required node
    /// affinity (terms OR'ed; no terms at all matches nothing).
    pub fn matches_node_affinity(&self, node: &NodeEntry) -> bool {
        let selector_ok = self
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v));
        selector_ok
            && self.required_terms.as_ref().is_none_or(|terms| {
                terms
                    .iter()
                    .any(|t| selector::term_matches(t, &node.labels, &node.name))
            })
    }
}
