//! The Deployment controller: rolls a Deployment's pod template out through
//! ReplicaSets named `<deployment>-<pod-template-hash>`, with the
//! RollingUpdate (maxSurge/maxUnavailable) or Recreate strategy, revision
//! annotations, history cleanup, pause, proportional scaling, and the
//! Progressing/Available conditions `kubectl rollout status` reads. It follows
//! Kubernetes' `pkg/controller/deployment` step for step; where it is more
//! careful than Kubernetes, the comment says why.

use super::events;
use super::ownership::{self, Claim, SelectorIndex};
use super::pods::parse_time;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use super::template_hash;
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use crate::api::selector::LabelSelector;
use chrono::Utc;
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "deployment-controller";

/// The revision of a ReplicaSet, and of the Deployment (its newest ReplicaSet's).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had before a rollback reused it.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// replicas + maxSurge when the ReplicaSet was last scaled (for proportional scaling).
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations that are not copied to ReplicaSets (and that kubectl's
/// rollback does not copy back).
const SKIP_COPY: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// Longest `revision-history` annotation kept, as Kubernetes.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

fn deploy_info() -> &'static ResourceInfo {
    resources::lookup("apps", "v1", "deployments").expect("deployments are served")
}

fn rs_info() -> &'static ResourceInfo {
    resources::lookup("apps", "v1", "replicasets").expect("replicasets are served")
}

fn pod_info() -> &'static ResourceInfo {
    resources::lookup("", "v1", "pods").expect("pods are served")
}

// ---------------------------------------------------------------------------
// Pure rollout arithmetic.

/// Resolve an int-or-percent (`3` or `"25%"`) against `total`; percentages
/// round up or down. A missing value is 0.
pub fn scaled_value(v: Option<&Value>, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(|n| n as i32)
            .ok_or_else(|| format!("invalid value for IntOrString: {n}")),
        Some(Value::String(s)) => {
            let pct = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<i64>().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid type: string is not a percentage: {s:?}"))?;
            let exact = pct as f64 * f64::from(total) / 100.0;
            Ok(if round_up {
                exact.ceil()
            } else {
                exact.floor()
            } as i32)
        }
        Some(other) => Err(format!("invalid value for IntOrString: {other}")),
    }
}

/// maxSurge (rounded up) and maxUnavailable (rounded down) for `desired`
/// replicas. If both come out 0, unavailable becomes 1, as in Kubernetes: a
/// rollout must be able to move.
pub fn resolve_fenceposts(
    max_surge: Option<&Value>,
    max_unavailable: Option<&Value>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let surge = scaled_value(max_surge, desired, true)?;
    let unavailable = scaled_value(max_unavailable, desired, false)?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

/// What the rollout arithmetic needs of one ReplicaSet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// spec.replicas.
    pub spec: i32,
    /// status.replicas (active pods).
    pub replicas: i32,
    /// status.availableReplicas.
    pub available: i32,
}

impl Counts {
    /// Pods this ReplicaSet has or is about to have. A ReplicaSet just scaled
    /// down still has its old pods until its controller deletes them, so the
    /// larger of spec and status counts; Kubernetes uses spec alone, which can
    /// briefly overshoot maxSurge.
    fn pods_upper_bound(&self) -> i32 {
        self.spec.max(self.replicas)
    }

    /// Available pods this ReplicaSet will keep: once it converges to spec it
    /// has at most spec pods, and it deletes unavailable pods first. Using the
    /// status alone (as Kubernetes does) lets a second scale-down count pods
    /// the first one is about to delete.
    fn available_lower_bound(&self) -> i32 {
        self.available.min(self.spec).max(0)
    }
}

/// The new ReplicaSet's size for one RollingUpdate step: grow into the room
/// maxSurge leaves, never past `desired`. (Recreate goes straight to `desired`.)
pub fn new_rs_target(desired: i32, max_surge: i32, all: &[Counts], new: Counts) -> i32 {
    let current: i32 = all.iter().map(Counts::pods_upper_bound).sum();
    let max_total = desired + max_surge;
    if current >= max_total {
        return new.spec;
    }
    let up = (max_total - current).min(desired - new.spec).max(0);
    new.spec + up
}

/// New sizes for the old ReplicaSets (oldest first) in one RollingUpdate step:
/// first shed their unavailable pods (these only block the rollout), then
/// scale down as far as keeping `desired - max_unavailable` available allows.
pub fn plan_old_scale_down(
    desired: i32,
    max_unavailable: i32,
    old: &[Counts],
    new: Counts,
) -> Vec<i32> {
    let mut target: Vec<i32> = old.iter().map(|c| c.spec).collect();
    let old_total: i32 = target.iter().sum();
    if old_total == 0 {
        return target;
    }
    let all_total = old_total + new.spec;
    let min_available = desired - max_unavailable;
    let new_unavailable = new.spec - new.available_lower_bound();
    let max_scaled_down = all_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return target;
    }
    let mut cleaned = 0;
    for (i, c) in old.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        let healthy = c.available_lower_bound();
        if target[i] == 0 || target[i] <= healthy {
            continue;
        }
        let n = (max_scaled_down - cleaned).min(target[i] - healthy);
        target[i] -= n;
        cleaned += n;
    }
    let available: i32 = old
        .iter()
        .zip(&target)
        .map(|(c, t)| c.available_lower_bound().min(*t))
        .sum::<i32>()
        + new.available_lower_bound();
    if available <= min_available {
        return target;
    }
    let mut remove = available - min_available;
    for t in target.iter_mut() {
        if remove == 0 {
            break;
        }
        let n = (*t).min(remove);
        *t -= n;
        remove -= n;
    }
    target
}

/// One active ReplicaSet as proportional scaling sees it.
#[derive(Debug, Clone)]
pub struct Sized {
    /// spec.replicas.
    pub spec: i32,
    /// The max-replicas annotation, if present and non-zero.
    pub max_replicas: Option<i32>,
    /// Creation time and name, for ordering ties.
    pub age: (String, String),
}

