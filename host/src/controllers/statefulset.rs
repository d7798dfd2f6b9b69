//! The StatefulSet controller: pods with stable ordinal names (`<set>-<i>`),
//! one PersistentVolumeClaim per `volumeClaimTemplates` entry and ordinal
//! (`<template>-<set>-<i>`) made before the pod and kept when the pod goes,
//! OrderedReady or Parallel pod management, and RollingUpdate (with a
//! partition) or OnDelete updates tracked in ControllerRevisions.
//!
//! Each reconcile reads the set, its pods and its revisions, works out a
//! [`Plan`] with the pure [`plan`] function (the part that decides order),
//! carries it out and writes the status. With OrderedReady a plan holds at
//! most one create or delete and stops at the first pod that is not Running
//! and Ready (and available for `minReadySeconds`); the pod watch brings the
//! next reconcile.
//!
//! Like Kubernetes, a revision's `data` is a strategic merge patch that
//! replaces `spec.template`, so `kubectl rollout undo` can apply it as is.

use super::daemonset::REVISION_LABEL;
use super::events;
use super::ownership::{self, Claim, SelectorIndex};
use super::pod_state;
use super::pods;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use super::template_hash;
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use crate::api::selector::LabelSelector;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

const COMPONENT: &str = "statefulset-controller";
/// Label with the pod's own name, so a Service can select one member.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Label on a ControllerRevision with the hash in its name.
pub const REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";

fn sets() -> &'static ResourceInfo {
    resources::lookup("apps", "v1", "statefulsets").expect("statefulsets are served")
}

fn pods_res() -> &'static ResourceInfo {
    resources::lookup("", "v1", "pods").expect("pods are served")
}

fn revisions_res() -> &'static ResourceInfo {
    resources::lookup("apps", "v1", "controllerrevisions").expect("controllerrevisions are served")
}

fn claims_res() -> &'static ResourceInfo {
    resources::lookup("", "v1", "persistentvolumeclaims").expect("claims are served")
}

/// The spec fields that drive the controller, with Kubernetes' defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SetSpec {
    /// `spec.replicas`.
    pub replicas: i64,
    /// `spec.ordinals.start`.
    pub start: i64,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// `updateStrategy.type: RollingUpdate` (else OnDelete).
    pub rolling: bool,
    /// `updateStrategy.rollingUpdate.partition`.
    pub partition: i64,
    /// `minReadySeconds`.
    pub min_ready: i64,
    /// `persistentVolumeClaimRetentionPolicy.whenDeleted: Delete`.
    pub delete_claims_with_set: bool,
    /// `persistentVolumeClaimRetentionPolicy.whenScaled: Delete`.
    pub delete_claims_on_scale_down: bool,
}

impl SetSpec {
    /// Read the spec of a StatefulSet.
    pub fn of(set: &Value) -> SetSpec {
        let int = |p: &str, d: i64| set.pointer(p).and_then(Value::as_i64).unwrap_or(d);
        let s = |p: &str| set.pointer(p).and_then(Value::as_str).unwrap_or("");
        SetSpec {
            replicas: int("/spec/replicas", 1).max(0),
            start: int("/spec/ordinals/start", 0).max(0),
            parallel: s("/spec/podManagementPolicy") == "Parallel",
            rolling: s("/spec/updateStrategy/type") != "OnDelete",
            partition: int("/spec/updateStrategy/rollingUpdate/partition", 0).max(0),
            min_ready: int("/spec/minReadySeconds", 0).max(0),
            delete_claims_with_set: s("/spec/persistentVolumeClaimRetentionPolicy/whenDeleted")
                == "Delete",
            delete_claims_on_scale_down: s("/spec/persistentVolumeClaimRetentionPolicy/whenScaled")
                == "Delete",
        }
    }

    /// Ordinals the set should have.
    pub fn ordinals(&self) -> std::ops::Range<i64> {
        self.start..self.start + self.replicas
    }
}

/// Split a member's name into the set's name and the ordinal.
pub fn parent_and_ordinal(pod_name: &str) -> Option<(&str, i64)> {
    let (parent, ord) = pod_name.rsplit_once('-')?;
    if ord.is_empty() || !ord.bytes().all(|b| b.is_ascii_digit()) || parent.is_empty() {
        return None;
    }
    Some((parent, ord.parse().ok()?))
}

/// The name of the claim for one template and ordinal.
pub fn claim_name(template: &str, set: &str, ordinal: i64) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// A revision's `data`: a strategic merge patch replacing `spec.template`.
pub fn revision_data(set: &Value) -> Value {
    let mut template = set
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(m) = template.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The pod template a revision records.
pub fn revision_template(revision: &Value) -> Value {
    let mut t = revision
        .pointer("/data/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    t
}

/// A new ControllerRevision for the set's current template.
pub fn new_revision(set: &Value, number: i64, collision_count: Option<i64>) -> Value {
    let data = revision_data(set);
    let hash = template_hash::compute(&data, collision_count);
    let set_name = object::meta_str(set, "name").unwrap_or("");
    let prefix: String = set_name.chars().take(223).collect();
    let mut labels = set
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.insert(REVISION_HASH_LABEL.into(), json!(hash));
    let mut meta = json!({
        "name": format!("{prefix}-{hash}"),
        "namespace": object::meta_str(set, "namespace"),
        "labels": labels,
        "ownerReferences": [ownership::controller_ref(set)],
    });
    // The set's annotations (a change-cause among them) go with the revision.
    if let Some(a) = set
        .pointer("/metadata/annotations")
        .filter(|a| a.is_object())
    {
        meta["annotations"] = a.clone();
    }
    json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": meta, "data": data, "revision": number,
    })
}

