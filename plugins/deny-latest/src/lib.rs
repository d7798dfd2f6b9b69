//! `deny-latest`: a validating admission plugin that refuses pods, and
//! workloads with a pod template, whose container images use the `:latest`
//! tag or no tag at all (which means `:latest`). Images pinned by digest pass.
//! Images with a tag but no digest pass with a warning unless the config says
//! `{"warnUndigested": false}`.

use std::cell::Cell;

use serde_json::Value;

wit_bindgen::generate!({
    world: "admission",
    path: "../../wit",
});

use exports::shoal::plugin::admission_policy::{AdmissionResponse, Guest, ObjectEvent};

thread_local! {
    // A component instance is single-threaded; the setting lives for the instance.
    static WARN_UNDIGESTED: Cell<bool> = const { Cell::new(true) };
}

/// Where the pod spec of an object of `kind` lives.
fn pod_spec_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some("/spec"),
        "PodTemplate" => Some("/template/spec"),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template/spec"),
        "CronJob" => Some("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    }
}

/// What is wrong with an image reference, if anything: `Some(reason)` refuses.
fn image_problem(image: &str) -> Option<&'static str> {
    if image.contains('@') {
        return None;
    }
    // The tag follows the last ':' after the last '/' (a ':' before it is a
    // registry port).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => Some("has no tag (which means :latest)"),
        Some((_, "latest")) => Some("uses the :latest tag"),
        Some((_, "")) => Some("has an empty tag"),
        Some(_) => None,
    }
}

/// Review one object: denial messages and warnings.
fn check(obj: &Value, kind: &str) -> (Vec<String>, Vec<String>) {
    let (mut denials, mut warnings) = (Vec::new(), Vec::new());
    let Some(spec) = pod_spec_pointer(kind).and_then(|p| obj.pointer(p)) else {
        return (denials, warnings);
    };
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            if image.is_empty() {
                continue;
            }
            match image_problem(image) {
                Some(why) => denials.push(format!(
                    "container \"{name}\" image \"{image}\" {why}; pin a version tag or a digest"
                )),
                None if !image.contains('@') && WARN_UNDIGESTED.get() => warnings.push(format!(
                    "container \"{name}\" image \"{image}\" is not pinned by digest"
                )),
                None => {}
            }
        }
    }
    (denials, warnings)
}

struct Component;

impl Guest for Component {
    fn interests() -> Vec<String> {
        Vec::new()
    }

    fn configure(config: String) -> Result<(), String> {
        let v: Value = serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        match v.get("warnUndigested") {
            None => {}
            Some(Value::Bool(b)) => WARN_UNDIGESTED.set(*b),
            Some(other) => {
                return Err(format!(
                    "config.warnUndigested must be a boolean, not {other}"
                ))
            }
        }
        Ok(())
    }

    fn observe(_events: Vec<ObjectEvent>) {}

    fn review(request: String) -> AdmissionResponse {
        let allow = |warnings| AdmissionResponse {
            allowed: true,
            code: None,
            message: None,
            patch: None,
            warnings,
        };
        let Ok(req) = serde_json::from_str::<Value>(&request) else {
            return AdmissionResponse {
                allowed: false,
                code: Some(400),
                message: Some("deny-latest: the request is not JSON".into()),
                patch: None,
                warnings: Vec::new(),
            };
        };
        let kind = req
            .pointer("/kind/kind")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some(obj) = req.get("object").filter(|o| o.is_object()) else {
            return allow(Vec::new());
        };
        let (denials, warnings) = check(obj, kind);
        if denials.is_empty() {
            return allow(warnings);
        }
        AdmissionResponse {
            allowed: false,
            code: Some(403),
            message: Some(denials.join("; ")),
            patch: None,
            warnings: Vec::new(),
        }
    }
}

export!(Component);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests() {
        assert!(image_problem("nginx").is_some());
        assert!(image_problem("nginx:latest").is_some());
        assert!(image_problem("registry:5000/nginx").is_some());
        assert!(image_problem("registry:5000/nginx:1.25").is_none());
        assert!(image_problem("nginx@sha256:abcd").is_none());
        assert!(image_problem("nginx:1.25").is_none());
    }
}
