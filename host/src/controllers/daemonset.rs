//! The DaemonSet controller: one pod on every eligible node (the template's
//! nodeSelector, required node affinity and nodeName, and the node's taints
//! against the pod's tolerations plus the ones Kubernetes gives every daemon
//! pod), rolled to a new template node by node within `maxUnavailable`.
//!
//! Pods are pinned with a required node affinity on `metadata.name` and
//! bound by the scheduler, as in Kubernetes. A pod's template version is the
//! `controller-revision-hash` label: a hash of the pod template (Kubernetes
//! keeps it in ControllerRevisions, which Shoal does not serve yet).

use super::events;
use super::pods;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "daemonset-controller";
/// Label carrying the template hash a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// Label carrying the DaemonSet generation a pod was made from.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

fn daemonsets() -> &'static ResourceInfo {
    resources::lookup("apps", "v1", "daemonsets").expect("daemonsets are served")
}

fn pods_res() -> &'static ResourceInfo {
    resources::lookup("", "v1", "pods").expect("pods are served")
}

fn nodes() -> &'static ResourceInfo {
    resources::lookup("", "v1", "nodes").expect("nodes are served")
}

/// Key under which a node change reconciles every DaemonSet (DaemonSets are
/// namespaced, so no real one has a key without a namespace).
fn all_key() -> ObjectKey {
    ObjectKey {
        namespace: None,
        name: "*".into(),
    }
}

/// The tolerations every daemon pod gets (Kubernetes' `AddOrUpdateDaemonPodTolerations`),
/// so daemons keep running on nodes that are not ready, unreachable,
/// cordoned or under pressure. The bool marks the host-network-only one.
const DAEMON_TOLERATIONS: &[(&str, &str, bool)] = &[
    ("node.kubernetes.io/not-ready", "NoExecute", false),
    ("node.kubernetes.io/unreachable", "NoExecute", false),
    ("node.kubernetes.io/disk-pressure", "NoSchedule", false),
    ("node.kubernetes.io/memory-pressure", "NoSchedule", false),
    ("node.kubernetes.io/pid-pressure", "NoSchedule", false),
    ("node.kubernetes.io/unschedulable", "NoSchedule", false),
    ("node.kubernetes.io/network-unavailable", "NoSchedule", true),
];

/// The pod spec a daemon pod gets: the template's, plus the daemon tolerations.
fn daemon_pod_spec(template_spec: &Value) -> Value {
    let mut spec = template_spec.clone();
    if !spec.is_object() {
        spec = json!({});
    }
    let host_network = spec["hostNetwork"] == true;
    let mut tolerations = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (key, effect, host_only) in DAEMON_TOLERATIONS {
        if *host_only && !host_network {
            continue;
        }
        // Kubernetes' AddOrUpdateTolerationInPodSpec: the same toleration
        // with, say, tolerationSeconds is replaced, so daemons are never evicted.
        let daemon = json!({"key": key, "operator": "Exists", "effect": effect});
        match tolerations.iter_mut().find(|t| {
            t["key"] == *key
                && t["effect"] == *effect
                && t["operator"] == "Exists"
                && t["value"].as_str().unwrap_or("").is_empty()
        }) {
            Some(t) => *t = daemon,
            None => tolerations.push(daemon),
        }
    }
    spec["tolerations"] = Value::Array(tolerations);
    spec
}

/// Whether a toleration tolerates a taint (Kubernetes' `ToleratesTaint`).
fn tolerates(t: &Value, taint: &Value) -> bool {
    let effect = t["effect"].as_str().unwrap_or("");
    if !effect.is_empty() && taint["effect"] != effect {
        return false;
    }
    let key = t["key"].as_str().unwrap_or("");
    if !key.is_empty() && taint["key"] != key {
        return false;
    }
    match t["operator"].as_str().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or(""),
        _ => false,
    }
}

