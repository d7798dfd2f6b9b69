//! `defaults`: a mutating admission plugin. For pods (and workloads with a
//! pod template) it adds resource requests to containers that set none, and a
//! `team` label when the object has none, as an RFC 6902 JSON Patch.
//!
//! Config (every key optional): `{"cpu": "100m", "memory": "64Mi", "team": "platform"}`;
//! an empty string turns that default off.

use std::cell::RefCell;

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

/// Where the pod template's metadata and spec live for `kind`.
fn pod_pointers(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "Pod" => Some(("/metadata", "/spec")),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
            Some(("/spec/template/metadata", "/spec/template/spec"))
        }
        _ => None,
    }
}

/// Escape one JSON Pointer token (RFC 6901).
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The patch operations that apply `cfg` to `obj` (a `kind` object).
fn patch_for(obj: &Value, kind: &str, cfg: &Config) -> Vec<Value> {
    let mut ops = Vec::new();
    let Some((meta_ptr, spec_ptr)) = pod_pointers(kind) else {
        return ops;
    };
    if !cfg.team.is_empty() {
        match obj.pointer(meta_ptr) {
            None => ops.push(json!({"op": "add", "path": meta_ptr, "value": {"labels": {"team": cfg.team}}})),
            Some(meta) => match meta.get("labels") {
                Some(Value::Object(labels)) => {
                    if !labels.contains_key("team") {
                        ops.push(json!({"op": "add", "path": format!("{meta_ptr}/labels/{}", token("team")), "value": cfg.team}));
                    }
                }
                _ => ops.push(json!({"op": "add", "path": format!("{meta_ptr}/labels"), "value": {"team": cfg.team}})),
            },
        }
    }
    let wanted: Vec<(&str, &str)> = [("cpu", cfg.cpu.as_str()), ("memory", cfg.memory.as_str())]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if wanted.is_empty() {
        return ops;
    }
    for list in ["initContainers", "containers"] {
        let containers = obj
            .pointer(&format!("{spec_ptr}/{list}"))
            .and_then(Value::as_array);
        for (i, c) in containers.into_iter().flatten().enumerate() {
            let base = format!("{spec_ptr}/{list}/{i}/resources");
            let resources = c.get("resources").filter(|r| r.is_object());
            let requests = resources
                .and_then(|r| r.get("requests"))
                .filter(|r| r.is_object());
            let limits = resources
                .and_then(|r| r.get("limits"))
                .filter(|r| r.is_object());
            // A container that sets a limit but no request gets the limit as
            // its request from the API server; leave those alone.
            let missing: Vec<(&str, &str)> = wanted
                .iter()
                .copied()
                .filter(|(k, _)| {
                    requests.and_then(|r| r.get(*k)).is_none()
                        && limits.and_then(|l| l.get(*k)).is_none()
                })
                .collect();
            if missing.is_empty() {
                continue;
            }
            match (resources, requests) {
                (None, _) => {
                    let req: serde_json::Map<String, Value> = missing
                        .iter()
                        .map(|(k, v)| (k.to_string(), json!(v)))
                        .collect();
                    ops.push(json!({"op": "add", "path": base, "value": {"requests": req}}));
                }
                (Some(_), None) => {
                    let req: serde_json::Map<String, Value> = missing
                        .iter()
                        .map(|(k, v)| (k.to_string(), json!(v)))
                        .collect();
                    ops.push(
                        json!({"op": "add", "path": format!("{base}/requests"), "value": req}),
                    );
                }
                (Some(_), Some(_)) => {
                    for (k, v) in missing {
                        ops.push(json!({"op": "add", "path": format!("{base}/requests/{}", token(k)), "value": v}));
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
        let Ok(req) = serde_json::from_str::<Value>(&request) else {
            return resp;
        };
        let kind = req
            .pointer("/kind/kind")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some(obj) = req.get("object").filter(|o| o.is_object()) else {
            return resp;
        };
        let ops = CONFIG.with_borrow(|cfg| patch_for(obj, kind, cfg));
        if !ops.is_empty() {
            resp.patch = Some(Value::Array(ops).to_string());
        }
        resp
    }
}

export!(Component);
