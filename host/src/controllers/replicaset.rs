//! The ReplicaSet controller: keeps `spec.replicas` active pods that match the
//! selector, adopting matching orphans and releasing pods that stop matching,
//! and reports replicas, readiness and availability in the status.
//!
//! Reads go to the store, which already holds every write this controller has
//! had acknowledged, and one key is reconciled at a time; so a reconcile never
//! misses its own earlier creates the way a lagging informer cache would.
//! [`Expectations`] still checks that the list it reads is at least as new as
//! its last write, which keeps the "no over-creation" guarantee if reads ever
//! move to a cache.

use super::events;
use super::ownership::{self, Claim, SelectorIndex};
use super::pod_state;
use super::pods;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use crate::api::selector::LabelSelector;
use crate::store::Revision;
use chrono::Utc;
use futures::future::join_all;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

const COMPONENT: &str = "replicaset-controller";

/// At most this many pods are created or deleted in one reconcile (Kubernetes' burstReplicas).
const BURST: usize = 500;

fn rs_info() -> &'static ResourceInfo {
    resources::lookup("apps", "v1", "replicasets").expect("replicasets are served")
}

fn pod_info() -> &'static ResourceInfo {
    resources::lookup("", "v1", "pods").expect("pods are served")
}

/// The store revision each key's next list must have reached: the revision
/// after this controller's last writes for that key.
#[derive(Default)]
pub struct Expectations {
    after: Mutex<HashMap<ObjectKey, Revision>>,
}

impl Expectations {
    /// Note that writes for `key` are visible from `rev` on.
    pub fn wrote(&self, key: &ObjectKey, rev: Revision) {
        let mut m = self.after.lock().expect("expectations lock");
        let e = m.entry(key.clone()).or_default();
        *e = (*e).max(rev);
    }

    /// Whether a list taken at `rev` includes this controller's writes for `key`.
    pub fn satisfied(&self, key: &ObjectKey, rev: Revision) -> bool {
        self.after
            .lock()
            .expect("expectations lock")
            .get(key)
            .is_none_or(|want| rev >= *want)
    }

    /// Forget a deleted object.
    pub fn forget(&self, key: &ObjectKey) {
        self.after.lock().expect("expectations lock").remove(key);
    }
}

/// The ReplicaSet reconciler.
#[derive(Default)]
pub struct ReplicaSetReconciler {
    selectors: SelectorIndex,
    expectations: Expectations,
}

/// A pod for `rs` from its template, named `<rs>-<random>`.
pub fn pod_from_template(rs: &Value, owner_ref: Value) -> Value {
    let template = rs
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut meta = Map::new();
    let name = object::meta_str(rs, "name").unwrap_or("");
    meta.insert("generateName".into(), json!(format!("{name}-")));
    for field in ["labels", "annotations", "finalizers"] {
        if let Some(v) = template
            .pointer(&format!("/metadata/{field}"))
            .filter(|v| !v.is_null())
        {
            meta.insert(field.into(), v.clone());
        }
    }
    meta.insert("ownerReferences".into(), json!([owner_ref]));
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec").cloned().unwrap_or_else(|| json!({}))})
}

/// The status fields this controller owns, computed from the pods it controls.
/// Also returns when the next ready-but-not-yet-available pod becomes available.
pub fn compute_status(
    rs: &Value,
    pods: &[&Value],
    now: chrono::DateTime<Utc>,
) -> (Value, Option<Duration>) {
    let min_ready = rs
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let template_labels = rs
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    let mut fully_labeled = 0;
    let mut ready = 0;
    let mut available = 0;
    let mut next: Option<Duration> = None;
    for p in pods {
        let labels = ownership::labels(p);
        if template_labels.is_none_or(|t| {
            t.iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        }) {
            fully_labeled += 1;
        }
        if pods::is_ready(p) {
            ready += 1;
            match pod_state::available_in(p, min_ready, now) {
                Some(d) if d.is_zero() => available += 1,
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
        }
    }
    let status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0),
    });
    (status, next)
}

/// Keep an existing ReplicaFailure condition's time, add one for a create
/// error, drop it once creates succeed again.
fn with_failure_condition(
    mut status: Value,
    old: Option<&Value>,
    create_error: Option<&str>,
) -> Value {
    let existing = old
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "ReplicaFailure"))
        .cloned();
    let cond = match (create_error, existing) {
        (Some(_), Some(e)) => Some(e),
        (Some(msg), None) => Some(json!({
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": msg, "lastTransitionTime": object::now_rfc3339(),
        })),
        (None, _) => None,
    };
    if let Some(c) = cond {
        status["conditions"] = json!([c]);
    }
    status
}

