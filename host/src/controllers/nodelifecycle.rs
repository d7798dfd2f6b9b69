//! Node lifecycle: node health, condition taints, taint-based eviction and
//! the garbage collection of a deleted node's pods (Kubernetes' node
//! lifecycle controller, taint eviction controller and pod GC, in one
//! reconciler keyed by node name).
//!
//! - Health: a node's heartbeat is its Lease in `kube-node-lease`
//!   (`spec.renewTime`) and its Ready condition's `lastHeartbeatTime`. Like
//!   Kubernetes, the controller notes *when it saw* either change (its own
//!   clock, so node clock skew does not matter); when nothing changed for the
//!   grace period, every node condition becomes `Unknown` with reason
//!   `NodeStatusUnknown`, and the node's pods are marked `Ready=False`. A node
//!   that has never sent a heartbeat (no Lease, no `lastHeartbeatTime`: a Node
//!   written by hand, or a simulated one) is not monitored: Kubernetes would
//!   mark it Unknown after a startup grace, but here such nodes are how tests
//!   and benchmarks model static capacity.
//! - Taints follow the Ready condition: `Unknown` gives
//!   `node.kubernetes.io/unreachable`, `False` gives `node.kubernetes.io/not-ready`,
//!   each as NoSchedule and NoExecute; `True` removes both.
//! - Eviction: a pod on a node with a NoExecute taint it does not tolerate is
//!   deleted gracefully; one whose matching tolerations carry
//!   `tolerationSeconds` is deleted that long after the taint was added.
//! - Pod GC: when a Node object goes away, the pods bound to it are deleted
//!   with grace 0 (there is no kubelet left to finish a graceful deletion).

use super::events;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const COMPONENT: &str = "node-lifecycle-controller";

/// The taint of a node whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose Ready condition is False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Where node Leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node conditions the controller sets to Unknown (the kubelet's own).
const NODE_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Node lifecycle settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// How long a node may go without a heartbeat before it is Unknown
    /// (`--node-monitor-grace-period`).
    pub grace: Duration,
    /// `tolerationSeconds` of the not-ready toleration every pod gets.
    pub default_not_ready_toleration_seconds: i64,
    /// `tolerationSeconds` of the unreachable toleration every pod gets.
    pub default_unreachable_toleration_seconds: i64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            grace: Duration::from_secs(40),
            default_not_ready_toleration_seconds: 300,
            default_unreachable_toleration_seconds: 300,
        }
    }
}

fn nodes() -> &'static ResourceInfo {
    resources::lookup("", "v1", "nodes").expect("nodes are served")
}

fn pods() -> &'static ResourceInfo {
    resources::lookup("", "v1", "pods").expect("pods are served")
}

fn leases() -> &'static ResourceInfo {
    resources::lookup("coordination.k8s.io", "v1", "leases").expect("leases are served")
}

/// Whether a toleration tolerates a taint (Kubernetes' `ToleratesTaint`).
pub fn tolerates(t: &Value, taint: &Value) -> bool {
    let effect = t["effect"].as_str().unwrap_or("");
    if !effect.is_empty() && taint["effect"] != effect {
        return false;
    }
    let key = t["key"].as_str().unwrap_or("");
    if !key.is_empty() && taint["key"] != key {
        return false;
    }
    match t["operator"].as_str().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or(""),
        _ => false,
    }
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn condition<'a>(node: &'a Value, kind: &str) -> Option<&'a Value> {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == kind)
}

fn ready_status(obj: &Value) -> Option<&str> {
    condition(obj, "Ready").and_then(|c| c["status"].as_str())
}

/// What a node last said about itself: Lease renewTime and Ready lastHeartbeatTime.
type Heartbeat = (Option<String>, Option<String>);

