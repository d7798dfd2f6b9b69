//! Kubernetes RBAC (`rbac.authorization.k8s.io/v1`) as plain Rust: the rule
//! matching of Kubernetes' `rbac/v1` helpers and an incrementally fed view of
//! Roles, ClusterRoles, RoleBindings and ClusterRoleBindings.
//!
//! The view indexes bindings by subject (user name, group name), so one
//! decision looks only at the bindings naming the requesting user or one of
//! its groups: O(bindings of the subject), not O(all bindings).
//!
//! RBAC only ever allows: a request no binding grants gets "no opinion", and
//! the next authorizer in the chain decides.

use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

/// Kinds the view is fed with.
pub const INTERESTS: [&str; 4] = ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"];

/// One `PolicyRule`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    /// Verbs, or `*`.
    pub verbs: Vec<String>,
    /// API groups ("" is core), or `*`.
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/log`, `*/scale`), or `*`.
    pub resources: Vec<String>,
    /// Object names; empty means any name.
    pub resource_names: Vec<String>,
    /// Non-resource URLs (`/healthz`, `/apis/*`), or `*`.
    #[serde(rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

/// What a request wants to do (Kubernetes' authorizer attributes).
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// User name.
    pub user: &'a str,
    /// The user's groups.
    pub groups: &'a [String],
    /// Verb.
    pub verb: &'a str,
    /// True for API resources, false for non-resource URLs.
    pub resource_request: bool,
    /// Namespace ("" when cluster-scoped).
    pub namespace: &'a str,
    /// API group.
    pub api_group: &'a str,
    /// Resource (plural).
    pub resource: &'a str,
    /// Subresource or "".
    pub subresource: &'a str,
    /// Object name or "".
    pub name: &'a str,
    /// Path of a non-resource request.
    pub path: &'a str,
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == want)
}

fn verb_matches(rule: &Rule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == "*" || v == verb)
}

fn group_matches(rule: &Rule, group: &str) -> bool {
    rule.api_groups.iter().any(|g| g == "*" || g == group)
}

/// Kubernetes' `ResourceMatches`: `*`, the exact `resource[/subresource]`, or
/// `*/subresource` for any resource's subresource.
fn resource_matches(rule: &Rule, resource: &str, subresource: &str) -> bool {
    rule.resources.iter().any(|r| {
        if r == "*" {
            return true;
        }
        if subresource.is_empty() {
            return r == resource;
        }
        // "pods/log" without allocating "resource/subresource".
        if let Some((res, sub)) = r.split_once('/') {
            return sub == subresource && (res == resource || res == "*");
        }
        false
    })
}

fn name_matches(rule: &Rule, name: &str) -> bool {
    rule.resource_names.is_empty() || has(&rule.resource_names, name)
}

/// Kubernetes' `NonResourceURLMatches`: `*`, exact, or a prefix ending in `*`.
fn url_matches(rule: &Rule, path: &str) -> bool {
    rule.non_resource_urls.iter().any(|u| {
        u == "*"
            || u == path
            || u.strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// Whether one rule allows the request (Kubernetes' `RuleAllows`).
pub fn rule_allows(rule: &Rule, req: &Request<'_>) -> bool {
    if !verb_matches(rule, req.verb) {
        return false;
    }
    if req.resource_request {
        group_matches(rule, req.api_group)
            && resource_matches(rule, req.resource, req.subresource)
            && name_matches(rule, req.name)
    } else {
        url_matches(rule, req.path)
    }
}

/// Parse `rules` of a Role or ClusterRole object.
pub fn rules_of(obj: &Value) -> Vec<Rule> {
    obj.get("rules")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| serde_json::from_value(r.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The user name of a ServiceAccount.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    User(String),
    Group(String),
}

#[derive(Debug, Clone)]
struct Binding {
    /// "" for a ClusterRoleBinding.
    namespace: String,
    name: String,
    /// Role (namespaced, only from a RoleBinding) or ClusterRole.
    to_role: bool,
    role_name: String,
    /// `namespace/name` key into `roles`, or the name into `cluster_roles`.
    role_key: String,
    subjects: Vec<Subject>,
}

impl Binding {
    fn parse(obj: &Value, cluster: bool) -> Binding {
        let meta = |k: &str| {
            obj.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let namespace = if cluster {
            String::new()
        } else {
            meta("namespace")
        };
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let role_ref = obj.get("roleRef").cloned().unwrap_or(Value::Null);
        let to_role = s(&role_ref, "kind") == "Role" && !cluster;
        let role_name = s(&role_ref, "name");
        let role_key = if to_role {
            format!("{namespace}/{role_name}")
        } else {
            role_name.clone()
        };
        let subjects = obj
            .get("subjects")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|sub| {
                        let name = s(sub, "name");
                        match s(sub, "kind").as_str() {
                            "User" => Some(Subject::User(name)),
                            "Group" => Some(Subject::Group(name)),
                            "ServiceAccount" => {
                                let ns = match s(sub, "namespace") {
                                    n if n.is_empty() => namespace.clone(),
                                    n => n,
                                };
                                Some(Subject::User(service_account_user(&ns, &name)))
                            }
                            _ => None,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Binding {
            namespace,
            name: meta("name"),
            to_role,
            role_name,
            role_key,
            subjects,
        }
    }

    fn describe(&self, subject: &str) -> String {
        let role_kind = if self.to_role { "Role" } else { "ClusterRole" };
        if self.namespace.is_empty() {
            format!(
                "ClusterRoleBinding {:?} of {role_kind} {:?} to {subject}",
                self.name, self.role_name
            )
        } else {
            format!(
                "RoleBinding \"{}/{}\" of {role_kind} {:?} to {subject}",
                self.name, self.namespace, self.role_name
            )
        }
    }
}

/// The decision of RBAC on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A binding grants it; the reason names the binding and role.
    Allow(String),
    /// No binding grants it.
    NoOpinion,
}

/// The RBAC view: roles by key, bindings by id, and bindings by subject.
#[derive(Debug, Default)]
pub struct Rbac {
    roles: HashMap<String, Vec<Rule>>,
    cluster_roles: HashMap<String, Vec<Rule>>,
    bindings: HashMap<u64, Binding>,
    by_user: HashMap<String, Vec<u64>>,
    by_group: HashMap<String, Vec<u64>>,
}

impl Rbac {
    /// An empty view.
    pub fn new() -> Rbac {
        Rbac::default()
    }

    /// Apply one change. `handle` is unique per kind while the object exists.
    pub fn observe_one(&mut self, kind: &str, handle: u32, deleted: bool, object: &str) {
        let Ok(obj) = serde_json::from_str::<Value>(object) else {
            return;
        };
        let meta = |k: &str| {
            obj.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        match kind {
            "Role" => {
                let key = format!("{}/{}", meta("namespace"), meta("name"));
                if deleted {
                    self.roles.remove(&key);
                } else {
                    self.roles.insert(key, rules_of(&obj));
                }
            }
            "ClusterRole" => {
                let key = meta("name").to_string();
                if deleted {
                    self.cluster_roles.remove(&key);
                } else {
                    self.cluster_roles.insert(key, rules_of(&obj));
                }
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let cluster = kind == "ClusterRoleBinding";
                let id = (u64::from(cluster) << 32) | u64::from(handle);
                self.unindex(id);
                if !deleted {
                    let b = Binding::parse(&obj, cluster);
                    for s in &b.subjects {
                        let (map, name) = match s {
                            Subject::User(n) => (&mut self.by_user, n),
                            Subject::Group(n) => (&mut self.by_group, n),
                        };
                        let ids = map.entry(name.clone()).or_default();
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                    self.bindings.insert(id, b);
                }
            }
            _ => {}
        }
    }

    fn unindex(&mut self, id: u64) {
        let Some(old) = self.bindings.remove(&id) else {
            return;
        };
        for s in &old.subjects {
            let (map, name) = match s {
                Subject::User(n) => (&mut self.by_user, n),
                Subject::Group(n) => (&mut self.by_group, n),
            };
            if let Some(ids) = map.get_mut(name) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    map.remove(name);
                }
            }
        }
    }

    /// Number of bindings in the view.
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    fn rules_for(&self, b: &Binding) -> Option<&Vec<Rule>> {
        if b.to_role {
            self.roles.get(&b.role_key)
        } else {
            self.cluster_roles.get(&b.role_key)
        }
    }

    /// Decide one request.
    pub fn authorize(&self, req: &Request<'_>) -> Decision {
        let user_ids = self.by_user.get(req.user).into_iter().flatten();
        let group_ids = req
            .groups
            .iter()
            .filter_map(|g| self.by_group.get(g.as_str()).map(|ids| (g, ids)))
            .flat_map(|(g, ids)| ids.iter().map(move |id| (Some(g), id)));
        for (group, id) in user_ids.map(|id| (None, id)).chain(group_ids) {
            let Some(b) = self.bindings.get(id) else {
                continue;
            };
            // A RoleBinding grants only within its namespace, so never on
            // cluster-scoped or non-resource requests.
            if !b.namespace.is_empty() && (req.namespace.is_empty() || b.namespace != req.namespace)
            {
                continue;
            }
            let Some(rules) = self.rules_for(b) else {
                continue;
            };
            if rules.iter().any(|r| rule_allows(r, req)) {
                let subject = match group {
                    Some(g) => format!("Group {g:?}"),
                    None => format!("User {:?}", req.user),
                };
                return Decision::Allow(format!("RBAC: allowed by {}", b.describe(&subject)));
            }
        }
        Decision::NoOpinion
    }
}

#[cfg(test)]
mod tests;
