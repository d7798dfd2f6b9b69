//! The ResourceQuota controller: keeps every quota's `status.hard` equal to
//! its `spec.hard` and `status.used` equal to what the namespace's objects
//! use now (admission charges creates ahead of it; this recomputes from the
//! objects, releasing what deleted or finished pods held).
//!
//! Keys are namespaces: any change to a quota or to a counted object in a
//! namespace recomputes all of that namespace's quotas.

use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::admission::{format_quantity, quota};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Kinds whose changes can move a quota's usage.
const COUNTED: &[(&str, &str, &str)] = &[
    ("", "v1", "pods"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("", "v1", "secrets"),
    ("", "v1", "persistentvolumeclaims"),
    ("", "v1", "replicationcontrollers"),
    ("", "v1", "resourcequotas"),
    ("apps", "v1", "deployments"),
    ("apps", "v1", "replicasets"),
    ("apps", "v1", "statefulsets"),
    ("apps", "v1", "daemonsets"),
    ("batch", "v1", "jobs"),
    ("batch", "v1", "cronjobs"),
];

fn quotas() -> &'static ResourceInfo {
    resources::lookup("", "v1", "resourcequotas").expect("resourcequotas are served")
}

/// The ResourceQuota status controller.
#[derive(Default)]
pub struct ResourceQuotaController;

impl Reconciler for ResourceQuotaController {
    fn name(&self) -> &'static str {
        "resourcequota"
    }

    fn watches(&self) -> Vec<Watch> {
        let by_namespace: super::runtime::Mapper = Arc::new(|o: &Value| {
            object::meta_str(o, "namespace")
                .map(|ns| ObjectKey {
                    namespace: None,
                    name: ns.to_string(),
                })
                .into_iter()
                .collect()
        });
        COUNTED
            .iter()
            .filter_map(|(g, v, p)| resources::lookup(g, v, p))
            .map(|resource| Watch {
                resource,
                map: by_namespace.clone(),
            })
            .collect()
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let ns = key.name.as_str();
        let (list, _) = client.list(quotas(), Some(ns), None)?;
        for q in list {
            let hard = q.pointer("/spec/hard").cloned().unwrap_or(json!({}));
            let keys: Vec<String> = hard
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let used = quota::usage(client.state(), ns, &keys)?;
            let used: serde_json::Map<String, Value> = used
                .into_iter()
                .map(|(k, n)| (k, json!(format_quantity(n))))
                .collect();
            let status = json!({"hard": hard, "used": used});
            if q.get("status") == Some(&status) {
                continue;
            }
            let mut next = q.clone();
            next["status"] = status;
            match client.update_status(quotas(), next).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                // Admission charged it meanwhile: recompute.
                Err(ApiError::Conflict { .. }) => {
                    return Ok(Action::Requeue(Duration::from_millis(50)))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Action::AwaitChange)
    }
}