fn heartbeat(node: &Value, lease: Option<&Value>) -> Option<Heartbeat> {
    let renew = lease
        .and_then(|l| l.pointer("/spec/renewTime"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let hb = condition(node, "Ready")
        .and_then(|c| c["lastHeartbeatTime"].as_str())
        .map(str::to_string);
    (renew.is_some() || hb.is_some()).then_some((renew, hb))
}

/// The conditions after the node went silent: every kubelet condition
/// Unknown (missing ones added as never updated); None when nothing changes.
fn unknown_conditions(node: &Value, now: &str) -> Option<Value> {
    let mut conds = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut changed = false;
    for kind in NODE_CONDITIONS {
        match conds.iter_mut().find(|c| c["type"] == *kind) {
            Some(c) if c["status"] == "Unknown" => {}
            Some(c) => {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(now);
                changed = true;
            }
            None => {
                conds.push(json!({"type": kind, "status": "Unknown",
                    "reason": "NodeStatusNeverUpdated", "message": "Kubelet never posted node status.",
                    "lastHeartbeatTime": now, "lastTransitionTime": now}));
                changed = true;
            }
        }
    }
    changed.then_some(Value::Array(conds))
}

/// The node's taints with the Ready condition's taints brought in line; None
/// when nothing changes. A node without a Ready condition keeps its taints.
fn desired_taints(node: &Value, now: &str) -> Option<Value> {
    let current = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let want: &[&str] = match ready_status(node)? {
        "True" => &[],
        "False" => &[TAINT_NOT_READY],
        _ => &[TAINT_UNREACHABLE],
    };
    let mut out: Vec<Value> = current
        .iter()
        .filter(|t| {
            let k = t["key"].as_str().unwrap_or("");
            let ours = k == TAINT_NOT_READY || k == TAINT_UNREACHABLE;
            let effect = t["effect"].as_str().unwrap_or("");
            !ours || (want.contains(&k) && matches!(effect, "NoSchedule" | "NoExecute"))
        })
        .cloned()
        .collect();
    for key in want {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out
                .iter()
                .any(|t| t["key"] == *key && t["effect"] == effect)
            {
                let mut t = json!({"key": key, "effect": effect});
                if effect == "NoExecute" {
                    t["timeAdded"] = json!(now);
                }
                out.push(t);
            }
        }
    }
    (out != current).then_some(Value::Array(out))
}

/// What taint eviction does with one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Eviction {
    /// Tolerated (for now, or for ever).
    Keep,
    /// Delete now.
    Now,
    /// Delete at this time.
    At(DateTime<Utc>),
}

/// Kubernetes' rule: a NoExecute taint no toleration matches evicts at once;
/// otherwise the smallest `tolerationSeconds` of the matching tolerations
/// (none: for ever; zero or less: at once), counted from when the taint was
/// added: its `timeAdded` (whole seconds) or `floor` if later (the precise
/// time, when this controller added it).
fn eviction(
    pod: &Value,
    taints: &[Value],
    now: DateTime<Utc>,
    floor: Option<DateTime<Utc>>,
) -> Eviction {
    let tolerations: Vec<Value> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let no_execute: Vec<&Value> = taints
        .iter()
        .filter(|t| t["effect"] == "NoExecute")
        .collect();
    if no_execute.is_empty() {
        return Eviction::Keep;
    }
    let mut min_seconds: Option<i64> = None;
    let mut since: Option<DateTime<Utc>> = None;
    for taint in &no_execute {
        let matching: Vec<&Value> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Eviction::Now;
        }
        let added = parse_time(&taint["timeAdded"]).unwrap_or(now);
        since = Some(since.map_or(added, |s| s.min(added)));
        for t in matching {
            if let Some(s) = t["tolerationSeconds"].as_i64() {
                min_seconds = Some(min_seconds.map_or(s, |m| m.min(s)));
            }
        }
    }
    match min_seconds {
        None => Eviction::Keep,
        Some(s) if s <= 0 => Eviction::Now,
        Some(s) => {
            // `floor` only refines a whole-second timeAdded.
            let since = since.unwrap_or(now);
            let since = match floor {
                Some(f) if f > since && f - since < chrono::Duration::seconds(1) => f,
                _ => since,
            };
            let at = since + chrono::Duration::seconds(s);
            if at <= now {
                Eviction::Now
            } else {
                Eviction::At(at)
            }
        }
    }
}

