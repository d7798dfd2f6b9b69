//! Defaulting and validation of objects, per kind, on `serde_json::Value`
//! (after the typed codec has checked field types).

use super::error::Cause;
use super::resources::ResourceInfo;
use serde_json::{json, Map, Value};

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return false;
        }
    }
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name(s) && !s.contains('/')
}

const DNS_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Validate an object name for a kind (empty names are reported too).
pub fn check_name(info: &ResourceInfo, name: &str, field: &str) -> Option<Cause> {
    if name.is_empty() {
        return Some(Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value: name or generateName is required".into(),
        });
    }
    let (ok, msg) = match info.kind {
        "Namespace" => (is_dns_label(name), DNS_LABEL_MSG),
        "Service" => (is_dns1035_label(name), DNS1035_MSG),
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => (
            !name.contains('/') && !name.contains('%') && name != "." && name != "..",
            "may not contain '/' or '%'",
        ),
        _ => (is_dns_subdomain(name), DNS_SUBDOMAIN_MSG),
    };
    (!ok).then(|| Cause::invalid(field, name, msg))
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

/// Set `path` to `default` when missing or null, creating parent maps.
fn set_default(v: &mut Value, path: &[&str], default: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for p in parents {
        if !cur.is_object() {
            return;
        }
        let m = cur.as_object_mut().expect("object");
        cur = m
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
    }
    if let Some(m) = cur.as_object_mut() {
        match m.get(*last) {
            Some(x) if !x.is_null() => {}
            _ => {
                m.insert(last.to_string(), default);
            }
        }
    }
}

fn for_each_mut(v: &mut Value, path: &[&str], mut f: impl FnMut(&mut Value)) {
    let mut cur = v;
    for p in path {
        match cur.get_mut(p) {
            Some(x) => cur = x,
            None => return,
        }
    }
    if let Some(items) = cur.as_array_mut() {
        items.iter_mut().for_each(&mut f);
    }
}

fn image_pull_policy(image: &str) -> &'static str {
    // `:latest` or no tag (and no digest) means Always, as Kubernetes defaults.
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_container(c: &mut Value) {
    if let Some(img) = str_at(c, &["image"]).map(str::to_string) {
        set_default(c, &["imagePullPolicy"], json!(image_pull_policy(&img)));
    }
    set_default(
        c,
        &["terminationMessagePath"],
        json!("/dev/termination-log"),
    );
    set_default(c, &["terminationMessagePolicy"], json!("File"));
    set_default(c, &["resources"], json!({}));
    for_each_mut(c, &["ports"], |p| {
        set_default(p, &["protocol"], json!("TCP"))
    });
}

fn default_pod_spec(spec: &mut Value) {
    set_default(spec, &["restartPolicy"], json!("Always"));
    set_default(spec, &["terminationGracePeriodSeconds"], json!(30));
    set_default(spec, &["dnsPolicy"], json!("ClusterFirst"));
    set_default(spec, &["securityContext"], json!({}));
    set_default(spec, &["schedulerName"], json!("default-scheduler"));
    set_default(spec, &["enableServiceLinks"], json!(true));
    for list in ["containers", "initContainers"] {
        for_each_mut(spec, &[list], default_container);
    }
    if let Some(sa) = str_at(spec, &["serviceAccountName"]).map(str::to_string) {
        set_default(spec, &["serviceAccount"], json!(sa));
    } else if let Some(sa) = str_at(spec, &["serviceAccount"]).map(str::to_string) {
        set_default(spec, &["serviceAccountName"], json!(sa));
    }
    for_each_mut(spec, &["volumes"], |v| {
        for (kind, mode) in [("configMap", "defaultMode"), ("secret", "defaultMode")] {
            if v.get(kind).is_some() {
                set_default(v, &[kind, mode], json!(420));
            }
        }
    });
}

/// `tolerationSeconds` of the not-ready and unreachable tolerations pods get
/// by default; process-wide, set once by the server from its flags.
static DEFAULT_TOLERATION_SECONDS: [std::sync::atomic::AtomicI64; 2] = [
    std::sync::atomic::AtomicI64::new(300),
    std::sync::atomic::AtomicI64::new(300),
];

/// Set the `tolerationSeconds` of the default not-ready and unreachable
/// tolerations (`--default-not-ready-toleration-seconds`, `--default-unreachable-toleration-seconds`).
pub fn set_default_toleration_seconds(not_ready: i64, unreachable: i64) {
    use std::sync::atomic::Ordering::Relaxed;
    DEFAULT_TOLERATION_SECONDS[0].store(not_ready, Relaxed);
    DEFAULT_TOLERATION_SECONDS[1].store(unreachable, Relaxed);
}

/// Kubernetes' DefaultTolerationSeconds admission: a pod that does not
/// tolerate the not-ready or unreachable NoExecute taint gets a toleration
/// for it with a time limit, so it is evicted from a failed node after that.
fn default_toleration_seconds(spec: &mut Value) {
    use crate::controllers::nodelifecycle::{tolerates, TAINT_NOT_READY, TAINT_UNREACHABLE};
    if !spec.is_object() {
        return;
    }
    for (i, key) in [TAINT_NOT_READY, TAINT_UNREACHABLE].into_iter().enumerate() {
        let taint = json!({"key": key, "effect": "NoExecute"});
        let list = spec
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if list.iter().any(|t| tolerates(t, &taint)) {
            continue;
        }
        let seconds = DEFAULT_TOLERATION_SECONDS[i].load(std::sync::atomic::Ordering::Relaxed);
        let mut list = list;
        list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        spec["tolerations"] = Value::Array(list);
    }
}

/// A Secret's write-only `stringData` merged into `data` (base64), its keys
/// winning, and dropped, as Kubernetes does when it converts a v1 Secret.
fn merge_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    let data = obj["data"].as_object_mut().expect("data is an object");
    for (k, v) in strings {
        if let Value::String(s) = v {
            data.insert(
                k,
                Value::String(base64::engine::general_purpose::STANDARD.encode(s)),
            );
        }
    }
}

