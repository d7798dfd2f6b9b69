//! HorizontalPodAutoscaler (autoscaling/v2) controller: every sync period it
//! reads the target's `scale` subresource, the usage of the pods its
//! selector picks (from the nodes' pushed reports, see
//! [`crate::api::metrics_api`]), computes the desired replicas with the
//! Kubernetes algorithm (ratio to target with a 10% tolerance, missing and
//! unready pods, min/max, behavior: stabilization windows and rate
//! policies), writes the scale subresource, and reports status and Events.
//!
//! Recommendation and scale-event histories live in memory, as in
//! kube-controller-manager: a restarted host starts them afresh.

use super::events;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::metrics_api::{self, PodSample};
use crate::api::selector::LabelSelector;
use crate::api::{handlers, object, resources, validation, AppState};
use crate::auth::Identity;
use axum::body::Body;
use chrono::{DateTime, Utc};
use http::Method;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default time between two evaluations of an HPA.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Ratios within this distance of 1.0 do not rescale.
pub const TOLERANCE: f64 = 0.1;
/// Within this time after a pod starts, CPU samples taken before its
/// readiness settled are not trusted.
const CPU_INITIALIZATION_PERIOD: chrono::Duration = chrono::Duration::minutes(5);
/// A pod that turned unready this soon after starting has never been ready.
const DELAY_OF_INITIAL_READINESS: chrono::Duration = chrono::Duration::seconds(30);
const COMPONENT: &str = "horizontal-pod-autoscaler";

/// Where pod usage comes from (the nodes' reports; a fake in tests).
pub trait MetricsSource: Send + Sync + 'static {
    /// Fresh usage samples of the pods in `namespace`, by pod name.
    fn pod_usage(&self, namespace: &str) -> HashMap<String, PodSample>;
}

/// The nodes' pushed reports held by the API server.
pub struct ReportedMetrics(pub Arc<AppState>);

impl MetricsSource for ReportedMetrics {
    fn pod_usage(&self, namespace: &str) -> HashMap<String, PodSample> {
        metrics_api::pod_samples(&self.0, namespace)
            .into_iter()
            .map(|(_, s)| (s.name.clone(), s))
            .collect()
    }
}

/// A resource the HPA can scale on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// CPU, in millicores.
    Cpu,
    /// Memory, in thousandths of a byte (Kubernetes' MilliValue).
    Memory,
}

impl Resource {
    fn parse(s: &str) -> Option<Resource> {
        match s {
            "cpu" => Some(Resource::Cpu),
            "memory" => Some(Resource::Memory),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        }
    }
    /// A sample's value in milli-units.
    fn milli(self, u: &metrics_api::Usage) -> i64 {
        match self {
            Resource::Cpu => (u.cpu_nano_cores / 1_000_000) as i64,
            Resource::Memory => (u.memory_bytes as i64).saturating_mul(1000),
        }
    }
    /// A milli-value as a quantity string.
    fn quantity(self, milli: i64) -> String {
        match self {
            Resource::Cpu => format!("{milli}m"),
            Resource::Memory if milli % 1000 == 0 => (milli / 1000).to_string(),
            Resource::Memory => format!("{milli}m"),
        }
    }
}

/// What a pod contributes to the calculation.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Name.
    pub name: String,
    /// `status.phase`.
    pub phase: String,
    /// Being deleted.
    pub deleting: bool,
    /// The Ready condition: (status is True, its lastTransitionTime).
    pub ready: Option<(bool, DateTime<Utc>)>,
    /// `status.startTime`.
    pub start_time: Option<DateTime<Utc>>,
    /// Requests per container: (name, cpu milli, memory milli); None when unset.
    pub requests: Vec<(String, Option<i64>, Option<i64>)>,
}

fn time_at(v: &Value, p: &str) -> Option<DateTime<Utc>> {
    v.pointer(p)
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl PodInfo {
    /// Read the fields the algorithm needs from a pod object.
    pub fn from_pod(pod: &Value) -> PodInfo {
        let ready = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .map(|c| {
                (
                    c["status"] == "True",
                    time_at(c, "/lastTransitionTime").unwrap_or_default(),
                )
            });
        let q = |c: &Value, r: &str| {
            c.pointer(&format!("/resources/requests/{r}"))
                .and_then(Value::as_str)
                .and_then(|s| scheduler_core::quantity::parse(s).ok())
                .map(|q| q.milli_value())
        };
        let requests = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or("").to_string(),
                    q(c, "cpu"),
                    q(c, "memory"),
                )
            })
            .collect();
        PodInfo {
            name: object::meta_str(pod, "name").unwrap_or("").to_string(),
            phase: pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Pending")
                .to_string(),
            deleting: pod.pointer("/metadata/deletionTimestamp").is_some(),
            ready,
            start_time: time_at(pod, "/status/startTime"),
            requests,
        }
    }

    /// The pod's request for `r` (restricted to one container if given), or the
    /// container that lacks one.
    fn request(&self, r: Resource, container: Option<&str>) -> Result<i64, String> {
        let mut total = 0;
        for (name, cpu, mem) in &self.requests {
            if container.is_some_and(|c| c != name) {
                continue;
            }
            let v = match r {
                Resource::Cpu => *cpu,
                // Milli-bytes, like the samples.
                Resource::Memory => *mem,
            };
            match v {
                Some(v) => total += v,
                None => {
                    return Err(format!(
                        "missing request for {} in container {name} of Pod {}",
                        r.name(),
                        self.name
                    ))
                }
            }
        }
        Ok(total)
    }
}

/// The target of one resource metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Average utilization in percent of the pods' requests.
    Utilization(i64),
    /// Average value per pod, in milli-units.
    AverageValue(i64),
}

/// The outcome of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// Replicas this metric asks for.
    pub replicas: i32,
    /// Current average utilization (Utilization targets only).
    pub utilization: Option<i64>,
    /// Current average value per pod, milli-units.
    pub average: i64,
}