/// One node selector requirement against a node's labels or name.
fn requirement_matches(req: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = req["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let int = |s: &str| s.parse::<i64>().ok();
    match req["operator"].as_str().unwrap_or("") {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(int), values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(int), values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// A node selector term: all its expressions (labels) and fields (name) match.
fn term_matches(term: &Value, node: &Value) -> bool {
    let labels = node.pointer("/metadata/labels").and_then(Value::as_object);
    let exprs = term["matchExpressions"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let fields = term["matchFields"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if exprs.is_empty() && fields.is_empty() {
        // An empty term matches nothing, as in Kubernetes.
        return false;
    }
    exprs.iter().all(|r| {
        let key = r["key"].as_str().unwrap_or("");
        requirement_matches(r, labels.and_then(|l| l.get(key)).and_then(Value::as_str))
    }) && fields.iter().all(|r| {
        r["key"] == "metadata.name" && requirement_matches(r, object::meta_str(node, "name"))
    })
}

/// Whether a daemon pod should run on a node, and whether one already
/// there may keep running (only NoExecute taints evict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    should_run: bool,
    should_continue: bool,
}

fn placement(spec: &Value, node: &Value) -> Placement {
    let no = Placement {
        should_run: false,
        should_continue: false,
    };
    let node_name = object::meta_str(node, "name").unwrap_or("");
    if spec["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        return no;
    }
    let labels = node.pointer("/metadata/labels").and_then(Value::as_object);
    if let Some(sel) = spec["nodeSelector"].as_object() {
        if !sel
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            return no;
        }
    }
    if let Some(req) =
        spec.pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution")
    {
        let terms = req["nodeSelectorTerms"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        if !terms.iter().any(|t| term_matches(t, node)) {
            return no;
        }
    }
    let tolerations = spec["tolerations"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let mut p = Placement {
        should_run: true,
        should_continue: true,
    };
    for taint in node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if tolerations.iter().any(|t| tolerates(t, taint)) {
            continue;
        }
        match taint["effect"].as_str() {
            Some("NoSchedule") => p.should_run = false,
            Some("NoExecute") => return no,
            _ => {}
        }
    }
    p
}

/// The node a daemon pod is for: where it is bound, else its pinning affinity.
fn target_node(pod: &Value) -> Option<String> {
    if let Some(n) = pods::node_name(pod) {
        return Some(n.to_string());
    }
    pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")?
        .as_array()?
        .iter()
        .flat_map(|t| t["matchFields"].as_array().into_iter().flatten())
        .find(|r| r["key"] == "metadata.name" && r["operator"] == "In")
        .and_then(|r| r["values"][0].as_str())
        .map(str::to_string)
}

/// Short hash of the pod template: equal templates, equal hash.
fn template_hash(ds: &Value) -> String {
    let t = serde_json::to_vec(&ds.pointer("/spec/template").cloned().unwrap_or(Value::Null))
        .expect("a Value always serializes");
    hex::encode(&Sha256::digest(&t)[..5])
}

/// `maxUnavailable` (an int or a percentage of `total`, rounded up), at least 1.
fn max_unavailable(ds: &Value, total: i64) -> i64 {
    let v = ds.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable");
    let n = match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(1),
        Some(Value::String(s)) if s.ends_with('%') => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            (pct * total + 99) / 100
        }
        Some(Value::String(s)) => s.parse().unwrap_or(1),
        _ => 1,
    };
    n.max(1)
}

/// A pod for `ds` pinned to `node`.
fn pod_for(ds: &Value, node: &str, hash: &str) -> Value {
    let name = object::meta_str(ds, "name").unwrap_or("");
    let tmeta = ds
        .pointer("/spec/template/metadata")
        .cloned()
        .unwrap_or(json!({}));
    let mut labels = tmeta
        .get("labels")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    labels[REVISION_LABEL] = json!(hash);
    if let Some(g) = ds.pointer("/metadata/generation").and_then(Value::as_i64) {
        labels[TEMPLATE_GENERATION_LABEL] = json!(g.to_string());
    }
    let mut spec = daemon_pod_spec(ds.pointer("/spec/template/spec").unwrap_or(&Value::Null));
    // Kubernetes replaces the required node affinity with the one term that
    // pins the node; the template's own rules were checked already.
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]
    });
    let mut meta = json!({
        "generateName": format!("{name}-"),
        "labels": labels,
        "ownerReferences": [pods::controller_ref(ds)],
    });
    if let Some(a) = tmeta.get("annotations") {
        meta["annotations"] = a.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

/// What to do with a DaemonSet's pods.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    create: Vec<String>,
    delete: Vec<Value>,
    status: Map<String, Value>,
    /// When a pod becomes available (minReadySeconds), to recount.
    recheck: Option<DateTime<Utc>>,
}

