//! Container environment from the pod spec: `env` (values, `$(VAR)`
//! references, `valueFrom`) and `envFrom`, resolved against the ConfigMaps and
//! Secrets the agent fetched, plus Kubernetes' `$(VAR)` expansion rules.

use super::quantity;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use std::collections::{BTreeMap, HashMap};

/// ConfigMaps and Secrets of the pod's namespace the agent looked up (`None`: not found).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// By name.
    pub config_maps: HashMap<String, Option<ConfigMap>>,
    /// By name.
    pub secrets: HashMap<String, Option<Secret>>,
}

impl Sources {
    fn config_map_value(&self, name: &str, key: &str) -> Lookup {
        match self.config_maps.get(name) {
            Some(Some(cm)) => cm
                .data
                .as_ref()
                .and_then(|d| d.get(key).cloned())
                .or_else(|| {
                    cm.binary_data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                })
                .map(Lookup::Found)
                .unwrap_or(Lookup::NoKey),
            _ => Lookup::NoObject,
        }
    }

    fn secret_value(&self, name: &str, key: &str) -> Lookup {
        match self.secrets.get(name) {
            Some(Some(s)) => s
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .or_else(|| s.string_data.as_ref().and_then(|d| d.get(key).cloned()))
                .map(Lookup::Found)
                .unwrap_or(Lookup::NoKey),
            _ => Lookup::NoObject,
        }
    }

    /// All key/value pairs of a ConfigMap (None if not found).
    pub fn config_map_entries(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let cm = self.config_maps.get(name)?.as_ref()?;
        let mut out = BTreeMap::new();
        for (k, v) in cm.data.iter().flatten() {
            out.insert(k.clone(), v.clone().into_bytes());
        }
        for (k, v) in cm.binary_data.iter().flatten() {
            out.insert(k.clone(), v.0.clone());
        }
        Some(out)
    }

    /// All key/value pairs of a Secret (None if not found).
    pub fn secret_entries(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let s = self.secrets.get(name)?.as_ref()?;
        let mut out = BTreeMap::new();
        for (k, v) in s.string_data.iter().flatten() {
            out.insert(k.clone(), v.clone().into_bytes());
        }
        for (k, v) in s.data.iter().flatten() {
            out.insert(k.clone(), v.0.clone());
        }
        Some(out)
    }
}

enum Lookup {
    Found(String),
    NoKey,
    NoObject,
}

/// The value of a configMapKeyRef/secretKeyRef lookup: `None` when an optional
/// reference is missing (the variable is skipped), an error when a required one is.
fn key_ref_value(
    lookup: Lookup,
    kind: &str,
    ns: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, String> {
    match lookup {
        Lookup::Found(v) => Ok(Some(v)),
        _ if optional == Some(true) => Ok(None),
        Lookup::NoKey => Err(format!("couldn't find key {key} in {kind} {ns}/{name}")),
        Lookup::NoObject => Err(format!("{} {name:?} not found", kind.to_ascii_lowercase())),
    }
}

/// Pod facts `fieldRef` can read that are not in the pod object yet.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// The node's IP (status.hostIP).
    pub host_ip: String,
    /// The pod's IP (status.podIP), empty until pod networking assigns one.
    pub pod_ip: String,
}

/// Expand `$(VAR)` references the way Kubernetes does: defined names are
/// replaced, `$$` is a literal `$`, anything else stays as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    let mut start = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            out.push_str(&input[start..i]);
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                }
                b'(' => match input[i + 2..].find(')') {
                    Some(end) => {
                        let name = &input[i + 2..i + 2 + end];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        i += end + 3;
                    }
                    None => {
                        out.push_str("$(");
                        i += 2;
                    }
                },
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
            start = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&input[start..]);
    out
}

fn field_ref(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, String> {
    let md = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key).cloned()).unwrap_or_default())
    };
    if let Some(v) = subscript("metadata.labels", md.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = subscript("metadata.annotations", md.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        other => return Err(format!("unsupported fieldRef {other:?}")),
    })
}

fn resource_ref(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_cpu_millis: i64,
    node_memory: i64,
) -> Result<String, String> {
    let res = container.resources.as_ref();
    let (map, name) = match resource.split_once('.') {
        Some(("limits", n)) => (res.and_then(|r| r.limits.as_ref()), n),
        Some(("requests", n)) => (res.and_then(|r| r.requests.as_ref()), n),
        _ => return Err(format!("unsupported resourceFieldRef {resource:?}")),
    };
    let raw = map.and_then(|m| m.get(name)).map(|q| q.0.as_str());
    let value = match (name, raw) {
        ("cpu", Some(q)) => quantity::parse(q).unwrap_or(0.0),
        ("memory" | "ephemeral-storage", Some(q)) => quantity::parse(q).unwrap_or(0.0),
        // Unset limits report the node's allocatable, as kubelet does.
        ("cpu", None) => node_cpu_millis as f64 / 1000.0,
        ("memory", None) => node_memory as f64,
        _ => 0.0,
    };
    let div = divisor.and_then(quantity::parse).unwrap_or(1.0);
    Ok(format!("{}", (value / div).ceil() as i64))
}