/// Kubernetes' grouping of pods: (ready count, ignored, unready, missing).
fn group_pods(
    pods: &[PodInfo],
    metrics: &HashMap<String, (i64, &PodSample)>,
    r: Resource,
    now: DateTime<Utc>,
) -> (usize, HashSet<String>, HashSet<String>, HashSet<String>) {
    let (mut ready, mut ignored, mut unready, mut missing) =
        (0, HashSet::new(), HashSet::new(), HashSet::new());
    for p in pods {
        if p.deleting || p.phase == "Failed" || p.phase == "Succeeded" {
            ignored.insert(p.name.clone());
            continue;
        }
        if p.phase == "Pending" {
            unready.insert(p.name.clone());
            continue;
        }
        let Some((_, sample)) = metrics.get(&p.name) else {
            missing.insert(p.name.clone());
            continue;
        };
        if r == Resource::Cpu {
            let is_unready = match (p.ready, p.start_time) {
                (None, _) | (_, None) => true,
                (Some((status, transition)), Some(start)) => {
                    if start + CPU_INITIALIZATION_PERIOD > now {
                        // Young pod: trust only samples taken wholly after it became ready.
                        let window = chrono::Duration::from_std(sample.window).unwrap_or_default();
                        !status || sample.timestamp < transition + window
                    } else {
                        !status && start + DELAY_OF_INITIAL_READINESS > transition
                    }
                }
            };
            if is_unready {
                unready.insert(p.name.clone());
                continue;
            }
        }
        ready += 1;
    }
    (ready, ignored, unready, missing)
}

/// Compute the replicas one resource metric asks for (Kubernetes'
/// `GetResourceReplicas` / `GetRawResourceReplicas`).
pub fn resource_replicas(
    current: i32,
    pods: &[PodInfo],
    samples: &HashMap<String, PodSample>,
    r: Resource,
    container: Option<&str>,
    target: Target,
    now: DateTime<Utc>,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    // Per pod: the sum over (the chosen) containers.
    let mut metrics: HashMap<String, (i64, &PodSample)> = HashMap::new();
    for (name, s) in samples {
        let v: i64 = s
            .containers
            .iter()
            .filter(|(c, _)| container.is_none_or(|x| x == c.as_str()))
            .map(|(_, u)| r.milli(u))
            .sum();
        metrics.insert(name.clone(), (v, s));
    }
    if metrics.is_empty() {
        return Err(format!(
            "unable to get metrics for resource {}: no metrics returned from resource metrics API",
            r.name()
        ));
    }
    let (ready_count, ignored, unready, missing) = group_pods(pods, &metrics, r, now);
    let by_name: HashMap<&str, &PodInfo> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut values: HashMap<String, i64> = metrics
        .iter()
        .filter(|(n, _)| by_name.contains_key(n.as_str()))
        .filter(|(n, _)| !ignored.contains(*n) && !unready.contains(*n))
        .map(|(n, (v, _))| (n.clone(), *v))
        .collect();
    if values.is_empty() {
        return Err(
            "did not receive metrics for targeted pods (pods might be unready)".to_string(),
        );
    }
    let requests: HashMap<String, i64> = match target {
        Target::Utilization(_) => pods
            .iter()
            .map(|p| Ok((p.name.clone(), p.request(r, container)?)))
            .collect::<Result<_, String>>()?,
        Target::AverageValue(_) => HashMap::new(),
    };
    // (usage ratio, utilization, raw average) of a set of values.
    let ratio_of = |values: &HashMap<String, i64>| -> Result<(f64, Option<i64>, i64), String> {
        match target {
            Target::Utilization(t) => {
                let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
                for (name, v) in values {
                    if let Some(req) = requests.get(name) {
                        used += v;
                        requested += req;
                        n += 1;
                    }
                }
                if requested == 0 {
                    return Err(format!("no {} requests on the targeted pods", r.name()));
                }
                let util = used * 100 / requested;
                Ok((util as f64 / t as f64, Some(util), used / n.max(1)))
            }
            Target::AverageValue(t) => {
                let avg = values.values().sum::<i64>() / values.len() as i64;
                Ok((avg as f64 / t as f64, None, avg))
            }
        }
    };
    let (ratio, utilization, average) = ratio_of(&values)?;
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        average,
    };
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok(proposal(current));
        }
        return Ok(proposal((ratio * ready_count as f64).ceil() as i32));
    }
    for name in &missing {
        // Assume missing pods use what would damp the change: their full
        // request (or the target) when scaling down, nothing when scaling up.
        if ratio < 1.0 {
            let v = match target {
                Target::Utilization(t) => {
                    requests.get(name).copied().unwrap_or(0) * t.max(100) / 100
                }
                Target::AverageValue(t) => t,
            };
            values.insert(name.clone(), v);
        } else if ratio > 1.0 {
            values.insert(name.clone(), 0);
        }
    }
    if scale_up_with_unready {
        for name in &unready {
            values.insert(name.clone(), 0);
        }
    }
    let (new_ratio, _, _) = ratio_of(&values)?;
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * values.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

/// One scaling direction's rules (`spec.behavior.scaleUp|scaleDown`, defaulted).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Stabilization window.
    pub window: chrono::Duration,
    /// `Max`, `Min` or `Disabled`.
    pub select: String,
    /// (type `Pods`|`Percent`, value, period).
    pub policies: Vec<(String, i32, chrono::Duration)>,
}

impl Rules {
    fn from_json(v: &Value) -> Rules {
        Rules {
            window: chrono::Duration::seconds(
                v["stabilizationWindowSeconds"].as_i64().unwrap_or(0),
            ),
            select: v["selectPolicy"].as_str().unwrap_or("Max").to_string(),
            policies: v["policies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        p["type"].as_str().unwrap_or("").to_string(),
                        p["value"].as_i64().unwrap_or(0) as i32,
                        chrono::Duration::seconds(p["periodSeconds"].as_i64().unwrap_or(15)),
                    )
                })
                .collect(),
        }
    }

    /// The behavior of an HPA spec, with Kubernetes' defaults for what is unset.
    pub fn of(spec: &Value) -> (Rules, Rules) {
        let b = validation::hpa_behavior_defaults(spec.get("behavior").unwrap_or(&Value::Null));
        (
            Rules::from_json(&b["scaleUp"]),
            Rules::from_json(&b["scaleDown"]),
        )
    }

    fn longest_period(&self) -> chrono::Duration {
        self.policies.iter().map(|p| p.2).max().unwrap_or_default()
    }
}

/// Per-HPA memory: recommendations and scale events with their times.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// (time, unstabilized recommendation).
    pub recommendations: Vec<(DateTime<Utc>, i32)>,
    /// (time, replicas added).
    pub up_events: Vec<(DateTime<Utc>, i32)>,
    /// (time, replicas removed).
    pub down_events: Vec<(DateTime<Utc>, i32)>,
}

