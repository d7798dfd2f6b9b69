//! Pod readiness over time and Kubernetes' ranking of which pods to delete
//! first when scaling down (the basic pod predicates are in [`super::pods`]).

use super::pods::{is_active, is_ready, parse_time, phase};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

/// Annotation whose (int32) value lowers or raises a pod's deletion preference.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// When a ready pod became ready (its Ready condition's lastTransitionTime).
pub fn ready_since(pod: &Value) -> Option<DateTime<Utc>> {
    if !is_ready(pod) {
        return None;
    }
    let conds = pod.pointer("/status/conditions")?.as_array()?;
    conds
        .iter()
        .find(|c| c["type"] == "Ready")?
        .get("lastTransitionTime")?
        .as_str()
        .and_then(parse_time)
}

/// How long until a pod counts as available: `Some(ZERO)` when it already is,
/// `None` when no wait will make it available (not ready, or, with
/// minReadySeconds, no transition time to count from, as Kubernetes).
pub fn available_in(pod: &Value, min_ready_seconds: i64, now: DateTime<Utc>) -> Option<Duration> {
    if !is_ready(pod) {
        return None;
    }
    if min_ready_seconds <= 0 {
        return Some(Duration::ZERO);
    }
    let since = ready_since(pod)?;
    let at = since + chrono::Duration::seconds(min_ready_seconds);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(pod: &Value, min_ready_seconds: i64, now: DateTime<Utc>) -> bool {
    available_in(pod, min_ready_seconds, now) == Some(Duration::ZERO)
}

fn phase_ordinal(pod: &Value) -> u8 {
    match phase(pod) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &Value) -> i32 {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(DELETION_COST))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn max_restarts(pod: &Value) -> (i64, i64) {
    let count = |list: &str, only: Option<&[&str]>| {
        pod.pointer(&format!("/status/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| {
                only.is_none_or(|names| c["name"].as_str().is_some_and(|n| names.contains(&n)))
            })
            .filter_map(|c| c["restartCount"].as_i64())
            .max()
            .unwrap_or(0)
    };
    // Sidecars are init containers with restartPolicy Always; they are compared second.
    let sidecars: Vec<&str> = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["restartPolicy"] == "Always")
        .filter_map(|c| c["name"].as_str())
        .collect();
    (
        count("containerStatuses", None),
        count("initContainerStatuses", Some(&sidecars)),
    )
}

fn created(pod: &Value) -> Option<DateTime<Utc>> {
    pod.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_time)
}

/// Kubernetes' LogarithmicScaleDown: compare ages in powers of two, so pods of
/// similar age count as equally old and the tie goes to the UID (random).
fn log_rank_diff(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>, now: DateTime<Utc>) -> i64 {
    let rank = |t: Option<DateTime<Utc>>| -> i64 {
        // A missing time is the zero time: the oldest possible.
        let d = match t {
            Some(t) => (now - t).num_nanoseconds().unwrap_or(i64::MAX),
            None => i64::MAX,
        };
        if d > 0 {
            (d as f64).log2() as i64
        } else {
            -1
        }
    };
    rank(a) - rank(b)
}

