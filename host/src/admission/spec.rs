//! The `spec.admission` part of an admission Plugin object: which requests the
//! plugin sees (rules, namespace selector), whether it may mutate, and what
//! happens when it fails. Parsed once per Plugin generation; matched per request.

use super::Operation;
use crate::api::error::Cause;
use crate::api::selector::LabelSelector;
use serde_json::{Map, Value};
use std::time::Duration;

/// Default `timeoutSeconds` of an admission plugin (Kubernetes' webhook default).
pub const DEFAULT_TIMEOUT_SECONDS: f64 = 10.0;
/// Largest `timeoutSeconds` accepted.
pub const MAX_TIMEOUT_SECONDS: f64 = 30.0;

const OPERATIONS: &[&str] = &["CREATE", "UPDATE", "DELETE", "CONNECT", "*"];

/// Mutating plugins run first, in order, each seeing the previous one's patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginType {
    /// May return a JSON patch.
    Mutating,
    /// May only allow or deny (a patch is ignored).
    Validating,
}

/// What a failed call (trap, timeout, error) means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The request fails (500, as Kubernetes' webhooks do).
    Fail,
    /// The plugin is skipped and the failure logged.
    Ignore,
}

/// One rule: a request matches when every list matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Operations, or `*`.
    pub operations: Vec<String>,
    /// API groups ("" is core), or `*`.
    pub api_groups: Vec<String>,
    /// API versions, or `*`.
    pub api_versions: Vec<String>,
    /// Resources, optionally with a subresource (`pods/status`), or `*`, `*/*`, `pods/*`.
    pub resources: Vec<String>,
}

