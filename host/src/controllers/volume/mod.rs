//! The PersistentVolume controller: binds claims to volumes, provisions
//! volumes for classes with a known provisioner, releases and reclaims
//! volumes when their claims go, and keeps the `pvc-protection` and
//! `pv-protection` finalizers (Kubernetes' persistentvolume-binder,
//! pvc-protection and pv-protection controllers in one reconciler).
//!
//! Keys: a claim is `(Some(namespace), name)`, a volume `(None, name)`, and
//! `(None, "*")` re-examines every unbound claim (a new free volume or a
//! class change may satisfy any of them). One reconciler owns both sides,
//! so a claim and a volume are never written by two workers at once.
//!
//! Binding writes the volume first (`claimRef`, then phase Bound), then the
//! claim (`volumeName` and `pv.kubernetes.io/bind-completed`, then phase,
//! capacity and access modes), as Kubernetes does: a crash between the two
//! leaves a volume promised to the claim, which the next pass completes.

pub mod matching;
pub mod provisioner;

use super::events;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use matching::{
    ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER, ANN_DEFAULT_CLASS, ANN_PROVISIONED_BY,
    ANN_SELECTED_NODE, NO_PROVISIONER,
};
use provisioner::{Deleted, ProvisionRequest, Provisioner};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const COMPONENT: &str = "persistentvolume-controller";
/// Finalizer keeping a claim while a pod that is not terminated uses it.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Finalizer keeping a volume while it is bound to a claim.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// How soon a failed provisioning is tried again.
const PROVISION_RETRY: Duration = Duration::from_secs(5);

fn pvcs() -> &'static ResourceInfo {
    resources::lookup("", "v1", "persistentvolumeclaims").expect("claims are served")
}
fn pvs() -> &'static ResourceInfo {
    resources::lookup("", "v1", "persistentvolumes").expect("volumes are served")
}
fn classes() -> &'static ResourceInfo {
    resources::lookup("storage.k8s.io", "v1", "storageclasses").expect("classes are served")
}
fn pods() -> &'static ResourceInfo {
    resources::lookup("", "v1", "pods").expect("pods are served")
}
fn nodes() -> &'static ResourceInfo {
    resources::lookup("", "v1", "nodes").expect("nodes are served")
}