/// Compare the nodes with the DaemonSet's pods: which pods to create and
/// delete, and the status. Pure, so it is unit tested.
fn plan(ds: &Value, node_list: &[Value], mine: &[Value], now: DateTime<Utc>) -> Plan {
    let spec = daemon_pod_spec(ds.pointer("/spec/template/spec").unwrap_or(&Value::Null));
    let hash = template_hash(ds);
    let min_ready = ds
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut by_node: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut out = Plan::default();
    for p in mine {
        match target_node(p) {
            Some(n) => by_node.entry(n).or_default().push(p),
            None => out.delete.push(p.clone()),
        }
    }
    let updated =
        |p: &Value| p.pointer(&format!("/metadata/labels/{REVISION_LABEL}")) == Some(&json!(hash));
    let (mut desired, mut current, mut misscheduled, mut ready, mut up, mut available) =
        (0, 0, 0, 0, 0, 0);
    // For the rolling update: per desired node, its one live pod.
    let mut live: Vec<&Value> = Vec::new();
    let mut unavailable = 0;
    let mut busy = false;
    for node in node_list {
        let name = object::meta_str(node, "name").unwrap_or("").to_string();
        let place = placement(&spec, node);
        let on_node = by_node.remove(&name).unwrap_or_default();
        let terminating = on_node.iter().any(|p| pods::is_deleting(p));
        let mut running: Vec<&Value> = on_node
            .into_iter()
            .filter(|p| !pods::is_deleting(p))
            .collect();
        // Failed daemon pods are replaced.
        let (failed, ok): (Vec<&Value>, Vec<&Value>) =
            running.drain(..).partition(|p| pods::phase(p) == "Failed");
        running = ok;
        out.delete.extend(failed.iter().map(|p| (*p).clone()));
        busy |= !failed.is_empty();
        if place.should_run {
            desired += 1;
        } else if !running.is_empty() {
            misscheduled += 1;
        }
        if !place.should_continue {
            out.delete.extend(running.iter().map(|p| (*p).clone()));
            busy |= !running.is_empty();
            continue;
        }
        if running.is_empty() {
            if place.should_run {
                unavailable += 1;
                // Wait for a terminating pod to go, so one pod per node holds.
                if !terminating && failed.is_empty() {
                    out.create.push(name);
                }
                busy = true;
            }
            continue;
        }
        // Keep the oldest of duplicates.
        running.sort_by_key(|p| {
            object::meta_str(p, "creationTimestamp")
                .unwrap_or("")
                .to_string()
        });
        for extra in running.drain(1..) {
            out.delete.push(extra.clone());
            busy = true;
        }
        let p = running[0];
        if !place.should_run {
            continue;
        }
        current += 1;
        if pods::is_ready(p) {
            ready += 1;
        }
        if updated(p) {
            up += 1;
        }
        if pods::is_available(p, min_ready, now) {
            available += 1;
        } else {
            unavailable += 1;
            if pods::is_ready(p) {
                let since = p
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .and_then(|c| pods::time_at(c, "/lastTransitionTime"));
                if let Some(t) = since.map(|t| t + chrono::Duration::seconds(min_ready)) {
                    out.recheck = Some(out.recheck.map_or(t, |r| r.min(t)));
                }
            }
        }
        live.push(p);
    }
    // Pods for nodes that no longer exist.
    for (_, rest) in by_node {
        out.delete.extend(rest.into_iter().cloned());
        busy = true;
    }
    let strategy = ds
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    if !busy && strategy == "RollingUpdate" {
        // Old pods that are unavailable anyway go first and cost nothing;
        // available ones only within what maxUnavailable leaves.
        let mut budget = max_unavailable(ds, desired) - unavailable;
        let old: Vec<&Value> = live.into_iter().filter(|p| !updated(p)).collect();
        for p in old
            .iter()
            .filter(|p| !pods::is_available(p, min_ready, now))
        {
            out.delete.push((*p).clone());
        }
        for p in old.iter().filter(|p| pods::is_available(p, min_ready, now)) {
            if budget <= 0 {
                break;
            }
            budget -= 1;
            out.delete.push((*p).clone());
        }
    }
    let s = &mut out.status;
    s.insert("desiredNumberScheduled".into(), json!(desired));
    s.insert("currentNumberScheduled".into(), json!(current));
    s.insert("numberMisscheduled".into(), json!(misscheduled));
    s.insert("numberReady".into(), json!(ready));
    s.insert("updatedNumberScheduled".into(), json!(up));
    s.insert("numberAvailable".into(), json!(available));
    s.insert("numberUnavailable".into(), json!(desired - available));
    s.insert(
        "observedGeneration".into(),
        ds.pointer("/metadata/generation")
            .cloned()
            .unwrap_or(json!(1)),
    );
    out
}

