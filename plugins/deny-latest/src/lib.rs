//! `deny-latest`: a validating admission plugin that refuses pods, and
//! workloads with a pod template, whose container images use the `:latest`
//! tag or no tag at all (which means `:latest`). Images pinned by digest pass.
//! Images with a tag but no digest pass with a warning unless the config says
//! `{"warnUndigested": false}`.

use std::borrow::Cow;
use std::cell::Cell;

use serde::Deserialize;
use serde_json::value::RawValue;
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

/// Kinds that carry a pod spec (see [`pod_spec`]).
const POD_KINDS: &[&str] = &[
    "Pod",
    "PodTemplate",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "ReplicationController",
    "CronJob",
];

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

/// The parts of an AdmissionReview request this plugin reads. Everything else
/// is skipped without being built, and the object is kept as raw text until
/// its kind says it holds a pod spec (an unrelated object may use the same
/// field names for other things).
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

/// An object with a pod spec somewhere: `spec` (Pod), `template.spec`
/// (PodTemplate), `spec.template.spec` (workloads) or
/// `spec.jobTemplate.spec.template.spec` (CronJob). One recursive shape
/// covers them all; unknown fields are ignored.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Object<'a> {
    #[serde(borrow)]
    spec: Option<Spec<'a>>,
    #[serde(borrow)]
    template: Option<Box<Object<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Spec<'a> {
    #[serde(borrow)]
    init_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow)]
    containers: Option<Vec<Container<'a>>>,
    #[serde(borrow)]
    ephemeral_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow)]
    template: Option<Box<Object<'a>>>,
    #[serde(borrow)]
    job_template: Option<Box<Object<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Container<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    image: Option<Cow<'a, str>>,
}

/// The pod spec of an object of `kind`, if that kind has one.
fn pod_spec<'o, 'a>(obj: &'o Object<'a>, kind: &str) -> Option<&'o Spec<'a>> {
    let spec = obj.spec.as_ref();
    let template_spec = |o: Option<&'o Object<'a>>| o.and_then(|t| t.spec.as_ref());
    match kind {
        "Pod" => spec,
        "PodTemplate" => template_spec(obj.template.as_deref()),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => template_spec(spec.and_then(|s| s.template.as_deref())),
        "CronJob" => template_spec(
            spec.and_then(|s| s.job_template.as_deref())
                .and_then(|j| j.spec.as_ref())
                .and_then(|s| s.template.as_deref()),
        ),
        _ => None,
    }
}

/// Review one pod spec: denial messages and warnings.
fn check(spec: &Spec<'_>) -> (Vec<String>, Vec<String>) {
    let (mut denials, mut warnings) = (Vec::new(), Vec::new());
    let lists = [
        &spec.init_containers,
        &spec.containers,
        &spec.ephemeral_containers,
    ];
    for c in lists.into_iter().flatten().flatten() {
        let name = c.name.as_deref().unwrap_or("");
        let image = c.image.as_deref().unwrap_or("");
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
    (denials, warnings)
}

/// Refuses a request that is not what the host sends.
fn bad_request(message: String) -> AdmissionResponse {
    AdmissionResponse {
        allowed: false,
        code: Some(400),
        message: Some(format!("deny-latest: {message}")),
        patch: None,
        warnings: Vec::new(),
    }
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
        let req: Request = match serde_json::from_str(&request) {
            Ok(req) => req,
            Err(e) => return bad_request(format!("the request is not JSON: {e}")),
        };
        let kind = &*req.kind.kind;
        let Some(raw) = req.object.filter(|o| o.get().starts_with('{')) else {
            return allow(Vec::new());
        };
        if !POD_KINDS.contains(&kind) {
            return allow(Vec::new());
        }
        let obj: Object = match serde_json::from_str(raw.get()) {
            Ok(obj) => obj,
            Err(e) => return bad_request(format!("the {kind} is not a valid object: {e}")),
        };
        let Some(spec) = pod_spec(&obj, kind) else {
            return allow(Vec::new());
        };
        let (denials, warnings) = check(spec);
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