fn all_key() -> ObjectKey {
    ObjectKey {
        namespace: None,
        name: "*".into(),
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn set_annotation(v: &mut Value, key: &str, value: &str) {
    let meta = &mut v["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][key] = json!(value);
}

fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

fn has_finalizer(v: &Value, f: &str) -> bool {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|x| x == f))
}

fn add_finalizer(v: &mut Value, f: &str) {
    let meta = &mut v["metadata"];
    if !meta["finalizers"].is_array() {
        meta["finalizers"] = json!([]);
    }
    if let Some(l) = meta["finalizers"].as_array_mut() {
        l.push(json!(f));
    }
}

fn remove_finalizer(v: &mut Value, f: &str) {
    if let Some(l) = v
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    {
        l.retain(|x| x != f);
    }
}

fn with_kind(mut v: Value, kind: &str) -> Value {
    v["kind"] = json!(kind);
    v["apiVersion"] = json!("v1");
    v
}

/// Whether a pod that has not terminated refers to the claim.
pub fn claim_in_use(pods_in_ns: &[Value], claim: &str) -> bool {
    pods_in_ns.iter().any(|p| {
        !matches!(s(p, "/status/phase"), "Succeeded" | "Failed")
            && matching::pod_claims(p).contains(&claim)
    })
}

/// The PV controller; see the module docs.
pub struct VolumeController {
    provisioners: HashMap<String, Arc<dyn Provisioner>>,
    /// Last event (reason, message) per object uid, so a claim waiting for
    /// the same thing does not get the same Event on every pass.
    said: Mutex<HashMap<String, (String, String)>>,
}

impl Default for VolumeController {
    fn default() -> Self {
        Self::new(vec![Arc::new(provisioner::LocalPath)])
    }
}

impl VolumeController {
    /// A controller with these provisioners (the built-in set is local-path).
    pub fn new(list: Vec<Arc<dyn Provisioner>>) -> VolumeController {
        VolumeController {
            provisioners: list
                .into_iter()
                .map(|p| (p.name().to_string(), p))
                .collect(),
            said: Mutex::new(HashMap::new()),
        }
    }

    async fn event(
        &self,
        c: &LocalClient,
        obj: &Value,
        kind: &str,
        ty: &str,
        reason: &str,
        msg: &str,
    ) {
        let uid = s(obj, "/metadata/uid").to_string();
        {
            let mut said = self.said.lock().expect("not poisoned");
            let now = (reason.to_string(), msg.to_string());
            if said.get(&uid) == Some(&now) {
                return;
            }
            said.insert(uid, now);
        }
        events::record(c, COMPONENT, &with_kind(obj.clone(), kind), ty, reason, msg).await;
    }

    fn forget(&self, obj: &Value) {
        self.said
            .lock()
            .expect("not poisoned")
            .remove(s(obj, "/metadata/uid"));
    }

    // ---- claims ----

    async fn sync_claim(&self, c: &LocalClient, ns: &str, name: &str) -> Result<Action, ApiError> {
        let Some(mut claim) = c.get(pvcs(), Some(ns), name)? else {
            return Ok(Action::AwaitChange);
        };
        if deleting(&claim) {
            if has_finalizer(&claim, PVC_PROTECTION) {
                let (in_ns, _) = c.list(pods(), Some(ns), None)?;
                if !claim_in_use(&in_ns, name) {
                    remove_finalizer(&mut claim, PVC_PROTECTION);
                    c.update(pvcs(), claim.clone()).await?;
                    self.forget(&claim);
                }
            }
            return Ok(Action::AwaitChange);
        }
        if !has_finalizer(&claim, PVC_PROTECTION) {
            add_finalizer(&mut claim, PVC_PROTECTION);
            claim = c.update(pvcs(), claim).await?;
        }
        let volume = s(&claim, "/spec/volumeName").to_string();
        // Retroactive default class (Kubernetes 1.28+): an unbound claim
        // with no class at all gets the default class once there is one.
        if volume.is_empty()
            && claim
                .pointer("/spec/storageClassName")
                .is_none_or(Value::is_null)
        {
            let (all, _) = c.list(classes(), None, None)?;
            if let Some(def) = matching::default_class(&all) {
                claim["spec"]["storageClassName"] = json!(s(def, "/metadata/name"));
                claim = c.update(pvcs(), claim).await?;
            }
        }
        if volume.is_empty() {
            self.sync_unbound_claim(c, claim).await
        } else {
            self.sync_bound_claim(c, claim, &volume).await
        }
    }

    async fn sync_unbound_claim(&self, c: &LocalClient, claim: Value) -> Result<Action, ApiError> {
        let class_name = matching::claim_class(&claim).to_string();
        let class = if class_name.is_empty() {
            None
        } else {
            match c.get(classes(), None, &class_name)? {
                Some(cl) => Some(cl),
                None => {
                    let msg = format!("storageclass.storage.k8s.io {class_name:?} not found");
                    self.event(
                        c,
                        &claim,
                        "PersistentVolumeClaim",
                        "Warning",
                        "ProvisioningFailed",
                        &msg,
                    )
                    .await;
                    return Ok(Action::AwaitChange);
                }
            }
        };
        let wffc = class
            .as_ref()
            .is_some_and(|cl| s(cl, "/volumeBindingMode") == "WaitForFirstConsumer");
        let selected = annotation(&claim, ANN_SELECTED_NODE).map(str::to_string);
        if wffc && selected.is_none() {
            self.event(
                c,
                &claim,
                "PersistentVolumeClaim",
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            .await;
            return Ok(Action::AwaitChange);
        }
        let node = match &selected {
            Some(n) => c.get(nodes(), None, n)?,
            None => None,
        };
        let (volumes, _) = c.list(pvs(), None, None)?;
        let at = node.as_ref().map(|n| {
            (
                s(n, "/metadata/name"),
                n.pointer("/metadata/labels").and_then(Value::as_object),
            )
        });
        if let Some(pv) = matching::find_best(&claim, &volumes, at) {
            let pv = pv.clone();
            return self.bind(c, claim, pv).await;
        }
        let Some(class) = class else {
            self.event(
                c,
                &claim,
                "PersistentVolumeClaim",
                "Warning",
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set",
            )
            .await;
            return Ok(Action::AwaitChange);
        };
        let prov_name = s(&class, "/provisioner").to_string();
        if prov_name == NO_PROVISIONER {
            let msg = format!(
                "no persistent volumes available for this claim and storage class {class_name:?} does not provision volumes"
            );
            self.event(
                c,
                &claim,
                "PersistentVolumeClaim",
                "Warning",
                "FailedBinding",
                &msg,
            )
            .await;
            return Ok(Action::AwaitChange);
        }
        let Some(prov) = self.provisioners.get(&prov_name).cloned() else {
            let msg = format!("Waiting for a volume to be created either by the external provisioner '{prov_name}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.");
            self.event(
                c,
                &claim,
                "PersistentVolumeClaim",
                "Normal",
                "ExternalProvisioning",
                &msg,
            )
            .await;
            return Ok(Action::AwaitChange);
        };
        if selected.is_some() && node.is_none() {
            let msg = format!(
                "failed to get target node: node {:?} not found",
                selected.unwrap_or_default()
            );
            self.event(
                c,
                &claim,
                "PersistentVolumeClaim",
                "Warning",
                "ProvisioningFailed",
                &msg,
            )
            .await;
            return Ok(Action::Requeue(PROVISION_RETRY));
        }
        self.provision(c, &claim, &class, prov.as_ref(), node.as_ref())
            .await
    }

    async fn provision(
        &self,
        c: &LocalClient,
        claim: &Value,
        class: &Value,
        prov: &dyn Provisioner,
        node: Option<&Value>,
    ) -> Result<Action, ApiError> {
        let pv_name = format!("pvc-{}", s(claim, "/metadata/uid"));
        if c.get(pvs(), None, &pv_name)?.is_some() {
            // Made on an earlier pass; its watch event completes the binding.
            return Ok(Action::AwaitChange);
        }
        let all_nodes = if node.is_none() {
            c.list(nodes(), None, None)?.0
        } else {
            Vec::new()
        };
        let req = ProvisionRequest {
            pv_name: &pv_name,
            claim,
            class,
            selected_node: node,
            nodes: &all_nodes,
        };
        let made = match prov.provision(&req) {
            Ok(m) => m,
            Err(why) => {
                let msg = format!(
                    "failed to provision volume with StorageClass {:?}: {why}",
                    s(class, "/metadata/name")
                );
                self.event(
                    c,
                    claim,
                    "PersistentVolumeClaim",
                    "Warning",
                    "ProvisioningFailed",
                    &msg,
                )
                .await;
                return Ok(Action::Requeue(PROVISION_RETRY));
            }
        };
        let pv = provisioner::volume_for(&req, prov.name(), made);
        match c.create(pvs(), None, pv).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let msg = format!(
            "Successfully provisioned volume {pv_name} using {}",
            prov.name()
        );
        self.event(
            c,
            claim,
            "PersistentVolumeClaim",
            "Normal",
            "ProvisioningSucceeded",
            &msg,
        )
        .await;
        Ok(Action::AwaitChange)
    }

    async fn sync_bound_claim(
        &self,
        c: &LocalClient,
        claim: Value,
        volume: &str,
    ) -> Result<Action, ApiError> {
        let completed = annotation(&claim, ANN_BIND_COMPLETED).is_some();
        let Some(pv) = c.get(pvs(), None, volume)? else {
            if completed {
                self.claim_lost(c, claim).await?;
            } else {
                let msg = format!("volume {volume:?} requested by the claim does not exist");
                self.event(
                    c,
                    &claim,
                    "PersistentVolumeClaim",
                    "Warning",
                    "FailedBinding",
                    &msg,
                )
                .await;
            }
            return Ok(Action::AwaitChange);
        };
        let free = pv.pointer("/spec/claimRef").is_none_or(Value::is_null);
        if matching::claim_ref_is(&pv, &claim) || (free && !deleting(&pv)) {
            if let Some(why) = matching::unsatisfied(&claim, &pv) {
                let msg = format!("Cannot bind to requested volume {volume:?}: {why}");
                self.event(
                    c,
                    &claim,
                    "PersistentVolumeClaim",
                    "Warning",
                    "VolumeMismatch",
                    &msg,
                )
                .await;
                return Ok(Action::AwaitChange);
            }
            return self.bind(c, claim, pv).await;
        }
        if completed {
            self.claim_lost(c, claim).await?;
        } else {
            let msg = format!("volume {volume:?} already bound to a different claim.");
            self.event(
                c,
                &claim,
                "PersistentVolumeClaim",
                "Warning",
                "FailedBinding",
                &msg,
            )
            .await;
        }
        Ok(Action::AwaitChange)
    }

    async fn claim_lost(&self, c: &LocalClient, mut claim: Value) -> Result<(), ApiError> {
        if s(&claim, "/status/phase") == "Lost" {
            return Ok(());
        }
        self.event(
            c,
            &claim,
            "PersistentVolumeClaim",
            "Warning",
            "ClaimLost",
            "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
        )
        .await;
        claim["status"]["phase"] = json!("Lost");
        c.update_status(pvcs(), claim).await?;
        Ok(())
    }

    /// Bind both halves (idempotent: writes only what is missing).
    async fn bind(
        &self,
        c: &LocalClient,
        mut claim: Value,
        mut pv: Value,
    ) -> Result<Action, ApiError> {
        let pv_name = s(&pv, "/metadata/name").to_string();
        let by_us = !matching::claim_ref_is(&pv, &claim);
        if by_us || s(&pv, "/spec/claimRef/uid").is_empty() {
            pv["spec"]["claimRef"] = json!({
                "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": s(&claim, "/metadata/namespace"), "name": s(&claim, "/metadata/name"),
                "uid": s(&claim, "/metadata/uid"),
                "resourceVersion": s(&claim, "/metadata/resourceVersion"),
            });
            if by_us {
                set_annotation(&mut pv, ANN_BOUND_BY_CONTROLLER, "yes");
            }
            pv = c.update(pvs(), pv).await?;
        }
        if s(&pv, "/status/phase") != "Bound" {
            pv["status"] =
                json!({"phase": "Bound", "lastPhaseTransitionTime": object::now_rfc3339()});
            pv = c.update_status(pvs(), pv).await?;
        }
        if s(&claim, "/spec/volumeName") != pv_name
            || annotation(&claim, ANN_BIND_COMPLETED).is_none()
        {
            if s(&claim, "/spec/volumeName") != pv_name {
                claim["spec"]["volumeName"] = json!(pv_name);
                set_annotation(&mut claim, ANN_BOUND_BY_CONTROLLER, "yes");
            }
            set_annotation(&mut claim, ANN_BIND_COMPLETED, "yes");
            claim = c.update(pvcs(), claim).await?;
        }
        let status = json!({
            "phase": "Bound",
            "accessModes": pv.pointer("/spec/accessModes"),
            "capacity": pv.pointer("/spec/capacity"),
        });
        let current = json!({
            "phase": claim.pointer("/status/phase"),
            "accessModes": claim.pointer("/status/accessModes"),
            "capacity": claim.pointer("/status/capacity"),
        });
        if status != current {
            claim["status"] = status;
            c.update_status(pvcs(), claim).await?;
        }
        Ok(Action::AwaitChange)
    }

    // ---- volumes ----

    async fn sync_volume(&self, c: &LocalClient, name: &str) -> Result<Action, ApiError> {
        let Some(mut pv) = c.get(pvs(), None, name)? else {
            return Ok(Action::AwaitChange);
        };
        if !deleting(&pv) && !has_finalizer(&pv, PV_PROTECTION) {
            add_finalizer(&mut pv, PV_PROTECTION);
            pv = c.update(pvs(), pv).await?;
        }
        let mut action = Action::AwaitChange;
        let claim_ref = pv
            .pointer("/spec/claimRef")
            .filter(|r| !r.is_null())
            .cloned();
        match claim_ref {
            None => pv = self.set_phase(c, pv, "Available", None).await?,
            Some(r) if s(&r, "/uid").is_empty() => {
                // Pre-bound by the user: the claim's pass binds it.
                pv = self.set_phase(c, pv, "Available", None).await?;
            }
            Some(r) => {
                let claim = c
                    .get(pvcs(), Some(s(&r, "/namespace")), s(&r, "/name"))?
                    .filter(|cl| s(cl, "/metadata/uid") == s(&r, "/uid"));
                match claim {
                    Some(cl) if s(&cl, "/spec/volumeName") == name => {
                        pv = self.set_phase(c, pv, "Bound", None).await?;
                    }
                    Some(cl) if s(&cl, "/spec/volumeName").is_empty() => {
                        // Promised to the claim; its pass completes the binding.
                    }
                    Some(_) => {
                        // The claim went to another volume: undo our half.
                        if annotation(&pv, ANN_BOUND_BY_CONTROLLER).is_some() {
                            if let Some(spec) = pv["spec"].as_object_mut() {
                                spec.remove("claimRef");
                            }
                            if let Some(a) = pv["metadata"]["annotations"].as_object_mut() {
                                a.remove(ANN_BOUND_BY_CONTROLLER);
                            }
                            pv = c.update(pvs(), pv).await?;
                            pv = self.set_phase(c, pv, "Available", None).await?;
                        }
                    }
                    None => {
                        let (next, a) = self.release(c, pv).await?;
                        pv = next;
                        action = a;
                    }
                }
            }
        }
        if deleting(&pv) && has_finalizer(&pv, PV_PROTECTION) && s(&pv, "/status/phase") != "Bound"
        {
            remove_finalizer(&mut pv, PV_PROTECTION);
            c.update(pvs(), pv).await?;
        }
        Ok(action)
    }

    async fn set_phase(
        &self,
        c: &LocalClient,
        mut pv: Value,
        phase: &str,
        message: Option<&str>,
    ) -> Result<Value, ApiError> {
        if s(&pv, "/status/phase") == phase
            && pv.pointer("/status/message").and_then(Value::as_str) == message
        {
            return Ok(pv);
        }
        let mut status = json!({"phase": phase, "lastPhaseTransitionTime": object::now_rfc3339()});
        if let Some(m) = message {
            status["message"] = json!(m);
        }
        pv["status"] = status;
        c.update_status(pvs(), pv).await
    }

    /// The claim is gone: Released, then reclaim per policy.
    async fn release(&self, c: &LocalClient, mut pv: Value) -> Result<(Value, Action), ApiError> {
        if !matches!(s(&pv, "/status/phase"), "Released" | "Failed") {
            pv = self.set_phase(c, pv, "Released", None).await?;
        }
        if s(&pv, "/status/phase") == "Failed" || deleting(&pv) {
            return Ok((pv, Action::AwaitChange));
        }
        match s(&pv, "/spec/persistentVolumeReclaimPolicy") {
            "Delete" => {
                let by = annotation(&pv, ANN_PROVISIONED_BY)
                    .unwrap_or("")
                    .to_string();
                let Some(prov) = self.provisioners.get(&by).cloned() else {
                    let msg = format!(
                        "error getting deleter volume plugin for volume {:?}: no deletable volume plugin matched",
                        s(&pv, "/metadata/name")
                    );
                    self.event(
                        c,
                        &pv,
                        "PersistentVolume",
                        "Warning",
                        "VolumeFailedDelete",
                        &msg,
                    )
                    .await;
                    let pv = self.set_phase(c, pv, "Failed", Some(&msg)).await?;
                    return Ok((pv, Action::AwaitChange));
                };
                match prov.delete(&pv) {
                    Ok(Deleted::Done) | Ok(Deleted::Deferred) => {
                        c.delete(pvs(), None, s(&pv, "/metadata/name"), &json!({}))
                            .await?;
                        Ok((pv, Action::AwaitChange))
                    }
                    Err(why) => {
                        self.event(
                            c,
                            &pv,
                            "PersistentVolume",
                            "Warning",
                            "VolumeFailedDelete",
                            &why,
                        )
                        .await;
                        Ok((pv, Action::Requeue(PROVISION_RETRY)))
                    }
                }
            }
            "Recycle" => {
                let msg = "Recycle is not supported; use Delete or Retain";
                self.event(
                    c,
                    &pv,
                    "PersistentVolume",
                    "Warning",
                    "VolumeFailedRecycle",
                    msg,
                )
                .await;
                let pv = self.set_phase(c, pv, "Failed", Some(msg)).await?;
                Ok((pv, Action::AwaitChange))
            }
            _ => Ok((pv, Action::AwaitChange)),
        }
    }

    async fn sync_all_unbound(&self, c: &LocalClient) -> Result<Action, ApiError> {
        let (claims, _) = c.list(pvcs(), None, None)?;
        let mut action = Action::AwaitChange;
        for cl in claims {
            if !s(&cl, "/spec/volumeName").is_empty() || deleting(&cl) {
                continue;
            }
            let (ns, name) = (s(&cl, "/metadata/namespace"), s(&cl, "/metadata/name"));
            match self.sync_claim(c, ns, name).await {
                Ok(Action::Requeue(d)) => action = Action::Requeue(d),
                Ok(Action::AwaitChange) => {}
                Err(e) => {
                    tracing::debug!(claim = %name, error = ?e.status()["message"], "claim sync failed");
                    action = Action::Requeue(Duration::from_secs(1));
                }
            }
        }
        Ok(action)
    }
}

impl Reconciler for VolumeController {
    fn name(&self) -> &'static str {
        "persistentvolume"
    }

    fn watches(&self) -> Vec<Watch> {
        let claim_map = Arc::new(|o: &Value| {
            let mut keys: Vec<ObjectKey> = ObjectKey::of(o).into_iter().collect();
            let v = s(o, "/spec/volumeName");
            if !v.is_empty() {
                keys.push(ObjectKey {
                    namespace: None,
                    name: v.into(),
                });
            }
            keys
        });
        let volume_map = Arc::new(|o: &Value| {
            let mut keys = vec![ObjectKey {
                namespace: None,
                name: s(o, "/metadata/name").into(),
            }];
            match o.pointer("/spec/claimRef").filter(|r| !r.is_null()) {
                Some(r) => keys.push(ObjectKey {
                    namespace: Some(s(r, "/namespace").into()),
                    name: s(r, "/name").into(),
                }),
                None => keys.push(all_key()),
            }
            keys
        });
        let pod_map = Arc::new(|o: &Value| {
            let ns = s(o, "/metadata/namespace");
            matching::pod_claims(o)
                .into_iter()
                .map(|c| ObjectKey {
                    namespace: Some(ns.into()),
                    name: c.into(),
                })
                .collect()
        });
        vec![
            Watch {
                resource: pvcs(),
                map: claim_map,
            },
            Watch {
                resource: pvs(),
                map: volume_map,
            },
            Watch {
                resource: classes(),
                map: Arc::new(|_| vec![all_key()]),
            },
            Watch {
                resource: pods(),
                map: pod_map,
            },
        ]
    }

    async fn reconcile(&self, c: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        match &key.namespace {
            Some(ns) => self.sync_claim(c, ns, &key.name).await,
            None if key.name == "*" => self.sync_all_unbound(c).await,
            None => self.sync_volume(c, &key.name).await,
        }
    }
}

/// The built-in default StorageClass, `local-path`.
pub fn default_class_object() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": provisioner::LOCAL_PATH_CLASS, "annotations": {ANN_DEFAULT_CLASS: "true"}},
        "provisioner": provisioner::LOCAL_PATH,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    })
}