impl ReplicaSetReconciler {
    async fn create_one(client: &LocalClient, rs: &Value, pod: &Value) -> Result<Value, ApiError> {
        let ns = object::meta_str(rs, "namespace");
        let mut last = None;
        // A generated name can collide with an existing pod; try a fresh one.
        for _ in 0..3 {
            match client.create(pod_info(), ns, pod.clone()).await {
                Ok(p) => {
                    let msg = format!(
                        "Created pod: {}",
                        object::meta_str(&p, "name").unwrap_or("")
                    );
                    events::record(client, COMPONENT, rs, "Normal", "SuccessfulCreate", &msg).await;
                    return Ok(p);
                }
                Err(e @ ApiError::AlreadyExists { .. }) => last = Some(e),
                Err(e) => {
                    let msg = format!(
                        "Error creating: {}",
                        e.status()["message"].as_str().unwrap_or("")
                    );
                    events::record(client, COMPONENT, rs, "Warning", "FailedCreate", &msg).await;
                    return Err(e);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Create `count` pods in batches of 1, 2, 4, ... (Kubernetes' slow start),
    /// so a template that cannot be created fails once, not `count` times.
    async fn create_pods(
        client: &LocalClient,
        rs: &Value,
        count: usize,
    ) -> (Vec<Value>, Option<ApiError>) {
        let pod = pod_from_template(rs, ownership::controller_ref(rs));
        let mut created = Vec::new();
        let mut batch = 1;
        while created.len() < count {
            let n = batch.min(count - created.len());
            let results = join_all((0..n).map(|_| Self::create_one(client, rs, &pod))).await;
            let mut err = None;
            for r in results {
                match r {
                    Ok(p) => created.push(p),
                    Err(e) => err = Some(e),
                }
            }
            if err.is_some() {
                return (created, err);
            }
            batch *= 2;
        }
        (created, None)
    }

    async fn delete_pods(
        client: &LocalClient,
        rs: &Value,
        victims: &[&Value],
    ) -> Result<(), ApiError> {
        let ns = object::meta_str(rs, "namespace");
        let results = join_all(victims.iter().map(|p| async move {
            let name = object::meta_str(p, "name").unwrap_or("");
            let opts = json!({"preconditions": {"uid": object::meta_str(p, "uid")}});
            match client.delete(pod_info(), ns, name, &opts).await {
                Ok(true) => {
                    events::record(
                        client,
                        COMPONENT,
                        rs,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {name}"),
                    )
                    .await;
                    Ok(())
                }
                // Gone already, or a different pod by now under that name.
                Ok(false) | Err(ApiError::Conflict { .. }) => Ok(()),
                Err(e) => {
                    let msg = format!(
                        "Error deleting: {}",
                        e.status()["message"].as_str().unwrap_or("")
                    );
                    events::record(client, COMPONENT, rs, "Warning", "FailedDelete", &msg).await;
                    Err(e)
                }
            }
        }))
        .await;
        results.into_iter().collect()
    }
}

impl Reconciler for ReplicaSetReconciler {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn watches(&self) -> Vec<Watch> {
        vec![
            Watch::primary(rs_info()),
            Watch {
                resource: pod_info(),
                map: self.selectors.child_mapper("ReplicaSet"),
            },
        ]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let ns = key.namespace.clone().unwrap_or_default();
        let Some(rs) = client.get(rs_info(), Some(&ns), &key.name)? else {
            self.selectors.remove(&ns, &key.name);
            self.expectations.forget(key);
            return Ok(Action::AwaitChange);
        };
        let selector =
            match LabelSelector::from_json(rs.pointer("/spec/selector").unwrap_or(&Value::Null)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(replicaset = %key.name, error = %e, "invalid selector");
                    return Ok(Action::AwaitChange);
                }
            };
        self.selectors.set(&ns, &key.name, selector.clone());
        let (mut listed, rev) = client.list(pod_info(), Some(&ns), None)?;
        if !self.expectations.satisfied(key, rev) {
            return Ok(Action::Requeue(Duration::from_millis(10)));
        }
        let uid = object::meta_str(&rs, "uid").unwrap_or("").to_string();
        let deleting = rs.pointer("/metadata/deletionTimestamp").is_some();

        // Claim: adopt matching orphans, release owned pods that stopped matching.
        let mut owned: Vec<usize> = Vec::new();
        let mut wrote = false;
        for (i, pod) in listed.iter_mut().enumerate() {
            if !pods::is_active(pod) {
                continue;
            }
            match ownership::claim(pod, &uid, &selector, deleting) {
                Claim::Owned => owned.push(i),
                Claim::Adopt => {
                    match ownership::adopt(client, pod_info(), pod, ownership::controller_ref(&rs))
                        .await
                    {
                        Ok(p) => {
                            *pod = p;
                            owned.push(i);
                            wrote = true;
                        }
                        Err(ApiError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Claim::Release => {
                    ownership::release(client, pod_info(), pod, &uid).await?;
                    wrote = true;
                }
                Claim::Ignore => {}
            }
        }

        // Converge the number of pods.
        let desired = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        let now = Utc::now();
        let mut created = Vec::new();
        let mut deleted: HashSet<String> = HashSet::new();
        let mut create_error = None;
        let mut more = false;
        if !deleting && owned.len() < desired {
            let want = desired - owned.len();
            more = want > BURST;
            let (made, err) = Self::create_pods(client, &rs, want.min(BURST)).await;
            wrote |= !made.is_empty() || err.is_some();
            created = made;
            create_error = err;
        } else if !deleting && owned.len() > desired {
            let excess = owned.len() - desired;
            more = excess > BURST;
            let candidates: Vec<&Value> = owned.iter().map(|i| &listed[*i]).collect();
            // Siblings under the same controller (a Deployment's other ReplicaSets)
            // count when spreading deletions across nodes.
            let related_uids: HashSet<String> = match ownership::controller_uid(&rs) {
                Some(owner) => {
                    let (all_rs, _) = client.list(rs_info(), Some(&ns), None)?;
                    all_rs
                        .iter()
                        .filter(|r| ownership::controller_uid(r) == Some(owner))
                        .filter_map(|r| object::meta_str(r, "uid").map(str::to_string))
                        .collect()
                }
                None => HashSet::from([uid.clone()]),
            };
            let related: Vec<&Value> = listed
                .iter()
                .filter(|p| {
                    pods::is_active(p)
                        && ownership::controller_uid(p).is_some_and(|u| related_uids.contains(u))
                })
                .collect();
            let victims =
                pod_state::pick_for_deletion(&candidates, &related, excess.min(BURST), now);
            deleted = victims
                .iter()
                .filter_map(|p| object::meta_str(p, "uid").map(str::to_string))
                .collect();
            wrote = true;
            Self::delete_pods(client, &rs, &victims).await?;
        }
        if wrote {
            self.expectations
                .wrote(key, client.state().store.current_revision());
        }

        // Status reflects the pods as they are after this reconcile's changes.
        let live: Vec<&Value> = owned
            .iter()
            .map(|i| &listed[*i])
            .filter(|p| !object::meta_str(p, "uid").is_some_and(|u| deleted.contains(u)))
            .chain(created.iter())
            .collect();
        let (status, next_available) = compute_status(&rs, &live, now);
        let create_msg = create_error
            .as_ref()
            .map(|e| e.status()["message"].as_str().unwrap_or("").to_string());
        let status = with_failure_condition(status, rs.get("status"), create_msg.as_deref());
        if rs.get("status") != Some(&status) {
            let mut updated = rs.clone();
            updated["status"] = status;
            match client.update_status(rs_info(), updated).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = create_error {
            return Err(e);
        }
        Ok(match (more, next_available) {
            (true, _) => Action::Requeue(Duration::ZERO),
            // Wake up when the next pod has been ready for minReadySeconds.
            (false, Some(d)) => Action::Requeue(d + Duration::from_millis(50)),
            (false, None) => Action::AwaitChange,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web", "namespace": "d", "uid": "rs-uid", "generation": 3},
            "spec": {"replicas": 3, "minReadySeconds": 10, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}, "annotations": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
        })
    }

    #[test]
    fn pods_come_from_the_template() {
        let r = rs();
        let p = pod_from_template(&r, ownership::controller_ref(&r));
        assert_eq!(p["metadata"]["generateName"], "web-");
        assert_eq!(p["metadata"]["labels"], json!({"app": "web", "tier": "fe"}));
        assert_eq!(p["metadata"]["annotations"], json!({"a": "b"}));
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet");
        assert_eq!(owner["uid"], "rs-uid");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
        assert_eq!(p["spec"]["containers"][0]["image"], "nginx");
    }

    #[test]
    fn status_counts_ready_available_and_labels() {
        let now = pods::parse_time("2024-01-01T00:01:00Z").unwrap();
        let ready = |at: &str| json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}, "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": at}]}});
        let long_ready = ready("2024-01-01T00:00:00Z");
        let just_ready = ready("2024-01-01T00:00:55Z");
        let partial = json!({"metadata": {"labels": {"app": "web"}}});
        let (s, next) = compute_status(&rs(), &[&long_ready, &just_ready, &partial], now);
        assert_eq!(
            s,
            json!({"replicas": 3, "fullyLabeledReplicas": 2, "readyReplicas": 2, "availableReplicas": 1, "observedGeneration": 3})
        );
        assert_eq!(next, Some(Duration::from_secs(5)));
    }

    #[test]
    fn failure_condition_is_kept_then_cleared() {
        let s = with_failure_condition(json!({"replicas": 0}), None, Some("quota"));
        assert_eq!(s["conditions"][0]["reason"], "FailedCreate");
        let again = with_failure_condition(json!({"replicas": 0}), Some(&s), Some("quota again"));
        assert_eq!(again["conditions"][0], s["conditions"][0]);
        let cleared = with_failure_condition(json!({"replicas": 0}), Some(&s), None);
        assert!(cleared.get("conditions").is_none());
    }

    #[test]
    fn expectations_need_a_fresh_enough_list() {
        let e = Expectations::default();
        let k = ObjectKey {
            namespace: Some("d".into()),
            name: "web".into(),
        };
        assert!(e.satisfied(&k, 1));
        e.wrote(&k, 10);
        assert!(!e.satisfied(&k, 9));
        assert!(e.satisfied(&k, 10));
        e.forget(&k);
        assert!(e.satisfied(&k, 1));
    }
}