/// When a heartbeat was last seen to change, by this controller's clock.
struct Probe {
    seen: Heartbeat,
    at: Instant,
}

/// The node lifecycle controller.
pub struct NodeLifecycleController {
    cfg: LifecycleConfig,
    probes: Mutex<HashMap<String, Probe>>,
    /// Nodes seen to exist, so a deletion can be told from a never-existing node.
    known: Mutex<HashSet<String>>,
    /// Nodes whose pods are watched: NoExecute-tainted or unreachable ones.
    watched: Arc<Mutex<HashSet<String>>>,
    /// When this controller added a node's NoExecute taint, precisely.
    tainted_at: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl NodeLifecycleController {
    /// A controller with these settings.
    pub fn new(cfg: LifecycleConfig) -> NodeLifecycleController {
        NodeLifecycleController {
            cfg,
            probes: Mutex::default(),
            known: Mutex::default(),
            watched: Arc::default(),
            tainted_at: Mutex::default(),
        }
    }

    /// How long the node has been silent, or None when it is not monitored.
    fn silence(&self, name: &str, hb: Option<Heartbeat>, now: Instant) -> Option<Duration> {
        let mut probes = self.probes.lock().expect("probes lock");
        let Some(hb) = hb else {
            probes.remove(name);
            return None;
        };
        let p = probes.entry(name.to_string()).or_insert_with(|| Probe {
            seen: hb.clone(),
            at: now,
        });
        if p.seen != hb {
            p.seen = hb;
            p.at = now;
        }
        Some(now.saturating_duration_since(p.at))
    }

    async fn collect_pods(&self, client: &LocalClient, node: &str) -> Result<(), ApiError> {
        let (all, _) = client.list(pods(), None, None)?;
        for p in all
            .iter()
            .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
        {
            let ns = object::meta_str(p, "namespace");
            let name = object::meta_str(p, "name").unwrap_or("");
            let opts = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": p.pointer("/metadata/uid")}});
            match client.delete(pods(), ns, name, &opts).await {
                Ok(true) => tracing::info!(node, pod = name, "deleted pod of a deleted node"),
                Ok(false) => {}
                Err(ApiError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Mark pods not ready and evict by taints; returns the next eviction time.
    async fn pods_on(
        &self,
        client: &LocalClient,
        node: &Value,
        name: &str,
    ) -> Result<Option<DateTime<Utc>>, ApiError> {
        let taints: Vec<Value> = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let unreachable = ready_status(node) == Some("Unknown");
        let evicting = taints.iter().any(|t| t["effect"] == "NoExecute");
        {
            let mut w = self.watched.lock().expect("watched lock");
            if !unreachable && !evicting {
                w.remove(name);
                return Ok(None);
            }
            w.insert(name.to_string());
        }
        let now = Utc::now();
        let floor = self
            .tainted_at
            .lock()
            .expect("tainted lock")
            .get(name)
            .copied();
        let stamp = object::now_rfc3339();
        let mut next: Option<DateTime<Utc>> = None;
        let (all, _) = client.list(pods(), None, None)?;
        for p in all
            .into_iter()
            .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(name))
            .filter(|p| object::meta_str(p, "deletionTimestamp").is_none())
        {
            let ns = object::meta_str(&p, "namespace").map(str::to_string);
            let pname = object::meta_str(&p, "name").unwrap_or("").to_string();
            if unreachable && ready_status(&p).is_some_and(|s| s != "False") {
                let mut updated = p.clone();
                if let Some(c) = updated
                    .pointer_mut("/status/conditions")
                    .and_then(Value::as_array_mut)
                    .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "Ready"))
                {
                    c["status"] = json!("False");
                    c["lastTransitionTime"] = json!(stamp);
                }
                client.update_status(pods(), updated).await?;
            }
            match eviction(&p, &taints, now, floor) {
                Eviction::Keep => {}
                Eviction::At(t) => next = Some(next.map_or(t, |n| n.min(t))),
                Eviction::Now => {
                    let opts = json!({"preconditions": {"uid": p.pointer("/metadata/uid")}});
                    if client.delete(pods(), ns.as_deref(), &pname, &opts).await? {
                        tracing::info!(node = name, pod = %pname, "evicted by NoExecute taint");
                        events::record(
                            client,
                            COMPONENT,
                            &p,
                            "Normal",
                            "TaintManagerEviction",
                            &format!(
                                "Marking for deletion Pod {}/{pname}",
                                ns.as_deref().unwrap_or("default")
                            ),
                        )
                        .await;
                    }
                }
            }
        }
        Ok(next)
    }
}

impl Reconciler for NodeLifecycleController {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    fn watches(&self) -> Vec<Watch> {
        let watched = self.watched.clone();
        vec![
            Watch::primary(nodes()),
            Watch {
                resource: leases(),
                map: Arc::new(|o| {
                    if object::meta_str(o, "namespace") != Some(LEASE_NAMESPACE) {
                        return vec![];
                    }
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
                resource: pods(),
                // Only pods on nodes that evict or are unreachable matter.
                map: Arc::new(move |o| {
                    let Some(n) = o.pointer("/spec/nodeName").and_then(Value::as_str) else {
                        return vec![];
                    };
                    if !watched.lock().expect("watched lock").contains(n) {
                        return vec![];
                    }
                    vec![ObjectKey {
                        namespace: None,
                        name: n.to_string(),
                    }]
                }),
            },
        ]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let name = key.name.as_str();
        let Some(mut node) = client.get(nodes(), None, name)? else {
            self.probes.lock().expect("probes lock").remove(name);
            self.watched.lock().expect("watched lock").remove(name);
            self.tainted_at.lock().expect("tainted lock").remove(name);
            let was_known = self.known.lock().expect("known lock").contains(name);
            if was_known {
                self.collect_pods(client, name).await?;
                self.known.lock().expect("known lock").remove(name);
            }
            return Ok(Action::AwaitChange);
        };
        self.known
            .lock()
            .expect("known lock")
            .insert(name.to_string());
        let lease = client.get(leases(), Some(LEASE_NAMESPACE), name)?;
        let mut recheck: Option<Duration> = None;
        if let Some(silent) = self.silence(name, heartbeat(&node, lease.as_ref()), Instant::now()) {
            if silent >= self.cfg.grace {
                if let Some(conds) = unknown_conditions(&node, &object::now_rfc3339()) {
                    let mut updated = node.clone();
                    updated["status"]["conditions"] = conds;
                    node = client.update_status(nodes(), updated).await?;
                    tracing::info!(node = name, ?silent, "node stopped posting status: Unknown");
                    events::record(
                        client,
                        COMPONENT,
                        &node,
                        "Normal",
                        "NodeNotReady",
                        &format!("Node {name} status is now: NodeNotReady"),
                    )
                    .await;
                }
            } else {
                recheck = Some(self.cfg.grace - silent + Duration::from_millis(50));
            }
        }
        let at = Utc::now();
        let stamp = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if let Some(taints) = desired_taints(&node, &stamp) {
            let mut updated = node.clone();
            updated["spec"]["taints"] = taints;
            node = client.update(nodes(), updated).await?;
            let added_now = node
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|t| t["effect"] == "NoExecute" && t["timeAdded"] == stamp.as_str());
            let mut tainted = self.tainted_at.lock().expect("tainted lock");
            if added_now {
                tainted.insert(name.to_string(), at);
            } else {
                tainted.remove(name);
            }
        }
        if let Some(at) = self.pods_on(client, &node, name).await? {
            let d = (at - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(50);
            recheck = Some(recheck.map_or(d, |r| r.min(d)));
        }
        Ok(recheck.map_or(Action::AwaitChange, Action::Requeue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: Option<&str>, taints: Value) -> Value {
        let conds: Vec<Value> = ready
            .map(|s| json!({"type": "Ready", "status": s, "lastHeartbeatTime": "2026-01-01T00:00:00Z"}))
            .into_iter()
            .collect();
        json!({"metadata": {"name": "n"}, "spec": {"taints": taints}, "status": {"conditions": conds}})
    }

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(&json!(s)).unwrap()
    }

    #[test]
    fn silent_nodes_go_unknown_keeping_heartbeat_time() {
        let n = node(Some("True"), json!([]));
        let conds = unknown_conditions(&n, "2026-01-01T00:01:00Z").unwrap();
        let ready = conds
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "Unknown");
        assert_eq!(ready["reason"], "NodeStatusUnknown");
        assert_eq!(ready["message"], "Kubelet stopped posting node status.");
        assert_eq!(ready["lastHeartbeatTime"], "2026-01-01T00:00:00Z");
        assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:01:00Z");
        // The other kubelet conditions are added as never updated.
        assert_eq!(conds.as_array().unwrap().len(), NODE_CONDITIONS.len());
        let mut n2 = n.clone();
        n2["status"]["conditions"] = conds;
        assert_eq!(unknown_conditions(&n2, "2026-01-01T00:02:00Z"), None);
    }

    #[test]
    fn taints_follow_ready() {
        let now = "2026-01-01T00:00:00Z";
        let other = json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"});
        let unknown = desired_taints(&node(Some("Unknown"), json!([other])), now).unwrap();
        let keys: Vec<(String, String)> = unknown
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["key"].as_str().unwrap().into(),
                    t["effect"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                ("dedicated".into(), "NoSchedule".into()),
                (TAINT_UNREACHABLE.into(), "NoSchedule".into()),
                (TAINT_UNREACHABLE.into(), "NoExecute".into()),
            ]
        );
        assert_eq!(unknown[2]["timeAdded"], now);
        // Idempotent.
        assert_eq!(
            desired_taints(&node(Some("Unknown"), unknown.clone()), now),
            None
        );
        // Ready=False swaps unreachable for not-ready.
        let nr = desired_taints(&node(Some("False"), unknown.clone()), now).unwrap();
        assert!(nr
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["key"] != TAINT_UNREACHABLE));
        assert_eq!(
            nr.as_array()
                .unwrap()
                .iter()
                .filter(|t| t["key"] == TAINT_NOT_READY)
                .count(),
            2
        );
        // Back to Ready: only the user's taint stays.
        assert_eq!(
            desired_taints(&node(Some("True"), unknown), now),
            Some(json!([other]))
        );
        // No Ready condition: hands off.
        assert_eq!(desired_taints(&node(None, json!([])), now), None);
    }

    #[test]
    fn heartbeat_needs_a_lease_or_a_heartbeat_time() {
        let silent = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(heartbeat(&silent, None), None);
        let lease = json!({"spec": {"renewTime": "2026-01-01T00:00:00.000000Z"}});
        assert_eq!(
            heartbeat(&silent, Some(&lease)),
            Some((Some("2026-01-01T00:00:00.000000Z".into()), None))
        );
        assert!(heartbeat(&node(Some("True"), json!([])), None).is_some());
    }

    #[test]
    fn silence_counts_from_the_last_change_seen() {
        let c = NodeLifecycleController::new(LifecycleConfig::default());
        let t0 = Instant::now();
        let hb = |s: &str| Some((Some(s.to_string()), None));
        assert_eq!(c.silence("n", hb("a"), t0), Some(Duration::ZERO));
        assert_eq!(
            c.silence("n", hb("a"), t0 + Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            c.silence("n", hb("b"), t0 + Duration::from_secs(7)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            c.silence("n", hb("b"), t0 + Duration::from_secs(9)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(c.silence("n", None, t0), None);
    }

    #[test]
    fn eviction_follows_tolerations() {
        let now = t("2026-01-01T00:00:10Z");
        let taints = vec![
            json!({"key": TAINT_UNREACHABLE, "effect": "NoSchedule"}),
            json!({"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}),
        ];
        let pod = |tol: Value| json!({"spec": {"tolerations": tol}});
        // No toleration: at once.
        assert_eq!(eviction(&pod(json!([])), &taints, now, None), Eviction::Now);
        // A NoSchedule-only taint never evicts.
        assert_eq!(
            eviction(&pod(json!([])), &taints[..1], now, None),
            Eviction::Keep
        );
        // The default toleration: 300 s after the taint was added.
        let default = json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]);
        assert_eq!(
            eviction(&pod(default), &taints, now, None),
            Eviction::At(t("2026-01-01T00:05:00Z"))
        );
        // Already past its time.
        let short = json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]);
        assert_eq!(eviction(&pod(short), &taints, now, None), Eviction::Now);
        // A daemon's toleration without seconds: for ever.
        let daemon =
            json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]);
        assert_eq!(eviction(&pod(daemon), &taints, now, None), Eviction::Keep);
        // Tolerate-everything with a time limit, and a zero time.
        let all = json!([{"operator": "Exists", "tolerationSeconds": 20}]);
        assert_eq!(
            eviction(&pod(all), &taints, now, None),
            Eviction::At(t("2026-01-01T00:00:20Z"))
        );
        let zero = json!([{"operator": "Exists", "tolerationSeconds": 0}]);
        assert_eq!(eviction(&pod(zero), &taints, now, None), Eviction::Now);
        // A precise taint time later than its whole-second timeAdded wins.
        let precise = Some(t("2026-01-01T00:00:00.900Z"));
        let default = json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]);
        assert_eq!(
            eviction(&pod(default), &taints, now, precise),
            Eviction::At(t("2026-01-01T00:05:00.900Z"))
        );
        // A toleration of another key does not help.
        let other = json!([{"key": "x", "operator": "Exists", "effect": "NoExecute"}]);
        assert_eq!(eviction(&pod(other), &taints, now, None), Eviction::Now);
    }