/// Create the built-in StorageClass if absent (as k3s does at every start),
/// then run the controller.
pub async fn run(client: LocalClient) {
    loop {
        match client.get(classes(), None, provisioner::LOCAL_PATH_CLASS) {
            Ok(Some(_)) => break,
            Ok(None) => match client.create(classes(), None, default_class_object()).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => break,
                Err(e) => {
                    tracing::warn!(error = ?e.status()["message"], "creating the local-path StorageClass")
                }
            },
            Err(e) => tracing::warn!(error = ?e.status()["message"], "reading StorageClasses"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    super::runtime::run(Arc::new(VolumeController::default()), client).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validation;
    use crate::api::AppState;

    async fn client() -> (LocalClient, tempfile::TempDir) {
        use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(
            &dir.path().join("db.redb"),
            EmbeddedOptions::default(),
            None,
        )
        .unwrap();
        let state = Arc::new(AppState {
            store: Arc::new(store),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            config: Default::default(),
            hooks: Default::default(),
        });
        let c = LocalClient::new(state);
        let ns = resources::lookup("", "v1", "namespaces").unwrap();
        c.create(
            ns,
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        )
        .await
        .unwrap();
        (c, dir)
    }

    fn claim_key(n: &str) -> ObjectKey {
        ObjectKey {
            namespace: Some("default".into()),
            name: n.into(),
        }
    }

    fn pv_key(n: &str) -> ObjectKey {
        ObjectKey {
            namespace: None,
            name: n.into(),
        }
    }

    /// Reconcile these keys a few times (the runtime would, on each change).
    async fn settle(r: &VolumeController, c: &LocalClient, keys: &[ObjectKey]) {
        for _ in 0..4 {
            for k in keys {
                r.reconcile(c, k).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn binds_both_halves_then_releases_and_reclaims() {
        let (c, _dir) = client().await;
        let r = VolumeController::default();
        for (name, size, policy) in [("small", "1Gi", "Retain"), ("large", "5Gi", "Delete")] {
            c.create(
                pvs(),
                None,
                json!({"apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                         "persistentVolumeReclaimPolicy": policy, "hostPath": {"path": "/tmp/x"}}}),
            )
            .await
            .unwrap();
        }
        let claim = |n: &str, size: &str| {
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": n, "namespace": "default"},
                "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": size}}}})
        };
        c.create(pvcs(), Some("default"), claim("a", "500Mi"))
            .await
            .unwrap();
        c.create(pvcs(), Some("default"), claim("b", "2Gi"))
            .await
            .unwrap();
        let keys = [
            claim_key("a"),
            claim_key("b"),
            pv_key("small"),
            pv_key("large"),
        ];
        settle(&r, &c, &keys).await;
        let a = c.get(pvcs(), Some("default"), "a").unwrap().unwrap();
        assert_eq!(a["spec"]["volumeName"], "small");
        assert_eq!(a["status"]["phase"], "Bound");
        assert_eq!(a["status"]["capacity"]["storage"], "1Gi");
        assert_eq!(
            a["metadata"]["annotations"][ANN_BIND_COMPLETED], "yes",
            "{a}"
        );
        assert!(has_finalizer(&a, PVC_PROTECTION));
        let small = c.get(pvs(), None, "small").unwrap().unwrap();
        assert_eq!(small["status"]["phase"], "Bound");
        assert_eq!(small["spec"]["claimRef"]["uid"], a["metadata"]["uid"]);
        assert!(has_finalizer(&small, PV_PROTECTION));
        assert_eq!(
            c.get(pvcs(), Some("default"), "b").unwrap().unwrap()["spec"]["volumeName"],
            "large"
        );

        // A pod using "a" holds the claim while it is being deleted.
        c.create(
            pods(),
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}],
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "a"}}]}}),
        )
        .await
        .unwrap();
        c.delete(pvcs(), Some("default"), "a", &json!({}))
            .await
            .unwrap();
        settle(&r, &c, &keys).await;
        assert!(c.get(pvcs(), Some("default"), "a").unwrap().is_some());
        c.delete(pods(), Some("default"), "p", &json!({}))
            .await
            .unwrap();
        settle(&r, &c, &keys).await;
        assert!(c.get(pvcs(), Some("default"), "a").unwrap().is_none());
        // Retain: Released, claimRef kept.
        let small = c.get(pvs(), None, "small").unwrap().unwrap();
        assert_eq!(small["status"]["phase"], "Released");
        assert_eq!(small["spec"]["claimRef"]["name"], "a");

        // Delete on a volume no provisioner made: Failed, with the reason.
        c.delete(pvcs(), Some("default"), "b", &json!({}))
            .await
            .unwrap();
        settle(&r, &c, &keys).await;
        let large = c.get(pvs(), None, "large").unwrap().unwrap();
        assert_eq!(large["status"]["phase"], "Failed");
        assert!(large["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no deletable volume plugin matched"));
    }

    #[tokio::test]
    async fn unsatisfiable_claims_wait_with_an_event_and_default_class_is_assigned() {
        let (c, _dir) = client().await;
        let r = VolumeController::default();
        c.create(
            pvcs(),
            Some("default"),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "lonely", "namespace": "default"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        )
        .await
        .unwrap();
        settle(&r, &c, &[claim_key("lonely")]).await;
        let cl = c.get(pvcs(), Some("default"), "lonely").unwrap().unwrap();
        assert_eq!(cl["status"]["phase"], "Pending");
        let (evs, _) = c
            .list(
                resources::lookup("", "v1", "events").unwrap(),
                Some("default"),
                None,
            )
            .unwrap();
        assert_eq!(evs.len(), 1, "one event, not one per pass: {evs:?}");
        assert_eq!(evs[0]["reason"], "FailedBinding");
        assert_eq!(
            evs[0]["message"],
            "no persistent volumes available for this claim and no storage class is set"
        );
        // Once a default class exists, the class-less claim gets it.
        c.create(classes(), None, default_class_object())
            .await
            .unwrap();
        settle(&r, &c, &[all_key()]).await;
        let cl = c.get(pvcs(), Some("default"), "lonely").unwrap().unwrap();
        assert_eq!(cl["spec"]["storageClassName"], "local-path");
        assert_eq!(cl["status"]["phase"], "Pending");
    }

    #[test]
    fn storage_validation_and_defaults() {
        let pv = resources::lookup("", "v1", "persistentvolumes").unwrap();
        let pvc = resources::lookup("", "v1", "persistentvolumeclaims").unwrap();
        let sc = classes();
        let fields = |info, o: &Value| {
            validation::validate(info, o)
                .into_iter()
                .map(|c| c.field)
                .collect::<Vec<_>>()
        };
        let mut v = json!({"metadata": {"name": "v"}, "spec": {"capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/srv"}}});
        validation::default_object(pv, &mut v);
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(v["spec"]["volumeMode"], "Filesystem");
        assert!(fields(pv, &v).is_empty());
        let bad = json!({"spec": {"capacity": {"storage": "lots"}, "accessModes": ["Sometimes"]}});
        assert_eq!(
            fields(pv, &bad),
            ["spec.accessModes", "spec.capacity.storage", "spec"]
        );
        let local = json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "local": {"path": "/mnt/disk"}}});
        assert_eq!(fields(pv, &local), ["spec.nodeAffinity"]);
        let mut moved = v.clone();
        moved["spec"]["hostPath"]["path"] = json!("/elsewhere");
        assert_eq!(
            validation::validate_update(pv, &v, &moved)[0].field,
            "spec.persistentvolumesource"
        );

        let mut c = json!({"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}});
        validation::default_object(pvc, &mut c);
        assert_eq!(c["spec"]["volumeMode"], "Filesystem");
        assert_eq!(c["status"]["phase"], "Pending");
        assert!(fields(pvc, &c).is_empty());
        assert_eq!(
            fields(pvc, &json!({"spec": {}})),
            ["spec.accessModes", "spec.resources[storage]"]
        );
        // Binding and class assignment may set fields once; nothing else changes.
        let mut bound = c.clone();
        bound["spec"]["volumeName"] = json!("v");
        bound["spec"]["storageClassName"] = json!("local-path");
        assert!(validation::validate_update(pvc, &c, &bound).is_empty());
        let mut rebound = bound.clone();
        rebound["spec"]["volumeName"] = json!("w");
        assert_eq!(
            validation::validate_update(pvc, &bound, &rebound)[0].field,
            "spec"
        );
        let mut shrunk = bound.clone();
        shrunk["spec"]["resources"]["requests"]["storage"] = json!("1Mi");
        assert_eq!(
            validation::validate_update(pvc, &bound, &shrunk)[0].field,
            "spec.resources.requests.storage"
        );

        let mut class = json!({"metadata": {"name": "s"}, "provisioner": "example.com/x"});
        validation::default_object(sc, &mut class);
        assert_eq!(class["reclaimPolicy"], "Delete");
        assert_eq!(class["volumeBindingMode"], "Immediate");
        assert!(fields(sc, &class).is_empty());
        let mut changed = class.clone();
        changed["reclaimPolicy"] = json!("Retain");
        assert_eq!(
            validation::validate_update(sc, &class, &changed)[0].field,
            "reclaimPolicy"
        );
        assert_eq!(
            fields(sc, &json!({"volumeBindingMode": "Later"})),
            ["provisioner", "volumeBindingMode"]
        );
    }
}
