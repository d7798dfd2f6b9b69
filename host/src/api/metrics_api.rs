//! Resource metrics: node agents push their usage reports
//! (`PUT /shoal/v1/nodes/<node>/metrics`), the host keeps the latest report
//! of each node in memory and serves it as `metrics.k8s.io/v1beta1`
//! (NodeMetrics, PodMetrics) the way metrics-server's APIService does, so
//! `kubectl top` and the HorizontalPodAutoscaler read it.

use super::error::{ApiError, ApiResult};
use super::object;
use super::resources;
use super::selector::{FieldSelector, LabelSelector};
use super::AppState;
use crate::auth::Identity;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{header, Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The served group and version.
pub const GROUP: &str = "metrics.k8s.io";
/// The served version.
pub const VERSION: &str = "v1beta1";

/// Usage as pushed by an agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Usage {
    /// CPU rate in billionths of a core.
    pub cpu_nano_cores: u64,
    /// Memory working set in bytes.
    pub memory_bytes: u64,
}

/// One container's usage in a report.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerUsage {
    /// Container name.
    pub name: String,
    /// Usage.
    pub usage: Usage,
}

/// One pod in a report.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodUsage {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid of the pod the figures belong to.
    pub uid: String,
    /// Containers.
    pub containers: Vec<ContainerUsage>,
}

/// A node's report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeReport {
    /// When the samples were taken (RFC 3339).
    pub timestamp: String,
    /// The CPU rate window in seconds.
    pub window_seconds: f64,
    /// Whole-node usage.
    pub usage: Usage,
    /// Pods.
    pub pods: Vec<PodUsage>,
}

/// Longest window an agent may report (a longer one is not a rate anyone can use).
const MAX_WINDOW_SECONDS: f64 = 3600.0;

impl NodeReport {
    /// Parse and check a report body; the error says what is wrong.
    pub fn parse(body: &[u8]) -> Result<NodeReport, String> {
        let r: NodeReport = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        DateTime::parse_from_rfc3339(&r.timestamp)
            .map_err(|e| format!("timestamp {:?}: {e}", r.timestamp))?;
        if !(r.window_seconds > 0.0 && r.window_seconds <= MAX_WINDOW_SECONDS) {
            return Err(format!(
                "windowSeconds must be above 0 and at most {MAX_WINDOW_SECONDS}"
            ));
        }
        for (i, p) in r.pods.iter().enumerate() {
            if p.namespace.is_empty() || p.name.is_empty() || p.uid.is_empty() {
                return Err(format!("pods[{i}]: namespace, name and uid are required"));
            }
            if p.containers.iter().any(|c| c.name.is_empty()) {
                return Err(format!("pods[{i}]: every container needs a name"));
            }
        }
        Ok(r)
    }

    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.window_seconds)
    }
}

struct Stored {
    received: Instant,
    report: NodeReport,
}

/// The latest report of every node, in memory (a restarted host has none
/// until the agents' next push, as with metrics-server).
#[derive(Clone, Default)]
pub struct NodeMetricsStore {
    inner: Arc<RwLock<HashMap<String, Stored>>>,
}

impl std::fmt::Debug for NodeMetricsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetricsStore").finish_non_exhaustive()
    }
}

/// A report older than this many windows (and at least a minute) is stale:
/// its node stopped reporting.
const STALE_WINDOWS: u32 = 5;

impl NodeMetricsStore {
    /// Keep `report` as the latest of `node`.
    pub fn put(&self, node: &str, report: NodeReport) {
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        m.insert(
            node.to_string(),
            Stored {
                received: Instant::now(),
                report,
            },
        );
    }