/// The claims one ordinal's pod uses, from `volumeClaimTemplates`.
pub fn claims_for(set: &Value, ordinal: i64) -> Vec<Value> {
    let set_name = object::meta_str(set, "name").unwrap_or("");
    let selector_labels = set
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    set.pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            let tname = object::meta_str(t, "name").unwrap_or("");
            let mut meta = t.get("metadata").cloned().unwrap_or_else(|| json!({}));
            if !meta.is_object() {
                meta = json!({});
            }
            let mut labels = meta
                .get("labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            // Claims carry the selector's labels, as in Kubernetes.
            labels.extend(selector_labels.clone());
            let m = meta.as_object_mut().expect("object");
            for f in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "ownerReferences",
                "managedFields",
                "deletionTimestamp",
            ] {
                m.remove(f);
            }
            m.insert("name".into(), json!(claim_name(tname, set_name, ordinal)));
            m.insert(
                "namespace".into(),
                json!(object::meta_str(set, "namespace")),
            );
            m.insert("labels".into(), Value::Object(labels));
            json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": meta,
                "spec": t.get("spec").cloned().unwrap_or_else(|| json!({})),
            })
        })
        .collect()
}

/// The pod for `ordinal` from `template` (the template of `revision`).
pub fn pod_for(set: &Value, template: &Value, revision: &str, ordinal: i64) -> Value {
    let set_name = object::meta_str(set, "name").unwrap_or("");
    let name = format!("{set_name}-{ordinal}");
    let mut meta = Map::new();
    meta.insert("name".into(), json!(name));
    meta.insert(
        "namespace".into(),
        json!(object::meta_str(set, "namespace")),
    );
    for field in ["labels", "annotations", "finalizers"] {
        if let Some(v) = template
            .pointer(&format!("/metadata/{field}"))
            .filter(|v| !v.is_null())
        {
            meta.insert(field.into(), v.clone());
        }
    }
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    labels[POD_NAME_LABEL] = json!(name);
    labels[POD_INDEX_LABEL] = json!(ordinal.to_string());
    labels[REVISION_LABEL] = json!(revision);
    meta.insert(
        "ownerReferences".into(),
        json!([ownership::controller_ref(set)]),
    );
    let mut spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    if !spec.is_object() {
        spec = json!({});
    }
    // Storage: each claim template replaces a pod volume of the same name.
    let claims = claims_for(set, ordinal);
    if !claims.is_empty() {
        let mut volumes: Vec<Value> = spec
            .get("volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let templates = set
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let names: HashSet<&str> = templates
            .iter()
            .filter_map(|t| object::meta_str(t, "name"))
            .collect();
        volumes.retain(|v| !v["name"].as_str().is_some_and(|n| names.contains(n)));
        for (t, c) in templates.iter().zip(&claims) {
            volumes.push(json!({
                "name": object::meta_str(t, "name"),
                "persistentVolumeClaim": {"claimName": object::meta_str(c, "name")},
            }));
        }
        spec["volumes"] = Value::Array(volumes);
    }
    // Network identity: <pod>.<serviceName>.<ns>.svc.
    spec["hostname"] = json!(name);
    if let Some(svc) = set
        .pointer("/spec/serviceName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        spec["subdomain"] = json!(svc);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

/// The revision a pod was made from.
pub fn pod_revision(pod: &Value) -> &str {
    ownership::labels(pod)
        .and_then(|l| l.get(REVISION_LABEL))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The identity labels a member must carry; None when they are all present.
fn missing_identity_labels(pod: &Value, ordinal: i64) -> Option<Value> {
    let name = object::meta_str(pod, "name").unwrap_or("");
    let want = [
        (POD_NAME_LABEL, name.to_string()),
        (POD_INDEX_LABEL, ordinal.to_string()),
    ];
    let labels = ownership::labels(pod);
    let missing: Map<String, Value> = want
        .into_iter()
        .filter(|(k, v)| labels.and_then(|l| l.get(*k)).and_then(Value::as_str) != Some(v))
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    (!missing.is_empty()).then(|| Value::Object(missing))
}

/// One change the controller makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create the claims and the pod for an ordinal, from the current
    /// revision (`current == true`) or the update revision.
    Create {
        /// Ordinal.
        ordinal: i64,
        /// From the current revision rather than the update revision.
        current: bool,
    },
    /// Delete a pod (by name and uid).
    Delete {
        /// Pod name.
        name: String,
        /// Pod uid (a precondition, so a replacement is never deleted by mistake).
        uid: String,
        /// Why, for the event.
        why: &'static str,
    },
    /// Add the identity labels a member lacks.
    Relabel {
        /// Pod name.
        name: String,
        /// Labels to merge.
        labels: Value,
    },
}

/// What one reconcile does, and when to look again if nothing else changes.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Changes, in order.
    pub steps: Vec<Step>,
    /// Wake up after this long (a pod's minReadySeconds running out).
    pub requeue: Option<Duration>,
}

fn name_uid(p: &Value) -> (String, String) {
    (
        object::meta_str(p, "name").unwrap_or("").to_string(),
        object::meta_str(p, "uid").unwrap_or("").to_string(),
    )
}

/// Decide the next changes for a set whose members are `pods` (by ordinal),
/// given the revision names. Pure, so ordering rules are unit-tested.
pub fn plan(
    spec: &SetSpec,
    pods: &BTreeMap<i64, &Value>,
    update_revision: &str,
    now: DateTime<Utc>,
) -> Plan {
    let ordered = !spec.parallel;
    let mut out = Plan::default();
    // Running, Ready and available; a pod that will be available soon sets a wake-up.
    let healthy = |p: &Value, out: &mut Plan| -> bool {
        if pods::phase(p) != "Running" {
            return false;
        }
        match pod_state::available_in(p, spec.min_ready, now) {
            Some(d) if d.is_zero() => true,
            Some(d) => {
                let d = d + Duration::from_millis(50);
                out.requeue = Some(out.requeue.map_or(d, |r| r.min(d)));
                false
            }
            None => false,
        }
    };

    // Bring every wanted ordinal up, lowest first.
    let mut blocked = false;
    for ord in spec.ordinals() {
        let index = ord - spec.start;
        let Some(p) = pods.get(&ord) else {
            out.steps.push(Step::Create {
                ordinal: ord,
                current: spec.rolling && index < spec.partition,
            });
            if ordered {
                blocked = true;
                break;
            }
            continue;
        };
        if pods::is_deleting(p) {
            // Wait for it to go; the replacement keeps the name.
            if ordered {
                blocked = true;
                break;
            }
            continue;
        }
        if pods::is_terminal(p) {
            let (name, uid) = name_uid(p);
            out.steps.push(Step::Delete {
                name,
                uid,
                why: "failed",
            });
            if ordered {
                blocked = true;
                break;
            }
            continue;
        }
        if let Some(labels) = missing_identity_labels(p, ord) {
            out.steps.push(Step::Relabel {
                name: name_uid(p).0,
                labels,
            });
        }
        if !healthy(p, &mut out) && ordered {
            blocked = true;
            break;
        }
    }
    if blocked {
        return out;
    }

    // Scale down from the highest ordinal.
    let wanted = spec.ordinals();
    for (_, p) in pods.iter().rev().filter(|(o, _)| !wanted.contains(o)) {
        if pods::is_deleting(p) {
            if ordered {
                return out;
            }
            continue;
        }
        let (name, uid) = name_uid(p);
        out.steps.push(Step::Delete {
            name,
            uid,
            why: "scale down",
        });
        if ordered {
            return out;
        }
    }

    // Roll from the highest ordinal down to the partition, one pod at a time.
    if spec.rolling {
        for index in (spec.partition..spec.replicas).rev() {
            let Some(p) = pods.get(&(spec.start + index)) else {
                break;
            };
            if pod_revision(p) != update_revision && !pods::is_deleting(p) {
                let (name, uid) = name_uid(p);
                out.steps.push(Step::Delete {
                    name,
                    uid,
                    why: "update",
                });
                break;
            }
            if pods::is_deleting(p) || !healthy(p, &mut out) {
                break;
            }
        }
    }
    out
}

/// Status counts over the set's pods (`created` counts pods just created).
pub fn compute_status(
    set: &Value,
    spec: &SetSpec,
    pods: &[&Value],
    current_revision: &str,
    update_revision: &str,
    collision_count: i64,
    now: DateTime<Utc>,
) -> Value {
    let (mut replicas, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for p in pods {
        replicas += 1;
        if pods::phase(p) == "Running" && pods::is_ready(p) {
            ready += 1;
            if pod_state::is_available(p, spec.min_ready, now) {
                available += 1;
            }
        }
        if !pods::is_deleting(p) {
            let rev = pod_revision(p);
            if rev == current_revision {
                current += 1;
            }
            if rev == update_revision {
                updated += 1;
            }
        }
    }
    // A finished rollout makes the update revision current.
    let (mut current_revision, mut current) = (current_revision, current);
    if updated == replicas && ready == replicas {
        current_revision = update_revision;
        current = updated;
    }
    json!({
        "observedGeneration": set.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0),
        "replicas": replicas,
        "readyReplicas": ready,
        "currentReplicas": current,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
        "collisionCount": collision_count,
    })
}

/// The StatefulSet reconciler.
#[derive(Default)]
pub struct StatefulSetController {
    selectors: SelectorIndex,
}

impl Reconciler for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn watches(&self) -> Vec<Watch> {
        vec![
            Watch::primary(sets()),
            Watch {
                resource: pods_res(),
                map: self.selectors.child_mapper("StatefulSet"),
            },
            Watch::owned(revisions_res(), "StatefulSet"),
        ]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let ns = key.namespace.clone().unwrap_or_default();
        let Some(set) = client.get(sets(), Some(&ns), &key.name)? else {
            self.selectors.remove(&ns, &key.name);
            return Ok(Action::AwaitChange);
        };
        let selector =
            match LabelSelector::from_json(set.pointer("/spec/selector").unwrap_or(&Value::Null)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(statefulset = %key.name, error = %e, "invalid selector");
                    return Ok(Action::AwaitChange);
                }
            };
        self.selectors.set(&ns, &key.name, selector.clone());
        sync(client, &set, &selector).await
    }
}