/// The container's environment from its spec, in order, with later
/// definitions replacing earlier ones. Errors are user-facing messages
/// (reported as `CreateContainerConfigError`).
pub fn resolve(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = env.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            env.push((k, v));
        }
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_map_entries(&r.name) {
                Some(entries) => {
                    for (k, v) in entries {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secret_entries(&r.name) {
                Some(entries) => {
                    for (k, v) in entries {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            let keyed = if let Some(r) = &from.config_map_key_ref {
                Some((
                    sources.config_map_value(&r.name, &r.key),
                    "ConfigMap",
                    &r.name,
                    &r.key,
                    r.optional,
                ))
            } else {
                from.secret_key_ref.as_ref().map(|r| {
                    (
                        sources.secret_value(&r.name, &r.key),
                        "Secret",
                        &r.name,
                        &r.key,
                        r.optional,
                    )
                })
            };
            if let Some((lookup, kind, name, key, optional)) = keyed {
                match key_ref_value(lookup, kind, ns, name, key, optional)? {
                    Some(v) => v,
                    None => continue,
                }
            } else if let Some(f) = &from.field_ref {
                field_ref(pod, facts, &f.field_path)?
            } else if let Some(r) = &from.resource_field_ref {
                resource_ref(
                    container,
                    &r.resource,
                    r.divisor.as_ref().map(|q| q.0.as_str()),
                    facts_cpu(),
                    facts_memory(),
                )?
            } else {
                String::new()
            }
        } else {
            // Literal values may refer to variables defined before them.
            let known = env.clone();
            expand(var.value.as_deref().unwrap_or(""), |n| {
                known.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
            })
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

fn facts_cpu() -> i64 {
    crate::node::cpu_count() as i64 * 1000
}

fn facts_memory() -> i64 {
    crate::node::memory_bytes() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = |n: &str| match n {
            "A" => Some("1".to_string()),
            "B" => Some("two".to_string()),
            _ => None,
        };
        assert_eq!(expand("x$(A)y$(B)", vars), "x1ytwo");
        assert_eq!(expand("$(C) stays", vars), "$(C) stays");
        assert_eq!(expand("$$(A) escaped", vars), "$(A) escaped");
        assert_eq!(expand("cost: $5 $", vars), "cost: $5 $");
        assert_eq!(expand("open $(A", vars), "open $(A");
    }

    #[test]
    fn resolves_values_refs_and_env_from() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{
                "name": "c", "image": "busybox",
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {"name": "MSG", "value": "$(GREETING) world"},
                    {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "color"}}},
                    {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                    {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k", "optional": true}}}
                ]
            }]}
        }))
        .unwrap();
        let mut sources = Sources::default();
        sources.config_maps.insert(
            "cm".into(),
            Some(
                serde_json::from_value(
                    json!({"metadata": {"name": "cm"}, "data": {"color": "blue"}}),
                )
                .unwrap(),
            ),
        );
        sources.secrets.insert(
            "s".into(),
            Some(
                serde_json::from_value(
                    json!({"metadata": {"name": "s"}, "data": {"password": "czNjcmV0"}}),
                )
                .unwrap(),
            ),
        );
        sources.config_maps.insert("missing".into(), None);
        let facts = PodFacts {
            host_ip: "10.0.0.5".into(),
            pod_ip: String::new(),
        };
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let env: BTreeMap<_, _> = resolve(&pod, c, &sources, &facts)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(env["CM_color"], "blue");
        assert_eq!(env["MSG"], "hello world");
        assert_eq!(env["FROM_CM"], "blue");
        assert_eq!(env["PASS"], "s3cret");
        assert_eq!(env["POD"], "p");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["NODE"], "n1");
        assert_eq!(env["HOST"], "10.0.0.5");
        assert!(!env.contains_key("OPT"));

        // A required key that is missing is a config error naming it.
        let mut bad = c.clone();
        bad.env = Some(vec![serde_json::from_value(json!(
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope"}}}
        ))
        .unwrap()]);
        let err = resolve(&pod, &bad, &sources, &facts).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        bad.env = Some(vec![serde_json::from_value(json!(
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}
        ))
        .unwrap()]);
        sources.secrets.insert("absent".into(), None);
        assert!(resolve(&pod, &bad, &sources, &facts)
            .unwrap_err()
            .contains("absent"));
    }
}
