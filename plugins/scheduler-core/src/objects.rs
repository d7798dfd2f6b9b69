//! The parts of Kubernetes Pod and Node JSON that scheduling reads.
//!
//! Unknown fields are ignored and `null` reads as absent, as Kubernetes' own
//! decoding does for these fields.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::quantity::{self, Quantity};

/// Read `null` as the type's default (Kubernetes treats both as unset).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A label or annotation map.
pub(crate) type Labels = BTreeMap<String, String>;

/// A resource list (`requests`, `allocatable`); values are quantities.
pub(crate) type ResourceList = BTreeMap<String, QuantityValue>;

/// A quantity as Kubernetes JSON carries it: a string, or a bare number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct QuantityValue(pub Quantity);

impl<'de> Deserialize<'de> for QuantityValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = QuantityValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Kubernetes quantity")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                quantity::parse(v).map(QuantityValue).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(QuantityValue(Quantity::from_units(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// `metadata` of any object.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ObjectMeta {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub namespace: String,
    #[serde(deserialize_with = "nullable")]
    pub uid: String,
    #[serde(deserialize_with = "nullable")]
    pub labels: Labels,
    pub deletion_timestamp: Option<String>,
}

/// A Node.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Node {
    #[serde(deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(deserialize_with = "nullable")]
    pub spec: NodeSpec,
    #[serde(deserialize_with = "nullable")]
    pub status: NodeStatus,
}

/// `Node.spec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct NodeSpec {
    #[serde(deserialize_with = "nullable")]
    pub unschedulable: bool,
    #[serde(deserialize_with = "nullable")]
    pub taints: Vec<Taint>,
}

/// `Node.status`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct NodeStatus {
    pub allocatable: Option<ResourceList>,
    pub capacity: Option<ResourceList>,
}

/// A node taint.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(crate) struct Taint {
    #[serde(deserialize_with = "nullable")]
    pub key: String,
    #[serde(deserialize_with = "nullable")]
    pub value: String,
    #[serde(deserialize_with = "nullable")]
    pub effect: String,
}

/// A Pod.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Pod {
    #[serde(deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(deserialize_with = "nullable")]
    pub spec: PodSpec,
    #[serde(deserialize_with = "nullable")]
    pub status: PodStatus,
}

/// `Pod.spec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct PodSpec {
    #[serde(deserialize_with = "nullable")]
    pub node_name: String,
    #[serde(deserialize_with = "nullable")]
    pub node_selector: Labels,
    pub affinity: Option<Affinity>,
    #[serde(deserialize_with = "nullable")]
    pub tolerations: Vec<Toleration>,
    #[serde(deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    #[serde(deserialize_with = "nullable")]
    pub init_containers: Vec<Container>,
    #[serde(deserialize_with = "nullable")]
    pub overhead: ResourceList,
    #[serde(deserialize_with = "nullable")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

/// `Pod.status` (only the phase matters here).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PodStatus {
    #[serde(deserialize_with = "nullable")]
    pub phase: String,
}

/// A container or init container.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Container {
    #[serde(deserialize_with = "nullable")]
    pub resources: ResourceRequirements,
    pub restart_policy: Option<String>,
}

/// `resources` of a container.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ResourceRequirements {
    #[serde(deserialize_with = "nullable")]
    pub requests: ResourceList,
}

/// A pod toleration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Toleration {
    #[serde(deserialize_with = "nullable")]
    pub key: String,
    #[serde(deserialize_with = "nullable")]
    pub operator: String,
    #[serde(deserialize_with = "nullable")]
    pub value: String,
    #[serde(deserialize_with = "nullable")]
    pub effect: String,
}

/// `Pod.spec.affinity` (node affinity only; pod affinity is not scheduled on).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Affinity {
    pub node_affinity: Option<NodeAffinity>,
}

/// `affinity.nodeAffinity`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct NodeAffinity {
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
    #[serde(deserialize_with = "nullable")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTerm>,
}

/// A required node selector: terms OR'ed.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct NodeSelector {
    #[serde(deserialize_with = "nullable")]
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// One weighted preference.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PreferredSchedulingTerm {
    #[serde(deserialize_with = "nullable")]
    pub weight: i32,
    #[serde(deserialize_with = "nullable")]
    pub preference: NodeSelectorTerm,
}

/// A node selector term: its expressions and fields AND'ed.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct NodeSelectorTerm {
    #[serde(deserialize_with = "nullable")]
    pub match_expressions: Vec<Requirement>,
    #[serde(deserialize_with = "nullable")]
    pub match_fields: Vec<Requirement>,
}

/// A `key operator values` requirement (node selectors and label selectors).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Requirement {
    #[serde(deserialize_with = "nullable")]
    pub key: String,
    #[serde(deserialize_with = "nullable")]
    pub operator: String,
    #[serde(deserialize_with = "nullable")]
    pub values: Vec<String>,
}

/// A label selector (`matchLabels` and `matchExpressions`, AND'ed).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct LabelSelector {
    #[serde(deserialize_with = "nullable")]
    pub match_labels: Labels,
    #[serde(deserialize_with = "nullable")]
    pub match_expressions: Vec<Requirement>,
}

/// One of `Pod.spec.topologySpreadConstraints`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct TopologySpreadConstraint {
    #[serde(deserialize_with = "nullable")]
    pub max_skew: i32,
    #[serde(deserialize_with = "nullable")]
    pub topology_key: String,
    #[serde(deserialize_with = "nullable")]
    pub when_unsatisfiable: String,
    pub label_selector: Option<LabelSelector>,
    pub min_domains: Option<i32>,
    pub node_affinity_policy: Option<String>,
    pub node_taints_policy: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub match_label_keys: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_read_as_absent() {
        let pod: Pod = serde_json::from_str(
            r#"{"metadata": {"name": "p", "labels": null, "namespace": null},
                "spec": {"nodeSelector": null, "tolerations": null, "containers": [
                    {"name": "c", "resources": {"requests": null}}
                ], "affinity": null},
                "status": null}"#,
        )
        .unwrap();
        assert!(pod.metadata.labels.is_empty());
        assert!(pod.spec.containers[0].resources.requests.is_empty());
    }

    #[test]
    fn quantities_may_be_numbers() {
        let node: Node = serde_json::from_str(
            r#"{"status": {"allocatable": {"cpu": 2, "memory": 1.5e3, "pods": "110"}}}"#,
        )
        .unwrap();
        let alloc = node.status.allocatable.unwrap();
        assert_eq!(alloc["cpu"].0.milli_value(), 2000);
        assert_eq!(alloc["memory"].0.value(), 1500);
        assert!(
            serde_json::from_str::<Node>(r#"{"status": {"allocatable": {"cpu": "x"}}}"#).is_err()
        );
    }
}
