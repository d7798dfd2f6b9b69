//! Events recorded by controllers, so `kubectl describe` tells the story.

use crate::api::client::LocalClient;
use crate::api::object;
use crate::api::resources;
use serde_json::{json, Value};

/// Record a core/v1 Event about `involved` (any object with kind/apiVersion/metadata).
/// Failures are logged, never returned: events are best effort.
pub async fn record(
    client: &LocalClient,
    component: &str,
    involved: &Value,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let ns = object::meta_str(involved, "namespace")
        .unwrap_or("default")
        .to_string();
    let name = object::meta_str(involved, "name").unwrap_or("").to_string();
    let now = object::now_rfc3339();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": object::generate_name(&format!("{name}.")), "namespace": ns},
        "involvedObject": {
            "kind": involved.get("kind"), "apiVersion": involved.get("apiVersion"),
            "namespace": ns, "name": name, "uid": involved.pointer("/metadata/uid"),
            "resourceVersion": involved.pointer("/metadata/resourceVersion"),
        },
        "reason": reason, "message": message, "type": type_,
        "source": {"component": component}, "reportingComponent": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let info = resources::lookup("", "v1", "events").expect("events are served");
    if let Err(e) = client.create(info, Some(&ns), event).await {
        tracing::debug!(error = ?e.status()["message"], "could not record event");
    }
}
