//! ResourceQuota: what an object charges against a namespace's quotas, the
//! live usage of a namespace (shared with controllers/resourcequota.rs), and
//! the admission check that refuses creates exceeding `spec.hard`, charging
//! admitted ones to `status.used` with a compare-and-swap so concurrent
//! creates cannot both take the last unit.

use super::{format_quantity, Attributes};
use crate::api::error::{ApiError, ApiResult};
use crate::api::object::{self, meta_str};
use crate::api::resources::{self, ResourceInfo};
use crate::api::AppState;
use crate::store::{Op, Precondition, StoreError};
use scheduler_core::quantity;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Resource name → amount in nano units (counts are whole units).
pub type Usage = BTreeMap<String, i128>;

const UNIT: i128 = 1_000_000_000;

/// Legacy object-count names Kubernetes still accepts besides `count/<resource>`.
const LEGACY_COUNTS: &[(&str, &str)] = &[
    ("pods", "pods"),
    ("services", "services"),
    ("configmaps", "configmaps"),
    ("secrets", "secrets"),
    ("persistentvolumeclaims", "persistentvolumeclaims"),
    ("replicationcontrollers", "replicationcontrollers"),
    ("resourcequotas", "resourcequotas"),
];

fn nanos(v: &Value) -> i128 {
    v.as_str()
        .and_then(|s| quantity::parse(s.trim()).ok())
        .map(|q| q.nanos())
        .unwrap_or(0)
}

/// Whether a pod still counts (not finished).
fn pod_counts(pod: &Value) -> bool {
    !matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// A pod's requests or limits (`key`) over its containers: the larger of the
/// containers' sum and any one init container (init containers run one at a
/// time), without the pod overhead.
pub(crate) fn container_totals(pod: &Value, key: &str) -> Usage {
    let mut sums = Usage::new();
    let mut init = Usage::new();
    for list in ["containers", "initContainers"] {
        for c in pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for (r, v) in c
                .pointer(&format!("/resources/{key}"))
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if list == "containers" {
                    *sums.entry(r.clone()).or_default() += nanos(v);
                } else {
                    let e = init.entry(r.clone()).or_default();
                    *e = (*e).max(nanos(v));
                }
            }
        }
    }
    for (r, n) in init {
        let e = sums.entry(r).or_default();
        *e = (*e).max(n);
    }
    sums
}

/// A pod's effective requests or limits: its containers' totals plus the pod
/// overhead.
fn pod_resources(pod: &Value, key: &str) -> Usage {
    let mut sums = container_totals(pod, key);
    for (r, v) in pod
        .pointer("/spec/overhead")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        *sums.entry(r.clone()).or_default() += nanos(v);
    }
    sums
}

/// What one object of `info` charges.
pub fn charge(info: &ResourceInfo, obj: &Value) -> Usage {
    let mut u = Usage::new();
    if info.kind == "Pod" && !pod_counts(obj) {
        return u;
    }
    let count = if info.group.is_empty() {
        format!("count/{}", info.plural)
    } else {
        format!("count/{}.{}", info.plural, info.group)
    };
    u.insert(count, UNIT);
    if info.group.is_empty() {
        if let Some((_, legacy)) = LEGACY_COUNTS.iter().find(|(p, _)| *p == info.plural) {
            u.insert(legacy.to_string(), UNIT);
        }
    }
    match info.kind {
        "Pod" => {
            for (r, n) in pod_resources(obj, "requests") {
                u.insert(format!("requests.{r}"), n);
                if r == "cpu" || r == "memory" || r == "ephemeral-storage" {
                    u.insert(r, n);
                }
            }
            for (r, n) in pod_resources(obj, "limits") {
                u.insert(format!("limits.{r}"), n);
            }
        }
        "Service" => match obj.pointer("/spec/type").and_then(Value::as_str) {
            Some("LoadBalancer") => {
                u.insert("services.loadbalancers".into(), UNIT);
                u.insert("services.nodeports".into(), UNIT);
            }
            Some("NodePort") => {
                u.insert("services.nodeports".into(), UNIT);
            }
            _ => {}
        },
        "PersistentVolumeClaim" => {
            if let Some(s) = obj.pointer("/spec/resources/requests/storage") {
                u.insert("requests.storage".into(), nanos(s));
            }
        }
        _ => {}
    }
    u
}

