//! The scheduler's built-in volume step (Kubernetes' VolumeBinding plugin,
//! kept in the host rather than in the Wasm policies because it reads
//! claims, volumes and classes from the store):
//!
//! - before filtering, a pod whose claims are missing, being deleted, or
//!   unbound with Immediate binding is unschedulable on every node;
//! - filtering keeps nodes that reach every bound volume (its node
//!   affinity) and, for each unbound WaitForFirstConsumer claim, either hold
//!   a free matching volume or can have one provisioned there;
//! - before binding, each such claim gets `volume.kubernetes.io/selected-node`
//!   and the pod is bound only once its claims are (as PreBind waits), so
//!   the agent starts it with its volumes in place.

use crate::api::client::LocalClient;
use crate::api::resources::{self, ResourceInfo};
use crate::api::AppState;
use crate::controllers::volume::matching::{self, ANN_SELECTED_NODE, NO_PROVISIONER};
use crate::controllers::volume::provisioner::{ANN_NODE_STORAGE_ROOT, LOCAL_PATH};
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long binding a pod waits for its WaitForFirstConsumer claims to be
/// bound after the node was chosen (Kubernetes' default is 600 s).
pub const BIND_TIMEOUT: Duration = Duration::from_secs(120);

fn res(group: &str, plural: &str) -> &'static ResourceInfo {
    resources::lookup(group, "v1", plural).expect("served")
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// A claim whose binding waits for the pod's node.
struct Delayed {
    claim: Value,
    class: Value,
    /// Free volumes that could serve it (ignoring node affinity).
    candidates: Vec<Value>,
}

/// What a pod's claims require of a node.
#[derive(Default)]
pub struct VolumeCheck {
    bound: Vec<Value>,
    delayed: Vec<Delayed>,
    /// Claims already promised to a node by an earlier decision.
    pinned: Vec<String>,
}

impl VolumeCheck {
    /// Read the pod's claims. `Err` is a reason no node can take the pod now.
    pub fn gather(client: &LocalClient, ns: &str, pod: &Value) -> Result<VolumeCheck, String> {
        let mut out = VolumeCheck::default();
        let claims = matching::pod_claims(pod);
        if claims.is_empty() {
            return Ok(out);
        }
        let err = |e: crate::api::error::ApiError| format!("{:?}", e.status()["message"]);
        let mut volumes: Option<Vec<Value>> = None;
        for name in claims {
            let claim = client
                .get(res("", "persistentvolumeclaims"), Some(ns), name)
                .map_err(err)?
                .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
            if claim.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
            }
            let volume = s(&claim, "/spec/volumeName");
            if !volume.is_empty() {
                match client
                    .get(res("", "persistentvolumes"), None, volume)
                    .map_err(err)?
                {
                    Some(pv) => out.bound.push(pv),
                    None => {
                        return Err(format!(
                            "persistentvolume {volume:?} bound to persistentvolumeclaim {name:?} not found"
                        ))
                    }
                }
                continue;
            }
            let class_name = matching::claim_class(&claim);
            let class = if class_name.is_empty() {
                None
            } else {
                client
                    .get(res("storage.k8s.io", "storageclasses"), None, class_name)
                    .map_err(err)?
            };
            let Some(class) =
                class.filter(|c| s(c, "/volumeBindingMode") == "WaitForFirstConsumer")
            else {
                return Err("pod has unbound immediate PersistentVolumeClaims".into());
            };
            if let Some(n) = claim
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(ANN_SELECTED_NODE))
                .and_then(Value::as_str)
            {
                out.pinned.push(n.to_string());
            }
            if volumes.is_none() {
                volumes = Some(
                    client
                        .list(res("", "persistentvolumes"), None, None)
                        .map_err(err)?
                        .0,
                );
            }
            let candidates = volumes
                .iter()
                .flatten()
                .filter(|pv| {
                    pv.pointer("/spec/claimRef").is_none_or(Value::is_null)
                        && pv.pointer("/metadata/deletionTimestamp").is_none()
                        && s(pv, "/status/phase") != "Released"
                        && matching::unsatisfied(&claim, pv).is_none()
                })
                .cloned()
                .collect();
            out.delayed.push(Delayed {
                claim,
                class,
                candidates,
            });
        }
        Ok(out)
    }

    /// Whether the pod has claims to check at all.
    pub fn is_empty(&self) -> bool {
        self.bound.is_empty() && self.delayed.is_empty()
    }

    /// Whether `node` (its JSON) can take the pod's volumes; Err is the reason.
    pub fn node_ok(&self, node: &Value) -> Result<(), &'static str> {
        let name = s(node, "/metadata/name");
        let labels = node.pointer("/metadata/labels").and_then(Value::as_object);
        if self.pinned.iter().any(|p| p != name) {
            return Err("node(s) did not match the node selected for a pod's volume claim");
        }
        if !self
            .bound
            .iter()
            .all(|pv| matching::node_allowed(pv, name, labels))
        {
            return Err("node(s) had volume node affinity conflict");
        }
        for d in &self.delayed {
            let static_ok = d
                .candidates
                .iter()
                .any(|pv| matching::node_allowed(pv, name, labels));
            if static_ok {
                continue;
            }
            let prov = s(&d.class, "/provisioner");
            let topology_ok = match d.class.get("allowedTopologies").and_then(Value::as_array) {
                Some(terms) if !terms.is_empty() => terms.iter().any(|t| {
                    t.get("matchLabelExpressions")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .all(|e| {
                            let have = labels
                                .and_then(|l| l.get(s(e, "/key")))
                                .and_then(Value::as_str);
                            e.get("values")
                                .and_then(Value::as_array)
                                .is_some_and(|vs| vs.iter().any(|v| v.as_str() == have))
                        })
                }),
                _ => true,
            };
            let can_provision = prov != NO_PROVISIONER
                && topology_ok
                && (prov != LOCAL_PATH
                    || node
                        .pointer("/metadata/annotations")
                        .and_then(|a| a.get(ANN_NODE_STORAGE_ROOT))
                        .is_some());
            if !can_provision {
                return Err("node(s) didn't find available persistent volumes to bind");
            }
        }
        Ok(())
    }

    /// The claims to annotate with the chosen node before binding: (name, already annotated).
    pub fn delayed_claims(&self) -> Vec<String> {
        self.delayed
            .iter()
            .map(|d| s(&d.claim, "/metadata/name").to_string())
            .collect()
    }
}