/// The DaemonSet controller.
#[derive(Default)]
pub struct DaemonSetController;

impl Reconciler for DaemonSetController {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    fn watches(&self) -> Vec<Watch> {
        vec![
            Watch::primary(daemonsets()),
            Watch::owned(pods_res(), "DaemonSet"),
            Watch {
                resource: nodes(),
                map: Arc::new(|_| vec![all_key()]),
            },
        ]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        if key.namespace.is_none() {
            // A node changed: every DaemonSet may need a pod more or less.
            let (all, _) = client.list(daemonsets(), None, None)?;
            if all.is_empty() {
                // Listing (and parsing) every node for no DaemonSet is the
                // costly part on a big cluster: skip it.
                return Ok(Action::AwaitChange);
            }
            let (node_list, _) = client.list(nodes(), None, None)?;
            let mut action = Action::AwaitChange;
            let mut first_err = None;
            for ds in all {
                match sync(client, &ds, &node_list).await {
                    Ok(a) => action = earlier(action, a),
                    Err(e) => first_err = first_err.or(Some(e)),
                }
            }
            return first_err.map_or(Ok(action), Err);
        }
        let Some(ds) = client.get(daemonsets(), key.namespace.as_deref(), &key.name)? else {
            return Ok(Action::AwaitChange);
        };
        let (node_list, _) = client.list(nodes(), None, None)?;
        sync(client, &ds, &node_list).await
    }
}

fn earlier(a: Action, b: Action) -> Action {
    match (a, b) {
        (Action::Requeue(x), Action::Requeue(y)) => Action::Requeue(x.min(y)),
        (Action::Requeue(x), _) | (_, Action::Requeue(x)) => Action::Requeue(x),
        _ => Action::AwaitChange,
    }
}