/// The resource a quota key counts, when it is an object count.
fn counted_resource(key: &str) -> Option<&'static ResourceInfo> {
    let plural_group = key.strip_prefix("count/").or_else(|| {
        LEGACY_COUNTS
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(p, _)| *p)
    })?;
    let (plural, group) = plural_group.split_once('.').unwrap_or((plural_group, ""));
    resources::RESOURCES
        .iter()
        .find(|r| r.plural == plural && r.group == group)
}

/// Live usage in `ns` of the quota keys `keys`.
pub fn usage(state: &AppState, ns: &str, keys: &[String]) -> ApiResult<Usage> {
    let mut kinds: Vec<&'static ResourceInfo> = Vec::new();
    for k in keys {
        let info = counted_resource(k).or_else(|| {
            if k == "requests.storage" {
                resources::lookup("", "v1", "persistentvolumeclaims")
            } else if k.starts_with("services.") {
                resources::lookup("", "v1", "services")
            } else {
                resources::lookup("", "v1", "pods")
            }
        });
        if let Some(i) = info {
            if !kinds.iter().any(|x| std::ptr::eq(*x, i)) {
                kinds.push(i);
            }
        }
    }
    let mut used: Usage = keys.iter().map(|k| (k.clone(), 0)).collect();
    for info in kinds {
        let list = state.store.list(&info.prefix(Some(ns)), None, 0, None)?;
        for kv in &list.items {
            let obj: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
            for (k, n) in charge(info, &obj) {
                if let Some(e) = used.get_mut(&k) {
                    *e += n;
                }
            }
        }
    }
    Ok(used)
}

fn hard_of(quota: &Value) -> Usage {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), nanos(v)))
        .collect()
}

