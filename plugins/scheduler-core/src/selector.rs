//! Label selectors and node selectors with Kubernetes matching rules.

use crate::objects::{LabelSelector, Labels, NodeSelectorTerm, Requirement};

/// The node field a `matchFields` requirement may name.
const NODE_NAME_FIELD: &str = "metadata.name";

/// One checked requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LabelReq {
    /// The label is present with one of the values.
    In(String, Vec<String>),
    /// The label is absent or has none of the values.
    NotIn(String, Vec<String>),
    /// The label is present.
    Exists(String),
    /// The label is absent.
    DoesNotExist(String),
}

impl LabelReq {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A compiled label selector (apimachinery `labels.Selector`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selector {
    /// A null selector: matches nothing.
    Nothing,
    /// Requirements AND'ed; none at all matches everything.
    All(Vec<LabelReq>),
}

impl Selector {
    /// Compile a pod-spec label selector; `None` (null) selects nothing.
    pub fn compile(selector: Option<&LabelSelector>) -> Result<Selector, String> {
        let Some(selector) = selector else {
            return Ok(Selector::Nothing);
        };
        let mut reqs: Vec<LabelReq> = selector
            .match_labels
            .iter()
            .map(|(k, v)| LabelReq::In(k.clone(), vec![v.clone()]))
            .collect();
        for r in &selector.match_expressions {
            let req = match r.operator.as_str() {
                "In" | "NotIn" if r.values.is_empty() => {
                    return Err(format!(
                        "{}: values must be non-empty for {}",
                        r.key, r.operator
                    ))
                }
                "Exists" | "DoesNotExist" if !r.values.is_empty() => {
                    return Err(format!(
                        "{}: values must be empty for {}",
                        r.key, r.operator
                    ))
                }
                "In" => LabelReq::In(r.key.clone(), r.values.clone()),
                "NotIn" => LabelReq::NotIn(r.key.clone(), r.values.clone()),
                "Exists" => LabelReq::Exists(r.key.clone()),
                "DoesNotExist" => LabelReq::DoesNotExist(r.key.clone()),
                other => return Err(format!("{}: {other:?} is not a valid operator", r.key)),
            };
            reqs.push(req);
        }
        Ok(Selector::All(reqs))
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Selector::Nothing => false,
            Selector::All(reqs) => reqs.iter().all(|r| r.matches(labels)),
        }
    }

    /// True for a selector with no requirements (it selects everything).
    pub fn is_everything(&self) -> bool {
        matches!(self, Selector::All(reqs) if reqs.is_empty())
    }

    /// Add `key In (value)` requirements (topology spread `matchLabelKeys`).
    /// A null selector stays null, as in Kubernetes.
    pub fn and_equal(&mut self, key: &str, value: &str) {
        if let Selector::All(reqs) = self {
            reqs.push(LabelReq::In(key.to_owned(), vec![value.to_owned()]));
        }
    }
}

/// Whether a node selector requirement holds for `labels`. An invalid
/// requirement (wrong value count, unknown operator) never holds.
fn label_requirement_holds(r: &Requirement, labels: &Labels) -> bool {
    let value = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => !r.values.is_empty() && value.is_some_and(|v| r.values.contains(v)),
        "NotIn" => !r.values.is_empty() && value.is_none_or(|v| !r.values.contains(v)),
        "Exists" => r.values.is_empty() && value.is_some(),
        "DoesNotExist" => r.values.is_empty() && value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = r.values.as_slice() else {
                return false;
            };
            let (Ok(bound), Some(Ok(have))) =
                (bound.parse::<i64>(), value.map(|v| v.parse::<i64>()))
            else {
                return false;
            };
            if op == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// Whether a `matchFields` requirement holds for the node named `node_name`.
/// Kubernetes supports only `metadata.name` with In/NotIn and one value.
fn field_requirement_holds(r: &Requirement, node_name: &str) -> bool {
    let field = if r.key == NODE_NAME_FIELD {
        node_name
    } else {
        ""
    };
    match (r.operator.as_str(), r.values.as_slice()) {
        ("In", [v]) => field == v,
        ("NotIn", [v]) => field != v,
        _ => false,
    }
}

/// Whether a node selector term holds. An empty term matches no node.
pub(crate) fn term_matches(term: &NodeSelectorTerm, labels: &Labels, node_name: &str) -> bool {
    if term.match_expressions.is_empty() && term.match_fields.is_empty() {
        return false;
    }
    term.match_expressions
        .iter()
        .all(|r| label_requirement_holds(r, labels))
        && term
            .match_fields
            .iter()
            .all(|r| field_requirement_holds(r, node_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn term(exprs: Vec<Requirement>, fields: Vec<Requirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: exprs,
            match_fields: fields,
        }
    }

    #[test]
    fn node_selector_operators() {
        let l = labels(&[("zone", "a"), ("cores", "8")]);
        let holds = |r: Requirement| term_matches(&term(vec![r], vec![]), &l, "n1");
        assert!(holds(req("zone", "In", &["a", "b"])));
        assert!(!holds(req("zone", "In", &["b"])));
        assert!(!holds(req("missing", "In", &["a"])));
        assert!(holds(req("zone", "NotIn", &["b"])));
        assert!(holds(req("missing", "NotIn", &["b"])));
        assert!(!holds(req("zone", "NotIn", &["a"])));
        assert!(holds(req("zone", "Exists", &[])));
        assert!(!holds(req("missing", "Exists", &[])));
        assert!(holds(req("missing", "DoesNotExist", &[])));
        assert!(!holds(req("zone", "DoesNotExist", &[])));
        assert!(holds(req("cores", "Gt", &["4"])));
        assert!(!holds(req("cores", "Gt", &["8"])));
        assert!(holds(req("cores", "Lt", &["16"])));
        assert!(!holds(req("zone", "Gt", &["1"])), "non-numeric label");
        assert!(!holds(req("missing", "Lt", &["1"])));
        // Invalid requirements never hold.
        assert!(!holds(req("zone", "In", &[])));
        assert!(!holds(req("zone", "Exists", &["a"])));
        assert!(!holds(req("cores", "Gt", &["1", "2"])));
        assert!(!holds(req("zone", "Equals", &["a"])));
    }

    #[test]
    fn terms_and_fields() {
        let l = labels(&[("zone", "a"), ("disk", "ssd")]);
        let both = term(
            vec![req("zone", "In", &["a"]), req("disk", "In", &["ssd"])],
            vec![],
        );
        assert!(term_matches(&both, &l, "n1"));
        let one_fails = term(
            vec![req("zone", "In", &["a"]), req("disk", "In", &["hdd"])],
            vec![],
        );
        assert!(!term_matches(&one_fails, &l, "n1"));
        assert!(!term_matches(&term(vec![], vec![]), &l, "n1"), "empty term");
        let by_name = term(vec![], vec![req("metadata.name", "In", &["n1"])]);
        assert!(term_matches(&by_name, &l, "n1"));
        assert!(!term_matches(&by_name, &l, "n2"));
        let not_name = term(vec![], vec![req("metadata.name", "NotIn", &["n1"])]);
        assert!(term_matches(&not_name, &l, "n2"));
        let two_values = term(vec![], vec![req("metadata.name", "In", &["n1", "n2"])]);
        assert!(
            !term_matches(&two_values, &l, "n1"),
            "fields take exactly one value"
        );
    }

    #[test]
    fn label_selectors() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let sel = |s: serde_json::Value| {
            Selector::compile(Some(&serde_json::from_value(s).unwrap())).unwrap()
        };
        assert!(sel(serde_json::json!({"matchLabels": {"app": "web"}})).matches(&l));
        assert!(!sel(serde_json::json!({"matchLabels": {"app": "db"}})).matches(&l));
        let expr = sel(serde_json::json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "back"]},
            {"key": "canary", "operator": "DoesNotExist"}
        ]}));
        assert!(expr.matches(&l));
        let everything = sel(serde_json::json!({}));
        assert!(everything.matches(&l) && everything.is_everything());
        assert!(
            !Selector::compile(None).unwrap().matches(&l),
            "null selects nothing"
        );
        let bad: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "a", "operator": "In", "values": []}]
        }))
        .unwrap();
        assert!(Selector::compile(Some(&bad)).is_err());

        let mut narrowed = sel(serde_json::json!({}));
        narrowed.and_equal("app", "db");
        assert!(!narrowed.matches(&l));
        let mut nothing = Selector::Nothing;
        nothing.and_equal("app", "web");
        assert_eq!(nothing, Selector::Nothing);
    }
}
