//! The node authorizer and NodeRestriction: what a node agent
//! (`system:node:<name>` in `system:nodes`) may do.
//!
//! Reads of cluster-wide state the agent needs (nodes, services, endpoints,
//! EndpointSlices, pods, volumes, classes) are allowed; writes are limited to
//! its own Node, its own Lease, pods bound to it, events, and the volumes
//! pinned to it; Secrets, ConfigMaps, claims and ServiceAccounts are readable
//! only when a pod bound to the node references them (checked against the
//! store on each request). A node may never modify another Node.

use crate::auth::Identity;
use crate::plugin::Attributes;
use crate::store::Store;
use axum::response::Response;
use serde_json::Value;

/// The namespace of node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node an identity speaks for, if it is a node.
pub fn node_name(id: &Identity) -> Option<&str> {
    let node = id.user.strip_prefix("system:node:")?;
    (!node.is_empty() && id.groups.iter().any(|g| g == "system:nodes")).then_some(node)
}

fn read(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch")
}

fn get_obj(store: &dyn Store, key: &str) -> Option<Value> {
    let kv = store.get(key).ok()??;
    serde_json::from_slice(&kv.value).ok()
}

fn bound_to(pod: &Value, node: &str) -> bool {
    pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
}

/// Pods in `namespace` bound to `node`.
fn pods_on(store: &dyn Store, namespace: &str, node: &str) -> Vec<Value> {
    let prefix = format!("/core/pods/{namespace}/");
    let Ok(list) = store.list(&prefix, None, 0, None) else {
        return Vec::new();
    };
    list.items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|p| bound_to(p, node))
        .collect()
}

fn strs<'a>(v: Option<&'a Value>, field: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |x| x.get(field).and_then(Value::as_str))
}