/// Claim pods and revisions, converge, and write the status.
async fn sync(
    client: &LocalClient,
    set: &Value,
    selector: &LabelSelector,
) -> Result<Action, ApiError> {
    let ns = object::meta_str(set, "namespace").unwrap_or("").to_string();
    let set_name = object::meta_str(set, "name").unwrap_or("").to_string();
    let uid = object::meta_str(set, "uid").unwrap_or("").to_string();
    let deleting = pods::is_deleting(set);
    let spec = SetSpec::of(set);
    let now = Utc::now();

    let (revs, update_rev, collision_count) =
        sync_revisions(client, set, selector, &uid, deleting).await?;
    let update_name = object::meta_str(&update_rev, "name")
        .unwrap_or("")
        .to_string();
    let current_rev = set
        .pointer("/status/currentRevision")
        .and_then(Value::as_str)
        .and_then(|n| revs.iter().find(|r| object::meta_str(r, "name") == Some(n)))
        .unwrap_or(&update_rev)
        .clone();
    let current_name = object::meta_str(&current_rev, "name")
        .unwrap_or("")
        .to_string();

    // Claim the pods: members are named <set>-<ordinal>.
    let (listed, _) = client.list(pods_res(), Some(&ns), None)?;
    let mut members: BTreeMap<i64, Value> = BTreeMap::new();
    for pod in listed {
        let name = object::meta_str(&pod, "name").unwrap_or("");
        let ordinal = parent_and_ordinal(name)
            .filter(|(parent, _)| *parent == set_name)
            .map(|(_, o)| o);
        let claim = ownership::claim(&pod, &uid, selector, deleting);
        let pod = match (claim, ordinal) {
            (Claim::Owned, Some(_)) => pod,
            (Claim::Adopt, Some(_)) => {
                match ownership::adopt(client, pods_res(), &pod, ownership::controller_ref(set))
                    .await
                {
                    Ok(p) => p,
                    Err(ApiError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            (Claim::Owned | Claim::Release, _) => {
                ownership::release(client, pods_res(), &pod, &uid).await?;
                continue;
            }
            _ => continue,
        };
        if let Some(o) = ordinal {
            members.insert(o, pod);
        }
    }

    let mut created: Vec<Value> = Vec::new();
    let mut action = Action::AwaitChange;
    if !deleting {
        sync_claim_owners(client, set, &spec, &members).await?;
        let by_ord: BTreeMap<i64, &Value> = members.iter().map(|(o, p)| (*o, p)).collect();
        let plan = plan(&spec, &by_ord, &update_name, now);
        if let Some(d) = plan.requeue {
            action = Action::Requeue(d);
        }
        for step in plan.steps {
            match step {
                Step::Create { ordinal, current } => {
                    let (rev, rev_name) = if current {
                        (&current_rev, &current_name)
                    } else {
                        (&update_rev, &update_name)
                    };
                    let pod = pod_for(set, &revision_template(rev), rev_name, ordinal);
                    if let Some(p) = create_member(client, set, &spec, ordinal, pod).await? {
                        created.push(p);
                    }
                }
                Step::Delete { name, uid, why } => {
                    delete_member(client, set, &name, &uid, why).await?;
                }
                Step::Relabel { name, labels } => {
                    let patch = json!({"metadata": {"labels": labels}});
                    match client
                        .merge_patch(pods_res(), Some(&ns), &name, &patch)
                        .await
                    {
                        Ok(_) | Err(ApiError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    let all: Vec<&Value> = members.values().chain(created.iter()).collect();
    let mut status = compute_status(
        set,
        &spec,
        &all,
        &current_name,
        &update_name,
        collision_count,
        now,
    );
    if let Some(c) = set.pointer("/status/conditions").filter(|c| c.is_array()) {
        status["conditions"] = c.clone();
    }
    if set.get("status") != Some(&status) {
        let mut updated = set.clone();
        updated["status"] = status.clone();
        match client.update_status(sets(), updated).await {
            Ok(_) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }

    // Keep the revisions still in use plus revisionHistoryLimit others.
    let mut live: HashSet<String> = members
        .values()
        .map(|p| pod_revision(p).to_string())
        .collect();
    live.insert(current_name);
    live.insert(update_name);
    if let Some(c) = status["currentRevision"].as_str() {
        live.insert(c.to_string());
    }
    truncate_history(client, set, &revs, &live).await?;
    Ok(action)
}

/// Make sure a revision for the current template exists and is the newest;
/// returns the set's revisions (oldest first), the update revision and the
/// collision count.
async fn sync_revisions(
    client: &LocalClient,
    set: &Value,
    selector: &LabelSelector,
    uid: &str,
    deleting: bool,
) -> Result<(Vec<Value>, Value, i64), ApiError> {
    let ns = object::meta_str(set, "namespace");
    let (listed, _) = client.list(revisions_res(), ns, None)?;
    let mut revs = Vec::new();
    for r in listed {
        match ownership::claim(&r, uid, selector, deleting) {
            Claim::Owned => revs.push(r),
            Claim::Adopt => {
                match ownership::adopt(client, revisions_res(), &r, ownership::controller_ref(set))
                    .await
                {
                    Ok(r) => revs.push(r),
                    Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Claim::Release => {
                ownership::release(client, revisions_res(), &r, uid).await?;
            }
            Claim::Ignore => {}
        }
    }
    let number = |r: &Value| r.get("revision").and_then(Value::as_i64).unwrap_or(0);
    revs.sort_by(|a, b| {
        number(a)
            .cmp(&number(b))
            .then_with(|| object::meta_str(a, "name").cmp(&object::meta_str(b, "name")))
    });
    let next = revs.last().map_or(1, |r| number(r) + 1);
    let data = revision_data(set);
    let mut collisions = set
        .pointer("/status/collisionCount")
        .and_then(Value::as_i64)
        .unwrap_or(0);

    if let Some(pos) = revs.iter().rposition(|r| r.get("data") == Some(&data)) {
        if pos + 1 == revs.len() {
            let r = revs[pos].clone();
            return Ok((revs, r, collisions));
        }
        // Rolling back to an older template makes its revision the newest.
        let (ns, name) = (ns, object::meta_str(&revs[pos], "name").unwrap_or(""));
        let bumped = client
            .merge_patch(revisions_res(), ns, name, &json!({"revision": next}))
            .await?;
        revs[pos] = bumped.clone();
        let r = revs.remove(pos);
        revs.push(r);
        return Ok((revs, bumped, collisions));
    }
    loop {
        let cr = new_revision(set, next, Some(collisions));
        match client.create(revisions_res(), ns, cr.clone()).await {
            Ok(r) => {
                revs.push(r.clone());
                return Ok((revs, r, collisions));
            }
            Err(ApiError::AlreadyExists { .. }) => {
                let name = object::meta_str(&cr, "name").unwrap_or("");
                let existing = client.get(revisions_res(), ns, name)?;
                if let Some(e) = existing.filter(|e| {
                    e.get("data") == Some(&data) && ownership::controller_uid(e) == Some(uid)
                }) {
                    revs.push(e.clone());
                    return Ok((revs, e, collisions));
                }
                // Another template hashed to this name: vary the hash.
                collisions += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Delete the oldest revisions not in `live` beyond revisionHistoryLimit.
async fn truncate_history(
    client: &LocalClient,
    set: &Value,
    revs: &[Value],
    live: &HashSet<String>,
) -> Result<(), ApiError> {
    let limit = set
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(10)
        .max(0) as usize;
    let old: Vec<&Value> = revs
        .iter()
        .filter(|r| !live.contains(object::meta_str(r, "name").unwrap_or("")))
        .collect();
    let ns = object::meta_str(set, "namespace");
    for r in old.iter().take(old.len().saturating_sub(limit)) {
        let name = object::meta_str(r, "name").unwrap_or("");
        let opts = json!({"preconditions": {"uid": object::meta_str(r, "uid")}});
        match client.delete(revisions_res(), ns, name, &opts).await {
            Ok(_) | Err(ApiError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Create an ordinal's missing claims, then its pod. Ok(None) when the pod
/// already exists (another writer was first).
async fn create_member(
    client: &LocalClient,
    set: &Value,
    spec: &SetSpec,
    ordinal: i64,
    pod: Value,
) -> Result<Option<Value>, ApiError> {
    let ns = object::meta_str(set, "namespace");
    let set_name = object::meta_str(set, "name").unwrap_or("");
    let pod_name = object::meta_str(&pod, "name").unwrap_or("").to_string();
    for mut claim in claims_for(set, ordinal) {
        let cname = object::meta_str(&claim, "name").unwrap_or("").to_string();
        match client.get(claims_res(), ns, &cname)? {
            Some(c) if pods::is_deleting(&c) => {
                let msg = format!(
                    "create Pod {pod_name} in StatefulSet {set_name} failed error: pvc {cname} is being deleted"
                );
                events::record(client, COMPONENT, set, "Warning", "FailedCreate", &msg).await;
                return Err(ApiError::Conflict {
                    group: String::new(),
                    resource: "persistentvolumeclaims".into(),
                    name: cname,
                    message: "the claim is being deleted".into(),
                });
            }
            Some(_) => {}
            None => {
                if spec.delete_claims_with_set {
                    claim["metadata"]["ownerReferences"] = json!([set_owner_ref(set)]);
                }
                match client.create(claims_res(), ns, claim).await {
                    Ok(_) => {
                        let msg = format!(
                            "create Claim {cname} Pod {pod_name} in StatefulSet {set_name} success"
                        );
                        events::record(client, COMPONENT, set, "Normal", "SuccessfulCreate", &msg)
                            .await;
                    }
                    Err(ApiError::AlreadyExists { .. }) => {}
                    Err(e) => {
                        let msg = format!(
                            "create Claim {cname} for Pod {pod_name} in StatefulSet {set_name} failed error: {}",
                            e.status()["message"].as_str().unwrap_or("")
                        );
                        events::record(client, COMPONENT, set, "Warning", "FailedCreate", &msg)
                            .await;
                        return Err(e);
                    }
                }
            }
        }
    }
    match client.create(pods_res(), ns, pod).await {
        Ok(p) => {
            let msg = format!("create Pod {pod_name} in StatefulSet {set_name} successful");
            events::record(client, COMPONENT, set, "Normal", "SuccessfulCreate", &msg).await;
            Ok(Some(p))
        }
        Err(ApiError::AlreadyExists { .. }) => Ok(None),
        Err(e) => {
            let msg = format!(
                "create Pod {pod_name} in StatefulSet {set_name} failed error: {}",
                e.status()["message"].as_str().unwrap_or("")
            );
            events::record(client, COMPONENT, set, "Warning", "FailedCreate", &msg).await;
            Err(e)
        }
    }
}

async fn delete_member(
    client: &LocalClient,
    set: &Value,
    name: &str,
    uid: &str,
    why: &str,
) -> Result<(), ApiError> {
    let ns = object::meta_str(set, "namespace");
    let set_name = object::meta_str(set, "name").unwrap_or("");
    let opts = json!({"preconditions": {"uid": uid}});
    match client.delete(pods_res(), ns, name, &opts).await {
        Ok(true) => {
            let msg = format!("delete Pod {name} in StatefulSet {set_name} successful");
            events::record(client, COMPONENT, set, "Normal", "SuccessfulDelete", &msg).await;
            tracing::debug!(statefulset = set_name, pod = name, why, "deleted pod");
            Ok(())
        }
        Ok(false) | Err(ApiError::Conflict { .. }) => Ok(()),
        Err(e) => {
            let msg = format!(
                "delete Pod {name} in StatefulSet {set_name} failed error: {}",
                e.status()["message"].as_str().unwrap_or("")
            );
            events::record(client, COMPONENT, set, "Warning", "FailedDelete", &msg).await;
            Err(e)
        }
    }
}

/// A non-controller owner reference to the set (for claims it deletes).
fn set_owner_ref(set: &Value) -> Value {
    let mut r = ownership::controller_ref(set);
    r["controller"] = json!(false);
    r["blockOwnerDeletion"] = json!(true);
    r
}

/// A non-controller owner reference to a pod (for claims deleted with it).
fn pod_owner_ref(pod: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "name": object::meta_str(pod, "name"), "uid": object::meta_str(pod, "uid"),
        "controller": false, "blockOwnerDeletion": true,
    })
}

/// The owner references a member's claim should carry under the retention
/// policy: the set's when `whenDeleted: Delete`, the pod's when `whenScaled:
/// Delete` and the ordinal is being scaled away, so the garbage collector
/// deletes the claim with its owner. Other owners are kept.
pub fn claim_owner_refs(
    claim: &Value,
    set: &Value,
    spec: &SetSpec,
    pod: &Value,
    condemned: bool,
) -> Vec<Value> {
    let set_uid = object::meta_str(set, "uid").unwrap_or("");
    let pod_uid = object::meta_str(pod, "uid").unwrap_or("");
    let mut refs: Vec<Value> = claim
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    refs.retain(|r| {
        let u = r["uid"].as_str().unwrap_or("");
        // Drop ours (re-added below) and references to earlier pods of this ordinal.
        u != set_uid
            && u != pod_uid
            && !(r["kind"] == "Pod" && r["name"] == pod["metadata"]["name"])
    });
    if spec.delete_claims_with_set {
        refs.push(set_owner_ref(set));
    }
    if spec.delete_claims_on_scale_down && condemned {
        refs.push(pod_owner_ref(pod));
    }
    refs
}

/// Bring the members' claims' owner references in line with the retention policy.
async fn sync_claim_owners(
    client: &LocalClient,
    set: &Value,
    spec: &SetSpec,
    members: &BTreeMap<i64, Value>,
) -> Result<(), ApiError> {
    if set
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return Ok(());
    }
    let ns = object::meta_str(set, "namespace");
    let wanted = spec.ordinals();
    for (ord, pod) in members {
        if pods::is_deleting(pod) {
            continue;
        }
        for template in claims_for(set, *ord) {
            let cname = object::meta_str(&template, "name").unwrap_or("");
            let Some(claim) = client.get(claims_res(), ns, cname)? else {
                continue;
            };
            let want = claim_owner_refs(&claim, set, spec, pod, !wanted.contains(ord));
            let have = claim
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let same = want.len() == have.len()
                && want
                    .iter()
                    .all(|w| have.iter().any(|h| h["uid"] == w["uid"]));
            if same {
                continue;
            }
            let refs = if want.is_empty() {
                Value::Null
            } else {
                Value::Array(want)
            };
            let patch = json!({"metadata": {"ownerReferences": refs,
                "resourceVersion": object::meta_str(&claim, "resourceVersion")}});
            match client.merge_patch(claims_res(), ns, cname, &patch).await {
                Ok(_) | Err(ApiError::NotFound { .. }) | Err(ApiError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(spec: Value) -> Value {
        let mut s = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "d", "uid": "set-uid", "generation": 2},
            "spec": {"replicas": 3, "serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}],
                             "volumes": [{"name": "www", "emptyDir": {}}, {"name": "cfg", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www", "labels": {"tier": "data"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]},
        });
        if let (Some(base), Some(extra)) = (s["spec"].as_object_mut(), spec.as_object()) {
            base.extend(extra.clone());
        }
        s
    }

    fn now() -> DateTime<Utc> {
        pods::parse_time("2024-01-01T00:01:00Z").unwrap()
    }

    /// A member at `rev`, Running and Ready since `ready_at` (or not ready).
    fn member(ord: i64, rev: &str, ready_at: Option<&str>) -> Value {
        let ready = ready_at.map_or(json!("False"), |_| json!("True"));
        json!({"metadata": {"name": format!("web-{ord}"), "uid": format!("u{ord}"),
                "labels": {"app": "web", POD_NAME_LABEL: format!("web-{ord}"), POD_INDEX_LABEL: ord.to_string(), REVISION_LABEL: rev}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready,
                "lastTransitionTime": ready_at.unwrap_or("2024-01-01T00:00:00Z")}]}})
    }

    fn by_ord(pods: &[Value]) -> BTreeMap<i64, &Value> {
        pods.iter()
            .map(|p| {
                let n = object::meta_str(p, "name").unwrap();
                (parent_and_ordinal(n).unwrap().1, p)
            })
            .collect()
    }

    const OLD: &str = "2024-01-01T00:00:00Z";

    #[test]
    fn names_split_into_parent_and_ordinal() {
        assert_eq!(parent_and_ordinal("web-0"), Some(("web", 0)));
        assert_eq!(parent_and_ordinal("my-db-12"), Some(("my-db", 12)));
        assert_eq!(parent_and_ordinal("web-x"), None);
        assert_eq!(parent_and_ordinal("web-"), None);
        assert_eq!(parent_and_ordinal("web-+1"), None);
        assert_eq!(parent_and_ordinal("web"), None);
        assert_eq!(claim_name("www", "web", 2), "www-web-2");
    }

    #[test]
    fn defaults_read_from_spec() {
        let s = SetSpec::of(&set(
            json!({"ordinals": {"start": 5}, "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"}}),
        ));
        assert_eq!(s.ordinals(), 5..8);
        assert!(
            s.parallel && s.rolling && s.delete_claims_with_set && !s.delete_claims_on_scale_down
        );
        assert_eq!(s.partition, 2);
        let d = SetSpec::of(&json!({"spec": {}}));
        assert_eq!(
            (d.replicas, d.start, d.parallel, d.rolling),
            (1, 0, false, true)
        );
    }

    #[test]
    fn pods_get_identity_and_claims() {
        let s = set(json!({}));
        let t = s["spec"]["template"].clone();
        let p = pod_for(&s, &t, "web-abc", 1);
        assert_eq!(p["metadata"]["name"], "web-1");
        assert_eq!(p["metadata"]["namespace"], "d");
        let labels = &p["metadata"]["labels"];
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[POD_NAME_LABEL], "web-1");
        assert_eq!(labels[POD_INDEX_LABEL], "1");
        assert_eq!(labels[REVISION_LABEL], "web-abc");
        assert_eq!(p["spec"]["hostname"], "web-1");
        assert_eq!(p["spec"]["subdomain"], "web");
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["controller"].as_bool()),
            (Some("StatefulSet"), Some(true))
        );
        // The claim template replaces the template's volume of the same name.
        assert_eq!(
            p["spec"]["volumes"],
            json!([{"name": "cfg", "emptyDir": {}}, {"name": "www", "persistentVolumeClaim": {"claimName": "www-web-1"}}])
        );
        let claims = claims_for(&s, 1);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0]["metadata"]["name"], "www-web-1");
        assert_eq!(
            claims[0]["metadata"]["labels"],
            json!({"tier": "data", "app": "web"})
        );
        assert_eq!(claims[0]["spec"]["resources"]["requests"]["storage"], "1Gi");
    }

    #[test]
    fn revisions_hash_the_template() {
        let a = set(json!({}));
        let mut b = a.clone();
        b["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        let ra = new_revision(&a, 1, Some(0));
        assert_eq!(ra["revision"], 1);
        assert!(ra["metadata"]["name"].as_str().unwrap().starts_with("web-"));
        assert_eq!(ra["data"]["spec"]["template"]["$patch"], "replace");
        assert_eq!(revision_template(&ra), a["spec"]["template"]);
        assert_eq!(ra["metadata"]["labels"]["app"], "web");
        assert_eq!(
            new_revision(&a, 2, Some(0))["metadata"]["name"],
            ra["metadata"]["name"]
        );
        assert_ne!(
            new_revision(&b, 1, Some(0))["metadata"]["name"],
            ra["metadata"]["name"]
        );
        assert_ne!(
            new_revision(&a, 1, Some(1))["metadata"]["name"],
            ra["metadata"]["name"]
        );
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        let spec = SetSpec::of(&set(json!({})));
        let p = plan(&spec, &BTreeMap::new(), "r1", now());
        assert_eq!(
            p.steps,
            vec![Step::Create {
                ordinal: 0,
                current: false
            }]
        );
        // web-0 exists but is not Ready: nothing more.
        let pods = [member(0, "r1", None)];
        assert!(plan(&spec, &by_ord(&pods), "r1", now()).steps.is_empty());
        let pods = [member(0, "r1", Some(OLD))];
        assert_eq!(
            plan(&spec, &by_ord(&pods), "r1", now()).steps,
            vec![Step::Create {
                ordinal: 1,
                current: false
            }]
        );
        // A failed pod is deleted first; its replacement comes on a later pass.
        let mut failed = member(0, "r1", Some(OLD));
        failed["status"]["phase"] = json!("Failed");
        let pods = [failed];
        assert_eq!(
            plan(&spec, &by_ord(&pods), "r1", now()).steps,
            vec![Step::Delete {
                name: "web-0".into(),
                uid: "u0".into(),
                why: "failed"
            }]
        );
    }

    #[test]
    fn min_ready_seconds_holds_the_next_ordinal() {
        let spec = SetSpec::of(&set(json!({"minReadySeconds": 30})));
        let pods = [member(0, "r1", Some("2024-01-01T00:00:50Z"))];
        let p = plan(&spec, &by_ord(&pods), "r1", now());
        assert!(p.steps.is_empty());
        assert_eq!(p.requeue, Some(Duration::from_millis(20_050)));
    }

    #[test]
    fn parallel_creates_all_and_ordinals_start_where_asked() {
        let spec = SetSpec::of(&set(
            json!({"podManagementPolicy": "Parallel", "ordinals": {"start": 3}}),
        ));
        let p = plan(&spec, &BTreeMap::new(), "r1", now());
        let ords: Vec<i64> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::Create { ordinal, .. } => *ordinal,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ords, vec![3, 4, 5]);
    }

    #[test]
    fn scale_down_takes_the_highest_ordinal_first_and_waits() {
        let spec = SetSpec::of(&set(json!({"replicas": 1})));
        let pods: Vec<Value> = (0..3).map(|o| member(o, "r1", Some(OLD))).collect();
        assert_eq!(
            plan(&spec, &by_ord(&pods), "r1", now()).steps,
            vec![Step::Delete {
                name: "web-2".into(),
                uid: "u2".into(),
                why: "scale down"
            }]
        );
        let mut pods = pods;
        pods[2]["metadata"]["deletionTimestamp"] = json!(OLD);
        assert!(plan(&spec, &by_ord(&pods), "r1", now()).steps.is_empty());
        pods.pop();
        assert_eq!(
            plan(&spec, &by_ord(&pods), "r1", now()).steps,
            vec![Step::Delete {
                name: "web-1".into(),
                uid: "u1".into(),
                why: "scale down"
            }]
        );
    }

    #[test]
    fn rolling_update_stops_at_the_partition() {
        let spec = SetSpec::of(&set(
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}),
        ));
        let mut pods: Vec<Value> = (0..3).map(|o| member(o, "r1", Some(OLD))).collect();
        let del = |n: i64| Step::Delete {
            name: format!("web-{n}"),
            uid: format!("u{n}"),
            why: "update",
        };
        assert_eq!(plan(&spec, &by_ord(&pods), "r2", now()).steps, vec![del(2)]);
        // The updated web-2 is not Ready yet: wait.
        pods[2] = member(2, "r2", None);
        assert!(plan(&spec, &by_ord(&pods), "r2", now()).steps.is_empty());
        pods[2] = member(2, "r2", Some(OLD));
        assert_eq!(plan(&spec, &by_ord(&pods), "r2", now()).steps, vec![del(1)]);
        pods[1] = member(1, "r2", Some(OLD));
        assert!(plan(&spec, &by_ord(&pods), "r2", now()).steps.is_empty());
        // A missing ordinal below the partition comes back at the current revision.
        pods.remove(0);
        assert_eq!(
            plan(&spec, &by_ord(&pods), "r2", now()).steps,
            vec![Step::Create {
                ordinal: 0,
                current: true
            }]
        );
        // OnDelete never deletes for an update.
        let on_delete = SetSpec::of(&set(json!({"updateStrategy": {"type": "OnDelete"}})));
        let pods: Vec<Value> = (0..3).map(|o| member(o, "r1", Some(OLD))).collect();
        assert!(plan(&on_delete, &by_ord(&pods), "r2", now())
            .steps
            .is_empty());
    }

    #[test]
    fn missing_identity_labels_are_restored() {
        let spec = SetSpec::of(&set(json!({"replicas": 1})));
        let mut p = member(0, "r1", Some(OLD));
        p["metadata"]["labels"] = json!({"app": "web", REVISION_LABEL: "r1"});
        let pods = [p];
        assert_eq!(
            plan(&spec, &by_ord(&pods), "r1", now()).steps,
            vec![Step::Relabel {
                name: "web-0".into(),
                labels: json!({POD_NAME_LABEL: "web-0", POD_INDEX_LABEL: "0"})
            }]
        );
    }

    #[test]
    fn status_counts_revisions_and_completes_rollouts() {
        let s = set(json!({}));
        let spec = SetSpec::of(&s);
        let a = member(0, "r1", Some(OLD));
        let b = member(1, "r2", Some(OLD));
        let c = member(2, "r2", None);
        let st = compute_status(&s, &spec, &[&a, &b, &c], "r1", "r2", 0, now());
        assert_eq!(
            st,
            json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 2, "currentReplicas": 1,
                "updatedReplicas": 2, "availableReplicas": 2, "currentRevision": "r1", "updateRevision": "r2", "collisionCount": 0})
        );
        let a = member(0, "r2", Some(OLD));
        let c = member(2, "r2", Some(OLD));
        let st = compute_status(&s, &spec, &[&a, &b, &c], "r1", "r2", 0, now());
        assert_eq!(
            (
                st["currentRevision"].as_str(),
                st["currentReplicas"].as_i64()
            ),
            (Some("r2"), Some(3))
        );
    }

    #[test]
    fn retention_policy_sets_claim_owners() {
        let s = set(json!({}));
        let pod = json!({"metadata": {"name": "web-2", "uid": "p2"}});
        let claim = json!({"metadata": {"ownerReferences": [{"kind": "Pod", "name": "web-2", "uid": "old"}, {"kind": "Other", "uid": "x"}]}});
        let mut spec = SetSpec::of(&s);
        let uids = |refs: Vec<Value>| {
            refs.iter()
                .map(|r| r["uid"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            uids(claim_owner_refs(&claim, &s, &spec, &pod, true)),
            vec!["x"]
        );
        spec.delete_claims_with_set = true;
        spec.delete_claims_on_scale_down = true;
        assert_eq!(
            uids(claim_owner_refs(&claim, &s, &spec, &pod, false)),
            vec!["x", "set-uid"]
        );
        assert_eq!(
            uids(claim_owner_refs(&claim, &s, &spec, &pod, true)),
            vec!["x", "set-uid", "p2"]
        );
    }
}
