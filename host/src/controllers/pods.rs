//! What workload controllers read from and write into pods and status:
//! ownership, phase, readiness, finish times, and status conditions.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Parse an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// RFC 3339 with second precision, as Kubernetes writes timestamps.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A timestamp at a JSON pointer.
pub fn time_at(v: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(parse_time)
}

/// `status.phase`, "" when unset.
pub fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Succeeded or Failed.
pub fn is_terminal(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// Has a deletionTimestamp.
pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// Neither finished nor being deleted: what controllers count as active.
pub fn is_active(pod: &Value) -> bool {
    !is_terminal(pod) && !is_deleting(pod)
}

/// Bound to a node.
pub fn node_name(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// The Ready condition is True.
pub fn is_ready(pod: &Value) -> bool {
    ready_condition(pod).is_some_and(|c| c["status"] == "True")
}

/// Ready for at least `min_ready` seconds at `now` (Kubernetes' "available").
pub fn is_available(pod: &Value, min_ready: i64, now: DateTime<Utc>) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    let since = ready_condition(pod).and_then(|c| time_at(c, "/lastTransitionTime"));
    since.is_some_and(|t| t + chrono::Duration::seconds(min_ready) <= now)
}

/// When a finished pod finished: its containers' latest `finishedAt`, else
/// the latest condition transition, else its creation.
pub fn finish_time(pod: &Value) -> Option<DateTime<Utc>> {
    let containers = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| time_at(c, "/state/terminated/finishedAt"))
        .max();
    containers
        .or_else(|| {
            pod.pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| time_at(c, "/lastTransitionTime"))
                .max()
        })
        .or_else(|| time_at(pod, "/metadata/creationTimestamp"))
}

/// Whether `obj` has a controller ownerReference with this uid.
pub fn controlled_by(obj: &Value, uid: &str) -> bool {
    controller_of(obj).is_some_and(|r| r["uid"] == uid)
}

/// The controller ownerReference, if any.
pub fn controller_of(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["controller"] == true)
}

/// A controller ownerReference to `owner` that blocks its foreground deletion.
pub fn controller_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner.pointer("/metadata/name"),
        "uid": owner.pointer("/metadata/uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A condition of `type` with status True, if present.
pub fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status
        .get("conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
}

/// Set a condition in `status.conditions`, keeping lastTransitionTime when
/// the status does not change.
pub fn set_condition(
    status: &mut Value,
    type_: &str,
    cond_status: &str,
    reason: &str,
    message: &str,
    now: &str,
) {
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let list = status["conditions"].as_array_mut().expect("array");
    let new = |transition: &str| {
        json!({
            "type": type_, "status": cond_status, "lastProbeTime": now,
            "lastTransitionTime": transition, "reason": reason, "message": message,
        })
    };
    match list.iter_mut().find(|c| c["type"] == type_) {
        Some(c) if c["status"] == cond_status => {
            let t = c["lastTransitionTime"].as_str().unwrap_or(now).to_string();
            // Only a real change moves lastProbeTime, so an unchanged status writes nothing.
            if c["reason"] != reason || c["message"] != message {
                *c = new(&t);
            }
        }
        Some(c) => *c = new(now),
        None => list.push(new(now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_states() {
        let p = json!({"metadata": {"ownerReferences": [{"uid": "u", "controller": true}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
        assert!(is_active(&p) && is_ready(&p) && controlled_by(&p, "u") && !controlled_by(&p, "x"));
        let now = parse_time("2024-01-01T00:00:10Z").unwrap();
        assert!(is_available(&p, 10, now));
        assert!(!is_available(&p, 11, now));
        let mut done = p.clone();
        done["status"]["phase"] = json!("Failed");
        assert!(is_terminal(&done) && !is_active(&done));
        done["status"]["containerStatuses"] =
            json!([{"state": {"terminated": {"finishedAt": "2024-01-01T00:01:00Z"}}}]);
        assert_eq!(finish_time(&done), parse_time("2024-01-01T00:01:00Z"));
    }

    #[test]
    fn conditions_keep_transition_time() {
        let mut s = json!({});
        set_condition(&mut s, "Complete", "True", "", "", "t1");
        set_condition(&mut s, "Complete", "True", "", "", "t2");
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "t1");
        assert_eq!(s["conditions"][0]["lastProbeTime"], "t1");
        set_condition(&mut s, "Complete", "False", "", "", "t3");
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "t3");
        assert!(condition(&s, "Complete").is_none());
    }
}
