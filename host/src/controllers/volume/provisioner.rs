//! Dynamic provisioning: the [`Provisioner`] interface the PV controller
//! calls for claims of a class naming it, and the built-in local-path
//! provisioner (directories on the node, like k3s's local-path-provisioner).

use super::matching;
use serde_json::{json, Map, Value};

/// Node annotation in which an agent reports the directory under which
/// local-path volumes live on that node (`<agent data dir>/storage`).
pub const ANN_NODE_STORAGE_ROOT: &str = "storage.shoal.dev/local-path-root";
/// The built-in provisioner's name.
pub const LOCAL_PATH: &str = "shoal.dev/local-path";
/// Finalizer on local-path volumes: the node's agent removes it after
/// deleting the directory (or, for Retain, without touching it), so the
/// object never disappears before the node has dealt with the data.
pub const LOCAL_PATH_FINALIZER: &str = "shoal.dev/local-path-cleanup";
/// Name of the built-in default StorageClass.
pub const LOCAL_PATH_CLASS: &str = "local-path";

/// What a provisioner is asked for.
pub struct ProvisionRequest<'a> {
    /// Name the new PersistentVolume will have (`pvc-<claim uid>`).
    pub pv_name: &'a str,
    /// The claim.
    pub claim: &'a Value,
    /// Its StorageClass.
    pub class: &'a Value,
    /// The node the scheduler chose (WaitForFirstConsumer), if any.
    pub selected_node: Option<&'a Value>,
    /// Every node, for provisioners that pick one themselves (Immediate).
    pub nodes: &'a [Value],
}

/// The storage a provisioner made, as fields of the new PV's spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Provisioned {
    /// The volume source (`{"hostPath": …}`, `{"local": …}`, …).
    pub source: Map<String, Value>,
    /// Required node affinity, for storage reachable from some nodes only.
    pub node_affinity: Option<Value>,
    /// Extra finalizers the PV gets (e.g. one the node removes after cleanup).
    pub finalizers: Vec<String>,
}

/// What deleting a volume's storage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// The storage is gone; the PV object may go.
    Done,
    /// Someone else (the node) removes the storage, gated by a finalizer on
    /// the PV; the PV object may be deleted now and stays until then.
    Deferred,
}

/// A dynamic provisioner. Calls are quick decisions; anything slow or that
/// must happen on a node is deferred to that node through the PV object.
pub trait Provisioner: Send + Sync {
    /// The name StorageClasses use in `provisioner`.
    fn name(&self) -> &str;
    /// Create storage for a claim; errors are user-facing messages.
    fn provision(&self, req: &ProvisionRequest<'_>) -> Result<Provisioned, String>;
    /// Delete a released volume's storage (reclaim policy Delete).
    fn delete(&self, pv: &Value) -> Result<Deleted, String>;
}

/// Directories under each node's storage root (reported by its agent in the
/// [`ANN_NODE_STORAGE_ROOT`] annotation), one per volume, exposed as
/// `hostPath` (or `local` with the class parameter `volumeType: local`)
/// with a required node affinity on `kubernetes.io/hostname`.
#[derive(Debug, Default)]
pub struct LocalPath;

fn node_root(node: &Value) -> Option<&str> {
    node.pointer(&format!(
        "/metadata/annotations/{}",
        ANN_NODE_STORAGE_ROOT.replace('/', "~1")
    ))
    .and_then(Value::as_str)
    .filter(|r| r.starts_with('/'))
}

fn node_name(node: &Value) -> &str {
    node.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn schedulable(node: &Value) -> bool {
    node.pointer("/spec/unschedulable") != Some(&Value::Bool(true))
        && node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

impl LocalPath {
    /// For Immediate binding there is no scheduler decision: spread claims
    /// over ready nodes that report a storage root, by the claim's uid.
    fn pick<'a>(&self, claim: &Value, nodes: &'a [Value]) -> Option<&'a Value> {
        let mut ok: Vec<&Value> = nodes
            .iter()
            .filter(|n| schedulable(n) && node_root(n).is_some())
            .collect();
        ok.sort_by_key(|n| node_name(n));
        if ok.is_empty() {
            return None;
        }
        let uid = claim
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        let h = uid.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        Some(ok[(h % ok.len() as u64) as usize])
    }
}

impl Provisioner for LocalPath {
    fn name(&self) -> &str {
        LOCAL_PATH
    }

    fn provision(&self, req: &ProvisionRequest<'_>) -> Result<Provisioned, String> {
        if req
            .claim
            .pointer("/spec/volumeMode")
            .and_then(Value::as_str)
            == Some("Block")
        {
            return Err("the local-path provisioner supports only volumeMode Filesystem".into());
        }
        let modes = req
            .claim
            .pointer("/spec/accessModes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if modes
            .iter()
            .any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany")
        {
            return Err(
                "the local-path provisioner supports only ReadWriteOnce and ReadWriteOncePod access modes (a directory lives on one node)"
                    .into(),
            );
        }
        let node = match req.selected_node {
            Some(n) => n,
            None => self.pick(req.claim, req.nodes).ok_or(
                "no ready node reports a local-path storage root (is a shoal agent running?)",
            )?,
        };
        let name = node_name(node);
        let root = node_root(node).ok_or_else(|| {
            format!(
                "node {name:?} does not report a local-path storage root (annotation {ANN_NODE_STORAGE_ROOT}); is its shoal agent running?"
            )
        })?;
        let path = format!("{}/{}", root.trim_end_matches('/'), req.pv_name);
        let hostname = node
            .pointer("/metadata/labels/kubernetes.io~1hostname")
            .and_then(Value::as_str)
            .unwrap_or(name);
        let kind = match req
            .class
            .pointer("/parameters/volumeType")
            .and_then(Value::as_str)
        {
            None | Some("hostPath") | Some("") => "hostPath",
            Some("local") => "local",
            Some(other) => {
                return Err(format!(
                    "unsupported volumeType {other:?} (supported: \"hostPath\", \"local\")"
                ))
            }
        };
        let mut source = Map::new();
        source.insert(
            kind.into(),
            if kind == "hostPath" {
                json!({"path": path, "type": "DirectoryOrCreate"})
            } else {
                json!({"path": path})
            },
        );
        Ok(Provisioned {
            source,
            node_affinity: Some(
                json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}
                ]}]}}),
            ),
            finalizers: vec![LOCAL_PATH_FINALIZER.into()],
        })
    }

    fn delete(&self, _pv: &Value) -> Result<Deleted, String> {
        // The directory is on the node: its agent removes it, then the finalizer.
        Ok(Deleted::Deferred)
    }
}

