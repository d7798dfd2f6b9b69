//! Server-side Table output (`meta.k8s.io/v1` `Table`, what `kubectl get` shows) for objects held as JSON.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

/// What to put in each row's `object` field (the `includeObject` query parameter: None, Metadata (default), Object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No `object` field in the rows.
    None,
    /// A `PartialObjectMetadata` holding the item's metadata.
    #[default]
    Metadata,
    /// The whole item.
    Object,
}

impl IncludeObject {
    /// Parse the `includeObject` query parameter; a missing or unrecognised value gives `Metadata`.
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("none") => IncludeObject::None,
            Some(v) if v.eq_ignore_ascii_case("object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Build a Table for objects of `kind` (Kubernetes Kind name, e.g. "Pod") from `items`. `list_meta` is the list's metadata object ({resourceVersion, continue}) to copy into the Table's metadata. `now` is used for AGE.
pub fn table(
    kind: &str,
    api_version_of_items: &str,
    items: &[Value],
    include: IncludeObject,
    list_meta: Value,
    now: DateTime<Utc>,
) -> Value {
    let printer = printer_for(kind);
    let columns: Vec<Value> = printer.columns.iter().map(Col::to_json).collect();

    let mut rows = Vec::with_capacity(items.len());
    for item in items {
        let printed = (printer.row)(item, now);
        debug_assert_eq!(printed.cells.len(), printer.columns.len(), "kind {kind}");
        let mut row = Map::new();
        row.insert("cells".into(), Value::Array(printed.cells));
        if let Some(conditions) = printed.conditions {
            row.insert("conditions".into(), conditions);
        }
        match include {
            IncludeObject::None => {}
            IncludeObject::Metadata => {
                let metadata = match item.get("metadata") {
                    Some(m @ Value::Object(_)) => m.clone(),
                    _ => json!({}),
                };
                row.insert(
                    "object".into(),
                    json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": metadata,
                    }),
                );
            }
            IncludeObject::Object => {
                row.insert(
                    "object".into(),
                    full_object(item, kind, api_version_of_items),
                );
            }
        }
        rows.push(Value::Object(row));
    }

    let metadata = match list_meta {
        Value::Object(m) => Value::Object(m),
        _ => json!({}),
    };

    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// Format a duration the way Kubernetes' `duration.HumanDuration` does (`5s`, `2m30s`, `10m`, `3h`, `5d`, `2y`).
pub fn human_duration(d: Duration) -> String {
    // Up to one second in the future counts as "now" (clock skew); further is invalid.
    let seconds = d.num_seconds();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 2 * 60 {
        return format!("{seconds}s");
    }
    let minutes = d.num_minutes();
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 3 * 60 {
        return format!("{minutes}m");
    }
    let hours = d.num_hours();
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let dy = days % 365;
        return if dy == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{dy}d")
        };
    }
    format!("{years}y")
}

// ---------------------------------------------------------------------------
// Columns and printers
// ---------------------------------------------------------------------------

/// One column definition.
struct Col {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    priority: u8,
    desc: &'static str,
}

impl Col {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": self.desc,
            "priority": self.priority,
        })
    }
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const CONTAINERS_DESC: &str = "Names of each container in the template.";
const IMAGES_DESC: &str = "Images referenced by each container in the template.";
const SELECTOR_DESC: &str = "Label query over the objects this resource manages.";

const fn name_col() -> Col {
    Col {
        name: "Name",
        ty: "string",
        format: "name",
        priority: 0,
        desc: NAME_DESC,
    }
}
const fn age_col() -> Col {
    Col {
        name: "Age",
        ty: "string",
        format: "",
        priority: 0,
        desc: AGE_DESC,
    }
}
/// A column shown by default.
const fn c(name: &'static str, ty: &'static str, desc: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        priority: 0,
        desc,
    }
}
/// A column shown only with `-o wide`.
const fn w(name: &'static str, ty: &'static str, desc: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        priority: 1,
        desc,
    }
}

/// Cells of one row, plus optional row conditions.
struct Printed {
    cells: Vec<Value>,
    conditions: Option<Value>,
}

impl From<Vec<Value>> for Printed {
    fn from(cells: Vec<Value>) -> Self {
        Printed {
            cells,
            conditions: None,
        }
    }
}

type RowFn = fn(&Value, DateTime<Utc>) -> Printed;

struct Printer {
    columns: &'static [Col],
    row: RowFn,
}

fn printer_for(kind: &str) -> Printer {
    let (columns, row): (&'static [Col], RowFn) = match kind {
        "Pod" => (POD_COLS, print_pod),
        "Node" => (NODE_COLS, print_node),
        "Deployment" => (DEPLOYMENT_COLS, print_deployment),
        "ReplicaSet" => (REPLICASET_COLS, print_replicaset),
        "ReplicationController" => (REPLICASET_COLS, print_replication_controller),
        "DaemonSet" => (DAEMONSET_COLS, print_daemonset),
        "StatefulSet" => (STATEFULSET_COLS, print_statefulset),
        "Service" => (SERVICE_COLS, print_service),
        "Namespace" => (NAMESPACE_COLS, print_namespace),
        "ConfigMap" => (CONFIGMAP_COLS, print_configmap),
        "Secret" => (SECRET_COLS, print_secret),
        "ServiceAccount" => (SERVICEACCOUNT_COLS, print_serviceaccount),
        "Endpoints" => (ENDPOINTS_COLS, print_endpoints),
        "EndpointSlice" => (ENDPOINTSLICE_COLS, print_endpointslice),
        "Event" => (EVENT_COLS, print_event),
        "Lease" => (LEASE_COLS, print_lease),
        "Job" => (JOB_COLS, print_job),
        "CronJob" => (CRONJOB_COLS, print_cronjob),
        "Role" | "ClusterRole" => (CREATED_AT_COLS, print_created_at),
        "RoleBinding" | "ClusterRoleBinding" => (ROLEBINDING_COLS, print_rolebinding),
        "PersistentVolume" => (PV_COLS, print_pv),
        "PersistentVolumeClaim" => (PVC_COLS, print_pvc),
        "Ingress" => (INGRESS_COLS, print_ingress),
        "IngressClass" => (INGRESSCLASS_COLS, print_ingressclass),
        "StorageClass" => (STORAGECLASS_COLS, print_storageclass),
        "PriorityClass" => (PRIORITYCLASS_COLS, print_priorityclass),
        "RuntimeClass" => (RUNTIMECLASS_COLS, print_runtimeclass),
        "NetworkPolicy" => (NETWORKPOLICY_COLS, print_networkpolicy),
        "PodDisruptionBudget" => (PDB_COLS, print_pdb),
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
            (WEBHOOK_COLS, print_webhook_configuration)
        }
        "ControllerRevision" => (CONTROLLERREVISION_COLS, print_controllerrevision),
        "Plugin" => (PLUGIN_COLS, print_plugin),
        "HorizontalPodAutoscaler" => (HPA_COLS, print_hpa),
        _ => (DEFAULT_COLS, print_default),
    };
    Printer { columns, row }
}

// ---------------------------------------------------------------------------
// JSON access helpers
// ---------------------------------------------------------------------------

static NULL: Value = Value::Null;

/// The value at `path`, or `null`.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for key in path {
        match cur.get(key) {
            Some(next) => cur = next,
            None => return &NULL,
        }
    }
    cur
}

/// The string at `path`, or "".
fn st<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or("")
}

/// The string at `path` if present and non-empty.
fn opt_st<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).as_str().filter(|s| !s.is_empty())
}

/// The integer at `path`, or `default` when missing.
fn int_or(v: &Value, path: &[&str], default: i64) -> i64 {
    let x = at(v, path);
    x.as_i64()
        .or_else(|| x.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
        .or_else(|| x.as_f64().map(|f| f as i64))
        .unwrap_or(default)
}

/// The integer at `path`, or 0.
fn int(v: &Value, path: &[&str]) -> i64 {
    int_or(v, path, 0)
}

/// The array at `path`, or an empty slice.
fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path).as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The number of keys of the object at `path` (0 if missing).
fn obj_len(v: &Value, path: &[&str]) -> usize {
    at(v, path).as_object().map_or(0, Map::len)
}

fn is_present(v: &Value) -> bool {
    !v.is_null()
}