/// The parsed `spec.admission` (plus `spec.order`).
#[derive(Debug, Clone)]
pub struct AdmissionSpec {
    /// Mutating or validating.
    pub plugin_type: PluginType,
    /// Which requests the plugin sees; empty matches nothing.
    pub rules: Vec<Rule>,
    /// Label selector on the request's namespace (cluster-scoped objects always match).
    pub namespace_selector: Option<LabelSelector>,
    /// Fail or Ignore.
    pub failure_policy: FailurePolicy,
    /// Bound of one call.
    pub timeout: Duration,
    /// Position in its phase (ascending; ties by name).
    pub order: i64,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl AdmissionSpec {
    /// Parse a Plugin's `spec` (already validated by [`validate`]).
    pub fn from_plugin_spec(spec: &Value) -> AdmissionSpec {
        let adm = spec.get("admission").cloned().unwrap_or(Value::Null);
        let plugin_type = match adm.get("type").and_then(Value::as_str) {
            Some("Mutating") => PluginType::Mutating,
            _ => PluginType::Validating,
        };
        let rules = adm
            .get("rules")
            .and_then(Value::as_array)
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| Rule {
                        operations: strings(r.get("operations")),
                        api_groups: r
                            .get("apiGroups")
                            .map(|v| strings(Some(v)))
                            .unwrap_or_else(|| vec!["*".into()]),
                        api_versions: r
                            .get("apiVersions")
                            .map(|v| strings(Some(v)))
                            .unwrap_or_else(|| vec!["*".into()]),
                        resources: strings(r.get("resources")),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let namespace_selector = adm
            .get("namespaceSelector")
            .filter(|s| s.is_object())
            .and_then(|s| LabelSelector::from_json(s).ok());
        let failure_policy = match adm.get("failurePolicy").and_then(Value::as_str) {
            Some("Ignore") => FailurePolicy::Ignore,
            _ => FailurePolicy::Fail,
        };
        let timeout = Duration::from_secs_f64(timeout_seconds(spec));
        let order = spec.get("order").and_then(Value::as_i64).unwrap_or(0);
        AdmissionSpec {
            plugin_type,
            rules,
            namespace_selector,
            failure_policy,
            timeout,
            order,
        }
    }

    /// Whether any rule matches the request.
    pub fn matches(
        &self,
        op: Operation,
        group: &str,
        version: &str,
        resource: &str,
        sub: &str,
    ) -> bool {
        self.rules
            .iter()
            .any(|r| r.matches(op, group, version, resource, sub))
    }

    /// Whether the namespace's labels pass the selector (`None`: no selector).
    pub fn namespace_matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.namespace_selector
            .as_ref()
            .is_none_or(|s| s.is_empty() || s.matches(labels))
    }
}

/// `spec.admission.timeoutSeconds`, else `spec.timeoutSeconds`, else the default.
pub fn timeout_seconds(spec: &Value) -> f64 {
    spec.pointer("/admission/timeoutSeconds")
        .and_then(Value::as_f64)
        .or_else(|| spec.get("timeoutSeconds").and_then(Value::as_f64))
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
}

impl Rule {
    /// Kubernetes' RuleWithOperations matching, `*` and `resource/*` included.
    pub fn matches(
        &self,
        op: Operation,
        group: &str,
        version: &str,
        resource: &str,
        sub: &str,
    ) -> bool {
        let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        any(&self.operations, op.as_str())
            && any(&self.api_groups, group)
            && any(&self.api_versions, version)
            && self.resources.iter().any(|r| {
                // "*" is every resource but no subresource, "pods/*" every
                // subresource of pods, "*/*" everything.
                if r == "*/*" {
                    return true;
                }
                let (res, rsub) = r.split_once('/').unwrap_or((r.as_str(), ""));
                (res == "*" || res == resource) && (rsub == sub || (rsub == "*" && !sub.is_empty()))
            })
    }
}

/// Field errors in a Plugin's `spec.admission` and `spec.order`.
pub fn validate(spec: &Value, causes: &mut Vec<Cause>) {
    let is_admission = spec.get("kind").and_then(Value::as_str) == Some("admission");
    if let Some(o) = spec.get("order") {
        if o.as_i64().is_none() {
            causes.push(Cause::invalid("spec.order", o, "must be an integer"));
        }
    }
    let Some(adm) = spec.get("admission") else {
        if is_admission {
            causes.push(Cause::required("spec.admission"));
        }
        return;
    };
    let Some(adm) = adm.as_object() else {
        causes.push(Cause::invalid("spec.admission", adm, "must be an object"));
        return;
    };
    if !is_admission {
        causes.push(Cause::forbidden(
            "spec.admission",
            "may only be set for plugins of kind admission",
        ));
    }
    match adm.get("type").and_then(Value::as_str) {
        None => causes.push(Cause::required("spec.admission.type")),
        Some("Mutating" | "Validating") => {}
        Some(t) => causes.push(Cause::not_supported(
            "spec.admission.type",
            t,
            &["Mutating", "Validating"],
        )),
    }
    match adm.get("failurePolicy") {
        None => {}
        Some(Value::String(p)) if p == "Fail" || p == "Ignore" => {}
        Some(p) => causes.push(Cause::not_supported(
            "spec.admission.failurePolicy",
            p.as_str().unwrap_or(&p.to_string()),
            &["Fail", "Ignore"],
        )),
    }
    if let Some(t) = adm.get("timeoutSeconds") {
        if !t
            .as_f64()
            .is_some_and(|t| t > 0.0 && t <= MAX_TIMEOUT_SECONDS)
        {
            causes.push(Cause::invalid(
                "spec.admission.timeoutSeconds",
                t,
                "must be greater than 0 and at most 30",
            ));
        }
    }
    if let Some(sel) = adm.get("namespaceSelector") {
        if let Err(e) = LabelSelector::from_json(sel) {
            causes.push(Cause::invalid("spec.admission.namespaceSelector", sel, e));
        }
    }
    match adm.get("rules") {
        None => causes.push(Cause::required("spec.admission.rules")),
        Some(Value::Array(rules)) => {
            for (i, r) in rules.iter().enumerate() {
                validate_rule(r, &format!("spec.admission.rules[{i}]"), causes);
            }
        }
        Some(r) => causes.push(Cause::invalid(
            "spec.admission.rules",
            r,
            "must be a list of rules",
        )),
    }
}

fn validate_rule(r: &Value, field: &str, causes: &mut Vec<Cause>) {
    if !r.is_object() {
        causes.push(Cause::invalid(field, r, "must be an object"));
        return;
    }
    let list = |key: &str, causes: &mut Vec<Cause>, required: bool| -> Vec<String> {
        match r.get(key) {
            None if required => {
                causes.push(Cause::required(format!("{field}.{key}")));
                Vec::new()
            }
            None => Vec::new(),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                if required && a.is_empty() {
                    causes.push(Cause::required(format!("{field}.{key}")));
                }
                strings(Some(&Value::Array(a.clone())))
            }
            Some(v) => {
                causes.push(Cause::invalid(
                    format!("{field}.{key}"),
                    v,
                    "must be a list of strings",
                ));
                Vec::new()
            }
        }
    };
    for (i, op) in list("operations", causes, true).iter().enumerate() {
        if !OPERATIONS.contains(&op.as_str()) {
            causes.push(Cause::not_supported(
                format!("{field}.operations[{i}]"),
                op,
                OPERATIONS,
            ));
        }
    }
    list("apiGroups", causes, false);
    list("apiVersions", causes, false);
    for (i, res) in list("resources", causes, true).iter().enumerate() {
        let (res_part, sub) = res.split_once('/').unwrap_or((res.as_str(), ""));
        let ok = !res_part.is_empty()
            && !res.ends_with('/')
            && !sub.contains('/')
            && (res_part == "*"
                || res_part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-' || b.is_ascii_digit()));
        if !ok {
            causes.push(Cause::invalid(
                format!("{field}.resources[{i}]"),
                res,
                "must be a resource name, optionally with a subresource (pods, pods/status, *, */*)",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(adm: Value) -> AdmissionSpec {
        AdmissionSpec::from_plugin_spec(&json!({"kind": "admission", "admission": adm}))
    }

    #[test]
    fn rules_match_operations_groups_and_resources() {
        let s = spec(json!({"type": "Validating", "rules": [
            {"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]},
            {"operations": ["*"], "apiGroups": ["apps"], "apiVersions": ["*"], "resources": ["deployments/*"]},
        ]}));
        assert!(s.matches(Operation::Create, "", "v1", "pods", ""));
        assert!(s.matches(Operation::Update, "", "v1", "pods", ""));
        assert!(!s.matches(Operation::Delete, "", "v1", "pods", ""));
        // A rule for "pods" does not match the status subresource.
        assert!(!s.matches(Operation::Create, "", "v1", "pods", "status"));
        assert!(!s.matches(Operation::Create, "apps", "v1", "pods", ""));
        assert!(s.matches(Operation::Delete, "apps", "v1", "deployments", "scale"));
        assert!(!s.matches(Operation::Delete, "apps", "v1", "deployments", ""));
    }

    #[test]
    fn wildcards_follow_kubernetes() {
        let star = spec(
            json!({"type": "Validating", "rules": [{"operations": ["*"], "resources": ["*"]}]}),
        );
        assert!(star.matches(Operation::Connect, "batch", "v1", "jobs", ""));
        assert!(!star.matches(Operation::Update, "", "v1", "pods", "status"));
        let all = spec(
            json!({"type": "Validating", "rules": [{"operations": ["*"], "resources": ["*/*"]}]}),
        );
        assert!(all.matches(Operation::Update, "", "v1", "pods", "status"));
        assert!(all.matches(Operation::Update, "", "v1", "pods", ""));
        let status = spec(
            json!({"type": "Validating", "rules": [{"operations": ["UPDATE"], "resources": ["pods/status"]}]}),
        );
        assert!(status.matches(Operation::Update, "", "v1", "pods", "status"));
        assert!(!status.matches(Operation::Update, "", "v1", "pods", ""));
        // No rules match nothing.
        assert!(!spec(json!({"type": "Validating", "rules": []})).matches(
            Operation::Create,
            "",
            "v1",
            "pods",
            ""
        ));
    }

    #[test]
    fn defaults_and_namespace_selector() {
        let s = spec(
            json!({"type": "Mutating", "rules": [], "namespaceSelector": {"matchLabels": {"env": "prod"}}}),
        );
        assert_eq!(s.plugin_type, PluginType::Mutating);
        assert_eq!(s.failure_policy, FailurePolicy::Fail);
        assert_eq!(s.timeout, Duration::from_secs(10));
        let prod = json!({"env": "prod"});
        let dev = json!({"env": "dev"});
        assert!(s.namespace_matches(prod.as_object()));
        assert!(!s.namespace_matches(dev.as_object()));
        assert!(!s.namespace_matches(None));
        let ignore = spec(
            json!({"type": "Validating", "rules": [], "failurePolicy": "Ignore", "timeoutSeconds": 2}),
        );
        assert_eq!(ignore.failure_policy, FailurePolicy::Ignore);
        assert_eq!(ignore.timeout, Duration::from_secs(2));
    }

    #[test]
    fn validation_names_the_bad_fields() {
        let mut causes = Vec::new();
        validate(
            &json!({"kind": "admission", "order": "first", "admission": {
                "type": "Sometimes", "failurePolicy": "Maybe", "timeoutSeconds": 31,
                "rules": [{"operations": ["CREATE", "PATCH"], "resources": ["pods//x"]}, {"resources": ["pods"]}],
            }}),
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.order",
                "spec.admission.type",
                "spec.admission.failurePolicy",
                "spec.admission.timeoutSeconds",
                "spec.admission.rules[0].operations[1]",
                "spec.admission.rules[0].resources[0]",
                "spec.admission.rules[1].operations",
            ]
        );
        let mut causes = Vec::new();
        validate(
            &json!({"kind": "scheduler", "admission": {"type": "Mutating", "rules": []}}),
            &mut causes,
        );
        assert_eq!(causes[0].field, "spec.admission");
        let mut ok = Vec::new();
        validate(
            &json!({"kind": "admission", "order": 3, "admission": {"type": "Mutating", "rules": [{"operations": ["*"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods", "pods/status"]}]}}),
            &mut ok,
        );
        assert!(ok.is_empty(), "{ok:?}");
    }
}