/// Apply Kubernetes defaults to a new or updated object.
pub fn default_object(info: &ResourceInfo, obj: &mut Value) {
    match info.kind {
        "Namespace" => {
            set_default(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            set_default(obj, &["status", "phase"], json!("Active"));
        }
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
                set_default(spec, &["serviceAccountName"], json!("default"));
                set_default(spec, &["serviceAccount"], json!("default"));
                set_default(spec, &["priority"], json!(0));
                default_toleration_seconds(spec);
            }
            set_default(obj, &["status", "phase"], json!("Pending"));
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            if info.kind != "DaemonSet" {
                set_default(obj, &["spec", "replicas"], json!(1));
            }
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            if info.kind == "StatefulSet" {
                default_statefulset(obj);
            }
            if info.kind == "Deployment" {
                set_default(obj, &["spec", "progressDeadlineSeconds"], json!(600));
                set_default(obj, &["spec", "strategy", "type"], json!("RollingUpdate"));
                if str_at(obj, &["spec", "strategy", "type"]) == Some("RollingUpdate") {
                    set_default(
                        obj,
                        &["spec", "strategy", "rollingUpdate", "maxUnavailable"],
                        json!("25%"),
                    );
                    set_default(
                        obj,
                        &["spec", "strategy", "rollingUpdate", "maxSurge"],
                        json!("25%"),
                    );
                }
            }
            if info.kind == "ReplicaSet" {
                if let Some(m) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    m.remove("revisionHistoryLimit");
                }
            }
            if let Some(spec) = obj
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .and_then(|t| t.get_mut("spec"))
            {
                default_pod_spec(spec);
            }
        }
        "Job" => {
            // The generated selector and template labels Kubernetes adds
            // (unless the user manages the selector).
            if get(obj, &["spec", "manualSelector"]).and_then(Value::as_bool) != Some(true) {
                if let Some(uid) = str_at(obj, &["metadata", "uid"]).map(str::to_string) {
                    let name = str_at(obj, &["metadata", "name"]).unwrap_or("").to_string();
                    set_default(
                        obj,
                        &["spec", "selector"],
                        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                    );
                    let mut labels = vec![
                        ("batch.kubernetes.io/controller-uid", uid.clone()),
                        ("controller-uid", uid),
                    ];
                    if name.len() <= 63 {
                        labels.push(("batch.kubernetes.io/job-name", name.clone()));
                        labels.push(("job-name", name));
                    }
                    for (k, v) in labels {
                        set_default(
                            obj,
                            &["spec", "template", "metadata", "labels", k],
                            json!(v),
                        );
                    }
                }
            }
            set_default(obj, &["spec", "parallelism"], json!(1));
            set_default(obj, &["spec", "completions"], json!(1));
            set_default(obj, &["spec", "backoffLimit"], json!(6));
            set_default(obj, &["spec", "completionMode"], json!("NonIndexed"));
            set_default(obj, &["spec", "suspend"], json!(false));
            if let Some(spec) = obj
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .and_then(|t| t.get_mut("spec"))
            {
                default_pod_spec(spec);
            }
        }
        "Service" => {
            set_default(obj, &["spec", "type"], json!("ClusterIP"));
            set_default(obj, &["spec", "sessionAffinity"], json!("None"));
            // Kubernetes defaults it for every type but ExternalName
            // (headless Services included).
            if str_at(obj, &["spec", "type"]) != Some("ExternalName") {
                set_default(obj, &["spec", "internalTrafficPolicy"], json!("Cluster"));
            }
            for_each_mut(obj, &["spec", "ports"], |p| {
                set_default(p, &["protocol"], json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    set_default(p, &["targetPort"], port);
                }
            });
        }
        "Secret" => {
            set_default(obj, &["type"], json!("Opaque"));
            merge_string_data(obj);
        }
        "HorizontalPodAutoscaler" => default_hpa(obj),
        "PersistentVolume" | "PersistentVolumeClaim" | "StorageClass" => {
            default_storage(info.kind, obj)
        }
        _ => {}
    }
}