/// Set `volume.kubernetes.io/selected-node` on the delayed claims, then wait
/// until every one is bound (or `BIND_TIMEOUT` passes).
pub async fn prebind(
    state: Arc<AppState>,
    ns: &str,
    claims: &[String],
    node: &str,
) -> Result<(), String> {
    if claims.is_empty() {
        return Ok(());
    }
    let client = LocalClient::new(state);
    let info = res("", "persistentvolumeclaims");
    let err = |e: crate::api::error::ApiError| format!("{:?}", e.status()["message"]);
    for c in claims {
        let patch = json!({"metadata": {"annotations": {ANN_SELECTED_NODE: node}}});
        client
            .merge_patch(info, Some(ns), c, &patch)
            .await
            .map_err(err)?;
    }
    let wait = async {
        loop {
            let (items, rev) = client.list(info, Some(ns), None).map_err(err)?;
            let bound = |name: &str| {
                items.iter().any(|c| {
                    s(c, "/metadata/name") == name
                        && !s(c, "/spec/volumeName").is_empty()
                        && s(c, "/status/phase") == "Bound"
                })
            };
            if claims.iter().all(|c| bound(c)) {
                return Ok(());
            }
            // Any change in the namespace's claims: look again. (A watch
            // refused because the list's revision is not published yet is
            // simply tried again.)
            match client.watch(info, Some(ns), rev) {
                Ok(mut w) => {
                    // The first batch (history since the list) may be empty:
                    // wait for one that carries a change, or the stream's end.
                    loop {
                        match w.next().await {
                            Some(Ok(batch)) if batch.is_empty() => continue,
                            Some(Ok(_)) => break,
                            _ => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                break;
                            }
                        }
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    match tokio::time::timeout(BIND_TIMEOUT, wait).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timed out waiting for persistentvolumeclaims {claims:?} to be bound"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, root: bool) -> Value {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
        if root {
            n["metadata"]["annotations"] = json!({ANN_NODE_STORAGE_ROOT: "/s"});
        }
        n
    }

    #[test]
    fn bound_volumes_pin_the_pod_and_delayed_claims_need_storage_on_the_node() {
        let pinned = json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]}}}});
        let check = VolumeCheck {
            bound: vec![pinned],
            ..Default::default()
        };
        assert!(check.node_ok(&node("a", false)).is_ok());
        assert_eq!(
            check.node_ok(&node("b", false)),
            Err("node(s) had volume node affinity conflict")
        );

        let claim = json!({"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}});
        let local_path =
            json!({"provisioner": LOCAL_PATH, "volumeBindingMode": "WaitForFirstConsumer"});
        let check = VolumeCheck {
            delayed: vec![Delayed {
                claim: claim.clone(),
                class: local_path,
                candidates: vec![],
            }],
            ..Default::default()
        };
        assert!(check.node_ok(&node("a", true)).is_ok());
        assert_eq!(
            check.node_ok(&node("b", false)),
            Err("node(s) didn't find available persistent volumes to bind")
        );
        assert_eq!(check.delayed_claims(), ["c"]);

        // Static volumes only: the node must hold a free matching one.
        let static_only =
            json!({"provisioner": NO_PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer"});
        let on_b = json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}}});
        let mut check = VolumeCheck {
            delayed: vec![Delayed {
                claim,
                class: static_only,
                candidates: vec![on_b],
            }],
            ..Default::default()
        };
        assert!(check.node_ok(&node("b", false)).is_ok());
        assert!(check.node_ok(&node("a", true)).is_err());
        // A claim already promised to a node keeps the pod there.
        check.pinned = vec!["c".into()];
        assert!(check.node_ok(&node("b", false)).is_err());
    }
}
