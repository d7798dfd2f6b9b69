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
            }
            set_default(obj, &["status", "phase"], json!("Pending"));
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            if info.kind != "DaemonSet" {
                set_default(obj, &["spec", "replicas"], json!(1));
            }
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
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
            let headless = str_at(obj, &["spec", "clusterIP"]) == Some("None");
            set_default(obj, &["spec", "type"], json!("ClusterIP"));
            set_default(obj, &["spec", "sessionAffinity"], json!("None"));
            if !headless {
                set_default(obj, &["spec", "internalTrafficPolicy"], json!("Cluster"));
            }
            for_each_mut(obj, &["spec", "ports"], |p| {
                set_default(p, &["protocol"], json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    set_default(p, &["targetPort"], port);
                }
            });
        }
        "Secret" => set_default(obj, &["type"], json!("Opaque")),
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
            if info.kind == "Deployment" || info.kind == "DaemonSet" {
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
        "Service" => {
            let o = str_at(old, &["spec", "clusterIP"]);
            let n = str_at(new, &["spec", "clusterIP"]);
            if o.is_some() && o != Some("") && n != o {
                causes.push(Cause::invalid(
                    "spec.clusterIP",
                    n.unwrap_or(""),
                    "field is immutable",
                ));
            }
        }
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
        _ => {}
    }
    causes
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