fn uid(pod: &Value) -> &str {
    pod.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Order two pods for deletion (Less = delete first), as Kubernetes'
/// `ActivePodsWithRanks`: unscheduled, then pending/unknown before running,
/// not ready, lower deletion cost, more colocated siblings, ready for less
/// time, more restarts, newer.
pub fn compare_for_deletion(
    a: &Value,
    a_colocated: usize,
    b: &Value,
    b_colocated: usize,
    now: DateTime<Utc>,
) -> Ordering {
    let node = |p: &Value| {
        p.pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (na, nb) = (node(a), node(b));
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let by = |x: Ordering| x != Ordering::Equal;
    let o = phase_ordinal(a).cmp(&phase_ordinal(b));
    if by(o) {
        return o;
    }
    let o = is_ready(a).cmp(&is_ready(b));
    if by(o) {
        return o;
    }
    let o = deletion_cost(a).cmp(&deletion_cost(b));
    if by(o) {
        return o;
    }
    let o = b_colocated.cmp(&a_colocated);
    if by(o) {
        return o;
    }
    if is_ready(a) && is_ready(b) {
        let (ra, rb) = (ready_since(a), ready_since(b));
        if ra != rb {
            let d = log_rank_diff(ra, rb, now);
            return if d == 0 {
                uid(a).cmp(uid(b))
            } else {
                d.cmp(&0)
            };
        }
    }
    let (ra, rb) = (max_restarts(a), max_restarts(b));
    if ra != rb {
        return rb.cmp(&ra);
    }
    let (ca, cb) = (created(a), created(b));
    if ca != cb {
        let d = log_rank_diff(ca, cb, now);
        return if d == 0 {
            uid(a).cmp(uid(b))
        } else {
            d.cmp(&0)
        };
    }
    Ordering::Equal
}

/// The `count` pods to delete first from `pods`, where `related` are the active
/// pods of the same workload (siblings on one node make a pod a better victim).
pub fn pick_for_deletion<'a>(
    pods: &[&'a Value],
    related: &[&Value],
    count: usize,
    now: DateTime<Utc>,
) -> Vec<&'a Value> {
    if count >= pods.len() {
        return pods.to_vec();
    }
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for p in related.iter().filter(|p| is_active(p)) {
        *on_node
            .entry(
                p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            )
            .or_default() += 1;
    }
    let rank = |p: &Value| {
        on_node
            .get(
                p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            )
            .copied()
            .unwrap_or(0)
    };
    let mut ranked: Vec<(&'a Value, usize)> = pods.iter().map(|p| (*p, rank(p))).collect();
    ranked.sort_by(|(a, ra), (b, rb)| compare_for_deletion(a, *ra, b, *rb, now));
    ranked.into_iter().take(count).map(|(p, _)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<&str>, created: &str) -> Value {
        let mut conds = vec![];
        if let Some(at) = ready_at {
            conds.push(json!({"type": "Ready", "status": "True", "lastTransitionTime": at}));
        } else {
            conds.push(json!({"type": "Ready", "status": "False"}));
        }
        json!({
            "metadata": {"name": name, "uid": name, "creationTimestamp": created},
            "spec": {"nodeName": node},
            "status": {"phase": phase, "conditions": conds},
        })
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now = t("2024-01-01T00:00:10Z");
        let p = pod(
            "a",
            "n",
            "Running",
            Some("2024-01-01T00:00:05Z"),
            "2024-01-01T00:00:00Z",
        );
        assert!(is_available(&p, 0, now));
        assert!(is_available(&p, 5, now));
        assert!(!is_available(&p, 8, now));
        assert_eq!(available_in(&p, 8, now), Some(Duration::from_secs(3)));
        let unready = pod("b", "n", "Running", None, "2024-01-01T00:00:00Z");
        assert_eq!(available_in(&unready, 0, now), None);
    }

    #[test]
    fn deletion_ranking_follows_kubernetes() {
        let now = t("2024-01-01T01:00:00Z");
        let unscheduled = pod("unscheduled", "", "Pending", None, "2024-01-01T00:00:00Z");
        let pending = pod("pending", "n1", "Pending", None, "2024-01-01T00:00:00Z");
        let not_ready = pod("notready", "n1", "Running", None, "2024-01-01T00:00:00Z");
        // Ready for one minute versus ready for most of the hour: far apart on a log scale.
        let young = pod(
            "young",
            "n2",
            "Running",
            Some("2024-01-01T00:59:00Z"),
            "2024-01-01T00:00:00Z",
        );
        let old = pod(
            "old",
            "n3",
            "Running",
            Some("2024-01-01T00:01:00Z"),
            "2024-01-01T00:00:00Z",
        );
        let all = [&old, &young, &not_ready, &pending, &unscheduled];
        let order: Vec<&str> = pick_for_deletion(&all, &all, 4, now)
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["unscheduled", "pending", "notready", "young"]);
    }

    #[test]
    fn colocated_and_cost_break_ties() {
        let now = t("2024-01-01T01:00:00Z");
        let a = pod(
            "a",
            "n1",
            "Running",
            Some("2024-01-01T00:00:00Z"),
            "2024-01-01T00:00:00Z",
        );
        let b = pod(
            "b",
            "n2",
            "Running",
            Some("2024-01-01T00:00:00Z"),
            "2024-01-01T00:00:00Z",
        );
        let sibling = pod(
            "s",
            "n2",
            "Running",
            Some("2024-01-01T00:00:00Z"),
            "2024-01-01T00:00:00Z",
        );
        // b shares its node with a sibling, so it goes first.
        let picked = pick_for_deletion(&[&a, &b], &[&a, &b, &sibling], 1, now);
        assert_eq!(picked[0]["metadata"]["name"], "b");
        // A lower deletion cost wins over colocation.
        let mut a2 = a.clone();
        a2["metadata"]["annotations"] = json!({DELETION_COST: "-5"});
        let picked = pick_for_deletion(&[&a2, &b], &[&a2, &b, &sibling], 1, now);
        assert_eq!(picked[0]["metadata"]["name"], "a");
    }

    #[test]
    fn newer_pods_go_before_older_ones() {
        let now = t("2024-01-01T10:00:00Z");
        let newer = pod("newer", "n", "Pending", None, "2024-01-01T09:59:59Z");
        let older = pod("older", "n", "Pending", None, "2024-01-01T00:00:00Z");
        assert_eq!(
            compare_for_deletion(&newer, 0, &older, 0, now),
            Ordering::Less
        );
        let mut restarted = older.clone();
        restarted["status"]["containerStatuses"] = json!([{"name": "c", "restartCount": 3}]);
        assert_eq!(
            compare_for_deletion(&restarted, 0, &newer, 0, now),
            Ordering::Less
        );
    }
}
