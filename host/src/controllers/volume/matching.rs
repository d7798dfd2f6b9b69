//! Pure rules of volume binding: which PersistentVolume satisfies a claim
//! (class, volume mode, access modes, size, selector, node affinity), and
//! whether a node satisfies a volume's node affinity. Shared by the PV
//! controller and the scheduler's volume filter.

use crate::api::selector::LabelSelector;
use crate::api::validation::parse_quantity;
use serde_json::{Map, Value};

/// Annotation Kubernetes puts on a claim once its binding is complete.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Annotation marking a binding half made by the controller (not the user).
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// Annotation naming the provisioner that created a volume.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Annotation the scheduler sets on a WaitForFirstConsumer claim: the node
/// its first pod goes to, where the volume must be provisioned or found.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Annotation marking the default StorageClass.
pub const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The beta spelling of [`ANN_DEFAULT_CLASS`], still honoured by Kubernetes.
pub const ANN_DEFAULT_CLASS_BETA: &str = "storageclass.beta.kubernetes.io/is-default-class";
/// The provisioner name of classes that never provision (static volumes only).
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// The claim's class name ("" when unset, which only matches class-less volumes).
pub fn claim_class(claim: &Value) -> &str {
    s(claim, "/spec/storageClassName")
}

/// The volume's class name ("" when unset).
pub fn volume_class(pv: &Value) -> &str {
    s(pv, "/spec/storageClassName")
}

/// Requested storage of a claim in bytes.
pub fn claim_request(claim: &Value) -> Option<f64> {
    parse_quantity(s(claim, "/spec/resources/requests/storage"))
}

/// Capacity of a volume in bytes.
pub fn volume_capacity(pv: &Value) -> Option<f64> {
    parse_quantity(s(pv, "/spec/capacity/storage"))
}

fn mode(v: &Value) -> &str {
    match s(v, "/spec/volumeMode") {
        "" => "Filesystem",
        m => m,
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether the volume's `claimRef` names this claim (and, if it carries a
/// uid, this very claim rather than an earlier one of the same name).
pub fn claim_ref_is(pv: &Value, claim: &Value) -> bool {
    let Some(r) = pv.pointer("/spec/claimRef").filter(|r| !r.is_null()) else {
        return false;
    };
    let uid = s(r, "/uid");
    s(r, "/name") == s(claim, "/metadata/name")
        && s(r, "/namespace") == s(claim, "/metadata/namespace")
        && (uid.is_empty() || uid == s(claim, "/metadata/uid"))
}

/// Why `pv` cannot serve `claim` (None when it can), ignoring binding state
/// and node affinity.
pub fn unsatisfied(claim: &Value, pv: &Value) -> Option<String> {
    if claim_class(claim) != volume_class(pv) {
        return Some("storageClassName does not match".into());
    }
    if mode(claim) != mode(pv) {
        return Some("incompatible volumeMode".into());
    }
    let have = strings(pv.pointer("/spec/accessModes"));
    if !strings(claim.pointer("/spec/accessModes"))
        .iter()
        .all(|m| have.contains(m))
    {
        return Some("incompatible accessMode".into());
    }
    match (claim_request(claim), volume_capacity(pv)) {
        (Some(want), Some(cap)) if cap >= want => {}
        _ => return Some("requested PV is too small".into()),
    }
    if let Some(sel) = claim.pointer("/spec/selector").filter(|s| !s.is_null()) {
        let labels = pv.pointer("/metadata/labels").and_then(Value::as_object);
        match LabelSelector::from_json(sel) {
            Ok(sel) if sel.matches(labels) => {}
            _ => return Some("selector does not match".into()),
        }
    }
    None
}

/// Whether a node (name and labels) satisfies a volume's required node
/// affinity. Volumes without one are reachable from every node.
pub fn node_allowed(pv: &Value, node_name: &str, labels: Option<&Map<String, Value>>) -> bool {
    match pv.pointer("/spec/nodeAffinity/required") {
        Some(sel) if !sel.is_null() => node_selector_matches(sel, node_name, labels),
        _ => true,
    }
}

/// Evaluate a core/v1 NodeSelector (terms OR'ed, requirements AND'ed).
pub fn node_selector_matches(
    selector: &Value,
    node_name: &str,
    labels: Option<&Map<String, Value>>,
) -> bool {
    let terms = selector
        .get("nodeSelectorTerms")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    terms.iter().any(|t| {
        let exprs = t.get("matchExpressions").and_then(Value::as_array);
        let fields = t.get("matchFields").and_then(Value::as_array);
        if exprs.is_none_or(|e| e.is_empty()) && fields.is_none_or(|f| f.is_empty()) {
            // An empty term matches nothing, as in Kubernetes.
            return false;
        }
        exprs.into_iter().flatten().all(|r| {
            let key = s(r, "/key");
            requirement(r, labels.and_then(|l| l.get(key)).and_then(Value::as_str))
        }) && fields.into_iter().flatten().all(|r| {
            let value = (s(r, "/key") == "metadata.name").then_some(node_name);
            requirement(r, value)
        })
    })
}

fn requirement(r: &Value, have: Option<&str>) -> bool {
    let values = strings(r.get("values"));
    let num = |x: &str| x.parse::<i64>().ok();
    match s(r, "/operator") {
        "In" => have.is_some_and(|h| values.contains(&h)),
        "NotIn" => have.is_none_or(|h| !values.contains(&h)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" => {
            matches!((have.and_then(num), values.first().and_then(|v| num(v))), (Some(h), Some(v)) if h > v)
        }
        "Lt" => {
            matches!((have.and_then(num), values.first().and_then(|v| num(v))), (Some(h), Some(v)) if h < v)
        }
        _ => false,
    }
}

/// Whether a volume may be chosen for a claim that is not pre-bound to it:
/// not bound or promised elsewhere, not being deleted, not released/failed.
fn free(pv: &Value) -> bool {
    pv.pointer("/spec/claimRef").is_none_or(Value::is_null)
        && pv.pointer("/metadata/deletionTimestamp").is_none()
        && !matches!(s(pv, "/status/phase"), "Released" | "Failed")
}

/// The volume a claim should bind to: one pre-bound to it (its `claimRef`
/// names the claim) if that satisfies it, else the smallest free volume that
/// satisfies it. `node` (name, labels) restricts the choice to volumes
/// reachable from that node (WaitForFirstConsumer after scheduling).
pub fn find_best<'a>(
    claim: &Value,
    volumes: &'a [Value],
    node: Option<(&str, Option<&Map<String, Value>>)>,
) -> Option<&'a Value> {
    let reachable = |pv: &Value| node.is_none_or(|(n, l)| node_allowed(pv, n, l));
    let wanted = s(claim, "/spec/volumeName");
    if let Some(pv) = volumes
        .iter()
        .find(|pv| claim_ref_is(pv, claim) && pv.pointer("/metadata/deletionTimestamp").is_none())
    {
        if unsatisfied(claim, pv).is_none() && reachable(pv) {
            return Some(pv);
        }
    }
    volumes
        .iter()
        .filter(|pv| wanted.is_empty() || s(pv, "/metadata/name") == wanted)
        .filter(|pv| free(pv) && unsatisfied(claim, pv).is_none() && reachable(pv))
        .min_by(|a, b| {
            let (ca, cb) = (volume_capacity(a), volume_capacity(b));
            ca.partial_cmp(&cb)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| s(a, "/metadata/name").cmp(s(b, "/metadata/name")))
        })
}