async fn sync(client: &LocalClient, ds: &Value, node_list: &[Value]) -> Result<Action, ApiError> {
    if pods::is_deleting(ds) {
        return Ok(Action::AwaitChange);
    }
    let ns = object::meta_str(ds, "namespace")
        .unwrap_or("default")
        .to_string();
    let uid = object::meta_str(ds, "uid").unwrap_or("").to_string();
    let (all, _) = client.list(pods_res(), Some(&ns), None)?;
    let mine: Vec<Value> = all
        .into_iter()
        .filter(|p| pods::controlled_by(p, &uid))
        .collect();
    let now = Utc::now();
    let plan = plan(ds, node_list, &mine, now);
    let hash = template_hash(ds);
    for node in &plan.create {
        let created = client
            .create(pods_res(), Some(&ns), pod_for(ds, node, &hash))
            .await?;
        let name = object::meta_str(&created, "name").unwrap_or("");
        events::record(
            client,
            COMPONENT,
            ds,
            "Normal",
            "SuccessfulCreate",
            &format!("Created pod: {name}"),
        )
        .await;
    }
    for p in &plan.delete {
        let name = object::meta_str(p, "name").unwrap_or("");
        let opts = json!({"preconditions": {"uid": p.pointer("/metadata/uid")}});
        if client.delete(pods_res(), Some(&ns), name, &opts).await? {
            let (type_, reason) = if pods::phase(p) == "Failed" {
                ("Warning", "FailedDaemonPod")
            } else {
                ("Normal", "SuccessfulDelete")
            };
            events::record(
                client,
                COMPONENT,
                ds,
                type_,
                reason,
                &format!("Deleted pod: {name}"),
            )
            .await;
        }
    }
    let old = ds.get("status").cloned().unwrap_or(json!({}));
    let mut status = old.clone();
    if !status.is_object() {
        status = json!({});
    }
    for (k, v) in plan.status {
        status[k] = v;
    }
    if status != old {
        let mut updated = ds.clone();
        updated["status"] = status;
        client.update_status(daemonsets(), updated).await?;
    }
    Ok(match plan.recheck {
        Some(t) => {
            Action::Requeue((t - now).to_std().unwrap_or_default() + Duration::from_millis(50))
        }
        None => Action::AwaitChange,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    fn ds(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "d", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": spec}}})
    }

    fn pod_on(d: &Value, node: &str, ready: bool, created: &str) -> Value {
        let mut p = pod_for(d, node, &template_hash(d));
        p["metadata"]["name"] = json!(format!("p-{node}-{created}"));
        p["metadata"]["creationTimestamp"] = json!(created);
        p["spec"]["nodeName"] = json!(node);
        let st = if ready { "True" } else { "False" };
        p["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": st, "lastTransitionTime": "2024-01-01T00:00:00Z"}]});
        p
    }

    fn now() -> DateTime<Utc> {
        pods::parse_time("2024-01-01T01:00:00Z").unwrap()
    }

    #[test]
    fn placement_follows_selector_affinity_and_taints() {
        let spec = daemon_pod_spec(&json!({"nodeSelector": {"disk": "ssd"}}));
        let ssd = node("a", json!({"disk": "ssd"}), json!([]));
        let hdd = node("b", json!({"disk": "hdd"}), json!([]));
        assert!(placement(&spec, &ssd).should_run);
        assert!(!placement(&spec, &hdd).should_run);
        let spec = daemon_pod_spec(&json!({}));
        let tainted = node(
            "c",
            json!({}),
            json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]),
        );
        assert_eq!(
            placement(&spec, &tainted),
            Placement {
                should_run: false,
                should_continue: true
            }
        );
        let evicting = node("c", json!({}), json!([{"key": "k", "effect": "NoExecute"}]));
        assert_eq!(
            placement(&spec, &evicting),
            Placement {
                should_run: false,
                should_continue: false
            }
        );
        // Daemon pods tolerate cordoned and not-ready nodes.
        let cordoned = node(
            "d",
            json!({}),
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        );
        assert!(placement(&spec, &cordoned).should_run);
        let tolerant = daemon_pod_spec(
            &json!({"tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}]}),
        );
        assert!(placement(&tolerant, &tainted).should_run);
        let aff = daemon_pod_spec(
            &json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}),
        );
        assert!(placement(&aff, &node("x", json!({"zone": "z1"}), json!([]))).should_run);
        assert!(placement(&aff, &hdd).should_run);
        assert!(!placement(&aff, &ssd).should_run);
        let gt = json!({"key": "cores", "operator": "Gt", "values": ["4"]});
        assert!(
            requirement_matches(&gt, Some("8"))
                && !requirement_matches(&gt, Some("2"))
                && !requirement_matches(&gt, None)
        );
    }

    #[test]
    fn pods_are_pinned_and_tolerant() {
        let d = ds(
            json!({"containers": [{"name": "c", "image": "i"}], "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}}),
        );
        let p = pod_for(&d, "n1", "h");
        assert_eq!(target_node(&p).as_deref(), Some("n1"));
        assert_eq!(p["metadata"]["labels"][REVISION_LABEL], "h");
        assert_eq!(p["metadata"]["labels"]["a"], "b");
        assert!(p["spec"]["affinity"]["nodeAffinity"]
            .get("preferredDuringSchedulingIgnoredDuringExecution")
            .is_some());
        let tol = p["spec"]["tolerations"].as_array().unwrap();
        assert!(tol
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/unschedulable"));
        assert!(!tol
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/network-unavailable"));
        // A template toleration of the same taint with a time limit is replaced.
        let d = ds(
            json!({"containers": [{"name": "c", "image": "i"}], "tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}),
        );
        let p = pod_for(&d, "n1", "h");
        let unreachable: Vec<&Value> = p["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["key"] == "node.kubernetes.io/unreachable")
            .collect();
        assert_eq!(
            unreachable,
            vec![
                &json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"})
            ]
        );
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let d = ds(json!({"containers": [{"name": "c", "image": "i"}]}));
        let nodes = vec![
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
            node(
                "c",
                json!({}),
                json!([{"key": "k", "effect": "NoSchedule"}]),
            ),
        ];
        let p = plan(&d, &nodes, &[], now());
        assert_eq!(p.create, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(p.status["desiredNumberScheduled"], 2);
        // A duplicate on a, a pod for a vanished node, and one on b.
        let pods_ = vec![
            pod_on(&d, "a", true, "2024-01-01T00:00:01Z"),
            pod_on(&d, "a", true, "2024-01-01T00:00:02Z"),
            pod_on(&d, "b", true, "2024-01-01T00:00:01Z"),
            pod_on(&d, "gone", true, "2024-01-01T00:00:01Z"),
        ];
        let p = plan(&d, &nodes, &pods_, now());
        assert!(p.create.is_empty());
        let deleted: Vec<&str> = p
            .delete
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            deleted,
            vec!["p-a-2024-01-01T00:00:02Z", "p-gone-2024-01-01T00:00:01Z"]
        );
        assert_eq!(p.status["currentNumberScheduled"], 2);
        assert_eq!(p.status["numberReady"], 2);
        assert_eq!(p.status["updatedNumberScheduled"], 2);
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let old = ds(json!({"containers": [{"name": "c", "image": "v1"}]}));
        let nodes: Vec<Value> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| node(n, json!({}), json!([])))
            .collect();
        let pods_: Vec<Value> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| pod_on(&old, n, true, "2024-01-01T00:00:01Z"))
            .collect();
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("v2");
        new["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}});
        let p = plan(&new, &nodes, &pods_, now());
        assert_eq!(p.delete.len(), 2);
        assert_eq!(p.status["updatedNumberScheduled"], 0);
        // One node already unavailable (its pod is gone): only one more goes.
        let p = plan(&new, &nodes, &pods_[1..], now());
        assert_eq!(p.create, vec!["a".to_string()]);
        assert!(p.delete.is_empty(), "no rolling while pods are created");
        // An unready old pod is replaced without using the budget.
        let mut some_unready = pods_.clone();
        some_unready[0]["status"]["conditions"][0]["status"] = json!("False");
        new["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = json!("25%");
        let p = plan(&new, &nodes, &some_unready, now());
        assert_eq!(p.delete.len(), 1);
        assert_eq!(max_unavailable(&new, 5), 2);
        // OnDelete leaves old pods alone.
        new["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        assert!(plan(&new, &nodes, &pods_, now()).delete.is_empty());
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut d = ds(json!({"containers": [{"name": "c", "image": "i"}]}));
        d["spec"]["minReadySeconds"] = json!(7200);
        let nodes = vec![node("a", json!({}), json!([]))];
        let p = plan(
            &d,
            &nodes,
            &[pod_on(&d, "a", true, "2024-01-01T00:00:01Z")],
            now(),
        );
        assert_eq!(p.status["numberReady"], 1);
        assert_eq!(p.status["numberAvailable"], 0);
        assert_eq!(p.recheck, pods::parse_time("2024-01-01T02:00:00Z"));
    }
}
