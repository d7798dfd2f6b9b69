//! Builders for Node and Pod JSON in tests.

use serde_json::{json, Value};

/// A node with allocatable cpu, memory and pods.
pub(crate) fn node(name: &str, cpu: &str, memory: &str, pods: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods}}
    })
}

/// A pod in namespace `default` with the given spec.
pub(crate) fn pod(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec
    })
}

/// A node with extra labels (on top of the hostname label).
pub(crate) fn labeled_node(name: &str, cpu: &str, memory: &str, labels: Value) -> Value {
    let mut n = node(name, cpu, memory, "110");
    for (k, v) in labels.as_object().expect("labels object") {
        n["metadata"]["labels"][k] = v.clone();
    }
    n
}

/// A pod with labels, bound to `node_name`, requesting `cpu` and `memory`.
pub(crate) fn bound_pod(
    name: &str,
    node_name: &str,
    cpu: &str,
    memory: &str,
    labels: Value,
) -> Value {
    let mut p = pod(
        name,
        json!({
            "nodeName": node_name,
            "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]
        }),
    );
    p["metadata"]["labels"] = labels;
    p
}

/// A view holding `nodes` (handles 1, 2, ... in order) and `pods`.
pub(crate) fn view_of(nodes: &[Value], pods: &[Value]) -> crate::view::View {
    let mut view = crate::view::View::new();
    for (i, n) in nodes.iter().enumerate() {
        view.apply("Node", i as u32 + 1, false, &n.to_string());
    }
    for (i, p) in pods.iter().enumerate() {
        view.apply("Pod", 1000 + i as u32, false, &p.to_string());
    }
    view
}

/// The pod to schedule, parsed.
pub(crate) fn candidate(p: &Value) -> crate::candidate::Candidate {
    crate::candidate::Candidate::parse(&p.to_string()).expect("candidate parses")
}
