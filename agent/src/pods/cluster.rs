//! The API calls pod logic makes, behind a trait so it is unit-tested without
//! a server: reading ConfigMaps and Secrets, writing pod status, and the final
//! delete of a terminated pod.

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};

/// An API failure, as text for logs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ApiError(pub String);

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        ApiError(e.to_string())
    }
}

/// The cluster as the pod logic sees it.
pub trait ClusterApi: Send + Sync {
    /// A ConfigMap (None if it does not exist).
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, ApiError>>;
    /// A Secret (None if it does not exist).
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, ApiError>>;
    /// Patch a pod's status (strategic merge of `{"status": status}`).
    fn patch_status<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        status: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), ApiError>>;
    /// Delete the pod now (grace 0) if it still has this uid; gone is success.
    fn delete_pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<(), ApiError>>;
    /// Record an Event about a pod's container (probe failures, kills).
    /// The default drops it (test fakes).
    fn pod_event<'a>(&'a self, _event: &'a PodEvent) -> BoxFuture<'a, Result<(), ApiError>> {
        async { Ok(()) }.boxed()
    }
    /// A PersistentVolumeClaim (None if it does not exist). The default
    /// (test fakes) serves none.
    fn claim<'a>(
        &'a self,
        _namespace: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<k8s_openapi::api::core::v1::PersistentVolumeClaim>, ApiError>>
    {
        async { Ok(None) }.boxed()
    }
    /// A PersistentVolume (None if it does not exist).
    fn volume<'a>(
        &'a self,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<k8s_openapi::api::core::v1::PersistentVolume>, ApiError>> {
        async { Ok(None) }.boxed()
    }
    /// Request a service-account token (TokenRequest) bound to a pod; returns
    /// the response body. The default (test fakes) refuses.
    fn token_request<'a>(
        &'a self,
        _request: &'a super::projected::TokenRequestArgs,
    ) -> BoxFuture<'a, Result<serde_json::Value, ApiError>> {
        async { Err(ApiError("token requests are not supported here".into())) }.boxed()
    }
    /// A Service (None if it does not exist). The default (test fakes) serves none.
    fn service<'a>(
        &'a self,
        _namespace: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<k8s_openapi::api::core::v1::Service>, ApiError>> {
        async { Ok(None) }.boxed()
    }
}

/// An Event about one container of a pod, as kubelet records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub uid: String,
    /// Container name (the event's fieldPath).
    pub container: String,
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// Reason, e.g. `Unhealthy`, `Killing`.
    pub reason: String,
    /// Message.
    pub message: String,
    /// Reporting node.
    pub node: String,
}

/// [`ClusterApi`] over a kube-rs client.
pub struct KubeCluster(pub kube::Client);

fn gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

impl ClusterApi for KubeCluster {
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, ApiError>> {
        async move {
            Ok(Api::<ConfigMap>::namespaced(self.0.clone(), namespace)
                .get_opt(name)
                .await?)
        }
        .boxed()
    }

    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, ApiError>> {
        async move {
            Ok(Api::<Secret>::namespaced(self.0.clone(), namespace)
                .get_opt(name)
                .await?)
        }
        .boxed()
    }

    fn patch_status<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        status: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        async move {
            let body = serde_json::json!({ "status": status });
            Api::<Pod>::namespaced(self.0.clone(), namespace)
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(body))
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn delete_pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        async move {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_string()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match Api::<Pod>::namespaced(self.0.clone(), namespace)
                .delete(name, &dp)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if gone(&e) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }

    fn pod_event<'a>(&'a self, e: &'a PodEvent) -> BoxFuture<'a, Result<(), ApiError>> {
        async move {
            let now = k8s_openapi::jiff::Timestamp::now();
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": format!("{}.{}", e.pod, uuid::Uuid::new_v4().simple()),
                    "namespace": e.namespace,
                },
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "namespace": e.namespace,
                    "name": e.pod,
                    "uid": e.uid,
                    "fieldPath": format!("spec.containers{{{}}}", e.container),
                },
                "reason": e.reason,
                "message": e.message,
                "type": if e.warning { "Warning" } else { "Normal" },
                "source": {"component": "kubelet", "host": e.node},
                "reportingComponent": "kubelet",
                "reportingInstance": e.node,
                "firstTimestamp": now.to_string(),
                "lastTimestamp": now.to_string(),
                "count": 1,
            });
            let ev: k8s_openapi::api::core::v1::Event =
                serde_json::from_value(body).map_err(|e| ApiError(e.to_string()))?;
            Api::<k8s_openapi::api::core::v1::Event>::namespaced(self.0.clone(), &e.namespace)
                .create(&Default::default(), &ev)
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn claim<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<k8s_openapi::api::core::v1::PersistentVolumeClaim>, ApiError>>
    {
        async move {
            Ok(Api::namespaced(self.0.clone(), namespace)
                .get_opt(name)
                .await?)
        }
        .boxed()
    }

    fn volume<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<k8s_openapi::api::core::v1::PersistentVolume>, ApiError>> {
        async move { Ok(Api::all(self.0.clone()).get_opt(name).await?) }.boxed()
    }

    fn token_request<'a>(
        &'a self,
        r: &'a super::projected::TokenRequestArgs,
    ) -> BoxFuture<'a, Result<serde_json::Value, ApiError>> {
        async move {
            let req = r.http_request().map_err(ApiError)?;
            Ok(self.0.request::<serde_json::Value>(req).await?)
        }
        .boxed()
    }

    fn service<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<k8s_openapi::api::core::v1::Service>, ApiError>> {
        async move {
            Ok(Api::namespaced(self.0.clone(), namespace)
                .get_opt(name)
                .await?)
        }
        .boxed()
    }
}