fn changes_since(events: &[(DateTime<Utc>, i32)], cutoff: DateTime<Utc>) -> i32 {
    events.iter().filter(|e| e.0 > cutoff).map(|e| e.1).sum()
}

/// The result of normalizing a recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// Replicas to scale to.
    pub replicas: i32,
    /// (reason, message) of AbleToScale after stabilization.
    pub stabilized: (&'static str, &'static str),
    /// (limited, reason, message) of ScalingLimited.
    pub limited: (bool, &'static str, &'static str),
}

/// Stabilize `desired` over the recommendation windows (recording it), then
/// clamp it by the rate policies and min/max (Kubernetes'
/// `normalizeDesiredReplicasWithBehaviors`).
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    h: &mut History,
    up: &Rules,
    down: &Rules,
    min: i32,
    max: i32,
    current: i32,
    desired: i32,
    now: DateTime<Utc>,
) -> Normalized {
    let (up_cut, down_cut) = (now - up.window, now - down.window);
    let (mut up_rec, mut down_rec) = (desired, desired);
    let mut old = None;
    for (i, (t, rec)) in h.recommendations.iter().enumerate() {
        if *t > up_cut {
            up_rec = up_rec.min(*rec);
        }
        if *t > down_cut {
            down_rec = down_rec.max(*rec);
        }
        if *t < up_cut && *t < down_cut {
            old = Some(i);
        }
    }
    let mut stabilized = current.max(up_rec).min(down_rec);
    match old {
        Some(i) => h.recommendations[i] = (now, desired),
        None => h.recommendations.push((now, desired)),
    }
    let able = if stabilized != desired {
        if stabilized < desired {
            ("ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation")
        } else {
            ("ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation")
        }
    } else {
        ("ReadyForNewScale", "recommended size matches current size")
    };
    let within = (
        false,
        "DesiredWithinRange",
        "the desired count is within the acceptable range",
    );
    let mut limited = within;
    if stabilized > current {
        let limit = scale_up_limit(current, h, up, now).max(current);
        let (allowed, reason, msg) = if max > limit {
            (
                limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        if stabilized > allowed {
            stabilized = allowed;
            limited = (true, reason, msg);
        }
    } else if stabilized < current {
        let limit = scale_down_limit(current, h, down, now).min(current);
        let (allowed, reason, msg) = if min < limit {
            (
                limit,
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        };
        if stabilized < allowed {
            stabilized = allowed;
            limited = (true, reason, msg);
        }
    }
    // Outside both branches (no change) the count can still violate min/max.
    if stabilized > max {
        stabilized = max;
        limited = (
            true,
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count",
        );
    } else if stabilized < min {
        stabilized = min;
        limited = (
            true,
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count",
        );
    }
    Normalized {
        replicas: stabilized,
        stabilized: able,
        limited,
    }
}

fn scale_up_limit(current: i32, h: &History, rules: &Rules, now: DateTime<Utc>) -> i32 {
    if rules.select == "Disabled" {
        return current;
    }
    let pick_min = rules.select == "Min";
    let mut result = if pick_min { i32::MAX } else { i32::MIN };
    for (ty, value, period) in &rules.policies {
        let start = current - changes_since(&h.up_events, now - *period)
            + changes_since(&h.down_events, now - *period);
        let proposed = if ty == "Pods" {
            start + value
        } else {
            (start as f64 * (1.0 + *value as f64 / 100.0)).ceil() as i32
        };
        result = if pick_min {
            result.min(proposed)
        } else {
            result.max(proposed)
        };
    }
    if rules.policies.is_empty() {
        current
    } else {
        result
    }
}

fn scale_down_limit(current: i32, h: &History, rules: &Rules, now: DateTime<Utc>) -> i32 {
    if rules.select == "Disabled" {
        return current;
    }
    let pick_min_change = rules.select == "Min";
    let mut result = if pick_min_change { i32::MIN } else { i32::MAX };
    for (ty, value, period) in &rules.policies {
        let start = current - changes_since(&h.up_events, now - *period)
            + changes_since(&h.down_events, now - *period);
        let proposed = if ty == "Pods" {
            start - value
        } else {
            (start as f64 * (1.0 - *value as f64 / 100.0)) as i32
        };
        result = if pick_min_change {
            result.max(proposed)
        } else {
            result.min(proposed)
        };
    }
    if rules.policies.is_empty() {
        current
    } else {
        result
    }
}

/// Remember a rescale for the rate policies, dropping events older than any period.
fn record_scale(h: &mut History, up: &Rules, down: &Rules, from: i32, to: i32, now: DateTime<Utc>) {
    let keep = up.longest_period().max(down.longest_period());
    h.up_events.retain(|e| e.0 > now - keep);
    h.down_events.retain(|e| e.0 > now - keep);
    if to > from {
        h.up_events.push((now, to - from));
    } else if to < from {
        h.down_events.push((now, from - to));
    }
}

/// The HPA controller.
pub struct HpaController {
    metrics: Arc<dyn MetricsSource>,
    sync_period: Duration,
    history: Mutex<HashMap<ObjectKey, History>>,
    /// When each HPA was last evaluated, and at which generation.
    last_sync: Mutex<HashMap<ObjectKey, (std::time::Instant, i64)>>,
}

impl HpaController {
    /// A controller reading `metrics`, evaluating every HPA each `sync_period`.
    pub fn new(metrics: Arc<dyn MetricsSource>, sync_period: Duration) -> HpaController {
        HpaController {
            metrics,
            sync_period,
            history: Mutex::new(HashMap::new()),
            last_sync: Mutex::new(HashMap::new()),
        }
    }
}

fn hpa_info() -> &'static resources::ResourceInfo {
    resources::lookup("autoscaling", "v2", "horizontalpodautoscalers").expect("HPAs are served")
}

/// Call the API as the controller would over HTTP (used for the scale subresource).
async fn call(
    state: &AppState,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let mut req = http::Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/merge-patch+json");
    }
    let req = req
        .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    let id = Identity {
        user: "system:kube-controller-manager".into(),
        groups: vec!["system:masters".into(), "system:authenticated".into()],
        ..Default::default()
    };
    let (_, _, resp) = handlers::handle(state, id, req).await;
    let ok = resp.status().is_success();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if ok {
        Ok(v)
    } else {
        Err(v["message"]
            .as_str()
            .unwrap_or("request failed")
            .to_string())
    }
}

fn condition(ty: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({"type": ty, "status": if status { "True" } else { "False" }, "reason": reason, "message": message})
}

/// A parsed metric spec.
struct MetricSpec {
    resource: Resource,
    container: Option<String>,
    target: Target,
    source: &'static str,
}

fn parse_metric(m: &Value) -> Result<MetricSpec, String> {
    let ty = m["type"].as_str().unwrap_or("");
    let (source, src) = match ty {
        "Resource" => ("resource", &m["resource"]),
        "ContainerResource" => ("containerResource", &m["containerResource"]),
        other => return Err(format!("unsupported metric source type \"{other}\" (only Resource and ContainerResource are served)")),
    };
    let name = src["name"].as_str().unwrap_or("");
    let resource =
        Resource::parse(name).ok_or_else(|| format!("unsupported resource \"{name}\""))?;
    let t = &src["target"];
    let target = match t["type"].as_str() {
        Some("Utilization") => {
            Target::Utilization(t["averageUtilization"].as_i64().unwrap_or(0).max(1))
        }
        Some("AverageValue") => {
            let q = t["averageValue"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| t["averageValue"].to_string());
            let milli = scheduler_core::quantity::parse(&q)
                .map_err(|e| format!("averageValue {q:?}: {e}"))?
                .milli_value();
            Target::AverageValue(milli.max(1))
        }
        other => return Err(format!("invalid target type {other:?}")),
    };
    Ok(MetricSpec {
        resource,
        container: src["container"].as_str().map(str::to_string),
        target,
        source,
    })
}

fn metric_status(spec: &MetricSpec, p: &Proposal) -> Value {
    let mut current = json!({"averageValue": spec.resource.quantity(p.average)});
    if let Some(u) = p.utilization {
        current["averageUtilization"] = json!(u);
    }
    let mut src = json!({"name": spec.resource.name(), "current": current});
    if let Some(c) = &spec.container {
        src["container"] = json!(c);
    }
    let ty = if spec.source == "resource" {
        "Resource"
    } else {
        "ContainerResource"
    };
    let mut out = json!({"type": ty});
    out[spec.source] = src;
    out
}

fn metric_name(spec: &MetricSpec) -> String {
    match spec.target {
        Target::Utilization(_) => format!(
            "{} resource utilization (percentage of request)",
            spec.resource.name()
        ),
        Target::AverageValue(_) => format!("{} resource", spec.resource.name()),
    }
}

impl HpaController {
    /// Evaluate one HPA against the world and converge it.
    async fn sync(
        &self,
        client: &LocalClient,
        key: &ObjectKey,
        hpa: Value,
    ) -> Result<(), ApiError> {
        let state = client.state().clone();
        let ns = key.namespace.clone().unwrap_or_else(|| "default".into());
        let now = Utc::now();
        let spec = hpa.get("spec").cloned().unwrap_or_default();
        let min = spec["minReplicas"].as_i64().unwrap_or(1) as i32;
        let max = spec["maxReplicas"].as_i64().unwrap_or(1) as i32;
        let old_status = hpa.get("status").cloned().unwrap_or(json!({}));
        let mut status = json!({
            "currentReplicas": old_status.get("currentReplicas").cloned().unwrap_or(json!(0)),
            "desiredReplicas": old_status.get("desiredReplicas").cloned().unwrap_or(json!(0)),
        });
        if let Some(g) = hpa.pointer("/metadata/generation") {
            status["observedGeneration"] = g.clone();
        }
        if let Some(t) = old_status.get("lastScaleTime") {
            status["lastScaleTime"] = t.clone();
        }
        let mut conditions = Vec::new();

        // The target's scale subresource.
        let tref = &spec["scaleTargetRef"];
        let (kind, tname) = (
            tref["kind"].as_str().unwrap_or(""),
            tref["name"].as_str().unwrap_or(""),
        );
        let group = tref["apiVersion"]
            .as_str()
            .and_then(|a| a.split_once('/'))
            .map_or("", |(g, _)| g);
        let target = resources::by_kind(group, kind).filter(|r| r.subresources.contains(&"scale"));
        let reference = format!("{kind}/{tname}");
        let scale = match target {
            Some(r) => {
                let path = format!(
                    "/apis/{}/namespaces/{ns}/{}/{tname}/scale",
                    r.api_version(),
                    r.plural
                );
                call(&state, Method::GET, &path, None)
                    .await
                    .map(|s| (r, path, s))
            }
            None => Err(format!(
                "the server has no scale subresource for {kind} in group {group:?}"
            )),
        };
        let (_, scale_path, scale) = match scale {
            Ok(x) => x,
            Err(e) => {
                let msg =
                    format!("the HPA controller was unable to get the target's current scale: {e}");
                events::record(client, COMPONENT, &hpa, "Warning", "FailedGetScale", &msg).await;
                conditions.push(condition("AbleToScale", false, "FailedGetScale", &msg));
                return self.write_status(client, &hpa, status, conditions).await;
            }
        };
        let spec_replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0) as i32;
        let current = scale
            .pointer("/status/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0) as i32;
        status["currentReplicas"] = json!(current);
        conditions.push(condition(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        ));

        let (up, down) = Rules::of(&spec);
        let mut desired = current;
        let mut reason = String::new();
        let mut current_metrics = Vec::new();
        let mut active = condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count",
        );
        let mut limited = None;
        let mut rescale = false;
        if spec_replicas == 0 && min != 0 {
            desired = 0;
            active = condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            );
        } else if current > max {
            desired = max;
            reason = "Current number of replicas above Spec.MaxReplicas".into();
            rescale = true;
        } else if current < min {
            desired = min;
            reason = "Current number of replicas below Spec.MinReplicas".into();
            rescale = true;
        } else {
            match self.compute(client, &ns, &scale, &spec, current, now) {
                Ok((proposed, name, statuses)) => {
                    current_metrics = statuses;
                    if proposed > current {
                        reason = format!("{name} above target");
                    } else if proposed < current {
                        reason = "All metrics below target".into();
                    }
                    let n = {
                        let mut hist = self.history.lock().unwrap_or_else(|e| e.into_inner());
                        let h = hist.entry(key.clone()).or_default();
                        normalize(h, &up, &down, min, max, current, proposed, now)
                    };
                    conditions[0] = condition("AbleToScale", true, n.stabilized.0, n.stabilized.1);
                    limited = Some(condition(
                        "ScalingLimited",
                        n.limited.0,
                        n.limited.1,
                        n.limited.2,
                    ));
                    desired = n.replicas;
                    rescale = desired != current;
                }
                Err((why, msg)) => {
                    events::record(client, COMPONENT, &hpa, "Warning", why, &msg).await;
                    active = condition("ScalingActive", false, why, &msg);
                }
            }
        }
        conditions.push(active);
        if let Some(l) = limited {
            conditions.push(l);
        }
        if rescale {
            let patch = json!({"spec": {"replicas": desired}});
            match call(&state, Method::PATCH, &scale_path, Some(&patch)).await {
                Ok(_) => {
                    let msg = format!("New size: {desired}; reason: {reason}");
                    events::record(client, COMPONENT, &hpa, "Normal", "SuccessfulRescale", &msg)
                        .await;
                    tracing::info!(hpa = %key.name, namespace = %ns, target = %reference, from = current, to = desired, %reason, "rescaled");
                    let mut hist = self.history.lock().unwrap_or_else(|e| e.into_inner());
                    record_scale(
                        hist.entry(key.clone()).or_default(),
                        &up,
                        &down,
                        current,
                        desired,
                        now,
                    );
                    status["lastScaleTime"] = json!(object::now_rfc3339());
                    conditions[0] = condition(
                        "AbleToScale",
                        true,
                        "SucceededRescale",
                        &format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                    );
                }
                Err(e) => {
                    let msg = format!("failed to rescale {reference}: {e}");
                    events::record(client, COMPONENT, &hpa, "Warning", "FailedRescale", &msg).await;
                    conditions[0] = condition("AbleToScale", false, "FailedUpdateScale", &msg);
                    desired = current;
                }
            }
        }
        status["desiredReplicas"] = json!(desired);
        if !current_metrics.is_empty() {
            status["currentMetrics"] = json!(current_metrics);
        }
        self.write_status(client, &hpa, status, conditions).await
    }

    /// The replicas the metrics ask for, the name of the metric that asked for
    /// the most, and the metric statuses; or (event reason, message).
    #[allow(clippy::type_complexity)]
    fn compute(
        &self,
        client: &LocalClient,
        ns: &str,
        scale: &Value,
        spec: &Value,
        current: i32,
        now: DateTime<Utc>,
    ) -> Result<(i32, String, Vec<Value>), (&'static str, String)> {
        let sel = scale
            .pointer("/status/selector")
            .and_then(Value::as_str)
            .unwrap_or("");
        if sel.is_empty() {
            return Err((
                "InvalidSelector",
                "the HPA target's scale is missing a selector".into(),
            ));
        }
        let sel = LabelSelector::parse(sel).map_err(|e| {
            (
                "InvalidSelector",
                format!(
                    "couldn't convert selector into a corresponding internal selector object: {e}"
                ),
            )
        })?;
        let pods_info = resources::lookup("", "v1", "pods").expect("pods are served");
        let (pods, _) = client.list(pods_info, Some(ns), Some(&sel)).map_err(|e| {
            (
                "FailedGetResourceMetric",
                format!("{:?}", e.status()["message"]),
            )
        })?;
        let pods: Vec<PodInfo> = pods.iter().map(PodInfo::from_pod).collect();
        let samples = self.metrics.pod_usage(ns);
        let specs = spec["metrics"].as_array().cloned().unwrap_or_default();
        let (mut best, mut best_name, mut statuses, mut invalid, mut last_err) =
            (None::<i32>, String::new(), Vec::new(), 0, None);
        for m in &specs {
            let outcome = parse_metric(m)
                .map_err(|e| ("InvalidMetricSourceType", e))
                .and_then(|ms| {
                    resource_replicas(
                        current,
                        &pods,
                        &samples,
                        ms.resource,
                        ms.container.as_deref(),
                        ms.target,
                        now,
                    )
                    .map(|p| (ms, p))
                    .map_err(|e| ("FailedGetResourceMetric", e))
                });
            match outcome {
                Ok((ms, p)) => {
                    statuses.push(metric_status(&ms, &p));
                    if best.is_none_or(|b| p.replicas > b) {
                        best = Some(p.replicas);
                        best_name = metric_name(&ms);
                    }
                }
                Err(e) => {
                    invalid += 1;
                    last_err = Some(e);
                }
            }
        }
        match (best, last_err) {
            // Never scale down on partial information.
            (Some(b), Some(_)) if b < current => Ok((current, best_name, statuses)),
            (Some(b), _) => Ok((b, best_name, statuses)),
            (None, Some((why, e))) => Err((
                why,
                format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {e}",
                    specs.len()
                ),
            )),
            (None, None) => Err((
                "FailedGetResourceMetric",
                "no metrics to compute a replica count from".into(),
            )),
        }
    }

    async fn write_status(
        &self,
        client: &LocalClient,
        hpa: &Value,
        mut status: Value,
        conditions: Vec<Value>,
    ) -> Result<(), ApiError> {
        let old = hpa.get("status").cloned().unwrap_or(json!({}));
        let old_conds = old["conditions"].as_array().cloned().unwrap_or_default();
        let now = object::now_rfc3339();
        let conditions: Vec<Value> = conditions
            .into_iter()
            .map(|mut c| {
                let prev = old_conds.iter().find(|o| o["type"] == c["type"]);
                c["lastTransitionTime"] = match prev {
                    Some(p) if p["status"] == c["status"] => p["lastTransitionTime"].clone(),
                    _ => json!(now),
                };
                c
            })
            .collect();
        status["conditions"] = json!(conditions);
        if status == old {
            return Ok(());
        }
        // A merge patch cannot remove list items, so replace the whole status.
        let mut new = hpa.clone();
        new["status"] = status;
        client.update_status(hpa_info(), new).await.map(|_| ())
    }
}

