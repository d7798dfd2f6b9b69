//! Escalation prevention on RBAC writes, as Kubernetes' RBAC storage does it.
//!
//! - Creating or updating a Role/ClusterRole needs `escalate` on it, or the
//!   writer must already hold every permission the role grants (in the role's
//!   namespace; cluster-wide for a ClusterRole). Setting an `aggregationRule`
//!   needs full authority (`*` on everything).
//! - Creating or updating a RoleBinding/ClusterRoleBinding needs `bind` on
//!   the referenced role, or the writer must hold its permissions (in the
//!   binding's namespace).
//!
//! "Holds" is asked of the authorizer chain per concrete (verb, group,
//! resource, name) of each rule; a rule verb `*` is checked as the verb "*",
//! which only a `*` rule grants.

use super::{forbidden, path_attrs, resource_attrs, Authorizer};
use crate::api::AppState;
use crate::auth::Identity;
use crate::plugin::Attributes;
use axum::response::Response;
use serde_json::{json, Value};

const GROUP: &str = "rbac.authorization.k8s.io";

/// Whether the request is an RBAC write this module checks.
pub fn applies(a: &Attributes) -> bool {
    a.resource_request
        && a.api_group == GROUP
        && a.subresource.is_empty()
        && matches!(a.verb.as_str(), "create" | "update" | "patch")
        && matches!(
            a.resource.as_str(),
            "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings"
        )
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of `rules` (a JSON array) that `id` does not hold in `namespace`.
pub fn missing_rules(
    authz: &Authorizer,
    id: &Identity,
    namespace: &str,
    rules: &[Value],
) -> Vec<Value> {
    let mut missing = Vec::new();
    for rule in rules {
        let verbs = strings(rule.get("verbs"));
        let urls = strings(rule.get("nonResourceURLs"));
        let mut held = true;
        if !urls.is_empty() {
            'u: for url in &urls {
                for verb in &verbs {
                    if !authz.allows(id, &path_attrs(id, verb, url)) {
                        held = false;
                        break 'u;
                    }
                }
            }
        } else {
            let groups = strings(rule.get("apiGroups"));
            let resources = strings(rule.get("resources"));
            let mut names = strings(rule.get("resourceNames"));
            if names.is_empty() {
                names.push(String::new());
            }
            'r: for g in &groups {
                for r in &resources {
                    let (res, sub) = r.split_once('/').unwrap_or((r, ""));
                    for verb in &verbs {
                        for n in &names {
                            let a = resource_attrs(id, verb, namespace, g, res, sub, n);
                            if !authz.allows(id, &a) {
                                held = false;
                                break 'r;
                            }
                        }
                    }
                }
            }
        }
        if !held {
            missing.push(rule.clone());
        }
    }
    missing
}

/// Kubernetes' wording for rules not held.
fn describe(rule: &Value) -> String {
    let list = |k: &str| {
        let v = strings(rule.get(k));
        let q: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", q.join(" "))
    };
    let mut parts = Vec::new();
    if rule
        .get("nonResourceURLs")
        .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    {
        parts.push(format!("NonResourceURLs:{}", list("nonResourceURLs")));
    } else {
        parts.push(format!("APIGroups:{}", list("apiGroups")));
        parts.push(format!("Resources:{}", list("resources")));
        if rule
            .get("resourceNames")
            .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        {
            parts.push(format!("ResourceNames:{}", list("resourceNames")));
        }
    }
    parts.push(format!("Verbs:{}", list("verbs")));
    format!("{{{}}}", parts.join(", "))
}

fn escalation_message(id: &Identity, missing: &[Value]) -> String {
    let groups: Vec<String> = id.groups.iter().map(|g| format!("{g:?}")).collect();
    let rules: Vec<String> = missing.iter().map(describe).collect();
    format!(
        "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        id.user,
        groups.join(" "),
        rules.join("\n")
    )
}