/// Spread a change of the Deployment's size over its active ReplicaSets in
/// proportion to their sizes (Kubernetes' `scale` for rolling Deployments):
/// returns new sizes in the same order. `status_replicas` is the Deployment's
/// status.replicas, the fallback when an annotation is missing.
pub fn proportional_sizes(
    desired: i32,
    max_surge: i32,
    status_replicas: i32,
    rss: &[Sized],
) -> Vec<i32> {
    let total: i32 = rss.iter().map(|r| r.spec).sum();
    let allowed = if desired > 0 { desired + max_surge } else { 0 };
    let to_add = allowed - total;
    let mut order: Vec<usize> = (0..rss.len()).collect();
    // Larger first; on ties, newer first when growing and older first when shrinking.
    order.sort_by(|a, b| {
        let (ra, rb) = (&rss[*a], &rss[*b]);
        rb.spec.cmp(&ra.spec).then_with(|| {
            if to_add > 0 {
                rb.age.cmp(&ra.age)
            } else {
                ra.age.cmp(&rb.age)
            }
        })
    });
    let mut sizes: Vec<i32> = rss.iter().map(|r| r.spec).collect();
    if to_add == 0 {
        return sizes;
    }
    let max_now = desired + max_surge;
    let mut added = 0;
    for &i in &order {
        let r = &rss[i];
        if r.spec == 0 || to_add == added {
            continue;
        }
        let fraction = if desired == 0 {
            -r.spec
        } else {
            let before = r.max_replicas.unwrap_or(status_replicas);
            if before == 0 {
                0
            } else {
                (f64::from(r.spec) * f64::from(max_now) / f64::from(before)).round() as i32 - r.spec
            }
        };
        let allowed_now = to_add - added;
        let p = if to_add > 0 {
            fraction.min(allowed_now)
        } else {
            fraction.max(allowed_now)
        };
        sizes[i] += p;
        added += p;
    }
    // Leftovers go to the largest ReplicaSet.
    if let Some(&first) = order.first() {
        sizes[first] = (sizes[first] + to_add - added).max(0);
    }
    sizes
}

// ---------------------------------------------------------------------------
// Object helpers.

fn i64_at(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn spec_replicas(o: &Value) -> i32 {
    o.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1) as i32
}

fn annotation<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o.pointer("/metadata/annotations")?.get(key)?.as_str()
}

fn set_annotation(o: &mut Value, key: &str, value: &str) {
    let m = object::meta_mut(o);
    if !m.get("annotations").is_some_and(Value::is_object) {
        m.insert("annotations".into(), json!({}));
    }
    m["annotations"][key] = json!(value);
}

/// A ReplicaSet's revision (0 if none or unparsable).
pub fn revision(rs: &Value) -> i64 {
    annotation(rs, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn counts(rs: &Value) -> Counts {
    Counts {
        spec: spec_replicas(rs),
        replicas: i64_at(rs, "/status/replicas") as i32,
        available: i64_at(rs, "/status/availableReplicas") as i32,
    }
}

fn age(o: &Value) -> (String, String) {
    let created = o
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_time);
    // RFC 3339 in UTC with fixed precision sorts as text.
    let t = created
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_default();
    (t, object::meta_str(o, "name").unwrap_or("").to_string())
}

fn uid(o: &Value) -> &str {
    object::meta_str(o, "uid").unwrap_or("")
}

fn name(o: &Value) -> &str {
    object::meta_str(o, "name").unwrap_or("")
}

/// Two pod templates are the same apart from the pod-template-hash label.
pub fn equal_ignore_hash(a: &Value, b: &Value) -> bool {
    let strip = |t: &Value| {
        let mut t = t.clone();
        if let Some(l) = t
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            l.remove(template_hash::LABEL);
        }
        t
    };
    strip(a) == strip(b)
}

/// Set desired-replicas and max-replicas; true if they changed.
fn set_replicas_annotations(rs: &mut Value, desired: i32, max: i32) -> bool {
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if annotation(rs, k) != Some(v.as_str()) {
            set_annotation(rs, k, &v);
            changed = true;
        }
    }
    changed
}

/// Copy the Deployment's annotations (but not its own bookkeeping ones) to
/// the new ReplicaSet and raise the ReplicaSet's revision to `new_revision`,
/// remembering a reused ReplicaSet's earlier revisions. True if anything changed.
pub fn set_new_rs_annotations(
    d: &Value,
    rs: &mut Value,
    new_revision: i64,
    exists: bool,
    max_surge: i32,
) -> bool {
    let mut changed = false;
    if let Some(anns) = d
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in anns {
            if SKIP_COPY.contains(&k.as_str()) || annotation(rs, k) == v.as_str() {
                continue;
            }
            set_annotation(rs, k, v.as_str().unwrap_or(""));
            changed = true;
        }
    }
    let old = annotation(rs, REVISION).map(str::to_string);
    let old_num = match old.as_deref() {
        None | Some("") => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => return changed,
        },
    };
    if old_num < new_revision {
        set_annotation(rs, REVISION, &new_revision.to_string());
        changed = true;
        if let Some(old) = old.filter(|o| !o.is_empty()) {
            let history = annotation(rs, REVISION_HISTORY).unwrap_or("").to_string();
            let mut revs: Vec<&str> = if history.is_empty() {
                Vec::new()
            } else {
                history.split(',').collect()
            };
            revs.push(&old);
            while revs.len() > 1 && revs.join(",").len() > MAX_REVISION_HISTORY_CHARS {
                revs.remove(0);
            }
            let joined = revs.join(",");
            set_annotation(rs, REVISION_HISTORY, &joined);
        }
    }
    let desired = spec_replicas(d);
    if !exists && set_replicas_annotations(rs, desired, desired + max_surge) {
        changed = true;
    }
    changed
}

// Conditions, with Kubernetes' update rules.

fn get_condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn new_condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = object::now_rfc3339();
    json!({"type": type_, "status": status, "lastUpdateTime": now, "lastTransitionTime": now, "reason": reason, "message": message})
}

fn remove_condition(status: &mut Value, type_: &str) {
    if let Some(c) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        c.retain(|c| c["type"] != type_);
    }
}

/// Set a condition unless one with the same status and reason is there; keep
/// lastTransitionTime while the status does not change.
fn set_condition(status: &mut Value, mut cond: Value) {
    if let Some(cur) = get_condition(status, cond["type"].as_str().unwrap_or("")) {
        if cur["status"] == cond["status"] && cur["reason"] == cond["reason"] {
            return;
        }
        if cur["status"] == cond["status"] {
            cond["lastTransitionTime"] = cur["lastTransitionTime"].clone();
        }
    }
    remove_condition(status, cond["type"].as_str().unwrap_or(""));
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    status["conditions"]
        .as_array_mut()
        .expect("array")
        .push(cond);
}