impl Reconciler for HpaController {
    fn name(&self) -> &'static str {
        "horizontalpodautoscaler"
    }

    fn watches(&self) -> Vec<Watch> {
        vec![Watch::primary(hpa_info())]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let Some(hpa) = client.get(hpa_info(), key.namespace.as_deref(), &key.name)? else {
            self.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
            self.last_sync
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
            return Ok(Action::AwaitChange);
        };
        if hpa.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(Action::AwaitChange);
        }
        // Evaluate at most once per sync period (like Kubernetes' fixed-interval
        // queue): our own status writes and the target's scale changes come
        // back through the watch, and a second evaluation before the target's
        // status catches up would rescale from a stale count. A spec change
        // (new generation) is evaluated at once; the requeue of the last
        // evaluation is still pending, so nothing is lost by waiting.
        let generation = hpa
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let recent = self
            .last_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_some_and(|(at, g)| *g == generation && at.elapsed() < self.sync_period);
        if recent {
            return Ok(Action::AwaitChange);
        }
        let started = std::time::Instant::now();
        self.sync(client, key, hpa).await?;
        self.last_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), (started, generation));
        Ok(Action::Requeue(self.sync_period))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::metrics_api::Usage;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    /// A running, ready pod started long ago with `cpu` millicores requested.
    fn pod(name: &str, cpu_request: Option<i64>) -> PodInfo {
        let long_ago = now() - chrono::Duration::minutes(30);
        PodInfo {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            ready: Some((true, long_ago)),
            start_time: Some(long_ago),
            requests: vec![("c".into(), cpu_request, Some(64 * 1024 * 1024 * 1000))],
        }
    }

    fn sample(name: &str, cpu_milli: u64, mem_bytes: u64) -> (String, PodSample) {
        (
            name.to_string(),
            PodSample {
                name: name.into(),
                timestamp: now(),
                window: Duration::from_secs(15),
                containers: vec![(
                    "c".into(),
                    Usage {
                        cpu_nano_cores: cpu_milli * 1_000_000,
                        memory_bytes: mem_bytes,
                    },
                )],
            },
        )
    }

    fn cpu(
        current: i32,
        pods: &[PodInfo],
        samples: &[(String, PodSample)],
        target: Target,
    ) -> Result<Proposal, String> {
        let m: HashMap<String, PodSample> = samples.iter().cloned().collect();
        resource_replicas(current, pods, &m, Resource::Cpu, None, target, now())
    }

    #[test]
    fn utilization_ratio_scales_up_and_down() {
        let pods = [pod("a", Some(100)), pod("b", Some(100))];
        // 90% average against a 50% target: ceil(2 * 1.8) = 4.
        let p = cpu(
            2,
            &pods,
            &[sample("a", 90, 0), sample("b", 90, 0)],
            Target::Utilization(50),
        )
        .unwrap();
        assert_eq!(p.replicas, 4);
        assert_eq!(p.utilization, Some(90));
        assert_eq!(p.average, 90);
        // 10% against 50%: ceil(2 * 0.2) = 1.
        let p = cpu(
            2,
            &pods,
            &[sample("a", 10, 0), sample("b", 10, 0)],
            Target::Utilization(50),
        )
        .unwrap();
        assert_eq!(p.replicas, 1);
    }

    #[test]
    fn within_tolerance_keeps_the_count() {
        let pods = [pod("a", Some(100)), pod("b", Some(100))];
        // 54% against 50% is a ratio of 1.08: inside the 10% band.
        let p = cpu(
            2,
            &pods,
            &[sample("a", 54, 0), sample("b", 54, 0)],
            Target::Utilization(50),
        )
        .unwrap();
        assert_eq!(p.replicas, 2);
        let p = cpu(
            2,
            &pods,
            &[sample("a", 60, 0), sample("b", 60, 0)],
            Target::Utilization(50),
        )
        .unwrap();
        assert_eq!(p.replicas, 3);
    }

    #[test]
    fn missing_requests_and_metrics_are_errors() {
        let pods = [pod("a", None)];
        let e = cpu(1, &pods, &[sample("a", 50, 0)], Target::Utilization(50)).unwrap_err();
        assert!(e.contains("missing request for cpu"), "{e}");
        let e = cpu(1, &[pod("a", Some(100))], &[], Target::Utilization(50)).unwrap_err();
        assert!(e.contains("no metrics"), "{e}");
        assert!(cpu(1, &[], &[], Target::Utilization(50)).is_err());
        // AverageValue needs no requests.
        let p = cpu(1, &pods, &[sample("a", 300, 0)], Target::AverageValue(100)).unwrap();
        assert_eq!(p.replicas, 3);
        assert_eq!(p.utilization, None);
    }

    #[test]
    fn missing_pods_damp_the_change() {
        let pods = [
            pod("a", Some(100)),
            pod("b", Some(100)),
            pod("c", Some(100)),
        ];
        // Scale-up: the pod without a sample counts as 0, so 2 pods at 100%
        // plus one at 0 average 66% against 50%: ceil(3 * 1.33) = 4.
        let p = cpu(
            3,
            &pods,
            &[sample("a", 100, 0), sample("b", 100, 0)],
            Target::Utilization(50),
        )
        .unwrap();
        assert_eq!(p.replicas, 4);
        // Scale-down: the missing pod is assumed at 100% of its request, so
        // (10 + 10 + 100) / 3 = 40% against 50% -> ceil(3 * 0.8) = 3.
        let p = cpu(
            3,
            &pods,
            &[sample("a", 10, 0), sample("b", 10, 0)],
            Target::Utilization(50),
        )
        .unwrap();
        assert_eq!(p.replicas, 3);
    }

    #[test]
    fn unready_and_ignored_pods() {
        let mut young = pod("new", Some(100));
        let just_now = now();
        young.start_time = Some(just_now);
        young.ready = Some((false, just_now));
        let mut gone = pod("gone", Some(100));
        gone.deleting = true;
        let mut failed = pod("failed", Some(100));
        failed.phase = "Failed".into();
        let pods = [pod("a", Some(100)), young, gone, failed];
        let samples = [
            sample("a", 100, 0),
            sample("new", 500, 0),
            sample("gone", 900, 0),
            sample("failed", 900, 0),
        ];
        // Only "a" counts (100% vs 50%, ratio 2); the unready pod is counted
        // at 0 for a scale-up: (100 + 0) / 2 = 50% -> within tolerance.
        let p = cpu(2, &pods, &samples, Target::Utilization(50)).unwrap();
        assert_eq!(p.replicas, 2);
        assert_eq!(p.utilization, Some(100));
        // Memory ignores readiness: both running pods count (1 byte each
        // against half a byte: 2 pods * ratio 2).
        let m: HashMap<String, PodSample> = ["a", "new", "gone"]
            .into_iter()
            .map(|n| sample(n, 0, 1))
            .collect();
        let p = resource_replicas(
            2,
            &pods,
            &m,
            Resource::Memory,
            None,
            Target::AverageValue(500),
            now(),
        )
        .unwrap();
        assert_eq!(p.replicas, 4);
    }

    #[test]
    fn memory_average_value_in_bytes() {
        let pods = [pod("a", Some(100))];
        let m: HashMap<String, PodSample> =
            [sample("a", 0, 200 * 1024 * 1024)].into_iter().collect();
        let target = Target::AverageValue(
            scheduler_core::quantity::parse("100Mi")
                .unwrap()
                .milli_value(),
        );
        let p = resource_replicas(1, &pods, &m, Resource::Memory, None, target, now()).unwrap();
        assert_eq!(p.replicas, 2);
        assert_eq!(
            Resource::Memory.quantity(p.average),
            (200 * 1024 * 1024).to_string()
        );
        // Utilization of memory: 200Mi used of 64Mi requested.
        let p = resource_replicas(
            1,
            &pods,
            &m,
            Resource::Memory,
            None,
            Target::Utilization(100),
            now(),
        )
        .unwrap();
        assert_eq!(p.utilization, Some(312));
        assert_eq!(p.replicas, 4);
    }

    fn rules(spec: Value) -> (Rules, Rules) {
        Rules::of(&json!({"behavior": spec}))
    }

    #[test]
    fn default_behavior_matches_kubernetes() {
        let (up, down) = Rules::of(&json!({}));
        assert_eq!(up.window, chrono::Duration::zero());
        assert_eq!(down.window, chrono::Duration::seconds(300));
        assert_eq!(up.select, "Max");
        assert_eq!(up.policies.len(), 2);
        assert_eq!(
            down.policies,
            vec![("Percent".to_string(), 100, chrono::Duration::seconds(15))]
        );
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let (up, down) = rules(json!({"scaleDown": {"stabilizationWindowSeconds": 60}}));
        let mut h = History::default();
        let t0 = now();
        // A recommendation of 5 at t0, then 1 at t0+30s: still inside the window.
        assert_eq!(normalize(&mut h, &up, &down, 1, 10, 5, 5, t0).replicas, 5);
        let n = normalize(
            &mut h,
            &up,
            &down,
            1,
            10,
            5,
            1,
            t0 + chrono::Duration::seconds(30),
        );
        assert_eq!(n.replicas, 5);
        assert_eq!(n.stabilized.0, "ScaleDownStabilized");
        // Past the window the highest recent recommendation is 1.
        let n = normalize(
            &mut h,
            &up,
            &down,
            1,
            10,
            5,
            1,
            t0 + chrono::Duration::seconds(95),
        );
        assert_eq!(n.replicas, 1);
        assert!(!n.limited.0);
    }

    #[test]
    fn rate_policies_limit_steps() {
        let (up, down) = Rules::of(&json!({}));
        let mut h = History::default();
        let t = now();
        // From 1, default scale-up allows max(1 + 4 pods, 1 * 200%) = 5.
        let n = normalize(&mut h, &up, &down, 1, 100, 1, 50, t);
        assert_eq!(n.replicas, 5);
        assert_eq!(
            n.limited,
            (
                true,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate"
            )
        );
        record_scale(&mut h, &up, &down, 1, 5, t);
        // Within the same 15 s period the period started at 1 replica: still 5.
        let n = normalize(
            &mut h,
            &up,
            &down,
            1,
            100,
            5,
            50,
            t + chrono::Duration::seconds(5),
        );
        assert_eq!(n.replicas, 5);
        // A Pods policy with selectPolicy Min picks the smaller step.
        let (up, down) = rules(json!({"scaleUp": {"selectPolicy": "Min", "policies": [
            {"type": "Pods", "value": 1, "periodSeconds": 60}, {"type": "Percent", "value": 100, "periodSeconds": 60}]}}));
        let n = normalize(&mut History::default(), &up, &down, 1, 100, 2, 10, t);
        assert_eq!(n.replicas, 3);
        // Disabled never scales that way.
        let (up, down) = rules(json!({"scaleUp": {"selectPolicy": "Disabled"}}));
        assert_eq!(
            normalize(&mut History::default(), &up, &down, 1, 100, 2, 10, t).replicas,
            2
        );
        // Scale-down by at most 1 pod per minute.
        let (up, down) = rules(
            json!({"scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}),
        );
        let mut h = History::default();
        let n = normalize(&mut h, &up, &down, 1, 100, 4, 1, t);
        assert_eq!(n.replicas, 3);
        assert_eq!(n.limited.1, "ScaleDownLimit");
        record_scale(&mut h, &up, &down, 4, 3, t);
        assert_eq!(
            normalize(
                &mut h,
                &up,
                &down,
                1,
                100,
                3,
                1,
                t + chrono::Duration::seconds(10)
            )
            .replicas,
            3
        );
        assert_eq!(
            normalize(
                &mut h,
                &up,
                &down,
                1,
                100,
                3,
                1,
                t + chrono::Duration::seconds(61)
            )
            .replicas,
            2
        );
    }

    #[test]
    fn min_and_max_clamp() {
        let (up, down) = rules(json!({"scaleDown": {"stabilizationWindowSeconds": 0}}));
        let t = now();
        let n = normalize(&mut History::default(), &up, &down, 2, 3, 3, 10, t);
        assert_eq!(n.replicas, 3);
        assert_eq!(n.limited.1, "TooManyReplicas");
        let n = normalize(&mut History::default(), &up, &down, 2, 3, 3, 1, t);
        assert_eq!(n.replicas, 2);
        assert_eq!(n.limited.1, "TooFewReplicas");
    }

    /// A fake metrics source.
    struct Fake(Mutex<HashMap<String, PodSample>>);

    impl MetricsSource for Fake {
        fn pod_usage(&self, _namespace: &str) -> HashMap<String, PodSample> {
            self.0.lock().unwrap().clone()
        }
    }

    async fn client() -> (LocalClient, tempfile::TempDir) {
        use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(
            &dir.path().join("db.redb"),
            EmbeddedOptions::default(),
            None,
        )
        .unwrap();
        let state = Arc::new(AppState {
            store: Arc::new(store),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            config: Default::default(),
            hooks: Default::default(),
        });
        let c = LocalClient::new(state);
        let ns = resources::lookup("", "v1", "namespaces").unwrap();
        c.create(
            ns,
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        )
        .await
        .unwrap();
        (c, dir)
    }

    #[tokio::test]
    async fn reconcile_scales_the_target_and_reports() {
        let (c, _dir) = client().await;
        let deploy = resources::lookup("apps", "v1", "deployments").unwrap();
        let pods = resources::lookup("", "v1", "pods").unwrap();
        let labels = json!({"app": "burn"});
        let template = json!({"metadata": {"labels": labels}, "spec": {"containers": [
            {"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}]}});
        c.create(
            deploy,
            Some("default"),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "burn", "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}}),
        )
        .await
        .unwrap();
        c.merge_patch_status(
            deploy,
            Some("default"),
            "burn",
            &json!({"status": {"replicas": 1}}),
        )
        .await
        .unwrap();
        let long_ago = (now() - chrono::Duration::minutes(10)).to_rfc3339();
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "burn-1", "namespace": "default", "labels": labels}});
        p["spec"] = template["spec"].clone();
        c.create(pods, Some("default"), p).await.unwrap();
        c.merge_patch_status(
            pods,
            Some("default"),
            "burn-1",
            &json!({"status": {"phase": "Running", "startTime": long_ago,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": long_ago}]}}),
        )
        .await
        .unwrap();
        let hpa = hpa_info();
        c.create(hpa, Some("default"), json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "burn", "namespace": "default"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
                     "maxReplicas": 3,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]}}))
            .await
            .unwrap();
        let fake = Arc::new(Fake(Mutex::new(
            [sample("burn-1", 100, 0)].into_iter().collect(),
        )));
        let ctl = HpaController::new(fake.clone(), Duration::from_secs(3600));
        let key = ObjectKey {
            namespace: Some("default".into()),
            name: "burn".into(),
        };
        assert_eq!(
            ctl.reconcile(&c, &key).await.unwrap(),
            Action::Requeue(Duration::from_secs(3600))
        );
        // The watch brings the HPA back at once: not evaluated again within the period.
        assert_eq!(ctl.reconcile(&c, &key).await.unwrap(), Action::AwaitChange);

        // 100% of the request against 50%: two replicas, through the scale subresource.
        let d = c.get(deploy, Some("default"), "burn").unwrap().unwrap();
        assert_eq!(d["spec"]["replicas"], 2);
        let h = c.get(hpa, Some("default"), "burn").unwrap().unwrap();
        assert_eq!(h["spec"]["minReplicas"], 1, "defaulted");
        assert_eq!(h["status"]["desiredReplicas"], 2);
        assert_eq!(h["status"]["currentReplicas"], 1);
        assert_eq!(
            h["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            100
        );
        assert!(h["status"]["lastScaleTime"].is_string());
        let cond = |h: &Value, t: &str| {
            h["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .cloned()
                .unwrap()
        };
        assert_eq!(cond(&h, "AbleToScale")["reason"], "SucceededRescale");
        assert_eq!(cond(&h, "ScalingActive")["status"], "True");
        assert_eq!(cond(&h, "ScalingLimited")["status"], "False");
        let evs = resources::lookup("", "v1", "events").unwrap();
        let (events, _) = c.list(evs, Some("default"), None).unwrap();
        let ev = events
            .iter()
            .find(|e| e["reason"] == "SuccessfulRescale")
            .expect("an event");
        assert_eq!(
            ev["message"],
            "New size: 2; reason: cpu resource utilization (percentage of request) above target"
        );
        assert_eq!(ev["involvedObject"]["kind"], "HorizontalPodAutoscaler");
        let rescales = events
            .iter()
            .filter(|e| e["reason"] == "SuccessfulRescale")
            .count();
        assert_eq!(rescales, 1, "one evaluation, one rescale");

        // From here on every reconcile evaluates.
        let ctl = HpaController::new(fake.clone(), Duration::ZERO);

        // No metrics at all: ScalingActive turns False with the reason.
        fake.0.lock().unwrap().clear();
        ctl.reconcile(&c, &key).await.unwrap();
        let h = c.get(hpa, Some("default"), "burn").unwrap().unwrap();
        assert_eq!(cond(&h, "ScalingActive")["status"], "False");
        assert_eq!(
            cond(&h, "ScalingActive")["reason"],
            "FailedGetResourceMetric"
        );

        // A target without a scale subresource cannot be scaled.
        c.merge_patch(hpa, Some("default"), "burn", &json!({"spec": {"scaleTargetRef": {"apiVersion": "v1", "kind": "ConfigMap", "name": "x"}}}))
            .await
            .unwrap();
        ctl.reconcile(&c, &key).await.unwrap();
        let h = c.get(hpa, Some("default"), "burn").unwrap().unwrap();
        assert_eq!(cond(&h, "AbleToScale")["reason"], "FailedGetScale");
    }

    #[tokio::test]
    async fn invalid_hpas_are_refused() {
        let (c, _dir) = client().await;
        let bad = |spec: Value| {
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h", "namespace": "default"}, "spec": spec})
        };
        let r = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"});
        for spec in [
            json!({"scaleTargetRef": r, "maxReplicas": 0}),
            json!({"scaleTargetRef": r, "minReplicas": 5, "maxReplicas": 2}),
            json!({"scaleTargetRef": {"kind": "Deployment", "name": ""}, "maxReplicas": 2}),
            json!({"scaleTargetRef": r, "maxReplicas": 2, "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization"}}}]}),
            json!({"scaleTargetRef": r, "maxReplicas": 2, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 4000}}}),
            json!({"scaleTargetRef": r, "maxReplicas": 2, "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}}}),
        ] {
            let e = c
                .create(hpa_info(), Some("default"), bad(spec.clone()))
                .await
                .unwrap_err();
            assert_eq!(e.status()["code"], 422, "{spec}");
        }
        // Defaults: minReplicas, an 80% CPU metric, a completed behavior.
        let h = c
            .create(
                hpa_info(),
                Some("default"),
                bad(json!({"scaleTargetRef": r, "maxReplicas": 2,
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}})),
            )
            .await
            .unwrap();
        assert_eq!(h["spec"]["minReplicas"], 1);
        assert_eq!(
            h["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(
            h["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            5
        );
        assert_eq!(h["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Max");
        assert_eq!(
            h["spec"]["behavior"]["scaleUp"]["policies"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
