//! `authorization.k8s.io/v1` access reviews: SelfSubjectAccessReview,
//! SubjectAccessReview and LocalSubjectAccessReview. Create-only and never
//! stored: the answer is the chain's decision on the attributes in the spec,
//! so `kubectl auth can-i` agrees with what the server enforces.

use super::{Authorizer, Outcome};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::Identity;
use crate::plugin::Attributes;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};

/// The review kinds served, by plural.
pub const KINDS: [(&str, &str); 4] = [
    ("selfsubjectaccessreviews", "SelfSubjectAccessReview"),
    ("selfsubjectrulesreviews", "SelfSubjectRulesReview"),
    ("subjectaccessreviews", "SubjectAccessReview"),
    ("localsubjectaccessreviews", "LocalSubjectAccessReview"),
];

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The attributes a review's `spec` asks about, for `who`.
fn spec_attrs(
    who: &Identity,
    spec: &Value,
    namespace_override: Option<&str>,
) -> Result<Attributes, String> {
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let ns = namespace_override.unwrap_or(s(r, "namespace"));
        let mut verb = s(r, "verb");
        if verb.is_empty() {
            verb = "*";
        }
        return Ok(super::resource_attrs(
            who,
            verb,
            ns,
            s(r, "group"),
            s(r, "resource"),
            s(r, "subresource"),
            s(r, "name"),
        ));
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(super::path_attrs(who, s(n, "verb"), s(n, "path")));
    }
    Err("spec.resourceAttributes: Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into())
}

/// Answer a review request (already authorized to `create` it).
pub async fn serve(
    state: &AppState,
    authz: &Authorizer,
    id: &Identity,
    attrs: &Attributes,
    req: Request,
) -> Response {
    let Some(&(_, kind)) = KINDS.iter().find(|(p, _)| *p == attrs.resource) else {
        return ApiError::PathNotFound("the server could not find the requested resource".into())
            .into_response();
    };
    if attrs.verb != "create" || !attrs.name.is_empty() || !attrs.subresource.is_empty() {
        return ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({kind} is create-only)"
        ))
        .into_response();
    }
    // JSON, YAML or protobuf (kubectl sends protobuf), as for any create.
    let mut obj = match crate::api::handlers::read_body(state, req).await {
        Ok((ct, body)) => match crate::api::handlers::decode_body(&ct, &body) {
            Ok(v) => v,
            Err(e) => return e.into_response(),
        },
        Err(e) => return e.into_response(),
    };
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    if kind == "SelfSubjectRulesReview" {
        let ns = s(&spec, "namespace").to_string();
        obj["apiVersion"] = json!("authorization.k8s.io/v1");
        obj["kind"] = json!(kind);
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        obj["status"] = rules_review(state, id, &ns);
        return (
            StatusCode::CREATED,
            [(http::header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&obj).expect("serializes"),
        )
            .into_response();
    }
    let namespaced = kind == "LocalSubjectAccessReview";
    let who = if kind == "SelfSubjectAccessReview" {
        id.clone()
    } else {
        let mut who = id.clone();
        who.user = s(&spec, "user").to_string();
        who.groups = spec
            .get("groups")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        who.uid = s(&spec, "uid").to_string();
        who.extra = Default::default();
        if who.user.is_empty() && who.groups.is_empty() {
            return invalid(
                kind,
                "spec.user",
                "at least one of user or group must be specified",
            );
        }
        who
    };
    let ns_override = namespaced.then_some(attrs.namespace.as_str());
    if namespaced {
        let spec_ns = spec
            .pointer("/resourceAttributes/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !spec_ns.is_empty() && spec_ns != attrs.namespace {
            return invalid(
                kind,
                "spec.resourceAttributes.namespace",
                "must match metadata.namespace",
            );
        }
    }
    let asked = match spec_attrs(&who, &spec, ns_override) {
        Ok(a) => a,
        Err(m) => return invalid(kind, "spec", &m),
    };
    let status = match authz.authorize(&who, &asked) {
        Outcome::Allow(reason) => json!({"allowed": true, "reason": reason}),
        Outcome::Deny(reason) if reason.is_empty() => json!({"allowed": false}),
        Outcome::Deny(reason) => json!({"allowed": false, "denied": true, "reason": reason}),
    };
    if kind == "SelfSubjectAccessReview" {
        obj["spec"] = spec;
    }
    obj["apiVersion"] = json!("authorization.k8s.io/v1");
    obj["kind"] = json!(kind);
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    if namespaced {
        obj["metadata"]["namespace"] = json!(attrs.namespace);
    }
    obj["status"] = status;
    (
        StatusCode::CREATED,
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&obj).expect("serializes"),
    )
        .into_response()
}

