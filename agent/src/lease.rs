//! The node heartbeat: a coordination.k8s.io Lease named after the node in
//! `kube-node-lease`, owned by the Node, renewed every few seconds (cheaper
//! than rewriting the whole node status, as in Kubernetes).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};

/// The namespace of node Leases.
pub const NAMESPACE: &str = "kube-node-lease";

/// Errors renewing the Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API refused or failed.
    #[error("lease {0}: {1}")]
    Api(String, kube::Error),
}

/// Create or renew the node's Lease once.
pub async fn renew(
    client: &kube::Client,
    node_name: &str,
    node_uid: &str,
    duration_seconds: i32,
) -> Result<(), LeaseError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let err = |e| LeaseError::Api(node_name.to_string(), e);
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    match api.get_opt(node_name).await.map_err(err)? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(node_name.to_string());
            spec.lease_duration_seconds = Some(duration_seconds);
            spec.renew_time = Some(now);
            // Optimistic concurrency: a conflict is retried on the next tick.
            api.replace(node_name, &PostParams::default(), &lease)
                .await
                .map_err(err)?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node_name.to_string()),
                    namespace: Some(NAMESPACE.to_string()),
                    owner_references: (!node_uid.is_empty()).then(|| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: node_name.to_string(),
                            uid: node_uid.to_string(),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node_name.to_string()),
                    lease_duration_seconds: Some(duration_seconds),
                    renew_time: Some(now.clone()),
                    acquire_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease)
                .await
                .map_err(err)?;
        }
    }
    Ok(())
}