    /// The fresh reports, by node name.
    pub fn fresh(&self) -> Vec<(String, NodeReport)> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, NodeReport)> = m
            .iter()
            .filter(|(_, s)| {
                let limit = (s.report.window() * STALE_WINDOWS).max(Duration::from_secs(60));
                s.received.elapsed() <= limit
            })
            .map(|(n, s)| (n.clone(), s.report.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// One pod's usage as the HPA and `kubectl top` see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    /// Pod name.
    pub name: String,
    /// Sample time.
    pub timestamp: DateTime<Utc>,
    /// Rate window.
    pub window: Duration,
    /// Per container: (name, usage).
    pub containers: Vec<(String, Usage)>,
}

/// Fresh samples of the pods of `namespace` whose stored object still has the reported uid.
pub fn pod_samples(state: &AppState, namespace: &str) -> Vec<(Value, PodSample)> {
    let store = &state.hooks.node_metrics;
    let pods = resources::lookup("", "v1", "pods").expect("pods are served");
    let mut out = Vec::new();
    for (_, report) in store.fresh() {
        let ts = DateTime::parse_from_rfc3339(&report.timestamp)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        for p in report.pods.iter().filter(|p| p.namespace == namespace) {
            let Ok(Some(kv)) = state.store.get(&pods.key(Some(&p.namespace), &p.name)) else {
                continue;
            };
            let Ok(obj) = object::from_store(&kv) else {
                continue;
            };
            if object::meta_str(&obj, "uid") != Some(p.uid.as_str()) {
                continue;
            }
            out.push((
                obj,
                PodSample {
                    name: p.name.clone(),
                    timestamp: ts,
                    window: report.window(),
                    containers: p
                        .containers
                        .iter()
                        .map(|c| (c.name.clone(), c.usage))
                        .collect(),
                },
            ));
        }
    }
    out
}

/// `PUT /shoal/v1/nodes/{node}/metrics`: accepted from the node itself
/// (`system:node:<node>`) or `system:masters`.
pub async fn put_node_metrics(
    State(state): State<Arc<AppState>>,
    Path(node): Path<String>,
    req: Request<Body>,
) -> Response {
    match put(&state, &node, req).await {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200})
                .to_string(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn put(state: &AppState, node: &str, req: Request<Body>) -> ApiResult<()> {
    let Some(id) = req.extensions().get::<Identity>().cloned() else {
        return Err(ApiError::Unauthorized);
    };
    let allowed =
        id.user == format!("system:node:{node}") || id.groups.iter().any(|g| g == "system:masters");
    if !allowed {
        return Err(ApiError::Forbidden(format!(
            "user \"{}\" cannot report metrics for node \"{node}\"",
            id.user
        )));
    }
    let store = &state.hooks.node_metrics;
    let body = axum::body::to_bytes(req.into_body(), state.config.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::TooLarge(format!(
                "the metrics report is larger than {} bytes",
                state.config.max_body_bytes
            ))
        })?;
    let report = NodeReport::parse(&body)
        .map_err(|e| ApiError::BadRequest(format!("metrics report: {e}")))?;
    store.put(node, report);
    Ok(())
}

fn ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The group's entry in `/apis`.
pub fn group_entry() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [gv], "preferredVersion": gv})
}

fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ],
    })
}

/// A Kubernetes CPU quantity for a rate in nanocores.
pub fn cpu_quantity(nano: u64) -> String {
    format!("{nano}n")
}

/// A Kubernetes memory quantity for bytes (`Ki` when exact, as metrics-server prints).
pub fn memory_quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// A Go-style duration string (`15s`, `1.004s`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0'))
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({"cpu": cpu_quantity(u.cpu_nano_cores), "memory": memory_quantity(u.memory_bytes)})
}

struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
}

fn selectors(query: &HashMap<String, String>, namespaced: bool) -> ApiResult<Selectors> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let supported: &[&str] = if namespaced {
        &["metadata.name", "metadata.namespace"]
    } else {
        &["metadata.name"]
    };
    fields
        .check_supported(supported)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Selectors { labels, fields })
}

impl Selectors {
    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.labels.matches(labels) && self.fields.matches(obj)
    }
}