/// `key=value,...` as Kubernetes prints resource lists in quota messages.
fn pretty(u: &Usage) -> String {
    u.iter()
        .map(|(k, v)| format!("{k}={}", format_quantity(*v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Refuse a create that would exceed a quota of its namespace; charge it otherwise.
pub async fn admit(state: &AppState, attrs: &Attributes<'_>, obj: &Value) -> ApiResult<()> {
    if attrs.namespace.is_empty() || !attrs.subresource.is_empty() {
        return Ok(());
    }
    let prefix = format!("/core/resourcequotas/{}/", attrs.namespace);
    let name = match attrs.name {
        "" => meta_str(obj, "name").unwrap_or(""),
        n => n,
    };
    let forbidden = |m: String| {
        ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: {m}",
            if attrs.info.group.is_empty() {
                attrs.info.plural.to_string()
            } else {
                format!("{}.{}", attrs.info.plural, attrs.info.group)
            }
        ))
    };
    for _ in 0..16 {
        let list = state.store.list(&prefix, None, 0, None)?;
        if list.items.is_empty() {
            return Ok(());
        }
        let requested = charge(attrs.info, obj);
        let mut writes = Vec::new();
        for kv in &list.items {
            let mut quota = object::from_store(kv)?;
            let qname = meta_str(&quota, "name").unwrap_or("").to_string();
            let hard = hard_of(&quota);
            let relevant: Vec<&String> =
                hard.keys().filter(|k| requested.contains_key(*k)).collect();
            // A quota on compute resources requires pods to state them.
            if attrs.info.kind == "Pod" {
                let mut missing = Vec::new();
                for k in hard.keys() {
                    let Some(res) = k
                        .strip_prefix("requests.")
                        .or_else(|| k.strip_prefix("limits."))
                        .or(match k.as_str() {
                            "cpu" | "memory" => Some(k.as_str()),
                            _ => None,
                        })
                    else {
                        continue;
                    };
                    if res != "cpu" && res != "memory" {
                        continue;
                    }
                    let field = if k.starts_with("limits.") {
                        "limits"
                    } else {
                        "requests"
                    };
                    let lacking: Vec<&str> = obj
                        .pointer("/spec/containers")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|c| c.pointer(&format!("/resources/{field}/{res}")).is_none())
                        .map(|c| c.get("name").and_then(Value::as_str).unwrap_or(""))
                        .collect();
                    if !lacking.is_empty() {
                        missing.push(format!("{k} for: {}", lacking.join(",")));
                    }
                }
                if !missing.is_empty() {
                    return Err(forbidden(format!(
                        "failed quota: {qname}: must specify {}",
                        missing.join("; ")
                    )));
                }
            }
            if relevant.is_empty() {
                continue;
            }
            let status_used: Usage = quota
                .pointer("/status/used")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), nanos(v)))
                .collect();
            let missing_keys: Vec<String> = relevant
                .iter()
                .filter(|k| !status_used.contains_key(**k))
                .map(|k| k.to_string())
                .collect();
            let live = if missing_keys.is_empty() {
                Usage::new()
            } else {
                usage(state, attrs.namespace, &missing_keys)?
            };
            let used_of = |k: &str| status_used.get(k).or(live.get(k)).copied().unwrap_or(0);
            let (mut req_x, mut used_x, mut hard_x) = (Usage::new(), Usage::new(), Usage::new());
            for k in &relevant {
                let (r, u, h) = (requested[*k], used_of(k), hard[*k]);
                if u + r > h {
                    req_x.insert(k.to_string(), r);
                    used_x.insert(k.to_string(), u);
                    hard_x.insert(k.to_string(), h);
                }
            }
            if !req_x.is_empty() {
                return Err(forbidden(format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    pretty(&req_x),
                    pretty(&used_x),
                    pretty(&hard_x)
                )));
            }
            // Charge the request now; the controller recomputes from the
            // objects themselves afterwards.
            let mut used_json = quota
                .pointer("/status/used")
                .cloned()
                .filter(Value::is_object)
                .unwrap_or(json!({}));
            for k in &relevant {
                used_json[k.as_str()] = json!(format_quantity(used_of(k) + requested[*k]));
            }
            quota["status"]["used"] = used_json;
            quota["status"]["hard"] = quota.pointer("/spec/hard").cloned().unwrap_or(json!({}));
            writes.push(Op::Put {
                key: kv.key.clone(),
                value: object::to_store(&mut quota),
                precondition: Precondition::ModRevision(kv.mod_revision),
            });
        }
        if writes.is_empty() || attrs.dry_run {
            return Ok(());
        }
        match state.store.txn(writes).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict {
        group: String::new(),
        resource: "resourcequotas".into(),
        name: String::new(),
        message: "too many concurrent quota updates; try again".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_charge_counts_requests_and_limits() {
        let pods = resources::lookup("", "v1", "pods").unwrap();
        let pod = json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
        }});
        let c = charge(pods, &pod);
        assert_eq!(c["pods"], UNIT);
        assert_eq!(c["count/pods"], UNIT);
        // The init container's 2 CPUs exceed the containers' 500m.
        assert_eq!(format_quantity(c["requests.cpu"]), "2");
        assert_eq!(format_quantity(c["cpu"]), "2");
        assert_eq!(format_quantity(c["requests.memory"]), "64Mi");
        assert_eq!(format_quantity(c["limits.cpu"]), "1");
        let done = json!({"spec": {}, "status": {"phase": "Succeeded"}});
        assert!(charge(pods, &done).is_empty());
        let deploys = resources::lookup("apps", "v1", "deployments").unwrap();
        assert_eq!(charge(deploys, &json!({}))["count/deployments.apps"], UNIT);
        assert_eq!(
            counted_resource("count/deployments.apps").unwrap().kind,
            "Deployment"
        );
        assert_eq!(counted_resource("pods").unwrap().kind, "Pod");
    }
}