/// Whether a StorageClass is marked as the default.
pub fn is_default_class(class: &Value) -> bool {
    [ANN_DEFAULT_CLASS, ANN_DEFAULT_CLASS_BETA].iter().any(|k| {
        class
            .pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1")))
            .and_then(Value::as_str)
            == Some("true")
    })
}

/// The default class among `classes`: the newest marked one (Kubernetes'
/// rule when several are marked), ties broken by name.
pub fn default_class(classes: &[Value]) -> Option<&Value> {
    classes
        .iter()
        .filter(|c| is_default_class(c) && c.pointer("/metadata/deletionTimestamp").is_none())
        .max_by(|a, b| {
            s(a, "/metadata/creationTimestamp")
                .cmp(s(b, "/metadata/creationTimestamp"))
                .then_with(|| s(b, "/metadata/name").cmp(s(a, "/metadata/name")))
        })
}

/// The claim names a pod's volumes refer to.
pub fn pod_claims(pod: &Value) -> Vec<&str> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v.pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(name: &str, size: &str, modes: &[&str], class: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"tier": "fast"}},
               "spec": {"capacity": {"storage": size}, "accessModes": modes,
                        "storageClassName": class, "hostPath": {"path": "/x"}},
               "status": {"phase": "Available"}})
    }

    fn claim(size: &str, modes: &[&str], class: Option<&str>) -> Value {
        let mut c = json!({"metadata": {"name": "data", "namespace": "default", "uid": "u1"},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}}});
        if let Some(cl) = class {
            c["spec"]["storageClassName"] = json!(cl);
        }
        c
    }

    #[test]
    fn picks_the_smallest_volume_that_fits() {
        let vols = vec![
            pv("big", "10Gi", &["ReadWriteOnce"], ""),
            pv("small", "1Gi", &["ReadWriteOnce"], ""),
            pv("tiny", "100Mi", &["ReadWriteOnce"], ""),
            pv("mid", "2Gi", &["ReadWriteOnce", "ReadOnlyMany"], ""),
        ];
        let c = claim("500Mi", &["ReadWriteOnce"], None);
        assert_eq!(
            find_best(&c, &vols, None).unwrap()["metadata"]["name"],
            "small"
        );
        let c = claim("500Mi", &["ReadWriteOnce", "ReadOnlyMany"], None);
        assert_eq!(
            find_best(&c, &vols, None).unwrap()["metadata"]["name"],
            "mid"
        );
        let c = claim("20Gi", &["ReadWriteOnce"], None);
        assert!(find_best(&c, &vols, None).is_none());
    }

    #[test]
    fn class_mode_selector_and_binding_state_are_respected() {
        let mut fast = pv("fast", "1Gi", &["ReadWriteOnce"], "gold");
        let c = claim("1Gi", &["ReadWriteOnce"], None);
        assert_eq!(
            unsatisfied(&c, &fast).as_deref(),
            Some("storageClassName does not match")
        );
        let mut c = claim("1Gi", &["ReadWriteOnce"], Some("gold"));
        assert!(unsatisfied(&c, &fast).is_none());
        c["spec"]["selector"] = json!({"matchLabels": {"tier": "slow"}});
        assert!(unsatisfied(&c, &fast).is_some());
        c["spec"]["selector"] = json!({"matchLabels": {"tier": "fast"}});
        c["spec"]["volumeMode"] = json!("Block");
        assert_eq!(
            unsatisfied(&c, &fast).as_deref(),
            Some("incompatible volumeMode")
        );
        c["spec"]["volumeMode"] = json!("Filesystem");
        assert!(find_best(&c, std::slice::from_ref(&fast), None).is_some());
        // Bound elsewhere, or released: not free.
        fast["spec"]["claimRef"] = json!({"namespace": "default", "name": "other", "uid": "u9"});
        assert!(find_best(&c, std::slice::from_ref(&fast), None).is_none());
        // Pre-bound to this claim: chosen.
        fast["spec"]["claimRef"] = json!({"namespace": "default", "name": "data"});
        assert!(find_best(&c, std::slice::from_ref(&fast), None).is_some());
        // ...but not when the claimRef names an earlier claim with that name.
        fast["spec"]["claimRef"]["uid"] = json!("old");
        assert!(find_best(&c, std::slice::from_ref(&fast), None).is_none());
        let mut released = pv("r", "1Gi", &["ReadWriteOnce"], "gold");
        released["status"]["phase"] = json!("Released");
        assert!(find_best(&c, std::slice::from_ref(&released), None).is_none());
    }

    #[test]
    fn node_affinity_limits_where_a_volume_is_reachable() {
        let mut local = pv("local", "1Gi", &["ReadWriteOnce"], "");
        local["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}});
        let l1 = json!({"kubernetes.io/hostname": "n1"});
        let l2 = json!({"kubernetes.io/hostname": "n2"});
        assert!(node_allowed(&local, "n1", l1.as_object()));
        assert!(!node_allowed(&local, "n2", l2.as_object()));
        assert!(!node_allowed(&local, "n3", None));
        let c = claim("1Gi", &["ReadWriteOnce"], None);
        let vols = [local];
        assert!(find_best(&c, &vols, Some(("n2", l2.as_object()))).is_none());
        assert!(find_best(&c, &vols, Some(("n1", l1.as_object()))).is_some());
        let by_field = json!({"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}]});
        assert!(node_selector_matches(&by_field, "n2", None));
        assert!(!node_selector_matches(&by_field, "n1", None));
        let gt = json!({"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "disks", "operator": "Gt", "values": ["2"]}]}]});
        assert!(node_selector_matches(
            &gt,
            "n",
            json!({"disks": "3"}).as_object()
        ));
        assert!(!node_selector_matches(
            &gt,
            "n",
            json!({"disks": "2"}).as_object()
        ));
    }

    #[test]
    fn default_class_is_the_newest_marked_one() {
        let class = |name: &str, created: &str, default: bool| {
            json!({"metadata": {"name": name, "creationTimestamp": created,
                "annotations": {ANN_DEFAULT_CLASS: if default {"true"} else {"false"}}}})
        };
        let classes = vec![
            class("a", "2024-01-01T00:00:00Z", true),
            class("b", "2024-02-01T00:00:00Z", true),
            class("c", "2024-03-01T00:00:00Z", false),
        ];
        assert_eq!(default_class(&classes).unwrap()["metadata"]["name"], "b");
        assert!(default_class(&classes[2..]).is_none());
    }
}