fn meta(obj: &Value, namespaced: bool) -> Value {
    let mut m = json!({
        "name": obj.pointer("/metadata/name"),
        "creationTimestamp": obj.pointer("/metadata/creationTimestamp"),
    });
    if namespaced {
        m["namespace"] = obj
            .pointer("/metadata/namespace")
            .cloned()
            .unwrap_or_default();
    }
    if let Some(l) = obj.pointer("/metadata/labels") {
        m["labels"] = l.clone();
    }
    m
}

fn node_items(state: &AppState, sel: &Selectors, only: Option<&str>) -> Vec<Value> {
    let store = &state.hooks.node_metrics;
    let nodes = resources::lookup("", "v1", "nodes").expect("nodes are served");
    let mut out = Vec::new();
    for (name, r) in store.fresh() {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let Ok(Some(kv)) = state.store.get(&nodes.key(None, &name)) else {
            continue;
        };
        let Ok(obj) = object::from_store(&kv) else {
            continue;
        };
        if !sel.matches(&obj) {
            continue;
        }
        out.push(json!({
            "kind": "NodeMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
            "metadata": meta(&obj, false),
            "timestamp": r.timestamp, "window": go_duration(r.window()),
            "usage": usage_json(&r.usage),
        }));
    }
    out
}

fn pod_items(
    state: &AppState,
    namespace: Option<&str>,
    sel: &Selectors,
    only: Option<&str>,
) -> Vec<Value> {
    let store = &state.hooks.node_metrics;
    let pods = resources::lookup("", "v1", "pods").expect("pods are served");
    let mut out = Vec::new();
    for (_, r) in store.fresh() {
        for p in &r.pods {
            if namespace.is_some_and(|ns| ns != p.namespace) || only.is_some_and(|n| n != p.name) {
                continue;
            }
            let Ok(Some(kv)) = state.store.get(&pods.key(Some(&p.namespace), &p.name)) else {
                continue;
            };
            let Ok(obj) = object::from_store(&kv) else {
                continue;
            };
            if object::meta_str(&obj, "uid") != Some(p.uid.as_str()) || !sel.matches(&obj) {
                continue;
            }
            let containers: Vec<Value> = p
                .containers
                .iter()
                .map(|c| json!({"name": c.name, "usage": usage_json(&c.usage)}))
                .collect();
            out.push(json!({
                "kind": "PodMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": meta(&obj, true),
                "timestamp": r.timestamp, "window": go_duration(r.window()),
                "containers": containers,
            }));
        }
    }
    out.sort_by(|a, b| {
        let k = |v: &Value| {
            (
                v.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                v.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )
        };
        k(a).cmp(&k(b))
    });
    out
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items})
}

fn not_found(resource: &str, name: &str) -> ApiError {
    ApiError::NotFound {
        group: GROUP.into(),
        resource: resource.into(),
        name: name.into(),
    }
}