/// The PV a provisioner's result becomes, pre-bound to the claim.
pub fn volume_for(req: &ProvisionRequest<'_>, provisioner: &str, made: Provisioned) -> Value {
    let claim = req.claim;
    let reclaim = req
        .class
        .get("reclaimPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Delete");
    let mut spec = json!({
        "capacity": {"storage": claim.pointer("/spec/resources/requests/storage")},
        "accessModes": claim.pointer("/spec/accessModes"),
        "persistentVolumeReclaimPolicy": reclaim,
        "storageClassName": matching::claim_class(claim),
        "volumeMode": claim.pointer("/spec/volumeMode").cloned().unwrap_or(json!("Filesystem")),
        "claimRef": {
            "kind": "PersistentVolumeClaim", "apiVersion": "v1",
            "namespace": claim.pointer("/metadata/namespace"),
            "name": claim.pointer("/metadata/name"),
            "uid": claim.pointer("/metadata/uid"),
            "resourceVersion": claim.pointer("/metadata/resourceVersion"),
        },
    });
    if let Some(opts) = req.class.get("mountOptions").filter(|o| !o.is_null()) {
        spec["mountOptions"] = opts.clone();
    }
    if let Some(a) = made.node_affinity {
        spec["nodeAffinity"] = a;
    }
    for (k, v) in made.source {
        spec[k] = v;
    }
    let mut finalizers = vec![json!(super::PV_PROTECTION)];
    finalizers.extend(made.finalizers.into_iter().map(Value::String));
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": req.pv_name,
            "annotations": {matching::ANN_PROVISIONED_BY: provisioner},
            "finalizers": finalizers,
        },
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, root: Option<&str>) -> Value {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        if let Some(r) = root {
            n["metadata"]["annotations"] = json!({ANN_NODE_STORAGE_ROOT: r});
        }
        n
    }

    fn claim() -> Value {
        json!({"metadata": {"name": "data", "namespace": "ns", "uid": "abc", "resourceVersion": "7"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                     "volumeMode": "Filesystem", "resources": {"requests": {"storage": "1Gi"}}}})
    }

    #[test]
    fn local_path_makes_a_pinned_directory_volume_pre_bound_to_the_claim() {
        let class = json!({"metadata": {"name": "local-path"}, "provisioner": LOCAL_PATH, "reclaimPolicy": "Delete"});
        let n1 = node("n1", Some("/data/agent/storage"));
        let (claim, nodes) = (claim(), vec![]);
        let req = ProvisionRequest {
            pv_name: "pvc-abc",
            claim: &claim,
            class: &class,
            selected_node: Some(&n1),
            nodes: &nodes,
        };
        let made = LocalPath.provision(&req).unwrap();
        let pv = volume_for(&req, LOCAL_PATH, made);
        assert_eq!(
            pv["spec"]["hostPath"]["path"],
            "/data/agent/storage/pvc-abc"
        );
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(pv["spec"]["claimRef"]["uid"], "abc");
        assert_eq!(pv["spec"]["capacity"]["storage"], "1Gi");
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
                ["values"][0],
            "n1"
        );
        assert_eq!(
            pv["metadata"]["finalizers"],
            json!(["kubernetes.io/pv-protection", LOCAL_PATH_FINALIZER])
        );
        assert!(matching::node_allowed(
            &pv,
            "n1",
            n1["metadata"]["labels"].as_object()
        ));
    }

    #[test]
    fn local_path_needs_a_node_with_a_storage_root() {
        let class = json!({"provisioner": LOCAL_PATH});
        let bare = node("bare", None);
        let claim = claim();
        let req = ProvisionRequest {
            pv_name: "pvc-abc",
            claim: &claim,
            class: &class,
            selected_node: Some(&bare),
            nodes: &[],
        };
        assert!(LocalPath
            .provision(&req)
            .unwrap_err()
            .contains("storage root"));
        // Immediate binding picks a node that reports one.
        let nodes = vec![bare.clone(), node("good", Some("/s"))];
        let req = ProvisionRequest {
            selected_node: None,
            nodes: &nodes,
            ..req
        };
        let made = LocalPath.provision(&req).unwrap();
        assert_eq!(made.source["hostPath"]["path"], "/s/pvc-abc");
        let mut rwx = claim.clone();
        rwx["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        let req = ProvisionRequest { claim: &rwx, ..req };
        assert!(LocalPath.provision(&req).is_err());
    }
}
