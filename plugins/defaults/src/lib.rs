//! `defaults`: a mutating admission plugin. For pods (and workloads with a
//! pod template) it adds resource requests to containers that set none, and a
//! `team` label when the object has none, as an RFC 6902 JSON Patch.
//!
//! Config (every key optional): `{"cpu": "100m", "memory": "64Mi", "team": "platform"}`;
//! an empty string turns that default off.

use std::borrow::Cow;
use std::cell::RefCell;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

wit_bindgen::generate!({
    world: "admission",
    path: "../../wit",
});

use exports::shoal::plugin::admission_policy::{AdmissionResponse, Guest, ObjectEvent};

/// The defaults this instance applies.
#[derive(Clone)]
struct Config {
    cpu: String,
    memory: String,
    team: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cpu: "100m".into(),
            memory: "64Mi".into(),
            team: "platform".into(),
        }
    }
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

/// The parts of an AdmissionReview request this plugin reads; everything
/// else is skipped without being built. The object stays raw text until its
/// kind says it holds a pod spec.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(default)]
    kind: GroupVersionKind<'a>,
    #[serde(borrow)]
    object: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct GroupVersionKind<'a> {
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
}

/// A pod, or a workload whose `spec.template` is one (same shape again).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Object {
    metadata: Option<Metadata>,
    spec: Option<Spec>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Metadata {
    labels: Option<Labels>,
}

/// Only whether a `team` label is there matters.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Labels {
    team: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    init_containers: Option<Vec<Container>>,
    containers: Option<Vec<Container>>,
    template: Option<Box<Object>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Container {
    resources: Option<Resources>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Resources {
    requests: Option<Quantities>,
    limits: Option<Quantities>,
}

/// Which of the two defaulted resources a map names.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Quantities {
    cpu: Option<IgnoredAny>,
    memory: Option<IgnoredAny>,
}

impl Quantities {
    fn has(&self, resource: &str) -> bool {
        match resource {
            "cpu" => self.cpu.is_some(),
            _ => self.memory.is_some(),
        }
    }
}

/// Where the pod (template) lives in an object of `kind`: `""` for a Pod,
/// `"/spec/template"` for a workload.
fn pod_base(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => Some("/spec/template"),
        _ => None,
    }
}

/// The patch operations that apply `cfg` to the pod (template) `pod`, found
/// at JSON Pointer `base` in the object.
fn patch_for(pod: &Object, base: &str, cfg: &Config) -> Vec<Value> {
    let mut ops = Vec::new();
    if !cfg.team.is_empty() {
        match &pod.metadata {
            None => ops.push(json!({"op": "add", "path": format!("{base}/metadata"), "value": {"labels": {"team": cfg.team}}})),
            Some(Metadata { labels: Some(labels) }) => {
                if labels.team.is_none() {
                    ops.push(json!({"op": "add", "path": format!("{base}/metadata/labels/team"), "value": cfg.team}));
                }
            }
            Some(Metadata { labels: None }) => ops.push(json!({"op": "add", "path": format!("{base}/metadata/labels"), "value": {"team": cfg.team}})),
        }
    }
    let wanted: Vec<(&str, &str)> = [("cpu", cfg.cpu.as_str()), ("memory", cfg.memory.as_str())]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let Some(spec) = pod.spec.as_ref().filter(|_| !wanted.is_empty()) else {
        return ops;
    };
    for (list, containers) in [
        ("initContainers", &spec.init_containers),
        ("containers", &spec.containers),
    ] {
        for (i, c) in containers.iter().flatten().enumerate() {
            let path = format!("{base}/spec/{list}/{i}/resources");
            let resources = c.resources.as_ref();
            let requests = resources.and_then(|r| r.requests.as_ref());
            let limits = resources.and_then(|r| r.limits.as_ref());
            // A container that sets a limit but no request gets the limit as
            // its request from the API server; leave those alone.
            let missing: Vec<(&str, &str)> = wanted
                .iter()
                .copied()
                .filter(|(k, _)| {
                    !requests.is_some_and(|r| r.has(k)) && !limits.is_some_and(|l| l.has(k))
                })
                .collect();
            if missing.is_empty() {
                continue;
            }
            let map = || -> serde_json::Map<String, Value> {
                missing
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect()
            };
            match (resources, requests) {
                (None, _) => {
                    ops.push(json!({"op": "add", "path": path, "value": {"requests": map()}}))
                }
                (Some(_), None) => ops
                    .push(json!({"op": "add", "path": format!("{path}/requests"), "value": map()})),
                (Some(_), Some(_)) => {
                    for (k, v) in &missing {
                        ops.push(json!({"op": "add", "path": format!("{path}/requests/{k}"), "value": v}));
                    }
                }
            }
        }
    }
    ops
}

struct Component;

impl Guest for Component {
    fn interests() -> Vec<String> {
        Vec::new()
    }

    fn configure(config: String) -> Result<(), String> {
        let v: Value = serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let mut cfg = Config::default();
        for (key, slot) in [
            ("cpu", &mut cfg.cpu),
            ("memory", &mut cfg.memory),
            ("team", &mut cfg.team),
        ] {
            match v.get(key) {
                None => {}
                Some(Value::String(s)) => *slot = s.clone(),
                Some(other) => return Err(format!("config.{key} must be a string, not {other}")),
            }
        }
        CONFIG.set(cfg);
        Ok(())
    }

    fn observe(_events: Vec<ObjectEvent>) {}

    fn review(request: String) -> AdmissionResponse {
        let mut resp = AdmissionResponse {
            allowed: true,
            code: None,
            message: None,
            patch: None,
            warnings: Vec::new(),
        };
        // The host sends valid requests; anything else is left alone.
        let Ok(req) = serde_json::from_str::<Request>(&request) else {
            return resp;
        };
        let (Some(base), Some(raw)) = (pod_base(&req.kind.kind), req.object) else {
            return resp;
        };
        let Ok(obj) = serde_json::from_str::<Object>(raw.get()) else {
            return resp;
        };
        let pod = match base {
            "" => Some(&obj),
            _ => obj.spec.as_ref().and_then(|s| s.template.as_deref()),
        };
        let ops = match pod {
            Some(pod) => CONFIG.with_borrow(|cfg| patch_for(pod, base, cfg)),
            None => Vec::new(),
        };
        if !ops.is_empty() {
            resp.patch = Some(Value::Array(ops).to_string());
        }
        resp
    }
}

export!(Component);