/// Serve a request under `/apis/metrics.k8s.io`, or None for any other path.
pub fn route(state: &AppState, req: &Request<Body>) -> Option<Response> {
    let path = req.uri().path();
    if !path
        .trim_start_matches('/')
        .starts_with("apis/metrics.k8s.io")
    {
        return None;
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    handle(state, req.method(), &segs, &query)
}

/// Serve a `metrics.k8s.io` request, or None when `segs` is outside the group.
pub fn handle(
    state: &AppState,
    method: &Method,
    segs: &[&str],
    query: &HashMap<String, String>,
) -> Option<Response> {
    let rest = match segs {
        ["apis", GROUP, rest @ ..] => rest,
        _ => return None,
    };
    if method != Method::GET {
        return Some(
            ApiError::MethodNotAllowed(format!(
                "the server does not allow this method on the requested resource ({method})"
            ))
            .into_response(),
        );
    }
    let r = serve(state, rest, query);
    Some(r.unwrap_or_else(IntoResponse::into_response))
}

fn serve(state: &AppState, rest: &[&str], query: &HashMap<String, String>) -> ApiResult<Response> {
    let nf = || ApiError::PathNotFound("the server could not find the requested resource".into());
    let resp = match rest {
        [] => {
            let mut g = group_entry();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            ok(g)
        }
        [VERSION] => ok(resource_list()),
        [VERSION, "nodes"] => ok(list(
            "NodeMetricsList",
            node_items(state, &selectors(query, false)?, None),
        )),
        [VERSION, "nodes", name] => {
            let items = node_items(state, &selectors(query, false)?, Some(name));
            ok(items
                .into_iter()
                .next()
                .ok_or_else(|| not_found("nodes", name))?)
        }
        [VERSION, "pods"] => ok(list(
            "PodMetricsList",
            pod_items(state, None, &selectors(query, true)?, None),
        )),
        [VERSION, "namespaces", ns, "pods"] => ok(list(
            "PodMetricsList",
            pod_items(state, Some(ns), &selectors(query, true)?, None),
        )),
        [VERSION, "namespaces", ns, "pods", name] => {
            let items = pod_items(state, Some(ns), &selectors(query, true)?, Some(name));
            ok(items
                .into_iter()
                .next()
                .ok_or_else(|| not_found("pods", name))?)
        }
        _ => return Err(nf()),
    };
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Value {
        json!({
            "timestamp": "2026-01-01T00:00:00Z", "windowSeconds": 15.0,
            "usage": {"cpuNanoCores": 1, "memoryBytes": 2},
            "pods": [{"namespace": "default", "name": "p", "uid": "u", "containers": [
                {"name": "c", "usage": {"cpuNanoCores": 5, "memoryBytes": 4096}}]}],
        })
    }

    #[test]
    fn reports_are_validated() {
        let ok = NodeReport::parse(report().to_string().as_bytes()).unwrap();
        assert_eq!(ok.pods[0].containers[0].usage.memory_bytes, 4096);
        let mut bad = report();
        bad["timestamp"] = json!("yesterday");
        assert!(NodeReport::parse(bad.to_string().as_bytes())
            .unwrap_err()
            .contains("timestamp"));
        let mut bad = report();
        bad["windowSeconds"] = json!(0);
        assert!(NodeReport::parse(bad.to_string().as_bytes()).is_err());
        let mut bad = report();
        bad["pods"][0]["uid"] = json!("");
        assert!(NodeReport::parse(bad.to_string().as_bytes()).is_err());
        let mut bad = report();
        bad["usage"]["cpuNanoCores"] = json!(-1);
        assert!(NodeReport::parse(bad.to_string().as_bytes()).is_err());
        assert!(NodeReport::parse(b"[]").is_err());
    }

    #[test]
    fn quantities_and_windows_print_like_metrics_server() {
        assert_eq!(cpu_quantity(1_500_000), "1500000n");
        assert_eq!(memory_quantity(8192), "8Ki");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(1004)), "1.004s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
    }

    async fn call(
        app: &axum::Router,
        method: &str,
        path: &str,
        user: &str,
        groups: &[&str],
        body: Value,
    ) -> (StatusCode, Value) {
        use tower::ServiceExt;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_string()))
            .unwrap();
        req.extensions_mut().insert(Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        });
        let resp = app.clone().oneshot(req).await.unwrap();
        let code = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn nodes_push_and_kubectl_top_reads() {
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
        let c = crate::api::client::LocalClient::new(state.clone());
        let r = |g, v, p| resources::lookup(g, v, p).unwrap();
        c.create(
            r("", "v1", "namespaces"),
            None,
            json!({"metadata": {"name": "default"}}),
        )
        .await
        .unwrap();
        c.create(
            r("", "v1", "nodes"),
            None,
            json!({"metadata": {"name": "n1", "labels": {"zone": "a"}}}),
        )
        .await
        .unwrap();
        let pod = c
            .create(
                r("", "v1", "pods"),
                Some("default"),
                json!({"metadata": {"name": "p", "labels": {"app": "web"}},
                       "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
            )
            .await
            .unwrap();
        let app = crate::api::router(state);
        let mut rep = report();
        rep["pods"][0]["uid"] = pod["metadata"]["uid"].clone();
        let node = ["system:nodes", "system:authenticated"];
        let put = "/shoal/v1/nodes/n1/metrics";

        // Another node, or no node at all, may not report for n1.
        let (code, s) = call(&app, "PUT", put, "system:node:n2", &node, rep.clone()).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
        let (code, _) = call(
            &app,
            "PUT",
            put,
            "alice",
            &["system:authenticated"],
            rep.clone(),
        )
        .await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        // A malformed report is a 400 that says why.
        let mut bad = rep.clone();
        bad["windowSeconds"] = json!("soon");
        let (code, s) = call(&app, "PUT", put, "system:node:n1", &node, bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(
            s["message"].as_str().unwrap().contains("metrics report"),
            "{s}"
        );
        // Nothing served before the first good report.
        let (code, s) = call(
            &app,
            "GET",
            "/apis/metrics.k8s.io/v1beta1/nodes/n1",
            "admin",
            &["system:masters"],
            Value::Null,
        )
        .await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{s}");
        let (code, _) = call(&app, "PUT", put, "system:node:n1", &node, rep.clone()).await;
        assert_eq!(code, StatusCode::OK);

        let admin = |path: &'static str| {
            let app = app.clone();
            async move { call(&app, "GET", path, "admin", &["system:masters"], Value::Null).await }
        };
        let (_, groups) = admin("/apis").await;
        assert!(groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == GROUP
                && g["preferredVersion"]["groupVersion"] == "metrics.k8s.io/v1beta1"));
        let (_, list) = admin("/apis/metrics.k8s.io/v1beta1").await;
        assert_eq!(list["resources"][1]["kind"], "PodMetrics");
        let (code, n) = admin("/apis/metrics.k8s.io/v1beta1/nodes/n1").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(n["kind"], "NodeMetrics");
        assert_eq!(n["usage"]["cpu"], "1n");
        assert_eq!(n["window"], "15s");
        assert_eq!(n["metadata"]["labels"]["zone"], "a");
        let (_, l) = admin("/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=zone%3Db").await;
        assert_eq!(l["items"].as_array().unwrap().len(), 0);
        let (_, l) =
            admin("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dweb")
                .await;
        assert_eq!(l["kind"], "PodMetricsList");
        assert_eq!(l["items"][0]["containers"][0]["usage"]["memory"], "4Ki");
        let (_, l) =
            admin("/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name%3Dp").await;
        assert_eq!(l["items"][0]["metadata"]["namespace"], "default");
        let (code, _) = admin("/apis/metrics.k8s.io/v1beta1/namespaces/other/pods/p").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let (code, _) = admin("/apis/metrics.k8s.io/v1beta1/pods?labelSelector=%21%21").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        // A pod of the same name but another uid gets no figures.
        c.delete(
            r("", "v1", "pods"),
            Some("default"),
            "p",
            &json!({"gracePeriodSeconds": 0}),
        )
        .await
        .unwrap();
        let (_, l) = admin("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods").await;
        assert_eq!(l["items"].as_array().unwrap().len(), 0, "{l}");
        let (code, _) = call(
            &app,
            "DELETE",
            "/apis/metrics.k8s.io/v1beta1/nodes/n1",
            "admin",
            &["system:masters"],
            Value::Null,
        )
        .await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn stale_reports_are_not_served() {
        let s = NodeMetricsStore::default();
        let r = NodeReport::parse(report().to_string().as_bytes()).unwrap();
        s.put("n1", r.clone());
        assert_eq!(s.fresh().len(), 1);
        s.inner.write().unwrap().get_mut("n1").unwrap().received =
            Instant::now() - Duration::from_secs(120);
        assert!(s.fresh().is_empty());
    }
}