fn status_i64(status: &Value, field: &str) -> i64 {
    status.get(field).and_then(Value::as_i64).unwrap_or(0)
}

/// Every replica is updated and available, and the status is current.
fn deployment_complete(d: &Value, status: &Value) -> bool {
    let want = i64::from(spec_replicas(d));
    status_i64(status, "updatedReplicas") == want
        && status_i64(status, "replicas") == want
        && status_i64(status, "availableReplicas") == want
        && status_i64(status, "observedGeneration") >= i64_at(d, "/metadata/generation")
}

/// Some pod moved forward since `old`.
fn deployment_progressing(old: &Value, new: &Value) -> bool {
    let old_old = status_i64(old, "replicas") - status_i64(old, "updatedReplicas");
    let new_old = status_i64(new, "replicas") - status_i64(new, "updatedReplicas");
    status_i64(new, "updatedReplicas") > status_i64(old, "updatedReplicas")
        || new_old < old_old
        || status_i64(new, "readyReplicas") > status_i64(old, "readyReplicas")
        || status_i64(new, "availableReplicas") > status_i64(old, "availableReplicas")
}

/// Time left before the Progressing condition's last update plus the deadline.
fn deadline_left(d: &Value, status: &Value) -> Option<chrono::Duration> {
    let deadline = progress_deadline(d)?;
    let cond = get_condition(status, "Progressing")?;
    let from = cond
        .get("lastUpdateTime")
        .and_then(Value::as_str)
        .and_then(parse_time)?;
    Some(from + chrono::Duration::seconds(deadline) - Utc::now())
}

fn deployment_timed_out(d: &Value, status: &Value) -> bool {
    let Some(cond) = get_condition(status, "Progressing") else {
        return false;
    };
    match cond["reason"].as_str() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => deadline_left(d, status).is_some_and(|left| left < chrono::Duration::zero()),
    }
}

/// progressDeadlineSeconds, unless unset or MaxInt32 (which means none).
fn progress_deadline(d: &Value) -> Option<i64> {
    d.pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64)
        .filter(|s| *s != i64::from(i32::MAX))
}

// ---------------------------------------------------------------------------
// The reconciler.

/// The Deployment reconciler.
#[derive(Default)]
pub struct DeploymentReconciler {
    selectors: SelectorIndex,
}