fn check_labels(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(labels) = get(obj, &["metadata", "labels"]).and_then(Value::as_object) {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                causes.push(Cause::invalid("metadata.labels", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
            if let Some(s) = v.as_str() {
                if !is_label_value(s) {
                    causes.push(Cause::invalid("metadata.labels", s, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
                }
            }
        }
    }
    if let Some(ann) = get(obj, &["metadata", "annotations"]).and_then(Value::as_object) {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
        for k in ann.keys() {
            if !is_qualified_name(&k.to_ascii_lowercase()) {
                causes.push(Cause::invalid("metadata.annotations", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
    }
}

fn check_containers(spec: &Value, base: &str, causes: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::required(format!("{base}.containers"))),
        Some(c) if c.is_empty() => causes.push(Cause::required(format!("{base}.containers"))),
        _ => {}
    }
    let mut names = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = format!("{base}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{f}.name"))),
                Some(n) if !is_dns_label(n) => {
                    causes.push(Cause::invalid(format!("{f}.name"), n, DNS_LABEL_MSG))
                }
                Some(n) => {
                    if !names.insert(n.to_string()) {
                        causes.push(Cause::duplicate(format!("{f}.name"), n));
                    }
                }
            }
            match c.get("image").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{f}.image"))),
                Some(img) if img.trim() != img => causes.push(Cause::invalid(
                    format!("{f}.image"),
                    img,
                    "must not have leading or trailing whitespace",
                )),
                _ => {}
            }
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let cp = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&cp) {
                    causes.push(Cause::invalid(
                        format!("{f}.ports[{j}].containerPort"),
                        cp,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if let Some(pr) = p.get("protocol").and_then(Value::as_str) {
                    if !["TCP", "UDP", "SCTP"].contains(&pr) {
                        causes.push(Cause::not_supported(
                            format!("{f}.ports[{j}].protocol"),
                            pr,
                            &["SCTP", "TCP", "UDP"],
                        ));
                    }
                }
            }
            if let Some(pol) = c.get("imagePullPolicy").and_then(Value::as_str) {
                if !["Always", "IfNotPresent", "Never"].contains(&pol) {
                    causes.push(Cause::not_supported(
                        format!("{f}.imagePullPolicy"),
                        pol,
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            causes.push(Cause::not_supported(
                format!("{base}.restartPolicy"),
                rp,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
}

fn check_selector_matches_template(obj: &Value, causes: &mut Vec<Cause>, required: bool) {
    let selector = get(obj, &["spec", "selector"]);
    let Some(sel) = selector else {
        if required {
            causes.push(Cause::required("spec.selector"));
        }
        return;
    };
    let template_labels =
        get(obj, &["spec", "template", "metadata", "labels"]).and_then(Value::as_object);
    let match_labels = sel.get("matchLabels").and_then(Value::as_object);
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    if match_labels.is_none_or(|m| m.is_empty()) && exprs.is_none_or(|e| e.is_empty()) {
        causes.push(Cause::invalid(
            "spec.selector",
            "{}",
            "empty selector is invalid for deployment",
        ));
        return;
    }
    match super::selector::LabelSelector::from_json(sel) {
        Ok(s) => {
            if !s.matches(template_labels) {
                let shown = template_labels.map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                });
                causes.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    format!("map[{}]", shown.unwrap_or_default()),
                    "`selector` does not match template `labels`",
                ));
            }
        }
        Err(e) => causes.push(Cause::invalid("spec.selector", "", e)),
    }
}

/// Validate an object being created or updated (not the update-specific rules).
pub fn validate(info: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    check_labels(obj, &mut causes);
    match info.kind {
        "Pod" => match obj.get("spec") {
            Some(spec) => check_containers(spec, "spec", &mut causes),
            None => causes.push(Cause::required("spec")),
        },
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => {
            check_selector_matches_template(obj, &mut causes, true);
            match get(obj, &["spec", "template", "spec"]) {
                Some(spec) => check_containers(spec, "spec.template.spec", &mut causes),
                None => causes.push(Cause::required("spec.template.spec")),
            }
            if let Some(r) = get(obj, &["spec", "replicas"]).and_then(Value::as_i64) {
                if r < 0 {
                    causes.push(Cause::invalid(
                        "spec.replicas",
                        r,
                        "must be greater than or equal to 0",
                    ));
                }
            }
            if info.kind == "Deployment" {
                check_deployment_strategy(obj, &mut causes);
            }
            if info.kind == "StatefulSet" {
                check_statefulset(obj, &mut causes);
            }
            if info.kind != "ReplicaSet" {
                if let Some(rp) = str_at(obj, &["spec", "template", "spec", "restartPolicy"]) {
                    if rp != "Always" {
                        causes.push(Cause::not_supported(
                            "spec.template.spec.restartPolicy",
                            rp,
                            &["Always"],
                        ));
                    }
                }
            }
        }
        "Job" => {
            match get(obj, &["spec", "template", "spec"]) {
                Some(spec) => check_containers(spec, "spec.template.spec", &mut causes),
                None => causes.push(Cause::required("spec.template.spec")),
            }
            match str_at(obj, &["spec", "template", "spec", "restartPolicy"]) {
                Some("Never") | Some("OnFailure") => {}
                Some(rp) => causes.push(Cause::not_supported(
                    "spec.template.spec.restartPolicy",
                    rp,
                    &["OnFailure", "Never"],
                )),
                None => causes.push(Cause::required("spec.template.spec.restartPolicy")),
            }
        }
        "Service" => {
            let ty = str_at(obj, &["spec", "type"]).unwrap_or("ClusterIP");
            if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
                causes.push(Cause::not_supported(
                    "spec.type",
                    ty,
                    &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
                ));
            }
            let ports = get(obj, &["spec", "ports"]).and_then(Value::as_array);
            let headless = str_at(obj, &["spec", "clusterIP"]) == Some("None");
            if ty != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
                causes.push(Cause::required("spec.ports"));
            }
            let mut seen = std::collections::HashSet::new();
            let multi = ports.is_some_and(|p| p.len() > 1);
            for (i, p) in ports.into_iter().flatten().enumerate() {
                let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(Cause::invalid(
                        format!("spec.ports[{i}].port"),
                        port,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                if multi && name.is_empty() {
                    causes.push(Cause::required(format!("spec.ports[{i}].name")));
                }
                if !seen.insert((
                    port,
                    p.get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .to_string(),
                )) {
                    causes.push(Cause::duplicate(
                        format!("spec.ports[{i}]"),
                        format!("{port}"),
                    ));
                }
            }
        }
        "ConfigMap" | "Secret" => {
            let mut keys = std::collections::HashSet::new();
            for part in ["data", "binaryData", "stringData"] {
                for k in obj
                    .get(part)
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    let ok = !k.is_empty()
                        && k.len() <= 253
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                    if !ok {
                        causes.push(Cause::invalid(format!("{part}[{k}]"), k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                    }
                    if part != "stringData" && !keys.insert(k.clone()) {
                        causes.push(Cause::duplicate(format!("{part}[{k}]"), k));
                    }
                }
            }
        }
        "Plugin" => check_plugin(obj, &mut causes),
        "HorizontalPodAutoscaler" => check_hpa(obj, &mut causes),
        "PersistentVolume" | "PersistentVolumeClaim" | "StorageClass" => {
            check_storage(info.kind, obj, &mut causes)
        }
        _ => {}
    }
    causes
}

/// An int-or-percent value: Ok((value, is_percent)) or a cause.
fn int_or_percent(v: &Value, field: &str) -> Result<(i64, bool), Cause> {
    match v {
        Value::Number(n) => n.as_i64().map(|i| (i, false)).ok_or_else(|| Cause::invalid(field, n, "must be an integer")),
        Value::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .map(|p| (p, true))
            .ok_or_else(|| Cause::invalid(field, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")),
        other => Err(Cause::invalid(field, other, "must be an integer or percentage (e.g '5%')")),
    }
}

/// Deployment strategy and timing fields, as Kubernetes validates them.
fn check_deployment_strategy(obj: &Value, causes: &mut Vec<Cause>) {
    let ty = str_at(obj, &["spec", "strategy", "type"]).unwrap_or("RollingUpdate");
    if !["RollingUpdate", "Recreate"].contains(&ty) {
        causes.push(Cause::not_supported(
            "spec.strategy.type",
            ty,
            &["Recreate", "RollingUpdate"],
        ));
    }
    let ru = get(obj, &["spec", "strategy", "rollingUpdate"]).filter(|v| !v.is_null());
    if ty == "Recreate" && ru.is_some() {
        causes.push(Cause::forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        ));
    }
    if let (Some(ru), "RollingUpdate") = (ru, ty) {
        let mut parsed = [None, None];
        for (i, f) in ["maxUnavailable", "maxSurge"].iter().enumerate() {
            let field = format!("spec.strategy.rollingUpdate.{f}");
            if let Some(v) = ru.get(*f) {
                match int_or_percent(v, &field) {
                    Ok((n, pct)) => {
                        if n < 0 {
                            causes.push(Cause::invalid(
                                &field,
                                n,
                                "must be greater than or equal to 0",
                            ));
                        } else if pct && n > 100 && *f == "maxUnavailable" {
                            causes.push(Cause::invalid(
                                &field,
                                v.as_str().unwrap_or(""),
                                "must not be greater than 100%",
                            ));
                        }
                        parsed[i] = Some(n);
                    }
                    Err(c) => causes.push(c),
                }
            }
        }
        if parsed == [Some(0), Some(0)] {
            causes.push(Cause::invalid(
                "spec.strategy.rollingUpdate.maxUnavailable",
                0,
                "may not be 0 when `maxSurge` is 0",
            ));
        }
    }
    for f in [
        "minReadySeconds",
        "revisionHistoryLimit",
        "progressDeadlineSeconds",
    ] {
        if let Some(n) = get(obj, &["spec", f]).and_then(Value::as_i64) {
            if n < 0 {
                causes.push(Cause::invalid(
                    format!("spec.{f}"),
                    n,
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    let min_ready = get(obj, &["spec", "minReadySeconds"])
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(pd) = get(obj, &["spec", "progressDeadlineSeconds"]).and_then(Value::as_i64) {
        if pd <= min_ready {
            causes.push(Cause::invalid(
                "spec.progressDeadlineSeconds",
                pd,
                "must be greater than minReadySeconds",
            ));
        }
    }
}

/// Plugin kinds, one per WIT world.
pub const PLUGIN_KINDS: &[&str] = &["scheduler", "admission", "authorizer", "router"];

fn check_plugin(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec").filter(|s| s.is_object()) else {
        causes.push(Cause::required("spec"));
        return;
    };
    // spec.admission and spec.order (host/src/admission/spec.rs).
    crate::admission::spec::validate(spec, causes);
    match spec.get("kind").and_then(Value::as_str) {
        None => causes.push(Cause::required("spec.kind")),
        Some(k) if !PLUGIN_KINDS.contains(&k) => {
            causes.push(Cause::not_supported("spec.kind", k, PLUGIN_KINDS))
        }
        _ => {}
    }
    match spec.get("digest").and_then(Value::as_str) {
        None => causes.push(Cause::required("spec.digest")),
        Some(d) => {
            if let Err(e) = crate::blobs::check_digest(d) {
                causes.push(Cause::invalid("spec.digest", d, e));
            }
        }
    }
    if let Some(p) = spec.get("profiles") {
        match p.as_array() {
            Some(list) => {
                for (i, v) in list.iter().enumerate() {
                    match v.as_str() {
                        Some(s) if is_dns_subdomain(s) => {}
                        _ => causes.push(Cause::invalid(
                            format!("spec.profiles[{i}]"),
                            v,
                            DNS_SUBDOMAIN_MSG,
                        )),
                    }
                }
            }
            None => causes.push(Cause::invalid(
                "spec.profiles",
                p,
                "must be a list of scheduler profile names",
            )),
        }
    }
    if let Some(w) = spec.get("weight") {
        if !w.as_i64().is_some_and(|w| (1..=100).contains(&w)) {
            causes.push(Cause::invalid(
                "spec.weight",
                w,
                "must be an integer from 1 to 100",
            ));
        }
    }
    if let Some(t) = spec.get("timeoutSeconds") {
        if !t.as_f64().is_some_and(|t| t > 0.0 && t <= 30.0) {
            causes.push(Cause::invalid(
                "spec.timeoutSeconds",
                t,
                "must be greater than 0 and at most 30",
            ));
        }
    }
}

/// StatefulSet defaults, as Kubernetes sets them.
fn default_statefulset(obj: &mut Value) {
    set_default(obj, &["spec", "podManagementPolicy"], json!("OrderedReady"));
    set_default(
        obj,
        &["spec", "updateStrategy", "type"],
        json!("RollingUpdate"),
    );
    if str_at(obj, &["spec", "updateStrategy", "type"]) == Some("RollingUpdate") {
        set_default(
            obj,
            &["spec", "updateStrategy", "rollingUpdate", "partition"],
            json!(0),
        );
    }
    for (k, v) in [("whenDeleted", "Retain"), ("whenScaled", "Retain")] {
        set_default(
            obj,
            &["spec", "persistentVolumeClaimRetentionPolicy", k],
            json!(v),
        );
    }
    for_each_mut(obj, &["spec", "volumeClaimTemplates"], |t| {
        set_default(t, &["spec", "volumeMode"], json!("Filesystem"));
        set_default(t, &["status", "phase"], json!("Pending"));
    });
}

/// StatefulSet policy fields and claim templates, as Kubernetes validates them.
fn check_statefulset(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(p) = str_at(obj, &["spec", "podManagementPolicy"]) {
        if p != "OrderedReady" && p != "Parallel" {
            causes.push(Cause::not_supported(
                "spec.podManagementPolicy",
                p,
                &["OrderedReady", "Parallel"],
            ));
        }
    }
    let ty = str_at(obj, &["spec", "updateStrategy", "type"]);
    match ty {
        Some("RollingUpdate") | Some("OnDelete") | None => {}
        Some(t) => causes.push(Cause::not_supported(
            "spec.updateStrategy.type",
            t,
            &["OnDelete", "RollingUpdate"],
        )),
    }
    if ty == Some("OnDelete") && get(obj, &["spec", "updateStrategy", "rollingUpdate"]).is_some() {
        causes.push(Cause::invalid(
            "spec.updateStrategy.rollingUpdate",
            "",
            "only allowed for updateStrategy 'RollingUpdate'",
        ));
    }
    for path in [
        &["spec", "updateStrategy", "rollingUpdate", "partition"][..],
        &["spec", "ordinals", "start"][..],
        &["spec", "minReadySeconds"][..],
    ] {
        if let Some(n) = get(obj, path).and_then(Value::as_i64).filter(|n| *n < 0) {
            causes.push(Cause::invalid(
                path.join("."),
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
    for k in ["whenDeleted", "whenScaled"] {
        if let Some(v) = str_at(obj, &["spec", "persistentVolumeClaimRetentionPolicy", k]) {
            if v != "Retain" && v != "Delete" {
                causes.push(Cause::not_supported(
                    format!("spec.persistentVolumeClaimRetentionPolicy.{k}"),
                    v,
                    &["Retain", "Delete"],
                ));
            }
        }
    }
    let templates = get(obj, &["spec", "volumeClaimTemplates"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, t) in templates.iter().enumerate() {
        let field = format!("spec.volumeClaimTemplates[{i}].metadata.name");
        match str_at(t, &["metadata", "name"]) {
            None | Some("") => causes.push(Cause::required(field)),
            Some(n) if !is_dns_subdomain(n) => causes.push(Cause::invalid(
                field,
                n,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )),
            Some(_) => {}
        }
    }
}

/// Only some StatefulSet spec fields may change.
fn check_statefulset_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let strip = |v: &Value| -> Value {
        let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(m) = s.as_object_mut() {
            for f in [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
                "revisionHistoryLimit",
                // Reported on its own.
                "selector",
            ] {
                m.remove(f);
            }
        }
        s
    };
    if strip(old) != strip(new) {
        causes.push(Cause::forbidden("spec", "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"));
    }
}

/// Rules that compare the new object to the old one (immutable fields).
pub fn validate_update(info: &ResourceInfo, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match info.kind {
        "Pod" => {
            // A pod's spec is immutable except container images, activeDeadlineSeconds
            // and added tolerations.
            let strip = |v: &Value| -> Value {
                let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                for list in ["containers", "initContainers"] {
                    for_each_mut(&mut s, &[list], |c| {
                        if let Some(m) = c.as_object_mut() {
                            m.remove("image");
                        }
                    });
                }
                if let Some(m) = s.as_object_mut() {
                    m.remove("activeDeadlineSeconds");
                    m.remove("tolerations");
                    // nodeName is set through the binding subresource.
                    m.remove("nodeName");
                }
                s
            };
            if strip(old) != strip(new) {
                causes.push(Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
            }
            let old_node = str_at(old, &["spec", "nodeName"]).unwrap_or("");
            let new_node = str_at(new, &["spec", "nodeName"]).unwrap_or("");
            if !old_node.is_empty() && old_node != new_node {
                causes.push(Cause::forbidden(
                    "spec.nodeName",
                    "field is immutable once set",
                ));
            }
        }
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job"
            if get(old, &["spec", "selector"]) != get(new, &["spec", "selector"]) =>
        {
            causes.push(Cause::invalid("spec.selector", "", "field is immutable"));
        }
        // clusterIP(s) and ipFamilies: immutable but for Kubernetes' transitions.
        "Service" => causes.extend(super::services::validate_update(old, new)),
        "ConfigMap" | "Secret" if old.get("immutable").and_then(Value::as_bool) == Some(true) => {
            for part in ["data", "binaryData"] {
                if old.get(part) != new.get(part) {
                    causes.push(Cause::forbidden(
                        part,
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
            if new.get("immutable").and_then(Value::as_bool) != Some(true) {
                causes.push(Cause::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        "PersistentVolume" | "PersistentVolumeClaim" | "StorageClass" => {
            check_storage_update(info.kind, old, new, &mut causes)
        }
        _ => {}
    }
    if info.kind == "StatefulSet" {
        check_statefulset_update(old, new, &mut causes);
    }
    causes
}

// ---- Storage: PersistentVolume, PersistentVolumeClaim, StorageClass ----

/// Parse a resource quantity ("10Gi", "500M", "1e3") to its value in units
/// (apimachinery's grammar, from the scheduler's `quantity` module).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = scheduler_core::quantity::parse(q.trim()).ok()?;
    Some(q.nanos() as f64 / 1e9)
}

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// The volume sources a PersistentVolume may name (exactly one).
const PV_SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

fn required_because(field: &str, why: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        field: field.into(),
        message: format!("Required value: {why}"),
    }
}

fn default_storage(kind: &str, obj: &mut Value) {
    match kind {
        "PersistentVolume" => {
            // Hand-made volumes keep their data; provisioners set the class's policy.
            set_default(
                obj,
                &["spec", "persistentVolumeReclaimPolicy"],
                json!("Retain"),
            );
            set_default(obj, &["spec", "volumeMode"], json!("Filesystem"));
            set_default(obj, &["status", "phase"], json!("Pending"));
        }
        "PersistentVolumeClaim" => {
            set_default(obj, &["spec", "volumeMode"], json!("Filesystem"));
            set_default(obj, &["status", "phase"], json!("Pending"));
        }
        _ => {
            set_default(obj, &["reclaimPolicy"], json!("Delete"));
            set_default(obj, &["volumeBindingMode"], json!("Immediate"));
        }
    }
}

fn check_access_modes(modes: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let list = modes
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if list.is_empty() {
        causes.push(Cause::required(field));
        return;
    }
    for m in list {
        let s = m.as_str().unwrap_or("");
        if !ACCESS_MODES.contains(&s) {
            causes.push(Cause::not_supported(field, s, ACCESS_MODES));
        }
    }
    if list.len() > 1 && list.iter().any(|m| m == "ReadWriteOncePod") {
        causes.push(Cause::forbidden(
            field,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

fn check_storage_quantity(v: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    match v.and_then(Value::as_str) {
        None => causes.push(Cause::required(field)),
        Some(q) => match parse_quantity(q) {
            Some(n) if n > 0.0 => {}
            Some(_) => causes.push(Cause::invalid(field, q, "must be greater than zero")),
            None => causes.push(Cause::invalid(
                field,
                q,
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            )),
        },
    }
}

fn check_class_name(v: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    if let Some(c) = v.and_then(Value::as_str).filter(|c| !c.is_empty()) {
        if !is_dns_subdomain(c) {
            causes.push(Cause::invalid(field, c, DNS_SUBDOMAIN_MSG));
        }
    }
}

fn check_volume_mode(v: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    if let Some(m) = v.and_then(Value::as_str) {
        if !["Block", "Filesystem"].contains(&m) {
            causes.push(Cause::not_supported(field, m, &["Block", "Filesystem"]));
        }
    }
}

fn check_storage(kind: &str, obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match kind {
        "PersistentVolume" => {
            check_access_modes(spec.get("accessModes"), "spec.accessModes", causes);
            check_storage_quantity(
                get(spec, &["capacity", "storage"]),
                "spec.capacity.storage",
                causes,
            );
            check_class_name(
                spec.get("storageClassName"),
                "spec.storageClassName",
                causes,
            );
            check_volume_mode(spec.get("volumeMode"), "spec.volumeMode", causes);
            if let Some(p) = str_at(spec, &["persistentVolumeReclaimPolicy"]) {
                let ok = ["Delete", "Recycle", "Retain"];
                if !ok.contains(&p) {
                    causes.push(Cause::not_supported(
                        "spec.persistentVolumeReclaimPolicy",
                        p,
                        &ok,
                    ));
                }
            }
            let sources: Vec<&str> = PV_SOURCES
                .iter()
                .copied()
                .filter(|s| spec.get(*s).is_some_and(|v| !v.is_null()))
                .collect();
            match sources.as_slice() {
                [] => causes.push(required_because("spec", "must specify a volume type")),
                [_] => {}
                _ => causes.push(Cause::forbidden(
                    "spec",
                    "may not specify more than 1 volume type",
                )),
            }
            for src in ["hostPath", "local"] {
                if sources.contains(&src) {
                    match str_at(spec, &[src, "path"]) {
                        None | Some("") => causes.push(Cause::required(format!("spec.{src}.path"))),
                        Some(p) if !p.starts_with('/') || p.split('/').any(|c| c == "..") => causes
                            .push(Cause::invalid(
                                format!("spec.{src}.path"),
                                p,
                                "must be an absolute path without '..'",
                            )),
                        _ => {}
                    }
                }
            }
            if sources.contains(&"local") && get(spec, &["nodeAffinity", "required"]).is_none() {
                causes.push(required_because(
                    "spec.nodeAffinity",
                    "Local volume requires node affinity",
                ));
            }
        }
        "PersistentVolumeClaim" => {
            check_access_modes(spec.get("accessModes"), "spec.accessModes", causes);
            check_storage_quantity(
                get(spec, &["resources", "requests", "storage"]),
                "spec.resources[storage]",
                causes,
            );
            check_class_name(
                spec.get("storageClassName"),
                "spec.storageClassName",
                causes,
            );
            check_volume_mode(spec.get("volumeMode"), "spec.volumeMode", causes);
            if let Some(sel) = spec.get("selector").filter(|s| !s.is_null()) {
                if let Err(e) = super::selector::LabelSelector::from_json(sel) {
                    causes.push(Cause::invalid("spec.selector", "", e));
                }
            }
        }
        _ => {
            match obj.get("provisioner").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required("provisioner")),
                Some(p) if !is_qualified_name(p) => causes.push(Cause::invalid(
                    "provisioner",
                    p,
                    "must be a qualified name (e.g. 'example.com/my-provisioner')",
                )),
                _ => {}
            }
            if let Some(p) = obj.get("reclaimPolicy").and_then(Value::as_str) {
                if !["Delete", "Retain"].contains(&p) {
                    causes.push(Cause::not_supported(
                        "reclaimPolicy",
                        p,
                        &["Delete", "Retain"],
                    ));
                }
            }
            if let Some(m) = obj.get("volumeBindingMode").and_then(Value::as_str) {
                let ok = ["Immediate", "WaitForFirstConsumer"];
                if !ok.contains(&m) {
                    causes.push(Cause::not_supported("volumeBindingMode", m, &ok));
                }
            }
        }
    }
}

fn check_storage_update(kind: &str, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let spec = |v: &Value| v.get("spec").cloned().unwrap_or(Value::Null);
    match kind {
        "PersistentVolume" => {
            let (o, n) = (spec(old), spec(new));
            let source = |s: &Value| {
                PV_SOURCES
                    .iter()
                    .map(|k| s.get(*k).cloned().unwrap_or(Value::Null))
                    .collect::<Vec<_>>()
            };
            if source(&o) != source(&n) {
                causes.push(Cause::forbidden(
                    "spec.persistentvolumesource",
                    "spec.persistentvolumesource is immutable after creation",
                ));
            }
            if o.get("volumeMode") != n.get("volumeMode") {
                causes.push(Cause::invalid(
                    "spec.volumeMode",
                    n.get("volumeMode").and_then(Value::as_str).unwrap_or(""),
                    "field is immutable",
                ));
            }
            if o.get("nodeAffinity").is_some_and(|a| !a.is_null())
                && o.get("nodeAffinity") != n.get("nodeAffinity")
            {
                causes.push(Cause::invalid(
                    "spec.nodeAffinity",
                    "",
                    "field is immutable",
                ));
            }
        }
        "PersistentVolumeClaim" => {
            // Only the storage request may grow; volumeName and a missing
            // class may be set once (binding, default class assignment).
            let strip = |v: &Value| {
                let mut s = spec(v);
                if let Some(m) = s.as_object_mut() {
                    m.remove("resources");
                    m.remove("volumeAttributesClassName");
                }
                s
            };
            let (mut o, n) = (strip(old), strip(new));
            for f in ["volumeName", "storageClassName"] {
                let unset = o
                    .get(f)
                    .is_none_or(|v| v.is_null() || (f == "volumeName" && v == ""));
                if unset {
                    if let (Some(m), Some(v)) = (o.as_object_mut(), n.get(f)) {
                        m.insert(f.into(), v.clone());
                    }
                }
            }
            if o != n {
                causes.push(Cause::forbidden(
                    "spec",
                    "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                ));
            }
            let req = |v: &Value| {
                str_at(v, &["spec", "resources", "requests", "storage"]).and_then(parse_quantity)
            };
            if let (Some(a), Some(b)) = (req(old), req(new)) {
                if b < a {
                    causes.push(Cause::forbidden(
                        "spec.resources.requests.storage",
                        "field can not be less than previous value",
                    ));
                }
            }
        }
        _ => {
            for (f, msg) in [
                ("provisioner", "updates to provisioner are forbidden."),
                ("parameters", "updates to parameters are forbidden."),
                ("reclaimPolicy", "updates to reclaimPolicy are forbidden."),
                ("volumeBindingMode", "field is immutable"),
            ] {
                if old.get(f) != new.get(f) {
                    causes.push(Cause::forbidden(f, msg));
                }
            }
        }
    }
}

/// autoscaling/v2 defaults: `minReplicas` 1, a CPU target of 80% when no
/// metric is given, and a given `behavior` completed with the default rules.
fn default_hpa(obj: &mut Value) {
    set_default(obj, &["spec", "minReplicas"], json!(1));
    let empty = obj
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty());
    if empty && obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"]["metrics"] = json!([{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
    }
    if let Some(b) = obj.pointer_mut("/spec/behavior") {
        if b.is_object() {
            *b = hpa_behavior_defaults(b);
        }
    }
}

/// A behavior with every missing rule, policy list, select policy and
/// stabilization window filled as Kubernetes does: scale up at most
/// max(100%, 4 pods) per 15 s with no window; scale down at most 100% per
/// 15 s after a 300 s window.
pub fn hpa_behavior_defaults(behavior: &Value) -> Value {
    let fill = |rules: Option<&Value>, window: i64, policies: Value| {
        let mut r = match rules {
            Some(r) if r.is_object() => r.clone(),
            _ => json!({}),
        };
        set_default(&mut r, &["stabilizationWindowSeconds"], json!(window));
        set_default(&mut r, &["selectPolicy"], json!("Max"));
        set_default(&mut r, &["policies"], policies);
        r
    };
    let mut out = behavior.clone();
    if !out.is_object() {
        out = json!({});
    }
    out["scaleUp"] = fill(
        behavior.get("scaleUp"),
        0,
        json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
               {"type": "Percent", "value": 100, "periodSeconds": 15}]),
    );
    out["scaleDown"] = fill(
        behavior.get("scaleDown"),
        300,
        json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
    );
    out
}

fn check_hpa(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec"));
        return;
    };
    for f in ["kind", "name"] {
        if str_at(spec, &["scaleTargetRef", f]).is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("spec.scaleTargetRef.{f}")));
        }
    }
    let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
    if min < 1 {
        causes.push(Cause::invalid(
            "spec.minReplicas",
            min,
            "must be greater than or equal to 1",
        ));
    }
    match spec.get("maxReplicas").and_then(Value::as_i64) {
        None => causes.push(Cause::required("spec.maxReplicas")),
        Some(max) if max < 1 => causes.push(Cause::invalid(
            "spec.maxReplicas",
            max,
            "must be greater than or equal to 1",
        )),
        Some(max) if max < min => causes.push(Cause::invalid(
            "spec.maxReplicas",
            max,
            "must be greater than or equal to `minReplicas`",
        )),
        _ => {}
    }
    let metrics = spec
        .get("metrics")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    const TYPES: &[&str] = &[
        "Object",
        "Pods",
        "Resource",
        "ContainerResource",
        "External",
    ];
    for (i, m) in metrics.iter().enumerate() {
        let f = format!("spec.metrics[{i}]");
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        if !TYPES.contains(&ty) {
            causes.push(Cause::not_supported(format!("{f}.type"), ty, TYPES));
            continue;
        }
        if ty != "Resource" && ty != "ContainerResource" {
            continue;
        }
        let src = if ty == "Resource" {
            "resource"
        } else {
            "containerResource"
        };
        let Some(r) = m.get(src) else {
            causes.push(Cause::required(format!("{f}.{src}")));
            continue;
        };
        if r.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(format!("{f}.{src}.name")));
        }
        let t = r.get("target").cloned().unwrap_or_default();
        match t.get("type").and_then(Value::as_str) {
            Some("Utilization") => match t.get("averageUtilization").and_then(Value::as_i64) {
                Some(u) if u > 0 => {}
                Some(u) => causes.push(Cause::invalid(
                    format!("{f}.{src}.target.averageUtilization"),
                    u,
                    "must be greater than 0",
                )),
                None => causes.push(Cause::required(format!(
                    "{f}.{src}.target.averageUtilization"
                ))),
            },
            Some("AverageValue") => {
                if t.get("averageValue").is_none_or(Value::is_null) {
                    causes.push(Cause::required(format!("{f}.{src}.target.averageValue")));
                }
            }
            other => causes.push(Cause::not_supported(
                format!("{f}.{src}.target.type"),
                other.unwrap_or(""),
                &["Utilization", "AverageValue"],
            )),
        }
    }
    for dir in ["scaleUp", "scaleDown"] {
        let Some(rules) = spec.get("behavior").and_then(|b| b.get(dir)) else {
            continue;
        };
        let f = format!("spec.behavior.{dir}");
        if let Some(w) = rules
            .get("stabilizationWindowSeconds")
            .and_then(Value::as_i64)
        {
            if !(0..=3600).contains(&w) {
                causes.push(Cause::invalid(
                    format!("{f}.stabilizationWindowSeconds"),
                    w,
                    "must be between 0 and 3600",
                ));
            }
        }
        if let Some(sp) = rules.get("selectPolicy").and_then(Value::as_str) {
            if !["Max", "Min", "Disabled"].contains(&sp) {
                causes.push(Cause::not_supported(
                    format!("{f}.selectPolicy"),
                    sp,
                    &["Disabled", "Max", "Min"],
                ));
            }
        }
        let policies = rules.get("policies").and_then(Value::as_array);
        if policies.is_some_and(|p| p.is_empty()) {
            causes.push(Cause::required(format!("{f}.policies")));
        }
        for (i, p) in policies.into_iter().flatten().enumerate() {
            let pf = format!("{f}.policies[{i}]");
            let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
            if !["Pods", "Percent"].contains(&ty) {
                causes.push(Cause::not_supported(
                    format!("{pf}.type"),
                    ty,
                    &["Percent", "Pods"],
                ));
            }
            let v = p.get("value").and_then(Value::as_i64).unwrap_or(0);
            if v <= 0 {
                causes.push(Cause::invalid(
                    format!("{pf}.value"),
                    v,
                    "must be greater than zero",
                ));
            }
            let period = p.get("periodSeconds").and_then(Value::as_i64).unwrap_or(0);
            if !(1..=1800).contains(&period) {
                causes.push(Cause::invalid(
                    format!("{pf}.periodSeconds"),
                    period,
                    "must be greater than zero and less than or equal to 1800",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    #[test]
    fn names() {
        let pods = lookup("", "v1", "pods").unwrap();
        assert!(check_name(pods, "web-1.a", "metadata.name").is_none());
        assert!(check_name(pods, "Web", "metadata.name").is_some());
        let svc = lookup("", "v1", "services").unwrap();
        assert!(check_name(svc, "1abc", "metadata.name").is_some());
    }

    #[test]
    fn pod_defaults_and_required_image() {
        let pods = lookup("", "v1", "pods").unwrap();
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}, {"name": "d"}]}});
        default_object(pods, &mut p);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        let causes = validate(pods, &p);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.containers[1].image");
    }

    #[test]
    fn pod_containers_immutable() {
        let pods = lookup("", "v1", "pods").unwrap();
        let old = json!({"spec": {"containers": [{"name": "c", "image": "a:1"}]}});
        let img = json!({"spec": {"containers": [{"name": "c", "image": "a:2"}]}});
        let add = json!({"spec": {"containers": [{"name": "c", "image": "a:1"}, {"name": "x", "image": "a:1"}]}});
        assert!(validate_update(pods, &old, &img).is_empty());
        assert_eq!(validate_update(pods, &old, &add)[0].field, "spec");
    }

    #[test]
    fn deployment_strategy_rules() {
        let d = lookup("apps", "v1", "deployments").unwrap();
        let base = |strategy: Value, extra: Value| {
            let mut o = json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "strategy": strategy,
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
            if let Some(m) = extra.as_object() {
                for (k, v) in m {
                    o["spec"][k] = v.clone();
                }
            }
            o
        };
        let fields = |o: &Value| {
            validate(d, o)
                .into_iter()
                .map(|c| c.field)
                .collect::<Vec<_>>()
        };
        let zero = base(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "0%"}}),
            json!({}),
        );
        assert_eq!(
            fields(&zero),
            ["spec.strategy.rollingUpdate.maxUnavailable"]
        );
        let bad = base(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "five"}}),
            json!({}),
        );
        assert_eq!(fields(&bad), ["spec.strategy.rollingUpdate.maxSurge"]);
        let recreate = base(
            json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
            json!({}),
        );
        assert_eq!(fields(&recreate), ["spec.strategy.rollingUpdate"]);
        let deadline = base(
            json!({"type": "RollingUpdate"}),
            json!({"minReadySeconds": 10, "progressDeadlineSeconds": 10}),
        );
        assert_eq!(fields(&deadline), ["spec.progressDeadlineSeconds"]);
        let ok = base(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": "25%"}}),
            json!({}),
        );
        assert!(fields(&ok).is_empty());
    }

    #[test]
    fn deployment_selector_must_match() {
        let d = lookup("apps", "v1", "deployments").unwrap();
        let obj = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        let causes = validate(d, &obj);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }
}
