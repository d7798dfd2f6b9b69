//! The registry of served kinds: names, scope, verbs, subresources, and the
//! typed codec each kind's bodies are checked against.

use k8s_openapi::api::{apps, batch, coordination, core, discovery, rbac, storage};
use serde_json::Value;

/// Decodes a body into the kind's typed form and back, which checks field types
/// and drops unknown fields exactly as decoding into Go structs does.
pub type Codec = fn(Value) -> Result<Value, String>;

fn codec<T: serde::de::DeserializeOwned + serde::Serialize>(v: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Checks that an object decodes as the kind's typed form, without building
/// it back (cheaper than [`Codec`] when the object itself is kept).
pub type Check = fn(&Value) -> Result<(), String>;

fn check<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
    T::deserialize(v).map(drop).map_err(|e| e.to_string())
}

/// Our own kinds have no k8s-openapi type: accept any object.
fn untyped(v: Value) -> Result<Value, String> {
    check_untyped(&v).map(|()| v)
}

fn check_untyped(v: &Value) -> Result<(), String> {
    if v.is_object() {
        Ok(())
    } else {
        Err("expected an object".into())
    }
}

/// Describes one served resource.
#[derive(Debug)]
pub struct ResourceInfo {
    /// API group ("" for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural resource name used in paths.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Served subresources.
    pub subresources: &'static [&'static str],
    /// Fields usable in field selectors besides metadata.name/namespace.
    pub field_selectors: &'static [&'static str],
    /// Typed codec.
    pub codec: Codec,
    /// The codec's check alone.
    pub check: Check,
}

impl ResourceInfo {
    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// Storage key prefix for this resource, optionally within a namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let g = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match namespace {
            Some(ns) if self.namespaced => format!("/{g}/{}/{ns}/", self.plural),
            _ => format!("/{g}/{}/", self.plural),
        }
    }
    /// Storage key for one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }
    /// Whether the kind has a status subresource.
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }
}

macro_rules! res {
    ($g:expr, $v:expr, $plural:expr, $singular:expr, $kind:expr, $ns:expr, $short:expr, $cat:expr, $sub:expr, $fs:expr, codec::<$t:ty>) => {
        res!(@ $g, $v, $plural, $singular, $kind, $ns, $short, $cat, $sub, $fs, codec::<$t>, check::<$t>)
    };
    ($g:expr, $v:expr, $plural:expr, $singular:expr, $kind:expr, $ns:expr, $short:expr, $cat:expr, $sub:expr, $fs:expr, untyped) => {
        res!(@ $g, $v, $plural, $singular, $kind, $ns, $short, $cat, $sub, $fs, untyped, check_untyped)
    };
    (@ $g:expr, $v:expr, $plural:expr, $singular:expr, $kind:expr, $ns:expr, $short:expr, $cat:expr, $sub:expr, $fs:expr, $codec:expr, $check:expr) => {
        ResourceInfo {
            group: $g,
            version: $v,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
            field_selectors: $fs,
            codec: $codec,
            check: $check,
        }
    };
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

/// Every served resource.
pub static RESOURCES: &[ResourceInfo] = &[
    res!(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        NONE,
        &["status"],
        &["status.phase"],
        codec::<core::v1::Namespace>
    ),
    res!(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        true,
        &["po"],
        ALL,
        &["status", "binding"],
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName"
        ],
        codec::<core::v1::Pod>
    ),
    res!(
        "",
        "v1",
        "nodes",
        "node",
        "Node",
        false,
        &["no"],
        NONE,
        &["status"],
        &["spec.unschedulable"],
        codec::<core::v1::Node>
    ),
    res!(
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        ALL,
        &["status"],
        &["spec.clusterIP", "spec.type"],
        codec::<core::v1::Service>
    ),
    res!(
        "",
        "v1",
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        NONE,
        NONE,
        NONE,
        codec::<core::v1::Endpoints>
    ),
    res!(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        NONE,
        NONE,
        NONE,
        codec::<core::v1::ConfigMap>
    ),
    res!(
        "",
        "v1",
        "secrets",
        "secret",
        "Secret",
        true,
        NONE,
        NONE,
        NONE,
        &["type"],
        codec::<core::v1::Secret>
    ),
    res!(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        NONE,
        &["token"],
        NONE,
        codec::<core::v1::ServiceAccount>
    ),
    // LimitRange and ResourceQuota (admission/limitranger.rs, admission/quota.rs).
    res!(
        "",
        "v1",
        "limitranges",
        "limitrange",
        "LimitRange",
        true,
        &["limits"],
        NONE,
        NONE,
        NONE,
        codec::<core::v1::LimitRange>
    ),
    res!(
        "",
        "v1",
        "resourcequotas",
        "resourcequota",
        "ResourceQuota",
        true,
        &["quota"],
        NONE,
        &["status"],
        NONE,
        codec::<core::v1::ResourceQuota>
    ),
    res!(
        "",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        NONE,
        NONE,
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type"
        ],
        codec::<core::v1::Event>
    ),
    res!(
        "",
        "v1",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        false,
        &["pv"],
        NONE,
        &["status"],
        NONE,
        codec::<core::v1::PersistentVolume>
    ),
    res!(
        "",
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        NONE,
        &["status"],
        NONE,
        codec::<core::v1::PersistentVolumeClaim>
    ),
    res!(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        ALL,
        &["status", "scale"],
        NONE,
        codec::<apps::v1::Deployment>
    ),
    res!(
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        &["rs"],
        ALL,
        &["status", "scale"],
        NONE,
        codec::<apps::v1::ReplicaSet>
    ),
    res!(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
        ALL,
        &["status"],
        NONE,
        codec::<apps::v1::DaemonSet>
    ),
    res!(
        "apps",
        "v1",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        &["sts"],
        ALL,
        &["status", "scale"],
        NONE,
        codec::<apps::v1::StatefulSet>
    ),
    res!(
        "apps",
        "v1",
        "controllerrevisions",
        "controllerrevision",
        "ControllerRevision",
        true,
        NONE,
        NONE,
        NONE,
        NONE,
        codec::<apps::v1::ControllerRevision>
    ),
    res!(
        "batch",
        "v1",
        "jobs",
        "job",
        "Job",
        true,
        NONE,
        ALL,
        &["status"],
        &["status.successful"],
        codec::<batch::v1::Job>
    ),
    res!(
        "batch",
        "v1",
        "cronjobs",
        "cronjob",
        "CronJob",
        true,
        &["cj"],
        ALL,
        &["status"],
        NONE,
        codec::<batch::v1::CronJob>
    ),
    res!(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        true,
        &["hpa"],
        ALL,
        &["status"],
        NONE,
        codec::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>
    ),
    res!(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        NONE,
        NONE,
        NONE,
        NONE,
        codec::<discovery::v1::EndpointSlice>
    ),
    res!(
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "storageclass",
        "StorageClass",
        false,
        &["sc"],
        NONE,
        NONE,
        NONE,
        codec::<storage::v1::StorageClass>
    ),
    res!(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        NONE,
        NONE,
        NONE,
        NONE,
        codec::<coordination::v1::Lease>
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "role",
        "Role",
        true,
        NONE,
        NONE,
        NONE,
        NONE,
        codec::<rbac::v1::Role>
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        NONE,
        NONE,
        NONE,
        NONE,
        codec::<rbac::v1::ClusterRole>
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        NONE,
        NONE,
        NONE,
        NONE,
        codec::<rbac::v1::RoleBinding>
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        NONE,
        NONE,
        NONE,
        NONE,
        codec::<rbac::v1::ClusterRoleBinding>
    ),
    res!(
        "plugins.shoal.dev",
        "v1alpha1",
        "plugins",
        "plugin",
        "Plugin",
        false,
        NONE,
        NONE,
        &["status"],
        NONE,
        untyped
    ),
    // authentication.k8s.io reviews: create-only, never stored (api/tokens.rs).
    res!(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "tokenreview",
        "TokenReview",
        false,
        NONE,
        NONE,
        NONE,
        NONE,
        untyped
    ),
    res!(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "selfsubjectreview",
        "SelfSubjectReview",
        false,
        NONE,
        NONE,
        NONE,
        NONE,
        untyped
    ),
    // authorization.k8s.io access reviews: create-only, never stored (authz/review.rs).
    res!(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false,
        NONE,
        NONE,
        NONE,
        NONE,
        untyped
    ),
    res!(
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        "SelfSubjectRulesReview",
        false,
        NONE,
        NONE,
        NONE,
        NONE,
        untyped
    ),
    res!(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false,
        NONE,
        NONE,
        NONE,
        NONE,
        untyped
    ),
    res!(
        "authorization.k8s.io",
        "v1",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        "LocalSubjectAccessReview",
        true,
        NONE,
        NONE,
        NONE,
        NONE,
        untyped
    ),
];