/// Pods matter to a Deployment only when Recreate waits for old pods to be
/// gone, so only terminating or finished pods are mapped. Pods of ReplicaSets
/// this controller made carry the hash label, and such a ReplicaSet is named
/// `<deployment>-<hash>`, which gives the Deployment without an index.
fn pod_to_deployment(pod: &Value) -> Vec<ObjectKey> {
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if pod.pointer("/metadata/deletionTimestamp").is_none() && !finished {
        return Vec::new();
    }
    let Some(owner) = ownership::controller_of(pod).filter(|r| r["kind"] == "ReplicaSet") else {
        return Vec::new();
    };
    let hash = ownership::labels(pod)
        .and_then(|l| l.get(template_hash::LABEL))
        .and_then(Value::as_str);
    let rs = owner["name"].as_str();
    match (rs, hash) {
        (Some(rs), Some(h)) => rs
            .strip_suffix(h)
            .and_then(|s| s.strip_suffix('-'))
            .map(|d| ObjectKey {
                namespace: object::meta_str(pod, "namespace").map(str::to_string),
                name: d.to_string(),
            })
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

impl Reconciler for DeploymentReconciler {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn watches(&self) -> Vec<Watch> {
        vec![
            Watch::primary(deploy_info()),
            Watch {
                resource: rs_info(),
                map: self.selectors.child_mapper("Deployment"),
            },
            Watch {
                resource: pod_info(),
                map: Arc::new(pod_to_deployment),
            },
        ]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let ns = key.namespace.clone().unwrap_or_default();
        let Some(d) = client.get(deploy_info(), Some(&ns), &key.name)? else {
            self.selectors.remove(&ns, &key.name);
            return Ok(Action::AwaitChange);
        };
        let selector =
            match LabelSelector::from_json(d.pointer("/spec/selector").unwrap_or(&Value::Null)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(deployment = %key.name, error = %e, "invalid selector");
                    return Ok(Action::AwaitChange);
                }
            };
        if selector.is_empty() {
            // Validation forbids this; an empty selector would select every pod.
            events::record(
                client,
                COMPONENT,
                &d,
                "Warning",
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            )
            .await;
            return Ok(Action::AwaitChange);
        }
        self.selectors.set(&ns, &key.name, selector.clone());
        let (max_surge, max_unavailable) = match strategy_limits(&d) {
            Ok(x) => x,
            Err(e) => {
                events::record(client, COMPONENT, &d, "Warning", "InvalidStrategy", &e).await;
                return Ok(Action::AwaitChange);
            }
        };

        // Claim ReplicaSets: adopt matching orphans, release those that stopped matching.
        let (all_rs, _) = client.list(rs_info(), Some(&ns), None)?;
        let deleting = d.pointer("/metadata/deletionTimestamp").is_some();
        let mut rss = Vec::new();
        for rs in all_rs {
            match ownership::claim(&rs, uid(&d), &selector, deleting) {
                Claim::Owned => rss.push(rs),
                Claim::Adopt => {
                    match ownership::adopt(client, rs_info(), &rs, ownership::controller_ref(&d))
                        .await
                    {
                        Ok(rs) => rss.push(rs),
                        Err(ApiError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Claim::Release => {
                    ownership::release(client, rs_info(), &rs, uid(&d)).await?;
                }
                Claim::Ignore => {}
            }
        }
        // Oldest first, as every step below expects.
        rss.sort_by_key(age);

        let status = d.get("status").cloned().unwrap_or_else(|| json!({}));
        let mut s = Rollout {
            client,
            d,
            status,
            rss,
            new_idx: None,
            max_surge,
            max_unavailable,
        };
        if deleting {
            s.find_new(false).await?;
            s.sync_status().await?;
            return Ok(Action::AwaitChange);
        }
        s.check_paused_conditions().await?;
        if s.paused() || s.is_scaling_event().await? {
            return s.sync().await;
        }
        if s.d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate") {
            s.rollout_recreate().await
        } else {
            s.rollout_rolling().await
        }
    }
}

/// (maxSurge, maxUnavailable) resolved for the Deployment; both 0 for Recreate.
fn strategy_limits(d: &Value) -> Result<(i32, i32), String> {
    if d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate") {
        return Ok((0, 0));
    }
    let desired = spec_replicas(d);
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let (surge, unavailable) = resolve_fenceposts(
        ru.and_then(|r| r.get("maxSurge")),
        ru.and_then(|r| r.get("maxUnavailable")),
        desired,
    )?;
    // Kubernetes: MaxUnavailable is 0 for an empty Deployment and never above replicas.
    let unavailable = if desired == 0 {
        0
    } else {
        unavailable.min(desired)
    };
    Ok((surge, unavailable))
}

/// One reconcile of one Deployment: the Deployment as last written, the
/// status being computed, and its ReplicaSets oldest first.
struct Rollout<'a> {
    client: &'a LocalClient,
    d: Value,
    /// Kubernetes' in-memory `d.Status`: conditions changed during the sync.
    status: Value,
    rss: Vec<Value>,
    new_idx: Option<usize>,
    max_surge: i32,
    max_unavailable: i32,
}

impl Rollout<'_> {
    fn desired(&self) -> i32 {
        spec_replicas(&self.d)
    }

    fn paused(&self) -> bool {
        self.d
            .pointer("/spec/paused")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    fn ns(&self) -> Option<&str> {
        object::meta_str(&self.d, "namespace")
    }

    fn old_indices(&self) -> Vec<usize> {
        (0..self.rss.len())
            .filter(|i| Some(*i) != self.new_idx)
            .collect()
    }

    async fn event(&self, type_: &str, reason: &str, msg: &str) {
        events::record(self.client, COMPONENT, &self.d, type_, reason, msg).await;
    }

    async fn write_status(&mut self, status: Value) -> Result<(), ApiError> {
        let mut obj = self.d.clone();
        obj["status"] = status;
        self.d = self.client.update_status(deploy_info(), obj).await?;
        self.status = self.d.get("status").cloned().unwrap_or_else(|| json!({}));
        Ok(())
    }

    /// The Deployment's revision annotation follows its new ReplicaSet's.
    async fn set_deployment_revision(&mut self, rev: &str) -> Result<(), ApiError> {
        if annotation(&self.d, REVISION) == Some(rev) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        let status = self.status.clone();
        self.d = self
            .client
            .merge_patch(
                deploy_info(),
                self.ns(),
                name(&self.d).to_string().as_str(),
                &patch,
            )
            .await?;
        // Keep the in-memory status (the patch does not touch the stored one).
        self.status = status;
        Ok(())
    }

    /// Find the ReplicaSet whose template is the Deployment's (creating it when
    /// asked), sync its annotations and the Deployment's revision.
    async fn find_new(&mut self, create: bool) -> Result<(), ApiError> {
        let template = self
            .d
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null);
        let found = self.rss.iter().position(|rs| {
            rs.pointer("/spec/template")
                .is_some_and(|t| equal_ignore_hash(t, &template))
        });
        self.new_idx = found;
        let max_old = self
            .old_indices()
            .iter()
            .map(|i| revision(&self.rss[*i]))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        let min_ready = self
            .d
            .pointer("/spec/minReadySeconds")
            .cloned()
            .unwrap_or(json!(0));
        if let Some(i) = found {
            let mut rs = self.rss[i].clone();
            let changed =
                set_new_rs_annotations(&self.d, &mut rs, new_revision, true, self.max_surge);
            let rs_min_ready = rs
                .pointer("/spec/minReadySeconds")
                .cloned()
                .unwrap_or(json!(0));
            if changed || rs_min_ready != min_ready {
                rs["spec"]["minReadySeconds"] = min_ready;
                self.rss[i] = self.client.update(rs_info(), rs).await?;
            }
            let rev = annotation(&self.rss[i], REVISION).unwrap_or("").to_string();
            self.set_deployment_revision(&rev).await?;
            if progress_deadline(&self.d).is_some()
                && get_condition(&self.status, "Progressing").is_none()
            {
                let msg = format!("Found new replica set \"{}\"", name(&self.rss[i]));
                let mut st = self.status.clone();
                set_condition(
                    &mut st,
                    new_condition("Progressing", "True", "FoundNewReplicaSet", &msg),
                );
                self.write_status(st).await?;
            }
            return Ok(());
        }
        if !create {
            return Ok(());
        }

        let collisions = self.status.get("collisionCount").and_then(Value::as_i64);
        let hash = template_hash::compute(&template, collisions);
        let mut rs_template = template.clone();
        if !rs_template
            .pointer("/metadata/labels")
            .is_some_and(Value::is_object)
        {
            rs_template["metadata"]["labels"] = json!({});
        }
        rs_template["metadata"]["labels"][template_hash::LABEL] = json!(hash);
        let mut selector = self
            .d
            .pointer("/spec/selector")
            .cloned()
            .unwrap_or_else(|| json!({}));
        if !selector.get("matchLabels").is_some_and(Value::is_object) {
            selector["matchLabels"] = json!({});
        }
        selector["matchLabels"][template_hash::LABEL] = json!(hash);
        let rs_name = format!("{}-{}", name(&self.d), hash);
        let mut rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name, "namespace": self.ns(),
                "labels": rs_template["metadata"]["labels"].clone(),
                "ownerReferences": [ownership::controller_ref(&self.d)],
            },
            "spec": {"replicas": 0, "minReadySeconds": min_ready, "selector": selector, "template": rs_template},
        });
        let mut all: Vec<Counts> = self.rss.iter().map(counts).collect();
        all.push(Counts::default());
        let replicas = if self.rolling() {
            new_rs_target(self.desired(), self.max_surge, &all, Counts::default())
        } else {
            self.desired()
        };
        rs["spec"]["replicas"] = json!(replicas);
        set_new_rs_annotations(&self.d, &mut rs, new_revision, false, self.max_surge);

        let (created, already) = match self.client.create(rs_info(), self.ns(), rs).await {
            Ok(c) => (c, false),
            Err(ApiError::AlreadyExists { .. }) => {
                let existing = self.client.get(rs_info(), self.ns(), &rs_name)?;
                match existing {
                    Some(e)
                        if ownership::controller_uid(&e) == Some(uid(&self.d))
                            && e.pointer("/spec/template")
                                .is_some_and(|t| equal_ignore_hash(t, &template)) =>
                    {
                        (e, true)
                    }
                    _ => {
                        // A different ReplicaSet has this name: vary the hash and try again.
                        let mut st = self.status.clone();
                        st["collisionCount"] = json!(collisions.unwrap_or(0) + 1);
                        self.write_status(st).await?;
                        return Err(ApiError::AlreadyExists {
                            group: "apps".into(),
                            resource: "replicasets".into(),
                            name: rs_name,
                        });
                    }
                }
            }
            Err(e) => {
                let msg = format!(
                    "Failed to create new replica set \"{rs_name}\": {}",
                    e.status()["message"].as_str().unwrap_or("")
                );
                if progress_deadline(&self.d).is_some() {
                    let mut st = self.status.clone();
                    set_condition(
                        &mut st,
                        new_condition("Progressing", "False", "ReplicaSetCreateError", &msg),
                    );
                    let _ = self.write_status(st).await;
                }
                self.event("Warning", "ReplicaSetCreateError", &msg).await;
                return Err(e);
            }
        };
        if !already && replicas > 0 {
            self.event(
                "Normal",
                "ScalingReplicaSet",
                &format!(
                    "Scaled up replica set {} from 0 to {replicas}",
                    name(&created)
                ),
            )
            .await;
        }
        let rev = annotation(&created, REVISION).unwrap_or("").to_string();
        self.rss.push(created);
        self.new_idx = Some(self.rss.len() - 1);
        self.set_deployment_revision(&rev).await?;
        if !already && progress_deadline(&self.d).is_some() {
            let msg = format!(
                "Created new replica set \"{}\"",
                name(&self.rss[self.rss.len() - 1])
            );
            let mut st = self.status.clone();
            set_condition(
                &mut st,
                new_condition("Progressing", "True", "NewReplicaSetCreated", &msg),
            );
            self.write_status(st).await?;
        }
        Ok(())
    }

    fn rolling(&self) -> bool {
        self.d
            .pointer("/spec/strategy/type")
            .and_then(Value::as_str)
            != Some("Recreate")
    }

    /// Resize a ReplicaSet (and refresh its replicas annotations); true if the size changed.
    async fn scale_rs(&mut self, i: usize, size: i32) -> Result<bool, ApiError> {
        let rs = &self.rss[i];
        let old = spec_replicas(rs);
        let (desired, max) = (self.desired(), self.desired() + self.max_surge);
        let mut copy = rs.clone();
        let annotations_changed = set_replicas_annotations(&mut copy, desired, max);
        if old == size && !annotations_changed {
            return Ok(false);
        }
        copy["spec"]["replicas"] = json!(size);
        self.rss[i] = self.client.update(rs_info(), copy).await?;
        if old == size {
            return Ok(false);
        }
        let dir = if size > old { "up" } else { "down" };
        self.event(
            "Normal",
            "ScalingReplicaSet",
            &format!(
                "Scaled {dir} replica set {} from {old} to {size}",
                name(&self.rss[i])
            ),
        )
        .await;
        Ok(true)
    }

    /// Resize only if the size differs.
    async fn scale_rs_if_needed(&mut self, i: usize, size: i32) -> Result<bool, ApiError> {
        if spec_replicas(&self.rss[i]) == size {
            return Ok(false);
        }
        self.scale_rs(i, size).await
    }

    fn active(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter()
            .copied()
            .filter(|i| spec_replicas(&self.rss[*i]) > 0)
            .collect()
    }

    /// Some active ReplicaSet was sized for a different `replicas`.
    async fn is_scaling_event(&mut self) -> Result<bool, ApiError> {
        self.find_new(false).await?;
        let all: Vec<usize> = (0..self.rss.len()).collect();
        let desired = self.desired().to_string();
        Ok(self
            .active(&all)
            .iter()
            .any(|i| annotation(&self.rss[*i], DESIRED_REPLICAS).is_some_and(|v| v != desired)))
    }

    /// Record pause and resume in the Progressing condition, so the deadline
    /// does not run while paused.
    async fn check_paused_conditions(&mut self) -> Result<(), ApiError> {
        if progress_deadline(&self.d).is_none() {
            return Ok(());
        }
        let cond = get_condition(&self.status, "Progressing");
        if cond.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") {
            return Ok(());
        }
        let paused_cond = cond.is_some_and(|c| c["reason"] == "DeploymentPaused");
        let mut st = self.status.clone();
        if self.paused() && !paused_cond {
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                ),
            );
        } else if !self.paused() && paused_cond {
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed",
                ),
            );
        } else {
            return Ok(());
        }
        self.write_status(st).await
    }

    /// Scaling (and, while paused, everything short of a rollout).
    async fn sync(&mut self) -> Result<Action, ApiError> {
        self.find_new(false).await?;
        self.scale().await?;
        if self.paused() {
            self.cleanup().await?;
        }
        self.sync_status().await?;
        Ok(Action::AwaitChange)
    }

    async fn scale(&mut self) -> Result<(), ApiError> {
        let desired = self.desired();
        let old = self.old_indices();
        // One active ReplicaSet (or none: the newest) takes the whole size.
        let mut all_active = self.active(&old);
        if let Some(n) = self.new_idx.filter(|n| spec_replicas(&self.rss[*n]) > 0) {
            all_active.push(n);
        }
        let target = match all_active.len() {
            0 => self.new_idx.or_else(|| {
                old.iter()
                    .copied()
                    .max_by(|a, b| age(&self.rss[*a]).cmp(&age(&self.rss[*b])))
            }),
            1 => Some(all_active[0]),
            _ => None,
        };
        if let Some(i) = target {
            if spec_replicas(&self.rss[i]) != desired {
                self.scale_rs_if_needed(i, desired).await?;
            }
            return Ok(());
        }
        // A saturated new ReplicaSet: the old ones go to zero.
        if let Some(n) = self.new_idx {
            let rs = &self.rss[n];
            if spec_replicas(rs) == desired
                && annotation(rs, DESIRED_REPLICAS) == Some(desired.to_string().as_str())
                && i64_at(rs, "/status/availableReplicas") == i64::from(desired)
            {
                for i in self.active(&old) {
                    self.scale_rs_if_needed(i, 0).await?;
                }
                return Ok(());
            }
        }
        if !self.rolling() {
            return Ok(());
        }
        let sized: Vec<Sized> = all_active
            .iter()
            .map(|i| {
                let rs = &self.rss[*i];
                Sized {
                    spec: spec_replicas(rs),
                    max_replicas: annotation(rs, MAX_REPLICAS)
                        .and_then(|v| v.parse().ok())
                        .filter(|v| *v != 0),
                    age: age(rs),
                }
            })
            .collect();
        let sizes = proportional_sizes(
            desired,
            self.max_surge,
            status_i64(&self.status, "replicas") as i32,
            &sized,
        );
        for (k, i) in all_active.into_iter().enumerate() {
            self.scale_rs(i, sizes[k]).await?;
        }
        Ok(())
    }

    /// Kubernetes' calculateStatus: counts from the ReplicaSets, the Available condition.
    fn calculate_status(&self) -> Value {
        let sum = |f: &str| -> i64 {
            self.rss
                .iter()
                .map(|rs| i64_at(rs, &format!("/status/{f}")))
                .sum()
        };
        let available = sum("availableReplicas");
        let total: i64 = self.rss.iter().map(|rs| i64::from(spec_replicas(rs))).sum();
        let updated = self
            .new_idx
            .map(|i| i64_at(&self.rss[i], "/status/replicas"))
            .unwrap_or(0);
        let mut st = json!({
            "observedGeneration": i64_at(&self.d, "/metadata/generation"),
            "replicas": sum("replicas"),
            "updatedReplicas": updated,
            "readyReplicas": sum("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": (total - available).max(0),
        });
        if let Some(c) = self.status.get("collisionCount").filter(|c| !c.is_null()) {
            st["collisionCount"] = c.clone();
        }
        if let Some(c) = self.status.get("conditions").filter(|c| c.is_array()) {
            st["conditions"] = c.clone();
        }
        if available >= i64::from(self.desired() - self.max_unavailable) {
            set_condition(
                &mut st,
                new_condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                ),
            );
        } else {
            set_condition(
                &mut st,
                new_condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                ),
            );
        }
        st
    }

    async fn sync_status(&mut self) -> Result<(), ApiError> {
        let st = self.calculate_status();
        if st != self.status {
            self.write_status(st).await?;
        }
        Ok(())
    }

    /// Status during a rollout, with the Progressing condition and its deadline.
    async fn sync_rollout_status(&mut self) -> Result<Action, ApiError> {
        let mut st = self.calculate_status();
        let deadline = progress_deadline(&self.d);
        if deadline.is_none() {
            remove_condition(&mut st, "Progressing");
        }
        let current = get_condition(&self.status, "Progressing").cloned();
        let complete_before = status_i64(&st, "replicas") == status_i64(&st, "updatedReplicas")
            && current
                .as_ref()
                .is_some_and(|c| c["reason"] == "NewReplicaSetAvailable");
        let new_name = self.new_idx.map(|i| name(&self.rss[i]).to_string());
        let subject = match &new_name {
            Some(n) => format!("ReplicaSet \"{n}\""),
            None => format!("Deployment \"{}\"", name(&self.d)),
        };
        if deadline.is_some() && !complete_before {
            if deployment_complete(&self.d, &st) {
                set_condition(
                    &mut st,
                    new_condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        &format!("{subject} has successfully progressed."),
                    ),
                );
            } else if deployment_progressing(&self.status, &st) {
                let mut cond = new_condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &format!("{subject} is progressing."),
                );
                // Progress refreshes lastUpdateTime (the deadline restarts) but a
                // True condition keeps its transition time.
                if let Some(cur) = &current {
                    if cur["status"] == "True" {
                        cond["lastTransitionTime"] = cur["lastTransitionTime"].clone();
                    }
                    remove_condition(&mut st, "Progressing");
                }
                set_condition(&mut st, cond);
            } else if deployment_timed_out(&self.d, &st) {
                set_condition(
                    &mut st,
                    new_condition(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        &format!("{subject} has timed out progressing."),
                    ),
                );
                if !current
                    .as_ref()
                    .is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded")
                {
                    self.event(
                        "Warning",
                        "ProgressDeadlineExceeded",
                        &format!("{subject} has timed out progressing."),
                    )
                    .await;
                }
            }
        }
        // A new ReplicaSet's failure to create pods shows on the Deployment.
        let failure = self
            .new_idx
            .and_then(|i| get_condition(&self.rss[i]["status"], "ReplicaFailure").cloned());
        match failure {
            Some(f) => {
                let mut c = new_condition(
                    "ReplicaFailure",
                    f["status"].as_str().unwrap_or("True"),
                    f["reason"].as_str().unwrap_or(""),
                    f["message"].as_str().unwrap_or(""),
                );
                if let Some(t) = f.get("lastTransitionTime") {
                    c["lastTransitionTime"] = t.clone();
                }
                set_condition(&mut st, c);
            }
            None => remove_condition(&mut st, "ReplicaFailure"),
        }
        if st != self.status {
            self.write_status(st).await?;
        }
        Ok(self.stuck_requeue())
    }

    /// While a rollout with a deadline is in flight, come back when the deadline
    /// would pass, so ProgressDeadlineExceeded is reported without any event.
    fn stuck_requeue(&self) -> Action {
        let Some(cond) = get_condition(&self.status, "Progressing") else {
            return Action::AwaitChange;
        };
        if deployment_complete(&self.d, &self.status)
            || cond["reason"] == "ProgressDeadlineExceeded"
            || cond["reason"] == "NewReplicaSetAvailable"
        {
            return Action::AwaitChange;
        }
        match deadline_left(&self.d, &self.status).and_then(|d| d.to_std().ok()) {
            Some(left) if left >= Duration::from_secs(1) => {
                Action::Requeue(left + Duration::from_secs(1))
            }
            Some(_) | None if progress_deadline(&self.d).is_some() => {
                Action::Requeue(Duration::from_millis(500))
            }
            _ => Action::AwaitChange,
        }
    }

    async fn rollout_rolling(&mut self) -> Result<Action, ApiError> {
        self.find_new(true).await?;
        if self.reconcile_new_rs().await? || self.reconcile_old_rss().await? {
            return self.sync_rollout_status().await;
        }
        if deployment_complete(&self.d, &self.status) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }

    async fn reconcile_new_rs(&mut self) -> Result<bool, ApiError> {
        let Some(n) = self.new_idx else {
            return Ok(false);
        };
        let (desired, cur) = (self.desired(), spec_replicas(&self.rss[n]));
        if cur == desired {
            return Ok(false);
        }
        if cur > desired {
            return self.scale_rs_if_needed(n, desired).await;
        }
        let all: Vec<Counts> = self.rss.iter().map(counts).collect();
        let target = new_rs_target(desired, self.max_surge, &all, counts(&self.rss[n]));
        self.scale_rs_if_needed(n, target).await
    }

    async fn reconcile_old_rss(&mut self) -> Result<bool, ApiError> {
        let Some(n) = self.new_idx else {
            return Ok(false);
        };
        let old = self.active(&self.old_indices());
        let old_counts: Vec<Counts> = old.iter().map(|i| counts(&self.rss[*i])).collect();
        let targets = plan_old_scale_down(
            self.desired(),
            self.max_unavailable,
            &old_counts,
            counts(&self.rss[n]),
        );
        let mut scaled = false;
        for (i, t) in old.into_iter().zip(targets) {
            scaled |= self.scale_rs_if_needed(i, t).await?;
        }
        Ok(scaled)
    }

    async fn rollout_recreate(&mut self) -> Result<Action, ApiError> {
        self.find_new(false).await?;
        let mut scaled = false;
        for i in self.active(&self.old_indices()) {
            scaled |= self.scale_rs_if_needed(i, 0).await?;
        }
        if scaled || self.old_pods_running()? {
            return self.sync_rollout_status().await;
        }
        if self.new_idx.is_none() {
            self.find_new(true).await?;
        }
        if let Some(n) = self.new_idx {
            self.scale_rs_if_needed(n, self.desired()).await?;
        }
        if deployment_complete(&self.d, &self.status) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }

    /// Recreate starts new pods only once no old pod runs (terminating ones included).
    fn old_pods_running(&self) -> Result<bool, ApiError> {
        let old = self.old_indices();
        if old
            .iter()
            .any(|i| i64_at(&self.rss[*i], "/status/replicas") > 0)
        {
            return Ok(true);
        }
        let old_uids: Vec<&str> = old.iter().map(|i| uid(&self.rss[*i])).collect();
        let (pods, _) = self.client.list(pod_info(), self.ns(), None)?;
        Ok(pods.iter().any(|p| {
            ownership::controller_uid(p).is_some_and(|u| old_uids.contains(&u))
                && !matches!(
                    p.pointer("/status/phase").and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                )
        }))
    }

    /// Delete the oldest old ReplicaSets beyond revisionHistoryLimit, but only
    /// ones that are fully scaled down and observed so.
    async fn cleanup(&mut self) -> Result<(), ApiError> {
        let Some(limit) = self
            .d
            .pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
        else {
            return Ok(());
        };
        let mut old: Vec<&Value> = self
            .old_indices()
            .into_iter()
            .map(|i| &self.rss[i])
            .filter(|rs| rs.pointer("/metadata/deletionTimestamp").is_none())
            .collect();
        let excess = old.len() as i64 - limit;
        if excess <= 0 {
            return Ok(());
        }
        old.sort_by(|a, b| match revision(a).cmp(&revision(b)) {
            Ordering::Equal => age(a).cmp(&age(b)),
            o => o,
        });
        let doomed: Vec<String> = old
            .into_iter()
            .take(excess as usize)
            .filter(|rs| {
                i64_at(rs, "/status/replicas") == 0
                    && spec_replicas(rs) == 0
                    && i64_at(rs, "/metadata/generation")
                        <= i64_at(rs, "/status/observedGeneration")
            })
            .map(|rs| name(rs).to_string())
            .collect();
        for n in doomed {
            self.client
                .delete(rs_info(), self.ns(), &n, &json!({}))
                .await?;
            self.rss.retain(|rs| name(rs) != n);
        }
        let template = self
            .d
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null);
        self.new_idx = self.rss.iter().position(|rs| {
            rs.pointer("/spec/template")
                .is_some_and(|t| equal_ignore_hash(t, &template))
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(spec: i32, replicas: i32, available: i32) -> Counts {
        Counts {
            spec,
            replicas,
            available,
        }
    }

    #[test]
    fn fenceposts_round_like_kubernetes() {
        let v = |s: &str| json!(s);
        // 25% of 10: surge rounds up to 3, unavailable down to 2.
        assert_eq!(
            resolve_fenceposts(Some(&v("25%")), Some(&v("25%")), 10),
            Ok((3, 2))
        );
        assert_eq!(
            resolve_fenceposts(Some(&json!(2)), Some(&json!(1)), 10),
            Ok((2, 1))
        );
        // 10% of 3 rounds to 0 unavailable and 1 surge.
        assert_eq!(
            resolve_fenceposts(Some(&v("10%")), Some(&v("10%")), 3),
            Ok((1, 0))
        );
        // Both zero: unavailable becomes 1 so the rollout can move.
        assert_eq!(
            resolve_fenceposts(Some(&json!(0)), Some(&v("10%")), 3),
            Ok((0, 1))
        );
        assert!(resolve_fenceposts(Some(&v("3")), None, 3).is_err());
    }

    #[test]
    fn strategy_limits_cap_and_recreate() {
        let d = json!({"spec": {"replicas": 2, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 5}}}});
        assert_eq!(strategy_limits(&d), Ok((1, 2)));
        let r = json!({"spec": {"replicas": 2, "strategy": {"type": "Recreate"}}});
        assert_eq!(strategy_limits(&r), Ok((0, 0)));
    }

    #[test]
    fn new_replica_set_grows_into_surge() {
        // 10 desired, surge 2: a fresh rollout starts with 2 new pods.
        assert_eq!(
            new_rs_target(10, 2, &[c(10, 10, 10), c(0, 0, 0)], c(0, 0, 0)),
            2
        );
        // Old scaled to 8 but still has 10 pods: no room yet.
        assert_eq!(
            new_rs_target(10, 2, &[c(8, 10, 10), c(2, 2, 2)], c(2, 2, 2)),
            2
        );
        // Once the old pods are gone the new set grows by 2 more.
        assert_eq!(
            new_rs_target(10, 2, &[c(8, 8, 8), c(2, 2, 2)], c(2, 2, 2)),
            4
        );
        // Never past desired.
        assert_eq!(
            new_rs_target(10, 5, &[c(1, 1, 1), c(9, 9, 9)], c(9, 9, 9)),
            10
        );
    }

    #[test]
    fn old_replica_sets_keep_minimum_available() {
        // 10 desired, unavailable 1, new set of 2 not yet available: old may drop by 1.
        assert_eq!(
            plan_old_scale_down(10, 1, &[c(10, 10, 10)], c(2, 2, 0)),
            vec![9]
        );
        // Old already at 9 (status still says 10 available): nothing more.
        assert_eq!(
            plan_old_scale_down(10, 1, &[c(9, 10, 10)], c(2, 2, 0)),
            vec![9]
        );
        // Two new pods became available: old may go to 7.
        assert_eq!(
            plan_old_scale_down(10, 1, &[c(9, 9, 9)], c(2, 2, 2)),
            vec![7]
        );
        // Unhealthy old pods are shed first, within what the new set's gaps allow.
        assert_eq!(
            plan_old_scale_down(4, 1, &[c(2, 2, 0), c(3, 3, 3)], c(1, 1, 0)),
            vec![0, 3]
        );
        // Oldest first.
        assert_eq!(
            plan_old_scale_down(4, 0, &[c(2, 2, 2), c(2, 2, 2)], c(2, 2, 2)),
            vec![0, 2]
        );
    }

    #[test]
    fn proportional_scaling_splits_by_size() {
        let s = |spec: i32, max: i32, t: &str| Sized {
            spec,
            max_replicas: Some(max),
            age: (t.into(), t.into()),
        };
        // 10 -> 20 replicas with surge 0 while two sets share 6/4 (max was 10).
        assert_eq!(
            proportional_sizes(20, 0, 10, &[s(6, 10, "a"), s(4, 10, "b")]),
            vec![12, 8]
        );
        // Down to 5: halved.
        assert_eq!(
            proportional_sizes(5, 0, 10, &[s(6, 10, "a"), s(4, 10, "b")]),
            vec![3, 2]
        );
        // Leftovers from rounding go to the largest.
        assert_eq!(
            proportional_sizes(3, 0, 10, &[s(5, 10, "a"), s(5, 10, "b")])
                .iter()
                .sum::<i32>(),
            3
        );
        // Scaling to zero empties all.
        assert_eq!(
            proportional_sizes(0, 0, 10, &[s(6, 10, "a"), s(4, 10, "b")]),
            vec![0, 0]
        );
    }

    #[test]
    fn revisions_and_history() {
        let d = json!({"metadata": {"annotations": {"kubernetes.io/change-cause": "v2", REVISION: "7"}}, "spec": {"replicas": 3}});
        let mut rs = json!({"metadata": {"annotations": {REVISION: "1"}}});
        assert!(set_new_rs_annotations(&d, &mut rs, 3, true, 1));
        assert_eq!(annotation(&rs, REVISION), Some("3"));
        assert_eq!(annotation(&rs, REVISION_HISTORY), Some("1"));
        assert_eq!(annotation(&rs, "kubernetes.io/change-cause"), Some("v2"));
        // Existing sets do not get replicas annotations from this path.
        assert_eq!(annotation(&rs, DESIRED_REPLICAS), None);
        assert!(set_new_rs_annotations(&d, &mut rs, 5, true, 1));
        assert_eq!(annotation(&rs, REVISION_HISTORY), Some("1,3"));
        // A lower revision never replaces a higher one.
        assert!(!set_new_rs_annotations(&d, &mut rs, 4, true, 1));
        let mut fresh = json!({"metadata": {}});
        set_new_rs_annotations(&d, &mut fresh, 1, false, 1);
        assert_eq!(annotation(&fresh, DESIRED_REPLICAS), Some("3"));
        assert_eq!(annotation(&fresh, MAX_REPLICAS), Some("4"));
        assert_eq!(annotation(&fresh, REVISION_HISTORY), None);
    }

    #[test]
    fn templates_compare_without_the_hash() {
        let a = json!({"metadata": {"labels": {"app": "w", "pod-template-hash": "abc"}}, "spec": {"x": 1}});
        let b = json!({"metadata": {"labels": {"app": "w"}}, "spec": {"x": 1}});
        assert!(equal_ignore_hash(&a, &b));
        assert!(!equal_ignore_hash(
            &a,
            &json!({"metadata": {"labels": {"app": "w"}}, "spec": {"x": 2}})
        ));
    }

    #[test]
    fn conditions_keep_transition_time() {
        let mut st = json!({});
        let mut first = new_condition("Progressing", "True", "NewReplicaSetCreated", "m");
        first["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        set_condition(&mut st, first);
        set_condition(
            &mut st,
            new_condition("Progressing", "True", "ReplicaSetUpdated", "m"),
        );
        let c = get_condition(&st, "Progressing").unwrap();
        assert_eq!(c["reason"], "ReplicaSetUpdated");
        assert_eq!(c["lastTransitionTime"], "2020-01-01T00:00:00Z");
        set_condition(
            &mut st,
            new_condition("Progressing", "False", "ProgressDeadlineExceeded", "m"),
        );
        assert_ne!(
            get_condition(&st, "Progressing").unwrap()["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
    }

    #[test]
    fn terminating_pods_map_to_their_deployment() {
        let pod = json!({"metadata": {"namespace": "d", "deletionTimestamp": "x", "labels": {"pod-template-hash": "5f6b"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5f6b", "controller": true, "uid": "1"}]}});
        assert_eq!(
            pod_to_deployment(&pod),
            vec![ObjectKey {
                namespace: Some("d".into()),
                name: "web".into()
            }]
        );
        let mut running = pod.clone();
        running["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("deletionTimestamp");
        assert!(pod_to_deployment(&running).is_empty());
    }
}