/// The object a create, update or patch would store (None: let the handler
/// answer, e.g. with 400 or 404).
fn resulting_object(state: &AppState, a: &Attributes, ct: &str, body: &[u8]) -> Option<Value> {
    let media = ct.split(';').next().unwrap_or("").trim();
    let parse = |b: &[u8]| -> Option<Value> {
        serde_json::from_slice(b)
            .ok()
            .or_else(|| serde_yaml::from_slice(b).ok())
    };
    if a.verb != "patch" {
        // JSON, YAML or protobuf (kubectl's typed clients send protobuf).
        return crate::api::handlers::decode_body(ct, body).ok();
    }
    let info = crate::api::resources::lookup(GROUP, "v1", &a.resource)?;
    let ns = (!a.namespace.is_empty()).then_some(a.namespace.as_str());
    let kv = state.store.get(&info.key(ns, &a.name)).ok()??;
    let mut cur: Value = serde_json::from_slice(&kv.value).ok()?;
    let patch = parse(body)?;
    match media {
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_value(patch).ok()?;
            json_patch::patch(&mut cur, &p).ok()?;
        }
        "application/apply-patch+yaml" => return Some(patch),
        // Merge and strategic merge: RBAC lists carry no merge keys, so both
        // replace lists and merge maps.
        _ => json_patch::merge(&mut cur, &patch),
    }
    Some(cur)
}

fn rules_of(obj: &Value) -> Vec<Value> {
    obj.get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Check one RBAC write; `Err` is the 403 to return.
#[allow(clippy::result_large_err)]
pub fn check(
    state: &AppState,
    authz: &Authorizer,
    id: &Identity,
    a: &Attributes,
    ct: &str,
    body: &[u8],
) -> Result<(), Box<Response>> {
    if id.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    let Some(obj) = resulting_object(state, a, ct, body) else {
        return Ok(());
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or(&a.name)
        .to_string();
    let mut target = a.clone();
    target.name = name.clone();
    let refuse = |msg: String| Err(Box::new(forbidden(&target, &msg)));
    match a.resource.as_str() {
        "roles" | "clusterroles" => {
            let escalate =
                resource_attrs(id, "escalate", &a.namespace, GROUP, &a.resource, "", &name);
            if authz.allows(id, &escalate) {
                return Ok(());
            }
            let missing = missing_rules(authz, id, &a.namespace, &rules_of(&obj));
            if !missing.is_empty() {
                return refuse(escalation_message(id, &missing));
            }
            if a.resource == "clusterroles"
                && obj.get("aggregationRule").is_some_and(|v| !v.is_null())
            {
                let full = [
                    json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                    json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
                ];
                if !missing_rules(authz, id, "", &full).is_empty() {
                    return refuse(
                        "must have cluster-admin privileges to use the aggregationRule".into(),
                    );
                }
            }
            Ok(())
        }
        _ => {
            let kind = obj
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let role = obj
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let (res, role_ns) = match kind {
                "Role" => ("roles", a.namespace.as_str()),
                "ClusterRole" => ("clusterroles", ""),
                // Invalid; validation answers.
                _ => return Ok(()),
            };
            let bind = resource_attrs(id, "bind", &a.namespace, GROUP, res, "", role);
            if authz.allows(id, &bind) {
                return Ok(());
            }
            let info = crate::api::resources::lookup(GROUP, "v1", res).expect("served");
            let ns = (!role_ns.is_empty()).then_some(role_ns);
            let role_obj = state
                .store
                .get(&info.key(ns, role))
                .ok()
                .flatten()
                .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok());
            let Some(role_obj) = role_obj else {
                return refuse(format!("{kind}.{GROUP} {role:?} not found"));
            };
            let missing = missing_rules(authz, id, &a.namespace, &rules_of(&role_obj));
            if missing.is_empty() {
                Ok(())
            } else {
                refuse(escalation_message(id, &missing))
            }
        }
    }
}