/// Find a resource by group, version and plural name.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Find a resource by group and kind.
pub fn by_kind(group: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// The served group/versions, core first.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// Verbs for a resource or subresource in discovery.
pub fn verbs(sub: Option<&str>) -> &'static [&'static str] {
    match sub {
        None => &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
        Some("status") | Some("scale") => &["get", "patch", "update"],
        Some("binding") | Some("eviction") | Some("token") => &["create"],
        Some("finalize") => &["update"],
        Some("log") => &["get"],
        Some("exec") | Some("portforward") | Some("attach") | Some("proxy") => &["create", "get"],
        Some(_) => &["get"],
    }
}

/// Kind reported by discovery for a subresource.
pub fn sub_kind(r: &ResourceInfo, sub: &str) -> (&'static str, &'static str, &'static str) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale"),
        "binding" => ("", "v1", "Binding"),
        "eviction" => ("policy", "v1", "Eviction"),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest"),
        "exec" | "attach" => ("", "v1", "PodExecOptions"),
        "portforward" => ("", "v1", "PodPortForwardOptions"),
        "log" => ("", "v1", "Pod"),
        "proxy" => (
            "",
            "v1",
            if r.kind == "Node" {
                "NodeProxyOptions"
            } else {
                "ServiceProxyOptions"
            },
        ),
        _ => ("", "", ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // The check alone (used on objects that admission plugins patched) refuses
    // exactly what the codec refuses, with the same message.
    #[test]
    fn check_agrees_with_the_codec() {
        let pods = RESOURCES.iter().find(|r| r.kind == "Pod").unwrap();
        let plugins = RESOURCES.iter().find(|r| r.kind == "Plugin").unwrap();
        for (info, obj) in [
            (
                pods,
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}),
            ),
            (
                pods,
                json!({"metadata": {"name": "p"}, "spec": {"containers": "c"}}),
            ),
            (pods, json!({"metadata": {"labels": {"a": 1}}})),
            (
                pods,
                json!({"spec": {"containers": [{"name": "c", "x-unknown": true}]}}),
            ),
            (plugins, json!({"spec": {"anything": [1, 2]}})),
            (plugins, json!(["not", "an", "object"])),
        ] {
            let checked = (info.check)(&obj);
            let decoded = (info.codec)(obj.clone()).map(drop);
            assert_eq!(checked, decoded, "{obj}");
        }
        assert!((pods.check)(&json!({"spec": {"containers": "c"}}))
            .unwrap_err()
            .contains("invalid type: string \"c\", expected a sequence"));
    }
}