fn name_of(obj: &Value) -> Value {
    Value::String(st(obj, &["metadata", "name"]).to_string())
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Human age since the timestamp at `path`, `<unknown>` when missing.
fn since(obj: &Value, path: &[&str], now: DateTime<Utc>) -> String {
    since_str(st(obj, path), now)
}

fn since_str(ts: &str, now: DateTime<Utc>) -> String {
    match parse_time(ts) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

fn age(obj: &Value, now: DateTime<Utc>) -> Value {
    Value::String(since(obj, &["metadata", "creationTimestamp"], now))
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// `k=v` pairs sorted by key and comma-joined (Kubernetes' `labels.FormatLabels`), `<none>` if empty.
fn format_labels(v: &Value) -> String {
    let mut pairs: Vec<String> = match v.as_object() {
        Some(m) => m
            .iter()
            .map(|(k, v)| format!("{}={}", k, v.as_str().unwrap_or("")))
            .collect(),
        None => Vec::new(),
    };
    pairs.sort();
    none_if_empty(pairs.join(","))
}

/// String form of a LabelSelector (`a=b,c in (x,y),!d`); "" for a nil or empty selector.
fn selector_string(sel: &Value) -> Result<String, ()> {
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(m) = at(sel, &["matchLabels"]).as_object() {
        for (k, v) in m {
            reqs.push((k.clone(), format!("{}={}", k, v.as_str().unwrap_or(""))));
        }
    }
    for expr in arr(sel, &["matchExpressions"]) {
        let key = st(expr, &["key"]);
        let mut values: Vec<&str> = arr(expr, &["values"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let text = match st(expr, &["operator"]) {
            "In" if !values.is_empty() => format!("{} in ({})", key, values.join(",")),
            "NotIn" if !values.is_empty() => format!("{} notin ({})", key, values.join(",")),
            "Exists" if values.is_empty() => key.to_string(),
            "DoesNotExist" if values.is_empty() => format!("!{key}"),
            _ => return Err(()),
        };
        reqs.push((key.to_string(), text));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(","))
}

/// Kubernetes' `metav1.FormatLabelSelector`: `<none>` when empty, `<error>` when invalid.
fn format_label_selector(sel: &Value) -> String {
    match selector_string(sel) {
        Ok(s) => none_if_empty(s),
        Err(()) => "<error>".into(),
    }
}

/// Comma-joined container names and images.
fn containers_and_images(containers: &[Value]) -> (Value, Value) {
    let names: Vec<&str> = containers.iter().map(|c| st(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| st(c, &["image"])).collect();
    (
        Value::String(names.join(",")),
        Value::String(images.join(",")),
    )
}

fn bool_ptr_str(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "True",
        Some(false) => "False",
        None => "<unset>",
    }
}

/// Join a list, showing at most three entries followed by " + N more...".
fn list_with_more(all: Vec<String>, empty: &str) -> String {
    const MAX: usize = 3;
    if all.is_empty() {
        return empty.to_string();
    }
    let count = all.len();
    let shown = all.into_iter().take(MAX).collect::<Vec<_>>().join(",");
    if count > MAX {
        format!("{} + {} more...", shown, count - MAX)
    } else {
        shown
    }
}

fn full_object(item: &Value, kind: &str, api_version: &str) -> Value {
    let mut obj = item.clone();
    if let Value::Object(m) = &mut obj {
        let mut out = Map::new();
        // Embedded objects need kind/apiVersion so clients can decode them; keep them first.
        let k = m
            .remove("kind")
            .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()));
        let a = m
            .remove("apiVersion")
            .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()));
        out.insert(
            "kind".into(),
            k.unwrap_or_else(|| Value::String(kind.into())),
        );
        if let Some(a) = a {
            out.insert("apiVersion".into(), a);
        } else if !api_version.is_empty() {
            out.insert("apiVersion".into(), Value::String(api_version.into()));
        }
        out.extend(std::mem::take(m));
        return Value::Object(out);
    }
    obj
}

// ---------------------------------------------------------------------------
// Pod
// ---------------------------------------------------------------------------

const POD_COLS: &[Col] = &[
    name_col(),
    c(
        "Ready",
        "string",
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    c(
        "Status",
        "string",
        "The aggregate status of the containers in this pod.",
    ),
    c(
        "Restarts",
        "integer",
        "The number of times the containers in this pod have been restarted.",
    ),
    age_col(),
    w(
        "IP",
        "string",
        "IP address allocated to the pod. Routable at least within the cluster.",
    ),
    w(
        "Node",
        "string",
        "Name of the node the pod is scheduled onto.",
    ),
    w(
        "Nominated Node",
        "string",
        "Node the scheduler nominated for this pod while preempting others.",
    ),
    w(
        "Readiness Gates",
        "string",
        "Pod readiness gates that are true, out of all gates.",
    ),
];

fn condition_true(conditions: &[Value], ty: &str) -> bool {
    conditions
        .iter()
        .any(|c| st(c, &["type"]) == ty && st(c, &["status"]) == "True")
}

fn print_pod(pod: &Value, now: DateTime<Utc>) -> Printed {
    let spec = at(pod, &["spec"]);
    let status = at(pod, &["status"]);
    let conditions = arr(status, &["conditions"]);
    let phase = st(status, &["phase"]);

    let mut reason = if phase.is_empty() {
        "Pending".to_string()
    } else {
        phase.to_string()
    };
    if let Some(r) = opt_st(status, &["reason"]) {
        reason = r.to_string();
    }
    if conditions
        .iter()
        .any(|c| st(c, &["type"]) == "PodScheduled" && st(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }

    let init_specs = arr(spec, &["initContainers"]);
    // Sidecars: init containers with restartPolicy Always keep running and count as containers.
    let sidecars: BTreeSet<&str> = init_specs
        .iter()
        .filter(|c| st(c, &["restartPolicy"]) == "Always")
        .map(|c| st(c, &["name"]))
        .collect();
    let total = arr(spec, &["containers"]).len() + sidecars.len();
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;

    let mut initializing = false;
    for (i, cs) in arr(status, &["initContainerStatuses"]).iter().enumerate() {
        let count = int(cs, &["restartCount"]);
        restarts += count;
        let is_sidecar = sidecars.contains(st(cs, &["name"]));
        if is_sidecar {
            sidecar_restarts += count;
        }
        let terminated = at(cs, &["state", "terminated"]);
        let waiting_reason = st(cs, &["state", "waiting", "reason"]);
        if is_present(terminated) && int(terminated, &["exitCode"]) == 0 {
            continue;
        }
        if is_sidecar && at(cs, &["started"]).as_bool() == Some(true) {
            if at(cs, &["ready"]).as_bool() == Some(true) {
                ready += 1;
            }
            continue;
        }
        reason = if is_present(terminated) {
            match opt_st(terminated, &["reason"]) {
                Some(r) => format!("Init:{r}"),
                None => match int(terminated, &["signal"]) {
                    0 => format!("Init:ExitCode:{}", int(terminated, &["exitCode"])),
                    sig => format!("Init:Signal:{sig}"),
                },
            }
        } else if is_present(at(cs, &["state", "waiting"]))
            && !waiting_reason.is_empty()
            && waiting_reason != "PodInitializing"
        {
            format!("Init:{waiting_reason}")
        } else {
            format!("Init:{}/{}", i, init_specs.len())
        };
        initializing = true;
        break;
    }

    if !initializing || condition_true(conditions, "Initialized") {
        restarts = sidecar_restarts;
        let mut has_running = false;
        // Walk backwards so the first container's state wins, as Kubernetes does.
        for cs in arr(status, &["containerStatuses"]).iter().rev() {
            restarts += int(cs, &["restartCount"]);
            let terminated = at(cs, &["state", "terminated"]);
            if let Some(r) = opt_st(cs, &["state", "waiting", "reason"]) {
                reason = r.to_string();
            } else if let Some(r) = opt_st(terminated, &["reason"]) {
                reason = r.to_string();
            } else if is_present(terminated) {
                reason = match int(terminated, &["signal"]) {
                    0 => format!("ExitCode:{}", int(terminated, &["exitCode"])),
                    sig => format!("Signal:{sig}"),
                };
            } else if at(cs, &["ready"]).as_bool() == Some(true)
                && is_present(at(cs, &["state", "running"]))
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(conditions, "Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .into();
        }
    }

    let deleting = is_present(at(pod, &["metadata", "deletionTimestamp"]));
    if deleting && st(status, &["reason"]) == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }

    let ip = arr(status, &["podIPs"])
        .first()
        .and_then(|p| opt_st(p, &["ip"]))
        .or_else(|| opt_st(status, &["podIP"]))
        .unwrap_or("<none>");
    let node = opt_st(spec, &["nodeName"]).unwrap_or("<none>");
    let nominated = opt_st(status, &["nominatedNodeName"]).unwrap_or("<none>");
    let gates = arr(spec, &["readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_count = gates
            .iter()
            .filter(|g| {
                let ty = st(g, &["conditionType"]);
                conditions
                    .iter()
                    .find(|c| st(c, &["type"]) == ty)
                    .is_some_and(|c| st(c, &["status"]) == "True")
            })
            .count();
        format!("{}/{}", true_count, gates.len())
    };

    let row_conditions = match phase {
        "Succeeded" => Some(json!([{
            "type": "Completed", "status": "True", "reason": "Succeeded",
            "message": "The pod has completed successfully.",
        }])),
        "Failed" => Some(json!([{
            "type": "Completed", "status": "True", "reason": "Failed",
            "message": "The pod failed.",
        }])),
        _ => None,
    };

    Printed {
        cells: vec![
            name_of(pod),
            json!(format!("{ready}/{total}")),
            json!(reason),
            json!(restarts),
            age(pod, now),
            json!(ip),
            json!(node),
            json!(nominated),
            json!(readiness_gates),
        ],
        conditions: row_conditions,
    }
}

// ---------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------

const NODE_COLS: &[Col] = &[
    name_col(),
    c("Status", "string", "The status of the node"),
    c("Roles", "string", "The roles of the node"),
    age_col(),
    c("Version", "string", "Kubelet version reported by the node."),
    w(
        "Internal-IP",
        "string",
        "The node's first InternalIP address.",
    ),
    w(
        "External-IP",
        "string",
        "The node's first ExternalIP address.",
    ),
    w("OS-Image", "string", "OS image reported by the node."),
    w(
        "Kernel-Version",
        "string",
        "Kernel version reported by the node.",
    ),
    w(
        "Container-Runtime",
        "string",
        "Container runtime version reported by the node.",
    ),
];

fn print_node(node: &Value, now: DateTime<Utc>) -> Printed {
    let ready = arr(node, &["status", "conditions"])
        .iter()
        .rev() // the last Ready condition wins, like a map keyed by type
        .find(|c| st(c, &["type"]) == "Ready");
    let mut status = vec![match ready {
        Some(c) if st(c, &["status"]) == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if at(node, &["spec", "unschedulable"]).as_bool() == Some(true) {
        status.push("SchedulingDisabled");
    }

    let mut roles = BTreeSet::new();
    if let Some(labels) = at(node, &["metadata", "labels"]).as_object() {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.insert(v.to_string());
                }
            }
        }
    }
    let roles = none_if_empty(roles.into_iter().collect::<Vec<_>>().join(","));

    let address = |ty: &str| {
        arr(node, &["status", "addresses"])
            .iter()
            .find(|a| st(a, &["type"]) == ty)
            .map(|a| st(a, &["address"]).to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    let info = |key: &str| {
        opt_st(node, &["status", "nodeInfo", key])
            .unwrap_or("<unknown>")
            .to_string()
    };

    vec![
        name_of(node),
        json!(status.join(",")),
        json!(roles),
        age(node, now),
        json!(st(node, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
    .into()
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

const DEPLOYMENT_COLS: &[Col] = &[
    name_col(),
    c("Ready", "string", "Number of the pod with ready state"),
    c("Up-to-date", "integer", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    c("Available", "integer", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    age_col(),
    w("Containers", "string", CONTAINERS_DESC),
    w("Images", "string", IMAGES_DESC),
    w("Selector", "string", SELECTOR_DESC),
];

/// Desired replicas; Kubernetes defaults a missing `spec.replicas` to 1.
fn desired_replicas(obj: &Value) -> i64 {
    int_or(obj, &["spec", "replicas"], 1)
}

fn print_deployment(d: &Value, now: DateTime<Utc>) -> Printed {
    let (names, images) =
        containers_and_images(arr(d, &["spec", "template", "spec", "containers"]));
    let selector =
        selector_string(at(d, &["spec", "selector"])).unwrap_or_else(|()| "<invalid>".into());
    vec![
        name_of(d),
        json!(format!(
            "{}/{}",
            int(d, &["status", "readyReplicas"]),
            desired_replicas(d)
        )),
        json!(int(d, &["status", "updatedReplicas"])),
        json!(int(d, &["status", "availableReplicas"])),
        age(d, now),
        names,
        images,
        json!(selector),
    ]
    .into()
}

const REPLICASET_COLS: &[Col] = &[
    name_col(),
    c("Desired", "integer", "Number of desired pods."),
    c(
        "Current",
        "integer",
        "Most recently observed number of replicas.",
    ),
    c(
        "Ready",
        "integer",
        "Number of pods targeted by this controller with a Ready condition.",
    ),
    age_col(),
    w("Containers", "string", CONTAINERS_DESC),
    w("Images", "string", IMAGES_DESC),
    w("Selector", "string", SELECTOR_DESC),
];

fn print_replicaset(rs: &Value, now: DateTime<Utc>) -> Printed {
    let (names, images) =
        containers_and_images(arr(rs, &["spec", "template", "spec", "containers"]));
    vec![
        name_of(rs),
        json!(desired_replicas(rs)),
        json!(int(rs, &["status", "replicas"])),
        json!(int(rs, &["status", "readyReplicas"])),
        age(rs, now),
        names,
        images,
        json!(format_label_selector(at(rs, &["spec", "selector"]))),
    ]
    .into()
}

fn print_replication_controller(rc: &Value, now: DateTime<Utc>) -> Printed {
    let (names, images) =
        containers_and_images(arr(rc, &["spec", "template", "spec", "containers"]));
    vec![
        name_of(rc),
        json!(desired_replicas(rc)),
        json!(int(rc, &["status", "replicas"])),
        json!(int(rc, &["status", "readyReplicas"])),
        age(rc, now),
        names,
        images,
        json!(format_labels(at(rc, &["spec", "selector"]))),
    ]
    .into()
}

const DAEMONSET_COLS: &[Col] = &[
    name_col(),
    c(
        "Desired",
        "integer",
        "The total number of nodes that should be running the daemon pod.",
    ),
    c(
        "Current",
        "integer",
        "The number of nodes running at least one daemon pod that are supposed to.",
    ),
    c(
        "Ready",
        "integer",
        "The number of nodes running the daemon pod with a Ready condition.",
    ),
    c(
        "Up-to-date",
        "integer",
        "The number of nodes running the updated daemon pod.",
    ),
    c(
        "Available",
        "integer",
        "The number of nodes running an available daemon pod.",
    ),
    c(
        "Node Selector",
        "string",
        "Node selector of the daemon pod template.",
    ),
    age_col(),
    w("Containers", "string", CONTAINERS_DESC),
    w("Images", "string", IMAGES_DESC),
    w("Selector", "string", SELECTOR_DESC),
];

fn print_daemonset(ds: &Value, now: DateTime<Utc>) -> Printed {
    let tspec = at(ds, &["spec", "template", "spec"]);
    let (names, images) = containers_and_images(arr(tspec, &["containers"]));
    vec![
        name_of(ds),
        json!(int(ds, &["status", "desiredNumberScheduled"])),
        json!(int(ds, &["status", "currentNumberScheduled"])),
        json!(int(ds, &["status", "numberReady"])),
        json!(int(ds, &["status", "updatedNumberScheduled"])),
        json!(int(ds, &["status", "numberAvailable"])),
        json!(format_labels(at(tspec, &["nodeSelector"]))),
        age(ds, now),
        names,
        images,
        json!(format_label_selector(at(ds, &["spec", "selector"]))),
    ]
    .into()
}

const STATEFULSET_COLS: &[Col] = &[
    name_col(),
    c("Ready", "string", "Number of the pod with ready state"),
    age_col(),
    w("Containers", "string", CONTAINERS_DESC),
    w("Images", "string", IMAGES_DESC),
];

fn print_statefulset(ss: &Value, now: DateTime<Utc>) -> Printed {
    let (names, images) =
        containers_and_images(arr(ss, &["spec", "template", "spec", "containers"]));
    vec![
        name_of(ss),
        json!(format!(
            "{}/{}",
            int(ss, &["status", "readyReplicas"]),
            desired_replicas(ss)
        )),
        age(ss, now),
        names,
        images,
    ]
    .into()
}

const JOB_COLS: &[Col] = &[
    name_col(),
    c("Status", "string", "Status of the job."),
    c(
        "Completions",
        "string",
        "Succeeded pods out of the desired completions.",
    ),
    c("Duration", "string", "Time required to complete the job."),
    age_col(),
    w("Containers", "string", CONTAINERS_DESC),
    w("Images", "string", IMAGES_DESC),
    w("Selector", "string", SELECTOR_DESC),
];

/// Status of the first condition of type `ty` is True.
fn first_condition_true(conditions: &[Value], ty: &str) -> bool {
    conditions
        .iter()
        .find(|c| st(c, &["type"]) == ty)
        .is_some_and(|c| st(c, &["status"]) == "True")
}

fn print_job(job: &Value, now: DateTime<Utc>) -> Printed {
    let succeeded = int(job, &["status", "succeeded"]);
    let completions = match at(job, &["spec", "completions"]) {
        v if v.is_number() => format!("{}/{}", succeeded, int(job, &["spec", "completions"])),
        _ => {
            let parallelism = int(job, &["spec", "parallelism"]);
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let duration = match parse_time(st(job, &["status", "startTime"])) {
        None => String::new(),
        Some(start) => match parse_time(st(job, &["status", "completionTime"])) {
            None => human_duration(now - start),
            Some(end) => human_duration(end - start),
        },
    };
    let conds = arr(job, &["status", "conditions"]);
    let status = if first_condition_true(conds, "Complete") {
        "Complete"
    } else if first_condition_true(conds, "Failed") {
        "Failed"
    } else if is_present(at(job, &["metadata", "deletionTimestamp"])) {
        "Terminating"
    } else if first_condition_true(conds, "Suspended") {
        "Suspended"
    } else if first_condition_true(conds, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (names, images) =
        containers_and_images(arr(job, &["spec", "template", "spec", "containers"]));
    vec![
        name_of(job),
        json!(status),
        json!(completions),
        json!(duration),
        age(job, now),
        names,
        images,
        json!(format_label_selector(at(job, &["spec", "selector"]))),
    ]
    .into()
}

const CRONJOB_COLS: &[Col] = &[
    name_col(),
    c("Schedule", "string", "The schedule in Cron format."),
    c(
        "Timezone",
        "string",
        "The time zone name for the given schedule.",
    ),
    c(
        "Suspend",
        "string",
        "Whether subsequent executions are suspended.",
    ),
    c("Active", "integer", "Number of currently running jobs."),
    c(
        "Last Schedule",
        "string",
        "Time since the job was last successfully scheduled.",
    ),
    age_col(),
    w("Containers", "string", CONTAINERS_DESC),
    w("Images", "string", IMAGES_DESC),
    w("Selector", "string", SELECTOR_DESC),
];

fn print_cronjob(cj: &Value, now: DateTime<Utc>) -> Printed {
    let last = match opt_st(cj, &["status", "lastScheduleTime"]) {
        Some(t) => since_str(t, now),
        None => "<none>".into(),
    };
    let job_spec = at(cj, &["spec", "jobTemplate", "spec"]);
    let (names, images) = containers_and_images(arr(job_spec, &["template", "spec", "containers"]));
    vec![
        name_of(cj),
        json!(st(cj, &["spec", "schedule"])),
        json!(opt_st(cj, &["spec", "timeZone"]).unwrap_or("<none>")),
        json!(bool_ptr_str(at(cj, &["spec", "suspend"]))),
        json!(arr(cj, &["status", "active"]).len()),
        json!(last),
        age(cj, now),
        names,
        images,
        json!(format_label_selector(at(job_spec, &["selector"]))),
    ]
    .into()
}

const CONTROLLERREVISION_COLS: &[Col] = &[
    name_col(),
    c("Controller", "string", "Controller of the object"),
    c("Revision", "integer", "Revision number of this state."),
    age_col(),
];

fn print_controllerrevision(cr: &Value, now: DateTime<Utc>) -> Printed {
    let controller = arr(cr, &["metadata", "ownerReferences"])
        .iter()
        .find(|o| at(o, &["controller"]).as_bool() == Some(true))
        .map(|o| {
            let group = st(o, &["apiVersion"])
                .rsplit_once('/')
                .map_or("", |(g, _)| g);
            let kind = st(o, &["kind"]);
            let gk = if group.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}.{group}")
            };
            if gk.is_empty() {
                st(o, &["name"]).to_string()
            } else {
                format!("{}/{}", gk.to_lowercase(), st(o, &["name"]))
            }
        })
        .unwrap_or_else(|| "<none>".into());
    vec![
        name_of(cr),
        json!(controller),
        json!(int(cr, &["revision"])),
        age(cr, now),
    ]
    .into()
}

// ---------------------------------------------------------------------------
// Networking
// ---------------------------------------------------------------------------

const SERVICE_COLS: &[Col] = &[
    name_col(),
    c(
        "Type",
        "string",
        "How the service is exposed (ClusterIP, NodePort, LoadBalancer, ExternalName).",
    ),
    c(
        "Cluster-IP",
        "string",
        "The IP address of the service inside the cluster.",
    ),
    c(
        "External-IP",
        "string",
        "External addresses of the service.",
    ),
    c("Port(s)", "string", "The ports exposed by the service."),
    age_col(),
    w(
        "Selector",
        "string",
        "Pods with labels matching this selector receive the service's traffic.",
    ),
];

/// Load balancer ingress IPs/hostnames, sorted and de-duplicated.
fn lb_ingress(status: &Value) -> Vec<String> {
    let set: BTreeSet<String> = arr(status, &["loadBalancer", "ingress"])
        .iter()
        .filter_map(|i| opt_st(i, &["ip"]).or_else(|| opt_st(i, &["hostname"])))
        .map(str::to_string)
        .collect();
    set.into_iter().collect()
}

fn print_service(svc: &Value, now: DateTime<Utc>) -> Printed {
    let spec = at(svc, &["spec"]);
    let ty = opt_st(spec, &["type"]).unwrap_or("ClusterIP");
    let cluster_ip = arr(spec, &["clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| opt_st(spec, &["clusterIP"]))
        .unwrap_or("<none>");
    let external_ips: Vec<String> = arr(spec, &["externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let external = match ty {
        "ClusterIP" | "NodePort" => none_if_empty(external_ips.join(",")),
        "LoadBalancer" => {
            let mut all = lb_ingress(at(svc, &["status"]));
            all.extend(external_ips);
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => st(spec, &["externalName"]).to_string(),
        _ => "<unknown>".into(),
    };
    let ports: Vec<String> = arr(spec, &["ports"])
        .iter()
        .map(|p| {
            let port = int(p, &["port"]);
            let proto = opt_st(p, &["protocol"]).unwrap_or("TCP");
            match int(p, &["nodePort"]) {
                n if n > 0 => format!("{port}:{n}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    vec![
        name_of(svc),
        json!(ty),
        json!(cluster_ip),
        json!(external),
        json!(none_if_empty(ports.join(","))),
        age(svc, now),
        json!(format_labels(at(spec, &["selector"]))),
    ]
    .into()
}

const ENDPOINTS_COLS: &[Col] = &[
    name_col(),
    c(
        "Endpoints",
        "string",
        "Addresses and ports of the endpoints.",
    ),
    age_col(),
];

fn join_host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn print_endpoints(ep: &Value, now: DateTime<Utc>) -> Printed {
    let subsets = arr(ep, &["subsets"]);
    let text = if subsets.is_empty() {
        "<none>".to_string()
    } else {
        let mut all = Vec::new();
        for ss in subsets {
            let addrs = arr(ss, &["addresses"]);
            let ports = arr(ss, &["ports"]);
            if ports.is_empty() {
                // Headless services may have no ports.
                all.extend(addrs.iter().map(|a| st(a, &["ip"]).to_string()));
                continue;
            }
            for p in ports {
                let port = int(p, &["port"]);
                all.extend(addrs.iter().map(|a| join_host_port(st(a, &["ip"]), port)));
            }
        }
        list_with_more(all, "")
    };
    vec![name_of(ep), json!(text), age(ep, now)].into()
}

const ENDPOINTSLICE_COLS: &[Col] = &[
    name_col(),
    c(
        "AddressType",
        "string",
        "Type of address carried by this EndpointSlice.",
    ),
    c("Ports", "string", "Network ports exposed by each endpoint."),
    c("Endpoints", "string", "Addresses of the endpoints."),
    age_col(),
];

fn print_endpointslice(es: &Value, now: DateTime<Utc>) -> Printed {
    let ports: Vec<String> = arr(es, &["ports"])
        .iter()
        .map(|p| {
            if at(p, &["port"]).is_number() {
                int(p, &["port"]).to_string()
            } else if let Some(name) = at(p, &["name"]).as_str() {
                name.to_string()
            } else {
                "*".to_string()
            }
        })
        .collect();
    let addrs: Vec<String> = arr(es, &["endpoints"])
        .iter()
        .flat_map(|e| {
            arr(e, &["addresses"])
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    vec![
        name_of(es),
        json!(st(es, &["addressType"])),
        json!(list_with_more(ports, "<unset>")),
        json!(list_with_more(addrs, "<unset>")),
        age(es, now),
    ]
    .into()
}

const INGRESS_COLS: &[Col] = &[
    name_col(),
    c(
        "Class",
        "string",
        "The name of the IngressClass resource that should be used for additional configuration",
    ),
    c(
        "Hosts",
        "string",
        "Hosts that incoming requests are matched against before the ingress rule",
    ),
    c(
        "Address",
        "string",
        "Address is a list containing ingress points for the load-balancer",
    ),
    c("Ports", "string", "Ports of TLS configurations that open"),
    age_col(),
];

fn print_ingress(ing: &Value, now: DateTime<Utc>) -> Printed {
    let rules = arr(ing, &["spec", "rules"]);
    let hosts: Vec<&str> = rules
        .iter()
        .filter_map(|r| opt_st(r, &["host"]))
        .take(3)
        .collect();
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else if rules.len() > 3 {
        format!("{} + {} more...", hosts.join(","), rules.len() - 3)
    } else {
        hosts.join(",")
    };
    let ports = if arr(ing, &["spec", "tls"]).is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name_of(ing),
        json!(opt_st(ing, &["spec", "ingressClassName"]).unwrap_or("<none>")),
        json!(hosts),
        json!(lb_ingress(at(ing, &["status"])).join(",")),
        json!(ports),
        age(ing, now),
    ]
    .into()
}

const INGRESSCLASS_COLS: &[Col] = &[
    name_col(),
    c(
        "Controller",
        "string",
        "Controller that is responsible for handling this class",
    ),
    c(
        "Parameters",
        "string",
        "A reference to a resource with additional parameters",
    ),
    age_col(),
];

fn print_ingressclass(ic: &Value, now: DateTime<Utc>) -> Printed {
    let params = at(ic, &["spec", "parameters"]);
    let parameters = if is_present(params) {
        let mut s = st(params, &["kind"]).to_string();
        if let Some(g) = at(params, &["apiGroup"]).as_str() {
            s = format!("{s}.{g}");
        }
        format!("{}/{}", s, st(params, &["name"]))
    } else {
        "<none>".into()
    };
    vec![
        name_of(ic),
        json!(st(ic, &["spec", "controller"])),
        json!(parameters),
        age(ic, now),
    ]
    .into()
}

const NETWORKPOLICY_COLS: &[Col] = &[
    name_col(),
    c(
        "Pod-Selector",
        "string",
        "Pods to which this policy applies.",
    ),
    age_col(),
];

fn print_networkpolicy(np: &Value, now: DateTime<Utc>) -> Printed {
    vec![
        name_of(np),
        json!(format_label_selector(at(np, &["spec", "podSelector"]))),
        age(np, now),
    ]
    .into()
}

// ---------------------------------------------------------------------------
// Config, storage, cluster objects
// ---------------------------------------------------------------------------

const NAMESPACE_COLS: &[Col] = &[
    name_col(),
    c("Status", "string", "The status of the namespace"),
    age_col(),
];

fn print_namespace(ns: &Value, now: DateTime<Utc>) -> Printed {
    vec![
        name_of(ns),
        json!(opt_st(ns, &["status", "phase"]).unwrap_or("Active")),
        age(ns, now),
    ]
    .into()
}

const CONFIGMAP_COLS: &[Col] = &[
    name_col(),
    c("Data", "integer", "Number of keys in data and binaryData."),
    age_col(),
];

fn print_configmap(cm: &Value, now: DateTime<Utc>) -> Printed {
    let n = obj_len(cm, &["data"]) + obj_len(cm, &["binaryData"]);
    vec![name_of(cm), json!(n), age(cm, now)].into()
}

const SECRET_COLS: &[Col] = &[
    name_col(),
    c(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data.",
    ),
    c("Data", "integer", "Number of keys in data."),
    age_col(),
];

fn print_secret(s: &Value, now: DateTime<Utc>) -> Printed {
    vec![
        name_of(s),
        json!(opt_st(s, &["type"]).unwrap_or("Opaque")),
        json!(obj_len(s, &["data"])),
        age(s, now),
    ]
    .into()
}

const SERVICEACCOUNT_COLS: &[Col] = &[
    name_col(),
    c(
        "Secrets",
        "integer",
        "Number of secrets listed for this service account.",
    ),
    age_col(),
];

fn print_serviceaccount(sa: &Value, now: DateTime<Utc>) -> Printed {
    vec![
        name_of(sa),
        json!(arr(sa, &["secrets"]).len()),
        age(sa, now),
    ]
    .into()
}

const LEASE_COLS: &[Col] = &[
    name_col(),
    c("Holder", "string", "Identity of the holder of the lease."),
    age_col(),
];

fn print_lease(l: &Value, now: DateTime<Utc>) -> Printed {
    vec![
        name_of(l),
        json!(st(l, &["spec", "holderIdentity"])),
        age(l, now),
    ]
    .into()
}

const ROLEBINDING_COLS: &[Col] = &[
    name_col(),
    c("Role", "string", "The role this binding grants."),
    age_col(),
    w("Users", "string", "Users in the binding"),
    w("Groups", "string", "Groups in the binding"),
    w(
        "ServiceAccounts",
        "string",
        "ServiceAccounts in the binding",
    ),
];

fn print_rolebinding(rb: &Value, now: DateTime<Utc>) -> Printed {
    let role = format!(
        "{}/{}",
        st(rb, &["roleRef", "kind"]),
        st(rb, &["roleRef", "name"])
    );
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for s in arr(rb, &["subjects"]) {
        let name = st(s, &["name"]);
        match st(s, &["kind"]) {
            "User" => users.push(name.to_string()),
            "Group" => groups.push(name.to_string()),
            "ServiceAccount" => sas.push(format!("{}/{}", st(s, &["namespace"]), name)),
            _ => {}
        }
    }
    vec![
        name_of(rb),
        json!(role),
        age(rb, now),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(sas.join(", ")),
    ]
    .into()
}

/// Access modes in Kubernetes' short form and fixed order (RWO,ROX,RWX,RWOP).
fn access_modes(modes: &[Value]) -> String {
    let have: BTreeSet<&str> = modes.iter().filter_map(Value::as_str).collect();
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(long, _)| have.contains(long))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// Storage class from the beta annotation, else `spec.storageClassName`.
fn storage_class(obj: &Value) -> &str {
    at(
        obj,
        &[
            "metadata",
            "annotations",
            "volume.beta.kubernetes.io/storage-class",
        ],
    )
    .as_str()
    .unwrap_or_else(|| st(obj, &["spec", "storageClassName"]))
}

const PV_COLS: &[Col] = &[
    name_col(),
    c("Capacity", "string", "Capacity of the volume."),
    c("Access Modes", "string", "Ways the volume can be mounted."),
    c(
        "Reclaim Policy",
        "string",
        "What happens to the volume when released from its claim.",
    ),
    c("Status", "string", "Phase of the volume."),
    c("Claim", "string", "The claim bound to this volume."),
    c("StorageClass", "string", "StorageClass of the pv"),
    c(
        "VolumeAttributesClass",
        "string",
        "VolumeAttributesClass of the pv",
    ),
    c("Reason", "string", "Reason for a failure, if any."),
    age_col(),
    w("VolumeMode", "string", "Filesystem or Block."),
];

fn print_pv(pv: &Value, now: DateTime<Utc>) -> Printed {
    let spec = at(pv, &["spec"]);
    let claim = if is_present(at(spec, &["claimRef"])) {
        format!(
            "{}/{}",
            st(spec, &["claimRef", "namespace"]),
            st(spec, &["claimRef", "name"])
        )
    } else {
        String::new()
    };
    let phase = if is_present(at(pv, &["metadata", "deletionTimestamp"])) {
        "Terminating"
    } else {
        st(pv, &["status", "phase"])
    };
    vec![
        name_of(pv),
        json!(quantity(at(spec, &["capacity", "storage"]))),
        json!(access_modes(arr(spec, &["accessModes"]))),
        json!(opt_st(spec, &["persistentVolumeReclaimPolicy"]).unwrap_or("Retain")),
        json!(phase),
        json!(claim),
        json!(storage_class(pv)),
        json!(opt_st(spec, &["volumeAttributesClassName"]).unwrap_or("<unset>")),
        json!(st(pv, &["status", "reason"])),
        age(pv, now),
        json!(opt_st(spec, &["volumeMode"]).unwrap_or("<unset>")),
    ]
    .into()
}

/// A resource quantity as text ("0" when missing, as Kubernetes prints a zero Quantity).
fn quantity(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "0".into(),
    }
}

const PVC_COLS: &[Col] = &[
    name_col(),
    c("Status", "string", "Phase of the claim."),
    c("Volume", "string", "The volume bound to this claim."),
    c("Capacity", "string", "Capacity of the bound volume."),
    c(
        "Access Modes",
        "string",
        "Access modes of the bound volume.",
    ),
    c("StorageClass", "string", "StorageClass of the pvc"),
    c(
        "VolumeAttributesClass",
        "string",
        "VolumeAttributesClass of the pvc",
    ),
    age_col(),
    w("VolumeMode", "string", "Filesystem or Block."),
];

fn print_pvc(pvc: &Value, now: DateTime<Utc>) -> Printed {
    let spec = at(pvc, &["spec"]);
    let phase = if is_present(at(pvc, &["metadata", "deletionTimestamp"])) {
        "Terminating"
    } else {
        st(pvc, &["status", "phase"])
    };
    let volume = st(spec, &["volumeName"]);
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            quantity(at(pvc, &["status", "capacity", "storage"])),
            access_modes(arr(pvc, &["status", "accessModes"])),
        )
    };
    vec![
        name_of(pvc),
        json!(phase),
        json!(volume),
        json!(capacity),
        json!(modes),
        json!(storage_class(pvc)),
        json!(opt_st(spec, &["volumeAttributesClassName"]).unwrap_or("<unset>")),
        age(pvc, now),
        json!(opt_st(spec, &["volumeMode"]).unwrap_or("<unset>")),
    ]
    .into()
}

const STORAGECLASS_COLS: &[Col] = &[
    name_col(),
    c(
        "Provisioner",
        "string",
        "The volume plugin that provisions volumes of this class.",
    ),
    c(
        "ReclaimPolicy",
        "string",
        "Reclaim policy of dynamically provisioned volumes.",
    ),
    c(
        "VolumeBindingMode",
        "string",
        "When volumes are bound and provisioned.",
    ),
    c(
        "AllowVolumeExpansion",
        "boolean",
        "Whether volumes of this class can be expanded.",
    ),
    age_col(),
];

fn print_storageclass(sc: &Value, now: DateTime<Utc>) -> Printed {
    let ann = at(sc, &["metadata", "annotations"]);
    let is_default = [
        "storageclass.kubernetes.io/is-default-class",
        "storageclass.beta.kubernetes.io/is-default-class",
    ]
    .iter()
    .any(|k| at(ann, &[k]).as_str() == Some("true"));
    let mut name = st(sc, &["metadata", "name"]).to_string();
    if is_default {
        name.push_str(" (default)");
    }
    vec![
        json!(name),
        json!(st(sc, &["provisioner"])),
        json!(opt_st(sc, &["reclaimPolicy"]).unwrap_or("Delete")),
        json!(opt_st(sc, &["volumeBindingMode"]).unwrap_or("Immediate")),
        json!(at(sc, &["allowVolumeExpansion"]).as_bool().unwrap_or(false)),
        age(sc, now),
    ]
    .into()
}

const PRIORITYCLASS_COLS: &[Col] = &[
    name_col(),
    c(
        "Value",
        "integer",
        "Priority value of pods using this class.",
    ),
    c(
        "Global-Default",
        "boolean",
        "Whether this is the default priority class.",
    ),
    age_col(),
    c(
        "PreemptionPolicy",
        "string",
        "Policy for preempting lower-priority pods.",
    ),
];

fn print_priorityclass(pc: &Value, now: DateTime<Utc>) -> Printed {
    vec![
        name_of(pc),
        json!(int(pc, &["value"])),
        json!(at(pc, &["globalDefault"]).as_bool().unwrap_or(false)),
        age(pc, now),
        json!(st(pc, &["preemptionPolicy"])),
    ]
    .into()
}

const RUNTIMECLASS_COLS: &[Col] = &[
    name_col(),
    c("Handler", "string", "The CRI handler this class maps to."),
    age_col(),
];

fn print_runtimeclass(rc: &Value, now: DateTime<Utc>) -> Printed {
    vec![name_of(rc), json!(st(rc, &["handler"])), age(rc, now)].into()
}

const PDB_COLS: &[Col] = &[
    name_col(),
    c(
        "Min Available",
        "string",
        "The minimum number of pods that must be available.",
    ),
    c(
        "Max Unavailable",
        "string",
        "The maximum number of pods that may be unavailable.",
    ),
    c(
        "Allowed Disruptions",
        "integer",
        "Calculated number of pods that may be disrupted at this time.",
    ),
    age_col(),
];

fn int_or_string(v: &Value) -> String {
    match v {
        Value::Null => "N/A".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_pdb(pdb: &Value, now: DateTime<Utc>) -> Printed {
    vec![
        name_of(pdb),
        json!(int_or_string(at(pdb, &["spec", "minAvailable"]))),
        json!(int_or_string(at(pdb, &["spec", "maxUnavailable"]))),
        json!(int(pdb, &["status", "disruptionsAllowed"])),
        age(pdb, now),
    ]
    .into()
}

const WEBHOOK_COLS: &[Col] = &[
    name_col(),
    c(
        "Webhooks",
        "integer",
        "Webhooks indicates the number of webhooks registered in this configuration",
    ),
    age_col(),
];

fn print_webhook_configuration(wc: &Value, now: DateTime<Utc>) -> Printed {
    vec![
        name_of(wc),
        json!(arr(wc, &["webhooks"]).len()),
        age(wc, now),
    ]
    .into()
}

// ---------------------------------------------------------------------------
// Event
// ---------------------------------------------------------------------------

// Kubernetes' Event table does not start with Name: Name is a wide column at the end.
const EVENT_COLS: &[Col] = &[
    c(
        "Last Seen",
        "string",
        "Time since the most recent occurrence of this event.",
    ),
    c("Type", "string", "Type of this event (Normal, Warning)."),
    c(
        "Reason",
        "string",
        "Short, machine understandable reason for the event.",
    ),
    c("Object", "string", "The object this event is about."),
    w(
        "Subobject",
        "string",
        "Part of the object the event is about, if any.",
    ),
    w("Source", "string", "The component reporting this event."),
    c(
        "Message",
        "string",
        "A human-readable description of the event.",
    ),
    w(
        "First Seen",
        "string",
        "Time since the first occurrence of this event.",
    ),
    w(
        "Count",
        "integer",
        "The number of times this event has occurred.",
    ),
    Col {
        name: "Name",
        ty: "string",
        format: "name",
        priority: 1,
        desc: NAME_DESC,
    },
];

/// First non-empty string among `paths` (core/v1 and events.k8s.io/v1 field names).
fn first_st<'a>(v: &'a Value, paths: &[&[&str]]) -> &'a str {
    paths.iter().find_map(|p| opt_st(v, p)).unwrap_or("")
}

fn print_event(ev: &Value, now: DateTime<Utc>) -> Printed {
    let first_ts = first_st(ev, &[&["firstTimestamp"], &["deprecatedFirstTimestamp"]]);
    let first = if first_ts.is_empty() {
        since(ev, &["eventTime"], now)
    } else {
        since_str(first_ts, now)
    };
    let last_ts = first_st(ev, &[&["lastTimestamp"], &["deprecatedLastTimestamp"]]);
    let mut last = if last_ts.is_empty() {
        first.clone()
    } else {
        since_str(last_ts, now)
    };
    let mut count = int(ev, &["count"]).max(int(ev, &["deprecatedCount"]));
    if is_present(at(ev, &["series"])) {
        last = since(ev, &["series", "lastObservedTime"], now);
        count = int(ev, &["series", "count"]);
    } else if count == 0 {
        count = 1; // singleton events carry no count
    }

    let regarding = match at(ev, &["involvedObject"]) {
        Value::Null => at(ev, &["regarding"]),
        v => v,
    };
    let kind = st(regarding, &["kind"]).to_lowercase();
    let target = match opt_st(regarding, &["name"]) {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    };
    let component = first_st(
        ev,
        &[
            &["source", "component"],
            &["deprecatedSource", "component"],
            &["reportingController"],
        ],
    );
    let host = first_st(
        ev,
        &[
            &["source", "host"],
            &["deprecatedSource", "host"],
            &["reportingInstance"],
        ],
    );
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    let message = first_st(ev, &[&["message"], &["note"]]).trim();

    vec![
        json!(last),
        json!(st(ev, &["type"])),
        json!(st(ev, &["reason"])),
        json!(target),
        json!(st(regarding, &["fieldPath"])),
        json!(source),
        json!(message),
        json!(first),
        json!(count),
        name_of(ev),
    ]
    .into()
}

// ---------------------------------------------------------------------------
// Plugin (plugins.shoal.dev)
// ---------------------------------------------------------------------------

const PLUGIN_COLS: &[Col] = &[
    name_col(),
    c("Kind", "string", "Kind of plugin."),
    c(
        "Digest",
        "string",
        "Content digest of the plugin artifact (first 12 hex characters).",
    ),
    c("State", "string", "Current state of the plugin."),
    age_col(),
    w(
        "Reason",
        "string",
        "Why the plugin is in its current state.",
    ),
];

/// Short digest: the first 12 characters after the algorithm prefix ("sha256:").
fn short_digest(d: &str) -> String {
    let hex = d.split_once(':').map_or(d, |(_, h)| h);
    let short: String = hex.chars().take(12).collect();
    none_if_empty(short)
}

fn print_plugin(p: &Value, now: DateTime<Utc>) -> Printed {
    vec![
        name_of(p),
        json!(opt_st(p, &["spec", "kind"]).unwrap_or("<none>")),
        json!(short_digest(st(p, &["spec", "digest"]))),
        json!(opt_st(p, &["status", "state"]).unwrap_or("<none>")),
        age(p, now),
        json!(opt_st(p, &["status", "reason"]).unwrap_or("<none>")),
    ]
    .into()
}

// ---------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------

// Kubernetes' generic table for built-in kinds without a printer (e.g. Role).
const CREATED_AT_COLS: &[Col] = &[
    name_col(),
    Col {
        name: "Created At",
        ty: "date",
        format: "",
        priority: 0,
        desc: AGE_DESC,
    },
];

fn print_created_at(obj: &Value, _now: DateTime<Utc>) -> Printed {
    let created = match parse_time(st(obj, &["metadata", "creationTimestamp"])) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Secs, true),
        None => "0001-01-01T00:00:00Z".to_string(), // Go's zero time, as Kubernetes prints it
    };
    vec![name_of(obj), json!(created)].into()
}

// Name + Age, as Kubernetes shows custom resources without printer columns.
const DEFAULT_COLS: &[Col] = &[
    name_col(),
    Col {
        name: "Age",
        ty: "date",
        format: "",
        priority: 0,
        desc: AGE_DESC,
    },
];

const HPA_COLS: &[Col] = &[
    name_col(),
    c("Reference", "string", "Reference to the scaled resource."),
    c(
        "Targets",
        "string",
        "Current and target values of the metrics.",
    ),
    c("MinPods", "string", "Lower limit for the number of pods."),
    c("MaxPods", "integer", "Upper limit for the number of pods."),
    c("Replicas", "integer", "Current number of replicas."),
    age_col(),
];

/// `cpu: 60%/50%` per Resource metric, as kubectl prints HPA targets.
fn hpa_targets(hpa: &Value) -> String {
    let specs = arr(hpa, &["spec", "metrics"]);
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = arr(hpa, &["status", "currentMetrics"]);
    let mut list = Vec::new();
    for (i, m) in specs.iter().enumerate() {
        let ty = st(m, &["type"]);
        let (src, name) = match ty {
            "Resource" => ("resource", st(m, &["resource", "name"]).to_string()),
            "ContainerResource" => (
                "containerResource",
                format!(
                    "{} (container {})",
                    st(m, &["containerResource", "name"]),
                    st(m, &["containerResource", "container"])
                ),
            ),
            _ => {
                list.push(format!("<{ty} metric>"));
                continue;
            }
        };
        let target = at(m, &[src, "target"]);
        let current = statuses.get(i).map(|s| at(s, &[src, "current"]));
        let entry = if is_present(at(target, &["averageValue"])) {
            let cur = current
                .and_then(|c| c.get("averageValue"))
                .map(quantity)
                .unwrap_or_else(|| "<unknown>".into());
            format!("{name}: {cur}/{}", quantity(at(target, &["averageValue"])))
        } else {
            let cur = current
                .and_then(|c| c.get("averageUtilization"))
                .and_then(Value::as_i64)
                .map(|u| format!("{u}%"))
                .unwrap_or_else(|| "<unknown>".into());
            let tgt = at(target, &["averageUtilization"])
                .as_i64()
                .map(|u| format!("{u}%"))
                .unwrap_or_else(|| "<auto>".into());
            format!("{name}: {cur}/{tgt}")
        };
        list.push(entry);
    }
    if list.len() > 2 {
        let more = list.len() - 2;
        list.truncate(2);
        return format!("{} + {more} more...", list.join(", "));
    }
    list.join(", ")
}

fn print_hpa(hpa: &Value, now: DateTime<Utc>) -> Printed {
    let min = at(hpa, &["spec", "minReplicas"])
        .as_i64()
        .map(|n| n.to_string())
        .unwrap_or_else(|| "<unset>".into());
    vec![
        name_of(hpa),
        json!(format!(
            "{}/{}",
            st(hpa, &["spec", "scaleTargetRef", "kind"]),
            st(hpa, &["spec", "scaleTargetRef", "name"])
        )),
        json!(hpa_targets(hpa)),
        json!(min),
        json!(int(hpa, &["spec", "maxReplicas"])),
        json!(int(hpa, &["status", "currentReplicas"])),
        age(hpa, now),
    ]
    .into()
}

fn print_default(obj: &Value, now: DateTime<Utc>) -> Printed {
    vec![name_of(obj), age(obj, now)].into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap()
    }

    fn col_names(t: &Value) -> Vec<String> {
        t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn cells(t: &Value, row: usize) -> Vec<Value> {
        t["rows"][row]["cells"].as_array().unwrap().clone()
    }

    /// Cell by column name.
    fn cell(t: &Value, row: usize, name: &str) -> Value {
        let idx = col_names(t)
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no column {name}"));
        cells(t, row)[idx].clone()
    }

    fn one(kind: &str, item: Value) -> Value {
        table(kind, "v1", &[item], IncludeObject::None, json!({}), now())
    }

    fn running_pod() -> Value {
        json!({
            "metadata": {"name": "web-0", "namespace": "default", "creationTimestamp": "2024-06-01T11:55:00Z"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}, {"name": "sidecar"}]},
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.5",
                "podIPs": [{"ip": "10.0.0.5"}],
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": "app", "ready": true, "restartCount": 2, "state": {"running": {"startedAt": "2024-06-01T11:56:00Z"}}},
                    {"name": "sidecar", "ready": false, "restartCount": 1, "state": {"running": {"startedAt": "2024-06-01T11:56:00Z"}}}
                ]
            }
        })
    }

    #[test]
    fn pod_running_two_containers_one_not_ready() {
        let t = one("Pod", running_pod());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            col_names(&t),
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        let cols = t["columnDefinitions"].as_array().unwrap();
        assert_eq!(cols[0]["format"], "name");
        assert_eq!(cols[0]["type"], "string");
        assert_eq!(cols[3]["type"], "integer");
        let prios: Vec<i64> = cols
            .iter()
            .map(|c| c["priority"].as_i64().unwrap())
            .collect();
        assert_eq!(prios, [0, 0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("web-0"),
                json!("1/2"),
                json!("Running"),
                json!(3),
                json!("5m"),
                json!("10.0.0.5"),
                json!("node-a"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        assert!(t["rows"][0].get("object").is_none());
    }

    #[test]
    fn pod_terminating() {
        let mut p = running_pod();
        p["metadata"]["deletionTimestamp"] = json!("2024-06-01T11:59:00Z");
        let t = one("Pod", p);
        assert_eq!(cell(&t, 0, "Status"), "Terminating");

        // A finished pod being deleted keeps its terminal phase.
        let mut done = running_pod();
        done["metadata"]["deletionTimestamp"] = json!("2024-06-01T11:59:00Z");
        done["status"] = json!({"phase": "Succeeded"});
        let t = one("Pod", done);
        assert_eq!(cell(&t, 0, "Status"), "Succeeded");
        assert_eq!(t["rows"][0]["conditions"][0]["type"], "Completed");

        // Node lost.
        let mut lost = running_pod();
        lost["metadata"]["deletionTimestamp"] = json!("2024-06-01T11:59:00Z");
        lost["status"]["reason"] = json!("NodeLost");
        assert_eq!(cell(&one("Pod", lost), 0, "Status"), "Unknown");
    }

    #[test]
    fn pod_crash_loop_backoff() {
        let p = json!({
            "metadata": {"name": "crashy", "creationTimestamp": "2024-06-01T10:00:00Z"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {
                "phase": "Running",
                "containerStatuses": [{
                    "name": "app", "ready": false, "restartCount": 5,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2024-06-01T11:58:00Z"}}
                }]
            }
        });
        let t = one("Pod", p);
        assert_eq!(cell(&t, 0, "Ready"), "0/1");
        assert_eq!(cell(&t, 0, "Status"), "CrashLoopBackOff");
        assert_eq!(cell(&t, 0, "Restarts"), 5);
        assert_eq!(cell(&t, 0, "Age"), "120m");
    }

    #[test]
    fn pod_other_statuses() {
        // No status at all.
        let t = one(
            "Pod",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}),
        );
        assert_eq!(
            cells(&t, 0)[1..5].to_vec(),
            vec![json!("0/1"), json!("Pending"), json!(0), json!("<unknown>")]
        );

        // ContainerCreating.
        let t = one(
            "Pod",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]},
                   "status": {"phase": "Pending", "containerStatuses": [{"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}),
        );
        assert_eq!(cell(&t, 0, "Status"), "ContainerCreating");

        // Completed.
        let t = one(
            "Pod",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]},
                   "status": {"phase": "Succeeded", "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}),
        );
        assert_eq!(cell(&t, 0, "Status"), "Completed");

        // Exit code without a reason.
        let t = one(
            "Pod",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]},
                   "status": {"phase": "Failed", "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 137}}}]}}),
        );
        assert_eq!(cell(&t, 0, "Status"), "ExitCode:137");

        // Waiting on an init container.
        let init = json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending",
                "initContainerStatuses": [{"name": "init", "restartCount": 0, "state": {"running": {}}}],
                "containerStatuses": [{"name": "a", "state": {"waiting": {"reason": "PodInitializing"}}}]}
        });
        assert_eq!(cell(&one("Pod", init), 0, "Status"), "Init:0/1");

        // Failing init container.
        let init_crash = json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending",
                "initContainerStatuses": [{"name": "init", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        });
        let t = one("Pod", init_crash);
        assert_eq!(cell(&t, 0, "Status"), "Init:CrashLoopBackOff");
        assert_eq!(cell(&t, 0, "Restarts"), 3);

        // Sidecar (restartable init container) counts toward Ready.
        let sidecar = json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "proxy", "restartPolicy": "Always"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"}],
                "initContainerStatuses": [{"name": "proxy", "started": true, "ready": true, "restartCount": 1, "state": {"running": {}}}],
                "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}]}
        });
        let t = one("Pod", sidecar);
        assert_eq!(cell(&t, 0, "Ready"), "2/2");
        assert_eq!(cell(&t, 0, "Status"), "Running");
        assert_eq!(cell(&t, 0, "Restarts"), 1);

        // Readiness gates.
        let mut gated = running_pod();
        gated["spec"]["readinessGates"] =
            json!([{"conditionType": "x/ok"}, {"conditionType": "x/other"}]);
        gated["status"]["conditions"] = json!([{"type": "x/ok", "status": "True"}]);
        assert_eq!(cell(&one("Pod", gated), 0, "Readiness Gates"), "1/2");
    }

    #[test]
    fn deployment() {
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-05-30T12:00:00Z"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]},
                "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "log", "image": "busybox"}]}}
            },
            "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        let t = one("Deployment", d);
        assert_eq!(
            col_names(&t),
            [
                "Name",
                "Ready",
                "Up-to-date",
                "Available",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(t["columnDefinitions"][2]["type"], "integer");
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("2d"),
                json!("nginx,log"),
                json!("nginx:1.27,busybox"),
                json!("app=web,tier in (edge,front)")
            ]
        );

        // Fresh deployment without status.
        let t = one(
            "Deployment",
            json!({"metadata": {"name": "new"}, "spec": {"replicas": 2}}),
        );
        assert_eq!(
            cells(&t, 0)[1..4].to_vec(),
            vec![json!("0/2"), json!(0), json!(0)]
        );
    }

    #[test]
    fn service_node_port() {
        let s = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-06-01T11:59:30Z"},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10"],
                "selector": {"tier": "front", "app": "web"},
                "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]
            }
        });
        let t = one("Service", s);
        assert_eq!(
            col_names(&t),
            [
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age",
                "Selector"
            ]
        );
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("web"),
                json!("NodePort"),
                json!("10.96.0.10"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP"),
                json!("30s"),
                json!("app=web,tier=front")
            ]
        );

        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.11", "ports": [{"port": 443}]}});
        let t = one("Service", lb);
        assert_eq!(cell(&t, 0, "External-IP"), "<pending>");
        assert_eq!(cell(&t, 0, "Port(s)"), "443/TCP");
        assert_eq!(cell(&t, 0, "Selector"), "<none>");

        let lb_ready = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "a.example"}]}}});
        let t = one("Service", lb_ready);
        assert_eq!(cell(&t, 0, "External-IP"), "203.0.113.9,a.example");
        assert_eq!(cell(&t, 0, "Cluster-IP"), "<none>");
        assert_eq!(cell(&t, 0, "Port(s)"), "<none>");
    }

    #[test]
    fn node_not_ready_scheduling_disabled() {
        let n = json!({
            "metadata": {"name": "node-a", "creationTimestamp": "2024-05-01T12:00:00Z",
                "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/etcd": "", "kubernetes.io/hostname": "node-a"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "Unknown"}],
                "addresses": [{"type": "Hostname", "address": "node-a"}, {"type": "InternalIP", "address": "192.168.1.10"}],
                "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian GNU/Linux 12", "kernelVersion": "6.1.0", "containerRuntimeVersion": "shoal://0.1"}
            }
        });
        let t = one("Node", n);
        assert_eq!(
            col_names(&t),
            [
                "Name",
                "Status",
                "Roles",
                "Age",
                "Version",
                "Internal-IP",
                "External-IP",
                "OS-Image",
                "Kernel-Version",
                "Container-Runtime"
            ]
        );
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("node-a"),
                json!("NotReady,SchedulingDisabled"),
                json!("control-plane,etcd"),
                json!("31d"),
                json!("v1.32.0"),
                json!("192.168.1.10"),
                json!("<none>"),
                json!("Debian GNU/Linux 12"),
                json!("6.1.0"),
                json!("shoal://0.1")
            ]
        );
        let t = one("Node", json!({"metadata": {"name": "bare"}}));
        assert_eq!(
            cells(&t, 0)[1..3].to_vec(),
            vec![json!("Unknown"), json!("<none>")]
        );
        let ready = json!({"metadata": {"name": "ok"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(cell(&one("Node", ready), 0, "Status"), "Ready");
    }

    #[test]
    fn include_object_modes() {
        assert_eq!(IncludeObject::parse(None), IncludeObject::Metadata);
        assert_eq!(IncludeObject::parse(Some("None")), IncludeObject::None);
        assert_eq!(
            IncludeObject::parse(Some("Metadata")),
            IncludeObject::Metadata
        );
        assert_eq!(IncludeObject::parse(Some("Object")), IncludeObject::Object);
        assert_eq!(IncludeObject::parse(Some("bogus")), IncludeObject::Metadata);
        assert_eq!(IncludeObject::default(), IncludeObject::Metadata);

        let item = json!({"metadata": {"name": "cm", "namespace": "ns", "resourceVersion": "7"}, "data": {"a": "1"}});
        let list_meta = json!({"resourceVersion": "42", "continue": "tok"});

        let t = table(
            "ConfigMap",
            "v1",
            std::slice::from_ref(&item),
            IncludeObject::Metadata,
            list_meta.clone(),
            now(),
        );
        assert_eq!(t["metadata"], list_meta);
        assert_eq!(
            t["rows"][0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]})
        );

        let t = table(
            "ConfigMap",
            "v1",
            std::slice::from_ref(&item),
            IncludeObject::Object,
            json!(null),
            now(),
        );
        let obj = &t["rows"][0]["object"];
        assert_eq!(obj["kind"], "ConfigMap");
        assert_eq!(obj["apiVersion"], "v1");
        assert_eq!(obj["data"], item["data"]);
        assert_eq!(obj["metadata"], item["metadata"]);
        assert_eq!(t["metadata"], json!({}));

        let t = table(
            "ConfigMap",
            "v1",
            &[item],
            IncludeObject::None,
            json!({}),
            now(),
        );
        assert!(t["rows"][0].get("object").is_none());
        assert_eq!(
            cells(&t, 0),
            vec![json!("cm"), json!(1), json!("<unknown>")]
        );

        let t = table(
            "ConfigMap",
            "v1",
            &[],
            IncludeObject::Metadata,
            json!({}),
            now(),
        );
        assert_eq!(t["rows"], json!([]));
        assert_eq!(col_names(&t), ["Name", "Data", "Age"]);
    }

    #[test]
    fn human_durations() {
        let s = |n: i64| human_duration(Duration::seconds(n));
        assert_eq!(s(-5), "<invalid>");
        assert_eq!(s(-1), "0s");
        assert_eq!(s(0), "0s");
        assert_eq!(s(5), "5s");
        assert_eq!(s(119), "119s");
        assert_eq!(s(120), "2m");
        assert_eq!(s(150), "2m30s");
        assert_eq!(s(599), "9m59s");
        assert_eq!(s(600), "10m");
        assert_eq!(s(3 * 3600 - 1), "179m");
        assert_eq!(s(3 * 3600), "3h");
        assert_eq!(s(3 * 3600 + 25 * 60), "3h25m");
        assert_eq!(s(8 * 3600), "8h");
        assert_eq!(s(47 * 3600 + 59 * 60), "47h");
        assert_eq!(s(48 * 3600), "2d");
        assert_eq!(s(5 * 86400 + 3 * 3600), "5d3h");
        assert_eq!(s(8 * 86400), "8d");
        assert_eq!(s(729 * 86400), "729d");
        assert_eq!(s(730 * 86400), "2y");
        assert_eq!(s(800 * 86400), "2y70d");
        assert_eq!(s(8 * 365 * 86400), "8y");
        assert_eq!(s(10 * 365 * 86400 + 100 * 86400), "10y");
        assert_eq!(human_duration(Duration::milliseconds(-1500)), "0s");
    }

    #[test]
    fn unknown_kind_gets_default_table() {
        let item = json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w1", "creationTimestamp": "2024-06-01T09:00:00Z"}, "spec": {"size": 3}});
        let t = table(
            "Widget",
            "example.com/v1",
            &[item],
            IncludeObject::Object,
            json!({"resourceVersion": "1"}),
            now(),
        );
        assert_eq!(col_names(&t), ["Name", "Age"]);
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(cells(&t, 0), vec![json!("w1"), json!("3h")]);
        assert_eq!(t["rows"][0]["object"]["spec"]["size"], 3);
    }

    #[test]
    fn roles_and_bindings() {
        let role =
            json!({"metadata": {"name": "reader", "creationTimestamp": "2024-01-02T03:04:05Z"}});
        let t = one("ClusterRole", role);
        assert_eq!(col_names(&t), ["Name", "Created At"]);
        assert_eq!(
            cells(&t, 0),
            vec![json!("reader"), json!("2024-01-02T03:04:05Z")]
        );

        let rb = json!({
            "metadata": {"name": "rb", "creationTimestamp": "2024-06-01T11:00:00Z"},
            "roleRef": {"kind": "ClusterRole", "name": "view", "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "bot", "namespace": "ci"},
                         {"kind": "Group", "name": "devs"}, {"kind": "User", "name": "bob"}]
        });
        let t = one("RoleBinding", rb);
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("rb"),
                json!("ClusterRole/view"),
                json!("60m"),
                json!("alice, bob"),
                json!("devs"),
                json!("ci/bot")
            ]
        );
    }

    #[test]
    fn event_columns() {
        let ev = json!({
            "metadata": {"name": "web-0.17d", "creationTimestamp": "2024-06-01T11:50:00Z"},
            "involvedObject": {"kind": "Pod", "name": "web-0", "fieldPath": "spec.containers{app}"},
            "reason": "BackOff", "type": "Warning", "message": "Back-off restarting failed container\n",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": "2024-06-01T11:50:00Z", "lastTimestamp": "2024-06-01T11:59:00Z", "count": 7
        });
        let t = one("Event", ev);
        assert_eq!(
            col_names(&t),
            [
                "Last Seen",
                "Type",
                "Reason",
                "Object",
                "Subobject",
                "Source",
                "Message",
                "First Seen",
                "Count",
                "Name"
            ]
        );
        assert_eq!(t["columnDefinitions"][9]["format"], "name");
        assert_eq!(t["columnDefinitions"][9]["priority"], 1);
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("60s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/web-0"),
                json!("spec.containers{app}"),
                json!("kubelet, node-a"),
                json!("Back-off restarting failed container"),
                json!("10m"),
                json!(7),
                json!("web-0.17d")
            ]
        );

        // events.k8s.io/v1 shape, singleton.
        let ev2 = json!({"metadata": {"name": "e2"}, "regarding": {"kind": "Node", "name": "n1"},
            "note": "hello", "reportingController": "shoal-node", "eventTime": "2024-06-01T11:59:55.000000Z", "type": "Normal", "reason": "Ok"});
        let t = one("Event", ev2);
        assert_eq!(cell(&t, 0, "Last Seen"), "5s");
        assert_eq!(cell(&t, 0, "Object"), "node/n1");
        assert_eq!(cell(&t, 0, "Source"), "shoal-node");
        assert_eq!(cell(&t, 0, "Message"), "hello");
        assert_eq!(cell(&t, 0, "Count"), 1);
    }

    #[test]
    fn endpoints_and_slices() {
        let ep = json!({"metadata": {"name": "svc"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "fd00::3"}], "ports": [{"port": 80}, {"port": 443}]}
        ]});
        assert_eq!(
            cell(&one("Endpoints", ep), 0, "Endpoints"),
            "10.0.0.1:80,10.0.0.2:80,[fd00::3]:80 + 3 more..."
        );
        assert_eq!(
            cell(
                &one("Endpoints", json!({"metadata": {"name": "e"}})),
                0,
                "Endpoints"
            ),
            "<none>"
        );

        let es = json!({"metadata": {"name": "svc-abc"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}, {"name": "named"}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
        let t = one("EndpointSlice", es);
        assert_eq!(
            cells(&t, 0)[..4].to_vec(),
            vec![
                json!("svc-abc"),
                json!("IPv4"),
                json!("80,named"),
                json!("10.0.0.1,10.0.0.2")
            ]
        );
        let empty = one(
            "EndpointSlice",
            json!({"metadata": {"name": "x"}, "addressType": "IPv4"}),
        );
        assert_eq!(cell(&empty, 0, "Ports"), "<unset>");
    }

    #[test]
    fn jobs_and_cronjobs() {
        let job = json!({
            "metadata": {"name": "j", "creationTimestamp": "2024-06-01T11:00:00Z"},
            "spec": {"completions": 3, "selector": {"matchLabels": {"job-name": "j"}},
                     "template": {"spec": {"containers": [{"name": "w", "image": "busybox"}]}}},
            "status": {"succeeded": 3, "startTime": "2024-06-01T11:00:00Z", "completionTime": "2024-06-01T11:00:42Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}
        });
        let t = one("Job", job);
        assert_eq!(
            col_names(&t),
            [
                "Name",
                "Status",
                "Completions",
                "Duration",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("j"),
                json!("Complete"),
                json!("3/3"),
                json!("42s"),
                json!("60m"),
                json!("w"),
                json!("busybox"),
                json!("job-name=j")
            ]
        );
        let running = json!({"metadata": {"name": "r"}, "spec": {"parallelism": 2}, "status": {"startTime": "2024-06-01T11:58:00Z"}});
        let t = one("Job", running);
        assert_eq!(
            cells(&t, 0)[1..4].to_vec(),
            vec![json!("Running"), json!("0/1 of 2"), json!("2m")]
        );

        let cj = json!({"metadata": {"name": "c"}, "spec": {"schedule": "*/5 * * * *", "suspend": false},
                        "status": {"active": [{"name": "c-1"}], "lastScheduleTime": "2024-06-01T11:55:00Z"}});
        let t = one("CronJob", cj);
        assert_eq!(
            col_names(&t)[..7].to_vec(),
            [
                "Name",
                "Schedule",
                "Timezone",
                "Suspend",
                "Active",
                "Last Schedule",
                "Age"
            ]
        );
        assert_eq!(
            cells(&t, 0)[..6].to_vec(),
            vec![
                json!("c"),
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("5m")
            ]
        );
    }

    #[test]
    fn simple_kinds() {
        let t = one("Namespace", json!({"metadata": {"name": "default"}}));
        assert_eq!(
            cells(&t, 0)[..2].to_vec(),
            vec![json!("default"), json!("Active")]
        );

        let t = one(
            "Secret",
            json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}),
        );
        assert_eq!(col_names(&t), ["Name", "Type", "Data", "Age"]);
        assert_eq!(
            cells(&t, 0)[..3].to_vec(),
            vec![json!("s"), json!("kubernetes.io/tls"), json!(2)]
        );

        let t = one(
            "ConfigMap",
            json!({"metadata": {"name": "c"}, "data": {"a": "1"}, "binaryData": {"b": "AA=="}}),
        );
        assert_eq!(cell(&t, 0, "Data"), 2);

        let t = one("ServiceAccount", json!({"metadata": {"name": "default"}}));
        assert_eq!(col_names(&t), ["Name", "Secrets", "Age"]);
        assert_eq!(cell(&t, 0, "Secrets"), 0);

        let t = one(
            "Lease",
            json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "node-a"}}),
        );
        assert_eq!(cell(&t, 0, "Holder"), "node-a");

        let rs = json!({"metadata": {"name": "rs"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}}},
                        "status": {"replicas": 2, "readyReplicas": 1}});
        let t = one("ReplicaSet", rs);
        assert_eq!(
            cells(&t, 0)[..4].to_vec(),
            vec![json!("rs"), json!(2), json!(2), json!(1)]
        );
        assert_eq!(cell(&t, 0, "Selector"), "a=b");

        let ds = json!({"metadata": {"name": "ds"}, "spec": {"template": {"spec": {"nodeSelector": {"os": "linux"}}}},
                        "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}});
        let t = one("DaemonSet", ds);
        assert_eq!(
            col_names(&t)[..8].to_vec(),
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Up-to-date",
                "Available",
                "Node Selector",
                "Age"
            ]
        );
        assert_eq!(
            cells(&t, 0)[..7].to_vec(),
            vec![
                json!("ds"),
                json!(3),
                json!(3),
                json!(2),
                json!(3),
                json!(2),
                json!("os=linux")
            ]
        );

        let t = one(
            "StatefulSet",
            json!({"metadata": {"name": "db"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 3}}),
        );
        assert_eq!(cell(&t, 0, "Ready"), "3/3");

        let pvc = json!({"metadata": {"name": "data"}, "spec": {"volumeName": "pv-1", "storageClassName": "local"},
                         "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"]}});
        let t = one("PersistentVolumeClaim", pvc);
        assert_eq!(
            cells(&t, 0)[..7].to_vec(),
            vec![
                json!("data"),
                json!("Bound"),
                json!("pv-1"),
                json!("10Gi"),
                json!("RWO,RWX"),
                json!("local"),
                json!("<unset>")
            ]
        );
        let pv = json!({"metadata": {"name": "pv-1"}, "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Delete", "claimRef": {"namespace": "default", "name": "data"}},
                        "status": {"phase": "Bound"}});
        let t = one("PersistentVolume", pv);
        assert_eq!(
            cells(&t, 0)[..6].to_vec(),
            vec![
                json!("pv-1"),
                json!("10Gi"),
                json!("RWO"),
                json!("Delete"),
                json!("Bound"),
                json!("default/data")
            ]
        );
    }

    #[test]
    fn plugin() {
        let p = json!({"apiVersion": "plugins.shoal.dev/v1alpha1", "kind": "Plugin",
            "metadata": {"name": "netfilter", "creationTimestamp": "2024-06-01T11:59:50Z"},
            "spec": {"kind": "Network", "digest": "sha256:0123456789abcdef0123456789abcdef"},
            "status": {"state": "Failed", "reason": "ImagePullError"}});
        let t = table(
            "Plugin",
            "plugins.shoal.dev/v1alpha1",
            &[p],
            IncludeObject::None,
            json!({}),
            now(),
        );
        assert_eq!(
            col_names(&t),
            ["Name", "Kind", "Digest", "State", "Age", "Reason"]
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("netfilter"),
                json!("Network"),
                json!("0123456789ab"),
                json!("Failed"),
                json!("10s"),
                json!("ImagePullError")
            ]
        );
        let bare = one("Plugin", json!({"metadata": {"name": "x"}}));
        assert_eq!(
            cells(&bare, 0)[1..4].to_vec(),
            vec![json!("<none>"), json!("<none>"), json!("<none>")]
        );
    }

    #[test]
    fn label_selectors() {
        let sel = json!({"matchExpressions": [
            {"key": "z", "operator": "Exists"},
            {"key": "a", "operator": "NotIn", "values": ["y", "x"]},
            {"key": "m", "operator": "DoesNotExist"}
        ]});
        assert_eq!(selector_string(&sel).unwrap(), "a notin (x,y),!m,z");
        assert_eq!(format_label_selector(&json!({})), "<none>");
        assert_eq!(format_label_selector(&Value::Null), "<none>");
        assert_eq!(
            format_label_selector(&json!({"matchExpressions": [{"key": "k", "operator": "Bad"}]})),
            "<error>"
        );
    }

    #[test]
    fn every_printer_fills_every_column() {
        let kinds = [
            "Pod",
            "Node",
            "Deployment",
            "ReplicaSet",
            "ReplicationController",
            "DaemonSet",
            "StatefulSet",
            "Service",
            "Namespace",
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Endpoints",
            "EndpointSlice",
            "Event",
            "Lease",
            "Job",
            "CronJob",
            "Role",
            "ClusterRole",
            "RoleBinding",
            "ClusterRoleBinding",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "Ingress",
            "IngressClass",
            "StorageClass",
            "PriorityClass",
            "RuntimeClass",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
            "ControllerRevision",
            "Plugin",
            "Anything",
        ];
        for kind in kinds {
            for item in [json!({}), json!({"metadata": {"name": "x"}}), json!(null)] {
                let t = table(
                    kind,
                    "v1",
                    &[item],
                    IncludeObject::Metadata,
                    json!({}),
                    now(),
                );
                let ncols = t["columnDefinitions"].as_array().unwrap().len();
                assert_eq!(cells(&t, 0).len(), ncols, "{kind}");
                for col in t["columnDefinitions"].as_array().unwrap() {
                    assert!(
                        col["description"].as_str().is_some_and(|d| !d.is_empty()),
                        "{kind}"
                    );
                }
                if kind != "Event" {
                    assert_eq!(t["columnDefinitions"][0]["name"], "Name", "{kind}");
                }
            }
        }
    }
}