/// Whether `pod` references the object of `resource` named `name`.
fn references(pod: &Value, resource: &str, name: &str) -> bool {
    let spec = pod.get("spec");
    let field = |p: &str| spec.and_then(|s| s.pointer(p));
    match resource {
        "serviceaccounts" => {
            let sa = field("/serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default");
            sa == name
        }
        "persistentvolumeclaims" => spec
            .and_then(|s| s.get("volumes"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|v| {
                v.pointer("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str)
                    == Some(name)
            }),
        "secrets" | "configmaps" => {
            let secret = resource == "secrets";
            if secret && strs(field("/imagePullSecrets"), "name").any(|n| n == name) {
                return true;
            }
            let vols = spec
                .and_then(|s| s.get("volumes"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for v in vols {
                let direct = if secret {
                    v.pointer("/secret/secretName")
                } else {
                    v.pointer("/configMap/name")
                };
                if direct.and_then(Value::as_str) == Some(name) {
                    return true;
                }
                let sources = v.pointer("/projected/sources").and_then(Value::as_array);
                for s in sources.into_iter().flatten() {
                    let p = if secret {
                        "/secret/name"
                    } else {
                        "/configMap/name"
                    };
                    if s.pointer(p).and_then(Value::as_str) == Some(name) {
                        return true;
                    }
                }
            }
            let containers = ["containers", "initContainers", "ephemeralContainers"]
                .iter()
                .filter_map(|k| spec.and_then(|s| s.get(*k)).and_then(Value::as_array))
                .flatten();
            for c in containers {
                let (key_ref, from_ref) = if secret {
                    ("/valueFrom/secretKeyRef/name", "/secretRef/name")
                } else {
                    ("/valueFrom/configMapKeyRef/name", "/configMapRef/name")
                };
                let env = c.get("env").and_then(Value::as_array).into_iter().flatten();
                if env
                    .filter_map(|e| e.pointer(key_ref).and_then(Value::as_str))
                    .any(|n| n == name)
                {
                    return true;
                }
                let from = c
                    .get("envFrom")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten();
                if from
                    .filter_map(|e| e.pointer(from_ref).and_then(Value::as_str))
                    .any(|n| n == name)
                {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// Whether some pod bound to `node` references the object.
fn referenced(store: &dyn Store, node: &str, namespace: &str, resource: &str, name: &str) -> bool {
    !name.is_empty()
        && pods_on(store, namespace, node)
            .iter()
            .any(|p| references(p, resource, name))
}

/// Whether the node pins the volume to itself (`kubernetes.io/hostname In [node]`).
fn volume_on(pv: &Value, node: &str) -> bool {
    let terms = pv
        .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
        .and_then(Value::as_array);
    terms.into_iter().flatten().any(|t| {
        strs(t.get("matchExpressions"), "key").next().is_some()
            && t.get("matchExpressions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|e| {
                    e.get("key").and_then(Value::as_str) == Some("kubernetes.io/hostname")
                        && e.get("operator").and_then(Value::as_str) == Some("In")
                        && e.get("values")
                            .and_then(Value::as_array)
                            .is_some_and(|v| v.iter().any(|x| x.as_str() == Some(node)))
                })
    })
}

/// The node authorizer's decision for `node` (allow, or no opinion).
pub fn allows(store: &dyn Store, node: &str, a: &Attributes) -> bool {
    let verb = a.verb.as_str();
    if !a.resource_request {
        let own_metrics = format!("/shoal/v1/nodes/{node}/metrics");
        return match verb {
            "put" => a.path == own_metrics,
            // The built-in registry, read-only.
            "get" | "head" => a.path == "/v2" || a.path.starts_with("/v2/"),
            _ => false,
        };
    }
    let (ns, name, sub) = (
        a.namespace.as_str(),
        a.name.as_str(),
        a.subresource.as_str(),
    );
    match (a.api_group.as_str(), a.resource.as_str()) {
        ("", "nodes") => match sub {
            "" if read(verb) => true,
            // The name of a created Node is checked against the body (admit).
            "" if verb == "create" => true,
            "" => matches!(verb, "update" | "patch" | "delete") && name == node,
            "status" => matches!(verb, "get" | "update" | "patch") && name == node,
            _ => false,
        },
        ("", "services") | ("", "endpoints") | ("discovery.k8s.io", "endpointslices") => {
            sub.is_empty() && read(verb)
        }
        ("", "pods") => match sub {
            "" if read(verb) => true,
            "" if verb == "delete" => pod_bound(store, ns, name, node),
            "status" if matches!(verb, "get" | "update" | "patch") => {
                pod_bound(store, ns, name, node)
            }
            _ => false,
        },
        ("", "events") | ("events.k8s.io", "events") => {
            sub.is_empty() && matches!(verb, "create" | "update" | "patch")
        }
        ("", "secrets") | ("", "configmaps") | ("", "persistentvolumeclaims") => {
            sub.is_empty() && verb == "get" && referenced(store, node, ns, &a.resource, name)
        }
        ("", "serviceaccounts") => match sub {
            "" => verb == "get" && referenced(store, node, ns, "serviceaccounts", name),
            "token" => verb == "create" && referenced(store, node, ns, "serviceaccounts", name),
            _ => false,
        },
        ("", "persistentvolumes") => match sub {
            "" if read(verb) => true,
            // The local-path cleanup drops its finalizer from this node's volumes.
            "" if matches!(verb, "update" | "patch") => {
                get_obj(store, &format!("/core/persistentvolumes/{name}"))
                    .is_some_and(|pv| volume_on(&pv, node))
            }
            _ => false,
        },
        ("storage.k8s.io", "storageclasses")
        | ("storage.k8s.io", "csidrivers")
        | ("storage.k8s.io", "csinodes")
        | ("storage.k8s.io", "volumeattachments") => sub.is_empty() && read(verb),
        ("coordination.k8s.io", "leases") => {
            ns == LEASE_NAMESPACE
                && sub.is_empty()
                && match verb {
                    // The name of a created Lease is checked against the body.
                    "create" => true,
                    "get" | "update" | "patch" | "delete" => name == node,
                    _ => false,
                }
        }
        ("authentication.k8s.io", "tokenreviews")
        | ("authorization.k8s.io", "subjectaccessreviews")
        | ("authorization.k8s.io", "selfsubjectaccessreviews") => verb == "create",
        _ => false,
    }
}

fn pod_bound(store: &dyn Store, ns: &str, name: &str, node: &str) -> bool {
    !name.is_empty()
        && get_obj(store, &format!("/core/pods/{ns}/{name}")).is_some_and(|p| bound_to(&p, node))
}

/// Whether a node's request needs its body checked ([`admit`]).
pub fn restricts(id: &Identity, a: &Attributes) -> bool {
    node_name(id).is_some()
        && a.resource_request
        && a.verb == "create"
        && a.subresource.is_empty()
        && matches!(
            (a.api_group.as_str(), a.resource.as_str()),
            ("", "nodes") | ("coordination.k8s.io", "leases") | ("", "pods")
        )
}

/// NodeRestriction for creates by nodes: a node may create only its own Node
/// and Lease. (Mirror pods are not supported: a node creates no pods.)
#[allow(clippy::result_large_err)]
pub fn admit(id: &Identity, a: &Attributes, _ct: &str, body: &[u8]) -> Result<(), Box<Response>> {
    let Some(node) = node_name(id) else {
        return Ok(());
    };
    if !restricts(id, a) {
        return Ok(());
    }
    let obj: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let ok = match a.resource.as_str() {
        "nodes" | "leases" => name == node,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let msg = match a.resource.as_str() {
        "nodes" => format!("node {node:?} is not allowed to modify node {name:?}"),
        "leases" => format!("node {node:?} is not allowed to modify lease {name:?}"),
        _ => format!("node {node:?} is not allowed to create pods"),
    };
    let mut attrs = a.clone();
    attrs.name = name.to_string();
    Err(Box::new(super::forbidden(&attrs, &msg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_follow_the_pod_spec() {
        let pod = json!({"spec": {"nodeName": "n1", "serviceAccountName": "sa",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"name": "a", "secret": {"secretName": "vol"}},
                        {"name": "b", "configMap": {"name": "cm"}},
                        {"name": "c", "persistentVolumeClaim": {"claimName": "claim"}},
                        {"name": "d", "projected": {"sources": [{"secret": {"name": "proj"}}]}}],
            "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "envs", "key": "k"}}}],
                            "envFrom": [{"configMapRef": {"name": "envcm"}}]}]}});
        for s in ["pull", "vol", "proj", "envs"] {
            assert!(references(&pod, "secrets", s), "{s}");
        }
        assert!(!references(&pod, "secrets", "cm"));
        assert!(references(&pod, "configmaps", "cm"));
        assert!(references(&pod, "configmaps", "envcm"));
        assert!(references(&pod, "persistentvolumeclaims", "claim"));
        assert!(references(&pod, "serviceaccounts", "sa"));
        assert!(!references(&pod, "serviceaccounts", "default"));
        assert!(references(
            &json!({"spec": {}}),
            "serviceaccounts",
            "default"
        ));
    }

    #[test]
    fn volumes_pinned_to_a_node() {
        let pv = json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}});
        assert!(volume_on(&pv, "n1"));
        assert!(!volume_on(&pv, "n2"));
        assert!(!volume_on(&json!({}), "n1"));
    }
}