fn invalid(kind: &str, field: &str, msg: &str) -> Response {
    ApiError::Invalid {
        group: "authorization.k8s.io".into(),
        kind: kind.into(),
        name: String::new(),
        causes: vec![crate::api::error::Cause::invalid(field, "", msg)],
    }
    .into_response()
}

/// Whether a binding's subjects name `id`.
fn names(binding: &Value, id: &Identity) -> bool {
    let bns = binding
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|sub| match s(sub, "kind") {
            "User" => s(sub, "name") == id.user,
            "Group" => id.groups.iter().any(|g| g == s(sub, "name")),
            "ServiceAccount" => {
                let ns = match s(sub, "namespace") {
                    "" => bns,
                    n => n,
                };
                id.user == format!("system:serviceaccount:{ns}:{}", s(sub, "name"))
            }
            _ => false,
        })
}

/// SelfSubjectRulesReview: the RBAC rules that apply to `id` in `ns`, read
/// from the stored bindings (`incomplete` when other authorizers, e.g. the
/// node authorizer, may grant more than RBAC lists).
fn rules_review(state: &AppState, id: &Identity, ns: &str) -> Value {
    let list = |plural: &str, namespace: Option<&str>| -> Vec<Value> {
        let Some(info) = crate::api::resources::lookup("rbac.authorization.k8s.io", "v1", plural)
        else {
            return Vec::new();
        };
        state
            .store
            .list(&info.prefix(namespace), None, 0, None)
            .map(|l| {
                l.items
                    .iter()
                    .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let get = |plural: &str, namespace: Option<&str>, name: &str| -> Option<Value> {
        let info = crate::api::resources::lookup("rbac.authorization.k8s.io", "v1", plural)?;
        let kv = state.store.get(&info.key(namespace, name)).ok()??;
        serde_json::from_slice(&kv.value).ok()
    };
    let mut rules: Vec<Value> = Vec::new();
    if id.groups.iter().any(|g| g == "system:masters") {
        rules.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        rules.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    }
    let mut bindings: Vec<(Value, bool)> = list("clusterrolebindings", None)
        .into_iter()
        .map(|b| (b, true))
        .collect();
    if !ns.is_empty() {
        bindings.extend(
            list("rolebindings", Some(ns))
                .into_iter()
                .map(|b| (b, false)),
        );
    }
    for (b, cluster) in bindings.iter().filter(|(b, _)| names(b, id)) {
        let name = b
            .pointer("/roleRef/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let role = match b.pointer("/roleRef/kind").and_then(Value::as_str) {
            Some("ClusterRole") => get("clusterroles", None, name),
            Some("Role") if !cluster => get("roles", Some(ns), name),
            _ => None,
        };
        for r in role
            .as_ref()
            .and_then(|r| r.get("rules"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // RoleBindings never grant non-resource URLs.
            if !cluster
                && r.get("nonResourceURLs")
                    .is_some_and(|u| u.as_array().is_some_and(|a| !a.is_empty()))
            {
                continue;
            }
            if !rules.contains(r) {
                rules.push(r.clone());
            }
        }
    }
    let (nonres, res): (Vec<Value>, Vec<Value>) = rules.into_iter().partition(|r| {
        r.get("nonResourceURLs")
            .is_some_and(|u| u.as_array().is_some_and(|a| !a.is_empty()))
    });
    let res: Vec<Value> = res
        .into_iter()
        .map(|r| {
            let mut o = json!({"verbs": r.get("verbs").cloned().unwrap_or(json!([])),
                "apiGroups": r.get("apiGroups").cloned().unwrap_or(json!([])),
                "resources": r.get("resources").cloned().unwrap_or(json!([]))});
            if let Some(n) = r
                .get("resourceNames")
                .filter(|n| n.as_array().is_some_and(|a| !a.is_empty()))
            {
                o["resourceNames"] = n.clone();
            }
            o
        })
        .collect();
    let nonres: Vec<Value> = nonres
        .into_iter()
        .map(|r| {
            json!({"verbs": r.get("verbs").cloned().unwrap_or(json!([])),
            "nonResourceURLs": r.get("nonResourceURLs").cloned().unwrap_or(json!([]))})
        })
        .collect();
    let incomplete = super::node::node_name(id).is_some();
    let mut out =
        json!({"resourceRules": res, "nonResourceRules": nonres, "incomplete": incomplete});
    if incomplete {
        out["evaluationError"] = json!("the node authorizer's rules are not listed");
    }
    out
}
