//! The root CA publisher, as kube-controller-manager's: every namespace gets
//! the ConfigMap `kube-root-ca.crt` whose `ca.crt` is the cluster CA (PEM),
//! so the projected `kube-api-access-*` volume can hand it to pods. Edits to
//! the ConfigMap are reverted and a deleted one comes back.

use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use crate::api::serviceaccount_admission::ROOT_CA_CONFIGMAP;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

fn namespaces() -> &'static ResourceInfo {
    resources::lookup("", "v1", "namespaces").expect("namespaces are served")
}

fn config_maps() -> &'static ResourceInfo {
    resources::lookup("", "v1", "configmaps").expect("configmaps are served")
}

/// Publishes the cluster CA into every namespace. Keys are namespace names.
pub struct RootCaPublisher {
    ca_path: Option<PathBuf>,
}

impl RootCaPublisher {
    /// A publisher of `<pki_dir>/ca.crt` (none: nothing is published).
    pub fn new(pki_dir: Option<PathBuf>) -> RootCaPublisher {
        RootCaPublisher {
            ca_path: pki_dir.map(|d| d.join("ca.crt")),
        }
    }
}

impl Reconciler for RootCaPublisher {
    fn name(&self) -> &'static str {
        "root-ca-cert-publisher"
    }

    fn watches(&self) -> Vec<Watch> {
        vec![
            Watch {
                resource: namespaces(),
                map: Arc::new(|o| {
                    object::meta_str(o, "name")
                        .map(|n| ObjectKey {
                            namespace: None,
                            name: n.to_string(),
                        })
                        .into_iter()
                        .collect()
                }),
            },
            Watch {
                resource: config_maps(),
                map: Arc::new(|o| {
                    if object::meta_str(o, "name") != Some(ROOT_CA_CONFIGMAP) {
                        return Vec::new();
                    }
                    object::meta_str(o, "namespace")
                        .map(|n| ObjectKey {
                            namespace: None,
                            name: n.to_string(),
                        })
                        .into_iter()
                        .collect()
                }),
            },
        ]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(path) = &self.ca_path else {
            return Ok(Action::AwaitChange);
        };
        let ns = key.name.as_str();
        let Some(namespace) = client.get(namespaces(), None, ns)? else {
            return Ok(Action::AwaitChange);
        };
        if namespace.pointer("/metadata/deletionTimestamp").is_some()
            || namespace.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
        {
            return Ok(Action::AwaitChange);
        }
        let ca = std::fs::read_to_string(path)
            .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
        match client.get(config_maps(), Some(ns), ROOT_CA_CONFIGMAP)? {
            None => {
                let cm = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns,
                        "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                    "data": {"ca.crt": ca},
                });
                match client.create(config_maps(), Some(ns), cm).await {
                    Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                    // The namespace went away or is terminating meanwhile.
                    Err(ApiError::NotFound { .. }) | Err(ApiError::Forbidden(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Some(mut cm) => {
                let data = cm.get("data").and_then(Value::as_object);
                let ok = data.is_some_and(|d| d.len() == 1 && d.get("ca.crt") == Some(&json!(ca)));
                if !ok || cm.get("binaryData").is_some() {
                    if let Some(o) = cm.as_object_mut() {
                        o.remove("binaryData");
                    }
                    cm["data"] = json!({"ca.crt": ca});
                    client.update(config_maps(), cm).await?;
                }
            }
        }
        Ok(Action::AwaitChange)
    }
}