    #[test]
    fn toleration_matching() {
        let taint = json!({"key": "k", "value": "v", "effect": "NoExecute"});
        assert!(tolerates(
            &json!({"key": "k", "operator": "Equal", "value": "v"}),
            &taint
        ));
        assert!(tolerates(
            &json!({"key": "k", "value": "v", "effect": "NoExecute"}),
            &taint
        ));
        assert!(!tolerates(&json!({"key": "k", "value": "w"}), &taint));
        assert!(!tolerates(
            &json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"}),
            &taint
        ));
        assert!(tolerates(&json!({"operator": "Exists"}), &taint));
    }
}

#[cfg(test)]
mod default_toleration_tests {
    use super::*;
    use crate::api::validation::default_object;

    fn defaulted(tolerations: Value) -> Vec<Value> {
        let info = resources::lookup("", "v1", "pods").unwrap();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x:1"}], "tolerations": tolerations}});
        default_object(info, &mut pod);
        pod["spec"]["tolerations"].as_array().unwrap().clone()
    }

    #[test]
    fn pods_get_default_not_ready_and_unreachable_tolerations() {
        let t = defaulted(json!([]));
        assert_eq!(
            t,
            vec![
                json!({"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
                json!({"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
            ]
        );
        // Defaulting again changes nothing.
        let info = resources::lookup("", "v1", "pods").unwrap();
        let mut pod = json!({"spec": {"tolerations": t.clone()}});
        default_object(info, &mut pod);
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap(), &t);
    }

    #[test]
    fn existing_tolerations_are_kept() {
        // The user's own unreachable toleration (a daemon's, without seconds) stays alone.
        let daemon = json!({"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"});
        let t = defaulted(json!([daemon]));
        assert_eq!(t.len(), 2);
        assert_eq!(t[0], daemon);
        assert_eq!(t[1]["key"], TAINT_NOT_READY);
        // Tolerating everything needs no defaults.
        assert_eq!(defaulted(json!([{"operator": "Exists"}])).len(), 1);
        // A NoSchedule toleration does not count.
        let ns = json!({"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoSchedule"});
        assert_eq!(defaulted(json!([ns])).len(), 3);
    }
}
